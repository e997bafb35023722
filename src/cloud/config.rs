//! Which cloud to talk to and how to log in, found exactly as the `openstack` CLI finds it:
//! a `clouds.yaml` entry (merged with `secure.yaml`) named by `--cloud` / `OS_CLOUD`, or the
//! `OS_*` variables of an openrc file. Password and application-credential auth.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::CloudError;
use crate::secret::Secret;

/// Everything needed to authenticate and pick endpoints.
#[derive(Debug, Clone)]
pub struct CloudConfig {
    /// The clouds.yaml entry, or `OS_* variables`.
    pub(crate) name: String,
    pub(crate) auth_url: String,
    pub(crate) credentials: Credentials,
    pub(crate) region: Option<String>,
    /// Endpoint interface: `public` (default), `internal` or `admin`.
    pub(crate) interface: String,
    /// Extra CA bundle (PEM) for clouds with a private CA.
    pub(crate) cacert: Option<PathBuf>,
    /// `verify: false` in clouds.yaml: accept any server certificate.
    pub(crate) insecure: bool,
    /// Endpoints used instead of the catalog's, by service (`compute`, `network`, `image`,
    /// `block-storage`), from clouds.yaml's `<service>_endpoint_override` keys.
    pub(crate) endpoint_overrides: BTreeMap<String, String>,
    /// An S3 access key for backups, from the entry's `s3` (`access_key_id`,
    /// `secret_access_key`; secure.yaml is the place for it).
    pub(crate) s3_keys: Option<super::sigv4::S3Keys>,
}

#[derive(Debug, Clone)]
pub enum Credentials {
    Password {
        user: Identity,
        password: Secret,
        project: Option<Identity>,
    },
    ApplicationCredential {
        /// By ID, or by name together with the user that owns it.
        id: Option<String>,
        name: Option<String>,
        user: Option<Identity>,
        secret: Secret,
    },
}

/// A user or project, by ID or by name within a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Id(String),
    Name { name: String, domain: Domain },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Domain {
    Id(String),
    Name(String),
}

#[derive(Debug, Default, Deserialize)]
struct Entry {
    auth_type: Option<String>,
    #[serde(default)]
    auth: Auth,
    region_name: Option<String>,
    interface: Option<String>,
    endpoint_type: Option<String>,
    cacert: Option<PathBuf>,
    verify: Option<bool>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
struct Auth {
    auth_url: Option<String>,
    username: Option<String>,
    user_id: Option<String>,
    password: Option<Secret>,
    project_name: Option<String>,
    project_id: Option<String>,
    // Older names some clouds.yaml files still use.
    tenant_name: Option<String>,
    tenant_id: Option<String>,
    user_domain_name: Option<String>,
    user_domain_id: Option<String>,
    project_domain_name: Option<String>,
    project_domain_id: Option<String>,
    domain_name: Option<String>,
    domain_id: Option<String>,
    application_credential_id: Option<String>,
    application_credential_name: Option<String>,
    application_credential_secret: Option<Secret>,
}

/// Where clouds.yaml and secure.yaml are looked for, in order, as the openstack CLI does.
pub(crate) fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from(".")];
    match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(config) => dirs.push(PathBuf::from(config).join("openstack")),
        None => {
            if let Some(home) = std::env::var_os("HOME") {
                dirs.push(PathBuf::from(home).join(".config/openstack"));
            }
        }
    }
    dirs.push(PathBuf::from("/etc/openstack"));
    dirs
}

