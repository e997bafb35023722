//! Every field name in the kubeadm configuration flatstack writes exists in the upstream
//! `kubeadm.k8s.io/v1beta4` Go types; the field list is test data that names its source.

use std::collections::{BTreeMap, BTreeSet};

use crate::support::*;

/// `type -> field -> element type` (`inline` entries list embedded structs).
struct Schema {
    fields: BTreeMap<String, BTreeMap<String, String>>,
}

impl Schema {
    fn load() -> Schema {
        Schema::of(include_str!("../data/kubeadm-v1beta4-fields.txt"))
    }

    fn of(text: &str) -> Schema {
        let mut fields: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let parts: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(parts.len(), 3, "bad line in the field list: {line}");
            fields
                .entry(parts[0].to_string())
                .or_default()
                .insert(parts[1].to_string(), parts[2].to_string());
        }
        Schema { fields }
    }

    /// The element type of `field` in `ty`, looking through embedded (inline) structs.
    fn field(&self, ty: &str, field: &str) -> Option<String> {
        let own = self.fields.get(ty)?;
        if let Some(element) = own.get(field)
            && element != "inline"
        {
            return Some(element.clone());
        }
        own.iter()
            .filter(|(_, element)| *element == "inline")
            .find_map(|(embedded, _)| self.field(embedded, field))
    }

    /// Every key path of `value` (of Go type `ty`) that the types do not have.
    fn unknown(&self, ty: &str, value: &serde_json::Value, path: &str, out: &mut BTreeSet<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, child) in map {
                    let here = format!("{path}.{key}");
                    if path.is_empty() && (key == "apiVersion" || key == "kind") {
                        continue;
                    }
                    match self.field(ty, key) {
                        None => {
                            out.insert(format!("{here} (no field `{key}` in {ty})"));
                        }
                        Some(element) if element == "scalar" => {
                            if child.is_object() {
                                out.insert(format!("{here} (a scalar upstream)"));
                            }
                        }
                        Some(element) => self.unknown(&element, child, &here, out),
                    }
                }
            }
            serde_json::Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    self.unknown(ty, item, &format!("{path}[{index}]"), out);
                }
            }
            _ => {}
        }
    }
}

fn kubeadm_documents(node: &str, control_planes: u32) -> Vec<serde_json::Value> {
    let workspace = Workspace::new();
    workspace.write_cluster(
        &cluster_text("https://mirror.example.org/ext", &"ab".repeat(32), 2).replacen(
            "[control_plane]\n",
            &format!("[control_plane]\ncount = {control_planes}\n"),
            1,
        ),
    );
    success(&workspace.render(&["--endpoint", "203.0.113.7"]));
    let config = read_json(&workspace.out_dir().join(format!("{node}.ign")));
    let yaml = ignition_file(&config, "/etc/flatstack/kubeadm.yaml.in").expect("kubeadm config");
    let yaml = String::from_utf8(yaml).expect("utf-8");
    serde_saphyr::from_str_multiple(&yaml).expect("kubeadm config is YAML")
}

fn check(node: &str, control_planes: u32, kinds: &[&str]) -> Vec<serde_json::Value> {
    let schema = Schema::load();
    let documents = kubeadm_documents(node, control_planes);
    let found: Vec<&str> = documents
        .iter()
        .filter_map(|d| d["kind"].as_str())
        .collect();
    assert_eq!(found, kinds);
    let mut unknown = BTreeSet::new();
    for document in &documents {
        assert_eq!(document["apiVersion"], "kubeadm.k8s.io/v1beta4");
        let kind = document["kind"].as_str().expect("kind");
        assert!(
            schema.fields.contains_key(kind),
            "{kind} is not a v1beta4 type"
        );
        schema.unknown(kind, document, "", &mut unknown);
    }
    assert!(
        unknown.is_empty(),
        "fields unknown to kubeadm v1beta4: {unknown:#?}"
    );
    documents
}

