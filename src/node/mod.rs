//! Node configuration: one Ignition config (spec 3.3.0) per node, which makes a stock
//! Flatcar image into a Kubernetes control plane or worker at first boot, with no SSH.
//! Control planes get the CAs; workers get only the join token and the CA's hash. Secrets
//! travel sealed ([`seal`]); everything else stays readable, so a config can be reviewed.

pub mod kubeadm;
pub mod restore;
pub mod seal;
pub(crate) mod units;
pub mod upgrade;
pub(crate) mod vip;

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use flate2::Compression;
use flate2::write::GzEncoder;
use ignition_config::v3_3 as ign;

use crate::pki::{BootstrapToken, ClusterPki};
use crate::spec::{ClusterSpec, NodeName, Role};

use seal::{SEALED_SUFFIX, SealError, SealKey};

use units::*;

/// Nova's limit on user_data, in bytes after base64 encoding.
pub const USER_DATA_LIMIT: usize = 65_535;
const IGNITION_VERSION: &str = "3.3.0";

/// How nodes reach the Kubernetes API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiEndpoint {
    /// The API's private address (the one control plane's, or the endpoint's with 3 or 5):
    /// nodes join through it.
    pub internal: Ipv4Addr,
    /// Its floating IP, if known: put in the serving certificate and in kubeconfigs.
    pub public: Option<IpAddr>,
}

/// How a node becomes part of its cluster at first boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrap {
    /// `kubeadm init`: the first control plane of a new cluster.
    Init,
    /// `kubeadm join` as a control plane, through the API's endpoint.
    JoinControlPlane,
    /// `kubeadm join` as a worker.
    JoinWorker,
}

impl Bootstrap {
    /// How a node of `role` bootstraps, given whether it initializes the cluster.
    pub fn of(role: Role, initializes: bool) -> Bootstrap {
        match (role, initializes) {
            (Role::ControlPlane, true) => Bootstrap::Init,
            (Role::ControlPlane, false) => Bootstrap::JoinControlPlane,
            (Role::Worker, _) => Bootstrap::JoinWorker,
        }
    }

    /// The argument the node's bootstrap script takes.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Bootstrap::Init => "init",
            Bootstrap::JoinControlPlane => "control-plane",
            Bootstrap::JoinWorker => "worker",
        }
    }
}

/// One node's rendered configuration.
#[derive(Debug, Clone)]
pub struct RenderedNode {
    pub(crate) name: String,
    pub role: Role,
    /// Ignition JSON, as given to Nova as user_data.
    pub(crate) ignition: String,
    /// The key that opens its sealed files: for its server's metadata only.
    pub(crate) seal_key: SealKey,
}

impl RenderedNode {
    /// The key that opens its sealed files, as its server's metadata holds it.
    pub fn seal_key(&self) -> &SealKey {
        &self.seal_key
    }

    /// Size of the user_data Nova receives (the Ignition JSON, base64-encoded).
    pub fn user_data_len(&self) -> usize {
        self.ignition.len().div_ceil(3) * 4
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "the Ignition config of {node} is {size} bytes as base64 user_data; Nova accepts at most {USER_DATA_LIMIT}\n  hint: fewer SSH keys, labels or taints on this node, or serve large files by URL"
    )]
    TooLarge { node: String, size: usize },
    #[error(
        "no SHA-256 is pinned for the Kubernetes {version} sysext image, and nodes must verify it\n  hint: add `sysext_sha256 = \"<digest>\"` under [kubernetes]; the bakery lists digests in {index}"
    )]
    UnpinnedSysext { version: String, index: String },
    #[error("cannot write YAML: {0}")]
    Yaml(String),
    #[error("cannot encode the Ignition config of {node}: {source}")]
    Json {
        node: String,
        source: serde_json::Error,
    },
    #[error("cannot compress file contents: {0}")]
    Compress(std::io::Error),
    #[error("cannot seal the node's secrets: {0}")]
    Seal(#[from] SealError),
}

impl NodeError {
    /// Whether the cluster file is what must change (a config too large, no digest).
    pub(crate) fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            NodeError::TooLarge { .. } | NodeError::UnpinnedSysext { .. }
        )
    }
}

/// Renders every node of a new cluster, whose first control plane initializes it, failing on
/// the first node whose user_data is too large.
pub fn render_cluster(
    spec: &ClusterSpec,
    pki: &ClusterPki,
    endpoint: &ApiEndpoint,
    token: &BootstrapToken,
) -> Result<Vec<RenderedNode>, NodeError> {
    let nodes = spec.nodes();
    let first = nodes.iter().position(|n| n.role == Role::ControlPlane);
    nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let bootstrap = Bootstrap::of(node.role, Some(i) == first);
            render_node(spec, pki, endpoint, token, node, bootstrap, None)
        })
        .collect()
}

