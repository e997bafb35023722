//! Reaching a running cluster for the commands that work on it (`jupyterhub`, `smoke`,
//! `kubeconfig`): the PKI in the state directory, the API (its floating IP, or a given
//! address) and the ingress (the API's floating IP, the load balancer the cloud controller
//! made, or a given address). The cloud is asked only for what the given addresses leave open.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Service;

use super::identity;
use crate::addons::ingress::TRAEFIK_NAMESPACE;
use crate::cloud::network::{FloatingIp, Kind};
use crate::cloud::{Cloud, CloudConfig, CloudError};
use crate::kube::{KubeClient, KubeError};
use crate::pki::{ClientCertificate, ClusterPki, Kubeconfig, PkiError, StateDir, kubeconfig_yaml};
use crate::plan::resources::{Names, cluster_tag};
use crate::spec::{ClusterSpec, IngressExposure};

/// Where a running cluster is, as far as the user said.
#[derive(Debug, Clone)]
pub(crate) struct Reach {
    pub(crate) state_path: PathBuf,
    /// HOST:PORT of the API instead of its floating IP (a tunnel, a port forward).
    pub(crate) api_address: Option<String>,
    /// HOST[:PORT] of the ingress instead of the address flatstack finds.
    pub(crate) ingress_address: Option<String>,
}

impl Reach {
    /// Whether the cloud must be asked: for the API's floating IP, unless both addresses
    /// were given (or the ingress is behind a load balancer, which the cluster knows).
    pub(crate) fn needs_cloud(&self, spec: &ClusterSpec) -> bool {
        self.api_address.is_none()
            || (self.ingress_address.is_none()
                && spec.ingress.exposure == IngressExposure::ControlPlane)
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ClusterError {
    #[error(
        "no state directory at {}: the cluster's CA and admin key are not on this machine\n  hint: run this where `flatstack up` ran, or pass --state-dir",
        .0.display()
    )]
    NoStateDir(PathBuf),
    #[error(
        "no PKI in {}: the cluster's CA and admin key are not on this machine\n  hint: run this where `flatstack up` ran, or pass --state-dir",
        .0.display()
    )]
    NoPki(PathBuf),
    #[error(
        "cluster `{0}` has no API floating IP in the cloud\n  hint: `flatstack up` creates it; `flatstack status` shows what exists"
    )]
    NoApiAddress(String),
    #[error(
        "no PKI for cluster `{cluster}` in {}: the kubeconfig is made from the cluster's CA, which only the machine that ran `flatstack up` has\n  hint: run this there, or copy its state directory here and pass --state-dir",
        .path.display()
    )]
    NoPkiForKubeconfig { cluster: String, path: PathBuf },
    #[error(
        "cluster `{0}` has no API floating IP in the cloud, so there is nothing to point a kubeconfig at\n  hint: `flatstack up` creates it; pass --api-address to point at a tunnel instead"
    )]
    NothingToPointAt(String),
    #[error("the API's floating IP is unknown\n  hint: pass --ingress-address")]
    NoIngressAddress,
    #[error(
        "Traefik's load balancer has no address yet\n  hint: `kubectl -n {TRAEFIK_NAMESPACE} describe service traefik` shows the cloud controller's events"
    )]
    NoLoadBalancerAddress,
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The state directory is not the cluster's.
    #[error(transparent)]
    Foreign(#[from] super::identity::ForeignPki),
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error(transparent)]
    Kube(#[from] KubeError),
}

impl ClusterError {
    pub(crate) fn is_invalid_input(&self) -> bool {
        match self {
            ClusterError::NoStateDir(_)
            | ClusterError::NoPki(_)
            | ClusterError::NoPkiForKubeconfig { .. }
            | ClusterError::NothingToPointAt(_)
            | ClusterError::Foreign(_) => true,
            ClusterError::Pki(e) => e.is_invalid_input(),
            _ => false,
        }
    }
}

/// A connection to the cluster of a cluster file.
pub(crate) struct Cluster {
    pub(crate) spec: ClusterSpec,
    pub(crate) state: StateDir,
    pub(crate) client: KubeClient,
    /// The key of the cluster's record of settled charts.
    pub(crate) record_key: super::record::RecordKey,
    /// The API's floating IP, when the cloud was asked.
    api_floating_ip: Option<String>,
    ingress_address: Option<String>,
}

impl Cluster {
    /// Connects to the cluster of `spec`; `cloud` is needed only when
    /// [`Reach::needs_cloud`] says so.
    pub(crate) async fn connect(
        spec: ClusterSpec,
        reach: Reach,
        cloud: Option<CloudConfig>,
    ) -> Result<Cluster, ClusterError> {
        let state = StateDir::open_existing(&reach.state_path)?
            .ok_or_else(|| ClusterError::NoStateDir(reach.state_path.clone()))?;
        let pki = ClusterPki::load_existing(&state)?
            .ok_or_else(|| ClusterError::NoPki(state.path().to_path_buf()))?;
        let api_floating_ip = match cloud {
            Some(cloud) => look_up(cloud, &spec, &reach, &pki).await?,
            None => None,
        };
        let server = api_server(reach.api_address.as_deref(), api_floating_ip.as_deref())
            .ok_or_else(|| ClusterError::NoApiAddress(spec.name.clone()))?;
        let client = KubeClient::new(&pki, &server)?;
        Ok(Cluster {
            spec,
            state,
            client,
            record_key: super::record::RecordKey::derive(pki.ca.key_pem.expose().as_bytes()),
            api_floating_ip,
            ingress_address: reach.ingress_address,
        })
    }

