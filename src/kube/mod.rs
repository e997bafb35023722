//! The Kubernetes API of a cluster, spoken over HTTPS with the cluster's own trust: the server
//! must present a certificate from the local cluster CA (and nothing else is trusted), and
//! flatstack signs in with the admin client certificate made from that CA. Objects are the
//! k8s-openapi types; every write is a server-side apply with field manager `flatstack`.

pub mod certificates;
mod cron;
mod deployments;
mod drain;
pub mod etcd;
pub mod host_action;
mod manifest;
pub(crate) mod node_job;
mod nodes;
mod reboots;
pub mod upgrade;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;

pub(crate) use cron::Ran;
pub(crate) use deployments::wait_deployment;
pub use drain::{AfterDrain, DrainReport, drain_node};
pub(crate) use manifest::{CustomResource, Manifest};
pub use nodes::{NodeRow, is_initialized, is_ready, node_table, print_node_table};
pub(crate) use nodes::{UNINITIALIZED_TAINT, age_between};
pub use reboots::{RebootState, flatcar_version, reboot_required, reboot_states};

use crate::pki::ClusterPki;

/// The name flatstack's fields are owned under in server-side apply.
pub(crate) const FIELD_MANAGER: &str = "flatstack";

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot use the cluster's certificates: {0}")]
    Certificates(String),
    #[error("{method} {url}")]
    Transport {
        method: &'static str,
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{method} {url} answered {status}: {message}")]
    Api {
        method: &'static str,
        url: String,
        status: u16,
        message: String,
    },
    #[error("cannot read the answer to {method} {url}")]
    Decode {
        method: &'static str,
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("node Job {job} on {node} failed; its log:\n{log}")]
    NodeJob {
        job: String,
        node: String,
        log: String,
    },
    #[error("the operating system's random generator failed: {0}")]
    Random(String),
    #[error("{what} did not happen within {} s; last seen: {last}", waited.as_secs())]
    Timeout {
        what: String,
        waited: Duration,
        last: String,
    },
}

impl KubeError {
    /// The API's answer was 404 Not Found.
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, KubeError::Api { status: 404, .. })
    }

    /// 409: the object changed since it was read (or, for a create, exists).
    pub(crate) fn is_conflict(&self) -> bool {
        matches!(self, KubeError::Api { status: 409, .. })
    }

    /// A timeout reported against the whole time allowed (`total`), not what was left of it
    /// when this wait began.
    pub(crate) fn of_total(self, total: Duration) -> KubeError {
        match self {
            KubeError::Timeout { what, last, .. } => KubeError::Timeout {
                what,
                waited: total,
                last,
            },
            other => other,
        }
    }

    /// Worth asking again: the API is not (yet) reachable, or overloaded.
    fn is_transient(&self) -> bool {
        match self {
            KubeError::Transport { .. } => true,
            KubeError::Api { status, .. } => matches!(status, 429 | 500 | 502 | 503 | 504),
            _ => false,
        }
    }
}

/// A connection to one cluster's API server.
#[derive(Clone)]
pub struct KubeClient {
    http: reqwest::Client,
    base: String,
}

impl std::fmt::Debug for KubeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeClient")
            .field("base", &self.base)
            .finish()
    }
}

