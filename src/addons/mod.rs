//! The add-ons of a cluster, as the Kubernetes objects flatstack applies: the in-cluster Helm
//! engine (k3s-io/helm-controller), the `cloud-config` Secret the OpenStack add-ons read, and
//! one `HelmChart` per add-on — flannel, openstack-cloud-controller-manager, Cinder CSI with the
//! default StorageClass, the CSI snapshot controller with the default VolumeSnapshotClass,
//! Traefik and cert-manager, kured, metrics-server, and JupyterHub on request — carrying the values a kubeadm cluster of Flatcar nodes with an external cloud
//! provider needs. Charts are fetched by the cluster itself, at the versions in
//! [`crate::pins`]; nothing upstream is copied into flatstack.

mod cloud_conf;
mod helm_chart;
pub mod ingress;
pub mod jupyterhub;
pub mod smoke;
pub(crate) mod snapshots;
pub(crate) mod updates;

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, EnvVarSource, Namespace, ObjectFieldSelector, PodSpec,
    PodTemplateSpec, Secret, ServiceAccount, Toleration,
};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde_json::json;
use sha2::{Digest, Sha256};

pub use cloud_conf::{CloudConf, CloudConfInputs, cloud_conf};
pub(crate) use helm_chart::{HelmChart, HelmChartSpec, HelmChartStatus, ValuesSecret};

use crate::kube::{Manifest, UNINITIALIZED_TAINT};
use crate::pins::{self, Chart};
use crate::spec::ClusterSpec;

/// Where flatstack's own objects and the helm-controller live.
pub(crate) const NAMESPACE: &str = "kube-system";
/// The Secret with `cloud.conf` that the cloud controller and Cinder CSI mount.
pub(crate) const CLOUD_CONFIG_SECRET: &str = "cloud-config";
/// The ConfigMap recording what flatstack last applied (a keyed digest, no content).
pub(crate) const RECORD_CONFIGMAP: &str = "flatstack";
/// helm-controller's bootstrap Jobs select control planes by this label with value `true` (as
/// k3s and RKE2 set it); kubeadm sets it with an empty value, so flatstack sets `true`.
pub(crate) const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";

#[derive(Debug, thiserror::Error)]
pub enum AddonError {
    #[error(
        "no cloud controller and Cinder CSI charts are pinned for Kubernetes {0}\n  hint: use a Kubernetes release of a supported minor ({list})",
        list = pins::supported_minors_list()
    )]
    Unpinned(crate::pins::KubernetesVersion),
}

/// Everything to apply, in order, and the charts to wait for.
#[derive(Debug, Clone)]
pub struct AddonSet {
    pub manifests: Vec<Manifest>,
    /// Names of the HelmCharts (in [`NAMESPACE`]) whose install Jobs must succeed.
    pub charts: Vec<String>,
    /// Objects of kinds a chart installs (cert-manager's ClusterIssuer): applied once the
    /// charts are in.
    pub after_charts: Vec<Manifest>,
    /// Keyed digest of every manifest: equal digests mean nothing to apply.
    pub digest: String,
    /// The key of the cluster's record of settled charts.
    pub(crate) record_key: crate::apply::record::RecordKey,
    /// The control planes are the cluster's only nodes for ordinary pods (no worker pool
    /// takes them), so they must be members of the cloud controller's load balancers.
    pub(crate) control_planes_serve_load_balancers: bool,
}

