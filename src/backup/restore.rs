//! A snapshot staged for `flatstack restore`: opened on the workstation with the state
//! directory's backup key (the envelope's tag checked), sealed again with a key of its own in
//! the node's seal format, and put into the cluster's container beside the snapshots, where
//! the control plane that restores fetches it through a URL that reads that object only, for
//! a day: a Swift TempURL, or an S3 presigned URL. The URL and the key reach the node sealed in its Ignition config, like its
//! CA keys; the blob is deleted once the restored cluster runs (and by any later restore).

use hmac::{Hmac, Mac};
use reqwest::Method;
use sha2::Sha256;
use time::OffsetDateTime;

use super::{BackupError, Snapshot, Store, envelope::BackupKey, fetch, store_error};
use crate::cloud::{Cloud, CloudError, Service};
use crate::node::seal::SealKey;

/// What every staged blob's name starts with; `backup list` counts them among other objects.
pub(crate) const STAGED_PREFIX: &str = "flatstack-restore.";
/// How long a TempURL reads the staged blob: the restoring control plane fetches it in its
/// first minutes, and a run may wait a while for a server.
const VALID_FOR: time::Duration = time::Duration::hours(24);

/// A snapshot ready for a node to fetch.
#[derive(Clone)]
pub(crate) struct Staged {
    pub(crate) container: String,
    pub(crate) object: String,
    /// Reads the object, and only it, until it expires.
    pub(crate) url: String,
    /// The key the object is sealed with.
    pub(crate) key: SealKey,
    /// The etcd snapshot's size, opened.
    pub(crate) bytes: usize,
    /// What the node trusts to fetch it: the cloud's own CA, or nothing (`verify: false`).
    pub(crate) ca_bundle: Option<String>,
    pub(crate) insecure: bool,
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged")
            .field("container", &self.container)
            .field("object", &self.object)
            .finish_non_exhaustive()
    }
}

/// Why a snapshot could not be staged (besides [`BackupError`]s of the store).
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(
        "the object store does not sign TempURLs with HMAC-SHA256 ({found}), which the restoring control plane fetches the snapshot with; nothing was changed\n  hint: the store needs Swift's tempurl middleware with `sha256` among its allowed digests; `flatstack backup get` still downloads a snapshot for a restore by hand"
    )]
    NoTempUrl { found: String },
    #[error("cannot read what the object store offers ({url})")]
    Info {
        url: String,
        #[source]
        source: Box<CloudError>,
    },
    #[error(
        "the object store does not serve the staged snapshot through its signed URL ({cause}); nothing was changed\n  hint: a Swift store must honour container TempURL keys (X-Container-Meta-Temp-URL-Key), which Ceph's RADOS Gateway does not (use its S3 API: `backup.store = \"s3\"`); an S3 store must take presigned URLs; `flatstack backup get` still downloads a snapshot for a restore by hand"
    )]
    TempUrlRefused { cause: Box<CloudError> },
    #[error("cannot seal the snapshot for the node: {0}")]
    Seal(#[from] crate::node::seal::SealError),
    #[error("the operating system's random generator failed: {0}")]
    Random(String),
}

/// Opens `snapshot` with `key`, seals it for the node, puts it beside the snapshots and signs a
/// URL for it (on Swift after checking the store signs and honours TempURLs), and tries the URL.
/// Earlier staged blobs in the container are deleted first (a restore run again makes them
/// useless).
pub(crate) async fn stage(
    store: &Store<'_>,
    key: &BackupKey,
    snapshot: &Snapshot,
) -> Result<Staged, StageError> {
    let cloud = store.cloud();
    let account = match store.s3() {
        Some(_) => None,
        None => {
            let account = cloud
                .object_store_url()
                .await
                .map_err(|e| store_error("reach", &snapshot.container, e))?;
            check_temp_urls(cloud, &account).await?;
            Some(account)
        }
    };
    let container = snapshot.container.clone();
    clear(store, &container).await?;
    let plain = fetch(store, key, snapshot).await?;
    let bytes = plain.len();
    let seal = SealKey::generate()?;
    let sealed = seal.seal(&plain)?;
    drop(plain);
    let suffix = crate::pki::random_chars(8).map_err(|e| StageError::Random(e.to_string()))?;
    let object = format!("{STAGED_PREFIX}{}.{suffix}.sealed", snapshot.object);
    store
        .put_object(&container, &object, sealed)
        .await
        .map_err(|e| store_error("write to", &container, e))?;
    let now = OffsetDateTime::now_utc();
    let (url, check) = match (store.s3(), account) {
        (Some(s3), _) => {
            let seconds = VALID_FOR.whole_seconds() as u32;
            (
                s3.presigned(Method::GET, &container, &object, seconds, now),
                s3.presigned(Method::HEAD, &container, &object, seconds, now),
            )
        }
        (None, account) => {
            let account = account.unwrap_or_default();
            let url_key =
                crate::pki::random_chars(32).map_err(|e| StageError::Random(e.to_string()))?;
            cloud
                .set_temp_url_key(&container, &url_key)
                .await
                .map_err(|e| store_error("set the TempURL key of", &container, e))?;
            let expires = (now + VALID_FOR).unix_timestamp();
            let url = temp_url(&account, &container, &object, &url_key, expires);
            (url.clone(), url)
        }
    };
    // The node has no second chance to tell us: the URL is tried from here first. A store
    // that does not honour it keeps nothing of this attempt.
    if let Err(e) = cloud
        .without_token(Service::ObjectStore, Method::HEAD, &check)
        .await
    {
        let _ = clear(store, &container).await;
        return Err(StageError::TempUrlRefused { cause: Box::new(e) });
    }
    let config = cloud.config();
    Ok(Staged {
        container,
        object,
        url,
        key: seal,
        bytes,
        ca_bundle: super::cloud_ca(config)?,
        insecure: config.insecure,
    })
}

