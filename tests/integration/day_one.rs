//! Day-one add-ons against the loopback Kubernetes API stand-in (no real API server can run
//! here): the ingress, cert-manager's issuer, kured and metrics-server installed by `up`'s
//! bootstrap; `flatstack jupyterhub install|upgrade|uninstall` and `flatstack smoke` end to
//! end through the CLI; kured's reboot state as `status` reads it. The JupyterHub values are
//! checked against the pinned chart's own values schema.

use std::collections::BTreeMap;
use std::time::Duration;

use flatstack::addons;
use flatstack::apply::bootstrap::bootstrap;
use flatstack::kube::{KubeClient, RebootState};
use flatstack::pki::ClusterPki;
use flatstack::secret::Secret;
use flatstack::spec::ClusterSpec;
use serde_json::{Value, json};

use crate::kube_standin::{IngressStandIn, StandIn, World, conf, pki, quiet, runtime, stand_in};
use crate::support::*;

const HOSTNAME: &str = "hub.demo.projects.jetstream-cloud.org";

fn cluster_file(extra: &str) -> String {
    format!(
        "{}{extra}",
        cluster_text("https://example.invalid", &"ab".repeat(32), 2)
    )
}

fn spec(extra: &str) -> ClusterSpec {
    ClusterSpec::parse("cluster.toml", &cluster_file(extra)).expect("valid cluster file")
}

fn chart_values(world: &World, name: &str) -> Value {
    let chart = world
        .object(&format!(
            "/apis/helm.cattle.io/v1/namespaces/kube-system/helmcharts/{name}"
        ))
        .unwrap_or_else(|| panic!("chart {name} not applied"));
    serde_json::from_str(chart["spec"]["valuesContent"].as_str().expect("values")).expect("JSON")
}

/// A stand-in cluster brought up by `bootstrap` with the add-ons of `spec`.
fn booted(pki: &ClusterPki, spec: &ClusterSpec, world: World) -> StandIn {
    let server = stand_in(pki, spec, world);
    let client = KubeClient::new(pki, &format!("https://{}", server.address)).expect("client");
    let set = addons::for_cluster(spec, &conf(), b"key").expect("add-ons");
    runtime()
        .block_on(bootstrap(
            &client,
            &spec.nodes(),
            &set,
            Duration::from_secs(120),
            &quiet,
        ))
        .expect("bootstrap");
    server
}