impl CloudConfig {
    /// Resolves the cloud: the clouds.yaml entry `wanted`, else the one `OS_CLOUD` names, else
    /// the `OS_*` variables of an openrc file.
    pub(crate) fn resolve(wanted: Option<&str>) -> Result<CloudConfig, CloudError> {
        let env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("OS_"))
            .collect();
        let os_cloud = env.get("OS_CLOUD").filter(|v| !v.is_empty()).cloned();
        match wanted.or(os_cloud.as_deref()) {
            Some(name) => CloudConfig::from_files(name, &env),
            None if env.contains_key("OS_AUTH_URL") => CloudConfig::from_env(&env),
            None => Err(CloudError::Config(
                "no cloud chosen: set OS_CLOUD, pass --cloud, or source an openrc file (OS_AUTH_URL ...)".into(),
            )),
        }
    }

    /// The entry `name` of a given clouds.yaml (with a secure.yaml beside it, if any).
    pub fn from_clouds_yaml(file: &Path, name: &str) -> Result<CloudConfig, CloudError> {
        let mut env = BTreeMap::new();
        env.insert(
            "OS_CLIENT_CONFIG_FILE".to_string(),
            file.display().to_string(),
        );
        CloudConfig::from_files(name, &env)
    }

    fn from_files(name: &str, env: &BTreeMap<String, String>) -> Result<CloudConfig, CloudError> {
        let clouds_file = match env.get("OS_CLIENT_CONFIG_FILE").filter(|v| !v.is_empty()) {
            Some(file) => Some(PathBuf::from(file)),
            None => search_dirs()
                .into_iter()
                .map(|d| d.join("clouds.yaml"))
                .find(|p| p.is_file()),
        };
        let Some(clouds_file) = clouds_file else {
            return Err(CloudError::Config(format!(
                "cloud `{name}` was asked for, but no clouds.yaml exists in {}\n  hint: download one from your cloud's dashboard (Jetstream2: Identity > Application Credentials), or set OS_CLIENT_CONFIG_FILE",
                search_dirs()
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let mut clouds = read_clouds(&clouds_file)?;
        let secure_dir = clouds_file.parent().unwrap_or(Path::new("."));
        let secure = std::iter::once(secure_dir.to_path_buf())
            .chain(search_dirs())
            .map(|d| d.join("secure.yaml"))
            .find(|p| p.is_file());
        if let Some(secure) = secure {
            merge(&mut clouds, read_clouds(&secure)?);
        }
        let Some(entry) = clouds.get(name) else {
            let known: Vec<&String> = match &clouds {
                Value::Object(map) => map.keys().collect(),
                _ => Vec::new(),
            };
            return Err(CloudError::Config(format!(
                "cloud `{name}` is not in {} (it has: {})\n  hint: set `cloud` in the cluster file or OS_CLOUD to one of those",
                clouds_file.display(),
                if known.is_empty() {
                    "no clouds".to_string()
                } else {
                    known
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )));
        };
        let entry: Entry = serde_json::from_value(scalars_as_strings(entry)).map_err(|_| {
            CloudError::Config(format!(
                "cloud `{name}` in {} has a value of the wrong type (values are not shown: they may be credentials)\n  hint: compare the entry with the one your cloud's dashboard wrote",
                clouds_file.display()
            ))
        })?;
        CloudConfig::from_entry(name, entry, &clouds_file.display().to_string())
    }

    fn from_env(env: &BTreeMap<String, String>) -> Result<CloudConfig, CloudError> {
        let get = |key: &str| env.get(key).filter(|v| !v.is_empty()).cloned();
        let entry = Entry {
            auth_type: get("OS_AUTH_TYPE"),
            auth: Auth {
                auth_url: get("OS_AUTH_URL"),
                username: get("OS_USERNAME"),
                user_id: get("OS_USER_ID"),
                password: get("OS_PASSWORD").map(Secret::new),
                project_name: get("OS_PROJECT_NAME").or_else(|| get("OS_TENANT_NAME")),
                project_id: get("OS_PROJECT_ID").or_else(|| get("OS_TENANT_ID")),
                user_domain_name: get("OS_USER_DOMAIN_NAME"),
                user_domain_id: get("OS_USER_DOMAIN_ID"),
                project_domain_name: get("OS_PROJECT_DOMAIN_NAME"),
                project_domain_id: get("OS_PROJECT_DOMAIN_ID"),
                domain_name: get("OS_DOMAIN_NAME"),
                domain_id: get("OS_DOMAIN_ID"),
                application_credential_id: get("OS_APPLICATION_CREDENTIAL_ID"),
                application_credential_name: get("OS_APPLICATION_CREDENTIAL_NAME"),
                application_credential_secret: get("OS_APPLICATION_CREDENTIAL_SECRET")
                    .map(Secret::new),
                ..Auth::default()
            },
            region_name: get("OS_REGION_NAME"),
            interface: get("OS_INTERFACE").or_else(|| get("OS_ENDPOINT_TYPE")),
            cacert: get("OS_CACERT").map(PathBuf::from),
            ..Entry::default()
        };
        CloudConfig::from_entry("OS_* variables", entry, "the OS_* variables")
    }

    fn from_entry(name: &str, entry: Entry, source: &str) -> Result<CloudConfig, CloudError> {
        let missing =
            |what: &str| CloudError::Config(format!("cloud `{name}` ({source}) has no {what}"));
        let auth = entry.auth;
        let auth_url = auth.auth_url.clone().ok_or_else(|| missing("auth_url"))?;
        let url_ok = reqwest::Url::parse(&auth_url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
        if !url_ok {
            return Err(CloudError::Config(format!(
                "cloud `{name}` ({source}) has auth_url `{auth_url}`, which is not an http(s) URL\n  hint: Keystone's URL looks like https://keystone.example.org:5000/v3"
            )));
        }
        let default_domain = auth
            .domain_name
            .clone()
            .map(Domain::Name)
            .or(auth.domain_id.clone().map(Domain::Id));
        let domain = |name: &Option<String>, id: &Option<String>| {
            name.clone()
                .map(Domain::Name)
                .or(id.clone().map(Domain::Id))
                .or(default_domain.clone())
                .unwrap_or(Domain::Name("Default".into()))
        };
        let user = match (&auth.user_id, &auth.username) {
            (Some(id), _) => Some(Identity::Id(id.clone())),
            (None, Some(user)) => Some(Identity::Name {
                name: user.clone(),
                domain: domain(&auth.user_domain_name, &auth.user_domain_id),
            }),
            (None, None) => None,
        };
        let kind =
            entry
                .auth_type
                .as_deref()
                .unwrap_or(if auth.application_credential_secret.is_some() {
                    "v3applicationcredential"
                } else {
                    "password"
                });
        let credentials = match kind {
            "password" | "v3password" => {
                let project = match (
                    auth.project_id.or(auth.tenant_id),
                    auth.project_name.or(auth.tenant_name),
                ) {
                    (Some(id), _) => Some(Identity::Id(id)),
                    (None, Some(project)) => Some(Identity::Name {
                        name: project,
                        domain: domain(&auth.project_domain_name, &auth.project_domain_id),
                    }),
                    (None, None) => None,
                };
                Credentials::Password {
                    user: user.ok_or_else(|| missing("username or user_id"))?,
                    password: auth.password.ok_or_else(|| missing("password"))?,
                    project,
                }
            }
            "v3applicationcredential" | "applicationcredential" => {
                let secret = auth
                    .application_credential_secret
                    .ok_or_else(|| missing("application_credential_secret"))?;
                let id = auth.application_credential_id;
                let name = auth.application_credential_name;
                if id.is_none() && (name.is_none() || user.is_none()) {
                    return Err(missing(
                        "application_credential_id (or a name together with the user)",
                    ));
                }
                Credentials::ApplicationCredential {
                    id,
                    name,
                    user,
                    secret,
                }
            }
            other => {
                return Err(CloudError::Config(format!(
                    "cloud `{name}` ({source}) uses auth_type `{other}`; flatstack supports password and v3applicationcredential"
                )));
            }
        };
        let interface = entry
            .interface
            .or(entry.endpoint_type)
            .unwrap_or_else(|| "public".into())
            .trim_end_matches("URL")
            .to_string();
        let endpoint_overrides = entry
            .other
            .iter()
            .filter_map(|(key, value)| {
                let service = key.strip_suffix("_endpoint_override")?;
                let service = match service {
                    "block_storage" | "volume" | "volumev3" => "block-storage",
                    "load_balancer" => "load-balancer",
                    other => other,
                };
                Some((
                    service.to_string(),
                    value.as_str()?.trim_end_matches('/').to_string(),
                ))
            })
            .collect();
        let s3_keys = s3_keys(name, entry.other.get("s3"))?;
        Ok(CloudConfig {
            endpoint_overrides,
            s3_keys,
            name: name.to_string(),
            auth_url,
            credentials,
            region: entry.region_name.filter(|r| !r.is_empty()),
            interface,
            cacert: entry.cacert,
            insecure: entry.verify == Some(false),
        })
    }
}

/// The entry's `s3` key pair, both halves or neither.
fn s3_keys(name: &str, value: Option<&Value>) -> Result<Option<super::sigv4::S3Keys>, CloudError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let field = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    };
    match (field("access_key_id"), field("secret_access_key")) {
        (Some(id), Some(secret)) => Ok(Some(super::sigv4::S3Keys {
            access_key_id: id.to_string(),
            secret_access_key: Secret::new(secret),
        })),
        _ => Err(CloudError::Config(format!(
            "cloud `{name}`'s `s3` needs both `access_key_id` and `secret_access_key` (secure.yaml is the place for them)"
        ))),
    }
}

fn read_clouds(path: &Path) -> Result<Value, CloudError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CloudError::Config(format!("cannot read {}: {e}", path.display())))?;
    // The parser's message would quote the lines around the problem: credentials, often.
    let document: Value = serde_saphyr::from_str(&text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(" at line {}, column {}", l.line(), l.column()))
            .unwrap_or_default();
        CloudError::Config(format!(
            "{} is not valid YAML{at} (its contents are not shown: they may be credentials)",
            path.display()
        ))
    })?;
    Ok(document
        .get("clouds")
        .cloned()
        .unwrap_or(Value::Object(Default::default())))
}

