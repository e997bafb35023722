//! Reaching a running cluster from the commands that work on it (`jupyterhub`, `smoke`): the
//! cluster file, the PKI in the state directory, the API (its floating IP, or
//! `--api-address`) and the ingress (the API's floating IP or the load balancer the cloud
//! controller made, or `--ingress-address`). The cloud is asked only for what the flags leave
//! open.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Service;

use super::InvalidInput;
use super::cloud::cloud_config;
use crate::addons::ingress::TRAEFIK_NAMESPACE;
use crate::cloud::Cloud;
use crate::cloud::network::{FloatingIp, Kind};
use crate::kube::KubeClient;
use crate::pki::{ClusterPki, StateDir};
use crate::plan::resources::Names;
use crate::spec::{ClusterSpec, IngressExposure};

/// Where a running cluster is.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ClusterArgs {
    /// State directory holding the cluster's PKI (default: $XDG_DATA_HOME/flatstack/<name>).
    #[arg(long, env = "FLATSTACK_STATE_DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// Reach the Kubernetes API at HOST:PORT instead of the floating IP (an SSH tunnel, a
    /// port forward); the server must still prove itself with the cluster CA.
    #[arg(long, value_name = "HOST:PORT", value_parser = super::up::parse_host_port)]
    pub(crate) api_address: Option<String>,
    /// Reach the ingress at HOST[:PORT] instead of the address flatstack finds.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub(crate) ingress_address: Option<String>,
}

/// A connection to the cluster of a cluster file.
pub(crate) struct Cluster {
    pub(crate) spec: ClusterSpec,
    pub(crate) state: StateDir,
    pub(crate) client: KubeClient,
    /// The API's floating IP, when the cloud was asked.
    api_floating_ip: Option<String>,
    ingress_flag: Option<String>,
}

impl Cluster {
    /// Connects to the cluster of `spec` (the cluster file, already read and valid).
    pub(crate) async fn connect(
        spec: ClusterSpec,
        cloud_flag: Option<&str>,
        args: &ClusterArgs,
    ) -> anyhow::Result<Cluster> {
        let state_path = match &args.state_dir {
            Some(dir) => dir.clone(),
            None => StateDir::default_path(&spec.name)?,
        };
        let state = StateDir::open_existing(&state_path)?.ok_or_else(|| {
            InvalidInput(format!(
                "no state directory at {}: the cluster's CA and admin key are not on this machine\n  hint: run this where `flatstack up` ran, or pass --state-dir",
                state_path.display()
            ))
        })?;
        let pki = ClusterPki::load_existing(&state)?.ok_or_else(|| {
            InvalidInput(format!(
                "no PKI in {}: the cluster's CA and admin key are not on this machine\n  hint: run this where `flatstack up` ran, or pass --state-dir",
                state.path().display()
            ))
        })?;
        let needs_cloud = args.api_address.is_none()
            || (args.ingress_address.is_none()
                && spec.ingress.exposure == IngressExposure::ControlPlane);
        let api_floating_ip = if needs_cloud {
            api_floating_ip(&spec, cloud_flag).await?
        } else {
            None
        };
        let server = match (&args.api_address, &api_floating_ip) {
            (Some(address), _) => format!("https://{address}"),
            (None, Some(ip)) => format!("https://{ip}:6443"),
            (None, None) => anyhow::bail!(
                "cluster `{}` has no API floating IP in the cloud\n  hint: `flatstack up` creates it; `flatstack status` shows what exists",
                spec.name
            ),
        };
        let client = KubeClient::new(&pki, &server)?;
        Ok(Cluster {
            spec,
            state,
            client,
            api_floating_ip,
            ingress_flag: args.ingress_address.clone(),
        })
    }

    /// The ingress's address as HOST[:PORT]: the flag, the API's floating IP (Traefik on the
    /// control planes), or the load balancer address in Traefik's Service status.
    pub(crate) async fn ingress_address(&self) -> anyhow::Result<String> {
        if let Some(address) = &self.ingress_flag {
            return Ok(address.clone());
        }
        match self.spec.ingress.exposure {
            IngressExposure::ControlPlane => {
                self.api_floating_ip.as_deref().map(host).ok_or_else(|| {
                    anyhow::anyhow!(
                        "the API's floating IP is unknown\n  hint: pass --ingress-address"
                    )
                })
            }
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
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "Traefik's load balancer has no address yet\n  hint: `kubectl -n {TRAEFIK_NAMESPACE} describe service traefik` shows the cloud controller's events"
                        )
                    })
            }
        }
    }
}

/// The address of the cluster's API floating IP, if the cloud has one.
pub(crate) async fn api_floating_ip(
    spec: &ClusterSpec,
    cloud_flag: Option<&str>,
) -> anyhow::Result<Option<String>> {
    let cloud = Cloud::connect(cloud_config(cloud_flag, spec)?).await?;
    let names = Names::of(&spec.name);
    let described = [("description", names.api_address.as_str())];
    let found: Vec<FloatingIp> = cloud.list(Kind::FloatingIp, &described).await?;
    Ok(found.into_iter().next().map(|f| f.floating_ip_address))
}

/// An address as the host part of a URL: IPv6 in brackets.
fn host(address: &str) -> String {
    match address.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("[{address}]"),
        Err(_) => address.to_string(),
    }
}
