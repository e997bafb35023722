//! What an upgrade reads and writes through the API, apart from the node's own host work:
//! the releases kubelets report and `kubeadm-config` holds, cordoning (the Node object stays,
//! with its labels and taints), the wait for a node Ready at its new release, and kured's
//! reboot lock held for the duration so no reboot interleaves.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Node};
use serde_json::{Value, json};

use super::{KubeClient, KubeError, Waiting, poll};
use crate::pins::KubernetesVersion;

/// kured's lock: an annotation on its DaemonSet (kured 1.23 `pkg/daemonsetlock`).
pub(crate) const KURED_LOCK_ANNOTATION: &str = "weave.works/kured-node-lock";
/// The DaemonSet kured's chart makes under flatstack's release name, and its namespace.
const KURED_DAEMONSET: &str = "/apis/apps/v1/namespaces/kube-system/daemonsets/kured";
/// The holder flatstack writes: the name of no node, so kured never takes it for its own.
pub(crate) const UPGRADE_LOCK_HOLDER: &str = "flatstack-upgrade";
/// On a Node flatstack cordoned for its upgrade, until it uncordons it: the release.
pub(crate) const UPGRADING_ANNOTATION: &str = "flatstack.dev/upgrading-to";

/// The release a node's kubelet reports (`status.nodeInfo.kubeletVersion`).
pub fn kubelet_release(node: &Node) -> Option<KubernetesVersion> {
    let info = node.status.as_ref()?.node_info.as_ref()?;
    KubernetesVersion::parse(&info.kubelet_version)
}

/// `kubernetesVersion:` in a `ClusterConfiguration` document.
pub(crate) fn cluster_configuration_release(document: &str) -> Option<KubernetesVersion> {
    document.lines().find_map(|line| {
        let value = line.strip_prefix("kubernetesVersion:")?;
        KubernetesVersion::parse(value.trim().trim_matches(['"', '\'']))
    })
}

/// kured's lock value with `--concurrency=1`, as kured 1.23 writes it
/// (`LockAnnotationValue`: `nodeID`, `metadata`, `created`, `TTL` in nanoseconds; 0 never
/// expires).
pub(crate) fn kured_lock_value(holder: &str, created: &str) -> String {
    json!({
        "nodeID": holder,
        "metadata": {"unschedulable": false},
        "created": created,
        "TTL": 0,
    })
    .to_string()
}

/// Who holds kured's lock, from its annotation's value.
pub(crate) fn kured_lock_holder(value: &str) -> Option<String> {
    let parsed: Value = serde_json::from_str(value).ok()?;
    parsed["nodeID"].as_str().map(str::to_string)
}

impl KubeClient {
    /// The release `kube-system/kubeadm-config` records, when it exists.
    pub(crate) async fn kubeadm_release(&self) -> Result<Option<KubernetesVersion>, KubeError> {
        let map: Option<ConfigMap> = self
            .get("/api/v1/namespaces/kube-system/configmaps/kubeadm-config")
            .await?;
        Ok(map
            .and_then(|m| m.data)
            .and_then(|data| data.get("ClusterConfiguration").cloned())
            .and_then(|doc| cluster_configuration_release(&doc)))
    }

    /// Cordons node `name` for its upgrade to `release`, saying so in an annotation (so a
    /// later run knows whose cordon it is); the Node keeps everything else.
    pub(crate) async fn cordon_for_upgrade(
        &self,
        name: &str,
        release: KubernetesVersion,
    ) -> Result<(), KubeError> {
        self.merge_patch(
            &format!("/api/v1/nodes/{name}"),
            &json!({
                "metadata": {"annotations": {UPGRADING_ANNOTATION: release.to_string()}},
                "spec": {"unschedulable": true},
            }),
        )
        .await
    }

    /// Uncordons node `name` and drops the upgrade's annotation.
    pub(crate) async fn uncordon_after_upgrade(&self, name: &str) -> Result<(), KubeError> {
        self.merge_patch(
            &format!("/api/v1/nodes/{name}"),
            &json!({
                "metadata": {"annotations": {UPGRADING_ANNOTATION: null}},
                "spec": {"unschedulable": false},
            }),
        )
        .await
    }

    /// Whether flatstack holds kured's lock (`false` without kured).
    pub(crate) async fn reboot_lock_held(&self) -> Result<bool, KubeError> {
        Ok(self
            .get::<Value>(KURED_DAEMONSET)
            .await?
            .and_then(|ds| {
                ds["metadata"]["annotations"][KURED_LOCK_ANNOTATION]
                    .as_str()
                    .and_then(kured_lock_holder)
            })
            .is_some_and(|holder| holder == UPGRADE_LOCK_HOLDER))
    }

