//! Planning, pure: what a cluster file asks of a cloud ([`Needs`], for the quota preflight),
//! the cluster's resource names and what the cloud holds of them ([`resources`]), the wanted
//! security-group rules ([`rules`]), and the typed steps ([`steps`]) that the [`planner`]
//! derives from an observation, and `down`'s ([`teardown`]). Nothing here does I/O.

pub(crate) mod duplicates;
pub(crate) mod endpoint;
pub(crate) mod kube_view;
pub(crate) mod planner;
pub(crate) mod resources;
pub(crate) mod roster;
pub(crate) mod rules;
pub(crate) mod steps;
pub(crate) mod teardown;
pub mod versions;

use std::collections::BTreeSet;

use ipnet::IpNet;

use crate::cloud::compute::Flavor;
use crate::spec::{ApiEndpointKind, ClusterSpec, IngressExposure, NetworkMode};

/// Resources a cluster consumes from the project's quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Needs {
    pub(crate) instances: u64,
    pub(crate) cores: u64,
    pub(crate) ram_mib: u64,
    pub(crate) volumes: u64,
    pub(crate) volume_gb: u64,
    pub(crate) floating_ips: u64,
    pub(crate) networks: u64,
    pub(crate) subnets: u64,
    pub(crate) routers: u64,
    pub(crate) ports: u64,
    pub(crate) security_groups: u64,
    pub(crate) security_group_rules: u64,
    pub(crate) server_groups: u64,
    /// Octavia's: the API's load balancer, and the cloud controller's for ingress.
    pub(crate) load_balancers: u64,
    pub(crate) listeners: u64,
    pub(crate) pools: u64,
    pub(crate) health_monitors: u64,
    pub(crate) members: u64,
}

/// Security groups flatstack makes: one for every node, one for control planes.
pub(crate) const SECURITY_GROUPS: u64 = 2;

impl Needs {
    /// The needs of `spec`, and the flavors it names that `flavors` lacks (whose servers are
    /// then left out of the counts).
    pub(crate) fn of(spec: &ClusterSpec, flavors: &[Flavor]) -> (Needs, BTreeSet<String>) {
        let mut missing = BTreeSet::new();
        let mut needs = Needs::default();
        let groups = std::iter::once((
            spec.control_plane.count,
            &spec.control_plane.flavor,
            spec.control_plane.boot_volume_gb,
        ))
        .chain(
            spec.worker_pools
                .iter()
                .map(|p| (p.count, &p.flavor, p.boot_volume_gb)),
        );
        for (count, flavor_name, boot_volume) in groups {
            let count = u64::from(count);
            match flavors
                .iter()
                .find(|f| &f.name == flavor_name || &f.id == flavor_name)
            {
                Some(flavor) => {
                    needs.instances += count;
                    needs.cores += count * u64::from(flavor.vcpus);
                    needs.ram_mib += count * flavor.ram;
                }
                None => {
                    missing.insert(flavor_name.clone());
                }
            }
            if let Some(gb) = boot_volume {
                needs.volumes += count;
                needs.volume_gb += count * u64::from(gb);
            }
        }
        needs.ports = needs.instances;
        needs.floating_ips = 1;
        needs.server_groups = 1;
        if spec.network.mode == NetworkMode::Create {
            needs.networks = 1;
            needs.subnets = 1;
            needs.routers = 1;
            // The router's interface on the node subnet.
            needs.ports += 1;
        }
        if spec.control_plane.highly_available() {
            // The endpoint's port, at the API's address.
            needs.ports += 1;
        }
        if spec.control_plane.api_endpoint == ApiEndpointKind::LoadBalancer {
            needs.add_api_load_balancer(
                endpoint::listener_count(spec),
                u64::from(spec.control_plane.count),
            );
        }
        if spec.addons.ingress && spec.ingress.exposure == IngressExposure::LoadBalancer {
            // The cloud controller's for Traefik's Service: 80 and 443, a pool each with
            // every worker (kubeadm excludes control planes from external load balancers),
            // no monitors (flatstack's cloud.conf does not ask for them).
            let workers: u64 = spec.worker_pools.iter().map(|p| u64::from(p.count)).sum();
            needs.load_balancers += 1;
            needs.listeners += 2;
            needs.pools += 2;
            needs.members += 2 * workers;
        }
        needs.security_groups = SECURITY_GROUPS;
        // The rules flatstack wants, and Neutron's default egress (IPv4, IPv6) in each group.
        // A reused subnet's CIDR is unknown here: counted as one no other rule repeats.
        let subnet =
            spec.network
                .node_cidr
                .map(IpNet::V4)
                .unwrap_or(IpNet::V4(ipnet::Ipv4Net::from(
                    std::net::Ipv4Addr::UNSPECIFIED,
                )));
        let wanted = rules::wanted_rules(spec, "nodes", Some(subnet));
        needs.security_group_rules =
            (wanted.nodes.len() + wanted.control_planes.len()) as u64 + 2 * SECURITY_GROUPS;
        (needs, missing)
    }

