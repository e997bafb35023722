//! What holds the API's address with 3 or 5 control planes: the kind the file names, or the one
//! flatstack chooses for the cloud, and the shape of the Octavia load balancer when it is one.
//! Octavia has no capability API, so the shape follows the provider's name: amphora gets
//! an HTTPS `/readyz` monitor, hour-long data timeouts and `allowed_cidrs`; OVN supports none
//! of those (TCP monitors, SOURCE_IP_PORT only).

use std::net::Ipv4Addr;

use ipnet::IpNet;

use super::resources::Observed;
use super::steps::Ref;
use crate::spec::{ApiEndpointKind, ClusterSpec, IngressExposure};

/// The endpoint kind the cluster gets, and why: the file's; what the cluster already runs
/// behind; a load balancer where the catalog has Octavia; a VIP otherwise.
pub(crate) fn choose(
    spec: &ClusterSpec,
    observed: &Observed,
    providers: Option<&[String]>,
) -> (ApiEndpointKind, &'static str) {
    let plane = &spec.control_plane;
    if !plane.highly_available() {
        return (ApiEndpointKind::ControlPlane, "one control plane");
    }
    if plane.api_endpoint_given {
        return (plane.api_endpoint, "the cluster file names it");
    }
    if !observed.api_load_balancers.is_empty() {
        return (ApiEndpointKind::LoadBalancer, "the cluster runs behind one");
    }
    if observed
        .ports
        .iter()
        .any(|p| !p.allowed_address_pairs.is_empty())
    {
        return (ApiEndpointKind::Vip, "the cluster runs behind one");
    }
    match providers {
        Some(providers) if !providers.is_empty() => (
            ApiEndpointKind::LoadBalancer,
            "the cloud's catalog has Octavia",
        ),
        _ => (ApiEndpointKind::Vip, "the cloud has no Octavia"),
    }
}

/// Client and member data timeouts of the API's listener: Octavia's 50 s default cuts
/// `kubectl logs -f`, `exec` and port-forward sessions that stay quiet that long.
pub(crate) const DATA_TIMEOUT_MS: u64 = 3_600_000;

/// The Octavia load balancer in front of the control planes, as `up` creates it in one call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LoadBalancerRequest {
    pub(crate) name: String,
    /// The port flatstack made at the API's address.
    pub(crate) vip_port: Ref,
    /// The nodes' subnet, where the members are.
    pub(crate) subnet: Ref,
    /// `amphora`, `ovn`, or the cloud's default.
    pub(crate) provider: Option<String>,
    pub(crate) listeners: Vec<ListenerPlan>,
    /// Every control plane: its name and port.
    pub(crate) members: Vec<(String, Ref)>,
    pub(crate) tags: Vec<String>,
}

/// One TCP listener and its pool of every control plane on the same port.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ListenerPlan {
    pub(crate) port: u16,
    /// Who may connect (amphora only; empty: anyone).
    pub(crate) allowed_cidrs: Vec<String>,
    /// Hour-long data timeouts (amphora only).
    pub(crate) long_timeouts: bool,
    pub(crate) algorithm: &'static str,
    pub(crate) monitor: Monitor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Monitor {
    /// `GET /readyz` over TLS expecting 200 (anonymous under kubeadm's RBAC).
    Readyz,
    /// A TCP connect.
    Tcp,
}