/// Renders one node's Ignition config, its secrets sealed with a key of its own, and checks
/// it fits Nova's user_data limit. A control plane that initializes runs `kubeadm init`
/// (first restoring etcd from `restore`, when given); every other joins.
pub(crate) fn render_node(
    spec: &ClusterSpec,
    pki: &ClusterPki,
    endpoint: &ApiEndpoint,
    token: &BootstrapToken,
    node: &NodeName,
    bootstrap: Bootstrap,
    restore: Option<&restore::RestoreSource>,
) -> Result<RenderedNode, NodeError> {
    let mut config = Builder::new(SealKey::generate()?);
    config.common(spec)?;
    config.sealed(JOIN_TOKEN_FILE, token.expose())?;
    match (node.role, node.pool) {
        (Role::ControlPlane, _) => {
            let kubeadm_config = match bootstrap {
                Bootstrap::Init => kubeadm::init_config(spec, endpoint, pki.secrets_key.is_some())?,
                _ => kubeadm::join_control_plane_config(spec, pki, endpoint)?,
            };
            config.file(KUBEADM_TEMPLATE, &kubeadm_config, 0o600)?;
            if spec.control_plane.api_endpoint == crate::spec::ApiEndpointKind::Vip {
                config.file(
                    vip::VIP_TEMPLATE,
                    &vip::static_pod(endpoint.internal)?,
                    0o600,
                )?;
            }
            for (name, cert) in [
                ("ca.crt", &pki.ca.cert_pem),
                ("front-proxy-ca.crt", &pki.front_proxy_ca.cert_pem),
                ("etcd/ca.crt", &pki.etcd_ca.cert_pem),
                ("sa.pub", &pki.service_account.public_pem),
            ] {
                config.file(&format!("{PKI_SOURCE_DIR}/{name}"), cert, 0o644)?;
            }
            for (name, key) in [
                ("ca.key", &pki.ca.key_pem),
                ("front-proxy-ca.key", &pki.front_proxy_ca.key_pem),
                ("etcd/ca.key", &pki.etcd_ca.key_pem),
                ("sa.key", &pki.service_account.private_pem),
            ] {
                config.sealed(&format!("{PKI_SOURCE_DIR}/{name}"), key.expose())?;
            }
            config.directory(&format!("{PKI_SOURCE_DIR}/etcd"), 0o700);
            if let (Bootstrap::Init, Some(restore)) = (bootstrap, restore) {
                config.file(restore::RESTORE_SCRIPT, &restore::restore_script(), 0o755)?;
                config.sealed(restore::RESTORE_ENV, &restore.env_file())?;
                if let Some(ca) = &restore.ca_bundle {
                    config.file(restore::RESTORE_CA, ca, 0o644)?;
                }
            }
            if let Some(key) = &pki.secrets_key {
                config.file(
                    units::ENCRYPTION_TEMPLATE,
                    &crate::pki::secrets_key::config_template(key.name()),
                    0o600,
                )?;
                config.sealed(units::SECRETS_KEY_FILE, key.expose())?;
            }
        }
        (Role::Worker, pool) => {
            let pool = pool.and_then(|i| spec.worker_pools.get(i));
            if let Some(pool) = pool {
                config.file(
                    KUBEADM_TEMPLATE,
                    &kubeadm::join_config(spec, pool, pki, endpoint)?,
                    0o600,
                )?;
            }
        }
    }
    config.unit(KUBEADM_UNIT, Some(kubeadm_unit(bootstrap)), true);

    let config_key = config.seal_key.clone();
    let ignition = serde_json::to_string(&config.finish()).map_err(|source| NodeError::Json {
        node: node.name.clone(),
        source,
    })?;
    let rendered = RenderedNode {
        name: node.name.clone(),
        role: node.role,
        ignition,
        seal_key: config_key,
    };
    let size = rendered.user_data_len();
    if size > USER_DATA_LIMIT {
        return Err(NodeError::TooLarge {
            node: rendered.name,
            size,
        });
    }
    Ok(rendered)
}

/// Collects files, links, units and users, then assembles the Ignition config.
struct Builder {
    seal_key: SealKey,
    files: Vec<ign::File>,
    directories: Vec<ign::Directory>,
    links: Vec<ign::Link>,
    units: Vec<ign::Unit>,
    users: Vec<ign::User>,
}

impl Builder {
    fn new(seal_key: SealKey) -> Builder {
        Builder {
            seal_key,
            files: Vec::new(),
            directories: Vec::new(),
            links: Vec::new(),
            units: Vec::new(),
            users: Vec::new(),
        }
    }

