//! `down` as the engine runs it: take the writer lock, see what the cluster owns, and (once
//! the caller has confirmed) remove it all.

use std::path::Path;
use std::sync::Arc;

use super::{
    ApplyError, cluster_volume_snapshots, cluster_volumes, observe::cluster_resources, teardown,
};
use crate::backup::{BackupError, Listing, Store};
use crate::cloud::volume::{Volume, VolumeSnapshot};
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
    /// Snapshots of its volumes (Cinder's, as Cinder CSI makes for `VolumeSnapshot`s).
    pub(crate) volume_snapshots: Vec<VolumeSnapshot>,
    /// The cluster's snapshots in the object store (empty where the cloud has none).
    pub(crate) backups: Listing,
    /// Why the object store could not be read, when it could not.
    pub(crate) backups_unread: Option<String>,
    state: Option<StateDir>,
}

impl Down {
    /// Locks the cluster (when its state directory is here: `down` needs none of its contents)
    /// and observes what it owns.
    pub(crate) async fn open(
        spec: ClusterSpec,
        config: CloudConfig,
        state_path: &Path,
    ) -> Result<Down, super::up::UpError> {
        let state = StateDir::open_existing(state_path)?;
        let lock = match &state {
            Some(state) => Some(state.lock_for("down")?),
            None => None,
        };
        let cloud = Arc::new(Cloud::connect(config).await?);
        let ((observed, _), volumes) = tokio::try_join!(
            cluster_resources(&cloud, &spec),
            cluster_volumes(&cloud, &spec.name),
        )?;
        let volume_snapshots = cluster_volume_snapshots(&cloud, &spec.name, &volumes).await?;
        // The store is read for what `down` says it keeps; it must answer only when the
        // backups are to be deleted (`delete_backups` then reads it again).
        let (backups, unread) = match Store::of(&cloud, &spec) {
            Err(e) => (Listing::default(), Some(e.to_string())),
            Ok(store) => match store.offered().await {
                true => match crate::backup::list(&store, &spec.name, state.as_ref()).await {
                    Ok(listing) => (listing, None),
                    Err(e) => (Listing::default(), Some(e.to_string())),
                },
                false => (Listing::default(), None),
            },
        };
        Ok(Down {
            spec,
            cloud,
            _lock: lock,
            observed,
            volumes,
            volume_snapshots,
            backups,
            backups_unread: unread,
            state,
        })
    }

    /// Whether there is anything to delete (a store that could not be read may hold backups).
    pub(crate) fn is_empty(&self, delete_volumes: bool, delete_backups: bool) -> bool {
        let no_backups = self.backups.containers.is_empty() && self.backups_unread.is_none();
        self.observed.count() == 0
            && ((self.volumes.is_empty() && self.volume_snapshots.is_empty()) || !delete_volumes)
            && (no_backups || !delete_backups)
    }

    /// Deletes everything, then checks nothing is left; the backups too when asked.
    pub(crate) async fn run(
        self,
        delete_volumes: bool,
        delete_backups: bool,
        say: &(dyn Fn(&str) + Sync),
    ) -> Result<usize, ApplyError> {
        // A store that cannot be reached for want of a key is said before anything is deleted.
        if delete_backups {
            Store::of(&self.cloud, &self.spec).map_err(BackupError::from)?;
        }
        if self.observed.count() > 0 || delete_volumes {
            teardown(&self.cloud, &self.spec, delete_volumes, say).await?;
        }
        // A restore that never finished ends with its cluster: its staged copy goes (with the
        // container when the backups go), and so does the record that `up` would finish it.
        if let Some(state) = &self.state {
            let pending = super::restore::pending(state).map_err(BackupError::State)?;
            if let Some(container) = pending {
                let cleared = match Store::of(&self.cloud, &self.spec) {
                    Ok(store) if !delete_backups => {
                        crate::backup::restore::clear(&store, &container).await
                    }
                    Ok(_) => Ok(0),
                    Err(e) => Err(e.into()),
                };
                if let Err(e) = cleared {
                    say(&format!(
                        "could not delete the copy of a snapshot an unfinished restore staged in {container}: {e}"
                    ));
                }
                super::restore::finished(state).map_err(BackupError::State)?;
            }
        }
        if delete_backups {
            self.delete_backups(say).await?;
        }
        Ok(self.observed.count())
    }

    /// Empties and deletes the cluster's backup containers.
    pub(crate) async fn delete_backups(
        &self,
        say: &(dyn Fn(&str) + Sync),
    ) -> Result<(), BackupError> {
        let store = Store::of(&self.cloud, &self.spec)?;
        let deleted =
            crate::backup::delete_all(&store, &self.spec.name, self.state.as_ref()).await?;
        for (container, objects) in deleted {
            say(&format!(
                "deleted backup {} {container} with its {objects} object(s)",
                store.noun()
            ));
        }
        Ok(())
    }
}