/// The load balancer for `spec`: a listener on 6443, and on 80 and 443 when Traefik binds them
/// on the control planes; `subnet_cidr` (the nodes' range) is always allowed on 6443, since
/// kubelets reach the API through it.
pub(crate) fn request(
    spec: &ClusterSpec,
    providers: &[String],
    vip_port: Ref,
    subnet: Ref,
    subnet_cidr: Option<IpNet>,
    members: Vec<(String, Ref)>,
    tags: Vec<String>,
) -> LoadBalancerRequest {
    let provider = if providers.iter().any(|p| p == "amphora") {
        Some("amphora".to_string())
    } else {
        providers.iter().find(|p| *p == "ovn").cloned()
    };
    let amphora = provider.as_deref() != Some("ovn");
    let allowed = |cidrs: Vec<String>| match amphora && !cidrs.iter().any(|c| c == "0.0.0.0/0") {
        true => cidrs,
        false => Vec::new(),
    };
    // The VIP is IPv4: Octavia refuses CIDRs of another family on its listeners.
    let mut api_cidrs: Vec<String> = spec
        .access
        .api_cidrs
        .iter()
        .filter(|c| c.addr().is_ipv4())
        .map(|c| c.to_string())
        .collect();
    if let Some(cidr) = subnet_cidr {
        api_cidrs.push(cidr.to_string());
    }
    let algorithm = match amphora {
        true => "ROUND_ROBIN",
        false => "SOURCE_IP_PORT",
    };
    let mut listeners = vec![ListenerPlan {
        port: 6443,
        allowed_cidrs: allowed(api_cidrs),
        long_timeouts: amphora,
        algorithm,
        monitor: match amphora {
            true => Monitor::Readyz,
            false => Monitor::Tcp,
        },
    }];
    if serves_ingress(spec) {
        let http: Vec<String> = spec
            .ingress
            .http_cidrs
            .iter()
            .filter(|c| c.addr().is_ipv4())
            .map(|c| c.to_string())
            .collect();
        for port in [80, 443] {
            listeners.push(ListenerPlan {
                port,
                allowed_cidrs: allowed(http.clone()),
                long_timeouts: amphora,
                algorithm,
                monitor: Monitor::Tcp,
            });
        }
    }
    LoadBalancerRequest {
        name: super::resources::Names::of(&spec.name).api_port,
        vip_port,
        subnet,
        provider,
        listeners,
        members,
        tags,
    }
}

impl LoadBalancerRequest {
    /// The `loadbalancer` object of Octavia's create, fully populated, with the addresses
    /// and IDs the steps before made. `routers` are the nodes' routers' external addresses:
    /// a listener that admits only some sources also admits them, as nodes and pods that
    /// reach the API or ingress by the floating IP come back in from there.
    pub(crate) fn body(
        &self,
        vip_port_id: &str,
        subnet_id: &str,
        members: &[(String, Ipv4Addr)],
        routers: &[Ipv4Addr],
    ) -> serde_json::Value {
        let listeners: Vec<serde_json::Value> = self
            .listeners
            .iter()
            .map(|l| {
                let name = format!("{}-{}", self.name, l.port);
                let monitor = match l.monitor {
                    Monitor::Readyz => serde_json::json!({
                        "type": "HTTPS", "http_method": "GET", "url_path": "/readyz",
                        "expected_codes": "200", "delay": 10, "timeout": 5,
                        "max_retries": 3, "max_retries_down": 3,
                    }),
                    Monitor::Tcp => serde_json::json!({
                        "type": "TCP", "delay": 10, "timeout": 5,
                        "max_retries": 3, "max_retries_down": 3,
                    }),
                };
                let mut listener = serde_json::json!({
                    "name": name,
                    "protocol": "TCP",
                    "protocol_port": l.port,
                    "default_pool": {
                        "name": name,
                        "protocol": "TCP",
                        "lb_algorithm": l.algorithm,
                        "healthmonitor": monitor,
                        "members": members.iter().map(|(member, address)| serde_json::json!({
                            "name": member,
                            "address": address.to_string(),
                            "protocol_port": l.port,
                            "subnet_id": subnet_id,
                        })).collect::<Vec<_>>(),
                    },
                });
                if l.long_timeouts {
                    listener["timeout_client_data"] = DATA_TIMEOUT_MS.into();
                    listener["timeout_member_data"] = DATA_TIMEOUT_MS.into();
                }
                if !l.allowed_cidrs.is_empty() {
                    let mut allowed = l.allowed_cidrs.clone();
                    for router in routers {
                        let cidr = format!("{router}/32");
                        if !allowed.contains(&cidr) {
                            allowed.push(cidr);
                        }
                    }
                    listener["allowed_cidrs"] = allowed.into();
                }
                listener
            })
            .collect();
        let mut body = serde_json::json!({
            "name": self.name,
            "description": "flatstack: the Kubernetes API of the control planes",
            "vip_port_id": vip_port_id,
            "tags": self.tags,
            "listeners": listeners,
        });
        if let Some(provider) = &self.provider {
            body["provider"] = provider.clone().into();
        }
        body
    }
}

/// Whether the API's endpoint also carries ingress (80 and 443): Traefik on the control planes.
fn serves_ingress(spec: &ClusterSpec) -> bool {
    spec.addons.ingress && spec.ingress.exposure == IngressExposure::ControlPlane
}

