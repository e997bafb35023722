//! OpenPGP verification of Flatcar release files. Flatcar signs each file with a rotating,
//! expiring signing subkey of one long-lived primary key (fingerprint [`FLATCAR_PRIMARY`]), so a
//! signature is accepted when it was made by the primary or by a subkey that is bound to it by a
//! valid binding signature (with the subkey's own back-signature), may sign, is not revoked, and
//! has not expired. The key file shipped in flatstack is Flatcar's published one;
//! `--signing-key FILE` replaces it with a newer file.

use std::io::Read;

use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey, SignedPublicSubKey};
use pgp::packet::{Signature, SignatureType};
use pgp::types::{KeyDetails, Timestamp};

/// Flatcar's image signing key, as published at
/// `https://www.flatcar.org/security/image-signing-key/Flatcar_Image_Signing_Key.asc`
/// (flatcar/flatcar-website commit 08bdee0a, 2025-03-07: signing subkey valid to 2027-03-08).
const FLATCAR_KEY: &str = include_str!("flatcar-image-signing-key.asc");

/// The fingerprint of Flatcar's primary image signing key.
pub(crate) const FLATCAR_PRIMARY: &str = "F88CFEDEFF29A5B4D9523864E25D9AED0593B34A";

#[derive(Debug, thiserror::Error)]
pub(crate) enum SignatureError {
    #[error("cannot read the signing key {source_name}: {detail}")]
    Key { source_name: String, detail: String },
    #[error("{file} is not an OpenPGP signature: {detail}")]
    Unreadable { file: String, detail: String },
    #[error(
        "{file} is signed by key {issuer}, which is not {keyring} or one of its signing subkeys\n  hint: if Flatcar published a new signing key, pass its key file with --signing-key"
    )]
    UnknownKey {
        file: String,
        issuer: String,
        keyring: String,
    },
    #[error("{file} is signed by subkey {key}, which {problem}")]
    UnusableKey {
        file: String,
        key: String,
        problem: String,
    },
    #[error(
        "the signature of {file} by {key} does not match its content: the file was altered, or is not the file that was signed"
    )]
    Mismatch { file: String, key: String },
}

/// The keys signatures are checked against.
pub(crate) struct Keyring {
    keys: Vec<SignedPublicKey>,
    /// Where the keys came from, for messages.
    name: String,
}

/// A key found fit to have made a signature.
pub(crate) struct Signer {
    /// Fingerprint of the key that signed (a subkey, or the primary).
    pub(crate) fingerprint: String,
    /// Fingerprint of its primary key.
    pub(crate) primary: String,
    key: SignerKey,
}

enum SignerKey {
    Primary(pgp::packet::PublicKey),
    Subkey(pgp::packet::PublicSubkey),
}

impl Keyring {
    /// Fingerprints of the primary keys.
    #[cfg(test)]
    fn primaries(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| hex_upper(k.primary_key.fingerprint().as_bytes()))
            .collect()
    }

    /// Flatcar's image signing key, shipped in the binary.
    pub(crate) fn flatcar() -> Result<Keyring, SignatureError> {
        Keyring::parse(
            FLATCAR_KEY.as_bytes(),
            &format!("Flatcar's image signing key {FLATCAR_PRIMARY}"),
        )
    }

    /// The keys in an OpenPGP key file (armored or binary).
    pub(crate) fn from_file(path: &std::path::Path) -> Result<Keyring, SignatureError> {
        let bytes = std::fs::read(path).map_err(|e| SignatureError::Key {
            source_name: path.display().to_string(),
            detail: e.to_string(),
        })?;
        Keyring::parse(&bytes, &format!("the key in {}", path.display()))
    }

    fn parse(bytes: &[u8], name: &str) -> Result<Keyring, SignatureError> {
        let failed = |detail: String| SignatureError::Key {
            source_name: name.to_string(),
            detail,
        };
        let (keys, _) =
            SignedPublicKey::from_reader_many(bytes).map_err(|e| failed(e.to_string()))?;
        let keys: Vec<SignedPublicKey> = keys
            .collect::<Result<_, _>>()
            .map_err(|e| failed(e.to_string()))?;
        if keys.is_empty() {
            return Err(failed("no public key in it".into()));
        }
        Ok(Keyring {
            keys,
            name: name.to_string(),
        })
    }

    /// Reads a detached signature (binary or armored) of `file`.
    pub(crate) fn read_signature(
        bytes: &[u8],
        file: &str,
    ) -> Result<DetachedSignature, SignatureError> {
        DetachedSignature::from_reader_single(bytes)
            .map(|(signature, _)| signature)
            .map_err(|e| SignatureError::Unreadable {
                file: file.to_string(),
                detail: e.to_string(),
            })
    }

    /// The key of this keyring that made `signature` of `file`, if it may sign now.
    pub(crate) fn signer(
        &self,
        signature: &Signature,
        file: &str,
    ) -> Result<Signer, SignatureError> {
        let now = Timestamp::now();
        let issuers: Vec<String> = signature
            .issuer_fingerprint()
            .iter()
            .map(|f| hex_upper(f.as_bytes()))
            .collect();
        let key_ids: Vec<String> = signature
            .issuer_key_id()
            .iter()
            .map(|id| hex_upper(id.as_ref()))
            .collect();
        let named = |fingerprint: &str| {
            issuers.iter().any(|f| f == fingerprint)
                || key_ids.iter().any(|id| fingerprint.ends_with(id.as_str()))
        };
        for key in &self.keys {
            let primary = hex_upper(key.primary_key.fingerprint().as_bytes());
            let unusable = |fingerprint: &str, problem: String| SignatureError::UnusableKey {
                file: file.to_string(),
                key: fingerprint.to_string(),
                problem,
            };
            if named(&primary) {
                if key
                    .details
                    .revocation_signatures
                    .iter()
                    .any(|r| r.verify_key(&key.primary_key).is_ok())
                {
                    return Err(unusable(&primary, "is revoked".into()));
                }
                return Ok(Signer {
                    fingerprint: primary.clone(),
                    primary,
                    key: SignerKey::Primary(key.primary_key.clone()),
                });
            }
            for subkey in &key.public_subkeys {
                let fingerprint = hex_upper(subkey.key.fingerprint().as_bytes());
                if !named(&fingerprint) {
                    continue;
                }
                if key
                    .details
                    .revocation_signatures
                    .iter()
                    .any(|r| r.verify_key(&key.primary_key).is_ok())
                {
                    return Err(unusable(
                        &fingerprint,
                        format!("belongs to the revoked key {primary}"),
                    ));
                }
                check_subkey(key, subkey, now)
                    .map_err(|problem| unusable(&fingerprint, problem))?;
                return Ok(Signer {
                    fingerprint,
                    primary,
                    key: SignerKey::Subkey(subkey.key.clone()),
                });
            }
        }
        let issuer = issuers
            .first()
            .or(key_ids.first())
            .cloned()
            .unwrap_or_else(|| "(no issuer named)".into());
        Err(SignatureError::UnknownKey {
            file: file.to_string(),
            issuer,
            keyring: self.name.clone(),
        })
    }
}

