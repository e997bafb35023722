//! Where a cluster's etcd snapshots are kept and what they are called: one container (or
//! bucket) of the cluster's object store ([`store`]) per cluster, its name unique (a random suffix, recorded in the state
//! directory, so a store whose names are global cannot hand us another project's), and
//! snapshot objects named by cluster, time and Kubernetes release. `up` makes the container and
//! checks it can be written; `backup list` and `down` read and empty it from the workstation.

pub(crate) mod envelope;
pub(crate) mod objects;
pub(crate) mod restore;
pub(crate) mod script;
pub(crate) mod store;

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

use crate::cloud::CloudError;
use crate::cloud::object_store::{Made, StoredObject};
use crate::pki::{PkiError, StateDir};
use crate::spec::ClusterSpec;
pub(crate) use store::{Store, StoreConfigError};

/// The state directory's record of the cluster's container.
pub(crate) const CONTAINER_RECORD: &str = "backup-container";
/// The backup key's private half, in the state directory only (0600).
pub(crate) const KEY_FILE: &str = "backup.key";
/// Characters of a container name's random suffix.
pub(crate) const SUFFIX_LEN: usize = 8;
/// Names tried when a store says each is taken.
const NAME_ATTEMPTS: usize = 5;
/// The object `up` writes and deletes again to learn the container takes writes.
const WRITE_CHECK: &str = ".flatstack-write-check";
/// What ends every snapshot object's name: encrypted to the cluster's backup key.
const SNAPSHOT_SUFFIX: &str = ".db.enc";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "the cluster file turns backups on (`backup.enabled = true`), but cloud `{cloud}` has no object store in its catalog\n  hint: set `backup.enabled = false`, or use a cloud with Swift"
    )]
    NoObjectStore { cloud: String },
    #[error("cannot {action} backup container {container}")]
    Store {
        action: &'static str,
        container: String,
        #[source]
        source: Box<CloudError>,
    },
    #[error("cannot list the project's backup containers")]
    Containers(#[source] Box<CloudError>),
    #[error(
        "the object store refused to {what} ({cause})\n  hint: with Swift, the cluster's credentials need a role that may read and write the object store (on Jetstream2, `member`); with an S3 store, the access key must be current and its secret right (and the workstation's clock within minutes of the store's), with rights to list, make and write buckets; or set `backup.enabled = false`"
    )]
    Refused {
        what: String,
        cause: Box<CloudError>,
    },
    #[error(
        "the object store took none of {NAME_ATTEMPTS} names for the backup container (each held by another project): last {last}\n  hint: run `flatstack up` again; the names are random"
    )]
    NamesTaken { last: String },
    #[error(transparent)]
    State(#[from] PkiError),
    #[error(transparent)]
    StoreConfig(#[from] StoreConfigError),
    #[error(
        "{} does not hold a backup key\n  hint: restore it from your backup of the state directory; without it no snapshot can be read",
        path.display()
    )]
    DamagedKey { path: std::path::PathBuf },
    #[error(transparent)]
    Envelope(#[from] envelope::EnvelopeError),
    #[error(
        "the state directory records the backups in {recorded} (container {container}), but the cluster file now names {now}\n  hint: set the file back to keep writing them there; to start anew in the new store, delete {} (the old snapshots stay where they are: `backup list` and `backup get` read the store the file names, so set it back to read them)",
        record.display()
    )]
    StoreChanged {
        container: String,
        recorded: String,
        now: String,
        record: std::path::PathBuf,
    },
    #[error("snapshot {object} was deleted while it was being read")]
    Vanished { object: String },
    #[error(
        "snapshot {object} cannot be opened with this state directory's backup key: {cause}\n  hint: nothing was written; choose another with --snapshot (`flatstack backup list`)"
    )]
    Unreadable {
        object: String,
        cause: envelope::EnvelopeError,
    },
}

impl BackupError {
    /// Whether the cluster file asks what the cloud cannot give, or the state directory is
    /// what must change.
    pub(crate) fn is_invalid_input(&self) -> bool {
        match self {
            BackupError::NoObjectStore { .. }
            | BackupError::DamagedKey { .. }
            | BackupError::StoreConfig(_)
            | BackupError::StoreChanged { .. } => true,
            BackupError::State(e) => e.is_invalid_input(),
            _ => false,
        }
    }

