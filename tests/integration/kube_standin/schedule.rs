//! Where the stand-in's pods can run, as the scheduler and the DaemonSet controller decide it
//! where flatstack depends on them:
//!
//! - A pod fits a node when it tolerates every `NoSchedule` and `NoExecute` taint of the node
//!   and the node carries every label of its `nodeSelector` (kube-scheduler's `TaintToleration`
//!   and `NodeAffinity` filter plugins, `pkg/scheduler/framework/plugins`).
//! - A toleration matches a taint when their effects match (an empty effect matches all), and
//!   either the operator is `Exists` (an empty key matching every key) or the keys and values
//!   are equal (`staging/src/k8s.io/api/core/v1/toleration.go`, `ToleratesTaint`).
//! - The DaemonSet controller adds tolerations to every DaemonSet pod by itself:
//!   `node.kubernetes.io/not-ready` and `node.kubernetes.io/unreachable` (`NoExecute`),
//!   `disk-pressure`, `memory-pressure`, `pid-pressure` and `unschedulable` (`NoSchedule`),
//!   and `network-unavailable` (`NoSchedule`) for host-network pods
//!   (`pkg/controller/daemon/util/daemonset_util.go`, `AddOrUpdateDaemonPodTolerations`).

use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};

/// Whether `toleration` (a core/v1 Toleration as JSON) matches the taint.
pub fn tolerates(toleration: &Value, key: &str, value: Option<&str>, effect: &str) -> bool {
    let effect_ok = match toleration["effect"].as_str() {
        None | Some("") => true,
        Some(e) => e == effect,
    };
    let wanted_key = toleration["key"].as_str().unwrap_or_default();
    let matches = match toleration["operator"].as_str() {
        Some("Exists") => wanted_key.is_empty() || wanted_key == key,
        // `Equal` is the default operator.
        _ => {
            wanted_key == key
                && toleration["value"].as_str().unwrap_or_default() == value.unwrap_or_default()
        }
    };
    effect_ok && matches
}

/// Whether a pod with these tolerations and node selector may run on `node`.
pub fn fits(node: &Node, tolerations: &[Value], node_selector: &Value) -> bool {
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .cloned()
        .unwrap_or_default();
    let tolerated = taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|t| {
            tolerations
                .iter()
                .any(|tol| tolerates(tol, &t.key, t.value.as_deref(), &t.effect))
        });
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let selected = node_selector.as_object().is_none_or(|wanted| {
        wanted
            .iter()
            .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
    });
    tolerated && selected
}

/// The tolerations the DaemonSet controller adds to every pod of a DaemonSet.
pub fn daemonset_tolerations(host_network: bool) -> Vec<Value> {
    let mut added = vec![
        json!({"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}),
    ];
    if host_network {
        added.push(json!({"key": "node.kubernetes.io/network-unavailable", "operator": "Exists", "effect": "NoSchedule"}));
    }
    added
}
