//! `flatstack restore` inside `up`: the snapshot staged for the node that restores, the
//! control planes that run deleted (their etcd goes; the snapshot replaces it), the first
//! control plane built again to restore etcd before `kubeadm init`, the others to join it, the
//! workers kept. Once the restored API answers, a kept worker without a Node (made after the
//! snapshot was taken: its kubelet, already registered, never registers again) is built
//! again, a Node no server accounts for is deleted, every Secret is written again (so one
//! from a snapshot of an unencrypted cluster is stored encrypted), and the staged blob is
//! deleted.

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
    #[error(transparent)]
    State(#[from] crate::pki::PkiError),
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
            RestoreError::State(e) => e.is_invalid_input(),
            _ => false,
        }
    }
}

/// The state directory's record of a restore whose cluster has not yet been seen running: the
/// container its staged blob is in. Written before anything is deleted; `up` finishes what a
/// stopped restore left (workers without a Node, the blob) and removes it.
pub(crate) const PENDING: &str = "restore-pending";

/// The container of a restore not yet finished, as the state directory records it.
pub(crate) fn pending(state: &StateDir) -> Result<Option<String>, crate::pki::PkiError> {
    match state.read_public(PENDING) {
        Ok(text) => Ok(Some(text.trim().to_string()).filter(|c| !c.is_empty())),
        Err(crate::pki::PkiError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The restore is finished: the record goes.
pub(crate) fn finished(state: &StateDir) -> Result<(), crate::pki::PkiError> {
    let path = state.join(PENDING);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(crate::pki::PkiError::io("remove", &path, e))
        }
        _ => Ok(()),
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
    let store = crate::backup::Store::of(cloud, spec).map_err(crate::backup::BackupError::from)?;
    let staged = crate::backup::restore::stage(&store, &key, snapshot).await?;
    state.write(PENDING, staged.container.as_bytes(), 0o600)?;
    say(&format!(
        "staged {} ({} of etcd data) in {}; readable through a signed URL for a day",
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
        match cloud.delete_server(&server.id).await {
            Err(e) if e.is_not_found() => {}
            result => result.map_err(|source| RestoreError::Delete {
                name: server.name.clone(),
                source: Box::new(source),
            })?,
        }
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
        ca_bundle: staged.ca_bundle.clone(),
        insecure: staged.insecure,
    };
    Ok(Restoring { source, staged })
}

/// A worker the restored cluster has no Node of its own for: none of its name (made after the
/// snapshot), or one naming another server (rebuilt under the same name since; the cloud
/// controller would delete it, and the kubelet, registered already, never registers again).
#[derive(Debug)]
pub(crate) struct Unregistered<'s> {
    pub(crate) server: &'s Server,
    /// The Node of its name to delete before the server is built again.
    pub(crate) stale_node: Option<String>,
}

/// The workers of `servers` without a Node of their own among `nodes`. A Node whose provider
/// ID (`openstack:///<id>`, or `openstack://<region>/<id>`) names another server is not theirs;
/// one without a provider ID yet (not initialized) is taken as theirs.
pub(crate) fn unregistered<'s>(
    servers: &'s [Server],
    nodes: &[k8s_openapi::api::core::v1::Node],
) -> Vec<Unregistered<'s>> {
    servers
        .iter()
        .filter(|s| !s.has_role("control-plane") && !s.failed_build())
        .filter_map(|server| {
            let node = nodes
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(server.name.as_str()));
            let provider = node
                .and_then(|n| n.spec.as_ref())
                .and_then(|s| s.provider_id.as_deref());
            match (node, provider) {
                (None, _) => Some(Unregistered {
                    server,
                    stale_node: None,
                }),
                (Some(_), Some(id)) if !id.ends_with(&format!("/{}", server.id)) => {
                    Some(Unregistered {
                        server,
                        stale_node: Some(server.name.clone()),
                    })
                }
                _ => None,
            }
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

/// What writing the Secrets back did.
#[derive(Debug, Default)]
pub(crate) struct Rewritten {
    pub(crate) written: usize,
    /// `namespace/name` of those the API server refused (a webhook not yet reachable, say).
    pub(crate) failed: Vec<String>,
    /// The first refusal, for the warning.
    pub(crate) first_error: Option<String>,
}

/// Secrets listed a page at a time, as `kubectl get` pages.
const SECRETS_PAGE: usize = 500;

/// Writes every Secret back unchanged, as upstream's procedure for data written before
/// encryption was turned on does (`kubectl get secrets -A -o json | kubectl replace -f -`): the
/// API server stores a Secret it read through a provider other than the first (`identity`:
/// written in clear) again under the first (`secretbox`), and skips one already stored so
/// (`GuaranteedUpdate` in apiserver's `storage/etcd3/store.go` writes an unchanged object only
/// when its stored form is stale). A Secret changed or deleted meanwhile was written under the
/// first provider already, or is gone: skipped. One the API server refuses otherwise is
/// counted and named, not fatal: the restore goes on.
pub(crate) async fn rewrite_secrets(
    client: &crate::kube::KubeClient,
) -> Result<Rewritten, crate::kube::KubeError> {
    let mut rewritten = Rewritten::default();
    let mut next = String::new();
    loop {
        let path = match next.is_empty() {
            true => format!("/api/v1/secrets?limit={SECRETS_PAGE}"),
            false => format!(
                "/api/v1/secrets?limit={SECRETS_PAGE}&continue={}",
                crate::cloud::query_escape(&next)
            ),
        };
        let page: serde_json::Value = client.get(&path).await?.unwrap_or_default();
        for secret in page["items"].as_array().cloned().unwrap_or_default() {
            rewrite_one(client, secret, &mut rewritten).await;
        }
        match page["metadata"]["continue"].as_str() {
            Some(token) if !token.is_empty() && token != next => next = token.to_string(),
            _ => return Ok(rewritten),
        }
    }
}

async fn rewrite_one(
    client: &crate::kube::KubeClient,
    mut secret: serde_json::Value,
    rewritten: &mut Rewritten,
) {
    let metadata = &secret["metadata"];
    let (Some(namespace), Some(name)) = (
        metadata["namespace"].as_str().map(str::to_string),
        metadata["name"].as_str().map(str::to_string),
    ) else {
        return;
    };
    // List items carry no kind; the object written back says what it is.
    secret["apiVersion"] = "v1".into();
    secret["kind"] = "Secret".into();
    let path = format!("/api/v1/namespaces/{namespace}/secrets/{name}");
    match client.replace(&path, &secret).await {
        Ok(()) => rewritten.written += 1,
        Err(e) if e.is_conflict() || e.is_not_found() => {}
        Err(e) => {
            rewritten.failed.push(format!("{namespace}/{name}"));
            rewritten.first_error.get_or_insert_with(|| e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Node, NodeSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn server(name: &str, id: &str, role: &str) -> Server {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": name, "status": "ACTIVE",
            "tags": [crate::plan::resources::role_tag(role)],
        }))
        .expect("a server")
    }

    fn node(name: &str, provider: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                provider_id: provider.map(str::to_string),
                ..NodeSpec::default()
            }),
            ..Node::default()
        }
    }

    /// A worker is kept as it is when its Node names its server (or names none yet); one
    /// without a Node, or whose Node names another server, is built again, that Node deleted.
    #[test]
    fn workers_without_a_node_of_their_own_are_found() {
        let servers = [
            server("demo-control-plane-1", "c1", "control-plane"),
            server("demo-default-1", "w1", "worker"),
            server("demo-default-2", "w2", "worker"),
            server("demo-default-3", "w3", "worker"),
            server("demo-default-4", "w4", "worker"),
        ];
        let nodes = [
            node("demo-default-1", Some("openstack:///w1")),
            node("demo-default-2", Some("openstack://RegionOne/old-w2")),
            node("demo-default-4", None),
        ];
        let found: Vec<(&str, Option<String>)> = unregistered(&servers, &nodes)
            .into_iter()
            .map(|u| (u.server.name.as_str(), u.stale_node))
            .collect();
        assert_eq!(
            found,
            [
                ("demo-default-2", Some("demo-default-2".to_string())),
                ("demo-default-3", None),
            ]
        );
    }
}