/// How many listeners the API's load balancer has (each with a pool and a health monitor).
pub(crate) fn listener_count(spec: &ClusterSpec) -> u64 {
    match serves_ingress(spec) {
        true => 3,
        false => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::steps::Made;
    use crate::spec::test_spec;

    fn known(id: &str) -> Ref {
        Ref::Known(Made::id(id))
    }

    #[test]
    fn the_endpoint_is_the_files_else_what_runs_else_a_load_balancer_where_octavia_is() {
        let octavia = vec!["amphora".to_string()];
        let three = test_spec("count = 3\n");
        let none = Observed::default();
        assert_eq!(
            choose(&three, &none, Some(&octavia)).0,
            ApiEndpointKind::LoadBalancer
        );
        assert_eq!(choose(&three, &none, None).0, ApiEndpointKind::Vip);
        let vip = test_spec("count = 3\napi_endpoint = \"vip\"\n");
        assert_eq!(
            choose(&vip, &none, Some(&octavia)),
            (ApiEndpointKind::Vip, "the cluster file names it")
        );
        assert_eq!(
            choose(&test_spec(""), &none, Some(&octavia)).0,
            ApiEndpointKind::ControlPlane
        );
    }

    #[test]
    fn amphora_gets_readyz_hour_long_timeouts_and_allowed_cidrs_ovn_none_of_them() {
        let spec = test_spec("count = 3\n[access]\napi_cidrs = [\"198.51.100.0/24\"]\n");
        let members = vec![
            ("demo-control-plane-1".to_string(), known("p1")),
            ("demo-control-plane-2".to_string(), known("p2")),
        ];
        let cidr: Option<IpNet> = "10.42.0.0/24".parse().ok();
        let amphora = request(
            &spec,
            &["ovn".into(), "amphora".into()],
            known("vip"),
            known("s"),
            cidr,
            members.clone(),
            vec!["t".into()],
        );
        let addresses = [
            (
                "demo-control-plane-1".to_string(),
                Ipv4Addr::new(10, 42, 0, 11),
            ),
            (
                "demo-control-plane-2".to_string(),
                Ipv4Addr::new(10, 42, 0, 12),
            ),
        ];
        let router = Ipv4Addr::new(203, 0, 113, 7);
        let body = amphora.body("vip-port", "subnet", &addresses, &[router]);
        assert_eq!(body["provider"], "amphora");
        assert_eq!(body["vip_port_id"], "vip-port");
        let api = &body["listeners"][0];
        assert_eq!(api["protocol_port"], 6443);
        assert_eq!(api["timeout_client_data"], 3_600_000);
        assert_eq!(api["timeout_member_data"], 3_600_000);
        assert_eq!(
            api["allowed_cidrs"],
            serde_json::json!(["198.51.100.0/24", "10.42.0.0/24", "203.0.113.7/32"])
        );
        let pool = &api["default_pool"];
        assert_eq!(pool["lb_algorithm"], "ROUND_ROBIN");
        assert_eq!(pool["healthmonitor"]["type"], "HTTPS");
        assert_eq!(pool["healthmonitor"]["url_path"], "/readyz");
        assert_eq!(pool["members"][1]["address"], "10.42.0.12");
        assert_eq!(pool["members"][1]["subnet_id"], "subnet");
        // Traefik on the control planes: 80 and 443 too, open to `ingress.http_cidrs`.
        let ports: Vec<u64> = body["listeners"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["protocol_port"].as_u64())
            .collect();
        assert_eq!(ports, [6443, 80, 443]);

        let ovn = request(
            &spec,
            &["ovn".into()],
            known("vip"),
            known("s"),
            cidr,
            members,
            vec![],
        );
        let body = ovn.body("vip-port", "subnet", &addresses, &[router]);
        let api = &body["listeners"][0];
        assert_eq!(body["provider"], "ovn");
        assert!(api.get("timeout_client_data").is_none());
        assert!(api.get("allowed_cidrs").is_none());
        assert_eq!(api["default_pool"]["lb_algorithm"], "SOURCE_IP_PORT");
        assert_eq!(api["default_pool"]["healthmonitor"]["type"], "TCP");
    }
}
