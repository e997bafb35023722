//! `[network]`: a network to create or reuse, the node, pod and service ranges, DNS servers.

use super::*;

pub(super) fn read_network(t: Option<Table<'_, '_>>, p: &mut Problems) -> Option<NetworkSpec> {
    let Some(mut t) = t else {
        return Some(default_network());
    };
    let existing_network = t.string("existing_network", p);
    let existing_subnet = t.string("existing_subnet", p);
    let existing_router = t.string("existing_router", p);
    let external_network = t.string("external_network", p);
    let node_cidr = t.string("node_cidr", p);
    let pod_cidr = t.string("pod_cidr", p);
    let service_cidr = t.string("service_cidr", p);
    let dns_servers = t.strings("dns_servers", p).unwrap_or_default();
    t.finish(p);

    let defaults = default_network();
    let mode = match existing_network {
        Some(network) => NetworkMode::Reuse {
            network: network.into_inner(),
            subnet: existing_subnet.map(At::into_inner),
            router: existing_router.map(At::into_inner),
        },
        None => {
            for orphan in [&existing_subnet, &existing_router].into_iter().flatten() {
                p.error(
                    orphan.span(),
                    "an existing subnet or router needs `network.existing_network` too",
                    "name the existing network the nodes should join, or remove this key to let flatstack create one",
                );
            }
            NetworkMode::Create
        }
    };
    let node_cidr = match (&mode, node_cidr) {
        (_, Some(text)) => Some(parse_ipv4_cidr(&text, "network.node_cidr", p)?),
        (NetworkMode::Create, None) => defaults.node_cidr,
        (NetworkMode::Reuse { .. }, None) => None,
    };
    let pod_cidr = match pod_cidr {
        Some(text) => parse_ipv4_cidr(&text, "network.pod_cidr", p),
        None => Some(defaults.pod_cidr),
    };
    let service_cidr = match service_cidr {
        Some(text) => {
            let cidr = parse_ipv4_cidr(&text, "network.service_cidr", p);
            if let Some(c) = cidr
                && !(12..=28).contains(&c.prefix_len())
            {
                p.error(
                    text.span(),
                    format!(
                        "`network.service_cidr` {c} has a /{} prefix",
                        c.prefix_len()
                    ),
                    "kube-apiserver takes a service range from /12 (largest) to /28",
                );
            }
            cidr
        }
        None => Some(defaults.service_cidr),
    };
    let mut dns = Vec::new();
    for server in &dns_servers {
        match server.get_ref().parse::<IpAddr>() {
            Ok(ip) if dns.contains(&ip) => p.error(
                server.span(),
                format!("`{ip}` is listed twice in `network.dns_servers`"),
                "Neutron refuses a subnet with a duplicate DNS server: list each once",
            ),
            Ok(ip) => dns.push(ip),
            Err(_) => p.error(
                server.span(),
                format!(
                    "`{}` in `network.dns_servers` is not an IP address",
                    server.get_ref()
                ),
                "write addresses such as \"8.8.8.8\"",
            ),
        }
    }
    Some(NetworkSpec {
        mode,
        external_network: match external_network {
            Some(n) if n.get_ref().trim().is_empty() => {
                p.error(
                    n.span(),
                    "`network.external_network` is empty",
                    "name the network floating IPs come from, e.g. `public`",
                );
                return None;
            }
            Some(n) => n.into_inner(),
            None => defaults.external_network,
        },
        node_cidr,
        pod_cidr: pod_cidr?,
        service_cidr: service_cidr?,
        dns_servers: dns,
    })
}

pub(super) fn default_network() -> NetworkSpec {
    NetworkSpec {
        mode: NetworkMode::Create,
        external_network: "public".to_string(),
        node_cidr: "10.42.0.0/24".parse().ok(),
        pod_cidr: Ipv4Net::new(std::net::Ipv4Addr::new(10, 244, 0, 0), 16).unwrap_or_default(),
        service_cidr: Ipv4Net::new(std::net::Ipv4Addr::new(10, 96, 0, 0), 12).unwrap_or_default(),
        dns_servers: Vec::new(),
    }
}

/// Why no cluster address may come from `cidr`: loopback, link-local (where the metadata
/// service answers), multicast, "this network", broadcast or reserved space.
pub(super) fn reserved_range(cidr: Ipv4Net) -> Option<&'static str> {
    let reserved: [(&str, [u8; 4], u8); 5] = [
        ("\"this network\" (0.0.0.0/8)", [0, 0, 0, 0], 8),
        ("loopback (127.0.0.0/8)", [127, 0, 0, 0], 8),
        (
            "link-local space (169.254.0.0/16, where the metadata service answers)",
            [169, 254, 0, 0],
            16,
        ),
        ("multicast (224.0.0.0/4)", [224, 0, 0, 0], 4),
        (
            "reserved space (240.0.0.0/4, broadcast included)",
            [240, 0, 0, 0],
            4,
        ),
    ];
    reserved.into_iter().find_map(|(why, octets, prefix)| {
        let range = Ipv4Net::new(octets.into(), prefix).ok()?;
        (range.contains(&cidr) || cidr.contains(&range)).then_some(why)
    })
}

pub(super) fn parse_cidr(text: &At<String>, key: &str, p: &mut Problems) -> Option<IpNet> {
    let s = text.get_ref();
    match s.parse::<IpNet>() {
        Ok(net) if net.network() == net.addr() => Some(net),
        Ok(net) => {
            p.error(
                text.span(),
                format!("`{s}` in `{key}` has host bits set"),
                format!("did you mean {}?", net.trunc()),
            );
            None
        }
        Err(_) => {
            p.error(
                text.span(),
                format!("`{s}` in `{key}` is not a CIDR range"),
                "write ranges as address/prefix, e.g. \"203.0.113.0/24\" or \"0.0.0.0/0\"",
            );
            None
        }
    }
}

pub(super) fn parse_ipv4_cidr(text: &At<String>, key: &str, p: &mut Problems) -> Option<Ipv4Net> {
    match parse_cidr(text, key, p)? {
        IpNet::V4(net) => Some(net),
        IpNet::V6(_) => {
            p.error(
                text.span(),
                format!("`{key}` must be an IPv4 range"),
                "IPv6 node, pod and service ranges are not supported yet",
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn ranges_and_dns_servers_are_read_with_defaults() {
        let spec = with("").expect("valid");
        assert_eq!(spec.network.external_network, "public");
        assert_eq!(
            spec.network.node_cidr.map(|c| c.to_string()).as_deref(),
            Some("10.42.0.0/24")
        );
        let spec = with("[network]\ndns_servers = [\"1.1.1.1\"]\n").expect("valid");
        assert_eq!(spec.network.dns_servers.len(), 1);
    }

    #[test]
    fn reserved_ranges_and_repeated_servers_are_refused() {
        let loopback = problems("[network]\nnode_cidr = \"127.0.0.0/24\"\n");
        assert!(loopback[0].contains("127.0.0.0/24"), "{loopback:?}");
        assert_eq!(
            problems("[network]\ndns_servers = [\"1.1.1.1\", \"1.1.1.1\"]\n"),
            ["`1.1.1.1` is listed twice in `network.dns_servers`"]
        );
    }
}
