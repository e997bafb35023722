//! The cluster side of `up` — waiting for `/readyz`, applying the add-ons, waiting for their
//! charts and for every node to be Ready, the node table, draining before scale-down — against
//! the loopback Kubernetes API stand-in (no real API server can run here). In-process tests
//! drive the library; the last test runs the whole `flatstack up` on the local OpenStack with
//! the stand-in reached through `--api-address`.

use std::time::Duration;

use flatstack::addons::{self, AddonSet};
use flatstack::apply::ApplyError;
use flatstack::apply::bootstrap::{Bootstrapped, bootstrap};
use flatstack::kube::{AfterDrain, KubeClient, drain_node};
use flatstack::spec::ClusterSpec;
use serde_json::Value;

use crate::kube_standin::{StandIn, World, conf, pki, quiet, runtime, stand_in};
use crate::support::*;

/// `bootstrap` of `spec`'s nodes with `set`, quietly, within `seconds`.
fn run(
    client: &KubeClient,
    spec: &ClusterSpec,
    set: &AddonSet,
    seconds: u64,
) -> Result<Bootstrapped, ApplyError> {
    runtime().block_on(bootstrap(
        client,
        &spec.nodes(),
        set,
        Duration::from_secs(seconds),
        &quiet,
    ))
}

fn spec(workers: u32) -> ClusterSpec {
    let text = cluster_text("https://example.invalid", &"ab".repeat(32), workers);
    ClusterSpec::parse("cluster.toml", &text).expect("valid cluster file")
}

