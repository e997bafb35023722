//! The etcd membership of a kubeadm control plane (stacked etcd: a member on every control
//! plane), read and changed through a node Job that runs `etcdctl` from the etcd image the
//! control plane already runs, against its local member, with kubeadm's etcd CA and
//! health-check client certificate (`/etc/kubernetes/pki/etcd/healthcheck-client.*`, kubeadm
//! `constants.EtcdHealthcheckClientCertAndKeyBaseName`) mounted read-only.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;

use super::node_job::{NodeJob, Profile};
use super::{KubeClient, KubeError};

/// Where kubeadm keeps the etcd certificates on a control plane.
const ETCD_PKI: &str = "/etc/kubernetes/pki/etcd";
/// The local member's client URL (kubeadm's `--listen-client-urls` includes loopback).
const LOCAL_MEMBER: &str = "https://127.0.0.1:2379";

/// One member as `etcdctl member list -w json` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EtcdMember {
    /// Decimal in the JSON; `member remove` takes it in hex.
    #[serde(rename = "ID")]
    pub id: u64,
    /// The node's name (kubeadm names members after their node); empty until it started.
    #[serde(default)]
    pub name: String,
    #[serde(rename = "peerURLs", default)]
    pub peer_urls: Vec<String>,
    #[serde(rename = "isLearner", default)]
    pub is_learner: bool,
}

impl EtcdMember {
    /// The ID as `etcdctl member remove` takes it.
    pub fn hex_id(&self) -> String {
        format!("{:x}", self.id)
    }

    /// Whether this is the member of the node `name` at `address` (by name, or by its peer
    /// URL when it never started and has no name yet).
    pub fn is_of(&self, name: &str, address: Option<&str>) -> bool {
        self.name == name
            || address.is_some_and(|a| self.peer_urls.iter().any(|u| u == &peer_url(a)))
    }
}

/// The peer URL kubeadm gives the member of a control plane at `address`.
fn peer_url(address: &str) -> String {
    format!("https://{address}:2380")
}

/// `etcdctl` with the connection flags for the local member and `args` after them: exactly
/// what the node Job runs. `pki` is where the certificates are (on a node, [`ETCD_PKI`]).
pub fn etcdctl(endpoint: &str, pki: &str, args: &[&str]) -> Vec<String> {
    [
        "etcdctl".to_string(),
        format!("--endpoints={endpoint}"),
        format!("--cacert={pki}/ca.crt"),
        format!("--cert={pki}/healthcheck-client.crt"),
        format!("--key={pki}/healthcheck-client.key"),
        "--command-timeout=15s".to_string(),
    ]
    .into_iter()
    .chain(args.iter().map(|a| a.to_string()))
    .collect()
}

/// The members in `etcdctl member list -w json` output.
pub fn parse_members(output: &str) -> Result<Vec<EtcdMember>, String> {
    #[derive(Deserialize)]
    struct List {
        #[serde(default)]
        members: Vec<EtcdMember>,
    }
    serde_json::from_str::<List>(output.trim())
        .map(|l| l.members)
        .map_err(|e| format!("etcdctl's member list is not what etcd prints: {e}"))
}

/// The leader's member ID, as the first member in `etcdctl endpoint status -w json` output
/// knows it.
pub fn parse_leader(output: &str) -> Result<u64, String> {
    #[derive(Deserialize)]
    struct Endpoint {
        #[serde(rename = "Status")]
        status: Status,
    }
    #[derive(Deserialize)]
    struct Status {
        leader: u64,
    }
    serde_json::from_str::<Vec<Endpoint>>(output.trim())
        .map_err(|e| format!("etcdctl's endpoint status is not what etcd prints: {e}"))?
        .first()
        .map(|e| e.status.leader)
        .ok_or_else(|| "etcdctl's endpoint status lists no endpoint".to_string())
}

impl KubeClient {
    /// The image of the etcd static pod on `node` (kubeadm names its mirror pod
    /// `etcd-<node>`): the Job runs what the node already has.
    async fn etcd_image(&self, node: &str) -> Result<String, KubeError> {
        let path = format!("/api/v1/namespaces/kube-system/pods/etcd-{node}");
        let pod: Option<Pod> = self.get(&path).await?;
        pod.and_then(|p| p.spec)
            .and_then(|s| s.containers.into_iter().find(|c| c.name == "etcd"))
            .and_then(|c| c.image)
            .ok_or_else(|| KubeError::Timeout {
                what: format!("the etcd pod on {node}"),
                waited: Duration::ZERO,
                last: format!("{path} has no etcd container"),
            })
    }

