//! The typed steps of a plan: each carries every input it needs, either known now or made by
//! an earlier step ([`Ref::After`]), and the steps it waits for. `flatstack plan` prints these
//! steps and `flatstack up` runs exactly them.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use serde::Serialize;

use super::rules;
use crate::cloud::network::{Kind, SecurityGroupRule};
use crate::spec::NodeName;

/// A step's index in its [`Plan`].
pub(crate) type StepId = usize;

/// What a step made, or what exists already: an ID, and the address of a port or floating IP.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub(crate) struct Made {
    pub(crate) id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) address: Option<String>,
}

impl Made {
    pub(crate) fn id(id: &str) -> Made {
        Made {
            id: id.to_string(),
            address: None,
        }
    }
}

/// A value a step needs: known at planning time, or made by another step of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ref {
    Known(Made),
    After(StepId),
}

impl Ref {
    /// The address when it is known now; "known after apply" otherwise.
    fn address(&self) -> String {
        match self {
            Ref::Known(Made {
                address: Some(a), ..
            }) => a.clone(),
            _ => KNOWN_AFTER_APPLY.to_string(),
        }
    }
}

/// How `plan` shows a value that exists only once `up` has run.
pub(crate) const KNOWN_AFTER_APPLY: &str = "(known after apply)";

/// A Neutron subnet to create on `network`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SubnetRequest {
    pub(crate) name: String,
    pub(crate) network: Ref,
    pub(crate) cidr: Ipv4Net,
    /// The addresses Neutron may hand out; the ones before it are kept for fixed addresses.
    pub(crate) allocation_pool: Option<(Ipv4Addr, Ipv4Addr)>,
    pub(crate) dns_nameservers: Vec<IpAddr>,
}

/// A port on the subnet, in the given security groups, with a fixed address (the API's and
/// the control planes' on a network flatstack creates) or one Neutron chooses.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PortRequest {
    pub(crate) name: String,
    pub(crate) network: Ref,
    pub(crate) subnet: Ref,
    pub(crate) fixed_ip: Option<Ipv4Addr>,
    pub(crate) security_groups: Vec<Ref>,
    /// A control plane's port behind a VIP: the endpoint's port, whose address it may hold.
    pub(crate) allowed_address_of: Option<Ref>,
}

/// An ingress rule of one of the cluster's groups; `remote_group` replaces the rule's
/// `remote_group_id` when the rule admits a group's members.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RuleRequest {
    pub(crate) group: Ref,
    pub(crate) group_name: String,
    pub(crate) rule: SecurityGroupRule,
    pub(crate) remote_group: Option<Ref>,
}

/// A server to create: everything Nova's request needs but its user_data, which the
/// [`Action::RenderIgnition`] step it waits for renders once the API address is known.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ServerPlan {
    pub(crate) name: String,
    pub(crate) flavor_id: String,
    pub(crate) flavor_name: String,
    pub(crate) image_id: String,
    pub(crate) port: Ref,
    pub(crate) key_name: Option<String>,
    pub(crate) tags: Vec<String>,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) server_group: Option<Ref>,
    pub(crate) boot_volume_gb: Option<u32>,
}

