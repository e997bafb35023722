//! A loopback stand-in for a new cluster's Kubernetes API server, because no real one can run
//! here. It speaks HTTPS with a serving certificate from the cluster's own CA, demands a client
//! certificate from that CA, and answers with objects built from the k8s-openapi types. Behind
//! it, a model of what the cluster would do, made to behave as the real components do wherever
//! flatstack depends on them. A model we wrote is not a witness: every behaviour below follows
//! the upstream source named, and `behaviour.rs` checks the model itself against it.
//!
//! | behaviour | upstream source | tests relying on it |
//! | --- | --- | --- |
//! | custom resources 404 (plain text) until their CRD exists; names accepted at once, established next | apiextensions-apiserver `pkg/apiserver/customresource_handler.go`, `pkg/controller/establish/establishing_controller.go` | `behaviour::custom_resources_…`, `bootstrap::bootstrap_applies_…` (flatstack waits for the CRD), `day_one::up_installs_…` (ClusterIssuer after cert-manager; VolumeSnapshotClass after the snapshot controller) |
//! | helm-controller creates the HelmChart CRDs when its process starts, before its controllers run (half a second after it can run) | k3s-io/helm-controller v0.17.7 `pkg/cmd/cmd.go` (`crd.BatchCreateCRDs` before `controllers.Register`) | `bootstrap::bootstrap_applies_…` |
//! | CRD schema defaults filled in on write, returned on read (HelmChart: `failurePolicy: reinstall`) | apiextensions-apiserver `pkg/apiserver/schema/defaulting/algorithm.go`; helm-controller v0.17.7 CRD (`tests/data/helm-controller-v0.17.7`) | `behaviour::custom_resources_…`, `day_one::a_changed_chart_…` (an unchanged chart is not waited for) |
//! | server-side apply: conflicts (409 unless forced), shared ownership, hand-over on force and on update, fields no longer applied removed | apiserver `pkg/endpoints/handlers/fieldmanager`, structured-merge-diff `merge/update.go`, `merge/conflict.go` | `behaviour::field_ownership_…`, `behaviour::fields_a_manager_…`; every flatstack apply (field manager `flatstack`, `force=true`) |
//! | `uid` and `creationTimestamp` at creation; `resourceVersion` only on a write that changes the object; `generation` 1, bumped by changes outside metadata and status | apiserver `pkg/registry/rest/create.go`, `pkg/storage/etcd3/store.go` (`GuaranteedUpdate`), apiextensions `pkg/registry/customresource/strategy.go` | `behaviour::apply_sets_…`, `day_one::a_changed_chart_…`, `day_one::jupyterhub_install_upgrade_…` (upgrade with nothing changed) |
//! | a Secret's `stringData` stored as base64 `data`, converted after server-side apply merged the object, so a `stringData` key no longer applied stays in `data` | kubernetes `pkg/apis/core/v1/conversion.go`; kubernetes/kubernetes#108008 (closed unfixed) | `behaviour::a_secrets_…`, `behaviour::a_string_data_key_…`, `day_one::a_rotated_github_secret_…`; flatstack applies Secrets as `data` |
//! | kubeadm's taint for control planes is `node-role.kubernetes.io/control-plane:NoSchedule` unless its configuration lists taints (an empty list: none); workers get the taints listed | kubeadm `cmd/kubeadm/app/util/config/initconfiguration.go` (`SetNodeRegistrationDynamicDefaults`), `joinconfiguration.go` | `bootstrap::a_cluster_without_general_workers_…` |
//! | a worker's kubelet registers with its taints (`--register-with-taints`); a control plane's with none and no role label: kubeadm's mark-control-plane phase, run after wait-control-plane and upload-config, sets `node-role.kubernetes.io/control-plane` and `node.kubernetes.io/exclude-from-external-load-balancers` to `""` whatever they were and adds its taints, patching from the live node; here [`KUBEADM_MARK_LAG`] requests after `/readyz` first answers | kubeadm `cmd/kubeadm/app/cmd/init.go` (phase order), `cmd/kubeadm/app/phases/markcontrolplane/markcontrolplane.go`, `cmd/kubeadm/app/cmd/phases/join/controlplanejoin.go`, `phases/kubelet` (`registerTaintsUsingFlags`) | `behaviour::kubeadms_mark_phase_…`, `bootstrap::the_control_plane_label_outlives_…`, every bootstrap |
//! | new nodes NotReady (`node.kubernetes.io/not-ready:NoSchedule`) until the pod network runs; with `cloud-provider=external` (read from the node's kubeadm configuration) `node.cloudprovider.kubernetes.io/uninitialized` and no IP address (a kubelet without `--node-ip` leaves them to the cloud controller since 1.29) until the cloud controller initializes them; `spec.providerID` from `--provider-id` at registration | kubelet `pkg/kubelet/kubelet_node_status.go` (`initialNode`), `pkg/kubelet/nodestatus/setters.go` (`NodeAddress`; kubernetes PR #121028) | `bootstrap::node_table_…`, `bootstrap::a_cluster_without_the_cloud_controller_…` |
//! | the cloud controller initializes nodes (taint off, addresses from the cloud) only while its pod runs: its chart installed and a node its DaemonSet fits (chart values' `nodeSelector`, `tolerations`, host network); a controller whose credentials are refused initializes none | k8s.io/cloud-provider `controllers/node/node_controller.go` (`syncNode`, `updateNodeAddress`); openstack-cloud-controller-manager 2.36.0 `templates/daemonset.yaml` | `bootstrap::nodes_the_cloud_controller_has_not_initialized_…`, `bootstrap::bootstrap_applies_…` |
//! | a pod fits a node when it tolerates every NoSchedule/NoExecute taint and matches its node selector; toleration matching | kube-scheduler `TaintToleration`, `NodeAffinity` plugins; `k8s.io/api/core/v1/toleration.go` (`ToleratesTaint`) | `behaviour::tolerations_…`, `behaviour::pods_fit_…` |
//! | helm-controller's install Jobs: `bootstrap: true` charts select control planes (`…/control-plane: "true"`) and get six tolerations; others only `JOB_TOLERATIONS`; a Job runs only where its pod fits | helm-controller v0.17.7 `pkg/controllers/chart/chart.go` (`job()`, `setTolerations`), `pkg/app/app.go` | `bootstrap::a_cluster_without_general_workers_…`, `bootstrap::bootstrap_applies_…` |
//! | DaemonSet pods get not-ready/unreachable (NoExecute) and disk/memory/pid-pressure/unschedulable (NoSchedule) tolerations, network-unavailable for host-network pods; kured's DaemonSet takes the chart's `tolerations` and `nodeSelector` | kubernetes `pkg/controller/daemon/util/daemonset_util.go` (`AddOrUpdateDaemonPodTolerations`); kubereboot/charts kured-6.1.0 `templates/daemonset.yaml` | `bootstrap::kured_runs_on_every_node_…` |
//! | helm-controller replaces a chart's Job when its spec or a values Secret changes (after a lag), keeps a Job made for the settings the chart has again, runs `helm-delete-` Jobs for deleted charts | helm-controller v0.17.7 `pkg/controllers/chart/chart.go` (`OnChange`, `reconcileJob`, the skip for a complete Job of the same config hash) | `day_one::a_changed_chart_…`, `day_one::a_change_applied_by_a_stopped_run_…`, `day_one::a_job_that_succeeded_after_…`, `day_one::a_chart_changed_and_changed_back_…`, `day_one::a_rotated_github_secret_…`, `day_one::jupyterhub_…` |
//! | an install Job (`restartPolicy: OnFailure`, `backoffLimit: 1000`) has one pod, labelled with the Job's UID; a failing Helm restarts the `helm` container in that pod (CrashLoopBackOff in between), the Job stays active with `status.failed` 0 and no condition; the last attempt's log is served with `previous=true`; a pod no node fits stays Pending with the scheduler's `PodScheduled=False` message; a deleted pod is made anew | helm-controller v0.17.7 `chart.go` (`job()`); kubernetes `pkg/controller/job/job_controller.go` (`pastBackoffLimitOnFailure`, pod labels), `pkg/kubelet/kubelet_pods.go` (`validateContainerLogStatus`) | `behaviour::a_failing_helm_job_…`, `bootstrap::a_failed_chart_…`, `bootstrap::a_chart_whose_job_cannot_be_scheduled_…`, `bootstrap::a_chart_failing_from_an_earlier_run_…`, `day_one::a_failing_chart_…` |
//! | a node read by name: 200 with the Node, 404 `NotFound` (a Status) until its kubelet has registered it, which a kubelet does once its machine runs | apiserver `pkg/endpoints/handlers/get.go`; kubelet `pkg/kubelet/kubelet_node_status.go` (`registerWithAPIServer`) | `up::a_pool_with_a_new_flavor_…` (stand-in kubelets register when their server is ACTIVE; a new node is waited for until Ready) |
//! | etcd's members: one per control plane that joined, named after its node, added by kubeadm's etcd phase on `init` and `join --control-plane`; the etcd static pod's mirror pod `etcd-<node>`; flatstack's node Jobs run etcdctl on their node: `member list -w json` (decimal IDs), `member remove <hex>`, `member not found`, and no answer without a quorum | kubeadm `cmd/kubeadm/app/phases/etcd/local.go` (`CreateStackedEtcdStaticPodManifestFile`, `RemoveStackedEtcdMemberFromCluster`); kubelet `pkg/kubelet/config` (mirror pods); etcdctl output checked against Debian's etcd in `etcd.rs` | `up::a_lost_control_plane_of_three_…` |
//! | flatstack's host actions (node Jobs of the launcher in `src/kube/host_action.rs`): `start` runs the unit at once and records its end, `check` reads the record, `forget` drops it; an upgrade's stage with `kubeadm upgrade apply vX` uploads vX to `kubeadm-config` after an outage of the only API server, its activate restarts the kubelet at vX, which reports it at its first status sync; a chosen action fails with a journal | kubeadm `cmd/kubeadm/app/cmd/upgrade/apply.go` (control-plane phase, then `upload-config`), `phases/upgrade/staticpods.go` (the API server's static pod replaced); kubelet `pkg/kubelet/nodestatus/setters.go` (`VersionInfo`), `kubelet_node_status.go` (status sync) | `upgrade::…` |
//! | a `resourceVersion` in a merge patch is a precondition: another one answers 409 Conflict (kured's lock written as kured writes it, Get then Update) | apiserver `pkg/registry/generic/registry/store.go` (`Update`); kubereboot/kured 1.23 `pkg/daemonsetlock` | `upgrade::…` (kured's lock) |
//! | a Secret replaced (PUT) unchanged is written again (new `resourceVersion`, stored encrypted) only when stored in clear: read through `identity`, not the first provider, its stored form is stale; one stored under the first provider is not written; another `resourceVersion` answers 409 | apiserver `pkg/storage/etcd3/store.go` (`GuaranteedUpdate`: `!origState.stale && bytes.Equal(data, origState.data)`), `pkg/storage/value/transformer.go` (`prefixTransformers.TransformFromStorage`: stale when not the first), `pkg/registry/generic/registry/store.go` (`Update`) | `restore::restore_builds_again_…` |
//!
//! Simplifications, each harmless for what flatstack does: lists are atomic in field
//! ownership (flatstack always applies whole objects); nodes turn Ready when the flannel chart
//! has run (no pod-level modelling of flannel); install Jobs start running at once (upstream
//! helm-controller creates them suspended and resumes them once the job controller has seen
//! them); `generation` counts annotations of Deployments no differently from other
//! metadata (upstream bumps it for them); evictions can be refused (429) as a
//! PodDisruptionBudget would.

