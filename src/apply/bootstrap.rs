//! The cluster side of `up`, once the servers exist: wait for the API server to answer
//! `/readyz` (verified against the local cluster CA), mark the control planes for the Helm
//! engine, apply the add-ons unless the recorded digest says they are current, wait for each
//! chart's install Job, then for every node of the cluster file to be Ready. Every step reads
//! before it writes, so a re-run picks up wherever an earlier one stopped.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::ApplyError;
use super::charts::{self, StaleJobs};
use super::record::Record;
use crate::addons::{AddonSet, CONTROL_PLANE_LABEL, NAMESPACE};
use crate::kube::{KubeClient, KubeError, Manifest, Waiting, is_initialized, is_ready, poll};
use crate::node::kubeadm::JOIN_TOKEN_DESCRIPTION;
use crate::pki::BootstrapToken;
use crate::spec::{NodeName, Role};

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
    let marks = ControlPlaneMarks {
        names: &control_planes,
        serve_load_balancers: addons.control_planes_serve_load_balancers,
    };
    say("waiting for kubeadm to mark the control planes");
    let mut changes = marks
        .ensure(client, left(), say)
        .await
        .map_err(|e| e.of_total(within))?;
    watch.lap("control planes registered");

    let mut record = Record::read(client, &addons.record_key).await?;
    let current = record.addons_current(&addons.digest);
    let mut stale = BTreeMap::new();
    if current {
        say("add-ons are current");
    } else {
        let mut charts_served = false;
        for manifest in &addons.manifests {
            if manifest.kind() == "HelmChart" && !charts_served {
                // helm-controller runs only on a control plane labelled for it.
                changes += marks
                    .ensure(client, left(), say)
                    .await
                    .map_err(|e| e.of_total(within))?;
                say("waiting for helm-controller to serve HelmCharts");
                charts::wait_chart_kind_served(client, left())
                    .await
                    .map_err(|e| e.of_total(within))?;
                charts_served = true;
            }
            say(&format!("applying {manifest}"));
            if manifest.kind() == "HelmChart" {
                let applied = charts::apply_chart(client, manifest).await?;
                stale.insert(manifest.name().to_string(), applied.stale);
            } else {
                client.apply(manifest).await?;
            }
            changes += 1;
        }
    }
    watch.lap("add-ons applied");

    let none = StaleJobs::none();
    for chart in &addons.charts {
        // helm-controller and the bootstrap charts' Jobs select the label: make sure it holds.
        changes += marks
            .ensure(client, left(), say)
            .await
            .map_err(|e| e.of_total(within))?;
        say(&format!("waiting for chart {chart} to install"));
        let waited = charts::settle(
            client,
            &mut record,
            chart,
            stale.get(chart).unwrap_or(&none),
            left(),
        )
        .await
        .map_err(|e| e.of_total(within))?;
        changes += usize::from(waited);
    }
    if !current {
        for manifest in &addons.after_charts {
            say(&format!("applying {manifest}"));
            apply_when_served(client, manifest, left())
                .await
                .map_err(|e| e.of_total(within))?;
            changes += 1;
        }
        record.set_addons(&addons.digest);
        record.save(client).await?;
        changes += 1;
    }
    watch.lap("add-ons installed");

    changes += marks
        .ensure(client, left(), say)
        .await
        .map_err(|e| e.of_total(within))?;
    let wanted: Vec<String> = members.iter().map(|n| n.name.clone()).collect();
    say(&format!(
        "waiting for {} node(s) to be Ready and initialized",
        wanted.len()
    ));
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
                    is_ready(n)
                        && is_initialized(n)
                        && n.metadata.name.as_ref().is_some_and(|m| wanted.contains(m))
                })
                .count();
            if last_ready.swap(ready, std::sync::atomic::Ordering::Relaxed) != ready {
                say(&format!(
                    "{ready}/{} nodes Ready and initialized",
                    wanted.len()
                ));
            }
            let mut waiting = missing_nodes(&nodes, &wanted);
            waiting.extend(nodes.iter().filter_map(|n| {
                let name = n.metadata.name.clone()?;
                if !wanted.contains(&name) {
                    return None;
                }
                match (is_ready(n), is_initialized(n)) {
                    (true, true) => None,
                    (false, _) => Some(format!("{name} (NotReady)")),
                    (true, false) => Some(format!(
                        "{name} (Ready, not yet initialized by the cloud controller)"
                    )),
                }
            }));
            Ok(if waiting.is_empty() {
                Waiting::Done(nodes)
            } else {
                Waiting::On(format!("waiting for {}", waiting.join(", ")))
            })
        },
    )
    .await
    .map_err(|e| e.of_total(within))?;
    // Every node has joined: no join token is needed until the next run adds nodes.
    let deleted = delete_join_tokens(client).await?;
    if deleted > 0 {
        say(&format!(
            "deleted {deleted} join token(s): every node has joined"
        ));
    }
    changes += deleted;
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

