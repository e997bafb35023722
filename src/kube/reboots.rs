//! Which Flatcar release each node runs and whether it waits for a reboot: the release from
//! the node's OS image, the wait from kured (its `kured_reboot_required` metric, read through
//! the API server's pod proxy, and the annotation it sets while rebooting a node).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};

use super::{KubeClient, KubeError};
use crate::addons::NAMESPACE;
use crate::addons::updates::{KURED_METRICS_PORT, KURED_POD_LABEL};

/// kured's annotation on a node it has drained for a reboot.
const REBOOT_IN_PROGRESS: &str = "weave.works/kured-reboot-in-progress";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootState {
    /// Updated and waiting for kured's turn or window.
    Pending,
    Rebooting,
    UpToDate,
    /// No kured pod on the node answered.
    Unknown,
}

impl RebootState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RebootState::Pending => "reboot pending",
            RebootState::Rebooting => "rebooting",
            RebootState::UpToDate => "no",
            RebootState::Unknown => "unknown",
        }
    }
}

/// `4230.2.3` from `Flatcar Container Linux by Kinvolk 4230.2.3 (Oklo)`.
pub fn flatcar_version(node: &Node) -> Option<String> {
    let os = &node.status.as_ref()?.node_info.as_ref()?.os_image;
    if !os.starts_with("Flatcar") {
        return None;
    }
    os.split_whitespace()
        .find(|word| {
            word.split('.').count() == 3
                && word
                    .split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_string)
}

/// The value of `kured_reboot_required{node="<node>"}` in Prometheus text.
pub fn reboot_required(metrics: &str, node: &str) -> Option<bool> {
    let wanted = format!("node=\"{node}\"");
    metrics
        .lines()
        .filter(|line| line.starts_with("kured_reboot_required{") && line.contains(&wanted))
        .find_map(|line| line.rsplit(' ').next()?.trim().parse::<f64>().ok())
        .map(|value| value > 0.0)
}

/// How long one kured pod gets to answer: `status` must not hang on a node that is down.
const METRICS_TIMEOUT: Duration = Duration::from_secs(5);

/// Every node's reboot state, by node name; kured's pods are asked all at once.
pub async fn reboot_states(
    client: &KubeClient,
    nodes: &[Node],
) -> Result<BTreeMap<String, RebootState>, KubeError> {
    let (key, value) = KURED_POD_LABEL;
    let pods: Vec<Pod> = client
        .list(&format!(
            "/api/v1/namespaces/{NAMESPACE}/pods?labelSelector={}%3D{value}",
            key.replace('/', "%2F")
        ))
        .await?;
    let mut asks = tokio::task::JoinSet::new();
    let mut states = BTreeMap::new();
    for node in nodes {
        let Some(name) = node.metadata.name.clone() else {
            continue;
        };
        let rebooting = node
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(REBOOT_IN_PROGRESS));
        // The node's running kured pod (a terminating or pending one would not answer).
        let pod = pods
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str()))
            .max_by_key(|p| {
                p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    && p.metadata.deletion_timestamp.is_none()
            })
            .and_then(|p| p.metadata.name.clone());
        match (rebooting, pod) {
            (true, _) => {
                states.insert(name, RebootState::Rebooting);
            }
            (false, None) => {
                states.insert(name, RebootState::Unknown);
            }
            (false, Some(pod)) => {
                let client = client.clone();
                asks.spawn(async move {
                    let path = format!(
                        "/api/v1/namespaces/{NAMESPACE}/pods/{pod}:{KURED_METRICS_PORT}/proxy/metrics"
                    );
                    let metrics = tokio::time::timeout(METRICS_TIMEOUT, client.get_text(&path))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .flatten();
                    let state = match metrics.as_deref().and_then(|m| reboot_required(m, &name)) {
                        Some(true) => RebootState::Pending,
                        Some(false) => RebootState::UpToDate,
                        None => RebootState::Unknown,
                    };
                    (name, state)
                });
            }
        }
    }
    while let Some(answer) = asks.join_next().await {
        if let Ok((name, state)) = answer {
            states.insert(name, state);
        }
    }
    Ok(states)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kureds_metric_for_the_right_node() {
        let text = "# HELP kured_reboot_required OS requires reboot due to software updates.\n# TYPE kured_reboot_required gauge\nkured_reboot_required{node=\"demo-default-1\"} 1\nkured_reboot_required{node=\"demo-default-10\"} 0\n";
        assert_eq!(reboot_required(text, "demo-default-1"), Some(true));
        assert_eq!(reboot_required(text, "demo-default-10"), Some(false));
        assert_eq!(reboot_required(text, "demo-default-2"), None);
    }

    #[test]
    fn flatcar_release_from_the_os_image() {
        let mut node = Node {
            status: Some(k8s_openapi::api::core::v1::NodeStatus {
                node_info: Some(k8s_openapi::api::core::v1::NodeSystemInfo {
                    os_image: "Flatcar Container Linux by Kinvolk 4230.2.3 (Oklo)".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Node::default()
        };
        assert_eq!(flatcar_version(&node).as_deref(), Some("4230.2.3"));
        if let Some(info) = node.status.as_mut().and_then(|s| s.node_info.as_mut()) {
            info.os_image = "Ubuntu 24.04.1 LTS".into();
        }
        assert_eq!(flatcar_version(&node), None);
    }
}
