//! Draining a node, as `kubectl drain` does: cordon it, evict every pod that is not a
//! DaemonSet's or a static (mirror) pod through the Eviction API (so PodDisruptionBudgets are
//! honoured: a budget that allows no disruption holds the drain until `within` is spent, and
//! no pod is ever deleted past it), wait for them to be gone. Before its server is deleted the
//! Node object goes too; before an upgrade it stays, cordoned, with its labels and taints.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use super::{KubeClient, KubeError, Waiting, poll};

/// What draining a node did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DrainReport {
    /// Pods evicted.
    pub evicted: usize,
    /// DaemonSet and static pods left in place (they go with the server).
    pub left: usize,
}

/// What becomes of the Node object once its pods are gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterDrain {
    /// Deleted: its server goes next.
    DeleteNode,
    /// Kept, cordoned: the node comes back (an upgrade), and uncordoning it is the caller's.
    KeepCordoned,
}

/// Drains `node` within `within`, then deletes its Node object or keeps it cordoned. A node
/// the API does not know is already drained.
pub async fn drain_node(
    client: &KubeClient,
    node: &str,
    within: Duration,
    after: AfterDrain,
) -> Result<DrainReport, KubeError> {
    let started = Instant::now();
    let node_path = format!("/api/v1/nodes/{node}");
    match client
        .merge_patch(
            &node_path,
            &serde_json::json!({"spec": {"unschedulable": true}}),
        )
        .await
    {
        Err(e) if e.is_not_found() => return Ok(DrainReport::default()),
        other => other?,
    }
    let pods = pods_on(client, node).await?;
    let (moving, staying): (Vec<&Pod>, Vec<&Pod>) = pods.iter().partition(|p| movable(p));
    let mut report = DrainReport {
        evicted: 0,
        left: staying.len(),
    };
    for pod in moving {
        let (Some(namespace), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
            continue;
        };
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}/eviction");
        let eviction = serde_json::json!({
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
        });
        let left = within.saturating_sub(started.elapsed());
        // 429 means a PodDisruptionBudget does not allow it yet: ask again until it does.
        poll(
            &format!("eviction of pod {namespace}/{name} from {node}"),
            left,
            Duration::from_secs(5),
            || async {
                match client.post(&path, &eviction).await {
                    Ok(()) => Ok(Waiting::Done(())),
                    Err(e) if e.is_not_found() => Ok(Waiting::Done(())),
                    Err(KubeError::Api {
                        status: 429,
                        message,
                        ..
                    }) => Ok(Waiting::On(message)),
                    Err(e) => Err(e),
                }
            },
        )
        .await?;
        report.evicted += 1;
    }
    let left = within.saturating_sub(started.elapsed());
    poll(
        &format!("evicted pods leaving {node}"),
        left,
        Duration::from_secs(2),
        || async {
            let remaining: Vec<String> = pods_on(client, node)
                .await?
                .iter()
                .filter(|p| movable(p))
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            Ok(if remaining.is_empty() {
                Waiting::Done(())
            } else {
                Waiting::On(format!("still running: {}", remaining.join(", ")))
            })
        },
    )
    .await?;
    if after == AfterDrain::DeleteNode {
        client.delete(&node_path).await?;
    }
    Ok(report)
}

async fn pods_on(client: &KubeClient, node: &str) -> Result<Vec<Pod>, KubeError> {
    let path = format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{node}");
    let list: Option<k8s_openapi::List<Pod>> = client.get(&path).await?;
    Ok(list.map(|l| l.items).unwrap_or_default())
}

/// Pods that drain moves: not a DaemonSet's (it would come straight back) and not a static
/// pod's mirror (the kubelet owns it).
fn movable(pod: &Pod) -> bool {
    let daemon = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|owner| owner.kind == "DaemonSet");
    let mirror = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"));
    !daemon && !mirror
}
