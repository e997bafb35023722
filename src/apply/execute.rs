//! The executor: runs a [`Plan`] as a dependency graph. A step starts as soon as every step it
//! needs is done, within a bound per service; each step's inputs made by earlier steps are
//! filled in as it starts. On a failure no new step starts, the running ones finish, and the
//! error names the step. Every step records when it ran, for the timeline.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Semaphore;

use super::ApplyError;
use super::watch::ServerWatch;
use crate::cloud::Cloud;
use crate::cloud::compute::ServerRequest;
use crate::cloud::network::{FloatingIp, Kind, Network, Port, Router, SecurityGroup, Subnet};
use crate::kube::KubeClient;
use crate::kube::etcd::MemberRemoval;
use crate::node::seal::{SEAL_KEY_METADATA, SealKey};
use crate::node::{self, ApiEndpoint};
use crate::pki::{BootstrapToken, ClusterPki};
use crate::plan::endpoint::{DATA_TIMEOUT_MS, ListenerPlan, LoadBalancerRequest, Repair};
use crate::plan::resources::{CA_METADATA, cluster_tag};
use crate::plan::steps::{Action, Made, Plan, Ref, Service, StepId};
use crate::spec::ClusterSpec;

/// Calls in flight at once per service: Nova and Neutron take concurrent requests well, but
/// not hundreds.
const CONCURRENT_CALLS: usize = 8;
const SERVER_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest a worker's pods get to leave before `up` gives up on scaling down.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// What the steps work with.
pub(crate) struct Context {
    pub(crate) cloud: Arc<Cloud>,
    pub(crate) spec: ClusterSpec,
    /// The cluster's PKI: what new nodes trust (`down` runs without it).
    pub(crate) pki: Option<ClusterPki>,
    /// The join token of this run's new nodes: sealed into their configs, registered in the
    /// cluster (a running one through its API, a new one by `kubeadm init`).
    pub(crate) join_token: Option<BootstrapToken>,
    /// The cluster's API, for drains and the join token: none with `--provision-only` or when
    /// it does not answer (nodes are then deleted without draining).
    pub(crate) kube: Option<KubeClient>,
    /// How long a replacement node may take from ACTIVE to `Ready` (booting, Ignition,
    /// joining): `up --timeout`.
    pub(crate) node_ready_within: Duration,
    /// What the control plane that initializes the cluster restores etcd from (`restore`).
    pub(crate) restore: Option<crate::node::restore::RestoreSource>,
}

/// Tags go in every create; the session falls back to a second call where a cloud refuses or
/// drops them there (see `Cloud::create_tagged`).
const TAG_ON_CREATE: bool = true;

/// What the engine tells whoever runs it, as it happens.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// A step started; `line` says what it does.
    Started { line: String },
    /// A step finished with something to report (`drained demo-default-2: 3 pod(s) evicted`).
    Finished { line: String },
    /// A line from outside the plan (the sysext, the bootstrap's phases).
    Say(String),
    /// How many of the servers waited for are ACTIVE: `servers 37/50 ACTIVE`.
    ServersActive { done: usize, total: usize },
}

/// When a step ran, in seconds since the run started.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct StepRun {
    pub(crate) step: StepId,
    pub(crate) group: &'static str,
    pub(crate) start: f64,
    pub(crate) end: f64,
}

/// What running a plan produced.
#[derive(Debug, Default)]
pub(crate) struct Executed {
    /// Per step: what it made.
    pub(crate) made: Vec<Option<Made>>,
    pub(crate) runs: Vec<StepRun>,
}

/// A step that failed, and why.
#[derive(Debug, thiserror::Error)]
#[error("{step}")]
pub struct StepFailed {
    pub(crate) step: String,
    #[source]
    pub(crate) source: Box<ApplyError>,
}

/// What the steps of one run share: the rendered Ignition configs (and the keys to their
/// sealed files) by node, and the watcher of the servers being waited for.
struct Shared {
    configs: std::sync::Mutex<BTreeMap<String, (String, SealKey)>>,
    servers: ServerWatch,
}

