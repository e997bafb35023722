//! `flatstack jupyterhub install|upgrade|uninstall` against a running cluster: the hub's
//! HelmChart and credentials applied, Helm's Job waited for, then the hub and proxy
//! Deployments; on uninstall the release removed and, only on request, the users' volumes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};

use super::charts;
use super::cluster::{Cluster, ClusterError, Reach};
use super::record::{Record, RecordKey};
use crate::addons::HelmChart;
use crate::addons::NAMESPACE;
use crate::addons::jupyterhub::{self, CREDENTIALS_SECRET, HubCredentials, HubRelease, RELEASE};
use crate::cloud::CloudConfig;
use crate::kube::{KubeClient, KubeError, Manifest, Waiting, poll, wait_deployment};
use crate::pki::{PkiError, StateDir};
use crate::spec::{Authenticator, ClusterSpec};

#[derive(Debug, thiserror::Error)]
pub(crate) enum HubError {
    #[error(
        "JupyterHub is already installed\n  hint: `flatstack jupyterhub upgrade` applies new settings or a new chart version"
    )]
    AlreadyInstalled,
    #[error("JupyterHub is not installed\n  hint: `flatstack jupyterhub install` installs it")]
    NotInstalled,
    #[error(
        "JupyterHub needs {0}\n  hint: set them in the cluster file and run `flatstack up` first"
    )]
    Prerequisites(String),
    #[error("cannot read `jupyterhub.values_file` {}", .path.display())]
    ValuesFileUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not valid YAML: {detail}", .path.display())]
    ValuesFileInvalid { path: PathBuf, detail: String },
    #[error(
        "{} must hold a mapping of chart values (like `singleuser:` at the top level)",
        .0.display()
    )]
    ValuesFileNotMapping(PathBuf),
    #[error(
        "environment variable {0} is not set: it must hold the GitHub OAuth app's client secret\n  hint: `export {0}=...` (flatstack never reads it from the cluster file)"
    )]
    ClientSecretMissing(String),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    State(#[from] PkiError),
    #[error(transparent)]
    Kube(#[from] KubeError),
}

impl HubError {
    pub(crate) fn is_invalid_input(&self) -> bool {
        match self {
            HubError::Prerequisites(_)
            | HubError::ValuesFileUnreadable { .. }
            | HubError::ValuesFileInvalid { .. }
            | HubError::ValuesFileNotMapping(_)
            | HubError::ClientSecretMissing(_) => true,
            HubError::Cluster(e) => e.is_invalid_input(),
            HubError::State(e) => e.is_invalid_input(),
            _ => false,
        }
    }
}

const USER_PASSWORD_FILE: &str = "jupyterhub-user-password";
const ADMIN_PASSWORD_FILE: &str = "jupyterhub-admin-password";

/// What `jupyterhub install|upgrade` is asked to do.
pub(crate) struct HubRequest {
    pub(crate) spec: ClusterSpec,
    /// The cluster file, which `jupyterhub.values_file` is relative to.
    pub(crate) cluster_file: PathBuf,
    pub(crate) reach: Reach,
    /// Needed when [`Reach::needs_cloud`] says so.
    pub(crate) cloud: Option<CloudConfig>,
    pub(crate) action: Action,
    pub(crate) timeout: Duration,
}

/// What `jupyterhub install|upgrade` did, and where the hub is.
pub(crate) struct HubReport {
    pub(crate) outcome: HubOutcome,
    pub(crate) chart: String,
    pub(crate) version: String,
    pub(crate) namespace: String,
    pub(crate) url: String,
    /// The ingress's address, which the hub's hostname must resolve to.
    pub(crate) address: String,
    /// With `ingress.hostname`: the hostname and the HTTPS certificate's state, or why it
    /// could not be read.
    pub(crate) https: Option<(String, Result<String, KubeError>)>,
    /// With shared passwords: the files holding the users' and the admins' password.
    pub(crate) password_files: Option<(PathBuf, PathBuf)>,
}

/// Installs or upgrades the hub of the cluster `request` names, with its credentials (made
/// once and kept in the state directory, or read from the environment), and waits until it
/// serves. Holds the state directory's writer lock throughout.
pub(crate) async fn install_or_upgrade(
    request: HubRequest,
    say: &(dyn Fn(&str) + Sync),
) -> Result<HubReport, HubError> {
    let HubRequest {
        spec,
        cluster_file,
        reach,
        cloud,
        action,
        timeout,
    } = request;
    check_prerequisites(&spec)?;
    let user_values = read_values_file(&cluster_file, &spec)?;
    let cluster = Cluster::connect(spec, reach, cloud).await?;
    let _lock = cluster.state.lock_for(match action {
        Action::Install => "jupyterhub install",
        Action::Upgrade => "jupyterhub upgrade",
    })?;
    let credentials = credentials(&cluster.spec, &cluster.state)?;
    let release = jupyterhub::release(&cluster.spec, &credentials, user_values.as_ref());
    let outcome = install(
        &cluster.client,
        &cluster.record_key,
        &release,
        action,
        timeout,
        say,
    )
    .await?;
    let address = cluster.ingress_address().await?;
    let namespace = release.chart.spec.target_namespace.clone();
    let https = match &cluster.spec.ingress.hostname {
        Some(host) => Some((
            host.clone(),
            certificate_state(&cluster.client, &namespace).await,
        )),
        None => None,
    };
    let password_files = matches!(
        cluster.spec.jupyterhub.authenticator,
        Authenticator::SharedPassword
    )
    .then(|| {
        (
            cluster.state.join(USER_PASSWORD_FILE),
            cluster.state.join(ADMIN_PASSWORD_FILE),
        )
    });
    Ok(HubReport {
        outcome,
        chart: release.chart.spec.chart.clone(),
        version: release.chart.spec.version.clone(),
        namespace,
        url: jupyterhub::url(&cluster.spec, &address),
        address,
        https,
        password_files,
    })
}

/// Removes the hub of the cluster `spec` names; returns the users' volume claims kept.
pub(crate) async fn remove(
    spec: ClusterSpec,
    reach: Reach,
    cloud: Option<CloudConfig>,
    delete_user_data: bool,
    timeout: Duration,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Vec<String>, HubError> {
    let cluster = Cluster::connect(spec, reach, cloud).await?;
    let _lock = cluster.state.lock_for("jupyterhub uninstall")?;
    let namespace = cluster.spec.jupyterhub.namespace.clone();
    uninstall(&cluster.client, &namespace, delete_user_data, timeout, say).await
}

/// The hub is reached through the ingress and keeps its data on Cinder volumes.
fn check_prerequisites(spec: &ClusterSpec) -> Result<(), HubError> {
    let mut missing = Vec::new();
    if !spec.addons.ingress {
        missing.push("`addons.ingress = true` (users reach the hub through it)");
    }
    if !spec.addons.cinder_csi {
        missing.push(
            "`addons.cinder_csi = true` (the hub's database and home directories are Cinder volumes)",
        );
    }
    match missing.is_empty() {
        true => Ok(()),
        false => Err(HubError::Prerequisites(missing.join(" and "))),
    }
}

/// The user's values file, relative to the cluster file, as JSON; it must be a mapping.
fn read_values_file(
    cluster_file: &Path,
    spec: &ClusterSpec,
) -> Result<Option<serde_json::Value>, HubError> {
    let Some(relative) = &spec.jupyterhub.values_file else {
        return Ok(None);
    };
    let path = match cluster_file.parent() {
        Some(dir) if relative.is_relative() => dir.join(relative),
        _ => relative.clone(),
    };
    let text = std::fs::read_to_string(&path).map_err(|source| HubError::ValuesFileUnreadable {
        path: path.clone(),
        source,
    })?;
    let values: serde_json::Value =
        serde_saphyr::from_str(&text).map_err(|e| HubError::ValuesFileInvalid {
            path: path.clone(),
            detail: e.to_string(),
        })?;
    match values {
        serde_json::Value::Object(_) => Ok(Some(values)),
        serde_json::Value::Null => Ok(None),
        _ => Err(HubError::ValuesFileNotMapping(path)),
    }
}

/// The authenticator's secrets: shared passwords made once and kept in the state directory,
/// or GitHub's client secret from the environment.
fn credentials(spec: &ClusterSpec, state: &StateDir) -> Result<HubCredentials, HubError> {
    match &spec.jupyterhub.authenticator {
        Authenticator::GitHub {
            client_secret_env, ..
        } => {
            let value = std::env::var(client_secret_env).unwrap_or_default();
            if value.trim().is_empty() {
                return Err(HubError::ClientSecretMissing(client_secret_env.clone()));
            }
            Ok(HubCredentials::GitHub {
                client_secret: crate::secret::Secret::new(value.trim()),
            })
        }
        Authenticator::SharedPassword => Ok(HubCredentials::SharedPassword {
            user: kept_password(state, USER_PASSWORD_FILE, 24)?,
            admin: kept_password(state, ADMIN_PASSWORD_FILE, 40)?,
        }),
    }
}

/// The password kept in `name`, or a new one of `length` characters written there (0600).
fn kept_password(
    state: &StateDir,
    name: &str,
    length: usize,
) -> Result<crate::secret::Secret, PkiError> {
    if state.join(name).exists() {
        let text = state.read_secret(name)?;
        if text.trim().len() >= length {
            return Ok(crate::secret::Secret::new(text.trim()));
        }
    }
    let password = crate::pki::random_chars(length)?;
    state.write(name, format!("{password}\n").as_bytes(), 0o600)?;
    Ok(crate::secret::Secret::new(password))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Install,
    Upgrade,
}

/// Whether anything changed, and how long it took.
#[derive(Debug)]
pub(crate) struct HubOutcome {
    pub(crate) changed: bool,
    pub(crate) took: Duration,
}

/// Installs or upgrades the hub and waits until it serves.
pub(crate) async fn install(
    client: &KubeClient,
    record_key: &RecordKey,
    release: &HubRelease,
    action: Action,
    within: Duration,
    say: &(dyn Fn(&str) + Sync),
) -> Result<HubOutcome, HubError> {
    let started = Instant::now();
    let left = || within.saturating_sub(started.elapsed());
    let existing: Option<HelmChart> = client.get(&charts::chart_path(RELEASE)).await?;
    match (action, existing.is_some()) {
        (Action::Install, true) => return Err(HubError::AlreadyInstalled),
        (Action::Upgrade, false) => return Err(HubError::NotInstalled),
        _ => {}
    }
    // helm-controller hashes the values Secret into its Job too: a new credential alone
    // replaces the Job, so it counts as a change, read before anything is written.
    let credentials_changed = credentials_differ(client, &release.credentials).await?;
    let chart = release.chart_manifest();
    let before = charts::before_apply(client, &chart).await?;
    say("applying the hub's credentials");
    client.apply(&release.credentials).await?;
    say(&format!(
        "applying HelmChart {RELEASE} (chart {} {})",
        release.chart.spec.chart, release.chart.spec.version
    ));
    let applied = charts::apply_after(client, &chart, &before, credentials_changed).await?;
    say("waiting for Helm to install the chart");
    let mut record = Record::read(client, record_key).await?;
    charts::settle(client, &mut record, RELEASE, &applied.stale, left())
        .await
        .map_err(|e| e.of_total(within))?;
    let namespace = &release.chart.spec.target_namespace;
    for deployment in ["hub", "proxy"] {
        say(&format!("waiting for {namespace}/{deployment} to be ready"));
        wait_deployment(client, namespace, deployment, left())
            .await
            .map_err(|e| e.of_total(within))?;
    }
    Ok(HubOutcome {
        changed: applied.changed,
        took: started.elapsed(),
    })
}

/// Whether the credentials Secret in the cluster holds other data than `wanted` (or is absent).
async fn credentials_differ(client: &KubeClient, wanted: &Manifest) -> Result<bool, KubeError> {
    let have: Option<Secret> = client.get(wanted.object_path()).await?;
    let Some(have) = have else {
        return Ok(true);
    };
    let have = have.data.unwrap_or_default();
    let want = wanted.secret_data();
    Ok(have.len() != want.len()
        || want
            .iter()
            .any(|(key, value)| have.get(key).map(|bytes| &bytes.0) != Some(value)))
}

/// Removes the release and its credentials. User volumes (`claim-*` claims made by the
/// spawner, not by Helm) stay unless `delete_user_data`, which deletes the whole namespace.
/// Returns the claims kept.
pub(crate) async fn uninstall(
    client: &KubeClient,
    namespace: &str,
    delete_user_data: bool,
    within: Duration,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Vec<String>, HubError> {
    let started = Instant::now();
    let left = || within.saturating_sub(started.elapsed());
    let existing: Option<HelmChart> = client.get(&charts::chart_path(RELEASE)).await?;
    if existing.is_some() {
        say("uninstalling the chart");
        charts::uninstall_chart(client, RELEASE, left())
            .await
            .map_err(|e| e.of_total(within))?;
    } else if !delete_user_data {
        return Err(HubError::NotInstalled);
    }
    client
        .delete(&format!(
            "/api/v1/namespaces/{NAMESPACE}/secrets/{CREDENTIALS_SECRET}"
        ))
        .await?;
    let claims: Vec<PersistentVolumeClaim> = client
        .list(&format!(
            "/api/v1/namespaces/{namespace}/persistentvolumeclaims"
        ))
        .await?;
    let names: Vec<String> = claims.into_iter().filter_map(|c| c.metadata.name).collect();
    if !delete_user_data {
        return Ok(names);
    }
    say(&format!(
        "deleting namespace {namespace} and {} volume claim(s)",
        names.len()
    ));
    let path = format!("/api/v1/namespaces/{namespace}");
    client.delete(&path).await?;
    poll(
        &format!("namespace {namespace} going away"),
        left(),
        Duration::from_secs(3),
        || async {
            let left: Option<serde_json::Value> = client.get(&path).await?;
            Ok(match left {
                None => Waiting::Done(()),
                Some(_) => Waiting::On("the namespace is terminating".into()),
            })
        },
    )
    .await
    .map_err(|e| e.of_total(within))?;
    Ok(Vec::new())
}

/// Where the hub's Let's Encrypt certificate stands, in cert-manager's words: issued (until
/// when), or pending and why. Not waited for: a new DNS name can take an hour to resolve, and
/// cert-manager keeps trying on its own.
pub(crate) async fn certificate_state(
    client: &KubeClient,
    namespace: &str,
) -> Result<String, KubeError> {
    let path = format!(
        "/apis/cert-manager.io/v1/namespaces/{namespace}/certificates/{}",
        crate::addons::jupyterhub::TLS_SECRET
    );
    let certificate: Option<serde_json::Value> = client.get(&path).await?;
    let Some(certificate) = certificate else {
        return Ok("not requested yet (cert-manager makes it from the hub's Ingress)".into());
    };
    let ready = certificate["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready");
    Ok(match ready {
        Some(c) if c["status"] == "True" => match certificate["status"]["notAfter"].as_str() {
            Some(until) => format!("issued, valid until {until}"),
            None => "issued".into(),
        },
        Some(c) => format!(
            "pending: {}",
            c["message"]
                .as_str()
                .unwrap_or("cert-manager is working on it")
        ),
        None => "pending: cert-manager has not reported on it yet".into(),
    })
}
