//! JupyterHub from the zero-to-jupyterhub chart, as `flatstack jupyterhub` installs it: the
//! hub's database and every user's home directory on Cinder volumes of the default
//! StorageClass, the proxy behind Traefik (HTTPS with a Let's Encrypt certificate when the
//! cluster file names a host), the authenticator of the cluster file, and the user's own
//! values file merged over flatstack's. Credentials travel in a Secret the chart's values are
//! read from, never in the HelmChart itself.

use serde_json::json;

use super::ingress::{CLUSTER_ISSUER, INGRESS_CLASS};
use super::{HelmChart, NAMESPACE, ValuesSecret, chart, meta};
use crate::kube::Manifest;
use crate::pins;
use crate::secret::Secret;
use crate::spec::{Authenticator, ClusterSpec};

/// The HelmChart (in [`NAMESPACE`]) and so the Helm release.
pub(crate) const RELEASE: &str = "jupyterhub";
/// The Secret (in [`NAMESPACE`]) holding the credential values.
pub(crate) const CREDENTIALS_SECRET: &str = "jupyterhub-credentials";
const CREDENTIALS_KEY: &str = "values.yaml";
/// The default StorageClass of flatstack's Cinder CSI.
pub(crate) const STORAGE_CLASS: &str = "csi-cinder-sc-delete";
/// The Secret cert-manager writes the hub's certificate to, and so the name of the
/// Certificate it makes from the hub's Ingress.
pub(crate) const TLS_SECRET: &str = "jupyterhub-tls";

/// The secrets of the configured authenticator.
#[derive(Debug, Clone)]
pub enum HubCredentials {
    GitHub { client_secret: Secret },
    SharedPassword { user: Secret, admin: Secret },
}

/// The objects that install (or upgrade) the hub.
#[derive(Debug, Clone)]
pub struct HubRelease {
    pub credentials: Manifest,
    pub chart: HelmChart,
}

impl HubRelease {
    pub fn chart_manifest(&self) -> Manifest {
        Manifest::of(&self.chart)
    }
}

/// flatstack's values for the hub, without credentials, with `user_values` merged over them.
pub(crate) fn values(
    spec: &ClusterSpec,
    user_values: Option<&serde_json::Value>,
) -> serde_json::Value {
    let hub = &spec.jupyterhub;
    let mut config = json!({});
    match &hub.authenticator {
        Authenticator::SharedPassword => {
            config["JupyterHub"] = json!({ "authenticator_class": "shared-password" });
            config["Authenticator"] = json!({
                "admin_users": hub.admin_users,
                "allow_all": hub.allowed_users.is_empty(),
            });
        }
        Authenticator::GitHub {
            client_id,
            allowed_organizations,
            ..
        } => {
            let host = spec.ingress.hostname.as_deref().unwrap_or("localhost");
            config["JupyterHub"] = json!({ "authenticator_class": "github" });
            config["Authenticator"] = json!({
                "admin_users": hub.admin_users,
                "allow_all": false,
            });
            config["GitHubOAuthenticator"] = json!({
                "client_id": client_id,
                "oauth_callback_url": format!("https://{host}/hub/oauth_callback"),
                "allowed_organizations": allowed_organizations,
                // Private organization membership is only visible with this scope.
                "scope": ["read:org"],
            });
        }
    }
    if !hub.allowed_users.is_empty() {
        config["Authenticator"]["allowed_users"] = json!(hub.allowed_users);
    }
    let mut ingress = json!({
        "enabled": true,
        "ingressClassName": INGRESS_CLASS,
        "hosts": spec.ingress.hostname.iter().collect::<Vec<_>>(),
    });
    if let Some(host) = &spec.ingress.hostname {
        ingress["annotations"] = json!({
            "cert-manager.io/cluster-issuer": CLUSTER_ISSUER,
            // Passwords and tokens only over HTTPS: the hub is not served on port 80.
            "traefik.ingress.kubernetes.io/router.entrypoints": "websecure",
            "traefik.ingress.kubernetes.io/router.tls": "true",
        });
        ingress["tls"] = json!([{ "hosts": [host], "secretName": TLS_SECRET }]);
    }
    let mut values = json!({
        "hub": {
            "config": config,
            "db": {
                "type": "sqlite-pvc",
                "pvc": {
                    "storageClassName": STORAGE_CLASS,
                    "storage": "1Gi",
                    // The hub's database outlives a release Helm removes.
                    "annotations": { "helm.sh/resource-policy": "keep" },
                },
            },
        },
        "proxy": { "service": { "type": "ClusterIP" } },
        "ingress": ingress,
        "singleuser": {
            "storage": {
                "type": "dynamic",
                "capacity": format!("{}Gi", hub.user_storage_gb),
                "dynamic": { "storageClass": STORAGE_CLASS },
            },
        },
        // The pre-install image pull would hold Helm past its timeout on a fresh cluster;
        // the continuous pre-puller still warms new nodes.
        "prePuller": { "hook": { "enabled": false } },
        // The chart bundles kube-scheduler 1.30, too far from the cluster's release.
        "scheduling": { "userScheduler": { "enabled": false } },
    });
    if let Some(extra) = user_values {
        super::merge_values(&mut values, extra);
    }
    values
}

