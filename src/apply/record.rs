//! The cluster's record of what flatstack applied: the `kube-system/flatstack` ConfigMap. It
//! holds the digest of the whole add-on set, written once everything is in, and for each
//! HelmChart the digest of the settings whose install Job succeeded with that Job's UID,
//! written as each chart settles. A run stopped anywhere — between an apply and
//! helm-controller's new Job, or after the Job but before the end — leaves a record from
//! which the next run knows which charts are settled and which Jobs prove nothing.
//!
//! Digests are keyed with a key derived from the cluster CA's, so the record says nothing
//! about what it covers (the values Secrets a chart reads hold credentials).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use sha2::{Digest, Sha256};

use crate::addons::{HelmChart, NAMESPACE, RECORD_CONFIGMAP};
use crate::kube::{KubeClient, KubeError};
use crate::secret::keyed_digest;

/// The record's key for the whole add-on set's digest.
const ADDONS_DIGEST: &str = "addons-digest";

/// The key that makes the record's digests say nothing about what they cover.
#[derive(Clone)]
pub struct RecordKey([u8; 32]);

impl RecordKey {
    /// Derived from a secret only the state directory holds (the cluster CA's key).
    pub fn derive(secret: &[u8]) -> RecordKey {
        let mut hasher = Sha256::new();
        hasher.update(b"flatstack chart record\0");
        hasher.update(secret);
        RecordKey(hasher.finalize().into())
    }
}

impl std::fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordKey(..)")
    }
}

/// What the record says of one chart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SettledChart {
    /// [`Record::chart_settings`] of the chart whose install Job succeeded.
    pub(crate) settings: String,
    /// That Job's UID.
    pub(crate) job_uid: String,
}

/// The record as read from the cluster, changed in memory, written back whole.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    data: BTreeMap<String, String>,
    key: RecordKey,
}

fn path() -> String {
    format!("/api/v1/namespaces/{NAMESPACE}/configmaps/{RECORD_CONFIGMAP}")
}

impl Record {
    /// The record in the cluster (empty when there is none yet).
    pub(crate) async fn read(client: &KubeClient, key: &RecordKey) -> Result<Record, KubeError> {
        let map: Option<ConfigMap> = client.get(&path()).await?;
        Ok(Record {
            data: map.and_then(|m| m.data).unwrap_or_default(),
            key: key.clone(),
        })
    }

    pub(crate) fn addons_current(&self, digest: &str) -> bool {
        self.data.get(ADDONS_DIGEST).map(String::as_str) == Some(digest)
    }

    pub(crate) fn set_addons(&mut self, digest: &str) {
        self.data.insert(ADDONS_DIGEST.into(), digest.into());
    }

    pub(crate) fn chart(&self, name: &str) -> Option<SettledChart> {
        Some(SettledChart {
            settings: self.data.get(&format!("chart.{name}.settings"))?.clone(),
            job_uid: self.data.get(&format!("chart.{name}.job"))?.clone(),
        })
    }

    pub(crate) fn set_chart(&mut self, name: &str, settled: SettledChart) {
        self.data
            .insert(format!("chart.{name}.settings"), settled.settings);
        self.data
            .insert(format!("chart.{name}.job"), settled.job_uid);
    }

    /// Writes the whole record (server-side apply: entries no longer in it go).
    pub(crate) async fn save(&self, client: &KubeClient) -> Result<(), KubeError> {
        client
            .apply(&crate::addons::record_manifest(self.data.clone()))
            .await
            .map(|_| ())
    }

    /// The digest of what helm-controller makes a chart's install Job from, as the API has it
    /// now: the HelmChart's UID (a chart made anew never matches) and spec as stored (CRD
    /// defaults filled in, so a default flatstack starts to write out changes nothing), and
    /// the `data` of every values Secret it reads (helm-controller hashes them into the Job:
    /// `pkg/controllers/chart/chart.go`, `hashObjects`). Content, not `metadata.generation`:
    /// a spec changed and changed back has a new generation but the Job of before, which
    /// helm-controller keeps (its release has those values).
    pub(crate) async fn chart_settings(
        &self,
        client: &KubeClient,
        chart: &HelmChart,
    ) -> Result<String, KubeError> {
        // A typed struct serializes its fields in one fixed order.
        let mut parts: Vec<Vec<u8>> = vec![
            chart.metadata.uid.clone().unwrap_or_default().into_bytes(),
            serde_json::to_vec(&chart.spec).unwrap_or_default(),
        ];
        let mut secrets: Vec<&str> = chart
            .spec
            .values_secrets
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        secrets.sort_unstable();
        for name in secrets {
            let secret: Option<Secret> = client
                .get(&format!("/api/v1/namespaces/{NAMESPACE}/secrets/{name}"))
                .await?;
            parts.push(name.as_bytes().to_vec());
            for (key, value) in secret.and_then(|s| s.data).unwrap_or_default() {
                parts.push(key.into_bytes());
                parts.push(value.0);
            }
        }
        Ok(keyed_digest(&self.key.0, parts.iter().map(Vec::as_slice)))
    }
}
