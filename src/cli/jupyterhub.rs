//! `flatstack jupyterhub install|upgrade|uninstall`: the hub's settings from the cluster
//! file's `[jupyterhub]` and `[ingress]`, credentials from the state directory (generated
//! shared passwords) or the environment (GitHub's client secret), extra chart values from the
//! user's file, all installed by the cluster's own Helm engine.

use std::path::Path;
use std::time::Duration;

use super::InvalidInput;
use super::cloud::runtime;
use super::cluster::{Cluster, ClusterArgs};
use super::up::parse_duration;
use crate::addons::jupyterhub::{self, HubCredentials};
use crate::apply::jupyterhub::{Action, certificate_state, install, uninstall};
use crate::pki::StateDir;
use crate::secret::Secret;
use crate::spec::{Authenticator, ClusterSpec};

const USER_PASSWORD_FILE: &str = "jupyterhub-user-password";
const ADMIN_PASSWORD_FILE: &str = "jupyterhub-admin-password";

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
    runtime()?.block_on(async {
        match command {
            HubCommand::Install(args) => install_or_upgrade(file, cloud_flag, args, Action::Install).await,
            HubCommand::Upgrade(args) => install_or_upgrade(file, cloud_flag, args, Action::Upgrade).await,
            HubCommand::Uninstall(args) => {
                let spec = super::load_spec(file)?;
                let cluster = Cluster::connect(spec, cloud_flag, &args.cluster).await?;
                let _lock = cluster.state.lock_for("jupyterhub uninstall")?;
                let namespace = cluster.spec.jupyterhub.namespace.clone();
                let say = |line: &str| println!("  {line}");
                let kept = uninstall(&cluster.client, &namespace, args.delete_user_data, args.timeout, &say).await?;
                println!("JupyterHub removed from cluster `{}`", cluster.spec.name);
                if !kept.is_empty() {
                    println!(
                        "kept {} volume claim(s) in namespace {namespace} (users' home directories): {}\n  `flatstack jupyterhub uninstall --delete-user-data` deletes them",
                        kept.len(),
                        kept.join(", ")
                    );
                }
                Ok(())
            }
        }
    })
}

async fn install_or_upgrade(
    file: &Path,
    cloud_flag: Option<&str>,
    args: &HubArgs,
    action: Action,
) -> anyhow::Result<()> {
    let spec = super::load_spec(file)?;
    check_prerequisites(&spec)?;
    let user_values = read_values_file(file, &spec)?;
    let cluster = Cluster::connect(spec, cloud_flag, &args.cluster).await?;
    let _lock = cluster.state.lock_for(match action {
        Action::Install => "jupyterhub install",
        Action::Upgrade => "jupyterhub upgrade",
    })?;
    let credentials = credentials(&cluster.spec, &cluster.state)?;
    let release = jupyterhub::release(&cluster.spec, &credentials, user_values.as_ref());
    let say = |line: &str| println!("  {line}");
    let outcome = install(&cluster.client, &release, action, args.timeout, &say).await?;
    let address = cluster.ingress_address().await?;
    let url = jupyterhub::url(&cluster.spec, &address);
    let verb = match (action, outcome.changed) {
        (Action::Install, _) => "installed",
        (Action::Upgrade, true) => "upgraded",
        (Action::Upgrade, false) => "already current (nothing changed)",
    };
    println!(
        "JupyterHub {verb} in {:.1} s: chart {} {}, namespace {}",
        outcome.took.as_secs_f64(),
        release.chart.spec.chart,
        release.chart.spec.version,
        release.chart.spec.target_namespace
    );
    println!("hub: {url}");
    match &cluster.spec.ingress.hostname {
        Some(host) => {
            println!("  DNS: {host} must resolve to {address} for users and for Let's Encrypt");
            let namespace = &release.chart.spec.target_namespace;
            match certificate_state(&cluster.client, namespace).await {
                Ok(state) => println!("  HTTPS certificate: {state}"),
                Err(e) => println!("  HTTPS certificate: cannot be read ({e})"),
            }
        }
        None => println!(
            "  warning: without `ingress.hostname` the hub is plain HTTP and passwords cross the network in clear; set a hostname (HTTPS with Let's Encrypt) before real users log in"
        ),
    }
    if matches!(
        cluster.spec.jupyterhub.authenticator,
        Authenticator::SharedPassword
    ) {
        println!(
            "  log in with any user name and the password in {}; users in admin_users use {}",
            cluster.state.join(USER_PASSWORD_FILE).display(),
            cluster.state.join(ADMIN_PASSWORD_FILE).display()
        );
    }
    Ok(())
}