/// Runs every step of `plan`; `started` is when the run began (the timeline's zero).
pub(crate) async fn execute(
    plan: &Plan,
    context: Arc<Context>,
    started: Instant,
    events: &(dyn Fn(Event) + Sync),
) -> Result<Executed, StepFailed> {
    let count = plan.steps.len();
    let mut waiting_on: Vec<usize> = plan.steps.iter().map(|s| s.needs.len()).collect();
    let mut dependents: Vec<Vec<StepId>> = vec![Vec::new(); count];
    for step in &plan.steps {
        for need in &step.needs {
            dependents[*need].push(step.id);
        }
    }
    let limits: HashMap<Service, Arc<Semaphore>> = [
        Service::Network,
        Service::Compute,
        Service::Kubernetes,
        Service::LoadBalancer,
    ]
    .into_iter()
    .map(|s| (s, Arc::new(Semaphore::new(CONCURRENT_CALLS))))
    .collect();
    let mut executed = Executed {
        made: vec![None; count],
        runs: Vec::new(),
    };
    let shared = Arc::new(Shared {
        configs: std::sync::Mutex::default(),
        servers: ServerWatch::start(context.cloud.clone(), cluster_tag(&context.spec.name)),
    });
    let waits = plan
        .steps
        .iter()
        .filter(|s| matches!(s.action, Action::WaitActive { .. }))
        .count();
    let mut active = 0;
    let mut ready: Vec<StepId> = (0..count).filter(|i| waiting_on[*i] == 0).collect();
    let mut tasks = tokio::task::JoinSet::new();
    let mut failure: Option<StepFailed> = None;
    loop {
        if failure.is_none() {
            for id in ready.drain(..) {
                let step = &plan.steps[id];
                let action = resolve(&step.action, &executed.made);
                let limit = limits.get(&step.action.service()).cloned();
                let context = context.clone();
                let shared = shared.clone();
                let line = step.action.progress_line();
                events(Event::Started { line });
                tasks.spawn(async move {
                    let _permit = match limit {
                        Some(limit) => limit.acquire_owned().await.ok(),
                        None => None,
                    };
                    let start = started.elapsed().as_secs_f64();
                    let result = run(&action, &context, &shared).await;
                    (id, start, started.elapsed().as_secs_f64(), result)
                });
            }
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let (id, start, end, result) = match joined {
            Ok(done) => done,
            Err(e) => {
                failure.get_or_insert(StepFailed {
                    step: "a step".into(),
                    source: Box::new(ApplyError::Missing(format!(
                        "a concurrent step stopped unexpectedly: {e}"
                    ))),
                });
                continue;
            }
        };
        let step = &plan.steps[id];
        match result {
            Ok((made, report)) => {
                if let Some(line) = report {
                    events(Event::Finished { line });
                }
                executed.made[id] = Some(made);
                executed.runs.push(StepRun {
                    step: id,
                    group: step.action.group(),
                    start,
                    end,
                });
                if let Action::WaitActive { .. } = &step.action {
                    active += 1;
                    events(Event::ServersActive {
                        done: active,
                        total: waits,
                    });
                }
                for next in &dependents[id] {
                    waiting_on[*next] -= 1;
                    if waiting_on[*next] == 0 {
                        ready.push(*next);
                    }
                }
            }
            Err(source) => {
                failure.get_or_insert(StepFailed {
                    step: step.action.progress_line(),
                    source: Box::new(source),
                });
            }
        }
    }
    match failure {
        Some(failed) => Err(failed),
        None => Ok(executed),
    }
}

/// The action with every input an earlier step made filled in as known.
fn resolve(action: &Action, made: &[Option<Made>]) -> Action {
    let mut action = action.clone();
    for input in action.refs_mut() {
        if let Ref::After(step) = input
            && let Some(Some(done)) = made.get(*step)
        {
            *input = Ref::Known(done.clone());
        }
    }
    action
}

/// A resolved input; every input is known once the steps it comes from are done.
fn known(r: &Ref) -> Result<&Made, ApplyError> {
    match r {
        Ref::Known(made) => Ok(made),
        Ref::After(step) => Err(ApplyError::Missing(format!(
            "step {step} made nothing this step could use"
        ))),
    }
}

/// The IPv4 address a port or floating IP step made.
fn address_of(made: &Made) -> Result<std::net::Ipv4Addr, ApplyError> {
    made.address
        .as_deref()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| ApplyError::Missing(format!("port {} has no IPv4 address", made.id)))
}