/// One thing `up` does.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    CreateNetwork {
        name: String,
    },
    CreateSubnet(SubnetRequest),
    /// A router with its gateway on the external network, given in the create.
    CreateRouter {
        name: String,
        external_network: String,
        external_network_id: String,
    },
    SetRouterGateway {
        router: Ref,
        router_name: String,
        external_network_id: String,
    },
    /// Keeps the fixed addresses out of the pool of a subnet made before flatstack did so.
    SetAllocationPool {
        subnet: Ref,
        subnet_name: String,
        pool: (Ipv4Addr, Ipv4Addr),
    },
    AddRouterInterface {
        router: Ref,
        router_name: String,
        subnet: Ref,
        subnet_name: String,
    },
    CreateSecurityGroup {
        name: String,
    },
    AddRule(RuleRequest),
    RemoveRule {
        group_name: String,
        rule: SecurityGroupRule,
    },
    CreateServerGroup {
        name: String,
        policy: String,
    },
    CreatePort(PortRequest),
    /// The API's Octavia load balancer, fully populated in one call, waited for until ACTIVE.
    CreateLoadBalancer(super::endpoint::LoadBalancerRequest),
    /// The API's running load balancer put back in the shape the file asks for, one change
    /// at a time (Octavia takes one at a time): `request` is what it was made from, with
    /// every control plane's port.
    RepairLoadBalancer {
        id: String,
        request: super::endpoint::LoadBalancerRequest,
        repairs: Vec<super::endpoint::Repair>,
    },
    /// A load balancer a stopped run left changing (PENDING_*), waited for until ACTIVE.
    WaitLoadBalancer {
        id: String,
        name: String,
    },
    /// Deletes a load balancer (with everything in it) and waits until it is gone.
    DeleteLoadBalancer {
        id: String,
        name: String,
        because: &'static str,
    },
    /// Lets a control plane's port hold the API's address (the VIP): checked every run.
    AllowAddress {
        port: Ref,
        port_name: String,
        endpoint: Ref,
    },
    /// Allocated unattached, so its address (which goes into every Ignition config) is known
    /// without waiting for the router; attached by [`Action::AttachFloatingIp`].
    CreateFloatingIp {
        description: String,
        external_network: String,
        external_network_id: String,
    },
    /// Points the API's floating IP at the endpoint's port (the control plane's, with one):
    /// once for a new one, as a repair for one that was detached or moved.
    AttachFloatingIp {
        floating: Ref,
        /// Its address when it exists, else its description.
        label: String,
        port: Ref,
        port_name: String,
        repair: bool,
    },
    /// A resource of the cluster's exact name without its tag (a run stopped between the
    /// create and the tag, on a cloud that cannot tag in the create): taken as the cluster's.
    Adopt {
        kind: Kind,
        id: String,
        name: String,
    },
    /// Register this run's join token in the running cluster before new nodes boot with it.
    /// The bootstrap token this run's new nodes join with, valid long enough for the last of
    /// them (a long rolling replacement makes its nodes late in the run).
    CreateJoinToken {
        valid_minutes: u32,
    },
    /// The Ignition configs of the servers to create, with the API's addresses.
    RenderIgnition {
        nodes: Vec<NodeName>,
        internal: Ref,
        public: Ref,
        /// The control plane that runs `kubeadm init`, in a new cluster; every other joins.
        initializer: Option<String>,
        /// Another release than the file's, which the control planes still run (an upgrade
        /// not finished): new nodes boot it, never a kubelet newer than an API server.
        boot: Option<super::versions::Boot>,
    },
    CreateServer(ServerPlan),
    /// A running server whose port was deleted gets its new one.
    AttachPort {
        server_id: String,
        server_name: String,
        port: Ref,
    },
    WaitActive {
        server: Ref,
        name: String,
    },
    /// Wait until the node is `Ready` in the cluster: a replacement has joined before the
    /// node it replaces is drained.
    WaitReady {
        node: String,
    },
    Drain {
        node: String,
    },
    /// Removes a lost control plane's etcd member (found by name or peer address) through a
    /// running control plane's member, by a node Job: a new member cannot join while the old
    /// one is listed.
    RemoveEtcdMember {
        node: String,
        address: Option<String>,
        via: String,
    },
    /// Removes etcd member `id` (hex), which belongs to no control plane of the file (left by
    /// one removed outside flatstack): a member that never answers counts against quorum.
    RemoveStrayEtcdMember {
        id: String,
        name: String,
        via: String,
    },
    /// Waits until control plane `node` is a voting etcd member again, as `via`'s member
    /// lists it: a replaced control plane has joined before the next is touched.
    WaitEtcdMember {
        node: String,
        via: String,
    },
    /// Deletes a lost node's Node object, so its rebuilt server registers afresh.
    DeleteNode {
        node: String,
    },
    /// Delete and wait until Nova has removed it.
    DeleteServer {
        id: String,
        name: String,
        /// Why, when the plan does more than remove it (a failed build rebuilt in its place).
        because: Option<String>,
    },
    DeletePort {
        id: String,
        name: String,
    },
    /// Holds kured's reboot lock while nodes are upgraded, so no reboot interleaves (nothing
    /// to hold without kured), and marks the control planes' servers as upgrading (so a later
    /// run knows, without the API, that one was started).
    HoldReboots {
        servers: Vec<String>,
        to: crate::pins::KubernetesVersion,
    },
    /// One node's turn in an upgrade to `to`: the image staged and verified, kubeadm of `to`
    /// run from it, the node drained (cordoned, its Node kept), the image activated and the
    /// kubelet restarted, then Ready at `to` and uncordoned; its server records `to`.
    UpgradeNode {
        node: String,
        server_id: String,
        control_plane: bool,
        from: crate::pins::KubernetesVersion,
        to: crate::pins::KubernetesVersion,
        kubeadm: super::versions::Kubeadm,
    },
    /// Releases kured's reboot lock once every node was upgraded (or when the upgrade that
    /// took it has nothing left to do), and clears the servers' upgrading mark.
    ReleaseReboots {
        servers: Vec<String>,
    },
    /// Uncordons a node an upgrade that no longer applies left cordoned.
    Uncordon {
        node: String,
    },
    /// A duplicate left by a second writer (see [`super::duplicates`]).
    DeleteDuplicate(Owned),
    /// One of the cluster's resources, deleted by `down`.
    DeleteOwned(Owned),
}

