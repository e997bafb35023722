//! An authenticated session with one OpenStack cloud: Keystone v3 login, the service catalog,
//! request execution with microversions, and the retry policy (capped exponential backoff
//! with jitter on 409/429/5xx and dropped connections, honouring Retry-After). Creations go
//! through [`Cloud::create`], which looks the resource up before it posts again, so a retried
//! create never makes a second resource.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::RwLock;

use super::config::{CloudConfig, Credentials, Domain, Identity};
use super::{CloudError, Service};

/// How hard a request is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// Longest Retry-After honoured; longer ones are cut to this.
    pub max_retry_after: Duration,
    /// Timeout of one HTTP exchange (uploads have their own, none).
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 8,
            first_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// Counts of the calls a session made, for benchmarks and for "no change" checks.
#[derive(Debug, Default)]
pub struct CallCounter {
    calls: AtomicU64,
    mutating: AtomicU64,
    retries: AtomicU64,
}

impl CallCounter {
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
    pub(crate) fn mutating(&self) -> u64 {
        self.mutating.load(Ordering::Relaxed)
    }
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
}

struct Login {
    token: String,
    catalog: Vec<CatalogEntry>,
    project_id: Option<String>,
}

/// One service of the catalog with the endpoint chosen for our interface and region.
#[derive(Debug, Clone)]
pub struct CatalogEntry {
    pub service_type: String,
    pub(crate) url: String,
}

/// An authenticated session. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Cloud {
    http: reqwest::Client,
    config: CloudConfig,
    login: RwLock<Login>,
    policy: RetryPolicy,
    pub counter: CallCounter,
    /// Set once Neutron has refused `tags` in a create (some deployments do, even with the
    /// `tag-creation` extension listed): later creates tag in a second call right away.
    pub(crate) tags_refused_in_create: std::sync::atomic::AtomicBool,
}

/// A response that was not an error.
#[derive(Debug)]
pub struct Reply {
    /// 200, 201, 202 or 204: some APIs (Swift's) tell made from found only by it.
    pub(crate) status: u16,
    pub(crate) body: bytes::Bytes,
}

impl Reply {
    pub(crate) fn json<T: DeserializeOwned>(
        &self,
        service: Service,
        call: &str,
    ) -> Result<T, CloudError> {
        serde_json::from_slice(&self.body).map_err(|e| CloudError::Decode {
            service: service.name(),
            call: call.to_string(),
            source: e.into(),
        })
    }
}

