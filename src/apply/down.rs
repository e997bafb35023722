//! `down` as the engine runs it: take the writer lock, see what the cluster owns, and (once
//! the caller has confirmed) remove it all.

use std::path::Path;
use std::sync::Arc;

use super::{ApplyError, cluster_volumes, observe::cluster_resources, teardown};
use crate::cloud::volume::Volume;
use crate::cloud::{Cloud, CloudConfig};
use crate::pki::{StateDir, WriterLock};
use crate::plan::resources::Observed;
use crate::spec::ClusterSpec;

/// What `down` found, holding the lock until it has run.
pub(crate) struct Down {
    spec: ClusterSpec,
    cloud: Arc<Cloud>,
    _lock: Option<WriterLock>,
    pub(crate) observed: Observed,
    pub(crate) volumes: Vec<Volume>,
}

impl Down {
    /// Locks the cluster (when its state directory is here: `down` needs none of its contents)
    /// and observes what it owns.
    pub(crate) async fn open(
        spec: ClusterSpec,
        config: CloudConfig,
        state_path: &Path,
    ) -> Result<Down, super::up::UpError> {
        let lock = match StateDir::open_existing(state_path)? {
            Some(state) => Some(state.lock_for("down")?),
            None => None,
        };
        let cloud = Arc::new(Cloud::connect(config).await?);
        let ((observed, _), volumes) = tokio::try_join!(
            cluster_resources(&cloud, &spec),
            cluster_volumes(&cloud, &spec.name),
        )?;
        Ok(Down {
            spec,
            cloud,
            _lock: lock,
            observed,
            volumes,
        })
    }

    /// Whether there is anything to delete.
    pub(crate) fn is_empty(&self, delete_volumes: bool) -> bool {
        self.observed.count() == 0 && (self.volumes.is_empty() || !delete_volumes)
    }

    /// Deletes everything, then checks nothing is left.
    pub(crate) async fn run(
        self,
        delete_volumes: bool,
        say: &(dyn Fn(&str) + Sync),
    ) -> Result<usize, ApplyError> {
        teardown(&self.cloud, &self.spec, delete_volumes, say).await?;
        Ok(self.observed.count())
    }
}
