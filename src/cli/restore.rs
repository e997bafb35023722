//! `flatstack restore`: the cluster brought back from one of its etcd snapshots. The snapshot
//! is looked up first (a name that is not there stops everything), what will happen is said,
//! and nothing changes without `--yes`; then `up` runs with the restore in it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::cloud::{cloud_config, runtime};
use super::{InvalidInput, load_spec, state_path};
use crate::apply::restore::RestoreRequest;
use crate::apply::up::UpRequest;
use crate::backup;
use crate::cloud::Cloud;
use crate::pins::KubernetesVersion;
use crate::pki::StateDir;

#[derive(Debug, clap::Args)]
pub(crate) struct RestoreArgs {
    /// The snapshot's object name, as `backup list` shows it (default: the newest).
    #[arg(long)]
    pub(crate) snapshot: Option<String>,
    /// Go ahead: delete the control planes and restore (without it, only say what happens).
    #[arg(long)]
    pub(crate) yes: bool,
    /// State directory of the cluster, whose backup key opens the snapshot (default:
    /// $XDG_DATA_HOME/flatstack/<name>).
    #[arg(long, env = "FLATSTACK_STATE_DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// Stop once the cloud side is done, as `up --provision-only` does.
    #[arg(long)]
    pub(crate) provision_only: bool,
    #[command(flatten)]
    pub(crate) api: super::up::ApiArgs,
    /// How long the restored cluster may take to come up.
    #[arg(long, default_value = "20m", value_parser = super::up::parse_duration)]
    pub(crate) timeout: Duration,
}

pub(crate) fn run(file: &Path, cloud_flag: Option<&str>, args: &RestoreArgs) -> anyhow::Result<()> {
    let spec = load_spec(file)?;
    let config = cloud_config(cloud_flag, &spec)?;
    let state_path = state_path(&spec, args.state_dir.as_ref())?;
    let Some(state) = StateDir::open_existing(&state_path)? else {
        return Err(InvalidInput(format!(
            "there is no state directory at {}: it holds the CAs and the backup key a restore needs\n  hint: restore the state directory from your backup, or pass --state-dir",
            state_path.display()
        ))
        .into());
    };
    if crate::pki::ClusterPki::load_existing(&state)?.is_none() {
        return Err(InvalidInput(format!(
            "the state directory {} holds no PKI: a restored cluster needs the CAs and service-account key its objects were signed with; nothing was changed\n  hint: restore the state directory from your backup, or pass --state-dir",
            state_path.display()
        ))
        .into());
    }
    if backup::load_key(&state)?.is_none() {
        return Err(InvalidInput(format!(
            "the state directory {} holds no backup key ({}), so no snapshot can be opened with it\n  hint: use the state directory the cluster's backups were made with",
            state_path.display(),
            backup::KEY_FILE
        ))
        .into());
    }
    let name = spec.name.clone();
    let version = spec.kubernetes.version;
    let snapshot = runtime()?.block_on(async {
        let cloud = Cloud::connect(config.clone()).await?;
        let store = backup::Store::of(&cloud, &spec).map_err(|e| InvalidInput(e.to_string()))?;
        if !store.offered().await {
            return Err(InvalidInput(format!(
                "cloud `{}` has no object store, so cluster `{name}` has no snapshot to restore from; nothing was changed",
                cloud.config().name
            ))
            .into());
        }
        let listing = backup::list(&store, &name, Some(&state)).await?;
        let snapshot = backup::choose(&listing, &name, args.snapshot.as_deref())
            .map_err(|e| InvalidInput(format!("{e}; nothing was changed")))?
            .clone();
        check_release(&snapshot, version)?;
        let tag = crate::plan::resources::cluster_tag(&name);
        let servers = cloud.servers_tagged(&[tag.as_str()]).await?;
        let (control_planes, workers): (Vec<_>, Vec<_>) = servers
            .iter()
            .partition(|s| s.has_role("control-plane"));
        let names = |servers: &[&crate::cloud::compute::Server]| match servers.is_empty() {
            true => "none".to_string(),
            false => servers
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        };
        out!(
            "restore cluster `{name}` from snapshot {} (taken {}, Kubernetes {}, {}):",
            snapshot.object,
            snapshot.name.taken,
            snapshot.name.kubernetes,
            backup::human_size(snapshot.bytes)
        );
        out!(
            "  deletes its control planes ({}): every change since the snapshot is lost",
            names(&control_planes)
        );
        out!(
            "  builds the first control plane to restore etcd from the snapshot, the others to join it"
        );
        out!(
            "  keeps the workers ({}); any the snapshot has no Node of is built again",
            names(&workers)
        );
        anyhow::Ok(snapshot)
    })?;
    if !args.yes {
        return Err(InvalidInput(
            "nothing was changed; run again with --yes to restore".to_string(),
        )
        .into());
    }
    drop(state);
    let request = UpRequest {
        cloud: config,
        state_path,
        spec,
        provision_only: args.provision_only,
        accept_empty_cluster: false,
        restore: Some(RestoreRequest { snapshot }),
        api_address: args.api.api_address.clone(),
        timeout: args.timeout,
    };
    super::up::run_up(request, false, super::up::Output::Text)
}

/// A snapshot restores into the release its cluster ran, by minor: a control plane of another
/// minor than the data was written by is an upgrade (or a step down) kubeadm did not make.
fn check_release(snapshot: &backup::Snapshot, file: KubernetesVersion) -> Result<(), InvalidInput> {
    let taken = KubernetesVersion::parse(&snapshot.name.kubernetes).ok_or_else(|| {
        InvalidInput(format!(
            "snapshot {} does not name a Kubernetes release flatstack reads ({}); nothing was changed",
            snapshot.object, snapshot.name.kubernetes
        ))
    })?;
    match (taken.major, taken.minor) == (file.major, file.minor) {
        true => Ok(()),
        false => Err(InvalidInput(format!(
            "snapshot {} was taken with Kubernetes {taken}, and the cluster file asks for {file}: a restore keeps the minor; nothing was changed\n  hint: set `kubernetes.version = \"{}\"` to restore, then move to {} with `flatstack up`, one minor at a time",
            snapshot.object,
            taken.to_string().trim_start_matches('v'),
            file.minor_series()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(release: &str) -> backup::Snapshot {
        let object = format!("demo-etcd-20261207T120000Z-{release}.db.enc");
        backup::Snapshot {
            container: "flatstack-backups.demo.abcdefgh".into(),
            name: backup::SnapshotName::parse("demo", &object).expect("a snapshot's name"),
            object,
            bytes: 1024,
        }
    }

    #[test]
    fn a_snapshot_restores_only_into_its_own_minor() {
        let file = KubernetesVersion::new(1, 37, 1);
        assert!(check_release(&snapshot("v1.37.0"), file).is_ok());
        assert!(check_release(&snapshot("v1.37.3"), file).is_ok());
        let older = check_release(&snapshot("v1.36.2"), file)
            .expect_err("another minor")
            .to_string();
        assert!(older.contains("kubernetes.version = \"1.36.2\""), "{older}");
        assert!(older.contains("nothing was changed"), "{older}");
        assert!(check_release(&snapshot("v1.38.0"), file).is_err());
    }
}