/// The add-on objects of `spec`'s cluster. `cloud_conf` holds the credentials; `digest_key`
/// is a secret only flatstack holds, so the recorded digest says nothing about the credentials.
pub fn for_cluster(
    spec: &ClusterSpec,
    cloud_conf: &CloudConf,
    digest_key: &[u8],
) -> Result<AddonSet, AddonError> {
    let version = spec.kubernetes.version;
    let mut manifests = helm_controller();
    manifests.push(Manifest::of(&Namespace {
        metadata: ObjectMeta {
            name: Some("kube-flannel".into()),
            // flannel's DaemonSet needs host networking and NET_ADMIN.
            labels: Some(labels(&[(
                "pod-security.kubernetes.io/enforce",
                "privileged",
            )])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }));
    manifests.push(Manifest::of(&chart(
        "flannel",
        pins::FLANNEL,
        "kube-flannel",
        true,
        json!({
            "podCidr": spec.network.pod_cidr.to_string(),
            "flannel": { "backend": "vxlan" },
        }),
    )));
    let openstack_add_ons = spec.addons.cloud_controller || spec.addons.cinder_csi;
    let cloud_config_digest = cloud_conf.digest(digest_key);
    if openstack_add_ons {
        manifests.push(Manifest::of(&secret(
            meta(CLOUD_CONFIG_SECRET, Some(NAMESPACE)),
            "Opaque",
            [
                ("cloud.conf", Some(cloud_conf.text.expose())),
                ("ca.crt", cloud_conf.ca_bundle.as_deref()),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?))),
        )));
    }
    if spec.addons.cloud_controller {
        let occm = pins::cloud_controller_chart(version).ok_or(AddonError::Unpinned(version))?;
        manifests.push(Manifest::of(&chart(
            "openstack-cloud-controller-manager",
            occm,
            NAMESPACE,
            true,
            cloud_controller_values(spec, &cloud_config_digest),
        )));
    }
    if spec.addons.cinder_csi {
        let csi = pins::cinder_csi_chart(version).ok_or(AddonError::Unpinned(version))?;
        manifests.push(Manifest::of(&chart(
            "openstack-cinder-csi",
            csi,
            NAMESPACE,
            false,
            cinder_csi_values(spec, &cloud_config_digest),
        )));
    }
    let mut after_charts = Vec::new();
    if spec.addons.cinder_csi {
        manifests.push(Manifest::of(&chart(
            "snapshot-controller",
            pins::SNAPSHOT_CONTROLLER,
            NAMESPACE,
            false,
            snapshots::controller_values(),
        )));
        after_charts.push(snapshots::default_class());
    }
    if spec.addons.ingress {
        manifests.push(namespace(
            ingress::TRAEFIK_NAMESPACE,
            ingress::traefik_pod_security(&spec.ingress),
        ));
        manifests.push(Manifest::of(&chart(
            "traefik",
            pins::TRAEFIK,
            ingress::TRAEFIK_NAMESPACE,
            false,
            ingress::traefik_values(&spec.ingress),
        )));
        if let Some(acme) = &spec.ingress.acme {
            manifests.push(namespace(ingress::CERT_MANAGER_NAMESPACE, "restricted"));
            manifests.push(Manifest::of(&chart(
                "cert-manager",
                pins::CERT_MANAGER,
                ingress::CERT_MANAGER_NAMESPACE,
                false,
                ingress::cert_manager_values(),
            )));
            after_charts.push(ingress::cluster_issuer(acme));
        }
    }
    if spec.addons.kured {
        manifests.push(Manifest::of(&chart(
            "kured",
            pins::KURED,
            NAMESPACE,
            false,
            updates::kured_values(&spec.updates, &spec.worker_pools),
        )));
    }
    if spec.addons.metrics_server {
        manifests.push(Manifest::of(&chart(
            "metrics-server",
            pins::METRICS_SERVER,
            NAMESPACE,
            false,
            metrics_server_values(),
        )));
    }
    // Every chart's install Job is waited for, in the order they are applied.
    let charts = manifests
        .iter()
        .filter(|m| m.kind() == "HelmChart")
        .map(|m| m.name().to_string())
        .collect();
    let digest = digest(manifests.iter().chain(&after_charts), digest_key);
    Ok(AddonSet {
        manifests,
        charts,
        after_charts,
        digest,
        record_key: crate::apply::record::RecordKey::derive(digest_key),
        control_planes_serve_load_balancers: !spec.has_general_workers(),
    })
}

/// `set` with the backup objects (see [`crate::backup::objects`]) added before the record of
/// what was applied, its digest made afresh.
pub(crate) fn with_backups(
    mut set: AddonSet,
    backup: Vec<Manifest>,
    digest_key: &[u8],
) -> AddonSet {
    set.manifests.extend(backup);
    set.digest = digest(set.manifests.iter().chain(&set.after_charts), digest_key);
    set
}

/// What stands in `cloud.conf` where no credentials may go: `render`'s review copy of the
/// objects `up` applies.
pub(crate) const CREDENTIALS_MARKER: &str =
    "<cloud.conf: written by `flatstack up` from the credentials it logs in with; never on disk>";

