//! flatstack's node Jobs as the cluster runs them, and etcd's membership as stacked kubeadm
//! control planes keep it (a member per control plane that joined, named after its node:
//! kubeadm `phases/etcd/local.go`, `CreateStackedEtcdStaticPodManifestFile`, which adds the
//! member and writes `etcd.yaml`, whose mirror pod the kubelet names `etcd-<node>`).
//!
//! A node Job runs at once on its node when the node is registered; its pod's log is what the
//! command prints, as `etcdctl` 3.4–3.6 prints it (checked against a real etcd in
//! `etcd.rs`): `member list -w json` with decimal IDs, `member remove <hex>`, and `Error:
//! etcdserver: member not found` for an ID that is not a member, `endpoint status -w json`
//! (the first member leads). Without a quorum of members
//! on registered nodes, every etcdctl command fails as a linearizable request does (`Error:
//! context deadline exceeded`). Simplification: the Job's status is set when it is created
//! (upstream, the job controller sets it once the pod has ended).

use super::*;
use flatstack::kube::certificates::CHECK_EXPIRATION;

/// The label flatstack's node Jobs carry (`src/kube/node_job.rs`).
const NODE_JOB_LABEL: &str = "flatstack.dev/node-job";
/// kured's DaemonSet and its lock annotation (kured 1.23 `pkg/daemonsetlock`).
pub const KURED_DAEMONSET: &str = "/apis/apps/v1/namespaces/kube-system/daemonsets/kured";
pub const KURED_LOCK: &str = "weave.works/kured-node-lock";
/// kubeadm's record of the cluster's configuration (`kubernetesVersion` in it).
pub const KUBEADM_CONFIG: &str = "/api/v1/namespaces/kube-system/configmaps/kubeadm-config";
/// The image of the etcd static pod kubeadm 1.37 writes (`constants.go`, etcd 3.6.x).
const ETCD_IMAGE: &str = "registry.k8s.io/etcd:3.6.5-0";

/// One etcd member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_url: String,
}

impl World {
    /// Control plane `name` joins etcd: its member is added (learner, then promoted at once).
    pub fn etcd_joins(&mut self, name: &str) {
        if self.etcd_members.iter().any(|m| m.name == name) {
            return;
        }
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(format!("{name}/{}", self.etcd_members.len()).as_bytes());
        let id = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        // kubeadm's peer URL is the node's advertise address, its port's: on the test
        // clusters' subnet (10.42.0.0/24) flatstack gives control plane N host 10 + N.
        let n: usize = name
            .rsplit_once("-control-plane-")
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or(200);
        self.etcd_members.push(Member {
            id,
            name: name.to_string(),
            peer_url: format!("https://10.42.0.{}:2380", 10 + n),
        });
    }

