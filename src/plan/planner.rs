//! The planner: from the cluster file, what the cloud holds of the cluster and a few facts
//! about the cloud, the typed steps that make the cloud match the file. Pure: it reads
//! nothing and calls nothing, so `plan` and `up` get the same steps from the same observation.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::IpNet;

use super::kube_view::{KubeView, Membership, quorum_of, stray_members};
use super::resources::{self, Names, Observed, cluster_tag};
use super::roster::{Replacement, ServerFacts, outdated_because, roster};
use super::rules::{rule_diff, wanted_rules};
use super::steps::{
    Action, Made, Owned, Plan, PortRequest, Ref, RuleRequest, ServerPlan, StepId, SubnetRequest,
};
use super::versions;
use crate::cloud::compute::Flavor;
use crate::cloud::network::{AllocationPool, Network, Port, Subnet};
use crate::spec::{ApiEndpointKind, ClusterSpec, NetworkMode, NodeName, Role};

/// What the planner needs to know of the cloud beyond the cluster's own resources.
#[derive(Debug, Clone, Default)]
pub(crate) struct CloudFacts {
    /// The external network the file names, when the cloud has it.
    pub(crate) external_network: Option<Network>,
    pub(crate) flavors: Vec<Flavor>,
    /// The image servers boot from, when one was found.
    pub(crate) image_id: Option<String>,
    /// On a network the cluster reuses: that network and the subnet nodes go on.
    pub(crate) reused: Option<(Network, Subnet)>,
    /// The Octavia providers the cloud offers; `None` without a load-balancer service (or
    /// not asked: one control plane needs none).
    pub(crate) load_balancer_providers: Option<Vec<String>>,
    /// The external addresses of the routers on the nodes' subnet, which the API's load
    /// balancer admits (read when it runs, to compare its listeners with the file).
    pub(crate) router_addresses: Vec<Ipv4Addr>,
}

/// What the plan covers besides the cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scope {
    /// Drain leaving nodes and make a join token for new ones through the cluster's API
    /// (left out with `--provision-only`).
    pub(crate) kubernetes: bool,
    /// Build a control plane that ran and is gone again, which makes a new, empty cluster
    /// (`--accept-empty-cluster`); refused otherwise.
    pub(crate) accept_empty_cluster: bool,
    /// `flatstack restore` deleted the control planes: the first is built again to restore
    /// etcd from a snapshot and initialize, the others join it; no member of the old etcd is
    /// left to remove.
    pub(crate) restoring: bool,
    /// Whether the cluster's API answers, as far as it was asked.
    pub(crate) api: ApiReach,
    /// How long `up` waits for a node to be Ready (its `--timeout`): the join token lasts that
    /// much longer for each node that joins only after an earlier one.
    pub(crate) node_wait: std::time::Duration,
}

/// `up`'s default `--timeout`.
pub(crate) const NODE_WAIT: std::time::Duration = std::time::Duration::from_secs(20 * 60);

/// What the planner knows of the cluster's Kubernetes API: planning input, so that work that
/// needs it is either planned knowing it answers, planned without it in the open (a node
/// deleted undrained), or refused, and never skipped quietly at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ApiReach {
    /// Not asked: planned as if it answers. A plan with steps that need the API is made again
    /// once it was asked (see [`Plan::needs_api`]).
    Unasked,
    /// `/readyz` answered, and this is what the API showed.
    Answers(KubeView),
    /// Asked, and it did not answer: why.
    Silent(String),
}

/// Why a leaving node is not drained when the API answered and does not list it.
const NEVER_REGISTERED: &str = "not drained: the cluster has no Node of it (it never joined)";

/// What stands in for a fact the cloud lacks (an external network, flavor or image the file
/// names): `plan` shows the steps with it, and the preflight, which runs before `up` executes
/// anything, names what is missing.
pub(crate) const MISSING: &str = "(missing)";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("the existing network the file names was not found")]
    ReusedNetwork,
    #[error("`network.node_cidr` is needed for a network flatstack creates")]
    NodeCidr,
    #[error(
        "control plane {name} has run (an `up` saw its server ACTIVE) and its server is {how}: building it again would run `kubeadm init` on an empty disk, a new and empty cluster behind the same CA and address, with every object and workload of the old one lost; nothing was built\n  hint: with one control plane, etcd went with it: restore the cluster from a snapshot with `flatstack restore`, or, to start a new and empty cluster on purpose, run `flatstack up --accept-empty-cluster` (then replace the workers: they belonged to the old one)"
    )]
    ControlPlaneLost { name: String, how: &'static str },
    #[error(
        "control plane {name} has run (an `up` saw its server ACTIVE) and its server is {how}; the other control planes keep etcd, but its member must be removed through the cluster's API before its server is built again, and `--provision-only` leaves the API out; nothing was built\n  hint: run `flatstack up` without --provision-only"
    )]
    MemberLost { name: String, how: &'static str },
    #[error(
        "control plane {name} {why}: with 3 or 5 control planes it is replaced in place, one at a time (drained, its etcd member removed, built again to join), which needs the cluster's API, and `--provision-only` leaves the API out; nothing was planned\n  hint: run `flatstack up` without --provision-only"
    )]
    ControlPlaneChange { name: String, why: String },
    #[error(
        "{lost} ran and {are} lost; {running} of {count} control planes run, fewer than the {quorum} etcd needs to work or to change its members: the cluster's state can come back only from a snapshot; nothing was built\n  hint: restore from a snapshot with `flatstack restore`; to start a new, empty cluster on purpose: `flatstack down`, then `flatstack up`"
    )]
    QuorumLost {
        lost: String,
        are: &'static str,
        running: usize,
        count: u32,
        quorum: usize,
    },
    #[error(
        "{needed} needs the cluster's Kubernetes API, which does not answer ({why}); nothing was planned\n  hint: `flatstack status` shows what answers; run `flatstack up` again once the API does, or `flatstack up --provision-only` to change only the cloud"
    )]
    ApiSilent { needed: String, why: String },
    #[error(
        "{needed} needs etcd's members, which control plane {via} could not list ({why}); nothing was planned\n  hint: `flatstack status` shows each control plane's membership; without a quorum of members etcd answers nothing, and the cluster's state can come back only from a snapshot"
    )]
    EtcdUnread {
        needed: String,
        via: String,
        why: String,
    },
    #[error(
        "`control_plane.api_endpoint` is `{wanted}` but the cluster runs behind a {runs}; flatstack cannot move a running cluster's API address from one to the other; nothing was planned\n  hint: set `api_endpoint = \"{runs}\"`"
    )]
    EndpointChange {
        wanted: &'static str,
        runs: &'static str,
    },
    #[error(
        "`control_plane.count` is {wanted} but the cluster runs one control plane, which holds the API's address itself; flatstack cannot yet move that address to an endpoint of its own under a running cluster; nothing was planned\n  hint: keep `count = 1`, or make a new cluster with `count = {wanted}` and move the workloads to it"
    )]
    ControlPlaneGrowth { wanted: u32 },
    #[error(transparent)]
    Release(#[from] versions::ReleaseError),
    #[error(
        "`control_plane.count` is {wanted} but the cluster runs {running} control planes ({names}); removing a control plane means removing its etcd member first, which flatstack does not yet do, and an endpoint of its own stays with more than one; nothing was planned\n  hint: keep `count = {running}`"
    )]
    ControlPlaneShrink {
        wanted: u32,
        running: usize,
        names: String,
    },
}

impl PlanError {
    /// Every planning error is a file that does not fit the cloud (exit code 2), but a silent
    /// API or an unreadable etcd, which are the cluster's state, not the input's (exit code 1).
    pub(crate) fn is_invalid_input(&self) -> bool {
        !matches!(
            self,
            PlanError::ApiSilent { .. } | PlanError::EtcdUnread { .. }
        )
    }
}

/// The first sentence of Nova's fault message, cut at a word past 160 characters, for one
/// line of a plan (`status` shows the whole message).
fn first_sentence(message: &str) -> String {
    let line = message.lines().next().unwrap_or_default();
    let sentence = &line[..line.find(". ").map_or(line.len(), |i| i + 1)];
    match sentence.char_indices().nth(160) {
        None => sentence.to_string(),
        Some((cut, _)) => {
            let head = &sentence[..cut];
            format!("{}…", &head[..head.rfind(' ').unwrap_or(cut)])
        }
    }
}

/// The steps from `observed` to what `spec` asks for: [`Planner::plan`]'s phases.
pub(crate) fn plan(
    spec: &ClusterSpec,
    observed: &Observed,
    facts: &CloudFacts,
    scope: Scope,
) -> Result<Plan, PlanError> {
    // Two of one name (two writers at once): keep one, remove the others at the end.
    let (kept, extras) = super::duplicates::split(spec, observed);
    Planner {
        spec,
        observed: &kept,
        facts,
        scope: &scope,
        names: Names::of(&spec.name),
        plan: Plan::default(),
        boot: None,
    }
    .plan(&extras)
}

/// One planning: its inputs and the steps so far.
struct Planner<'a> {
    spec: &'a ClusterSpec,
    /// What the cloud holds of the cluster, duplicates of two writers set apart.
    observed: &'a Observed,
    facts: &'a CloudFacts,
    scope: &'a Scope,
    names: Names,
    plan: Plan,
    /// The release new nodes boot when the control planes still run an older one than the
    /// file's (see [`versions::boot`]).
    boot: Option<versions::Boot>,
}

/// The cluster's two security groups.
struct Groups {
    nodes: Ref,
    control_planes: Ref,
}

/// The ports: the endpoint's own with 3 or 5 control planes, and every node's by name.
struct Ports<'r> {
    endpoint: Option<Ref>,
    of_node: BTreeMap<&'r str, Ref>,
}

/// The control planes the file names (first in its nodes, numbered from 1) and those whose
/// servers run, by name.
struct ControlPlanes<'a> {
    names: Vec<String>,
    running: Vec<&'a str>,
}

impl ControlPlanes<'_> {
    fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }
}

/// What the control-plane lane decided: the member removals a rebuilt control plane waits
/// for, and the control planes to replace in place, with why.
struct Lane<'a, 'r> {
    member_gone: BTreeMap<&'r str, StepId>,
    /// The last removal of a member of no control plane, which replacements wait for.
    strays_gone: Option<StepId>,
    rolling: Vec<(&'r NodeName, &'a crate::cloud::compute::Server, String)>,
}

/// What the phases before the servers made for them to stand on.
struct Footing<'a, 'r> {
    control_planes: ControlPlanes<'a>,
    ports: Ports<'r>,
    /// The port that holds the API's address, and the API's floating IP.
    api_port: Ref,
    public: Ref,
    server_group: Ref,
    /// The step after which the API's load balancer is ready, if one was needed.
    balancer_ready: Option<StepId>,
}

/// What the server phase leaves for scaling down: servers already deleted (replaced), and
/// per pool the waits for its up-to-date nodes, before any of its outdated ones is drained.
struct Servers<'r> {
    deleted: BTreeMap<&'r str, StepId>,
    pool_ready: BTreeMap<usize, Vec<StepId>>,
}