    /// The store refused the credentials (403).
    pub(crate) fn is_refused(&self) -> bool {
        matches!(self, BackupError::Refused { .. })
    }
}

/// Whether a store that refuses turns backups off (said, not fatal) rather than failing: only
/// when the file leaves backups to the cloud's own Swift. An S3 store is the user's explicit
/// choice, and its 403s mostly mean a wrong key.
pub(crate) fn refusal_turns_off(spec: &ClusterSpec, store: &Store<'_>) -> bool {
    spec.backup.enabled.is_none() && store.s3().is_none()
}

/// The cluster's backup key from the state directory, if it has one.
pub(crate) fn load_key(state: &StateDir) -> Result<Option<envelope::BackupKey>, BackupError> {
    match state.read_secret(KEY_FILE) {
        Ok(text) => envelope::BackupKey::parse_hex(&text)
            .map(Some)
            .ok_or_else(|| BackupError::DamagedKey {
                path: state.join(KEY_FILE),
            }),
        Err(PkiError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The cluster's backup key, made (and written, 0600) the first time.
pub(crate) fn load_or_create_key(state: &StateDir) -> Result<envelope::BackupKey, BackupError> {
    if let Some(key) = load_key(state)? {
        return Ok(key);
    }
    let key = envelope::BackupKey::generate()?;
    state.write(
        KEY_FILE,
        format!("{}\n", key.expose_hex()).as_bytes(),
        0o600,
    )?;
    Ok(key)
}

/// Whether `spec`'s backups are on, on a cloud that does or does not offer an object store;
/// an error when the file requires them and the cloud cannot.
pub(crate) fn enabled(spec: &ClusterSpec, offered: bool, cloud: &str) -> Result<bool, BackupError> {
    match (spec.backup.enabled, offered) {
        (Some(false), _) => Ok(false),
        (Some(true), false) => Err(BackupError::NoObjectStore {
            cloud: cloud.to_string(),
        }),
        (_, offered) => Ok(offered),
    }
}

/// Every container of `cluster` starts so: cluster names have no dots, so no other cluster's
/// containers do.
pub(crate) fn container_prefix(cluster: &str) -> String {
    format!("flatstack-backups.{cluster}.")
}

/// The container the state directory records, if any.
pub(crate) fn recorded_container(state: Option<&StateDir>) -> Result<Option<String>, PkiError> {
    let Some(state) = state else {
        return Ok(None);
    };
    match state.read_public(CONTAINER_RECORD) {
        Ok(text) => Ok(text
            .lines()
            .next()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())),
        Err(PkiError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn new_container_name(cluster: &str) -> Result<String, PkiError> {
    Ok(format!(
        "{}{}",
        container_prefix(cluster),
        crate::pki::random_chars(SUFFIX_LEN)?
    ))
}

/// The container `up` made or found, and whether it was new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ensured {
    pub(crate) container: String,
    pub(crate) created: bool,
}

/// Makes the cluster's container unless it is there (the recorded name, or a new one
/// recorded before it is made, so a run stopped in between makes the same one next time),
/// then writes and deletes an object in the new container: a store that refuses writes is
/// found before any snapshot is due. A container that is there is only looked at, so a
/// converged cluster's `up` changes nothing.
pub(crate) async fn ensure(
    store: &Store<'_>,
    state: &StateDir,
    cluster: &str,
) -> Result<Ensured, BackupError> {
    check_recorded_store(store, Some(state))?;
    let mut name = match recorded_container(Some(state))? {
        Some(name) => name,
        None => record_new(store, state, cluster)?,
    };
    if containers(store, cluster, Some(state))
        .await?
        .contains(&name)
    {
        return Ok(Ensured {
            container: name,
            created: false,
        });
    }
    let mut attempts = 1;
    let created = loop {
        let made = store
            .create_container(&name, cluster)
            .await
            .map_err(|source| store_error("create", &name, source))?;
        match made {
            Made::Created => break true,
            Made::Existed => break false,
            Made::Taken if attempts < NAME_ATTEMPTS => {
                attempts += 1;
                name = record_new(store, state, cluster)?;
            }
            Made::Taken => return Err(BackupError::NamesTaken { last: name }),
        }
    };
    let check = store
        .put_object(&name, WRITE_CHECK, b"flatstack".to_vec())
        .await;
    if let Err(source) = check {
        return Err(store_error("write to", &name, source));
    }
    if !store.keeps_write_check() {
        store
            .delete_object(&name, WRITE_CHECK)
            .await
            .map_err(|source| store_error("delete the write check from", &name, source))?;
    }
    Ok(Ensured {
        container: name,
        created,
    })
}

/// Records a new container name, with the store it is in on the next line.
fn record_new(store: &Store<'_>, state: &StateDir, cluster: &str) -> Result<String, PkiError> {
    let name = new_container_name(cluster)?;
    let record = format!("{name}\n{}\n", store.identity());
    state.write(CONTAINER_RECORD, record.as_bytes(), 0o600)?;
    Ok(name)
}

/// Refuses a store other than the one the state directory records the container in (a record
/// of one line is of Swift, written before flatstack knew other stores): `up` would make the
/// recorded name in the other store. Reading (`backup list`, `get`, `down`) reads the store
/// the file names.
fn check_recorded_store(store: &Store<'_>, state: Option<&StateDir>) -> Result<(), BackupError> {
    let Some(state) = state else {
        return Ok(());
    };
    let text = match state.read_public(CONTAINER_RECORD) {
        Ok(text) => text,
        Err(PkiError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let mut lines = text.lines().map(str::trim);
    let container = lines.next().unwrap_or_default().to_string();
    let recorded = lines.next().filter(|l| !l.is_empty()).unwrap_or("swift");
    let now = store.identity();
    match container.is_empty() || recorded == now {
        true => Ok(()),
        false => Err(BackupError::StoreChanged {
            container,
            recorded: recorded.to_string(),
            now,
            record: state.join(CONTAINER_RECORD),
        }),
    }
}

/// A 403 is the credentials' role; anything else, the store's.
fn store_error(action: &'static str, container: &str, source: CloudError) -> BackupError {
    match source {
        CloudError::Api { status: 403, .. } => BackupError::Refused {
            what: format!("{action} backup container {container}"),
            cause: Box::new(source),
        },
        source => BackupError::Store {
            action,
            container: container.to_string(),
            source: Box::new(source),
        },
    }
}

/// Where the cluster's CronJob sends snapshots, and what it logs in and seals with.
pub(crate) async fn target(
    store: &Store<'_>,
    state: &StateDir,
    container: String,
) -> Result<objects::BackupTarget, BackupError> {
    let config = store.cloud().config();
    let (store_url, login) = match store.s3() {
        Some(s3) => (
            s3.endpoint().to_string(),
            objects::StoreLogin::S3 {
                region: s3.region().to_string(),
                keys: s3.keys().clone(),
            },
        ),
        None => (
            store
                .cloud()
                .object_store_url()
                .await
                .map_err(|source| BackupError::Containers(Box::new(source)))?,
            objects::StoreLogin::Keystone {
                auth_url: crate::cloud::identity_v3(config),
                auth_request: crate::cloud::token_request(config),
            },
        ),
    };
    Ok(objects::BackupTarget {
        store_url,
        container,
        login,
        recipient_pem: load_or_create_key(state)?.public_pem(),
        ca_bundle: cloud_ca(config)?,
        insecure: config.insecure,
    })
}

/// The cloud's own CA (clouds.yaml `cacert`), PEM, for what nodes fetch from its object store.
pub(crate) fn cloud_ca(config: &crate::cloud::CloudConfig) -> Result<Option<String>, BackupError> {
    match &config.cacert {
        Some(path) => Ok(Some(std::fs::read_to_string(path).map_err(|source| {
            BackupError::State(PkiError::Io {
                action: "read the cloud's CA bundle",
                path: path.clone(),
                source,
            })
        })?)),
        None => Ok(None),
    }
}

/// Backups as `plan` shows them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct BackupView {
    pub(crate) enabled: bool,
    /// Why they are off, or where they go.
    pub(crate) note: String,
    pub(crate) every_hours: u32,
    pub(crate) keep: u32,
    /// The container, when one is recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) container: Option<String>,
    /// Whether `up` makes it.
    pub(crate) to_create: bool,
}

/// What `up` would do about backups, found without changing anything.
pub(crate) async fn view(
    cloud: &crate::cloud::Cloud,
    spec: &ClusterSpec,
    state: Option<&StateDir>,
) -> Result<BackupView, BackupError> {
    let mut view = BackupView {
        enabled: false,
        note: "off (`backup.enabled = false`)".into(),
        every_hours: spec.backup.every_hours,
        keep: spec.backup.keep,
        container: None,
        to_create: false,
    };
    // Off: nothing of the store is needed (and no S3 key asked for).
    if spec.backup.enabled == Some(false) {
        return Ok(view);
    }
    let store = &Store::of(cloud, spec)?;
    view.enabled = enabled(spec, store.offered().await, &cloud.config().name)?;
    if !view.enabled {
        view.note = "off: the cloud's catalog has no object store".into();
        return Ok(view);
    }
    // What `up` would refuse, `plan` refuses.
    check_recorded_store(store, state)?;
    let recorded = recorded_container(state)?;
    let found = match containers(store, &spec.name, state).await {
        Ok(found) => found,
        Err(e) if e.is_refused() && refusal_turns_off(spec, store) => {
            view.enabled = false;
            view.note = format!("off: {}", e.to_string().lines().next().unwrap_or_default());
            return Ok(view);
        }
        Err(e) => return Err(e),
    };
    let present = recorded.as_ref().is_some_and(|name| found.contains(name));
    view.to_create = !present;
    let noun = store.kind();
    let at = store
        .s3()
        .map(|s3| format!(" at {}", s3.endpoint()))
        .unwrap_or_default();
    view.note = match (&recorded, present) {
        (Some(name), true) => format!("to {noun} {name}{at}"),
        (Some(name), false) => format!("to {noun} {name}{at}, which `up` makes"),
        (None, _) => format!(
            "to {}{at} `up` makes ({}<random>)",
            store.a_kind(),
            container_prefix(&spec.name)
        ),
    };
    view.container = recorded;
    Ok(view)
}

/// A snapshot object's name: `<cluster>-etcd-<YYYYMMDDTHHMMSSZ>-<release>.db.enc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SnapshotName {
    pub(crate) taken: OffsetDateTime,
    /// The Kubernetes release the cluster ran, e.g. `v1.37.1`.
    pub(crate) kubernetes: String,
}

impl SnapshotName {
    /// The name a snapshot of `cluster` gets (what [`SnapshotName::parse`] reads).
    #[cfg(test)]
    pub(crate) fn object_name(&self, cluster: &str) -> String {
        let t = self.taken;
        format!(
            "{cluster}-etcd-{:04}{:02}{:02}T{:02}{:02}{:02}Z-{}{SNAPSHOT_SUFFIX}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            self.kubernetes
        )
    }

    /// Reads a name of `cluster`'s snapshots; `None` for any other object.
    pub(crate) fn parse(cluster: &str, object: &str) -> Option<SnapshotName> {
        let rest = object
            .strip_prefix(cluster)?
            .strip_prefix("-etcd-")?
            .strip_suffix(SNAPSHOT_SUFFIX)?;
        let (stamp, kubernetes) = rest.split_once('-')?;
        let release = kubernetes.strip_prefix('v')?;
        let parts: Vec<&str> = release.split('.').collect();
        if parts.len() != 3 || parts.iter().any(|p| p.parse::<u32>().is_err()) {
            return None;
        }
        Some(SnapshotName {
            taken: parse_stamp(stamp)?,
            kubernetes: kubernetes.to_string(),
        })
    }
}

/// Swift's `YYYY-MM-DDTHH:MM:SS[.ffffff]`, UTC.
fn parse_swift_time(text: &str) -> Option<OffsetDateTime> {
    let compact: String = text
        .get(..19)?
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    parse_stamp(&format!("{compact}Z"))
}

/// `YYYYMMDDTHHMMSSZ` in UTC.
fn parse_stamp(stamp: &str) -> Option<OffsetDateTime> {
    let bytes = stamp.as_bytes();
    if bytes.len() != 16 || bytes[8] != b'T' || bytes[15] != b'Z' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        let text = stamp.get(range)?;
        text.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| text.parse().ok())?
    };
    let year = i32::try_from(number(0..4)?).ok()?;
    let month = Month::try_from(u8::try_from(number(4..6)?).ok()?).ok()?;
    let date = Date::from_calendar_date(year, month, u8::try_from(number(6..8)?).ok()?).ok()?;
    let time = Time::from_hms(
        u8::try_from(number(9..11)?).ok()?,
        u8::try_from(number(11..13)?).ok()?,
        u8::try_from(number(13..15)?).ok()?,
    )
    .ok()?;
    Some(PrimitiveDateTime::new(date, time).assume_utc())
}

/// One snapshot in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) container: String,
    pub(crate) object: String,
    pub(crate) name: SnapshotName,
    pub(crate) bytes: u64,
}

/// What the store holds for a cluster: its containers and their snapshots, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Listing {
    pub(crate) containers: Vec<String>,
    pub(crate) snapshots: Vec<Snapshot>,
    /// Objects of the containers that are no snapshot of this cluster's.
    pub(crate) others: usize,
    /// When the first container last changed, as the store says.
    pub(crate) since: Option<OffsetDateTime>,
}

