//! Kubeconfig files signed locally by the cluster CA, so the workstation can talk to the API
//! the moment it answers, without fetching anything from a node.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;

use super::{CertAndKey, ClusterPki, PkiError};

/// Which identity a kubeconfig carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kubeconfig {
    /// `kubeadm:cluster-admins`: the everyday administrator, revocable through RBAC.
    Admin,
    /// `system:masters`: bypasses RBAC; for repairs when RBAC itself is broken.
    SuperAdmin,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct File<'a> {
    api_version: &'a str,
    kind: &'a str,
    clusters: Vec<Named<'a, Cluster>>,
    users: Vec<Named<'a, User>>,
    contexts: Vec<Named<'a, Context<'a>>>,
    current_context: &'a str,
}

#[derive(Serialize)]
struct Named<'a, T> {
    name: &'a str,
    #[serde(flatten)]
    item: T,
}

#[derive(Serialize)]
struct Cluster {
    cluster: ClusterEntry,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct ClusterEntry {
    server: String,
    certificate_authority_data: String,
}

#[derive(Serialize)]
struct User {
    user: UserEntry,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct UserEntry {
    client_certificate_data: String,
    client_key_data: String,
}

#[derive(Serialize)]
struct Context<'a> {
    context: ContextEntry<'a>,
}

#[derive(Serialize)]
struct ContextEntry<'a> {
    cluster: &'a str,
    user: &'a str,
}

/// A kubeconfig for `cluster` at `server` (e.g. `https://203.0.113.7:6443`), with the
/// context named after the cluster.
pub fn kubeconfig_yaml(
    pki: &ClusterPki,
    cluster: &str,
    server: &str,
    who: Kubeconfig,
) -> Result<String, PkiError> {
    let (user, identity): (String, &CertAndKey) = match who {
        Kubeconfig::Admin => (format!("{cluster}-admin"), &pki.admin),
        Kubeconfig::SuperAdmin => (format!("{cluster}-super-admin"), &pki.super_admin),
    };
    let context = match who {
        Kubeconfig::Admin => cluster.to_string(),
        Kubeconfig::SuperAdmin => format!("{cluster}-super-admin"),
    };
    let file = File {
        api_version: "v1",
        kind: "Config",
        clusters: vec![Named {
            name: cluster,
            item: Cluster {
                cluster: ClusterEntry {
                    server: server.to_string(),
                    certificate_authority_data: STANDARD.encode(&pki.ca.cert_pem),
                },
            },
        }],
        users: vec![Named {
            name: &user,
            item: User {
                user: UserEntry {
                    client_certificate_data: STANDARD.encode(&identity.cert_pem),
                    client_key_data: STANDARD.encode(identity.key_pem.expose()),
                },
            },
        }],
        contexts: vec![Named {
            name: &context,
            item: Context {
                context: ContextEntry {
                    cluster,
                    user: &user,
                },
            },
        }],
        current_context: &context,
    };
    serde_saphyr::to_string(&file).map_err(|e| PkiError::Serialize(e.to_string()))
}
