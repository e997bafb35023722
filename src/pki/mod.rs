//! The cluster's local PKI: the three CAs kubeadm expects, the service-account key pair, the
//! bootstrap token, the token discovery hash and the administrators' client certificates.
//! Created once in the state directory and reused on every later run, so that nodes and
//! kubeconfigs made at different times trust each other.

mod kubeconfig;
pub(crate) mod secrets_key;
mod state_dir;
mod token;

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

pub(crate) use kubeconfig::{Kubeconfig, kubeconfig_yaml, merge_into_user_kubeconfig};
pub use secrets_key::SecretsKey;
pub use state_dir::{StateDir, WriterLock, write_atomically};
pub use token::BootstrapToken;
pub(crate) use token::random_chars;

pub(crate) use crate::secret::Secret;

/// Directory of the PKI inside the state directory.
const PKI_DIR: &str = "pki";
/// Where a PKI being created is assembled before it is renamed into place.
const PKI_NEW_DIR: &str = "pki.new";
const CA_VALIDITY_DAYS: i64 = 3650;
const CLIENT_VALIDITY_DAYS: i64 = 365;
/// An administrator's certificate is re-issued (for its own key) by `up` and `kubeconfig`
/// once fewer than this many days of it are left.
const RENEW_WITHIN_DAYS: i64 = 60;

/// One of flatstack's own client certificates and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// `admin` or `super-admin`.
    pub who: &'static str,
    pub not_after: OffsetDateTime,
}

impl ClientCertificate {
    /// `expires 2027-12-06 (in 365 days)` or `expired 2026-12-01 (5 days ago)`.
    pub fn describe(&self, now: OffsetDateTime) -> String {
        let date = self.not_after.date();
        let days = (self.not_after - now).whole_days();
        if days >= 0 {
            format!("expires {date} (in {days} days)")
        } else {
            format!("expired {date} ({} days ago)", -days)
        }
    }

    /// Within the days before expiry when `up` and `kubeconfig` re-issue it.
    pub fn due(&self, now: OffsetDateTime) -> bool {
        self.not_after - now < Duration::days(RENEW_WITHIN_DAYS)
    }
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: Secret,
}

/// The service-account signing key pair (kubeadm's `sa.key` / `sa.pub`).
#[derive(Debug, Clone)]
pub(crate) struct ServiceAccountKey {
    pub(crate) public_pem: String,
    pub(crate) private_pem: Secret,
}

/// Everything the cluster's trust is made of.
#[derive(Debug, Clone)]
pub struct ClusterPki {
    pub ca: CertAndKey,
    pub(crate) front_proxy_ca: CertAndKey,
    pub(crate) etcd_ca: CertAndKey,
    pub(crate) service_account: ServiceAccountKey,
    /// Client certificate in `kubeadm:cluster-admins`, bound to cluster-admin by kubeadm.
    pub(crate) admin: CertAndKey,
    /// Break-glass client certificate in `system:masters`; never leaves the workstation.
    pub(crate) super_admin: CertAndKey,
    /// The key Secrets are encrypted with at rest; `None` in a PKI made before flatstack
    /// encrypted them, until [`ClusterPki::ensure_secrets_key`] adds one.
    pub(crate) secrets_key: Option<SecretsKey>,
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot {action} {}: {source}{}", path.display(), io_hint(source))]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} has mode {mode:04o}, so others can read the cluster's keys; flatstack wants {wanted:04o}\n  hint: run `chmod {wanted:o} {}` if no one else has read it, or rotate the cluster's credentials if someone may have",
        path.display(),
        path.display()
    )]
    LoosePermissions {
        path: PathBuf,
        mode: u32,
        wanted: u32,
    },
    #[error("{} is not a directory; choose another --state-dir", .0.display())]
    NotADirectory(PathBuf),
    #[error("neither XDG_DATA_HOME nor HOME is set; pass --state-dir")]
    NoHome,
    #[error("{0}, so there is no kubeconfig to merge into\n  hint: set KUBECONFIG to the file")]
    NoUserKubeconfig(&'static str),
    #[error(
        "another flatstack is changing this cluster right now ({holder}); nothing was changed\n  hint: wait for it to finish, then run this again (the lock is {} and goes with the process that holds it)",
        path.display()
    )]
    Busy { path: PathBuf, holder: String },
    #[error(
        "the PKI in {} is incomplete: {name} is missing or unreadable ({detail})\n  hint: restore it from a backup; if no node was ever created with this PKI, delete {} to start afresh",
        dir.display(),
        dir.display()
    )]
    Incomplete {
        dir: PathBuf,
        name: &'static str,
        detail: String,
    },
    #[error(
        "the PKI in {} is damaged: {name} {problem}\n  hint: restore the state directory from a backup; nodes already trust the PKI they were made with, so a new one would not do",
        dir.display()
    )]
    Damaged {
        dir: PathBuf,
        name: &'static str,
        problem: String,
    },
    #[error("cannot create {what}: {source}")]
    Generate {
        what: &'static str,
        source: rcgen::Error,
    },
    #[error("cannot write a kubeconfig: {0}")]
    Serialize(String),
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
}

