//! Which nodes the cluster has and will have. Control planes keep their fixed names. A worker
//! pool's members are the servers named `<cluster>-<pool>-<n>`; a member that runs another
//! flavor or boot disk than its pool asks for is outdated and is replaced by a new node (new
//! node first: it is given the lowest free number of its pool), and a pool with more members
//! than its count loses its outdated members first, then its highest numbers.

use std::collections::{BTreeMap, BTreeSet};

use super::resources::Observed;
use crate::cloud::compute::{Flavor, Server};
use crate::spec::{ClusterSpec, NodeName, PoolUpgrade, Role, WorkerPool};

/// The cluster's nodes once the plan ran, and how it gets there.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Roster {
    /// Every node, kept or new: the control planes, then each pool's by number.
    pub(crate) nodes: Vec<NodeName>,
    /// Outdated servers, each replaced by a new node of its pool, in the order they go.
    pub(crate) replacements: Vec<Replacement>,
    /// Every outdated server (replaced or just removed), with its pool's index.
    pub(crate) outdated: BTreeMap<String, usize>,
}

/// An outdated server and the new node that takes its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Replacement {
    pub(crate) old: String,
    pub(crate) new: String,
    /// What differs, for people: `runs flavor m3.small, the file asks for m3.medium`.
    pub(crate) why: String,
}

/// What the cloud says of the cluster's servers that the roster reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerFacts<'a> {
    pub(crate) servers: &'a [Server],
    pub(crate) flavors: &'a [Flavor],
    /// The size in GB of each volume-booted server's boot volume, by server ID.
    pub(crate) boot_volumes: &'a BTreeMap<String, u64>,
    /// The release the nodes of pools that upgrade by replacement must run, once the control
    /// planes run it (`None` before): nodes that record another are replaced.
    pub(crate) replace_below: Option<crate::pins::KubernetesVersion>,
}

impl<'a> ServerFacts<'a> {
    pub(crate) fn of(observed: &'a Observed, flavors: &'a [Flavor]) -> ServerFacts<'a> {
        ServerFacts {
            servers: &observed.servers,
            flavors,
            boot_volumes: &observed.boot_volumes,
            replace_below: None,
        }
    }
}

/// The roster of `spec` given the servers the cluster has.
pub(crate) fn roster(spec: &ClusterSpec, facts: ServerFacts) -> Roster {
    let mut roster = Roster::default();
    roster.nodes.extend(
        spec.nodes()
            .into_iter()
            .filter(|n| n.role == Role::ControlPlane),
    );
    for (index, pool) in spec.worker_pools.iter().enumerate() {
        let prefix = format!("{}-{}-", spec.name, pool.name);
        let mut members: Vec<(u32, &Server)> = facts
            .servers
            .iter()
            .filter_map(|s| member_number(&s.name, &prefix).map(|n| (n, s)))
            .collect();
        members.sort_by_key(|(n, _)| *n);
        let (current, outdated): (Vec<_>, Vec<_>) = members
            .iter()
            .map(|(n, s)| {
                // A failed build is rebuilt as the pool now asks, in its own place.
                let why = match s.failed_build() {
                    true => None,
                    false => outdated_because(&pool.flavor, pool.boot_volume_gb, s, facts)
                        .or_else(|| replaced_for_release(pool, s, facts)),
                };
                (*n, why)
            })
            .partition(|(_, why)| why.is_none());
        let wanted = pool.count as usize;
        let kept: Vec<u32> = current.iter().take(wanted).map(|(n, _)| *n).collect();
        let mut taken: BTreeSet<u32> = members.iter().map(|(n, _)| *n).collect();
        let mut free = (1..).filter(|n| !taken.contains(n));
        let added: Vec<u32> = free.by_ref().take(wanted - kept.len()).collect();
        taken.extend(&added);
        // The first outdated members are replaced one for one by the new nodes; the new
        // nodes beyond them are plain additions, the outdated beyond them plain removals.
        roster.outdated.extend(
            outdated
                .iter()
                .map(|(n, _)| (format!("{prefix}{n}"), index)),
        );
        for ((old, why), new) in outdated.into_iter().zip(&added) {
            roster.replacements.push(Replacement {
                old: format!("{prefix}{old}"),
                new: format!("{prefix}{new}"),
                why: why.unwrap_or_default(),
            });
        }
        let mut numbers: Vec<u32> = kept.into_iter().chain(added).collect();
        numbers.sort_unstable();
        roster.nodes.extend(numbers.into_iter().map(|n| NodeName {
            name: format!("{prefix}{n}"),
            role: Role::Worker,
            pool: Some(index),
        }));
    }
    roster
}

