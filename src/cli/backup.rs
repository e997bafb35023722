//! `flatstack backup list`: the cluster's etcd snapshots as the object store holds them, read
//! from the workstation.

use std::path::{Path, PathBuf};

use super::cloud::{cloud_config, runtime};
use super::{load_spec, state_path};
use crate::backup::{self, Listing};
use crate::cloud::Cloud;
use crate::pki::StateDir;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum BackupCommand {
    /// The cluster's snapshots in the object store, oldest first: when each was taken, its
    /// size and the Kubernetes release it holds. "none" when there are none.
    List(ListArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    /// State directory of the cluster, which names its container (default:
    /// $XDG_DATA_HOME/flatstack/<name>).
    #[arg(long, env = "FLATSTACK_STATE_DIR")]
    pub(crate) state_dir: Option<PathBuf>,
}

pub(crate) fn run(
    file: &Path,
    cloud_flag: Option<&str>,
    command: &BackupCommand,
) -> anyhow::Result<()> {
    let BackupCommand::List(args) = command;
    let spec = load_spec(file)?;
    let config = cloud_config(cloud_flag, &spec)?;
    let state = StateDir::open_existing(&state_path(&spec, args.state_dir.as_ref())?)?;
    runtime()?.block_on(async {
        let cloud = Cloud::connect(config).await?;
        if !cloud.offers_object_store().await {
            out!(
                "none: cloud `{}` has no object store, so cluster `{}` keeps no backups there",
                cloud.config().name,
                spec.name
            );
            return Ok(());
        }
        let listing = backup::list(&cloud, &spec.name, state.as_ref()).await?;
        print_listing(&spec.name, &listing, time::OffsetDateTime::now_utc());
        Ok(())
    })
}

fn print_listing(cluster: &str, listing: &Listing, now: time::OffsetDateTime) {
    if listing.containers.is_empty() {
        out!("none: cluster `{cluster}` has no backup container yet (`flatstack up` makes it)");
        return;
    }
    out!("containers: {}", listing.containers.join(", "));
    if listing.snapshots.is_empty() {
        out!("none: no snapshot of cluster `{cluster}` yet");
    } else {
        out!(
            "{:<22} {:>6} {:>10}  {:<11} NAME",
            "TAKEN (UTC)",
            "AGE",
            "SIZE",
            "KUBERNETES"
        );
        for snapshot in &listing.snapshots {
            let taken = snapshot.name.taken;
            out!(
                "{:<22} {:>6} {:>10}  {:<11} {}",
                format!(
                    "{} {:02}:{:02}:{:02}",
                    taken.date(),
                    taken.hour(),
                    taken.minute(),
                    taken.second()
                ),
                crate::kube::age_between(taken.unix_timestamp(), now.unix_timestamp()),
                backup::human_size(snapshot.bytes),
                snapshot.name.kubernetes,
                snapshot.object
            );
        }
    }
    if listing.others > 0 {
        out!(
            "({} other object(s) in the container(s), not snapshots of `{cluster}`)",
            listing.others
        );
    }
}