/// A resource the cluster owns, deleted whole: a duplicate of two writers, or by `down`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Owned {
    FloatingIp {
        id: String,
        address: String,
    },
    /// Its interfaces on `subnets` are removed and its gateway cleared first.
    Router {
        id: String,
        name: String,
        subnets: Vec<String>,
    },
    /// The interfaces `routers` have on it are removed first.
    Subnet {
        id: String,
        name: String,
        routers: Vec<String>,
    },
    Network {
        id: String,
        name: String,
    },
    SecurityGroup {
        id: String,
        name: String,
    },
    ServerGroup {
        id: String,
        name: String,
    },
    /// A persistent volume the cluster's Cinder CSI driver made; waited for until gone.
    Volume {
        id: String,
        name: String,
        size_gb: u64,
    },
}

impl Owned {
    fn kind_and_name(&self) -> (&'static str, &str) {
        match self {
            Owned::FloatingIp { address, .. } => ("floating IP", address),
            Owned::Router { name, .. } => ("router", name),
            Owned::Subnet { name, .. } => ("subnet", name),
            Owned::Network { name, .. } => ("network", name),
            Owned::SecurityGroup { name, .. } => ("security group", name),
            Owned::ServerGroup { name, .. } => ("server group", name),
            Owned::Volume { name, .. } => ("volume", name),
        }
    }
}

/// How a step is counted: what it changes in the cloud, or a step that changes nothing there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Verb {
    Create,
    /// Something that exists is put back as it should be.
    Update,
    Delete,
    /// Work that changes no cloud resource: render, wait, drain.
    Run,
}

impl Verb {
    pub(crate) fn sign(self) -> char {
        match self {
            Verb::Create => '+',
            Verb::Update => '~',
            Verb::Delete => '-',
            Verb::Run => '>',
        }
    }
}

/// Which API a step calls, for the executor's per-service concurrency bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Service {
    Network,
    Compute,
    /// Polls or local work: bounded by the steps it waits for, not by a service.
    Unbounded,
    LoadBalancer,
    Kubernetes,
}