    async fn etcdctl_on(
        &self,
        node: &str,
        purpose: &str,
        args: &[&str],
        within: Duration,
    ) -> Result<String, KubeError> {
        let job = NodeJob {
            name: format!("flatstack-etcd-{purpose}"),
            node: node.to_string(),
            image: self.etcd_image(node).await?,
            command: etcdctl(LOCAL_MEMBER, ETCD_PKI, args),
            profile: Profile::Command {
                host_paths: vec![ETCD_PKI.to_string()],
            },
        };
        self.run_node_job(&job, within).await
    }

    /// The cluster's etcd members, as the member on control plane `via` knows them (a
    /// linearizable read: it fails without quorum).
    pub async fn etcd_members(
        &self,
        via: &str,
        within: Duration,
    ) -> Result<Vec<EtcdMember>, KubeError> {
        let log = self
            .etcdctl_on(via, "members", &["member", "list", "-w", "json"], within)
            .await?;
        parse_members(&log).map_err(|message| KubeError::NodeJob {
            job: "flatstack-etcd-members".into(),
            node: via.to_string(),
            log: message,
        })
    }

    /// The members and the leader's ID, as the member on control plane `via` knows them.
    pub async fn etcd_view(
        &self,
        via: &str,
        within: Duration,
    ) -> Result<(Vec<EtcdMember>, u64), KubeError> {
        let members = self.etcd_members(via, within).await?;
        let log = self
            .etcdctl_on(via, "status", &["endpoint", "status", "-w", "json"], within)
            .await?;
        let leader = parse_leader(&log).map_err(|message| KubeError::NodeJob {
            job: "flatstack-etcd-status".into(),
            node: via.to_string(),
            log: message,
        })?;
        Ok((members, leader))
    }

    /// Waits until control plane `node` is a started, voting member (kubeadm adds a joining
    /// control plane as a learner and promotes it once it caught up), as `via` lists them.
    pub async fn wait_voting_member(
        &self,
        via: &str,
        node: &str,
        within: Duration,
    ) -> Result<(), KubeError> {
        super::poll(
            &format!("{node} to be a voting etcd member"),
            within,
            Duration::from_secs(5),
            || async {
                let members = self.etcd_members(via, within).await?;
                Ok(
                    match members.iter().find(|m| m.name == node && !m.is_learner) {
                        Some(_) => super::Waiting::Done(()),
                        None => super::Waiting::On(format!(
                            "members: {}",
                            members
                                .iter()
                                .map(|m| match m.is_learner {
                                    true => format!("{} (learner)", m.name),
                                    false => m.name.clone(),
                                })
                                .collect::<Vec<_>>()
                                .join(", ")
                        )),
                    },
                )
            },
        )
        .await
    }

    /// Lists the members through control plane `via` and removes the one `matches` picks, if
    /// any is listed (see [`KubeClient::remove_etcd_member`]).
    pub async fn remove_etcd_member_where(
        &self,
        via: &str,
        within: Duration,
        matches: impl Fn(&EtcdMember) -> bool,
    ) -> Result<MemberRemoval, KubeError> {
        let members = self.etcd_members(via, within).await?;
        match members.iter().find(|m| matches(m)) {
            Some(member) => {
                self.remove_etcd_member(via, member, within).await?;
                Ok(MemberRemoval::Removed {
                    id: member.hex_id(),
                    left: members.len() - 1,
                })
            }
            None => Ok(MemberRemoval::Absent {
                listed: members.len(),
            }),
        }
    }

    /// Removes `member` through control plane `via`, asking again (see [`removal_outcome`])
    /// until `within` is spent.
    pub async fn remove_etcd_member(
        &self,
        via: &str,
        member: &EtcdMember,
        within: Duration,
    ) -> Result<(), KubeError> {
        let id = member.hex_id();
        let deadline = tokio::time::Instant::now() + within;
        let mut asked_before = false;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let answer = self
                .etcdctl_on(via, "remove", &["member", "remove", &id], left)
                .await;
            let log = match &answer {
                Ok(_) => None,
                Err(KubeError::NodeJob { log, .. }) => Some(log.as_str()),
                Err(_) => return answer.map(|_| ()),
            };
            match removal_outcome(log, asked_before) {
                Removal::Done => return Ok(()),
                Removal::AskAgain if left > Duration::from_secs(5) => {
                    asked_before = true;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Removal::AskAgain | Removal::Failed => return answer.map(|_| ()),
            }
        }
    }
}

/// What [`KubeClient::remove_etcd_member_where`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberRemoval {
    /// Member `id` (hex) was removed; `left` members remain.
    Removed { id: String, left: usize },
    /// No listed member matched; `listed` members are.
    Absent { listed: usize },
}

/// What one `etcdctl member remove` answered, for the caller's next move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// The member is gone.
    Done,
    /// Not now; the same request may succeed later.
    AskAgain,
    /// An error to report.
    Failed,
}