#![allow(dead_code)]

mod behaviour;
mod node_jobs;
mod schedule;
mod store;

pub use node_jobs::{KUBEADM_CONFIG, KURED_DAEMONSET, KURED_LOCK, Member};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo, Pod, Taint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Status, Time};
use serde_json::{Value, json};

const UNINITIALIZED: &str = "node.cloudprovider.kubernetes.io/uninitialized";
const NOT_READY: &str = "node.kubernetes.io/not-ready";
/// kubeadm's taint on control planes, unless its configuration gives other taints
/// (`cmd/kubeadm/app/apis/kubeadm/v1beta4/defaults.go`, `SetDefaults_NodeRegistration`).
const CONTROL_PLANE_TAINT: &str = "node-role.kubernetes.io/control-plane";

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
}

/// The simulated cluster.
#[derive(Debug, Default)]
pub struct World {
    /// `/readyz` answers 503 this many times before `ok`.
    pub readyz_failures: usize,
    pub nodes: BTreeMap<String, Node>,
    pub pods: Vec<Pod>,
    /// Stored objects by URL path.
    pub objects: BTreeMap<String, Value>,
    /// GETs of a running install Job before it completes.
    pub job_polls: usize,
    /// This chart's install Job fails.
    pub failing_chart: Option<String>,
    /// Evictions answered 429 before they are allowed.
    pub evictions_refused: usize,
    pub seen: Vec<Seen>,
    /// GETs of each Job so far.
    pub polls: BTreeMap<String, usize>,
    /// GETs of a chart's Job that still answer with the old Job after the chart changed,
    /// before helm-controller replaces it.
    pub replace_lag: usize,
    /// Deployments (name list) a chart's release makes in its target namespace, ready at once.
    pub release_deployments: BTreeMap<String, Vec<String>>,
    /// GETs of an applied Deployment before its pods are ready.
    pub deployment_polls: usize,
    /// Images no node can pull: Deployments using them never get ready.
    pub unpullable_images: Vec<String>,
    /// Log text of pods, by pod name.
    pub pod_logs: BTreeMap<String, String>,
    /// What each pod serves at `:8080/metrics` through the API server's proxy, by pod name.
    pub pod_metrics: BTreeMap<String, String>,
    /// The ingress answers 404 to everything.
    pub ingress_broken: bool,
    /// The ingress answers every path with some other server's page.
    pub ingress_misrouted: bool,
    /// Namespaces deleted, in order.
    pub deleted_namespaces: Vec<String>,
    /// Every answer to a GET of a Job: path, UID, and whether it said succeeded.
    pub job_answers: Vec<(String, String, bool)>,
    pub next_uid: usize,
    /// Per chart: the spec its current Job was made for, and requests since it changed.
    pub job_specs: BTreeMap<String, (Value, usize)>,
    /// Field ownership of each stored object, by URL path.
    pub ownership: BTreeMap<String, store::Ownership>,
    /// Counters behind `metadata.uid` and `metadata.resourceVersion`.
    pub next_object_uid: u64,
    pub next_version: u64,
    /// When helm-controller could first run: its process starts (and creates its CRDs) half
    /// a second later, standing for its image pull and start.
    pub controller_runnable_since: Option<std::time::Instant>,
    /// Requests handled so far.
    pub requests: usize,
    /// Every control plane with the taints its kubeadm configuration gives it.
    pub control_plane_taints: BTreeMap<String, Vec<Taint>>,
    /// Control planes kubeadm has yet to mark.
    pub unmarked: std::collections::BTreeSet<String>,
    /// The request at which kubeadm's mark-control-plane phase runs: [`KUBEADM_MARK_LAG`]
    /// requests after `/readyz` first answered ok.
    pub mark_at: Option<usize>,
    /// At this request kubeadm's mark-control-plane phase runs once more on every control
    /// plane (as `kubeadm init phase mark-control-plane` run by hand does).
    pub marks_again_at: Option<usize>,
    /// Helm's error output for `failing_chart`'s attempts.
    pub helm_error: Option<String>,
    /// The cloud controller cannot initialize nodes (its credentials are refused, say): its
    /// pods run, the uninitialized taint stays.
    pub cloud_controller_broken: bool,
    /// The order nodes registered in (their InternalIP is the 10th address plus it).
    pub node_index: BTreeMap<String, usize>,
    /// Job GETs left before a crash-looping `helm` container runs again, by pod path.
    pub back_off: BTreeMap<String, usize>,
    /// etcd's members: one per control plane that joined (see `node_jobs.rs`).
    pub etcd_members: Vec<Member>,
    /// flatstack's node Jobs run: name, node, command.
    pub node_job_runs: Vec<(String, String, Vec<String>)>,
    /// The pod and log of each node Job, by Job name.
    pub node_job_pods: BTreeMap<String, (Value, String)>,
    /// The release kubelets register with (`v1.37.1` when unset).
    pub kubelet_release: Option<String>,
    /// Host actions that ended, by node and action: exit status and journal.
    pub host_actions: BTreeMap<(String, String), (i32, String)>,
    /// Every host action run, in order (see [`HostActionRun`]).
    pub host_action_runs: Vec<HostActionRun>,
    /// This node's action of this name fails (its unit exits 1 with this journal).
    pub failing_host_action: Option<(String, String, String)>,
    /// Requests answered 503 from now on, as while the only API server restarts.
    pub outage: usize,
    /// The outage `kubeadm upgrade apply` causes when it restarts the API server.
    pub apply_outage: usize,
    /// When kubeadm's certificates on a control plane expire (RFC 3339), by node; a year from
    /// now for those not listed.
    pub certificates_expire: BTreeMap<String, String>,
    /// Secrets stored in clear, by path (a restored snapshot of a cluster that did not
    /// encrypt them): read through `identity`, not the first provider.
    pub secrets_in_clear: std::collections::BTreeSet<String>,
}

/// A host action as a node ran it, and what stood around it then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostActionRun {
    pub node: String,
    pub action: String,
    /// kured's lock annotation was on its DaemonSet.
    pub reboots_locked: bool,
    /// The node was cordoned.
    pub cordoned: bool,
    /// The kubeadm command its script runs (`upgrade apply`, `upgrade node`), if any.
    pub kubeadm: Option<String>,
}

/// Requests between `/readyz` first answering ok and kubeadm's mark-control-plane phase:
/// upload-config and upload-certs run in between (`cmd/kubeadm/app/cmd/init.go`).
pub const KUBEADM_MARK_LAG: usize = 4;
/// The label kubeadm's mark phase adds beside the role label
/// (`cmd/kubeadm/app/phases/markcontrolplane/markcontrolplane.go`).
pub const EXCLUDE_FROM_LOAD_BALANCERS: &str =
    "node.kubernetes.io/exclude-from-external-load-balancers";

/// Groups whose resources come from CustomResourceDefinitions in the modelled cluster.
const CRD_GROUPS: [&str; 3] = [
    "helm.cattle.io",
    "cert-manager.io",
    "snapshot.storage.k8s.io",
];
const CRD_PATH: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
/// helm-controller's HelmChart CRD at the pinned version: its schema (defaults included).
const HELM_CHART_SCHEMA: &str =
    include_str!("../../data/helm-controller-v0.17.7/helmchart-crd-schema.json");
/// The tolerations helm-controller v0.17.7 gives the install Jobs of `bootstrap: true` charts
/// (`pkg/controllers/chart/chart.go`, `job()`); other charts' Jobs get only the
/// `JOB_TOLERATIONS` its Deployment is given.
fn bootstrap_job_tolerations() -> Vec<Value> {
    vec![
        json!({"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/network-unavailable", "effect": "NoSchedule"}),
        json!({"key": UNINITIALIZED, "operator": "Equal", "value": "true", "effect": "NoSchedule"}),
        json!({"key": "CriticalAddonsOnly", "operator": "Exists"}),
        json!({"key": "node-role.kubernetes.io/etcd", "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": CONTROL_PLANE_TAINT, "operator": "Exists", "effect": "NoSchedule"}),
    ]
}

impl World {
    /// Registers a node as kubelet would before any add-on runs, with kubeadm's default taints:
    /// `node-role.kubernetes.io/control-plane:NoSchedule` on control planes (added by kubeadm's
    /// mark phase), none on workers.
    pub fn register(&mut self, name: &str, control_plane: bool) {
        let taints = if control_plane {
            vec![taint(CONTROL_PLANE_TAINT, None, "NoSchedule")]
        } else {
            Vec::new()
        };
        self.register_with_taints(name, control_plane, taints, true);
    }