fn id_of<T: crate::cloud::network::HasId>(resource: &T) -> Made {
    Made::id(resource.id())
}

/// Runs one step: what it made, and a line to report when there is one.
async fn run(
    action: &Action,
    context: &Context,
    shared: &Shared,
) -> Result<(Made, Option<String>), ApplyError> {
    if let Some(upgraded) = super::upgrade::run(action, context).await {
        return upgraded.map(|line| (Made::default(), line));
    }
    if let Action::WaitReady { node } = action {
        // Without the API, nobody can tell whether the replacement joined: the node it
        // replaces is kept.
        let kube = context.kube.as_ref().ok_or_else(|| {
            ApplyError::Missing(format!(
                "cannot tell whether {node} joined the cluster: its API does not answer, so the node it replaces is kept; run `flatstack up` again once the API answers"
            ))
        })?;
        let control_plane = context
            .spec
            .nodes()
            .iter()
            .any(|n| &n.name == node && n.role == crate::spec::Role::ControlPlane);
        if control_plane {
            super::bootstrap::mark_joined_control_plane(
                kube,
                &context.spec,
                node,
                context.node_ready_within,
            )
            .await?;
        }
        kube.wait_node_ready(node, context.node_ready_within)
            .await?;
        return Ok((Made::default(), Some(format!("{node} is Ready"))));
    }
    if let Action::Drain { node } = action {
        // The planner plans a drain only when the API answered (or was not asked, which makes
        // no drain): without it, it says so in the plan and deletes undrained.
        let kube = context.kube.as_ref().ok_or_else(|| {
            ApplyError::Missing(format!(
                "cannot drain {node}: the cluster's API cannot be reached from here; nothing of {node} was deleted"
            ))
        })?;
        let report = crate::kube::drain_node(
            kube,
            node,
            DRAIN_TIMEOUT,
            crate::kube::AfterDrain::DeleteNode,
        )
        .await
        .map_err(|source| ApplyError::Drain {
            node: node.clone(),
            source,
        })?;
        let line = format!(
            "drained {node}: {} pod(s) evicted, {} DaemonSet or static pod(s) left",
            report.evicted, report.left
        );
        return Ok((Made::default(), Some(line)));
    }
    if let Action::RemoveEtcdMember { node, address, via } = action {
        let removal = api_for(context, node)?
            .remove_etcd_member_where(via, ETCD_TIMEOUT, |m| m.is_of(node, address.as_deref()))
            .await?;
        let line = match removal {
            MemberRemoval::Removed { id, left } => {
                format!("removed etcd member {id} of {node} through {via}; {left} member(s) left")
            }
            MemberRemoval::Absent { listed } => {
                format!("{node} has no etcd member left ({listed} listed through {via})")
            }
        };
        return Ok((Made::default(), Some(line)));
    }
    if let Action::RemoveStrayEtcdMember { id, via, .. } = action {
        let removal = api_for(context, via)?
            .remove_etcd_member_where(via, ETCD_TIMEOUT, |m| &m.hex_id() == id)
            .await?;
        let line = match removal {
            MemberRemoval::Removed { left, .. } => format!(
                "removed etcd member {id}, of no control plane, through {via}; {left} member(s) left"
            ),
            MemberRemoval::Absent { .. } => format!("etcd member {id} is gone already"),
        };
        return Ok((Made::default(), Some(line)));
    }
    if let Action::WaitEtcdMember { node, via } = action {
        api_for(context, node)?
            .wait_voting_member(via, node, context.node_ready_within)
            .await?;
        return Ok((
            Made::default(),
            Some(format!("{node} is a voting etcd member")),
        ));
    }
    if let Action::DeleteNode { node } = action {
        api_for(context, node)?
            .delete(&format!("/api/v1/nodes/{node}"))
            .await?;
        return Ok((
            Made::default(),
            Some(format!("deleted the Node object of {node}")),
        ));
    }
    run_on_cloud(action, context, shared)
        .await
        .map(|made| (made, None))
}