/// The credential values, as the YAML (JSON) text of the credentials Secret.
pub fn credential_values(credentials: &HubCredentials) -> Secret {
    let values = match credentials {
        HubCredentials::GitHub { client_secret } => json!({
            "hub": { "config": { "GitHubOAuthenticator": { "client_secret": client_secret.expose() } } },
        }),
        HubCredentials::SharedPassword { user, admin } => json!({
            "hub": { "config": { "SharedPasswordAuthenticator": {
                "user_password": user.expose(),
                "admin_password": admin.expose(),
            } } },
        }),
    };
    Secret::new(values.to_string())
}

/// The credentials Secret and the HelmChart of the hub.
pub fn release(
    spec: &ClusterSpec,
    credentials: &HubCredentials,
    user_values: Option<&serde_json::Value>,
) -> HubRelease {
    let text = credential_values(credentials);
    let secret = super::secret(
        meta(CREDENTIALS_SECRET, Some(NAMESPACE)),
        "Opaque",
        [(CREDENTIALS_KEY, text.expose())],
    );
    let mut chart = chart(
        RELEASE,
        pins::JUPYTERHUB,
        &spec.jupyterhub.namespace,
        false,
        values(spec, user_values),
    );
    chart.spec.create_namespace = true;
    chart.spec.timeout = Some("15m".into());
    // A failed upgrade is reported, never "repaired" by uninstalling the hub.
    chart.spec.failure_policy = Some("abort".into());
    chart.spec.values_secrets = vec![ValuesSecret {
        name: CREDENTIALS_SECRET.into(),
        keys: vec![CREDENTIALS_KEY.into()],
    }];
    HubRelease {
        credentials: Manifest::of(&secret),
        chart,
    }
}