/// What to do when the state directory cannot be written.
fn io_hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            "\n  hint: flatstack keeps the cluster's PKI there; make the directory writable for you, or pass --state-dir (or FLATSTACK_STATE_DIR) to use another"
        }
        _ => "",
    }
}

impl PkiError {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        PkiError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// File names of every PKI item, in the state directory's `pki/`.
mod names {
    pub(crate) const CA_CRT: &str = "ca.crt";
    pub(crate) const CA_KEY: &str = "ca.key";
    pub(crate) const FRONT_PROXY_CA_CRT: &str = "front-proxy-ca.crt";
    pub(crate) const FRONT_PROXY_CA_KEY: &str = "front-proxy-ca.key";
    pub(crate) const ETCD_CA_CRT: &str = "etcd-ca.crt";
    pub(crate) const ETCD_CA_KEY: &str = "etcd-ca.key";
    pub(crate) const SA_PUB: &str = "sa.pub";
    pub(crate) const SA_KEY: &str = "sa.key";
    pub(crate) const ADMIN_CRT: &str = "admin.crt";
    pub(crate) const ADMIN_KEY: &str = "admin.key";
    pub(crate) const SUPER_ADMIN_CRT: &str = "super-admin.crt";
    pub(crate) const SUPER_ADMIN_KEY: &str = "super-admin.key";
}

impl PkiError {
    /// Whether the state directory is what must change (unsafe, incomplete or damaged), as
    /// opposed to a failure while using it.
    pub(crate) fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            PkiError::LoosePermissions { .. }
                | PkiError::NotADirectory(_)
                | PkiError::Incomplete { .. }
                | PkiError::Damaged { .. }
                | PkiError::Busy { .. }
        ) || matches!(self, PkiError::Io { source, .. } if !io_hint(source).is_empty())
    }
}

/// The PKI directory of `state`, which must be there.
fn pki_dir(state: &StateDir) -> Result<StateDir, PkiError> {
    StateDir::open_existing(&state.join(PKI_DIR))?.ok_or_else(|| PkiError::Incomplete {
        dir: state.join(PKI_DIR),
        name: "pki",
        detail: "directory vanished".into(),
    })
}

impl ClusterPki {
    /// Loads the PKI from the state directory, or creates it there if it has none yet.
    /// Creation is all or nothing: it is assembled aside and renamed into place.
    pub fn load_or_create(state: &StateDir) -> Result<ClusterPki, PkiError> {
        let dir = state.join(PKI_DIR);
        if dir.exists() {
            return ClusterPki::load(&dir);
        }
        let staging = state.join(PKI_NEW_DIR);
        if staging.exists() {
            // A previous run stopped before the rename: nothing used this PKI yet.
            std::fs::remove_dir_all(&staging)
                .map_err(|source| PkiError::io("remove", &staging, source))?;
        }
        let pki = ClusterPki::generate()?;
        let new_dir = StateDir::open_or_create(&staging)?;
        pki.write(&new_dir)?;
        std::fs::rename(&staging, &dir)
            .map_err(|source| PkiError::io("rename", &staging, source))?;
        Ok(pki)
    }

