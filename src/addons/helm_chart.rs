//! The `HelmChart` resource (`helm.cattle.io/v1`) of k3s-io/helm-controller, typed like the
//! k8s-openapi objects so it is applied, read and waited for the same way. Only the fields
//! flatstack sets or reads are modelled; the API server keeps the rest.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct HelmChart {
    pub(crate) metadata: ObjectMeta,
    #[serde(default)]
    pub spec: HelmChartSpec,
    #[serde(default)]
    pub(crate) status: HelmChartStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HelmChartSpec {
    pub(crate) chart: String,
    pub(crate) repo: String,
    pub(crate) version: String,
    pub(crate) target_namespace: String,
    #[serde(default)]
    pub(crate) create_namespace: bool,
    /// Run the install Job on a control plane's host network, tolerating nodes that are not
    /// ready or not yet initialized by the cloud controller: how the pod network and the cloud
    /// controller itself get installed.
    #[serde(default)]
    pub(crate) bootstrap: bool,
    /// The chart's values, as YAML (flatstack writes JSON, which is YAML).
    #[serde(default)]
    pub values_content: String,
    /// More values from Secrets in the HelmChart's own namespace, applied after `values_content`:
    /// where credentials go, so they are never part of the HelmChart itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) values_secrets: Vec<ValuesSecret>,
    /// How long Helm may take, hooks included (`10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) timeout: Option<String>,
    /// What helm-controller does with a failed release: `reinstall` (its default: uninstall,
    /// then install — which deletes what the release owns), `retry` or `abort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) failure_policy: Option<String>,
}

/// A Secret holding values files, and which of its keys to read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ValuesSecret {
    pub(crate) name: String,
    pub(crate) keys: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HelmChartStatus {
    #[serde(default)]
    pub(crate) job_name: String,
    #[serde(default)]
    pub(crate) conditions: Vec<HelmChartCondition>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct HelmChartCondition {
    #[serde(rename = "type")]
    pub(crate) type_: String,
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) reason: String,
    #[serde(default)]
    pub(crate) message: String,
}

impl k8s_openapi::Resource for HelmChart {
    const API_VERSION: &'static str = "helm.cattle.io/v1";
    const GROUP: &'static str = "helm.cattle.io";
    const KIND: &'static str = "HelmChart";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "helmcharts";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for HelmChart {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// What is applied: apiVersion, kind, metadata and spec (status belongs to the controller).
impl Serialize for HelmChart {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Applied<'a> {
            api_version: &'static str,
            kind: &'static str,
            metadata: &'a ObjectMeta,
            spec: &'a HelmChartSpec,
        }
        Applied {
            api_version: <Self as k8s_openapi::Resource>::API_VERSION,
            kind: <Self as k8s_openapi::Resource>::KIND,
            metadata: &self.metadata,
            spec: &self.spec,
        }
        .serialize(serializer)
    }
}
