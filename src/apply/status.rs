//! `status`: what the cluster has in the cloud, whether `up` has anything left to do, and —
//! when its API answers — its nodes, their Flatcar releases and pending reboots, its add-ons,
//! and with 3 or 5 control planes each one's etcd membership and which holds the API's
//! address. It changes nothing in the cloud and creates no state directory; etcd's members
//! are read by two short node Jobs on a control plane (`etcdctl member list` and `endpoint
//! status`), deleted once read.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Node;

use super::ApplyError;
use super::bootstrap::JoinTokenSeen;
use super::charts::{ChartState, chart_states};
use super::observe::observe;
use crate::cloud::Cloud;
use crate::cloud::config::CloudConfig;
use crate::cloud::load_balancer::MemberHealth;
use crate::kube::etcd::EtcdMember;
use crate::kube::{KubeClient, RebootState, error_chain, is_ready, reboot_states};
use crate::node::seal::SEAL_KEY_METADATA;
use crate::pki::{ClientCertificate, ClusterPki, StateDir};
use crate::plan::planner::{self, Scope};
use crate::plan::resources::Observed;
use crate::spec::ClusterSpec;

pub(crate) struct StatusRequest {
    pub(crate) spec: ClusterSpec,
    pub(crate) cloud: CloudConfig,
    pub(crate) state_path: PathBuf,
    /// Reach the API at this HOST:PORT instead of the floating IP.
    pub(crate) api_address: Option<String>,
}

/// What `status` found.
pub(crate) struct StatusReport {
    pub(crate) cluster: String,
    pub(crate) cloud: String,
    /// Everything of the cluster's in the cloud.
    pub(crate) observed: Observed,
    /// How many steps `up` would run, or why no plan could be made.
    pub(crate) pending: Result<usize, String>,
    pub(crate) kubernetes: KubernetesStatus,
    /// When flatstack's own client certificates expire (none without a PKI here).
    pub(crate) client_certificates: Vec<ClientCertificate>,
    /// The API load balancer's members on 6443 with Octavia's view of their health, or why it
    /// could not be read (none without one).
    pub(crate) load_balancer_members: Option<Result<Vec<MemberHealth>, String>>,
    /// The newest snapshots in the object store, or why they could not be read; `None` when
    /// backups are off.
    pub(crate) backups: Option<Result<crate::backup::Freshness, String>>,
    /// Whether the API servers encrypt Secrets (as the control planes' servers record it);
    /// `None` without control planes.
    pub(crate) secrets_encrypted: Option<bool>,
}

impl StatusReport {
    /// The cluster's servers Nova has in ERROR.
    pub(crate) fn failed_servers(&self) -> Vec<&str> {
        self.observed
            .servers
            .iter()
            .filter(|s| s.status == "ERROR")
            .map(|s| s.name.as_str())
            .collect()
    }
}

/// What the cluster's Kubernetes API said.
pub(crate) enum KubernetesStatus {
    /// Not asked, or no answer: why, in a sentence.
    Unavailable(String),
    Answered {
        nodes: Vec<Node>,
        /// Each node's reboot state, by node name (empty when kured's pods could not be read).
        reboots: BTreeMap<String, RebootState>,
        /// The add-ons' charts and the state of their Helm Jobs, or why they could not be read.
        addons: Result<Vec<ChartState>, String>,
        /// What the cluster's join tokens and sealing keys leave open, a sentence each.
        secrets: Vec<String>,
        /// With 3 or 5 control planes: etcd's members and the API address's holder.
        control_planes: Option<ControlPlaneView>,
        /// kubeadm's certificates on each Ready control plane, and the control planes that
        /// could not be asked, with why.
        certificates: Certificates,
    },
}

/// kubeadm's certificates on the control planes, soonest to expire first.
#[derive(Debug, Default)]
pub(crate) struct Certificates {
    pub(crate) expiries: Vec<crate::kube::certificates::CertificateExpiry>,
    pub(crate) unread: Vec<String>,
}

/// How many days ahead `status` warns of a certificate's expiry.
pub(crate) const CERTIFICATE_WARNING_DAYS: i64 = 30;

impl Certificates {
    /// The certificates that expire within [`CERTIFICATE_WARNING_DAYS`].
    pub(crate) fn expiring(
        &self,
    ) -> impl Iterator<Item = &crate::kube::certificates::CertificateExpiry> {
        self.expiries
            .iter()
            .filter(|c| c.days_left <= CERTIFICATE_WARNING_DAYS)
    }
}

/// Each control plane's etcd membership and who holds the API's address.
pub(crate) struct ControlPlaneView {
    pub(crate) members: Result<Vec<MemberRow>, String>,
    /// Behind a VIP, the control plane kube-vip elected to hold the API's address (none:
    /// nobody holds it); `None` behind a load balancer.
    pub(crate) holder: Option<Result<Option<String>, String>>,
}