    /// What every node has: the Kubernetes sysext, update policy, bootstrap script, SSH keys.
    fn common(&mut self, spec: &ClusterSpec) -> Result<(), NodeError> {
        let k8s = &spec.kubernetes;
        let sha256 = k8s
            .sysext_sha256
            .as_ref()
            .ok_or_else(|| NodeError::UnpinnedSysext {
                version: k8s.version.to_string(),
                index: format!("{}/kubernetes/SHA256SUMS", crate::pins::SYSEXT_BAKERY),
            })?;
        let image = format!("{SYSEXT_DIR}/{}", k8s.version.sysext_file_name());
        self.files.push(ign::File {
            contents: Some(ign::Resource {
                source: Some(k8s.sysext_url.clone()),
                verification: Some(ign::Verification {
                    hash: Some(format!("sha256-{sha256}")),
                }),
                ..Default::default()
            }),
            mode: Some(0o644),
            ..ign::File::new(image.clone())
        });
        self.links.push(ign::Link {
            target: Some(image),
            hard: Some(false),
            ..ign::Link::new(SYSEXT_LINK.to_string())
        });
        if let Some(source_dir) = &k8s.sysupdate_url {
            let series = k8s.version.minor_series();
            self.file(
                &format!("/etc/sysupdate.kubernetes.d/kubernetes-v{series}.conf"),
                &sysupdate_transfer(spec, source_dir),
                0o644,
            )?;
            self.file("/etc/sysupdate.d/noop.conf", SYSUPDATE_NOOP, 0o644)?;
            self.unit("systemd-sysupdate.timer", None, true);
            self.units.push(ign::Unit {
                dropins: Some(vec![ign::Dropin {
                    contents: Some(sysupdate_dropin()),
                    ..ign::Dropin::new("flatstack-kubernetes.conf".to_string())
                }]),
                ..ign::Unit::new("systemd-sysupdate.service".to_string())
            });
        }
        self.file("/etc/flatcar/update.conf", &update_conf(spec), 0o644)?;
        self.units.push(ign::Unit {
            mask: Some(true),
            ..ign::Unit::new("locksmithd.service".to_string())
        });
        self.directory(CONFIG_DIR, 0o700);
        self.file(METADATA_GUARD_RULES, &metadata_guard_rules(spec), 0o644)?;
        self.unit(METADATA_GUARD_UNIT, Some(metadata_guard_unit()), true);
        self.file(BOOTSTRAP_SCRIPT, &bootstrap_script(), 0o755)?;
        self.file(UNSEAL_SCRIPT, &unseal_script(), 0o755)?;
        if !spec.access.ssh_public_keys.is_empty() {
            self.users.push(ign::User {
                ssh_authorized_keys: Some(spec.access.ssh_public_keys.clone()),
                ..ign::User::new("core".to_string())
            });
        }
        Ok(())
    }

    /// A file whose contents travel gzip-compressed in a base64 data URL.
    fn file(&mut self, path: &str, contents: &str, mode: i64) -> Result<(), NodeError> {
        self.file_bytes(path, contents.as_bytes(), mode)
    }

    /// A secret: written as `<path>.sealed`, which the node opens into `path` (mode 0600)
    /// before kubeadm runs. Sealed bytes do not compress, so they travel as they are.
    fn sealed(&mut self, path: &str, contents: &str) -> Result<(), NodeError> {
        let sealed = self.seal_key.seal(contents.as_bytes())?;
        self.files.push(ign::File {
            contents: Some(ign::Resource {
                source: Some(format!("data:;base64,{}", STANDARD.encode(sealed))),
                ..Default::default()
            }),
            mode: Some(0o600),
            overwrite: Some(true),
            ..ign::File::new(format!("{path}{SEALED_SUFFIX}"))
        });
        Ok(())
    }

    fn file_bytes(&mut self, path: &str, contents: &[u8], mode: i64) -> Result<(), NodeError> {
        self.files.push(ign::File {
            contents: Some(ign::Resource {
                source: Some(gzip_data_url(contents)?),
                compression: Some("gzip".to_string()),
                ..Default::default()
            }),
            mode: Some(mode),
            overwrite: Some(true),
            ..ign::File::new(path.to_string())
        });
        Ok(())
    }

    fn directory(&mut self, path: &str, mode: i64) {
        self.directories.push(ign::Directory {
            mode: Some(mode),
            ..ign::Directory::new(path.to_string())
        });
    }

    fn unit(&mut self, name: &str, contents: Option<String>, enabled: bool) {
        self.units.push(ign::Unit {
            contents,
            enabled: Some(enabled),
            ..ign::Unit::new(name.to_string())
        });
    }

    fn finish(self) -> ign::Config {
        let mut config = ign::Config::new(ign::Ignition {
            version: Some(IGNITION_VERSION.to_string()),
            ..Default::default()
        });
        config.storage = Some(ign::Storage {
            files: non_empty(self.files),
            directories: non_empty(self.directories),
            links: non_empty(self.links),
            ..Default::default()
        });
        config.systemd = Some(ign::Systemd {
            units: non_empty(self.units),
        });
        if !self.users.is_empty() {
            config.passwd = Some(ign::Passwd {
                users: Some(self.users),
                ..Default::default()
            });
        }
        config
    }
}

fn non_empty<T>(items: Vec<T>) -> Option<Vec<T>> {
    (!items.is_empty()).then_some(items)
}

/// `data:;base64,` URL of the gzip-compressed bytes.
fn gzip_data_url(bytes: &[u8]) -> Result<String, NodeError> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(bytes).map_err(NodeError::Compress)?;
    let compressed = encoder.finish().map_err(NodeError::Compress)?;
    Ok(format!("data:;base64,{}", STANDARD.encode(compressed)))
}
