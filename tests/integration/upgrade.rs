//! Kubernetes upgrades end to end: a cluster made by `up` on the local OpenStack with its API
//! in the stand-in (kubelets, `kubeadm-config`, kured's DaemonSet, host actions that change
//! what the API shows), the release edited in the cluster file, `plan` and `up` run.

use serde_json::json;

use crate::kube_standin::{KUBEADM_CONFIG, KURED_DAEMONSET, KURED_LOCK, StandIn, World};
use crate::openstack::unique;
use crate::support::*;
use crate::up::{Kubelets, Teardown, admin_view, cluster, flatstack, server_metadata, user_data};

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

/// Each host action run: node, action, its kubeadm command, and whether kured's lock was held
/// and the node cordoned then.
fn runs(server: &StandIn) -> Vec<String> {
    let world = server.world.lock().expect("world");
    world
        .host_action_runs
        .iter()
        .map(|r| {
            format!(
                "{} {}{}{}{}",
                r.node,
                r.action,
                r.kubeadm
                    .as_ref()
                    .map(|k| format!(" {k}"))
                    .unwrap_or_default(),
                if r.reboots_locked { " locked" } else { "" },
                if r.cordoned { " cordoned" } else { "" }
            )
        })
        .collect()
}

/// A stand-in for a cluster at `release` (its kubelets, `kubeadm-config`, kured's DaemonSet)
/// with `nodes` registered (control planes by name).
fn standin_at(workspace: &Workspace, release: &str, nodes: &[String]) -> StandIn {
    let pki = crate::kube_standin::pki(workspace);
    let mut world = World {
        kubelet_release: Some(release.into()),
        apply_outage: 4,
        ..World::default()
    };
    for node in nodes {
        world.register(node, node.contains("-control-plane-"));
    }
    world.objects.insert(
        KUBEADM_CONFIG.into(),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kubeadm-config", "namespace": "kube-system", "resourceVersion": "3"},
            "data": {"ClusterConfiguration": format!("apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nkubernetesVersion: {release}\n")}}),
    );
    world.objects.insert(
        KURED_DAEMONSET.into(),
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "kured", "namespace": "kube-system", "resourceVersion": "5"}}),
    );
    StandIn::of_cluster(&pki, world)
}

/// Cluster `name` at 1.36.2 in its file (digest `ab…`): one control plane and one worker,
/// registered in a stand-in at that release.
fn one_control_plane_and_a_worker(name: &str) -> (Workspace, String, String, StandIn) {
    let workspace = Workspace::new();
    workspace.write_cluster(&at(name, "1.36.2", &"ab".repeat(32)));
    let (cp, w1) = (
        format!("{name}-control-plane-1"),
        format!("{name}-default-1"),
    );
    let server = standin_at(&workspace, "v1.36.2", &[cp.clone(), w1.clone()]);
    (workspace, cp, w1, server)
}

