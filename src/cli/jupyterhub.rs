//! `flatstack jupyterhub install|upgrade|uninstall`: the flags, and what the engine
//! ([`crate::apply::jupyterhub`]) reports, printed.

use std::path::Path;
use std::time::Duration;

use super::cloud::runtime;
use super::cluster::ClusterArgs;
use super::up::parse_duration;
use crate::apply::jupyterhub::{Action, HubRequest, install_or_upgrade, remove};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum HubCommand {
    /// Install JupyterHub (pinned zero-to-jupyterhub chart) and wait until it serves.
    Install(HubArgs),
    /// Apply changed settings, values file or chart version to the installed hub.
    Upgrade(HubArgs),
    /// Remove JupyterHub; users' volumes are kept unless --delete-user-data.
    Uninstall(UninstallArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct HubArgs {
    #[command(flatten)]
    pub(crate) cluster: ClusterArgs,
    /// How long to wait for Helm and the hub (`90s`, `20m`).
    #[arg(long, default_value = "20m", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
}

#[derive(Debug, clap::Args)]
pub(crate) struct UninstallArgs {
    #[command(flatten)]
    pub(crate) cluster: ClusterArgs,
    /// Also delete the hub's namespace with every user's home directory volume.
    #[arg(long)]
    pub(crate) delete_user_data: bool,
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
}

pub(crate) fn run(
    file: &Path,
    cloud_flag: Option<&str>,
    command: &HubCommand,
) -> anyhow::Result<()> {
    let spec = super::load_spec(file)?;
    let (args, action) = match command {
        HubCommand::Install(args) => (args, Action::Install),
        HubCommand::Upgrade(args) => (args, Action::Upgrade),
        HubCommand::Uninstall(args) => return remove_hub(spec, cloud_flag, args),
    };
    let say = |line: &str| out!("  {line}");
    let (reach, cloud) = args.cluster.reach(&spec, cloud_flag)?;
    let request = HubRequest {
        spec,
        cluster_file: file.to_path_buf(),
        reach,
        cloud,
        action,
        timeout: args.timeout,
    };
    let report = runtime()?.block_on(install_or_upgrade(request, &say))?;
    let verb = match (action, report.outcome.changed) {
        (Action::Install, _) => "installed",
        (Action::Upgrade, true) => "upgraded",
        (Action::Upgrade, false) => "already current (nothing changed)",
    };
    out!(
        "JupyterHub {verb} in {:.1} s: chart {} {}, namespace {}",
        report.outcome.took.as_secs_f64(),
        report.chart,
        report.version,
        report.namespace
    );
    out!("hub: {}", report.url);
    match &report.https {
        Some((host, certificate)) => {
            out!(
                "  DNS: {host} must resolve to {} for users and for Let's Encrypt",
                report.address
            );
            match certificate {
                Ok(state) => out!("  HTTPS certificate: {state}"),
                Err(e) => out!("  HTTPS certificate: cannot be read ({e})"),
            }
        }
        None => out!(
            "  warning: without `ingress.hostname` the hub is plain HTTP and passwords cross the network in clear; set a hostname (HTTPS with Let's Encrypt) before real users log in"
        ),
    }
    if let Some((user, admin)) = &report.password_files {
        out!(
            "  log in with any user name and the password in {}; users in admin_users use {}",
            user.display(),
            admin.display()
        );
    }
    Ok(())
}

/// `jupyterhub uninstall`.
fn remove_hub(
    spec: crate::spec::ClusterSpec,
    cloud_flag: Option<&str>,
    args: &UninstallArgs,
) -> anyhow::Result<()> {
    let say = |line: &str| out!("  {line}");
    let name = spec.name.clone();
    let namespace = spec.jupyterhub.namespace.clone();
    let (reach, cloud) = args.cluster.reach(&spec, cloud_flag)?;
    let kept = runtime()?.block_on(remove(
        spec,
        reach,
        cloud,
        args.delete_user_data,
        args.timeout,
        &say,
    ))?;
    out!("JupyterHub removed from cluster `{name}`");
    if !kept.is_empty() {
        out!(
            "kept {} volume claim(s) in namespace {namespace} (users' home directories): {}\n  `flatstack jupyterhub uninstall --delete-user-data` deletes them",
            kept.len(),
            kept.join(", ")
        );
    }
    Ok(())
}
