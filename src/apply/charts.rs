//! Installing, upgrading and removing Helm charts through helm-controller, and knowing when it
//! is done. helm-controller runs `helm-install-<chart>` Jobs and, when a chart's spec or a
//! values Secret it reads changes, replaces that Job under the same name
//! (k3s-io/helm-controller v0.17.7 `pkg/controllers/chart/chart.go`). A chart is settled when
//! the cluster's record ([`super::record`]) holds the digest of its current settings; until
//! then flatstack waits for a successful Job that is none of those made for older settings.
//!
//! The Jobs never fail by themselves: helm-controller makes them with `restartPolicy:
//! OnFailure` and `backoffLimit: 1000`, so a failing `helm` container restarts in the same pod,
//! the Job's `status.failed` stays 0 and no Failed condition comes for days (the job controller
//! counts restarts only against the backoff limit: `pkg/controller/job/job_controller.go`,
//! `pastBackoffLimitOnFailure`). So the Job is judged by its pod: a few restarts of `helm`
//! are a failure, reported with what Helm printed in its last attempt; a pod that cannot be
//! scheduled says why while flatstack waits.

use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobStatus};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use super::record::{Record, SettledChart};
use crate::addons::{HelmChart, NAMESPACE};
use crate::kube::{KubeClient, KubeError, Manifest, Waiting, poll};

/// Restarts of the `helm` container after which its Job counts as failed: the kubelet waits
/// 10, 20 and 40 s between them, so three take a minute or two.
const FAILED_ATTEMPTS: i32 = 3;
/// Lines of Helm's output shown when a chart fails.
const LOG_LINES: u32 = 15;
/// The container helm-controller runs Helm in.
const HELM_CONTAINER: &str = "helm";

/// The install Jobs (by UID) that were made for older settings of a chart than its current
/// ones: their success says nothing about the current settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StaleJobs(Vec<String>);

impl StaleJobs {
    pub(crate) fn none() -> StaleJobs {
        StaleJobs::default()
    }

    fn with(&self, uid: &str) -> StaleJobs {
        let mut all = self.0.clone();
        if !uid.is_empty() && !all.iter().any(|u| u == uid) {
            all.push(uid.to_string());
        }
        StaleJobs(all)
    }

    fn contains(&self, uid: &str) -> bool {
        self.0.iter().any(|u| u == uid)
    }
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

/// What an apply of a HelmChart did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Applied {
    /// The chart is new, or its spec or a values Secret it reads changed.
    pub(crate) changed: bool,
    /// The Jobs the change made stale.
    pub(crate) stale: StaleJobs,
}

/// Applies `chart` and says what changed. The API server bumps `metadata.generation` exactly
/// when the spec changes (the fields its CRD defaults, and metadata, do not count), and
/// helm-controller replaces the install Job exactly then, or when a values Secret the chart
/// reads changed (`inputs_changed`).
pub(crate) async fn apply_after(
    client: &KubeClient,
    chart: &Manifest,
    before: &BeforeApply,
    inputs_changed: bool,
) -> Result<Applied, KubeError> {
    let applied = client.apply(chart).await?;
    let generation = applied["metadata"]["generation"].as_i64();
    let changed = !before.exists || inputs_changed || generation != before.generation;
    Ok(Applied {
        changed,
        stale: if changed {
            StaleJobs::none().with(&before.job_uid)
        } else {
            StaleJobs::none()
        },
    })
}

