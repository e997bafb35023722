//! The envelope an etcd snapshot travels in: encrypted on a control plane to the cluster's
//! backup key, whose private half only the state directory holds, so the cluster can write
//! backups it cannot read (a snapshot holds every Secret).
//!
//! Made on the node with `openssl` alone (see [`super::script`]) and opened here:
//!
//! ```text
//! MAGIC || ephemeral X25519 public key (32) || IV (16) || AES-256-CTR ciphertext || tag (32)
//! shared  = X25519(ephemeral private, recipient public)
//! keys    = HKDF-SHA256(ikm = shared, salt = ephemeral public || recipient public, info = INFO, 64)
//! tag     = HMAC-SHA256(keys[32..], everything before the tag)
//! ```
//!
//! The cipher key is `keys[..32]`. Encrypt-then-MAC: the tag is checked before a byte is
//! decrypted, so a tampered or truncated snapshot is refused before anything is written.

use std::fmt;

use aes::cipher::{KeyIvInit, StreamCipher};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;
type HmacSha256 = Hmac<Sha256>;

/// What every envelope starts with: the format and its version.
pub(crate) const MAGIC: &[u8] = b"flatstack etcd snapshot v1\n";
/// HKDF's `info`: keys of this format are never keys of another.
pub(crate) const INFO: &str = "flatstack etcd snapshot v1";
const KEY_LEN: usize = 32;
const IV_LEN: usize = 16;
const TAG_LEN: usize = 32;
/// The DER prefix of an X25519 SubjectPublicKeyInfo (RFC 8410), before the 32 key bytes.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00,
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("it is not a flatstack etcd snapshot (no `{}` header)", String::from_utf8_lossy(MAGIC).trim_end())]
    NotASnapshot,
    #[error("it is {0} bytes, too short to hold a snapshot: truncated")]
    Truncated(usize),
    #[error(
        "its tag does not match: it was changed or cut short after it was made, or made for another cluster's key"
    )]
    Tampered,
    #[error("the operating system's random generator failed: {0}")]
    Random(String),
}

/// The cluster's backup key; `Debug` never shows the private half.
#[derive(Clone)]
pub struct BackupKey {
    secret: StaticSecret,
}

impl fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "BackupKey(public {})",
            hex::encode(self.public().as_bytes())
        )
    }
}

impl BackupKey {
    pub fn generate() -> Result<BackupKey, EnvelopeError> {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes).map_err(|e| EnvelopeError::Random(e.to_string()))?;
        Ok(BackupKey {
            secret: StaticSecret::from(bytes),
        })
    }

    /// The private key as the state directory keeps it: 64 hex digits.
    pub(crate) fn expose_hex(&self) -> String {
        hex::encode(self.secret.to_bytes())
    }

    pub(crate) fn parse_hex(text: &str) -> Option<BackupKey> {
        let bytes: [u8; KEY_LEN] = hex::decode(text.trim()).ok()?.try_into().ok()?;
        Some(BackupKey {
            secret: StaticSecret::from(bytes),
        })
    }

    pub(crate) fn public(&self) -> PublicKey {
        PublicKey::from(&self.secret)
    }

    /// The public half as `openssl pkeyutl -peerkey` reads it (PEM SubjectPublicKeyInfo).
    pub(crate) fn public_pem(&self) -> String {
        use base64::Engine as _;
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(self.public().as_bytes());
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        )
    }

    /// Checks and decrypts an envelope made for this key, in its own buffer (a snapshot may be
    /// gigabytes: it is never copied).
    pub(crate) fn open_owned(&self, mut envelope: Vec<u8>) -> Result<Vec<u8>, EnvelopeError> {
        let header = MAGIC.len() + KEY_LEN + IV_LEN;
        let (cipher_key, iv) = self.check(&envelope)?;
        let end = envelope.len() - TAG_LEN;
        Aes256Ctr::new((&cipher_key).into(), (&iv).into())
            .apply_keystream(&mut envelope[header..end]);
        envelope.truncate(end);
        envelope.drain(..header);
        Ok(envelope)
    }

    /// Checks and decrypts an envelope made for this key.
    #[cfg(test)]
    pub(crate) fn open(&self, envelope: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        self.open_owned(envelope.to_vec())
    }

    /// Checks the envelope's format and tag, before a byte is decrypted; its cipher key and
    /// IV when it holds.
    fn check(&self, envelope: &[u8]) -> Result<([u8; KEY_LEN], [u8; IV_LEN]), EnvelopeError> {
        let header = MAGIC.len() + KEY_LEN + IV_LEN;
        if envelope.len() < MAGIC.len() || !envelope.starts_with(MAGIC) {
            return Err(EnvelopeError::NotASnapshot);
        }
        if envelope.len() < header + TAG_LEN {
            return Err(EnvelopeError::Truncated(envelope.len()));
        }
        let (body, tag) = envelope.split_at(envelope.len() - TAG_LEN);
        let ephemeral: [u8; KEY_LEN] = body[MAGIC.len()..MAGIC.len() + KEY_LEN]
            .try_into()
            .map_err(|_| EnvelopeError::Truncated(envelope.len()))?;
        let iv: [u8; IV_LEN] = body[MAGIC.len() + KEY_LEN..header]
            .try_into()
            .map_err(|_| EnvelopeError::Truncated(envelope.len()))?;
        let (cipher_key, mac_key) = self.keys(&PublicKey::from(ephemeral));
        let mut mac = mac_for(&mac_key);
        mac.update(body);
        mac.verify_slice(tag).map_err(|_| EnvelopeError::Tampered)?;
        Ok((cipher_key, iv))
    }

    /// The cipher and MAC keys of an envelope whose ephemeral key is `ephemeral`.
    fn keys(&self, ephemeral: &PublicKey) -> ([u8; KEY_LEN], [u8; KEY_LEN]) {
        let shared = self.secret.diffie_hellman(ephemeral);
        derive(shared.as_bytes(), ephemeral, &self.public())
    }
}