/// One control plane, or one member no control plane accounts for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct MemberRow {
    pub(crate) name: String,
    /// `leader`, `voting`, `learner`, `missing` (a control plane with no member), or
    /// `not a control plane` (a member no control plane of the file accounts for).
    pub(crate) etcd: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) member_id: Option<String>,
}

/// The rows of the control planes `names` given etcd's `members` and `leader`.
pub(crate) fn member_rows(names: &[String], members: &[EtcdMember], leader: u64) -> Vec<MemberRow> {
    let mut rows: Vec<MemberRow> = names
        .iter()
        .map(|name| {
            let member = members.iter().find(|m| &m.name == name);
            MemberRow {
                name: name.clone(),
                etcd: match member {
                    None => "missing",
                    Some(m) if m.id == leader => "leader",
                    Some(m) if m.is_learner => "learner",
                    Some(_) => "voting",
                },
                member_id: member.map(EtcdMember::hex_id),
            }
        })
        .collect();
    rows.extend(
        members
            .iter()
            .filter(|m| !names.contains(&m.name))
            .map(|m| MemberRow {
                name: match m.name.is_empty() {
                    true => m.peer_urls.join(", "),
                    false => m.name.clone(),
                },
                etcd: "not a control plane",
                member_id: Some(m.hex_id()),
            }),
    );
    rows
}

/// Observes the cluster and, when the cloud has anything of it, asks its API.
/// Fails only when the cloud cannot be observed; a silent API is part of the report.
pub(crate) async fn status(request: StatusRequest) -> Result<StatusReport, ApplyError> {
    let StatusRequest {
        spec,
        cloud,
        state_path,
        api_address,
    } = request;
    let cloud = Cloud::connect(cloud).await?;
    let observation = observe(&cloud, &spec).await?;
    let mut spec = spec;
    spec.control_plane.api_endpoint = observation.api_endpoint(&spec).0;
    let observed = observation.observed;
    let pki = match StateDir::open_existing(&state_path) {
        Ok(Some(state)) => ClusterPki::load_existing(&state),
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    };
    if let Ok(Some(pki)) = &pki {
        super::identity::check(&spec.name, &observed.servers, pki, &state_path)?;
    }
    let client_certificates = match &pki {
        Ok(Some(pki)) => pki.client_certificates(),
        _ => Vec::new(),
    };
    let (pending, kubernetes) = match observed.count() {
        0 => (
            Ok(0),
            KubernetesStatus::Unavailable("nothing in the cloud".into()),
        ),
        _ => {
            let scope = Scope {
                kubernetes: true,
                accept_empty_cluster: false,
                restoring: false,
                api: crate::plan::planner::ApiReach::Unasked,
                node_wait: crate::plan::planner::NODE_WAIT,
            };
            let pending = planner::plan(&spec, &observed, &observation.facts, scope)
                .map(|plan| plan.steps.len())
                .map_err(|e| e.to_string());
            let answers = kubernetes(&spec, &observed, &state_path, pki, api_address).await;
            (pending, answers)
        }
    };
    let load_balancer_members = match observed.api_load_balancers.first() {
        None => None,
        Some(lb) => Some(
            cloud
                .load_balancer_members(&lb.id, &format!("{}-6443", lb.name))
                .await
                .map_err(|e| format!("cannot read the load balancer's members: {e}")),
        ),
    };
    let store = crate::backup::Store::of(&cloud, &spec);
    let offered = match &store {
        Ok(store) => store.offered().await,
        Err(_) => true,
    };
    let backups = match (
        crate::backup::enabled(&spec, offered, &cloud.config().name),
        store,
    ) {
        _ if spec.backup.enabled == Some(false) => None,
        (Ok(false), _) => None,
        (Err(e), _) => Some(Err(e.to_string())),
        (Ok(true), Err(e)) => Some(Err(e.to_string())),
        (Ok(true), Ok(store)) => {
            let state = StateDir::open_existing(&state_path).ok().flatten();
            match crate::backup::list(&store, &spec.name, state.as_ref()).await {
                Ok(listing) => Some(Ok(crate::backup::Freshness::of(
                    &listing,
                    spec.backup.every_hours,
                    time::OffsetDateTime::now_utc(),
                ))),
                // Left to the cloud, and its store refuses the credentials: backups are off.
                Err(e) if e.is_refused() && crate::backup::refusal_turns_off(&spec, &store) => None,
                Err(e) => Some(Err(format!("cannot read the backups: {e}"))),
            }
        }
    };
    let has_control_planes = observed.servers.iter().any(|s| s.has_role("control-plane"));
    Ok(StatusReport {
        secrets_encrypted: has_control_planes
            .then(|| super::identity::encrypts_secrets(&observed.servers)),
        backups,
        load_balancer_members,
        cluster: spec.name,
        cloud: cloud.config().name.clone(),
        observed,
        pending,
        kubernetes,
        client_certificates,
    })
}

