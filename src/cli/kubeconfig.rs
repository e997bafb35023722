//! `flatstack kubeconfig`: the cluster's admin kubeconfig, made from the PKI in the state
//! directory and pointed at the API's floating IP (or `--api-address`), printed or merged into
//! the user's kubeconfig. Nothing is asked of the cluster itself.

use std::path::{Path, PathBuf};

use super::cloud::runtime;
use super::cluster::api_floating_ip;
use super::up::{merge_into_user_kubeconfig, parse_host_port};
use super::{InvalidInput, load_spec};
use crate::pki::{ClusterPki, Kubeconfig, StateDir, kubeconfig_yaml};

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
    let state_path = match &args.state_dir {
        Some(dir) => dir.clone(),
        None => StateDir::default_path(&spec.name)?,
    };
    let no_pki = || {
        InvalidInput(format!(
            "no PKI for cluster `{}` in {}: the kubeconfig is made from the cluster's CA, which only the machine that ran `flatstack up` has\n  hint: run this there, or copy its state directory here and pass --state-dir",
            spec.name,
            state_path.display()
        ))
    };
    let state = StateDir::open_existing(&state_path)?.ok_or_else(no_pki)?;
    let pki = ClusterPki::load_existing(&state)?.ok_or_else(no_pki)?;
    let server = match &args.api_address {
        Some(address) => format!("https://{address}"),
        None => match runtime()?.block_on(api_floating_ip(&spec, cloud_flag))? {
            Some(ip) => format!("https://{ip}:6443"),
            None => {
                return Err(InvalidInput(format!(
                    "cluster `{}` has no API floating IP in the cloud, so there is nothing to point a kubeconfig at\n  hint: `flatstack up` creates it; pass --api-address to point at a tunnel instead",
                    spec.name
                ))
                .into());
            }
        },
    };
    let who = if args.super_admin {
        Kubeconfig::SuperAdmin
    } else {
        Kubeconfig::Admin
    };
    let kubeconfig = kubeconfig_yaml(&pki, &spec.name, &server, who)?;
    if args.merge {
        let path = merge_into_user_kubeconfig(&kubeconfig)?;
        eprintln!(
            "merged context `{}` ({server}) into {} and made it current",
            spec.name,
            path.display()
        );
    } else {
        print!("{kubeconfig}");
    }
    Ok(())
}
