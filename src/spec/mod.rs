//! The cluster file: its types, defaults, the profiles `flatstack init` writes, and the
//! validation that turns a TOML file into a [`ClusterSpec`] or a list of precise problems.

mod diagnostic;
mod document;
mod parse;
pub(crate) mod profile;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use ipnet::{IpNet, Ipv4Net};

pub(crate) use diagnostic::InvalidClusterFile;
pub(crate) use parse::{NAME_RULE, is_valid_name};

use crate::pins::KubernetesVersion;

/// The largest cluster file flatstack reads.
pub(crate) const MAX_FILE_BYTES: u64 = 1 << 20;

/// A validated cluster file.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSpec {
    /// DNS-1123 label; prefixes every node and cloud resource name.
    pub(crate) name: String,
    /// Entry in `clouds.yaml` naming the OpenStack cloud; `None` leaves the choice to
    /// `--cloud`, `OS_CLOUD` or the `OS_*` variables of an openrc file.
    pub(crate) cloud: Option<String>,
    pub(crate) kubernetes: KubernetesSpec,
    pub(crate) flatcar: FlatcarSpec,
    pub(crate) control_plane: ControlPlaneSpec,
    pub worker_pools: Vec<WorkerPool>,
    pub network: NetworkSpec,
    pub(crate) access: AccessSpec,
    pub(crate) addons: AddonsSpec,
    pub ingress: IngressSpec,
    pub(crate) updates: UpdatesSpec,
    /// Settings for `flatstack jupyterhub`; defaults when the file has no `[jupyterhub]`.
    pub(crate) jupyterhub: JupyterHubSpec,
    pub(crate) backup: BackupSpec,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KubernetesSpec {
    pub(crate) version: KubernetesVersion,
    /// Where nodes download the Kubernetes system extension image.
    pub(crate) sysext_url: String,
    /// Lowercase hex SHA-256 of that image; Ignition refuses any other content. `None` when
    /// the file gives none: `sysext::pin` then finds the recorded or published one, which is
    /// set here before nodes are rendered.
    pub(crate) sysext_sha256: Option<String>,
    /// Directory holding `kubernetes-vX.Y.*` images and a `SHA256SUMS` index, which
    /// systemd-sysupdate on each node polls for patch releases; `None` turns patch updates off.
    pub(crate) sysupdate_url: Option<String>,
}

/// Flatcar release channels, which are also the default update groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channel {
    Stable,
    Beta,
    Alpha,
    Lts,
}

