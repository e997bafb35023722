//! `flatstack restore` inside `up`: the snapshot staged for the node that restores, the
//! control planes that run deleted (their etcd goes; the snapshot replaces it), the first
//! control plane built again to restore etcd before `kubeadm init`, the others to join it, the
//! workers kept. Once the restored API answers, a kept worker without a Node (made after the
//! snapshot was taken: its kubelet, already registered, never registers again) is built
//! again, a Node no server accounts for is deleted, and the staged blob is deleted.

use std::time::Duration;

use crate::backup::restore::{StageError, Staged};
use crate::backup::{Snapshot, envelope::BackupKey};
use crate::cloud::Cloud;
use crate::cloud::compute::Server;
use crate::node::restore::RestoreSource;
use crate::pki::StateDir;
use crate::spec::{ClusterSpec, Role};

/// How long deleting a control plane's server may take.
const DELETE_WITHIN: Duration = Duration::from_secs(600);

/// What `flatstack restore` asks of `up`.
#[derive(Debug, Clone)]
pub(crate) struct RestoreRequest {
    /// The snapshot, as the store listed it (checked for the cluster and its minor).
    pub(crate) snapshot: Snapshot,
}

/// A restore under way: what the initializing control plane gets, and where the blob is.
#[derive(Debug, Clone)]
pub(crate) struct Restoring {
    pub(crate) source: RestoreSource,
    pub(crate) staged: Staged,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(
        "the state directory {} holds no backup key ({}), so the snapshot cannot be opened\n  hint: use the state directory the cluster's backups were made with",
        path.display(), crate::backup::KEY_FILE
    )]
    NoKey { path: std::path::PathBuf },
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
    #[error("cannot delete control plane {name} before the restore")]
    Delete {
        name: String,
        #[source]
        source: Box<crate::cloud::CloudError>,
    },
    #[error("the operating system's random generator failed: {0}")]
    Random(String),
}

impl RestoreError {
    pub(crate) fn is_invalid_input(&self) -> bool {
        match self {
            RestoreError::NoKey { .. } => true,
            RestoreError::Backup(e) => e.is_invalid_input(),
            _ => false,
        }
    }
}

/// The control-plane servers a restore deletes: every one of the cluster's.
pub(crate) fn control_planes(servers: &[Server]) -> Vec<&Server> {
    servers
        .iter()
        .filter(|s| s.has_role("control-plane"))
        .collect()
}

/// Stages the snapshot, then deletes the control planes' servers (their ports, marked as
/// having run, stay for the new ones). Nothing is deleted unless the snapshot is staged and
/// its URL answers.
pub(crate) async fn begin(
    cloud: &Cloud,
    state: &StateDir,
    spec: &ClusterSpec,
    request: &RestoreRequest,
    servers: &[Server],
    say: &(dyn Fn(&str) + Sync),
) -> Result<Restoring, RestoreError> {
    let key: BackupKey = crate::backup::load_key(state)?.ok_or_else(|| RestoreError::NoKey {
        path: state.path().to_path_buf(),
    })?;
    let snapshot = &request.snapshot;
    say(&format!(
        "staging snapshot {} (taken {}, Kubernetes {}) for the control plane that restores it",
        snapshot.object, snapshot.name.taken, snapshot.name.kubernetes
    ));
    let staged = crate::backup::restore::stage(cloud, &key, snapshot).await?;
    say(&format!(
        "staged {} ({} of etcd data) in {}; readable through a TempURL for a day",
        staged.object,
        crate::backup::human_size(staged.bytes as u64),
        staged.container
    ));
    let doomed = control_planes(servers);
    for server in &doomed {
        say(&format!(
            "deleting control plane {} (the snapshot replaces its etcd)",
            server.name
        ));
        cloud
            .delete_server(&server.id)
            .await
            .map_err(|source| RestoreError::Delete {
                name: server.name.clone(),
                source: Box::new(source),
            })?;
    }
    for server in &doomed {
        cloud
            .wait_server_deleted(&server.id, DELETE_WITHIN)
            .await
            .map_err(|source| RestoreError::Delete {
                name: server.name.clone(),
                source: Box::new(source),
            })?;
    }
    // Every node whose server is not kept registers anew: the snapshot's Node of its name
    // (naming a server that is gone) is deleted before the API server starts.
    let kept: Vec<&str> = servers
        .iter()
        .filter(|s| !s.has_role("control-plane"))
        .map(|s| s.name.as_str())
        .collect();
    let stale_nodes = spec
        .nodes()
        .into_iter()
        .filter(|n| n.role == Role::ControlPlane || !kept.contains(&n.name.as_str()))
        .map(|n| n.name)
        .collect();
    let token = crate::pki::random_chars(12).map_err(|e| RestoreError::Random(e.to_string()))?;
    let source = RestoreSource {
        url: staged.url.clone(),
        key: staged.key.clone(),
        etcd_image: crate::pins::etcd_image(spec.kubernetes.version).to_string(),
        cluster_token: format!("{}-restored-{token}", spec.name),
        stale_nodes,
    };
    Ok(Restoring { source, staged })
}

/// The kept workers with no Node in the restored cluster.
pub(crate) fn without_node<'s>(
    servers: &'s [Server],
    nodes: &[k8s_openapi::api::core::v1::Node],
) -> Vec<&'s Server> {
    servers
        .iter()
        .filter(|s| !s.has_role("control-plane"))
        .filter(|s| {
            !nodes
                .iter()
                .any(|n| n.metadata.name.as_deref() == Some(s.name.as_str()))
        })
        .collect()
}

/// Nodes of the restored cluster that no node of the file and no server of the cluster
/// accounts for (a pool since shrunk, a server since deleted): their servers are gone for
/// good, and they are deleted rather than left NotReady.
pub(crate) fn gone_nodes(
    spec: &ClusterSpec,
    servers: &[Server],
    nodes: &[k8s_openapi::api::core::v1::Node],
) -> Vec<String> {
    let wanted: Vec<String> = spec.nodes().into_iter().map(|n| n.name).collect();
    nodes
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .filter(|n| !wanted.contains(n) && !servers.iter().any(|s| &s.name == n))
        .collect()
}