/// The EncryptionConfiguration every control plane gets, with the key its bootstrap puts in:
/// every field exists upstream, one provider per element, secretbox first with a 32-byte
/// base64 key (the state directory's, sealed in user_data), identity after it; and the first
/// control plane's kube-apiserver is pointed at it through kubeadm.
#[test]
fn control_planes_encrypt_secrets_with_a_configuration_upstream_reads() {
    use base64::Engine as _;
    let schema = Schema::of(include_str!(
        "../data/encryption-configuration-v1-fields.txt"
    ));
    let workspace = Workspace::new();
    workspace.write_cluster(
        &cluster_text("https://mirror.example.org/ext", &"ab".repeat(32), 1).replacen(
            "[control_plane]\n",
            "[control_plane]\ncount = 3\n",
            1,
        ),
    );
    success(&workspace.render(&["--endpoint", "203.0.113.7"]));
    let state_key =
        std::fs::read_to_string(workspace.state_dir().join("pki/secrets-encryption.key"))
            .expect("the state directory's Secrets key");
    let (name, key) = state_key.trim().split_once(' ').expect("name and key");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(key)
            .expect("base64")
            .len(),
        32
    );
    for node in [
        "demo-control-plane-1",
        "demo-control-plane-2",
        "demo-control-plane-3",
    ] {
        let config = read_json(&workspace.out_dir().join(format!("{node}.ign")));
        let template = String::from_utf8(
            ignition_file(&config, "/etc/flatstack/encryption-config.yaml.in").expect("template"),
        )
        .expect("utf-8");
        // The key travels sealed only: no file of the config holds it in clear.
        for file in config["storage"]["files"].as_array().expect("files") {
            let path = file["path"].as_str().expect("path");
            let contents = ignition_file(&config, path).unwrap_or_default();
            assert!(
                !contents.windows(key.len()).any(|w| w == key.as_bytes()),
                "{node}: {path} holds the key in clear"
            );
        }
        // What the bootstrap writes: the template with the key put in.
        let written = template.replace("@SECRETS_KEY@", key);
        let document: serde_json::Value = serde_saphyr::from_str(&written).expect("YAML");
        assert_eq!(document["apiVersion"], "apiserver.config.k8s.io/v1");
        assert_eq!(document["kind"], "EncryptionConfiguration");
        let mut unknown = BTreeSet::new();
        schema.unknown("EncryptionConfiguration", &document, "", &mut unknown);
        assert!(unknown.is_empty(), "{unknown:#?}");
        let providers = document["resources"][0]["providers"]
            .as_array()
            .expect("providers");
        for provider in providers {
            assert_eq!(provider.as_object().map(|o| o.len()), Some(1), "{provider}");
        }
        assert_eq!(providers[0]["secretbox"]["keys"][0]["name"], name);
        assert_eq!(providers[0]["secretbox"]["keys"][0]["secret"], key);
        assert_eq!(providers[1]["identity"], serde_json::json!({}));
        assert!(
            ignition_file(&config, "/etc/flatstack/secrets-encryption.key.sealed").is_some(),
            "the key is sealed for the node"
        );
    }
    let documents = kubeadm_documents("demo-control-plane-1", 1);
    assert_eq!(
        documents[1]["apiServer"]["extraArgs"],
        serde_json::json!([{"name": "encryption-provider-config",
            "value": "/etc/kubernetes/pki/encryption/config.yaml"}])
    );
    let worker = read_json(&workspace.out_dir().join("demo-default-1.ign"));
    assert!(ignition_file(&worker, "/etc/flatstack/encryption-config.yaml.in").is_none());
}

#[test]
fn control_plane_config_uses_only_v1beta4_fields() {
    check(
        "demo-control-plane-1",
        1,
        &["InitConfiguration", "ClusterConfiguration"],
    );
}

#[test]
fn worker_config_uses_only_v1beta4_fields() {
    check("demo-default-1", 1, &["JoinConfiguration"]);
}

/// With three control planes the first initializes, naming every address the API is reached
/// by (later joins read this ClusterConfiguration from the cluster); the others join as
/// control planes through the endpoint, with no certificate key (the CAs are delivered).
#[test]
fn joining_control_planes_use_only_v1beta4_fields() {
    let init = check(
        "demo-control-plane-1",
        3,
        &["InitConfiguration", "ClusterConfiguration"],
    );
    assert_eq!(init[1]["controlPlaneEndpoint"], "10.42.0.10:6443");
    let sans: Vec<&str> = init[1]["apiServer"]["certSANs"]
        .as_array()
        .expect("certSANs")
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    for san in [
        "10.42.0.10",
        "203.0.113.7",
        "demo-control-plane-1",
        "10.42.0.11",
        "demo-control-plane-2",
        "10.42.0.12",
        "demo-control-plane-3",
        "10.42.0.13",
        "127.0.0.1",
    ] {
        assert!(sans.contains(&san), "{san} in {sans:?}");
    }
    for node in ["demo-control-plane-2", "demo-control-plane-3"] {
        let join = check(node, 3, &["JoinConfiguration"]);
        assert_eq!(
            join[0]["discovery"]["bootstrapToken"]["apiServerEndpoint"],
            "10.42.0.10:6443"
        );
        assert_eq!(
            join[0]["controlPlane"],
            serde_json::json!({ "localAPIEndpoint": { "bindPort": 6443 } })
        );
    }
    let worker = check("demo-default-1", 3, &["JoinConfiguration"]);
    assert!(worker[0].get("controlPlane").is_none());
}

#[test]
fn the_check_catches_a_misspelt_field() {
    let schema = Schema::load();
    let bad = serde_json::json!({
        "kind": "ClusterConfiguration",
        "apiServer": { "certSans": ["x"], "extraArgs": [{ "name": "a", "value": "b" }] },
        "networking": { "podSubnet": "10.244.0.0/16" }
    });
    let mut unknown = BTreeSet::new();
    schema.unknown("ClusterConfiguration", &bad, "", &mut unknown);
    assert_eq!(unknown.len(), 1, "{unknown:?}");
    assert!(
        unknown
            .iter()
            .next()
            .is_some_and(|u| u.starts_with(".apiServer.certSans"))
    );
}

/// helm-controller and the bootstrap charts' Jobs talk to `https://127.0.0.1:6443` with TLS
/// verified against the cluster CA: that works only because the API server's certificate
/// names 127.0.0.1, which kubeadm's defaults do not (`GetAPIServerAltNames`).
#[test]
fn the_api_servers_certificate_names_the_loopback_address_helm_controller_uses() {
    let documents = kubeadm_documents("demo-control-plane-1", 1);
    let cluster = documents
        .iter()
        .find(|d| d["kind"] == "ClusterConfiguration")
        .expect("ClusterConfiguration");
    let sans: Vec<&str> = cluster["apiServer"]["certSANs"]
        .as_array()
        .expect("certSANs")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(sans.contains(&"127.0.0.1"), "{sans:?}");
    assert!(
        sans.contains(&"203.0.113.7"),
        "the floating IP too: {sans:?}"
    );
}