/// The API's answers, or why it could not be asked or did not answer.
async fn kubernetes(
    spec: &ClusterSpec,
    observed: &Observed,
    state_path: &std::path::Path,
    pki: Result<Option<ClusterPki>, crate::pki::PkiError>,
    api_address: Option<String>,
) -> KubernetesStatus {
    use KubernetesStatus::Unavailable;
    let endpoint = observed
        .api_floating_ip(&spec.name)
        .map(|f| format!("{}:6443", f.floating_ip_address));
    let Some(server) = api_address.or(endpoint).map(|a| format!("https://{a}")) else {
        return Unavailable("no API floating IP: the Kubernetes API cannot be asked".into());
    };
    let pki = match pki {
        Ok(Some(pki)) => pki,
        Ok(None) => {
            return Unavailable(format!(
                "no PKI in {}: the cluster's CA and admin key are not on this machine",
                state_path.display()
            ));
        }
        Err(e) => return Unavailable(format!("cannot use the state directory: {e}")),
    };
    let client = match KubeClient::new(&pki, &server) {
        Ok(client) => client,
        Err(e) => {
            return Unavailable(format!(
                "cannot make a client for the Kubernetes API at {server}: {e}"
            ));
        }
    };
    let nodes = match client.nodes().await {
        Ok(nodes) => nodes,
        Err(e) => {
            return Unavailable(format!(
                "the Kubernetes API at {server} does not answer: {}",
                error_chain(&e)
            ));
        }
    };
    let (reboots, addons, tokens) = tokio::join!(
        reboot_states(&client, &nodes),
        chart_states(&client),
        super::bootstrap::join_tokens(&client)
    );
    let secrets = match tokens {
        Ok(tokens) => open_secrets(observed, &nodes, &tokens, crate::kube::now()),
        Err(e) => vec![format!("cannot read the join tokens: {}", error_chain(&e))],
    };
    let control_planes = match spec.control_plane.highly_available() {
        true => Some(control_plane_view(spec, &client, &nodes).await),
        false => None,
    };
    let certificates = certificates(&client, &nodes).await;
    KubernetesStatus::Answered {
        reboots: reboots.unwrap_or_default(),
        addons: addons.map_err(|e| e.to_string()),
        secrets,
        control_planes,
        certificates,
        nodes,
    }
}

/// kubeadm's certificates on every Ready control plane (kubeadm marked it), one node Job each.
async fn certificates(client: &KubeClient, nodes: &[Node]) -> Certificates {
    let mut found = Certificates::default();
    for node in nodes.iter().filter(|n| {
        is_ready(n)
            && n.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(crate::addons::CONTROL_PLANE_LABEL))
    }) {
        let Some(name) = node.metadata.name.as_deref() else {
            continue;
        };
        match client.certificate_expiries(name, ETCD_READ_TIMEOUT).await {
            Ok(expiries) => found.expiries.extend(expiries),
            Err(e) => found.unread.push(format!("{name}: {}", error_chain(&e))),
        }
    }
    found.expiries.sort_by_key(|c| c.days_left);
    found
}

/// How long `status` waits for each etcd node Job.
const ETCD_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// etcd's members as the first Ready control plane's member knows them, and the Lease that
/// says which control plane holds the API's address.
async fn control_plane_view(
    spec: &ClusterSpec,
    client: &KubeClient,
    nodes: &[Node],
) -> ControlPlaneView {
    let names: Vec<String> = spec
        .nodes()
        .into_iter()
        .filter(|n| n.role == crate::spec::Role::ControlPlane)
        .map(|n| n.name)
        .collect();
    let via = names.iter().find(|name| {
        nodes
            .iter()
            .any(|n| n.metadata.name.as_ref() == Some(name) && is_ready(n))
    });
    let members = match via {
        None => Err("no control plane is Ready to ask etcd".to_string()),
        Some(via) => client
            .etcd_view(via, ETCD_READ_TIMEOUT)
            .await
            .map(|(members, leader)| member_rows(&names, &members, leader))
            .map_err(|e| {
                format!(
                    "cannot read etcd's members through {via}: {}",
                    error_chain(&e)
                )
            }),
    };
    let lease = format!(
        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/{}",
        crate::node::vip::VIP_LEASE
    );
    if spec.control_plane.api_endpoint != crate::spec::ApiEndpointKind::Vip {
        return ControlPlaneView {
            members,
            holder: None,
        };
    }
    let holder = client
        .get::<serde_json::Value>(&lease)
        .await
        .map(|lease| {
            lease
                .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
                .filter(|h| !h.is_empty())
        })
        .map_err(|e| {
            format!(
                "cannot read who holds the API's address: {}",
                error_chain(&e)
            )
        });
    ControlPlaneView {
        members,
        holder: Some(holder),
    }
}

