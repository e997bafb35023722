//! The engine: observe the cloud ([`observe`]), check it can hold the cluster ([`preflight`]),
//! run the plan the planner makes from that observation ([`execute`]), show when each step ran
//! ([`timeline`]); bootstrap the cluster and its add-ons; and remove everything again. Every
//! run starts from a fresh observation, so re-running after any failure converges and a
//! converged cluster makes no mutating call.

pub mod bootstrap;
pub mod charts;
pub(crate) mod cluster;
pub(crate) mod down;
pub(crate) mod execute;
pub mod identity;
pub(crate) mod jupyterhub;
pub(crate) mod observe;
pub(crate) mod preflight;
pub(crate) mod ranges;
pub mod record;
pub(crate) mod restore;
pub(crate) mod smoke;
pub(crate) mod status;
pub(crate) mod timeline;
pub(crate) mod up;
mod upgrade;
mod watch;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cloud::compute::Server;
use crate::cloud::{Cloud, CloudError};
use crate::node::{ApiEndpoint, NodeError};
use crate::plan::resources::{CSI_CLUSTER_KEY, Names, cluster_tag};
use crate::plan::steps::{Action, Plan};
use crate::spec::Role;
use execute::{Context, Event, StepFailed, StepRun};
use observe::Observation;

impl ApplyError {
    /// Whether what must change is the input (the state directory given), not the cloud.
    pub(crate) fn is_invalid_input(&self) -> bool {
        matches!(self, ApplyError::Foreign(_))
    }
}

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
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
    #[error(transparent)]
    Plan(#[from] crate::plan::planner::PlanError),
    #[error(transparent)]
    Step(#[from] StepFailed),
    #[error("draining {node} failed, nothing was deleted")]
    Drain {
        node: String,
        #[source]
        source: crate::kube::KubeError,
    },
    #[error(
        "upgrading {node} to {to} stopped: it is {stands}; every other node is as it was\n  hint: fix what its log shows, then run `flatstack up` again: it continues where this stopped"
    )]
    Upgrade {
        node: String,
        to: crate::pins::KubernetesVersion,
        /// Where the node stands.
        stands: String,
        #[source]
        source: Box<crate::kube::KubeError>,
    },
    #[error("{0}")]
    Missing(String),
    /// The state directory is not the cluster's: exit code 2, nothing changed.
    #[error(transparent)]
    Foreign(#[from] identity::ForeignPki),
    #[error("{count} resource(s) of cluster `{cluster}` remain after deleting:\n  {}", remaining.join("\n  "))]
    Leftovers {
        cluster: String,
        count: usize,
        remaining: Vec<String>,
    },
}

/// What provisioning produced.
#[derive(Debug)]
pub(crate) struct Provisioned {
    pub(crate) endpoint: ApiEndpoint,
    /// The subnet the nodes are on, and the external network floating IPs come from: what
    /// the cloud controller's load balancers need.
    pub(crate) subnet_id: String,
    pub(crate) external_network_id: String,
    pub(crate) servers: Vec<Server>,
    /// When each step ran.
    pub(crate) runs: Vec<StepRun>,
}

/// Runs `plan` (made from `observation`) and returns what the cloud side is then: the API's
/// addresses, the subnet and external network, and every server.
pub(crate) async fn provision(
    context: Arc<Context>,
    observation: &Observation,
    plan: &Plan,
    started: Instant,
    events: &(dyn Fn(Event) + Sync),
) -> Result<Provisioned, ApplyError> {
    let executed = execute::execute(plan, context.clone(), started, events).await?;
    let spec = &context.spec;
    let names = Names::of(&spec.name);
    let observed = &observation.observed;
    // What a step of the plan made.
    let made_by = |wanted: &dyn Fn(&Action) -> bool| {
        plan.steps
            .iter()
            .find(|s| wanted(&s.action))
            .and_then(|s| executed.made.get(s.id).cloned().flatten())
    };
    let first = spec
        .nodes()
        .into_iter()
        .find(|n| n.role == Role::ControlPlane)
        .ok_or_else(|| ApplyError::Missing("the cluster has no control plane".into()))?;
    let internal = made_by(&|a| matches!(a, Action::CreatePort(p) if p.name == first.name))
        .and_then(|m| m.address)
        .or_else(|| {
            observed
                .ports
                .iter()
                .find(|p| p.name == first.name)
                .and_then(|p| p.fixed_ips.first())
                .map(|ip| ip.ip_address.clone())
        })
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| ApplyError::Missing(format!("port {} has no IPv4 address", first.name)))?;
    let public = made_by(&|a| matches!(a, Action::CreateFloatingIp { .. }))
        .and_then(|m| m.address)
        .or_else(|| {
            observed
                .api_floating_ip(&spec.name)
                .map(|f| f.floating_ip_address.clone())
        })
        .and_then(|a| a.parse().ok());
    let subnet_id = match &observation.facts.reused {
        Some((_, subnet)) => Some(subnet.id.clone()),
        None => made_by(&|a| matches!(a, Action::CreateSubnet(_)))
            .map(|m| m.id)
            .or_else(|| {
                observed
                    .subnets
                    .iter()
                    .find(|s| s.name == names.subnet)
                    .map(|s| s.id.clone())
            }),
    }
    .unwrap_or_default();
    let external_network_id = observation
        .facts
        .external_network
        .as_ref()
        .map(|n| n.id.clone())
        .unwrap_or_default();
    // Unchanged servers as observed; after a change, as they are now.
    let mut servers = if plan.is_empty() {
        observed.servers.clone()
    } else {
        let tag = cluster_tag(&spec.name);
        context.cloud.servers_tagged(&[tag.as_str()]).await?
    };
    servers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Provisioned {
        endpoint: ApiEndpoint { internal, public },
        subnet_id,
        external_network_id,
        servers,
        runs: executed.runs,
    })
}

