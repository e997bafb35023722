//! The Kubernetes system-extension image every node boots first, and the SHA-256 Ignition
//! verifies it with. The digest is the cluster file's `kubernetes.sysext_sha256` when given;
//! otherwise the one recorded for the cluster in its state directory; otherwise it is read
//! from the publisher's `SHA256SUMS` (the release's own, then the directory's) and recorded,
//! so every node of a cluster, whenever it is made, boots the same bytes.

mod sums;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::pins::KubernetesVersion;
use crate::pki::StateDir;
use crate::spec::{ClusterSpec, KubernetesSpec};

/// The file in the state directory that records the digests read for the cluster.
const RECORD_FILE: &str = "sysext-digests.json";
/// Redirects followed for one `SHA256SUMS` (the bakery's redirector needs one).
const MAX_REDIRECTS: usize = 5;
/// Largest `SHA256SUMS` read; the bakery's global one lists every extension's images.
const MAX_SUMS_BYTES: usize = 8 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// `flatstack init` only proposes a release: it does not wait long for the publisher.
const INIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a digest came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub(crate) enum Origin {
    /// `kubernetes.sysext_sha256` in the cluster file.
    ClusterFile,
    /// Read earlier from `url` on `read_on` (YYYY-MM-DD) and recorded in the state directory.
    Recorded { url: String, read_on: String },
    /// Read just now from `url`; recorded once the state directory is written.
    Publisher { url: String },
}

/// The sysext image of a cluster and the digest its nodes verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct PinnedSysext {
    /// The image's file name, e.g. `kubernetes-v1.37.1-x86-64.raw`.
    pub(crate) file: String,
    pub(crate) sha256: String,
    pub(crate) origin: Origin,
}

impl PinnedSysext {
    /// The spec with this digest as the one nodes verify.
    pub(crate) fn pinned_into(&self, mut spec: ClusterSpec) -> ClusterSpec {
        spec.kubernetes.sysext_sha256 = Some(self.sha256.clone());
        spec
    }

    /// One line for people: the digest and where it came from.
    pub(crate) fn describe(&self) -> String {
        let from = match &self.origin {
            Origin::ClusterFile => "given in the cluster file".to_string(),
            Origin::Recorded { url, read_on } => {
                format!("recorded for this cluster, read from {url} on {read_on}")
            }
            Origin::Publisher { url } => format!("read now from {url}"),
        };
        format!("{} sha256:{} ({from})", self.file, self.sha256)
    }
}

/// What the publisher lists today for a digest recorded earlier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PublisherCheck {
    /// The publisher lists the recorded digest.
    Same,
    /// The publisher now lists another digest for the same file; the recorded one stays.
    Changed { url: String, listed: String },
    /// The publisher could not be read; nothing is known.
    Unknown(String),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SysextError {
    #[error(
        "cannot read the SHA-256 of {file} from its publisher:{}\n  hint: check this machine's network, or give `kubernetes.sysext_sha256` in the cluster file",
        attempts.iter().map(|(url, why)| format!("\n  {url}: {why}")).collect::<String>()
    )]
    Unreachable {
        file: String,
        attempts: Vec<(String, String)>,
    },
    #[error(
        "Kubernetes {version} is not published at {directory}: no SHA256SUMS there lists {file} (read {})\n  {}\n  hint: set `kubernetes.version` to a published release",
        looked.join(", "),
        published_line(*version, published)
    )]
    NotPublished {
        version: KubernetesVersion,
        directory: String,
        file: String,
        looked: Vec<String>,
        published: Vec<KubernetesVersion>,
    },
    #[error(
        "refusing to read the sysext digest from {url}: only https:// URLs (or http:// on loopback) are trusted for it\n  hint: use an https:// `kubernetes.sysext_url`, or give `kubernetes.sysext_sha256` in the cluster file"
    )]
    Insecure { url: String },
    #[error("`kubernetes.sysext_url` {0} names no image file")]
    NoFileName(String),
    #[error("cannot {action} {}: {source}", path.display())]
    Record {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a digest record flatstack wrote: {source}\n  hint: move it away; the digest is then read again from the publisher", path.display())]
    DamagedRecord {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot make an HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("cannot record the sysext digest in the state directory")]
    State(#[source] crate::pki::PkiError),
}

impl SysextError {
    /// Whether the cluster file (its version or URL) is what must change.
    pub(crate) fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            SysextError::NotPublished { .. }
                | SysextError::Insecure { .. }
                | SysextError::NoFileName(_)
        )
    }
}

