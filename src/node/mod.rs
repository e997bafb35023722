//! Node configuration: one Ignition config (spec 3.3.0) per node, which makes a stock
//! Flatcar image into a Kubernetes control plane or worker at first boot, with no SSH.
//! Control planes get the CAs; workers get only the bootstrap token and the CA's hash.

pub mod kubeadm;
pub(crate) mod units;

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use flate2::Compression;
use flate2::write::GzEncoder;
use ignition_config::v3_3 as ign;

use crate::pki::ClusterPki;
use crate::spec::{ClusterSpec, NodeName, Role};

use units::*;

/// Nova's limit on user_data, in bytes after base64 encoding.
pub const USER_DATA_LIMIT: usize = 65_535;
const IGNITION_VERSION: &str = "3.3.0";

/// How nodes reach the Kubernetes API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiEndpoint {
    /// The first control plane's private address: nodes join through it.
    pub internal: Ipv4Addr,
    /// Its floating IP, if known: put in the serving certificate and in kubeconfigs.
    pub public: Option<IpAddr>,
}

/// One node's rendered configuration.
#[derive(Debug, Clone)]
pub struct RenderedNode {
    pub(crate) name: String,
    pub role: Role,
    /// Ignition JSON, as given to Nova as user_data.
    pub(crate) ignition: String,
}

impl RenderedNode {
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

/// Renders every node of the cluster, failing on the first node whose user_data is too large.
pub fn render_cluster(
    spec: &ClusterSpec,
    pki: &ClusterPki,
    endpoint: &ApiEndpoint,
) -> Result<Vec<RenderedNode>, NodeError> {
    spec.nodes()
        .iter()
        .map(|node| render_node(spec, pki, endpoint, node))
        .collect()
}

/// Renders one node's Ignition config and checks it fits Nova's user_data limit.
pub(crate) fn render_node(
    spec: &ClusterSpec,
    pki: &ClusterPki,
    endpoint: &ApiEndpoint,
    node: &NodeName,
) -> Result<RenderedNode, NodeError> {
    let mut config = Builder::default();
    config.common(spec)?;
    match (node.role, node.pool) {
        (Role::ControlPlane, _) => {
            config.secret_file(
                KUBEADM_TEMPLATE,
                &kubeadm::init_config(spec, pki, endpoint)?,
            )?;
            for (name, contents, mode) in [
                ("ca.crt", pki.ca.cert_pem.as_str(), 0o644),
                ("ca.key", pki.ca.key_pem.expose(), 0o600),
                ("front-proxy-ca.crt", &pki.front_proxy_ca.cert_pem, 0o644),
                (
                    "front-proxy-ca.key",
                    pki.front_proxy_ca.key_pem.expose(),
                    0o600,
                ),
                ("etcd/ca.crt", &pki.etcd_ca.cert_pem, 0o644),
                ("etcd/ca.key", pki.etcd_ca.key_pem.expose(), 0o600),
                ("sa.pub", &pki.service_account.public_pem, 0o644),
                ("sa.key", pki.service_account.private_pem.expose(), 0o600),
            ] {
                config.file(&format!("{PKI_SOURCE_DIR}/{name}"), contents, mode)?;
            }
            config.directory(&format!("{PKI_SOURCE_DIR}/etcd"), 0o700);
        }
        (Role::Worker, pool) => {
            let pool = pool.and_then(|i| spec.worker_pools.get(i));
            if let Some(pool) = pool {
                config.secret_file(
                    KUBEADM_TEMPLATE,
                    &kubeadm::join_config(spec, pool, pki, endpoint)?,
                )?;
            }
        }
    }
    config.unit(KUBEADM_UNIT, Some(kubeadm_unit(node.role)), true);

    let ignition = serde_json::to_string(&config.finish()).map_err(|source| NodeError::Json {
        node: node.name.clone(),
        source,
    })?;
    let rendered = RenderedNode {
        name: node.name.clone(),
        role: node.role,
        ignition,
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
#[derive(Default)]
struct Builder {
    files: Vec<ign::File>,
    directories: Vec<ign::Directory>,
    links: Vec<ign::Link>,
    units: Vec<ign::Unit>,
    users: Vec<ign::User>,
}

impl Builder {
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
        self.files.push(ign::File {
            contents: Some(ign::Resource {
                source: Some(gzip_data_url(contents.as_bytes())?),
                compression: Some("gzip".to_string()),
                ..Default::default()
            }),
            mode: Some(mode),
            overwrite: Some(true),
            ..ign::File::new(path.to_string())
        });
        Ok(())
    }

    fn secret_file(&mut self, path: &str, contents: &str) -> Result<(), NodeError> {
        self.file(path, contents, 0o600)
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