    /// Loads the PKI from the state directory; `None` when it has none.
    pub(crate) fn load_existing(state: &StateDir) -> Result<Option<ClusterPki>, PkiError> {
        let dir = state.join(PKI_DIR);
        if dir.exists() {
            ClusterPki::load(&dir).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Creates a new PKI in memory.
    pub fn generate() -> Result<ClusterPki, PkiError> {
        let ca = new_ca("kubernetes")?;
        let front_proxy_ca = new_ca("front-proxy-ca")?;
        let etcd_ca = new_ca("etcd-ca")?;
        let sa = new_key("the service-account key")?;
        let admin = new_client_cert(&ca, ADMIN_COMMON_NAME, ADMIN_GROUP)?;
        let super_admin = new_client_cert(&ca, SUPER_ADMIN_COMMON_NAME, SUPER_ADMIN_GROUP)?;
        Ok(ClusterPki {
            ca,
            front_proxy_ca,
            etcd_ca,
            service_account: ServiceAccountKey {
                public_pem: sa.public_key_pem(),
                private_pem: Secret::new(sa.serialize_pem()),
            },
            admin,
            super_admin,
            secrets_key: Some(SecretsKey::generate()?),
        })
    }

    /// Adds a Secrets key to a PKI made before flatstack encrypted Secrets (its cluster's
    /// API servers run without one: a key added now is used by clusters made, or restored, from
    /// here on).
    pub(crate) fn ensure_secrets_key(&mut self, state: &StateDir) -> Result<(), PkiError> {
        if self.secrets_key.is_some() {
            return Ok(());
        }
        let key = SecretsKey::generate()?.write_new(&pki_dir(state)?)?;
        self.secrets_key = Some(key);
        Ok(())
    }

    fn write(&self, dir: &StateDir) -> Result<(), PkiError> {
        use names::*;
        let public = [
            (CA_CRT, &self.ca.cert_pem),
            (FRONT_PROXY_CA_CRT, &self.front_proxy_ca.cert_pem),
            (ETCD_CA_CRT, &self.etcd_ca.cert_pem),
            (SA_PUB, &self.service_account.public_pem),
            (ADMIN_CRT, &self.admin.cert_pem),
            (SUPER_ADMIN_CRT, &self.super_admin.cert_pem),
        ];
        for (name, pem) in public {
            dir.write(name, pem.as_bytes(), 0o644)?;
        }
        let secret = [
            (CA_KEY, &self.ca.key_pem),
            (FRONT_PROXY_CA_KEY, &self.front_proxy_ca.key_pem),
            (ETCD_CA_KEY, &self.etcd_ca.key_pem),
            (SA_KEY, &self.service_account.private_pem),
            (ADMIN_KEY, &self.admin.key_pem),
            (SUPER_ADMIN_KEY, &self.super_admin.key_pem),
        ];
        for (name, pem) in secret {
            dir.write(name, pem.expose().as_bytes(), 0o600)?;
        }
        if let Some(key) = &self.secrets_key {
            key.write(dir)?;
        }
        Ok(())
    }

    fn load(path: &Path) -> Result<ClusterPki, PkiError> {
        use names::*;
        let dir = StateDir::open_existing(path)?.ok_or_else(|| PkiError::Incomplete {
            dir: path.to_path_buf(),
            name: "pki",
            detail: "directory vanished".into(),
        })?;
        let incomplete = |name: &'static str| {
            let dir = path.to_path_buf();
            move |e: PkiError| match e {
                PkiError::LoosePermissions { .. } => e,
                other => PkiError::Incomplete {
                    dir,
                    name,
                    detail: other.to_string(),
                },
            }
        };
        let public = |name: &'static str| -> Result<String, PkiError> {
            let text = dir.read_public(name).map_err(incomplete(name))?;
            if !text.contains("-----BEGIN") {
                return Err(PkiError::Incomplete {
                    dir: path.to_path_buf(),
                    name,
                    detail: "not PEM".into(),
                });
            }
            Ok(text)
        };
        let secret = |name: &'static str| -> Result<Secret, PkiError> {
            dir.read_secret(name)
                .map(Secret::new)
                .map_err(incomplete(name))
        };
        let pair = |crt: &'static str, key: &'static str| -> Result<CertAndKey, PkiError> {
            let pair = CertAndKey {
                cert_pem: public(crt)?,
                key_pem: secret(key)?,
            };
            KeyPair::from_pem(pair.key_pem.expose()).map_err(|e| PkiError::Incomplete {
                dir: path.to_path_buf(),
                name: key,
                detail: e.to_string(),
            })?;
            Ok(pair)
        };
        let pki = ClusterPki {
            ca: pair(CA_CRT, CA_KEY)?,
            front_proxy_ca: pair(FRONT_PROXY_CA_CRT, FRONT_PROXY_CA_KEY)?,
            etcd_ca: pair(ETCD_CA_CRT, ETCD_CA_KEY)?,
            service_account: ServiceAccountKey {
                public_pem: public(SA_PUB)?,
                private_pem: secret(SA_KEY)?,
            },
            admin: pair(ADMIN_CRT, ADMIN_KEY)?,
            super_admin: pair(SUPER_ADMIN_CRT, SUPER_ADMIN_KEY)?,
            secrets_key: match dir.join(secrets_key::FILE).exists() {
                false => None,
                true => {
                    let text = dir
                        .read_secret(secrets_key::FILE)
                        .map_err(incomplete(secrets_key::FILE))?;
                    Some(SecretsKey::parse(&text).ok_or_else(|| PkiError::Damaged {
                        dir: path.to_path_buf(),
                        name: secrets_key::FILE,
                        problem: "does not hold a name and a 32-byte key".into(),
                    })?)
                }
            },
        };
        pki.check_integrity(path)?;
        Ok(pki)
    }

    /// Every certificate parses and holds its key's public half; the CAs sign themselves and
    /// the administrators' certificates are signed by the cluster CA; `sa.pub` is `sa.key`'s.
    /// A PKI that fails here would hand nodes a wrong CA hash or a CA they cannot use.
    fn check_integrity(&self, dir: &Path) -> Result<(), PkiError> {
        use names::*;
        let damaged = |name: &'static str, problem: &str| PkiError::Damaged {
            dir: dir.to_path_buf(),
            name,
            problem: problem.to_string(),
        };
        let ders: Vec<(&'static str, &'static str, Vec<u8>, &CertAndKey)> = [
            (CA_CRT, CA_KEY, &self.ca),
            (FRONT_PROXY_CA_CRT, FRONT_PROXY_CA_KEY, &self.front_proxy_ca),
            (ETCD_CA_CRT, ETCD_CA_KEY, &self.etcd_ca),
            (ADMIN_CRT, ADMIN_KEY, &self.admin),
            (SUPER_ADMIN_CRT, SUPER_ADMIN_KEY, &self.super_admin),
        ]
        .into_iter()
        .map(|(crt, key, pair)| {
            x509_parser::pem::parse_x509_pem(pair.cert_pem.as_bytes())
                .ok()
                .filter(|(_, pem)| pem.label == "CERTIFICATE")
                .map(|(_, pem)| (crt, key, pem.contents, pair))
                .ok_or_else(|| damaged(crt, "is not a PEM certificate"))
        })
        .collect::<Result<_, _>>()?;
        let mut parsed = Vec::new();
        for (crt, key, der, pair) in &ders {
            let (_, cert) = x509_parser::parse_x509_certificate(der)
                .map_err(|_| damaged(crt, "is not an X.509 certificate"))?;
            let key_pair = KeyPair::from_pem(pair.key_pem.expose())
                .map_err(|_| damaged(key, "is not a private key"))?;
            if cert.public_key().subject_public_key.data.as_ref() != key_pair.public_key_raw() {
                return Err(damaged(
                    crt,
                    &format!("does not hold the public half of {key}"),
                ));
            }
            parsed.push((*crt, cert));
        }
        let ca = &parsed[0].1;
        for (name, cert) in &parsed {
            let issuer = if name.ends_with("ca.crt") { cert } else { ca };
            if cert.verify_signature(Some(issuer.public_key())).is_err() {
                let by = if name.ends_with("ca.crt") {
                    "itself"
                } else {
                    CA_CRT
                };
                return Err(damaged(name, &format!("is not signed by {by}")));
            }
        }
        let sa = KeyPair::from_pem(self.service_account.private_pem.expose())
            .map_err(|_| damaged(SA_KEY, "is not a private key"))?;
        if sa.public_key_pem().trim() != self.service_account.public_pem.trim() {
            return Err(damaged(
                SA_PUB,
                &format!("is not the public half of {SA_KEY}"),
            ));
        }
        Ok(())
    }

    /// When the administrators' client certificates expire.
    pub fn client_certificates(&self) -> Vec<ClientCertificate> {
        [("admin", &self.admin), ("super-admin", &self.super_admin)]
            .into_iter()
            .filter_map(|(who, pair)| {
                Some(ClientCertificate {
                    who,
                    not_after: not_after(&pair.cert_pem)?,
                })
            })
            .collect()
    }

    /// Re-issues, from the cluster CA and for the keys they have, the administrators' client
    /// certificates that are [`ClientCertificate::due`] at `now`, and writes them into the
    /// state directory (one file each, replaced atomically: a kubeconfig made before keeps
    /// working until its own certificate expires). Returns the certificates as they were.
    pub fn renew_client_certificates(
        &mut self,
        state: &StateDir,
        now: OffsetDateTime,
    ) -> Result<Vec<ClientCertificate>, PkiError> {
        use names::*;
        let due: Vec<ClientCertificate> = self
            .client_certificates()
            .into_iter()
            .filter(|c| c.due(now))
            .collect();
        if due.is_empty() {
            return Ok(due);
        }
        let dir = pki_dir(state)?;
        for old in &due {
            let (pair, file, common_name, group) = match old.who {
                "admin" => (&mut self.admin, ADMIN_CRT, ADMIN_COMMON_NAME, ADMIN_GROUP),
                _ => (
                    &mut self.super_admin,
                    SUPER_ADMIN_CRT,
                    SUPER_ADMIN_COMMON_NAME,
                    SUPER_ADMIN_GROUP,
                ),
            };
            let key =
                KeyPair::from_pem(pair.key_pem.expose()).map_err(|source| PkiError::Generate {
                    what: common_name,
                    source,
                })?;
            pair.cert_pem = client_cert_for(&self.ca, &key, common_name, group)?;
            dir.write(file, pair.cert_pem.as_bytes(), 0o644)?;
        }
        Ok(due)
    }

    /// kubeadm's `--discovery-token-ca-cert-hash`: SHA-256 over the cluster CA's
    /// SubjectPublicKeyInfo, exactly as it is encoded in the certificate.
    pub(crate) fn discovery_hash(&self) -> String {
        discovery_hash(&self.ca.cert_pem).unwrap_or_default()
    }
}

