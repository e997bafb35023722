//! One Kubernetes object ready for server-side apply: its JSON body and the URL path it lives
//! at, both derived from a typed k8s-openapi value. `Debug` shows kind and name only, so a
//! Secret's data never reaches a log.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, Resource};
use serde::Serialize;

#[derive(Clone)]
pub struct Manifest {
    kind: &'static str,
    namespace: Option<String>,
    name: String,
    path: String,
    body: serde_json::Value,
}

impl Manifest {
    /// The manifest of `object`, which must have a name (and a namespace when the kind is
    /// namespaced).
    pub(crate) fn of<K>(object: &K) -> Manifest
    where
        K: Resource + Metadata<Ty = ObjectMeta> + Serialize,
    {
        let meta = object.metadata();
        let name = meta.name.clone().unwrap_or_default();
        let namespace = meta.namespace.clone();
        let group_version = if K::GROUP.is_empty() {
            format!("/api/{}", K::VERSION)
        } else {
            format!("/apis/{}/{}", K::GROUP, K::VERSION)
        };
        let scope = match &namespace {
            Some(ns) => format!("/namespaces/{ns}"),
            None => String::new(),
        };
        let path = format!("{group_version}{scope}/{}/{name}", K::URL_PATH_SEGMENT);
        // k8s-openapi's types always serialize (apiVersion and kind included); a failure here
        // would be a bug in them, and leaves an empty body that the API server refuses.
        let body = serde_json::to_value(object).unwrap_or(serde_json::Value::Null);
        Manifest {
            kind: K::KIND,
            namespace,
            name,
            path,
            body,
        }
    }

    /// The manifest of an object of a custom resource (a CRD installed by a chart), which has
    /// no k8s-openapi type: `plural` is its URL segment, `body` its apiVersion/kind/metadata/spec.
    pub(crate) fn custom(
        api_version: &str,
        kind: &'static str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
        spec: serde_json::Value,
    ) -> Manifest {
        let resource = CustomResource {
            api_version,
            kind,
            plural,
            namespace,
            name,
        };
        resource.with(serde_json::json!({}), serde_json::json!({ "spec": spec }))
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The object's URL path, e.g. `/api/v1/namespaces/kube-system/secrets/cloud-config`.
    pub(crate) fn object_path(&self) -> &str {
        &self.path
    }

    /// The decoded `data` of a Secret's manifest (nothing for other kinds).
    pub(crate) fn secret_data(&self) -> std::collections::BTreeMap<String, Vec<u8>> {
        use base64::Engine as _;
        self.body["data"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(key, value)| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(value.as_str()?)
                    .ok()?;
                Some((key.clone(), bytes))
            })
            .collect()
    }

    /// The JSON body (JSON is YAML, which server-side apply reads).
    pub fn body(&self) -> &serde_json::Value {
        &self.body
    }
}

impl fmt::Debug for Manifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// `Kind namespace/name`, as kubectl names objects.
impl fmt::Display for Manifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// What names a custom resource: its group version, kind, plural, namespace and name.
pub(crate) struct CustomResource<'a> {
    pub(crate) api_version: &'a str,
    pub(crate) kind: &'static str,
    pub(crate) plural: &'a str,
    pub(crate) namespace: Option<&'a str>,
    pub(crate) name: &'a str,
}

impl CustomResource<'_> {
    /// The object with `annotations` and its own top-level `fields` (a `spec`, or the fields
    /// of kinds that have none, like `VolumeSnapshotClass`).
    pub(crate) fn with(
        &self,
        annotations: serde_json::Value,
        fields: serde_json::Value,
    ) -> Manifest {
        let (api_version, plural, name) = (self.api_version, self.plural, self.name);
        let scope = self
            .namespace
            .map_or(String::new(), |ns| format!("/namespaces/{ns}"));
        let mut metadata = serde_json::json!({
            "name": name,
            "labels": { "app.kubernetes.io/managed-by": "flatstack" },
        });
        if let Some(ns) = self.namespace {
            metadata["namespace"] = ns.into();
        }
        if annotations.as_object().is_some_and(|a| !a.is_empty()) {
            metadata["annotations"] = annotations;
        }
        let mut body = serde_json::json!({
            "apiVersion": api_version,
            "kind": self.kind,
            "metadata": metadata,
        });
        if let (Some(body), Some(fields)) = (body.as_object_mut(), fields.as_object()) {
            body.extend(fields.clone());
        }
        Manifest {
            kind: self.kind,
            namespace: self.namespace.map(Into::into),
            name: name.into(),
            path: format!("/apis/{api_version}{scope}/{plural}/{name}"),
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Namespace, Secret};

    fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: namespace.map(Into::into),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn paths_follow_group_scope_and_plural() {
        let ns = Manifest::of(&Namespace {
            metadata: meta("kube-flannel", None),
            ..Namespace::default()
        });
        assert_eq!(ns.object_path(), "/api/v1/namespaces/kube-flannel");
        assert_eq!(ns.body()["apiVersion"], "v1");
        assert_eq!(ns.body()["kind"], "Namespace");
        let binding = Manifest::of(&k8s_openapi::api::rbac::v1::ClusterRoleBinding {
            metadata: meta("helm-controller", None),
            ..Default::default()
        });
        assert_eq!(
            binding.object_path(),
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/helm-controller"
        );
    }

    #[test]
    fn debug_shows_no_secret_data() {
        let secret = Manifest::of(&Secret {
            metadata: meta("cloud-config", Some("kube-system")),
            data: Some(
                [(
                    "cloud.conf".to_string(),
                    k8s_openapi::ByteString(b"password=hunter2".to_vec()),
                )]
                .into(),
            ),
            ..Secret::default()
        });
        assert_eq!(
            secret.object_path(),
            "/api/v1/namespaces/kube-system/secrets/cloud-config"
        );
        let shown = format!("{secret:?} {secret}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(secret.secret_data()["cloud.conf"], b"password=hunter2");
        assert_eq!(format!("{secret}"), "Secret kube-system/cloud-config");
    }
}
