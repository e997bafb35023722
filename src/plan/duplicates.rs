//! Duplicates: two writers that ran `up` on one cluster at once (from two workstations, each
//! with its own lock) leave two of some resources under one name. The planner keeps one of
//! each — the side the cluster's API address uses — and removes the rest.

use super::resources::{Names, Observed};
use crate::cloud::compute::Server;
use crate::cloud::network::{FloatingIp, Network, Port, SecurityGroup};
use crate::spec::ClusterSpec;

/// Splits `observed` into what the cluster keeps (at most one of each name) and the extras
/// (the other resources of its names, in an [`Observed`] of their own).
/// The kept side is the one the API's floating IP points into: its port's network, that
/// network's subnet, the router with an interface there, the groups and server group the kept
/// ports and servers use. Observations are sorted, so the choice is the same every time.
pub(crate) fn split(spec: &ClusterSpec, observed: &Observed) -> (Observed, Observed) {
    let names = Names::of(&spec.name);
    let mut kept = observed.clone();
    let mut extras = Observed::default();
    let port_of = |id: Option<&str>| observed.ports.iter().find(|p| Some(p.id.as_str()) == id);

    // The API address: the one attached to a port, else the first.
    let api_ips: Vec<&FloatingIp> = observed
        .floating_ips
        .iter()
        .filter(|f| f.description == names.api_address)
        .collect();
    let kept_ip = api_ips
        .iter()
        .find(|f| port_of(f.port_id.as_deref()).is_some())
        .or(api_ips.first())
        .map(|f| f.id.clone());
    extras.floating_ips = api_ips
        .iter()
        .filter(|f| Some(&f.id) != kept_ip.as_ref())
        .map(|f| (*f).clone())
        .collect();
    kept.floating_ips
        .retain(|f| f.description != names.api_address || Some(&f.id) == kept_ip.as_ref());

    // The network: the one the API address's port is on, else the first of the name.
    let own_networks: Vec<&Network> = observed
        .networks
        .iter()
        .filter(|n| n.name == names.network)
        .collect();
    let via_address = kept_ip
        .as_deref()
        .and_then(|id| observed.floating_ips.iter().find(|f| f.id == id))
        .and_then(|f| port_of(f.port_id.as_deref()))
        .map(|p| p.network_id.clone());
    let kept_network = own_networks
        .iter()
        .find(|n| Some(&n.id) == via_address.as_ref())
        .or(own_networks.first())
        .map(|n| n.id.clone());
    if own_networks.len() > 1 {
        extras.networks = own_networks
            .iter()
            .filter(|n| Some(&n.id) != kept_network.as_ref())
            .map(|n| (*n).clone())
            .collect();
        kept.networks
            .retain(|n| n.name != names.network || Some(&n.id) == kept_network.as_ref());
        // Ports on another network of the cluster go with it.
        let elsewhere = |p: &Port| extras.networks.iter().any(|n| n.id == p.network_id);
        extras.ports = observed
            .ports
            .iter()
            .filter(|p| elsewhere(p))
            .cloned()
            .collect();
        kept.ports.retain(|p| !elsewhere(p));
    }

    // Ports: one per name, the one a server uses first.
    let mut seen: Vec<String> = Vec::new();
    let by_name = kept.ports.clone();
    kept.ports.clear();
    for port in &by_name {
        if seen.contains(&port.name) {
            continue;
        }
        seen.push(port.name.clone());
        let same: Vec<&Port> = by_name.iter().filter(|p| p.name == port.name).collect();
        // The API's endpoint port has no server: the one the API address points at.
        let api_port = kept_ip
            .as_deref()
            .and_then(|id| observed.floating_ips.iter().find(|f| f.id == id))
            .and_then(|f| f.port_id.as_deref());
        let chosen = same
            .iter()
            .find(|p| Some(p.id.as_str()) == api_port)
            .or_else(|| same.iter().find(|p| p.device_owner.starts_with("compute:")))
            .unwrap_or(&same[0]);
        kept.ports.push((*chosen).clone());
        extras.ports.extend(
            same.iter()
                .filter(|p| p.id != chosen.id)
                .map(|p| (*p).clone()),
        );
    }

    // Servers: one per name, the one on a kept port; a server only on extra ports goes.
    let on_kept_port = |s: &Server| kept.ports.iter().any(|p| p.device_id == s.id);
    let on_extra_port = |s: &Server| extras.ports.iter().any(|p| p.device_id == s.id);
    let mut seen: Vec<String> = Vec::new();
    let mut servers = Vec::new();
    for server in &observed.servers {
        if seen.contains(&server.name) {
            continue;
        }
        seen.push(server.name.clone());
        let same: Vec<&Server> = observed
            .servers
            .iter()
            .filter(|s| s.name == server.name)
            .collect();
        // A failed build only if nothing better has the name: it is rebuilt anyway.
        let chosen = [true, false]
            .into_iter()
            .find_map(|healthy_only| {
                let healthy = |s: &&&Server| !healthy_only || !s.failed_build();
                same.iter()
                    .filter(healthy)
                    .find(|s| on_kept_port(s))
                    .or_else(|| same.iter().filter(healthy).find(|s| !on_extra_port(s)))
            })
            .map(|s| s.id.clone());
        for candidate in same {
            match Some(&candidate.id) == chosen.as_ref() {
                true => servers.push(candidate.clone()),
                false => extras.servers.push(candidate.clone()),
            }
        }
    }
    kept.servers = servers;

    // Subnets on the kept network (the first of the name otherwise), routers with an interface
    // there, the groups the kept ports use, the server group with kept members.
    let kept_subnet = pick(
        &observed.subnets,
        |s| s.name == names.subnet,
        |s| Some(&s.network_id) == kept_network.as_ref(),
    );
    retain_one(
        &mut kept.subnets,
        &mut extras.subnets,
        |s| s.name == names.subnet,
        |s| Some(&s.id) == kept_subnet.as_ref(),
    );
    let kept_router = pick(
        &observed.routers,
        |r| r.name == names.router,
        |r| {
            observed.router_interfaces.iter().any(|p| {
                p.device_id == r.id
                    && p.fixed_ips
                        .iter()
                        .any(|ip| Some(&ip.subnet_id) == kept_subnet.as_ref())
            })
        },
    );
    retain_one(
        &mut kept.routers,
        &mut extras.routers,
        |r| r.name == names.router,
        |r| Some(&r.id) == kept_router.as_ref(),
    );
    for group_name in [&names.nodes_group, &names.control_plane_group] {
        let used = |g: &SecurityGroup| kept.ports.iter().any(|p| p.security_groups.contains(&g.id));
        let chosen = pick(&observed.security_groups, |g| &g.name == group_name, used);
        retain_one(
            &mut kept.security_groups,
            &mut extras.security_groups,
            |g| &g.name == group_name,
            |g| Some(&g.id) == chosen.as_ref(),
        );
    }
    let kept_servers: Vec<&str> = kept.servers.iter().map(|s| s.id.as_str()).collect();
    let chosen = pick(
        &observed.server_groups,
        |_| true,
        |g| g.members.iter().any(|m| kept_servers.contains(&m.as_str())),
    );
    retain_one(
        &mut kept.server_groups,
        &mut extras.server_groups,
        |_| true,
        |g| Some(&g.id) == chosen.as_ref(),
    );
    (kept, extras)
}

