//! kubeadm configuration (`kubeadm.k8s.io/v1beta4`) for the control plane that initializes
//! the cluster (Init + Cluster configuration), for control planes that join it and for
//! workers (Join configurations). Values a node only learns at boot are placeholders the
//! bootstrap script fills in from Afterburn's metadata.

use std::net::IpAddr;

use serde::Serialize;

use crate::pki::ClusterPki;
use crate::spec::{ClusterSpec, Role, WorkerPool};

use super::{ApiEndpoint, NodeError};

/// Replaced by the node's name (its Nova server name) before kubeadm runs.
pub(crate) const NODE_NAME_PLACEHOLDER: &str = "@NODE_NAME@";
/// Replaced by the node's Nova instance UUID before kubeadm runs.
pub(crate) const INSTANCE_UUID_PLACEHOLDER: &str = "@INSTANCE_UUID@";

const API_VERSION: &str = "kubeadm.k8s.io/v1beta4";
const CRI_SOCKET: &str = "unix:///run/containerd/containerd.sock";
/// Where kubeadm looks for (and, finding them, reuses) the CAs flatstack made.
pub(crate) const CERTIFICATES_DIR: &str = "/etc/kubernetes/pki";
/// Replaced by the join token, opened from its sealed copy, before kubeadm runs: the token
/// never appears in clear in user_data.
pub(crate) const JOIN_TOKEN_PLACEHOLDER: &str = "@JOIN_TOKEN@";
/// How long a join token stays valid: nodes made by one `up` join within minutes, and `up`
/// deletes the token once they have; a later `up` makes a new one.
pub const JOIN_TOKEN_HOURS: i64 = 1;
/// How flatstack's join tokens describe themselves, and how `up` and `status` find them.
pub const JOIN_TOKEN_DESCRIPTION: &str = "flatstack: lets the nodes of one run join";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InitConfiguration<'a> {
    api_version: &'a str,
    kind: &'a str,
    bootstrap_tokens: Vec<BootstrapToken<'a>>,
    node_registration: NodeRegistration<'a>,
    #[serde(rename = "localAPIEndpoint")]
    local_api_endpoint: LocalApiEndpoint,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BootstrapToken<'a> {
    token: &'a str,
    description: &'a str,
    ttl: String,
    usages: [&'a str; 2],
    groups: [&'a str; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeRegistration<'a> {
    name: &'a str,
    cri_socket: &'a str,
    kubelet_extra_args: Vec<Arg>,
    #[serde(skip_serializing_if = "Option::is_none")]
    taints: Option<Vec<Taint>>,
}

#[derive(Serialize)]
struct Arg {
    name: String,
    value: String,
}

#[derive(Serialize)]
struct Taint {
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    effect: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LocalApiEndpoint {
    bind_port: u16,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClusterConfiguration<'a> {
    api_version: &'a str,
    kind: &'a str,
    cluster_name: &'a str,
    kubernetes_version: String,
    control_plane_endpoint: String,
    certificates_dir: &'a str,
    encryption_algorithm: &'a str,
    #[serde(rename = "apiServer")]
    api_server: ApiServer,
    networking: Networking,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ApiServer {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    extra_args: Vec<Arg>,
    #[serde(rename = "certSANs")]
    cert_sans: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Networking {
    pod_subnet: String,
    service_subnet: String,
    dns_domain: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JoinConfiguration<'a> {
    api_version: &'a str,
    kind: &'a str,
    discovery: Discovery<'a>,
    node_registration: NodeRegistration<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    control_plane: Option<JoinControlPlane>,
}

/// A joining control plane's own API server; its certificates are made from the CAs
/// flatstack delivered, so there is no certificate key.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JoinControlPlane {
    #[serde(rename = "localAPIEndpoint")]
    local_api_endpoint: LocalApiEndpoint,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Discovery<'a> {
    bootstrap_token: BootstrapTokenDiscovery<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BootstrapTokenDiscovery<'a> {
    api_server_endpoint: String,
    token: &'a str,
    ca_cert_hashes: Vec<String>,
}

/// The kubelet's flags. `cloud-provider=external` only when the cloud controller runs: with
/// it, kubelets register every node with the `node.cloudprovider.kubernetes.io/uninitialized`
/// taint and only the cloud controller removes it, so without one no ordinary pod would ever
/// be scheduled.
fn kubelet_args(spec: &ClusterSpec, labels: &[(String, String)]) -> Vec<Arg> {
    let mut args = Vec::new();
    if spec.addons.cloud_controller {
        args.push(Arg {
            name: "cloud-provider".into(),
            value: "external".into(),
        });
    }
    args.push(Arg {
        name: "provider-id".into(),
        value: format!("openstack:///{INSTANCE_UUID_PLACEHOLDER}"),
    });
    if !labels.is_empty() {
        let joined: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        args.push(Arg {
            name: "node-labels".into(),
            value: joined.join(","),
        });
    }
    args
}

fn host_port(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => format!("{v4}:6443"),
        IpAddr::V6(v6) => format!("[{v6}]:6443"),
    }
}

/// How a node registers: its name and instance filled in at boot, containerd, the kubelet's
/// flags with `labels`, and `taints` (`None`: kubeadm's default for the role).
fn registration(
    spec: &ClusterSpec,
    labels: &[(String, String)],
    taints: Option<Vec<Taint>>,
) -> NodeRegistration<'static> {
    NodeRegistration {
        name: NODE_NAME_PLACEHOLDER,
        cri_socket: CRI_SOCKET,
        kubelet_extra_args: kubelet_args(spec, labels),
        taints,
    }
}

/// Control planes take no ordinary pods when general workers exist: kubeadm's default taint
/// (`None`); otherwise an empty list, which leaves them open to every pod, as a cluster needs
/// when no worker is: the add-ons' Helm Jobs and pods would have nowhere to run.
fn control_plane_taints(spec: &ClusterSpec) -> Option<Vec<Taint>> {
    (!spec.has_general_workers()).then(Vec::new)
}

/// The Init and Cluster configuration of the control plane that initializes the cluster, as
/// one YAML stream. Control planes that join later read the Cluster configuration from the
/// cluster (`kube-system/kubeadm-config`), so it names every address the API is reached by,
/// and, with `encrypt_secrets`, the API server's EncryptionConfiguration (which every control
/// plane gets with its Ignition config): `kubeadm upgrade` keeps the flag, since it writes the
/// API server's manifest from the same configuration.
pub fn init_config(
    spec: &ClusterSpec,
    endpoint: &ApiEndpoint,
    encrypt_secrets: bool,
) -> Result<String, NodeError> {
    let init = InitConfiguration {
        api_version: API_VERSION,
        kind: "InitConfiguration",
        bootstrap_tokens: vec![BootstrapToken {
            token: JOIN_TOKEN_PLACEHOLDER,
            description: JOIN_TOKEN_DESCRIPTION,
            ttl: format!("{JOIN_TOKEN_HOURS}h0m0s"),
            usages: ["signing", "authentication"],
            groups: ["system:bootstrappers:kubeadm:default-node-token"],
        }],
        node_registration: registration(spec, &[], control_plane_taints(spec)),
        local_api_endpoint: LocalApiEndpoint { bind_port: 6443 },
    };
    let mut sans = vec![endpoint.internal.to_string()];
    if let Some(public) = endpoint.public {
        sans.push(public.to_string());
    }
    for (index, node) in spec
        .nodes()
        .iter()
        .filter(|n| n.role == Role::ControlPlane)
        .enumerate()
    {
        sans.push(node.name.clone());
        if spec.control_plane.highly_available()
            && let Some(address) = spec.network.control_plane_address(index)
        {
            sans.push(address.to_string());
        }
    }
    // Load-bearing: helm-controller and its bootstrap charts' install Jobs reach the API at
    // 127.0.0.1:6443 on a control plane's host network (k3s-io/helm-controller v0.17.7
    // `pkg/controllers/chart/chart.go` sets KUBERNETES_SERVICE_HOST=127.0.0.1 for bootstrap
    // Jobs; flatstack's Deployment of it does the same), before any Service routes. kubeadm's
    // own names for the API server's certificate do not include it
    // (`cmd/kubeadm/app/util/pkiutil/pki_helpers.go`, `GetAPIServerAltNames`).
    sans.extend(["127.0.0.1".to_string(), "localhost".to_string()]);
    let cluster = ClusterConfiguration {
        api_version: API_VERSION,
        kind: "ClusterConfiguration",
        cluster_name: &spec.name,
        kubernetes_version: spec.kubernetes.version.to_string(),
        control_plane_endpoint: host_port(IpAddr::V4(endpoint.internal)),
        certificates_dir: CERTIFICATES_DIR,
        encryption_algorithm: "ECDSA-P256",
        api_server: ApiServer {
            extra_args: match encrypt_secrets {
                true => vec![Arg {
                    name: "encryption-provider-config".into(),
                    value: crate::pki::secrets_key::CONFIG_PATH.into(),
                }],
                false => Vec::new(),
            },
            cert_sans: sans,
        },
        networking: Networking {
            pod_subnet: spec.network.pod_cidr.to_string(),
            service_subnet: spec.network.service_cidr.to_string(),
            dns_domain: "cluster.local",
        },
    };
    Ok(format!("{}---\n{}", to_yaml(&init)?, to_yaml(&cluster)?))
}

/// The Join configuration of a control plane joining through the API's endpoint. It finds
/// the shared CAs and keys in kubeadm's certificates directory (flatstack delivers them, as
/// to the first), so it needs no `--certificate-key` and no `upload-certs`.
pub fn join_control_plane_config(
    spec: &ClusterSpec,
    pki: &ClusterPki,
    endpoint: &ApiEndpoint,
) -> Result<String, NodeError> {
    let join = JoinConfiguration {
        api_version: API_VERSION,
        kind: "JoinConfiguration",
        discovery: discovery(pki, endpoint),
        node_registration: registration(spec, &[], control_plane_taints(spec)),
        control_plane: Some(JoinControlPlane {
            local_api_endpoint: LocalApiEndpoint { bind_port: 6443 },
        }),
    };
    to_yaml(&join)
}

fn discovery<'a>(pki: &ClusterPki, endpoint: &ApiEndpoint) -> Discovery<'a> {
    Discovery {
        bootstrap_token: BootstrapTokenDiscovery {
            api_server_endpoint: host_port(IpAddr::V4(endpoint.internal)),
            token: JOIN_TOKEN_PLACEHOLDER,
            ca_cert_hashes: vec![pki.discovery_hash()],
        },
    }
}

/// The Join configuration of a worker of `pool`.
pub fn join_config(
    spec: &ClusterSpec,
    pool: &WorkerPool,
    pki: &ClusterPki,
    endpoint: &ApiEndpoint,
) -> Result<String, NodeError> {
    let labels: Vec<(String, String)> = pool
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let taints = (!pool.taints.is_empty()).then(|| {
        pool.taints
            .iter()
            .map(|t| Taint {
                key: t.key.clone(),
                value: t.value.clone(),
                effect: t.effect.as_str().to_string(),
            })
            .collect()
    });
    let join = JoinConfiguration {
        api_version: API_VERSION,
        kind: "JoinConfiguration",
        discovery: discovery(pki, endpoint),
        node_registration: registration(spec, &labels, taints),
        control_plane: None,
    };
    to_yaml(&join)
}

fn to_yaml<T: Serialize>(value: &T) -> Result<String, NodeError> {
    serde_saphyr::to_string(value).map_err(|e| NodeError::Yaml(e.to_string()))
}