/// The cluster's containers: the recorded one, and any other of its prefix (an earlier cluster
/// of the same name, or a state directory that was lost: their snapshots are listed too).
pub(crate) async fn containers(
    store: &Store<'_>,
    cluster: &str,
    state: Option<&StateDir>,
) -> Result<Vec<String>, BackupError> {
    Ok(container_entries(store, cluster, state)
        .await?
        .into_iter()
        .map(|c| c.name)
        .collect())
}

/// [`containers`] with when each last changed.
async fn container_entries(
    store: &Store<'_>,
    cluster: &str,
    state: Option<&StateDir>,
) -> Result<Vec<crate::cloud::object_store::ContainerEntry>, BackupError> {
    let mut found = match store.containers(&container_prefix(cluster)).await {
        Ok(found) => found,
        Err(source @ CloudError::Api { status: 403, .. }) => {
            return Err(BackupError::Refused {
                what: "list the project's containers".into(),
                cause: Box::new(source),
            });
        }
        Err(source) => return Err(BackupError::Containers(Box::new(source))),
    };
    let recorded = recorded_container(state)?;
    if let Some(at) = found
        .iter()
        .position(|c| Some(&c.name) == recorded.as_ref())
    {
        let recorded = found.remove(at);
        found.insert(0, recorded);
    }
    Ok(found)
}