/// The discovery hash of a PEM certificate, `sha256:<hex>`; `None` if it does not parse.
pub(crate) fn discovery_hash(cert_pem: &str) -> Option<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let digest = Sha256::digest(cert.tbs_certificate.subject_pki.raw);
    Some(format!("sha256:{}", hex::encode(digest)))
}

fn new_key(what: &'static str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|source| PkiError::Generate { what, source })
}

fn base_params(common_name: &str, days: i64) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let now = OffsetDateTime::now_utc();
    // Tolerate clocks a little behind ours.
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(days);
    let mut serial = [0u8; 16];
    getrandom::fill(&mut serial).map_err(|e| PkiError::Random(e.to_string()))?;
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(params)
}

fn new_ca(common_name: &'static str) -> Result<CertAndKey, PkiError> {
    let key = new_key(common_name)?;
    let mut params = base_params(common_name, CA_VALIDITY_DAYS)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    let cert = params
        .self_signed(&key)
        .map_err(|source| PkiError::Generate {
            what: common_name,
            source,
        })?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: Secret::new(key.serialize_pem()),
    })
}

const ADMIN_COMMON_NAME: &str = "flatstack-admin";
/// Bound to cluster-admin by kubeadm.
const ADMIN_GROUP: &str = "kubeadm:cluster-admins";
const SUPER_ADMIN_COMMON_NAME: &str = "flatstack-super-admin";
const SUPER_ADMIN_GROUP: &str = "system:masters";