#[test]
fn bootstrap_applies_add_ons_and_waits_for_every_node() {
    let workspace = Workspace::new();
    let pki = pki(&workspace);
    let spec = spec(2);
    let server = stand_in(
        &pki,
        &spec,
        World {
            readyz_failures: 3,
            job_polls: 2,
            ..World::default()
        },
    );
    let client = KubeClient::new(&pki, &format!("https://{}", server.address)).expect("client");
    let set = addons::for_cluster(&spec, &conf(), b"key").expect("add-ons");
    let booted = run(&client, &spec, &set, 120).expect("bootstrap");

    // Every node Ready, the control plane labelled for helm-controller's bootstrap Jobs.
    assert_eq!(booted.nodes.len(), 3);
    assert!(booted.nodes.iter().all(flatstack::kube::is_ready));
    let world = server.world.lock().expect("world");
    let cp = &world.nodes["demo-control-plane-1"];
    // Labelled `true` after kubeadm's mark phase (which resets it to ""), which ran.
    let labels = cp.metadata.labels.as_ref().expect("labels");
    assert_eq!(labels["node-role.kubernetes.io/control-plane"], "true");
    assert!(
        world.unmarked.is_empty(),
        "kubeadm marked every control plane"
    );
    // Its only pool is tainted, so the control plane takes ordinary pods: it must be a member
    // of the cloud controller's load balancers (Traefik's among them), and kubeadm's exclude
    // label is taken off.
    assert!(!spec.has_general_workers());
    assert_eq!(
        labels.get("node.kubernetes.io/exclude-from-external-load-balancers"),
        None
    );
    // Initialized by the cloud controller: addresses from the cloud, taint gone.
    let table = flatstack::kube::node_table(&booted.nodes, flatstack::kube::now());
    let cp_row = table
        .lines()
        .find(|l| l.starts_with("demo-control-plane-1"))
        .expect("row");
    assert!(
        cp_row.contains(" 10.42.0.10 ") && cp_row.contains(" 203.0.113.7 "),
        "{table}"
    );
    assert!(booted.nodes.iter().all(flatstack::kube::is_initialized));
    // The cloud controller initialized the nodes (the stand-in does it once its chart ran).
    assert!(
        cp.spec
            .as_ref()
            .and_then(|s| s.provider_id.as_ref())
            .is_some()
    );

    // Every write was a server-side apply owned by flatstack, or the control plane's label.
    let writes: Vec<_> = world.seen.iter().filter(|s| s.method != "GET").collect();
    for write in &writes {
        if write.path.starts_with("/api/v1/nodes/") {
            assert_eq!(write.content_type, "application/merge-patch+json");
        } else {
            assert_eq!(
                write.content_type, "application/apply-patch+yaml",
                "{write:?}"
            );
            assert_eq!(
                write.query, "fieldManager=flatstack&force=true",
                "{write:?}"
            );
        }
    }
    assert_eq!(booted.changes, writes.len());
    // /readyz was asked until it said ok.
    assert!(world.seen.iter().filter(|s| s.path == "/readyz").count() >= 4);

    let object = |path: &str| -> Value {
        world
            .object(path)
            .cloned()
            .unwrap_or_else(|| panic!("{path} not applied"))
    };
    let controller = object("/apis/apps/v1/namespaces/kube-system/deployments/helm-controller");
    let pod = &controller["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(
        pod["nodeSelector"]["node-role.kubernetes.io/control-plane"],
        "true"
    );
    assert_eq!(
        pod["containers"][0]["image"],
        flatstack::pins::HELM_CONTROLLER_IMAGE
    );
    assert_eq!(pod["tolerations"][0]["operator"], "Exists");

    let chart = |name: &str| {
        object(&format!(
            "/apis/helm.cattle.io/v1/namespaces/kube-system/helmcharts/{name}"
        ))
    };
    let values = |chart: &Value| -> Value {
        serde_json::from_str(chart["spec"]["valuesContent"].as_str().expect("values"))
            .expect("values are JSON")
    };
    let flannel = chart("flannel");
    assert_eq!(flannel["spec"]["version"], flatstack::pins::FLANNEL.version);
    assert_eq!(flannel["spec"]["bootstrap"], true);
    assert_eq!(flannel["spec"]["targetNamespace"], "kube-flannel");
    assert_eq!(
        values(&flannel)["podCidr"],
        spec.network.pod_cidr.to_string()
    );
    assert_eq!(
        object("/api/v1/namespaces/kube-flannel")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );

    let occm = chart("openstack-cloud-controller-manager");
    // The chart pinned for the cluster's minor (1.37: 2.36.0 until 2.37 is confirmed).
    assert_eq!(
        occm["spec"]["version"], "2.36.0",
        "the chart pinned for Kubernetes 1.37"
    );
    assert_eq!(occm["spec"]["bootstrap"], true);
    let occm_values = values(&occm);
    assert_eq!(occm_values["cluster"]["name"], "demo");
    assert_eq!(
        occm_values["secret"]["create"], false,
        "credentials never in chart values"
    );
    assert!(
        !occm["spec"]["valuesContent"]
            .as_str()
            .unwrap_or_default()
            .contains("s3cret-value")
    );
    assert!(
        !occm_values.to_string().contains("/usr/libexec"),
        "no host path under Flatcar's read-only /usr: {occm_values}"
    );
    let tolerated: Vec<&str> = occm_values["tolerations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["key"].as_str())
        .collect();
    assert!(tolerated.contains(&"node.cloudprovider.kubernetes.io/uninitialized"));

    let csi = chart("openstack-cinder-csi");
    assert_eq!(csi["spec"]["bootstrap"], false, "CSI needs the pod network");
    let csi_values = values(&csi);
    assert_eq!(
        csi_values["clusterID"], "demo",
        "volumes tagged for `down --delete-volumes`"
    );
    assert_eq!(csi_values["storageClass"]["delete"]["isDefault"], true);

    assert!(
        world
            .secret_text(
                "/api/v1/namespaces/kube-system/secrets/cloud-config",
                "cloud.conf"
            )
            .unwrap_or_default()
            .contains("s3cret-value"),
        "the Secret carries cloud.conf"
    );
    let record = object("/api/v1/namespaces/kube-system/configmaps/flatstack");
    assert_eq!(record["data"]["addons-digest"], set.digest.as_str());
    assert!(!record.to_string().contains("s3cret-value"));
    drop(world);

    // Run again: everything current, no write at all.
    let before = server.writes().len();
    let again = run(&client, &spec, &set, 60).expect("second bootstrap");
    assert_eq!(again.changes, 0);
    assert_eq!(server.writes().len(), before, "{:?}", server.writes());

    // A different digest (changed pins, values or credentials; here rotated credentials)
    // applies everything again and waits for the two charts whose settings changed: the cloud
    // controller's and Cinder CSI's, whose pods carry the digest of `cloud.conf`.
    let mut rotated = conf();
    rotated.text = flatstack::secret::Secret::new(
        "[Global]\nauth-url = \"https://keystone.example/v3\"\napplication-credential-secret = \"rotated\"\n",
    );
    let changed = addons::for_cluster(&spec, &rotated, b"key").expect("add-ons");
    let third = run(&client, &spec, &changed, 60).expect("third bootstrap");
    // Every manifest and what follows the charts, the two charts' entries in the record, and
    // the record's digest.
    assert_eq!(
        third.changes,
        changed.manifests.len() + changed.after_charts.len() + 2 + 1
    );
}

#[test]
fn node_table_reads_like_kubectl() {
    let workspace = Workspace::new();
    let pki = pki(&workspace);
    let spec = spec(1);
    let server = stand_in(&pki, &spec, World::default());
    server.world.lock().expect("world").kubeadm_marks_now();
    let client = KubeClient::new(&pki, &format!("https://{}", server.address)).expect("client");
    let nodes = runtime().block_on(client.nodes()).expect("nodes");
    let table = flatstack::kube::node_table(&nodes, flatstack::kube::now());
    let lines: Vec<&str> = table.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "STATUS",
            "ROLES",
            "AGE",
            "VERSION",
            "INTERNAL-IP",
            "EXTERNAL-IP",
            "OS-IMAGE",
            "KERNEL-VERSION",
            "CONTAINER-RUNTIME"
        ]
    );
    assert_eq!(lines.len(), 3);
    assert!(lines[1].starts_with("demo-control-plane-1"), "{table}");
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &cells[1..5],
        ["NotReady", "control-plane", "0s", "v1.37.1"],
        "{table}"
    );
    // Under an external cloud provider a kubelet without `--node-ip` reports no IP address
    // until the cloud controller fills them in (kubernetes 1.29+, PR #121028).
    assert_eq!(cells[5], "<none>");
    assert_eq!(cells[6], "<none>");
    assert!(lines[1].contains("Flatcar Container Linux by Kinvolk 4230.2.3 (Oklo)"));
    assert!(lines[1].ends_with("containerd://1.7.23"));
    assert!(lines[2].starts_with("demo-default-1"), "{table}");
    assert!(
        lines[2].contains(" <none> "),
        "a worker has no role: {table}"
    );
}