/// Where users reach the hub: HTTPS on the cluster file's host, else plain HTTP on the
/// ingress address.
pub(crate) fn url(spec: &ClusterSpec, ingress_address: &str) -> String {
    match &spec.ingress.hostname {
        Some(host) => format!("https://{host}/"),
        None => format!("http://{ingress_address}/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::test_spec as spec;

    #[test]
    fn shared_password_hub_on_cinder_behind_traefik_over_http() {
        let spec = spec("");
        let values = values(&spec, None);
        assert_eq!(
            values["hub"]["config"]["JupyterHub"]["authenticator_class"],
            "shared-password"
        );
        assert_eq!(values["hub"]["config"]["Authenticator"]["allow_all"], true);
        assert_eq!(
            values["hub"]["db"]["pvc"]["storageClassName"],
            STORAGE_CLASS
        );
        assert_eq!(
            values["singleuser"]["storage"]["dynamic"]["storageClass"],
            STORAGE_CLASS
        );
        assert_eq!(values["singleuser"]["storage"]["capacity"], "10Gi");
        assert_eq!(values["proxy"]["service"]["type"], "ClusterIP");
        assert_eq!(values["ingress"]["ingressClassName"], INGRESS_CLASS);
        assert_eq!(values["ingress"]["hosts"], json!([]));
        assert!(values["ingress"].get("tls").is_none());
        assert_eq!(url(&spec, "203.0.113.9"), "http://203.0.113.9/");
    }

    #[test]
    fn github_hub_gets_https_from_lets_encrypt_and_no_secret_in_the_chart() {
        let spec = spec(
            "[ingress]\nhostname = \"hub.demo.projects.jetstream-cloud.org\"\nacme_email = \"ops@example.org\"\n[jupyterhub]\nauthenticator = \"github\"\ngithub_client_id = \"Iv1.abc\"\ngithub_allowed_organizations = [\"my-org\"]\nadmin_users = [\"alice\"]\n",
        );
        let credentials = HubCredentials::GitHub {
            client_secret: Secret::new("very-secret-value"),
        };
        let release = release(&spec, &credentials, None);
        let chart_text = serde_json::to_string(&release.chart).expect("json");
        assert!(!chart_text.contains("very-secret-value"));
        let values: serde_json::Value =
            serde_json::from_str(&release.chart.spec.values_content).expect("values");
        let github = &values["hub"]["config"]["GitHubOAuthenticator"];
        assert_eq!(
            github["oauth_callback_url"],
            "https://hub.demo.projects.jetstream-cloud.org/hub/oauth_callback"
        );
        assert_eq!(github["allowed_organizations"], json!(["my-org"]));
        assert_eq!(values["hub"]["config"]["Authenticator"]["allow_all"], false);
        assert_eq!(
            values["ingress"]["annotations"]["cert-manager.io/cluster-issuer"],
            CLUSTER_ISSUER
        );
        assert_eq!(
            values["ingress"]["tls"][0]["hosts"][0],
            "hub.demo.projects.jetstream-cloud.org"
        );
        assert_eq!(
            release.chart.spec.values_secrets[0].name,
            CREDENTIALS_SECRET
        );
        assert_eq!(release.chart.spec.version, pins::JUPYTERHUB.version);
        assert_eq!(release.chart.spec.target_namespace, "jupyterhub");
        assert!(release.chart.spec.create_namespace);
        assert_eq!(release.chart.spec.failure_policy.as_deref(), Some("abort"));
        assert_eq!(
            values["hub"]["db"]["pvc"]["annotations"]["helm.sh/resource-policy"],
            "keep"
        );
        assert!(release.credentials.body().get("stringData").is_none());
        let secret = String::from_utf8(release.credentials.secret_data()[CREDENTIALS_KEY].clone())
            .expect("values");
        assert!(secret.contains("very-secret-value"));
        assert!(!format!("{:?}", release.credentials).contains("very-secret-value"));
        assert_eq!(
            url(&spec, "203.0.113.9"),
            "https://hub.demo.projects.jetstream-cloud.org/"
        );
    }

    #[test]
    fn the_users_values_win_objects_merge_lists_replace() {
        let spec = spec("");
        let extra = json!({
            "singleuser": { "image": { "name": "jupyter/scipy-notebook", "tag": "2025-01-01" },
                            "storage": { "capacity": "50Gi" } },
            "hub": { "config": { "Authenticator": { "admin_users": ["bob"] } } },
            "prePuller": null,
        });
        let values = values(&spec, Some(&extra));
        assert_eq!(values["singleuser"]["storage"]["capacity"], "50Gi");
        assert_eq!(
            values["singleuser"]["storage"]["dynamic"]["storageClass"],
            STORAGE_CLASS
        );
        assert_eq!(values["singleuser"]["image"]["tag"], "2025-01-01");
        assert_eq!(
            values["hub"]["config"]["Authenticator"]["admin_users"],
            json!(["bob"])
        );
        assert!(
            values["prePuller"].is_null(),
            "null reaches Helm, which drops the default"
        );
    }
}
