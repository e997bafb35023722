//! The cluster side of `up`, once the servers exist: wait for the API server to answer
//! `/readyz` (verified against the local cluster CA), mark the control planes for the Helm
//! engine, apply the add-ons unless the recorded digest says they are current, wait for each
//! chart's install Job, then for every node of the cluster file to be Ready. Every step reads
//! before it writes, so a re-run picks up wherever an earlier one stopped.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::ApplyError;
use super::charts::{self, Expect};
use crate::addons::{AddonSet, CONTROL_PLANE_LABEL, NAMESPACE, RECORD_CONFIGMAP};
use crate::kube::{KubeClient, KubeError, Manifest, Waiting, is_ready, poll};
use crate::pki::ClusterPki;
use crate::spec::{NodeName, Role};

/// How long a bootstrap token refreshed for new workers stays valid.
const JOIN_TOKEN_HOURS: i64 = 4;

/// Records how long each phase of a run takes.
struct Stopwatch {
    last: Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl Stopwatch {
    fn start() -> Stopwatch {
        Stopwatch {
            last: Instant::now(),
            phases: Vec::new(),
        }
    }

    fn lap(&mut self, phase: &'static str) {
        let now = Instant::now();
        self.phases.push((phase, now - self.last));
        self.last = now;
    }
}

/// What the cluster side of `up` found and did.
#[derive(Debug)]
pub struct Bootstrapped {
    pub nodes: Vec<Node>,
    /// Writes made through the API (labels, applied objects); 0 on a converged cluster.
    pub changes: usize,
    pub(crate) timings: Vec<(&'static str, Duration)>,
}

/// Brings the cluster's API side to the cluster file: everything within `within`.
/// `members` are the nodes the cluster has (the plan's roster): each must be Ready.
pub async fn bootstrap(
    client: &KubeClient,
    members: &[NodeName],
    addons: &AddonSet,
    within: Duration,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Bootstrapped, ApplyError> {
    let started = Instant::now();
    let left = || within.saturating_sub(started.elapsed());
    let mut watch = Stopwatch::start();

    say(&format!("waiting for the API at {}", client.server()));
    client
        .wait_ready(left())
        .await
        .map_err(|e| e.of_total(within))?;
    watch.lap("API ready");

    let control_planes: Vec<String> = members
        .iter()
        .filter(|n| n.role == Role::ControlPlane)
        .map(|n| n.name.clone())
        .collect();
    say("waiting for the control planes to register");
    let nodes = poll(
        "every control plane registering as a node",
        left(),
        Duration::from_secs(2),
        || async {
            let nodes = client.nodes().await?;
            let missing = missing_nodes(&nodes, &control_planes);
            Ok(if missing.is_empty() {
                Waiting::Done(nodes)
            } else {
                Waiting::On(format!("not registered yet: {}", missing.join(", ")))
            })
        },
    )
    .await
    .map_err(|e| e.of_total(within))?;
    let mut changes = 0;
    for node in nodes
        .iter()
        .filter(|n| control_planes.contains(n.metadata.name.as_ref().unwrap_or(&String::new())))
    {
        let name = node.metadata.name.clone().unwrap_or_default();
        let labelled = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(CONTROL_PLANE_LABEL))
            .map(String::as_str);
        if labelled != Some("true") {
            say(&format!("labelling {name} {CONTROL_PLANE_LABEL}=true"));
            client
                .merge_patch(
                    &format!("/api/v1/nodes/{name}"),
                    &serde_json::json!({"metadata": {"labels": {CONTROL_PLANE_LABEL: "true"}}}),
                )
                .await?;
            changes += 1;
        }
    }
    watch.lap("control planes registered");

    let record_path = format!("/api/v1/namespaces/{NAMESPACE}/configmaps/{RECORD_CONFIGMAP}");
    let recorded: Option<ConfigMap> = client.get(&record_path).await?;
    let current = recorded
        .and_then(|c| c.data)
        .and_then(|d| d.get("addons-digest").cloned())
        == Some(addons.digest.clone());
    let mut expected = BTreeMap::new();
    if current {
        say("add-ons are current");
    } else {
        let mut charts_served = false;
        for manifest in &addons.manifests {
            if manifest.kind() == "HelmChart" && !charts_served {
                say("waiting for helm-controller to serve HelmCharts");
                charts::wait_chart_kind_served(client, left())
                    .await
                    .map_err(|e| e.of_total(within))?;
                charts_served = true;
            }
            say(&format!("applying {manifest}"));
            if manifest.kind() == "HelmChart" {
                let expect = charts::apply_chart(client, manifest).await?;
                expected.insert(manifest.name().to_string(), expect);
            } else {
                client.apply(manifest).await?;
            }
            changes += 1;
        }
    }
    watch.lap("add-ons applied");

    for chart in &addons.charts {
        say(&format!("waiting for chart {chart} to install"));
        let expect = expected.get(chart).unwrap_or(&Expect::Current);
        charts::wait_chart(client, chart, expect, left())
            .await
            .map_err(|e| e.of_total(within))?;
    }
    if !current {
        for manifest in &addons.after_charts {
            say(&format!("applying {manifest}"));
            apply_when_served(client, manifest, left())
                .await
                .map_err(|e| e.of_total(within))?;
            changes += 1;
        }
        client.apply(&crate::addons::record(&addons.digest)).await?;
        changes += 1;
    }
    watch.lap("add-ons installed");

    let wanted: Vec<String> = members.iter().map(|n| n.name.clone()).collect();
    say(&format!("waiting for {} node(s) to be Ready", wanted.len()));
    let last_ready = std::sync::atomic::AtomicUsize::new(usize::MAX);
    let nodes = poll(
        "every node Ready",
        left(),
        Duration::from_secs(3),
        || async {
            let nodes = client.nodes().await?;
            let ready = nodes
                .iter()
                .filter(|n| {
                    is_ready(n) && n.metadata.name.as_ref().is_some_and(|m| wanted.contains(m))
                })
                .count();
            if last_ready.swap(ready, std::sync::atomic::Ordering::Relaxed) != ready {
                say(&format!("{ready}/{} nodes Ready", wanted.len()));
            }
            let mut waiting = missing_nodes(&nodes, &wanted);
            waiting.extend(
                nodes
                    .iter()
                    .filter(|n| !is_ready(n))
                    .filter_map(|n| n.metadata.name.clone())
                    .filter(|name| wanted.contains(name))
                    .map(|name| format!("{name} (NotReady)")),
            );
            Ok(if waiting.is_empty() {
                Waiting::Done(nodes)
            } else {
                Waiting::On(format!("waiting for {}", waiting.join(", ")))
            })
        },
    )
    .await
    .map_err(|e| e.of_total(within))?;
    watch.lap("nodes Ready");
    Ok(Bootstrapped {
        nodes,
        changes,
        timings: watch.phases,
    })
}

/// Applies an object of a kind a chart just installed: until its CRD is served (404) and its
/// admission webhook answers (500/503), the API server refuses it, so keep trying.
async fn apply_when_served(
    client: &KubeClient,
    manifest: &Manifest,
    within: Duration,
) -> Result<(), KubeError> {
    poll(
        &format!("{manifest} being accepted"),
        within,
        Duration::from_secs(3),
        || async {
            match client.apply(manifest).await {
                Ok(_) => Ok(Waiting::Done(())),
                Err(KubeError::Api {
                    status: 404 | 500 | 503,
                    message,
                    ..
                }) => Ok(Waiting::On(message)),
                Err(e) => Err(e),
            }
        },
    )
    .await
}

fn missing_nodes(nodes: &[Node], wanted: &[String]) -> Vec<String> {
    wanted
        .iter()
        .filter(|name| !nodes.iter().any(|n| n.metadata.name.as_ref() == Some(name)))
        .cloned()
        .collect()
}

/// Makes the cluster's bootstrap token valid for another few hours, so workers created now
/// can join: the token in their user_data is the one from the state directory, which the
/// first control plane registered with a limited lifetime.
pub(crate) async fn refresh_join_token(
    client: &KubeClient,
    pki: &ClusterPki,
) -> Result<(), KubeError> {
    client.apply(&join_token_secret(pki)).await.map(|_| ())
}

/// The bootstrap-token Secret kubeadm's joins authenticate with, valid for
/// [`JOIN_TOKEN_HOURS`] from now.
pub fn join_token_secret(pki: &ClusterPki) -> Manifest {
    let token = pki.bootstrap_token.expose();
    let (id, secret) = token.split_once('.').unwrap_or((token, ""));
    let now = crate::kube::now();
    let expires = now
        .checked_add(k8s_openapi::jiff::SignedDuration::from_hours(
            JOIN_TOKEN_HOURS,
        ))
        .unwrap_or(now);
    let data: BTreeMap<String, String> = [
        ("token-id", id),
        ("token-secret", secret),
        ("expiration", &expires.to_string()),
        ("usage-bootstrap-authentication", "true"),
        ("usage-bootstrap-signing", "true"),
        (
            "auth-extra-groups",
            "system:bootstrappers:kubeadm:default-node-token",
        ),
        ("description", "flatstack: lets new workers join"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(format!("bootstrap-token-{id}")),
            namespace: Some(NAMESPACE.into()),
            ..ObjectMeta::default()
        },
        type_: Some("bootstrap.kubernetes.io/token".into()),
        string_data: Some(data),
        ..Secret::default()
    };
    Manifest::of(&secret)
}
