//! Every object flatstack applies, checked against upstream schemas rather than against what
//! flatstack expects:
//!
//! - Kubernetes objects against the OpenAPI schema of each supported minor, strictly (no
//!   unknown field, every required one), by the `kubernetes-validate` package from PyPI (its
//!   bundled `v1.N.0-local-strict` schemas are generated from each release's OpenAPI), which
//!   `scripts/test.sh` installs;
//! - HelmCharts against helm-controller v0.17.7's own CRD schema, ClusterIssuers against
//!   cert-manager v1.21.1's, VolumeSnapshotClasses against external-snapshotter v8.6.0's
//!   (`tests/data`, with their sources), made strict the way a structural schema prunes: a
//!   field the schema does not know would be dropped silently by the API server, so here it
//!   is an error;
//! - the values flatstack gives charts without a `values.schema.json` (flannel, the OpenStack
//!   cloud controller and Cinder CSI, the snapshot controller, kured, metrics-server): every
//!   key path must exist in that chart version's `values.yaml`, lie under a map or list whose
//!   default is empty, or be read by its templates (`template-values.txt`), so a renamed key
//!   fails here.
//!
//! The objects are those `flatstack render --out` writes to `manifests/` (what `up` applies)
//! for each supported minor and several cluster files, plus what `jupyterhub` and `smoke`
//! apply.

use std::path::{Path, PathBuf};
use std::process::Command;

use flatstack::addons::jupyterhub::HubCredentials;
use flatstack::pins::{self, KubernetesVersion};
use flatstack::secret::Secret;
use flatstack::spec::ClusterSpec;
use serde_json::{Value, json};

use crate::support::*;

const DEFAULT_KUBERNETES_VALIDATE: &str =
    "/var/tmp/flatstack-kubernetes-validate/bin/kubernetes-validate";

fn kubernetes_validate() -> PathBuf {
    let path = std::env::var_os("FLATSTACK_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KUBERNETES_VALIDATE));
    assert!(
        path.is_file(),
        "{} missing: run scripts/test.sh, which installs kubernetes-validate",
        path.display()
    );
    path
}

/// Problems kubernetes-validate finds in `files` for Kubernetes `minor`, strictly. A kind it
/// has no schema for is a problem too: only built-in kinds are given to it.
fn kubernetes_problems(minor: u32, files: &[PathBuf]) -> Vec<String> {
    if files.is_empty() {
        return Vec::new();
    }
    let output = Command::new(kubernetes_validate())
        .args(["--strict", "--quiet", "-k", &format!("1.{minor}.0")])
        .args(files)
        .output()
        .expect("run kubernetes-validate");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let problems: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("INFO"))
        .map(str::to_string)
        .collect();
    assert!(
        output.status.success() || !problems.is_empty(),
        "kubernetes-validate failed without saying why:\n{text}"
    );
    problems
}

/// `schema` as the API server's pruning makes it: an object that lists its properties has no
/// others (unless it preserves unknown fields).
fn strict(schema: &Value) -> Value {
    let mut schema = schema.clone();
    tighten(&mut schema);
    schema
}

fn tighten(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    let preserves = object.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    if object.contains_key("properties")
        && !object.contains_key("additionalProperties")
        && !preserves
    {
        object.insert("additionalProperties".into(), json!(false));
    }
    for key in ["properties", "additionalProperties", "items"] {
        match object.get_mut(key) {
            Some(Value::Object(children)) if key == "properties" => {
                for child in children.values_mut() {
                    tighten(child);
                }
            }
            Some(child @ Value::Object(_)) => tighten(child),
            _ => {}
        }
    }
}