/// How fresh the cluster's backups are, as `status` shows them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Freshness {
    /// The newest snapshot's object name and age in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) newest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) age_seconds: Option<i64>,
    pub(crate) count: usize,
    pub(crate) containers: Vec<String>,
    pub(crate) every_hours: u32,
    /// The newest is older than twice the schedule, or there is none and the container was
    /// made longer ago than that: the CronJob has missed two in a row.
    pub(crate) stale: bool,
    /// How long ago the first container last changed (made, for an empty one), in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) container_age_seconds: Option<i64>,
}

impl Freshness {
    pub(crate) fn of(listing: &Listing, every_hours: u32, now: OffsetDateTime) -> Freshness {
        let newest = listing.snapshots.last();
        let age_seconds = newest.map(|s| (now - s.name.taken).whole_seconds());
        let container_age_seconds = listing.since.map(|t| (now - t).whole_seconds());
        let limit = 2 * 3600 * i64::from(every_hours);
        Freshness {
            newest: newest.map(|s| s.object.clone()),
            age_seconds,
            count: listing.snapshots.len(),
            containers: listing.containers.clone(),
            every_hours,
            stale: match age_seconds {
                Some(age) => age > limit,
                None => container_age_seconds.is_some_and(|age| age > limit),
            },
            container_age_seconds,
        }
    }
}