impl<'a> Planner<'a> {
    /// The phases, in order: adopt what lacks its tag; the network; security and server
    /// groups; the control planes' count and endpoint checked; ports; the API's load balancer
    /// and floating IP; failed builds; the control-plane lane (lost or changed control planes);
    /// servers (additions, then replacements); ports attached and builds waited for; scaling
    /// down; duplicates removed.
    fn plan(mut self, extras: &Observed) -> Result<Plan, PlanError> {
        self.adopt_untagged(extras);
        let external_id = self
            .facts
            .external_network
            .as_ref()
            .map_or(MISSING.to_string(), |n| n.id.clone());
        let chain = network_chain(
            self.spec,
            self.observed,
            self.facts,
            &external_id,
            &mut self.plan,
        )?;
        let groups = self.security_groups(&chain);
        let server_group = self.server_group();
        check_control_plane_count(self.spec, self.observed)?;
        let running = versions::Running::of(self.observed, self.view());
        self.plan.releases = running
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.release))
            .collect();
        check_endpoint(self.spec, self.observed)?;
        // Pools that upgrade by replacement are replaced once the control planes run the
        // file's release.
        let wanted = self.spec.kubernetes.version;
        let replace_below = running
            .api_release()
            .filter(|api| *api >= wanted)
            .map(|_| wanted);
        let roster = roster(
            self.spec,
            ServerFacts {
                replace_below,
                ..ServerFacts::of(self.observed, &self.facts.flavors)
            },
        );
        let control_planes = self.control_planes();
        let ports = self.ports(&chain, &groups, &roster.nodes, &control_planes);
        let balancer_ready = self.api_load_balancer(&chain, &ports, &roster.nodes);
        let first = roster
            .nodes
            .iter()
            .find(|n| n.role == Role::ControlPlane)
            .map(|n| n.name.as_str())
            .unwrap_or_default();
        let (api_port, api_port_name) = match &ports.endpoint {
            Some(endpoint) => (endpoint.clone(), self.names.api_port.clone()),
            None => (
                ports.of_node.get(first).cloned().unwrap_or(Ref::After(0)),
                first.to_string(),
            ),
        };
        let public = self.api_floating_ip(&chain, &api_port, &api_port_name, &external_id);
        let rebuilt = self.failed_builds(&roster.nodes);
        let missing: Vec<&NodeName> = roster
            .nodes
            .iter()
            .filter(|n| {
                rebuilt.contains_key(n.name.as_str())
                    || !self.observed.servers.iter().any(|s| s.name == n.name)
            })
            .collect();
        let lane = self.control_plane_lane(&roster, &missing, &rebuilt, &control_planes)?;
        let wanted = &self.spec.kubernetes;
        let repair = missing
            .iter()
            .find(|n| n.role == Role::ControlPlane)
            .map(|n| n.name.clone())
            .or_else(|| lane.rolling.first().map(|(n, _, _)| n.name.clone()));
        if let Some(repair) = repair
            && running.half_done(wanted.version)
        {
            let at = |done: bool| {
                let names: Vec<&str> = running
                    .control_planes()
                    .filter(|n| (n.release == wanted.version) == done)
                    .map(|n| n.name.as_str())
                    .collect();
                names.join(", ")
            };
            return Err(versions::ReleaseError::RepairMidUpgrade {
                wanted: wanted.version,
                done: at(true),
                rest: at(false),
                repair,
            }
            .into());
        }
        if !missing.is_empty() || !lane.rolling.is_empty() {
            self.boot = versions::boot(&running, wanted.version, &wanted.sysext_url)?;
        }
        let footing = Footing {
            control_planes,
            ports,
            api_port,
            public,
            server_group,
            balancer_ready,
        };
        let servers = self.servers(&roster, missing, &rebuilt, &lane, &footing);
        self.attach_and_wait(&footing.ports, &roster.nodes);
        self.scale_down(&roster, servers, &footing.ports);
        remove_extras(&mut self.plan, extras, self.observed);
        self.upgrade(&running)?;
        self.plan.nodes = roster.nodes;
        Ok(self.plan)
    }

    /// The upgrade phase, last: the nodes not at the file's release (and not leaving in this
    /// plan) upgraded one at a time in kubeadm's order once everything else is done, inside
    /// kured's reboot lock. Needs the API; with `--provision-only` it is only reported. While
    /// this plan builds a control plane at an older release, it waits for the next `up` (the
    /// new API server would be older than the kubelets moved past it). What an upgrade that
    /// no longer applies left behind (a node cordoned, kured's lock held) is undone.
    fn upgrade(&mut self, running: &versions::Running) -> Result<(), PlanError> {
        let wanted = &self.spec.kubernetes;
        // Nodes of pools that upgrade by replacement: replaced (by the roster) once the
        // control planes run the release, never upgraded in place.
        let replaced: Vec<String> = running
            .nodes
            .iter()
            .filter(|n| {
                !n.control_plane
                    && n.recorded.is_some_and(|r| r != wanted.version)
                    && super::roster::pool_of(self.spec, &n.name)
                        .is_some_and(|pool| pool.upgrade == crate::spec::PoolUpgrade::Replace)
            })
            .map(|n| n.name.clone())
            .collect();
        let leaving: Vec<String> = self
            .plan
            .steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::DeleteServer { name, .. } | Action::Drain { node: name } => {
                    Some(name.clone())
                }
                _ => None,
            })
            .chain(replaced.iter().cloned())
            .collect();
        let leaving: Vec<&str> = leaving.iter().map(String::as_str).collect();
        let upgrade = versions::upgrade(
            running,
            wanted.version,
            wanted.sysext_sha256.as_deref(),
            &leaving,
        )?
        .map(|mut upgrade| {
            upgrade.replaced = replaced.clone();
            upgrade
        });
        let building = self.plan.steps.iter().find_map(|s| match &s.action {
            Action::CreateServer(server)
                if server.tags.contains(&resources::role_tag("control-plane")) =>
            {
                Some(server.name.clone())
            }
            _ => None,
        });
        let upgrade = upgrade.map(|mut upgrade| {
            if let Some(building) = building.filter(|_| upgrade.from < upgrade.to) {
                upgrade.waits = Some(format!(
                    "control plane {building} is built in this run at {}; run `flatstack up` again to upgrade",
                    upgrade.from
                ));
            }
            upgrade
        });
        let steps = self.scope.kubernetes
            && upgrade
                .as_ref()
                .is_some_and(|u| u.waits.is_none() && !u.order.is_empty());
        self.plan.upgrade = upgrade.clone();
        if !steps {
            self.undo_a_stopped_upgrade(upgrade.as_ref(), running, &leaving);
            return Ok(());
        }
        let Some(upgrade) = upgrade else {
            return Ok(());
        };
        if let ApiReach::Silent(why) = &self.scope.api {
            return Err(PlanError::ApiSilent {
                needed: format!("the upgrade from {} to {}", upgrade.from, upgrade.to),
                why: why.clone(),
            });
        }
        let servers = self.marked_servers(running);
        let everything: Vec<StepId> = (0..self.plan.steps.len()).collect();
        let mut previous = self.plan.push(
            Action::HoldReboots {
                servers: servers.clone(),
                to: upgrade.to,
            },
            &everything,
        );
        for node in &upgrade.order {
            previous = self.plan.push(
                Action::UpgradeNode {
                    node: node.node.clone(),
                    server_id: node.server_id.clone(),
                    control_plane: node.control_plane,
                    from: node.from,
                    to: upgrade.to,
                    kubeadm: node.kubeadm,
                },
                &[previous],
            );
        }
        self.plan
            .push(Action::ReleaseReboots { servers }, &[previous]);
        Ok(())
    }

    /// The control planes' servers that carry the upgrading mark: those this plan keeps.
    fn marked_servers(&self, running: &versions::Running) -> Vec<String> {
        running
            .control_plane_servers
            .iter()
            .filter(|id| {
                !self.plan.steps.iter().any(|s| {
                    matches!(&s.action, Action::DeleteServer { id: deleted, .. } if deleted == *id)
                })
            })
            .cloned()
            .collect()
    }

    /// Without upgrade steps in this plan: what a stopped upgrade left and no upgrade will
    /// continue is undone. Nodes it cordoned (and that stay) are uncordoned; kured's lock
    /// flatstack holds, and the control planes' upgrading mark, are released. The mark alone
    /// (no API asked yet) plans the release, which makes `up` ask the API and plan again.
    fn undo_a_stopped_upgrade(
        &mut self,
        upgrade: Option<&versions::Upgrade>,
        running: &versions::Running,
        leaving: &[&str],
    ) {
        if !self.scope.kubernetes {
            return;
        }
        let pending: Vec<&str> = upgrade
            .map(|u| u.order.iter().map(|n| n.node.as_str()).collect())
            .unwrap_or_default();
        let everything: Vec<StepId> = (0..self.plan.steps.len()).collect();
        let servers = self.marked_servers(running);
        let view = match &self.scope.api {
            ApiReach::Answers(view) => view,
            ApiReach::Unasked if running.upgrading && pending.is_empty() => {
                self.plan
                    .push(Action::ReleaseReboots { servers }, &everything);
                return;
            }
            _ => return,
        };
        let cordoned: Vec<String> = view
            .nodes
            .iter()
            .filter(|(name, node)| {
                node.cordoned_for_upgrade
                    && !pending.contains(&name.as_str())
                    && !leaving.contains(&name.as_str())
            })
            .map(|(name, _)| name.clone())
            .collect();
        for node in cordoned {
            self.plan.push(Action::Uncordon { node }, &everything);
        }
        if (view.reboot_lock_held || running.upgrading) && pending.is_empty() {
            self.plan
                .push(Action::ReleaseReboots { servers }, &everything);
        }
    }

    /// What the cluster's API showed, when it was asked and answered.
    fn view(&self) -> Option<&'a KubeView> {
        match &self.scope.api {
            ApiReach::Answers(view) => Some(view),
            _ => None,
        }
    }

    /// Whether `node` may be registered: the API lists it, or was not read.
    fn may_be_registered(&self, node: &str) -> bool {
        self.view().is_none_or(|v| v.is_registered(node))
    }

    /// Whether control plane `name` may have an etcd member: one is listed, or the members
    /// were not.
    fn may_have_member(&self, name: &str) -> bool {
        let address = self.control_plane_address(name);
        self.view().is_none_or(|v| {
            v.members().is_none() || v.member_of(name, address.as_deref()).is_some()
        })
    }

    /// Control plane `name`'s address: its port's, or the one it gets on flatstack's subnet.
    fn control_plane_address(&self, name: &str) -> Option<String> {
        port_address(self.observed, name).or_else(|| {
            let index = self
                .spec
                .nodes()
                .iter()
                .filter(|n| n.role == Role::ControlPlane)
                .position(|n| n.name == name)?;
            self.spec
                .network
                .control_plane_address(index)
                .map(|a| a.to_string())
        })
    }

    /// Refuses `needed` when the API answered but etcd's members could not be listed.
    fn etcd_readable(&self, needed: &str) -> Result<(), PlanError> {
        match self.view().map(|v| &v.etcd) {
            Some(Membership::Unread { via, why }) => Err(PlanError::EtcdUnread {
                needed: needed.to_string(),
                via: via.clone(),
                why: why.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Untagged resources of the cluster's names are tagged, when kept (a duplicate goes
    /// whether tagged or not).
    fn adopt_untagged(&mut self, extras: &Observed) {
        let is_extra = |id: &str| {
            extras.floating_ips.iter().any(|f| f.id == id)
                || extras.networks.iter().any(|n| n.id == id)
                || extras.subnets.iter().any(|s| s.id == id)
                || extras.routers.iter().any(|r| r.id == id)
                || extras.ports.iter().any(|p| p.id == id)
                || extras.security_groups.iter().any(|g| g.id == id)
        };
        for untagged in self.observed.adopt.iter().filter(|u| !is_extra(&u.id)) {
            self.plan.push(
                Action::Adopt {
                    kind: untagged.kind,
                    id: untagged.id.clone(),
                    name: untagged.name.clone(),
                },
                &[],
            );
        }
    }

    /// One security group for every node, one for control planes, holding exactly the
    /// rules the file asks for.
    fn security_groups(&mut self, chain: &Chain) -> Groups {
        let observed = self.observed;
        let plan = &mut self.plan;
        let mut group = |name: &str| match observed.security_groups.iter().find(|g| g.name == name)
        {
            Some(g) => (Ref::Known(Made::id(&g.id)), g.security_group_rules.clone()),
            None => {
                let id = plan.push(
                    Action::CreateSecurityGroup {
                        name: name.to_string(),
                    },
                    &[],
                );
                (Ref::After(id), Vec::new())
            }
        };
        let (nodes_group, nodes_rules) = group(&self.names.nodes_group);
        let (control_group, control_rules) = group(&self.names.control_plane_group);
        let nodes_group_id = match &nodes_group {
            Ref::Known(made) => made.id.clone(),
            Ref::After(_) => String::new(),
        };
        let wanted = wanted_rules(self.spec, &nodes_group_id, chain.subnet_cidr);
        for (group, group_name, have, want) in [
            (
                &nodes_group,
                &self.names.nodes_group,
                &nodes_rules,
                &wanted.nodes,
            ),
            (
                &control_group,
                &self.names.control_plane_group,
                &control_rules,
                &wanted.control_planes,
            ),
        ] {
            let (missing, stale) = rule_diff(have, want);
            for rule in missing {
                let rule = rule.clone();
                let remote_group = rule.remote_group_id.as_ref().map(|_| nodes_group.clone());
                self.plan.push(
                    Action::AddRule(RuleRequest {
                        group: group.clone(),
                        group_name: group_name.clone(),
                        rule,
                        remote_group,
                    }),
                    &[],
                );
            }
            for rule in stale {
                self.plan.push(
                    Action::RemoveRule {
                        group_name: group_name.clone(),
                        rule: rule.clone(),
                    },
                    &[],
                );
            }
        }
        Groups {
            nodes: nodes_group,
            control_planes: control_group,
        }
    }

    /// The anti-affinity server group every server goes in.
    fn server_group(&mut self) -> Ref {
        match self.observed.server_groups.first() {
            Some(g) => Ref::Known(Made::id(&g.id)),
            None => Ref::After(self.plan.push(
                Action::CreateServerGroup {
                    name: self.names.server_group.clone(),
                    policy: "anti-affinity".into(),
                },
                &[],
            )),
        }
    }

    fn control_planes(&self) -> ControlPlanes<'a> {
        let names: Vec<String> = self
            .spec
            .nodes()
            .into_iter()
            .filter(|n| n.role == Role::ControlPlane)
            .map(|n| n.name)
            .collect();
        let mut running: Vec<&'a str> = self
            .observed
            .servers
            .iter()
            .filter(|s| s.status == "ACTIVE" && names.contains(&s.name))
            .map(|s| s.name.as_str())
            .collect();
        running.sort_unstable();
        ControlPlanes { names, running }
    }

    /// Ports first: the API's address goes into every Ignition config. With one control
    /// plane it is that control plane's port's; with 3 or 5 it belongs to a port of its own,
    /// which (VIP) every control plane's port may hold, checked every run.
    fn ports<'r>(
        &mut self,
        chain: &Chain,
        groups: &Groups,
        nodes: &'r [NodeName],
        control_planes: &ControlPlanes,
    ) -> Ports<'r> {
        let vip = self.spec.control_plane.api_endpoint == ApiEndpointKind::Vip;
        let api_address = self.spec.network.default_api_address();
        let endpoint_port = self.spec.control_plane.highly_available().then(|| {
            match self
                .observed
                .ports
                .iter()
                .find(|p| p.name == self.names.api_port)
            {
                Some(port) => Ref::Known(port_made(port)),
                None => Ref::After(self.plan.push(
                    Action::CreatePort(PortRequest {
                        name: self.names.api_port.clone(),
                        network: chain.network.clone(),
                        subnet: chain.subnet.clone(),
                        fixed_ip: api_address,
                        security_groups: vec![groups.nodes.clone(), groups.control_planes.clone()],
                        allowed_address_of: None,
                    }),
                    &[],
                )),
            }
        });
        let mut ports: BTreeMap<&'r str, Ref> = BTreeMap::new();
        for node in nodes {
            let index = control_planes.index(&node.name);
            let endpoint = endpoint_port.as_ref().filter(|_| index.is_some() && vip);
            let port = match self.observed.ports.iter().find(|p| p.name == node.name) {
                Some(port) => {
                    let held = |endpoint: &Ref| match endpoint {
                        Ref::Known(made) => {
                            made.address.as_deref().is_some_and(|a| port.allows_only(a))
                        }
                        Ref::After(_) => false,
                    };
                    if let Some(endpoint) = endpoint.filter(|e| !held(e)) {
                        self.plan.push(
                            Action::AllowAddress {
                                port: Ref::Known(port_made(port)),
                                port_name: port.name.clone(),
                                endpoint: endpoint.clone(),
                            },
                            &[],
                        );
                    }
                    Ref::Known(port_made(port))
                }
                None => {
                    let mut security_groups = vec![groups.nodes.clone()];
                    let fixed_ip = match (index, &endpoint_port) {
                        (Some(i), Some(_)) => self.spec.network.control_plane_address(i),
                        (Some(0), None) => api_address,
                        _ => None,
                    };
                    if index.is_some() {
                        security_groups.push(groups.control_planes.clone());
                    }
                    Ref::After(self.plan.push(
                        Action::CreatePort(PortRequest {
                            name: node.name.clone(),
                            network: chain.network.clone(),
                            subnet: chain.subnet.clone(),
                            fixed_ip,
                            security_groups,
                            allowed_address_of: endpoint.cloned(),
                        }),
                        &[],
                    ))
                }
            };
            ports.insert(node.name.as_str(), port);
        }
        Ports {
            endpoint: endpoint_port,
            of_node: ports,
        }
    }

    /// The API's load balancer, made with every control plane as a member before any of them
    /// boots (`kubeadm init` and every join talk through it): the step after which it is
    /// ready, if one is needed.
    fn api_load_balancer(
        &mut self,
        chain: &Chain,
        ports: &Ports,
        nodes: &[NodeName],
    ) -> Option<StepId> {
        let (Some(vip_port), ApiEndpointKind::LoadBalancer) =
            (&ports.endpoint, self.spec.control_plane.api_endpoint)
        else {
            return None;
        };
        let members = nodes
            .iter()
            .filter(|n| n.role == Role::ControlPlane)
            .map(|n| {
                let port = ports.of_node.get(n.name.as_str()).cloned();
                (n.name.clone(), port.unwrap_or(Ref::After(0)))
            })
            .collect();
        // A running load balancer keeps its provider, whatever the catalog offers now.
        let running: Option<Vec<String>> = self
            .observed
            .api_load_balancers
            .iter()
            .find_map(|lb| lb.provider.clone())
            .map(|p| vec![p]);
        let request = super::endpoint::request(
            self.spec,
            running
                .as_deref()
                .or(self.facts.load_balancer_providers.as_deref())
                .unwrap_or_default(),
            vip_port.clone(),
            chain.subnet.clone(),
            chain.subnet_cidr,
            members,
            vec![cluster_tag(&self.spec.name)],
        );
        load_balancer_steps(
            &mut self.plan,
            self.observed,
            vip_port,
            request,
            &chain.reachable_after,
            &self.facts.router_addresses,
        )
    }

    /// The API's floating IP, on the port that holds the API's address (checked every run).
    fn api_floating_ip(
        &mut self,
        chain: &Chain,
        api_port: &Ref,
        api_port_name: &str,
        external_id: &str,
    ) -> Ref {
        match self.observed.api_floating_ip(&self.spec.name) {
            None => {
                let created = self.plan.push(
                    Action::CreateFloatingIp {
                        description: self.names.api_address.clone(),
                        external_network: self.spec.network.external_network.clone(),
                        external_network_id: external_id.to_string(),
                    },
                    &[],
                );
                self.plan.push(
                    Action::AttachFloatingIp {
                        floating: Ref::After(created),
                        label: self.names.api_address.clone(),
                        port: api_port.clone(),
                        port_name: api_port_name.to_string(),
                        repair: false,
                    },
                    &chain.reachable_after,
                );
                Ref::After(created)
            }
            Some(floating) => {
                let attached = match api_port {
                    Ref::Known(port) => floating.port_id.as_deref() == Some(port.id.as_str()),
                    Ref::After(_) => false,
                };
                if !attached {
                    self.plan.push(
                        Action::AttachFloatingIp {
                            floating: Ref::Known(Made::id(&floating.id)),
                            label: floating.floating_ip_address.clone(),
                            port: api_port.clone(),
                            port_name: api_port_name.to_string(),
                            repair: true,
                        },
                        &chain.reachable_after,
                    );
                }
                Ref::Known(Made {
                    id: floating.id.clone(),
                    address: Some(floating.floating_ip_address.clone()),
                })
            }
        }
    }

    /// Servers that hold nothing and are deleted to be built again in their place, with
    /// their ports: a build that failed before its guest ran (no disk written, no node
    /// joined), and a worker made with another state directory (two workstations making the
    /// cluster at once), which trusts a CA no control plane has and can never join.
    fn failed_builds(&mut self, nodes: &[NodeName]) -> BTreeMap<&'a str, StepId> {
        let observed = self.observed;
        let mut rebuilt: BTreeMap<&'a str, StepId> = BTreeMap::new();
        for server in observed
            .servers
            .iter()
            .filter(|s| s.failed_build() && nodes.iter().any(|n| n.name == s.name))
        {
            let fault = server
                .fault
                .as_ref()
                .map_or("no fault given", |f| f.message.as_str());
            let gone = self.plan.push(
                Action::DeleteServer {
                    id: server.id.clone(),
                    name: server.name.clone(),
                    because: Some(format!(
                        "its build failed ({}): built again",
                        first_sentence(fault)
                    )),
                },
                &[],
            );
            rebuilt.insert(server.name.as_str(), gone);
        }
        if let Some(cluster_ca) = resources::cluster_ca(&observed.servers) {
            for (server, theirs) in
                resources::servers_trusting_another_ca(&observed.servers, cluster_ca)
            {
                if !server.has_role("worker")
                    || rebuilt.contains_key(server.name.as_str())
                    || !nodes.iter().any(|n| n.name == server.name)
                {
                    continue;
                }
                let gone = self.plan.push(
                    Action::DeleteServer {
                        id: server.id.clone(),
                        name: server.name.clone(),
                        because: Some(format!(
                            "it was made with another state directory: its node trusts CA {theirs}, not the cluster's {cluster_ca}, and can never join; built again"
                        )),
                    },
                    &[],
                );
                rebuilt.insert(server.name.as_str(), gone);
            }
        }
        rebuilt
    }

    /// The control-plane lane. A control plane that ran held etcd. With one, built again it
    /// would initialize a blank cluster: refused. With 3 or 5 and quorum kept, its member is
    /// removed through a running control plane and its Node deleted before it is built again
    /// to join as a new member. With 3 or 5, one whose port is left (or whose server is in
    /// ERROR) had a server: lost; one with neither is new (the count grew) and joins, after
    /// any member of its name is removed. Then, with none lost, a control plane whose flavor
    /// or boot disk differs from the file's is replaced in place, one at a time. Whatever of
    /// this needs the API and cannot have it is refused.
    fn control_plane_lane<'r>(
        &mut self,
        roster: &'r super::roster::Roster,
        missing: &[&'r NodeName],
        rebuilt: &BTreeMap<&'a str, StepId>,
        control_planes: &ControlPlanes<'a>,
    ) -> Result<Lane<'a, 'r>, PlanError> {
        let (spec, observed, scope) = (self.spec, self.observed, self.scope);
        if scope.restoring {
            return Ok(Lane {
                member_gone: BTreeMap::new(),
                strays_gone: None,
                rolling: Vec::new(),
            });
        }
        let ran = resources::control_plane_ran(observed);
        let ha = spec.control_plane.highly_available();
        let had_server = |n: &NodeName| {
            !ha || rebuilt.contains_key(n.name.as_str())
                || observed.ports.iter().any(|p| p.name == n.name)
        };
        let missing_control_planes: Vec<&'r NodeName> = match ran {
            true => missing
                .iter()
                .filter(|n| n.role == Role::ControlPlane)
                .copied()
                .collect(),
            false => Vec::new(),
        };
        let lost: Vec<&NodeName> = missing_control_planes
            .iter()
            .filter(|n| had_server(n))
            .copied()
            .collect();
        let mut member_gone: BTreeMap<&'r str, StepId> = BTreeMap::new();
        let mut strays_gone: Option<StepId> = None;
        let view = self.view();
        // `--accept-empty-cluster` is for one control plane: with 3 or 5, a rebuilt one must
        // join the others, which it cannot with its old member listed.
        let accepted = scope.accept_empty_cluster && !ha;
        if let Some(first_lost) = lost.first().filter(|_| !accepted) {
            let name = first_lost.name.clone();
            let how = match rebuilt.contains_key(name.as_str()) {
                true => "in ERROR",
                false => "gone",
            };
            if !ha {
                return Err(PlanError::ControlPlaneLost { name, how });
            }
            let survivors: Vec<&str> = control_planes
                .running
                .iter()
                .copied()
                .filter(|s| !lost.iter().any(|n| n.name == *s))
                .collect();
            // etcd's members are the running control planes and the lost ones. (Members
            // listed just now prove a quorum: that read was linearizable.)
            let quorum = quorum_of(survivors.len() + lost.len());
            if survivors.len() < quorum && view.and_then(KubeView::members).is_none() {
                let names: Vec<&str> = lost.iter().map(|n| n.name.as_str()).collect();
                return Err(PlanError::QuorumLost {
                    lost: names.join(", "),
                    are: if names.len() == 1 { "is" } else { "are" },
                    running: survivors.len(),
                    count: (survivors.len() + lost.len()) as u32,
                    quorum,
                });
            }
            if !scope.kubernetes {
                return Err(PlanError::MemberLost { name, how });
            }
            if let ApiReach::Silent(why) = &scope.api {
                return Err(PlanError::ApiSilent {
                    needed: format!("removing the etcd member of lost control plane {name}"),
                    why: why.clone(),
                });
            }
            self.etcd_readable(&format!(
                "removing the etcd member of lost control plane {name}"
            ))?;
        }
        // A new control plane (the count grew) has any member of its name removed first,
        // which needs the API as much as a lost one's.
        if let (Some(node), ApiReach::Silent(why), true) = (
            missing_control_planes.first(),
            &scope.api,
            ha && scope.kubernetes,
        ) {
            return Err(PlanError::ApiSilent {
                needed: format!("clearing etcd's members for control plane {}", node.name),
                why: why.clone(),
            });
        }
        if let (Some(node), true) = (missing_control_planes.first(), ha && scope.kubernetes) {
            self.etcd_readable(&format!(
                "clearing etcd's members for control plane {}",
                node.name
            ))?;
        }
        // Through a control plane with a member (one whose member is gone runs no etcd).
        let via = control_planes.running.iter().copied().find(|s| {
            !missing_control_planes.iter().any(|n| n.name == *s) && self.may_have_member(s)
        });
        if let Some(via) = via.filter(|_| ha && scope.kubernetes && !accepted) {
            // One at a time, through the first running control plane: first members of no
            // control plane, then those of the control planes built again. What the API
            // showed leaves out what is not there (unasked, everything is planned, and the
            // step finds out).
            let mut after: Vec<StepId> = Vec::new();
            let wanted: Vec<(&str, Option<String>)> = control_planes
                .names
                .iter()
                .map(|n| (n.as_str(), self.control_plane_address(n)))
                .collect();
            let wanted: Vec<(&str, Option<&str>)> =
                wanted.iter().map(|(n, a)| (*n, a.as_deref())).collect();
            for stray in view
                .and_then(KubeView::members)
                .map(|members| stray_members(members, &wanted))
                .unwrap_or_default()
            {
                after = vec![self.plan.push(
                    Action::RemoveStrayEtcdMember {
                        id: stray.hex_id(),
                        name: stray.name.clone(),
                        via: via.to_string(),
                    },
                    &after,
                )];
                strays_gone = after.first().copied();
            }
            for node in &missing_control_planes {
                if self.may_have_member(&node.name) {
                    after = vec![self.plan.push(
                        Action::RemoveEtcdMember {
                            node: node.name.clone(),
                            address: port_address(observed, &node.name),
                            via: via.to_string(),
                        },
                        &after,
                    )];
                }
                if self.may_be_registered(&node.name) {
                    after = vec![self.plan.push(
                        Action::DeleteNode {
                            node: node.name.clone(),
                        },
                        &after,
                    )];
                }
                if let Some(last) = after.first() {
                    member_gone.insert(node.name.as_str(), *last);
                }
            }
        }
        let rolling: Vec<(&'r NodeName, &'a crate::cloud::compute::Server, String)> =
            match ha && missing_control_planes.is_empty() {
                true => roster
                    .nodes
                    .iter()
                    .filter(|n| n.role == Role::ControlPlane)
                    .filter_map(|n| {
                        let server = observed
                            .servers
                            .iter()
                            .find(|s| s.name == n.name && s.status == "ACTIVE")?;
                        let plane = &spec.control_plane;
                        let why = outdated_because(
                            &plane.flavor,
                            plane.boot_volume_gb,
                            server,
                            ServerFacts::of(observed, &self.facts.flavors),
                        )
                        .or_else(|| {
                            let address = self.control_plane_address(&n.name);
                            self.view()?
                                .lost_its_member(&n.name, address.as_deref())
                                .then(|| "was removed from etcd (kubeadm marked it a control plane, and etcd lists no member of it): its etcd cannot start again".to_string())
                        })?;
                        Some((n, server, why))
                    })
                    .collect(),
                false => Vec::new(),
            };
        if let Some((node, _, why)) = rolling.first().filter(|_| !scope.kubernetes) {
            return Err(PlanError::ControlPlaneChange {
                name: node.name.clone(),
                why: why.clone(),
            });
        }
        if let (Some((node, _, _)), ApiReach::Silent(why)) = (rolling.first(), &scope.api) {
            return Err(PlanError::ApiSilent {
                needed: format!("replacing control plane {} in place", node.name),
                why: why.clone(),
            });
        }
        if let Some((node, _, _)) = rolling.first() {
            self.etcd_readable(&format!("replacing control plane {} in place", node.name))?;
        }
        // A worker replaced is drained only once its replacement is seen Ready.
        if let (Some(replacement), ApiReach::Silent(why), true) =
            (roster.replacements.first(), &scope.api, scope.kubernetes)
        {
            return Err(PlanError::ApiSilent {
                needed: format!(
                    "replacing {} (its replacement must be seen Ready before it is drained)",
                    replacement.old
                ),
                why: why.clone(),
            });
        }
        Ok(Lane {
            member_gone,
            strays_gone,
            rolling,
        })
    }

    /// Servers: every one missing, once its config is rendered; a pool's replacements
    /// `max_surge` at a time, each new server once an earlier replacement's old one is gone;
    /// then the control planes replaced in place, one at a time.
    fn servers<'r>(
        &mut self,
        roster: &'r super::roster::Roster,
        mut missing: Vec<&'r NodeName>,
        rebuilt: &BTreeMap<&'a str, StepId>,
        lane: &Lane<'a, 'r>,
        footing: &Footing<'a, 'r>,
    ) -> Servers<'r> {
        let (spec, observed, scope, facts) = (self.spec, self.observed, self.scope, self.facts);
        let Footing {
            control_planes,
            ports,
            api_port,
            public,
            server_group,
            balancer_ready,
        } = footing;
        let balancer_ready = *balancer_ready;
        let nodes = &roster.nodes;
        let replacing: BTreeMap<&str, &Replacement> = roster
            .replacements
            .iter()
            .map(|r| (r.new.as_str(), r))
            .collect();
        let first = nodes
            .iter()
            .find(|n| n.role == Role::ControlPlane)
            .map(|n| n.name.as_str())
            .unwrap_or_default();
        // A new cluster's first control plane runs `kubeadm init`; with any control plane
        // running, every new one joins.
        let control_plane_runs = observed.servers.iter().any(|s| {
            (s.has_role("control-plane") || control_planes.index(&s.name).is_some())
                && !s.failed_build()
        });
        let initializer = (!control_plane_runs)
            .then(|| first.to_string())
            .filter(|first| missing.iter().any(|n| &n.name == first));
        // Additions first, then the replacements in their order.
        missing.sort_by_key(|n| {
            roster
                .replacements
                .iter()
                .position(|r| r.new == n.name)
                .map_or(0, |i| i + 1)
        });
        let running = observed.servers.iter().any(|s| !s.failed_build());
        let mut deleted: BTreeMap<&'r str, StepId> = BTreeMap::new();
        // A pool's outdated servers are drained only once its up-to-date servers are all
        // Ready (a run stopped half-way may have left a new one still joining).
        let mut pool_ready: BTreeMap<usize, Vec<StepId>> = BTreeMap::new();
        // (With a silent API nothing is drained: leaving nodes go undrained, replacements
        // are refused.)
        if scope.kubernetes && !matches!(scope.api, ApiReach::Silent(_)) {
            let pools: BTreeSet<usize> = roster.outdated.values().copied().collect();
            for node in nodes
                .iter()
                .filter(|n| n.pool.is_some_and(|p| pools.contains(&p)))
            {
                if observed.servers.iter().any(|s| s.name == node.name) {
                    let ready = self.plan.push(
                        Action::WaitReady {
                            node: node.name.clone(),
                        },
                        &[],
                    );
                    pool_ready
                        .entry(node.pool.unwrap_or_default())
                        .or_default()
                        .push(ready);
                }
            }
        }
        let rolling = &lane.rolling;
        if missing.is_empty() && rolling.is_empty() {
            return Servers {
                deleted,
                pool_ready,
            };
        }
        let image_id = facts.image_id.clone().unwrap_or_else(|| MISSING.into());
        let mut before = vec![
            self.plan.push(
                Action::RenderIgnition {
                    nodes: missing
                        .iter()
                        .map(|n| (*n).clone())
                        .chain(rolling.iter().map(|(n, _, _)| (*n).clone()))
                        .collect(),
                    internal: api_port.clone(),
                    public: public.clone(),
                    initializer: initializer.clone(),
                    boot: self.boot.clone(),
                },
                &[],
            ),
        ];
        // (A cluster initialized by this plan gets the token from `kubeadm init`.)
        if scope.kubernetes && running && initializer.is_none() {
            let valid_minutes = join_token_minutes(spec, roster, rolling.len(), scope.node_wait);
            before.push(
                self.plan
                    .push(Action::CreateJoinToken { valid_minutes }, &[]),
            );
        }
        // Per pool, the deletions of the servers replaced so far, in order.
        let mut replaced_so_far: BTreeMap<usize, Vec<StepId>> = BTreeMap::new();
        // Control planes are placed one after another: Nova checks hard anti-affinity against
        // the hosts its group's members have, and members scheduled at once can land on one
        // host and fail their build ("Anti-affinity instance group policy was violated").
        let mut previous_control_plane: Option<StepId> = None;
        for node in missing {
            let pool = node.pool.unwrap_or_default();
            let surge = spec.worker_pools.get(pool).map_or(1, |p| p.max_surge) as usize;
            let earlier = replaced_so_far.get(&pool).map_or(&[][..], Vec::as_slice);
            let slot_free = match replacing.contains_key(node.name.as_str()) {
                true => earlier.len().checked_sub(surge).map(|k| earlier[k]),
                false => None,
            };
            let port = ports.of_node.get(node.name.as_str()).cloned();
            let create = self.plan.push(
                Action::CreateServer(server_plan(
                    spec,
                    facts,
                    node,
                    port,
                    &image_id,
                    server_group,
                    self.boot.as_ref(),
                )),
                &before
                    .iter()
                    .copied()
                    .chain(slot_free)
                    .chain(rebuilt.get(node.name.as_str()).copied())
                    .chain(lane.member_gone.get(node.name.as_str()).copied())
                    .chain(balancer_ready.filter(|_| node.role == Role::ControlPlane))
                    .chain(previous_control_plane.filter(|_| node.role == Role::ControlPlane))
                    .collect::<Vec<_>>(),
            );
            let active = self.plan.push(
                Action::WaitActive {
                    server: Ref::After(create),
                    name: node.name.clone(),
                },
                &[],
            );
            if node.role == Role::ControlPlane {
                previous_control_plane = Some(active);
            }
            let Some(replacement) = replacing.get(node.name.as_str()) else {
                continue;
            };
            let Some(old) = observed.servers.iter().find(|s| s.name == replacement.old) else {
                continue;
            };
            // New node first: Ready in the cluster, then the old one drained and deleted.
            let mut ready = vec![active];
            let mut because = None;
            if scope.kubernetes {
                let joined = self.plan.push(
                    Action::WaitReady {
                        node: node.name.clone(),
                    },
                    &ready,
                );
                let mut before_drain = ready_before_drain(roster, &pool_ready, &old.name);
                before_drain.push(joined);
                ready = match self.may_be_registered(&old.name) {
                    true => vec![self.plan.push(
                        Action::Drain {
                            node: old.name.clone(),
                        },
                        &before_drain,
                    )],
                    false => {
                        because = Some(NEVER_REGISTERED.to_string());
                        before_drain
                    }
                };
            }
            let gone = self.plan.push(
                Action::DeleteServer {
                    id: old.id.clone(),
                    name: old.name.clone(),
                    because,
                },
                &ready,
            );
            // The old server's name, as the roster holds it.
            if let Some(name) = roster.outdated.keys().find(|n| **n == old.name) {
                deleted.insert(name.as_str(), gone);
            }
            replaced_so_far.entry(pool).or_default().push(gone);
        }
        // Control planes replaced in place, one at a time: drained while the API is whole,
        // its member removed through another control plane, the server built again to join,
        // Ready and a voting member again before the next. The first waits the same for those
        // already up to date: a run stopped part-way may have left one still joining.
        let mut previous: Vec<StepId> = lane.strays_gone.into_iter().collect();
        if !rolling.is_empty() {
            // Every other control plane with a server, ACTIVE or still building.
            let others = observed.servers.iter().filter(|s| {
                control_planes.index(&s.name).is_some()
                    && !rolling.iter().any(|(r, _, _)| r.name == s.name)
            });
            for name in others.map(|s| s.name.as_str()) {
                let Some(via) = control_planes
                    .running
                    .iter()
                    .find(|s| **s != name && self.may_have_member(s))
                else {
                    continue;
                };
                let ready = self.plan.push(
                    Action::WaitReady {
                        node: name.to_string(),
                    },
                    &[],
                );
                previous.push(self.plan.push(
                    Action::WaitEtcdMember {
                        node: name.to_string(),
                        via: via.to_string(),
                    },
                    &[ready],
                ));
            }
        }
        for (node, old, why) in rolling {
            let Some(via) = control_planes
                .running
                .iter()
                .copied()
                .find(|s| *s != node.name && self.may_have_member(s))
            else {
                continue;
            };
            if self.may_be_registered(&node.name) {
                previous = vec![self.plan.push(
                    Action::Drain {
                        node: node.name.clone(),
                    },
                    &previous,
                )];
            }
            if self.may_have_member(&node.name) {
                previous = vec![self.plan.push(
                    Action::RemoveEtcdMember {
                        node: node.name.clone(),
                        address: port_address(observed, &node.name),
                        via: via.to_string(),
                    },
                    &previous,
                )];
            }
            let gone = self.plan.push(
                Action::DeleteServer {
                    id: old.id.clone(),
                    name: old.name.clone(),
                    because: Some(format!("it {why}: replaced in place")),
                },
                &previous,
            );
            let port = ports.of_node.get(node.name.as_str()).cloned();
            let create = self.plan.push(
                Action::CreateServer(server_plan(
                    spec,
                    facts,
                    node,
                    port,
                    &image_id,
                    server_group,
                    self.boot.as_ref(),
                )),
                &before.iter().copied().chain([gone]).collect::<Vec<_>>(),
            );
            let active = self.plan.push(
                Action::WaitActive {
                    server: Ref::After(create),
                    name: node.name.clone(),
                },
                &[],
            );
            let ready = self.plan.push(
                Action::WaitReady {
                    node: node.name.clone(),
                },
                &[active],
            );
            previous = vec![self.plan.push(
                Action::WaitEtcdMember {
                    node: node.name.clone(),
                    via: via.to_string(),
                },
                &[ready],
            )];
        }
        Servers {
            deleted,
            pool_ready,
        }
    }

    /// Running servers whose port was deleted get the new one; servers a previous run left
    /// building are waited for (an ERROR is reported with its fault).
    fn attach_and_wait(&mut self, ports: &Ports, nodes: &[NodeName]) {
        let observed = self.observed;
        for server in observed.servers.iter().filter(|s| !s.failed_build()) {
            if let Some(port @ Ref::After(_)) = ports.of_node.get(server.name.as_str()) {
                self.plan.push(
                    Action::AttachPort {
                        server_id: server.id.clone(),
                        server_name: server.name.clone(),
                        port: port.clone(),
                    },
                    &[],
                );
            }
        }
        let wanted: BTreeSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        for server in observed.servers.iter().filter(|s| {
            wanted.contains(s.name.as_str()) && s.status != "ACTIVE" && !s.failed_build()
        }) {
            self.plan.push(
                Action::WaitActive {
                    server: Ref::Known(Made::id(&server.id)),
                    name: server.name.clone(),
                },
                &[],
            );
        }
    }

    /// Scaled down: servers the file no longer names are drained (when the API answers; else
    /// deleted undrained, saying why), then deleted with their ports; ports of no node go.
    fn scale_down(&mut self, roster: &super::roster::Roster, servers: Servers, ports: &Ports) {
        let observed = self.observed;
        let scope = self.scope;
        let Servers {
            deleted,
            pool_ready,
        } = servers;
        let mut deleted: BTreeMap<String, StepId> = deleted
            .into_iter()
            .map(|(name, step)| (name.to_string(), step))
            .collect();
        let replaced: BTreeSet<String> = deleted.keys().cloned().collect();
        let wanted: BTreeSet<&str> = roster.nodes.iter().map(|n| n.name.as_str()).collect();
        let silent = match &scope.api {
            ApiReach::Silent(why) => Some(why),
            _ => None,
        };
        for server in observed
            .servers
            .iter()
            .filter(|s| !wanted.contains(s.name.as_str()) && !replaced.contains(&s.name))
        {
            let drains = scope.kubernetes && !server.failed_build();
            let registered = self.may_be_registered(&server.name);
            let drained: Vec<StepId> = match drains && registered {
                true if silent.is_none() => vec![self.plan.push(
                    Action::Drain {
                        node: server.name.clone(),
                    },
                    &ready_before_drain(roster, &pool_ready, &server.name),
                )],
                _ => Vec::new(),
            };
            let because = match silent {
                Some(why) => Some(format!(
                    "not drained: the Kubernetes API does not answer ({why})"
                )),
                None => (!registered).then(|| NEVER_REGISTERED.to_string()),
            }
            .filter(|_| drains);
            let id = self.plan.push(
                Action::DeleteServer {
                    id: server.id.clone(),
                    name: server.name.clone(),
                    because,
                },
                &drained,
            );
            deleted.insert(server.name.clone(), id);
        }
        let kept_port = |p: &Port| {
            wanted.contains(p.name.as_str())
                || (ports.endpoint.is_some() && p.name == self.names.api_port)
        };
        for port in observed.ports.iter().filter(|p| !kept_port(p)) {
            let after: Vec<StepId> = deleted.get(&port.name).copied().into_iter().collect();
            self.plan.push(
                Action::DeletePort {
                    id: port.id.clone(),
                    name: port.name.clone(),
                },
                &after,
            );
        }
    }
}