fn crd_schema(file: &str) -> Value {
    let text = std::fs::read_to_string(format!("tests/data/{file}"))
        .unwrap_or_else(|e| panic!("tests/data/{file}: {e}"));
    let schema: Value = match file.ends_with(".yaml") {
        // A whole CustomResourceDefinition: the schema of its `v1`.
        true => {
            let crd: Value = serde_saphyr::from_str(&text).expect("the CRD is YAML");
            crd["spec"]["versions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == "v1")
                .map(|v| v["schema"]["openAPIV3Schema"].clone())
                .unwrap_or_else(|| panic!("{file} has no v1 schema"))
        }
        false => serde_json::from_str(&text).expect("schema is JSON"),
    };
    strict(&schema)
}

/// The kinds checked against a CRD's schema rather than Kubernetes' own.
const CUSTOM_KINDS: [&str; 3] = ["HelmChart", "ClusterIssuer", "VolumeSnapshotClass"];

/// Problems of a custom resource against its CRD's strict schema (metadata is the API
/// server's to check, as for every kind).
fn custom_resource_problems(object: &Value) -> Vec<String> {
    let file = match object["kind"].as_str() {
        Some("HelmChart") => "helm-controller-v0.17.7/helmchart-crd-schema.json",
        Some("ClusterIssuer") => "cert-manager-v1.21.1/clusterissuer-crd-schema.json",
        Some("VolumeSnapshotClass") => {
            "external-snapshotter-v8.6.0/snapshot.storage.k8s.io_volumesnapshotclasses.yaml"
        }
        other => return vec![format!("no CRD schema for kind {other:?}")],
    };
    let mut schema = crd_schema(file);
    schema["properties"]["metadata"] = json!({"type": "object"});
    let validator = jsonschema::validator_for(&schema).expect("a valid schema");
    validator
        .iter_errors(object)
        .map(|e| {
            format!(
                "{} {}: {e} at {}",
                object["kind"],
                object["metadata"]["name"],
                e.instance_path()
            )
        })
        .collect()
}

/// The values a chart without a schema may be given: key paths of its `values.yaml`, paths
/// under an empty default, and what its templates read.
struct ChartKeys {
    defaults: Value,
    template_paths: Vec<String>,
}

impl ChartKeys {
    fn load(chart: &str, version: &str) -> ChartKeys {
        let dir = Path::new("tests/data").join(format!("{chart}-{version}"));
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| {
                panic!("no upstream data for chart {chart} {version} ({}: {e}): keep its values.yaml and template-values.txt in tests/data", dir.join(name).display())
            })
        };
        ChartKeys {
            defaults: serde_saphyr::from_str(&read("values.yaml")).expect("values.yaml is YAML"),
            template_paths: read("template-values.txt")
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .map(str::to_string)
                .collect(),
        }
    }

    /// Whether the chart knows the key path `path`.
    fn knows(&self, path: &[String]) -> bool {
        let dotted = path.join(".");
        if self
            .template_paths
            .iter()
            .any(|t| *t == dotted || dotted.starts_with(&format!("{t}.")))
        {
            return true;
        }
        let mut here = &self.defaults;
        for key in path {
            let empty = match here {
                Value::Object(map) => map.is_empty(),
                Value::Array(list) => list.is_empty(),
                Value::Null => true,
                _ => false,
            };
            if empty && !std::ptr::eq(here, &self.defaults) {
                return true; // under a map or list whose default is empty
            }
            match here.get(key) {
                Some(next) => here = next,
                None => return false,
            }
        }
        true
    }

    /// The key paths of `values` the chart does not know.
    fn unknown(&self, values: &Value) -> Vec<String> {
        leaf_values(values)
            .into_keys()
            .filter(|p| !self.knows(p))
            .map(|p| p.join("."))
            .collect()
    }
}

/// Charts with a `values.schema.json` of their own are checked against it in `day_one`.
const SCHEMA_CHECKED_ELSEWHERE: [&str; 3] = ["traefik", "cert-manager", "jupyterhub"];

/// Cluster files whose objects differ: tainted workers with the default add-ons; a general
/// pool with Traefik behind a load balancer and Let's Encrypt; a control plane with nothing;
/// three control planes behind a VIP (kube-vip's static pod on each).
fn cluster_variants(version: KubernetesVersion) -> Vec<(&'static str, String)> {
    let base = cluster_text("https://example.invalid/ext", &"ab".repeat(32), 2)
        .replace(KUBERNETES_VERSION, &version.to_string()[1..])
        .replace(SYSEXT_NAME, &version.sysext_file_name());
    let head = base
        .split("[[worker_pools]]")
        .next()
        .unwrap_or_default()
        .to_string();
    vec![
        ("tainted workers", base.clone()),
        (
            "load balancer and Let's Encrypt",
            format!(
                "{head}[[worker_pools]]\nname = \"default\"\ncount = 2\nflavor = \"m3.small\"\n\
                 [ingress]\nexposure = \"load-balancer\"\nhostname = \"hub.example.org\"\nacme_email = \"ops@example.org\"\n"
            ),
        ),
        (
            "control plane only, no add-ons",
            format!(
                "{head}[addons]\ncloud_controller = false\ncinder_csi = false\ningress = false\nmetrics_server = false\nkured = false\n"
            ),
        ),
        (
            "three control planes behind a VIP",
            base.replacen("[control_plane]\n", "[control_plane]\ncount = 3\n", 1),
        ),
    ]
}