/// The pool whose member `name` is (`<cluster>-<pool>-<n>`), if any.
pub(crate) fn pool_of<'s>(spec: &'s ClusterSpec, name: &str) -> Option<&'s WorkerPool> {
    spec.worker_pools
        .iter()
        .find(|pool| member_number(name, &format!("{}-{}-", spec.name, pool.name)).is_some())
}

/// `n` when `name` is `<prefix><n>` with `n` a number without leading zeros: pool names are
/// DNS labels, so `<cluster>-<pool>-<n>` belongs to exactly one pool.
fn member_number(name: &str, prefix: &str) -> Option<u32> {
    let digits = name.strip_prefix(prefix)?;
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    canonical.then(|| digits.parse().ok()).flatten()
}

/// Why `server` does not run the flavor (by name or ID) and boot disk asked for, if it does not.
pub(crate) fn outdated_because(
    flavor: &str,
    boot_volume_gb: Option<u32>,
    server: &Server,
    facts: ServerFacts,
) -> Option<String> {
    if let Some(running) = server.flavor_name() {
        let wanted = wanted_flavor_name(flavor, facts.flavors);
        if running != wanted {
            return Some(format!("runs flavor {running}, the file asks for {wanted}"));
        }
    }
    match (server.boots_from_volume(), boot_volume_gb) {
        (false, Some(gb)) => Some(format!(
            "boots from its flavor's disk, the file asks for a {gb} GB volume"
        )),
        (true, None) => {
            Some("boots from a volume, the file asks for the flavor's disk".to_string())
        }
        (true, Some(gb)) => match facts.boot_volumes.get(&server.id) {
            Some(&size) if size != u64::from(gb) => Some(format!(
                "boots from a {size} GB volume, the file asks for {gb} GB"
            )),
            _ => None,
        },
        (false, None) => None,
    }
}

/// Why a node of a pool that upgrades by replacement is replaced: it records another release
/// than the one the control planes already run.
fn replaced_for_release(pool: &WorkerPool, server: &Server, facts: ServerFacts) -> Option<String> {
    let wanted = facts.replace_below?;
    if pool.upgrade != PoolUpgrade::Replace {
        return None;
    }
    let recorded = server
        .metadata
        .get(crate::plan::resources::KUBERNETES_METADATA)
        .and_then(|v| crate::pins::KubernetesVersion::parse(v))?;
    (recorded < wanted).then(|| {
        format!("runs Kubernetes {recorded}; its pool upgrades to {wanted} by replacement")
    })
}

