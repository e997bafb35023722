//! The stand-in's modelled behaviours, each checked against what upstream does (the sources are
//! named in `store.rs`, `schedule.rs` and the table in `mod.rs`): a model that drifted from the
//! real API server would let flatstack's tests pass for the wrong reason.

use hyper::StatusCode;
use serde_json::{Value, json};

use super::schedule::{daemonset_tolerations, fits, tolerates};
use super::{CONTROL_PLANE_TAINT, World, route, taint};

const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/demo/deployments/web";
const CHART: &str = "/apis/helm.cattle.io/v1/namespaces/kube-system/helmcharts/demo";

fn deployment(replicas: i64, labels: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "demo", "labels": labels},
        "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "web", "image": "nginx"}]}}},
    })
}

/// A request straight to the stand-in's router: status and JSON body (or text).
fn call(
    world: &mut World,
    method: &str,
    path: &str,
    query: &str,
    content_type: &str,
    body: &Value,
) -> (StatusCode, Value) {
    let response = route(
        world,
        method,
        path,
        query,
        content_type,
        body.to_string().as_bytes(),
    );
    let status = response.status();
    let bytes = futures_body(response);
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

fn futures_body(response: super::Answer) -> Vec<u8> {
    use http_body_util::BodyExt as _;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime
        .block_on(response.into_body().collect())
        .map(|c| c.to_bytes().to_vec())
        .unwrap_or_default()
}

fn apply(
    world: &mut World,
    path: &str,
    manager: &str,
    force: bool,
    body: &Value,
) -> (StatusCode, Value) {
    let query = format!(
        "fieldManager={manager}{}",
        if force { "&force=true" } else { "" }
    );
    call(
        world,
        "PATCH",
        path,
        &query,
        "application/apply-patch+yaml",
        body,
    )
}

fn owners(object: &Value) -> Vec<String> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["manager"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn apply_sets_uid_resource_version_and_generation_as_the_api_server_does() {
    let mut world = World::default();
    let (status, created) = apply(
        &mut world,
        DEPLOYMENT,
        "flatstack",
        true,
        &deployment(1, json!({"a": "1"})),
    );
    assert_eq!(status, StatusCode::CREATED);
    let uid = created["metadata"]["uid"].clone();
    assert!(uid.as_str().is_some_and(|u| !u.is_empty()));
    assert_eq!(created["metadata"]["generation"], 1);
    let version = created["metadata"]["resourceVersion"].clone();

    // The same apply again changes nothing: no new resourceVersion, no new generation.
    let (status, same) = apply(
        &mut world,
        DEPLOYMENT,
        "flatstack",
        true,
        &deployment(1, json!({"a": "1"})),
    );
    assert_eq!(status, StatusCode::OK);
    assert_eq!(same["metadata"]["resourceVersion"], version);
    assert_eq!(same["metadata"]["generation"], 1);
    assert_eq!(same["metadata"]["uid"], uid);

    // Metadata alone: a new resourceVersion, the same generation.
    let (_, relabelled) = apply(
        &mut world,
        DEPLOYMENT,
        "flatstack",
        true,
        &deployment(1, json!({"a": "2"})),
    );
    assert_ne!(relabelled["metadata"]["resourceVersion"], version);
    assert_eq!(relabelled["metadata"]["generation"], 1);

    // The spec: a new generation.
    let (_, scaled) = apply(
        &mut world,
        DEPLOYMENT,
        "flatstack",
        true,
        &deployment(3, json!({"a": "2"})),
    );
    assert_eq!(scaled["metadata"]["generation"], 2);
    assert_eq!(scaled["metadata"]["uid"], uid);
}

#[test]
fn field_ownership_conflicts_shares_and_hands_over_as_server_side_apply_does() {
    let mut world = World::default();
    apply(
        &mut world,
        DEPLOYMENT,
        "flatstack",
        false,
        &deployment(1, json!({"a": "1"})),
    );

    // Another manager setting a field flatstack owns to another value: 409, nothing changes.
    let (status, refused) = apply(
        &mut world,
        DEPLOYMENT,
        "other",
        false,
        &deployment(2, json!({"a": "1"})),
    );
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(refused["reason"], "Conflict");
    assert_eq!(
        refused["message"],
        "Apply failed with 1 conflict: conflict with \"flatstack\": .spec.replicas"
    );
    assert_eq!(refused["details"]["causes"][0]["field"], ".spec.replicas");
    assert_eq!(world.objects[DEPLOYMENT]["spec"]["replicas"], 1);

    // The same values: shared ownership, no conflict.
    let (status, shared) = apply(
        &mut world,
        DEPLOYMENT,
        "other",
        false,
        &deployment(1, json!({"a": "1"})),
    );
    assert_eq!(status, StatusCode::OK);
    assert_eq!(owners(&shared), ["flatstack", "other"]);

    // Forced: the field changes hands, and the value with it.
    let (status, forced) = apply(
        &mut world,
        DEPLOYMENT,
        "other",
        true,
        &deployment(2, json!({"a": "1"})),
    );
    assert_eq!(status, StatusCode::OK);
    assert_eq!(forced["spec"]["replicas"], 2);
    let (status, back) = apply(
        &mut world,
        DEPLOYMENT,
        "flatstack",
        false,
        &deployment(1, json!({"a": "1"})),
    );
    assert_eq!(status, StatusCode::CONFLICT, "{back}");
    assert!(
        back["message"]
            .as_str()
            .is_some_and(|m| m.contains("conflict with \"other\": .spec.replicas")),
        "{back}"
    );

    // An update (merge patch) takes fields over without conflict; its owner shows `using v1`.
    let (status, _) = call(
        &mut world,
        "PATCH",
        DEPLOYMENT,
        "fieldManager=kubectl-edit",
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {"a": "9"}}}),
    );
    assert_eq!(status, StatusCode::OK);
    let (status, refused) = apply(
        &mut world,
        DEPLOYMENT,
        "flatstack",
        false,
        &deployment(2, json!({"a": "1"})),
    );
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        refused["message"].as_str().is_some_and(
            |m| m.contains("conflict with \"kubectl-edit\" using v1: .metadata.labels.a")
        ),
        "{refused}"
    );
}