#[test]
fn a_failed_chart_is_reported_with_its_reason() {
    let workspace = Workspace::new();
    let pki = pki(&workspace);
    let spec = spec(1);
    let server = stand_in(
        &pki,
        &spec,
        World {
            failing_chart: Some("openstack-cloud-controller-manager".into()),
            ..World::default()
        },
    );
    let client = KubeClient::new(&pki, &format!("https://{}", server.address)).expect("client");
    let set = addons::for_cluster(&spec, &conf(), b"key").expect("add-ons");
    let error = run(&client, &spec, &set, 60).expect_err("the chart fails");
    let message = error.to_string();
    assert!(
        message.contains("chart openstack-cloud-controller-manager failed to install"),
        "{message}"
    );
    // The Job never fails by itself (OnFailure, backoffLimit 1000): its pod's restarts tell.
    assert!(
        message.contains("Helm failed 3 times in a row"),
        "{message}"
    );
    assert!(message.contains("CrashLoopBackOff"), "{message}");
    assert!(
        message.contains("Error: INSTALLATION FAILED: failed to download chart"),
        "Helm's own words: {message}"
    );
    assert!(
        message.contains("logs job/helm-install-openstack-cloud-controller-manager"),
        "{message}"
    );
    let world = server.world.lock().expect("world");
    let job = &world.objects["/apis/batch/v1/namespaces/kube-system/jobs/helm-install-openstack-cloud-controller-manager"];
    assert_eq!(job["status"]["failed"], Value::Null, "no failed pod: {job}");
}

