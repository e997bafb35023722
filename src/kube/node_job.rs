//! Acting on a node without SSH: a Job pinned to one node, waited for, its log read (it is the
//! answer of a command such as `etcdctl member list`, and shown when the Job fails), and deleted
//! with its pod afterwards.
//!
//! Two profiles: [`Profile::Command`] runs a command from an image the node already runs (so
//! nothing new is pulled, and the version matches the node's), e.g. `etcdctl` from kubeadm's
//! etcd image, which has no shell (distroless since etcd 3.6.5), so the command is given as
//! arguments, with host directories such as the etcd client certificates mounted read-only;
//! [`Profile::Host`] is privileged, in the host's PID namespace with the host's root at
//! [`HOST_ROOT`], for host actions (see [`super::host_action`]).

use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, HostPathVolumeSource, Pod, PodSpec, PodTemplateSpec, SecurityContext,
    Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{KubeClient, KubeError, Manifest, Waiting, poll};

/// Where node Jobs live.
const NAMESPACE: &str = "kube-system";
/// The label that marks flatstack's node Jobs (and their pods, through the template).
pub(crate) const NODE_JOB_LABEL: &str = "flatstack.dev/node-job";

/// Where a host-profile Job sees the host's root.
pub(crate) const HOST_ROOT: &str = "/host";

/// A command run once on one node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NodeJob {
    /// The Job's name before the suffix each run adds (so that `status` and `up` asking
    /// the same node at once never share, or delete, each other's Job).
    pub(crate) name: String,
    pub(crate) node: String,
    pub(crate) image: String,
    /// The program and its arguments.
    pub(crate) command: Vec<String>,
    pub(crate) profile: Profile,
}

/// What a node Job may touch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Profile {
    /// Unprivileged, read-only root: these host directories mounted read-only at the same path.
    Command { host_paths: Vec<String> },
    /// Privileged, in the host's PID namespace, the host's root read-write at [`HOST_ROOT`],
    /// with these environment variables.
    Host { env: Vec<(String, String)> },
}

impl NodeJob {
    /// The Job: on the node's host network, pinned to it by name (no scheduler, every taint
    /// tolerated), run once (no retry: the caller decides), cleaned up by the API server an
    /// hour later should flatstack be stopped before it deletes it.
    pub(crate) fn manifest(&self) -> Manifest {
        let volume_name = |i: usize| format!("host-{i}");
        // Each host path, where the container sees it, and whether read-only.
        let mounts: Vec<(&str, &str, bool)> = match &self.profile {
            Profile::Command { host_paths } => host_paths
                .iter()
                .map(|p| (p.as_str(), p.as_str(), true))
                .collect(),
            Profile::Host { .. } => vec![("/", HOST_ROOT, false)],
        };
        let labels =
            std::collections::BTreeMap::from([(NODE_JOB_LABEL.to_string(), self.name.clone())]);
        let job = Job {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(NAMESPACE.into()),
                labels: Some(labels.clone()),
                ..Default::default()
            },
            spec: Some(JobSpec {
                backoff_limit: Some(0),
                ttl_seconds_after_finished: Some(3600),
                active_deadline_seconds: Some(300),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        node_name: Some(self.node.clone()),
                        host_network: Some(true),
                        restart_policy: Some("Never".into()),
                        priority_class_name: Some("system-node-critical".into()),
                        tolerations: Some(vec![Toleration {
                            operator: Some("Exists".into()),
                            ..Default::default()
                        }]),
                        host_pid: Some(matches!(self.profile, Profile::Host { .. })),
                        containers: vec![Container {
                            name: "run".into(),
                            image: Some(self.image.clone()),
                            image_pull_policy: Some("IfNotPresent".into()),
                            command: Some(self.command.clone()),
                            env: match &self.profile {
                                Profile::Host { env } => Some(
                                    env.iter()
                                        .map(|(name, value)| EnvVar {
                                            name: name.clone(),
                                            value: Some(value.clone()),
                                            ..Default::default()
                                        })
                                        .collect(),
                                ),
                                Profile::Command { .. } => None,
                            },
                            security_context: Some(match &self.profile {
                                Profile::Command { .. } => SecurityContext {
                                    allow_privilege_escalation: Some(false),
                                    read_only_root_filesystem: Some(true),
                                    ..Default::default()
                                },
                                Profile::Host { .. } => SecurityContext {
                                    privileged: Some(true),
                                    ..Default::default()
                                },
                            }),
                            volume_mounts: Some(
                                mounts
                                    .iter()
                                    .enumerate()
                                    .map(|(i, (_, at, read_only))| VolumeMount {
                                        name: volume_name(i),
                                        mount_path: at.to_string(),
                                        read_only: Some(*read_only),
                                        ..Default::default()
                                    })
                                    .collect(),
                            ),
                            ..Default::default()
                        }],
                        volumes: Some(
                            mounts
                                .iter()
                                .enumerate()
                                .map(|(i, (path, _, _))| Volume {
                                    name: volume_name(i),
                                    host_path: Some(HostPathVolumeSource {
                                        path: path.to_string(),
                                        type_: Some("Directory".into()),
                                    }),
                                    ..Default::default()
                                })
                                .collect(),
                        ),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            ..Default::default()
        };
        Manifest::of(&job)
    }
}

/// How a node Job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Succeeded,
    Failed,
}

