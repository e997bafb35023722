//! The way in from outside: Traefik as the ingress controller, either on the control planes'
//! host network (ports 80 and 443 of the API's floating IP) or behind an Octavia load balancer
//! the cloud controller makes; and, when the cluster file names a host, cert-manager with a
//! Let's Encrypt `ClusterIssuer` that answers HTTP-01 challenges through Traefik.

use serde_json::json;

use super::CONTROL_PLANE_LABEL;
use crate::kube::Manifest;
use crate::pins;
use crate::spec::{AcmeSpec, IngressExposure, IngressSpec};

/// The IngressClass Traefik serves; JupyterHub and `flatstack smoke` use it.
pub(crate) const INGRESS_CLASS: &str = "traefik";
/// Where Traefik runs.
pub(crate) const TRAEFIK_NAMESPACE: &str = "traefik";
/// The ClusterIssuer that Ingresses name in `cert-manager.io/cluster-issuer`.
pub(crate) const CLUSTER_ISSUER: &str = "letsencrypt";
pub(crate) const CERT_MANAGER_NAMESPACE: &str = "cert-manager";

/// The Pod Security Standard of Traefik's namespace: host ports need `privileged`.
pub(crate) fn traefik_pod_security(ingress: &IngressSpec) -> &'static str {
    match ingress.exposure {
        IngressExposure::ControlPlane => "privileged",
        IngressExposure::LoadBalancer => "baseline",
    }
}

/// Traefik's chart values for `ingress`.
pub fn traefik_values(ingress: &IngressSpec) -> serde_json::Value {
    let common = json!({
        "image": { "tag": pins::TRAEFIK_IMAGE_TAG },
        "ingressClass": { "enabled": true, "isDefaultClass": true, "name": INGRESS_CLASS },
        "providers": { "kubernetesCRD": { "enabled": true } },
        "accessLog": { "enabled": true },
        "global": { "checkNewVersion": false, "sendAnonymousUsage": false },
    });
    let exposure = match ingress.exposure {
        // One Traefik per control plane, listening on the host's ports 80 and 443 itself:
        // binding ports below 1024 needs root with NET_BIND_SERVICE (every other capability
        // dropped), and a host port cannot be shared, so updates replace pods one at a time
        // without a surge.
        IngressExposure::ControlPlane => json!({
            "deployment": { "kind": "DaemonSet", "dnsPolicy": "ClusterFirstWithHostNet" },
            "hostNetwork": true,
            "updateStrategy": {
                "type": "RollingUpdate",
                "rollingUpdate": { "maxUnavailable": 1, "maxSurge": 0 },
            },
            "ports": {
                "web": { "port": 80 },
                "websecure": { "port": 443 },
                // Off the ports node exporters and kubelets use.
                "traefik": { "port": 9000 },
                "metrics": { "port": 9101 },
            },
            "podSecurityContext": { "runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": false },
            "securityContext": {
                "capabilities": { "drop": ["ALL"], "add": ["NET_BIND_SERVICE"] },
                "readOnlyRootFilesystem": true,
                "allowPrivilegeEscalation": false,
            },
            "nodeSelector": { CONTROL_PLANE_LABEL: "true" },
            "tolerations": [
                { "key": CONTROL_PLANE_LABEL, "operator": "Exists", "effect": "NoSchedule" },
            ],
            // Chart 40+ reads the Service's type and ranges under `service.spec`.
            "service": { "enabled": true, "spec": { "type": "ClusterIP" } },
            "providers": { "kubernetesIngress": { "publishedService": { "enabled": false } } },
        }),
        // Two replicas behind a LoadBalancer Service: the cloud controller makes the Octavia
        // load balancer and its floating IP, and only `http_cidrs` may reach it.
        IngressExposure::LoadBalancer => json!({
            "deployment": { "kind": "Deployment", "replicas": 2 },
            "service": {
                "enabled": true,
                "spec": {
                    "type": "LoadBalancer",
                    "loadBalancerSourceRanges": ingress.http_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                },
            },
            "providers": { "kubernetesIngress": { "publishedService": { "enabled": true } } },
        }),
    };
    let mut values = common;
    super::merge_values(&mut values, &exposure);
    values
}

