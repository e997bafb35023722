//! `flatstack jupyterhub install|upgrade|uninstall` against a running cluster: the hub's
//! HelmChart and credentials applied, Helm's Job waited for, then the hub and proxy
//! Deployments; on uninstall the release removed and, only on request, the users' volumes.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};

use super::charts::{self, Expect};
use crate::addons::HelmChart;
use crate::addons::NAMESPACE;
use crate::addons::jupyterhub::{CREDENTIALS_SECRET, HubRelease, RELEASE};
use crate::kube::{KubeClient, KubeError, Manifest, Waiting, poll, wait_deployment};

#[derive(Debug, thiserror::Error)]
pub(crate) enum HubError {
    #[error(
        "JupyterHub is already installed\n  hint: `flatstack jupyterhub upgrade` applies new settings or a new chart version"
    )]
    AlreadyInstalled,
    #[error("JupyterHub is not installed\n  hint: `flatstack jupyterhub install` installs it")]
    NotInstalled,
    #[error(transparent)]
    Kube(#[from] KubeError),
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
    let expect = charts::apply_after(client, &chart, &before, credentials_changed).await?;
    let changed = expect != Expect::Current;
    say("waiting for Helm to install the chart");
    charts::wait_chart(client, RELEASE, &expect, left())
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
        changed,
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
    let want = wanted.body()["stringData"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    Ok(have.len() != want.len()
        || want.iter().any(|(key, value)| {
            have.get(key).map(|bytes| bytes.0.as_slice()) != value.as_str().map(str::as_bytes)
        }))
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