/// Deletes every staged blob in `container` and (Swift) its TempURL key: once the restored
/// cluster runs, and before staging again.
pub(crate) async fn clear(store: &Store<'_>, container: &str) -> Result<usize, BackupError> {
    let Some(objects) = store
        .objects(container)
        .await
        .map_err(|e| store_error("list", container, e))?
    else {
        return Ok(0); // the container is gone, and its key with it
    };
    let mut deleted = 0;
    for object in objects.iter().filter(|o| o.name.starts_with(STAGED_PREFIX)) {
        store
            .delete_object(container, &object.name)
            .await
            .map_err(|e| store_error("delete from", container, e))?;
        deleted += 1;
    }
    if store.s3().is_none() {
        store
            .cloud()
            .remove_temp_url_key(container)
            .await
            .map_err(|e| store_error("remove the TempURL key of", container, e))?;
    }
    Ok(deleted)
}

/// Swift's `/info` must list `tempurl` with `sha256` among its digests (older Swifts list
/// none and take SHA-1 only).
async fn check_temp_urls(cloud: &Cloud, account: &str) -> Result<(), StageError> {
    let url = info_url(account);
    let reply = cloud
        .without_token(Service::ObjectStore, Method::GET, &url)
        .await
        .map_err(|e| StageError::Info {
            url: url.clone(),
            source: Box::new(e),
        })?;
    let info: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
    signs_sha256_temp_urls(&info).map_err(|found| StageError::NoTempUrl { found })
}

/// Whether Swift's `/info` offers TempURLs signed with HMAC-SHA256; what it offers when not.
fn signs_sha256_temp_urls(info: &serde_json::Value) -> Result<(), String> {
    let Some(tempurl) = info.get("tempurl") else {
        return Err("it has no tempurl middleware".into());
    };
    let digests: Vec<&str> = tempurl["allowed_digests"]
        .as_array()
        .map(|d| d.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    match (digests.contains(&"sha256"), digests.is_empty()) {
        (true, _) => Ok(()),
        (false, true) => Err("its tempurl middleware names no digests (SHA-1 only)".into()),
        (false, false) => Err(format!("it allows {}", digests.join(", "))),
    }
}

/// Swift's `/info` beside the account URL's `/v1/…`: `https://host/swift/v1/AUTH_x` →
/// `https://host/swift/info`.
pub(crate) fn info_url(account: &str) -> String {
    match account.rfind("/v1/") {
        Some(at) => format!("{}/info", &account[..at]),
        None => format!("{}/info", account.trim_end_matches('/')),
    }
}

/// A TempURL that GETs (or HEADs) `container/object` until `expires` (Unix seconds): HMAC-SHA256
/// with `key` over `GET\n<expires>\n<path>`, the path as Swift sees it (`/v1/AUTH_x/c/o`).
/// `container` and `object` are plain names (letters, digits, `-._`).
pub(crate) fn temp_url(
    account: &str,
    container: &str,
    object: &str,
    key: &str,
    expires: i64,
) -> String {
    let account = account.trim_end_matches('/');
    let url = format!("{account}/{container}/{object}");
    let path = match url.find("://").map(|at| at + 3) {
        Some(host_start) => url[host_start..]
            .find('/')
            .map_or("/", |at| &url[host_start + at..]),
        None => url.as_str(),
    }
    .to_string();
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(format!("GET\n{expires}\n{path}").as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    format!("{url}?temp_url_sig={signature}&temp_url_expires={expires}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_store_that_signs_with_sha256_is_taken() {
        let info = |v: serde_json::Value| signs_sha256_temp_urls(&v);
        assert!(
            info(serde_json::json!({"tempurl": {"allowed_digests": ["sha1", "sha256"]}})).is_ok()
        );
        let none = info(serde_json::json!({"swift": {}})).expect_err("no middleware");
        assert!(none.contains("no tempurl"), "{none}");
        let old = info(serde_json::json!({"tempurl": {"methods": ["GET"]}})).expect_err("old");
        assert!(old.contains("SHA-1 only"), "{old}");
        let sha1 =
            info(serde_json::json!({"tempurl": {"allowed_digests": ["sha1"]}})).expect_err("sha1");
        assert_eq!(sha1, "it allows sha1");
    }

    #[test]
    fn the_info_url_sits_beside_the_version() {
        assert_eq!(
            info_url("http://127.0.0.1:8080/v1/AUTH_abc"),
            "http://127.0.0.1:8080/info"
        );
        assert_eq!(
            info_url("https://js2.example.org:8001/swift/v1/AUTH_abc/"),
            "https://js2.example.org:8001/swift/info"
        );
    }

    /// The signature is HMAC-SHA256 over method, expiry and the path under the host; the
    /// figure was computed apart with `openssl dgst` (the command is beside it).
    #[test]
    fn a_temp_url_signs_the_path_under_the_host() {
        let url = temp_url(
            "https://store.example.org/swift/v1/AUTH_p",
            "box",
            "blob.sealed",
            "secret",
            1_900_000_000,
        );
        let (base, query) = url.split_once('?').expect("query");
        assert_eq!(
            base,
            "https://store.example.org/swift/v1/AUTH_p/box/blob.sealed"
        );
        // printf 'GET\n1900000000\n/swift/v1/AUTH_p/box/blob.sealed' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            query,
            "temp_url_sig=57257d11e67c7c832713f53d3809a9f2ef96cf0318d464ef381c39f65c85df86&temp_url_expires=1900000000"
        );
    }
}