#[test]
fn up_installs_ingress_issuer_kured_and_metrics_server_pinned() {
    let workspace = Workspace::new();
    let pki = pki(&workspace);
    let spec = spec(&format!(
        "\n[ingress]\nhostname = \"{HOSTNAME}\"\nacme_email = \"ops@example.org\"\nacme_server = \"staging\"\n\n[updates]\nreboot_days = [\"sat\", \"sun\"]\nreboot_start = \"03:00\"\nreboot_end = \"05:00\"\ntimezone = \"Europe/Berlin\"\n"
    ));
    let server = booted(&pki, &spec, World::default());
    let world = server.world.lock().expect("world");

    let charts: BTreeMap<String, Value> = world
        .objects
        .iter()
        .filter(|(p, _)| p.starts_with("/apis/helm.cattle.io/"))
        .map(|(_, v)| {
            (
                v["metadata"]["name"].as_str().unwrap_or("").to_string(),
                v.clone(),
            )
        })
        .collect();
    for (name, pinned, namespace) in [
        ("traefik", flatstack::pins::TRAEFIK, "traefik"),
        (
            "cert-manager",
            flatstack::pins::CERT_MANAGER,
            "cert-manager",
        ),
        ("kured", flatstack::pins::KURED, "kube-system"),
        (
            "metrics-server",
            flatstack::pins::METRICS_SERVER,
            "kube-system",
        ),
    ] {
        let chart = &charts[name];
        assert_eq!(chart["spec"]["version"], pinned.version, "{name}");
        assert_eq!(chart["spec"]["repo"], pinned.repo, "{name}");
        assert_eq!(chart["spec"]["targetNamespace"], namespace, "{name}");
        // Not bootstrap charts: they wait for the pod network and the cloud controller.
        assert_eq!(chart["spec"]["bootstrap"], false, "{name}");
    }
    // Every image tag flatstack sets is an exact release, never `latest`.
    for name in ["traefik", "cert-manager", "kured", "metrics-server"] {
        let values = chart_values(&world, name);
        let tag = values["image"]["tag"].as_str().expect("tag");
        assert!(!tag.is_empty() && tag != "latest", "{name}: {tag}");
    }

    let traefik = chart_values(&world, "traefik");
    assert_eq!(traefik["hostNetwork"], true);
    assert_eq!(traefik["deployment"]["kind"], "DaemonSet");
    assert_eq!(
        traefik["nodeSelector"]["node-role.kubernetes.io/control-plane"],
        "true"
    );
    let kured = chart_values(&world, "kured");
    assert_eq!(kured["configuration"]["rebootDays"], json!(["sun", "sat"]));
    assert_eq!(kured["configuration"]["startTime"], "03:00");
    assert_eq!(kured["configuration"]["timeZone"], "Europe/Berlin");
    let tolerated: Vec<&str> = kured["tolerations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["key"].as_str())
        .collect();
    assert!(tolerated.contains(&"node-role.kubernetes.io/control-plane"));
    let metrics = chart_values(&world, "metrics-server");
    assert!(
        metrics["defaultArgs"]
            .as_array()
            .expect("args")
            .contains(&json!("--kubelet-preferred-address-types=InternalIP"))
    );

    // The snapshot controller, pinned, with its CRDs and no webhook; the default
    // VolumeSnapshotClass went in only once its CRD was served, after the chart's Job.
    let snapshots = &charts["snapshot-controller"];
    assert_eq!(
        snapshots["spec"]["version"],
        flatstack::pins::SNAPSHOT_CONTROLLER.version
    );
    assert_eq!(
        snapshots["spec"]["repo"],
        flatstack::pins::SNAPSHOT_CONTROLLER.repo
    );
    let values = chart_values(&world, "snapshot-controller");
    assert_eq!(values["installCRDs"], true);
    assert_eq!(values["webhook"]["enabled"], false);
    let class = world
        .object("/apis/snapshot.storage.k8s.io/v1/volumesnapshotclasses/cinder-snapshots")
        .expect("VolumeSnapshotClass applied");
    assert_eq!(class["driver"], "cinder.csi.openstack.org");
    assert_eq!(class["parameters"]["force-create"], "true");
    assert_eq!(
        class["metadata"]["annotations"]["snapshot.storage.kubernetes.io/is-default-class"],
        "true"
    );
    let snapshot_controller_done = world
        .seen
        .iter()
        .position(|s| s.path.ends_with("/jobs/helm-install-snapshot-controller"))
        .expect("the snapshot controller's Job was watched");
    let first_class = world
        .seen
        .iter()
        .position(|s| s.path.starts_with("/apis/snapshot.storage.k8s.io/"))
        .expect("class applied");
    assert!(first_class > snapshot_controller_done);

    // The issuer went in only once cert-manager's CRDs were served (404 before).
    let issuer = world
        .object("/apis/cert-manager.io/v1/clusterissuers/letsencrypt")
        .expect("ClusterIssuer applied");
    assert_eq!(
        issuer["spec"]["acme"]["server"],
        flatstack::spec::LETSENCRYPT_STAGING
    );
    assert_eq!(issuer["spec"]["acme"]["email"], "ops@example.org");
    let issuer_writes: Vec<_> = world
        .seen
        .iter()
        .filter(|s| s.path.starts_with("/apis/cert-manager.io/"))
        .collect();
    let cert_manager_done = world
        .seen
        .iter()
        .position(|s| s.path.ends_with("/jobs/helm-install-cert-manager"))
        .expect("cert-manager's Job was watched");
    let first_issuer = world
        .seen
        .iter()
        .position(|s| s.path.starts_with("/apis/cert-manager.io/"))
        .expect("issuer applied");
    assert!(first_issuer > cert_manager_done);
    assert!(!issuer_writes.is_empty());
    // The record comes last: a run cut short re-applies the issuer next time.
    let record = world
        .seen
        .iter()
        .rposition(|s| s.path.ends_with("/configmaps/flatstack"))
        .expect("record");
    assert!(record > first_issuer);
}

#[test]
fn a_changed_chart_is_waited_for_until_its_new_job_succeeds() {
    let workspace = Workspace::new();
    let pki = pki(&workspace);
    let spec = spec("");
    let server = booted(
        &pki,
        &spec,
        World {
            replace_lag: 2,
            job_polls: 1,
            ..World::default()
        },
    );
    let uid_of = |chart: &str| {
        server.world.lock().expect("world").objects
            [&format!("/apis/batch/v1/namespaces/kube-system/jobs/helm-install-{chart}")]
            ["metadata"]["uid"]
            .clone()
    };
    let old_uid = uid_of("kured");
    let traefik_uid = uid_of("traefik");

    // New reboot window: only kured's chart changes.
    let changed = ClusterSpec::parse(
        "cluster.toml",
        &cluster_file("\n[updates]\nreboot_days = [\"sun\"]\n"),
    )
    .expect("valid");
    let client = KubeClient::new(&pki, &format!("https://{}", server.address)).expect("client");
    let set = addons::for_cluster(&changed, &conf(), b"key").expect("add-ons");
    let lines = std::sync::Mutex::new(Vec::new());
    let say = |line: &str| lines.lock().expect("lines").push(line.to_string());
    runtime()
        .block_on(bootstrap(
            &client,
            &changed.nodes(),
            &set,
            Duration::from_secs(120),
            &say,
        ))
        .expect("second bootstrap");
    let world = server.world.lock().expect("world");
    let job = &world.objects["/apis/batch/v1/namespaces/kube-system/jobs/helm-install-kured"];
    assert_ne!(
        job["metadata"]["uid"], old_uid,
        "helm-controller replaced the Job"
    );
    assert_eq!(job["status"]["succeeded"], 1);
    // The wait did not take the old Job's success for the new settings: the last answer
    // flatstack read about kured's Job was the new Job's success.
    let last = world
        .job_answers
        .iter()
        .rev()
        .find(|(path, _, _)| path.ends_with("/jobs/helm-install-kured"))
        .expect("kured's Job was read");
    assert_eq!(
        (Value::from(last.1.clone()), last.2),
        (job["metadata"]["uid"].clone(), true)
    );
    assert_ne!(Value::from(last.1.clone()), old_uid);
    drop(world);
    // Charts that did not change kept their Jobs.
    assert_eq!(uid_of("traefik"), traefik_uid);
}

const KURED_CHART: &str = "/apis/helm.cattle.io/v1/namespaces/kube-system/helmcharts/kured";
const KURED_JOB: &str = "/apis/batch/v1/namespaces/kube-system/jobs/helm-install-kured";

/// The HelmChart `name` of `spec`'s add-ons, as flatstack applies it.
fn chart_body(spec: &ClusterSpec, name: &str) -> Value {
    addons::for_cluster(spec, &conf(), b"key")
        .expect("add-ons")
        .manifests
        .iter()
        .find(|m| m.kind() == "HelmChart" && m.name() == name)
        .expect("chart")
        .body()
        .clone()
}

fn job_uid(server: &StandIn) -> Value {
    server.world.lock().expect("world").objects[KURED_JOB]["metadata"]["uid"].clone()
}

/// What helm-controller made the current kured Job for is the chart's current spec.
fn job_made_for_current_spec(server: &StandIn) -> bool {
    let world = server.world.lock().expect("world");
    let chart = &world.objects[KURED_CHART];
    world.job_specs["kured"].0["spec"] == chart["spec"]
}

/// The cluster file with a new reboot window: only kured's chart changes.
fn with_new_reboot_window() -> ClusterSpec {
    spec("\n[updates]\nreboot_days = [\"sun\"]\n")
}

/// kured's chart of `spec` applied as by a run of flatstack that was stopped right after.
fn apply_kured_as_a_stopped_run(server: &StandIn, spec: &ClusterSpec) {
    let status = server.world.lock().expect("world").apply_object(
        KURED_CHART,
        &chart_body(spec, "kured"),
        "flatstack",
    );
    assert_eq!(status, 200);
}

/// Reads the charts' states until helm-controller has replaced kured's Job `old_uid` and the new
/// one succeeded, as happens while no flatstack watches; returns the new Job's UID.
fn until_kured_job_replaced(server: &StandIn, client: &KubeClient, old_uid: &Value) -> Value {
    for _ in 0..10 {
        runtime()
            .block_on(flatstack::apply::charts::chart_states(client))
            .expect("states");
        let job = server.world.lock().expect("world").objects[KURED_JOB].clone();
        if &job["metadata"]["uid"] != old_uid && job["status"]["succeeded"] == 1 {
            break;
        }
    }
    let new_uid = job_uid(server);
    assert_ne!(&new_uid, old_uid);
    new_uid
}

/// The add-ons' digest in the record changed, as a run after a stopped one finds it: the next
/// bootstrap applies everything again.
fn forget_addons_digest(server: &StandIn) {
    server
        .world
        .lock()
        .expect("world")
        .objects
        .get_mut("/api/v1/namespaces/kube-system/configmaps/flatstack")
        .expect("record")["data"]["addons-digest"] = json!("from the stopped run");
}

/// `bootstrap` of `spec`'s add-ons, quietly, within `seconds`.
fn bootstrap_within(
    client: &KubeClient,
    spec: &ClusterSpec,
    seconds: u64,
) -> Result<flatstack::apply::bootstrap::Bootstrapped, flatstack::apply::ApplyError> {
    let set = addons::for_cluster(spec, &conf(), b"key").expect("add-ons");
    runtime().block_on(bootstrap(
        client,
        &spec.nodes(),
        &set,
        Duration::from_secs(seconds),
        &quiet,
    ))
}

/// A run stopped between applying a changed chart and helm-controller's new Job: the next run
/// applies nothing new (the chart already has the new spec), yet must not take the old Job's
/// success for the new settings. The cluster's record says which Job was the old one.
#[test]
fn a_change_applied_by_a_stopped_run_is_waited_for_by_the_next() {
    let workspace = Workspace::new();
    let pki = pki(&workspace);
    let server = booted(
        &pki,
        &spec(""),
        World {
            replace_lag: 3,
            job_polls: 1,
            ..World::default()
        },
    );
    let old_uid = job_uid(&server);
    let changed = with_new_reboot_window();
    apply_kured_as_a_stopped_run(&server, &changed);
    // The stopped run's apply changed the chart; helm-controller has not replaced the Job.
    assert_eq!(job_uid(&server), old_uid);

    let client = KubeClient::new(&pki, &format!("https://{}", server.address)).expect("client");
    bootstrap_within(&client, &changed, 120).expect("the next run");
    assert_ne!(job_uid(&server), old_uid, "a new Job for the new settings");
    assert!(job_made_for_current_spec(&server));
    let world = server.world.lock().expect("world");
    // No answer flatstack read of the old Job's success ended its wait: the last read was of
    // the new Job, succeeded.
    let last = world
        .job_answers
        .iter()
        .rev()
        .find(|(path, _, _)| path == KURED_JOB)
        .expect("kured's Job was read");
    assert_ne!(Value::from(last.1.clone()), old_uid);
    assert!(last.2);
    // The record names the new Job.
    let record = &world.objects["/api/v1/namespaces/kube-system/configmaps/flatstack"];
    assert_eq!(
        record["data"]["chart.kured.job"].clone(),
        world.objects[KURED_JOB]["metadata"]["uid"]
    );
}

/// A run stopped after helm-controller's new Job succeeded but before the record was written:
/// the next run finds the new Job done and records it, without waiting for another.
#[test]
fn a_job_that_succeeded_after_its_run_stopped_is_taken_by_the_next() {
    let workspace = Workspace::new();
    let pki = pki(&workspace);
    let server = booted(&pki, &spec(""), World::default());
    let old_uid = job_uid(&server);
    let changed = with_new_reboot_window();
    apply_kured_as_a_stopped_run(&server, &changed);
    let client = KubeClient::new(&pki, &format!("https://{}", server.address)).expect("client");
    // helm-controller replaces the Job and it succeeds while no flatstack watches.
    let new_uid = until_kured_job_replaced(&server, &client, &old_uid);
    bootstrap_within(&client, &changed, 60).expect("the next run");
    assert_eq!(job_uid(&server), new_uid, "no further Job");
    let world = server.world.lock().expect("world");
    let record = &world.objects["/api/v1/namespaces/kube-system/configmaps/flatstack"];
    assert_eq!(record["data"]["chart.kured.job"].clone(), new_uid);
}

/// A chart changed by a stopped run and changed back by the next: the API server bumps its
/// generation twice, but helm-controller keeps the Job whose release already has these values
/// (`pkg/controllers/chart/chart.go`: a complete Job of the same config hash is left alone).
/// The record's settings match again, so nothing is waited for.
#[test]
fn a_chart_changed_and_changed_back_is_settled_without_a_new_job() {
    let workspace = Workspace::new();
    let pki = pki(&workspace);
    let original = spec("");
    let server = booted(
        &pki,
        &original,
        World {
            replace_lag: 1000,
            ..World::default()
        },
    );
    let old_uid = job_uid(&server);
    let changed = with_new_reboot_window();
    apply_kured_as_a_stopped_run(&server, &changed);
    let client = KubeClient::new(&pki, &format!("https://{}", server.address)).expect("client");
    forget_addons_digest(&server);
    bootstrap_within(&client, &original, 20).expect("settled without a new Job");
    assert_eq!(job_uid(&server), old_uid);
    assert!(job_made_for_current_spec(&server));
}

/// A chart changed by a stopped run whose new Job ran, then changed back: the Job there is the
/// change's, succeeded, and helm-controller will replace it for the settings the chart has
/// again. Its success is not taken for them.
#[test]
fn a_chart_changed_run_and_changed_back_waits_for_the_job_of_its_settings() {
    let workspace = Workspace::new();
    let pki = pki(&workspace);
    let original = spec("");
    let server = booted(
        &pki,
        &original,
        World {
            replace_lag: 2,
            ..World::default()
        },
    );
    let first_uid = job_uid(&server);
    let changed = with_new_reboot_window();
    apply_kured_as_a_stopped_run(&server, &changed);
    let client = KubeClient::new(&pki, &format!("https://{}", server.address)).expect("client");
    // helm-controller replaces the Job for the change and it succeeds.
    let change_uid = until_kured_job_replaced(&server, &client, &first_uid);
    assert!(job_made_for_current_spec(&server));
    server
        .world
        .lock()
        .expect("world")
        .objects
        .get_mut("/api/v1/namespaces/kube-system/configmaps/flatstack")
        .expect("record")["data"]["addons-digest"] = json!("from the stopped run");
    bootstrap_within(&client, &original, 60).expect("the run that changed it back");
    let last_uid = job_uid(&server);
    assert!(
        last_uid != change_uid && last_uid != first_uid,
        "{last_uid}"
    );
    assert!(job_made_for_current_spec(&server));
}

#[test]
fn a_failing_chart_reports_helms_own_output() {
    let workspace = Workspace::new();
    let pki = pki(&workspace);
    let spec = spec("");
    let world = World {
        failing_chart: Some("metrics-server".into()),
        helm_error: Some(
            "Error: INSTALLATION FAILED: values don't meet the specifications of the schema(s)\n"
                .into(),
        ),
        ..World::default()
    };
    let server = stand_in(&pki, &spec, world);
    let client = KubeClient::new(&pki, &format!("https://{}", server.address)).expect("client");
    let set = addons::for_cluster(&spec, &conf(), b"key").expect("add-ons");
    let error = runtime()
        .block_on(bootstrap(
            &client,
            &spec.nodes(),
            &set,
            Duration::from_secs(60),
            &quiet,
        ))
        .expect_err("the chart fails");
    let message = error.to_string();
    assert!(message.contains("chart metrics-server failed"), "{message}");
    let states = runtime()
        .block_on(flatstack::apply::charts::chart_states(&client))
        .expect("chart states");
    let state = |name: &str| {
        states
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.state.clone())
            .unwrap_or_default()
    };
    assert_eq!(state("flannel"), "installed");
    let failed = state("metrics-server");
    assert!(
        failed.starts_with("failed: Helm failed ")
            && failed.ends_with(" times in a row, last exit code 1, CrashLoopBackOff"),
        "{failed}"
    );
    assert!(
        message.contains("values don't meet the specifications"),
        "Helm's output is shown: {message}"
    );
}