/// `up` through the stand-in at `api`.
fn up_args(api: &str) -> [&str; 5] {
    ["up", "--api-address", api, "--timeout", "3m"]
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
    let (old_sha, new_sha) = ("ab".repeat(32), "cd".repeat(32));
    let (workspace, cp, w1, server) = one_control_plane_and_a_worker(&name);
    let _teardown = Teardown(&workspace);
    let api = server.address.to_string();
    let up = || flatstack(&workspace, &up_args(&api));
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
    // The control plane's server says an upgrade is under way, for a run without the API.
    assert_eq!(server_metadata(&cp)["flatstack-upgrading"], "v1.37.1");
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
    let runs = runs(&server);
    let world = server.world.lock().expect("world");
    assert_eq!(
        runs,
        [
            format!("{cp} k8s-v1-37-1-stage upgrade apply locked"),
            format!("{cp} k8s-v1-37-1-activate locked cordoned"),
            format!("{w1} k8s-v1-37-1-stage upgrade node locked"),
            format!("{w1} k8s-v1-37-1-stage upgrade node locked"),
            format!("{w1} k8s-v1-37-1-activate locked cordoned"),
        ]
    );
    assert!(world.objects[KURED_DAEMONSET]["metadata"]["annotations"][KURED_LOCK].is_null());
    // The Nodes were kept through their drains, and are schedulable again.
    assert!(world.nodes.contains_key(&cp) && world.nodes.contains_key(&w1));
    drop(world);
    assert!(server_metadata(&cp)["flatstack-upgrading"].is_null());
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

/// Three control planes and a worker at 1.36.2 move to 1.37.1. A worker added with
/// `--provision-only` after the edit boots 1.36.2, which the control planes run. `up` runs
/// `upgrade apply` on the first control plane only and `upgrade node` on the others, one at a
/// time; a failed activation stops it with that control plane cordoned, and the next `up`
/// goes on from there, the new worker included.
#[test]
fn three_control_planes_upgrade_one_at_a_time_and_a_new_worker_boots_their_release() {
    let name = unique("upg3");
    let workspace = Workspace::new();
    let text = |version: &str, sha: &str, workers: u32| {
        cluster(&name, workers, "")
            .replacen(
                "[control_plane]\nflavor = \"m3.tiny\"\n",
                "[control_plane]\ncount = 3\napi_endpoint = \"vip\"\nflavor = \"m3.tiny\"\n",
                1,
            )
            .replace("1.37.1", version)
            .replace(&"ab".repeat(32), sha)
    };
    let (old_sha, new_sha) = ("ab".repeat(32), "cd".repeat(32));
    workspace.write_cluster(&text("1.36.2", &old_sha, 1));
    let _teardown = Teardown(&workspace);
    let node = |n: &str| format!("{name}-{n}");
    let (cp1, cp2, cp3, w1, w2) = (
        node("control-plane-1"),
        node("control-plane-2"),
        node("control-plane-3"),
        node("default-1"),
        node("default-2"),
    );
    let server = standin_at(
        &workspace,
        "v1.36.2",
        &[cp1.clone(), cp2.clone(), cp3.clone(), w1.clone()],
    );
    let api = server.address.to_string();
    let up = || flatstack(&workspace, &up_args(&api));
    success(&up());
    let _kubelets = Kubelets::start(&server, &name);

    // The edit and a second worker, cloud side only: the worker boots what the control
    // planes run.
    workspace.write_cluster(&text("1.37.1", &new_sha, 2));
    let provisioned = success(&flatstack(&workspace, &["up", "--provision-only"]));
    assert!(
        provisioned.contains(&format!("creating server {w2}")),
        "{provisioned}"
    );
    assert_eq!(server_metadata(&w2)["flatstack-kubernetes"], "v1.36.2");
    assert_eq!(server_metadata(&w2)["flatstack-sysext-sha256"], old_sha);
    let ignition = user_data(&admin_view(&w2)).to_string();
    assert!(
        ignition.contains("kubernetes-v1.36.2-x86-64.raw")
            && !ignition.contains("kubernetes-v1.37.1-x86-64.raw"),
        "{ignition}"
    );

    server.world.lock().expect("world").failing_host_action = Some((
        cp2.clone(),
        "k8s-v1-37-1-activate".into(),
        "Failed to start kubelet.service".into(),
    ));
    let failed = up();
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    assert!(stderr(&failed).contains("Failed to start kubelet.service"));
    assert!(cordoned(&server, &cp2), "left cordoned where it stopped");
    assert_eq!(server_metadata(&cp1)["flatstack-kubernetes"], "v1.37.1");
    assert_eq!(server_metadata(&cp2)["flatstack-kubernetes"], "v1.36.2");
    server.world.lock().expect("world").failing_host_action = None;
    success(&up());
    assert_eq!(
        runs(&server),
        [
            format!("{cp1} k8s-v1-37-1-stage upgrade apply locked"),
            format!("{cp1} k8s-v1-37-1-activate locked cordoned"),
            format!("{cp2} k8s-v1-37-1-stage upgrade node locked"),
            format!("{cp2} k8s-v1-37-1-activate locked cordoned"),
            format!("{cp2} k8s-v1-37-1-activate locked cordoned"),
            format!("{cp3} k8s-v1-37-1-stage upgrade node locked"),
            format!("{cp3} k8s-v1-37-1-activate locked cordoned"),
            format!("{w1} k8s-v1-37-1-stage upgrade node locked"),
            format!("{w1} k8s-v1-37-1-activate locked cordoned"),
            format!("{w2} k8s-v1-37-1-stage upgrade node locked"),
            format!("{w2} k8s-v1-37-1-activate locked cordoned"),
        ]
    );
    for node in [&cp1, &cp2, &cp3, &w1, &w2] {
        assert_eq!(kubelet(&server, node), "v1.37.1", "{node}");
        assert!(!cordoned(&server, node), "{node}");
        assert_eq!(
            server_metadata(node)["flatstack-kubernetes"],
            "v1.37.1",
            "{node}"
        );
    }
}

/// `up` killed (SIGKILL) at several points of an upgrade, each time as soon as one more host
/// action has run: the next `up` goes on from where the nodes are, never running a finished
/// action again, and ends with every node at the new release, schedulable, recorded, and
/// kured's lock released.
#[test]
fn an_upgrade_killed_at_several_points_is_finished_by_the_next_up() {
    let name = unique("upgk");
    let (workspace, cp, w1, server) = one_control_plane_and_a_worker(&name);
    let _teardown = Teardown(&workspace);
    let api = server.address.to_string();
    let args = up_args(&api);
    success(&flatstack(&workspace, &args));
    workspace.write_cluster(&at(&name, "1.37.1", &"cd".repeat(32)));
    let mut kills = 0;
    for _ in 0..3 {
        // Each run is killed as soon as it has started one more host action than before it.
        let before = server.world.lock().expect("world").host_action_runs.len();
        let mut child = crate::up::command(&workspace, &args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start up");
        loop {
            let ran = server.world.lock().expect("world").host_action_runs.len();
            if ran > before {
                if child.try_wait().expect("wait").is_none() {
                    child.kill().expect("kill");
                    kills += 1;
                }
                break;
            }
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.wait();
    }
    assert!(kills >= 2, "up was killed mid-upgrade {kills} time(s)");
    success(&flatstack(&workspace, &args));
    assert_eq!(
        runs(&server),
        [
            format!("{cp} k8s-v1-37-1-stage upgrade apply locked"),
            format!("{cp} k8s-v1-37-1-activate locked cordoned"),
            format!("{w1} k8s-v1-37-1-stage upgrade node locked"),
            format!("{w1} k8s-v1-37-1-activate locked cordoned"),
        ],
        "each action once, in order"
    );
    for node in [&cp, &w1] {
        assert_eq!(kubelet(&server, node), "v1.37.1");
        assert!(!cordoned(&server, node));
        assert_eq!(server_metadata(node)["flatstack-kubernetes"], "v1.37.1");
    }
    let world = server.world.lock().expect("world");
    assert!(world.objects[KURED_DAEMONSET]["metadata"]["annotations"][KURED_LOCK].is_null());
}

/// A pool that upgrades by replacement: the control plane is upgraded in place, then (in the
/// same `up`, a second round) the pool's node is replaced by a new one at the new release,
/// which is Ready before the old one is drained and deleted.
#[test]
fn a_pool_that_upgrades_by_replacement_gets_new_nodes_after_the_control_planes() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let name = unique("upgr");
    let workspace = Workspace::new();
    let text = |version: &str, sha: &str| {
        at(&name, version, sha).replace(
            "count = 1\nflavor = \"m3.tiny\"",
            "count = 1\nflavor = \"m3.tiny\"\nupgrade = \"replace\"",
        )
    };
    workspace.write_cluster(&text("1.36.2", &"ab".repeat(32)));
    let _teardown = Teardown(&workspace);
    let (cp, w1, w2) = (
        format!("{name}-control-plane-1"),
        format!("{name}-default-1"),
        format!("{name}-default-2"),
    );
    let server = standin_at(&workspace, "v1.36.2", &[cp.clone(), w1.clone()]);
    // Kubelets: a new server's node registers once ACTIVE, at the release its server records.
    let stop = Arc::new(AtomicBool::new(false));
    let joiner = {
        let (world, stop, name) = (server.world.clone(), stop.clone(), name.clone());
        let mut joined = vec![cp.clone(), w1.clone()];
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for s in crate::up::tagged("server", &name) {
                    let server_name = s["Name"].as_str().unwrap_or_default().to_string();
                    if s["Status"] == "ACTIVE" && !joined.contains(&server_name) {
                        let release = server_metadata(&server_name)["flatstack-kubernetes"]
                            .as_str()
                            .unwrap_or("v1.37.1")
                            .to_string();
                        let mut world = world.lock().expect("world");
                        world.kubelet_release = Some(release);
                        world.register(&server_name, false);
                        joined.push(server_name);
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        })
    };
    let api = server.address.to_string();
    let args = up_args(&api);
    success(&flatstack(&workspace, &args));

    workspace.write_cluster(&text("1.37.1", &"cd".repeat(32)));
    let plan = success(&flatstack(
        &workspace,
        &["plan", "--api-address", api.as_str()],
    ));
    assert!(
        plan.contains(&format!(
            "upgrade v1.36.2 to v1.37.1, one node at a time, control planes first: {cp}"
        )) && plan.contains(&format!(
            "replaced by new nodes at v1.37.1 once the control planes run it: {w1}"
        )),
        "{plan}"
    );
    let output = flatstack(&workspace, &args);
    let out = format!("{}{}", success(&output), stderr(&output));
    let at_line = |line: &str| {
        out.find(line)
            .unwrap_or_else(|| panic!("`{line}` in\n{out}"))
    };
    assert!(
        at_line(&format!("upgraded {cp} from v1.36.2 to v1.37.1"))
            < at_line(&format!("creating server {w2}"))
    );
    assert!(at_line(&format!("{w2} is Ready")) < at_line(&format!("drained {w1}")));
    stop.store(true, Ordering::Relaxed);
    joiner.join().expect("kubelets");
    assert_eq!(
        runs(&server),
        [
            format!("{cp} k8s-v1-37-1-stage upgrade apply locked"),
            format!("{cp} k8s-v1-37-1-activate locked cordoned"),
        ],
        "the pool's node is never upgraded in place"
    );
    assert_eq!(server_metadata(&w2)["flatstack-kubernetes"], "v1.37.1");
    assert_eq!(kubelet(&server, &w2), "v1.37.1");
    assert_eq!(
        crate::up::servers(&name),
        [cp.clone(), w2.clone()],
        "the old node is gone"
    );
}
