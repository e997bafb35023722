//! The cloud resources a cluster owns: their names, the tag that marks them, what the cloud
//! holds of them ([`Observed`], filled by the engine), and the changes that cannot be made in
//! place.

use std::collections::BTreeMap;

use super::roster::{ServerFacts, outdated_because};
use crate::cloud::compute::{Flavor, Server};
use crate::cloud::load_balancer::LoadBalancer;
use crate::cloud::network::Kind;
use crate::cloud::network::{FloatingIp, Network, Port, Router, SecurityGroup, Subnet};
use crate::spec::{ClusterSpec, NetworkMode, Role};

/// The tag a server of `role` (`control-plane`, `worker`) carries.
pub(crate) fn role_tag(role: &str) -> String {
    format!("flatstack:role={role}")
}

/// The tag every resource of cluster `name` carries.
pub(crate) fn cluster_tag(name: &str) -> String {
    format!("flatstack:cluster={name}")
}

/// The tag on a control plane's port and on the API's floating IP once an `up` has seen a
/// control plane ACTIVE: the cluster has run, and a lost control plane is never rebuilt blank.
pub const CONTROL_PLANE_RAN_TAG: &str = "flatstack:control-plane-ran";

/// Whether the cluster's control plane has run, as the marks on its ports and floating IPs
/// say (either survives the other's deletion).
pub(crate) fn control_plane_ran(observed: &Observed) -> bool {
    let marked = |tags: &[String]| tags.iter().any(|t| t == CONTROL_PLANE_RAN_TAG);
    observed.ports.iter().any(|p| marked(&p.tags))
        || observed.floating_ips.iter().any(|f| marked(&f.tags))
}

/// The server metadata key holding the discovery hash (`sha256:<hex>`) of the CA the server's
/// node trusts: how every command tells a state directory that is the cluster's from one
/// that is not.
pub const CA_METADATA: &str = "flatstack-ca";
/// The server metadata key that records the Kubernetes release a node was made with
/// (`v1.37.1`): the cluster's version, known without its API.
pub const KUBERNETES_METADATA: &str = "flatstack-kubernetes";

/// The CA the cluster's nodes trust, as its servers' metadata says: the control planes' (they
/// hold the CA), else the workers'; servers made before flatstack recorded it say nothing.
/// Among several, the first by name.
pub(crate) fn cluster_ca(servers: &[Server]) -> Option<&str> {
    let recorded = |control_plane: bool| {
        let mut found: Vec<(&str, &str)> = servers
            .iter()
            .filter(|s| s.has_role("control-plane") == control_plane)
            .filter_map(|s| Some((s.name.as_str(), s.metadata.get(CA_METADATA)?.as_str())))
            .collect();
        found.sort();
        found.first().map(|(_, ca)| *ca)
    };
    recorded(true).or_else(|| recorded(false))
}

/// The servers that record another CA than `ours`, with the CA they record.
pub(crate) fn servers_trusting_another_ca<'a>(
    servers: &'a [Server],
    ours: &str,
) -> Vec<(&'a Server, &'a str)> {
    servers
        .iter()
        .filter_map(|s| {
            let theirs = s.metadata.get(CA_METADATA)?;
            (theirs != ours).then_some((s, theirs.as_str()))
        })
        .collect()
}

/// Volume metadata the Cinder CSI driver sets to its `--cluster` name, which flatstack sets to
/// the cluster's name: how `down --delete-volumes` finds the volumes the cluster made.
pub(crate) const CSI_CLUSTER_KEY: &str = "cinder.csi.openstack.org/cluster";

/// Names of the cluster's shared resources.
pub(crate) struct Names {
    pub(crate) network: String,
    pub(crate) subnet: String,
    pub(crate) router: String,
    pub(crate) nodes_group: String,
    pub(crate) control_plane_group: String,
    pub(crate) server_group: String,
    /// Floating IPs have no name: the API address is found by this description.
    pub(crate) api_address: String,
    /// The port that holds the API's address with 3 or 5 control planes.
    pub(crate) api_port: String,
}

impl Names {
    pub(crate) fn of(cluster: &str) -> Names {
        Names {
            network: format!("{cluster}-net"),
            subnet: format!("{cluster}-subnet"),
            router: format!("{cluster}-router"),
            nodes_group: format!("{cluster}-nodes"),
            control_plane_group: format!("{cluster}-control-plane"),
            server_group: format!("{cluster}-control-plane"),
            api_address: format!("{cluster}-api"),
            api_port: format!("{cluster}-api"),
        }
    }
}

/// What the cloud holds of the cluster, found by its tag.
#[derive(Debug, Default, Clone)]
pub(crate) struct Observed {
    pub(crate) networks: Vec<Network>,
    pub(crate) subnets: Vec<Subnet>,
    pub(crate) routers: Vec<Router>,
    pub(crate) security_groups: Vec<SecurityGroup>,
    pub(crate) ports: Vec<Port>,
    pub(crate) floating_ips: Vec<FloatingIp>,
    pub(crate) servers: Vec<Server>,
    pub(crate) server_groups: Vec<crate::cloud::compute::ServerGroup>,
    /// Made by the cluster's cloud controller for `LoadBalancer` Services, found by name.
    pub(crate) load_balancers: Vec<LoadBalancer>,
    /// The API's load balancer (`<cluster>-api`, with 3 or 5 control planes), found by name.
    pub(crate) api_load_balancers: Vec<LoadBalancer>,
    /// The floating IPs the cloud controller gave those load balancers, found by description.
    pub(crate) service_floating_ips: Vec<FloatingIp>,
    /// Router interface ports of the project: how the router's interface is checked.
    pub(crate) router_interfaces: Vec<Port>,
    /// The size in GB of each volume-booted server's boot volume, by server ID.
    pub(crate) boot_volumes: BTreeMap<String, u64>,
    /// Resources with the cluster's exact names but no flatstack tag (also in the lists
    /// above): a run stopped between a create and its tag on a cloud that cannot tag in the
    /// create. `up` tags them.
    pub(crate) adopt: Vec<Untagged>,
}