#[test]
fn a_cluster_that_never_gets_ready_times_out_saying_what_it_waits_for() {
    let workspace = Workspace::new();
    let pki = pki(&workspace);
    let spec = spec(1);
    // No flannel chart in this add-on set: the nodes never become Ready.
    let server = stand_in(&pki, &spec, World::default());
    let client = KubeClient::new(&pki, &format!("https://{}", server.address)).expect("client");
    let mut set = addons::for_cluster(&spec, &conf(), b"key").expect("add-ons");
    set.manifests.retain(|m| m.name() != "flannel");
    set.charts.clear();
    set.after_charts.clear();
    let error = run(&client, &spec, &set, 8).expect_err("never Ready");
    let message = error.to_string();
    assert!(
        message.contains("every node Ready did not happen within 8 s"),
        "{message}"
    );
    assert!(
        message.contains("demo-control-plane-1 (NotReady)"),
        "{message}"
    );
}

#[test]
fn only_the_cluster_ca_is_trusted_both_ways() {
    let workspace = Workspace::new();
    let pki = pki(&workspace);
    let other_workspace = Workspace::new();
    let other = self::pki(&other_workspace);
    let spec = spec(1);
    let rt = runtime();

    // A server whose certificate comes from another CA is not the cluster's API.
    let impostor = StandIn::start(
        &other.ca.cert_pem,
        other.ca.key_pem.expose(),
        &pki.ca.cert_pem,
        World::default(),
    );
    let client = KubeClient::new(&pki, &format!("https://{}", impostor.address)).expect("client");
    let error = rt.block_on(client.readyz()).expect_err("impostor refused");
    let said = chain(&error);
    assert!(said.contains("certificate"), "{said}");
    assert!(
        impostor.seen().is_empty(),
        "no request reached the impostor"
    );

    // A client certificate from another CA does not get in either.
    let server = stand_in(&pki, &spec, World::default());
    let stranger = KubeClient::new(&other, &format!("https://{}", server.address)).expect("client");
    assert!(rt.block_on(stranger.readyz()).is_err());
    assert!(server.seen().is_empty());
    let client = KubeClient::new(&pki, &format!("https://{}", server.address)).expect("client");
    rt.block_on(client.readyz())
        .expect("the cluster's own admin gets in");
}

#[test]
fn drain_cordons_evicts_through_budgets_and_deletes_the_node() {
    let workspace = Workspace::new();
    let pki = pki(&workspace);
    let spec = spec(2);
    let mut world = World {
        evictions_refused: 2,
        ..World::default()
    };
    world.run_pod("default", "web-1", "demo-default-2", false);
    world.run_pod("default", "web-2", "demo-default-2", false);
    world.run_pod("kube-flannel", "kube-flannel-ds-x", "demo-default-2", true);
    world.run_pod("default", "web-3", "demo-default-1", false);
    let server = stand_in(&pki, &spec, world);
    let client = KubeClient::new(&pki, &format!("https://{}", server.address)).expect("client");
    let report = runtime()
        .block_on(drain_node(
            &client,
            "demo-default-2",
            Duration::from_secs(60),
            AfterDrain::DeleteNode,
        ))
        .expect("drained");
    assert_eq!(report.evicted, 2);
    assert_eq!(report.left, 1, "the DaemonSet pod stays");
    let world = server.world.lock().expect("world");
    assert!(
        !world.nodes.contains_key("demo-default-2"),
        "node object deleted"
    );
    let names: Vec<&str> = world
        .pods
        .iter()
        .filter_map(|p| p.metadata.name.as_deref())
        .collect();
    assert_eq!(names, ["kube-flannel-ds-x", "web-3"]);
    let order: Vec<String> = world
        .seen
        .iter()
        .filter(|s| s.method != "GET")
        .map(|s| format!("{} {}", s.method, s.path))
        .collect();
    assert_eq!(
        order[0], "PATCH /api/v1/nodes/demo-default-2",
        "cordon first: {order:?}"
    );
    assert_eq!(
        order.last().map(String::as_str),
        Some("DELETE /api/v1/nodes/demo-default-2")
    );
    // Two refusals by the budget, then the two evictions.
    assert_eq!(
        order.iter().filter(|o| o.ends_with("/eviction")).count(),
        4,
        "{order:?}"
    );
    drop(world);

    // A node the API does not know is already drained.
    let again = runtime()
        .block_on(drain_node(
            &client,
            "demo-default-2",
            Duration::from_secs(10),
            AfterDrain::DeleteNode,
        ))
        .expect("nothing to drain");
    assert_eq!(again.evicted, 0);
}