/// Reads the answer to `member remove` (`error` is etcdctl's output when it failed). etcd
/// refuses a removal that would leave fewer members connected for its health interval (5 s)
/// than a quorum ("unhealthy cluster", `--strict-reconfig-check`), as right after a member was
/// lost; a proposal not applied within the client's timeout ("context deadline exceeded") or
/// the server's ("etcdserver: request timed out", with or without a reason after it), or
/// caught in a leader election ("leader changed", "no leader"), may still be applied later, so
/// it is asked again, and when a repeated request finds no such member, an earlier one
/// removed it (etcd's server errors, `server/etcdserver/errors/errors.go`).
pub fn removal_outcome(error: Option<&str>, asked_before: bool) -> Removal {
    const AGAIN: [&str; 5] = [
        "unhealthy cluster",
        "deadline exceeded",
        "request timed out",
        "leader changed",
        "no leader",
    ];
    match error {
        None => Removal::Done,
        Some(e) if AGAIN.iter().any(|again| e.contains(again)) => Removal::AskAgain,
        Some(e) if asked_before && e.contains("member not found") => Removal::Done,
        Some(_) => Removal::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_read_from_etcdctl_json_with_decimal_ids() {
        let output = r#"{"header":{"cluster_id":17237436991929493444,"member_id":9372538179322589801,"raft_term":2},"members":[{"ID":9372538179322589801,"name":"demo-control-plane-1","peerURLs":["https://10.42.0.11:2380"],"clientURLs":["https://10.42.0.11:2379"]},{"ID":10501334649042878790,"peerURLs":["https://10.42.0.12:2380"],"isLearner":true}]}"#;
        let members = parse_members(output).expect("members");
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].hex_id(), "8211f1d0f64f3269");
        assert!(members[0].is_of("demo-control-plane-1", None));
        assert!(!members[0].is_learner);
        assert!(members[1].is_learner);
        assert!(members[1].is_of("demo-control-plane-2", Some("10.42.0.12")));
        assert!(!members[1].is_of("demo-control-plane-2", Some("10.42.0.13")));
        assert!(parse_members("Error: context deadline exceeded").is_err());
        let status = r#"[{"Endpoint":"https://127.0.0.1:2379","Status":{"header":{"cluster_id":1,"member_id":9372538179322589801,"revision":5,"raft_term":2},"version":"3.6.5","dbSize":20480,"leader":9372538179322589801,"raftIndex":9,"raftTerm":2}}]"#;
        assert_eq!(parse_leader(status), Ok(9372538179322589801));
        assert!(parse_leader("[]").is_err());
    }

    #[test]
    fn a_removal_is_asked_again_while_etcd_cannot_answer_and_done_once_the_member_is_gone() {
        assert_eq!(removal_outcome(None, false), Removal::Done);
        let unhealthy = "Error: etcdserver: unhealthy cluster";
        let timeout = "Error: context deadline exceeded";
        let gone = "Error: etcdserver: member not found";
        assert_eq!(removal_outcome(Some(unhealthy), false), Removal::AskAgain);
        assert_eq!(removal_outcome(Some(timeout), true), Removal::AskAgain);
        // The server's own timeout, as a loaded three-member etcd 3.4 answered it.
        let server_timeout = "{\"level\":\"warn\",\"msg\":\"retrying of unary invoker failed\",\"error\":\"rpc error: code = Unavailable desc = etcdserver: request timed out\"}\nError: etcdserver: request timed out\n";
        assert_eq!(
            removal_outcome(Some(server_timeout), false),
            Removal::AskAgain
        );
        for again in [
            "Error: etcdserver: request timed out, possibly due to previous leader failure",
            "Error: etcdserver: leader changed",
            "Error: etcdserver: no leader",
        ] {
            assert_eq!(
                removal_outcome(Some(again), true),
                Removal::AskAgain,
                "{again}"
            );
        }
        // Not found on the first request is a wrong ID; after a timed-out one, it landed.
        assert_eq!(removal_outcome(Some(gone), false), Removal::Failed);
        assert_eq!(removal_outcome(Some(gone), true), Removal::Done);
        assert_eq!(
            removal_outcome(Some("Error: permission denied"), true),
            Removal::Failed
        );
    }

    #[test]
    fn etcdctl_talks_to_the_local_member_with_the_health_check_certificate() {
        assert_eq!(
            etcdctl(
                LOCAL_MEMBER,
                ETCD_PKI,
                &["member", "remove", "8211f1d0f64f3269"]
            ),
            [
                "etcdctl",
                "--endpoints=https://127.0.0.1:2379",
                "--cacert=/etc/kubernetes/pki/etcd/ca.crt",
                "--cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt",
                "--key=/etc/kubernetes/pki/etcd/healthcheck-client.key",
                "--command-timeout=15s",
                "member",
                "remove",
                "8211f1d0f64f3269"
            ]
        );
    }
}
