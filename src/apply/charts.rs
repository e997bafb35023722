//! Installing, upgrading and removing Helm charts through helm-controller, and knowing when it
//! is done. helm-controller runs `helm-install-<chart>` Jobs and, when a chart's spec changes,
//! replaces that Job under the same name; so before applying a changed chart flatstack notes
//! the old Job's UID and waits for a Job with another. Failures end the wait with the tail of
//! Helm's own output.

use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobStatus};
use k8s_openapi::api::core::v1::Pod;

use crate::addons::{HelmChart, NAMESPACE};
use crate::kube::{KubeClient, KubeError, Manifest, Waiting, poll};

/// Failed attempts of a Helm Job before flatstack reports it rather than waiting on: Kubernetes
/// retries Jobs with growing delays, so three failures already span about a minute.
const FAILED_ATTEMPTS: i32 = 3;
/// Lines of Helm's output shown when a chart fails.
const LOG_LINES: u32 = 15;

/// What an apply of a HelmChart means for the wait that follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expect {
    /// The chart was already as wanted: its current Job tells.
    Current,
    /// The chart is new or changed: wait for a Job other than this one (empty: none before).
    NewJob { replacing: String },
}

pub(crate) fn chart_path(name: &str) -> String {
    format!("/apis/helm.cattle.io/v1/namespaces/{NAMESPACE}/helmcharts/{name}")
}

fn job_path(name: &str) -> String {
    format!("/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{name}")
}

/// A HelmChart as it was before flatstack applies it: read first, because what helm-controller
/// does next (replace the install Job) can start the moment anything it reads changes.
#[derive(Debug, Clone, Default)]
pub(crate) struct BeforeApply {
    exists: bool,
    generation: Option<i64>,
    /// The UID of its current install Job ("" when it has none).
    job_uid: String,
}

/// Reads the HelmChart `chart` names, and its install Job, as they are now.
pub(crate) async fn before_apply(
    client: &KubeClient,
    chart: &Manifest,
) -> Result<BeforeApply, KubeError> {
    let existing: Option<HelmChart> = client.get(chart.object_path()).await?;
    let Some(have) = existing else {
        return Ok(BeforeApply::default());
    };
    let job_uid = if have.status.job_name.is_empty() {
        String::new()
    } else {
        let job: Option<Job> = client.get(&job_path(&have.status.job_name)).await?;
        job.and_then(|j| j.metadata.uid).unwrap_or_default()
    };
    Ok(BeforeApply {
        exists: true,
        generation: have.metadata.generation,
        job_uid,
    })
}

/// Applies `chart` and says what the wait that follows must look for. The API server bumps
/// `metadata.generation` exactly when the spec changes (the fields its CRD defaults, and
/// metadata, do not count), and helm-controller replaces the install Job exactly then, or
/// when a values Secret the chart reads changed (`inputs_changed`).
pub(crate) async fn apply_after(
    client: &KubeClient,
    chart: &Manifest,
    before: &BeforeApply,
    inputs_changed: bool,
) -> Result<Expect, KubeError> {
    let applied = client.apply(chart).await?;
    let generation = applied["metadata"]["generation"].as_i64();
    let changed = !before.exists || inputs_changed || generation != before.generation;
    Ok(if changed {
        Expect::NewJob {
            replacing: before.job_uid.clone(),
        }
    } else {
        Expect::Current
    })
}

/// Applies a HelmChart, first reading what is there to know which Job to wait for.
pub(crate) async fn apply_chart(
    client: &KubeClient,
    chart: &Manifest,
) -> Result<Expect, KubeError> {
    let before = before_apply(client, chart).await?;
    apply_after(client, chart, &before, false).await
}