/// The cluster of `cluster_text` with `pools` in place of its default pool.
fn spec_with_pools(pools: &str) -> ClusterSpec {
    let text = cluster_text("https://example.invalid", &"ab".repeat(32), 0);
    let text = text
        .split("[[worker_pools]]")
        .next()
        .expect("head")
        .to_string();
    ClusterSpec::parse("cluster.toml", &format!("{text}{pools}")).expect("valid cluster file")
}

fn boot(spec: &ClusterSpec, world: World) -> (StandIn, Result<Bootstrapped, String>) {
    let workspace = Workspace::new();
    let pki = pki(&workspace);
    let server = stand_in(&pki, spec, world);
    let client = KubeClient::new(&pki, &format!("https://{}", server.address)).expect("client");
    let set = addons::for_cluster(spec, &conf(), b"key").expect("add-ons");
    let booted = run(&client, spec, &set, 20).map_err(|e| e.to_string());
    (server, booted)
}

/// Whether the control plane carries kubeadm's `NoSchedule` taint in the stand-in.
fn control_plane_tainted(world: &World) -> bool {
    world.nodes["demo-control-plane-1"]
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|taints| {
            taints
                .iter()
                .any(|t| t.key == "node-role.kubernetes.io/control-plane")
        })
}

/// helm-controller gives only `bootstrap: true` charts' Jobs tolerations, and kubeadm taints
/// control planes: with no worker that takes ordinary pods, the control planes must.
#[test]
fn a_cluster_without_general_workers_installs_every_add_on_on_its_control_plane() {
    for pools in [
        "",
        "[[worker_pools]]\nname = \"gpu\"\ncount = 1\nflavor = \"m3.small\"\ntaints = [\"nvidia.com/gpu=present:NoSchedule\"]\n",
    ] {
        let spec = spec_with_pools(pools);
        assert!(!spec.has_general_workers());
        let (server, booted) = boot(&spec, World::default());
        let booted = booted.unwrap_or_else(|e| panic!("{pools:?}: {e}"));
        assert!(booted.nodes.iter().all(flatstack::kube::is_ready));
        let world = server.world.lock().expect("world");
        for chart in ["openstack-cinder-csi", "traefik", "kured", "metrics-server"] {
            let job = &world.objects
                [&format!("/apis/batch/v1/namespaces/kube-system/jobs/helm-install-{chart}")];
            assert_eq!(job["status"]["succeeded"], 1, "{chart}");
        }
        assert!(!control_plane_tainted(&world), "{pools:?}");
        assert!(
            serves_load_balancers(&world),
            "{pools:?}: the only general node must be a load balancer member"
        );
    }
    // With a worker for ordinary pods, control planes keep kubeadm's taint and stay out of
    // the cloud's load balancers, as kubeadm marked them.
    let spec =
        spec_with_pools("[[worker_pools]]\nname = \"default\"\ncount = 1\nflavor = \"m3.small\"\n");
    assert!(spec.has_general_workers());
    let (server, booted) = boot(&spec, World::default());
    booted.expect("bootstrap");
    let world = server.world.lock().expect("world");
    assert!(control_plane_tainted(&world));
    assert!(!serves_load_balancers(&world));
}