/// How long this run's join token stays valid: an hour, and `up`'s wait for a node (`node_wait`,
/// whole minutes, at least one) for each node that joins only after an earlier one is
/// replaced: each control plane replaced in place, and each further wave of a pool's
/// replacements (`max_surge` at a time).
fn join_token_minutes(
    spec: &ClusterSpec,
    roster: &super::roster::Roster,
    rolling: usize,
    node_wait: std::time::Duration,
) -> u32 {
    let waves: usize = spec
        .worker_pools
        .iter()
        .enumerate()
        .map(|(index, pool)| {
            let replaced = roster
                .replacements
                .iter()
                .filter(|r| roster.outdated.get(&r.old) == Some(&index))
                .count();
            replaced
                .div_ceil(pool.max_surge.max(1) as usize)
                .saturating_sub(1)
        })
        .sum();
    let late = u32::try_from(rolling + waves).unwrap_or(u32::MAX);
    let per_node = u32::try_from(node_wait.as_secs().div_ceil(60))
        .unwrap_or(u32::MAX)
        .max(1);
    late.saturating_mul(per_node).saturating_add(60)
}

/// The waits a pool's outdated server's drain comes after: its pool's up-to-date nodes Ready.
fn ready_before_drain(
    roster: &super::roster::Roster,
    pool_ready: &BTreeMap<usize, Vec<StepId>>,
    server: &str,
) -> Vec<StepId> {
    roster
        .outdated
        .get(server)
        .and_then(|pool| pool_ready.get(pool))
        .cloned()
        .unwrap_or_default()
}