#[test]
fn kureds_metrics_tell_which_node_waits_for_a_reboot() {
    let workspace = Workspace::new();
    let pki = pki(&workspace);
    let spec = spec("");
    let mut world = World::default();
    let nodes = ["demo-control-plane-1", "demo-default-1", "demo-default-2"];
    for (index, node) in nodes.iter().enumerate() {
        let pod = format!("kured-{index}");
        world.run_pod("kube-system", &pod, node, true);
        world.label_pod(&pod, "app.kubernetes.io/name", "kured");
    }
    world.pod_metrics.insert(
        "kured-0".into(),
        "kured_reboot_required{node=\"demo-control-plane-1\"} 0\n".into(),
    );
    world.pod_metrics.insert(
        "kured-1".into(),
        "# TYPE kured_reboot_required gauge\nkured_reboot_required{node=\"demo-default-1\"} 1\n"
            .into(),
    );
    // kured-2 does not answer.
    let server = stand_in(&pki, &spec, world);
    let client = KubeClient::new(&pki, &format!("https://{}", server.address)).expect("client");
    let states = runtime().block_on(async {
        let nodes = client.nodes().await.expect("nodes");
        flatstack::kube::reboot_states(&client, &nodes).await
    });
    let states = states.expect("states");
    assert_eq!(states["demo-control-plane-1"], RebootState::UpToDate);
    assert_eq!(states["demo-default-1"], RebootState::Pending);
    assert_eq!(states["demo-default-2"], RebootState::Unknown);
}