impl Signer {
    /// Checks `signature` over everything `data` yields (streamed, never held in memory).
    pub(crate) fn verify(
        &self,
        signature: &Signature,
        data: impl Read,
        file: &str,
    ) -> Result<(), SignatureError> {
        let result = match &self.key {
            SignerKey::Primary(key) => signature.verify(key, data),
            SignerKey::Subkey(key) => signature.verify(key, data),
        };
        result.map_err(|_| SignatureError::Mismatch {
            file: file.to_string(),
            key: self.fingerprint.clone(),
        })
    }
}

/// Why `subkey` may not sign now, if it may not: its newest valid binding signature must give
/// it the signing flag with a valid back-signature, no valid revocation may exist, and its
/// validity period must not have ended.
fn check_subkey(
    key: &SignedPublicKey,
    subkey: &SignedPublicSubKey,
    now: Timestamp,
) -> Result<(), String> {
    let primary = &key.primary_key;
    let valid = |sig: &&Signature| sig.verify_subkey_binding(primary, &subkey.key).is_ok();
    if subkey
        .signatures
        .iter()
        .filter(|s| s.typ() == Some(SignatureType::SubkeyRevocation))
        .any(|s| valid(&s))
    {
        return Err("is revoked".into());
    }
    let binding = subkey
        .signatures
        .iter()
        .filter(|s| s.typ() == Some(SignatureType::SubkeyBinding))
        .filter(valid)
        .max_by_key(|s| s.created().map(Timestamp::as_secs).unwrap_or(0))
        .ok_or_else(|| "is not validly bound to its primary key".to_string())?;
    if !binding.key_flags().sign() {
        return Err("is not allowed to sign".into());
    }
    let back = binding
        .embedded_signature()
        .is_some_and(|b| b.verify_primary_key_binding(&subkey.key, primary).is_ok());
    if !back {
        return Err("has no valid back-signature to its primary key".into());
    }
    if let Some(period) = binding.key_expiration_time()
        && period.as_secs() > 0
    {
        let created = u64::from(subkey.key.created_at().as_secs());
        let expires = created + u64::from(period.as_secs());
        if u64::from(now.as_secs()) >= expires {
            return Err(format!(
                "expired on {}\n  hint: pass a newer key file with --signing-key, or use a newer release",
                date(expires)
            ));
        }
    }
    Ok(())
}

fn hex_upper(bytes: &[u8]) -> String {
    hex::encode_upper(bytes)
}

/// `YYYY-MM-DD` of a Unix time.
fn date(seconds: u64) -> String {
    let stamp = i64::try_from(seconds)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok());
    match stamp {
        Some(t) => format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()),
        None => format!("Unix time {seconds}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_key_is_flatcars() {
        let keyring = Keyring::flatcar().expect("shipped key parses");
        assert_eq!(keyring.primaries(), [FLATCAR_PRIMARY]);
    }
}
