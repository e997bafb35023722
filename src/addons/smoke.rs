//! The objects `flatstack smoke` deploys: nginx in a namespace of its own, serving a page with
//! a random token under a path of its own, behind a Service and an Ingress of Traefik's
//! class. Fetching that path from the workstation and finding the token proves scheduling,
//! image pulls, the pod network, Services and the ingress all work; deleting the namespace
//! removes every trace.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, HTTPGetAction, PodSpec, Probe,
    Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::ingress::INGRESS_CLASS;
use super::{deployment, labels, meta};
use crate::kube::Manifest;
use crate::pins;

/// Prefix of the namespaces `smoke` makes (and removes).
pub(crate) const NAMESPACE_PREFIX: &str = "flatstack-smoke-";
const NAME: &str = "web";

/// One smoke run's objects.
#[derive(Debug, Clone)]
pub struct Smoke {
    pub(crate) namespace: String,
    /// What the page must contain.
    pub(crate) token: String,
    /// The URL path the page is served at, e.g. `/flatstack-smoke-abc123/`.
    pub(crate) path: String,
    pub manifests: Vec<Manifest>,
}

impl Smoke {
    /// The objects for a run identified by `token` (lowercase letters and digits).
    pub fn new(token: &str) -> Smoke {
        let namespace = format!("{NAMESPACE_PREFIX}{token}");
        let path = format!("/{namespace}/");
        let page = format!("flatstack smoke test {token}\n");
        let deployment = deployment(
            NAME,
            &namespace,
            PodSpec {
                containers: vec![Container {
                    name: NAME.into(),
                    image: Some(pins::SMOKE_IMAGE.into()),
                    ports: Some(vec![ContainerPort {
                        container_port: 80,
                        name: Some("http".into()),
                        ..ContainerPort::default()
                    }]),
                    volume_mounts: Some(vec![VolumeMount {
                        name: "page".into(),
                        mount_path: format!("/usr/share/nginx/html/{namespace}"),
                        read_only: Some(true),
                        ..VolumeMount::default()
                    }]),
                    readiness_probe: Some(Probe {
                        http_get: Some(HTTPGetAction {
                            path: Some(path.clone()),
                            port: IntOrString::Int(80),
                            ..HTTPGetAction::default()
                        }),
                        period_seconds: Some(2),
                        ..Probe::default()
                    }),
                    ..Container::default()
                }],
                volumes: Some(vec![Volume {
                    name: "page".into(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: "page".into(),
                        ..ConfigMapVolumeSource::default()
                    }),
                    ..Volume::default()
                }]),
                ..PodSpec::default()
            },
        );
        let service = Service {
            metadata: meta(NAME, Some(&namespace)),
            spec: Some(ServiceSpec {
                selector: Some(labels(&[("app.kubernetes.io/name", NAME)])),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(IntOrString::String("http".into())),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        };
        let ingress = Ingress {
            metadata: meta(NAME, Some(&namespace)),
            spec: Some(IngressSpec {
                ingress_class_name: Some(INGRESS_CLASS.into()),
                rules: Some(vec![IngressRule {
                    host: None,
                    http: Some(HTTPIngressRuleValue {
                        paths: vec![HTTPIngressPath {
                            path: Some(path.clone()),
                            path_type: "Prefix".into(),
                            backend: IngressBackend {
                                service: Some(IngressServiceBackend {
                                    name: NAME.into(),
                                    port: Some(ServiceBackendPort {
                                        number: Some(80),
                                        ..ServiceBackendPort::default()
                                    }),
                                }),
                                ..IngressBackend::default()
                            },
                        }],
                    }),
                }]),
                ..IngressSpec::default()
            }),
            ..Ingress::default()
        };
        let manifests = vec![
            super::namespace(&namespace, "baseline"),
            Manifest::of(&ConfigMap {
                metadata: meta("page", Some(&namespace)),
                data: Some(BTreeMap::from([("index.html".to_string(), page)])),
                ..ConfigMap::default()
            }),
            Manifest::of(&deployment),
            Manifest::of(&service),
            Manifest::of(&ingress),
        ];
        Smoke {
            namespace,
            token: token.to_string(),
            path,
            manifests,
        }
    }

    /// The namespace, whose deletion removes everything else.
    pub(crate) fn namespace_path(&self) -> String {
        format!("/api/v1/namespaces/{}", self.namespace)
    }

    /// Pods of the Deployment, to say why they are not ready.
    pub(crate) fn pods_path(&self) -> String {
        format!(
            "/api/v1/namespaces/{}/pods?labelSelector=app.kubernetes.io%2Fname%3D{NAME}",
            self.namespace
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_object_lives_in_the_runs_own_namespace_with_a_pinned_image() {
        let smoke = Smoke::new("k3x9q2");
        assert_eq!(smoke.namespace, "flatstack-smoke-k3x9q2");
        assert_eq!(smoke.path, "/flatstack-smoke-k3x9q2/");
        let kinds: Vec<&str> = smoke.manifests.iter().map(Manifest::kind).collect();
        assert_eq!(
            kinds,
            ["Namespace", "ConfigMap", "Deployment", "Service", "Ingress"]
        );
        for manifest in &smoke.manifests[1..] {
            assert_eq!(manifest.namespace(), Some("flatstack-smoke-k3x9q2"));
        }
        let deployment = smoke.manifests[2].body();
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let image = container["image"].as_str().expect("image");
        assert_eq!(image, pins::SMOKE_IMAGE);
        assert!(!image.ends_with(":latest") && image.contains(':'));
        assert_eq!(
            container["volumeMounts"][0]["mountPath"],
            "/usr/share/nginx/html/flatstack-smoke-k3x9q2"
        );
        let page = &smoke.manifests[1].body()["data"]["index.html"];
        assert!(page.as_str().expect("page").contains("k3x9q2"));
        let ingress = smoke.manifests[4].body();
        assert_eq!(ingress["spec"]["ingressClassName"], INGRESS_CLASS);
        assert_eq!(
            ingress["spec"]["rules"][0]["http"]["paths"][0]["path"],
            "/flatstack-smoke-k3x9q2/"
        );
    }
}