/// The add-on objects of `spec`'s cluster as `up` applies them, with the credentials replaced
/// by [`CREDENTIALS_MARKER`]: for review and audit, never for applying.
pub(crate) fn for_review(spec: &ClusterSpec, digest_key: &[u8]) -> Result<AddonSet, AddonError> {
    let marker = CloudConf {
        text: crate::secret::Secret::new(CREDENTIALS_MARKER.to_string()),
        ca_bundle: None,
    };
    for_cluster(spec, &marker, digest_key)
}

/// Every object of `set` in the order `up` applies them: the add-ons, what needs their CRDs,
/// then the record of what was applied.
pub(crate) fn in_apply_order(set: &AddonSet) -> Vec<Manifest> {
    set.manifests
        .iter()
        .chain(&set.after_charts)
        .cloned()
        .chain(std::iter::once(record(&set.digest)))
        .collect()
}

/// metrics-server: the pinned image, and kubelets reached by their internal address. kubeadm's
/// kubelets serve certificates they sign themselves, which no cluster CA vouches for, so
/// metrics-server does not verify them (`--kubelet-insecure-tls`); the kubelets still
/// authenticate metrics-server by its service-account token.
fn metrics_server_values() -> serde_json::Value {
    json!({
        "image": { "tag": pins::METRICS_SERVER_IMAGE_TAG },
        "args": ["--kubelet-insecure-tls"],
        "defaultArgs": [
            "--cert-dir=/tmp",
            "--kubelet-preferred-address-types=InternalIP",
            "--kubelet-use-node-status-port",
            "--metric-resolution=15s",
        ],
    })
}