    /// The mirror pod of the etcd static pod on `node`, while it has a member.
    pub(super) fn etcd_mirror_pod(&self, pod: &str) -> Option<Value> {
        let node = pod.strip_prefix("etcd-")?;
        self.etcd_members.iter().find(|m| m.name == node)?;
        self.nodes.get(node)?;
        Some(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": "kube-system",
                "annotations": {"kubernetes.io/config.mirror": "mirror"}},
            "spec": {"nodeName": node, "hostNetwork": true,
                "containers": [{"name": "etcd", "image": ETCD_IMAGE, "command": ["etcd"]}]},
            "status": {"phase": "Running"}
        }))
    }

    /// Runs the node Job just stored at `path`, if it is one: its pod on its node, the log,
    /// and the Job's outcome in its status.
    pub(super) fn run_node_job(&mut self, path: &str) {
        let Some(job) = self.objects.get(path).cloned() else {
            return;
        };
        let Some(name) = job["metadata"]["labels"][NODE_JOB_LABEL].as_str() else {
            return;
        };
        let pod = &job["spec"]["template"]["spec"];
        let node = pod["nodeName"].as_str().unwrap_or_default().to_string();
        if !self.nodes.contains_key(&node) {
            return; // never runs: its pod waits for a node that is not there
        }
        let command: Vec<String> = pod["containers"][0]["command"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        self.node_job_runs
            .push((name.to_string(), node.clone(), command.clone()));
        let env: BTreeMap<String, String> = pod["containers"][0]["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                Some((
                    e["name"].as_str()?.to_string(),
                    e["value"].as_str()?.to_string(),
                ))
            })
            .collect();
        let (succeeded, log) = match env.get("MODE") {
            Some(mode) => self.host_action(&node, mode, &env),
            None if command.get(2).map(String::as_str) == Some(CHECK_EXPIRATION) => {
                self.check_expiration(&node)
            }
            None => self.etcdctl(&command),
        };
        let pod_name = format!("{name}-x7k2p");
        let pod_object = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": "kube-system",
                "labels": {NODE_JOB_LABEL: name}},
            "spec": {"nodeName": node},
            "status": {"phase": if succeeded { "Succeeded" } else { "Failed" }}
        });
        self.node_job_pods
            .insert(name.to_string(), (pod_object, log));
        if let Some(stored) = self.objects.get_mut(path) {
            stored["status"] = match succeeded {
                true => json!({"succeeded": 1}),
                false => json!({"failed": 1}),
            };
        }
    }

    /// A node Job deleted: its pod goes with it (background propagation).
    pub(super) fn node_job_deleted(&mut self, path: &str) {
        if let Some(name) = path.rsplit('/').next() {
            self.node_job_pods.remove(name);
        }
    }

    /// The pods of node Jobs matching `selector`.
    pub(super) fn node_job_pods_matching(&self, selector: Option<(&str, &str)>) -> Vec<Value> {
        self.node_job_pods
            .values()
            .map(|(pod, _)| pod)
            .filter(|pod| selector.is_none_or(|(k, v)| pod["metadata"]["labels"][k] == v))
            .cloned()
            .collect()
    }

    /// The log of node Job pod `pod`.
    pub(super) fn node_job_log(&self, pod: &str) -> Option<String> {
        self.node_job_pods
            .values()
            .find(|(p, _)| p["metadata"]["name"] == pod)
            .map(|(_, log)| log.clone())
    }

    /// What the host-action launcher prints on `node` in `mode` (`src/kube/host_action.rs`).
    /// A started action's unit runs at once and ends (simplification: upstream it runs while
    /// later checks say `running`); its effect is what flatstack's upgrade scripts do on a
    /// node: `stage` with `kubeadm upgrade apply vX` uploads vX to `kubeadm-config` after
    /// restarting the API server (kubeadm `upload-config` runs after the control-plane phase,
    /// whose static-pod replacement restarts it: `phases/upgrade/staticpods.go`), `activate`
    /// restarts the kubelet on vX, which reports it at its first status sync
    /// (`nodestatus.VersionInfo`).
    fn host_action(
        &mut self,
        node: &str,
        mode: &str,
        env: &BTreeMap<String, String>,
    ) -> (bool, String) {
        let action = env.get("ACTION").cloned().unwrap_or_default();
        let key = (node.to_string(), action.clone());
        let finished = |record: &(i32, String)| {
            format!(
                "state=finished\nexit={}\nfinished=2026-12-07T10:00:00Z\n--- journal\n{}",
                record.0, record.1
            )
        };
        match mode {
            "check" => match self.host_actions.get(&key) {
                Some(record) => (true, finished(record)),
                None => (true, "state=absent\n".into()),
            },
            "forget" => {
                self.host_actions.remove(&key);
                (true, "state=forgotten\n".into())
            }
            "start" => {
                if let Some(record) = self.host_actions.get(&key) {
                    return (true, finished(record));
                }
                // The Job's env carries `$` doubled (Kubernetes expands `$(VAR)`).
                let script = env
                    .get("SCRIPT")
                    .cloned()
                    .unwrap_or_default()
                    .replace("$$", "$");
                let reboots_locked = self
                    .objects
                    .get(KURED_DAEMONSET)
                    .is_some_and(|ds| !ds["metadata"]["annotations"][KURED_LOCK].is_null());
                let cordoned = self
                    .nodes
                    .get(node)
                    .and_then(|n| n.spec.as_ref())
                    .and_then(|s| s.unschedulable)
                    .unwrap_or(false);
                let kubeadm = ["upgrade apply", "upgrade node"]
                    .into_iter()
                    .find(|command| script.contains(&format!("/usr/bin/kubeadm\" {command}")))
                    .map(str::to_string);
                self.host_action_runs.push(HostActionRun {
                    node: node.to_string(),
                    action: action.clone(),
                    reboots_locked,
                    cordoned,
                    kubeadm,
                });
                let failing = self
                    .failing_host_action
                    .as_ref()
                    .filter(|(n, a, _)| n == node && *a == action)
                    .map(|(_, _, journal)| journal.clone());
                let record = match failing {
                    Some(journal) => (1, journal),
                    None => {
                        self.host_action_effect(node, &script);
                        (0, format!("{action} done\n"))
                    }
                };
                self.host_actions.insert(key, record);
                (true, "state=started\n".into())
            }
            other => (false, format!("unknown mode {other}\n")),
        }
    }

    /// What a successful upgrade script changes that the API shows.
    fn host_action_effect(&mut self, node: &str, script: &str) {
        let release = |marker: &str| {
            script
                .lines()
                .find_map(|l| l.strip_prefix(marker))
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_string)
        };
        if let Some(target) = release("# flatstack: stage Kubernetes ")
            && script.contains(&format!("upgrade apply {target} --yes"))
        {
            if let Some(config) = self.objects.get_mut(KUBEADM_CONFIG) {
                let document = config["data"]["ClusterConfiguration"]
                    .as_str()
                    .unwrap_or_default()
                    .lines()
                    .map(|l| match l.starts_with("kubernetesVersion:") {
                        true => format!("kubernetesVersion: {target}"),
                        false => l.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                config["data"]["ClusterConfiguration"] = json!(document);
            }
            self.outage = self.apply_outage;
        }
        if let Some(target) = release("# flatstack: activate Kubernetes ")
            && let Some(info) = self
                .nodes
                .get_mut(node)
                .and_then(|n| n.status.as_mut())
                .and_then(|s| s.node_info.as_mut())
        {
            info.kubelet_version = target;
        }
    }

    /// What `kubeadm certs check-expiration -o json` prints on `node`: its progress line, then
    /// the `output.kubeadm.k8s.io/v1alpha3` `CertificateExpirationInfo` (kubeadm
    /// `cmd/kubeadm/app/apis/output/v1alpha3/types.go`) with the certificates kubeadm 1.29+
    /// makes on a control plane (`super-admin.conf` included) and its three CAs.
    fn check_expiration(&self, node: &str) -> (bool, String) {
        let control_plane = self.nodes.get(node).is_some_and(|n| {
            n.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(CONTROL_PLANE_TAINT))
        });
        if !control_plane {
            return (
                false,
                "error: open /etc/kubernetes/pki/ca.crt: no such file or directory\n".into(),
            );
        }
        let now = flatstack::kube::now();
        let year = now
            .checked_add(k8s_openapi::jiff::SignedDuration::from_hours(24 * 365))
            .expect("a year on");
        let expires = self
            .certificates_expire
            .get(node)
            .cloned()
            .unwrap_or_else(|| year.to_string());
        let leaf = |name: &str, ca: &str| {
            json!({"name": name, "expirationDate": expires, "residualTime": 0,
                "externallyManaged": false, "caName": ca, "missing": false})
        };
        let certificates: Vec<Value> = [
            ("admin.conf", "ca"),
            ("apiserver", "ca"),
            ("apiserver-etcd-client", "etcd-ca"),
            ("apiserver-kubelet-client", "ca"),
            ("controller-manager.conf", "ca"),
            ("etcd-healthcheck-client", "etcd-ca"),
            ("etcd-peer", "etcd-ca"),
            ("etcd-server", "etcd-ca"),
            ("front-proxy-client", "front-proxy-ca"),
            ("scheduler.conf", "ca"),
            ("super-admin.conf", "ca"),
        ]
        .into_iter()
        .map(|(name, ca)| leaf(name, ca))
        .collect();
        let ten_years = now
            .checked_add(k8s_openapi::jiff::SignedDuration::from_hours(24 * 3650))
            .expect("ten years on")
            .to_string();
        let authorities: Vec<Value> = ["ca", "etcd-ca", "front-proxy-ca"]
            .into_iter()
            .map(|name| {
                json!({"name": name, "expirationDate": ten_years, "residualTime": 0,
                "externallyManaged": false, "missing": false})
            })
            .collect();
        let info = json!({"kind": "CertificateExpirationInfo",
            "apiVersion": "output.kubeadm.k8s.io/v1alpha3",
            "certificates": certificates, "certificateAuthorities": authorities});
        (
            true,
            format!(
                "[check-expiration] Reading configuration from the \"kubeadm-config\" ConfigMap in namespace \"kube-system\"...\n{}\n",
                serde_json::to_string_pretty(&info).expect("json")
            ),
        )
    }

    /// What etcdctl prints for `command` against this cluster's etcd.
    fn etcdctl(&mut self, command: &[String]) -> (bool, String) {
        if command.first().map(String::as_str) != Some("etcdctl") {
            return (false, format!("exec: {:?}: not found", command.first()));
        }
        let alive = self
            .etcd_members
            .iter()
            .filter(|m| self.nodes.contains_key(&m.name))
            .count();
        if alive < self.etcd_members.len() / 2 + 1 {
            return (false, "Error: context deadline exceeded\n".into());
        }
        let args: Vec<&str> = command
            .iter()
            .map(String::as_str)
            .filter(|a| !a.starts_with("--"))
            .collect();
        match args.as_slice() {
            ["etcdctl", "member", "list", "-w", "json"] => {
                let members: Vec<Value> = self
                    .etcd_members
                    .iter()
                    .map(|m| json!({"ID": m.id, "name": m.name, "peerURLs": [m.peer_url]}))
                    .collect();
                (
                    true,
                    json!({"header": {"raft_term": 2}, "members": members}).to_string(),
                )
            }
            ["etcdctl", "endpoint", "status", "-w", "json"] => {
                let leader = self.etcd_members.first().map_or(0, |m| m.id);
                let status = json!([{"Endpoint": "https://127.0.0.1:2379", "Status": {
                    "header": {"member_id": leader, "raft_term": 2},
                    "version": "3.6.5", "leader": leader, "raftTerm": 2}}]);
                (true, status.to_string())
            }
            ["etcdctl", "member", "remove", hex] => {
                let id = u64::from_str_radix(hex, 16).ok();
                match self.etcd_members.iter().position(|m| Some(m.id) == id) {
                    Some(at) => {
                        self.etcd_members.remove(at);
                        (
                            true,
                            format!("Member {hex} removed from cluster 8e9e05c52164694d\n"),
                        )
                    }
                    None => (false, "Error: etcdserver: member not found\n".into()),
                }
            }
            other => (false, format!("Error: unknown command {other:?}\n")),
        }
    }
}