impl Action {
    /// The step as people read it: verb, kind, name and detail.
    pub(crate) fn describe(&self) -> (Verb, &'static str, String, String) {
        use Action::*;
        match self {
            CreateNetwork { name } => (Verb::Create, "network", name.clone(), String::new()),
            CreateSubnet(s) => (Verb::Create, "subnet", s.name.clone(), s.cidr.to_string()),
            CreateRouter {
                name,
                external_network,
                ..
            } => (
                Verb::Create,
                "router",
                name.clone(),
                format!("gateway on {external_network}"),
            ),
            SetRouterGateway { router_name, .. } => (
                Verb::Update,
                "router",
                router_name.clone(),
                "set its gateway on the external network".into(),
            ),
            SetAllocationPool {
                subnet_name,
                pool: (start, end),
                ..
            } => (
                Verb::Update,
                "subnet",
                subnet_name.clone(),
                format!("hand out only {start}-{end}"),
            ),
            AddRouterInterface {
                router_name,
                subnet_name,
                ..
            } => (
                Verb::Create,
                "router interface",
                router_name.clone(),
                format!("on {subnet_name}"),
            ),
            CreateSecurityGroup { name } => {
                (Verb::Create, "security group", name.clone(), String::new())
            }
            AddRule(r) => (
                Verb::Create,
                "rule",
                r.group_name.clone(),
                rules::describe(&r.rule),
            ),
            RemoveRule { group_name, rule } => (
                Verb::Delete,
                "rule",
                group_name.clone(),
                rules::describe(rule),
            ),
            CreateServerGroup { name, policy } => {
                (Verb::Create, "server group", name.clone(), policy.clone())
            }
            CreatePort(p) => (
                Verb::Create,
                "port",
                p.name.clone(),
                p.fixed_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            ),
            CreateLoadBalancer(lb) => (
                Verb::Create,
                "load balancer",
                lb.name.clone(),
                format!(
                    "{}, TCP {} to {} control planes",
                    lb.provider.as_deref().unwrap_or("default provider"),
                    lb.listeners
                        .iter()
                        .map(|l| l.port.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    lb.members.len()
                ),
            ),
            WaitLoadBalancer { name, .. } => {
                (Verb::Run, "wait", name.clone(), "until ACTIVE".into())
            }
            RepairLoadBalancer {
                request, repairs, ..
            } => (
                Verb::Update,
                "load balancer",
                request.name.clone(),
                repairs
                    .iter()
                    .map(super::endpoint::Repair::describe)
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            DeleteLoadBalancer { name, because, .. } => (
                Verb::Delete,
                "load balancer",
                name.clone(),
                because.to_string(),
            ),
            AllowAddress {
                port_name,
                endpoint,
                ..
            } => (
                Verb::Update,
                "port",
                port_name.clone(),
                format!("may hold the API's address {}", endpoint.address()),
            ),
            CreateFloatingIp {
                description,
                external_network,
                ..
            } => (
                Verb::Create,
                "floating IP",
                description.clone(),
                format!("from {external_network}"),
            ),
            AttachFloatingIp {
                label,
                port_name,
                repair: true,
                ..
            } => (
                Verb::Update,
                "floating IP",
                label.clone(),
                format!("attach to {port_name}"),
            ),
            AttachFloatingIp {
                label, port_name, ..
            } => (
                Verb::Create,
                "attachment",
                label.clone(),
                format!("floating IP to {port_name}"),
            ),
            Adopt { kind, name, .. } => (
                Verb::Update,
                kind_name(*kind),
                name.clone(),
                "untagged: tag it as the cluster's".into(),
            ),
            CreateJoinToken { valid_minutes } => (
                Verb::Run,
                "join token",
                "bootstrap token".into(),
                format!(
                    "for this run's new nodes, valid {}, deleted once they joined",
                    minutes(*valid_minutes)
                ),
            ),
            RenderIgnition {
                nodes,
                internal,
                public,
                initializer,
                boot,
            } => (
                Verb::Run,
                "ignition",
                format!("{} config(s)", nodes.len()),
                format!(
                    "API at {} and {}{}{}",
                    internal.address(),
                    public.address(),
                    initializer
                        .as_ref()
                        .map(|n| format!("; {n} initializes the cluster"))
                        .unwrap_or_default(),
                    boot.as_ref()
                        .map(|b| format!("; they boot {}, which the control planes run", b.release))
                        .unwrap_or_default()
                ),
            ),
            CreateServer(s) => (
                Verb::Create,
                "server",
                s.name.clone(),
                s.flavor_name.clone(),
            ),
            AttachPort { server_name, .. } => (
                Verb::Update,
                "server",
                server_name.clone(),
                "attach its port again".into(),
            ),
            WaitActive { name, .. } => (Verb::Run, "wait", name.clone(), "until ACTIVE".into()),
            WaitReady { node } => (Verb::Run, "wait", node.clone(), "until Ready".into()),
            Drain { node } => (Verb::Run, "drain", node.clone(), "evict its pods".into()),
            RemoveEtcdMember { node, via, .. } => (
                Verb::Run,
                "etcd member",
                node.clone(),
                format!("remove through {via}"),
            ),
            RemoveStrayEtcdMember { id, name, via } => (
                Verb::Run,
                "etcd member",
                match name.is_empty() {
                    true => id.clone(),
                    false => format!("{name} ({id})"),
                },
                format!("remove through {via}: of no control plane"),
            ),
            WaitEtcdMember { node, .. } => (
                Verb::Run,
                "wait",
                node.clone(),
                "until a voting etcd member".into(),
            ),
            DeleteNode { node } => (
                Verb::Run,
                "node",
                node.clone(),
                "delete its Node object".into(),
            ),
            HoldReboots { .. } => (
                Verb::Run,
                "reboot lock",
                "kured".into(),
                "hold it while nodes are upgraded (when kured runs)".into(),
            ),
            UpgradeNode {
                node,
                from,
                to,
                kubeadm,
                ..
            } => (
                Verb::Run,
                "upgrade",
                node.clone(),
                format!(
                    "{from} to {to}: {}, drain, activate the image, Ready, uncordon",
                    kubeadm.command(*to)
                ),
            ),
            ReleaseReboots { .. } => (
                Verb::Run,
                "reboot lock",
                "kured".into(),
                "release it".into(),
            ),
            Uncordon { node } => (
                Verb::Run,
                "uncordon",
                node.clone(),
                "left cordoned by an upgrade that no longer applies".into(),
            ),
            DeleteServer { name, because, .. } => (
                Verb::Delete,
                "server",
                name.clone(),
                because.clone().unwrap_or_default(),
            ),
            DeletePort { name, .. } => (Verb::Delete, "port", name.clone(), String::new()),
            DeleteDuplicate(d) => {
                let (kind, name) = d.kind_and_name();
                (Verb::Delete, kind, name.to_string(), "duplicate".into())
            }
            DeleteOwned(d) => {
                let (kind, name) = d.kind_and_name();
                let detail = match d {
                    Owned::Volume { size_gb, .. } => format!("{size_gb} GB"),
                    _ => String::new(),
                };
                (Verb::Delete, kind, name.to_string(), detail)
            }
        }
    }

    /// The line `up` prints when the step starts.
    pub(crate) fn progress_line(&self) -> String {
        use Action::*;
        match self {
            CreateNetwork { name } => format!("creating network {name}"),
            CreateSubnet(s) => format!("creating subnet {}", s.name),
            CreateRouter { name, .. } => format!("creating router {name}"),
            SetRouterGateway { router_name, .. } => {
                format!("setting the gateway of router {router_name}")
            }
            SetAllocationPool { subnet_name, .. } => {
                format!("setting the allocation pool of subnet {subnet_name}")
            }
            AddRouterInterface {
                router_name,
                subnet_name,
                ..
            } => format!("adding subnet {subnet_name} to router {router_name}"),
            CreateSecurityGroup { name } => format!("creating security group {name}"),
            AddRule(r) => format!(
                "adding rule {} to {}",
                rules::describe(&r.rule),
                r.group_name
            ),
            RemoveRule { group_name, rule } => {
                format!("removing rule {} on {group_name}", rules::describe(rule))
            }
            CreateServerGroup { name, .. } => format!("creating server group {name}"),
            CreatePort(p) => format!("creating port {}", p.name),
            AllowAddress { port_name, .. } => {
                format!("letting port {port_name} hold the API's address")
            }
            CreateLoadBalancer(lb) => format!("creating load balancer {}", lb.name),
            WaitLoadBalancer { name, .. } => {
                format!("waiting for load balancer {name} to be ACTIVE")
            }
            RepairLoadBalancer { request, .. } => {
                format!("putting load balancer {} back in shape", request.name)
            }
            DeleteLoadBalancer { name, because, .. } => {
                format!("deleting load balancer {name}: {because}")
            }
            CreateFloatingIp { .. } => "allocating the API floating IP".into(),
            AttachFloatingIp {
                label,
                port_name,
                repair,
                ..
            } => match repair {
                true => format!("attaching the API floating IP {label} to {port_name} again"),
                false => format!("attaching the API floating IP to {port_name}"),
            },
            Adopt { kind, name, .. } => {
                format!(
                    "tagging untagged {} {name} as the cluster's",
                    kind_name(*kind)
                )
            }
            CreateJoinToken { valid_minutes } => format!(
                "making a join token for the new nodes, valid {} and deleted once they joined",
                minutes(*valid_minutes)
            ),
            RenderIgnition { nodes, .. } => {
                format!("rendering the Ignition configs of {} node(s)", nodes.len())
            }
            CreateServer(s) => format!("creating server {}", s.name),
            AttachPort { server_name, .. } => {
                format!("attaching server {server_name} to its new port")
            }
            WaitActive { name, .. } => format!("waiting for server {name} to be ACTIVE"),
            WaitReady { node } => format!("waiting for node {node} to be Ready"),
            Drain { node } => format!("draining {node}"),
            RemoveEtcdMember { node, via, .. } => {
                format!("removing the etcd member of {node} through {via}")
            }
            RemoveStrayEtcdMember { id, via, .. } => {
                format!("removing etcd member {id}, of no control plane, through {via}")
            }
            DeleteNode { node } => format!("deleting the Node object of {node}"),
            HoldReboots { .. } => "holding kured's reboot lock for the upgrade".into(),
            UpgradeNode { node, to, .. } => format!("upgrading {node} to {to}"),
            ReleaseReboots { .. } => "releasing kured's reboot lock".into(),
            Uncordon { node } => format!("uncordoning {node}"),
            WaitEtcdMember { node, via } => {
                format!("waiting for {node} to be a voting etcd member (as {via} sees it)")
            }
            DeleteServer { name, because, .. } => match because {
                Some(why) => format!("deleting server {name}: {why}"),
                None => format!("deleting server {name}"),
            },
            DeletePort { name, .. } => format!("deleting port {name}"),
            DeleteDuplicate(d) => {
                let (kind, name) = d.kind_and_name();
                format!("removing duplicate {kind} {name}")
            }
            DeleteOwned(Owned::FloatingIp { address, .. }) => {
                format!("releasing floating IP {address}")
            }
            DeleteOwned(Owned::Volume { name, size_gb, .. }) => {
                format!("deleting volume {name} ({size_gb} GB)")
            }
            DeleteOwned(d) => {
                let (kind, name) = d.kind_and_name();
                format!("deleting {kind} {name}")
            }
        }
    }

    /// The group a step belongs to on the timeline.
    pub(crate) fn group(&self) -> &'static str {
        use Action::*;
        match self {
            CreateNetwork { .. } | CreateSubnet(_) | SetAllocationPool { .. } => "network, subnet",
            CreateRouter { .. } | SetRouterGateway { .. } | AddRouterInterface { .. } => "router",
            CreateSecurityGroup { .. } | CreateServerGroup { .. } => "groups",
            AddRule(_) | RemoveRule { .. } => "rules",
            CreatePort(_) | AllowAddress { .. } => "ports",
            CreateLoadBalancer(_)
            | RepairLoadBalancer { .. }
            | WaitLoadBalancer { .. }
            | DeleteLoadBalancer { .. } => "load balancer",
            CreateFloatingIp { .. } | AttachFloatingIp { .. } => "floating IP",
            Adopt { .. } => "adopt untagged",
            CreateJoinToken { .. }
            | WaitReady { .. }
            | Drain { .. }
            | RemoveEtcdMember { .. }
            | RemoveStrayEtcdMember { .. }
            | WaitEtcdMember { .. }
            | DeleteNode { .. } => "kubernetes",
            HoldReboots { .. } | UpgradeNode { .. } | ReleaseReboots { .. } | Uncordon { .. } => {
                "upgrade"
            }
            RenderIgnition { .. } => "render Ignition",
            CreateServer(_) | AttachPort { .. } => "create servers",
            WaitActive { .. } => "servers ACTIVE",
            DeleteServer { .. } | DeletePort { .. } => "delete servers",
            DeleteDuplicate(_) => "remove duplicates",
            DeleteOwned(_) => "tear down",
        }
    }

    pub(crate) fn service(&self) -> Service {
        use Action::*;
        match self {
            CreateServerGroup { .. }
            | CreateServer(_)
            | AttachPort { .. }
            | DeleteServer { .. }
            | DeleteDuplicate(Owned::ServerGroup { .. })
            | DeleteOwned(Owned::ServerGroup { .. })
            | DeleteOwned(Owned::Volume { .. }) => Service::Compute,
            WaitActive { .. } | RenderIgnition { .. } => Service::Unbounded,
            CreateLoadBalancer(_)
            | RepairLoadBalancer { .. }
            | WaitLoadBalancer { .. }
            | DeleteLoadBalancer { .. } => Service::LoadBalancer,
            CreateJoinToken { .. }
            | WaitReady { .. }
            | Drain { .. }
            | RemoveEtcdMember { .. }
            | RemoveStrayEtcdMember { .. }
            | WaitEtcdMember { .. }
            | DeleteNode { .. }
            | HoldReboots { .. }
            | UpgradeNode { .. }
            | ReleaseReboots { .. }
            | Uncordon { .. } => Service::Kubernetes,
            _ => Service::Network,
        }
    }

    /// Every value this step takes, known or from other steps: the one list the planner reads
    /// the needs from and the executor fills in.
    pub(crate) fn refs_mut(&mut self) -> Vec<&mut Ref> {
        use Action::*;
        match self {
            CreateSubnet(s) => vec![&mut s.network],
            SetRouterGateway { router, .. } => vec![router],
            SetAllocationPool { subnet, .. } => vec![subnet],
            AddRouterInterface { router, subnet, .. } => vec![router, subnet],
            AddRule(r) => std::iter::once(&mut r.group)
                .chain(r.remote_group.as_mut())
                .collect(),
            CreatePort(p) => [&mut p.network, &mut p.subnet]
                .into_iter()
                .chain(&mut p.security_groups)
                .chain(p.allowed_address_of.as_mut())
                .collect(),
            AllowAddress { port, endpoint, .. } => vec![port, endpoint],
            CreateLoadBalancer(lb) => [&mut lb.vip_port, &mut lb.subnet]
                .into_iter()
                .chain(lb.members.iter_mut().map(|(_, port)| port))
                .collect(),
            RepairLoadBalancer { request: lb, .. } => std::iter::once(&mut lb.subnet)
                .chain(lb.members.iter_mut().map(|(_, port)| port))
                .collect(),
            AttachFloatingIp { floating, port, .. } => vec![floating, port],
            RenderIgnition {
                internal, public, ..
            } => vec![internal, public],
            CreateServer(s) => std::iter::once(&mut s.port)
                .chain(s.server_group.as_mut())
                .collect(),
            WaitActive { server, .. } => vec![server],
            AttachPort { port, .. } => vec![port],
            _ => Vec::new(),
        }
    }
}

/// `1 h`, `1 h 40 min`, `20 min`.
fn minutes(total: u32) -> String {
    match (total / 60, total % 60) {
        (0, m) => format!("{m} min"),
        (h, 0) => format!("{h} h"),
        (h, m) => format!("{h} h {m} min"),
    }
}

/// How people call a Neutron kind.
pub(crate) fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Network => "network",
        Kind::Subnet => "subnet",
        Kind::Router => "router",
        Kind::Port => "port",
        Kind::SecurityGroup => "security group",
        Kind::FloatingIp => "floating IP",
    }
}