/// The steps that leave one ACTIVE load balancer `<cluster>-api` on the endpoint's port, and
/// the step after which it is ready, if any is needed: created when there is none, waited for
/// when a stopped run left it changing, made again when Octavia has it in ERROR; duplicates of
/// two writers (the one on another port first) deleted.
fn load_balancer_steps(
    plan: &mut Plan,
    observed: &Observed,
    vip_port: &Ref,
    request: super::endpoint::LoadBalancerRequest,
    routed_after: &[StepId],
    routers: &[Ipv4Addr],
) -> Option<StepId> {
    let port_id = match vip_port {
        Ref::Known(made) => Some(made.id.as_str()),
        Ref::After(_) => None,
    };
    let mut balancers: Vec<&crate::cloud::load_balancer::LoadBalancer> = observed
        .api_load_balancers
        .iter()
        .filter(|lb| lb.provisioning_status != "PENDING_DELETE")
        .collect();
    balancers.sort_by_key(|lb| (lb.vip_port_id.as_deref() != port_id, lb.id.clone()));
    let (kept, extras) = match balancers.split_first() {
        Some((kept, extras)) => (Some(*kept), extras.to_vec()),
        None => (None, Vec::new()),
    };
    for extra in extras {
        plan.push(
            Action::DeleteLoadBalancer {
                id: extra.id.clone(),
                name: extra.name.clone(),
                because: "a duplicate",
            },
            &[],
        );
    }
    match kept {
        // Running: put back in shape where it drifted (by hand, or the file changed who may
        // connect, or the control planes grew), once the new control planes' ports exist.
        Some(lb) if lb.provisioning_status == "ACTIVE" => {
            let shape = lb.shape.as_ref()?;
            let addresses: Option<Vec<Ipv4Addr>> = request
                .members
                .iter()
                .map(|(_, port)| match port {
                    Ref::Known(made) => made.address.as_deref()?.parse().ok(),
                    Ref::After(_) => None,
                })
                .collect();
            let repairs = request.repairs(shape, addresses.as_deref(), routers);
            if repairs.is_empty() {
                return None;
            }
            let after: Vec<StepId> = request
                .members
                .iter()
                .filter_map(|(_, port)| match port {
                    Ref::After(step) => Some(*step),
                    Ref::Known(_) => None,
                })
                .chain(routed_after.iter().copied())
                .collect();
            Some(plan.push(
                Action::RepairLoadBalancer {
                    id: lb.id.clone(),
                    request,
                    repairs,
                },
                &after,
            ))
        }
        Some(lb) if lb.provisioning_status.starts_with("PENDING") => Some(plan.push(
            Action::WaitLoadBalancer {
                id: lb.id.clone(),
                name: lb.name.clone(),
            },
            &[],
        )),
        Some(lb) => {
            let gone = plan.push(
                Action::DeleteLoadBalancer {
                    id: lb.id.clone(),
                    name: lb.name.clone(),
                    because: "Octavia has it in ERROR: made again",
                },
                &[],
            );
            let after: Vec<StepId> = std::iter::once(gone)
                .chain(routed_after.iter().copied())
                .collect();
            Some(plan.push(Action::CreateLoadBalancer(request), &after))
        }
        // Made once the router is on the subnet: its listeners admit the router's address.
        None => Some(plan.push(Action::CreateLoadBalancer(request), routed_after)),
    }
}

/// Refuses moving a running cluster from a VIP to a load balancer or back.
fn check_endpoint(spec: &ClusterSpec, observed: &Observed) -> Result<(), PlanError> {
    let runs = if !observed.api_load_balancers.is_empty() {
        ApiEndpointKind::LoadBalancer
    } else if observed
        .ports
        .iter()
        .any(|p| !p.allowed_address_pairs.is_empty())
    {
        ApiEndpointKind::Vip
    } else {
        return Ok(());
    };
    let wanted = spec.control_plane.api_endpoint;
    match wanted == runs || !spec.control_plane.highly_available() {
        true => Ok(()),
        false => Err(PlanError::EndpointChange {
            wanted: wanted.as_str(),
            runs: runs.as_str(),
        }),
    }
}

/// What Nova's create of `node` needs: the flavor and boot disk of its pool (or the control
/// planes'), the image, its port, the cluster's tags, and the anti-affinity group for control
/// planes.
fn server_plan(
    spec: &ClusterSpec,
    facts: &CloudFacts,
    node: &NodeName,
    port: Option<Ref>,
    image_id: &str,
    server_group: &Ref,
    boot: Option<&versions::Boot>,
) -> ServerPlan {
    let (flavor_name, boot_volume_gb, role) = match node.pool.and_then(|i| spec.worker_pools.get(i))
    {
        Some(pool) => (&pool.flavor, pool.boot_volume_gb, "worker"),
        None => (
            &spec.control_plane.flavor,
            spec.control_plane.boot_volume_gb,
            "control-plane",
        ),
    };
    let flavor_id = facts
        .flavors
        .iter()
        .find(|f| &f.name == flavor_name || &f.id == flavor_name)
        .map_or(MISSING, |f| f.id.as_str());
    ServerPlan {
        name: node.name.clone(),
        flavor_id: flavor_id.to_string(),
        flavor_name: flavor_name.clone(),
        image_id: image_id.to_string(),
        port: port.unwrap_or(Ref::After(0)),
        key_name: spec.access.keypair.clone(),
        tags: vec![cluster_tag(&spec.name), resources::role_tag(role)],
        metadata: BTreeMap::from([
            ("flatstack-cluster".to_string(), spec.name.clone()),
            ("flatstack-role".to_string(), role.to_string()),
            (
                resources::KUBERNETES_METADATA.to_string(),
                boot.map_or(spec.kubernetes.version, |b| b.release)
                    .to_string(),
            ),
        ])
        .into_iter()
        .chain(
            boot.map(|b| b.sha256.clone())
                .or_else(|| spec.kubernetes.sysext_sha256.clone())
                .map(|sha| (versions::SYSEXT_DIGEST_METADATA.to_string(), sha)),
        )
        .collect(),
        server_group: (node.role == Role::ControlPlane).then(|| server_group.clone()),
        boot_volume_gb,
    }
}

/// Refuses a change of the control planes' count that flatstack cannot make: from one to more
/// (the API's address is the one control plane's) or to fewer (etcd members would go without
/// being removed first).
fn check_control_plane_count(spec: &ClusterSpec, observed: &Observed) -> Result<(), PlanError> {
    let names = Names::of(&spec.name);
    let wanted = spec.control_plane.count;
    let wanted_names: BTreeSet<String> = spec
        .nodes()
        .into_iter()
        .filter(|n| n.role == Role::ControlPlane)
        .map(|n| n.name)
        .collect();
    let mut running: Vec<&str> = observed
        .servers
        .iter()
        .filter(|s| s.has_role("control-plane") && !s.failed_build())
        .map(|s| s.name.as_str())
        .collect();
    running.sort_unstable();
    running.dedup();
    let shrinking = running.iter().any(|n| !wanted_names.contains(*n))
        || (!spec.control_plane.highly_available()
            && observed.ports.iter().any(|p| p.name == names.api_port));
    if shrinking && running.len() > 1 {
        return Err(PlanError::ControlPlaneShrink {
            wanted,
            running: running.len(),
            names: running.join(", "),
        });
    }
    // One control plane's cluster: no endpoint port, and the API's floating IP points at that
    // control plane's port.
    let has_endpoint = observed.ports.iter().any(|p| p.name == names.api_port);
    let on_a_control_plane = observed.api_floating_ip(&spec.name).is_some_and(|f| {
        observed
            .ports
            .iter()
            .any(|p| Some(p.id.as_str()) == f.port_id.as_deref())
    });
    if spec.control_plane.highly_available()
        && !has_endpoint
        && on_a_control_plane
        && !running.is_empty()
    {
        return Err(PlanError::ControlPlaneGrowth { wanted });
    }
    Ok(())
}

/// Steps that remove duplicates, each after what stands in its way.
fn remove_extras(plan: &mut Plan, extras: &Observed, observed: &Observed) {
    let servers: Vec<StepId> = extras
        .servers
        .iter()
        .map(|s| {
            plan.push(
                Action::DeleteServer {
                    id: s.id.clone(),
                    name: s.name.clone(),
                    because: Some("a duplicate".into()),
                },
                &[],
            )
        })
        .collect();
    let mut before_network_parts: Vec<StepId> = extras
        .floating_ips
        .iter()
        .map(|f| {
            plan.push(
                Action::DeleteDuplicate(Owned::FloatingIp {
                    id: f.id.clone(),
                    address: f.floating_ip_address.clone(),
                }),
                &[],
            )
        })
        .collect();
    let ports: Vec<StepId> = extras
        .ports
        .iter()
        .map(|p| {
            plan.push(
                Action::DeletePort {
                    id: p.id.clone(),
                    name: p.name.clone(),
                },
                &servers,
            )
        })
        .collect();
    before_network_parts.extend(&ports);
    let interfaces_of = |router: &str| -> Vec<String> {
        observed
            .router_interfaces
            .iter()
            .filter(|p| p.device_id == router)
            .flat_map(|p| p.fixed_ips.iter().map(|ip| ip.subnet_id.clone()))
            .collect()
    };
    let routers: Vec<StepId> = extras
        .routers
        .iter()
        .map(|r| {
            plan.push(
                Action::DeleteDuplicate(Owned::Router {
                    id: r.id.clone(),
                    name: r.name.clone(),
                    subnets: interfaces_of(&r.id),
                }),
                &before_network_parts,
            )
        })
        .collect();
    before_network_parts.extend(&routers);
    let subnets: Vec<StepId> = extras
        .subnets
        .iter()
        .map(|s| {
            let routers = observed
                .router_interfaces
                .iter()
                .filter(|p| p.fixed_ips.iter().any(|ip| ip.subnet_id == s.id))
                .map(|p| p.device_id.clone())
                .filter(|r| !extras.routers.iter().any(|x| &x.id == r))
                .collect();
            plan.push(
                Action::DeleteDuplicate(Owned::Subnet {
                    id: s.id.clone(),
                    name: s.name.clone(),
                    routers,
                }),
                &before_network_parts,
            )
        })
        .collect();
    before_network_parts.extend(&subnets);
    for network in &extras.networks {
        plan.push(
            Action::DeleteDuplicate(Owned::Network {
                id: network.id.clone(),
                name: network.name.clone(),
            }),
            &before_network_parts,
        );
    }
    for group in &extras.security_groups {
        plan.push(
            Action::DeleteDuplicate(Owned::SecurityGroup {
                id: group.id.clone(),
                name: group.name.clone(),
            }),
            &ports,
        );
    }
    for group in &extras.server_groups {
        plan.push(
            Action::DeleteDuplicate(Owned::ServerGroup {
                id: group.id.clone(),
                name: group.name.clone(),
            }),
            &servers,
        );
    }
}

/// A port as a step's input: its ID and first address.
/// Whether the subnet hands out exactly the addresses of `pool`.
fn pool_is(pools: &[AllocationPool], (start, end): (Ipv4Addr, Ipv4Addr)) -> bool {
    matches!(pools, [only] if only.start == start.to_string() && only.end == end.to_string())
}

/// The first address of the cluster's port named `name`, if it has one.
fn port_address(observed: &Observed, name: &str) -> Option<String> {
    observed
        .ports
        .iter()
        .find(|p| p.name == name)
        .and_then(|p| port_made(p).address)
}

fn port_made(port: &Port) -> Made {
    Made {
        id: port.id.clone(),
        address: port.fixed_ips.first().map(|ip| ip.ip_address.clone()),
    }
}

/// Where the nodes go: the network and subnet, their range, and the steps after which a
/// floating IP on that subnet can reach the external network (router, gateway, interface).
struct Chain {
    network: Ref,
    subnet: Ref,
    subnet_cidr: Option<IpNet>,
    reachable_after: Vec<StepId>,
}

