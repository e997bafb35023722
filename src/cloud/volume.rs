//! Cinder: volumes, their snapshots, and the project's block-storage quotas.

use serde::Deserialize;
use serde_json::{Value, json};

use super::compute::Usage;
use super::{Cloud, CloudError, Service};

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Volume {
    pub id: String,
    #[serde(default)]
    pub(crate) name: Option<String>,
    pub(crate) status: String,
    pub size: u64,
    #[serde(default)]
    pub(crate) metadata: std::collections::BTreeMap<String, String>,
    /// `"true"` for a volume made from an image (Cinder answers with a string).
    #[serde(default)]
    pub(crate) bootable: String,
    #[serde(default)]
    pub(crate) attachments: Vec<VolumeAttachment>,
}

/// Where a volume is attached.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub(crate) struct VolumeAttachment {
    pub(crate) server_id: String,
    #[serde(default)]
    pub(crate) device: String,
}

/// A snapshot of a volume (Cinder CSI makes them for `VolumeSnapshot` objects).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct VolumeSnapshot {
    pub id: String,
    #[serde(default)]
    pub(crate) name: Option<String>,
    pub(crate) volume_id: String,
    pub(crate) status: String,
    pub size: u64,
    #[serde(default)]
    pub(crate) metadata: std::collections::BTreeMap<String, String>,
}

/// The project's block-storage quotas and usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VolumeLimits {
    pub volumes: Usage,
    pub(crate) gigabytes: Usage,
}

impl Cloud {
    pub(crate) async fn volumes(&self) -> Result<Vec<Volume>, CloudError> {
        #[derive(Deserialize)]
        struct List {
            volumes: Vec<Volume>,
        }
        Ok(self
            .get::<List>(Service::Volume, "/volumes/detail")
            .await?
            .volumes)
    }

    pub(crate) async fn volume(&self, id: &str) -> Result<Volume, CloudError> {
        #[derive(Deserialize)]
        struct One {
            volume: Volume,
        }
        Ok(self
            .get::<One>(Service::Volume, &format!("/volumes/{id}"))
            .await?
            .volume)
    }

    /// Creates a volume; a retried create finds the first attempt's volume by name.
    pub async fn create_volume(
        &self,
        name: &str,
        size_gb: u64,
        metadata: &std::collections::BTreeMap<String, String>,
    ) -> Result<Volume, CloudError> {
        let body = json!({ "volume": { "name": name, "size": size_gb, "metadata": metadata } });
        self.create(Service::Volume, "/volumes", &body, "volume", || async {
            let found = self.volumes().await?;
            Ok(found.into_iter().find(|v| v.name.as_deref() == Some(name)))
        })
        .await
    }

    /// Polls until the volume has `status`; `error` is reported as a failure.
    pub async fn wait_volume(
        &self,
        id: &str,
        status: &str,
        timeout: std::time::Duration,
    ) -> Result<Volume, CloudError> {
        let started = std::time::Instant::now();
        loop {
            let volume = self.volume(id).await?;
            if volume.status == status {
                return Ok(volume);
            }
            if volume.status == "error" {
                return Err(CloudError::Failed {
                    what: format!("volume {id}"),
                    fault: "Cinder set it to error; see the volume service's log".into(),
                    next: None,
                });
            }
            if started.elapsed() >= timeout {
                return Err(CloudError::Timeout {
                    what: format!("volume {id}"),
                    wanted: status.to_string(),
                    state: volume.status,
                    waited: timeout,
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }

    /// The project's volume snapshots.
    pub(crate) async fn volume_snapshots(&self) -> Result<Vec<VolumeSnapshot>, CloudError> {
        #[derive(Deserialize)]
        struct List {
            snapshots: Vec<VolumeSnapshot>,
        }
        Ok(self
            .get::<List>(Service::Volume, "/snapshots/detail")
            .await?
            .snapshots)
    }

    /// Deletes a volume snapshot and waits until Cinder no longer has it (a volume with
    /// snapshots cannot be deleted); one already gone counts as deleted.
    pub(crate) async fn delete_volume_snapshot(
        &self,
        id: &str,
        timeout: std::time::Duration,
    ) -> Result<(), CloudError> {
        #[derive(Deserialize)]
        struct One {
            snapshot: VolumeSnapshot,
        }
        let path = format!("/snapshots/{id}");
        let started = std::time::Instant::now();
        let mut asked = false;
        loop {
            match self.get::<One>(Service::Volume, &path).await {
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(e),
                // Cinder deletes only an available snapshot, or one in error; one being made
                // is waited for, one being deleted (a stopped run asked) only watched.
                Ok(one)
                    if !asked && matches!(one.snapshot.status.as_str(), "available" | "error") =>
                {
                    self.delete(Service::Volume, &path).await?;
                    asked = true;
                }
                Ok(one) if one.snapshot.status == "error_deleting" => {
                    return Err(CloudError::Failed {
                        what: format!("volume snapshot {id}"),
                        fault: "Cinder could not delete it (error_deleting); see the volume service's log".into(),
                        next: None,
                    });
                }
                Ok(one) if started.elapsed() >= timeout => {
                    return Err(CloudError::Timeout {
                        what: format!("volume snapshot {id}"),
                        wanted: "deleted".into(),
                        state: one.snapshot.status,
                        waited: timeout,
                    });
                }
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
            }
        }
    }

    pub async fn delete_volume(&self, id: &str) -> Result<(), CloudError> {
        self.delete(Service::Volume, &format!("/volumes/{id}"))
            .await
    }

    pub async fn volume_limits(&self) -> Result<VolumeLimits, CloudError> {
        let limits: Value = self.get(Service::Volume, "/limits").await?;
        let absolute = &limits["limits"]["absolute"];
        let usage = |limit: &str, used: &str| Usage {
            limit: absolute[limit].as_i64().and_then(|l| u64::try_from(l).ok()),
            used: absolute[used].as_u64().unwrap_or(0),
        };
        Ok(VolumeLimits {
            volumes: usage("maxTotalVolumes", "totalVolumesUsed"),
            gigabytes: usage("maxTotalVolumeGigabytes", "totalGigabytesUsed"),
        })
    }
}