impl KubeClient {
    /// Runs `job` to its end and returns its log (the command's output), under a name of
    /// its own (`<name>-<random>`); the Job and its pod are deleted afterwards whatever the
    /// outcome (and by the API server an hour after it ended, should flatstack be stopped
    /// first). A failure carries the command's log.
    pub(crate) async fn run_node_job(
        &self,
        job: &NodeJob,
        within: Duration,
    ) -> Result<String, KubeError> {
        let mut suffix = [0u8; 3];
        getrandom::fill(&mut suffix).map_err(|e| KubeError::NodeJob {
            job: job.name.clone(),
            node: job.node.clone(),
            log: format!("no randomness for the Job's name: {e}"),
        })?;
        let job = &NodeJob {
            name: format!("{}-{}", job.name, hex::encode(suffix)),
            ..job.clone()
        };
        let path = format!("/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{}", job.name);
        self.apply(&job.manifest()).await?;
        let ended = poll(
            &format!("node Job {} on {}", job.name, job.node),
            within,
            Duration::from_secs(1),
            || async {
                let current: Option<Job> = self.get(&path).await?;
                let status = current.and_then(|j| j.status).unwrap_or_default();
                Ok(if status.succeeded.unwrap_or(0) > 0 {
                    Waiting::Done(Outcome::Succeeded)
                } else if status.failed.unwrap_or(0) > 0 {
                    Waiting::Done(Outcome::Failed)
                } else {
                    Waiting::On(format!("{} active", status.active.unwrap_or(0)))
                })
            },
        )
        .await;
        let log = match ended {
            Ok(_) => self.job_log(job).await,
            Err(_) => Ok(String::new()),
        };
        self.delete_job(&path).await?;
        let (ended, log) = (ended?, log?);
        match ended {
            Outcome::Succeeded => Ok(log),
            Outcome::Failed => Err(KubeError::NodeJob {
                job: job.name.clone(),
                node: job.node.clone(),
                log: log.trim().to_string(),
            }),
        }
    }

    /// The log of the Job's (only) pod.
    async fn job_log(&self, job: &NodeJob) -> Result<String, KubeError> {
        let selector = format!("{NODE_JOB_LABEL}%3D{}", job.name);
        let pods: Vec<Pod> = self
            .list(&format!(
                "/api/v1/namespaces/{NAMESPACE}/pods?labelSelector={selector}"
            ))
            .await?;
        let Some(pod) = pods.first().and_then(|p| p.metadata.name.clone()) else {
            return Ok(String::new());
        };
        Ok(self
            .get_text(&format!("/api/v1/namespaces/{NAMESPACE}/pods/{pod}/log"))
            .await?
            .unwrap_or_default())
    }

    /// Deletes a Job and, in the background, its pods.
    async fn delete_job(&self, path: &str) -> Result<(), KubeError> {
        self.delete(&format!("{path}?propagationPolicy=Background"))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_job_runs_once_on_its_node_with_host_paths_read_only() {
        let job = NodeJob {
            name: "flatstack-etcd-members".into(),
            node: "demo-control-plane-2".into(),
            image: "registry.k8s.io/etcd:3.6.5-0".into(),
            command: vec!["etcdctl".into(), "member".into(), "list".into()],
            profile: Profile::Command {
                host_paths: vec!["/etc/kubernetes/pki/etcd".into()],
            },
        };
        let manifest = job.manifest();
        assert_eq!(
            manifest.object_path(),
            "/apis/batch/v1/namespaces/kube-system/jobs/flatstack-etcd-members"
        );
        let spec = &manifest.body()["spec"];
        assert_eq!(spec["backoffLimit"], 0);
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["nodeName"], "demo-control-plane-2");
        assert_eq!(pod["hostNetwork"], true);
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(pod["tolerations"][0]["operator"], "Exists");
        let container = &pod["containers"][0];
        assert_eq!(container["command"][0], "etcdctl");
        assert_eq!(container["volumeMounts"][0]["readOnly"], true);
        assert_eq!(
            container["volumeMounts"][0]["mountPath"],
            "/etc/kubernetes/pki/etcd"
        );
        assert_eq!(
            pod["volumes"][0]["hostPath"]["path"],
            "/etc/kubernetes/pki/etcd"
        );
    }
}
