//! The kubeadm bootstrap token `[a-z0-9]{6}.[a-z0-9]{16}`: its ID names the token Secret,
//! the whole token lets a new node join. Drawn from the operating system's generator, one per
//! `up` that adds nodes; it is never written to the state directory.

use std::fmt;

use super::PkiError;

const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const ID_LEN: usize = 6;
const SECRET_LEN: usize = 16;

/// A bootstrap token; Debug and Display show only its public ID.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    token: String,
}

impl BootstrapToken {
    pub fn generate() -> Result<BootstrapToken, PkiError> {
        let id = random_chars(ID_LEN)?;
        let secret = random_chars(SECRET_LEN)?;
        Ok(BootstrapToken {
            token: format!("{id}.{secret}"),
        })
    }

    /// Accepts exactly `[a-z0-9]{6}.[a-z0-9]{16}`.
    #[cfg(test)]
    pub(crate) fn parse(text: &str) -> Option<BootstrapToken> {
        let (id, secret) = text.split_once('.')?;
        let valid =
            |s: &str, len: usize| s.len() == len && s.bytes().all(|b| ALPHABET.contains(&b));
        (valid(id, ID_LEN) && valid(secret, SECRET_LEN)).then(|| BootstrapToken {
            token: text.to_string(),
        })
    }

    /// The public half, which names the `bootstrap-token-<id>` Secret.
    pub fn id(&self) -> &str {
        &self.token[..ID_LEN]
    }

    /// The whole token, for sealed node configs and the token Secret only.
    pub fn expose(&self) -> &str {
        &self.token
    }
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BootstrapToken({}.[redacted])", self.id())
    }
}

/// Uniformly random characters of [`ALPHABET`], by rejection sampling.
pub(crate) fn random_chars(len: usize) -> Result<String, PkiError> {
    // The largest multiple of 36 that fits a byte; bytes above it would bias the draw.
    const LIMIT: u8 = 252;
    let mut out = String::with_capacity(len);
    let mut buffer = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buffer).map_err(|e| PkiError::Random(e.to_string()))?;
        for &byte in buffer.iter().filter(|&&b| b < LIMIT) {
            if out.len() == len {
                break;
            }
            out.push(char::from(ALPHABET[usize::from(byte % 36)]));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_have_kubeadm_shape_and_differ() {
        let a = BootstrapToken::generate().expect("token");
        let b = BootstrapToken::generate().expect("token");
        assert!(BootstrapToken::parse(a.expose()).is_some());
        assert_ne!(a, b);
        assert_eq!(a.id().len(), 6);
    }

    #[test]
    fn parse_rejects_other_shapes() {
        for bad in [
            "abcdef0123456789abcdef",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdefg",
            "abcdef.0123456789abcde!",
        ] {
            assert!(BootstrapToken::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn debug_shows_only_the_id() {
        let token = BootstrapToken::parse("abcdef.0123456789abcdef").expect("valid");
        assert_eq!(format!("{token:?}"), "BootstrapToken(abcdef.[redacted])");
    }

    #[test]
    fn every_character_of_the_alphabet_is_drawn() {
        let drawn = random_chars(4000).expect("random");
        for c in ALPHABET {
            assert!(drawn.as_bytes().contains(c), "{}", char::from(*c));
        }
    }
}
