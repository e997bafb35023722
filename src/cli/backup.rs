//! `flatstack backup now|list|get`: a snapshot taken at once by the cluster's CronJob, the
//! cluster's etcd snapshots as the object store holds them, read from the workstation, and one
//! of them downloaded and opened with the state directory's key.

use std::path::{Path, PathBuf};

use super::cloud::{cloud_config, runtime};
use super::{InvalidInput, load_spec, state_path};
use crate::backup::{self, Listing};
use crate::cloud::Cloud;
use crate::pki::StateDir;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum BackupCommand {
    /// Take a snapshot now: run the cluster's snapshot CronJob once and wait until the
    /// snapshot is in the object store.
    Now(NowArgs),
    /// The cluster's snapshots in the object store, oldest first: when each was taken, its
    /// size and the Kubernetes release it holds. "none" when there are none.
    List(ListArgs),
    /// Download a snapshot (the newest unless --snapshot names one), check it was made for this
    /// cluster's key and not changed since, and write the etcd snapshot it holds to --out
    /// (mode 0600: it holds every Secret of the cluster).
    Get(GetArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct NowArgs {
    #[command(flatten)]
    pub(crate) cluster: super::cluster::ClusterArgs,
    /// How long the snapshot may take (`90s`, `15m`).
    #[arg(long, default_value = "15m", value_parser = super::up::parse_duration)]
    pub(crate) timeout: std::time::Duration,
}

#[derive(Debug, clap::Args)]
pub(crate) struct GetArgs {
    /// The snapshot's object name, as `backup list` shows it (default: the newest).
    #[arg(long)]
    pub(crate) snapshot: Option<String>,
    /// Where to write the etcd snapshot (refused if it exists).
    #[arg(long)]
    pub(crate) out: PathBuf,
    #[arg(long, env = "FLATSTACK_STATE_DIR")]
    pub(crate) state_dir: Option<PathBuf>,
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
    let args = match command {
        BackupCommand::List(args) => args,
        BackupCommand::Get(args) => return get(file, cloud_flag, args),
        BackupCommand::Now(args) => return now(file, cloud_flag, args),
    };
    let spec = load_spec(file)?;
    let config = cloud_config(cloud_flag, &spec)?;
    let state = StateDir::open_existing(&state_path(&spec, args.state_dir.as_ref())?)?;
    runtime()?.block_on(async {
        let cloud = Cloud::connect(config).await?;
        let store = backup::Store::of(&cloud, &spec).map_err(|e| InvalidInput(e.to_string()))?;
        if !store.offered().await {
            out!(
                "none: cloud `{}` has no object store, so cluster `{}` keeps no backups there",
                cloud.config().name,
                spec.name
            );
            return Ok(());
        }
        let listing = backup::list(&store, &spec.name, state.as_ref()).await?;
        print_listing(&spec.name, &listing, time::OffsetDateTime::now_utc());
        Ok(())
    })
}

fn now(file: &Path, cloud_flag: Option<&str>, args: &NowArgs) -> anyhow::Result<()> {
    let spec = load_spec(file)?;
    let config = cloud_config(cloud_flag, &spec)?;
    runtime()?.block_on(async {
        let started = time::OffsetDateTime::now_utc();
        let cloud = Cloud::connect(config).await?;
        // The store is read once the Job has run: a missing key is said before it starts.
        backup::Store::of(&cloud, &spec).map_err(|e| InvalidInput(e.to_string()))?;
        let cluster = args.cluster.connect(spec, cloud_flag).await?;
        let name = cluster.spec.name.clone();
        let ran = cluster
            .client
            .run_cron_job_now("kube-system", backup::objects::NAME, args.timeout)
            .await?;
        match ran {
            None => {
                return Err(InvalidInput(format!(
                    "cluster `{name}` has no snapshot CronJob (kube-system/{})\n  hint: `flatstack up` makes it where backups are on (see `flatstack plan`)",
                    backup::objects::NAME
                ))
                .into());
            }
            Some(crate::kube::Ran::Busy { jobs }) => anyhow::bail!(
                "a snapshot Job is running already ({}); none was started beside it\n  hint: wait for it (`kubectl -n kube-system get jobs`), or run `flatstack backup now` again once it has ended",
                jobs.join(", ")
            ),
            Some(crate::kube::Ran::Failed { job, message }) => anyhow::bail!(
                "snapshot Job {job} failed: {message}\n  hint: `kubectl -n kube-system logs job/{job} -c upload` (and `-c snapshot`) say why"
            ),
            Some(crate::kube::Ran::Succeeded { job }) => {
                let store = backup::Store::of(&cloud, &cluster.spec)
                    .map_err(|e| InvalidInput(e.to_string()))?;
                let listing = backup::list(&store, &name, Some(&cluster.state)).await?;
                // The store's clock and the node's may differ from ours by a little.
                let since = started - time::Duration::minutes(5);
                match listing.snapshots.iter().rev().find(|s| s.name.taken >= since) {
                    Some(snapshot) => out!(
                        "snapshot {} ({}) is in {}; Job {job}",
                        snapshot.object,
                        backup::human_size(snapshot.bytes),
                        snapshot.container
                    ),
                    None => anyhow::bail!(
                        "snapshot Job {job} succeeded, but no snapshot taken since {started} is in the object store\n  hint: `kubectl -n kube-system logs job/{job} -c upload` says where it went"
                    ),
                }
            }
        }
        Ok(())
    })
}

fn get(file: &Path, cloud_flag: Option<&str>, args: &GetArgs) -> anyhow::Result<()> {
    let spec = load_spec(file)?;
    let config = cloud_config(cloud_flag, &spec)?;
    let state_path = state_path(&spec, args.state_dir.as_ref())?;
    let Some(state) = StateDir::open_existing(&state_path)? else {
        return Err(InvalidInput(format!(
            "there is no state directory at {}, so no backup key to open a snapshot with\n  hint: restore the state directory from your backup, or pass --state-dir",
            state_path.display()
        ))
        .into());
    };
    let Some(key) = backup::load_key(&state)? else {
        return Err(InvalidInput(format!(
            "the state directory {} holds no backup key ({}), so no snapshot can be opened with it\n  hint: use the state directory the cluster's backups were made with",
            state_path.display(),
            backup::KEY_FILE
        ))
        .into());
    };
    if args.out.exists() {
        return Err(InvalidInput(format!(
            "{} exists; flatstack never overwrites it\n  hint: name a new file with --out",
            args.out.display()
        ))
        .into());
    }
    runtime()?.block_on(async {
        let cloud = Cloud::connect(config).await?;
        let store = backup::Store::of(&cloud, &spec).map_err(|e| InvalidInput(e.to_string()))?;
        let listing = backup::list(&store, &spec.name, Some(&state)).await?;
        let snapshot = backup::choose(&listing, &spec.name, args.snapshot.as_deref())
            .map_err(|e| InvalidInput(e.to_string()))?;
        let plain = backup::fetch(&store, &key, snapshot).await?;
        write_new(&args.out, &plain)?;
        out!(
            "wrote {} ({}, taken {} with Kubernetes {}) to {}",
            snapshot.object,
            backup::human_size(plain.len() as u64),
            snapshot.name.taken,
            snapshot.name.kubernetes,
            args.out.display()
        );
        Ok(())
    })
}

/// Writes `bytes` to `path` (0600) unless something is there already, never leaving a part
/// of them under that name: written aside, then linked, which fails if `path` exists.
fn write_new(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let aside = path.with_file_name(format!(".{name}.flatstack-partial"));
    crate::pki::write_atomically(&aside, bytes, 0o600)?;
    let linked = std::fs::hard_link(&aside, path);
    let _ = std::fs::remove_file(&aside);
    linked.map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => InvalidInput(format!(
            "{} exists; flatstack never overwrites it\n  hint: name a new file with --out",
            path.display()
        ))
        .into(),
        _ => anyhow::anyhow!("cannot write {}: {e}", path.display()),
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