/// A resource of the cluster's exact name that carries no flatstack tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Untagged {
    pub(crate) kind: Kind,
    pub(crate) id: String,
    pub(crate) name: String,
}

impl Observed {
    /// The API's floating IP of `cluster`, found by its description.
    pub(crate) fn api_floating_ip(&self, cluster: &str) -> Option<&FloatingIp> {
        let description = Names::of(cluster).api_address;
        self.floating_ips
            .iter()
            .find(|f| f.description == description)
    }

    /// How many resources of the cluster exist, of every kind.
    pub(crate) fn count(&self) -> usize {
        self.networks.len()
            + self.subnets.len()
            + self.routers.len()
            + self.security_groups.len()
            + self.ports.len()
            + self.floating_ips.len()
            + self.servers.len()
            + self.server_groups.len()
            + self.load_balancers.len()
            + self.api_load_balancers.len()
            + self.service_floating_ips.len()
    }

    /// One line per resource: `kind name (id)`.
    pub(crate) fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut add =
            |kind: &str, name: &str, id: &str| lines.push(format!("{kind} {name} ({id})"));
        self.load_balancers
            .iter()
            .chain(&self.api_load_balancers)
            .for_each(|l| add("load balancer", &l.name, &l.id));
        self.service_floating_ips
            .iter()
            .for_each(|f| add("floating IP", &f.floating_ip_address, &f.id));
        self.servers
            .iter()
            .for_each(|s| add("server", &s.name, &s.id));
        self.floating_ips
            .iter()
            .for_each(|f| add("floating IP", &f.floating_ip_address, &f.id));
        self.ports.iter().for_each(|p| add("port", &p.name, &p.id));
        self.routers
            .iter()
            .for_each(|r| add("router", &r.name, &r.id));
        self.subnets
            .iter()
            .for_each(|s| add("subnet", &s.name, &s.id));
        self.networks
            .iter()
            .for_each(|n| add("network", &n.name, &n.id));
        self.security_groups
            .iter()
            .for_each(|g| add("security group", &g.name, &g.id));
        self.server_groups
            .iter()
            .for_each(|g| add("server group", &g.name, &g.id));
        lines
    }
}

/// What the cluster file changes that cannot change in place: the node range, the external
/// network floating IPs come from, and whether the cluster has a network of its own. Each is a
/// sentence for people; `external_network_id` is the ID the file's external network has now.
pub(crate) fn immutable_changes(
    spec: &ClusterSpec,
    observed: &Observed,
    external_network_id: Option<&str>,
    flavors: &[Flavor],
) -> Vec<String> {
    let names = Names::of(&spec.name);
    let mut changes = Vec::new();
    // Worker pools are replaced node by node (see `roster`), 3 or 5 control planes one at a
    // time (see the planner); the only control plane holds etcd and cannot be.
    let facts = ServerFacts::of(observed, flavors);
    let only = !spec.control_plane.highly_available();
    for node in spec
        .nodes()
        .iter()
        .filter(|n| n.role == Role::ControlPlane && only)
    {
        let Some(server) = observed.servers.iter().find(|s| s.name == node.name) else {
            continue;
        };
        let plane = &spec.control_plane;
        if let Some(why) = outdated_because(&plane.flavor, plane.boot_volume_gb, server, facts) {
            changes.push(format!(
                "{} {why}; the only control plane holds the cluster's etcd and cannot be replaced (set `control_plane.flavor` and `boot_volume_gb` back to what it runs)",
                node.name
            ));
        }
    }
    let own_network = observed.networks.iter().any(|n| n.name == names.network);
    match (&spec.network.mode, own_network) {
        (NetworkMode::Create, false) if !observed.ports.is_empty() => changes.push(
            "the cluster was made on an existing network, and the file no longer names one (`network.existing_network`)".to_string(),
        ),
        (NetworkMode::Reuse { network, .. }, true) => changes.push(format!(
            "the cluster has a network of its own ({}), and the file now names an existing one (`{network}`)",
            names.network
        )),
        _ => {}
    }
    if let (Some(wanted), Some(subnet)) = (
        spec.network.node_cidr,
        observed.subnets.iter().find(|s| s.name == names.subnet),
    ) && subnet.cidr != wanted.to_string()
    {
        changes.push(format!(
            "`network.node_cidr` is {wanted}, but the cluster's nodes are on {}",
            subnet.cidr
        ));
    }
    if let Some(external) = external_network_id {
        let elsewhere = observed
            .floating_ips
            .iter()
            .filter(|f| f.description == names.api_address && f.floating_network_id != external);
        for floating in elsewhere {
            changes.push(format!(
                "`network.external_network` is `{}`, but the cluster's API address {} comes from another network",
                spec.network.external_network, floating.floating_ip_address
            ));
        }
    }
    changes
}