    /// The ingress's address as HOST[:PORT]: the one given, the API's floating IP (Traefik on
    /// the control planes), or the load balancer address in Traefik's Service status.
    pub(crate) async fn ingress_address(&self) -> Result<String, ClusterError> {
        if let Some(address) = &self.ingress_address {
            return Ok(address.clone());
        }
        match self.spec.ingress.exposure {
            IngressExposure::ControlPlane => self
                .api_floating_ip
                .as_deref()
                .map(host)
                .ok_or(ClusterError::NoIngressAddress),
            IngressExposure::LoadBalancer => {
                let path = format!("/api/v1/namespaces/{TRAEFIK_NAMESPACE}/services/traefik");
                let service: Option<Service> = self.client.get(&path).await?;
                service
                    .and_then(|s| s.status)
                    .and_then(|s| s.load_balancer)
                    .and_then(|lb| lb.ingress)
                    .into_iter()
                    .flatten()
                    .find_map(|i| i.ip.as_deref().map(host).or(i.hostname))
                    .ok_or(ClusterError::NoLoadBalancerAddress)
            }
        }
    }
}

/// A kubeconfig made for `flatstack kubeconfig`.
pub(crate) struct MadeKubeconfig {
    pub(crate) text: String,
    /// The API server it points at.
    pub(crate) server: String,
    /// Client certificates re-issued first, as they were.
    pub(crate) renewed: Vec<ClientCertificate>,
}

/// The cluster's kubeconfig for `who`, made from the PKI in the state directory (nothing is
/// asked of the cluster) and pointed at `reach`'s API address or the API's floating IP, which
/// `cloud` is asked for. Client certificates near their end are re-issued first.
pub(crate) async fn kubeconfig(
    spec: &ClusterSpec,
    reach: &Reach,
    cloud: Option<CloudConfig>,
    who: Kubeconfig,
) -> Result<MadeKubeconfig, ClusterError> {
    let no_pki = || ClusterError::NoPkiForKubeconfig {
        cluster: spec.name.clone(),
        path: reach.state_path.clone(),
    };
    let state = StateDir::open_existing(&reach.state_path)?.ok_or_else(no_pki)?;
    let mut pki = ClusterPki::load_existing(&state)?.ok_or_else(no_pki)?;
    let renewed = pki.renew_client_certificates(&state, time::OffsetDateTime::now_utc())?;
    let floating_ip = match cloud {
        Some(cloud) => look_up(cloud, spec, reach, &pki).await?,
        None => None,
    };
    let server = api_server(reach.api_address.as_deref(), floating_ip.as_deref())
        .ok_or_else(|| ClusterError::NothingToPointAt(spec.name.clone()))?;
    let text = kubeconfig_yaml(&pki, &spec.name, &server, who)?;
    Ok(MadeKubeconfig {
        text,
        server,
        renewed,
    })
}

/// Asks the cloud whose CA the cluster's servers trust, refusing a PKI that is not it, and
/// for the address of the API's floating IP. When the addresses given leave nothing to ask
/// ([`Reach::needs_cloud`]), a cloud that cannot be reached is passed over.
async fn look_up(
    cloud: CloudConfig,
    spec: &ClusterSpec,
    reach: &Reach,
    pki: &ClusterPki,
) -> Result<Option<String>, ClusterError> {
    let needed = reach.needs_cloud(spec);
    let looked = async {
        let cloud = Cloud::connect(cloud).await?;
        let tag = cluster_tag(&spec.name);
        let servers = cloud.servers_tagged(&[tag.as_str()]).await?;
        Ok::<_, CloudError>((servers, api_floating_ip(&cloud, spec).await?))
    };
    let (servers, floating_ip) = match looked.await {
        Ok(found) => found,
        Err(e) if needed => return Err(e.into()),
        Err(_) => return Ok(None),
    };
    identity::check(&spec.name, &servers, pki, &reach.state_path)?;
    Ok(floating_ip)
}

/// The address of the cluster's API floating IP, if the cloud has one.
async fn api_floating_ip(cloud: &Cloud, spec: &ClusterSpec) -> Result<Option<String>, CloudError> {
    let found = api_floating_ips(cloud, spec).await?;
    Ok(found.into_iter().next().map(|f| f.floating_ip_address))
}

/// The cluster's API floating IPs, found by their description (floating IPs have no name).
pub(crate) async fn api_floating_ips(
    cloud: &Cloud,
    spec: &ClusterSpec,
) -> Result<Vec<FloatingIp>, CloudError> {
    let names = Names::of(&spec.name);
    let described = [("description", names.api_address.as_str())];
    cloud.list(Kind::FloatingIp, &described).await
}

/// The API's URL: the address given (HOST:PORT), else port 6443 of its floating IP.
fn api_server(given: Option<&str>, floating_ip: Option<&str>) -> Option<String> {
    given
        .map(str::to_string)
        .or_else(|| floating_ip.map(|ip| format!("{ip}:6443")))
        .map(|address| format!("https://{address}"))
}

/// An address as the host part of a URL: IPv6 in brackets.
fn host(address: &str) -> String {
    match address.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("[{address}]"),
        Err(_) => address.to_string(),
    }
}