/// The label kubeadm's mark-control-plane phase adds beside the control-plane role, which the
/// cloud controller's service controller reads to keep a node out of every load balancer
/// (k8s.io/cloud-provider `controllers/service/controller.go`). Its presence is the sign that
/// the phase has run.
pub(crate) const EXCLUDE_FROM_LOAD_BALANCERS: &str =
    "node.kubernetes.io/exclude-from-external-load-balancers";

/// The labels flatstack keeps on the control planes once kubeadm has marked them.
///
/// `kubeadm init` (and a control plane's `kubeadm join`) marks its node only after the API
/// server answers and the kubelet registered: its mark-control-plane phase runs after
/// wait-control-plane and upload-config, and sets `node-role.kubernetes.io/control-plane` to
/// `""` whatever it was, adding [`EXCLUDE_FROM_LOAD_BALANCERS`] (kubeadm
/// `cmd/kubeadm/app/phases/markcontrolplane/markcontrolplane.go`). A `true` set before that
/// is lost, and helm-controller, the bootstrap charts' Jobs and the cloud controller, which
/// all select `true`, would never run. So flatstack waits for kubeadm's mark, then sets
/// `true`; and where the control planes are the cluster's only general nodes (no worker pool
/// takes ordinary pods), it takes the exclude label off, or a load balancer the cloud
/// controller makes (Traefik's, any user's) would have no member at all.
struct ControlPlaneMarks<'a> {
    names: &'a [String],
    serve_load_balancers: bool,
}