fn network_chain(
    spec: &ClusterSpec,
    observed: &Observed,
    facts: &CloudFacts,
    external_id: &str,
    plan: &mut Plan,
) -> Result<Chain, PlanError> {
    let names = Names::of(&spec.name);
    if let NetworkMode::Reuse { .. } = spec.network.mode {
        let (network, subnet) = facts.reused.as_ref().ok_or(PlanError::ReusedNetwork)?;
        return Ok(Chain {
            network: Ref::Known(Made::id(&network.id)),
            subnet: Ref::Known(Made::id(&subnet.id)),
            subnet_cidr: subnet.cidr.parse().ok(),
            reachable_after: Vec::new(),
        });
    }
    let cidr = spec.network.node_cidr.ok_or(PlanError::NodeCidr)?;
    let network = match observed.networks.iter().find(|n| n.name == names.network) {
        Some(n) => Ref::Known(Made::id(&n.id)),
        None => Ref::After(plan.push(
            Action::CreateNetwork {
                name: names.network.clone(),
            },
            &[],
        )),
    };
    let existing_subnet = observed.subnets.iter().find(|s| s.name == names.subnet);
    let subnet = match existing_subnet {
        Some(s) => match spec.network.node_address_pool() {
            // Ports wait for the pool, so a fixed address is never handed to another port.
            Some(pool) if !pool_is(&s.allocation_pools, pool) => Ref::After(plan.push(
                Action::SetAllocationPool {
                    subnet: Ref::Known(Made::id(&s.id)),
                    subnet_name: s.name.clone(),
                    pool,
                },
                &[],
            )),
            _ => Ref::Known(Made::id(&s.id)),
        },
        None => Ref::After(plan.push(
            Action::CreateSubnet(SubnetRequest {
                name: names.subnet.clone(),
                network: network.clone(),
                cidr,
                allocation_pool: spec.network.node_address_pool(),
                dns_nameservers: spec.network.dns_servers.clone(),
            }),
            &[],
        )),
    };
    let mut reachable_after = Vec::new();
    let router = match observed.routers.iter().find(|r| r.name == names.router) {
        Some(router) => {
            if router.gateway_network_id() != Some(external_id) {
                reachable_after.push(plan.push(
                    Action::SetRouterGateway {
                        router: Ref::Known(Made::id(&router.id)),
                        router_name: router.name.clone(),
                        external_network_id: external_id.to_string(),
                    },
                    &[],
                ));
            }
            Ref::Known(Made::id(&router.id))
        }
        None => {
            let id = plan.push(
                Action::CreateRouter {
                    name: names.router.clone(),
                    external_network: spec.network.external_network.clone(),
                    external_network_id: external_id.to_string(),
                },
                &[],
            );
            reachable_after.push(id);
            Ref::After(id)
        }
    };
    // The interface, checked every run: a run stopped after the router's create, or a hand-made
    // change, leaves a router without it.
    let attached = match (&router, existing_subnet) {
        (Ref::Known(r), Some(s)) => observed
            .router_interfaces
            .iter()
            .any(|p| p.device_id == r.id && p.fixed_ips.iter().any(|ip| ip.subnet_id == s.id)),
        _ => false,
    };
    if !attached {
        reachable_after.push(plan.push(
            Action::AddRouterInterface {
                router,
                router_name: names.router.clone(),
                subnet: subnet.clone(),
                subnet_name: names.subnet.clone(),
            },
            &[],
        ));
    }
    Ok(Chain {
        network,
        subnet,
        subnet_cidr: Some(IpNet::V4(
            existing_subnet
                .and_then(|s| s.cidr.parse().ok())
                .unwrap_or(cidr),
        )),
        reachable_after,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cloud::compute::Server;
    use crate::cloud::network::{FixedIp, FloatingIp, Router, SecurityGroup};
    use crate::plan::resources::{CA_METADATA, CONTROL_PLANE_RAN_TAG};
    use crate::plan::steps::Verb;
    use crate::spec::test_spec;

    fn facts() -> CloudFacts {
        CloudFacts {
            external_network: Some(Network {
                id: "ext".into(),
                name: "public".into(),
                tags: vec![],
                subnets: vec![],
                external: true,
                status: "ACTIVE".into(),
            }),
            flavors: vec![Flavor {
                id: "f1".into(),
                name: "m3.small".into(),
                vcpus: 2,
                ram: 6144,
                disk: 20,
            }],
            image_id: Some("img".into()),
            reused: None,
            load_balancer_providers: None,
            router_addresses: Vec::new(),
        }
    }

    fn shown(plan: &Plan) -> Vec<String> {
        plan.shown()
            .iter()
            .map(|s| format!("{} {} {}", s.action.sign(), s.kind, s.name))
            .collect()
    }

    const K8S: Scope = Scope {
        kubernetes: true,
        accept_empty_cluster: false,
        restoring: false,
        api: ApiReach::Unasked,
        node_wait: NODE_WAIT,
    };

    /// The test cloud's facts with a bigger flavor, `m3.medium`, besides.
    fn with_medium_flavor() -> CloudFacts {
        let mut facts = facts();
        facts.flavors.push(Flavor {
            id: "f2".into(),
            name: "m3.medium".into(),
            vcpus: 8,
            ram: 30720,
            disk: 60,
        });
        facts
    }

    pub(crate) fn with_workers(count: u32) -> ClusterSpec {
        test_spec(&format!(
            "[[worker_pools]]\nname = \"default\"\ncount = {count}\nflavor = \"m3.small\"\n"
        ))
    }

    /// Everything a converged cluster of `spec` holds, as the planner would make it.
    pub(crate) fn converged(spec: &ClusterSpec) -> Observed {
        let names = Names::of(&spec.name);
        let port = |name: &str, ip: &str| Port {
            id: format!("p-{name}"),
            name: name.into(),
            network_id: "n".into(),
            fixed_ips: vec![FixedIp {
                subnet_id: "s".into(),
                ip_address: ip.into(),
            }],
            tags: vec![],
            device_id: String::new(),
            device_owner: String::new(),
            status: "ACTIVE".into(),
            security_groups: vec![],
            allowed_address_pairs: vec![],
        };
        let nodes = spec.nodes();
        let ha = spec.control_plane.highly_available();
        let mut ports: Vec<Port> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| port(&n.name, &format!("10.42.0.{}", 10 + i + usize::from(ha))))
            .collect();
        if ha {
            for port in ports
                .iter_mut()
                .filter(|p| p.name.contains("-control-plane-"))
            {
                port.allowed_address_pairs = vec![crate::cloud::network::AddressPair {
                    ip_address: "10.42.0.10/32".into(),
                }];
            }
            ports.push(port(&names.api_port, "10.42.0.10"));
        }
        let api_port = match ha {
            true => format!("p-{}", names.api_port),
            false => format!("p-{}", nodes[0].name),
        };
        let wanted = wanted_rules(spec, "g-nodes", spec.network.node_cidr.map(IpNet::V4));
        let rules = |rules: &[crate::cloud::network::SecurityGroupRule]| {
            rules
                .iter()
                .enumerate()
                .map(|(i, r)| crate::cloud::network::SecurityGroupRule {
                    id: format!("r{i}"),
                    ..r.clone()
                })
                .collect()
        };
        let mut interface = port("", "10.42.0.1");
        interface.device_id = "r".into();
        Observed {
            networks: vec![Network {
                id: "n".into(),
                name: names.network.clone(),
                tags: vec![],
                subnets: vec![],
                external: false,
                status: "ACTIVE".into(),
            }],
            subnets: vec![Subnet {
                id: "s".into(),
                name: names.subnet.clone(),
                network_id: "n".into(),
                cidr: "10.42.0.0/24".into(),
                allocation_pools: vec![AllocationPool {
                    start: "10.42.0.17".into(),
                    end: "10.42.0.254".into(),
                }],
                tags: vec![],
            }],
            routers: vec![Router {
                id: "r".into(),
                name: names.router.clone(),
                status: "ACTIVE".into(),
                tags: vec![],
                external_gateway_info: Some(serde_json::json!({ "network_id": "ext" })),
            }],
            router_interfaces: vec![interface],
            security_groups: vec![
                SecurityGroup {
                    id: "g-nodes".into(),
                    name: names.nodes_group.clone(),
                    tags: vec![],
                    security_group_rules: rules(&wanted.nodes),
                },
                SecurityGroup {
                    id: "g-cp".into(),
                    name: names.control_plane_group.clone(),
                    tags: vec![],
                    security_group_rules: rules(&wanted.control_planes),
                },
            ],
            ports,
            floating_ips: vec![FloatingIp {
                id: "fip".into(),
                floating_ip_address: "203.0.113.5".into(),
                floating_network_id: "ext".into(),
                port_id: Some(api_port),
                tags: vec![],
                description: names.api_address.clone(),
                status: "ACTIVE".into(),
            }],
            servers: nodes
                .iter()
                .map(|n| Server {
                    id: format!("s-{}", n.name),
                    name: n.name.clone(),
                    status: "ACTIVE".into(),
                    tags: vec![resources::role_tag(match n.role {
                        Role::ControlPlane => "control-plane",
                        Role::Worker => "worker",
                    })],
                    metadata: BTreeMap::new(),
                    fault: None,
                    addresses: BTreeMap::new(),
                    flavor: serde_json::json!({ "original_name": "m3.small" }),
                    image: serde_json::json!({ "id": "flatcar" }),
                    launched_at: Some("2026-12-03T00:00:00.000000".into()),
                })
                .collect(),
            server_groups: vec![crate::cloud::compute::ServerGroup {
                id: "sg".into(),
                name: names.server_group.clone(),
                policy: None,
                members: vec![],
            }],
            ..Observed::default()
        }
    }

    #[test]
    fn a_new_cluster_is_planned_in_dependency_order() {
        let spec = with_workers(2);
        let plan = plan(&spec, &Observed::default(), &facts(), K8S).expect("plan");
        let lines = shown(&plan);
        for line in [
            "+ network demo-net",
            "+ subnet demo-subnet",
            "+ router demo-router",
            "+ router interface demo-router",
            "+ security group demo-nodes",
            "+ server group demo-control-plane",
            "+ port demo-control-plane-1",
            "+ floating IP demo-api",
            "> ignition 3 config(s)",
            "+ server demo-default-2",
            "> wait demo-default-2",
        ] {
            assert!(lines.contains(&line.to_string()), "{line} in {lines:#?}");
        }
        // No join token on a new cluster: the first control plane makes it.
        assert!(
            !lines.iter().any(|l| l.contains("join token")),
            "{lines:#?}"
        );
        // Every need points backwards: the list is already in an order that can run.
        for step in &plan.steps {
            assert!(step.needs.iter().all(|n| *n < step.id), "{step:?}");
        }
        // The floating IP waits for the router's interface; servers for the configs.
        let find = |kind: &str, name: &str| {
            plan.shown()
                .into_iter()
                .find(|s| s.kind == kind && s.name == name)
                .expect(name)
        };
        let interface = find("router interface", "demo-router").id;
        assert!(find("attachment", "demo-api").needs.contains(&interface));
        // The address is allocated at once: the configs do not wait for the router.
        assert!(find("floating IP", "demo-api").needs.is_empty());
        let render = find("ignition", "3 config(s)").id;
        assert!(find("server", "demo-default-1").needs.contains(&render));
        // The first control plane's port has the fixed API address, the render shows it
        // as known only after apply.
        let port = find("port", "demo-control-plane-1");
        assert_eq!(port.detail, "10.42.0.10");
        assert!(
            find("ignition", "3 config(s)")
                .detail
                .contains("(known after apply)")
        );
    }

    #[test]
    fn a_converged_cluster_plans_nothing() {
        let spec = with_workers(2);
        let plan = plan(&spec, &converged(&spec), &facts(), K8S).expect("plan");
        assert_eq!(shown(&plan), Vec::<String>::new());
    }

    #[test]
    fn drift_is_planned_as_repairs() {
        let spec = with_workers(2);
        let mut observed = converged(&spec);
        observed.floating_ips[0].port_id = None;
        observed.router_interfaces.clear();
        observed.routers[0].external_gateway_info = None;
        observed.security_groups[1].security_group_rules.remove(0);
        let plan = plan(&spec, &observed, &facts(), K8S).expect("plan");
        assert_eq!(
            shown(&plan),
            [
                "~ router demo-router",
                "+ router interface demo-router",
                "+ rule demo-control-plane",
                "~ floating IP 203.0.113.5"
            ]
        );
        assert_eq!(plan.count(Verb::Update), 2);
    }

    #[test]
    fn a_subnet_handing_out_every_address_is_narrowed_before_any_port_is_made() {
        let spec = with_workers(2);
        let mut observed = converged(&spec);
        observed.subnets[0].allocation_pools[0].start = "10.42.0.2".into();
        observed.ports.retain(|p| p.name != "demo-control-plane-1");
        let plan = plan(&spec, &observed, &facts(), K8S).expect("plan");
        let pool = plan
            .steps
            .iter()
            .find(|s| matches!(s.action, Action::SetAllocationPool { .. }))
            .expect("pool step");
        assert_eq!(pool.shown().detail, "hand out only 10.42.0.17-10.42.0.254");
        let port = plan
            .steps
            .iter()
            .find(|s| matches!(s.action, Action::CreatePort(_)))
            .expect("port step");
        assert!(port.needs.contains(&pool.id), "{:?}", port.needs);
    }

    #[test]
    fn a_pool_with_a_new_flavor_is_replaced_one_node_at_a_time_new_node_first() {
        let spec =
            test_spec("[[worker_pools]]\nname = \"default\"\ncount = 2\nflavor = \"m3.medium\"\n");
        let observed = converged(&with_workers(2));
        let plan = plan(&spec, &observed, &facts(), K8S).expect("plan");
        let step = |kind: &str, name: &str| {
            plan.steps
                .iter()
                .find(|s| {
                    let shown = s.shown();
                    shown.kind == kind && shown.name == name
                })
                .unwrap_or_else(|| panic!("{kind} {name} in {:#?}", plan.shown()))
        };
        let needs = |kind: &str, name: &str, other: (&str, &str)| {
            step(kind, name).needs.contains(&step(other.0, other.1).id)
        };
        // demo-default-3 replaces demo-default-1: ACTIVE, Ready, then the old one drained,
        // deleted, its port after it; only then demo-default-4 is made, for demo-default-2.
        let ready = plan
            .steps
            .iter()
            .find(|s| matches!(&s.action, Action::WaitReady { node } if node == "demo-default-3"))
            .expect("Ready wait");
        let drain = plan
            .steps
            .iter()
            .find(|s| matches!(&s.action, Action::Drain { node } if node == "demo-default-1"))
            .expect("drain");
        assert!(drain.needs.contains(&ready.id));
        assert!(needs(
            "server",
            "demo-default-1",
            ("drain", "demo-default-1")
        ));
        assert!(needs(
            "port",
            "demo-default-1",
            ("server", "demo-default-1")
        ));
        let second = plan
            .steps
            .iter()
            .find(|s| matches!(&s.action, Action::CreateServer(p) if p.name == "demo-default-4"))
            .expect("second new server");
        let first_gone = plan
            .steps
            .iter()
            .find(|s| {
                matches!(&s.action, Action::DeleteServer { name, .. } if name == "demo-default-1")
            })
            .expect("first deletion");
        assert!(second.needs.contains(&first_gone.id), "{:?}", second.needs);
        let names: Vec<&str> = plan.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            ["demo-control-plane-1", "demo-default-3", "demo-default-4"]
        );
        // Without the cluster's API (`--provision-only`): ACTIVE is all that is waited for.
        let provision_only = super::plan(
            &spec,
            &observed,
            &facts(),
            Scope {
                kubernetes: false,
                ..K8S
            },
        )
        .expect("plan");
        assert!(
            !provision_only
                .steps
                .iter()
                .any(|s| matches!(s.action, Action::WaitReady { .. } | Action::Drain { .. }))
        );
    }

    #[test]
    fn max_surge_replaces_that_many_nodes_at_once() {
        let spec = test_spec(
            "[[worker_pools]]\nname = \"default\"\ncount = 4\nflavor = \"m3.medium\"\nmax_surge = 2\n",
        );
        let plan = plan(&spec, &converged(&with_workers(4)), &facts(), K8S).expect("plan");
        let id = |wanted: &dyn Fn(&Action) -> bool| {
            plan.steps
                .iter()
                .find(|s| wanted(&s.action))
                .map(|s| (s.id, s.needs.clone()))
                .expect("step")
        };
        let create = |name: &str| {
            let name = name.to_string();
            id(&move |a| matches!(a, Action::CreateServer(p) if p.name == name))
        };
        let delete = |name: &str| {
            let name = name.to_string();
            id(&move |a| matches!(a, Action::DeleteServer { name: n, .. } if *n == name)).0
        };
        let deletions = [1, 2, 3, 4].map(|n| delete(&format!("demo-default-{n}")));
        // The first two new servers start at once; the third waits for the first old one to
        // be gone, the fourth for the second.
        for (new, waits_for) in [(5, None), (6, None), (7, Some(0)), (8, Some(1))] {
            let (_, needs) = create(&format!("demo-default-{new}"));
            for (i, deletion) in deletions.iter().enumerate() {
                assert_eq!(
                    needs.contains(deletion),
                    waits_for == Some(i),
                    "demo-default-{new} needs {needs:?}"
                );
            }
        }
    }

    #[test]
    fn an_outdated_node_is_drained_only_once_its_pools_up_to_date_nodes_are_ready() {
        let spec =
            test_spec("[[worker_pools]]\nname = \"default\"\ncount = 2\nflavor = \"m3.medium\"\n");
        // Half-way through a replacement: demo-default-1 is new, demo-default-2 is not.
        let mut observed = converged(&with_workers(2));
        observed.servers[1].flavor = serde_json::json!({ "original_name": "m3.medium" });
        let plan = plan(&spec, &observed, &facts(), K8S).expect("plan");
        let ready = |node: &str| {
            plan.steps
                .iter()
                .find(|s| matches!(&s.action, Action::WaitReady { node: n } if n == node))
                .map(|s| s.id)
                .unwrap_or_else(|| panic!("Ready wait of {node}"))
        };
        let drain = plan
            .steps
            .iter()
            .find(|s| matches!(&s.action, Action::Drain { node } if node == "demo-default-2"))
            .expect("drain");
        assert!(drain.needs.contains(&ready("demo-default-1")));
        assert!(drain.needs.contains(&ready("demo-default-3")));
    }

    #[test]
    fn scaling_up_makes_a_join_token_and_scaling_down_drains_first() {
        let spec = with_workers(2);
        let mut observed = converged(&spec);
        observed.servers.pop();
        let grown = plan(&spec, &observed, &facts(), K8S).expect("plan");
        assert_eq!(
            shown(&grown),
            [
                "> ignition 1 config(s)",
                "> join token bootstrap token",
                "+ server demo-default-2",
                "> wait demo-default-2"
            ]
        );
        let server = &grown.steps[2];
        assert_eq!(server.needs, [0, 1]);
        // The render knows the addresses already: the cluster exists.
        assert!(grown.steps[0].shown().detail.contains("203.0.113.5"));

        let smaller = with_workers(1);
        let shrunk = plan(&smaller, &converged(&spec), &facts(), K8S).expect("plan");
        assert_eq!(
            shown(&shrunk),
            [
                "> drain demo-default-2",
                "- server demo-default-2",
                "- port demo-default-2"
            ]
        );
        assert_eq!(shrunk.steps[1].needs, [0]);
        assert_eq!(shrunk.steps[2].needs, [1]);
        let provision_only = plan(
            &smaller,
            &converged(&spec),
            &facts(),
            Scope {
                kubernetes: false,
                ..K8S
            },
        )
        .expect("plan");
        assert_eq!(
            shown(&provision_only),
            ["- server demo-default-2", "- port demo-default-2"]
        );
    }

    /// The API's silence is planning input: a node leaving is deleted undrained in the open
    /// (the plan says why), and what cannot be done safely without the API is refused with
    /// nothing planned: a worker pool's replacement, a control plane's, a lost one's.
    #[test]
    fn a_silent_api_is_planned_for_not_skipped_at_run_time() {
        let silent = Scope {
            api: ApiReach::Silent("connection refused".into()),
            ..K8S
        };
        let spec = with_workers(2);
        let shrunk = plan(
            &with_workers(1),
            &converged(&spec),
            &facts(),
            silent.clone(),
        )
        .expect("plan");
        assert_eq!(
            shown(&shrunk),
            ["- server demo-default-2", "- port demo-default-2"]
        );
        let deletion = &shrunk.steps[0].shown().detail;
        assert!(
            deletion
                .contains("not drained: the Kubernetes API does not answer (connection refused)"),
            "{deletion}"
        );
        // Growing still works: the join token waits for the API (a first control plane may
        // still be booting).
        let mut observed = converged(&spec);
        observed.servers.pop();
        let grown = plan(&spec, &observed, &facts(), silent.clone()).expect("plan");
        assert!(shown(&grown).contains(&"> join token bootstrap token".to_string()));

        let bigger =
            test_spec("[[worker_pools]]\nname = \"default\"\ncount = 2\nflavor = \"m3.medium\"\n");
        let facts = with_medium_flavor();
        let refused =
            plan(&bigger, &converged(&spec), &facts, silent.clone()).expect_err("refused");
        assert!(
            matches!(&refused, PlanError::ApiSilent { needed, .. } if needed.starts_with("replacing demo-default-")),
            "{refused}"
        );
        assert!(
            refused.to_string().contains("connection refused"),
            "{refused}"
        );

        let three = test_spec(
            "count = 3\napi_endpoint = \"vip\"\n[[worker_pools]]\nname = \"default\"\ncount = 1\nflavor = \"m3.small\"\n",
        );
        let mut lost = converged(&three);
        for port in &mut lost.ports {
            port.tags.push(CONTROL_PLANE_RAN_TAG.into());
        }
        lost.servers.retain(|s| s.name != "demo-control-plane-2");
        assert!(matches!(
            plan(&three, &lost, &facts, silent.clone()),
            Err(PlanError::ApiSilent { .. })
        ));
        // The same loss with the API answering is planned.
        assert!(plan(&three, &lost, &facts, K8S).is_ok());
        // Three to five behind a VIP: the new ones' stale members are cleared first, which
        // needs the API too.
        let five = test_spec(
            "count = 5\napi_endpoint = \"vip\"\n[[worker_pools]]\nname = \"default\"\ncount = 1\nflavor = \"m3.small\"\n",
        );
        let mut grown = converged(&three);
        for port in &mut grown.ports {
            port.tags.push(CONTROL_PLANE_RAN_TAG.into());
        }
        let refused = plan(&five, &grown, &facts, silent.clone()).expect_err("refused");
        assert!(matches!(refused, PlanError::ApiSilent { .. }), "{refused}");
        // A silent API is the cluster's state, not bad input: exit code 1, not 2.
        assert!(!refused.is_invalid_input());
        // A pool shrinking while outdated: its outdated node goes undrained, and nothing waits
        // for the others to be Ready (no drain would use it).
        let mut outdated = converged(&spec);
        for server in outdated
            .servers
            .iter_mut()
            .filter(|s| s.name == "demo-default-2")
        {
            server.flavor = serde_json::json!({ "original_name": "m3.medium" });
        }
        let shrunk = plan(&with_workers(1), &outdated, &facts, silent).expect("plan");
        assert!(
            !shrunk
                .steps
                .iter()
                .any(|s| matches!(s.action, Action::WaitReady { .. })),
            "{:?}",
            shown(&shrunk)
        );
    }

    /// A control plane that ran (its port marked) is not built again unless asked: it would
    /// initialize a new, empty cluster. One that never ran is built as before.
    #[test]
    fn a_lost_control_plane_that_ran_is_refused_unless_asked() {
        let spec = with_workers(1);
        let mut observed = converged(&spec);
        observed
            .servers
            .retain(|s| s.name != "demo-control-plane-1");
        assert!(plan(&spec, &observed, &facts(), K8S).is_ok(), "never ran");
        let port = observed
            .ports
            .iter_mut()
            .find(|p| p.name == "demo-control-plane-1")
            .expect("port");
        port.tags.push(CONTROL_PLANE_RAN_TAG.into());
        let refused = plan(&spec, &observed, &facts(), K8S).expect_err("refused");
        assert!(
            matches!(&refused, PlanError::ControlPlaneLost { name, how: "gone" } if name == "demo-control-plane-1"),
            "{refused}"
        );
        let asked = Scope {
            accept_empty_cluster: true,
            restoring: false,
            ..K8S
        };
        let plan = plan(&spec, &observed, &facts(), asked).expect("plan");
        assert!(
            shown(&plan).contains(&"+ server demo-control-plane-1".to_string()),
            "{:?}",
            shown(&plan)
        );
    }

    /// A restore deleted every control plane that ran; the workers run on. The first is built
    /// again to initialize (restoring etcd), the others to join it; no etcd member is removed
    /// and no join token made through the API (nothing answers: `kubeadm init` makes it),
    /// with one control plane or three.
    #[test]
    fn a_restore_rebuilds_the_control_planes_with_the_first_initializing() {
        let restoring = Scope {
            restoring: true,
            ..K8S
        };
        for spec in [with_workers(1), highly_available(1)] {
            let mut observed = converged(&spec);
            observed
                .servers
                .retain(|s| !s.name.contains("control-plane"));
            for port in observed
                .ports
                .iter_mut()
                .filter(|p| p.name.contains("control-plane"))
            {
                port.tags.push(CONTROL_PLANE_RAN_TAG.into());
            }
            assert!(
                plan(&spec, &observed, &facts(), K8S).is_err(),
                "refused unasked"
            );
            let plan = plan(&spec, &observed, &facts(), restoring.clone()).expect("plan");
            let lines = shown(&plan);
            let count = spec.control_plane.count as usize;
            let built = lines
                .iter()
                .filter(|l| l.starts_with("+ server demo-control-plane-"))
                .count();
            assert_eq!(built, count, "{lines:#?}");
            assert!(!lines.iter().any(|l| l.contains("default-1")), "{lines:#?}");
            let initializer = plan.steps.iter().find_map(|s| match &s.action {
                Action::RenderIgnition { initializer, .. } => Some(initializer.clone()),
                _ => None,
            });
            assert_eq!(initializer, Some(Some("demo-control-plane-1".to_string())));
            assert!(
                !plan.steps.iter().any(|s| matches!(
                    s.action,
                    Action::CreateJoinToken { .. }
                        | Action::RemoveEtcdMember { .. }
                        | Action::DeleteNode { .. }
                )),
                "{lines:#?}"
            );
        }
    }

    fn highly_available(workers: u32) -> ClusterSpec {
        test_spec(&format!(
            "count = 3\n[[worker_pools]]\nname = \"default\"\ncount = {workers}\nflavor = \"m3.small\"\n"
        ))
    }

    /// With 3 control planes the API's address belongs to a port of its own, which carries the
    /// floating IP and which every control plane's port may hold; the control planes take the
    /// fixed addresses after it, and the first initializes the cluster.
    #[test]
    fn three_control_planes_share_an_endpoint_port_that_holds_the_api_address() {
        let spec = highly_available(1);
        let plan = plan(&spec, &Observed::default(), &facts(), K8S).expect("plan");
        let steps = plan.shown();
        let find = |kind: &str, name: &str| {
            steps
                .iter()
                .find(|s| s.kind == kind && s.name == name)
                .unwrap_or_else(|| panic!("{kind} {name} in {:#?}", shown(&plan)))
        };
        let endpoint = find("port", "demo-api");
        assert_eq!(endpoint.detail, "10.42.0.10");
        for (n, address) in [(1, "10.42.0.11"), (2, "10.42.0.12"), (3, "10.42.0.13")] {
            let port = find("port", &format!("demo-control-plane-{n}"));
            assert_eq!(port.detail, address);
            assert!(port.needs.contains(&endpoint.id), "{port:?}");
        }
        assert_eq!(find("port", "demo-default-1").detail, "");
        assert_eq!(
            find("attachment", "demo-api").detail,
            "floating IP to demo-api"
        );
        let requests: Vec<&PortRequest> = plan
            .steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::CreatePort(p) => Some(p),
                _ => None,
            })
            .collect();
        for request in &requests {
            let holds = request.allowed_address_of == Some(Ref::After(endpoint.id));
            assert_eq!(holds, request.name.contains("control-plane"), "{request:?}");
        }
        let render = plan.steps.iter().find_map(|s| match &s.action {
            Action::RenderIgnition {
                internal,
                initializer,
                ..
            } => Some((internal, initializer)),
            _ => None,
        });
        assert_eq!(
            render,
            Some((
                &Ref::After(endpoint.id),
                &Some("demo-control-plane-1".to_string())
            ))
        );
        // Converged, nothing; a control plane's port that lost its pair gets it back, and a
        // floating IP moved off the endpoint is put back.
        let mut observed = converged(&spec);
        assert_eq!(
            shown(&super::plan(&spec, &observed, &facts(), K8S).expect("plan")),
            Vec::<String>::new()
        );
        observed
            .ports
            .iter_mut()
            .find(|p| p.name == "demo-control-plane-2")
            .expect("port")
            .allowed_address_pairs
            .clear();
        observed.floating_ips[0].port_id = Some("p-demo-control-plane-1".into());
        let repairs = super::plan(&spec, &observed, &facts(), K8S).expect("plan");
        assert_eq!(
            shown(&repairs),
            ["~ port demo-control-plane-2", "~ floating IP 203.0.113.5"]
        );
        assert_eq!(
            repairs.shown()[0].detail,
            "may hold the API's address 10.42.0.10"
        );
    }

    /// Three control planes that ran, converged but for control plane 2's server, gone.
    fn with_lost_control_plane_2(spec: &ClusterSpec) -> Observed {
        let mut observed = converged(spec);
        observed.floating_ips[0]
            .tags
            .push(CONTROL_PLANE_RAN_TAG.into());
        observed
            .servers
            .retain(|s| s.name != "demo-control-plane-2");
        observed
    }

    /// While an upgrade is half done (a control plane at the new release, another not), a
    /// lost control plane is not rebuilt: it could join at neither release safely.
    #[test]
    fn a_control_plane_repair_is_refused_while_an_upgrade_is_half_done() {
        let spec = highly_available(1);
        let mut observed = with_lost_control_plane_2(&spec);
        for server in &mut observed.servers {
            let release = match server.name.as_str() {
                "demo-control-plane-1" => "v1.37.1",
                _ => "v1.36.2",
            };
            server.metadata.insert(
                crate::plan::resources::KUBERNETES_METADATA.into(),
                release.into(),
            );
        }
        let error = plan(&spec, &observed, &facts(), K8S).expect_err("refused");
        assert!(error.is_invalid_input());
        assert!(
            error.to_string().contains(
                "an upgrade to v1.37.1 is half done (control planes demo-control-plane-1 run it, demo-control-plane-3 do not) and control plane demo-control-plane-2 needs rebuilding"
            ),
            "{error}"
        );
        // Before the upgrade starts the repair goes ahead, at the control planes' release.
        for server in &mut observed.servers {
            server.metadata.insert(
                crate::plan::resources::KUBERNETES_METADATA.into(),
                "v1.36.2".into(),
            );
            server.metadata.insert(
                versions::SYSEXT_DIGEST_METADATA.into(),
                "digest-of-v1.36.2".into(),
            );
        }
        let repaired = plan(&spec, &observed, &facts(), K8S).expect("plan");
        let boot = repaired.steps.iter().find_map(|s| match &s.action {
            Action::RenderIgnition { boot, .. } => boot.clone(),
            _ => None,
        });
        assert_eq!(
            boot.map(|b| b.release.to_string()).as_deref(),
            Some("v1.36.2")
        );
        // The upgrade waits for the next `up`: workers moved past the rebuilt control plane's
        // API server would break the skew policy.
        assert!(
            repaired
                .steps
                .iter()
                .all(|s| !matches!(s.action, Action::UpgradeNode { .. })),
            "{:#?}",
            shown(&repaired)
        );
        let waits = repaired.upgrade.as_ref().and_then(|u| u.waits.clone());
        assert!(
            waits.is_some_and(|w| w.contains("demo-control-plane-2 is built in this run at v1.36.2")),
            "{:?}",
            repaired.upgrade
        );
    }

    /// A pool that upgrades by replacement: its node waits while the control plane moves (and
    /// the plan asks for a second round), then is replaced by a new one at the new release.
    #[test]
    fn a_pool_that_upgrades_by_replacement_is_replaced_once_the_control_planes_moved() {
        let spec = test_spec(
            "[[worker_pools]]\nname = \"default\"\ncount = 1\nflavor = \"m3.small\"\nupgrade = \"replace\"\n",
        );
        let at = |cp: &str, worker: &str| {
            let mut observed = converged(&spec);
            for server in &mut observed.servers {
                let release = match server.name.contains("control-plane") {
                    true => cp,
                    false => worker,
                };
                server.metadata.insert(
                    crate::plan::resources::KUBERNETES_METADATA.into(),
                    release.into(),
                );
                server.metadata.insert(
                    versions::SYSEXT_DIGEST_METADATA.into(),
                    format!("digest-of-{release}"),
                );
            }
            observed
        };
        let first = plan(&spec, &at("v1.36.2", "v1.36.2"), &facts(), K8S).expect("plan");
        let upgrade = first.upgrade.clone().expect("an upgrade");
        assert_eq!(upgrade.order.len(), 1);
        assert_eq!(upgrade.order[0].node, "demo-control-plane-1");
        assert_eq!(upgrade.replaced, ["demo-default-1"]);
        assert!(first.replaces_after_upgrade());
        assert!(
            !shown(&first).iter().any(|l| l.contains("demo-default-2")),
            "{:#?}",
            shown(&first)
        );
        let second = plan(&spec, &at("v1.37.1", "v1.36.2"), &facts(), K8S).expect("plan");
        let lines = shown(&second);
        for line in [
            "+ server demo-default-2",
            "> drain demo-default-1",
            "- server demo-default-1",
        ] {
            assert!(
                lines.iter().any(|l| l.starts_with(line)),
                "{line} in {lines:#?}"
            );
        }
        assert!(!second.replaces_after_upgrade());
        let created = second.steps.iter().find_map(|s| match &s.action {
            Action::CreateServer(server) => Some(server.metadata.clone()),
            _ => None,
        });
        assert_eq!(
            created
                .expect("a server")
                .get(crate::plan::resources::KUBERNETES_METADATA)
                .map(String::as_str),
            Some("v1.37.1")
        );
    }

    /// An upgrade that no longer applies (the file set back before it moved anything) leaves
    /// nothing behind: the node it cordoned is uncordoned, kured's lock released.
    #[test]
    fn what_a_stopped_upgrade_left_is_undone_once_it_no_longer_applies() {
        use crate::plan::kube_view::Registered;
        let spec = with_workers(1);
        let mut view = KubeView {
            reboot_lock_held: true,
            ..KubeView::default()
        };
        for (name, cordoned) in [("demo-control-plane-1", false), ("demo-default-1", true)] {
            view.nodes.insert(
                name.into(),
                Registered {
                    ready: true,
                    control_plane: name.contains("control-plane"),
                    kubelet: None,
                    cordoned_for_upgrade: cordoned,
                },
            );
        }
        let scope = Scope {
            api: ApiReach::Answers(view),
            ..K8S
        };
        let undone = plan(&spec, &converged(&spec), &facts(), scope).expect("plan");
        assert_eq!(
            shown(&undone),
            ["> uncordon demo-default-1", "> reboot lock kured"]
        );
        // Without the API asked, the control planes' upgrading mark alone plans the release,
        // which needs the API: `up` asks it and plans again.
        let mut marked = converged(&spec);
        for server in &mut marked.servers {
            if server.name.contains("control-plane") {
                server
                    .metadata
                    .insert(versions::UPGRADING_METADATA.into(), "v1.37.1".into());
            }
        }
        let unasked = plan(&spec, &marked, &facts(), K8S).expect("plan");
        assert_eq!(shown(&unasked), ["> reboot lock kured"]);
        assert!(unasked.needs_api());
        assert!(
            shown(&plan(&spec, &converged(&spec), &facts(), K8S).expect("plan")).is_empty(),
            "no mark, nothing to undo"
        );
        // The API answers, the mark is there and the lock already released (a run killed in
        // between): one release, which clears the mark.
        let answered = |view: KubeView| Scope {
            api: ApiReach::Answers(view),
            ..K8S
        };
        let released = plan(&spec, &marked, &facts(), answered(KubeView::default())).expect("plan");
        assert_eq!(shown(&released), ["> reboot lock kured"]);
        // A silent API: nothing planned, nothing refused.
        let silent = Scope {
            api: ApiReach::Silent("connection refused".into()),
            ..K8S
        };
        assert!(shown(&plan(&spec, &marked, &facts(), silent).expect("plan")).is_empty());
        // A cordoned node that leaves in this plan is not uncordoned.
        let one_worker_less = test_spec("");
        let mut leaving_view = KubeView::default();
        leaving_view.nodes.insert(
            "demo-default-1".into(),
            Registered {
                ready: true,
                control_plane: false,
                kubelet: None,
                cordoned_for_upgrade: true,
            },
        );
        let shrunk = plan(
            &one_worker_less,
            &converged(&spec),
            &facts(),
            answered(leaving_view),
        )
        .expect("plan");
        assert!(
            !shown(&shrunk).iter().any(|l| l.starts_with("> uncordon")),
            "{:#?}",
            shown(&shrunk)
        );
    }

    /// A lost control plane of three that ran, with two running: its etcd member is removed
    /// through a running one and its Node deleted before it is built again, to join (never to
    /// initialize). Without the API (`--provision-only`) that cannot happen: refused. With two
    /// of three lost, etcd has no quorum: refused, whatever the scope.
    #[test]
    fn a_lost_control_plane_of_three_is_removed_from_etcd_then_rebuilt_to_join() {
        let spec = highly_available(1);
        let mut observed = with_lost_control_plane_2(&spec);
        let plan = plan(&spec, &observed, &facts(), K8S).expect("plan");
        let lines = shown(&plan);
        let at = |line: &str| {
            lines
                .iter()
                .position(|l| l == line)
                .unwrap_or_else(|| panic!("{line} in {lines:#?}"))
        };
        let (removed, deleted, created) = (
            at("> etcd member demo-control-plane-2"),
            at("> node demo-control-plane-2"),
            at("+ server demo-control-plane-2"),
        );
        let steps = plan.shown();
        assert_eq!(steps[removed].detail, "remove through demo-control-plane-1");
        assert!(steps[deleted].needs.contains(&removed));
        assert!(
            steps[created].needs.contains(&deleted),
            "{:?}",
            steps[created]
        );
        assert!(
            lines.contains(&"> join token bootstrap token".to_string()),
            "{lines:#?}"
        );
        let address = plan.steps.iter().find_map(|s| match &s.action {
            Action::RemoveEtcdMember { address, .. } => Some(address.clone()),
            _ => None,
        });
        assert_eq!(address, Some(Some("10.42.0.12".to_string())));
        let initializer = plan.steps.iter().find_map(|s| match &s.action {
            Action::RenderIgnition { initializer, .. } => Some(initializer.clone()),
            _ => None,
        });
        assert_eq!(initializer, Some(None), "it joins");

        let provision_only = Scope {
            kubernetes: false,
            ..K8S
        };
        let refused = super::plan(&spec, &observed, &facts(), provision_only).expect_err("refused");
        assert!(
            matches!(&refused, PlanError::MemberLost { name, how: "gone" } if name == "demo-control-plane-2"),
            "{refused}"
        );

        observed
            .servers
            .retain(|s| s.name != "demo-control-plane-3");
        let refused = super::plan(&spec, &observed, &facts(), K8S).expect_err("refused");
        assert_eq!(
            refused,
            PlanError::QuorumLost {
                lost: "demo-control-plane-2, demo-control-plane-3".into(),
                are: "are",
                running: 1,
                count: 3,
                quorum: 2
            }
        );
    }

    /// What the API showed: `registered` Nodes (all Ready, control planes marked by kubeadm)
    /// and etcd's `members` (name and address; a name may be empty) as control plane 1 lists
    /// them.
    fn shown_by_api(registered: &[&str], members: &[(&str, &str)]) -> Scope {
        use crate::plan::kube_view::Registered;
        let nodes = registered
            .iter()
            .map(|name| {
                let control_plane = name.contains("control-plane");
                let node = Registered {
                    ready: true,
                    control_plane,
                    kubelet: None,
                    cordoned_for_upgrade: false,
                };
                (name.to_string(), node)
            })
            .collect();
        let members = members
            .iter()
            .enumerate()
            .map(|(i, (name, address))| crate::kube::etcd::EtcdMember {
                id: 0xa0 + i as u64,
                name: name.to_string(),
                peer_urls: vec![format!("https://{address}:2380")],
                is_learner: false,
            })
            .collect();
        Scope {
            api: ApiReach::Answers(KubeView {
                nodes,
                etcd: Membership::Listed(members),
                kubeadm: None,
                reboot_lock_held: false,
            }),
            ..K8S
        }
    }

    /// The plan for `spec` on `observed` with what [`shown_by_api`] shows.
    fn plan_shown_by_api(
        spec: &ClusterSpec,
        observed: &Observed,
        registered: &[&str],
        members: &[(&str, &str)],
    ) -> Plan {
        super::plan(spec, observed, &facts(), shown_by_api(registered, members)).expect("plan")
    }

    /// With the API read, a lost control plane's steps are those its state still needs: its
    /// member is not removed when etcd no longer lists it, its Node not deleted when none is
    /// registered; a member of no control plane is removed first; an etcd that cannot be read
    /// refuses the plan (the cluster's state: exit code 1).
    #[test]
    fn what_the_api_shows_decides_a_lost_control_planes_steps() {
        let spec = highly_available(1);
        let observed = with_lost_control_plane_2(&spec);
        let registered = [
            "demo-control-plane-1",
            "demo-control-plane-3",
            "demo-default-1",
        ];
        let members = [
            ("demo-control-plane-1", "10.42.0.11"),
            ("demo-control-plane-3", "10.42.0.13"),
            ("", "10.42.0.99"),
        ];
        let plan = plan_shown_by_api(&spec, &observed, &registered, &members);
        let lines = shown(&plan);
        for gone in [
            "> etcd member demo-control-plane-2",
            "> node demo-control-plane-2",
        ] {
            assert!(!lines.contains(&gone.to_string()), "{gone} in {lines:#?}");
        }
        let steps = plan.shown();
        let stray = steps
            .iter()
            .find(|s| s.kind == "etcd member")
            .unwrap_or_else(|| panic!("{lines:#?}"));
        assert_eq!(
            (stray.name.as_str(), stray.detail.as_str()),
            (
                "a2",
                "remove through demo-control-plane-1: of no control plane"
            )
        );
        let created = steps
            .iter()
            .find(|s| s.kind == "server" && s.name == "demo-control-plane-2")
            .expect("built again");
        assert!(created.needs.contains(&stray.id), "{created:?}");

        // Listed, and its Node still there: both planned, the stray first.
        let registered = [
            "demo-control-plane-1",
            "demo-control-plane-2",
            "demo-control-plane-3",
        ];
        let members = [
            ("demo-control-plane-1", "10.42.0.11"),
            ("demo-control-plane-2", "10.42.0.12"),
            ("demo-control-plane-3", "10.42.0.13"),
            ("demo-control-plane-9", "10.42.0.19"),
        ];
        let plan = plan_shown_by_api(&spec, &observed, &registered, &members);
        let lines = shown(&plan);
        let at = |line: &str| lines.iter().position(|l| l == line);
        assert!(
            at("> etcd member demo-control-plane-9 (a3)")
                < at("> etcd member demo-control-plane-2")
                && at("> etcd member demo-control-plane-2") < at("> node demo-control-plane-2")
                && at("> etcd member demo-control-plane-9 (a3)").is_some(),
            "{lines:#?}"
        );

        let unread = Scope {
            api: ApiReach::Answers(KubeView {
                etcd: Membership::Unread {
                    via: "demo-control-plane-1".into(),
                    why: "context deadline exceeded".into(),
                },
                ..KubeView::default()
            }),
            ..K8S
        };
        let refused = super::plan(&spec, &observed, &facts(), unread.clone()).expect_err("refused");
        assert!(
            matches!(&refused, PlanError::EtcdUnread { needed, via, .. }
                if needed.ends_with("demo-control-plane-2") && via == "demo-control-plane-1"),
            "{refused}"
        );
        assert!(!refused.is_invalid_input());
        // Five from three likewise: the new control planes' names are cleared from etcd first.
        let five = test_spec(
            "count = 5\napi_endpoint = \"vip\"\n[[worker_pools]]\nname = \"default\"\ncount = 1\nflavor = \"m3.small\"\n",
        );
        let mut ran = converged(&spec);
        ran.floating_ips[0].tags.push(CONTROL_PLANE_RAN_TAG.into());
        let refused = super::plan(&five, &ran, &facts(), unread).expect_err("refused");
        assert!(
            matches!(&refused, PlanError::EtcdUnread { needed, .. } if needed.starts_with("clearing")),
            "{refused}"
        );
    }

    /// A control plane kubeadm marked (so it joined etcd) whose member etcd no longer lists
    /// cannot start its etcd again: it is replaced in place (drained, no member to remove,
    /// built again to join). One registered but not marked yet may be joining: left alone.
    #[test]
    fn a_control_plane_etcd_no_longer_lists_is_replaced_in_place() {
        let spec = highly_available(1);
        let observed = converged(&spec);
        let registered = [
            "demo-control-plane-1",
            "demo-control-plane-2",
            "demo-control-plane-3",
            "demo-default-1",
        ];
        let members = [
            ("demo-control-plane-1", "10.42.0.11"),
            ("demo-control-plane-3", "10.42.0.13"),
        ];
        let plan = plan_shown_by_api(&spec, &observed, &registered, &members);
        let lines = shown(&plan);
        for line in [
            "> drain demo-control-plane-2",
            "- server demo-control-plane-2",
            "+ server demo-control-plane-2",
            "> wait demo-control-plane-2",
        ] {
            assert!(lines.contains(&line.to_string()), "{line} in {lines:#?}");
        }
        assert!(
            !lines.iter().any(|l| l.starts_with("> etcd member")),
            "{lines:#?}"
        );
        let deleted = plan
            .shown()
            .into_iter()
            .find(|s| s.kind == "server" && s.action == Verb::Delete)
            .expect("deleted");
        assert!(
            deleted.detail.contains("removed from etcd"),
            "{}",
            deleted.detail
        );
        // Asked through a control plane whose etcd runs, never through it.
        for step in &plan.steps {
            if let Action::WaitEtcdMember { via, .. } | Action::RemoveEtcdMember { via, .. } =
                &step.action
            {
                assert_ne!(via, "demo-control-plane-2", "{:?}", step.action);
            }
        }

        let mut scope = shown_by_api(&registered, &members);
        if let ApiReach::Answers(view) = &mut scope.api {
            view.nodes
                .get_mut("demo-control-plane-2")
                .expect("registered")
                .control_plane = false;
        }
        let plan = super::plan(&spec, &observed, &facts(), scope).expect("plan");
        assert_eq!(shown(&plan), Vec::<String>::new());

        // A member of no control plane besides: removed before the replacement's drain.
        let with_stray = [
            ("demo-control-plane-1", "10.42.0.11"),
            ("demo-control-plane-3", "10.42.0.13"),
            ("old-control-plane-9", "10.42.0.99"),
        ];
        let plan = plan_shown_by_api(&spec, &observed, &registered, &with_stray);
        let steps = plan.shown();
        let stray = steps
            .iter()
            .find(|s| s.kind == "etcd member")
            .expect("the stray removed");
        let drain = steps.iter().find(|s| s.kind == "drain").expect("drained");
        assert!(drain.needs.contains(&stray.id), "{drain:?}");
    }

    /// A node leaving that the cluster never registered has nothing to drain: deleted, saying
    /// so; one it registered is drained first.
    #[test]
    fn a_leaving_node_the_cluster_never_registered_is_not_drained() {
        let observed = converged(&with_workers(2));
        let spec = with_workers(1);
        let registered = ["demo-control-plane-1", "demo-default-1"];
        let plan = plan_shown_by_api(&spec, &observed, &registered, &[]);
        assert_eq!(
            shown(&plan),
            ["- server demo-default-2", "- port demo-default-2"]
        );
        assert_eq!(plan.shown()[0].detail, NEVER_REGISTERED);
        let registered = ["demo-control-plane-1", "demo-default-1", "demo-default-2"];
        let plan = plan_shown_by_api(&spec, &observed, &registered, &[]);
        assert_eq!(
            shown(&plan),
            [
                "> drain demo-default-2",
                "- server demo-default-2",
                "- port demo-default-2"
            ]
        );
    }

    /// Three control planes on another flavor than the file's are replaced in place, one at a
    /// time: drained, their member removed through another, built again, Ready and a voting
    /// member before the next is drained. Without the API it cannot happen: refused.
    #[test]
    fn control_planes_on_another_flavor_are_replaced_in_place_one_at_a_time() {
        let spec = highly_available(1);
        let mut observed = converged(&spec);
        for server in observed
            .servers
            .iter_mut()
            .filter(|s| s.name.contains("control-plane"))
        {
            server.flavor = serde_json::json!({ "original_name": "m3.tiny" });
        }
        assert!(
            crate::plan::resources::immutable_changes(
                &spec,
                &observed,
                Some("ext"),
                &facts().flavors
            )
            .is_empty(),
            "not refused with three"
        );
        let plan = plan(&spec, &observed, &facts(), K8S).expect("plan");
        let steps = plan.shown();
        let find = |kind: &str, name: &str, nth: usize| {
            steps
                .iter()
                .filter(|s| s.kind == kind && s.name == name)
                .nth(nth)
                .unwrap_or_else(|| panic!("{kind} {name} in {:#?}", shown(&plan)))
        };
        let mut previous: Option<usize> = None;
        for (n, via) in [(1, 2), (2, 1), (3, 1)] {
            let cp = format!("demo-control-plane-{n}");
            let drain = find("drain", &cp, 0);
            if let Some(previous) = previous {
                assert!(drain.needs.contains(&previous), "{cp} after the one before");
            }
            let member = find("etcd member", &cp, 0);
            assert_eq!(
                member.detail,
                format!("remove through demo-control-plane-{via}")
            );
            assert!(member.needs.contains(&drain.id));
            let delete = find("server", &cp, 0);
            assert_eq!(delete.action, Verb::Delete);
            assert!(delete.needs.contains(&member.id));
            assert!(
                delete.detail.contains("replaced in place"),
                "{}",
                delete.detail
            );
            let create = find("server", &cp, 1);
            assert_eq!(
                (create.action, create.detail.as_str()),
                (Verb::Create, "m3.small")
            );
            assert!(create.needs.contains(&delete.id));
            let voting = steps
                .iter()
                .find(|s| s.name == cp && s.detail == "until a voting etcd member")
                .expect("waits for the member");
            previous = Some(voting.id);
        }
        // Three nodes join late: the join token outlives them (an hour, and 20 minutes each).
        let token = steps
            .iter()
            .find(|s| s.kind == "join token")
            .expect("token");
        assert!(token.detail.contains("valid 2 h,"), "{}", token.detail);
        // `up --timeout 45m` waits up to 45 minutes for each: the token lasts that much more.
        let patient = Scope {
            node_wait: std::time::Duration::from_secs(45 * 60),
            ..K8S
        };
        let plan45 = super::plan(&spec, &observed, &facts(), patient).expect("plan");
        let token = plan45
            .shown()
            .into_iter()
            .find(|s| s.kind == "join token")
            .expect("token");
        assert!(
            token.detail.contains("valid 3 h 15 min,"),
            "{}",
            token.detail
        );
        let provision_only = Scope {
            kubernetes: false,
            ..K8S
        };
        assert!(matches!(
            super::plan(&spec, &observed, &facts(), provision_only),
            Err(PlanError::ControlPlaneChange { .. })
        ));

        // A run stopped after the first was replaced: before the next is drained, the first
        // is waited for until Ready and a voting member (it may still be joining).
        let resumed = {
            let mut observed = observed.clone();
            let first = observed
                .servers
                .iter_mut()
                .find(|s| s.name == "demo-control-plane-1")
                .expect("first");
            first.flavor = serde_json::json!({ "original_name": "m3.small" });
            super::plan(&spec, &observed, &facts(), K8S).expect("plan")
        };
        let steps = resumed.shown();
        let voting = steps
            .iter()
            .find(|s| s.name == "demo-control-plane-1" && s.detail == "until a voting etcd member")
            .expect("the first waited for");
        let drain = steps
            .iter()
            .find(|s| s.kind == "drain" && s.name == "demo-control-plane-2")
            .expect("the second drained");
        assert!(drain.needs.contains(&voting.id), "{:?}", drain.needs);
        assert!(
            !steps
                .iter()
                .any(|s| s.kind == "drain" && s.name == "demo-control-plane-1")
        );
    }

    /// A load balancer's shape as flatstack makes it for the test cluster (6443, 80 and 443,
    /// open to anyone, hour-long timeouts, monitored), with `members` in every pool.
    fn shape_of(members: &[&str]) -> crate::cloud::load_balancer::Shape {
        use crate::cloud::load_balancer::{ListenerShape, PoolShape, Shape};
        Shape {
            unused_pools: Vec::new(),
            listeners: [6443, 80, 443]
                .into_iter()
                .map(|port| ListenerShape {
                    id: format!("l-{port}"),
                    port,
                    allowed_cidrs: Vec::new(),
                    timeout_client_data: Some(super::super::endpoint::DATA_TIMEOUT_MS),
                    timeout_member_data: Some(super::super::endpoint::DATA_TIMEOUT_MS),
                    pool: Some(PoolShape {
                        id: format!("pool-{port}"),
                        monitored: true,
                        members: members.iter().map(|a| (a.to_string(), port)).collect(),
                    }),
                })
                .collect(),
        }
    }

    /// Three control planes behind an Octavia load balancer: made on the endpoint's port with
    /// every control plane as a member (its port), before any control plane is created; no
    /// allowed pairs. Converged, nothing; a load balancer in ERROR is made again, one a
    /// stopped run left PENDING is waited for; a VIP cluster cannot become one.
    #[test]
    fn three_control_planes_behind_a_load_balancer() {
        let spec = test_spec(
            "count = 3\napi_endpoint = \"load-balancer\"\n[[worker_pools]]\nname = \"default\"\ncount = 1\nflavor = \"m3.small\"\n",
        );
        let facts = CloudFacts {
            load_balancer_providers: Some(vec!["amphora".into()]),
            ..facts()
        };
        let plan = plan(&spec, &Observed::default(), &facts, K8S).expect("plan");
        let steps = plan.shown();
        let balancer = steps
            .iter()
            .find(|s| s.kind == "load balancer")
            .unwrap_or_else(|| panic!("{:#?}", shown(&plan)));
        assert_eq!(balancer.name, "demo-api");
        assert_eq!(
            balancer.detail,
            "amphora, TCP 6443, 80, 443 to 3 control planes"
        );
        let mut previous: Option<usize> = None;
        for n in 1..=3 {
            let name = format!("demo-control-plane-{n}");
            let port = steps
                .iter()
                .find(|s| s.kind == "port" && s.name == name)
                .expect("port");
            assert!(balancer.needs.contains(&port.id), "a member: {name}");
            let server = steps
                .iter()
                .find(|s| s.kind == "server" && s.name == name)
                .expect("server");
            assert!(
                server.needs.contains(&balancer.id),
                "{name} boots after the load balancer"
            );
            if let Some(previous) = previous {
                assert!(
                    server.needs.contains(&previous),
                    "{name} after the one before is ACTIVE"
                );
            }
            previous = steps
                .iter()
                .find(|s| s.kind == "wait" && s.name == name)
                .map(|s| s.id);
        }
        let worker = steps
            .iter()
            .find(|s| s.kind == "server" && s.name == "demo-default-1")
            .expect("worker");
        assert!(!worker.needs.contains(&balancer.id));
        assert!(plan.steps.iter().all(|s| match &s.action {
            Action::CreatePort(p) => p.allowed_address_of.is_none(),
            _ => true,
        }));
        // Made once the router is on the subnet: its listeners admit the router's address.
        let interface = steps
            .iter()
            .find(|s| s.kind == "router interface")
            .expect("router interface");
        assert!(
            balancer.needs.contains(&interface.id),
            "{:?}",
            balancer.needs
        );
        // What the quota preflight asks of a new cluster is what the plan makes: one load
        // balancer, three listeners, pools and monitors (6443, 80, 443), nine members, and
        // the endpoint's port besides the servers'.
        let asked = crate::plan::Needs::of(&spec, &facts.flavors).0;
        let made = crate::plan::Needs::growth(&plan, &Observed::default(), &facts.flavors);
        assert_eq!(
            (
                asked.load_balancers,
                asked.listeners,
                asked.pools,
                asked.health_monitors,
                asked.members
            ),
            (1, 3, 3, 3, 9)
        );
        assert_eq!(
            (
                made.load_balancers,
                made.listeners,
                made.pools,
                made.health_monitors,
                made.members
            ),
            (1, 3, 3, 3, 9)
        );
        assert_eq!(asked.ports, made.ports, "{asked:?} {made:?}");

        let mut observed = converged(&spec);
        for port in &mut observed.ports {
            port.allowed_address_pairs.clear();
        }
        let balancer = |status: &str| crate::cloud::load_balancer::LoadBalancer {
            id: format!("lb-{status}"),
            name: "demo-api".into(),
            provisioning_status: status.into(),
            vip_address: Some("10.42.0.10".into()),
            vip_port_id: Some("p-demo-api".into()),
            provider: Some("amphora".into()),
            shape: None,
        };
        observed.api_load_balancers = vec![balancer("ACTIVE")];
        assert_eq!(
            shown(&super::plan(&spec, &observed, &facts, K8S).expect("plan")),
            Vec::<String>::new()
        );
        observed.api_load_balancers = vec![balancer("ERROR")];
        assert_eq!(
            shown(&super::plan(&spec, &observed, &facts, K8S).expect("plan")),
            ["- load balancer demo-api", "+ load balancer demo-api"]
        );
        observed.api_load_balancers = vec![balancer("PENDING_UPDATE")];
        assert_eq!(
            shown(&super::plan(&spec, &observed, &facts, K8S).expect("plan")),
            ["> wait demo-api"]
        );
        // Two writers each made one: the one on another port goes.
        let mut other = balancer("ACTIVE");
        other.id = "lb-other".into();
        other.vip_port_id = Some("p-elsewhere".into());
        observed.api_load_balancers = vec![other, balancer("ACTIVE")];
        let plan = super::plan(&spec, &observed, &facts, K8S).expect("plan");
        assert!(
            matches!(&plan.steps[..], [step] if matches!(&step.action, Action::DeleteLoadBalancer { id, .. } if id == "lb-other"))
        );

        // Five behind the load balancer made for three: once the two new ports exist, its
        // pool's members are set to all five, before the new control planes are built.
        let mut running = balancer("ACTIVE");
        running.shape = Some(shape_of(&["10.42.0.11", "10.42.0.12", "10.42.0.13"]));
        observed.api_load_balancers = vec![running.clone()];
        assert_eq!(
            shown(&super::plan(&spec, &observed, &facts, K8S).expect("plan")),
            Vec::<String>::new(),
            "in shape"
        );
        let five = test_spec(
            "count = 5\napi_endpoint = \"load-balancer\"\n[[worker_pools]]\nname = \"default\"\ncount = 1\nflavor = \"m3.small\"\n",
        );
        let grown = super::plan(&five, &observed, &facts, K8S).expect("plan");
        let steps = grown.shown();
        let repair = steps
            .iter()
            .find(|s| s.kind == "load balancer")
            .unwrap_or_else(|| panic!("{:#?}", shown(&grown)));
        assert_eq!(
            (repair.action, repair.detail.as_str()),
            (Verb::Update, "members 6443; members 80; members 443")
        );
        for n in [4, 5] {
            let name = format!("demo-control-plane-{n}");
            let port = steps
                .iter()
                .find(|s| s.kind == "port" && s.name == name)
                .expect("port");
            let server = steps
                .iter()
                .find(|s| s.kind == "server" && s.name == name)
                .expect("server");
            assert!(repair.needs.contains(&port.id), "{repair:?}");
            assert!(server.needs.contains(&repair.id), "{server:?}");
        }

        let vip = highly_available(1);
        let refused = super::plan(&spec, &converged(&vip), &facts, K8S).expect_err("refused");
        assert_eq!(
            refused,
            PlanError::EndpointChange {
                wanted: "load-balancer",
                runs: "vip"
            }
        );
    }

    /// Servers record the release (and image digest) they were made with. Another patch or
    /// the next minor in the file plans an upgrade, last, inside kured's lock, control planes
    /// first; a skipped minor or a step down is refused; `--provision-only` only reports it,
    /// and new nodes boot what the control planes run until they all run the file's.
    #[test]
    fn another_release_than_the_servers_record_is_an_upgrade_in_kubeadms_order() {
        let spec = with_workers(1);
        let converged_at = |version: &str| {
            let mut observed = converged(&spec);
            for server in &mut observed.servers {
                server.metadata.insert(
                    crate::plan::resources::KUBERNETES_METADATA.into(),
                    version.into(),
                );
                server.metadata.insert(
                    versions::SYSEXT_DIGEST_METADATA.into(),
                    format!("digest-of-{version}"),
                );
            }
            observed
        };
        let made = plan(&spec, &Observed::default(), &facts(), K8S).expect("plan");
        let recorded = made.steps.iter().find_map(|s| match &s.action {
            Action::CreateServer(server) => server
                .metadata
                .get(crate::plan::resources::KUBERNETES_METADATA)
                .cloned(),
            _ => None,
        });
        assert_eq!(recorded.as_deref(), Some("v1.37.1"));
        assert!(made.upgrade.is_none());
        assert!(shown(&plan(&spec, &converged(&spec), &facts(), K8S).expect("plan")).is_empty());
        let upgrade_steps = |plan: &Plan| -> Vec<String> {
            plan.steps
                .iter()
                .filter(|s| s.action.group() == "upgrade")
                .map(|s| {
                    let (_, kind, name, detail) = s.action.describe();
                    format!("{kind} {name}: {detail} after {:?}", s.needs)
                })
                .collect()
        };
        let minor = plan(&spec, &converged_at("v1.36.2"), &facts(), K8S).expect("minor");
        assert_eq!(
            upgrade_steps(&minor),
            [
                "reboot lock kured: hold it while nodes are upgraded (when kured runs) after []",
                "upgrade demo-control-plane-1: v1.36.2 to v1.37.1: kubeadm upgrade apply v1.37.1, drain, activate the image, Ready, uncordon after [0]",
                "upgrade demo-default-1: v1.36.2 to v1.37.1: kubeadm upgrade node, drain, activate the image, Ready, uncordon after [1]",
                "reboot lock kured: release it after [2]",
            ]
        );
        assert!(minor.needs_api());
        let patch = plan(&spec, &converged_at("v1.37.0"), &facts(), K8S).expect("patch");
        assert_eq!(upgrade_steps(&patch).len(), 4);
        // Refused: a skipped minor, a step down (a patch too).
        let skipped = plan(&spec, &converged_at("v1.35.6"), &facts(), K8S).expect_err("skip");
        assert!(skipped.is_invalid_input());
        assert!(
            skipped.to_string().contains("one minor at a time"),
            "{skipped}"
        );
        let down = plan(&spec, &converged_at("v1.37.3"), &facts(), K8S).expect_err("down");
        assert!(
            down.to_string().contains("never moves a cluster down"),
            "{down}"
        );
        // `--provision-only`: reported, not planned.
        let provision_only = Scope {
            kubernetes: false,
            ..K8S
        };
        let reported =
            plan(&spec, &converged_at("v1.36.2"), &facts(), provision_only).expect("plan");
        assert!(upgrade_steps(&reported).is_empty());
        assert_eq!(reported.upgrade.as_ref().map(|u| u.order.len()), Some(2));
        // Without the API there is no upgrade.
        let silent = Scope {
            api: ApiReach::Silent("connection refused".into()),
            ..K8S
        };
        let error = plan(&spec, &converged_at("v1.36.2"), &facts(), silent).expect_err("silent");
        assert!(matches!(error, PlanError::ApiSilent { .. }), "{error}");
        // A new worker during the upgrade boots what the control planes run.
        let mut one_gone = converged_at("v1.36.2");
        one_gone.servers.retain(|s| s.name != "demo-default-1");
        let grown = plan(&spec, &one_gone, &facts(), K8S).expect("plan");
        let boot = grown.steps.iter().find_map(|s| match &s.action {
            Action::RenderIgnition { boot, .. } => boot.clone(),
            _ => None,
        });
        let boot = boot.expect("an older release to boot");
        assert_eq!(boot.release.to_string(), "v1.36.2");
        assert_eq!(boot.sha256, "digest-of-v1.36.2");
        assert!(
            boot.url.ends_with("/kubernetes-v1.36.2-x86-64.raw"),
            "{}",
            boot.url
        );
        let created = grown.steps.iter().find_map(|s| match &s.action {
            Action::CreateServer(server) => Some(server.metadata.clone()),
            _ => None,
        });
        let created = created.expect("a server");
        assert_eq!(
            created
                .get(crate::plan::resources::KUBERNETES_METADATA)
                .map(String::as_str),
            Some("v1.36.2")
        );
        assert_eq!(
            created
                .get(versions::SYSEXT_DIGEST_METADATA)
                .map(String::as_str),
            Some("digest-of-v1.36.2")
        );
        // The new worker is not upgraded in the run that makes it.
        assert_eq!(upgrade_steps(&grown).len(), 3);
    }

    /// One control plane holds the API's address itself; three cannot take it over under a
    /// running cluster, and three cannot become one: both refused, nothing planned.
    #[test]
    fn changing_between_one_and_several_control_planes_is_refused() {
        let one = with_workers(1);
        let three = highly_available(1);
        let refused = plan(&three, &converged(&one), &facts(), K8S).expect_err("refused");
        assert_eq!(refused, PlanError::ControlPlaneGrowth { wanted: 3 });
        let refused = plan(&one, &converged(&three), &facts(), K8S).expect_err("refused");
        assert_eq!(
            refused,
            PlanError::ControlPlaneShrink {
                wanted: 1,
                running: 3,
                names: "demo-control-plane-1, demo-control-plane-2, demo-control-plane-3".into(),
            }
        );
        let five = test_spec("count = 5\n");
        assert!(plan(&five, &converged(&three), &facts(), K8S).is_ok());
        assert!(matches!(
            plan(&three, &converged(&five), &facts(), K8S),
            Err(PlanError::ControlPlaneShrink { running: 5, .. })
        ));
    }

    /// A worker whose metadata records another CA than the control plane's was made with
    /// another state directory: it is built again on its port, never drained (it never
    /// joined). Servers that record nothing (made before flatstack recorded it) are left.
    #[test]
    fn a_worker_trusting_another_ca_is_built_again() {
        let spec = with_workers(2);
        let mut observed = converged(&spec);
        for server in &mut observed.servers {
            let (role, ca) = match server.name.as_str() {
                "demo-control-plane-1" => ("control-plane", "sha256:aa"),
                "demo-default-1" => ("worker", "sha256:bb"),
                _ => ("worker", ""),
            };
            server.tags = vec![resources::role_tag(role)];
            if !ca.is_empty() {
                server.metadata.insert(CA_METADATA.into(), ca.into());
            }
        }
        let plan = plan(&spec, &observed, &facts(), K8S).expect("plan");
        assert_eq!(
            shown(&plan),
            [
                "- server demo-default-1",
                "> ignition 1 config(s)",
                "> join token bootstrap token",
                "+ server demo-default-1",
                "> wait demo-default-1",
            ],
            "{:#?}",
            plan.shown()
        );
        assert_eq!(
            plan.steps[0].shown().detail,
            "it was made with another state directory: its node trusts CA sha256:bb, not the cluster's sha256:aa, and can never join; built again"
        );
        // The control plane's CA is the cluster's, whatever the workers say.
        observed.servers[0]
            .metadata
            .insert(CA_METADATA.into(), "sha256:bb".into());
        let plan = super::plan(&spec, &observed, &facts(), K8S).expect("plan");
        assert_eq!(plan.steps.len(), 0, "{:#?}", plan.shown());
    }

    #[test]
    fn a_server_whose_build_failed_is_deleted_and_built_again_on_its_port() {
        let spec = with_workers(2);
        let mut observed = converged(&spec);
        let broken = observed
            .servers
            .iter_mut()
            .find(|s| s.name == "demo-default-2")
            .expect("worker");
        broken.status = "ERROR".into();
        broken.launched_at = None;
        broken.fault = Some(crate::cloud::compute::Fault {
            message: "Exceeded maximum number of retries. Exhausted all hosts available.".into(),
            code: Some(500),
        });
        let plan = plan(&spec, &observed, &facts(), K8S).expect("plan");
        assert_eq!(
            shown(&plan),
            [
                "- server demo-default-2",
                "> ignition 1 config(s)",
                "> join token bootstrap token",
                "+ server demo-default-2",
                "> wait demo-default-2",
            ],
            "{:#?}",
            plan.shown()
        );
        assert_eq!(
            plan.steps[0].shown().detail,
            "its build failed (Exceeded maximum number of retries.): built again"
        );
        let create = plan
            .steps
            .iter()
            .find(|s| matches!(s.action, Action::CreateServer(_)))
            .expect("create");
        assert!(create.needs.contains(&0), "after the deletion");
        let Action::CreateServer(server) = &create.action else {
            unreachable!()
        };
        assert!(
            matches!(&server.port, Ref::Known(port) if port.id == "p-demo-default-2"),
            "on the port it had: {:?}",
            server.port
        );
        // Never drained: it never ran. A server in ERROR that did run is not rebuilt.
        assert!(
            !plan
                .steps
                .iter()
                .any(|s| matches!(s.action, Action::Drain { .. }))
        );
        let mut ran = observed.clone();
        let crashed = ran.servers.iter_mut().find(|s| s.status == "ERROR");
        crashed.expect("broken").launched_at = Some("2026-12-01T10:00:00.000000".into());
        let waited = super::plan(&spec, &ran, &facts(), K8S).expect("plan");
        assert_eq!(shown(&waited), ["> wait demo-default-2"]);
    }

    #[test]
    fn growth_counts_what_a_plan_adds_at_its_peak() {
        use crate::plan::Needs;
        let facts = with_medium_flavor();
        let observed = converged(&with_workers(2));
        let growth = |spec: &ClusterSpec, observed: &Observed| {
            let plan = plan(spec, observed, &facts, K8S).expect("plan");
            Needs::growth(&plan, observed, &facts.flavors)
        };
        assert!(growth(&with_workers(2), &observed).is_zero(), "converged");
        // Two more workers: two servers and their ports at once.
        let grown = growth(&with_workers(4), &observed);
        assert_eq!(
            (grown.instances, grown.cores, grown.ram_mib, grown.ports),
            (2, 4, 2 * 6144, 2)
        );
        // Two workers to a bigger flavor, one at a time: one extra server at the peak, the
        // second only grows by the difference once the first old one is gone.
        let bigger =
            test_spec("[[worker_pools]]\nname = \"default\"\ncount = 2\nflavor = \"m3.medium\"\n");
        let replaced = growth(&bigger, &observed);
        assert_eq!(
            (replaced.instances, replaced.cores, replaced.ram_mib),
            (1, 8 + (8 - 2), 30720 + (30720 - 6144))
        );
        assert_eq!(replaced.ports, 2, "new ports are made up front");
        // A failed build rebuilt takes back its own instance.
        let mut failed = observed.clone();
        let broken = failed
            .servers
            .iter_mut()
            .find(|s| s.name == "demo-default-2");
        let broken = broken.expect("worker");
        broken.status = "ERROR".into();
        broken.launched_at = None;
        let rebuilt = growth(&with_workers(2), &failed);
        assert_eq!((rebuilt.instances, rebuilt.cores, rebuilt.ports), (0, 0, 0));
    }

    #[test]
    fn a_deleted_port_of_a_running_server_is_made_again_and_attached() {
        let spec = with_workers(2);
        let mut observed = converged(&spec);
        observed.ports.retain(|p| p.name != "demo-default-1");
        let plan = plan(&spec, &observed, &facts(), K8S).expect("plan");
        assert_eq!(
            shown(&plan),
            ["+ port demo-default-1", "~ server demo-default-1"]
        );
        assert_eq!(plan.steps[1].needs, [0]);
    }

    #[test]
    fn a_second_writers_duplicates_are_removed_keeping_the_side_the_api_address_uses() {
        let spec = with_workers(1);
        let mut observed = converged(&spec);
        // A second `up` made its own network chain, groups, ports and servers.
        let mut twin = converged(&spec);
        let rename = |id: &mut String| *id = format!("{id}-twin");
        twin.networks.iter_mut().for_each(|n| rename(&mut n.id));
        twin.subnets.iter_mut().for_each(|s| {
            rename(&mut s.id);
            s.network_id = "n-twin".into();
        });
        twin.routers.iter_mut().for_each(|r| rename(&mut r.id));
        twin.security_groups
            .iter_mut()
            .for_each(|g| rename(&mut g.id));
        twin.ports.iter_mut().for_each(|p| {
            rename(&mut p.id);
            p.network_id = "n-twin".into();
        });
        twin.servers.iter_mut().for_each(|s| rename(&mut s.id));
        twin.floating_ips.iter_mut().for_each(|f| {
            rename(&mut f.id);
            f.port_id = None;
        });
        observed.networks.extend(twin.networks);
        observed.subnets.extend(twin.subnets);
        observed.routers.extend(twin.routers);
        observed.security_groups.extend(twin.security_groups);
        observed.ports.extend(twin.ports);
        observed.servers.extend(twin.servers);
        observed.floating_ips.extend(twin.floating_ips);
        for port in observed.ports.iter_mut() {
            port.device_owner = "compute:nova".into();
            port.device_id = format!("s-{}", port.name);
            if port.id.ends_with("-twin") {
                port.device_id.push_str("-twin");
            }
        }
        let plan = plan(&spec, &observed, &facts(), K8S).expect("plan");
        let mut lines = shown(&plan);
        lines.sort();
        assert_eq!(
            lines,
            [
                "- floating IP 203.0.113.5",
                "- network demo-net",
                "- port demo-control-plane-1",
                "- port demo-default-1",
                "- router demo-router",
                "- security group demo-control-plane",
                "- security group demo-nodes",
                "- server demo-control-plane-1",
                "- server demo-default-1",
                "- subnet demo-subnet",
            ]
        );
        // Only the twin's resources go, and the network after everything on it.
        let network = plan
            .steps
            .iter()
            .find(|s| matches!(&s.action, Action::DeleteDuplicate(Owned::Network { id, .. }) if id == "n-twin"))
            .expect("the twin network goes");
        assert!(network.needs.len() >= 5, "{network:?}");
        for step in &plan.steps {
            let text = format!("{:?}", step.action);
            assert!(text.contains("-twin"), "{text}");
        }
    }

    #[test]
    fn only_the_control_planes_flavor_or_boot_disk_is_a_change_that_cannot_be_made_in_place() {
        let spec = with_workers(1);
        let mut observed = converged(&spec);
        let changes = |observed: &Observed| {
            crate::plan::resources::immutable_changes(
                &spec,
                observed,
                Some("ext"),
                &facts().flavors,
            )
        };
        assert!(changes(&observed).is_empty());
        // A worker on another flavor is replaced (see the roster), not refused.
        observed.servers[1].flavor = serde_json::json!({ "original_name": "m3.tiny" });
        assert!(changes(&observed).is_empty());
        observed.servers[0].flavor = serde_json::json!({ "original_name": "m3.tiny" });
        let refused = changes(&observed);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(
            refused[0].starts_with("demo-control-plane-1 runs flavor m3.tiny, the file asks for m3.small; the only control plane holds the cluster's etcd"),
            "{refused:?}"
        );
        observed.servers[0].flavor = serde_json::json!({ "original_name": "m3.small" });
        observed.servers[0].image = serde_json::json!("");
        let refused = changes(&observed);
        assert!(
            refused[0].contains("boots from a volume, the file asks for the flavor's disk"),
            "{refused:?}"
        );
    }

    #[test]
    fn missing_cloud_facts_show_as_missing() {
        let spec = with_workers(1);
        let mut without = facts();
        without.flavors.clear();
        without.external_network = None;
        without.image_id = None;
        let plan = plan(&spec, &Observed::default(), &without, K8S).expect("plan");
        let server = plan
            .steps
            .iter()
            .find_map(|s| match &s.action {
                Action::CreateServer(server) => Some(server),
                _ => None,
            })
            .expect("a server");
        assert_eq!(
            (server.flavor_id.as_str(), server.image_id.as_str()),
            (MISSING, MISSING)
        );
        assert_eq!(server.flavor_name, "m3.small");
    }
}