/// An entry whose `auth` numbers and booleans are strings, as every `auth` value is: YAML reads
/// `password: 8675309123` as a number, and the CLI takes it as the string it is.
fn scalars_as_strings(entry: &Value) -> Value {
    let mut entry = entry.clone();
    if let Some(auth) = entry.get_mut("auth").and_then(Value::as_object_mut) {
        for value in auth.values_mut() {
            if value.is_number() || value.is_boolean() {
                *value = Value::String(value.to_string());
            }
        }
    }
    entry
}

/// secure.yaml's values override and extend clouds.yaml's, key by key.
fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                merge(base.entry(key).or_insert(Value::Null), value);
            }
        }
        (base, overlay) => *base = overlay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(yaml: &str) -> Entry {
        let value: Value = serde_saphyr::from_str(yaml).expect("yaml");
        serde_json::from_value(value).expect("entry")
    }

    #[test]
    fn application_credential_by_id() {
        let config = CloudConfig::from_entry(
            "js2",
            entry("auth_type: v3applicationcredential\nauth: {auth_url: 'https://js2.jetstream-cloud.org:5000/v3/', application_credential_id: abc, application_credential_secret: s3}\nregion_name: IU\ninterface: public\n"),
            "test",
        )
        .expect("config");
        assert_eq!(config.region.as_deref(), Some("IU"));
        match config.credentials {
            Credentials::ApplicationCredential { id, secret, .. } => {
                assert_eq!(id.as_deref(), Some("abc"));
                assert_eq!(secret.expose(), "s3");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn password_defaults_domains_to_default() {
        let config = CloudConfig::from_entry(
            "rig",
            entry("auth: {auth_url: 'http://127.0.0.1:5000/v3', username: demo, password: secret, project_name: demo}\n"),
            "test",
        )
        .expect("config");
        match config.credentials {
            Credentials::Password { user, project, .. } => {
                let default = Domain::Name("Default".into());
                assert_eq!(
                    user,
                    Identity::Name {
                        name: "demo".into(),
                        domain: default.clone()
                    }
                );
                assert_eq!(
                    project,
                    Some(Identity::Name {
                        name: "demo".into(),
                        domain: default
                    })
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(config.interface, "public");
    }

    #[test]
    fn missing_secret_is_named() {
        let error = CloudConfig::from_entry(
            "x",
            entry("auth_type: v3applicationcredential\nauth: {auth_url: 'http://k/v3', application_credential_id: abc}\n"),
            "test",
        )
        .expect_err("no secret");
        assert!(
            error.to_string().contains("application_credential_secret"),
            "{error}"
        );
    }

    #[test]
    fn secure_yaml_overrides_key_by_key() {
        let mut base: Value =
            serde_saphyr::from_str("a: {auth: {username: u, password: old}}").expect("yaml");
        merge(
            &mut base,
            serde_saphyr::from_str("a: {auth: {password: new}}").expect("yaml"),
        );
        assert_eq!(base["a"]["auth"]["username"], "u");
        assert_eq!(base["a"]["auth"]["password"], "new");
    }
}
