//! Coordinated OS updates: kured watches `/run/reboot-required` on every node (Flatcar's
//! update-engine writes it after staging a release, flatstack's sysupdate drop-in after a new
//! Kubernetes sysext) and drains and reboots one node at a time, only inside the cluster
//! file's reboot window. Nodes never reboot on their own: locksmithd is masked.

use serde_json::json;

use super::CONTROL_PLANE_LABEL;
use crate::pins;
use crate::spec::{UpdatesSpec, WorkerPool};

/// The sentinel file; `/var/run` is a link to `/run` on Flatcar.
pub(crate) const REBOOT_SENTINEL: &str = "/run/reboot-required";
/// The port of kured's Prometheus metrics, where `kured_reboot_required` tells whether a node
/// waits for a reboot.
pub(crate) const KURED_METRICS_PORT: u16 = 8080;
/// The label of kured's pods.
pub(crate) const KURED_POD_LABEL: (&str, &str) = ("app.kubernetes.io/name", "kured");

/// kured's chart values for the cluster file's `[updates]`. kured must run on every node to
/// reboot it, so it tolerates the control planes' taint, the cloud controller's, and every
/// taint the file gives a worker pool.
pub(crate) fn kured_values(updates: &UpdatesSpec, pools: &[WorkerPool]) -> serde_json::Value {
    let window = &updates.reboot_window;
    let mut tolerations = vec![
        json!({ "key": CONTROL_PLANE_LABEL, "operator": "Exists", "effect": "NoSchedule" }),
        json!({ "key": crate::kube::UNINITIALIZED_TAINT, "operator": "Exists", "effect": "NoSchedule" }),
    ];
    for taint in pools.iter().flat_map(|p| &p.taints) {
        let toleration = match &taint.value {
            Some(value) => json!({
                "key": taint.key, "operator": "Equal", "value": value, "effect": taint.effect.as_str(),
            }),
            None => {
                json!({ "key": taint.key, "operator": "Exists", "effect": taint.effect.as_str() })
            }
        };
        if !tolerations.contains(&toleration) {
            tolerations.push(toleration);
        }
    }
    json!({
        "image": { "tag": pins::KURED_IMAGE_TAG },
        "configuration": {
            "rebootDays": window.days,
            "startTime": window.start,
            "endTime": window.end,
            "timeZone": window.timezone,
            "period": "5m",
            "concurrency": 1,
            "rebootSentinel": REBOOT_SENTINEL,
            "useRebootSentinelHostPath": true,
            "annotateNodes": true,
            "metricsPort": KURED_METRICS_PORT,
            "drainTimeout": "30m",
        },
        // Control planes and tainted pools reboot too, each after its turn at the lock.
        "tolerations": tolerations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::RebootWindow;

    #[test]
    fn the_reboot_window_of_the_cluster_file_reaches_kured() {
        let updates = UpdatesSpec {
            enabled: true,
            group: "stable".into(),
            server: None,
            reboot_window: RebootWindow {
                days: vec!["sat".into(), "sun".into()],
                start: "02:00".into(),
                end: "05:30".into(),
                timezone: "America/Indiana/Indianapolis".into(),
            },
        };
        let values = kured_values(&updates, &[]);
        let config = &values["configuration"];
        assert_eq!(config["rebootDays"], json!(["sat", "sun"]));
        assert_eq!(config["startTime"], "02:00");
        assert_eq!(config["endTime"], "05:30");
        assert_eq!(config["timeZone"], "America/Indiana/Indianapolis");
        assert_eq!(config["concurrency"], 1);
        // The file Flatcar's update-engine and flatstack's sysupdate drop-in write.
        assert_eq!(config["rebootSentinel"], "/run/reboot-required");
        assert_eq!(values["image"]["tag"], pins::KURED_IMAGE_TAG);
        assert_eq!(values["tolerations"][0]["key"], CONTROL_PLANE_LABEL);
    }

    #[test]
    fn kured_tolerates_every_pools_taints_once() {
        let spec = crate::spec::test_spec(
            "[[worker_pools]]\nname = \"gpu\"\ncount = 1\nflavor = \"g3.small\"\ntaints = [\"nvidia.com/gpu=present:NoSchedule\", \"dedicated:NoExecute\"]\n[[worker_pools]]\nname = \"gpu2\"\ncount = 1\nflavor = \"g3.small\"\ntaints = [\"nvidia.com/gpu=present:NoSchedule\"]\n",
        );
        let values = kured_values(&spec.updates, &spec.worker_pools);
        let tolerations = values["tolerations"].as_array().expect("list");
        assert_eq!(tolerations.len(), 4, "{tolerations:?}");
        assert!(tolerations.contains(&json!({
            "key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"
        })));
        assert!(tolerations.contains(&json!({
            "key": "dedicated", "operator": "Exists", "effect": "NoExecute"
        })));
    }
}