fn new_client_cert(
    ca: &CertAndKey,
    common_name: &'static str,
    group: &str,
) -> Result<CertAndKey, PkiError> {
    let key = new_key(common_name)?;
    Ok(CertAndKey {
        cert_pem: client_cert_for(ca, &key, common_name, group)?,
        key_pem: Secret::new(key.serialize_pem()),
    })
}

/// A client certificate for `key` in `group`, signed by `ca`, valid [`CLIENT_VALIDITY_DAYS`].
fn client_cert_for(
    ca: &CertAndKey,
    key: &KeyPair,
    common_name: &'static str,
    group: &str,
) -> Result<String, PkiError> {
    let generate = |source| PkiError::Generate {
        what: common_name,
        source,
    };
    let ca_key = KeyPair::from_pem(ca.key_pem.expose()).map_err(generate)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(generate)?;
    let mut params = base_params(common_name, CLIENT_VALIDITY_DAYS)?;
    params
        .distinguished_name
        .push(DnType::OrganizationName, group);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(key, &issuer).map_err(generate)?;
    Ok(cert.pem())
}

/// When the PEM certificate expires; `None` if it does not parse.
fn not_after(cert_pem: &str) -> Option<OffsetDateTime> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_keys() {
        let pki = ClusterPki::generate().expect("generate");
        let shown = format!("{pki:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        assert!(shown.contains("BEGIN CERTIFICATE"));
    }

    /// An administrator's certificate near its end is re-issued for the same key, signed by
    /// the cluster CA, written to the state directory; one far from it is left alone.
    #[test]
    fn client_certificates_are_reissued_before_they_expire() {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = StateDir::open_or_create(&dir.path().join("state")).expect("state");
        let mut pki = ClusterPki::load_or_create(&state).expect("pki");
        let now = OffsetDateTime::now_utc();
        let before = pki.client_certificates();
        assert_eq!(before.len(), 2);
        for cert in &before {
            assert_eq!(
                (cert.not_after - now).whole_days(),
                CLIENT_VALIDITY_DAYS - 1
            );
            assert!(!cert.due(now));
        }
        assert!(
            pki.renew_client_certificates(&state, now)
                .expect("renew")
                .is_empty()
        );

        let old_admin = pki.admin.clone();
        // 320 days on, 45 are left: both are due.
        let later = now + Duration::days(320);
        let renewed = pki.renew_client_certificates(&state, later).expect("renew");
        assert_eq!(
            renewed.iter().map(|c| c.who).collect::<Vec<_>>(),
            ["admin", "super-admin"]
        );
        assert!(renewed[0].describe(later).starts_with("expires "));
        assert_ne!(pki.admin.cert_pem, old_admin.cert_pem);
        assert_eq!(pki.admin.key_pem.expose(), old_admin.key_pem.expose());
        // What was written loads, passes the integrity checks (same key, signed by the CA)
        // and is the new certificate.
        let loaded = ClusterPki::load_existing(&state)
            .expect("load")
            .expect("pki");
        assert_eq!(loaded.admin.cert_pem, pki.admin.cert_pem);
        assert_eq!(loaded.super_admin.cert_pem, pki.super_admin.cert_pem);
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(loaded.admin.cert_pem.as_bytes()).expect("PEM");
        let cert = pem.parse_x509().expect("X.509");
        assert!(
            cert.subject()
                .to_string()
                .contains("kubeadm:cluster-admins")
        );
        let expired = ClientCertificate {
            who: "admin",
            not_after: now - Duration::days(5),
        };
        assert_eq!(
            expired.describe(now),
            format!("expired {} (5 days ago)", expired.not_after.date())
        );
    }

    #[test]
    fn discovery_hash_is_sha256_hex() {
        let pki = ClusterPki::generate().expect("generate");
        let hash = pki.discovery_hash();
        let hex = hash.strip_prefix("sha256:").expect("prefix");
        assert_eq!(hex.len(), 64);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(discovery_hash("not a certificate"), None);
    }
}
