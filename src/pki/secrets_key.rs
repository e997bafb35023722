//! The key that encrypts the cluster's Secrets at rest in etcd (kube-apiserver's
//! EncryptionConfiguration, `secretbox`): 32 random bytes, made with the PKI and kept beside it
//! (`pki/secrets-encryption.key`, 0600), delivered sealed to every control plane. The
//! configuration's shape travels readable; only the key is secret. Every control plane's
//! server records the key's fingerprint, so a state directory whose key is not the one the
//! cluster encrypts with is refused before it could hand a new control plane a key that reads
//! nothing.

use std::fmt;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::{PkiError, Secret, StateDir};

/// The file in the PKI directory.
pub(crate) const FILE: &str = "secrets-encryption.key";
/// Replaced by the key (base64) on the node, in the configuration's template.
pub(crate) const KEY_PLACEHOLDER: &str = "@SECRETS_KEY@";
/// Where the API server reads its EncryptionConfiguration: inside kubeadm's certificates
/// directory, which kubeadm already mounts (read-only) into the kube-apiserver static pod.
pub(crate) const CONFIG_PATH: &str = "/etc/kubernetes/pki/encryption/config.yaml";
/// The server metadata key holding the fingerprint.
pub const FINGERPRINT_METADATA: &str = "flatstack-secrets-key";

/// The key and its name (`EncryptionConfiguration` names every key; the name goes with each
/// value it encrypts, so an old key is found by it).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretsKey {
    name: String,
    secret: Secret,
}

impl fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretsKey({}, [redacted])", self.name)
    }
}

impl SecretsKey {
    pub(crate) fn generate() -> Result<SecretsKey, PkiError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| PkiError::Random(e.to_string()))?;
        Ok(SecretsKey {
            name: format!("flatstack-{}", super::random_chars(8)?),
            secret: Secret::new(base64::engine::general_purpose::STANDARD.encode(bytes)),
        })
    }

    /// `<name> <base64>`, as the file holds it.
    pub(crate) fn to_line(&self) -> String {
        format!("{} {}\n", self.name, self.secret.expose())
    }

    /// Reads [`SecretsKey::to_line`]'s text; `None` unless it holds a name and 32 bytes.
    pub(crate) fn parse(text: &str) -> Option<SecretsKey> {
        let (name, secret) = text.trim().split_once(' ')?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(secret)
            .ok()?;
        let named =
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        (named && bytes.len() == 32).then(|| SecretsKey {
            name: name.to_string(),
            secret: Secret::new(secret.to_string()),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The base64 key, for the node's sealed copy only.
    pub(crate) fn expose(&self) -> &str {
        self.secret.expose()
    }

    /// What the control planes' servers record: a digest of the key, which says nothing of it.
    pub(crate) fn fingerprint(&self) -> String {
        let digest = Sha256::digest(format!("flatstack secrets key\n{}", self.to_line()));
        format!("sha256:{}", hex::encode(&digest[..16]))
    }

    pub(crate) fn write(&self, dir: &StateDir) -> Result<(), PkiError> {
        dir.write(FILE, self.to_line().as_bytes(), 0o600)
            .map(|_| ())
    }

    /// Writes the key into the PKI directory `dir` unless one is there already (another
    /// command made it meanwhile: `render` takes no writer lock); the key there afterwards.
    pub(crate) fn write_new(&self, dir: &StateDir) -> Result<SecretsKey, PkiError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = dir.join(FILE);
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        match created {
            Ok(mut file) => {
                file.write_all(self.to_line().as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(|source| PkiError::io("write", &path, source))?;
                Ok(self.clone())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = dir.read_secret(FILE)?;
                SecretsKey::parse(&text).ok_or_else(|| PkiError::Damaged {
                    dir: dir.path().to_path_buf(),
                    name: FILE,
                    problem: "does not hold a name and a 32-byte key".into(),
                })
            }
            Err(source) => Err(PkiError::io("create", &path, source)),
        }
    }
}

/// The EncryptionConfiguration every control plane's API server reads, with
/// [`KEY_PLACEHOLDER`] where the key goes: Secrets are written with `secretbox` under the
/// key, and read with it or, for what was written before encryption (a restored snapshot of
/// an older cluster), as they are (`identity`, last).
pub(crate) fn config_template(key_name: &str) -> String {
    format!(
        "apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources:
      - secrets
    providers:
      - secretbox:
          keys:
            - name: \"{key_name}\"
              secret: \"{KEY_PLACEHOLDER}\"
      - identity: {{}}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_reads_back_from_its_line_and_never_shows() {
        let key = SecretsKey::generate().expect("key");
        assert_eq!(SecretsKey::parse(&key.to_line()), Some(key.clone()));
        assert!(!format!("{key:?}").contains(key.expose()));
        let fingerprint = key.fingerprint();
        assert!(
            fingerprint.len() == 39
                && fingerprint.starts_with("sha256:")
                && fingerprint[7..].bytes().all(|b| b.is_ascii_hexdigit()),
            "{fingerprint}"
        );
        assert_ne!(
            key.fingerprint(),
            SecretsKey::generate().expect("key").fingerprint()
        );
        let valid = "A".repeat(43) + "=";
        for bad in [
            String::new(),
            "name".into(),
            "name c2hvcnQ=".into(),
            format!("na:me {valid}"),
            format!(" {valid}"),
        ] {
            assert_eq!(SecretsKey::parse(&bad), None, "{bad}");
        }
    }

    #[test]
    fn the_configuration_lies_in_the_certificates_directory_kubeadm_mounts() {
        assert!(CONFIG_PATH.starts_with(&format!("{}/", crate::node::kubeadm::CERTIFICATES_DIR)));
    }

    #[test]
    fn the_template_encrypts_secrets_with_secretbox_and_reads_plain_ones_last() {
        let text = config_template("flatstack-abc");
        let value: serde_json::Value = serde_saphyr::from_str(&text).expect("YAML");
        assert_eq!(value["kind"], "EncryptionConfiguration");
        let resource = &value["resources"][0];
        assert_eq!(resource["resources"], serde_json::json!(["secrets"]));
        let providers = resource["providers"].as_array().expect("providers");
        assert_eq!(providers.len(), 2);
        assert_eq!(
            providers[0]["secretbox"]["keys"][0]["name"],
            "flatstack-abc"
        );
        assert_eq!(
            providers[0]["secretbox"]["keys"][0]["secret"],
            KEY_PLACEHOLDER
        );
        assert_eq!(providers[1]["identity"], serde_json::json!({}));
    }
}