/// Applies a HelmChart, first reading what is there to know which Job its change makes stale.
pub(crate) async fn apply_chart(
    client: &KubeClient,
    chart: &Manifest,
) -> Result<Applied, KubeError> {
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

/// Settles chart `name`. When the record holds its current settings, it is settled if the
/// recorded Job is still its Job, or its Job succeeded and is not one this run made stale; a
/// newer Job (the chart changed and changed back) is waited for. Otherwise flatstack waits for
/// a successful Job that is neither in `stale` (made stale by this run's apply) nor the one
/// recorded for older settings, and records it. Returns whether it waited.
pub(crate) async fn settle(
    client: &KubeClient,
    record: &mut Record,
    name: &str,
    stale: &StaleJobs,
    within: Duration,
) -> Result<bool, KubeError> {
    let started = std::time::Instant::now();
    let Some(chart): Option<HelmChart> = client.get(&chart_path(name)).await? else {
        return Err(KubeError::Api {
            method: "GET",
            url: format!("HelmChart {NAMESPACE}/{name}"),
            status: 404,
            message: format!(
                "HelmChart {name} vanished while flatstack was installing it; run flatstack again"
            ),
        });
    };
    let settings = record.chart_settings(client, &chart).await?;
    let recorded = record.chart(name);
    let stale = match &recorded {
        Some(old) if old.settings == settings => {
            let job: Option<Job> = match chart.status.job_name.as_str() {
                "" => None,
                job => client.get(&job_path(job)).await?,
            };
            let uid = job
                .as_ref()
                .and_then(|j| j.metadata.uid.clone())
                .unwrap_or_default();
            let succeeded = job
                .and_then(|j| j.status)
                .and_then(|s| s.succeeded)
                .unwrap_or(0)
                > 0;
            // A success counts only from a Job this run's apply did not make stale: a chart
            // changed, run, and changed back still has the Job of the change until
            // helm-controller replaces it.
            if uid == old.job_uid || (succeeded && !stale.contains(&uid)) {
                return Ok(false);
            }
            stale.clone()
        }
        Some(old) => stale.with(&old.job_uid),
        None => stale.clone(),
    };
    let job_uid = wait_chart(
        client,
        name,
        &stale,
        within.saturating_sub(started.elapsed()),
    )
    .await?;
    record.set_chart(name, SettledChart { settings, job_uid });
    record.save(client).await?;
    Ok(true)
}

/// Waits until the install Job of HelmChart `name` has succeeded, a Job none of `stale`;
/// returns its UID. A Job that gave up, a chart helm-controller marked Failed, or a `helm`
/// container that failed [`FAILED_ATTEMPTS`] times ends it with Helm's output. A pod left
/// failing by an earlier run is deleted once, so this run judges a fresh attempt (the Job
/// makes a new pod at once).
pub(crate) async fn wait_chart(
    client: &KubeClient,
    name: &str,
    stale: &StaleJobs,
    within: Duration,
) -> Result<String, KubeError> {
    // Pods this wait has seen (failing from before, and restarted) by name.
    let seen: Mutex<Vec<String>> = Mutex::new(Vec::new());
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
                    return Err(failed(client, name, job_name, &message, None).await);
                }
                return Ok(Waiting::On(
                    "helm-controller has not started an install Job yet".into(),
                ));
            }
            let Some(job): Option<Job> = client.get(&job_path(job_name)).await? else {
                return Ok(Waiting::On(format!("Job {job_name} not found yet")));
            };
            let uid = job.metadata.uid.clone().unwrap_or_default();
            if stale.contains(&uid) {
                // Whatever the old Job or the chart's conditions say is about older settings.
                return Ok(Waiting::On(format!(
                    "helm-controller has not replaced Job {job_name} for the new settings yet"
                )));
            }
            let status = job.status.unwrap_or_default();
            if status.succeeded.unwrap_or(0) > 0 {
                return Ok(Waiting::Done(uid));
            }
            if let Some(reason) = job_failure(&status).or(chart_failed) {
                return Err(failed(client, name, job_name, &reason, None).await);
            }
            let Some(pod) = newest_pod(client, &uid).await? else {
                return Ok(Waiting::On(format!(
                    "Job {job_name} has no pod yet{}",
                    if job.spec.and_then(|s| s.suspend) == Some(true) {
                        " (helm-controller resumes it once the job controller has seen it)"
                    } else {
                        ""
                    }
                )));
            };
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            let first_look = {
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                let first = !seen.contains(&pod_name);
                if first {
                    seen.push(pod_name.clone());
                }
                first
            };
            match judge(&pod) {
                Verdict::Failed(reason) if first_look => {
                    // Failing since before this wait (an earlier run, a cause since fixed):
                    // one fresh attempt before it counts.
                    client
                        .delete(&format!(
                            "/api/v1/namespaces/{NAMESPACE}/pods/{pod_name}"
                        ))
                        .await?;
                    Ok(Waiting::On(format!(
                        "Job {job_name} was failing from before ({reason}); its pod was deleted for a fresh attempt"
                    )))
                }
                Verdict::Failed(reason) => {
                    Err(failed(client, name, job_name, &reason, Some(&pod)).await)
                }
                Verdict::Waiting(what) => Ok(Waiting::On(format!("Job {job_name}: {what}"))),
            }
        },
    )
    .await
}

/// The newest pod of the Job with UID `job_uid` (the job controller labels its pods with it,
/// so an older Job of the same name does not count).
async fn newest_pod(client: &KubeClient, job_uid: &str) -> Result<Option<Pod>, KubeError> {
    if job_uid.is_empty() {
        return Ok(None);
    }
    let pods: Vec<Pod> = client
        .list(&format!(
            "/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=batch.kubernetes.io%2Fcontroller-uid%3D{job_uid}"
        ))
        .await?;
    Ok(pods
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0)))
}

