//! The ingress rules of a cluster's two security groups, as the cluster file asks for them:
//! every node open to every other (flannel's VXLAN included) and to `ssh_cidrs` on 22; the
//! control planes to `api_cidrs` on 6443 and, with Traefik on them, to `ingress.http_cidrs` on
//! 80 and 443; every node's NodePorts when Traefik sits behind a load balancer. `up` makes the
//! groups hold exactly these; `plan` shows the difference.

use ipnet::IpNet;

use crate::cloud::network::SecurityGroupRule;
use crate::spec::{ApiEndpointKind, ClusterSpec, IngressExposure};

/// Kubernetes' default NodePort range.
pub(crate) const NODE_PORTS: (u16, u16) = (30000, 32767);

/// The rules each group should hold.
#[derive(Debug, Clone, Default)]
pub(crate) struct WantedRules {
    pub(crate) nodes: Vec<SecurityGroupRule>,
    pub(crate) control_planes: Vec<SecurityGroupRule>,
}

/// The rules for `spec`; `nodes_group_id` is the nodes' group (its members reach each other),
/// `subnet_cidr` the nodes' subnet, where a load balancer's health checks and traffic come from.
pub(crate) fn wanted_rules(
    spec: &ClusterSpec,
    nodes_group_id: &str,
    subnet_cidr: Option<IpNet>,
) -> WantedRules {
    let mut nodes: Vec<SecurityGroupRule> = ["IPv4", "IPv6"]
        .into_iter()
        .map(|ethertype| SecurityGroupRule {
            direction: "ingress".into(),
            ethertype: ethertype.into(),
            remote_group_id: Some(nodes_group_id.to_string()),
            ..Default::default()
        })
        .collect();
    nodes.extend(
        spec.access
            .ssh_cidrs
            .iter()
            .map(|cidr| tcp_rule(22, 22, cidr)),
    );
    let mut control_planes: Vec<SecurityGroupRule> = spec
        .access
        .api_cidrs
        .iter()
        .map(|cidr| tcp_rule(6443, 6443, cidr))
        .collect();
    let traefik_on_control_planes =
        spec.addons.ingress && spec.ingress.exposure == IngressExposure::ControlPlane;
    // Behind the API's load balancer, its amphorae (or OVN's health checks) reach the control
    // planes from the nodes' subnet, whatever `api_cidrs` says.
    if spec.control_plane.api_endpoint == ApiEndpointKind::LoadBalancer
        && let Some(cidr) = &subnet_cidr
    {
        control_planes.push(tcp_rule(6443, 6443, cidr));
        if traefik_on_control_planes {
            control_planes.push(tcp_rule(80, 80, cidr));
            control_planes.push(tcp_rule(443, 443, cidr));
        }
    }
    if spec.addons.ingress {
        match spec.ingress.exposure {
            IngressExposure::ControlPlane => {
                for cidr in &spec.ingress.http_cidrs {
                    control_planes.push(tcp_rule(80, 80, cidr));
                    control_planes.push(tcp_rule(443, 443, cidr));
                }
            }
            // Octavia's amphorae reach the node ports from the subnet; providers that keep
            // the client's address, from where clients are.
            IngressExposure::LoadBalancer => {
                for cidr in subnet_cidr.iter().chain(&spec.ingress.http_cidrs) {
                    nodes.push(tcp_rule(NODE_PORTS.0, NODE_PORTS.1, cidr));
                }
            }
        }
    }
    // One of each: Neutron refuses a second identical rule, so a repeat would be planned
    // again every run.
    for rules in [&mut nodes, &mut control_planes] {
        let mut seen = Vec::new();
        rules.retain(|r| {
            let new = !seen.contains(r);
            if new {
                seen.push(r.clone());
            }
            new
        });
    }
    WantedRules {
        nodes,
        control_planes,
    }
}

pub(crate) fn tcp_rule(min: u16, max: u16, cidr: &IpNet) -> SecurityGroupRule {
    SecurityGroupRule {
        direction: "ingress".into(),
        ethertype: if cidr.addr().is_ipv4() {
            "IPv4"
        } else {
            "IPv6"
        }
        .into(),
        protocol: Some("tcp".into()),
        port_range_min: Some(min),
        port_range_max: Some(max),
        remote_ip_prefix: Some(cidr.to_string()),
        ..Default::default()
    }
}

/// Whether two rules allow the same traffic (IDs and defaults aside).
fn same_rule(have: &SecurityGroupRule, want: &SecurityGroupRule) -> bool {
    have.direction == want.direction
        && have.ethertype == want.ethertype
        && have.protocol == want.protocol
        && have.port_range_min == want.port_range_min
        && have.port_range_max == want.port_range_max
        && have.remote_ip_prefix == want.remote_ip_prefix
        && have.remote_group_id == want.remote_group_id
}