/// The hub is reached through the ingress and keeps its data on Cinder volumes.
fn check_prerequisites(spec: &ClusterSpec) -> Result<(), InvalidInput> {
    let mut missing = Vec::new();
    if !spec.addons.ingress {
        missing.push("`addons.ingress = true` (users reach the hub through it)");
    }
    if !spec.addons.cinder_csi {
        missing.push("`addons.cinder_csi = true` (the hub's database and home directories are Cinder volumes)");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(InvalidInput(format!(
            "JupyterHub needs {}\n  hint: set them in the cluster file and run `flatstack up` first",
            missing.join(" and ")
        )))
    }
}

/// The user's values file, relative to the cluster file, as JSON; it must be a mapping.
fn read_values_file(
    file: &Path,
    spec: &ClusterSpec,
) -> Result<Option<serde_json::Value>, InvalidInput> {
    let Some(relative) = &spec.jupyterhub.values_file else {
        return Ok(None);
    };
    let path = match file.parent() {
        Some(dir) if relative.is_relative() => dir.join(relative),
        _ => relative.clone(),
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        InvalidInput(format!(
            "cannot read `jupyterhub.values_file` {}: {e}",
            path.display()
        ))
    })?;
    let values: serde_json::Value = serde_saphyr::from_str(&text)
        .map_err(|e| InvalidInput(format!("{} is not valid YAML: {e}", path.display())))?;
    match values {
        serde_json::Value::Object(_) => Ok(Some(values)),
        serde_json::Value::Null => Ok(None),
        _ => Err(InvalidInput(format!(
            "{} must hold a mapping of chart values (like `singleuser:` at the top level)",
            path.display()
        ))),
    }
}

/// The authenticator's secrets: shared passwords made once and kept in the state directory,
/// or GitHub's client secret from the environment.
fn credentials(spec: &ClusterSpec, state: &StateDir) -> anyhow::Result<HubCredentials> {
    match &spec.jupyterhub.authenticator {
        Authenticator::GitHub {
            client_secret_env, ..
        } => {
            let value = std::env::var(client_secret_env).unwrap_or_default();
            if value.trim().is_empty() {
                return Err(InvalidInput(format!(
                    "environment variable {client_secret_env} is not set: it must hold the GitHub OAuth app's client secret\n  hint: `export {client_secret_env}=...` (flatstack never reads it from the cluster file)"
                ))
                .into());
            }
            Ok(HubCredentials::GitHub {
                client_secret: Secret::new(value.trim()),
            })
        }
        Authenticator::SharedPassword => Ok(HubCredentials::SharedPassword {
            user: kept_password(state, USER_PASSWORD_FILE, 24)?,
            admin: kept_password(state, ADMIN_PASSWORD_FILE, 40)?,
        }),
    }
}

fn kept_password(state: &StateDir, name: &str, length: usize) -> anyhow::Result<Secret> {
    if state.join(name).exists() {
        let text = state.read_secret(name)?;
        if text.trim().len() >= length {
            return Ok(Secret::new(text.trim()));
        }
    }
    let password = crate::pki::random_chars(length)?;
    state.write(name, format!("{password}\n").as_bytes(), 0o600)?;
    Ok(Secret::new(password))
}