/// `render --out` for `text`: the manifests it wrote, in apply order.
fn rendered_manifests(text: &str) -> (Workspace, Vec<PathBuf>) {
    let workspace = Workspace::new();
    workspace.write_cluster(text);
    success(&workspace.render(&["--endpoint", "203.0.113.7"]));
    let dir = workspace.out_dir().join("manifests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("manifests written")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    (workspace, files)
}

fn read_yaml(path: &Path) -> Value {
    serde_saphyr::from_str(&std::fs::read_to_string(path).expect("manifest")).expect("YAML")
}

/// What `jupyterhub install` (both authenticators), `smoke` and a scale-up's join token apply,
/// written as YAML files.
fn hub_and_smoke_manifests(version: KubernetesVersion, dir: &Path) -> Vec<PathBuf> {
    let text = cluster_text("https://example.invalid/ext", &"ab".repeat(32), 2)
        .replace(KUBERNETES_VERSION, &version.to_string()[1..]);
    let shared = ClusterSpec::parse("cluster.toml", &text).expect("valid");
    let github = ClusterSpec::parse(
        "cluster.toml",
        &format!("{text}[ingress]\nhostname = \"hub.example.org\"\nacme_email = \"ops@example.org\"\n[jupyterhub]\nauthenticator = \"github\"\ngithub_client_id = \"Iv1.0123\"\ngithub_allowed_organizations = [\"lab\"]\n"),
    )
    .expect("valid");
    let mut manifests = Vec::new();
    for (spec, credentials) in [
        (
            &shared,
            HubCredentials::SharedPassword {
                user: Secret::new("u"),
                admin: Secret::new("a"),
            },
        ),
        (
            &github,
            HubCredentials::GitHub {
                client_secret: Secret::new("s"),
            },
        ),
    ] {
        let release = flatstack::addons::jupyterhub::release(spec, &credentials, None);
        manifests.push(release.credentials.body().clone());
        manifests.push(release.chart_manifest().body().clone());
    }
    let smoke = flatstack::addons::smoke::Smoke::new("abc123");
    manifests.extend(smoke.manifests.iter().map(|m| m.body().clone()));
    // What `up` applies before new workers join (not in `render`'s manifests: it holds the token).
    let token = flatstack::pki::BootstrapToken::generate().expect("token");
    manifests.push(
        flatstack::apply::bootstrap::join_token_secret(&token, 60)
            .body()
            .clone(),
    );
    // The node Job that starts a host action (privileged, host PID, the host's root).
    let action =
        flatstack::kube::host_action::HostAction::new("upgrade-node", "demo-default-1", "true")
            .expect("valid");
    manifests.push(action.start_manifest().body().clone());
    std::fs::create_dir_all(dir).expect("dir");
    manifests
        .iter()
        .enumerate()
        .map(|(i, body)| {
            let path = dir.join(format!("{i:02}.yaml"));
            std::fs::write(&path, serde_saphyr::to_string(body).expect("yaml")).expect("write");
            path
        })
        .collect()
}

/// Every problem the upstream schemas find in `files` for `minor`.
fn problems(minor: u32, files: &[PathBuf]) -> Vec<String> {
    let (custom, builtin): (Vec<&PathBuf>, Vec<&PathBuf>) = files.iter().partition(|f| {
        let kind = read_yaml(f)["kind"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        CUSTOM_KINDS.contains(&kind.as_str())
    });
    let builtin: Vec<PathBuf> = builtin.into_iter().cloned().collect();
    let mut found = kubernetes_problems(minor, &builtin);
    for file in custom {
        let object = read_yaml(file);
        found.extend(custom_resource_problems(&object));
        let chart = object["spec"]["chart"].as_str().unwrap_or_default();
        if object["kind"] == "HelmChart" && !SCHEMA_CHECKED_ELSEWHERE.contains(&chart) {
            let values: Value =
                serde_json::from_str(object["spec"]["valuesContent"].as_str().unwrap_or("{}"))
                    .expect("values are JSON");
            let version = object["spec"]["version"].as_str().unwrap_or_default();
            for path in ChartKeys::load(chart, version).unknown(&values) {
                found.push(format!("chart {chart} {version} has no value `{path}`"));
            }
        }
    }
    found
}

#[test]
fn every_object_of_every_supported_minor_meets_the_upstream_schemas() {
    let mut checked = 0;
    for supported in pins::SUPPORTED_MINORS {
        let version = KubernetesVersion::new(1, supported.minor, supported.proposed_patch);
        for (variant, text) in cluster_variants(version) {
            let (workspace, files) = rendered_manifests(&text);
            let found = problems(supported.minor, &files);
            assert!(
                found.is_empty(),
                "1.{} {variant}:\n{}",
                supported.minor,
                found.join("\n")
            );
            checked += files.len();
            // Every node config of this minor passes Debian's Ignition validator too, and the
            // static pods it carries (kube-vip's, as the bootstrap script places it) the schema.
            let mut static_pods = Vec::new();
            for config in std::fs::read_dir(workspace.out_dir())
                .expect("out")
                .flatten()
            {
                if config.path().extension().is_some_and(|e| e == "ign") {
                    if let Some(pod) = ignition_file(
                        &read_json(&config.path()),
                        "/etc/flatstack/kube-vip.yaml.in",
                    ) {
                        let pod = String::from_utf8(pod)
                            .expect("UTF-8")
                            .replace("@KUBECONFIG@", "/etc/kubernetes/admin.conf");
                        let path = workspace.path(&format!("kube-vip-{}.yaml", static_pods.len()));
                        std::fs::write(&path, pod).expect("write");
                        static_pods.push(path);
                    }
                    let output = Command::new("ignition-validate")
                        .arg(config.path())
                        .output()
                        .expect("ignition-validate");
                    assert!(
                        output.status.success(),
                        "{}: {}",
                        config.path().display(),
                        String::from_utf8_lossy(&output.stdout)
                    );
                }
            }
            let found = kubernetes_problems(supported.minor, &static_pods);
            assert!(
                found.is_empty(),
                "1.{} {variant} static pods:\n{}",
                supported.minor,
                found.join("\n")
            );
            checked += static_pods.len();
            if variant.starts_with("three control planes") {
                assert_eq!(static_pods.len(), 3, "one kube-vip per control plane");
            }
        }
        let scratch = tempfile::tempdir().expect("tempdir");
        let files = hub_and_smoke_manifests(version, scratch.path());
        let found = problems(supported.minor, &files);
        assert!(
            found.is_empty(),
            "1.{} jupyterhub and smoke:\n{}",
            supported.minor,
            found.join("\n")
        );
        checked += files.len();
    }
    // 3 minors, 4 cluster files, the hub, smoke and a host action: a floor, so a silent skip
    // cannot pass.
    assert!(
        checked >= 3 * (16 + 16 + 3 + 9),
        "only {checked} objects checked"
    );
}

#[test]
fn the_schema_checks_refuse_unknown_fields_missing_required_ones_and_renamed_values() {
    let version = pins::default_kubernetes();
    let (workspace, files) = rendered_manifests(&cluster_variants(version)[0].1);
    let minor = version.minor;
    let find = |kind: &str, name: &str| -> (PathBuf, Value) {
        files
            .iter()
            .map(|f| (f.clone(), read_yaml(f)))
            .find(|(_, v)| v["kind"] == kind && v["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name} rendered"))
    };
    let write = |name: &str, value: &Value| -> PathBuf {
        let path = workspace.path(name);
        std::fs::write(&path, serde_saphyr::to_string(value).expect("yaml")).expect("write");
        path
    };
    // An unknown field and a missing required one in a Kubernetes object.
    let (_, deployment) = find("Deployment", "helm-controller");
    let mut unknown = deployment.clone();
    unknown["spec"]["template"]["spec"]["hostNetwrok"] = json!(true);
    let found = problems(minor, &[write("unknown.yaml", &unknown)]);
    assert!(found.iter().any(|p| p.contains("hostNetwrok")), "{found:?}");
    let mut missing = deployment.clone();
    missing["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("selector");
    let found = problems(minor, &[write("missing.yaml", &missing)]);
    assert!(found.iter().any(|p| p.contains("selector")), "{found:?}");
    // An unknown HelmChart field (helm-controller's CRD has no required ones).
    let (_, flannel) = find("HelmChart", "flannel");
    let mut typo = flannel.clone();
    typo["spec"]["valuesContnet"] = json!("{}");
    let found = problems(minor, &[write("typo.yaml", &typo)]);
    assert!(
        found.iter().any(|p| p.contains("valuesContnet")),
        "{found:?}"
    );
    // A chart value the chart does not have, and one only a template reads.
    let mut renamed = flannel.clone();
    renamed["spec"]["valuesContent"] =
        json!(json!({"podCidrr": "10.244.0.0/16", "podCidr": "10.244.0.0/16"}).to_string());
    let found = problems(minor, &[write("renamed.yaml", &renamed)]);
    assert_eq!(found, ["chart flannel v0.28.9 has no value `podCidrr`"]);
    // A pinned chart version with no upstream data here is a failure, not a pass.
    let unknown_version = std::panic::catch_unwind(|| ChartKeys::load("flannel", "v0.0.1"));
    assert!(unknown_version.is_err());
}