/// What separates a group's rules from the wanted ones: the wanted rules it lacks, and the
/// ingress rules it holds that are not wanted (every ingress rule of flatstack's groups is
/// flatstack's; egress rules are Neutron's defaults and stay).
pub(crate) fn rule_diff<'a>(
    have: &'a [SecurityGroupRule],
    want: &'a [SecurityGroupRule],
) -> (Vec<&'a SecurityGroupRule>, Vec<&'a SecurityGroupRule>) {
    let missing = want
        .iter()
        .filter(|w| !have.iter().any(|h| same_rule(h, w)))
        .collect();
    let stale = have
        .iter()
        .filter(|h| h.direction == "ingress" && !want.iter().any(|w| same_rule(h, w)))
        .collect();
    (missing, stale)
}

/// A rule in a few words: `tcp 80 from 0.0.0.0/0`, `any from the group`.
pub(crate) fn describe(rule: &SecurityGroupRule) -> String {
    let protocol = rule.protocol.as_deref().unwrap_or("any");
    let ports = match (rule.port_range_min, rule.port_range_max) {
        (Some(min), Some(max)) if min == max => format!(" {min}"),
        (Some(min), Some(max)) => format!(" {min}-{max}"),
        _ => String::new(),
    };
    let from = match (&rule.remote_ip_prefix, &rule.remote_group_id) {
        (Some(prefix), _) => prefix.clone(),
        (None, Some(_)) => "the group".into(),
        (None, None) => "anywhere".into(),
    };
    format!("{protocol}{ports} from {from} ({})", rule.ethertype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ApiEndpointKind;
    use crate::spec::test_spec as spec;

    fn described(rules: &[SecurityGroupRule]) -> Vec<String> {
        rules.iter().map(describe).collect()
    }

    #[test]
    fn traefik_on_control_planes_opens_80_and_443_there_only() {
        let wanted = wanted_rules(
            &spec("[ingress]\nhttp_cidrs = [\"192.0.2.0/24\"]\n"),
            "g1",
            None,
        );
        assert_eq!(
            described(&wanted.control_planes),
            [
                "tcp 6443 from 0.0.0.0/0 (IPv4)",
                "tcp 80 from 192.0.2.0/24 (IPv4)",
                "tcp 443 from 192.0.2.0/24 (IPv4)"
            ]
        );
        assert_eq!(
            described(&wanted.nodes),
            ["any from the group (IPv4)", "any from the group (IPv6)"]
        );
    }

    #[test]
    fn behind_a_load_balancer_node_ports_open_to_the_subnet_and_clients() {
        let wanted = wanted_rules(
            &spec("[ingress]\nexposure = \"load-balancer\"\nhttp_cidrs = [\"192.0.2.0/24\"]\n"),
            "g1",
            "10.42.0.0/24".parse().ok(),
        );
        assert_eq!(
            described(&wanted.control_planes),
            ["tcp 6443 from 0.0.0.0/0 (IPv4)"]
        );
        assert_eq!(
            described(&wanted.nodes)[2..],
            [
                "tcp 30000-32767 from 10.42.0.0/24 (IPv4)",
                "tcp 30000-32767 from 192.0.2.0/24 (IPv4)"
            ]
        );
    }

    #[test]
    fn no_ingress_no_web_ports() {
        let wanted = wanted_rules(&spec("[addons]\ningress = false\n"), "g1", None);
        assert_eq!(
            described(&wanted.control_planes),
            ["tcp 6443 from 0.0.0.0/0 (IPv4)"]
        );
        assert_eq!(wanted.nodes.len(), 2);
    }

    /// Behind the API's load balancer the nodes' subnet reaches 6443 (and 80/443) on the
    /// control planes; a rule the file already asks for is not doubled.
    #[test]
    fn behind_the_apis_load_balancer_the_subnet_reaches_the_control_planes_once() {
        let subnet: Option<IpNet> = "10.42.0.0/24".parse().ok();
        let mut behind = spec("[access]\napi_cidrs = [\"198.51.100.0/24\", \"10.42.0.0/24\"]\n");
        behind.control_plane.api_endpoint = ApiEndpointKind::LoadBalancer;
        let rules: Vec<String> = wanted_rules(&behind, "g1", subnet)
            .control_planes
            .iter()
            .map(describe)
            .collect();
        assert_eq!(
            rules
                .iter()
                .filter(|r| r.as_str() == "tcp 6443 from 10.42.0.0/24 (IPv4)")
                .count(),
            1,
            "{rules:?}"
        );
        assert!(
            rules.contains(&"tcp 443 from 10.42.0.0/24 (IPv4)".to_string()),
            "{rules:?}"
        );
    }
}
