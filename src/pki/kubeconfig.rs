//! Kubeconfig files signed locally by the cluster CA, so the workstation can talk to the API
//! the moment it answers, without fetching anything from a node.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;

use super::{CertAndKey, ClusterPki, PkiError};

/// Which identity a kubeconfig carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kubeconfig {
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
pub(crate) fn kubeconfig_yaml(
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

/// Merges `ours` into the user's kubeconfig: the first file of `$KUBECONFIG`, else
/// `~/.kube/config` (made if missing, written atomically with mode 0600). Returns its path.
pub(crate) fn merge_into_user_kubeconfig(ours: &str) -> Result<std::path::PathBuf, PkiError> {
    let path = match std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        Some(list) => std::env::split_paths(&list)
            .next()
            .ok_or(PkiError::NoUserKubeconfig("$KUBECONFIG names no file"))?,
        None => std::env::var_os("HOME")
            .map(|home| std::path::PathBuf::from(home).join(".kube").join("config"))
            .ok_or(PkiError::NoUserKubeconfig(
                "neither $KUBECONFIG nor $HOME is set",
            ))?,
    };
    let existing = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(PkiError::io("read", &path, e)),
    };
    let merged = merge_kubeconfig(existing.as_deref(), ours)
        .map_err(|e| PkiError::Serialize(format!("{}: {e}", path.display())))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| PkiError::io("create", dir, e))?;
    }
    super::write_atomically(&path, merged.as_bytes(), 0o600)?;
    Ok(path)
}

/// Merges the kubeconfig `ours` into `existing` (a user's `~/.kube/config`, if any): entries of
/// the same names are replaced, everything else is kept, and `ours`' context becomes current.
pub(crate) fn merge_kubeconfig(existing: Option<&str>, ours: &str) -> Result<String, PkiError> {
    let parse = |text: &str, what: &str| {
        serde_saphyr::from_str::<serde_json::Value>(text)
            .map_err(|e| PkiError::Serialize(format!("{what} is not a kubeconfig: {e}")))
    };
    let ours = parse(ours, "the cluster's kubeconfig")?;
    let mut merged = match existing.map(str::trim) {
        Some(text) if !text.is_empty() => parse(text, "the kubeconfig to merge into")?,
        _ => serde_json::json!({"apiVersion": "v1", "kind": "Config", "preferences": {}}),
    };
    let Some(target) = merged.as_object_mut() else {
        return Err(PkiError::Serialize(
            "the kubeconfig to merge into is not a mapping".into(),
        ));
    };
    for list in ["clusters", "users", "contexts"] {
        let incoming = ours[list].as_array().cloned().unwrap_or_default();
        let names: Vec<&serde_json::Value> = incoming.iter().map(|e| &e["name"]).collect();
        let mut entries: Vec<serde_json::Value> = target
            .get(list)
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| !names.contains(&&e["name"]))
            .collect();
        entries.extend(incoming);
        target.insert(list.to_string(), serde_json::Value::Array(entries));
    }
    target.insert("current-context".into(), ours["current-context"].clone());
    serde_saphyr::to_string(&merged).map_err(|e| PkiError::Serialize(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: demo\n  cluster:\n    server: https://203.0.113.7:6443\nusers:\n- name: demo-admin\n  user:\n    client-key-data: a2V5\ncontexts:\n- name: demo\n  context:\n    cluster: demo\n    user: demo-admin\ncurrent-context: demo\n";

    #[test]
    fn merging_replaces_same_names_and_keeps_the_rest() {
        let existing = "apiVersion: v1\nkind: Config\nclusters:\n- name: demo\n  cluster:\n    server: https://old:6443\n- name: other\n  cluster:\n    server: https://other:6443\nusers:\n- name: other-user\n  user:\n    token: t\ncontexts:\n- name: other\n  context:\n    cluster: other\n    user: other-user\ncurrent-context: other\npreferences: {}\n";
        let merged = merge_kubeconfig(Some(existing), OURS).expect("merged");
        let value: serde_json::Value = serde_saphyr::from_str(&merged).expect("yaml");
        let names = |list: &str| -> Vec<String> {
            value[list]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["name"].as_str().map(str::to_string))
                .collect()
        };
        assert_eq!(names("clusters"), ["other", "demo"]);
        assert_eq!(names("users"), ["other-user", "demo-admin"]);
        assert_eq!(names("contexts"), ["other", "demo"]);
        assert_eq!(value["current-context"], "demo");
        assert_eq!(
            value["clusters"][1]["cluster"]["server"],
            "https://203.0.113.7:6443"
        );
        assert_eq!(value["users"][0]["user"]["token"], "t");
    }

    #[test]
    fn merging_into_nothing_makes_a_new_file() {
        let merged = merge_kubeconfig(None, OURS).expect("merged");
        let value: serde_json::Value = serde_saphyr::from_str(&merged).expect("yaml");
        assert_eq!(value["kind"], "Config");
        assert_eq!(value["contexts"][0]["name"], "demo");
        assert!(merge_kubeconfig(Some("- just\n- a list\n"), OURS).is_err());
    }
}
