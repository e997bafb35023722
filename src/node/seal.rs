//! Sealing: the secrets a node needs at boot (control planes' CA keys, the join token) travel
//! in its user_data encrypted, and the key that opens them travels in the server's metadata,
//! which flatstack deletes once the node has joined. user_data cannot change after boot, so
//! what it holds must be safe for the server's whole life; the metadata key can go.
//!
//! The format is what a stock Flatcar can open with `openssl` and coreutils alone (see
//! [`super::units::unseal_script`]): AES-256 in counter mode, then HMAC-SHA256 over the IV and
//! ciphertext (encrypt-then-MAC), the file being `iv (16) || ciphertext || tag (32)`. One key
//! per server: 32 bytes for the cipher, then 32 for the MAC, written as 128 hex digits.

use std::fmt;

use aes::cipher::{KeyIvInit, StreamCipher};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;
type HmacSha256 = Hmac<Sha256>;

/// The server metadata key under which a node finds its [`SealKey`].
pub const SEAL_KEY_METADATA: &str = "flatstack-seal-key";
/// The suffix of a sealed file: the node opens `X.sealed` into `X`.
pub(crate) const SEALED_SUFFIX: &str = ".sealed";

const IV_LEN: usize = 16;
const TAG_LEN: usize = 32;

/// One server's key; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SealKey([u8; 64]);

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the operating system's random generator failed: {0}")]
    Random(String),
}

impl SealKey {
    pub fn generate() -> Result<SealKey, SealError> {
        let mut key = [0u8; 64];
        getrandom::fill(&mut key).map_err(|e| SealError::Random(e.to_string()))?;
        Ok(SealKey(key))
    }

    /// Parses the 128 hex digits a server's metadata holds.
    pub fn parse(hex_digits: &str) -> Option<SealKey> {
        let bytes = hex::decode(hex_digits).ok()?;
        bytes.try_into().ok().map(SealKey)
    }

    /// The key as the server's metadata holds it, for Nova only.
    pub fn expose_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn cipher_key(&self) -> &[u8] {
        &self.0[..32]
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes a key of any length: this cannot fail.
        <HmacSha256 as Mac>::new_from_slice(&self.0[32..]).expect("HMAC accepts any key length")
    }

    /// Encrypts and authenticates `plain` under a fresh random IV.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut iv = [0u8; IV_LEN];
        getrandom::fill(&mut iv).map_err(|e| SealError::Random(e.to_string()))?;
        let mut sealed = Vec::with_capacity(IV_LEN + plain.len() + TAG_LEN);
        sealed.extend_from_slice(&iv);
        sealed.extend_from_slice(plain);
        Aes256Ctr::new(self.cipher_key().into(), (&iv).into())
            .apply_keystream(&mut sealed[IV_LEN..]);
        let mut mac = self.mac();
        mac.update(&sealed);
        sealed.extend_from_slice(&mac.finalize().into_bytes());
        Ok(sealed)
    }

    /// Checks and decrypts what [`SealKey::seal`] made; `None` if it was not made with this
    /// key or was changed since.
    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < IV_LEN + TAG_LEN {
            return None;
        }
        let (body, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_slice(tag).ok()?;
        let (iv, ciphertext) = body.split_at(IV_LEN);
        let mut plain = ciphertext.to_vec();
        Aes256Ctr::new(self.cipher_key().into(), iv.into()).apply_keystream(&mut plain);
        Some(plain)
    }
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_sealed_opens_with_its_key_only_and_unchanged_only() {
        let key = SealKey::generate().expect("key");
        let other = SealKey::generate().expect("key");
        let plain = b"-----BEGIN PRIVATE KEY-----\nnot really\n";
        let sealed = key.seal(plain).expect("sealed");
        assert_eq!(sealed.len(), 16 + plain.len() + 32);
        assert!(!sealed.windows(11).any(|w| w == b"PRIVATE KEY"));
        assert_eq!(key.open(&sealed).as_deref(), Some(&plain[..]));
        assert_eq!(other.open(&sealed), None);
        let mut tampered = sealed.clone();
        tampered[20] ^= 1;
        assert_eq!(key.open(&tampered), None);
        assert_eq!(key.open(&sealed[..40]), None);
        // A fresh IV each time: the same secret never seals to the same bytes.
        assert_ne!(key.seal(plain).expect("sealed"), sealed);
    }

    #[test]
    fn the_key_round_trips_through_hex_and_never_shows_in_debug() {
        let key = SealKey::generate().expect("key");
        let text = key.expose_hex();
        assert_eq!(text.len(), 128);
        assert_eq!(SealKey::parse(&text), Some(key.clone()));
        assert_eq!(SealKey::parse(&text[..126]), None);
        assert_eq!(format!("{key:?}"), "SealKey([redacted])");
    }
}
