//! `flatstack smoke`: deploy nginx with a page holding a random token, wait for its pod, fetch
//! the page through the ingress from this machine, and remove everything again — whatever
//! happened. A failure names the step and why (a pod's waiting reason, an HTTP status, a
//! page without the token).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use crate::addons::smoke::Smoke;
use crate::kube::{KubeClient, KubeError, Waiting, poll, wait_deployment};

#[derive(Debug, thiserror::Error)]
pub(crate) enum SmokeError {
    #[error("the smoke pod never became ready: {reason}")]
    PodNotReady { reason: String },
    #[error(
        "{url} never served the smoke page: {last}\n  hint: `kubectl -n traefik get pods` and `kubectl get ingress -A` show the ingress side"
    )]
    NotServed { url: String, last: String },
    #[error(transparent)]
    Kube(#[from] KubeError),
}

/// What a passing run saw.
#[derive(Debug)]
pub(crate) struct SmokeReport {
    pub(crate) url: String,
    pub(crate) pod_ready_after: Duration,
    pub(crate) served_after: Duration,
}

/// Runs the smoke test against the ingress at `ingress_base` (`http://ADDRESS[:PORT]`).
pub(crate) async fn smoke(
    client: &KubeClient,
    smoke: &Smoke,
    ingress_base: &str,
    within: Duration,
    say: &(dyn Fn(&str) + Sync),
) -> Result<SmokeReport, SmokeError> {
    let outcome = run(client, smoke, ingress_base, within, say).await;
    say(&format!("removing namespace {}", smoke.namespace));
    let cleanup = client.delete(&smoke.namespace_path()).await;
    let report = outcome?;
    cleanup?;
    Ok(report)
}

async fn run(
    client: &KubeClient,
    smoke: &Smoke,
    ingress_base: &str,
    within: Duration,
    say: &(dyn Fn(&str) + Sync),
) -> Result<SmokeReport, SmokeError> {
    let started = Instant::now();
    let left = || within.saturating_sub(started.elapsed());
    for manifest in &smoke.manifests {
        say(&format!("applying {manifest}"));
        client.apply(manifest).await?;
    }
    say("waiting for the nginx pod");
    let namespace = &smoke.namespace;
    if let Err(e) = wait_deployment(client, namespace, "web", left()).await {
        let reason = match pod_trouble(client, smoke).await {
            Some(trouble) => trouble,
            None => e.to_string(),
        };
        return Err(SmokeError::PodNotReady { reason });
    }
    let pod_ready_after = started.elapsed();
    let url = format!("{}{}", ingress_base.trim_end_matches('/'), smoke.path);
    say(&format!("fetching {url}"));
    let http = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| SmokeError::NotServed {
            url: url.clone(),
            last: e.to_string(),
        })?;
    let last = std::sync::Mutex::new(String::from("no answer yet"));
    let served = poll(
        &format!("{url} serving"),
        left(),
        Duration::from_secs(2),
        || async {
            let seen = match http.get(&url).send().await {
                Err(e) => format!("connection failed: {}", crate::kube::error_chain(&e)),
                Ok(response) => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    if status.is_success() && body.contains(&smoke.token) {
                        return Ok(Waiting::Done(()));
                    }
                    if status.is_success() {
                        "HTTP 200 but the page lacks the smoke token (another backend answered)"
                            .to_string()
                    } else {
                        format!("HTTP {}", status.as_u16())
                    }
                }
            };
            if let Ok(mut slot) = last.lock() {
                slot.clone_from(&seen);
            }
            Ok(Waiting::On(seen))
        },
    )
    .await;
    if served.is_err() {
        let last = last.lock().map(|s| s.clone()).unwrap_or_default();
        return Err(SmokeError::NotServed { url, last });
    }
    Ok(SmokeReport {
        url,
        pod_ready_after,
        served_after: started.elapsed(),
    })
}

/// Why the smoke pod is not ready, in the words of its status: a container's waiting reason
/// (`ErrImagePull: ...`) or an unmet condition (`Unschedulable: 0/3 nodes are available...`).
async fn pod_trouble(client: &KubeClient, smoke: &Smoke) -> Option<String> {
    let pods: Vec<Pod> = client.list(&smoke.pods_path()).await.ok()?;
    let status = pods.into_iter().next()?.status?;
    let waiting = status
        .container_statuses
        .iter()
        .flatten()
        .find_map(|c| c.state.as_ref()?.waiting.clone());
    if let Some(waiting) = waiting {
        return Some(format!(
            "{}: {}",
            waiting.reason.unwrap_or_default(),
            waiting.message.unwrap_or_default()
        ));
    }
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.status == "False")
        .map(|c| {
            format!(
                "{} {}: {}",
                c.type_,
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default()
            )
        })
}