/// The z2jh 4.4.0 defaults, with the image tags its release tool sets.
fn chart_defaults() -> Value {
    let text = std::fs::read_to_string("tests/data/z2jh-4.4.0/values.yaml")
        .expect("chart defaults")
        .replace("\"set-by-chartpress\"", "\"4.4.0\"");
    serde_saphyr::from_str(&text).expect("defaults are YAML")
}

fn schema_errors(values: &Value) -> Vec<String> {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string("tests/data/z2jh-4.4.0/values.schema.json").expect("schema"),
    )
    .expect("schema is JSON");
    let validator = jsonschema::draft7::new(&schema).expect("a valid draft-7 schema");
    validator
        .iter_errors(values)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// Errors of `values` merged over the chart's own defaults (`tests/data/<dir>/values.yaml`), as
/// Helm merges them, against the chart's own `values.schema.json` (draft from its `$schema`).
fn chart_schema_errors(dir: &str, values: &Value) -> Vec<String> {
    let read = |name: &str| {
        std::fs::read_to_string(format!("tests/data/{dir}/{name}"))
            .unwrap_or_else(|e| panic!("tests/data/{dir}/{name}: {e}"))
    };
    let mut merged: Value =
        serde_saphyr::from_str(&read("values.yaml")).expect("defaults are YAML");
    addons::merge_values(&mut merged, values);
    let schema: Value = serde_json::from_str(&read("values.schema.json")).expect("schema");
    let validator = jsonschema::validator_for(&schema).expect("a valid schema");
    validator
        .iter_errors(&merged)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn traefik_and_cert_manager_values_meet_their_charts_schemas() {
    assert_eq!(
        flatstack::pins::TRAEFIK.version,
        "41.3.0",
        "update tests/data with the pin"
    );
    assert_eq!(
        flatstack::pins::CERT_MANAGER.version,
        "v1.21.1",
        "update tests/data with the pin"
    );
    for extra in [
        "",
        "[ingress]\nexposure = \"load-balancer\"\nhttp_cidrs = [\"192.0.2.0/24\"]\n",
    ] {
        let spec = spec(&format!("\n{extra}"));
        let values = addons::ingress::traefik_values(&spec.ingress);
        let errors = chart_schema_errors("traefik-41.3.0", &values);
        assert!(errors.is_empty(), "{extra}: {errors:#?}");
    }
    let errors = chart_schema_errors(
        "cert-manager-v1.21.1",
        &addons::ingress::cert_manager_values(),
    );
    assert!(errors.is_empty(), "{errors:#?}");
    // The check bites: Traefik 41 renamed `logs.access` to `accessLog`.
    let old_key = json!({ "logs": { "access": { "enabled": true } } });
    assert!(!chart_schema_errors("traefik-41.3.0", &old_key).is_empty());
    let typo = json!({ "crds": { "enable": true } });
    assert!(!chart_schema_errors("cert-manager-v1.21.1", &typo).is_empty());
}

/// flatstack's values (and credential values) merged over the chart's defaults, as Helm does.
fn merged(
    spec: &ClusterSpec,
    credentials: &addons::jupyterhub::HubCredentials,
    user: Option<&Value>,
) -> Value {
    let release = addons::jupyterhub::release(spec, credentials, user);
    let mut values = chart_defaults();
    let ours: Value = serde_json::from_str(&release.chart.spec.values_content).expect("values");
    addons::merge_values(&mut values, &ours);
    let secret: Value =
        serde_json::from_str(addons::jupyterhub::credential_values(credentials).expose())
            .expect("credential values");
    addons::merge_values(&mut values, &secret);
    values
}

#[test]
fn jupyterhub_values_meet_the_pinned_charts_schema() {
    assert_eq!(
        flatstack::pins::JUPYTERHUB.version,
        "4.4.0",
        "update tests/data with the pin"
    );
    assert!(
        schema_errors(&chart_defaults()).is_empty(),
        "the defaults alone are valid"
    );
    let shared = addons::jupyterhub::HubCredentials::SharedPassword {
        user: Secret::new("abcdefghijklmnopqrstuvwx"),
        admin: Secret::new("a".repeat(40)),
    };
    let github = addons::jupyterhub::HubCredentials::GitHub {
        client_secret: Secret::new("0123456789abcdef"),
    };
    let trial = spec("\n[jupyterhub]\nadmin_users = [\"alice\"]\nuser_storage_gb = 20\n");
    let errors = schema_errors(&merged(&trial, &shared, None));
    assert!(errors.is_empty(), "{errors:#?}");
    let production = spec(&format!(
        "\n[ingress]\nhostname = \"{HOSTNAME}\"\nacme_email = \"ops@example.org\"\n[jupyterhub]\nauthenticator = \"github\"\ngithub_client_id = \"Iv1.0123\"\ngithub_allowed_organizations = [\"my-org\"]\nallowed_users = [\"carol\"]\n"
    ));
    let user_values = json!({ "singleuser": { "image": { "name": "quay.io/jupyter/scipy-notebook", "tag": "2025-06-02" }, "memory": { "limit": "4G", "guarantee": "1G" } } });
    let errors = schema_errors(&merged(&production, &github, Some(&user_values)));
    assert!(errors.is_empty(), "{errors:#?}");

    // The check bites: a misspelt key or a wrong type in the user's values is refused.
    let typo = json!({ "singleuser": { "storage": { "capacty": "5Gi" } } });
    let errors = schema_errors(&merged(&trial, &shared, Some(&typo)));
    assert!(errors.iter().any(|e| e.contains("capacty")), "{errors:#?}");
    let wrong_type = json!({ "proxy": { "service": { "type": "Public" } } });
    assert!(!schema_errors(&merged(&trial, &shared, Some(&wrong_type))).is_empty());
}

/// A cluster where the hub's release makes its `hub` and `proxy` Deployments, and
/// helm-controller takes a while to replace a changed chart's Job.
fn hub_world() -> World {
    World {
        release_deployments: BTreeMap::from([(
            "jupyterhub".to_string(),
            vec!["hub".to_string(), "proxy".to_string()],
        )]),
        replace_lag: 2,
        ..World::default()
    }
}

/// A workspace whose cluster file, state directory and stand-ins make a running cluster.
struct Running {
    workspace: Workspace,
    server: StandIn,
    ingress: IngressStandIn,
}

fn running(extra: &str, world: World) -> Running {
    let workspace = Workspace::new();
    workspace.write_cluster(&cluster_file(extra));
    let pki = pki(&workspace);
    let spec = spec(extra);
    let server = booted(&pki, &spec, world);
    let ingress = IngressStandIn::start(server.world.clone());
    Running {
        workspace,
        server,
        ingress,
    }
}

/// A finished flatstack run.
#[derive(Debug)]
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Running {
    fn flatstack(&self, args: &[&str]) -> Ran {
        let ingress = self.ingress.address.to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--ingress-address", &ingress]);
        self.flatstack_finding_the_ingress(&all)
    }

    /// Like `flatstack`, leaving flatstack to find the ingress's address itself.
    fn flatstack_finding_the_ingress(&self, args: &[&str]) -> Ran {
        let api = self.server.address.to_string();
        let state = self.workspace.state_dir();
        let mut all: Vec<&str> = args.to_vec();
        all.extend([
            "--api-address",
            &api,
            "--state-dir",
            state.to_str().expect("utf-8"),
        ]);
        let output = self.workspace.flatstack(&all);
        Ran {
            code: output.status.code().unwrap_or(-1),
            stdout: stdout(&output),
            stderr: stderr(&output),
        }
    }

    /// Like `flatstack`, with more environment variables.
    fn flatstack_with(&self, args: &[&str], env: &[(&str, &str)]) -> Ran {
        let state = self.workspace.state_dir();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_flatstack"))
            .current_dir(self.workspace.dir.path())
            .env_remove("FLATSTACK_FILE")
            .env_remove("FLATSTACK_STATE_DIR")
            .envs(env.iter().copied())
            .arg("--file")
            .arg(self.workspace.cluster_file())
            .args(args)
            .args(["--api-address", &self.server.address.to_string()])
            .args(["--ingress-address", &self.ingress.address.to_string()])
            .arg("--state-dir")
            .arg(&state)
            .output()
            .expect("run flatstack");
        Ran {
            code: output.status.code().unwrap_or(-1),
            stdout: stdout(&output),
            stderr: stderr(&output),
        }
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.workspace.path(name), text).expect("write");
    }
}