    /// Registers a node as its kubelet does (kubelet `pkg/kubelet/kubelet_node_status.go`,
    /// `initialNode`): NotReady until the pod network runs; `spec.providerID` from its
    /// `--provider-id`; when it runs with `cloud-provider=external`, the uninitialized taint and
    /// no IP address (since 1.29 a kubelet without `--node-ip` leaves addresses to the cloud
    /// controller: kubernetes PR #121028), otherwise its InternalIP. A worker registers with
    /// the taints of its configuration (`--register-with-taints`); a control plane with none
    /// and without any role label (a kubelet may not set `node-role.kubernetes.io/*`): kubeadm's
    /// mark-control-plane phase adds both later (`init.go`: the kubelet-start phase writes no
    /// `--register-with-taints` for control planes, nor does a control plane's join).
    pub fn register_with_taints(
        &mut self,
        name: &str,
        control_plane: bool,
        own: Vec<Taint>,
        external_cloud: bool,
    ) {
        let labels = BTreeMap::from([
            ("kubernetes.io/hostname".to_string(), name.to_string()),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
        ]);
        let registered_taints = if control_plane {
            self.control_plane_taints.insert(name.to_string(), own);
            self.unmarked.insert(name.to_string());
            Vec::new()
        } else {
            own
        };
        let index = self.nodes.len();
        self.node_index.insert(name.to_string(), index);
        let internal_ip = format!("10.42.0.{}", 10 + index);
        let addresses = if external_cloud {
            vec![NodeAddress {
                type_: "Hostname".into(),
                address: name.into(),
            }]
        } else {
            vec![NodeAddress {
                type_: "InternalIP".into(),
                address: internal_ip,
            }]
        };
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels),
                creation_timestamp: Some(Time(flatstack::kube::now())),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                provider_id: Some(format!("openstack:///{}", instance_uuid(name))),
                taints: Some(
                    external_cloud
                        .then(|| taint(UNINITIALIZED, Some("true"), "NoSchedule"))
                        .into_iter()
                        .chain([taint(NOT_READY, None, "NoSchedule")])
                        .chain(registered_taints)
                        .collect(),
                ),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "False".into(),
                    reason: Some("KubeletNotReady".into()),
                    message: Some(
                        "container runtime network not ready: cni plugin not initialized".into(),
                    ),
                    ..NodeCondition::default()
                }]),
                addresses: Some(addresses),
                node_info: Some(NodeSystemInfo {
                    kubelet_version: self
                        .kubelet_release
                        .clone()
                        .unwrap_or_else(|| "v1.37.1".into()),
                    os_image: "Flatcar Container Linux by Kinvolk 4230.2.3 (Oklo)".into(),
                    kernel_version: "6.6.95-flatcar".into(),
                    container_runtime_version: "containerd://1.7.23".into(),
                    ..NodeSystemInfo::default()
                }),
                ..NodeStatus::default()
            }),
        };
        self.nodes.insert(name.into(), node);
        if control_plane {
            self.etcd_joins(name);
        }
    }

    /// kubeadm's mark-control-plane phase on every control plane not yet marked: the role label
    /// and the exclude-from-load-balancers label set to `""` whatever they were, and the
    /// configuration's taints added to those the node has (`markcontrolplane.go`,
    /// `markControlPlaneNode`, patched from the live node).
    pub fn kubeadm_marks_now(&mut self) {
        let unmarked = std::mem::take(&mut self.unmarked);
        for name in unmarked {
            let taints = self
                .control_plane_taints
                .get(&name)
                .cloned()
                .unwrap_or_default();
            let Some(node) = self.nodes.get_mut(&name) else {
                continue;
            };
            let labels = node.metadata.labels.get_or_insert_with(BTreeMap::new);
            labels.insert(CONTROL_PLANE_TAINT.into(), String::new());
            labels.insert(EXCLUDE_FROM_LOAD_BALANCERS.into(), String::new());
            let have = node
                .spec
                .get_or_insert_with(NodeSpec::default)
                .taints
                .get_or_insert_with(Vec::new);
            for t in taints {
                if !have.contains(&t) {
                    have.push(t);
                }
            }
        }
    }

    /// Puts a pod on `node`; `daemon` makes it a DaemonSet's.
    pub fn run_pod(&mut self, namespace: &str, name: &str, node: &str, daemon: bool) {
        let owner = OwnerReference {
            api_version: "apps/v1".into(),
            kind: if daemon { "DaemonSet" } else { "ReplicaSet" }.into(),
            name: format!("{name}-owner"),
            uid: "0".into(),
            ..OwnerReference::default()
        };
        self.pods.push(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                owner_references: Some(vec![owner]),
                ..ObjectMeta::default()
            },
            spec: Some(k8s_openapi::api::core::v1::PodSpec {
                node_name: Some(node.into()),
                ..Default::default()
            }),
            ..Pod::default()
        });
    }

    /// Labels pod `name`, as its controller would have.
    pub fn label_pod(&mut self, name: &str, key: &str, value: &str) {
        for pod in self
            .pods
            .iter_mut()
            .filter(|p| p.metadata.name.as_deref() == Some(name))
        {
            pod.metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(key.into(), value.into());
        }
    }

    /// Starts Job `job` for a HelmChart `chart` applied as-is, as helm-controller would.
    pub fn start_job_for_tests(&mut self, job: &str, chart: &str) {
        self.objects.insert(
            format!("/apis/helm.cattle.io/v1/namespaces/kube-system/helmcharts/{chart}"),
            json!({"metadata": {"name": chart}, "spec": {"bootstrap": false}}),
        );
        self.start_job(job);
    }

    /// What the cluster does on its own, at once.
    pub fn settle_for_tests(&mut self) {
        self.settle();
    }

    /// Server-side applies `body` at `path` as `manager`, forced, as if another run of
    /// flatstack (stopped right after) had: the status code of the answer.
    pub fn apply_object(&mut self, path: &str, body: &Value, manager: &str) -> u16 {
        let query = format!("fieldManager={manager}&force=true");
        let answer = route(
            self,
            "PATCH",
            path,
            &query,
            "application/apply-patch+yaml",
            body.to_string().as_bytes(),
        );
        self.run_helm_controller();
        self.settle();
        answer.status().as_u16()
    }

    pub fn ready(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(flatstack::kube::is_ready)
    }

    pub fn object(&self, path: &str) -> Option<&Value> {
        self.objects.get(path)
    }

    /// The decoded value of `key` in the Secret at `path`.
    pub fn secret_text(&self, path: &str, key: &str) -> Option<String> {
        use base64::Engine as _;
        let encoded = self.objects.get(path)?["data"][key].as_str()?.to_string();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?;
        String::from_utf8(bytes).ok()
    }

    fn chart_installed(&self, chart: &str) -> bool {
        self.objects
            .get(&job_path(chart))
            .is_some_and(|job| job["status"]["succeeded"] == 1)
    }

    /// What the cluster does on its own between requests.
    fn settle(&mut self) {
        self.establish_crds();
        if self.mark_at.is_some_and(|at| self.requests >= at) {
            self.kubeadm_marks_now();
        }
        if self.marks_again_at == Some(self.requests) {
            self.unmarked = self.control_plane_taints.keys().cloned().collect();
            self.kubeadm_marks_now();
        }
        self.run_job_pods();
        let network = self.chart_installed("flannel");
        let cloud = self.cloud_controller_runs();
        for node in self.nodes.values_mut() {
            let spec = node.spec.get_or_insert_with(NodeSpec::default);
            let taints = spec.taints.get_or_insert_with(Vec::new);
            if network {
                taints.retain(|t| t.key != NOT_READY);
                if let Some(status) = node.status.as_mut()
                    && let Some(ready) = status
                        .conditions
                        .iter_mut()
                        .flatten()
                        .find(|c| c.type_ == "Ready")
                {
                    ready.status = "True".into();
                    ready.reason = Some("KubeletReady".into());
                    ready.message = Some("kubelet is posting ready status".into());
                }
            }
            // The cloud controller's node controller: the taint off, the addresses the cloud
            // knows (the control planes' floating IP as ExternalIP) in place of the kubelet's
            // Hostname (k8s.io/cloud-provider `controllers/node/node_controller.go`,
            // `syncNode` then `updateNodeAddress`).
            if cloud && taints.iter().any(|t| t.key == UNINITIALIZED) {
                taints.retain(|t| t.key != UNINITIALIZED);
                let name = node.metadata.name.clone().unwrap_or_default();
                let control_plane = name.contains("-control-plane-");
                let index = self.node_index.get(&name).copied().unwrap_or_default();
                if let Some(status) = node.status.as_mut() {
                    let mut addresses = vec![NodeAddress {
                        type_: "InternalIP".into(),
                        address: format!("10.42.0.{}", 10 + index),
                    }];
                    if control_plane {
                        addresses.push(NodeAddress {
                            type_: "ExternalIP".into(),
                            address: "203.0.113.7".into(),
                        });
                    }
                    addresses.push(NodeAddress {
                        type_: "Hostname".into(),
                        address: name.clone(),
                    });
                    status.addresses = Some(addresses);
                }
            }
        }
    }

    /// The cloud controller runs: its chart installed and a node its DaemonSet's pod fits, by
    /// the chart's `nodeSelector` and `tolerations` (openstack-cloud-controller-manager 2.36.0
    /// `templates/daemonset.yaml`, host network) and what the DaemonSet controller adds.
    fn cloud_controller_runs(&self) -> bool {
        if self.cloud_controller_broken
            || !self.chart_installed("openstack-cloud-controller-manager")
        {
            return false;
        }
        let chart = self
            .objects
            .get("/apis/helm.cattle.io/v1/namespaces/kube-system/helmcharts/openstack-cloud-controller-manager")
            .cloned()
            .unwrap_or(Value::Null);
        let (tolerations, selector) = daemonset_placement(&chart, true, json!({}));
        self.nodes
            .values()
            .any(|node| schedule::fits(node, &tolerations, &selector))
    }

    /// helm-controller, if it could run: deployed, and a control plane labelled for it.
    fn helm_controller_runs(&self) -> bool {
        let deployed = self
            .objects
            .contains_key("/apis/apps/v1/namespaces/kube-system/deployments/helm-controller");
        let placed = self.nodes.values().any(|n| {
            n.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("node-role.kubernetes.io/control-plane"))
                .is_some_and(|v| v == "true")
        });
        deployed && placed
    }

    /// Whether the install Job of `chart` has a node to run on, with what helm-controller
    /// gives it: bootstrap Jobs select control planes (`node-role.kubernetes.io/control-plane:
    /// "true"`) and get [`bootstrap_job_tolerations`]; every Job selects Linux nodes and gets
    /// the `JOB_TOLERATIONS` of helm-controller's Deployment.
    fn job_schedulable(&self, chart: &Value) -> bool {
        let bootstrap = chart["spec"]["bootstrap"] == true;
        let mut tolerations = if bootstrap {
            bootstrap_job_tolerations()
        } else {
            Vec::new()
        };
        tolerations.extend(self.helm_controller_job_tolerations());
        let mut selector = json!({"kubernetes.io/os": "linux"});
        if bootstrap {
            selector[CONTROL_PLANE_TAINT] = json!("true");
        }
        self.nodes
            .values()
            .any(|node| schedule::fits(node, &tolerations, &selector))
    }

    /// The `JOB_TOLERATIONS` (a JSON list) helm-controller's Deployment sets, if any.
    fn helm_controller_job_tolerations(&self) -> Vec<Value> {
        let deployment = &self
            .objects
            .get("/apis/apps/v1/namespaces/kube-system/deployments/helm-controller")
            .cloned()
            .unwrap_or(Value::Null);
        deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == "JOB_TOLERATIONS")
            .and_then(|e| e["value"].as_str())
            .and_then(|text| serde_json::from_str::<Vec<Value>>(text).ok())
            .unwrap_or_default()
    }

    /// Creates the CustomResourceDefinitions `names` (plural.group) as the API server does:
    /// names accepted at once, established on the next look (`establishing_controller.go`).
    fn create_crds(&mut self, names: &[&str]) {
        for name in names {
            let path = format!("{CRD_PATH}/{name}");
            if self.objects.contains_key(&path) {
                continue;
            }
            let schema: Value = if *name == "helmcharts.helm.cattle.io" {
                serde_json::from_str(HELM_CHART_SCHEMA).expect("helm-controller's CRD schema")
            } else {
                json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
            };
            let (plural, group) = name.split_once('.').unwrap_or((name, ""));
            self.objects.insert(
                path,
                json!({
                    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                    "metadata": {"name": name},
                    "spec": {"group": group, "names": {"plural": plural},
                        "versions": [{"name": "v1", "served": true, "storage": true,
                            "schema": {"openAPIV3Schema": schema}}]},
                    "status": {"conditions": [
                        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts"},
                        {"type": "Established", "status": "False", "reason": "Installing"},
                    ]},
                }),
            );
        }
    }

    /// CRDs whose names were accepted become established.
    fn establish_crds(&mut self) {
        let prefix = format!("{CRD_PATH}/");
        for (path, crd) in self.objects.iter_mut() {
            if path.starts_with(&prefix) {
                crd["status"]["conditions"][1] = json!({"type": "Established", "status": "True", "reason": "InitialNamesAccepted"});
            }
        }
    }

    /// The CRD serving the resource at `path`, for groups made of CRDs: `Some(None)` when
    /// that CRD does not exist, so the resource is not served.
    fn crd_for(&self, path: &str) -> Option<Option<&Value>> {
        let rest = path.strip_prefix("/apis/")?;
        let mut parts = rest.split('/');
        let group = parts.next()?;
        if !CRD_GROUPS.contains(&group) {
            return None;
        }
        let rest: Vec<&str> = parts.skip(1).collect();
        let plural = match rest.as_slice() {
            ["namespaces", _, plural, ..] => *plural,
            [plural, ..] => *plural,
            [] => return Some(None),
        };
        Some(self.objects.get(&format!("{CRD_PATH}/{plural}.{group}")))
    }

    /// Starts install Jobs for charts that have none, replaces the Job of a chart whose spec
    /// changed (after `replace_lag` reads of its Job), and runs uninstalls of deleted charts.
    fn run_helm_controller(&mut self) {
        if !self.helm_controller_runs() {
            return;
        }
        // Its first act (`pkg/cmd/cmd.go`): create its CRDs, before any controller runs. Its pod
        // takes a moment to start, an image pull at least.
        if !self
            .objects
            .contains_key(&format!("{CRD_PATH}/helmcharts.helm.cattle.io"))
        {
            let since = *self
                .controller_runnable_since
                .get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= std::time::Duration::from_millis(500) {
                self.create_crds(&[
                    "helmcharts.helm.cattle.io",
                    "helmchartconfigs.helm.cattle.io",
                ]);
            }
            return;
        }
        let charts: Vec<(String, Value)> = self
            .objects
            .iter()
            .filter(|(path, _)| path.starts_with("/apis/helm.cattle.io/v1/"))
            .map(|(p, v)| (p.clone(), v.clone()))
            .collect();
        for (path, chart) in charts {
            let name = chart["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if chart["metadata"].get("deletionTimestamp").is_some() {
                self.run_uninstall(&path, &name, &chart);
                continue;
            }
            let job = job_path(&name);
            let spec = self.chart_inputs(&chart);
            let replace = match self.job_specs.get(&name) {
                Some((made_for, since)) => *made_for != spec && *since > self.replace_lag,
                None => false,
            };
            if !self.objects.contains_key(&job) || replace {
                self.start_job(&format!("helm-install-{name}"));
                self.polls.remove(&job);
                self.job_specs.insert(name.clone(), (spec, 0));
                if let Some(stored) = self.objects.get_mut(&path) {
                    stored["status"] = json!({"jobName": format!("helm-install-{name}")});
                }
            }
        }
    }

    /// helm-controller's finalizer: a `helm-delete-<name>` Job, then the chart and what its
    /// release made are gone.
    fn run_uninstall(&mut self, path: &str, name: &str, chart: &Value) {
        let job = format!("/apis/batch/v1/namespaces/kube-system/jobs/helm-delete-{name}");
        if !self.objects.contains_key(&job) {
            self.start_job(&format!("helm-delete-{name}"));
            if let Some(stored) = self.objects.get_mut(path) {
                stored["status"]["jobName"] = json!(format!("helm-delete-{name}"));
            }
            return;
        }
        let polls = self.polls.entry(job.clone()).or_default();
        *polls += 1;
        if *polls <= 2 {
            return;
        }
        let target = chart["spec"]["targetNamespace"]
            .as_str()
            .unwrap_or_default();
        for deployment in self
            .release_deployments
            .get(name)
            .cloned()
            .unwrap_or_default()
        {
            self.objects.remove(&deployment_path(target, &deployment));
        }
        self.objects.remove(&job);
        self.objects.remove(&job_path(name));
        self.objects.remove(path);
        self.job_specs.remove(name);
    }

    /// A read of a chart's Job while the chart's spec differs from the Job's brings
    /// helm-controller's replacement closer.
    fn note_job_read(&mut self, path: &str) {
        let Some(chart) = path
            .rsplit('/')
            .next()
            .and_then(|n| n.strip_prefix("helm-install-"))
        else {
            return;
        };
        let chart_path =
            format!("/apis/helm.cattle.io/v1/namespaces/kube-system/helmcharts/{chart}");
        let current = self
            .objects
            .get(&chart_path)
            .cloned()
            .map(|c| self.chart_inputs(&c));
        if let Some((made_for, since)) = self.job_specs.get_mut(chart)
            && current.is_some_and(|spec| spec != *made_for)
        {
            *since += 1;
        }
    }

    /// What helm-controller hashes into a chart's Job: its spec and the values Secrets it names.
    fn chart_inputs(&self, chart: &Value) -> Value {
        let secrets: Vec<Value> = chart["spec"]["valuesSecrets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str())
            .map(|name| {
                self.objects
                    .get(&format!("/api/v1/namespaces/kube-system/secrets/{name}"))
                    .map_or(Value::Null, |secret| secret["data"].clone())
            })
            .collect();
        json!({"spec": chart["spec"], "secrets": secrets})
    }

    /// A new running Job `name` in kube-system (replacing one of that name, whose pods go),
    /// with a new UID and its first pod. helm-controller makes it `restartPolicy: OnFailure`
    /// with `backoffLimit: 1000` (`pkg/controllers/chart/chart.go`).
    fn start_job(&mut self, name: &str) {
        self.next_uid += 1;
        let uid = format!("uid-{}", self.next_uid);
        self.objects.retain(|path, pod| {
            !(path.starts_with(JOB_POD_PREFIX) && pod["metadata"]["labels"]["job-name"] == name)
        });
        self.objects.insert(
            format!("/apis/batch/v1/namespaces/kube-system/jobs/{name}"),
            json!({
                "apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": name, "namespace": "kube-system", "uid": uid},
                "spec": {"backoffLimit": 1000, "template": {"spec": {"restartPolicy": "OnFailure",
                    "containers": [{"name": "helm"}]}}},
                "status": {"active": 1},
            }),
        );
        self.new_job_pod(name, &uid);
    }

    /// A pod of Job `job`, labelled as the job controller labels them
    /// (`pkg/controller/job/job_controller.go`: `batch.kubernetes.io/controller-uid`,
    /// `batch.kubernetes.io/job-name` and their legacy twins), pending until scheduled.
    fn new_job_pod(&mut self, job: &str, uid: &str) {
        self.next_uid += 1;
        let name = format!("{job}-{}", self.next_uid);
        self.objects.insert(
            format!("{JOB_POD_PREFIX}{name}"),
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "kube-system",
                    "creationTimestamp": format!("2026-12-06T00:00:{:02}Z", self.next_uid % 60),
                    "labels": {"job-name": job, "batch.kubernetes.io/job-name": job,
                        "controller-uid": uid, "batch.kubernetes.io/controller-uid": uid}},
                "spec": {"restartPolicy": "OnFailure", "containers": [{"name": "helm"}]},
                "status": {"phase": "Pending"},
            }),
        );
    }

    /// The job controller and the scheduler: every running Job has a pod (a deleted one is
    /// made anew), which runs once a node fits it and stays Pending, saying why, until then.
    fn run_job_pods(&mut self) {
        let jobs: Vec<(String, String)> = self
            .objects
            .iter()
            .filter(|(path, job)| {
                path.starts_with("/apis/batch/v1/namespaces/kube-system/jobs/")
                    && job["status"]["active"] == 1
            })
            .map(|(_, job)| {
                (
                    job["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    job["metadata"]["uid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
        for (job, uid) in jobs {
            if self.job_pod(&uid).is_none() {
                self.new_job_pod(&job, &uid);
            }
            let schedulable = match job.strip_prefix("helm-install-") {
                Some(chart) => self
                    .objects
                    .get(&format!(
                        "/apis/helm.cattle.io/v1/namespaces/kube-system/helmcharts/{chart}"
                    ))
                    .cloned()
                    .is_some_and(|chart| self.job_schedulable(&chart)),
                None => true,
            };
            let nodes = self.nodes.len();
            let Some(path) = self.job_pod(&uid) else {
                continue;
            };
            let Some(pod) = self.objects.get_mut(&path) else {
                continue;
            };
            if pod["status"]["phase"] != "Pending" {
                continue;
            }
            pod["status"] = if schedulable {
                json!({"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True"}],
                    "containerStatuses": [{"name": "helm", "image": "rancher/klipper-helm", "imageID": "",
                        "ready": true, "restartCount": 0, "state": {"running": {}}}]})
            } else {
                json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                    "reason": "Unschedulable",
                    "message": format!("0/{nodes} nodes are available: {nodes} node(s) didn't match Pod's node affinity/selector or had untolerated taints. preemption: 0/{nodes} nodes are available: {nodes} Preemption is not helpful for scheduling.")}]})
            };
        }
    }

    /// The path of the live pod of the Job with `uid`.
    fn job_pod(&self, uid: &str) -> Option<String> {
        self.objects
            .iter()
            .find(|(path, pod)| {
                path.starts_with(JOB_POD_PREFIX)
                    && pod["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] == uid
            })
            .map(|(path, _)| path.clone())
    }

    /// What a chart's release makes once its install Job succeeded.
    fn release_installed(&mut self, chart_name: &str) {
        let chart_path =
            format!("/apis/helm.cattle.io/v1/namespaces/kube-system/helmcharts/{chart_name}");
        match chart_name {
            // cert-manager's chart installs its CRDs (`crds.enabled`).
            "cert-manager" => self.create_crds(&[
                "clusterissuers.cert-manager.io",
                "issuers.cert-manager.io",
                "certificates.cert-manager.io",
            ]),
            // The snapshot controller's chart installs the external-snapshotter CRDs
            // (`installCRDs`).
            "snapshot-controller" => self.create_crds(&[
                "volumesnapshotclasses.snapshot.storage.k8s.io",
                "volumesnapshots.snapshot.storage.k8s.io",
                "volumesnapshotcontents.snapshot.storage.k8s.io",
            ]),
            "kured" => {
                let chart = self
                    .objects
                    .get(&chart_path)
                    .cloned()
                    .unwrap_or(Value::Null);
                self.run_kured(&chart);
            }
            _ => {}
        }
        let target = self
            .objects
            .get(&chart_path)
            .and_then(|c| c["spec"]["targetNamespace"].as_str())
            .unwrap_or_default()
            .to_string();
        for deployment in self
            .release_deployments
            .get(chart_name)
            .cloned()
            .unwrap_or_default()
        {
            self.objects.insert(
                deployment_path(&target, &deployment),
                json!({
                    "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": deployment, "namespace": target, "generation": 1},
                    "spec": {"replicas": 1},
                    "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1},
                }),
            );
        }
    }

    /// kured's DaemonSet (chart 6.1.0 `templates/daemonset.yaml`: the values' `tolerations`
    /// and `nodeSelector`, `hostNetwork` false) gets a pod on every node it may run on, with
    /// the tolerations the DaemonSet controller adds.
    fn run_kured(&mut self, chart: &Value) {
        let (tolerations, selector) =
            daemonset_placement(chart, false, json!({"kubernetes.io/os": "linux"}));
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, node)| schedule::fits(node, &tolerations, &selector))
            .map(|(name, _)| name.clone())
            .collect();
        for node in nodes {
            let pod = format!("kured-{node}");
            if !self
                .pods
                .iter()
                .any(|p| p.metadata.name.as_deref() == Some(pod.as_str()))
            {
                self.run_pod("kube-system", &pod, &node, true);
                self.label_pod(&pod, "app.kubernetes.io/name", "kured");
            }
        }
    }

    /// A GET of an applied Deployment: its pods get ready after `deployment_polls` GETs,
    /// unless its image cannot be pulled.
    fn poll_deployment(&mut self, path: &str) {
        let count = self.polls.entry(path.to_string()).or_default();
        *count += 1;
        let ready = *count > self.deployment_polls;
        let unpullable = self.unpullable_images.clone();
        if let Some(deployment) = self.objects.get_mut(path)
            && deployment.get("status").is_none()
            && ready
        {
            let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if !unpullable.contains(&image) {
                deployment["metadata"]["generation"] = json!(1);
                deployment["status"] = json!({"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1});
            }
        }
    }

    /// Pods of namespace `ns` matching `selector` (`key=value`), including those the model
    /// makes for Deployments whose image cannot be pulled.
    fn pods_in(&self, ns: &str, selector: Option<(&str, &str)>) -> Vec<Value> {
        let mut pods: Vec<Value> = self
            .pods
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
            .filter(|p| {
                selector.is_none_or(|(k, v)| {
                    p.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(k))
                        .map(String::as_str)
                        == Some(v)
                })
            })
            .map(|p| serde_json::to_value(p).expect("pod"))
            .collect();
        if ns == "kube-system" {
            pods.extend(
                self.objects
                    .iter()
                    .filter(|(path, _)| path.starts_with(JOB_POD_PREFIX))
                    .filter(|(_, pod)| {
                        selector.is_none_or(|(k, v)| pod["metadata"]["labels"][k] == v)
                    })
                    .map(|(_, pod)| pod.clone()),
            );
        }
        let prefix = format!("/apis/apps/v1/namespaces/{ns}/deployments/");
        for (path, deployment) in &self.objects {
            let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or_default();
            if path.starts_with(&prefix) && self.unpullable_images.iter().any(|i| i == image) {
                pods.push(json!({
                    "metadata": {"name": format!("{}-5d9c7-x2x4", deployment["metadata"]["name"].as_str().unwrap_or("pod")), "namespace": ns},
                    "status": {
                        "phase": "Pending",
                        "containerStatuses": [{
                            "name": "web", "image": image, "imageID": "", "ready": false, "restartCount": 0,
                            "state": {"waiting": {"reason": "ErrImagePull",
                                "message": format!("failed to pull and unpack image \"{image}\": not found")}},
                        }],
                    },
                }));
            }
        }
        pods
    }

    /// Deletes a namespace and everything in it.
    fn delete_namespace(&mut self, ns: &str) {
        let inside = format!("/namespaces/{ns}/");
        self.objects.retain(|path, _| !path.contains(&inside));
        self.objects.remove(&format!("/api/v1/namespaces/{ns}"));
        self.deleted_namespaces.push(ns.to_string());
    }

    /// A GET of a Job: once its pod runs and `job_polls` GETs have passed, Helm's attempt ends.
    /// A failing attempt restarts the `helm` container in the same pod (`restartPolicy:
    /// OnFailure`): the Job stays active with `status.failed` 0 and no condition, as the job
    /// controller leaves it until the restarts reach `backoffLimit`
    /// (`pastBackoffLimitOnFailure`); the kubelet waits in CrashLoopBackOff in between.
    fn poll_job(&mut self, path: &str) {
        let uid = self
            .objects
            .get(path)
            .and_then(|job| job["metadata"]["uid"].as_str())
            .unwrap_or_default()
            .to_string();
        let Some(pod_path) = self.job_pod(&uid) else {
            return;
        };
        if self.objects[&pod_path]["status"]["phase"] != "Running" {
            return; // not scheduled: no attempt yet
        }
        let count = self.polls.entry(path.to_string()).or_default();
        *count += 1;
        let done = *count > self.job_polls;
        // The kubelet's back-off before it restarts a failed container: doubling per restart
        // (10 s, 20 s, 40 s, … upstream; here polls).
        if let Some(wait) = self.back_off.get_mut(&pod_path)
            && *wait > 0
        {
            *wait -= 1;
            return;
        }
        let failing = self
            .failing_chart
            .as_ref()
            .is_some_and(|c| path == job_path(c));
        if failing && done {
            let restarts = self.objects[&pod_path]["status"]["containerStatuses"][0]["restartCount"]
                .as_u64()
                .unwrap_or(0) as usize;
            self.back_off.insert(pod_path.clone(), 2 * (restarts + 1));
            if let Some(pod) = self.objects.get_mut(&pod_path) {
                let helm = &mut pod["status"]["containerStatuses"][0];
                let restarts = helm["restartCount"].as_i64().unwrap_or(0) + 1;
                helm["restartCount"] = json!(restarts);
                helm["ready"] = json!(false);
                helm["lastState"] = json!({"terminated": {"exitCode": 1, "reason": "Error",
                    "message": "Installing helm chart\n"}});
                helm["state"] = json!({"waiting": {"reason": "CrashLoopBackOff",
                    "message": "back-off 10s restarting failed container=helm"}});
            }
            return;
        }
        if let Some(job) = self.objects.get_mut(path)
            && job["status"]["active"] == 1
            && done
        {
            job["status"] = json!({"succeeded": 1});
            if let Some(pod) = self.objects.get_mut(&pod_path) {
                pod["status"]["phase"] = json!("Succeeded");
                pod["status"]["containerStatuses"][0]["state"] =
                    json!({"terminated": {"exitCode": 0, "reason": "Completed"}});
            }
            if let Some(chart) = path
                .rsplit('/')
                .next()
                .and_then(|n| n.strip_prefix("helm-install-"))
            {
                let chart = chart.to_string();
                self.release_installed(&chart);
            }
        }
    }
}

