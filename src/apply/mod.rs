//! Making the cloud match the cluster file, and removing everything again. Every step first
//! looks for what exists (by tag and name), so re-running after any failure converges and a
//! converged cluster makes no mutating call.

pub mod bootstrap;
pub mod charts;
pub mod jupyterhub;
pub mod smoke;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::Semaphore;

use crate::cloud::compute::{Server, ServerRequest};
use crate::cloud::network::{FloatingIp, Kind, Network, Port, Router, SecurityGroup, Subnet};
use crate::cloud::{Cloud, CloudError};
use crate::node::{self, ApiEndpoint, NodeError};
use crate::pki::ClusterPki;
use crate::plan::resources::{Names, Observed, cluster_tag};
use crate::plan::rules::{describe, rule_diff, wanted_rules};
use crate::spec::{ClusterSpec, NetworkMode, Role};

/// Servers created at once; Nova and Neutron take concurrent creates well, but not hundreds.
const CONCURRENT_CREATES: usize = 8;
const SERVER_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Kube(#[from] crate::kube::KubeError),
    #[error(transparent)]
    Addons(#[from] crate::addons::AddonError),
    #[error("{0}")]
    Missing(String),
    #[error("{count} resource(s) of cluster `{cluster}` remain after deleting:\n  {}", remaining.join("\n  "))]
    Leftovers {
        cluster: String,
        count: usize,
        remaining: Vec<String>,
    },
}

/// What provisioning produced.
#[derive(Debug)]
pub struct Provisioned {
    pub endpoint: ApiEndpoint,
    /// The subnet the nodes are on, and the external network floating IPs come from: what
    /// the cloud controller's load balancers need.
    pub subnet_id: String,
    pub external_network_id: String,
    pub servers: Vec<Server>,
    /// How long each phase took, in the order they ran.
    pub timings: Vec<(&'static str, Duration)>,
}

/// Records how long each phase of a run takes.
struct Stopwatch {
    last: std::time::Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl Stopwatch {
    fn start() -> Stopwatch {
        Stopwatch {
            last: std::time::Instant::now(),
            phases: Vec::new(),
        }
    }

    fn lap(&mut self, phase: &'static str) {
        let now = std::time::Instant::now();
        self.phases.push((phase, now - self.last));
        self.last = now;
    }
}

/// Creates whatever of the cluster's cloud side is missing, deletes servers the file no longer
/// names, and waits until every server is ACTIVE. `say` receives one line per step.
pub async fn provision(
    cloud: &Arc<Cloud>,
    spec: &ClusterSpec,
    pki: &ClusterPki,
    image_id: &str,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Provisioned, ApplyError> {
    let mut watch = Stopwatch::start();
    let names = Names::of(&spec.name);
    let tags = vec![cluster_tag(&spec.name)];
    let observed = Observed::collect(cloud, &spec.name).await?;
    // The router's gateway and the API floating IP both come from the external network.
    let external = cloud
        .external_network(&spec.network.external_network)
        .await?
        .ok_or_else(|| {
            ApplyError::Missing(format!(
                "external network `{}` not found",
                spec.network.external_network
            ))
        })?;
    watch.lap("observe");

    // Network, subnet, router: the cluster's own, or the existing ones the file names.
    let (network, subnet) = match &spec.network.mode {
        NetworkMode::Create => {
            let network: Network = match observed.networks.iter().find(|n| n.name == names.network)
            {
                Some(n) => n.clone(),
                None => {
                    say(&format!("creating network {}", names.network));
                    cloud
                        .create_tagged(Kind::Network, &names.network, json!({}), &tags)
                        .await?
                }
            };
            let subnet: Subnet = match observed.subnets.iter().find(|s| s.name == names.subnet) {
                Some(s) => s.clone(),
                None => {
                    say(&format!("creating subnet {}", names.subnet));
                    let cidr = spec
                        .network
                        .node_cidr
                        .map(|c| c.to_string())
                        .unwrap_or_default();
                    let dns: Vec<String> = spec
                        .network
                        .dns_servers
                        .iter()
                        .map(IpAddr::to_string)
                        .collect();
                    cloud
                        .create_tagged(
                            Kind::Subnet,
                            &names.subnet,
                            json!({ "network_id": network.id, "cidr": cidr, "ip_version": 4, "dns_nameservers": dns }),
                            &tags,
                        )
                        .await?
                }
            };
            let router: Router = match observed.routers.iter().find(|r| r.name == names.router) {
                Some(router) => router.clone(),
                None => {
                    say(&format!("creating router {}", names.router));
                    cloud
                        .create_tagged(
                            Kind::Router,
                            &names.router,
                            json!({ "external_gateway_info": { "network_id": external.id } }),
                            &tags,
                        )
                        .await?
                }
            };
            // Its postconditions, checked every run (a run stopped after the create, or a
            // hand-made change, leaves a router without them): the gateway, the interface.
            let gateway = router
                .external_gateway_info
                .as_ref()
                .and_then(|g| g.get("network_id"))
                .and_then(|id| id.as_str());
            if gateway != Some(external.id.as_str()) {
                say(&format!("setting the gateway of router {}", names.router));
                cloud.set_router_gateway(&router.id, &external.id).await?;
            }
            let interfaces: Vec<Port> = cloud
                .list(
                    Kind::Port,
                    &[("device_id", &router.id), ("network_id", &network.id)],
                )
                .await?;
            let attached = interfaces
                .iter()
                .any(|p| p.fixed_ips.iter().any(|ip| ip.subnet_id == subnet.id));
            if !attached {
                say(&format!(
                    "adding subnet {} to router {}",
                    names.subnet, names.router
                ));
                cloud.add_router_interface(&router.id, &subnet.id).await?;
            }
            (network, subnet)
        }
        NetworkMode::Reuse {
            network,
            subnet,
            router,
        } => {
            let mut found: Vec<Network> = cloud.list(Kind::Network, &[("name", network)]).await?;
            if found.is_empty() {
                found = cloud.list(Kind::Network, &[("id", network)]).await?;
            }
            let network = found.pop().ok_or_else(|| {
                ApplyError::Missing(format!("existing network `{network}` not found"))
            })?;
            let subnets: Vec<Subnet> = cloud
                .list(Kind::Subnet, &[("network_id", &network.id)])
                .await?;
            let subnet = match subnet {
                Some(wanted) => subnets
                    .into_iter()
                    .find(|s| &s.name == wanted || &s.id == wanted),
                None => subnets.into_iter().next(),
            }
            .ok_or_else(|| {
                ApplyError::Missing(format!("network `{}` has no usable subnet", network.name))
            })?;
            check_reused_router(cloud, &network, &subnet, router.as_deref(), &external.id).await?;
            (network, subnet)
        }
    };

    watch.lap("network, subnet, router");

    // Security groups: one for every node, one for control planes.
    let nodes_group = ensure_group(cloud, &observed, &names.nodes_group, &tags, say).await?;
    let control_group =
        ensure_group(cloud, &observed, &names.control_plane_group, &tags, say).await?;
    let wanted = wanted_rules(spec, &nodes_group.id, subnet.cidr.parse().ok());
    for (group, rules) in [
        (&nodes_group, wanted.nodes),
        (&control_group, wanted.control_planes),
    ] {
        // A rule the file no longer asks for (a narrowed CIDR, ingress turned off) goes.
        let (missing, stale) = rule_diff(&group.security_group_rules, &rules);
        for rule in missing {
            cloud.add_security_group_rule(&group.id, rule).await?;
        }
        for stale in stale {
            say(&format!(
                "removing rule {} on {}",
                describe(stale),
                group.name
            ));
            cloud.delete_security_group_rule(&stale.id).await?;
        }
    }
    let server_group = match observed.server_groups.first() {
        Some(group) => group.clone(),
        None => {
            say(&format!("creating server group {}", names.server_group));
            cloud
                .create_server_group(&names.server_group, "anti-affinity")
                .await?
        }
    };

    watch.lap("security and server groups");

    // Ports first: the control plane's address must be known before any config is rendered.
    let nodes = spec.nodes();
    let mut ports = BTreeMap::new();
    let api_address = spec.network.default_api_address();
    for (index, node) in nodes.iter().enumerate() {
        let port = match observed.ports.iter().find(|p| p.name == node.name) {
            Some(port) => port.clone(),
            None => {
                let mut groups = vec![nodes_group.id.clone()];
                let mut fixed = json!({ "subnet_id": subnet.id });
                if node.role == Role::ControlPlane {
                    groups.push(control_group.id.clone());
                    if let (0, Some(address)) = (index, api_address) {
                        fixed["ip_address"] = json!(address.to_string());
                    }
                }
                say(&format!("creating port {}", node.name));
                cloud
                    .create_tagged::<Port>(
                        Kind::Port,
                        &node.name,
                        json!({ "network_id": network.id, "fixed_ips": [fixed], "security_groups": groups }),
                        &tags,
                    )
                    .await?
            }
        };
        ports.insert(node.name.clone(), port);
    }
    let first = nodes
        .iter()
        .find(|n| n.role == Role::ControlPlane)
        .and_then(|n| ports.get(&n.name))
        .ok_or_else(|| ApplyError::Missing("the cluster has no control plane".into()))?;
    let internal: Ipv4Addr = first
        .fixed_ips
        .first()
        .and_then(|ip| ip.ip_address.parse().ok())
        .ok_or_else(|| ApplyError::Missing(format!("port {} has no IPv4 address", first.name)))?;
    let floating: FloatingIp = match observed
        .floating_ips
        .iter()
        .find(|f| f.description == names.api_address)
    {
        // Its postcondition, checked every run: it points at the first control plane.
        Some(f) if f.port_id.as_deref() != Some(first.id.as_str()) => {
            say(&format!(
                "attaching the API floating IP {} to {} again",
                f.floating_ip_address, first.name
            ));
            cloud.attach_floating_ip(&f.id, Some(&first.id)).await?
        }
        Some(f) => f.clone(),
        None => {
            say("allocating the API floating IP");
            cloud
                .create_floating_ip(&external.id, &names.api_address, Some(&first.id), &tags)
                .await?
        }
    };
    let endpoint = ApiEndpoint {
        internal,
        public: floating.floating_ip_address.parse().ok(),
    };

    watch.lap("ports and floating IP");

    // Servers: everything missing at once, with bounded concurrency.
    let rendered = node::render_cluster(spec, pki, &endpoint)?;
    watch.lap("render Ignition");
    let limiter = Arc::new(Semaphore::new(CONCURRENT_CREATES));
    let mut tasks = tokio::task::JoinSet::new();
    let flavors = cloud.flavors().await?;
    for (node, config) in nodes.iter().zip(rendered) {
        if observed.servers.iter().any(|s| s.name == node.name) {
            continue;
        }
        let (flavor_name, boot_volume_gb, role) =
            match node.pool.and_then(|i| spec.worker_pools.get(i)) {
                Some(pool) => (&pool.flavor, pool.boot_volume_gb, "worker"),
                None => (
                    &spec.control_plane.flavor,
                    spec.control_plane.boot_volume_gb,
                    "control-plane",
                ),
            };
        let flavor = flavors
            .iter()
            .find(|f| &f.name == flavor_name || &f.id == flavor_name)
            .ok_or_else(|| ApplyError::Missing(format!("flavor `{flavor_name}` not found")))?;
        let mut metadata = BTreeMap::new();
        metadata.insert("flatstack-cluster".to_string(), spec.name.clone());
        metadata.insert("flatstack-role".to_string(), role.to_string());
        let request = ServerRequest {
            name: node.name.clone(),
            flavor_id: flavor.id.clone(),
            image_id: image_id.to_string(),
            port_ids: vec![ports[&node.name].id.clone()],
            key_name: spec.access.keypair.clone(),
            user_data: Some(config.ignition),
            tags: vec![cluster_tag(&spec.name), format!("flatstack:role={role}")],
            metadata,
            server_group_id: (node.role == Role::ControlPlane).then(|| server_group.id.clone()),
            boot_volume_gb,
        };
        say(&format!("creating server {}", node.name));
        let cloud = cloud.clone();
        let limiter = limiter.clone();
        tasks.spawn(async move {
            let _permit = limiter.acquire_owned().await;
            cloud.create_server(&request).await
        });
    }
    let mut created = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        created.push(joined.map_err(task_failed)??);
    }

    watch.lap("create servers");

    // Servers the file no longer names go, with their ports.
    let wanted: std::collections::BTreeSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    for server in observed
        .servers
        .iter()
        .filter(|s| !wanted.contains(s.name.as_str()))
    {
        say(&format!("deleting server {}", server.name));
        cloud.delete_server(&server.id).await?;
        cloud
            .wait_server_deleted(&server.id, SERVER_TIMEOUT)
            .await?;
    }
    for port in observed
        .ports
        .iter()
        .filter(|p| !wanted.contains(p.name.as_str()))
    {
        cloud.delete_resource(Kind::Port, &port.id).await?;
    }

    watch.lap("delete servers no longer named");

    // Every wanted server ACTIVE, or Nova's fault for the first that is not.
    let mut servers = Vec::new();
    let ids: Vec<String> = observed
        .servers
        .iter()
        .filter(|s| wanted.contains(s.name.as_str()))
        .map(|s| s.id.clone())
        .chain(created.iter().map(|s| s.id.clone()))
        .collect();
    let total = ids.len();
    for id in ids {
        servers.push(cloud.wait_server_active(&id, SERVER_TIMEOUT).await?);
        say(&format!("{}/{total} servers ACTIVE", servers.len()));
    }
    servers.sort_by(|a, b| a.name.cmp(&b.name));
    watch.lap("servers ACTIVE");
    Ok(Provisioned {
        endpoint,
        subnet_id: subnet.id.clone(),
        external_network_id: external.id.clone(),
        servers,
        timings: watch.phases,
    })
}

/// On a network the cluster reuses, floating IPs reach the nodes only through a router with an
/// interface on the subnet and a gateway on the external network. flatstack changes neither:
/// it checks them, before anything is created.
async fn check_reused_router(
    cloud: &Cloud,
    network: &Network,
    subnet: &Subnet,
    wanted: Option<&str>,
    external_id: &str,
) -> Result<(), ApplyError> {
    let ports: Vec<Port> = cloud
        .list(Kind::Port, &[("network_id", &network.id)])
        .await?;
    let on_subnet: Vec<&str> = ports
        .iter()
        .filter(|p| {
            p.device_owner.starts_with("network:router_interface")
                || p.device_owner == "network:ha_router_replicated_interface"
        })
        .filter(|p| p.fixed_ips.iter().any(|ip| ip.subnet_id == subnet.id))
        .map(|p| p.device_id.as_str())
        .collect();
    let Some(wanted) = wanted else {
        return match on_subnet.is_empty() {
            true => Err(ApplyError::Missing(format!(
                "subnet `{}` of network `{}` has no router, so a floating IP cannot reach the nodes\n  hint: add the subnet to a router with a gateway on the external network, and name it as `network.existing_router`",
                subnet.name, network.name
            ))),
            false => Ok(()),
        };
    };
    let mut routers: Vec<Router> = cloud.list(Kind::Router, &[("name", wanted)]).await?;
    if routers.is_empty() {
        routers = cloud.list(Kind::Router, &[("id", wanted)]).await?;
    }
    let router = routers
        .pop()
        .ok_or_else(|| ApplyError::Missing(format!("existing router `{wanted}` not found")))?;
    if !on_subnet.contains(&router.id.as_str()) {
        return Err(ApplyError::Missing(format!(
            "router `{wanted}` has no interface on subnet `{}`; flatstack leaves routers it did not make as they are\n  hint: `openstack router add subnet {wanted} {}`",
            subnet.name, subnet.id
        )));
    }
    let gateway = router
        .external_gateway_info
        .as_ref()
        .and_then(|g| g.get("network_id"))
        .and_then(|id| id.as_str());
    if gateway != Some(external_id) {
        return Err(ApplyError::Missing(format!(
            "router `{wanted}` has no gateway on the external network the floating IPs come from\n  hint: `openstack router set --external-gateway <external network> {wanted}`"
        )));
    }
    Ok(())
}

/// A concurrent step that panicked or was cancelled: reported, never silently skipped.
fn task_failed(error: tokio::task::JoinError) -> ApplyError {
    ApplyError::Missing(format!("a concurrent step stopped unexpectedly: {error}"))
}

async fn ensure_group(
    cloud: &Cloud,
    observed: &Observed,
    name: &str,
    tags: &[String],
    say: &(dyn Fn(&str) + Sync),
) -> Result<SecurityGroup, ApplyError> {
    if let Some(group) = observed.security_groups.iter().find(|g| g.name == name) {
        return Ok(group.clone());
    }
    say(&format!("creating security group {name}"));
    Ok(cloud
        .create_tagged(
            Kind::SecurityGroup,
            name,
            json!({ "description": "flatstack cluster nodes" }),
            tags,
        )
        .await?)
}

/// Deletes everything the cluster owns, in dependency order, then checks nothing is left.
pub async fn teardown(
    cloud: &Arc<Cloud>,
    cluster: &str,
    delete_volumes: bool,
    say: &(dyn Fn(&str) + Sync),
) -> Result<(), ApplyError> {
    let observed = Observed::collect(cloud, cluster).await?;
    // What the cloud controller made for LoadBalancer Services goes first: the load balancers'
    // addresses are on the cluster's subnet and their members are its nodes.
    for floating in &observed.service_floating_ips {
        say(&format!(
            "releasing floating IP {} ({})",
            floating.floating_ip_address, floating.description
        ));
        cloud
            .delete_resource(Kind::FloatingIp, &floating.id)
            .await?;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for balancer in &observed.load_balancers {
        say(&format!("deleting load balancer {}", balancer.name));
        let cloud = cloud.clone();
        let id = balancer.id.clone();
        tasks.spawn(async move { cloud.delete_load_balancer(&id, SERVER_TIMEOUT).await });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(task_failed)??;
    }
    for server in &observed.servers {
        say(&format!("deleting server {}", server.name));
        let cloud = cloud.clone();
        let id = server.id.clone();
        tasks.spawn(async move {
            cloud.delete_server(&id).await?;
            cloud.wait_server_deleted(&id, SERVER_TIMEOUT).await
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(task_failed)??;
    }
    // Persistent volumes outlive the cluster unless asked for: they hold people's data.
    let volumes = crate::plan::resources::cluster_volumes(cloud, cluster).await?;
    for volume in &volumes {
        let name = volume.name.as_deref().unwrap_or(&volume.id);
        if delete_volumes {
            say(&format!("deleting volume {name} ({} GB)", volume.size));
            cloud.delete_volume(&volume.id).await?;
        } else {
            say(&format!(
                "keeping volume {name} ({} GB); `down --delete-volumes` removes it",
                volume.size
            ));
        }
    }
    for floating in &observed.floating_ips {
        say(&format!(
            "releasing floating IP {}",
            floating.floating_ip_address
        ));
        cloud
            .delete_resource(Kind::FloatingIp, &floating.id)
            .await?;
    }
    for port in &observed.ports {
        cloud.delete_resource(Kind::Port, &port.id).await?;
    }
    for router in &observed.routers {
        say(&format!("deleting router {}", router.name));
        for subnet in &observed.subnets {
            cloud
                .remove_router_interface(&router.id, &subnet.id)
                .await?;
        }
        cloud.clear_router_gateway(&router.id).await?;
        cloud.delete_resource(Kind::Router, &router.id).await?;
    }
    for subnet in &observed.subnets {
        cloud.delete_resource(Kind::Subnet, &subnet.id).await?;
    }
    for network in &observed.networks {
        say(&format!("deleting network {}", network.name));
        cloud.delete_resource(Kind::Network, &network.id).await?;
    }
    for group in &observed.security_groups {
        cloud
            .delete_resource(Kind::SecurityGroup, &group.id)
            .await?;
    }
    for group in &observed.server_groups {
        cloud.delete_server_group(&group.id).await?;
    }
    let left = Observed::collect(cloud, cluster).await?;
    let mut remaining = left.describe();
    if delete_volumes {
        for volume in &volumes {
            if wait_volume_gone(cloud, &volume.id).await.is_err() {
                remaining.push(format!("volume {}", volume.id));
            }
        }
    }
    if !remaining.is_empty() {
        return Err(ApplyError::Leftovers {
            cluster: cluster.to_string(),
            count: remaining.len(),
            remaining,
        });
    }
    Ok(())
}

async fn wait_volume_gone(cloud: &Cloud, id: &str) -> Result<(), CloudError> {
    let started = std::time::Instant::now();
    loop {
        match cloud.volume(id).await {
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
            Ok(volume) if started.elapsed() >= SERVER_TIMEOUT => {
                return Err(CloudError::Timeout {
                    what: format!("volume {id}"),
                    wanted: "deleted".into(),
                    state: volume.status,
                    waited: SERVER_TIMEOUT,
                });
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}