fn mac_for(key: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length: this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length")
}

fn derive(
    shared: &[u8],
    ephemeral: &PublicKey,
    recipient: &PublicKey,
) -> ([u8; KEY_LEN], [u8; KEY_LEN]) {
    let mut salt = ephemeral.as_bytes().to_vec();
    salt.extend_from_slice(recipient.as_bytes());
    let mut okm = [0u8; 2 * KEY_LEN];
    hkdf::Hkdf::<Sha256>::new(Some(&salt), shared)
        .expand(INFO.as_bytes(), &mut okm)
        // 64 bytes is far below HKDF-SHA256's limit of 255 * 32.
        .expect("64 bytes of HKDF-SHA256 output");
    let mut cipher = [0u8; KEY_LEN];
    let mut mac = [0u8; KEY_LEN];
    cipher.copy_from_slice(&okm[..KEY_LEN]);
    mac.copy_from_slice(&okm[KEY_LEN..]);
    (cipher, mac)
}

/// Makes an envelope for `recipient` as the node does: for tests of [`BackupKey::open`] that
/// need no `openssl` (the node's own way is tested with it).
#[cfg(test)]
pub(crate) fn seal_for_tests(recipient: &PublicKey, plain: &[u8]) -> Vec<u8> {
    let ephemeral = BackupKey::generate().expect("random");
    let ephemeral_public = ephemeral.public();
    let shared = ephemeral.secret.diffie_hellman(recipient);
    let (cipher_key, mac_key) = derive(shared.as_bytes(), &ephemeral_public, recipient);
    let mut iv = [0u8; IV_LEN];
    getrandom::fill(&mut iv).expect("random");
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(ephemeral_public.as_bytes());
    out.extend_from_slice(&iv);
    let start = out.len();
    out.extend_from_slice(plain);
    Aes256Ctr::new((&cipher_key).into(), (&iv).into()).apply_keystream(&mut out[start..]);
    let mut mac = mac_for(&mac_key);
    mac.update(&out);
    out.extend_from_slice(&mac.finalize().into_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_opens_with_its_key_only() {
        let key = BackupKey::generate().expect("key");
        let plain = b"etcd snapshot bytes".repeat(1000);
        let sealed = seal_for_tests(&key.public(), &plain);
        assert_eq!(key.open(&sealed).expect("opens"), plain);
        let other = BackupKey::generate().expect("key");
        assert_eq!(other.open(&sealed), Err(EnvelopeError::Tampered));
    }

    #[test]
    fn changed_cut_or_foreign_bytes_are_refused_before_decrypting() {
        let key = BackupKey::generate().expect("key");
        let sealed = seal_for_tests(&key.public(), b"the data");
        for at in [
            MAGIC.len(),
            MAGIC.len() + 40,
            sealed.len() - 40,
            sealed.len() - 1,
        ] {
            let mut changed = sealed.clone();
            changed[at] ^= 1;
            assert_eq!(
                key.open(&changed),
                Err(EnvelopeError::Tampered),
                "byte {at}"
            );
        }
        assert_eq!(
            key.open(&sealed[..sealed.len() - 5]),
            Err(EnvelopeError::Tampered)
        );
        assert_eq!(
            key.open(&sealed[..MAGIC.len() + 10]),
            Err(EnvelopeError::Truncated(MAGIC.len() + 10))
        );
        assert_eq!(
            key.open(b"SQLite format 3"),
            Err(EnvelopeError::NotASnapshot)
        );
    }

    #[test]
    fn the_key_round_trips_through_its_text_and_never_shows_in_debug() {
        let key = BackupKey::generate().expect("key");
        let again = BackupKey::parse_hex(&key.expose_hex()).expect("parses");
        assert_eq!(again.public(), key.public());
        assert!(!format!("{key:?}").contains(&key.expose_hex()));
        assert!(BackupKey::parse_hex("abcd").is_none());
        let pem = key.public_pem();
        assert!(
            pem.starts_with("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VuAyEA"),
            "{pem}"
        );
    }
}
