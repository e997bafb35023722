//! `flatstack kubeconfig`: the cluster's admin kubeconfig, made from the PKI in the state
//! directory and pointed at the API's floating IP (or `--api-address`), printed or merged into
//! the user's kubeconfig. Nothing is asked of the cluster itself.

use std::path::{Path, PathBuf};

use super::cloud::{cloud_config, runtime};
use super::load_spec;
use super::up::parse_host_port;
use crate::apply::cluster::{Reach, kubeconfig};
use crate::pki::{Kubeconfig, merge_into_user_kubeconfig};

#[derive(Debug, clap::Args)]
pub(crate) struct KubeconfigArgs {
    /// The break-glass kubeconfig (group `system:masters`, which no RBAC rule can restrict)
    /// instead of the admin one; printed only, never merged.
    #[arg(long)]
    pub(crate) super_admin: bool,
    /// Merge the admin kubeconfig into ~/.kube/config (or the first file of $KUBECONFIG) with
    /// a context named after the cluster, made current, instead of printing it.
    #[arg(long, conflicts_with = "super_admin")]
    pub(crate) merge: bool,
    /// Point the kubeconfig at HOST:PORT (a tunnel, a port forward) instead of the floating IP;
    /// the API server's certificate carries 127.0.0.1 and localhost for this.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_host_port)]
    pub(crate) api_address: Option<String>,
    /// State directory holding the cluster's PKI (default: $XDG_DATA_HOME/flatstack/<name>).
    #[arg(long, env = "FLATSTACK_STATE_DIR")]
    pub(crate) state_dir: Option<PathBuf>,
}

pub(crate) fn run(
    file: &Path,
    cloud_flag: Option<&str>,
    args: &KubeconfigArgs,
) -> anyhow::Result<()> {
    let spec = load_spec(file)?;
    let reach = Reach {
        state_path: super::state_path(&spec, args.state_dir.as_ref())?,
        api_address: args.api_address.clone(),
        ingress_address: None,
    };
    let cloud = match &args.api_address {
        Some(_) => None,
        None => Some(cloud_config(cloud_flag, &spec)?),
    };
    let who = match args.super_admin {
        true => Kubeconfig::SuperAdmin,
        false => Kubeconfig::Admin,
    };
    let made = runtime()?.block_on(kubeconfig(&spec, &reach, cloud, who))?;
    let now = time::OffsetDateTime::now_utc();
    for old in &made.renewed {
        eprintln!(
            "re-issued the {} client certificate, which {}; kubeconfigs made before keep working until then",
            old.who,
            old.describe(now)
        );
    }
    let (kubeconfig, server) = (made.text, made.server);
    if args.merge {
        let path = merge_into_user_kubeconfig(&kubeconfig)?;
        eprintln!(
            "merged context `{}` ({server}) into {} and made it current",
            spec.name,
            path.display()
        );
    } else {
        out_inline!("{kubeconfig}");
    }
    Ok(())
}