/// What an install Job's pod says about Helm.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Helm failed: why, in a few words.
    Failed(String),
    /// Still going: what it waits for.
    Waiting(String),
}

fn helm_status(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == HELM_CONTAINER)
}

fn judge(pod: &Pod) -> Verdict {
    let status = pod.status.as_ref();
    if status.and_then(|s| s.phase.as_deref()) == Some("Failed") {
        return Verdict::Failed(
            status
                .and_then(|s| s.message.clone())
                .unwrap_or_else(|| "its pod failed".into()),
        );
    }
    if let Some(unschedulable) = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
    {
        return Verdict::Waiting(format!(
            "its pod cannot be scheduled: {}",
            unschedulable
                .message
                .as_deref()
                .or(unschedulable.reason.as_deref())
                .unwrap_or("no reason given")
        ));
    }
    let Some(helm) = helm_status(pod) else {
        return Verdict::Waiting("its pod is starting".into());
    };
    let waiting = helm.state.as_ref().and_then(|s| s.waiting.as_ref());
    if helm.restart_count >= FAILED_ATTEMPTS {
        let backoff = waiting
            .and_then(|w| w.reason.as_deref())
            .filter(|r| *r == "CrashLoopBackOff")
            .map(|r| format!(", {r}"))
            .unwrap_or_default();
        let exit = helm
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .map(|t| format!(", last exit code {}", t.exit_code))
            .unwrap_or_default();
        return Verdict::Failed(format!(
            "Helm failed {} times in a row{exit}{backoff}",
            helm.restart_count
        ));
    }
    match waiting {
        Some(w) => Verdict::Waiting(format!(
            "helm container waiting: {}{}",
            w.reason.as_deref().unwrap_or("unknown reason"),
            w.message
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        )),
        None if helm.restart_count > 0 => Verdict::Waiting(format!(
            "Helm running again after {} failed attempt(s)",
            helm.restart_count
        )),
        None => Verdict::Waiting("Helm running".into()),
    }
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
async fn failed(
    client: &KubeClient,
    name: &str,
    job: &str,
    reason: &str,
    pod: Option<&Pod>,
) -> KubeError {
    let output = match pod {
        Some(pod) => helm_output(client, pod).await,
        None => None,
    };
    let output = match output {
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
            "chart {name} failed to install: {reason}{output}\n  hint: `kubectl -n {NAMESPACE} logs job/{job} --previous` shows all of Helm's output; fix the cause and run flatstack again (it gives the Job a fresh attempt)"
        ),
    }
}

/// What Helm printed in the last attempt that ended: the previous `helm` container's log (the
/// kubelet serves it with `previous=true` once the container restarted), else the termination
/// message it left.
async fn helm_output(client: &KubeClient, pod: &Pod) -> Option<String> {
    let name = pod.metadata.name.as_deref()?;
    let log = client
        .get_text(&format!(
            "/api/v1/namespaces/{NAMESPACE}/pods/{name}/log?container={HELM_CONTAINER}&previous=true&tailLines={LOG_LINES}"
        ))
        .await
        .ok()
        .flatten()
        .filter(|text| !text.trim().is_empty());
    log.or_else(|| {
        helm_status(pod)?
            .last_state
            .as_ref()?
            .terminated
            .as_ref()?
            .message
            .clone()
    })
}

/// One HelmChart as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChartState {
    pub name: String,
    pub(crate) chart: String,
    pub(crate) version: String,
    /// `installed`, `installing (N failed attempts)`, `failed: <why>`, `uninstalling`, ...
    pub state: String,
}

/// Every HelmChart of flatstack's namespace with the state of its Job, judged by its pod.
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
        let state = if chart.metadata.deletion_timestamp.is_some() {
            "uninstalling".to_string()
        } else if let Some(message) = failed {
            format!("failed: {message}")
        } else {
            match job {
                None => "waiting for helm-controller".to_string(),
                Some(job) => {
                    let status = job.status.clone().unwrap_or_default();
                    if status.succeeded.unwrap_or(0) > 0 {
                        "installed".to_string()
                    } else if let Some(message) = job_failure(&status) {
                        format!("failed: {message}")
                    } else {
                        let uid = job.metadata.uid.unwrap_or_default();
                        match newest_pod(client, &uid).await?.map(|p| judge(&p)) {
                            Some(Verdict::Failed(why)) => format!("failed: {why}"),
                            Some(Verdict::Waiting(what)) => format!("installing ({what})"),
                            None => "installing (no pod yet)".to_string(),
                        }
                    }
                }
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