fn published_line(version: KubernetesVersion, published: &[KubernetesVersion]) -> String {
    let minor = version.minor_series();
    if published.is_empty() {
        format!("no release of Kubernetes {minor} is listed there")
    } else {
        let list: Vec<String> = published.iter().map(ToString::to_string).collect();
        format!(
            "published releases of Kubernetes {minor}, newest first: {}",
            list.join(", ")
        )
    }
}

/// The digest nodes of this cluster verify the sysext image with: the cluster file's, the
/// one recorded in `state` for the same image file, or the publisher's (read now, to be
/// recorded with [`record`]).
pub(crate) async fn pin(
    kubernetes: &KubernetesSpec,
    state: Option<&StateDir>,
) -> Result<PinnedSysext, SysextError> {
    let file = image_file(&kubernetes.sysext_url)?;
    if let Some(sha256) = &kubernetes.sysext_sha256 {
        return Ok(PinnedSysext {
            file,
            sha256: sha256.clone(),
            origin: Origin::ClusterFile,
        });
    }
    if let Some(state) = state
        && let Some(entry) = read_records(state)?.remove(&file)
    {
        return Ok(PinnedSysext {
            file,
            sha256: entry.sha256,
            origin: Origin::Recorded {
                url: entry.url,
                read_on: entry.read_on,
            },
        });
    }
    let (url, sha256) = read_from_publisher(kubernetes, &file).await?;
    Ok(PinnedSysext {
        file,
        sha256,
        origin: Origin::Publisher { url },
    })
}

/// Records a digest read from the publisher in the state directory (others need no record).
pub(crate) fn record(state: &StateDir, pinned: &PinnedSysext) -> Result<(), SysextError> {
    let Origin::Publisher { url } = &pinned.origin else {
        return Ok(());
    };
    let mut records = read_records(state)?;
    records.insert(
        pinned.file.clone(),
        Record {
            sha256: pinned.sha256.clone(),
            url: url.clone(),
            read_on: time::OffsetDateTime::now_utc().date().to_string(),
        },
    );
    let mut text =
        serde_json::to_string_pretty(&records).map_err(|source| SysextError::DamagedRecord {
            path: state.join(RECORD_FILE),
            source,
        })?;
    text.push('\n');
    state
        .write(RECORD_FILE, text.as_bytes(), 0o600)
        .map_err(SysextError::State)?;
    Ok(())
}

/// Compares a recorded digest with what the publisher lists today.
pub(crate) async fn check_publisher(
    kubernetes: &KubernetesSpec,
    pinned: &PinnedSysext,
) -> PublisherCheck {
    if !matches!(pinned.origin, Origin::Recorded { .. }) {
        return PublisherCheck::Same;
    }
    match read_from_publisher(kubernetes, &pinned.file).await {
        Ok((_, listed)) if listed == pinned.sha256 => PublisherCheck::Same,
        Ok((url, listed)) => PublisherCheck::Changed { url, listed },
        Err(e) => PublisherCheck::Unknown(e.to_string()),
    }
}

/// The newest Kubernetes release of a supported minor that the publisher at `base` (a
/// directory laid out like the bakery's `extensions/`) lists, for `flatstack init`.
pub(crate) async fn newest_published(base: &str) -> Result<Option<KubernetesVersion>, String> {
    let base = base.trim_end_matches('/');
    let publisher = Publisher::new(INIT_TIMEOUT).map_err(|e| e.to_string())?;
    let mut reasons = Vec::new();
    for url in [
        format!("{base}/kubernetes/SHA256SUMS"),
        format!("{base}/SHA256SUMS"),
    ] {
        match publisher.get(&url).await.map_err(|e| e.to_string())? {
            Fetched::Text(text) => {
                return Ok(crate::pins::SUPPORTED_MINORS.iter().rev().find_map(|m| {
                    sums::published_patches(&[&text], 1, m.minor)
                        .first()
                        .copied()
                }));
            }
            Fetched::Missing(status) => reasons.push(format!("{url} answered {status}")),
            Fetched::Failed(why) => reasons.push(format!("{url}: {why}")),
        }
    }
    Err(reasons.join("; "))
}