/// Whether the cloud controller's service controller would put the control plane into a load
/// balancer: not while it carries `node.kubernetes.io/exclude-from-external-load-balancers`
/// (k8s.io/cloud-provider `controllers/service/controller.go`, `nodeIncludedPredicate`: any
/// value but one that parses as false excludes it, kubeadm's `""` included).
fn serves_load_balancers(world: &World) -> bool {
    world.nodes["demo-control-plane-1"]
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(crate::kube_standin::EXCLUDE_FROM_LOAD_BALANCERS))
        .is_none_or(|value| value == "false")
}

/// kured must run on every node to reboot it, tainted pools included.
#[test]
fn kured_runs_on_every_node_tainted_pools_included() {
    let spec = spec_with_pools(
        "[[worker_pools]]\nname = \"default\"\ncount = 1\nflavor = \"m3.small\"\n\
         [[worker_pools]]\nname = \"gpu\"\ncount = 2\nflavor = \"m3.small\"\ntaints = [\"nvidia.com/gpu=present:NoSchedule\", \"dedicated:NoExecute\"]\n",
    );
    let (server, booted) = boot(&spec, World::default());
    booted.expect("bootstrap");
    let world = server.world.lock().expect("world");
    let mut kured_nodes: Vec<String> = world
        .pods
        .iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app.kubernetes.io/name"))
                .is_some_and(|v| v == "kured")
        })
        .filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
        .collect();
    kured_nodes.sort();
    assert_eq!(
        kured_nodes,
        [
            "demo-control-plane-1",
            "demo-default-1",
            "demo-gpu-1",
            "demo-gpu-2"
        ]
    );
}

/// Without the cloud controller, kubelets must not run with `cloud-provider=external`: they
/// would register every node uninitialized, a taint only the cloud controller removes, and no
/// ordinary pod, an add-on's Helm Job included, would ever run.
#[test]
fn a_cluster_without_the_cloud_controller_still_schedules_its_add_ons() {
    let spec = spec_with_pools(
        "[[worker_pools]]\nname = \"default\"\ncount = 1\nflavor = \"m3.small\"\n\
         [addons]\ncloud_controller = false\ncinder_csi = false\n",
    );
    let (server, booted) = boot(&spec, World::default());
    booted.expect("bootstrap");
    let world = server.world.lock().expect("world");
    for chart in ["traefik", "kured", "metrics-server"] {
        let job = &world.objects
            [&format!("/apis/batch/v1/namespaces/kube-system/jobs/helm-install-{chart}")];
        assert_eq!(job["status"]["succeeded"], 1, "{chart}");
    }
}

/// kubeadm's mark-control-plane phase runs a moment after `/readyz` first answers and resets
/// the role label to `""`: flatstack labels only after it (the exclude label is the sign),
/// and puts `true` back when the phase runs again later (`kubeadm init phase
/// mark-control-plane` by hand), before the waits that depend on it.
#[test]
fn the_control_plane_label_outlives_kubeadms_mark_phase() {
    let workspace = Workspace::new();
    let pki = pki(&workspace);
    let spec = spec(1);
    let server = stand_in(
        &pki,
        &spec,
        World {
            marks_again_at: Some(40),
            job_polls: 2,
            ..World::default()
        },
    );
    let client = KubeClient::new(&pki, &format!("https://{}", server.address)).expect("client");
    let set = addons::for_cluster(&spec, &conf(), b"key").expect("add-ons");
    let lines = std::sync::Mutex::new(Vec::new());
    let say = |line: &str| lines.lock().expect("lines").push(line.to_string());
    runtime()
        .block_on(bootstrap(
            &client,
            &spec.nodes(),
            &set,
            Duration::from_secs(120),
            &say,
        ))
        .expect("bootstrap");
    let world = server.world.lock().expect("world");
    let mark_at = world.mark_at.expect("kubeadm marked the control plane");
    // Every label patch came after kubeadm's first mark, and the second mark was undone.
    let patches: Vec<usize> = world
        .seen
        .iter()
        .enumerate()
        .filter(|(_, s)| s.method == "PATCH" && s.path == "/api/v1/nodes/demo-control-plane-1")
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(patches.len(), 2, "{patches:?}");
    assert!(patches[0] > mark_at, "{patches:?} after {mark_at}");
    assert!(patches[1] > 40, "{patches:?}");
    let labels = world.nodes["demo-control-plane-1"]
        .metadata
        .labels
        .clone()
        .expect("labels");
    assert_eq!(labels["node-role.kubernetes.io/control-plane"], "true");
    let said = lines.lock().expect("lines").join("\n");
    assert!(
        said.contains("waiting for kubeadm to mark the control planes"),
        "{said}"
    );
}

