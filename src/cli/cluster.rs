//! Where a running cluster is, as the commands that work on it (`jupyterhub`, `smoke`) are
//! told on the command line; the engine's [`crate::apply::cluster`] reaches it.

use std::path::PathBuf;

use super::cloud::cloud_config;
use crate::apply::cluster::{Cluster, Reach};
use crate::spec::ClusterSpec;

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

impl ClusterArgs {
    /// The flags as the engine takes them, with the cloud's configuration when it is needed
    /// or can be found.
    pub(crate) fn reach(
        &self,
        spec: &ClusterSpec,
        cloud_flag: Option<&str>,
    ) -> anyhow::Result<(Reach, Option<crate::cloud::CloudConfig>)> {
        let reach = Reach {
            state_path: super::state_path(spec, self.state_dir.as_ref())?,
            api_address: self.api_address.clone(),
            ingress_address: self.ingress_address.clone(),
        };
        // Even when both addresses are given, the cloud (if it can be named) is asked whose
        // CA the cluster trusts.
        let cloud = match reach.needs_cloud(spec) {
            true => Some(cloud_config(cloud_flag, spec)?),
            false => cloud_config(cloud_flag, spec).ok(),
        };
        Ok((reach, cloud))
    }

    /// Connects to the cluster of `spec` as the flags say.
    pub(crate) async fn connect(
        &self,
        spec: ClusterSpec,
        cloud_flag: Option<&str>,
    ) -> anyhow::Result<Cluster> {
        let (reach, cloud) = self.reach(&spec, cloud_flag)?;
        Ok(Cluster::connect(spec, reach, cloud).await?)
    }
}