/// Installs ring as the process's TLS crypto provider (once; later calls are no-ops).
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Cloud {
    /// How many attempts a retried call makes in all.
    pub(super) fn attempts(&self) -> u32 {
        self.policy.attempts
    }

    /// Logs in to the cloud described by `config`.
    pub async fn connect(config: CloudConfig) -> Result<Cloud, CloudError> {
        Cloud::connect_with(config, RetryPolicy::default()).await
    }

    pub async fn connect_with(
        config: CloudConfig,
        policy: RetryPolicy,
    ) -> Result<Cloud, CloudError> {
        install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("flatstack/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15))
            // Servers close idle connections after a few seconds (gunicorn: 2 s); drop ours first.
            .pool_idle_timeout(Duration::from_secs(1));
        if let Some(path) = &config.cacert {
            let pem = std::fs::read(path).map_err(|e| {
                CloudError::Config(format!("cannot read cacert {}: {e}", path.display()))
            })?;
            let certificate = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                CloudError::Config(format!(
                    "cacert {} is not a PEM certificate: {e}",
                    path.display()
                ))
            })?;
            builder = builder.add_root_certificate(certificate);
        }
        if config.insecure {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let http = builder
            .build()
            .map_err(|e| CloudError::Config(format!("cannot set up HTTPS: {e}")))?;
        let login = authenticate(&http, &config, &policy).await?;
        Ok(Cloud {
            http,
            config,
            login: RwLock::new(login),
            policy,
            counter: CallCounter::default(),
            tags_refused_in_create: Default::default(),
        })
    }

    pub(crate) fn config(&self) -> &CloudConfig {
        &self.config
    }

    /// The project the session is scoped to.
    pub async fn project_id(&self) -> Option<String> {
        self.login.read().await.project_id.clone()
    }

    /// The catalog entries for our interface and region.
    pub async fn catalog(&self) -> Vec<CatalogEntry> {
        self.login.read().await.catalog.clone()
    }

    /// Whether the cloud offers `service` (in its catalog, or by an endpoint override).
    pub(crate) async fn offers(&self, service: Service) -> bool {
        self.endpoint(service).await.is_ok()
    }

    pub(super) async fn endpoint(&self, service: Service) -> Result<String, CloudError> {
        if let Some(url) = self.config.endpoint_overrides.get(service.name()) {
            return Ok(service.versioned(url));
        }
        let login = self.login.read().await;
        let entry = login
            .catalog
            .iter()
            .find(|e| service.catalog_types().contains(&e.service_type.as_str()))
            .ok_or_else(|| CloudError::NoEndpoint {
                service: service.name(),
                interface: self.config.interface.clone(),
                region: self.config.region.clone().unwrap_or_else(|| "any".into()),
            })?;
        Ok(service.versioned(&entry.url))
    }

    /// Sends one request, retrying what is safe to retry. `path` is relative to the service's
    /// versioned endpoint, e.g. `/servers/detail`.
    pub(crate) async fn request(
        &self,
        service: Service,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, CloudError> {
        self.request_with_headers(service, method, path, body, &[])
            .await
    }

    /// [`Cloud::request`] with headers of the caller's (Swift's metadata), never secrets.
    pub(crate) async fn request_with_headers(
        &self,
        service: Service,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, CloudError> {
        let call = format!("{method} {path}");
        let idempotent = method != Method::POST;
        let mut attempt = 0;
        let mut reauthenticated = false;
        loop {
            attempt += 1;
            let outcome = self.send_once(service, &method, path, body, headers).await;
            let retry_after = match outcome {
                Ok(reply) => return Ok(reply),
                Err(Attempt::Unauthorized) if !reauthenticated => {
                    // The token expired or was revoked: log in again, once.
                    reauthenticated = true;
                    let login = authenticate(&self.http, &self.config, &self.policy).await?;
                    *self.login.write().await = login;
                    continue;
                }
                Err(Attempt::Unauthorized) => {
                    return Err(CloudError::Api {
                        service: service.name(),
                        call,
                        status: 401,
                        message: "the cloud refused our token again right after a fresh login"
                            .into(),
                        request_id: None,
                        retry_after: None,
                    });
                }
                Err(Attempt::Fatal(error)) => return Err(error),
                // A POST that may have reached the server is not repeated here: see `create`.
                Err(Attempt::Transient { error, .. }) if !idempotent => return Err(error),
                Err(Attempt::Transient { error, retry_after }) => {
                    if attempt >= self.policy.attempts {
                        return Err(error);
                    }
                    retry_after
                }
            };
            self.counter.retries.fetch_add(1, Ordering::Relaxed);
            let wait = self.delay(attempt, retry_after);
            tracing::warn!(
                "{} {call}: retrying in {} ms (attempt {attempt})",
                service.name(),
                wait.as_millis()
            );
            tokio::time::sleep(wait).await;
        }
    }

    async fn send_once(
        &self,
        service: Service,
        method: &Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, Attempt> {
        let base = self.endpoint(service).await.map_err(Attempt::Fatal)?;
        let url = format!("{base}{path}");
        let call = format!("{method} {path}");
        let token = self.login.read().await.token.clone();
        let mut request = self
            .http
            .request(method.clone(), &url)
            .timeout(self.policy.request_timeout)
            .header("X-Auth-Token", token)
            .header("Accept", "application/json");
        for &(name, value) in service.version_headers().iter().chain(headers) {
            request = request.header(name, value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        self.counter.calls.fetch_add(1, Ordering::Relaxed);
        if *method != Method::GET && *method != Method::HEAD {
            self.counter.mutating.fetch_add(1, Ordering::Relaxed);
        }
        // Logs name the call and its outcome only: never headers (the token) or bodies.
        let started = std::time::Instant::now();
        let sent = request.send().await;
        match &sent {
            Ok(response) => tracing::info!(
                "{} {method} {path} -> {} in {} ms",
                service.name(),
                response.status().as_u16(),
                started.elapsed().as_millis()
            ),
            Err(e) => tracing::info!(
                "{} {method} {path} -> connection failed: {e}",
                service.name()
            ),
        }
        let response = sent.map_err(|e| Attempt::Transient {
            error: CloudError::Unreachable {
                service: service.name(),
                url: url.clone(),
                source: e,
            },
            retry_after: None,
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|e| Attempt::Transient {
            error: CloudError::Unreachable {
                service: service.name(),
                url: url.clone(),
                source: e,
            },
            retry_after: None,
        })?;
        if status.is_success() {
            return Ok(Reply {
                status: status.as_u16(),
                body,
            });
        }
        if status == StatusCode::UNAUTHORIZED {
            return Err(Attempt::Unauthorized);
        }
        let error = api_error(service, call, status, &headers, &body);
        // Swift's 409s are answers (a container that is not empty, a name another project
        // holds), not a state that passes.
        let conflict = status == StatusCode::CONFLICT && service != Service::ObjectStore;
        let transient =
            conflict || status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
        if transient {
            Err(Attempt::Transient {
                retry_after: error.retry_after(),
                error,
            })
        } else {
            Err(Attempt::Fatal(error))
        }
    }

    /// Capped exponential backoff with full jitter, or the server's Retry-After (capped).
    pub(super) fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(wait) = retry_after {
            return wait.min(self.policy.max_retry_after);
        }
        let exponent = attempt.saturating_sub(1).min(16);
        let ceiling = self
            .policy
            .first_delay
            .saturating_mul(1 << exponent)
            .min(self.policy.max_delay);
        let mut random = [0u8; 4];
        let fraction = match getrandom::fill(&mut random) {
            Ok(()) => f64::from(u32::from_le_bytes(random)) / f64::from(u32::MAX),
            Err(_) => 0.5,
        };
        ceiling.mul_f64(0.5 + fraction / 2.0)
    }

    /// Streams `body` to `path` with PUT (Glance image data). Sent once: a stream cannot be
    /// replayed, so the caller decides whether to start over. No overall timeout applies, only
    /// the connect timeout, since large uploads take as long as they take.
    pub(crate) async fn upload(
        &self,
        service: Service,
        path: &str,
        body: reqwest::Body,
        length: Option<u64>,
    ) -> Result<Reply, CloudError> {
        let base = self.endpoint(service).await?;
        let url = format!("{base}{path}");
        let token = self.login.read().await.token.clone();
        let mut request = self
            .http
            .put(&url)
            .header("X-Auth-Token", token)
            .header("Content-Type", "application/octet-stream")
            .body(body);
        if let Some(length) = length {
            request = request.header("Content-Length", length);
        }
        self.counter.calls.fetch_add(1, Ordering::Relaxed);
        self.counter.mutating.fetch_add(1, Ordering::Relaxed);
        let response = request.send().await.map_err(|e| CloudError::Unreachable {
            service: service.name(),
            url: url.clone(),
            source: e,
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| CloudError::Unreachable {
                service: service.name(),
                url,
                source: e,
            })?;
        if status.is_success() {
            return Ok(Reply {
                status: status.as_u16(),
                body,
            });
        }
        Err(api_error(
            service,
            format!("PUT {path}"),
            status,
            &headers,
            &body,
        ))
    }

    /// GETs `path`'s bytes with no overall timeout (large objects take as long as they take;
    /// the connect timeout still applies), once: the caller decides about retries. `None` for
    /// 404.
    pub(crate) async fn download(
        &self,
        service: Service,
        path: &str,
    ) -> Result<Option<Vec<u8>>, CloudError> {
        let base = self.endpoint(service).await?;
        let url = format!("{base}{path}");
        let token = self.login.read().await.token.clone();
        self.counter.calls.fetch_add(1, Ordering::Relaxed);
        let unreachable = |source| CloudError::Unreachable {
            service: service.name(),
            url: url.clone(),
            source,
        };
        let response = self
            .http
            .get(&url)
            .header("X-Auth-Token", token)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(unreachable)?;
        match status {
            s if s.is_success() => Ok(Some(Vec::from(body))),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(api_error(
                service,
                format!("GET {path}"),
                status,
                &headers,
                &body,
            )),
        }
    }

    /// A request with no token to an absolute URL: what anyone may read (Swift's `/info`), or
    /// what the URL's own signature allows (a TempURL). Errors name the URL without its query,
    /// which may hold a signature.
    pub(crate) async fn without_token(
        &self,
        service: Service,
        method: Method,
        url: &str,
    ) -> Result<Reply, CloudError> {
        self.send_to(service, method, url, &[], None, true).await
    }

    /// One request to an absolute URL with the given headers (a signature of its own, say) and
    /// body, through this session's HTTPS settings, sent once; `timed`: within the policy's
    /// timeout (uploads and downloads take as long as they take). Errors name the URL without
    /// its query, which may hold a signature.
    pub(crate) async fn send_to(
        &self,
        service: Service,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<bytes::Bytes>,
        timed: bool,
    ) -> Result<Reply, CloudError> {
        let shown = url.split('?').next().unwrap_or_default().to_string();
        self.counter.calls.fetch_add(1, Ordering::Relaxed);
        if method != Method::GET && method != Method::HEAD {
            self.counter.mutating.fetch_add(1, Ordering::Relaxed);
        }
        let mut request = self.http.request(method.clone(), url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        if timed {
            request = request.timeout(self.policy.request_timeout);
        }
        let unreachable = |e: reqwest::Error| CloudError::Unreachable {
            service: service.name(),
            url: shown.clone(),
            source: e.without_url(),
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(unreachable)?;
        if status.is_success() {
            return Ok(Reply {
                status: status.as_u16(),
                body,
            });
        }
        Err(api_error(
            service,
            format!("{method} {shown}"),
            status,
            &headers,
            &body,
        ))
    }

    /// GET and decode.
    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        service: Service,
        path: &str,
    ) -> Result<T, CloudError> {
        self.request(service, Method::GET, path, None)
            .await?
            .json(service, &format!("GET {path}"))
    }

    /// PUT (idempotent) with a JSON body; the answer is returned undecoded.
    pub(crate) async fn put(
        &self,
        service: Service,
        path: &str,
        body: &Value,
    ) -> Result<Reply, CloudError> {
        self.request(service, Method::PUT, path, Some(body)).await
    }

    /// DELETE; a resource that is already gone counts as deleted.
    pub(crate) async fn delete(&self, service: Service, path: &str) -> Result<(), CloudError> {
        match self.request(service, Method::DELETE, path, None).await {
            Ok(_) => Ok(()),
            Err(CloudError::Api { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// POST a non-creating action (idempotent by nature, e.g. `os-getConsoleOutput`).
    pub(crate) async fn action<T: DeserializeOwned>(
        &self,
        service: Service,
        path: &str,
        body: &Value,
    ) -> Result<T, CloudError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.request(service, Method::POST, path, Some(body)).await {
                Ok(reply) => return reply.json(service, &format!("POST {path}")),
                Err(e) if e.is_transient() && attempt < self.policy.attempts => {
                    self.counter.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(self.delay(attempt, None)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Creates a resource by POST. When the POST fails in a way that leaves it unknown whether
    /// the cloud acted on it (dropped connection, 5xx, 409, 429), `find` looks for the resource
    /// (by its unique name or tag) before the POST is sent again.
    pub(crate) async fn create<T, F, Fut>(
        &self,
        service: Service,
        path: &str,
        body: &Value,
        envelope: &str,
        find: F,
    ) -> Result<T, CloudError>
    where
        T: DeserializeOwned,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Option<T>, CloudError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.request(service, Method::POST, path, Some(body)).await {
                Ok(reply) => {
                    let mut value: Value = reply.json(service, &format!("POST {path}"))?;
                    let inner = value
                        .get_mut(envelope)
                        .map(Value::take)
                        .unwrap_or(Value::Null);
                    return serde_json::from_value(inner).map_err(|e| CloudError::Decode {
                        service: service.name(),
                        call: format!("POST {path}"),
                        source: e.into(),
                    });
                }
                Err(e) if e.is_transient() && attempt < self.policy.attempts => {
                    self.counter.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(self.delay(attempt, e.retry_after())).await;
                    if let Some(existing) = find().await? {
                        return Ok(existing);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

enum Attempt {
    Unauthorized,
    Transient {
        error: CloudError,
        retry_after: Option<Duration>,
    },
    Fatal(CloudError),
}

/// The error for a non-success answer, with the cloud's message and request ID.
fn api_error(
    service: Service,
    call: String,
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
) -> CloudError {
    CloudError::Api {
        service: service.name(),
        call,
        status: status.as_u16(),
        message: cloud_message(body),
        request_id: headers
            .get("x-openstack-request-id")
            .or_else(|| headers.get("x-compute-request-id"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        retry_after: retry_after(headers),
    }
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get("retry-after")?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The cloud's own words from an error body: Nova/Cinder `{"kind": {"message"}}`, Neutron
/// `{"NeutronError": {"message"}}`, Keystone `{"error": {"message"}}`, S3's XML `<Error>`
/// (`Code: Message`), or the text itself.
pub fn cloud_message(body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        let direct = value.get("message").and_then(Value::as_str);
        let nested = value.as_object().and_then(|o| {
            o.values()
                .find_map(|v| v.get("message").and_then(Value::as_str))
        });
        if let Some(message) = direct.or(nested) {
            return message.trim().to_string();
        }
    }
    let text = String::from_utf8_lossy(body);
    // S3's `<Error><Code>…</Code><Message>…</Message></Error>`.
    let element = |name: &str| {
        let start = text.find(&format!("<{name}>"))? + name.len() + 2;
        let end = start + text[start..].find(&format!("</{name}>"))?;
        Some(text[start..end].trim().to_string())
    };
    if text.contains("<Error>")
        && let Some(code) = element("Code")
    {
        return match element("Message") {
            Some(message) => format!("{code}: {message}"),
            None => code,
        };
    }
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        "no message".into()
    } else {
        text.chars().take(400).collect()
    }
}

#[derive(Serialize)]
struct Named<'a> {
    name: &'a str,
    domain: Value,
}

fn domain_json(domain: &Domain) -> Value {
    match domain {
        Domain::Id(id) => json!({ "id": id }),
        Domain::Name(name) => json!({ "name": name }),
    }
}

fn identity_json(identity: &Identity) -> Value {
    match identity {
        Identity::Id(id) => json!({ "id": id }),
        Identity::Name { name, domain } => json!(Named {
            name,
            domain: domain_json(domain)
        }),
    }
}

/// Keystone's v3 base URL of `config` (`.../v3`).
pub(crate) fn identity_v3(config: &CloudConfig) -> String {
    let base = config.auth_url.trim_end_matches('/');
    match base.ends_with("/v3") {
        true => base.to_string(),
        false => format!("{base}/v3"),
    }
}

/// The body of a Keystone v3 token request for `config`'s credentials: it holds the password
/// or application credential secret.
pub(crate) fn token_request(config: &CloudConfig) -> crate::secret::Secret {
    crate::secret::Secret::new(token_request_json(config).to_string())
}

fn token_request_json(config: &CloudConfig) -> Value {
    match &config.credentials {
        Credentials::Password {
            user,
            password,
            project,
        } => {
            let mut user = identity_json(user);
            user["password"] = json!(password.expose());
            let mut auth =
                json!({ "identity": { "methods": ["password"], "password": { "user": user } } });
            if let Some(project) = project {
                auth["scope"] = json!({ "project": identity_json(project) });
            }
            json!({ "auth": auth })
        }
        Credentials::ApplicationCredential {
            id,
            name,
            user,
            secret,
        } => {
            let mut credential = json!({ "secret": secret.expose() });
            match (id, name, user) {
                (Some(id), _, _) => credential["id"] = json!(id),
                (None, Some(name), Some(user)) => {
                    credential["name"] = json!(name);
                    credential["user"] = identity_json(user);
                }
                _ => {}
            }
            json!({ "auth": { "identity": { "methods": ["application_credential"], "application_credential": credential } } })
        }
    }
}

/// Keystone v3 login: a token, the catalog, the project.
async fn authenticate(
    http: &reqwest::Client,
    config: &CloudConfig,
    policy: &RetryPolicy,
) -> Result<Login, CloudError> {
    let url = format!("{}/auth/tokens", identity_v3(config));
    let body = token_request_json(config);
    let mut attempt = 0;
    let response = loop {
        attempt += 1;
        let sent = http
            .post(&url)
            .timeout(policy.request_timeout)
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_server_error() && attempt < policy.attempts => {}
            Ok(response) => break response,
            Err(e) if attempt >= policy.attempts => {
                return Err(CloudError::Unreachable {
                    service: "identity",
                    url: url.clone(),
                    source: e,
                });
            }
            Err(_) => {}
        }
        tokio::time::sleep(policy.first_delay.saturating_mul(1 << attempt.min(5))).await;
    };
    let status = response.status();
    let token = response
        .headers()
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = response
        .bytes()
        .await
        .map_err(|e| CloudError::Unreachable {
            service: "identity",
            url: url.clone(),
            source: e,
        })?;
    if status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN
        || status == StatusCode::NOT_FOUND
            && matches!(
                config.credentials,
                Credentials::ApplicationCredential { .. }
            )
    {
        return Err(CloudError::Auth {
            cloud: config.name.clone(),
            message: cloud_message(&bytes),
        });
    }
    if !status.is_success() {
        return Err(CloudError::Api {
            service: "identity",
            call: "POST /auth/tokens".into(),
            status: status.as_u16(),
            message: cloud_message(&bytes),
            request_id: None,
            retry_after: None,
        });
    }
    let token = token.ok_or_else(|| CloudError::Decode {
        service: "identity",
        call: "POST /auth/tokens".into(),
        source: "no X-Subject-Token header".into(),
    })?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| CloudError::Decode {
        service: "identity",
        call: "POST /auth/tokens".into(),
        source: e.into(),
    })?;
    let services = value["token"]["catalog"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let catalog = pick_endpoints(&services, config);
    if catalog.is_empty() && !services.is_empty() {
        let mut regions: Vec<&str> = services
            .iter()
            .filter_map(|s| s["endpoints"].as_array())
            .flatten()
            .filter_map(|e| e["region_id"].as_str().or(e["region"].as_str()))
            .collect();
        regions.sort_unstable();
        regions.dedup();
        return Err(CloudError::NoRegion {
            cloud: config.name.clone(),
            region: config.region.clone().unwrap_or_else(|| "any".into()),
            interface: config.interface.clone(),
            available: regions.join(", "),
        });
    }
    if catalog.is_empty() {
        return Err(CloudError::Config(format!(
            "cloud `{}` gave a token without a service catalog: the credential is not scoped to a project\n  hint: set project_name (or project_id) in clouds.yaml",
            config.name
        )));
    }
    Ok(Login {
        token,
        catalog,
        project_id: value["token"]["project"]["id"].as_str().map(str::to_string),
    })
}

fn pick_endpoints(services: &[Value], config: &CloudConfig) -> Vec<CatalogEntry> {
    services
        .iter()
        .filter_map(|service| {
            let kind = service["type"].as_str()?;
            let endpoint = service["endpoints"].as_array()?.iter().find(|e| {
                e["interface"] == config.interface.as_str()
                    && config
                        .region
                        .as_ref()
                        .is_none_or(|r| e["region_id"] == r.as_str() || e["region"] == r.as_str())
            })?;
            Some(CatalogEntry {
                service_type: kind.to_string(),
                url: endpoint["url"].as_str()?.trim_end_matches('/').to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_messages_are_unwrapped() {
        assert_eq!(
            cloud_message(
                br#"{"itemNotFound": {"message": "Flavor x could not be found.", "code": 404}}"#
            ),
            "Flavor x could not be found."
        );
        assert_eq!(
            cloud_message(br#"{"NeutronError": {"type": "NetworkInUse", "message": "Unable to complete operation on network n."}}"#),
            "Unable to complete operation on network n."
        );
        assert_eq!(
            cloud_message(b"<html> 503  Service Unavailable </html>"),
            "<html> 503 Service Unavailable </html>"
        );
        assert_eq!(cloud_message(b""), "no message");
        assert_eq!(
            cloud_message(b"<?xml version='1.0' encoding='UTF-8'?>\n<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist.</Message><RequestId>tx5</RequestId></Error>"),
            "NoSuchBucket: The specified bucket does not exist."
        );
    }
}
