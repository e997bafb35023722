//! What holds the API's address with 3 or 5 control planes: the kind the file names, or the one
//! flatstack chooses for the cloud, and the shape of the Octavia load balancer when it is one.
//! Octavia has no capability API, so the shape follows the provider's name: amphora gets
//! an HTTPS `/readyz` monitor, hour-long data timeouts and `allowed_cidrs`; OVN supports none
//! of those (TCP monitors, SOURCE_IP_PORT only).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::IpNet;

use super::resources::Observed;
use super::steps::Ref;
use crate::cloud::load_balancer::Shape;
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
    /// and IDs the steps before made (see [`LoadBalancerRequest::listener_body`] for
    /// `routers`).
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
                let mut pool = self.pool_body(l);
                pool["healthmonitor"] = self.monitor_body(l);
                pool["members"] = self.member_bodies(l, subnet_id, members);
                let mut listener = self.listener_body(l, routers);
                listener["default_pool"] = pool;
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

    /// The name of the listener on `port`, of its pool and of its monitor.
    pub(crate) fn part_name(&self, port: u16) -> String {
        format!("{}-{port}", self.name)
    }

    /// Who may connect to `listener` (empty: anyone). `routers` are the nodes' routers'
    /// external addresses: a listener that admits only some sources also admits them, as
    /// nodes and pods that reach the API or ingress by the floating IP come back in from there.
    pub(crate) fn allowed_cidrs(
        &self,
        listener: &ListenerPlan,
        routers: &[Ipv4Addr],
    ) -> Vec<String> {
        let mut allowed = listener.allowed_cidrs.clone();
        if !allowed.is_empty() {
            for router in routers {
                let cidr = format!("{router}/32");
                if !allowed.contains(&cidr) {
                    allowed.push(cidr);
                }
            }
        }
        allowed
    }

    /// A TCP listener, without its pool.
    pub(crate) fn listener_body(
        &self,
        l: &ListenerPlan,
        routers: &[Ipv4Addr],
    ) -> serde_json::Value {
        let mut listener = serde_json::json!({
            "name": self.part_name(l.port),
            "protocol": "TCP",
            "protocol_port": l.port,
        });
        if l.long_timeouts {
            listener["timeout_client_data"] = DATA_TIMEOUT_MS.into();
            listener["timeout_member_data"] = DATA_TIMEOUT_MS.into();
        }
        let allowed = self.allowed_cidrs(l, routers);
        if !allowed.is_empty() {
            listener["allowed_cidrs"] = allowed.into();
        }
        listener
    }

    /// A listener's pool, without its monitor and members.
    pub(crate) fn pool_body(&self, l: &ListenerPlan) -> serde_json::Value {
        serde_json::json!({
            "name": self.part_name(l.port),
            "protocol": "TCP",
            "lb_algorithm": l.algorithm,
        })
    }

    /// A pool's health monitor.
    pub(crate) fn monitor_body(&self, l: &ListenerPlan) -> serde_json::Value {
        let name = self.part_name(l.port);
        match l.monitor {
            Monitor::Readyz => serde_json::json!({
                "name": name, "type": "HTTPS", "http_method": "GET", "url_path": "/readyz",
                "expected_codes": "200", "delay": 10, "timeout": 5,
                "max_retries": 3, "max_retries_down": 3,
            }),
            Monitor::Tcp => serde_json::json!({
                "name": name, "type": "TCP", "delay": 10, "timeout": 5,
                "max_retries": 3, "max_retries_down": 3,
            }),
        }
    }

    /// A pool's members: every control plane, on the listener's port.
    pub(crate) fn member_bodies(
        &self,
        l: &ListenerPlan,
        subnet_id: &str,
        members: &[(String, Ipv4Addr)],
    ) -> serde_json::Value {
        members
            .iter()
            .map(|(member, address)| {
                serde_json::json!({
                    "name": member,
                    "address": address.to_string(),
                    "protocol_port": l.port,
                    "subnet_id": subnet_id,
                })
            })
            .collect::<Vec<_>>()
            .into()
    }

    /// What puts a running load balancer of shape `shape` back as this request asks: each
    /// listener, with who may connect and its timeouts, its pool, monitor and members.
    /// `members` are the control planes' addresses, `None` while one is still to be made
    /// (then every pool's members are set); `routers` as for [`Self::allowed_cidrs`].
    pub(crate) fn repairs(
        &self,
        shape: &Shape,
        members: Option<&[Ipv4Addr]>,
        routers: &[Ipv4Addr],
    ) -> Vec<Repair> {
        // What goes first: a pool made again is looked for by name when its answer is lost,
        // and must not find the unused one of the same name.
        let mut repairs: Vec<Repair> = shape
            .unused_pools
            .iter()
            .map(|pool| Repair::RemovePool { id: pool.clone() })
            .collect();
        for running in &shape.listeners {
            if !self.listeners.iter().any(|l| l.port == running.port) {
                repairs.push(Repair::RemoveListener {
                    id: running.id.clone(),
                    port: running.port,
                    pool_id: running.pool.as_ref().map(|p| p.id.clone()),
                });
            }
        }
        for wanted in &self.listeners {
            let Some(running) = shape.listeners.iter().find(|l| l.port == wanted.port) else {
                repairs.push(Repair::AddListener(wanted.clone()));
                continue;
            };
            let allowed: BTreeSet<String> =
                self.allowed_cidrs(wanted, routers).into_iter().collect();
            let has: BTreeSet<String> = running.allowed_cidrs.iter().cloned().collect();
            let timeouts = !wanted.long_timeouts
                || (running.timeout_client_data == Some(DATA_TIMEOUT_MS)
                    && running.timeout_member_data == Some(DATA_TIMEOUT_MS));
            if allowed != has || !timeouts {
                repairs.push(Repair::UpdateListener {
                    id: running.id.clone(),
                    listener: wanted.clone(),
                });
            }
            let Some(pool) = &running.pool else {
                repairs.push(Repair::AddPool {
                    listener_id: running.id.clone(),
                    listener: wanted.clone(),
                });
                continue;
            };
            if !pool.monitored {
                repairs.push(Repair::AddMonitor {
                    pool_id: pool.id.clone(),
                    listener: wanted.clone(),
                });
            }
            let wanted_members: Option<BTreeSet<(String, u16)>> = members.map(|m| {
                m.iter()
                    .map(|address| (address.to_string(), wanted.port))
                    .collect()
            });
            let has: BTreeSet<(String, u16)> = pool.members.iter().cloned().collect();
            if wanted_members.is_none_or(|w| w != has) {
                repairs.push(Repair::SetMembers {
                    pool_id: pool.id.clone(),
                    listener: wanted.clone(),
                });
            }
        }
        repairs
    }
}

