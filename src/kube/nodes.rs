//! The cluster's nodes as people know them from `kubectl get nodes -o wide`: readiness, roles,
//! addresses and versions, read from the API and printed as one table.

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;

use std::time::Duration;

use super::{KubeClient, KubeError, Waiting, poll};

impl KubeClient {
    /// Every node the API knows.
    pub async fn nodes(&self) -> Result<Vec<Node>, KubeError> {
        self.list("/api/v1/nodes").await
    }

    /// Waits until node `name` has registered, is `Ready` and initialized by the cloud
    /// controller: only then does it take ordinary pods.
    pub async fn wait_node_ready(&self, name: &str, within: Duration) -> Result<(), KubeError> {
        let what = format!("node {name} Ready");
        let path = format!("/api/v1/nodes/{name}");
        poll(&what, within, Duration::from_secs(3), || async {
            Ok(match self.get::<Node>(&path).await? {
                Some(node) if is_ready(&node) && is_initialized(&node) => Waiting::Done(()),
                Some(node) if is_ready(&node) => Waiting::On(format!(
                    "{name} is Ready but the cloud controller has not initialized it"
                )),
                Some(_) => Waiting::On(format!("{name} is NotReady")),
                None => Waiting::On(format!("{name} has not registered")),
            })
        })
        .await
    }
}

/// The node's `Ready` condition is `True`.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// The taint a kubelet with `cloud-provider=external` registers its node with, and only the
/// cloud controller's node controller removes (k8s.io/cloud-provider `api/well_known_taints.go`,
/// `controllers/node/node_controller.go`).
pub(crate) const UNINITIALIZED_TAINT: &str = "node.cloudprovider.kubernetes.io/uninitialized";

/// The node no longer carries [`UNINITIALIZED_TAINT`]. `Ready` comes from the kubelet and the
/// pod network alone; a node still uninitialized takes no pod that does not tolerate the taint.
pub fn is_initialized(node: &Node) -> bool {
    !node
        .spec
        .as_ref()
        .and_then(|spec| spec.taints.as_ref())
        .is_some_and(|taints| taints.iter().any(|t| t.key == UNINITIALIZED_TAINT))
}

/// One line of the node table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeRow {
    pub(crate) name: String,
    pub(crate) status: String,
    pub(crate) roles: String,
    pub(crate) age: String,
    pub(crate) version: String,
    pub(crate) internal_ip: String,
    pub(crate) external_ip: String,
    pub(crate) os_image: String,
    pub(crate) kernel_version: String,
    pub(crate) container_runtime: String,
}

const HEADERS: [&str; 10] = [
    "NAME",
    "STATUS",
    "ROLES",
    "AGE",
    "VERSION",
    "INTERNAL-IP",
    "EXTERNAL-IP",
    "OS-IMAGE",
    "KERNEL-VERSION",
    "CONTAINER-RUNTIME",
];

impl NodeRow {
    pub(crate) fn of(node: &Node, now: Timestamp) -> NodeRow {
        let meta = &node.metadata;
        let status = node.status.as_ref();
        let info = status.and_then(|s| s.node_info.as_ref());
        let address = |kind: &str| {
            status
                .and_then(|s| s.addresses.as_ref())
                .and_then(|all| all.iter().find(|a| a.type_ == kind))
                .map_or_else(|| "<none>".to_string(), |a| a.address.clone())
        };
        let mut state = if is_ready(node) { "Ready" } else { "NotReady" }.to_string();
        if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
            state.push_str(",SchedulingDisabled");
        }
        let mut roles: Vec<&str> = meta
            .labels
            .iter()
            .flatten()
            .filter_map(|(key, _)| key.strip_prefix("node-role.kubernetes.io/"))
            .filter(|role| !role.is_empty())
            .collect();
        roles.sort_unstable();
        let info_field = |get: fn(&k8s_openapi::api::core::v1::NodeSystemInfo) -> &String| {
            info.map_or_else(String::new, |i| get(i).clone())
        };
        NodeRow {
            name: meta.name.clone().unwrap_or_default(),
            status: state,
            roles: if roles.is_empty() {
                "<none>".into()
            } else {
                roles.join(",")
            },
            age: meta
                .creation_timestamp
                .as_ref()
                .map_or_else(|| "<unknown>".into(), |t| age(t.0, now)),
            version: info_field(|i| &i.kubelet_version),
            internal_ip: address("InternalIP"),
            external_ip: address("ExternalIP"),
            os_image: info_field(|i| &i.os_image),
            kernel_version: info_field(|i| &i.kernel_version),
            container_runtime: info_field(|i| &i.container_runtime_version),
        }
    }

    fn cells(&self) -> [&str; 10] {
        [
            &self.name,
            &self.status,
            &self.roles,
            &self.age,
            &self.version,
            &self.internal_ip,
            &self.external_ip,
            &self.os_image,
            &self.kernel_version,
            &self.container_runtime,
        ]
    }
}

/// The node table, sorted by name, columns as wide as their widest cell.
pub fn node_table(nodes: &[Node], now: Timestamp) -> String {
    let mut rows: Vec<NodeRow> = nodes.iter().map(|n| NodeRow::of(n, now)).collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    let mut widths = HEADERS.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row.cells()) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: [&str; 10]| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}   "));
            }
        }
        text.trim_end().to_string()
    };
    let mut table = line(HEADERS);
    for row in &rows {
        table.push('\n');
        table.push_str(&line(row.cells()));
    }
    table
}

/// Prints the node table of `nodes` now.
pub fn print_node_table(nodes: &[Node]) {
    crate::cli::write_out(format_args!("{}\n", node_table(nodes, super::now())));
}

/// Age as kubectl shows it: `45s`, `12m`, `5h`, `3d`.
fn age(since: Timestamp, now: Timestamp) -> String {
    age_between(since.as_second(), now.as_second())
}

/// The age of what happened at Unix second `since`, at `now`, as kubectl shows it.
pub(crate) fn age_between(since: i64, now: i64) -> String {
    let seconds = (now - since).max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        let now = Timestamp::from_second(1_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let ago = |s: i64| Timestamp::from_second(1_000_000 - s).unwrap_or(Timestamp::UNIX_EPOCH);
        assert_eq!(age(ago(45), now), "45s");
        assert_eq!(age(ago(12 * 60), now), "12m");
        assert_eq!(age(ago(5 * 3600), now), "5h");
        assert_eq!(age(ago(3 * 86400), now), "3d");
    }
}