/// Where the pods of a chart's DaemonSet may run: the chart values' `tolerations` and
/// `nodeSelector` (`default_selector` when the values give none), with the tolerations the
/// DaemonSet controller adds (more for host-network pods).
fn daemonset_placement(
    chart: &Value,
    host_network: bool,
    default_selector: Value,
) -> (Vec<Value>, Value) {
    let values: Value = chart["spec"]["valuesContent"]
        .as_str()
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or(Value::Null);
    let mut tolerations: Vec<Value> = values["tolerations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    tolerations.extend(schedule::daemonset_tolerations(host_network));
    let selector = values
        .get("nodeSelector")
        .cloned()
        .unwrap_or(default_selector);
    (tolerations, selector)
}

/// Where the stand-in keeps the pods of Jobs.
const JOB_POD_PREFIX: &str = "/api/v1/namespaces/kube-system/pods/";

fn job_path(chart: &str) -> String {
    format!("/apis/batch/v1/namespaces/kube-system/jobs/helm-install-{chart}")
}

fn deployment_path(ns: &str, name: &str) -> String {
    format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}")
}

/// `key=value` of a `labelSelector=` query parameter.
fn label_selector(query: &str) -> Option<(String, String)> {
    let raw = query
        .split('&')
        .find_map(|p| p.strip_prefix("labelSelector="))?;
    let decoded = raw.replace("%2F", "/").replace("%3D", "=");
    let (k, v) = decoded.split_once('=')?;
    Some((k.to_string(), v.to_string()))
}