/// How long Octavia may take to build or delete a load balancer (an amphora boots a VM).
const LOAD_BALANCER_TIMEOUT: Duration = Duration::from_secs(900);

/// How long one etcd membership step may take (its node Job started, run and read).
const ETCD_TIMEOUT: Duration = Duration::from_secs(180);

/// What the API's load balancer stands on: the nodes' subnet, each control plane's address
/// and the external addresses of the routers on that subnet (which its listeners admit).
async fn balancer_footing<'r>(
    cloud: &Cloud,
    request: &'r LoadBalancerRequest,
) -> Result<
    (
        &'r str,
        Vec<(String, std::net::Ipv4Addr)>,
        Vec<std::net::Ipv4Addr>,
    ),
    ApplyError,
> {
    let members = request
        .members
        .iter()
        .map(|(name, port)| Ok((name.clone(), address_of(known(port)?)?)))
        .collect::<Result<Vec<_>, ApplyError>>()?;
    let subnet = known(&request.subnet)?.id.as_str();
    let routers = cloud.router_external_addresses(subnet).await?;
    Ok((subnet, members, routers))
}

/// One change to the API's running load balancer `id`, each call followed by a wait until
/// Octavia has it ACTIVE again. A part made here is found by its name when its answer was lost.
async fn repair_load_balancer(
    cloud: &Cloud,
    id: &str,
    request: &LoadBalancerRequest,
    repair: &Repair,
    subnet: &str,
    members: &[(String, std::net::Ipv4Addr)],
    routers: &[std::net::Ipv4Addr],
) -> Result<(), ApplyError> {
    let wait = LOAD_BALANCER_TIMEOUT;
    let set_members = |pool_id: &str, listener: &ListenerPlan| {
        let path = format!("/lbaas/pools/{pool_id}/members");
        let body = serde_json::json!({
            "members": request.member_bodies(listener, subnet, members)
        });
        async move {
            cloud
                .change_load_balancer_part(id, &path, &body, wait)
                .await
        }
    };
    let add_monitor = |pool_id: &str, listener: &ListenerPlan| {
        let mut body = request.monitor_body(listener);
        body["pool_id"] = pool_id.into();
        let parent = format!("?pool_id={pool_id}");
        async move {
            cloud
                .create_load_balancer_part(id, "healthmonitor", &parent, &body, wait)
                .await
        }
    };
    let add_pool = |listener_id: String, listener: ListenerPlan| async move {
        let mut body = request.pool_body(&listener);
        body["listener_id"] = listener_id.into();
        let parent = format!("?loadbalancer_id={id}");
        let pool = cloud
            .create_load_balancer_part(id, "pool", &parent, &body, wait)
            .await?;
        add_monitor(&pool, &listener).await?;
        set_members(&pool, &listener).await
    };
    match repair {
        Repair::AddListener(listener) => {
            let mut body = request.listener_body(listener, routers);
            body["loadbalancer_id"] = id.into();
            let parent = format!("?loadbalancer_id={id}");
            let made = cloud
                .create_load_balancer_part(id, "listener", &parent, &body, wait)
                .await?;
            add_pool(made, listener.clone()).await?;
        }
        Repair::UpdateListener {
            id: listener_id,
            listener,
        } => {
            let mut body = serde_json::json!({
                "allowed_cidrs": request.allowed_cidrs(listener, routers),
            });
            if listener.long_timeouts {
                body["timeout_client_data"] = DATA_TIMEOUT_MS.into();
                body["timeout_member_data"] = DATA_TIMEOUT_MS.into();
            }
            let path = format!("/lbaas/listeners/{listener_id}");
            let body = serde_json::json!({ "listener": body });
            cloud
                .change_load_balancer_part(id, &path, &body, wait)
                .await?;
        }
        Repair::AddPool {
            listener_id,
            listener,
        } => add_pool(listener_id.clone(), listener.clone()).await?,
        Repair::AddMonitor { pool_id, listener } => {
            add_monitor(pool_id, listener).await?;
        }
        Repair::SetMembers { pool_id, listener } => set_members(pool_id, listener).await?,
        Repair::RemovePool { id: pool_id } => {
            let path = format!("/lbaas/pools/{pool_id}");
            cloud.delete_load_balancer_part(id, &path, wait).await?;
        }
        Repair::RemoveListener {
            id: listener_id,
            pool_id,
            ..
        } => {
            if let Some(pool_id) = pool_id {
                let path = format!("/lbaas/pools/{pool_id}");
                cloud.delete_load_balancer_part(id, &path, wait).await?;
            }
            let path = format!("/lbaas/listeners/{listener_id}");
            cloud.delete_load_balancer_part(id, &path, wait).await?;
        }
    }
    Ok(())
}