    /// What `plan` adds to an existing cluster's use of the quotas at its peak: everything it
    /// creates, except that a server made only once a deletion it waits for is done (a
    /// rolling replacement's later lanes, a failed build rebuilt) takes an instance the
    /// deleted one gave back, and counts only the vCPUs and RAM its flavor has beyond that one's.
    pub(crate) fn growth(
        plan: &steps::Plan,
        observed: &resources::Observed,
        flavors: &[Flavor],
    ) -> Needs {
        use steps::Action;
        let flavor = |name: &str| flavors.iter().find(|f| f.name == name || f.id == name);
        let size = |name: Option<&str>| {
            name.and_then(flavor)
                .map_or((0, 0), |f| (u64::from(f.vcpus), f.ram))
        };
        let mut needs = Needs::default();
        for step in &plan.steps {
            match &step.action {
                Action::CreateServer(server) => {
                    let (cores, ram) = size(Some(&server.flavor_name));
                    let freed = step
                        .needs
                        .iter()
                        .find_map(|id| match &plan.steps[*id].action {
                            Action::DeleteServer { id, .. } => {
                                observed.servers.iter().find(|s| &s.id == id)
                            }
                            _ => None,
                        });
                    match freed {
                        None => {
                            needs.instances += 1;
                            needs.cores += cores;
                            needs.ram_mib += ram;
                        }
                        Some(old) => {
                            let (old_cores, old_ram) = size(old.flavor_name());
                            needs.cores += cores.saturating_sub(old_cores);
                            needs.ram_mib += ram.saturating_sub(old_ram);
                        }
                    }
                    let new_volume = freed.is_none_or(|old| !old.boots_from_volume());
                    if let (Some(gb), true) = (server.boot_volume_gb, new_volume) {
                        needs.volumes += 1;
                        needs.volume_gb += u64::from(gb);
                    }
                }
                // A router interface is a port too.
                Action::CreatePort(_) | Action::AddRouterInterface { .. } => needs.ports += 1,
                Action::CreateFloatingIp { .. } => needs.floating_ips += 1,
                Action::CreateNetwork { .. } => needs.networks += 1,
                Action::CreateSubnet(_) => needs.subnets += 1,
                Action::CreateRouter { .. } => needs.routers += 1,
                Action::CreateSecurityGroup { .. } => needs.security_groups += 1,
                Action::AddRule(_) => needs.security_group_rules += 1,
                Action::CreateServerGroup { .. } => needs.server_groups += 1,
                Action::CreateLoadBalancer(balancer) => needs.add_api_load_balancer(
                    balancer.listeners.len() as u64,
                    balancer.members.len() as u64,
                ),
                Action::RepairLoadBalancer {
                    request, repairs, ..
                } => needs.add_load_balancer_repairs(request, repairs, observed),
                _ => {}
            }
        }
        needs
    }

    /// What putting a running load balancer back in shape adds: listeners, pools and
    /// monitors made, and pool members beyond those it has.
    fn add_load_balancer_repairs(
        &mut self,
        request: &endpoint::LoadBalancerRequest,
        repairs: &[endpoint::Repair],
        observed: &resources::Observed,
    ) {
        use endpoint::Repair;
        let wanted = request.members.len() as u64;
        let has = |pool_id: &str| {
            observed
                .api_load_balancers
                .iter()
                .filter_map(|lb| lb.shape.as_ref())
                .flat_map(|shape| &shape.listeners)
                .filter_map(|l| l.pool.as_ref())
                .find(|p| p.id == pool_id)
                .map_or(0, |p| p.members.len() as u64)
        };
        for repair in repairs {
            match repair {
                Repair::AddListener(_) => {
                    self.listeners += 1;
                    self.pools += 1;
                    self.health_monitors += 1;
                    self.members += wanted;
                }
                Repair::AddPool { .. } => {
                    self.pools += 1;
                    self.health_monitors += 1;
                    self.members += wanted;
                }
                Repair::AddMonitor { .. } => self.health_monitors += 1,
                Repair::SetMembers { pool_id, .. } => {
                    self.members += wanted.saturating_sub(has(pool_id));
                }
                Repair::UpdateListener { .. }
                | Repair::RemovePool { .. }
                | Repair::RemoveListener { .. } => {}
            }
        }
    }

    /// The API's load balancer: `listeners`, each with a pool and a health monitor holding
    /// every one of `members`.
    fn add_api_load_balancer(&mut self, listeners: u64, members: u64) {
        self.load_balancers += 1;
        self.listeners += listeners;
        self.pools += listeners;
        self.health_monitors += listeners;
        self.members += listeners * members;
    }

    /// Whether it asks for nothing at all.
    pub(crate) fn is_zero(&self) -> bool {
        *self == Needs::default()
    }

    /// vCPU-hours per hour: Jetstream2 bills allocations in SUs, 1 vCPU-hour = 1 SU.
    pub(crate) fn vcpu_hours_per_hour(&self) -> u64 {
        self.cores
    }
}
