//! Whose cluster this is: every server carries, in its metadata, the discovery hash of the CA
//! its node trusts (`flatstack-ca`), and every command that uses the PKI checks the state
//! directory's CA against it before it does anything. A state directory made elsewhere (or
//! minted afresh for a name that exists) is refused with both hashes named.

use std::path::Path;

use crate::cloud::compute::Server;
use crate::pki::ClusterPki;
pub(crate) use crate::plan::resources::cluster_ca;

/// A state directory whose CA is not the cluster's.
#[derive(Debug, thiserror::Error)]
#[error(
    "the state directory {} is not cluster `{cluster}`'s: its CA is {ours}, but the cluster's nodes trust {theirs}; nothing was changed\n  hint: use the state directory of the machine that made the cluster (copy it here or pass --state-dir); a CA minted afresh can never join this cluster's nodes",
    .state.display()
)]
pub struct ForeignPki {
    pub(crate) cluster: String,
    pub(crate) state: std::path::PathBuf,
    pub(crate) ours: String,
    pub(crate) theirs: String,
}

/// Refuses `pki` unless it is the CA the cluster's servers trust (or they say nothing).
pub(crate) fn check(
    cluster: &str,
    servers: &[Server],
    pki: &ClusterPki,
    state: &Path,
) -> Result<(), ForeignPki> {
    let ours = pki.discovery_hash();
    match cluster_ca(servers) {
        Some(theirs) if theirs != ours => Err(ForeignPki {
            cluster: cluster.to_string(),
            state: state.to_path_buf(),
            ours,
            theirs: theirs.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Whether the cluster encrypts its Secrets at rest with the state directory's key: a new
/// cluster (no control plane yet) will, and so does one whose control planes record the key's
/// fingerprint; one made before flatstack encrypted them does not (its ClusterConfiguration
/// has no flag), and its new control planes get no key and record none.
pub(crate) fn encrypts_secrets(servers: &[Server]) -> bool {
    let metadata = crate::pki::secrets_key::FINGERPRINT_METADATA;
    let control_planes: Vec<&Server> = servers
        .iter()
        .filter(|s| s.has_role("control-plane"))
        .collect();
    control_planes.is_empty()
        || control_planes
            .iter()
            .any(|s| s.metadata.contains_key(metadata))
}

/// A state directory whose Secrets key is not the one the cluster's control planes encrypt
/// with (or that has none while they record one).
#[derive(Debug, thiserror::Error)]
#[error(
    "the state directory {} does not hold the key cluster `{cluster}` encrypts its Secrets with: its control plane {server} records {theirs}, the state directory has {ours}; nothing was changed\n  hint: restore pki/{} from your backup of the state directory; a control plane given another key could read none of the cluster's Secrets",
    .state.display(),
    crate::pki::secrets_key::FILE
)]
pub struct ForeignSecretsKey {
    pub(crate) cluster: String,
    pub(crate) state: std::path::PathBuf,
    pub(crate) server: String,
    pub(crate) ours: String,
    pub(crate) theirs: String,
}

/// Refuses `pki` when a control plane records another Secrets key's fingerprint than its key's.
pub(crate) fn check_secrets_key(
    cluster: &str,
    servers: &[Server],
    pki: &ClusterPki,
    state: &Path,
) -> Result<(), ForeignSecretsKey> {
    let ours = pki.secrets_key.as_ref().map(|k| k.fingerprint());
    let metadata = crate::pki::secrets_key::FINGERPRINT_METADATA;
    let mut recorded: Vec<(&str, &str)> = servers
        .iter()
        .filter(|s| s.has_role("control-plane"))
        .filter_map(|s| Some((s.name.as_str(), s.metadata.get(metadata)?.as_str())))
        .collect();
    recorded.sort();
    match recorded
        .into_iter()
        .find(|(_, theirs)| Some(*theirs) != ours.as_deref())
    {
        Some((server, theirs)) => Err(ForeignSecretsKey {
            cluster: cluster.to_string(),
            state: state.to_path_buf(),
            server: server.to_string(),
            ours: ours.unwrap_or_else(|| "none".into()),
            theirs: theirs.to_string(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod secrets_key_tests {
    use super::*;

    fn control_plane(fingerprint: Option<&str>) -> Server {
        let mut metadata = serde_json::Map::new();
        if let Some(f) = fingerprint {
            metadata.insert(
                crate::pki::secrets_key::FINGERPRINT_METADATA.into(),
                serde_json::Value::String(f.into()),
            );
        }
        serde_json::from_value(serde_json::json!({
            "id": "cp", "name": "demo-control-plane-1", "status": "ACTIVE",
            "tags": [crate::plan::resources::role_tag("control-plane")],
            "metadata": metadata,
        }))
        .expect("server")
    }

    #[test]
    fn new_clusters_and_those_whose_control_planes_record_a_key_encrypt() {
        assert!(encrypts_secrets(&[]));
        assert!(encrypts_secrets(&[control_plane(Some("sha256:00"))]));
        assert!(!encrypts_secrets(&[control_plane(None)]));
    }

    #[test]
    fn a_key_the_control_planes_do_not_record_is_refused() {
        let mut pki = ClusterPki::generate().expect("pki");
        let ours = pki.secrets_key.as_ref().expect("key").fingerprint();
        let state = Path::new("/state");
        assert!(check_secrets_key("demo", &[control_plane(Some(&ours))], &pki, state).is_ok());
        assert!(check_secrets_key("demo", &[control_plane(None)], &pki, state).is_ok());
        let other = check_secrets_key("demo", &[control_plane(Some("sha256:00"))], &pki, state)
            .expect_err("another key");
        assert_eq!((other.ours, other.theirs), (ours, "sha256:00".to_string()));
        pki.secrets_key = None;
        let none = check_secrets_key("demo", &[control_plane(Some("sha256:00"))], &pki, state)
            .expect_err("no key");
        assert_eq!(none.ours, "none");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::plan::resources::{CA_METADATA, servers_trusting_another_ca};

    fn server(name: &str, role: &str, ca: Option<&str>) -> Server {
        serde_json::from_value(serde_json::json!({
            "id": name,
            "name": name,
            "status": "ACTIVE",
            "tags": [crate::plan::resources::role_tag(role)],
            "metadata": ca.map(|c| BTreeMap::from([(CA_METADATA, c)])).unwrap_or_default(),
        }))
        .expect("server")
    }

    #[test]
    fn the_control_planes_ca_is_the_clusters() {
        let servers = [
            server("a-default-1", "worker", Some("sha256:bbb")),
            server("a-control-plane-1", "control-plane", Some("sha256:aaa")),
            server("a-default-2", "worker", None),
        ];
        assert_eq!(cluster_ca(&servers), Some("sha256:aaa"));
        assert_eq!(cluster_ca(&servers[..1]), Some("sha256:bbb"));
        assert_eq!(cluster_ca(&servers[2..]), None);
        let foreign: Vec<(&str, &str)> = servers_trusting_another_ca(&servers, "sha256:aaa")
            .into_iter()
            .map(|(s, ca)| (s.name.as_str(), ca))
            .collect();
        assert_eq!(foreign, [("a-default-1", "sha256:bbb")]);
    }

    #[test]
    fn a_state_directory_with_another_ca_is_refused_with_both_hashes() {
        let pki = ClusterPki::generate().expect("pki");
        let ours = pki.discovery_hash();
        let servers = [server("a-control-plane-1", "control-plane", Some(&ours))];
        assert!(check("a", &servers, &pki, Path::new("/s")).is_ok());
        let other = ClusterPki::generate().expect("pki");
        let refused = check("a", &servers, &other, Path::new("/s")).expect_err("refused");
        let message = refused.to_string();
        assert!(message.contains(&ours), "{message}");
        assert!(message.contains(&other.discovery_hash()), "{message}");
        assert!(message.contains("/s is not cluster `a`'s"), "{message}");
    }
}
