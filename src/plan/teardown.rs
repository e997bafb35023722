//! `down`'s plan: every resource the cluster owns, deleted in the order the cloud allows, as
//! steps the executor runs like `up`'s (each as soon as what it waits for is done). Pure, like
//! the planner: from one observation, the same steps.

use super::resources::Observed;
use super::steps::{Action, Owned, Plan, StepId};
use crate::cloud::volume::Volume;

/// The steps that remove everything in `observed`, and `volumes` (the cluster's persistent
/// volumes) when `delete_volumes`; persistent volumes hold people's data and are otherwise
/// kept.
///
/// The order: the cloud controller's floating IPs, then every load balancer (their members are
/// the nodes, their addresses on the cluster's subnet), then servers; volumes once no server
/// holds them; ports once no server or load balancer uses them; routers once no floating IP
/// needs their gateway; subnets once their ports and router interfaces are gone, networks
/// after their subnets; security groups once no port or server uses them; server groups once
/// empty.
pub(crate) fn teardown(observed: &Observed, volumes: &[Volume], delete_volumes: bool) -> Plan {
    let mut plan = Plan::default();
    let floating = |floating: &crate::cloud::network::FloatingIp| {
        Action::DeleteOwned(Owned::FloatingIp {
            id: floating.id.clone(),
            address: floating.floating_ip_address.clone(),
        })
    };
    let service_addresses: Vec<StepId> = observed
        .service_floating_ips
        .iter()
        .map(|f| plan.push(floating(f), &[]))
        .collect();
    let balancers: Vec<StepId> = observed
        .load_balancers
        .iter()
        .map(|lb| (lb, "the cloud controller made it for a Service"))
        .chain(
            observed
                .api_load_balancers
                .iter()
                .map(|lb| (lb, "the API's")),
        )
        .map(|(lb, because)| {
            plan.push(
                Action::DeleteLoadBalancer {
                    id: lb.id.clone(),
                    name: lb.name.clone(),
                    because,
                },
                &service_addresses,
            )
        })
        .collect();
    let servers: Vec<StepId> = observed
        .servers
        .iter()
        .map(|server| {
            plan.push(
                Action::DeleteServer {
                    id: server.id.clone(),
                    name: server.name.clone(),
                    because: None,
                },
                &balancers,
            )
        })
        .collect();
    if delete_volumes {
        for volume in volumes {
            plan.push(
                Action::DeleteOwned(Owned::Volume {
                    id: volume.id.clone(),
                    name: volume.name.clone().unwrap_or_else(|| volume.id.clone()),
                    size_gb: volume.size,
                }),
                &servers,
            );
        }
    }
    let mut addresses = service_addresses;
    addresses.extend(
        observed
            .floating_ips
            .iter()
            .map(|f| plan.push(floating(f), &[])),
    );
    let users: Vec<StepId> = servers.iter().chain(&balancers).copied().collect();
    let ports: Vec<StepId> = observed
        .ports
        .iter()
        .map(|port| {
            plan.push(
                Action::DeletePort {
                    id: port.id.clone(),
                    name: port.name.clone(),
                },
                &users,
            )
        })
        .collect();
    let subnet_ids: Vec<String> = observed.subnets.iter().map(|s| s.id.clone()).collect();
    let routers: Vec<StepId> = observed
        .routers
        .iter()
        .map(|router| {
            plan.push(
                Action::DeleteOwned(Owned::Router {
                    id: router.id.clone(),
                    name: router.name.clone(),
                    subnets: subnet_ids.clone(),
                }),
                &addresses,
            )
        })
        .collect();
    let before_subnets: Vec<StepId> = ports
        .iter()
        .chain(&routers)
        .chain(&users)
        .copied()
        .collect();
    let subnets: Vec<StepId> = observed
        .subnets
        .iter()
        .map(|subnet| {
            plan.push(
                Action::DeleteOwned(Owned::Subnet {
                    id: subnet.id.clone(),
                    name: subnet.name.clone(),
                    routers: Vec::new(),
                }),
                &before_subnets,
            )
        })
        .collect();
    for network in &observed.networks {
        plan.push(
            Action::DeleteOwned(Owned::Network {
                id: network.id.clone(),
                name: network.name.clone(),
            }),
            &subnets.iter().chain(&ports).copied().collect::<Vec<_>>(),
        );
    }
    let before_groups: Vec<StepId> = ports.iter().chain(&servers).copied().collect();
    for group in &observed.security_groups {
        plan.push(
            Action::DeleteOwned(Owned::SecurityGroup {
                id: group.id.clone(),
                name: group.name.clone(),
            }),
            &before_groups,
        );
    }
    for group in &observed.server_groups {
        plan.push(
            Action::DeleteOwned(Owned::ServerGroup {
                id: group.id.clone(),
                name: group.name.clone(),
            }),
            &servers,
        );
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::load_balancer::LoadBalancer;
    use crate::plan::planner::tests::{converged, with_workers};

    /// Each step waits for exactly what the cloud needs gone first, and for nothing else.
    #[test]
    fn down_deletes_in_the_order_the_cloud_allows() {
        let mut observed = converged(&with_workers(2));
        observed.load_balancers.push(LoadBalancer {
            id: "lb-svc".into(),
            name: "kube_service_demo_ingress_traefik".into(),
            provisioning_status: "ACTIVE".into(),
            vip_address: None,
            vip_port_id: None,
            provider: None,
            shape: None,
        });
        let mut service_address = observed.floating_ips[0].clone();
        service_address.id = "fip-svc".into();
        observed.service_floating_ips.push(service_address);
        let volume = Volume {
            id: "vol-1".into(),
            name: Some("pvc-1".into()),
            status: "available".into(),
            size: 1,
            metadata: Default::default(),
            bootable: String::new(),
            attachments: Vec::new(),
        };
        let plan = teardown(&observed, std::slice::from_ref(&volume), true);
        let shown = plan.shown();
        let find = |kind: &str, name: &str| {
            shown
                .iter()
                .find(|s| s.kind == kind && s.name.contains(name))
                .unwrap_or_else(|| panic!("{kind} {name} in {shown:#?}"))
        };
        let waits_for = |kind: &str, name: &str, other: (&str, &str)| {
            find(kind, name).needs.contains(&find(other.0, other.1).id)
        };
        // Everything observed is deleted once, the volume too.
        assert_eq!(
            shown.len(),
            observed.count() + 1,
            "{:#?}",
            shown.iter().map(|s| (&s.kind, &s.name)).collect::<Vec<_>>()
        );
        assert!(find("volume", "pvc-1").detail == "1 GB");
        assert!(waits_for(
            "load balancer",
            "kube_service",
            ("floating IP", "")
        ));
        assert!(waits_for(
            "server",
            "demo-default-1",
            ("load balancer", "kube_service")
        ));
        assert!(waits_for("volume", "pvc-1", ("server", "demo-default-2")));
        assert!(waits_for(
            "port",
            "demo-default-1",
            ("server", "demo-default-1")
        ));
        assert!(waits_for("router", "demo-router", ("floating IP", "")));
        assert!(waits_for(
            "subnet",
            "demo-subnet",
            ("port", "demo-control-plane-1")
        ));
        assert!(waits_for(
            "subnet",
            "demo-subnet",
            ("router", "demo-router")
        ));
        assert!(waits_for("network", "demo-net", ("subnet", "demo-subnet")));
        assert!(waits_for(
            "security group",
            "demo-nodes",
            ("port", "demo-default-2")
        ));
        assert!(waits_for(
            "server group",
            "demo",
            ("server", "demo-control-plane-1")
        ));
        // Servers go together, not one after another.
        assert!(!waits_for(
            "server",
            "demo-default-2",
            ("server", "demo-default-1")
        ));

        // Volumes are kept unless asked.
        let kept = teardown(&observed, &[volume], false);
        assert!(!kept.shown().iter().any(|s| s.kind == "volume"));
    }
}
