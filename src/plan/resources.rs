//! The cloud resources a cluster owns: their deterministic names, the tag that marks them, and
//! the comparison of what the cluster file wants with what the cloud has (found by tag).

use std::collections::BTreeSet;

use serde::Serialize;

use super::rules;
use crate::cloud::compute::Server;
use crate::cloud::load_balancer::{LoadBalancer, is_service_floating_ip};
use crate::cloud::network::Kind;
use crate::cloud::network::{FloatingIp, Network, Port, Router, SecurityGroup, Subnet};
use crate::cloud::{Cloud, CloudError};
use crate::spec::{ClusterSpec, NetworkMode};

/// The tag every resource of cluster `name` carries.
pub fn cluster_tag(name: &str) -> String {
    format!("flatstack:cluster={name}")
}

/// Volume metadata the Cinder CSI driver sets to its `--cluster` name, which flatstack sets to
/// the cluster's name: how `down --delete-volumes` finds the volumes the cluster made.
pub const CSI_CLUSTER_KEY: &str = "cinder.csi.openstack.org/cluster";

/// Volumes the cluster's Cinder CSI driver created (persistent volumes), by their metadata.
pub async fn cluster_volumes(
    cloud: &Cloud,
    cluster: &str,
) -> Result<Vec<crate::cloud::volume::Volume>, CloudError> {
    Ok(cloud
        .volumes()
        .await?
        .into_iter()
        .filter(|v| v.metadata.get(CSI_CLUSTER_KEY).map(String::as_str) == Some(cluster))
        .collect())
}

/// Names of the cluster's shared resources.
pub struct Names {
    pub network: String,
    pub subnet: String,
    pub router: String,
    pub nodes_group: String,
    pub control_plane_group: String,
    pub server_group: String,
    /// Floating IPs have no name: the API address is found by this description.
    pub api_address: String,
}

impl Names {
    pub fn of(cluster: &str) -> Names {
        Names {
            network: format!("{cluster}-net"),
            subnet: format!("{cluster}-subnet"),
            router: format!("{cluster}-router"),
            nodes_group: format!("{cluster}-nodes"),
            control_plane_group: format!("{cluster}-control-plane"),
            server_group: format!("{cluster}-control-plane"),
            api_address: format!("{cluster}-api"),
        }
    }
}

/// What the cloud holds of the cluster, found by its tag.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    pub networks: Vec<Network>,
    pub subnets: Vec<Subnet>,
    pub routers: Vec<Router>,
    pub security_groups: Vec<SecurityGroup>,
    pub ports: Vec<Port>,
    pub floating_ips: Vec<FloatingIp>,
    pub servers: Vec<Server>,
    pub server_groups: Vec<crate::cloud::compute::ServerGroup>,
    /// Made by the cluster's cloud controller for `LoadBalancer` Services, found by name.
    pub load_balancers: Vec<LoadBalancer>,
    /// The floating IPs the cloud controller gave those load balancers, found by description.
    pub service_floating_ips: Vec<FloatingIp>,
}

impl Observed {
    /// Lists every kind of resource the cluster may own: by tag, server groups (which cannot be
    /// tagged) by name, and what the cloud controller made by its own naming.
    pub async fn collect(cloud: &Cloud, cluster: &str) -> Result<Observed, CloudError> {
        let tag = cluster_tag(cluster);
        let tags = [tag.as_str()];
        let group_name = Names::of(cluster).server_group;
        let (
            (networks, subnets, routers, security_groups, ports, floating_ips, servers, groups),
            (load_balancers, all_floating_ips),
        ) = tokio::try_join!(
            async {
                tokio::try_join!(
                    cloud.list_tagged(Kind::Network, &tags),
                    cloud.list_tagged(Kind::Subnet, &tags),
                    cloud.list_tagged(Kind::Router, &tags),
                    cloud.list_tagged(Kind::SecurityGroup, &tags),
                    cloud.list_tagged(Kind::Port, &tags),
                    cloud.list_tagged(Kind::FloatingIp, &tags),
                    cloud.servers_tagged(&tags),
                    cloud.server_groups(),
                )
            },
            async {
                tokio::try_join!(
                    cloud.cluster_load_balancers(cluster),
                    cloud.list::<FloatingIp>(Kind::FloatingIp, &[]),
                )
            },
        )?;
        Ok(Observed {
            networks,
            subnets,
            routers,
            security_groups,
            ports,
            floating_ips,
            servers,
            server_groups: groups
                .into_iter()
                .filter(|g| g.name == group_name)
                .collect(),
            load_balancers,
            service_floating_ips: all_floating_ips
                .into_iter()
                .filter(|f| is_service_floating_ip(&f.description, cluster))
                .collect(),
        })
    }

    /// How many resources of the cluster exist, of every kind.
    pub fn count(&self) -> usize {
        self.networks.len()
            + self.subnets.len()
            + self.routers.len()
            + self.security_groups.len()
            + self.ports.len()
            + self.floating_ips.len()
            + self.servers.len()
            + self.server_groups.len()
            + self.load_balancers.len()
            + self.service_floating_ips.len()
    }