/// The ID of the resource of `named` to keep: the first that is `preferred`, else the first.
fn pick<T: crate::cloud::network::HasId>(
    all: &[T],
    named: impl Fn(&T) -> bool,
    preferred: impl Fn(&T) -> bool,
) -> Option<String> {
    let candidates: Vec<&T> = all.iter().filter(|r| named(r)).collect();
    candidates
        .iter()
        .find(|r| preferred(r))
        .or(candidates.first())
        .map(|r| r.id().to_string())
}

/// Moves every resource of `named` that is not `chosen` from `kept` to `extras`.
fn retain_one<T: Clone>(
    kept: &mut Vec<T>,
    extras: &mut Vec<T>,
    named: impl Fn(&T) -> bool,
    chosen: impl Fn(&T) -> bool,
) {
    let (stay, go): (Vec<T>, Vec<T>) = kept.drain(..).partition(|r| !named(r) || chosen(r));
    *kept = stay;
    extras.extend(go);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::test_spec;

    fn server(id: &str, status: &str, launched: bool) -> Server {
        serde_json::from_value(serde_json::json!({
            "id": id,
            "name": "demo-control-plane-1",
            "status": status,
            "OS-SRV-USG:launched_at": launched.then_some("2026-12-03T06:00:00.000000"),
        }))
        .expect("server")
    }

    #[test]
    fn of_two_servers_of_one_name_a_failed_build_is_the_one_that_goes() {
        let spec = test_spec("");
        for (first, second) in [
            (server("a", "ERROR", false), server("b", "ACTIVE", true)),
            (server("b", "ACTIVE", true), server("a", "ERROR", false)),
        ] {
            let observed = Observed {
                servers: vec![first, second],
                ..Observed::default()
            };
            let (kept, extras) = split(&spec, &observed);
            let ids = |o: &Observed| o.servers.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
            assert_eq!(
                (ids(&kept), ids(&extras)),
                (vec!["b".into()], vec!["a".into()])
            );
        }
        // A server that ran and then broke is not a failed build: the first is kept.
        let observed = Observed {
            servers: vec![server("a", "ERROR", true), server("b", "ACTIVE", true)],
            ..Observed::default()
        };
        assert_eq!(split(&spec, &observed).0.servers[0].id, "a");
    }
}