/// With `cloud-provider=external`, Ready comes from the pod network alone: a node the cloud
/// controller never initializes keeps `node.cloudprovider.kubernetes.io/uninitialized` and
/// takes no ordinary pod. `up` waits for both and names what is missing.
#[test]
fn nodes_the_cloud_controller_has_not_initialized_are_waited_for_and_named() {
    let workspace = Workspace::new();
    let pki = pki(&workspace);
    let spec = spec(1);
    let server = stand_in(
        &pki,
        &spec,
        World {
            cloud_controller_broken: true,
            ..World::default()
        },
    );
    let client = KubeClient::new(&pki, &format!("https://{}", server.address)).expect("client");
    let mut set = addons::for_cluster(&spec, &conf(), b"key").expect("add-ons");
    // Only what makes nodes Ready: the pod network and the cloud controller's chart.
    let keep = ["flannel", "openstack-cloud-controller-manager"];
    set.manifests
        .retain(|m| m.kind() != "HelmChart" || keep.contains(&m.name()));
    set.charts.retain(|c| keep.contains(&c.as_str()));
    set.after_charts.clear();
    let error = run(&client, &spec, &set, 20).expect_err("never initialized");
    let message = error.to_string();
    assert!(
        message.contains("demo-default-1 (Ready, not yet initialized by the cloud controller)"),
        "{message}"
    );
    assert!(server.world.lock().expect("world").ready("demo-default-1"));
}

/// New credentials roll the cloud controller and Cinder CSI: the digest of `cloud.conf` in
/// their pod annotations changes their charts, so helm-controller runs their Jobs again; the
/// `cloud-config` Secret loses the key no longer given (applied as `data`, not `stringData`,
/// which server-side apply would keep: kubernetes/kubernetes#108008).
#[test]
fn rotated_credentials_reach_the_cloud_controller_and_cinder_csi() {
    let workspace = Workspace::new();
    let pki = pki(&workspace);
    let spec = spec(1);
    let mut with_ca = conf();
    with_ca.ca_bundle = Some("-----BEGIN CERTIFICATE-----\nprivate CA\n".into());
    let server = stand_in(&pki, &spec, World::default());
    let client = KubeClient::new(&pki, &format!("https://{}", server.address)).expect("client");
    let up_with = |conf: &flatstack::addons::CloudConf| {
        let set = addons::for_cluster(&spec, conf, b"key").expect("add-ons");
        run(&client, &spec, &set, 120).expect("bootstrap");
    };
    up_with(&with_ca);
    let secret = "/api/v1/namespaces/kube-system/secrets/cloud-config";
    let uids = |server: &StandIn| -> Vec<Value> {
        let world = server.world.lock().expect("world");
        ["openstack-cloud-controller-manager", "openstack-cinder-csi", "kured"]
            .iter()
            .map(|chart| {
                world.objects[&format!("/apis/batch/v1/namespaces/kube-system/jobs/helm-install-{chart}")]
                    ["metadata"]["uid"]
                    .clone()
            })
            .collect()
    };
    let before = uids(&server);
    assert!(
        server
            .world
            .lock()
            .expect("world")
            .secret_text(secret, "ca.crt")
            .is_some()
    );

    let mut rotated = conf();
    rotated.text =
        flatstack::secret::Secret::new("[Global]\napplication-credential-secret = \"rotated\"\n");
    up_with(&rotated);
    let after = uids(&server);
    assert_ne!(after[0], before[0], "the cloud controller's Job ran again");
    assert_ne!(after[1], before[1], "Cinder CSI's Job ran again");
    assert_eq!(after[2], before[2], "kured's chart did not change");
    let world = server.world.lock().expect("world");
    assert_eq!(
        world.secret_text(secret, "cloud.conf").as_deref(),
        Some("[Global]\napplication-credential-secret = \"rotated\"\n")
    );
    assert_eq!(
        world.secret_text(secret, "ca.crt"),
        None,
        "the dropped key is gone"
    );
    assert!(world.objects[secret].get("stringData").is_none());
}

