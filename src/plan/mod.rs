//! Planning, pure: what a cluster file asks of a cloud ([`Needs`], for the quota preflight),
//! the cluster's resource names and what the cloud holds of them ([`resources`]), the wanted
//! security-group rules ([`rules`]), and the typed steps ([`steps`]) that the [`planner`]
//! derives from an observation. Nothing here does I/O.

pub(crate) mod duplicates;
pub(crate) mod planner;
pub(crate) mod resources;
pub(crate) mod roster;
pub(crate) mod rules;
pub(crate) mod steps;

use std::collections::BTreeSet;

use crate::cloud::compute::Flavor;
use crate::spec::{ClusterSpec, NetworkMode};

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
        needs.security_groups = SECURITY_GROUPS;
        // All traffic between nodes (IPv4, IPv6), the API and SSH per CIDR, default egress.
        let access = &spec.access;
        needs.security_group_rules =
            2 + (access.api_cidrs.len() + access.ssh_cidrs.len()) as u64 + 2 * SECURITY_GROUPS;
        (needs, missing)
    }

    /// vCPU-hours per hour: Jetstream2 bills allocations in SUs, 1 vCPU-hour = 1 SU.
    pub(crate) fn vcpu_hours_per_hour(&self) -> u64 {
        self.cores
    }
}