/// Waits until the API server serves HelmCharts: helm-controller creates their CRD itself when
/// it starts (before its controllers run), so until its pod runs, HelmCharts are 404.
pub(crate) async fn wait_chart_kind_served(
    client: &KubeClient,
    within: Duration,
) -> Result<(), KubeError> {
    let path = format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{HELM_CHART_CRD}");
    poll(
        "helm-controller's HelmChart resource being served",
        within,
        Duration::from_secs(2),
        || async {
            let crd: Option<serde_json::Value> = client.get(&path).await?;
            let established = crd
                .as_ref()
                .and_then(|c| c["status"]["conditions"].as_array())
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Established" && c["status"] == "True");
            Ok(match (crd, established) {
                (_, true) => Waiting::Done(()),
                (None, _) => Waiting::On(format!(
                    "CustomResourceDefinition {HELM_CHART_CRD} does not exist yet (helm-controller creates it when it starts)"
                )),
                (Some(_), false) => {
                    Waiting::On(format!("CustomResourceDefinition {HELM_CHART_CRD} is not established yet"))
                }
            })
        },
    )
    .await
}

/// The CustomResourceDefinition of HelmCharts.
pub(crate) const HELM_CHART_CRD: &str = "helmcharts.helm.cattle.io";

/// Waits until the install Job of HelmChart `name` has succeeded (a Job other than the one
/// `expect` names). A Job that gave up, a chart helm-controller marked Failed, or
/// [`FAILED_ATTEMPTS`] failures during this wait end it with Helm's output; failures from
/// before the wait (a Job left failing by an earlier run) do not count.
pub(crate) async fn wait_chart(
    client: &KubeClient,
    name: &str,
    expect: &Expect,
    within: Duration,
) -> Result<(), KubeError> {
    // The failure count of each Job when this wait first saw it.
    let seen_failing: Mutex<Option<(String, i32)>> = Mutex::new(None);
    poll(
        &format!("chart {name} installing"),
        within,
        Duration::from_secs(3),
        || async {
            let Some(chart): Option<HelmChart> = client.get(&chart_path(name)).await? else {
                return Ok(Waiting::On(format!("HelmChart {name} is missing")));
            };
            let chart_failed = chart_failure(&chart);
            let job_name = &chart.status.job_name;
            if job_name.is_empty() {
                if let Some(message) = chart_failed {
                    return Err(failed(client, name, job_name, &message).await);
                }
                return Ok(Waiting::On(
                    "helm-controller has not started an install Job yet".into(),
                ));
            }
            let Some(job): Option<Job> = client.get(&job_path(job_name)).await? else {
                return Ok(Waiting::On(format!("Job {job_name} not found yet")));
            };
            let uid = job.metadata.uid.clone().unwrap_or_default();
            if let Expect::NewJob { replacing } = expect
                && &uid == replacing
            {
                // Whatever the old Job or the chart's conditions say is about the old settings.
                return Ok(Waiting::On(format!(
                    "helm-controller has not replaced Job {job_name} for the new settings yet"
                )));
            }
            let status = job.status.unwrap_or_default();
            if status.succeeded.unwrap_or(0) > 0 {
                return Ok(Waiting::Done(()));
            }
            let attempts = status.failed.unwrap_or(0);
            let before = {
                let mut seen = seen_failing.lock().unwrap_or_else(|e| e.into_inner());
                match seen.as_ref() {
                    Some((seen_uid, count)) if *seen_uid == uid => *count,
                    _ => {
                        *seen = Some((uid.clone(), attempts));
                        attempts
                    }
                }
            };
            if let Some(reason) = job_failure(&status).or(chart_failed) {
                return Err(failed(client, name, job_name, &reason).await);
            }
            if attempts - before >= FAILED_ATTEMPTS {
                let reason = format!("Helm failed {} times in a row", attempts - before);
                return Err(failed(client, name, job_name, &reason).await);
            }
            Ok(Waiting::On(format!(
                "Job {job_name} running ({attempts} failed attempt(s))"
            )))
        },
    )
    .await
}

/// The message of the chart's `Failed=True` condition: helm-controller gave up on it.
fn chart_failure(chart: &HelmChart) -> Option<String> {
    chart
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Failed" && c.status == "True")
        .map(|c| c.message.clone())
}

/// Why the Job gave up (its `Failed=True` condition: retries exhausted), if it did.
fn job_failure(status: &JobStatus) -> Option<String> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Failed" && c.status == "True")
        .map(|c| c.message.clone().unwrap_or_else(|| "the Job failed".into()))
}