/// The Nova server UUID the stand-in gives node `name` (Afterburn substitutes the real one
/// into `--provider-id` at boot).
pub fn instance_uuid(name: &str) -> String {
    use sha2::{Digest, Sha256};
    let hex = hex::encode(Sha256::digest(name.as_bytes()));
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
    Taint {
        key: key.into(),
        value: value.map(Into::into),
        effect: effect.into(),
        ..Taint::default()
    }
}

/// A server's own runtime, listening on a loopback port; stopped when dropped.
struct Background(Option<tokio::runtime::Runtime>);

impl Background {
    /// A runtime with `workers` threads and a listener on 127.0.0.1.
    fn bind(workers: usize) -> (Background, tokio::net::TcpListener, SocketAddr) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let address = listener.local_addr().expect("address");
        (Background(Some(runtime)), listener, address)
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Some(runtime) = &self.0 {
            runtime.spawn(task);
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The running stand-in.
pub struct StandIn {
    pub address: SocketAddr,
    pub world: Arc<Mutex<World>>,
    _background: Background,
}

impl StandIn {
    /// Serves with a certificate for 127.0.0.1 signed by `ca` (PEM certificate and key), and
    /// accepts only client certificates signed by `client_ca`.
    /// A stand-in serving with the cluster's own CA and trusting the clients it signed, as
    /// the cluster's API server does.
    pub fn of_cluster(pki: &flatstack::pki::ClusterPki, world: World) -> StandIn {
        StandIn::start(
            &pki.ca.cert_pem,
            pki.ca.key_pem.expose(),
            &pki.ca.cert_pem,
            world,
        )
    }

    pub fn start(ca_cert: &str, ca_key: &str, client_ca: &str, world: World) -> StandIn {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = server_tls(ca_cert, ca_key, client_ca);
        let (background, listener, address) = Background::bind(2);
        let world = Arc::new(Mutex::new(world));
        let shared = world.clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        background.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let world = shared.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return; // no or wrong client certificate: handshake refused
                    };
                    let service = hyper::service::service_fn(move |request| {
                        let world = world.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(&world, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        StandIn {
            address,
            world,
            _background: background,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.world.lock().expect("world").seen.clone()
    }

    /// Requests that change something (anything but GET).
    pub fn writes(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method != "GET")
            .collect()
    }
}

fn server_tls(ca_cert: &str, ca_key: &str, client_ca: &str) -> rustls::ServerConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let ca_key = rcgen::KeyPair::from_pem(ca_key).expect("CA key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca_cert, ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kube-apiserver");
    let cert = params
        .signed_by(&key, &issuer)
        .expect("serving certificate");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(client_ca.as_bytes()).expect("client CA"))
        .expect("root");
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .expect("verifier");
    rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key"),
        )
        .expect("server TLS")
}

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, body: Value) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    response
}