/// One change that puts the API's running load balancer back in the shape the file asks for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Repair {
    /// A listener missing: made, with its pool, monitor and members.
    AddListener(ListenerPlan),
    /// Who may connect, or the data timeouts, differ from the file's.
    UpdateListener { id: String, listener: ListenerPlan },
    /// A listener without its pool: the pool made, with its monitor and members.
    AddPool {
        listener_id: String,
        listener: ListenerPlan,
    },
    /// A pool without its health monitor.
    AddMonitor {
        pool_id: String,
        listener: ListenerPlan,
    },
    /// The pool's members are not the control planes: set to exactly them (one batch update).
    SetMembers {
        pool_id: String,
        listener: ListenerPlan,
    },
    /// A pool no listener uses.
    RemovePool { id: String },
    /// A listener the file no longer asks for (ingress no longer on the control planes): its
    /// pool, then it, deleted.
    RemoveListener {
        id: String,
        port: u16,
        pool_id: Option<String>,
    },
}

impl Repair {
    /// For the plan's line: what changes, briefly.
    pub(crate) fn describe(&self) -> String {
        match self {
            Repair::AddListener(l) => format!("add listener {}", l.port),
            Repair::UpdateListener { listener, .. } => {
                format!("listener {}: who may connect, timeouts", listener.port)
            }
            Repair::AddPool { listener, .. } => format!("add pool {}", listener.port),
            Repair::AddMonitor { listener, .. } => format!("add monitor {}", listener.port),
            Repair::SetMembers { listener, .. } => format!("members {}", listener.port),
            Repair::RemoveListener { port, .. } => format!("remove listener {port}"),
            Repair::RemovePool { .. } => "remove a pool of no listener".into(),
        }
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

    /// A running load balancer is compared listener by listener with the request: in shape,
    /// nothing; each drift, the one change that mends it.
    #[test]
    fn a_running_load_balancer_is_mended_one_change_per_drift() {
        use crate::cloud::load_balancer::{ListenerShape, PoolShape};
        let spec = test_spec("count = 3\n[access]\napi_cidrs = [\"198.51.100.0/24\"]\n");
        let cidr: Option<IpNet> = "10.42.0.0/24".parse().ok();
        let members = vec![
            ("demo-control-plane-1".to_string(), known("p1")),
            ("demo-control-plane-2".to_string(), known("p2")),
        ];
        let request = request(
            &spec,
            &["amphora".into()],
            known("vip"),
            known("s"),
            cidr,
            members,
            vec![],
        );
        let router = [Ipv4Addr::new(203, 0, 113, 7)];
        let addresses = [Ipv4Addr::new(10, 42, 0, 11), Ipv4Addr::new(10, 42, 0, 12)];
        let listener = |port: u16| ListenerShape {
            id: format!("l-{port}"),
            port,
            // The API's: the file's, the nodes' subnet and the router, in any order; ingress
            // (Traefik on the control planes) open to anyone.
            allowed_cidrs: match port {
                6443 => vec![
                    "203.0.113.7/32".into(),
                    "10.42.0.0/24".into(),
                    "198.51.100.0/24".into(),
                ],
                _ => Vec::new(),
            },
            timeout_client_data: Some(DATA_TIMEOUT_MS),
            timeout_member_data: Some(DATA_TIMEOUT_MS),
            pool: Some(PoolShape {
                id: format!("pool-{port}"),
                monitored: true,
                members: vec![("10.42.0.12".into(), port), ("10.42.0.11".into(), port)],
            }),
        };
        let in_shape = Shape {
            listeners: vec![listener(6443), listener(80), listener(443)],
            unused_pools: Vec::new(),
        };
        assert_eq!(
            request.repairs(&in_shape, Some(&addresses), &router),
            Vec::<Repair>::new()
        );
        // A control plane still to be made: every pool's members are set.
        let unknown = request.repairs(&in_shape, None, &router);
        assert_eq!(unknown.len(), 3);
        assert!(matches!(
            &unknown[0],
            Repair::SetMembers { pool_id, .. } if pool_id == "pool-6443"
        ));
        let mut drifted = in_shape.clone();
        let api = &mut drifted.listeners[0];
        api.allowed_cidrs.push("0.0.0.0/0".into());
        api.timeout_client_data = Some(50_000);
        let pool = api.pool.as_mut().expect("pool");
        pool.monitored = false;
        pool.members.pop();
        pool.members.push(("10.42.0.99".into(), 6443));
        drifted.listeners[1].pool = None;
        drifted.listeners[2] = ListenerShape {
            pool: None,
            ..listener(8080)
        };
        drifted.unused_pools.push("orphan".into());
        let repairs = request.repairs(&drifted, Some(&addresses), &router);
        let described: Vec<String> = repairs.iter().map(Repair::describe).collect();
        assert_eq!(
            described,
            [
                "remove a pool of no listener",
                "remove listener 8080",
                "listener 6443: who may connect, timeouts",
                "add monitor 6443",
                "members 6443",
                "add pool 80",
                "add listener 443",
            ]
        );
        assert!(matches!(
            &repairs[1],
            Repair::RemoveListener { pool_id: None, .. }
        ));
        // The listener body the repair sends admits the same sources as a new one.
        let body = request.listener_body(&request.listeners[0], &router);
        assert_eq!(
            body["allowed_cidrs"],
            serde_json::json!(["198.51.100.0/24", "10.42.0.0/24", "203.0.113.7/32"])
        );
        assert!(body.get("default_pool").is_none());
    }
}