#[test]
fn fields_a_manager_stops_applying_are_removed_unless_someone_else_owns_them() {
    let mut world = World::default();
    apply(
        &mut world,
        DEPLOYMENT,
        "flatstack",
        true,
        &deployment(1, json!({"a": "1", "b": "1"})),
    );
    let (_, object) = apply(
        &mut world,
        DEPLOYMENT,
        "flatstack",
        true,
        &deployment(1, json!({"a": "1"})),
    );
    assert_eq!(object["metadata"]["labels"], json!({"a": "1"}));
    // A label another manager applied too survives flatstack dropping it.
    apply(
        &mut world,
        DEPLOYMENT,
        "flatstack",
        true,
        &deployment(1, json!({"a": "1", "c": "1"})),
    );
    apply(
        &mut world,
        DEPLOYMENT,
        "other",
        true,
        &json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "demo", "labels": {"c": "1"}},
        }),
    );
    let (_, object) = apply(
        &mut world,
        DEPLOYMENT,
        "flatstack",
        true,
        &deployment(1, json!({"a": "1"})),
    );
    assert_eq!(object["metadata"]["labels"], json!({"a": "1", "c": "1"}));
}

#[test]
fn custom_resources_are_served_once_their_crd_exists_with_its_defaults() {
    let mut world = World::default();
    let chart = json!({
        "apiVersion": "helm.cattle.io/v1", "kind": "HelmChart",
        "metadata": {"name": "demo", "namespace": "kube-system"},
        "spec": {"chart": "demo", "repo": "https://charts.example.org", "version": "1.0.0"},
    });
    // No CRD: the API server's not-found handler answers, in plain text, for reads and writes.
    let (status, body) = apply(&mut world, CHART, "flatstack", true, &chart);
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, Value::String("404 page not found\n".into()));
    let (status, _) = call(&mut world, "GET", CHART, "", "", &Value::Null);
    assert_eq!(status, StatusCode::NOT_FOUND);

    world.create_crds(&["helmcharts.helm.cattle.io"]);
    let (status, stored) = apply(&mut world, CHART, "flatstack", true, &chart);
    assert_eq!(status, StatusCode::CREATED, "{stored}");
    // helm-controller v0.17.7's CRD defaults, filled in on write and returned on read.
    assert_eq!(stored["spec"]["failurePolicy"], "reinstall");
    assert_eq!(world.objects[CHART]["spec"]["failurePolicy"], "reinstall");
    // Defaults are nobody's: re-applying what flatstack applied changes nothing.
    let version = stored["metadata"]["resourceVersion"].clone();
    let (_, again) = apply(&mut world, CHART, "flatstack", true, &chart);
    assert_eq!(again["metadata"]["resourceVersion"], version);
    assert_eq!(again["metadata"]["generation"], 1);
}