impl ControlPlaneMarks<'_> {
    /// Waits until kubeadm has marked every control plane and makes the labels what flatstack
    /// wants; returns the patches made (none when they already were).
    async fn ensure(
        &self,
        client: &KubeClient,
        within: Duration,
        say: &(dyn Fn(&str) + Sync),
    ) -> Result<usize, KubeError> {
        let patched = std::sync::atomic::AtomicUsize::new(0);
        poll(
            "kubeadm marking every control plane",
            within,
            Duration::from_secs(1),
            || async {
                let nodes = client.nodes().await?;
                let mut waiting = missing_nodes(&nodes, self.names);
                for node in nodes.iter().filter(|n| {
                    n.metadata
                        .name
                        .as_ref()
                        .is_some_and(|name| self.names.contains(name))
                }) {
                    let name = node.metadata.name.clone().unwrap_or_default();
                    match self.patch_for(node) {
                        Mark::NotYet => waiting.push(format!(
                            "{name} (registered; kubeadm has not marked it as a control plane yet)"
                        )),
                        Mark::Done => {}
                        Mark::Patch(labels) => {
                            say(&format!("labelling control plane {name} for the add-ons"));
                            client
                                .merge_patch(
                                    &format!("/api/v1/nodes/{name}"),
                                    &serde_json::json!({"metadata": {"labels": labels}}),
                                )
                                .await?;
                            patched.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
                Ok(if waiting.is_empty() {
                    Waiting::Done(())
                } else {
                    Waiting::On(format!("waiting for {}", waiting.join(", ")))
                })
            },
        )
        .await?;
        Ok(patched.into_inner())
    }

    fn patch_for(&self, node: &Node) -> Mark {
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let role_true = labels.get(CONTROL_PLANE_LABEL).map(String::as_str) == Some("true");
        let excluded = labels.contains_key(EXCLUDE_FROM_LOAD_BALANCERS);
        // flatstack sets `true` only after kubeadm's mark, so `true` is a sign of it as well
        // (once the exclude label has been taken off).
        if !excluded && !role_true {
            return Mark::NotYet;
        }
        let mut patch = serde_json::Map::new();
        if !role_true {
            patch.insert(CONTROL_PLANE_LABEL.into(), "true".into());
        }
        if excluded && self.serve_load_balancers {
            patch.insert(EXCLUDE_FROM_LOAD_BALANCERS.into(), serde_json::Value::Null);
        }
        if patch.is_empty() {
            Mark::Done
        } else {
            Mark::Patch(patch)
        }
    }
}

/// Waits for kubeadm to mark control plane `node`, joined while the cluster runs, and gives
/// it the labels flatstack keeps (see [`ControlPlaneMarks`]): without them a cluster whose
/// control planes were all replaced would run its cloud controller and helm-controller nowhere.
pub(crate) async fn mark_joined_control_plane(
    client: &KubeClient,
    spec: &crate::spec::ClusterSpec,
    node: &str,
    within: Duration,
) -> Result<usize, KubeError> {
    let names = [node.to_string()];
    ControlPlaneMarks {
        names: &names,
        serve_load_balancers: !spec.has_general_workers(),
    }
    .ensure(client, within, &|_| {})
    .await
}

enum Mark {
    NotYet,
    Done,
    Patch(serde_json::Map<String, serde_json::Value>),
}

fn missing_nodes(nodes: &[Node], wanted: &[String]) -> Vec<String> {
    wanted
        .iter()
        .filter(|name| !nodes.iter().any(|n| n.metadata.name.as_ref() == Some(name)))
        .cloned()
        .collect()
}

/// The bootstrap-token Secret this run's new nodes join with, valid for `valid_minutes` from
/// now (the planner's: an hour, more when a rolling replacement makes nodes late in the run;
/// kubeadm's own `bootstrapTokens` entry for the first control plane lasts
/// [`crate::node::kubeadm::JOIN_TOKEN_HOURS`], made by `kubeadm init`).
pub fn join_token_secret(token: &BootstrapToken, valid_minutes: u32) -> Manifest {
    let (id, secret) = token.expose().split_once('.').unwrap_or((token.id(), ""));
    let now = crate::kube::now();
    let expires = now
        .checked_add(k8s_openapi::jiff::SignedDuration::from_mins(i64::from(
            valid_minutes,
        )))
        .unwrap_or(now);
    let expiration = expires.to_string();
    let secret = crate::addons::secret(
        ObjectMeta {
            name: Some(format!("bootstrap-token-{id}")),
            namespace: Some(NAMESPACE.into()),
            ..ObjectMeta::default()
        },
        BOOTSTRAP_TOKEN_TYPE,
        [
            ("token-id", id),
            ("token-secret", secret),
            ("expiration", expiration.as_str()),
            ("usage-bootstrap-authentication", "true"),
            ("usage-bootstrap-signing", "true"),
            (
                "auth-extra-groups",
                "system:bootstrappers:kubeadm:default-node-token",
            ),
            ("description", JOIN_TOKEN_DESCRIPTION),
        ],
    );
    Manifest::of(&secret)
}

/// The Secret type of bootstrap tokens.
const BOOTSTRAP_TOKEN_TYPE: &str = "bootstrap.kubernetes.io/token";

/// A join token flatstack made, as the cluster holds it (never its secret half).
#[derive(Debug, Clone)]
pub(crate) struct JoinTokenSeen {
    pub(crate) id: String,
    /// RFC 3339, as the Secret's `expiration` holds it.
    pub(crate) expiration: Option<String>,
}

/// flatstack's join tokens in the cluster: bootstrap-token Secrets whose description is
/// flatstack's (earlier releases' descriptions too, all `flatstack: ...`).
pub(crate) async fn join_tokens(client: &KubeClient) -> Result<Vec<JoinTokenSeen>, KubeError> {
    let path = format!(
        "/api/v1/namespaces/{NAMESPACE}/secrets?fieldSelector=type%3D{}",
        BOOTSTRAP_TOKEN_TYPE.replace('/', "%2F")
    );
    let secrets: Vec<Secret> = client.list(&path).await?;
    let text = |secret: &Secret, key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
    };
    Ok(secrets
        .iter()
        .filter(|s| s.type_.as_deref() == Some(BOOTSTRAP_TOKEN_TYPE))
        .filter(|s| text(s, "description").is_some_and(|d| d.starts_with("flatstack:")))
        .filter_map(|s| {
            Some(JoinTokenSeen {
                id: text(s, "token-id")?,
                expiration: text(s, "expiration"),
            })
        })
        .collect())
}

/// Deletes every join token flatstack made: called once every node of the cluster file has
/// joined, so none is left for anyone to use. Returns how many went.
pub(crate) async fn delete_join_tokens(client: &KubeClient) -> Result<usize, KubeError> {
    let tokens = join_tokens(client).await?;
    for token in &tokens {
        client
            .delete(&format!(
                "/api/v1/namespaces/{NAMESPACE}/secrets/bootstrap-token-{}",
                token.id
            ))
            .await?;
    }
    Ok(tokens.len())
}