    /// Waits until node `name` is Ready with its kubelet at `release`.
    pub(crate) async fn wait_node_at(
        &self,
        name: &str,
        release: KubernetesVersion,
        within: Duration,
    ) -> Result<(), KubeError> {
        let path = format!("/api/v1/nodes/{name}");
        poll(
            &format!("node {name} Ready at {release}"),
            within,
            Duration::from_secs(3),
            || async {
                Ok(match self.get::<Node>(&path).await {
                    Ok(Some(node)) => match (kubelet_release(&node), super::is_ready(&node)) {
                        (Some(running), true) if running == release => Waiting::Done(()),
                        (running, ready) => Waiting::On(format!(
                            "{name}: kubelet {}, {}",
                            running.map_or("unknown".to_string(), |r| r.to_string()),
                            if ready { "Ready" } else { "NotReady" }
                        )),
                    },
                    Ok(None) => Waiting::On(format!("{name} is not registered")),
                    // The only API server restarts during `upgrade apply`: ask again.
                    Err(e) => Waiting::On(format!("the API does not answer: {e}")),
                })
            },
        )
        .await
    }

    /// Holds kured's reboot lock for flatstack (unless it does already), waiting up to
    /// `within` while a node kured reboots holds it. `Ok(false)`: kured is not installed.
    pub(crate) async fn hold_reboot_lock(&self, within: Duration) -> Result<bool, KubeError> {
        poll(
            "kured's reboot lock",
            within,
            Duration::from_secs(10),
            || async {
                let Some(daemonset) = self.get::<Value>(KURED_DAEMONSET).await? else {
                    return Ok(Waiting::Done(false));
                };
                let metadata = &daemonset["metadata"];
                match metadata["annotations"][KURED_LOCK_ANNOTATION].as_str() {
                    Some(value) => match kured_lock_holder(value) {
                        Some(holder) if holder == UPGRADE_LOCK_HOLDER => Ok(Waiting::Done(true)),
                        holder => Ok(Waiting::On(format!(
                            "held by {} (a reboot in progress)",
                            holder.unwrap_or_else(|| "an unreadable value".into())
                        ))),
                    },
                    None => {
                        let created = super::now().to_string();
                        let patch = json!({"metadata": {
                            // A precondition: a kured that took the lock meanwhile wins (409).
                            "resourceVersion": metadata["resourceVersion"],
                            "annotations": {
                                KURED_LOCK_ANNOTATION: kured_lock_value(UPGRADE_LOCK_HOLDER, &created)
                            },
                        }});
                        match self.merge_patch(KURED_DAEMONSET, &patch).await {
                            Ok(_) => Ok(Waiting::Done(true)),
                            Err(KubeError::Api { status: 409, .. }) => {
                                Ok(Waiting::On("taken meanwhile".into()))
                            }
                            Err(e) => Err(e),
                        }
                    }
                }
            },
        )
        .await
    }

    /// Releases kured's lock if flatstack holds it; whether it did.
    pub(crate) async fn release_reboot_lock(&self) -> Result<bool, KubeError> {
        let held = self.reboot_lock_held().await?;
        if held {
            self.merge_patch(
                KURED_DAEMONSET,
                &json!({"metadata": {"annotations": {KURED_LOCK_ANNOTATION: null}}}),
            )
            .await?;
        }
        Ok(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_is_read_from_a_cluster_configuration() {
        let document = "apiServer: {}\napiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nkubernetesVersion: v1.36.2\nnetworking:\n  podSubnet: 10.244.0.0/16\n";
        assert_eq!(
            cluster_configuration_release(document),
            Some(KubernetesVersion::new(1, 36, 2))
        );
        assert_eq!(
            cluster_configuration_release("kind: ClusterConfiguration\n"),
            None
        );
    }

    #[test]
    fn the_lock_is_written_as_kured_reads_it() {
        let value = kured_lock_value(UPGRADE_LOCK_HOLDER, "2026-12-07T10:00:00Z");
        let parsed: Value = serde_json::from_str(&value).expect("json");
        assert_eq!(parsed["nodeID"], UPGRADE_LOCK_HOLDER);
        assert_eq!(parsed["TTL"], 0);
        assert_eq!(parsed["metadata"]["unschedulable"], false);
        assert_eq!(
            kured_lock_holder(&value).as_deref(),
            Some(UPGRADE_LOCK_HOLDER)
        );
        assert_eq!(kured_lock_holder("not json"), None);
    }
}