/// A `Status` failure, as the API server words them.
fn failure(status: StatusCode, reason: &str, message: &str) -> Answer {
    let body = Status {
        code: Some(i32::from(status.as_u16())),
        message: Some(message.into()),
        reason: Some(reason.into()),
        status: Some("Failure".into()),
        ..Status::default()
    };
    let mut value = serde_json::to_value(body).expect("status");
    value["kind"] = json!("Status");
    value["apiVersion"] = json!("v1");
    answer(status, value)
}

async fn handle(world: &Mutex<World>, request: Request<hyper::body::Incoming>) -> Answer {
    let method = request.method().as_str().to_string();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    let content_type = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return failure(StatusCode::BAD_REQUEST, "BadRequest", "unreadable body"),
    };
    let mut world = world.lock().expect("world");
    world.requests += 1;
    world.seen.push(Seen {
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        content_type: content_type.clone(),
    });
    if world.outage > 0 {
        // The only API server restarts (kubeadm replaced its static pod): nothing answers
        // but the load balancer's or the socket's refusal, here a 503.
        world.outage -= 1;
        return failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        );
    }
    world.run_helm_controller();
    world.settle();
    let reply = route(&mut world, &method, &path, &query, &content_type, &body);
    world.run_helm_controller();
    world.settle();
    reply
}