/// cert-manager's chart values: its CRDs installed (and kept on uninstall), images pinned.
pub fn cert_manager_values() -> serde_json::Value {
    let tag = pins::CERT_MANAGER_IMAGE_TAG;
    json!({
        "crds": { "enabled": true, "keep": true },
        "image": { "tag": tag },
        "webhook": { "image": { "tag": tag } },
        "cainjector": { "image": { "tag": tag } },
        "startupapicheck": { "image": { "tag": tag } },
        "acmesolver": { "image": { "tag": tag } },
    })
}

/// The Let's Encrypt ClusterIssuer: an ACME account for `acme.email`, HTTP-01 challenges
/// answered through Traefik's IngressClass.
pub(crate) fn cluster_issuer(acme: &AcmeSpec) -> Manifest {
    Manifest::custom(
        "cert-manager.io/v1",
        "ClusterIssuer",
        "clusterissuers",
        None,
        CLUSTER_ISSUER,
        json!({
            "acme": {
                "server": acme.server,
                "email": acme.email,
                "privateKeySecretRef": { "name": "letsencrypt-account-key" },
                "solvers": [
                    { "http01": { "ingress": { "ingressClassName": INGRESS_CLASS } } },
                ],
            },
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingress(exposure: IngressExposure) -> IngressSpec {
        IngressSpec {
            exposure,
            http_cidrs: vec!["192.0.2.0/24".parse().expect("cidr")],
            hostname: None,
            acme: None,
        }
    }

    #[test]
    fn control_plane_exposure_binds_80_and_443_on_control_planes_only() {
        let values = traefik_values(&ingress(IngressExposure::ControlPlane));
        assert_eq!(values["deployment"]["kind"], "DaemonSet");
        assert_eq!(values["hostNetwork"], true);
        assert_eq!(values["ports"]["web"]["port"], 80);
        assert_eq!(values["ports"]["websecure"]["port"], 443);
        assert_eq!(values["nodeSelector"][CONTROL_PLANE_LABEL], "true");
        assert_eq!(values["tolerations"][0]["key"], CONTROL_PLANE_LABEL);
        assert_eq!(
            values["securityContext"]["capabilities"]["add"],
            json!(["NET_BIND_SERVICE"])
        );
        assert_eq!(
            values["securityContext"]["capabilities"]["drop"],
            json!(["ALL"])
        );
        // A host port cannot be surged into.
        assert_eq!(values["updateStrategy"]["rollingUpdate"]["maxSurge"], 0);
        assert_eq!(values["service"]["spec"]["type"], "ClusterIP");
        assert_eq!(values["image"]["tag"], pins::TRAEFIK_IMAGE_TAG);
        assert_eq!(values["ingressClass"]["name"], INGRESS_CLASS);
    }

    #[test]
    fn load_balancer_exposure_asks_the_cloud_controller_for_octavia() {
        let values = traefik_values(&ingress(IngressExposure::LoadBalancer));
        assert_eq!(values["deployment"]["kind"], "Deployment");
        assert_eq!(values["service"]["spec"]["type"], "LoadBalancer");
        assert_eq!(
            values["service"]["spec"]["loadBalancerSourceRanges"],
            json!(["192.0.2.0/24"])
        );
        assert!(values.get("hostNetwork").is_none());
        assert!(values.get("nodeSelector").is_none());
        assert_eq!(values["image"]["tag"], pins::TRAEFIK_IMAGE_TAG);
    }

    #[test]
    fn the_issuer_uses_the_ingress_class_and_the_files_acme_account() {
        let issuer = cluster_issuer(&AcmeSpec {
            email: "ops@example.org".into(),
            server: crate::spec::LETSENCRYPT_STAGING.into(),
        });
        assert_eq!(
            issuer.object_path(),
            "/apis/cert-manager.io/v1/clusterissuers/letsencrypt"
        );
        let acme = &issuer.body()["spec"]["acme"];
        assert_eq!(acme["email"], "ops@example.org");
        assert_eq!(acme["server"], crate::spec::LETSENCRYPT_STAGING);
        assert_eq!(
            acme["solvers"][0]["http01"]["ingress"]["ingressClassName"],
            INGRESS_CLASS
        );
        assert_eq!(issuer.body()["kind"], "ClusterIssuer");
    }

    #[test]
    fn cert_manager_images_and_crds_are_pinned() {
        let values = cert_manager_values();
        assert_eq!(values["crds"]["enabled"], true);
        for component in ["webhook", "cainjector", "startupapicheck", "acmesolver"] {
            assert_eq!(
                values[component]["image"]["tag"],
                pins::CERT_MANAGER_IMAGE_TAG
            );
        }
    }
}