/// The name of the flavor a pool asks for by name or ID (as given when the cloud lacks it).
pub(crate) fn wanted_flavor_name<'a>(wanted: &'a str, flavors: &'a [Flavor]) -> &'a str {
    flavors
        .iter()
        .find(|f| f.id == wanted || f.name == wanted)
        .map_or(wanted, |f| f.name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::test_spec;

    fn server(name: &str, flavor: &str) -> Server {
        serde_json::from_value(serde_json::json!({
            "id": format!("id-{name}"),
            "name": name,
            "status": "ACTIVE",
            "flavor": { "original_name": flavor },
            "image": { "id": "flatcar" },
        }))
        .expect("server")
    }

    fn pool(count: u32, flavor: &str) -> ClusterSpec {
        test_spec(&format!(
            "[[worker_pools]]\nname = \"default\"\ncount = {count}\nflavor = \"{flavor}\"\n"
        ))
    }

    fn names(roster: &Roster) -> Vec<&str> {
        roster.nodes.iter().map(|n| n.name.as_str()).collect()
    }

    fn of(spec: &ClusterSpec, servers: &[Server]) -> Roster {
        roster(
            spec,
            ServerFacts {
                servers,
                flavors: &[],
                boot_volumes: &BTreeMap::new(),
                replace_below: None,
            },
        )
    }

    #[test]
    fn a_new_cluster_numbers_each_pool_from_one() {
        let roster = of(&pool(2, "m3.small"), &[]);
        assert_eq!(
            names(&roster),
            ["demo-control-plane-1", "demo-default-1", "demo-default-2"]
        );
        assert!(roster.replacements.is_empty());
    }

    #[test]
    fn outdated_members_are_replaced_by_the_lowest_free_numbers_one_for_one() {
        let servers = [
            server("demo-control-plane-1", "m3.small"),
            server("demo-default-1", "m3.small"),
            server("demo-default-2", "m3.small"),
        ];
        let roster = of(&pool(2, "m3.medium"), &servers);
        assert_eq!(
            names(&roster),
            ["demo-control-plane-1", "demo-default-3", "demo-default-4"]
        );
        assert_eq!(
            roster.replacements,
            [
                Replacement {
                    old: "demo-default-1".into(),
                    new: "demo-default-3".into(),
                    why: "runs flavor m3.small, the file asks for m3.medium".into(),
                },
                Replacement {
                    old: "demo-default-2".into(),
                    new: "demo-default-4".into(),
                    why: "runs flavor m3.small, the file asks for m3.medium".into(),
                },
            ]
        );
        // Half-way (the first replaced): the rest goes on with the next free number.
        let halfway = [
            server("demo-default-2", "m3.small"),
            server("demo-default-3", "m3.medium"),
        ];
        let roster = of(&pool(2, "m3.medium"), &halfway);
        assert_eq!(
            names(&roster),
            ["demo-control-plane-1", "demo-default-1", "demo-default-3"]
        );
        assert_eq!(roster.replacements.len(), 1);
        assert_eq!(roster.replacements[0].old, "demo-default-2");
        assert_eq!(roster.replacements[0].new, "demo-default-1");
    }

    #[test]
    fn a_shrinking_pool_loses_outdated_members_without_replacing_them() {
        let servers = [
            server("demo-default-1", "m3.medium"),
            server("demo-default-2", "m3.small"),
            server("demo-default-3", "m3.medium"),
        ];
        let roster = of(&pool(2, "m3.medium"), &servers);
        assert_eq!(
            names(&roster),
            ["demo-control-plane-1", "demo-default-1", "demo-default-3"]
        );
        assert!(roster.replacements.is_empty());
        // Fewer still: the highest number goes.
        let roster = of(&pool(1, "m3.medium"), &servers);
        assert_eq!(names(&roster), ["demo-control-plane-1", "demo-default-1"]);
    }

    #[test]
    fn membership_is_by_exact_pattern_so_pools_sharing_a_prefix_stay_apart() {
        let spec = test_spec(
            "[[worker_pools]]\nname = \"a\"\ncount = 1\nflavor = \"f\"\n[[worker_pools]]\nname = \"a-1\"\ncount = 1\nflavor = \"f\"\n",
        );
        let servers = [
            server("demo-a-1-1", "f"),
            server("demo-a-01", "f"),
            server("demo-a-1", "f"),
        ];
        let roster = of(&spec, &servers);
        assert_eq!(
            names(&roster),
            ["demo-control-plane-1", "demo-a-1", "demo-a-1-1"]
        );
        assert_eq!(member_number("demo-a-01", "demo-a-"), None);
        assert_eq!(member_number("demo-a-", "demo-a-"), None);
    }

    #[test]
    fn a_changed_boot_disk_makes_a_member_outdated() {
        let mut on_volume = server("demo-default-1", "m3.small");
        on_volume.image = serde_json::json!("");
        let plain = server("demo-default-2", "m3.small");
        let sizes = BTreeMap::from([(on_volume.id.clone(), 20)]);

        let spec = |extra: &str| {
            test_spec(&format!(
                "[[worker_pools]]\nname = \"default\"\ncount = 1\nflavor = \"m3.small\"\n{extra}"
            ))
        };
        let why = |spec: &ClusterSpec, s: &Server| {
            let servers = std::slice::from_ref(s);
            let facts = ServerFacts {
                servers,
                flavors: &[],
                boot_volumes: &sizes,
                replace_below: None,
            };
            roster(spec, facts)
                .replacements
                .first()
                .map(|r| r.why.clone())
        };
        assert_eq!(
            why(&spec("boot_volume_gb = 40\n"), &on_volume).as_deref(),
            Some("boots from a 20 GB volume, the file asks for 40 GB")
        );
        assert_eq!(why(&spec("boot_volume_gb = 20\n"), &on_volume), None);
        assert_eq!(
            why(&spec(""), &on_volume).as_deref(),
            Some("boots from a volume, the file asks for the flavor's disk")
        );
        assert_eq!(
            why(&spec("boot_volume_gb = 40\n"), &plain).as_deref(),
            Some("boots from its flavor's disk, the file asks for a 40 GB volume")
        );
        assert_eq!(why(&spec(""), &plain), None);
    }
}