/// One digest read from a publisher, as kept in the state directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    sha256: String,
    /// The `SHA256SUMS` it was read from.
    url: String,
    /// The day it was read, YYYY-MM-DD (UTC).
    read_on: String,
}

fn read_records(state: &StateDir) -> Result<BTreeMap<String, Record>, SysextError> {
    let path = state.join(RECORD_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => {
            return Err(SysextError::Record {
                action: "read",
                path,
                source,
            });
        }
    };
    let records: BTreeMap<String, Record> =
        serde_json::from_str(&text).map_err(|source| SysextError::DamagedRecord {
            path: path.clone(),
            source,
        })?;
    let valid =
        |r: &Record| r.sha256.len() == 64 && r.sha256.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some((file, _)) = records.iter().find(|(_, r)| !valid(r)) {
        return Err(SysextError::DamagedRecord {
            path,
            source: serde::de::Error::custom(format!("the digest of {file} is not 64 hex digits")),
        });
    }
    Ok(records)
}

/// The last path segment of the image URL.
fn image_file(url: &str) -> Result<String, SysextError> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    match path.rsplit_once('/') {
        Some((_, file)) if !file.is_empty() => Ok(file.to_string()),
        _ => Err(SysextError::NoFileName(url.to_string())),
    }
}

/// Reads the digest of `file` from the release's own `SHA256SUMS`, then from the image
/// directory's; on failure, says why (unreachable) or lists the published releases.
async fn read_from_publisher(
    kubernetes: &KubernetesSpec,
    file: &str,
) -> Result<(String, String), SysextError> {
    let url = &kubernetes.sysext_url;
    let directory = url
        .split(['?', '#'])
        .next()
        .and_then(|u| u.rsplit_once('/'))
        .map(|(dir, _)| dir.to_string())
        .ok_or_else(|| SysextError::NoFileName(url.clone()))?;
    let version = kubernetes.version;
    let candidates = [
        format!("{directory}/kubernetes-{version}/SHA256SUMS"),
        format!("{directory}/SHA256SUMS"),
    ];
    let publisher = Publisher::new(REQUEST_TIMEOUT)?;
    let mut attempts = Vec::new();
    let mut read = Vec::new();
    for candidate in &candidates {
        match publisher.get(candidate).await? {
            Fetched::Text(text) => {
                if let Some(sha256) = sums::digest_of(&text, file) {
                    return Ok((candidate.clone(), sha256));
                }
                attempts.push((candidate.clone(), format!("does not list {file}")));
                read.push(text);
            }
            Fetched::Missing(status) => {
                attempts.push((candidate.clone(), format!("answered {status}")));
            }
            Fetched::Failed(why) => attempts.push((candidate.clone(), why)),
        }
    }
    // Every place answered and none lists the file: the release is not published there.
    let answered = attempts.iter().all(|(_, why)| {
        why.starts_with("does not list")
            || why.starts_with("answered 404")
            || why.starts_with("answered 410")
    });
    if !answered {
        return Err(SysextError::Unreachable {
            file: file.to_string(),
            attempts,
        });
    }
    // The list of every published release of Kubernetes, for the message.
    let index = format!("{directory}/kubernetes/SHA256SUMS");
    if let Fetched::Text(text) = publisher.get(&index).await? {
        read.push(text);
    }
    let texts: Vec<&str> = read.iter().map(String::as_str).collect();
    Err(SysextError::NotPublished {
        version,
        directory,
        file: file.to_string(),
        looked: candidates.to_vec(),
        published: sums::published_patches(&texts, version.major, version.minor),
    })
}

/// What one GET of a `SHA256SUMS` gave.
enum Fetched {
    Text(String),
    /// The server answered with this status (404: nothing there).
    Missing(u16),
    /// No answer: the reason.
    Failed(String),
}