/// Reads the cluster's snapshots from the store.
pub(crate) async fn list(
    store: &Store<'_>,
    cluster: &str,
    state: Option<&StateDir>,
) -> Result<Listing, BackupError> {
    let entries = container_entries(store, cluster, state).await?;
    let mut listing = Listing {
        since: entries
            .first()
            .and_then(|c| c.last_modified.as_deref())
            .and_then(parse_swift_time),
        containers: entries.into_iter().map(|c| c.name).collect(),
        ..Listing::default()
    };
    for container in &listing.containers {
        let objects: Vec<StoredObject> = store
            .objects(container)
            .await
            .map_err(|source| store_error("list", container, source))?
            .unwrap_or_default();
        for object in objects {
            if object.name == WRITE_CHECK {
                // Left in S3 buckets: when the first was made, which their listing does not say.
                if listing.since.is_none() && Some(container) == listing.containers.first() {
                    listing.since = parse_swift_time(&object.last_modified);
                }
                continue;
            }
            match SnapshotName::parse(cluster, &object.name) {
                Some(name) => listing.snapshots.push(Snapshot {
                    container: container.clone(),
                    object: object.name,
                    name,
                    bytes: object.bytes,
                }),
                None => listing.others += 1,
            }
        }
    }
    listing.snapshots.sort_by_key(|s| s.name.taken);
    Ok(listing)
}