/// One replica of `pod` as Deployment `namespace/name`, its pods labelled and selected by
/// `app.kubernetes.io/name=<name>`.
pub(crate) fn deployment(name: &str, namespace: &str, pod: PodSpec) -> Deployment {
    let app = labels(&[("app.kubernetes.io/name", name)]);
    Deployment {
        metadata: meta(name, Some(namespace)),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(app.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(app),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// A namespace whose pods are held to a Pod Security Standard level.
pub(crate) fn namespace(name: &str, level: &str) -> Manifest {
    let mut meta = meta(name, None);
    if let Some(labels) = meta.labels.as_mut() {
        labels.insert("pod-security.kubernetes.io/enforce".into(), level.into());
    }
    Manifest::of(&Namespace {
        metadata: meta,
        ..Namespace::default()
    })
}

/// Deep-merges `overlay` into `base` as Helm merges values files: objects key by key, anything
/// else (lists included) replaced. A `null` stays `null`, which tells Helm to drop the chart's
/// own default for that key too.
pub fn merge_values(base: &mut serde_json::Value, overlay: &serde_json::Value) {
    match (base.as_object_mut(), overlay.as_object()) {
        (Some(base), Some(overlay)) => {
            for (key, value) in overlay {
                merge_values(base.entry(key.clone()).or_insert(json!({})), value);
            }
        }
        _ => *base = overlay.clone(),
    }
}

/// The record of a new cluster as `render` shows it: the add-ons' digest (the charts' entries
/// follow as their Jobs succeed).
pub(crate) fn record(digest: &str) -> Manifest {
    record_manifest(BTreeMap::from([(
        "addons-digest".to_string(),
        digest.to_string(),
    )]))
}

/// The ConfigMap recording what flatstack applied (`apply::record`): digests and Job UIDs,
/// never content.
pub(crate) fn record_manifest(mut data: BTreeMap<String, String>) -> Manifest {
    data.insert(
        "applied-by".to_string(),
        concat!("flatstack ", env!("CARGO_PKG_VERSION")).to_string(),
    );
    Manifest::of(&ConfigMap {
        metadata: meta(RECORD_CONFIGMAP, Some(NAMESPACE)),
        data: Some(data),
        ..ConfigMap::default()
    })
}

/// The in-cluster Helm engine: a service account bound to cluster-admin (helm installs
/// anything), and the controller on a control plane's host network, tolerating every taint,
/// talking to the local API server directly — it must run before there is a pod network.
fn helm_controller() -> Vec<Manifest> {
    let name = "helm-controller";
    let env = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    };
    let deployment = deployment(
        name,
        NAMESPACE,
        PodSpec {
            service_account_name: Some(name.into()),
            host_network: Some(true),
            priority_class_name: Some("system-cluster-critical".into()),
            node_selector: Some(labels(&[(CONTROL_PLANE_LABEL, "true")])),
            tolerations: Some(vec![Toleration {
                operator: Some("Exists".into()),
                ..Toleration::default()
            }]),
            containers: vec![Container {
                name: name.into(),
                image: Some(pins::HELM_CONTROLLER_IMAGE.into()),
                command: Some(vec!["helm-controller".into()]),
                env: Some(vec![
                    EnvVar {
                        name: "NODE_NAME".into(),
                        value_from: Some(EnvVarSource {
                            field_ref: Some(ObjectFieldSelector {
                                field_path: "spec.nodeName".into(),
                                ..ObjectFieldSelector::default()
                            }),
                            ..EnvVarSource::default()
                        }),
                        ..EnvVar::default()
                    },
                    env("JOB_CLUSTER_ROLE", "cluster-admin"),
                    env("DEFAULT_JOB_IMAGE", pins::HELM_JOB_IMAGE),
                    // The API server on this host: no Service routing needed yet.
                    env("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
                    env("KUBERNETES_SERVICE_PORT", "6443"),
                ]),
                ..Container::default()
            }],
            ..PodSpec::default()
        },
    );
    vec![
        Manifest::of(&ServiceAccount {
            metadata: meta(name, Some(NAMESPACE)),
            ..ServiceAccount::default()
        }),
        Manifest::of(&ClusterRoleBinding {
            metadata: meta(name, None),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: "cluster-admin".into(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: name.into(),
                namespace: Some(NAMESPACE.into()),
                ..Subject::default()
            }]),
        }),
        Manifest::of(&deployment),
    ]
}

/// The pod annotation carrying a keyed digest of `cloud.conf`: the cloud controller and Cinder
/// CSI read the Secret once, when they start, and their charts' own checksums cover only their
/// values, so a new digest here is what rolls their pods onto rotated credentials.
pub(crate) const CLOUD_CONFIG_DIGEST_ANNOTATION: &str = "checksum/cloud-config";

/// openstack-cloud-controller-manager: credentials from our Secret (never in chart values),
/// control planes labelled `true`, tolerating the taints of nodes it has yet to initialize,
/// no flexvolume host path (it would be under Flatcar's read-only `/usr`), no route
/// controller (flannel's VXLAN routes pods itself).
fn cloud_controller_values(spec: &ClusterSpec, cloud_config_digest: &str) -> serde_json::Value {
    json!({
        "podAnnotations": { CLOUD_CONFIG_DIGEST_ANNOTATION: cloud_config_digest },
        "secret": { "enabled": true, "create": false, "name": CLOUD_CONFIG_SECRET },
        "cluster": { "name": spec.name },
        "nodeSelector": { CONTROL_PLANE_LABEL: "true" },
        "tolerations": [
            { "key": UNINITIALIZED_TAINT, "value": "true", "effect": "NoSchedule" },
            { "key": CONTROL_PLANE_LABEL, "operator": "Exists", "effect": "NoSchedule" },
            { "key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoSchedule" },
        ],
        "enabledControllers": ["cloud-node", "cloud-node-lifecycle", "service"],
        "extraVolumes": [
            { "name": "k8s-certs", "hostPath": { "path": "/etc/kubernetes/pki" } },
        ],
        "extraVolumeMounts": [
            { "name": "k8s-certs", "mountPath": "/etc/kubernetes/pki", "readOnly": true },
        ],
    })
}

/// Cinder CSI: the same Secret, volumes tagged with the cluster's name (so `down
/// --delete-volumes` finds them), a default StorageClass that deletes volumes with their
/// claims and a retaining one, and no `/etc/cacert` host path (absent on Flatcar).
fn cinder_csi_values(spec: &ClusterSpec, cloud_config_digest: &str) -> serde_json::Value {
    let annotations = json!({ CLOUD_CONFIG_DIGEST_ANNOTATION: cloud_config_digest });
    json!({
        "secret": { "enabled": true, "create": false, "name": CLOUD_CONFIG_SECRET, "hostMount": false },
        "clusterID": spec.name,
        "storageClass": {
            "enabled": true,
            "delete": { "isDefault": true, "allowVolumeExpansion": true },
            "retain": { "isDefault": false, "allowVolumeExpansion": true },
        },
        "csi": { "plugin": {
            "volumes": [],
            "volumeMounts": [
                { "name": "cloud-config", "mountPath": "/etc/config", "readOnly": true },
            ],
            "controllerPlugin": { "podAnnotations": annotations },
            "nodePlugin": { "podAnnotations": annotations },
        } },
    })
}

pub(crate) fn chart(
    name: &str,
    pinned: Chart,
    target_namespace: &str,
    bootstrap: bool,
    values: serde_json::Value,
) -> HelmChart {
    HelmChart {
        metadata: meta(name, Some(NAMESPACE)),
        spec: HelmChartSpec {
            chart: pinned.name.into(),
            repo: pinned.repo.into(),
            version: pinned.version.into(),
            target_namespace: target_namespace.into(),
            create_namespace: false,
            bootstrap,
            values_content: serde_json::to_string_pretty(&values).unwrap_or_default(),
            values_secrets: Vec::new(),
            timeout: None,
            failure_policy: None,
        },
        status: HelmChartStatus::default(),
    }
}

/// A Secret of `type_` holding `entries` as `data`. Never `stringData`: server-side apply
/// converts it to `data` on write but tracks ownership of the `stringData` keys, so a key
/// dropped from a later apply would stay in `data` (kubernetes/kubernetes#108008, closed
/// without a fix).
pub(crate) fn secret<'a>(
    metadata: ObjectMeta,
    type_: &str,
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Secret {
    Secret {
        metadata,
        type_: Some(type_.into()),
        data: Some(
            entries
                .into_iter()
                .map(|(key, value)| (key.to_string(), ByteString(value.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

pub(crate) fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        labels: Some(labels(&[("app.kubernetes.io/managed-by", "flatstack")])),
        ..ObjectMeta::default()
    }
}

pub(crate) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn digest<'a>(manifests: impl Iterator<Item = &'a Manifest>, key: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(key);
    for manifest in manifests {
        hasher.update(manifest.object_path().as_bytes());
        hasher.update(manifest.body().to_string().as_bytes());
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::test_spec as spec;

    fn conf() -> CloudConf {
        CloudConf {
            text: crate::secret::Secret::new("[Global]\n"),
            ca_bundle: None,
        }
    }

    /// Every string in `value`, depth first.
    fn strings(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
            serde_json::Value::Object(map) => map.values().for_each(|v| strings(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_add_on_is_a_pinned_chart_in_its_namespace() {
        let set = for_cluster(
            &spec("[ingress]\nhostname = \"hub.example.org\"\nacme_email = \"a@example.org\"\n"),
            &conf(),
            b"key",
        )
        .expect("add-ons");
        let charts: Vec<(String, String, String)> = set
            .manifests
            .iter()
            .filter(|m| m.kind() == "HelmChart")
            .map(|m| {
                let spec = &m.body()["spec"];
                (
                    m.name().to_string(),
                    spec["targetNamespace"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    spec["version"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let expected = [
            ("flannel", "kube-flannel", pins::FLANNEL.version),
            ("openstack-cloud-controller-manager", NAMESPACE, "2.36.0"),
            ("openstack-cinder-csi", NAMESPACE, "2.36.0"),
            (
                "snapshot-controller",
                NAMESPACE,
                pins::SNAPSHOT_CONTROLLER.version,
            ),
            ("traefik", "traefik", pins::TRAEFIK.version),
            ("cert-manager", "cert-manager", pins::CERT_MANAGER.version),
            ("kured", NAMESPACE, pins::KURED.version),
            ("metrics-server", NAMESPACE, pins::METRICS_SERVER.version),
        ];
        let expected: Vec<(String, String, String)> = expected
            .iter()
            .map(|(n, ns, v)| (n.to_string(), ns.to_string(), v.to_string()))
            .collect();
        assert_eq!(charts, expected);
        assert_eq!(
            set.charts,
            expected
                .iter()
                .map(|(n, _, _)| n.clone())
                .collect::<Vec<_>>()
        );
        let after: Vec<&str> = set.after_charts.iter().map(|m| m.kind()).collect();
        assert_eq!(after, ["VolumeSnapshotClass", "ClusterIssuer"]);
        // Every namespace a chart installs into exists before the chart (or is kube-system).
        for (_, namespace, _) in &expected {
            let made = set
                .manifests
                .iter()
                .any(|m| m.kind() == "Namespace" && m.name() == namespace);
            assert!(made || namespace == NAMESPACE, "{namespace}");
        }
        for manifest in &set.manifests {
            let mut texts = Vec::new();
            strings(manifest.body(), &mut texts);
            if let Some(values) = manifest.body()["spec"]["valuesContent"].as_str() {
                let values: serde_json::Value = serde_json::from_str(values).expect("JSON");
                strings(&values, &mut texts);
            }
            for text in &texts {
                // Flatcar's /usr is read-only: no add-on may mount or write below it.
                assert!(!text.starts_with("/usr"), "{manifest}: {text}");
                assert!(!text.ends_with(":latest"), "{manifest}: {text}");
            }
        }
    }

    #[test]
    fn turned_off_add_ons_are_not_applied() {
        let set = for_cluster(
            &spec("[addons]\ningress = false\nkured = false\nmetrics_server = false\n"),
            &conf(),
            b"key",
        )
        .expect("add-ons");
        assert_eq!(
            set.charts,
            [
                "flannel",
                "openstack-cloud-controller-manager",
                "openstack-cinder-csi",
                "snapshot-controller",
            ]
        );
        let after: Vec<&str> = set.after_charts.iter().map(|m| m.kind()).collect();
        assert_eq!(after, ["VolumeSnapshotClass"]);
        // Without Cinder CSI there is nothing to snapshot, and no controller for it.
        let set = for_cluster(
            &spec(
                "[addons]
ingress = false
kured = false
metrics_server = false
cinder_csi = false
",
            ),
            &conf(),
            b"key",
        )
        .expect("add-ons");
        assert_eq!(
            set.charts,
            ["flannel", "openstack-cloud-controller-manager"]
        );
        assert!(set.after_charts.is_empty());
    }

    /// The digest of `cloud.conf` in the pod annotations of the cloud controller and both
    /// Cinder CSI plugins: new credentials roll their pods; the digest reveals nothing.
    #[test]
    fn rotated_credentials_change_the_pod_annotations_of_both_openstack_charts() {
        let spec = spec("");
        let with = |text: &str| {
            let conf = CloudConf {
                text: crate::secret::Secret::new(text),
                ca_bundle: None,
            };
            let set = for_cluster(&spec, &conf, b"key").expect("add-ons");
            let values = |name: &str| -> serde_json::Value {
                let chart = set
                    .manifests
                    .iter()
                    .find(|m| m.kind() == "HelmChart" && m.name() == name)
                    .expect("chart");
                serde_json::from_str(
                    chart.body()["spec"]["valuesContent"]
                        .as_str()
                        .expect("values"),
                )
                .expect("JSON")
            };
            let occm = values("openstack-cloud-controller-manager");
            let csi = values("openstack-cinder-csi");
            let annotation = |v: &serde_json::Value| {
                v[CLOUD_CONFIG_DIGEST_ANNOTATION]
                    .as_str()
                    .expect("annotation")
                    .to_string()
            };
            let digests = [
                annotation(&occm["podAnnotations"]),
                annotation(&csi["csi"]["plugin"]["controllerPlugin"]["podAnnotations"]),
                annotation(&csi["csi"]["plugin"]["nodePlugin"]["podAnnotations"]),
            ];
            assert!(digests.iter().all(|d| d == &digests[0] && d.len() == 64));
            assert!(!occm.to_string().contains("password"));
            digests[0].clone()
        };
        let first = with("[Global]\napplication-credential-secret = \"one\"\n");
        assert_eq!(
            first,
            with("[Global]\napplication-credential-secret = \"one\"\n")
        );
        assert_ne!(
            first,
            with("[Global]\napplication-credential-secret = \"two\"\n")
        );
    }

    #[test]
    fn merge_values_follows_helm() {
        let mut base = json!({"a": {"b": 1, "c": [1, 2]}, "d": 1});
        merge_values(&mut base, &json!({"a": {"c": [3], "e": true}, "d": null}));
        assert_eq!(base, json!({"a": {"b": 1, "c": [3], "e": true}, "d": null}));
    }
}