/// Deletes HelmChart `name` and waits until helm-controller has uninstalled the release and
/// let the HelmChart go.
pub(crate) async fn uninstall_chart(
    client: &KubeClient,
    name: &str,
    within: Duration,
) -> Result<(), KubeError> {
    client.delete(&chart_path(name)).await?;
    poll(
        &format!("chart {name} uninstalling"),
        within,
        Duration::from_secs(3),
        || async {
            let chart: Option<HelmChart> = client.get(&chart_path(name)).await?;
            Ok(match chart {
                None => Waiting::Done(()),
                Some(chart) if chart.status.job_name.is_empty() => {
                    Waiting::On("helm-controller has not started the uninstall yet".into())
                }
                Some(chart) => Waiting::On(format!("Job {} running", chart.status.job_name)),
            })
        },
    )
    .await
}

/// The error for a failed chart, with the last lines Helm printed when they can be read.
async fn failed(client: &KubeClient, name: &str, job: &str, reason: &str) -> KubeError {
    let output = match helm_output(client, job).await {
        Some(lines) if !lines.trim().is_empty() => format!(
            "\n  Helm's last output:\n    {}",
            lines.trim_end().lines().collect::<Vec<_>>().join("\n    ")
        ),
        _ => String::new(),
    };
    KubeError::Api {
        method: "GET",
        url: format!("HelmChart {NAMESPACE}/{name}"),
        status: 200,
        message: format!(
            "chart {name} failed to install: {reason}{output}\n  hint: `kubectl -n {NAMESPACE} logs job/{job}` shows all of Helm's output; fix the cause and run flatstack again"
        ),
    }
}

/// The tail of the log of the newest pod of Job `job`.
async fn helm_output(client: &KubeClient, job: &str) -> Option<String> {
    if job.is_empty() {
        return None;
    }
    let pods: Vec<Pod> = client
        .list(&format!(
            "/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=job-name%3D{job}"
        ))
        .await
        .ok()?;
    let newest = pods
        .iter()
        .max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0))?;
    let pod = newest.metadata.name.as_deref()?;
    client
        .get_text(&format!(
            "/api/v1/namespaces/{NAMESPACE}/pods/{pod}/log?tailLines={LOG_LINES}"
        ))
        .await
        .ok()
        .flatten()
}

/// One HelmChart as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChartState {
    pub name: String,
    pub(crate) chart: String,
    pub(crate) version: String,
    /// `installed`, `installing (N failed attempts)`, `failed: <why>`, `uninstalling`, ...
    pub state: String,
}

/// Every HelmChart of flatstack's namespace with the state of its Job.
pub async fn chart_states(client: &KubeClient) -> Result<Vec<ChartState>, KubeError> {
    let charts: Vec<HelmChart> = client
        .list(&format!(
            "/apis/helm.cattle.io/v1/namespaces/{NAMESPACE}/helmcharts"
        ))
        .await?;
    let mut states = Vec::new();
    for chart in charts {
        let failed = chart_failure(&chart);
        let job: Option<Job> = match chart.status.job_name.as_str() {
            "" => None,
            name => client.get(&job_path(name)).await?,
        };
        let status = job.and_then(|j| j.status);
        let state = if chart.metadata.deletion_timestamp.is_some() {
            "uninstalling".to_string()
        } else if let Some(message) = failed {
            format!("failed: {message}")
        } else {
            match status {
                None => "waiting for helm-controller".to_string(),
                Some(s) if s.succeeded.unwrap_or(0) > 0 => "installed".to_string(),
                Some(s) => match job_failure(&s) {
                    Some(message) => format!("failed: {message}"),
                    None => format!("installing ({} failed attempt(s))", s.failed.unwrap_or(0)),
                },
            }
        };
        states.push(ChartState {
            name: chart.metadata.name.unwrap_or_default(),
            chart: chart.spec.chart,
            version: chart.spec.version,
            state,
        });
    }
    states.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(states)
}