#[test]
fn a_secrets_string_data_is_kept_as_base64_data() {
    let mut world = World::default();
    let path = "/api/v1/namespaces/kube-system/secrets/s";
    let (_, stored) = apply(
        &mut world,
        path,
        "flatstack",
        true,
        &json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "kube-system"},
            "stringData": {"k": "value"},
        }),
    );
    assert!(stored.get("stringData").is_none(), "{stored}");
    assert_eq!(stored["data"]["k"], "dmFsdWU=");
    assert!(stored["metadata"].get("generation").is_none());
}

/// kubernetes/kubernetes#108008: the applier owns `stringData.k`, never `data.k`, so applying
/// the Secret again without `k` leaves `data.k` in place; applied as `data`, it goes.
#[test]
fn a_string_data_key_no_longer_applied_stays_but_a_data_key_goes() {
    let mut world = World::default();
    let path = "/api/v1/namespaces/kube-system/secrets/s";
    let secret = |field: &str, entries: Value| {
        json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "kube-system"},
            field: entries,
        })
    };
    apply(
        &mut world,
        path,
        "flatstack",
        true,
        &secret("stringData", json!({"k": "v", "gone": "x"})),
    );
    let (_, stored) = apply(
        &mut world,
        path,
        "flatstack",
        true,
        &secret("stringData", json!({"k": "v"})),
    );
    assert_eq!(
        stored["data"]["gone"], "eA==",
        "upstream keeps it: {stored}"
    );

    let path = "/api/v1/namespaces/kube-system/secrets/t";
    let secret = |entries: Value| {
        json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "t", "namespace": "kube-system"},
            "data": entries,
        })
    };
    apply(
        &mut world,
        path,
        "flatstack",
        true,
        &secret(json!({"k": "dg==", "gone": "eA=="})),
    );
    let (_, stored) = apply(
        &mut world,
        path,
        "flatstack",
        true,
        &secret(json!({"k": "dg=="})),
    );
    assert!(stored["data"].get("gone").is_none(), "{stored}");
    assert_eq!(stored["data"]["k"], "dg==");
}

#[test]
fn tolerations_match_taints_as_core_v1_defines_it() {
    let exists_all = json!({"operator": "Exists"});
    assert!(tolerates(&exists_all, "any", Some("v"), "NoExecute"));
    let exists_key = json!({"key": "k", "operator": "Exists", "effect": "NoSchedule"});
    assert!(tolerates(&exists_key, "k", Some("v"), "NoSchedule"));
    assert!(!tolerates(&exists_key, "k", Some("v"), "NoExecute"));
    assert!(!tolerates(&exists_key, "other", None, "NoSchedule"));
    // Equal is the default operator; an empty effect matches every effect.
    let equal = json!({"key": "k", "value": "v"});
    assert!(tolerates(&equal, "k", Some("v"), "NoExecute"));
    assert!(!tolerates(&equal, "k", Some("w"), "NoSchedule"));
    let no_value = json!({"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"});
    assert!(tolerates(
        &no_value,
        "node.kubernetes.io/not-ready",
        None,
        "NoSchedule"
    ));
}