impl Channel {
    pub(crate) const ALL: [Channel; 4] =
        [Channel::Stable, Channel::Beta, Channel::Alpha, Channel::Lts];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Channel::Stable => "stable",
            Channel::Beta => "beta",
            Channel::Alpha => "alpha",
            Channel::Lts => "lts",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FlatcarSpec {
    pub(crate) channel: Channel,
    /// An exact release such as `4230.2.3`; `None` means the newest of the channel.
    pub(crate) version: Option<String>,
    /// A Glance image to boot instead of the one `flatstack image ensure` uploads.
    pub(crate) image: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ControlPlaneSpec {
    /// 1, 3 or 5: etcd keeps quorum with a majority of its members.
    pub(crate) count: u32,
    pub(crate) flavor: String,
    /// Boot from a Cinder volume of this size instead of the flavor's root disk.
    pub(crate) boot_volume_gb: Option<u32>,
    pub(crate) api_endpoint: ApiEndpointKind,
    /// Whether the file names the endpoint; otherwise flatstack chooses it for the cloud
    /// (see `plan::endpoint::choose`).
    pub(crate) api_endpoint_given: bool,
}

impl ControlPlaneSpec {
    /// Whether the API's address belongs to an endpoint of its own rather than a server.
    pub(crate) fn highly_available(&self) -> bool {
        self.api_endpoint != ApiEndpointKind::ControlPlane
    }
}

/// What holds the API's address (`control_plane.api_endpoint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ApiEndpointKind {
    /// One control plane: the address is its port's.
    ControlPlane,
    /// 3 or 5: a port of its own whose address every control plane may hold, held by one.
    Vip,
    /// 3 or 5: an Octavia load balancer whose VIP is a port of its own, spreading connections
    /// over the control planes.
    LoadBalancer,
}

impl ApiEndpointKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ApiEndpointKind::ControlPlane => "control-plane",
            ApiEndpointKind::Vip => "vip",
            ApiEndpointKind::LoadBalancer => "load-balancer",
        }
    }

    /// Why the cluster's API is reached this way, for `plan`.
    pub(crate) fn why(self) -> &'static str {
        match self {
            ApiEndpointKind::ControlPlane => {
                "the API's address is its port's, and the cluster stops with it"
            }
            ApiEndpointKind::Vip => {
                "a port of its own holds the API's address and floating IP; one control plane at a time answers on it (kube-vip), another takes it over within about 15 s when that one fails"
            }
            ApiEndpointKind::LoadBalancer => {
                "an Octavia load balancer on a port of its own holds the API's address and floating IP and spreads connections over the control planes whose API answers"
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkerPool {
    pub(crate) name: String,
    pub(crate) count: u32,
    pub(crate) flavor: String,
    pub(crate) boot_volume_gb: Option<u32>,
    /// How many nodes a rolling replacement makes before the nodes they replace are gone.
    pub(crate) max_surge: u32,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) taints: Vec<Taint>,
    /// How the pool's nodes move to another Kubernetes release.
    pub(crate) upgrade: PoolUpgrade,
}

/// How a worker pool's nodes move to another Kubernetes release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum PoolUpgrade {
    /// Each node upgraded where it runs (kubeadm, then the new image), one at a time.
    #[default]
    InPlace,
    /// New nodes at the new release first, then the old ones drained and deleted (the rolling
    /// replacement a flavor change makes), once the control planes run it.
    Replace,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Taint {
    pub(crate) key: String,
    pub(crate) value: Option<String>,
    pub(crate) effect: TaintEffect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl TaintEffect {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
}

/// Whether the cluster brings its own network or joins one that exists.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum NetworkMode {
    /// flatstack creates a network, a subnet with `node_cidr` and a router to the external network.
    Create,
    /// flatstack attaches the nodes to existing resources, found by name or ID.
    Reuse {
        network: String,
        subnet: Option<String>,
        router: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct NetworkSpec {
    pub(crate) mode: NetworkMode,
    /// The external network floating IPs come from.
    pub(crate) external_network: String,
    /// Node addresses; always set when flatstack creates the network.
    pub(crate) node_cidr: Option<Ipv4Net>,
    pub pod_cidr: Ipv4Net,
    pub(crate) service_cidr: Ipv4Net,
    pub(crate) dns_servers: Vec<IpAddr>,
}

/// On a network flatstack creates, the first this many host addresses of `node_cidr` are kept
/// out of Neutron's allocation pool: the gateway (the first), the API address (the tenth) and
/// room for more fixed addresses. Neutron hands out pool addresses in random order, so a
/// worker's or DHCP port could otherwise take the API address before its port exists.
pub(crate) const FIXED_NODE_ADDRESSES: usize = 16;

impl NetworkSpec {
    /// The API's fixed address on a network flatstack creates: the tenth host address, the
    /// first control plane's port's with one control plane, the endpoint's with 3 or 5.
    pub(crate) fn default_api_address(&self) -> Option<Ipv4Addr> {
        match (&self.mode, self.node_cidr) {
            (NetworkMode::Create, Some(cidr)) => cidr.hosts().nth(9),
            _ => None,
        }
    }

    /// The fixed address of control plane `index` (0-based) behind an endpoint of its own, on
    /// a network flatstack creates: the host addresses after the API's (11th to 15th).
    pub(crate) fn control_plane_address(&self, index: usize) -> Option<Ipv4Addr> {
        match (&self.mode, self.node_cidr) {
            (NetworkMode::Create, Some(cidr)) if 10 + index < FIXED_NODE_ADDRESSES => {
                cidr.hosts().nth(10 + index)
            }
            _ => None,
        }
    }

    /// The first and last address Neutron may give ports on the subnet flatstack creates:
    /// every host address after the fixed ones.
    pub(crate) fn node_address_pool(&self) -> Option<(Ipv4Addr, Ipv4Addr)> {
        match (&self.mode, self.node_cidr) {
            (NetworkMode::Create, Some(cidr)) => Some((
                cidr.hosts().nth(FIXED_NODE_ADDRESSES)?,
                cidr.hosts().last()?,
            )),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AccessSpec {
    /// Keys installed for the `core` user through Ignition.
    pub(crate) ssh_public_keys: Vec<String>,
    /// A Nova keypair whose key Afterburn installs for `core` as well.
    pub(crate) keypair: Option<String>,
    /// Who may reach the Kubernetes API (6443); the API demands client certificates.
    pub(crate) api_cidrs: Vec<IpNet>,
    /// Who may reach SSH (22); empty keeps SSH closed.
    pub(crate) ssh_cidrs: Vec<IpNet>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AddonsSpec {
    pub(crate) cloud_controller: bool,
    pub(crate) cinder_csi: bool,
    pub(crate) ingress: bool,
    pub(crate) metrics_server: bool,
    pub(crate) kured: bool,
}

/// How the ingress controller is reached from outside the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IngressExposure {
    /// Traefik on the control planes' host network: ports 80 and 443 of the API's floating IP.
    ControlPlane,
    /// A Service of type LoadBalancer: the cloud controller makes an Octavia load balancer
    /// with a floating IP of its own.
    LoadBalancer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressSpec {
    pub(crate) exposure: IngressExposure,
    /// Who may reach ports 80 and 443 of the control planes (control-plane exposure).
    pub(crate) http_cidrs: Vec<IpNet>,
    /// The DNS name pointing at the ingress, e.g. `hub.<project>.projects.jetstream-cloud.org`.
    pub(crate) hostname: Option<String>,
    /// Let's Encrypt through cert-manager; set exactly when `hostname` is.
    pub(crate) acme: Option<AcmeSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AcmeSpec {
    /// The ACME account's contact address.
    pub(crate) email: String,
    /// The ACME directory URL (Let's Encrypt production unless the file says otherwise).
    pub(crate) server: String,
}

/// Let's Encrypt's ACME directories.
pub(crate) const LETSENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// Who may log in to JupyterHub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Authenticator {
    /// Any user name with one shared password that flatstack generates and keeps in the state
    /// directory (JupyterHub's shared-password authenticator): for trials only.
    SharedPassword,
    /// GitHub OAuth; the client secret is read from the environment variable named here when
    /// `flatstack jupyterhub` runs, never from the file.
    GitHub {
        client_id: String,
        client_secret_env: String,
        allowed_organizations: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JupyterHubSpec {
    pub(crate) namespace: String,
    pub(crate) authenticator: Authenticator,
    pub(crate) admin_users: Vec<String>,
    /// Empty: everyone the authenticator lets in (GitHub: members of the allowed organizations).
    pub(crate) allowed_users: Vec<String>,
    /// Each user's persistent home directory, a Cinder volume.
    pub(crate) user_storage_gb: u32,
    /// A YAML file of chart values merged over flatstack's (relative to the cluster file).
    pub(crate) values_file: Option<std::path::PathBuf>,
}

/// Snapshots of etcd in the cloud's object store (`[backup]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BackupSpec {
    /// `None`: on where the cloud's catalog has an object store; `Some(true)`: required (a
    /// cloud without one is refused); `Some(false)`: off.
    pub(crate) enabled: Option<bool>,
    /// Hours between snapshots; divides a day.
    pub(crate) every_hours: u32,
    /// Snapshots kept; older ones are deleted.
    pub(crate) keep: u32,
    pub(crate) store: BackupStore,
}

/// Which object store holds the snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BackupStore {
    /// The cloud's Swift, through the cluster's own login.
    Swift,
    /// An S3-compatible endpoint, with an access key from secure.yaml or the environment.
    S3 { endpoint: String, region: String },
}

impl Default for BackupSpec {
    fn default() -> Self {
        BackupSpec {
            enabled: None,
            every_hours: 6,
            keep: 14,
            store: BackupStore::Swift,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UpdatesSpec {
    /// Whether update-engine downloads new Flatcar releases.
    pub(crate) enabled: bool,
    /// The update group (`stable`, `beta`, ... or a Nebraska group).
    pub(crate) group: String,
    /// A custom Omaha update server (Nebraska), if any.
    pub(crate) server: Option<String>,
    pub(crate) reboot_window: RebootWindow,
}

/// When kured may reboot nodes, one at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RebootWindow {
    pub(crate) days: Vec<String>,
    /// `HH:MM`, 24-hour clock.
    pub(crate) start: String,
    pub(crate) end: String,
    /// An IANA time zone such as `UTC` or `America/Indiana/Indianapolis`.
    pub(crate) timezone: String,
}

impl ClusterSpec {
    /// Parses and validates a cluster file's text; `path` is only used in messages.
    pub fn parse(path: &str, text: &str) -> Result<ClusterSpec, InvalidClusterFile> {
        parse::parse(text).map_err(|problems| InvalidClusterFile {
            path: path.to_string(),
            text: text.to_string(),
            problems,
        })
    }

    /// Reads and validates a cluster file: a regular file of at most [`MAX_FILE_BYTES`] (a
    /// FIFO would hang the read, a device would never end it).
    pub(crate) fn load(path: &Path) -> Result<ClusterSpec, LoadError> {
        use std::io::Read as _;
        let failed = |source: std::io::Error| LoadError::Read {
            path: path.display().to_string(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(failed)?;
        if !meta.is_file() {
            return Err(failed(std::io::Error::other("not a regular file")));
        }
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(failed)?
            .take(MAX_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(failed)?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(failed(std::io::Error::other(format!(
                "larger than {} KiB; a cluster file is a few hundred lines",
                MAX_FILE_BYTES >> 10
            ))));
        }
        Ok(ClusterSpec::parse(&path.display().to_string(), &text)?)
    }

    /// Whether some worker can take any pod: a pool with nodes and no taint that keeps pods
    /// away (`NoSchedule`, `NoExecute`). Without one, the control planes take them.
    pub fn has_general_workers(&self) -> bool {
        self.worker_pools.iter().any(|pool| {
            pool.count > 0
                && pool
                    .taints
                    .iter()
                    .all(|t| t.effect == TaintEffect::PreferNoSchedule)
        })
    }

    /// Every node of the cluster, control planes first, in a stable order.
    pub fn nodes(&self) -> Vec<NodeName> {
        let control_planes = (1..=self.control_plane.count).map(|n| NodeName {
            name: format!("{}-control-plane-{n}", self.name),
            role: Role::ControlPlane,
            pool: None,
        });
        let workers = self
            .worker_pools
            .iter()
            .enumerate()
            .flat_map(|(index, pool)| {
                (1..=pool.count).map(move |n| NodeName {
                    name: format!("{}-{}-{n}", self.name, pool.name),
                    role: Role::Worker,
                    pool: Some(index),
                })
            });
        control_planes.chain(workers).collect()
    }
}

/// A minimal valid cluster (`demo`, Kubernetes 1.37.1, one control plane, no workers) with
/// the TOML in `extra` appended: for unit tests of what is made from a spec.
#[cfg(test)]
pub(crate) fn test_spec(extra: &str) -> ClusterSpec {
    let text = format!(
        "name = \"demo\"\ncloud = \"c\"\n[kubernetes]\nversion = \"1.37.1\"\nsysext_sha256 = \"{}\"\n[control_plane]\nflavor = \"m3.small\"\n{extra}",
        "a".repeat(64)
    );
    ClusterSpec::parse("cluster.toml", &text).expect("valid")
}

/// A node the cluster file asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeName {
    pub name: String,
    pub role: Role,
    /// Index into [`ClusterSpec::worker_pools`] for workers.
    pub pool: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    ControlPlane,
    Worker,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error("cannot read cluster file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] InvalidClusterFile),
}