impl KubeClient {
    /// A client for the API at `server` (`https://host:port`), trusting only the cluster CA of
    /// `pki` and signing in as its admin (group `kubeadm:cluster-admins`).
    pub fn new(pki: &ClusterPki, server: &str) -> Result<KubeClient, KubeError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(pki.ca.cert_pem.as_bytes())
            .map_err(|e| KubeError::Certificates(format!("cluster CA: {e}")))?;
        roots
            .add(ca)
            .map_err(|e| KubeError::Certificates(format!("cluster CA: {e}")))?;
        let chain = vec![
            CertificateDer::from_pem_slice(pki.admin.cert_pem.as_bytes())
                .map_err(|e| KubeError::Certificates(format!("admin certificate: {e}")))?,
        ];
        let key = PrivateKeyDer::from_pem_slice(pki.admin.key_pem.expose().as_bytes())
            .map_err(|_| KubeError::Certificates("admin key is not a PEM private key".into()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| KubeError::Certificates(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| KubeError::Certificates(format!("admin certificate and key: {e}")))?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("flatstack/", env!("CARGO_PKG_VERSION")))
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| KubeError::Certificates(e.to_string()))?;
        Ok(KubeClient {
            http,
            base: server.trim_end_matches('/').to_string(),
        })
    }

    /// The API server's URL.
    pub(crate) fn server(&self) -> &str {
        &self.base
    }

    /// `GET /readyz`: Ok when the API server says it is ready.
    pub async fn readyz(&self) -> Result<(), KubeError> {
        self.send("GET", "/readyz", self.http.get(self.url("/readyz")))
            .await
            .map(|_| ())
    }

    /// Polls `/readyz` until it answers `ok`, for at most `within`.
    pub(crate) async fn wait_ready(&self, within: Duration) -> Result<(), KubeError> {
        poll(
            "the Kubernetes API answering /readyz",
            within,
            Duration::from_secs(2),
            || async {
                Ok(match self.readyz().await {
                    Ok(()) => Waiting::Done(()),
                    Err(e) => Waiting::On(error_chain(&e)),
                })
            },
        )
        .await
    }

    /// Server-side apply of `manifest`, taking over fields other managers set (`force`).
    pub(crate) async fn apply(&self, manifest: &Manifest) -> Result<serde_json::Value, KubeError> {
        let path = format!(
            "{}?fieldManager={FIELD_MANAGER}&force=true",
            manifest.object_path()
        );
        let request = self
            .http
            .patch(self.url(&path))
            .header("Content-Type", "application/apply-patch+yaml")
            .body(manifest.body().to_string());
        let reply = self.send("PATCH", &path, request).await?;
        decode("PATCH", &self.url(&path), &reply)
    }

    /// `GET path`, decoded; `Ok(None)` on 404.
    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, KubeError> {
        match self.send("GET", path, self.http.get(self.url(path))).await {
            Ok(reply) => decode("GET", &self.url(path), &reply).map(Some),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET path` as text (pod logs, metrics through the API server's proxy); `Ok(None)` on 404.
    pub(crate) async fn get_text(&self, path: &str) -> Result<Option<String>, KubeError> {
        match self.send("GET", path, self.http.get(self.url(path))).await {
            Ok(reply) => Ok(Some(String::from_utf8_lossy(&reply).into_owned())),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The items of the list at `path` (e.g. `/api/v1/namespaces/x/pods?labelSelector=...`).
    pub(crate) async fn list<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<T>, KubeError> {
        #[derive(serde::Deserialize)]
        struct List<T> {
            #[serde(default = "Vec::new")]
            items: Vec<T>,
        }
        Ok(self
            .get::<List<T>>(path)
            .await?
            .map_or_else(Vec::new, |list| list.items))
    }

    /// A JSON merge patch of the object at `path`.
    pub(crate) async fn merge_patch(
        &self,
        path: &str,
        patch: &serde_json::Value,
    ) -> Result<(), KubeError> {
        let request = self
            .http
            .patch(self.url(path))
            .header("Content-Type", "application/merge-patch+json")
            .body(patch.to_string());
        self.send("PATCH", path, request).await.map(|_| ())
    }

    /// `PUT path` with a JSON body: the whole object, replaced as it is given (its
    /// `resourceVersion`, when set, must still be the stored one: 409 otherwise).
    pub(crate) async fn replace(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<(), KubeError> {
        let request = self
            .http
            .put(self.url(path))
            .header("Content-Type", "application/json")
            .body(body.to_string());
        self.send("PUT", path, request).await.map(|_| ())
    }

    /// `POST path` with a JSON body.
    pub(crate) async fn post(&self, path: &str, body: &serde_json::Value) -> Result<(), KubeError> {
        let request = self
            .http
            .post(self.url(path))
            .header("Content-Type", "application/json")
            .body(body.to_string());
        self.send("POST", path, request).await.map(|_| ())
    }

    /// `DELETE path`; an object already gone counts as deleted.
    pub(crate) async fn delete(&self, path: &str) -> Result<(), KubeError> {
        match self
            .send("DELETE", path, self.http.delete(self.url(path)))
            .await
        {
            Err(e) if !e.is_not_found() => Err(e),
            _ => Ok(()),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends one request, retrying briefly on dropped connections and 429/5xx answers.
    async fn send(
        &self,
        method: &'static str,
        path: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<bytes::Bytes, KubeError> {
        let url = self.url(path);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(this_try) = request.try_clone() else {
                return Err(KubeError::Transport {
                    method,
                    url,
                    source: "request cannot be repeated".into(),
                });
            };
            let result = match this_try.send().await {
                Err(e) => Err(KubeError::Transport {
                    method,
                    url: url.clone(),
                    source: e.into(),
                }),
                Ok(response) => {
                    let status = response.status();
                    tracing::info!("{method} {url} -> {}", status.as_u16());
                    let body = response.bytes().await.map_err(|e| KubeError::Transport {
                        method,
                        url: url.clone(),
                        source: e.into(),
                    })?;
                    if status.is_success() {
                        Ok(body)
                    } else {
                        Err(KubeError::Api {
                            method,
                            url: url.clone(),
                            status: status.as_u16(),
                            message: status_message(&body),
                        })
                    }
                }
            };
            match result {
                Err(e) if e.is_transient() && attempt < 3 => {
                    tracing::info!("retrying {method} {url}: {e}");
                    tokio::time::sleep(Duration::from_millis(300 * attempt)).await;
                }
                other => return other,
            }
        }
    }
}

/// The current time as the API's timestamps are kept.
pub fn now() -> k8s_openapi::jiff::Timestamp {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    k8s_openapi::jiff::Timestamp::from_second(i64::try_from(seconds).unwrap_or(i64::MAX))
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

/// One look at something being waited for.
pub(crate) enum Waiting<T> {
    Done(T),
    /// Not yet, and why (shown if the wait times out).
    On(String),
}

/// Calls `check` every `interval` until it is done or `within` has passed; an error from
/// `check` ends the wait at once.
pub(crate) async fn poll<T, F, Fut>(
    what: &str,
    within: Duration,
    interval: Duration,
    mut check: F,
) -> Result<T, KubeError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Waiting<T>, KubeError>>,
{
    let started = Instant::now();
    loop {
        match check().await? {
            Waiting::Done(value) => return Ok(value),
            Waiting::On(last) => {
                if started.elapsed() >= within {
                    return Err(KubeError::Timeout {
                        what: what.to_string(),
                        waited: within,
                        last,
                    });
                }
                tracing::info!("waiting for {what}: {last}");
            }
        }
        tokio::time::sleep(interval).await;
    }
}

fn decode<T: DeserializeOwned>(
    method: &'static str,
    url: &str,
    body: &[u8],
) -> Result<T, KubeError> {
    serde_json::from_slice(body).map_err(|e| KubeError::Decode {
        method,
        url: url.to_string(),
        source: e.into(),
    })
}

/// The `message` of a Kubernetes `Status` answer, or the start of whatever came back.
fn status_message(body: &[u8]) -> String {
    serde_json::from_slice::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>(body)
        .ok()
        .and_then(|status| status.message)
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            text.chars()
                .take(200)
                .collect::<String>()
                .trim()
                .to_string()
        })
}

/// An error with all its causes, `: `-separated.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