#[test]
fn pods_fit_nodes_by_taints_and_selectors_and_daemonsets_get_their_tolerations() {
    let mut world = World::default();
    world.register("cp", true);
    world.register_with_taints(
        "gpu",
        false,
        vec![taint("gpu", Some("yes"), "NoSchedule")],
        true,
    );
    let node = |name: &str| world.nodes[name].clone();
    // New nodes are NotReady and uninitialized: only what tolerates both fits.
    assert!(!fits(&node("gpu"), &[], &Value::Null));
    let early = vec![
        json!({"key": "node.kubernetes.io/not-ready", "operator": "Exists"}),
        json!({"key": "node.cloudprovider.kubernetes.io/uninitialized", "operator": "Exists"}),
    ];
    assert!(
        !fits(&node("gpu"), &early, &Value::Null),
        "the pool's own taint"
    );
    // A control plane registers without kubeadm's taint; its mark phase adds it.
    assert!(fits(&node("cp"), &early, &Value::Null));
    world.kubeadm_marks_now();
    let node = |name: &str| world.nodes[name].clone();
    assert!(
        !fits(&node("cp"), &early, &Value::Null),
        "kubeadm's control-plane taint"
    );
    let mut cp = early.clone();
    cp.push(json!({"key": CONTROL_PLANE_TAINT, "operator": "Exists", "effect": "NoSchedule"}));
    assert!(fits(
        &node("cp"),
        &cp,
        &json!({"kubernetes.io/os": "linux"})
    ));
    assert!(!fits(&node("cp"), &cp, &json!({"disktype": "ssd"})));
    // PreferNoSchedule never keeps a pod away.
    world.register_with_taints(
        "soft",
        false,
        vec![taint("soft", None, "PreferNoSchedule")],
        true,
    );
    assert!(fits(&world.nodes["soft"], &early, &Value::Null));
    // The DaemonSet controller's own tolerations cover a NotReady node, not an uninitialized one.
    let added = daemonset_tolerations(false);
    assert!(
        added
            .iter()
            .any(|t| t["key"] == "node.kubernetes.io/not-ready" && t["effect"] == "NoExecute")
    );
    assert_eq!(added.len(), 6);
    assert_eq!(daemonset_tolerations(true).len(), 7);
}

/// kubeadm's mark-control-plane phase (`markcontrolplane.go`, `markControlPlaneNode`): the role
/// label and the exclude label set to `""` whatever they were, the configuration's taints
/// added to the node's own; the kubelet registered the node without either
/// (`kubelet_node_status.go`, `initialNode`; `init.go`'s kubelet-start writes no
/// `--register-with-taints` for a control plane).
#[test]
fn kubeadms_mark_phase_overwrites_the_role_label_and_adds_its_taint() {
    let mut world = World::default();
    world.register("cp", true);
    let labels = |world: &World| {
        world.nodes["cp"]
            .metadata
            .labels
            .clone()
            .unwrap_or_default()
    };
    assert!(!labels(&world).contains_key(CONTROL_PLANE_TAINT));
    assert_eq!(
        world.nodes["cp"]
            .spec
            .as_ref()
            .and_then(|s| s.provider_id.clone()),
        Some(format!("openstack:///{}", super::instance_uuid("cp")))
    );
    // Under an external cloud provider the kubelet reports no IP address (1.29+).
    let addresses = world.nodes["cp"]
        .status
        .as_ref()
        .and_then(|s| s.addresses.clone())
        .unwrap_or_default();
    assert!(
        addresses.iter().all(|a| a.type_ == "Hostname"),
        "{addresses:?}"
    );
    let (status, _) = call(
        &mut world,
        "PATCH",
        "/api/v1/nodes/cp",
        "",
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {CONTROL_PLANE_TAINT: "true"}}}),
    );
    assert_eq!(status, StatusCode::OK);
    world.kubeadm_marks_now();
    let after = labels(&world);
    assert_eq!(after[CONTROL_PLANE_TAINT], "", "reset whatever it was");
    assert_eq!(after[super::EXCLUDE_FROM_LOAD_BALANCERS], "");
    let taints: Vec<String> = world.nodes["cp"]
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.key)
        .collect();
    assert!(
        taints.contains(&CONTROL_PLANE_TAINT.to_string()),
        "{taints:?}"
    );
    assert!(
        taints.contains(&"node.kubernetes.io/not-ready".to_string()),
        "kept: {taints:?}"
    );
    // The phase runs when `/readyz` has answered, a few requests later.
    let mut world = World::default();
    world.register("cp", true);
    call(&mut world, "GET", "/readyz", "", "", &Value::Null);
    assert_eq!(
        world.mark_at,
        Some(world.requests + super::KUBEADM_MARK_LAG)
    );
}

