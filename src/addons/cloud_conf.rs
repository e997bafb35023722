//! `cloud.conf`, the INI file the OpenStack cloud controller and Cinder CSI read: the user's
//! own credentials (an application credential preferably), the region, the external network
//! for load balancer floating IPs and the cluster's subnet. Values are always quoted, so a
//! `#` or `;` in a password is not taken for a comment.

use crate::cloud::config::{CloudConfig, Credentials, Domain, Identity};
use crate::secret::Secret;

/// Where the add-ons mount the `cloud-config` Secret.
const MOUNT: &str = "/etc/config";

/// What `cloud.conf` needs besides the credentials.
#[derive(Debug, Clone)]
pub struct CloudConfInputs<'a> {
    pub(crate) config: &'a CloudConfig,
    /// The project the credentials are scoped to, as Keystone reported it at login.
    pub(crate) project_id: Option<&'a str>,
    pub(crate) external_network_id: &'a str,
    pub(crate) subnet_id: &'a str,
}

/// The files of the `cloud-config` Secret: `cloud.conf`, and `ca.crt` when the cloud has a
/// private CA.
#[derive(Debug, Clone)]
pub struct CloudConf {
    pub text: Secret,
    pub ca_bundle: Option<String>,
}

impl CloudConf {
    /// A digest of both files keyed with `key` (a secret only flatstack holds), so the digest
    /// tells when the credentials changed and nothing about them.
    pub(crate) fn digest(&self, key: &[u8]) -> String {
        let ca_bundle = self.ca_bundle.as_deref().unwrap_or_default();
        crate::secret::keyed_digest(key, [self.text.expose().as_bytes(), ca_bundle.as_bytes()])
    }
}

/// Builds `cloud.conf`; fails only when the cloud's CA bundle cannot be read.
pub fn cloud_conf(inputs: &CloudConfInputs<'_>) -> Result<CloudConf, std::io::Error> {
    let config = inputs.config;
    let mut global = vec![("auth-url", config.auth_url.clone())];
    if let Some(region) = &config.region {
        global.push(("region", region.clone()));
    }
    match &config.credentials {
        Credentials::ApplicationCredential {
            id,
            name,
            user,
            secret,
        } => {
            if let Some(id) = id {
                global.push(("application-credential-id", id.clone()));
            } else if let Some(name) = name {
                global.push(("application-credential-name", name.clone()));
                if let Some(user) = user {
                    user_fields(user, &mut global);
                }
            }
            global.push(("application-credential-secret", secret.expose().to_string()));
        }
        Credentials::Password {
            user,
            password,
            project: _,
        } => {
            user_fields(user, &mut global);
            global.push(("password", password.expose().to_string()));
            if let Some(project) = inputs.project_id {
                global.push(("tenant-id", project.to_string()));
            }
        }
    }
    if config.interface != "public" {
        global.push(("os-endpoint-type", config.interface.clone()));
    }
    let ca_bundle = match &config.cacert {
        Some(path) => {
            global.push(("ca-file", format!("{MOUNT}/ca.crt")));
            Some(std::fs::read_to_string(path)?)
        }
        None => None,
    };
    if config.insecure {
        global.push(("tls-insecure", "true".into()));
    }
    let mut text = String::new();
    section(&mut text, "Global", &global);
    section(
        &mut text,
        "LoadBalancer",
        &[
            (
                "floating-network-id",
                inputs.external_network_id.to_string(),
            ),
            ("subnet-id", inputs.subnet_id.to_string()),
        ],
    );
    section(
        &mut text,
        "BlockStorage",
        &[("rescan-on-resize", "true".to_string())],
    );
    Ok(CloudConf {
        text: Secret::new(text),
        ca_bundle,
    })
}

fn user_fields(user: &Identity, fields: &mut Vec<(&'static str, String)>) {
    match user {
        Identity::Id(id) => fields.push(("user-id", id.clone())),
        Identity::Name { name, domain } => {
            fields.push(("username", name.clone()));
            match domain {
                Domain::Id(id) => fields.push(("user-domain-id", id.clone())),
                Domain::Name(name) => fields.push(("user-domain-name", name.clone())),
            }
        }
    }
}

fn section(text: &mut String, name: &str, fields: &[(&str, String)]) {
    if !text.is_empty() {
        text.push('\n');
    }
    text.push_str(&format!("[{name}]\n"));
    for (key, value) in fields {
        let quoted = value.replace('\\', "\\\\").replace('"', "\\\"");
        text.push_str(&format!("{key} = \"{quoted}\"\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn config(credentials: Credentials) -> CloudConfig {
        CloudConfig {
            name: "test".into(),
            auth_url: "https://keystone.example:5000/v3".into(),
            credentials,
            region: Some("IU".into()),
            interface: "public".into(),
            cacert: None,
            insecure: false,
            endpoint_overrides: BTreeMap::new(),
            s3_keys: None,
        }
    }

    #[test]
    fn application_credentials_by_id_and_quoted_values() {
        let config = config(Credentials::ApplicationCredential {
            id: Some("abc123".into()),
            name: None,
            user: None,
            secret: Secret::new("s3cr#t;\"x"),
        });
        let conf = cloud_conf(&CloudConfInputs {
            config: &config,
            project_id: Some("p1"),
            external_network_id: "ext-1",
            subnet_id: "sub-1",
        })
        .expect("cloud.conf");
        let text = conf.text.expose();
        assert!(text.starts_with("[Global]\nauth-url = \"https://keystone.example:5000/v3\"\n"));
        assert!(text.contains("region = \"IU\"\n"));
        assert!(text.contains("application-credential-id = \"abc123\"\n"));
        assert!(
            text.contains("application-credential-secret = \"s3cr#t;\\\"x\"\n"),
            "{text}"
        );
        assert!(
            !text.contains("tenant-id"),
            "app credentials carry their project"
        );
        assert!(
            text.contains(
                "[LoadBalancer]\nfloating-network-id = \"ext-1\"\nsubnet-id = \"sub-1\"\n"
            )
        );
        assert!(text.contains("[BlockStorage]\nrescan-on-resize = \"true\"\n"));
        assert_eq!(conf.ca_bundle, None);
    }

    #[test]
    fn password_credentials_name_user_domain_and_project() {
        let config = config(Credentials::Password {
            user: Identity::Name {
                name: "demo".into(),
                domain: Domain::Name("Default".into()),
            },
            password: Secret::new("pw"),
            project: None,
        });
        let conf = cloud_conf(&CloudConfInputs {
            config: &config,
            project_id: Some("p1"),
            external_network_id: "ext-1",
            subnet_id: "sub-1",
        })
        .expect("cloud.conf");
        let text = conf.text.expose();
        for line in [
            "username = \"demo\"",
            "user-domain-name = \"Default\"",
            "password = \"pw\"",
            "tenant-id = \"p1\"",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