    /// One line per resource: `kind name (id)`.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut add =
            |kind: &str, name: &str, id: &str| lines.push(format!("{kind} {name} ({id})"));
        self.load_balancers
            .iter()
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

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Action {
    pub action: Verb,
    pub kind: &'static str,
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    Create,
    /// Something that exists is put back as it should be (a detached floating IP).
    Update,
    Delete,
}

/// Rules to add to or remove from the groups that exist (new groups get theirs with them).
/// Where the nodes' subnet is not known (an existing network flatstack does not own), the
/// node-port rule from it is left out of the comparison either way.
fn rule_changes(spec: &ClusterSpec, observed: &Observed, names: &Names) -> Vec<Action> {
    let Some(nodes_group) = observed
        .security_groups
        .iter()
        .find(|g| g.name == names.nodes_group)
    else {
        return Vec::new();
    };
    let subnet_cidr = observed
        .subnets
        .iter()
        .find(|s| s.name == names.subnet)
        .and_then(|s| s.cidr.parse().ok())
        .or(spec.network.node_cidr.map(ipnet::IpNet::V4));
    let wanted = rules::wanted_rules(spec, &nodes_group.id, subnet_cidr);
    let unknowable = |rule: &crate::cloud::network::SecurityGroupRule| {
        subnet_cidr.is_none() && rule.port_range_min == Some(rules::NODE_PORTS.0)
    };
    let mut actions = Vec::new();
    for (name, want) in [
        (&names.nodes_group, &wanted.nodes),
        (&names.control_plane_group, &wanted.control_planes),
    ] {
        let Some(group) = observed.security_groups.iter().find(|g| &g.name == name) else {
            continue;
        };
        let (missing, stale) = rules::rule_diff(&group.security_group_rules, want);
        for rule in missing {
            actions.push(Action {
                action: Verb::Create,
                kind: "rule",
                name: name.clone(),
                detail: rules::describe(rule),
            });
        }
        for rule in stale.into_iter().filter(|h| !unknowable(h)) {
            actions.push(Action {
                action: Verb::Delete,
                kind: "rule",
                name: name.clone(),
                detail: rules::describe(rule),
            });
        }
    }
    actions
}

/// What it takes to go from `observed` to what `spec` asks for.
/// What the cluster file changes that cannot change in place: the node range, the external
/// network floating IPs come from, and whether the cluster has a network of its own. Each is a
/// sentence for people; `external_network_id` is the ID the file's external network has now.
pub fn immutable_changes(
    spec: &ClusterSpec,
    observed: &Observed,
    external_network_id: Option<&str>,
) -> Vec<String> {
    let names = Names::of(&spec.name);
    let mut changes = Vec::new();
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

pub fn diff(spec: &ClusterSpec, observed: &Observed) -> Vec<Action> {
    let names = Names::of(&spec.name);
    let mut actions = Vec::new();
    let mut repairs = Vec::new();
    let mut create = |kind: &'static str, name: &str, detail: String| {
        actions.push(Action {
            action: Verb::Create,
            kind,
            name: name.to_string(),
            detail,
        });
    };
    if spec.network.mode == NetworkMode::Create {
        if !observed.networks.iter().any(|n| n.name == names.network) {
            create("network", &names.network, String::new());
        }
        if !observed.subnets.iter().any(|s| s.name == names.subnet) {
            let cidr = spec
                .network
                .node_cidr
                .map(|c| c.to_string())
                .unwrap_or_default();
            create("subnet", &names.subnet, cidr);
        }
        if !observed.routers.iter().any(|r| r.name == names.router) {
            create(
                "router",
                &names.router,
                format!("gateway on {}", spec.network.external_network),
            );
        }
    }
    for group in [&names.nodes_group, &names.control_plane_group] {
        if !observed.security_groups.iter().any(|g| &g.name == group) {
            create("security group", group, String::new());
        }
    }
    if observed.server_groups.is_empty() {
        create("server group", &names.server_group, "anti-affinity".into());
    }
    let wanted = spec.nodes();
    for node in &wanted {
        if !observed.ports.iter().any(|p| p.name == node.name) {
            create("port", &node.name, String::new());
        }
    }
    let first_control_plane = wanted
        .iter()
        .find(|n| n.role == crate::spec::Role::ControlPlane)
        .and_then(|n| observed.ports.iter().find(|p| p.name == n.name));
    match observed
        .floating_ips
        .iter()
        .find(|f| f.description == names.api_address)
    {
        None => create(
            "floating IP",
            &names.api_address,
            format!("from {}", spec.network.external_network),
        ),
        // Detached, or moved to another port: it is pointed at the first control plane again.
        Some(floating) => {
            if let Some(port) = first_control_plane
                && floating.port_id.as_deref() != Some(port.id.as_str())
            {
                repairs.push(Action {
                    action: Verb::Update,
                    kind: "floating IP",
                    name: floating.floating_ip_address.clone(),
                    detail: format!("attach to {}", port.name),
                });
            }
        }
    }
    for node in &wanted {
        if !observed.servers.iter().any(|s| s.name == node.name) {
            let flavor = match node.pool {
                Some(i) => spec
                    .worker_pools
                    .get(i)
                    .map(|p| p.flavor.clone())
                    .unwrap_or_default(),
                None => spec.control_plane.flavor.clone(),
            };
            create("server", &node.name, flavor);
        }
    }
    actions.extend(repairs);
    actions.extend(rule_changes(spec, observed, &names));
    // Scaled down: servers (and their ports) the file no longer names.
    let wanted_names: BTreeSet<&str> = wanted.iter().map(|n| n.name.as_str()).collect();
    for server in observed
        .servers
        .iter()
        .filter(|s| !wanted_names.contains(s.name.as_str()))
    {
        actions.push(Action {
            action: Verb::Delete,
            kind: "server",
            name: server.name.clone(),
            detail: String::new(),
        });
    }
    for port in observed
        .ports
        .iter()
        .filter(|p| !wanted_names.contains(p.name.as_str()))
    {
        actions.push(Action {
            action: Verb::Delete,
            kind: "port",
            name: port.name.clone(),
            detail: String::new(),
        });
    }
    actions
}