#[test]
fn jupyterhub_install_upgrade_uninstall_through_the_cli() {
    let world = hub_world();
    let cluster = running(
        "\n[jupyterhub]\nadmin_users = [\"alice\"]\nvalues_file = \"hub.yaml\"\n",
        world,
    );
    cluster.write("hub.yaml", "singleuser:\n  storage:\n    capacity: 25Gi\n");

    let upgrade_first = cluster.flatstack(&["jupyterhub", "upgrade"]);
    assert_eq!(upgrade_first.code, 1, "{upgrade_first:?}");
    assert!(upgrade_first.stderr.contains("JupyterHub is not installed"));

    let install = cluster.flatstack(&["jupyterhub", "install"]);
    assert_eq!(install.code, 0, "{install:?}");
    let url = format!("http://{}/", cluster.ingress.address);
    assert!(
        install.stdout.contains(&format!("hub: {url}")),
        "{}",
        install.stdout
    );
    let password_file = cluster
        .workspace
        .state_dir()
        .join("jupyterhub-user-password");
    let password = std::fs::read_to_string(&password_file).expect("password kept");
    assert_eq!(password.trim().len(), 24);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&password_file)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert!(!install.stdout.contains(password.trim()), "never printed");
    {
        let world = cluster.server.world.lock().expect("world");
        let chart = world
            .object("/apis/helm.cattle.io/v1/namespaces/kube-system/helmcharts/jupyterhub")
            .expect("HelmChart");
        assert_eq!(
            chart["spec"]["version"],
            flatstack::pins::JUPYTERHUB.version
        );
        assert_eq!(chart["spec"]["targetNamespace"], "jupyterhub");
        assert!(
            !chart.to_string().contains(password.trim()),
            "no password in the chart"
        );
        let values = chart_values(&world, "jupyterhub");
        assert_eq!(
            values["singleuser"]["storage"]["capacity"], "25Gi",
            "the user's file wins"
        );
        let secret = world
            .secret_text(
                "/api/v1/namespaces/kube-system/secrets/jupyterhub-credentials",
                "values.yaml",
            )
            .expect("credentials");
        assert!(secret.contains(password.trim()));
    }

    let again = cluster.flatstack(&["jupyterhub", "install"]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(
        again.stderr.contains("already installed"),
        "{}",
        again.stderr
    );

    let unchanged = cluster.flatstack(&["jupyterhub", "upgrade"]);
    assert_eq!(unchanged.code, 0, "{unchanged:?}");
    assert!(
        unchanged.stdout.contains("already current"),
        "{}",
        unchanged.stdout
    );

    cluster.write("hub.yaml", "singleuser:\n  storage:\n    capacity: 30Gi\n");
    let upgrade = cluster.flatstack(&["jupyterhub", "upgrade"]);
    assert_eq!(upgrade.code, 0, "{upgrade:?}");
    assert!(
        upgrade.stdout.contains("JupyterHub upgraded"),
        "{}",
        upgrade.stdout
    );
    assert_eq!(
        std::fs::read_to_string(&password_file).expect("password"),
        password,
        "the same password across upgrades"
    );
    {
        let world = cluster.server.world.lock().expect("world");
        assert_eq!(
            chart_values(&world, "jupyterhub")["singleuser"]["storage"]["capacity"],
            "30Gi"
        );
    }

    // A user's volume claim survives a plain uninstall, and goes with --delete-user-data.
    cluster.server.world.lock().expect("world").objects.insert(
        "/api/v1/namespaces/jupyterhub/persistentvolumeclaims/claim-alice".into(),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "claim-alice", "namespace": "jupyterhub"}}),
    );
    let uninstall = cluster.flatstack(&["jupyterhub", "uninstall"]);
    assert_eq!(uninstall.code, 0, "{uninstall:?}");
    assert!(
        uninstall.stdout.contains("claim-alice"),
        "{}",
        uninstall.stdout
    );
    {
        let world = cluster.server.world.lock().expect("world");
        assert!(
            world
                .object("/apis/helm.cattle.io/v1/namespaces/kube-system/helmcharts/jupyterhub")
                .is_none()
        );
        assert!(
            world
                .object("/apis/apps/v1/namespaces/jupyterhub/deployments/hub")
                .is_none()
        );
        assert!(
            world
                .object("/api/v1/namespaces/kube-system/secrets/jupyterhub-credentials")
                .is_none()
        );
        assert!(
            world
                .seen
                .iter()
                .any(|s| s.method == "DELETE" && s.path.ends_with("/helmcharts/jupyterhub"))
        );
        assert!(world.deleted_namespaces.is_empty());
    }
    let purge = cluster.flatstack(&["jupyterhub", "uninstall", "--delete-user-data"]);
    assert_eq!(purge.code, 0, "{purge:?}");
    let world = cluster.server.world.lock().expect("world");
    assert_eq!(world.deleted_namespaces, ["jupyterhub"]);
    assert!(
        world
            .object("/api/v1/namespaces/jupyterhub/persistentvolumeclaims/claim-alice")
            .is_none()
    );
}