/// Deletes everything the cluster owns: `down`'s plan ([`crate::plan::teardown`]) from a fresh
/// observation, run by the executor as `up`'s is; then checks nothing is left.
pub(crate) async fn teardown(
    cloud: &Arc<Cloud>,
    spec: &crate::spec::ClusterSpec,
    delete_volumes: bool,
    say: &(dyn Fn(&str) + Sync),
) -> Result<(), ApplyError> {
    let cluster = spec.name.as_str();
    let ((observed, _), volumes) = tokio::try_join!(
        observe::cluster_resources(cloud, spec),
        cluster_volumes(cloud, cluster),
    )?;
    let snapshots = cluster_volume_snapshots(cloud, cluster, &volumes).await?;
    // Persistent volumes and their snapshots outlive the cluster unless asked for: they hold
    // people's data.
    if !delete_volumes {
        for volume in &volumes {
            say(&format!(
                "keeping volume {} ({} GB); `down --delete-volumes` removes it",
                volume.name.as_deref().unwrap_or(&volume.id),
                volume.size
            ));
        }
        for snapshot in &snapshots {
            say(&format!(
                "keeping volume snapshot {} ({} GB); `down --delete-volumes` removes it",
                snapshot.name.as_deref().unwrap_or(&snapshot.id),
                snapshot.size
            ));
        }
    } else {
        // Before the volumes: Cinder deletes no volume that has snapshots.
        for snapshot in &snapshots {
            say(&format!(
                "deleting volume snapshot {}",
                snapshot.name.as_deref().unwrap_or(&snapshot.id)
            ));
            cloud
                .delete_volume_snapshot(&snapshot.id, SERVER_TIMEOUT)
                .await?;
        }
    }
    let plan = crate::plan::teardown::teardown(&observed, &volumes, delete_volumes);
    let context = Arc::new(Context {
        cloud: cloud.clone(),
        spec: spec.clone(),
        pki: None,
        join_token: None,
        kube: None,
        node_ready_within: SERVER_TIMEOUT,
        restore: None,
    });
    let report = |event: Event| match event {
        Event::Started { line } | Event::Finished { line } | Event::Say(line) => say(&line),
        Event::ServersActive { .. } => {}
    };
    execute::execute(&plan, context, std::time::Instant::now(), &report).await?;
    let (left, _) = observe::cluster_resources(cloud, spec).await?;
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

/// Volumes the cluster's Cinder CSI driver created (persistent volumes), by their metadata.
pub(crate) async fn cluster_volumes(
    cloud: &Cloud,
    cluster: &str,
) -> Result<Vec<crate::cloud::volume::Volume>, CloudError> {
    Ok(cloud
        .volumes()
        .await?
        .into_iter()
        .filter(|v| v.metadata.get(CSI_CLUSTER_KEY).map(String::as_str) == Some(cluster))
        .collect())
}

/// The cluster's volume snapshots: those Cinder CSI made for it (its cluster ID in their
/// metadata), and any other of its volumes' (a volume with snapshots cannot be deleted).
pub(crate) async fn cluster_volume_snapshots(
    cloud: &Cloud,
    cluster: &str,
    volumes: &[crate::cloud::volume::Volume],
) -> Result<Vec<crate::cloud::volume::VolumeSnapshot>, CloudError> {
    Ok(cloud
        .volume_snapshots()
        .await?
        .into_iter()
        .filter(|s| {
            s.metadata.get(CSI_CLUSTER_KEY).map(String::as_str) == Some(cluster)
                || volumes.iter().any(|v| v.id == s.volume_id)
        })
        .collect())
}

pub(crate) async fn wait_volume_gone(cloud: &Cloud, id: &str) -> Result<(), CloudError> {
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