/// Join tokens still valid, said plainly when no server is waiting to join with them, and
/// servers whose metadata still holds the key to their sealed secrets after their node joined.
fn open_secrets(
    observed: &Observed,
    nodes: &[Node],
    tokens: &[JoinTokenSeen],
    now: k8s_openapi::jiff::Timestamp,
) -> Vec<String> {
    let joined = |server: &str| {
        nodes
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some(server))
    };
    let waiting: Vec<&str> = observed
        .servers
        .iter()
        .map(|s| s.name.as_str())
        .filter(|name| !joined(name))
        .collect();
    let mut lines = Vec::new();
    for token in tokens {
        let until = token
            .expiration
            .as_deref()
            .and_then(|e| e.parse::<k8s_openapi::jiff::Timestamp>().ok());
        let valid = until.is_none_or(|until| until > now);
        if !valid {
            continue;
        }
        let until = until.map_or("without expiry".to_string(), |u| format!("until {u}"));
        lines.push(match waiting.is_empty() {
            true => format!(
                "join token {} is valid {until} with no node waiting to join: `flatstack up` deletes it (or `kubectl -n kube-system delete secret bootstrap-token-{}`)",
                token.id, token.id
            ),
            false => format!(
                "join token {} is valid {until} for the node(s) still joining: {}",
                token.id,
                waiting.join(", ")
            ),
        });
    }
    for server in observed
        .servers
        .iter()
        .filter(|s| s.metadata.contains_key(SEAL_KEY_METADATA) && joined(&s.name))
    {
        lines.push(format!(
            "server {}'s metadata still holds the key to its sealed secrets though its node has joined: `flatstack up` removes it",
            server.name
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str, sealed: bool) -> crate::cloud::compute::Server {
        let mut metadata = serde_json::Map::new();
        if sealed {
            metadata.insert(SEAL_KEY_METADATA.to_string(), "00".into());
        }
        serde_json::from_value(serde_json::json!({
            "id": name, "name": name, "status": "ACTIVE", "metadata": metadata,
        }))
        .expect("server")
    }

    fn node(name: &str) -> Node {
        serde_json::from_value(serde_json::json!({ "metadata": { "name": name } })).expect("node")
    }

    fn token(id: &str, expiration: &str) -> JoinTokenSeen {
        JoinTokenSeen {
            id: id.into(),
            expiration: Some(expiration.into()),
        }
    }

    #[test]
    fn each_control_plane_shows_its_etcd_membership() {
        let member = |id: u64, name: &str, learner: bool| EtcdMember {
            id,
            name: name.into(),
            peer_urls: vec![format!("https://10.42.0.{id}:2380")],
            is_learner: learner,
        };
        let names: Vec<String> = (1..=3).map(|n| format!("a-control-plane-{n}")).collect();
        let members = [
            member(11, "a-control-plane-1", false),
            member(12, "a-control-plane-2", true),
            member(99, "", false),
        ];
        let rows = member_rows(&names, &members, 11);
        let shown: Vec<(&str, &str, Option<&str>)> = rows
            .iter()
            .map(|r| (r.name.as_str(), r.etcd, r.member_id.as_deref()))
            .collect();
        assert_eq!(
            shown,
            [
                ("a-control-plane-1", "leader", Some("b")),
                ("a-control-plane-2", "learner", Some("c")),
                ("a-control-plane-3", "missing", None),
                ("https://10.42.0.99:2380", "not a control plane", Some("63")),
            ]
        );
    }

    #[test]
    fn a_valid_token_with_no_node_waiting_is_named_and_an_expired_one_is_not() {
        let now: k8s_openapi::jiff::Timestamp = "2026-12-06T20:00:00Z".parse().expect("time");
        let observed = Observed {
            servers: vec![
                server("a-control-plane-1", false),
                server("a-default-1", true),
            ],
            ..Observed::default()
        };
        let tokens = [
            token("abcdef", "2026-12-06T20:30:00Z"),
            token("old123", "2026-12-06T19:00:00Z"),
        ];
        let joined = [node("a-control-plane-1"), node("a-default-1")];
        let lines = open_secrets(&observed, &joined, &tokens, now);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with(
                "join token abcdef is valid until 2026-12-06T20:30:00Z with no node waiting to join"
            ),
            "{lines:?}"
        );
        assert!(lines[1].starts_with("server a-default-1's metadata still holds the key"));
        // While a server has no node, the token is there for it.
        let lines = open_secrets(&observed, &joined[..1], &tokens, now);
        assert_eq!(
            lines,
            [
                "join token abcdef is valid until 2026-12-06T20:30:00Z for the node(s) still joining: a-default-1"
            ]
        );
    }
}
