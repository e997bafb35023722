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

/// The label flatstack's node Jobs carry (`src/kube/node_job.rs`).
const NODE_JOB_LABEL: &str = "flatstack.dev/node-job";
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
        let (succeeded, log) = self.etcdctl(&command);
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