/// A step and the steps it waits for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Step {
    pub(crate) id: StepId,
    pub(crate) action: Action,
    pub(crate) needs: Vec<StepId>,
}

/// Everything `up` will do, in an order that respects every step's needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Plan {
    pub(crate) steps: Vec<Step>,
    /// The cluster's nodes once the steps ran (see `roster`).
    pub(crate) nodes: Vec<NodeName>,
    /// The move to the file's Kubernetes release, when nodes run another: its steps are in
    /// `steps` unless the plan leaves the cluster side out (`--provision-only`).
    pub(crate) upgrade: Option<super::versions::Upgrade>,
    /// Each running node's Kubernetes release, as the planner took it.
    pub(crate) releases: BTreeMap<String, crate::pins::KubernetesVersion>,
}

/// One step as `plan --output json` and `up --output json` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct ShownStep {
    pub(crate) id: StepId,
    pub(crate) action: Verb,
    pub(crate) kind: &'static str,
    pub(crate) name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) needs: Vec<StepId>,
}

impl Plan {
    /// Steps of each verb.
    #[cfg(test)]
    pub(crate) fn count(&self, verb: Verb) -> usize {
        self.steps
            .iter()
            .filter(|s| s.action.describe().0 == verb)
            .count()
    }

    /// Adds a step that waits for every step its inputs come from, and for `also`.
    pub(crate) fn push(&mut self, mut action: Action, also: &[StepId]) -> StepId {
        let id = self.steps.len();
        let mut needs: Vec<StepId> = action
            .refs_mut()
            .into_iter()
            .filter_map(|r| match r {
                Ref::After(step) => Some(*step),
                Ref::Known(_) => None,
            })
            .chain(also.iter().copied())
            .collect();
        needs.sort_unstable();
        needs.dedup();
        self.steps.push(Step { id, action, needs });
        id
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Whether, once this plan ran, another round is due: it upgrades control planes while
    /// nodes of pools that upgrade by replacement wait for them to run the release.
    pub(crate) fn replaces_after_upgrade(&self) -> bool {
        self.upgrade
            .as_ref()
            .is_some_and(|u| !u.replaced.is_empty())
            && self.steps.iter().any(|s| {
                matches!(
                    s.action,
                    Action::UpgradeNode {
                        control_plane: true,
                        ..
                    }
                )
            })
    }

    /// This plan followed by `next` (made after this one ran): `next`'s steps numbered on,
    /// its nodes, releases and upgrade the latest.
    pub(crate) fn then(mut self, next: Plan) -> Plan {
        let offset = self.steps.len();
        // `next` began once this one ended: its first steps wait for this one's last.
        let last: Vec<StepId> = self
            .steps
            .iter()
            .map(|s| s.id)
            .filter(|id| !self.steps.iter().any(|s| s.needs.contains(id)))
            .collect();
        self.steps.extend(next.steps.into_iter().map(|mut step| {
            step.id += offset;
            for need in &mut step.needs {
                *need += offset;
            }
            if step.needs.is_empty() {
                step.needs = last.clone();
            }
            step
        }));
        self.nodes = next.nodes;
        self.releases = next.releases;
        self.upgrade = next.upgrade;
        self
    }

    pub(crate) fn shown(&self) -> Vec<ShownStep> {
        self.steps.iter().map(Step::shown).collect()
    }

    /// Whether any step talks to the cluster's Kubernetes API.
    pub(crate) fn needs_api(&self) -> bool {
        self.steps.iter().any(|s| {
            matches!(
                s.action,
                Action::Drain { .. }
                    | Action::WaitReady { .. }
                    | Action::CreateJoinToken { .. }
                    | Action::RemoveEtcdMember { .. }
                    | Action::RemoveStrayEtcdMember { .. }
                    | Action::WaitEtcdMember { .. }
                    | Action::DeleteNode { .. }
                    | Action::HoldReboots { .. }
                    | Action::UpgradeNode { .. }
                    | Action::ReleaseReboots { .. }
                    | Action::Uncordon { .. }
            )
        })
    }
}

impl Step {
    pub(crate) fn shown(&self) -> ShownStep {
        let (action, kind, name, detail) = self.action.describe();
        ShownStep {
            id: self.id,
            action,
            kind,
            name,
            detail,
            needs: self.needs.clone(),
        }
    }
}