/// An HTTP client for publishers: HTTPS (or loopback), bounded redirects, timeouts.
struct Publisher {
    http: reqwest::Client,
}

impl Publisher {
    fn new(timeout: Duration) -> Result<Publisher, SysextError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let policy = reqwest::redirect::Policy::custom(|attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
            } else if !trusted(attempt.url()) {
                let to = attempt.url().to_string();
                attempt.error(format!(
                    "redirected to {to}, which is neither https:// nor loopback"
                ))
            } else {
                attempt.follow()
            }
        });
        let http = reqwest::Client::builder()
            .user_agent(concat!("flatstack/", env!("CARGO_PKG_VERSION")))
            .redirect(policy)
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            .timeout(timeout)
            .build()
            .map_err(SysextError::Client)?;
        Ok(Publisher { http })
    }

    async fn get(&self, url: &str) -> Result<Fetched, SysextError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| SysextError::NoFileName(url.into()))?;
        if !trusted(&parsed) {
            return Err(SysextError::Insecure { url: url.into() });
        }
        tracing::info!("GET {url}");
        let mut response = match self.http.get(parsed).send().await {
            Ok(response) => response,
            Err(e) => return Ok(Fetched::Failed(crate::kube::error_chain(&e.without_url()))),
        };
        let status = response.status();
        tracing::info!("GET {url} -> {}", status.as_u16());
        if !status.is_success() {
            return Ok(if status.is_client_error() {
                Fetched::Missing(status.as_u16())
            } else {
                Fetched::Failed(format!("answered {status}"))
            });
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() > MAX_SUMS_BYTES => {
                    return Ok(Fetched::Failed(format!(
                        "larger than {} MiB, not a SHA256SUMS file",
                        MAX_SUMS_BYTES >> 20
                    )));
                }
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => return Ok(Fetched::Failed(crate::kube::error_chain(&e.without_url()))),
            }
        }
        Ok(Fetched::Text(String::from_utf8_lossy(&body).into_owned()))
    }
}

/// HTTPS anywhere; plain HTTP only to this machine.
fn trusted(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    match url.scheme() {
        "https" => !host.is_empty(),
        "http" => {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            bare.eq_ignore_ascii_case("localhost")
                || bare
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_is_trusted() {
        for (url, ok) in [
            ("https://extensions.flatcar.org/extensions/SHA256SUMS", true),
            ("http://127.0.0.1:8080/x", true),
            ("http://127.8.9.1/x", true),
            ("http://[::1]:80/x", true),
            ("http://localhost/x", true),
            ("http://extensions.flatcar.org/x", false),
            ("http://10.0.0.1/x", false),
            ("ftp://127.0.0.1/x", false),
            ("file:///etc/passwd", false),
        ] {
            let parsed = reqwest::Url::parse(url).expect("url");
            assert_eq!(trusted(&parsed), ok, "{url}");
        }
    }

    #[test]
    fn the_image_file_is_the_last_path_segment() {
        assert_eq!(
            image_file("https://h/extensions/kubernetes-v1.37.1-x86-64.raw").expect("file"),
            "kubernetes-v1.37.1-x86-64.raw"
        );
        assert_eq!(image_file("https://h/k.raw?x=1").expect("file"), "k.raw");
        assert!(image_file("https://h/extensions/").is_err());
    }

    #[test]
    fn a_missing_release_names_what_is_published() {
        let error = SysextError::NotPublished {
            version: KubernetesVersion::new(1, 37, 9),
            directory: "https://h/extensions".into(),
            file: "kubernetes-v1.37.9-x86-64.raw".into(),
            looked: vec!["https://h/extensions/kubernetes-v1.37.9/SHA256SUMS".into()],
            published: vec![
                KubernetesVersion::new(1, 37, 3),
                KubernetesVersion::new(1, 37, 1),
            ],
        };
        let text = error.to_string();
        assert!(
            text.contains("Kubernetes v1.37.9 is not published"),
            "{text}"
        );
        assert!(text.contains("newest first: v1.37.3, v1.37.1"), "{text}");
        assert!(error.is_invalid_input());
    }
}