/// A replacement node is waited for until the cloud controller initialized it, not only
/// until Ready: a rolling replacement must not drain onto a node that takes no ordinary pod.
#[test]
fn waiting_for_a_node_means_ready_and_initialized() {
    let workspace = Workspace::new();
    let pki = pki(&workspace);
    let spec = spec(1);
    let server = stand_in(&pki, &spec, World::default());
    {
        let mut world = server.world.lock().expect("world");
        let node = world.nodes.get_mut("demo-default-1").expect("node");
        for condition in node
            .status
            .as_mut()
            .and_then(|s| s.conditions.as_mut())
            .into_iter()
            .flatten()
        {
            condition.status = "True".into();
        }
    }
    let client = KubeClient::new(&pki, &format!("https://{}", server.address)).expect("client");
    let error = runtime()
        .block_on(client.wait_node_ready("demo-default-1", Duration::from_secs(4)))
        .expect_err("not initialized");
    assert!(
        error
            .to_string()
            .contains("demo-default-1 is Ready but the cloud controller has not initialized it"),
        "{error}"
    );
}

/// A Job whose pod no node takes says why while flatstack waits: here the nodes stay NotReady
/// (no pod network), which only the bootstrap charts' Jobs tolerate.
#[test]
fn a_chart_whose_job_cannot_be_scheduled_says_why() {
    let workspace = Workspace::new();
    let pki = pki(&workspace);
    let spec = spec(1);
    let server = stand_in(&pki, &spec, World::default());
    let client = KubeClient::new(&pki, &format!("https://{}", server.address)).expect("client");
    let mut set = addons::for_cluster(&spec, &conf(), b"key").expect("add-ons");
    set.manifests.retain(|m| m.name() != "flannel");
    set.charts.retain(|c| c != "flannel");
    let error = run(&client, &spec, &set, 20).expect_err("no node for the Job");
    let message = error.to_string();
    assert!(
        message.contains("chart openstack-cinder-csi installing did not happen"),
        "{message}"
    );
    assert!(
        message.contains("its pod cannot be scheduled: 0/2 nodes are available"),
        "{message}"
    );
}

/// A chart left failing by an earlier run gets a fresh attempt once its cause is gone: the
/// crash-looping pod is deleted (the Job makes a new one at once) instead of being reported
/// again from its old restarts.
#[test]
fn a_chart_failing_from_an_earlier_run_gets_a_fresh_attempt() {
    let workspace = Workspace::new();
    let pki = pki(&workspace);
    let spec = spec(1);
    let server = stand_in(
        &pki,
        &spec,
        World {
            failing_chart: Some("metrics-server".into()),
            ..World::default()
        },
    );
    let client = KubeClient::new(&pki, &format!("https://{}", server.address)).expect("client");
    let set = addons::for_cluster(&spec, &conf(), b"key").expect("add-ons");
    let error = run(&client, &spec, &set, 60).expect_err("the chart fails");
    assert!(
        error.to_string().contains("chart metrics-server failed"),
        "{error}"
    );
    // The cause is fixed (a repository back, say): the next run succeeds.
    server.world.lock().expect("world").failing_chart = None;
    run(&client, &spec, &set, 60).expect("a fresh attempt succeeds");
    let world = server.world.lock().expect("world");
    let deleted: Vec<&str> = world
        .seen
        .iter()
        .filter(|s| s.method == "DELETE" && s.path.contains("/pods/helm-install-metrics-server-"))
        .map(|s| s.path.as_str())
        .collect();
    assert_eq!(deleted.len(), 1, "{deleted:?}");
}