/// The snapshot `name` names (the newest when `None`), or why there is none.
pub(crate) fn choose<'a>(
    listing: &'a Listing,
    cluster: &str,
    name: Option<&str>,
) -> Result<&'a Snapshot, String> {
    match name {
        None => listing
            .snapshots
            .last()
            .ok_or_else(|| format!("cluster `{cluster}` has no snapshot in the object store")),
        Some(name) => listing
            .snapshots
            .iter()
            .find(|s| s.object == name)
            .ok_or_else(|| {
                let other_cluster = SnapshotName::parse(cluster, name).is_none()
                    && name.contains("-etcd-");
                match other_cluster {
                    true => format!(
                        "snapshot {name} is not one of cluster `{cluster}`'s\n  hint: `flatstack backup list` shows this cluster's"
                    ),
                    false => format!(
                        "there is no snapshot {name} of cluster `{cluster}` in the object store\n  hint: `flatstack backup list` shows the ones there are"
                    ),
                }
            }),
    }
}

/// Downloads `snapshot` and opens it with `key`: the etcd snapshot it holds, checked.
pub(crate) async fn fetch(
    store: &Store<'_>,
    key: &envelope::BackupKey,
    snapshot: &Snapshot,
) -> Result<Vec<u8>, BackupError> {
    let bytes = store
        .get_object(&snapshot.container, &snapshot.object)
        .await
        .map_err(|source| store_error("read", &snapshot.container, source))?
        .ok_or_else(|| BackupError::Vanished {
            object: snapshot.object.clone(),
        })?;
    key.open_owned(bytes)
        .map_err(|cause| BackupError::Unreadable {
            object: snapshot.object.clone(),
            cause,
        })
}

/// Deletes every container of the cluster with everything in it; returns each container and
/// how many objects it held.
pub(crate) async fn delete_all(
    store: &Store<'_>,
    cluster: &str,
    state: Option<&StateDir>,
) -> Result<Vec<(String, usize)>, BackupError> {
    let mut deleted = Vec::new();
    for container in containers(store, cluster, state).await? {
        let count = store
            .delete_container(&container)
            .await
            .map_err(|source| store_error("delete", &container, source))?;
        deleted.push((container, count));
    }
    Ok(deleted)
}