#[test]
fn jupyterhub_refuses_what_cannot_work_before_touching_the_cluster() {
    let cluster = running("\n[addons]\ncinder_csi = false\n", World::default());
    let run = cluster.flatstack(&["jupyterhub", "install"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("addons.cinder_csi = true"),
        "{}",
        run.stderr
    );

    let github = running(
        &format!(
            "\n[ingress]\nhostname = \"{HOSTNAME}\"\nacme_email = \"ops@example.org\"\n[jupyterhub]\nauthenticator = \"github\"\ngithub_client_id = \"Iv1.0123\"\ngithub_client_secret_env = \"FLATSTACK_TEST_UNSET_SECRET\"\n"
        ),
        World::default(),
    );
    let run = github.flatstack(&["jupyterhub", "install"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("FLATSTACK_TEST_UNSET_SECRET is not set"),
        "{}",
        run.stderr
    );

    let bad_values = running(
        "\n[jupyterhub]\nvalues_file = \"hub.yaml\"\n",
        World::default(),
    );
    bad_values.write("hub.yaml", "- just\n- a list\n");
    let run = bad_values.flatstack(&["jupyterhub", "install"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("must hold a mapping"), "{}", run.stderr);
    for cluster in [&cluster, &github, &bad_values] {
        let world = cluster.server.world.lock().expect("world");
        assert!(
            world
                .object("/apis/helm.cattle.io/v1/namespaces/kube-system/helmcharts/jupyterhub")
                .is_none()
        );
    }
}

#[test]
fn smoke_fetches_the_page_through_the_ingress_and_cleans_up() {
    let cluster = running(
        "",
        World {
            deployment_polls: 2,
            ..World::default()
        },
    );
    let run = cluster.flatstack(&["smoke", "--timeout", "60s"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("smoke test passed"), "{}", run.stdout);
    let world = cluster.server.world.lock().expect("world");
    assert_eq!(world.deleted_namespaces.len(), 1);
    let namespace = &world.deleted_namespaces[0];
    assert!(namespace.starts_with("flatstack-smoke-"));
    assert!(
        !world.objects.keys().any(|p| p.contains(namespace.as_str())),
        "nothing left"
    );
}

#[test]
fn smoke_fails_with_the_reason_and_still_cleans_up() {
    let failures = [
        (
            World {
                unpullable_images: vec![flatstack::pins::SMOKE_IMAGE.to_string()],
                ..World::default()
            },
            &["never became ready", "ErrImagePull"][..],
        ),
        (
            World {
                ingress_broken: true,
                ..World::default()
            },
            &["never served the smoke page", "HTTP 404"][..],
        ),
        (
            World {
                ingress_misrouted: true,
                ..World::default()
            },
            &["lacks the smoke token"][..],
        ),
    ];
    for (world, reasons) in failures {
        let cluster = running("", world);
        let run = cluster.flatstack(&["smoke", "--timeout", "8s"]);
        assert_eq!(run.code, 1, "{run:?}");
        for reason in reasons {
            assert!(run.stderr.contains(reason), "{reason} in {}", run.stderr);
        }
        let world = cluster.server.world.lock().expect("world");
        assert_eq!(world.deleted_namespaces.len(), 1, "{reasons:?}");
    }
}

#[test]
fn a_rotated_github_secret_upgrades_the_hub() {
    let world = hub_world();
    let cluster = running(
        &format!(
            "\n[ingress]\nhostname = \"{HOSTNAME}\"\nacme_email = \"ops@example.org\"\n[jupyterhub]\nauthenticator = \"github\"\ngithub_client_id = \"Iv1.0123\"\ngithub_client_secret_env = \"HUB_SECRET\"\n"
        ),
        world,
    );
    let certificate = "/apis/cert-manager.io/v1/namespaces/jupyterhub/certificates/jupyterhub-tls";
    cluster.server.world.lock().expect("world").objects.insert(
        certificate.into(),
        json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
               "metadata": {"name": "jupyterhub-tls", "namespace": "jupyterhub"},
               "status": {"conditions": [{"type": "Ready", "status": "False",
                   "message": "Issuing certificate as Secret does not exist"}]}}),
    );
    let install = cluster.flatstack_with(
        &["jupyterhub", "install"],
        &[("HUB_SECRET", "first-secret")],
    );
    assert_eq!(install.code, 0, "{install:?}");
    assert!(
        install
            .stdout
            .contains("HTTPS certificate: pending: Issuing certificate as Secret does not exist"),
        "{}",
        install.stdout
    );
    cluster
        .server
        .world
        .lock()
        .expect("world")
        .objects
        .get_mut(certificate)
        .expect("certificate")["status"] = json!({"notAfter": "2027-03-01T00:00:00Z", "conditions": [{"type": "Ready", "status": "True"}]});
    assert!(
        install
            .stdout
            .contains(&format!("hub: https://{HOSTNAME}/")),
        "{}",
        install.stdout
    );
    assert!(!install.stdout.contains("first-secret") && !install.stderr.contains("first-secret"));
    let job = "/apis/batch/v1/namespaces/kube-system/jobs/helm-install-jupyterhub";
    let uid = |cluster: &Running| {
        cluster.server.world.lock().expect("world").objects[job]["metadata"]["uid"].clone()
    };
    let first = uid(&cluster);

    let same = cluster.flatstack_with(
        &["jupyterhub", "upgrade"],
        &[("HUB_SECRET", "first-secret")],
    );
    assert!(same.stdout.contains("already current"), "{same:?}");
    assert!(
        same.stdout
            .contains("HTTPS certificate: issued, valid until 2027-03-01T00:00:00Z"),
        "{}",
        same.stdout
    );
    assert_eq!(uid(&cluster), first);

    // Only the Secret changes, yet helm-controller runs Helm again: flatstack waits for that.
    let rotated = cluster.flatstack_with(
        &["jupyterhub", "upgrade"],
        &[("HUB_SECRET", "second-secret")],
    );
    assert_eq!(rotated.code, 0, "{rotated:?}");
    assert!(
        rotated.stdout.contains("JupyterHub upgraded"),
        "{}",
        rotated.stdout
    );
    let world = cluster.server.world.lock().expect("world");
    assert_ne!(world.objects[job]["metadata"]["uid"], first);
    let last = world
        .job_answers
        .iter()
        .rev()
        .find(|(path, _, _)| path == job)
        .expect("read");
    assert!(last.2, "the new Job's success was waited for");
    assert!(
        world
            .secret_text(
                "/api/v1/namespaces/kube-system/secrets/jupyterhub-credentials",
                "values.yaml"
            )
            .expect("credentials")
            .contains("second-secret")
    );
}

#[test]
fn behind_a_load_balancer_smoke_finds_the_address_in_traefiks_service() {
    let cluster = running(
        "\n[ingress]\nexposure = \"load-balancer\"\n",
        World::default(),
    );
    // Before the cloud controller has given the Service an address.
    let service = "/api/v1/namespaces/traefik/services/traefik";
    cluster.server.world.lock().expect("world").objects.insert(
        service.into(),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "traefik", "namespace": "traefik"},
               "spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {}}}),
    );
    let run = cluster.flatstack_finding_the_ingress(&["smoke", "--timeout", "30s"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("load balancer has no address yet"),
        "{}",
        run.stderr
    );
    assert!(
        cluster
            .server
            .world
            .lock()
            .expect("world")
            .deleted_namespaces
            .is_empty(),
        "nothing was deployed without an address to fetch from"
    );

    // The address the cloud controller publishes (here the loopback ingress stand-in's).
    let address = cluster.ingress.address.to_string();
    cluster
        .server
        .world
        .lock()
        .expect("world")
        .objects
        .get_mut(service)
        .expect("service")["status"] =
        json!({"loadBalancer": {"ingress": [{"hostname": address}]}});
    let run = cluster.flatstack_finding_the_ingress(&["smoke", "--timeout", "30s"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .contains(&format!("http://{address}/flatstack-smoke-")),
        "{}",
        run.stdout
    );
}