/// helm-controller's install Jobs run with `restartPolicy: OnFailure` and `backoffLimit: 1000`
/// (`chart.go`): a failing Helm restarts its container in the same pod; the Job keeps
/// `status.failed` at 0 with no Failed condition (`job_controller.go`,
/// `pastBackoffLimitOnFailure` counts restarts against the limit only). The kubelet serves the
/// last attempt's log with `previous=true` (`kubelet_pods.go`, `validateContainerLogStatus`).
#[test]
fn a_failing_helm_job_restarts_its_pod_and_never_fails() {
    let mut world = World {
        failing_chart: Some("demo".into()),
        ..World::default()
    };
    // A node ordinary pods fit: Ready, no cloud controller in play.
    world.register_with_taints("worker", false, Vec::new(), false);
    if let Some(spec) = world.nodes.get_mut("worker").and_then(|n| n.spec.as_mut()) {
        spec.taints = Some(Vec::new());
    }
    world.start_job_for_tests("helm-install-demo", "demo");
    world.settle_for_tests();
    let job = "/apis/batch/v1/namespaces/kube-system/jobs/helm-install-demo";
    // Three failures with the kubelet's growing back-off in between.
    for _ in 0..12 {
        call(&mut world, "GET", job, "", "", &Value::Null);
    }
    let (_, job_object) = call(&mut world, "GET", job, "", "", &Value::Null);
    assert_eq!(job_object["status"]["active"], 1);
    assert!(job_object["status"].get("failed").is_none(), "{job_object}");
    assert_eq!(job_object["spec"]["backoffLimit"], 1000);
    let uid = job_object["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    let (_, pods) = call(
        &mut world,
        "GET",
        "/api/v1/namespaces/kube-system/pods",
        &format!("labelSelector=batch.kubernetes.io%2Fcontroller-uid%3D{uid}"),
        "",
        &Value::Null,
    );
    let pods = pods["items"].as_array().expect("pods").clone();
    assert_eq!(pods.len(), 1, "one pod, restarted in place");
    let helm = &pods[0]["status"]["containerStatuses"][0];
    assert_eq!(helm["name"], "helm");
    assert!(helm["restartCount"].as_i64().unwrap_or(0) >= 3, "{helm}");
    assert_eq!(helm["state"]["waiting"]["reason"], "CrashLoopBackOff");
    let pod = pods[0]["metadata"]["name"].as_str().expect("name");
    let (status, log) = call(
        &mut world,
        "GET",
        &format!("/api/v1/namespaces/kube-system/pods/{pod}/log"),
        "container=helm&previous=true",
        "",
        &Value::Null,
    );
    assert_eq!(status, StatusCode::OK);
    assert!(
        log.as_str()
            .unwrap_or_default()
            .contains("Error: INSTALLATION FAILED"),
        "{log}"
    );
}