/// `12.3 MiB`, `840 KiB`, `512 B`.
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match value < 10.0 {
        true => format!("{value:.1} {}", UNITS[unit]),
        false => format!("{value:.0} {}", UNITS[unit]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(year: i32, month: Month, day: u8, h: u8, m: u8, s: u8) -> OffsetDateTime {
        let date = Date::from_calendar_date(year, month, day).expect("date");
        PrimitiveDateTime::new(date, Time::from_hms(h, m, s).expect("time")).assume_utc()
    }

    #[test]
    fn snapshot_names_carry_cluster_time_and_release_and_read_back() {
        let name = SnapshotName {
            taken: at(2026, Month::December, 7, 6, 0, 9),
            kubernetes: "v1.37.1".into(),
        };
        let object = name.object_name("demo");
        assert_eq!(object, "demo-etcd-20261207T060009Z-v1.37.1.db.enc");
        assert_eq!(SnapshotName::parse("demo", &object), Some(name));
    }

    #[test]
    fn names_of_other_clusters_and_other_objects_are_not_snapshots() {
        for object in [
            "demo-etcd-20261207T060009Z-v1.37.1.db.enc".replace("demo", "demo2"),
            "demo-etcd-20261207T060009Z-v1.37.1.db".into(),
            "demo-etcd-20261307T060009Z-v1.37.1.db.enc".into(),
            "demo-etcd-20261207T250009Z-v1.37.1.db.enc".into(),
            "demo-etcd-2026120xT060009Z-v1.37.1.db.enc".into(),
            "demo-etcd-20261207T060009Z-1.37.1.db.enc".into(),
            "demo-etcd-20261207T060009Z-v1.37.db.enc".into(),
            ".flatstack-write-check".into(),
        ] {
            assert_eq!(SnapshotName::parse("demo", &object), None, "{object}");
        }
        // A cluster whose name extends another's: its snapshots are not the shorter one's.
        assert_eq!(
            SnapshotName::parse("demo", "demo-etcd-x-etcd-20261207T060009Z-v1.37.1.db.enc"),
            None
        );
    }

    #[test]
    fn container_names_are_unique_and_keep_clusters_apart() {
        let a = new_container_name("demo").expect("name");
        let b = new_container_name("demo").expect("name");
        assert_ne!(a, b);
        assert!(a.starts_with("flatstack-backups.demo."), "{a}");
        assert_eq!(a.len(), "flatstack-backups.demo.".len() + SUFFIX_LEN);
        // No cluster's prefix is another's: names are DNS labels, without dots.
        assert!(!container_prefix("demo-2").starts_with(&container_prefix("demo")));
    }

    #[test]
    fn backups_follow_the_file_and_the_catalog() {
        let mut spec = crate::spec::test_spec("");
        assert!(enabled(&spec, true, "c").expect("auto, offered"));
        assert!(!enabled(&spec, false, "c").expect("auto, not offered"));
        spec.backup.enabled = Some(false);
        assert!(!enabled(&spec, true, "c").expect("off"));
        spec.backup.enabled = Some(true);
        let refused = enabled(&spec, false, "jetstream").expect_err("required, not offered");
        assert!(
            refused
                .to_string()
                .contains("cloud `jetstream` has no object store")
        );
    }

    #[test]
    fn freshness_warns_after_two_missed_schedules_with_or_without_a_snapshot() {
        let now = at(2026, Month::December, 7, 12, 0, 0);
        let snapshot = |hours: i64| Snapshot {
            container: "c".into(),
            object: "o".into(),
            name: SnapshotName {
                taken: now - time::Duration::hours(hours),
                kubernetes: "v1.37.1".into(),
            },
            bytes: 1,
        };
        let listing = |snapshots: Vec<Snapshot>, since_hours: i64| Listing {
            containers: vec!["c".into()],
            snapshots,
            others: 0,
            since: Some(now - time::Duration::hours(since_hours)),
        };
        assert!(!Freshness::of(&listing(vec![snapshot(11)], 50), 6, now).stale);
        assert!(Freshness::of(&listing(vec![snapshot(13)], 50), 6, now).stale);
        assert!(!Freshness::of(&listing(vec![], 11), 6, now).stale);
        assert!(Freshness::of(&listing(vec![], 13), 6, now).stale);
        assert_eq!(
            parse_swift_time("2026-12-07T12:20:09.123450"),
            Some(at(2026, Month::December, 7, 12, 20, 9))
        );
        assert_eq!(parse_swift_time("yesterday"), None);
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(12 * 1024 * 1024 + 300 * 1024), "12 MiB");
        assert_eq!(human_size(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