fn route(
    world: &mut World,
    method: &str,
    path: &str,
    query: &str,
    content_type: &str,
    body: &[u8],
) -> Answer {
    if let Some(None) = world.crd_for(path) {
        // No CRD serves it: the request reaches the API server's not-found handler.
        let mut response = Response::new(Full::new(Bytes::from("404 page not found\n")));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        ("GET", ["readyz"]) => {
            if world.readyz_failures > 0 {
                world.readyz_failures -= 1;
                let mut response = Response::new(Full::new(Bytes::from(
                    "[-]etcd failed: reason withheld\nreadyz check failed\n",
                )));
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                return response;
            }
            if world.mark_at.is_none() {
                world.mark_at = Some(world.requests + KUBEADM_MARK_LAG);
            }
            Response::new(Full::new(Bytes::from("ok")))
        }
        ("GET", ["api", "v1", "nodes"]) => {
            let list = k8s_openapi::List::<Node> {
                items: world.nodes.values().cloned().collect(),
                metadata: Default::default(),
            };
            answer(
                StatusCode::OK,
                serde_json::to_value(list).expect("node list"),
            )
        }
        // A named resource is read at its own path; 404 NotFound when absent (apiserver
        // `pkg/endpoints/handlers/get.go`).
        ("GET", ["api", "v1", "nodes", name]) => match world.nodes.get(*name) {
            Some(node) => answer(StatusCode::OK, serde_json::to_value(node).expect("node")),
            None => failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("nodes \"{name}\" not found"),
            ),
        },
        ("PATCH", ["api", "v1", "nodes", name]) => {
            if content_type != "application/merge-patch+json" {
                return failure(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    content_type,
                );
            }
            let Some(node) = world.nodes.get(*name) else {
                return failure(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("nodes \"{name}\" not found"),
                );
            };
            let mut value = serde_json::to_value(node).expect("node");
            let Ok(patch) = serde_json::from_slice::<Value>(body) else {
                return failure(StatusCode::BAD_REQUEST, "BadRequest", "patch is not JSON");
            };
            merge(&mut value, &patch);
            match serde_json::from_value::<Node>(value.clone()) {
                Ok(node) => {
                    world.nodes.insert(name.to_string(), node);
                    answer(StatusCode::OK, value)
                }
                Err(e) => failure(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &e.to_string()),
            }
        }
        ("DELETE", ["api", "v1", "nodes", name]) => match world.nodes.remove(*name) {
            Some(_) => answer(
                StatusCode::OK,
                json!({"kind": "Status", "status": "Success"}),
            ),
            None => failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("nodes \"{name}\" not found"),
            ),
        },
        ("GET", ["api", "v1", "secrets"]) => {
            let items: Vec<Value> = world
                .objects
                .iter()
                .filter(|(path, _)| {
                    let parts: Vec<&str> = path.split('/').collect();
                    matches!(
                        parts.as_slice(),
                        ["", "api", "v1", "namespaces", _, "secrets", _]
                    )
                })
                .map(|(_, secret)| secret.clone())
                .collect();
            answer(
                StatusCode::OK,
                json!({"kind": "SecretList", "items": items}),
            )
        }
        ("PUT", ["api", "v1", "namespaces", _, "secrets", _]) => replace_secret(world, path, body),
        ("GET", ["api", "v1", "pods"]) => {
            let node = query
                .split('&')
                .find_map(|p| p.strip_prefix("fieldSelector=spec.nodeName%3D"))
                .unwrap_or_default();
            let list = k8s_openapi::List::<Pod> {
                items: world
                    .pods
                    .iter()
                    .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
                    .cloned()
                    .collect(),
                metadata: Default::default(),
            };
            answer(
                StatusCode::OK,
                serde_json::to_value(list).expect("pod list"),
            )
        }
        ("POST", ["api", "v1", "namespaces", ns, "pods", pod, "eviction"]) => {
            if world.evictions_refused > 0 {
                world.evictions_refused -= 1;
                return failure(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TooManyRequests",
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                );
            }
            let before = world.pods.len();
            world.pods.retain(|p| {
                !(p.metadata.namespace.as_deref() == Some(*ns)
                    && p.metadata.name.as_deref() == Some(*pod))
            });
            if world.pods.len() == before {
                return failure(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("pods \"{pod}\" not found"),
                );
            }
            answer(
                StatusCode::CREATED,
                json!({"kind": "Status", "status": "Success"}),
            )
        }
        ("GET", ["api", "v1", "namespaces", ns, "pods"]) => {
            let selector = label_selector(query);
            let selector = selector.as_ref().map(|(k, v)| (k.as_str(), v.as_str()));
            let mut items = world.pods_in(ns, selector);
            if *ns == "kube-system" {
                items.extend(world.node_job_pods_matching(selector));
            }
            answer(
                StatusCode::OK,
                json!({"kind": "PodList", "apiVersion": "v1", "items": items}),
            )
        }
        ("GET", ["api", "v1", "namespaces", "kube-system", "pods", pod])
            if world.etcd_mirror_pod(pod).is_some() =>
        {
            answer(
                StatusCode::OK,
                world.etcd_mirror_pod(pod).unwrap_or_default(),
            )
        }
        ("GET", ["api", "v1", "namespaces", "kube-system", "pods", pod, "log"])
            if world.node_job_log(pod).is_some() =>
        {
            Response::new(Full::new(Bytes::from(
                world.node_job_log(pod).unwrap_or_default(),
            )))
        }
        ("GET", ["api", "v1", "namespaces", _, "pods", pod, "log"])
            if world
                .objects
                .contains_key(&format!("{JOB_POD_PREFIX}{pod}")) =>
        {
            job_pod_log(world, pod, query)
        }
        ("GET", ["api", "v1", "namespaces", _, "pods", pod, "log"]) => {
            match world.pod_logs.get(*pod) {
                Some(log) => Response::new(Full::new(Bytes::from(log.clone()))),
                None => failure(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("pods \"{pod}\" not found"),
                ),
            }
        }
        (
            "GET",
            [
                "api",
                "v1",
                "namespaces",
                _,
                "pods",
                target,
                "proxy",
                "metrics",
            ],
        ) => {
            let pod = target.strip_suffix(":8080").unwrap_or_default();
            match world.pod_metrics.get(pod) {
                Some(text) => Response::new(Full::new(Bytes::from(text.clone()))),
                None => failure(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "no endpoints available for pod",
                ),
            }
        }
        ("GET", ["api", "v1", "namespaces", ns, "persistentvolumeclaims"]) => {
            let prefix = format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/");
            let items: Vec<Value> = world
                .objects
                .iter()
                .filter(|(p, _)| p.starts_with(&prefix))
                .map(|(_, v)| v.clone())
                .collect();
            answer(
                StatusCode::OK,
                json!({"kind": "PersistentVolumeClaimList", "apiVersion": "v1", "items": items}),
            )
        }
        ("DELETE", ["api", "v1", "namespaces", ns]) => {
            let ns = ns.to_string();
            world.delete_namespace(&ns);
            answer(
                StatusCode::OK,
                json!({"kind": "Status", "status": "Success"}),
            )
        }
        (
            "DELETE",
            [
                "apis",
                "helm.cattle.io",
                "v1",
                "namespaces",
                _,
                "helmcharts",
                _,
            ],
        ) => match world.objects.get_mut(path) {
            Some(chart) => {
                chart["metadata"]["deletionTimestamp"] = json!("2026-12-01T00:00:00Z");
                answer(StatusCode::OK, chart.clone())
            }
            None => failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{path} not found"),
            ),
        },
        ("DELETE", _) => match world.objects.remove(path) {
            Some(_) if path.starts_with("/apis/batch/v1/") => {
                world.node_job_deleted(path);
                answer(
                    StatusCode::OK,
                    json!({"kind": "Status", "status": "Success"}),
                )
            }
            Some(_) => answer(
                StatusCode::OK,
                json!({"kind": "Status", "status": "Success"}),
            ),
            None => failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{path} not found"),
            ),
        },
        ("PATCH", _) if content_type == "application/merge-patch+json" => {
            merge_patch(world, path, query, body)
        }
        ("PATCH", _) => {
            let answer = server_side_apply(world, path, query, content_type, body);
            if path.starts_with("/apis/batch/v1/") && answer.status().is_success() {
                world.run_node_job(path);
                if let Some(job) = world.objects.get(path) {
                    return self::answer(answer.status(), job.clone());
                }
            }
            answer
        }
        ("GET", _) => {
            if path.starts_with("/apis/batch/v1/") {
                world.note_job_read(path);
                world.poll_job(path);
                if let Some(job) = world.objects.get(path) {
                    let answer = (
                        path.to_string(),
                        job["metadata"]["uid"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        job["status"]["succeeded"] == 1,
                    );
                    world.job_answers.push(answer);
                }
            }
            if path.starts_with("/apis/apps/v1/") && path.contains("/deployments/") {
                world.poll_deployment(path);
            }
            let prefix = format!("{path}/");
            // A list is filtered by its `labelSelector` (`key=value`), as the API server does.
            let selector = label_selector(query);
            let items: Vec<Value> = world
                .objects
                .iter()
                .filter(|(p, _)| {
                    p.strip_prefix(&prefix)
                        .is_some_and(|rest| !rest.contains('/'))
                })
                .filter(|(_, v)| {
                    selector.as_ref().is_none_or(|(k, want)| {
                        v["metadata"]["labels"][k.as_str()] == want.as_str()
                    })
                })
                .map(|(_, v)| v.clone())
                .collect();
            match world.objects.get(path) {
                Some(object) => answer(StatusCode::OK, object.clone()),
                // A collection: the list of what is under it.
                None if !items.is_empty() => answer(StatusCode::OK, json!({"items": items})),
                None => failure(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{path} not found"),
                ),
            }
        }
        _ => failure(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", path),
    }
}

/// The log of a Job's `helm` container as the kubelet serves it
/// (`pkg/kubelet/kubelet_pods.go`, `validateContainerLogStatus`): with `previous=true` the last
/// terminated instance's, or 400 when the container never terminated; otherwise the running
/// one's, or the last terminated one's while it waits to restart.
fn job_pod_log(world: &World, pod: &str, query: &str) -> Answer {
    let object = &world.objects[&format!("{JOB_POD_PREFIX}{pod}")];
    let helm = &object["status"]["containerStatuses"][0];
    let terminated = helm["lastState"]["terminated"].is_object();
    let previous = query_value(query, "previous").as_deref() == Some("true");
    let output = world.helm_error.clone().unwrap_or_else(|| {
        "Error: INSTALLATION FAILED: failed to download chart: unexpected status 404 Not Found\n"
            .into()
    });
    match (previous, terminated) {
        (true, false) => failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("previous terminated container \"helm\" in pod \"{pod}\" not found"),
        ),
        (true, true) | (false, true) => Response::new(Full::new(Bytes::from(format!(
            "+ helm_v3 install ...\n{output}"
        )))),
        (false, false) => Response::new(Full::new(Bytes::from("+ helm_v3 install ...\n"))),
    }
}

/// Server-side apply as the API server checks it: the apply content type, a field manager,
/// and a body whose apiVersion, kind and name match the URL.
fn server_side_apply(
    world: &mut World,
    path: &str,
    query: &str,
    content_type: &str,
    body: &[u8],
) -> Answer {
    if content_type != "application/apply-patch+yaml" {
        return failure(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            content_type,
        );
    }
    if !query
        .split('&')
        .any(|p| p.starts_with("fieldManager=") && p.len() > 13)
    {
        return failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        );
    }
    let Ok(object) = serde_json::from_slice::<Value>(body) else {
        return failure(StatusCode::BAD_REQUEST, "BadRequest", "body is not YAML");
    };
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let group_version = path
        .strip_prefix("/api/")
        .or_else(|| path.strip_prefix("/apis/"))
        .unwrap_or_default();
    if name.is_empty() || !path.ends_with(&format!("/{name}")) || object["kind"].as_str().is_none()
    {
        return failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "name or kind does not match the URL",
        );
    }
    if !group_version.starts_with(&format!("{api_version}/")) {
        return failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("apiVersion {api_version} does not match {path}"),
        );
    }
    if let Some(namespace) = object["metadata"]["namespace"].as_str()
        && !path.contains(&format!("/namespaces/{namespace}/"))
    {
        return failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "namespace does not match the URL",
        );
    }
    let manager = query_value(query, "fieldManager").unwrap_or_default();
    let force = query_value(query, "force").as_deref() == Some("true");
    let current = world.objects.get(path).cloned().unwrap_or(Value::Null);
    let mut ownership = world.ownership.remove(path).unwrap_or_default();
    let result = ownership.apply(&without_managed_fields(&current), &object, &manager, force);
    let answer_for = match result {
        Err(conflicts) => {
            world.ownership.insert(path.to_string(), ownership);
            return conflict(&conflicts);
        }
        // The applier owns `stringData` keys, which are then converted into `data`: a key
        // it stops applying leaves `data` untouched (kubernetes/kubernetes#108008).
        Ok(object) => secret_string_data_as_data(object),
    };
    store(world, path, answer_for, &current, ownership)
}

/// Stores `object` at `path` (replacing `previous`) as the API server would: the CRD's
/// defaults filled in, server metadata stamped, managed fields recorded.
fn store(
    world: &mut World,
    path: &str,
    mut object: Value,
    previous: &Value,
    ownership: store::Ownership,
) -> Answer {
    let schema = world
        .crd_for(path)
        .flatten()
        .map(|crd| crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone());
    if let Some(schema) = schema {
        store::apply_defaults(&mut object, &schema);
    }
    object["metadata"]["managedFields"] = ownership.managed_fields(&object["apiVersion"]);
    let (mut uid, mut version) = (world.next_object_uid, world.next_version);
    store::stamp(&mut object, previous, &mut uid, &mut version);
    (world.next_object_uid, world.next_version) = (uid, version);
    world.ownership.insert(path.to_string(), ownership);
    world.objects.insert(path.to_string(), object.clone());
    let status = if previous.is_null() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    answer(status, object)
}

/// A request's JSON body and the object stored at `path`, or the 400 or 404 the API server
/// answers instead.
fn body_and_stored(world: &World, path: &str, body: &[u8]) -> Result<(Value, Value), Box<Answer>> {
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return Err(Box::new(failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the body is not JSON",
        )));
    };
    match world.objects.get(path) {
        Some(current) => Ok((body, current.clone())),
        None => Err(Box::new(failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{path} not found"),
        ))),
    }
}

