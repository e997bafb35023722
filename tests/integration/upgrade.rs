//! Kubernetes upgrades end to end: a cluster made by `up` on the local OpenStack with its API
//! in the stand-in (kubelets, `kubeadm-config`, kured's DaemonSet, host actions that change
//! what the API shows), the release edited in the cluster file, `plan` and `up` run.

use serde_json::{Value, json};

use crate::kube_standin::{KUBEADM_CONFIG, KURED_DAEMONSET, KURED_LOCK, StandIn, World};
use crate::openstack::{cli, unique};
use crate::support::*;
use crate::up::{Teardown, cluster, flatstack};

fn server_metadata(server: &str) -> Value {
    cli("local-demo", &["server", "show", server, "-f", "json"])["properties"].clone()
}

/// The file at `version` with `sha` as its image's digest.
fn at(name: &str, version: &str, sha: &str) -> String {
    cluster(name, 1, "")
        .replace("1.37.1", version)
        .replace(&"ab".repeat(32), sha)
}

fn kubelet(server: &StandIn, node: &str) -> String {
    let world = server.world.lock().expect("world");
    world.nodes[node]
        .status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.kubelet_version.clone())
        .unwrap_or_default()
}

fn cordoned(server: &StandIn, node: &str) -> bool {
    let world = server.world.lock().expect("world");
    world.nodes[node]
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

/// One control plane and a worker at 1.36.2 move to 1.37.1: `plan` says how, a digest of the
/// running release is refused, `up` runs each node's turn in kubeadm's order inside kured's
/// lock (control plane first with `upgrade apply`, through the API outage it causes; each node
/// drained before its image is activated, its Node kept), a node whose turn fails stops the
/// upgrade with its log and the next `up` finishes only what is left; the servers record the
/// new release and a new worker made meanwhile boots the control plane's.
#[test]
fn editing_the_version_upgrades_node_by_node_and_resumes_after_a_failure() {
    let name = unique("upg");
    let workspace = Workspace::new();
    let old_sha = "ab".repeat(32);
    let new_sha = "cd".repeat(32);
    workspace.write_cluster(&at(&name, "1.36.2", &old_sha));
    let _teardown = Teardown(&workspace);
    let pki = crate::kube_standin::pki(&workspace);
    let (cp, w1) = (
        format!("{name}-control-plane-1"),
        format!("{name}-default-1"),
    );
    let mut world = World {
        kubelet_release: Some("v1.36.2".into()),
        apply_outage: 4,
        ..World::default()
    };
    world.register(&cp, true);
    world.register(&w1, false);
    world.objects.insert(
        KUBEADM_CONFIG.into(),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kubeadm-config", "namespace": "kube-system", "resourceVersion": "3"},
            "data": {"ClusterConfiguration": "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nkubernetesVersion: v1.36.2\n"}}),
    );
    world.objects.insert(
        KURED_DAEMONSET.into(),
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "kured", "namespace": "kube-system", "resourceVersion": "5"}}),
    );
    let server = StandIn::start(
        &pki.ca.cert_pem,
        pki.ca.key_pem.expose(),
        &pki.ca.cert_pem,
        world,
    );
    let api = server.address.to_string();
    let up = || {
        flatstack(
            &workspace,
            &["up", "--api-address", api.as_str(), "--timeout", "3m"],
        )
    };
    success(&up());
    for node in [&cp, &w1] {
        assert_eq!(server_metadata(node)["flatstack-kubernetes"], "v1.36.2");
        assert_eq!(server_metadata(node)["flatstack-sysext-sha256"], old_sha);
    }

    // The running release's image under the new release's name: refused, nothing touched.
    workspace.write_cluster(&at(&name, "1.37.1", &old_sha));
    let refused = flatstack(&workspace, &["plan", "--api-address", api.as_str()]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains(&format!(
            "is the digest {cp} records for Kubernetes v1.36.2"
        )),
        "{}",
        stderr(&refused)
    );

    workspace.write_cluster(&at(&name, "1.37.1", &new_sha));
    let plan = success(&flatstack(
        &workspace,
        &["plan", "--api-address", api.as_str()],
    ));
    for line in [
        format!("running: {cp} v1.36.2, {w1} v1.36.2"),
        format!("upgrade v1.36.2 to v1.37.1, one node at a time, control planes first: {cp}, {w1}"),
        format!("each node gets kubernetes-v1.37.1-x86-64.raw sha256:{new_sha}"),
        "v1.36.2 to v1.37.1: kubeadm upgrade apply v1.37.1, drain".to_string(),
    ] {
        assert!(plan.contains(&line), "`{line}` in\n{plan}");
    }

    // The worker's stage fails: the control plane is done, the worker untouched.
    let stage = "k8s-v1-37-1-stage".to_string();
    server.world.lock().expect("world").failing_host_action = Some((
        w1.clone(),
        stage.clone(),
        "[preflight] Some fatal errors occurred: disk full".into(),
    ));
    let failed = up();
    let error = stderr(&failed);
    assert_eq!(failed.status.code(), Some(1), "{error}");
    assert!(
        error.contains(&format!("upgrading {w1} to v1.37.1 stopped"))
            && error.contains("disk full"),
        "{error}"
    );
    assert_eq!(server_metadata(&cp)["flatstack-kubernetes"], "v1.37.1");
    assert_eq!(server_metadata(&cp)["flatstack-sysext-sha256"], new_sha);
    assert_eq!(server_metadata(&w1)["flatstack-kubernetes"], "v1.36.2");
    assert_eq!(kubelet(&server, &cp), "v1.37.1");
    assert_eq!(kubelet(&server, &w1), "v1.36.2");
    assert!(!cordoned(&server, &cp));
    {
        let world = server.world.lock().expect("world");
        let config = world.objects[KUBEADM_CONFIG]["data"]["ClusterConfiguration"].to_string();
        assert!(config.contains("kubernetesVersion: v1.37.1"), "{config}");
        // The lock stays held while the upgrade is unfinished.
        assert!(!world.objects[KURED_DAEMONSET]["metadata"]["annotations"][KURED_LOCK].is_null());
    }

    // Resumed: only what is left runs.
    server.world.lock().expect("world").failing_host_action = None;
    let resumed = success(&up());
    assert!(
        resumed.contains(&format!("upgraded {w1} from v1.36.2 to v1.37.1")),
        "{resumed}"
    );
    assert!(!resumed.contains(&format!("upgraded {cp}")), "{resumed}");
    let world = server.world.lock().expect("world");
    let runs: Vec<String> = world
        .host_action_runs
        .iter()
        .map(|r| {
            format!(
                "{} {}{}{}",
                r.node,
                r.action,
                if r.reboots_locked { " locked" } else { "" },
                if r.cordoned { " cordoned" } else { "" }
            )
        })
        .collect();
    assert_eq!(
        runs,
        [
            format!("{cp} k8s-v1-37-1-stage locked"),
            format!("{cp} k8s-v1-37-1-activate locked cordoned"),
            format!("{w1} k8s-v1-37-1-stage locked"),
            format!("{w1} k8s-v1-37-1-stage locked"),
            format!("{w1} k8s-v1-37-1-activate locked cordoned"),
        ]
    );
    assert!(world.objects[KURED_DAEMONSET]["metadata"]["annotations"][KURED_LOCK].is_null());
    // The Nodes were kept through their drains, and are schedulable again.
    assert!(world.nodes.contains_key(&cp) && world.nodes.contains_key(&w1));
    drop(world);
    for node in [&cp, &w1] {
        assert_eq!(kubelet(&server, node), "v1.37.1");
        assert!(!cordoned(&server, node));
        assert_eq!(server_metadata(node)["flatstack-kubernetes"], "v1.37.1");
    }
    let after = success(&flatstack(
        &workspace,
        &["plan", "--api-address", api.as_str()],
    ));
    assert!(!after.contains("upgrade v1"), "{after}");
}