/// This run's join token, which every step that lets a node join needs.
fn join_token_of(context: &Context) -> Result<&BootstrapToken, ApplyError> {
    context.join_token.as_ref().ok_or_else(|| {
        ApplyError::Missing("a node cannot join without this run's join token".into())
    })
}

/// The cluster's PKI, which every step that makes a node needs.
fn pki_of(context: &Context) -> Result<&ClusterPki, ApplyError> {
    context.pki.as_ref().ok_or_else(|| {
        ApplyError::Missing("a node cannot be made without the cluster's PKI".into())
    })
}

/// The cluster's API, which a step on lost control plane `node` cannot do without: its server
/// is not built again until the API answers.
fn api_for<'c>(context: &'c Context, node: &str) -> Result<&'c KubeClient, ApplyError> {
    context.kube.as_ref().ok_or_else(|| {
        ApplyError::Missing(format!(
            "cannot change or check the etcd membership of control plane {node}: the cluster's API does not answer, and its server is not built again until it does; run `flatstack up` again once the API answers"
        ))
    })
}

/// Runs one step that reports nothing but what it made.
async fn run_on_cloud(
    action: &Action,
    context: &Context,
    shared: &Shared,
) -> Result<Made, ApplyError> {
    let cloud = &context.cloud;
    let tags = vec![cluster_tag(&context.spec.name)];
    Ok(match action {
        Action::CreateNetwork { name } => id_of(
            &cloud
                .create_tagged::<Network>(Kind::Network, name, json!({}), &tags, TAG_ON_CREATE)
                .await?,
        ),
        Action::CreateSubnet(s) => {
            let dns: Vec<String> = s.dns_nameservers.iter().map(|d| d.to_string()).collect();
            let mut body = json!({
                "network_id": known(&s.network)?.id,
                "cidr": s.cidr.to_string(),
                "ip_version": 4,
                "dns_nameservers": dns,
            });
            if let Some((start, end)) = s.allocation_pool {
                body["allocation_pools"] = json!([{ "start": start, "end": end }]);
            }
            let network_id = known(&s.network)?.id.clone();
            match cloud
                .create_tagged::<Subnet>(Kind::Subnet, &s.name, body, &tags, TAG_ON_CREATE)
                .await
            {
                Ok(subnet) => id_of(&subnet),
                // Neutron takes one subnet of a range per network: the cluster's own is there
                // already, made since this run looked (by another writer at the same moment,
                // or by a run whose answer Neutron never sent), and is taken. Neutron says so
                // only in its message (`SubnetOverlap`, "... overlaps with another subnet"),
                // and anything else is reported as it came.
                Err(refused @ crate::cloud::CloudError::Api { status: 400, .. })
                    if refused.to_string().contains("overlaps with another subnet") =>
                {
                    let found: Vec<Subnet> = cloud
                        .list(
                            Kind::Subnet,
                            &[
                                ("network_id", network_id.as_str()),
                                ("name", s.name.as_str()),
                            ],
                        )
                        .await?;
                    match found.as_slice() {
                        [subnet] if subnet.cidr == s.cidr.to_string() => {
                            // (Setting tags replaces them all: the subnet's own are kept.)
                            let mut all = subnet.tags.clone();
                            all.extend(tags.iter().filter(|t| !subnet.tags.contains(t)).cloned());
                            if all.len() > subnet.tags.len() {
                                cloud.set_tags(Kind::Subnet, &subnet.id, &all).await?;
                            }
                            id_of(subnet)
                        }
                        _ => return Err(refused.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Action::CreateRouter {
            name,
            external_network_id,
            ..
        } => {
            let body = json!({ "external_gateway_info": { "network_id": external_network_id } });
            id_of(
                &cloud
                    .create_tagged::<Router>(Kind::Router, name, body, &tags, TAG_ON_CREATE)
                    .await?,
            )
        }
        Action::SetRouterGateway {
            router,
            external_network_id,
            ..
        } => {
            let router = known(router)?;
            cloud
                .set_router_gateway(&router.id, external_network_id)
                .await?;
            router.clone()
        }
        Action::SetAllocationPool {
            subnet,
            pool: (start, end),
            ..
        } => {
            let subnet = known(subnet)?;
            cloud.set_allocation_pool(&subnet.id, *start, *end).await?;
            subnet.clone()
        }
        Action::AddRouterInterface { router, subnet, .. } => {
            let router = known(router)?;
            cloud
                .add_router_interface(&router.id, &known(subnet)?.id)
                .await?;
            router.clone()
        }
        Action::CreateSecurityGroup { name } => {
            let body = json!({ "description": "flatstack cluster nodes" });
            id_of(
                &cloud
                    .create_tagged::<SecurityGroup>(
                        Kind::SecurityGroup,
                        name,
                        body,
                        &tags,
                        TAG_ON_CREATE,
                    )
                    .await?,
            )
        }
        Action::AddRule(r) => {
            let group = known(&r.group)?;
            let mut rule = r.rule.clone();
            if let Some(remote) = &r.remote_group {
                rule.remote_group_id = Some(known(remote)?.id.clone());
            }
            cloud.add_security_group_rule(&group.id, &rule).await?;
            group.clone()
        }
        Action::RemoveRule { rule, .. } => {
            cloud.delete_security_group_rule(&rule.id).await?;
            Made::id(&rule.id)
        }
        Action::CreateServerGroup { name, policy } => {
            Made::id(&cloud.create_server_group(name, policy).await?.id)
        }
        Action::CreatePort(p) => {
            let mut fixed = json!({ "subnet_id": known(&p.subnet)?.id });
            if let Some(address) = p.fixed_ip {
                fixed["ip_address"] = json!(address.to_string());
            }
            let groups = p
                .security_groups
                .iter()
                .map(|g| known(g).map(|m| m.id.clone()))
                .collect::<Result<Vec<_>, _>>()?;
            let mut body = json!({
                "network_id": known(&p.network)?.id,
                "fixed_ips": [fixed],
                "security_groups": groups,
            });
            if let Some(endpoint) = &p.allowed_address_of {
                let address = address_of(known(endpoint)?)?;
                body["allowed_address_pairs"] = json!([{ "ip_address": format!("{address}/32") }]);
            }
            let port: Port = cloud
                .create_tagged(Kind::Port, &p.name, body, &tags, TAG_ON_CREATE)
                .await?;
            Made {
                id: port.id.clone(),
                address: port.fixed_ips.first().map(|ip| ip.ip_address.clone()),
            }
        }
        Action::CreateLoadBalancer(lb) => {
            let (subnet, members, routers) = balancer_footing(cloud, lb).await?;
            let body = lb.body(&known(&lb.vip_port)?.id, subnet, &members, &routers);
            let made = cloud.create_load_balancer(&body).await?;
            let active = cloud
                .wait_load_balancer_active(&made.id, LOAD_BALANCER_TIMEOUT)
                .await?;
            Made {
                id: active.id,
                address: active.vip_address,
            }
        }
        Action::RepairLoadBalancer {
            id,
            request,
            repairs,
        } => {
            let (subnet, members, routers) = balancer_footing(cloud, request).await?;
            for repair in repairs {
                repair_load_balancer(cloud, id, request, repair, subnet, &members, &routers)
                    .await?;
            }
            Made::id(id)
        }
        Action::WaitLoadBalancer { id, .. } => {
            cloud
                .wait_load_balancer_active(id, LOAD_BALANCER_TIMEOUT)
                .await?;
            Made::id(id)
        }
        Action::DeleteLoadBalancer { id, .. } => {
            cloud
                .delete_load_balancer(id, LOAD_BALANCER_TIMEOUT)
                .await?;
            Made::id(id)
        }
        Action::AllowAddress { port, endpoint, .. } => {
            let address = address_of(known(endpoint)?)?;
            cloud
                .allow_address(&known(port)?.id, &address.to_string())
                .await?;
            known(port)?.clone()
        }
        Action::CreateFloatingIp {
            description,
            external_network_id,
            ..
        } => floating_made(
            &cloud
                .create_floating_ip(external_network_id, description, None, &tags, TAG_ON_CREATE)
                .await?,
        ),
        Action::AttachFloatingIp { floating, port, .. } => floating_made(
            &cloud
                .attach_floating_ip(&known(floating)?.id, Some(&known(port)?.id))
                .await?,
        ),
        Action::Adopt { kind, id, .. } => {
            cloud.set_tags(*kind, id, &tags).await?;
            Made::id(id)
        }
        // New nodes join with it: the API is waited for (a first control plane a stopped run
        // left may still be booting), and a silent one fails the step.
        Action::CreateJoinToken { valid_minutes } => {
            let kube = context.kube.as_ref().ok_or_else(|| {
                ApplyError::Missing(
                    "cannot make the join token new nodes need: the cluster's API has no address to reach it at".into(),
                )
            })?;
            kube.wait_ready(context.node_ready_within).await?;
            let token = join_token_of(context)?;
            kube.apply(&super::bootstrap::join_token_secret(token, *valid_minutes))
                .await?;
            Made::default()
        }
        Action::RenderIgnition {
            nodes,
            internal,
            public,
            initializer,
            boot,
        } => {
            // During an upgrade new nodes boot what the control planes run.
            let booted_spec = boot.as_ref().map(|b| b.applied_to(&context.spec));
            let spec = booted_spec.as_ref().unwrap_or(&context.spec);
            let endpoint = ApiEndpoint {
                internal: address_of(known(internal)?)?,
                public: known(public)?
                    .address
                    .as_deref()
                    .and_then(|a| a.parse().ok()),
            };
            let mut rendered = BTreeMap::new();
            let pki = pki_of(context)?;
            for node in nodes {
                let initializes = initializer.as_deref() == Some(node.name.as_str());
                let config = node::render_node(
                    spec,
                    pki,
                    &endpoint,
                    join_token_of(context)?,
                    node,
                    node::Bootstrap::of(node.role, initializes),
                    context.restore.as_ref(),
                )?;
                rendered.insert(node.name.clone(), (config.ignition, config.seal_key));
            }
            shared
                .configs
                .lock()
                .map_err(|_| ApplyError::Missing("the rendered configs were lost".into()))?
                .extend(rendered);
            Made::default()
        }
        Action::CreateServer(s) => {
            let rendered = shared
                .configs
                .lock()
                .map_err(|_| ApplyError::Missing("the rendered configs were lost".into()))?
                .get(&s.name)
                .cloned();
            // Next to the tags: the CA the node trusts, and the key to its sealed secrets.
            let mut metadata = s.metadata.clone();
            let pki = pki_of(context)?;
            metadata.insert(CA_METADATA.to_string(), pki.discovery_hash());
            // Control planes also record which key they encrypt Secrets with.
            let control_plane = crate::plan::resources::role_tag("control-plane");
            if let Some(key) = &pki.secrets_key
                && s.tags.contains(&control_plane)
            {
                metadata.insert(
                    crate::pki::secrets_key::FINGERPRINT_METADATA.to_string(),
                    key.fingerprint(),
                );
            }
            let user_data = rendered.map(|(ignition, key)| {
                metadata.insert(SEAL_KEY_METADATA.to_string(), key.expose_hex());
                ignition
            });
            let request = ServerRequest {
                name: s.name.clone(),
                flavor_id: s.flavor_id.clone(),
                image_id: s.image_id.clone(),
                port_ids: vec![known(&s.port)?.id.clone()],
                key_name: s.key_name.clone(),
                user_data,
                tags: s.tags.clone(),
                metadata,
                server_group_id: match &s.server_group {
                    Some(g) => Some(known(g)?.id.clone()),
                    None => None,
                },
                boot_volume_gb: s.boot_volume_gb,
            };
            Made::id(&cloud.create_server(&request).await?.id)
        }
        Action::AttachPort {
            server_id, port, ..
        } => {
            cloud.attach_port(server_id, &known(port)?.id).await?;
            Made::id(server_id)
        }
        Action::WaitActive { server, .. } => {
            let id = &known(server)?.id;
            shared.servers.until_active(id, SERVER_TIMEOUT).await?;
            Made::id(id)
        }
        // Readiness and drains report what they saw: run above.
        Action::WaitReady { .. }
        | Action::Drain { .. }
        | Action::RemoveEtcdMember { .. }
        | Action::RemoveStrayEtcdMember { .. }
        | Action::WaitEtcdMember { .. }
        | Action::DeleteNode { .. }
        | Action::HoldReboots { .. }
        | Action::UpgradeNode { .. }
        | Action::ReleaseReboots { .. }
        | Action::Uncordon { .. } => Made::default(),
        Action::DeleteServer { id, .. } => {
            cloud.delete_server(id).await?;
            cloud.wait_server_deleted(id, SERVER_TIMEOUT).await?;
            Made::id(id)
        }
        Action::DeletePort { id, .. } => {
            cloud.delete_resource(Kind::Port, id).await?;
            Made::id(id)
        }
        Action::DeleteDuplicate(owned) | Action::DeleteOwned(owned) => {
            use crate::plan::steps::Owned;
            match owned {
                Owned::FloatingIp { id, .. } => {
                    cloud.delete_resource(Kind::FloatingIp, id).await?;
                }
                Owned::Router { id, subnets, .. } => {
                    for subnet in subnets {
                        cloud.remove_router_interface(id, subnet).await?;
                    }
                    cloud.clear_router_gateway(id).await?;
                    cloud.delete_resource(Kind::Router, id).await?;
                }
                Owned::Subnet { id, routers, .. } => {
                    for router in routers {
                        cloud.remove_router_interface(router, id).await?;
                    }
                    cloud.delete_resource(Kind::Subnet, id).await?;
                }
                Owned::Network { id, .. } => {
                    cloud.delete_resource(Kind::Network, id).await?;
                }
                Owned::SecurityGroup { id, .. } => {
                    cloud.delete_resource(Kind::SecurityGroup, id).await?;
                }
                Owned::ServerGroup { id, .. } => cloud.delete_server_group(id).await?,
                Owned::Volume { id, .. } => {
                    cloud.delete_volume(id).await?;
                    super::wait_volume_gone(cloud, id).await?;
                }
            }
            Made::default()
        }
    })
}

fn floating_made(floating: &FloatingIp) -> Made {
    Made {
        id: floating.id.clone(),
        address: Some(floating.floating_ip_address.clone()),
    }
}