/// A Secret replaced (PUT) as the API server stores it: the body's `resourceVersion` must be
/// the stored one (409 otherwise); an unchanged Secret is written, with a new
/// `resourceVersion`, only when it was stored in clear (its stored form is stale: read
/// through a provider other than the first), and is then stored encrypted (the API servers
/// here encrypt Secrets, as a cluster flatstack makes or restores does; flatstack writes
/// Secrets back only then).
fn replace_secret(world: &mut World, path: &str, body: &[u8]) -> Answer {
    let (mut object, current) = match body_and_stored(world, path, body) {
        Ok(both) => both,
        Err(answer) => return *answer,
    };
    let name = path.rsplit('/').next().unwrap_or_default();
    if object["kind"] != "Secret" || object["metadata"]["name"] != name {
        return failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the body is not this Secret",
        );
    }
    if object["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
        return failure(
            StatusCode::CONFLICT,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on {path}: the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
    }
    let stale = world.secrets_in_clear.remove(path);
    if object == current && !stale {
        return answer(StatusCode::OK, current);
    }
    world.next_version += 1;
    object["metadata"]["resourceVersion"] = json!(world.next_version.to_string());
    world.objects.insert(path.to_string(), object.clone());
    answer(StatusCode::OK, object)
}

/// A JSON merge patch of a stored object: an update, which takes over the fields it sets.
fn merge_patch(world: &mut World, path: &str, query: &str, body: &[u8]) -> Answer {
    let (patch, current) = match body_and_stored(world, path, body) {
        Ok(both) => both,
        Err(answer) => return *answer,
    };
    // A resourceVersion in the patch is a precondition (apiserver `registry/generic/registry`
    // `Store.Update`: a patched object whose version is not the stored one conflicts).
    if let Some(wanted) = patch["metadata"]["resourceVersion"].as_str()
        && current["metadata"]["resourceVersion"].as_str() != Some(wanted)
    {
        return failure(
            StatusCode::CONFLICT,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on {path}: the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
    }
    let manager = query_value(query, "fieldManager").unwrap_or_else(|| "unknown".into());
    let mut object = without_managed_fields(&current);
    merge(&mut object, &patch);
    let mut ownership = world.ownership.remove(path).unwrap_or_default();
    ownership.update(&object, &patch, &manager);
    store(world, path, object, &current, ownership)
}

/// The 409 of an apply that conflicts with other managers' fields.
fn conflict(conflicts: &[store::Conflict]) -> Answer {
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{}\"", c.manager), "field": c.field}))
        .collect();
    answer(
        StatusCode::CONFLICT,
        json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 409,
            "reason": "Conflict", "message": store::conflict_message(conflicts),
            "details": {"causes": causes},
        }),
    )
}

fn query_value(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|p| p.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
}

fn without_managed_fields(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(meta) = copy.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    copy
}

/// The API server keeps a Secret's `stringData` as base64 `data`, and answers with that. It
/// happens after server-side apply merged the object (the conversion runs on the merged
/// result), so `data` keys that came from `stringData` belong to no manager and survive an
/// apply that no longer names them (kubernetes/kubernetes#108008, closed unfixed).
fn secret_string_data_as_data(mut object: Value) -> Value {
    if object["kind"] == "Secret"
        && let Some(strings) = object
            .as_object_mut()
            .and_then(|o| o.remove("stringData"))
            .and_then(|v| v.as_object().cloned())
    {
        use base64::Engine as _;
        for (key, value) in strings {
            let encoded = base64::engine::general_purpose::STANDARD
                .encode(value.as_str().unwrap_or_default());
            object["data"][key] = json!(encoded);
        }
    }
    object
}

/// JSON merge patch (RFC 7386).
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(target), Some(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// A stand-in for Traefik: plain HTTP on loopback, routing a request to the Ingress (of any
/// namespace) whose path prefixes it, when a Deployment of that namespace is ready, and
/// answering with the `index.html` of that namespace's `page` ConfigMap — what nginx would
/// serve from the mounted page.
pub struct IngressStandIn {
    pub address: SocketAddr,
    _background: Background,
}

impl IngressStandIn {
    pub fn start(world: Arc<Mutex<World>>) -> IngressStandIn {
        let (background, listener, address) = Background::bind(1);
        background.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let world = world.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: Request<hyper::body::Incoming>| {
                            let world = world.clone();
                            async move {
                                let path = request.uri().path().to_string();
                                let world = world.lock().expect("world");
                                let page = route_ingress(&world, &path);
                                let mut response = Response::new(Full::new(Bytes::from(
                                    page.clone()
                                        .unwrap_or_else(|| "404 page not found\n".into()),
                                )));
                                if page.is_none() {
                                    *response.status_mut() = StatusCode::NOT_FOUND;
                                }
                                Ok::<_, std::convert::Infallible>(response)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        IngressStandIn {
            address,
            _background: background,
        }
    }
}

fn route_ingress(world: &World, path: &str) -> Option<String> {
    if world.ingress_broken {
        return None;
    }
    if world.ingress_misrouted {
        return Some("<h1>Welcome to nginx!</h1>\n".into());
    }
    let (ingress_path, _) = world.objects.iter().find(|(p, ingress)| {
        p.contains("/ingresses/")
            && ingress["spec"]["rules"][0]["http"]["paths"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|rule| {
                    rule["path"]
                        .as_str()
                        .is_some_and(|prefix| path.starts_with(prefix))
                })
    })?;
    let ns = ingress_path
        .split("/namespaces/")
        .nth(1)?
        .split('/')
        .next()?;
    let ready = world.objects.iter().any(|(p, d)| {
        p.starts_with(&format!("/apis/apps/v1/namespaces/{ns}/deployments/"))
            && d["status"]["readyReplicas"].as_i64().unwrap_or(0) > 0
    });
    if !ready {
        return None; // Traefik answers 503/404 with no ready endpoint
    }
    world
        .objects
        .get(&format!("/api/v1/namespaces/{ns}/configmaps/page"))?["data"]["index.html"]
        .as_str()
        .map(str::to_string)
}

/// The cluster PKI in `workspace`'s state directory, made on first use.
pub fn pki(workspace: &crate::support::Workspace) -> flatstack::pki::ClusterPki {
    let state =
        flatstack::pki::StateDir::open_or_create(&workspace.state_dir()).expect("state dir");
    flatstack::pki::ClusterPki::load_or_create(&state).expect("pki")
}

/// A stand-in for `pki`'s cluster with the nodes of `spec` registered.
pub fn stand_in(
    pki: &flatstack::pki::ClusterPki,
    spec: &flatstack::spec::ClusterSpec,
    mut world: World,
) -> StandIn {
    // Each node registers with the taints flatstack's kubeadm configuration gives it.
    let endpoint = flatstack::node::ApiEndpoint {
        internal: std::net::Ipv4Addr::new(10, 42, 0, 10),
        public: None,
    };
    for node in spec.nodes() {
        let control_plane = node.role == flatstack::spec::Role::ControlPlane;
        let config = match node.pool.and_then(|i| spec.worker_pools.get(i)) {
            Some(pool) => flatstack::node::kubeadm::join_config(spec, pool, pki, &endpoint),
            None => flatstack::node::kubeadm::init_config(spec, &endpoint, true),
        }
        .expect("kubeadm configuration");
        let registration = kubeadm_registration(&config);
        // The kubelet registers with `spec.providerID` from this flag, the instance UUID put
        // in by the node's bootstrap script from Afterburn (the stand-in's `instance_uuid`).
        let provider_id = registration["kubeletExtraArgs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|arg| arg["name"] == "provider-id")
            .and_then(|arg| arg["value"].as_str())
            .unwrap_or_default();
        assert!(
            provider_id.starts_with("openstack:///"),
            "{}: provider-id {provider_id:?}",
            node.name
        );
        world.register_with_taints(
            &node.name,
            control_plane,
            kubeadm_taints(&registration, control_plane),
            external_cloud_provider(&registration),
        );
    }
    StandIn::start(
        &pki.ca.cert_pem,
        pki.ca.key_pem.expose(),
        &pki.ca.cert_pem,
        world,
    )
}

/// The `nodeRegistration` of a node's kubeadm Init or Join configuration.
fn kubeadm_registration(config: &str) -> Value {
    config
        .split("\n---\n")
        .filter_map(|doc| serde_saphyr::from_str::<Value>(doc).ok())
        .find(|doc| doc["kind"] == "InitConfiguration" || doc["kind"] == "JoinConfiguration")
        .map(|doc| doc["nodeRegistration"].clone())
        .unwrap_or(Value::Null)
}

/// Whether the node's kubelet runs with `cloud-provider=external` (its `kubeletExtraArgs`).
fn external_cloud_provider(registration: &Value) -> bool {
    registration["kubeletExtraArgs"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|arg| arg["name"] == "cloud-provider" && arg["value"] == "external")
}

/// The taints kubeadm registers a node with: its configuration's `nodeRegistration.taints`;
/// without that key, `node-role.kubernetes.io/control-plane:NoSchedule` on control planes
/// and none on workers (kubeadm v1beta4 `SetDefaults_NodeRegistration` and
/// `SetJoinControlPlaneDefaults`).
fn kubeadm_taints(registration: &Value, control_plane: bool) -> Vec<Taint> {
    match registration["taints"].as_array() {
        Some(taints) => taints
            .iter()
            .map(|t| {
                taint(
                    t["key"].as_str().unwrap_or_default(),
                    t["value"].as_str(),
                    t["effect"].as_str().unwrap_or_default(),
                )
            })
            .collect(),
        None if control_plane => vec![taint(CONTROL_PLANE_TAINT, None, "NoSchedule")],
        None => Vec::new(),
    }
}

/// A `cloud.conf` with a credential the tests look for (and must never find in chart values).
pub fn conf() -> flatstack::addons::CloudConf {
    flatstack::addons::CloudConf {
        text: flatstack::secret::Secret::new(
            "[Global]\nauth-url = \"https://keystone.example/v3\"\napplication-credential-secret = \"s3cret-value\"\n",
        ),
        ca_bundle: None,
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

/// A progress callback that prints nothing.
pub fn quiet(_: &str) {}
