//! OpenStack access: configuration like the `openstack` CLI, an authenticated session with
//! retries, and typed operations per service. The rest of flatstack never sees raw JSON.
//!
//! A thin client of our own over reqwest, rather than `openstack_sdk`: the calls flatstack
//! needs are few, and owning them gives us the retry and idempotency rules, error messages
//! and build time we want (see the README, "OpenStack access").

pub(crate) mod config;

mod session;

pub mod compute;
pub(crate) mod image;
pub(crate) mod load_balancer;
pub mod network;
pub(crate) mod object_store;
pub(crate) mod s3;
pub(crate) mod sigv4;
pub(crate) mod volume;

pub use config::{CloudConfig, Credentials};
pub use session::{CallCounter, CatalogEntry, Cloud, Reply, RetryPolicy, cloud_message};
pub(crate) use session::{identity_v3, token_request};

use std::time::Duration;

/// The OpenStack services flatstack talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    Compute,
    Network,
    Image,
    Volume,
    LoadBalancer,
    /// Swift, where backups go.
    ObjectStore,
}

impl Service {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Service::Compute => "compute",
            Service::Network => "network",
            Service::Image => "image",
            Service::Volume => "block-storage",
            Service::LoadBalancer => "load-balancer",
            Service::ObjectStore => "object-store",
        }
    }

    /// Catalog types that mean this service (block storage has had several names).
    fn catalog_types(self) -> &'static [&'static str] {
        match self {
            Service::Compute => &["compute"],
            Service::Network => &["network"],
            Service::Image => &["image"],
            Service::Volume => &["block-storage", "volumev3", "volume"],
            Service::LoadBalancer => &["load-balancer"],
            Service::ObjectStore => &["object-store"],
        }
    }

    /// The catalog URL with the API version path the service needs appended.
    fn versioned(self, url: &str) -> String {
        let suffix = match self {
            Service::Network => "/v2.0",
            Service::Image => "/v2",
            Service::LoadBalancer => "/v2",
            Service::Compute | Service::Volume | Service::ObjectStore => return url.to_string(),
        };
        if url.ends_with(suffix) {
            url.to_string()
        } else {
            format!("{url}{suffix}")
        }
    }

    fn version_headers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            // The compute microversion flatstack speaks: server tags at create (2.52), server
            // group `policy` (2.64), boot volumes with `delete_on_termination` everywhere (2.79).
            Service::Compute => &[
                ("OpenStack-API-Version", "compute 2.79"),
                ("X-OpenStack-Nova-API-Version", "2.79"),
            ],
            Service::Volume => &[("OpenStack-API-Version", "volume 3.0")],
            _ => &[],
        }
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
pub(crate) fn query_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("{0}")]
    Config(String),
    #[error(
        "cloud `{cloud}` refused the credentials: {message}\n  hint: check the password or application credential (it may have expired or been deleted)"
    )]
    Auth { cloud: String, message: String },
    #[error("cannot reach the {service} API at {url}")]
    Unreachable {
        service: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the {service} API answered {status} to {call}: {message}{}", request_id.as_ref().map(|r| format!(" (request {r})")).unwrap_or_default())]
    Api {
        service: &'static str,
        call: String,
        status: u16,
        message: String,
        request_id: Option<String>,
        /// The server's Retry-After, if it sent one.
        retry_after: Option<Duration>,
    },
    #[error(
        "the cloud's catalog has no {service} endpoint for interface `{interface}` in region `{region}`\n  hint: check region_name and interface in clouds.yaml"
    )]
    NoEndpoint {
        service: &'static str,
        interface: String,
        region: String,
    },
    #[error(
        "cloud `{cloud}` has no endpoints for interface `{interface}` in region `{region}`; its regions: {available}\n  hint: set region_name (and interface) in clouds.yaml to one the cloud has"
    )]
    NoRegion {
        cloud: String,
        region: String,
        interface: String,
        available: String,
    },
    #[error("the {service} API's answer to {call} was not understood")]
    Decode {
        service: &'static str,
        call: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{what} did not reach {wanted} within {waited:?}; it is {state}")]
    Timeout {
        what: String,
        wanted: String,
        state: String,
        waited: Duration,
    },
    #[error("{what} went to ERROR: {fault}{}", next.map(|n| format!("\n  hint: {n}")).unwrap_or_default())]
    Failed {
        what: String,
        fault: String,
        /// What happens to it next, when flatstack knows.
        next: Option<&'static str>,
    },
}

impl CloudError {
    /// Whether trying again later may succeed (dropped connections, 409, 429, 5xx).
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            CloudError::Unreachable { .. } => true,
            CloudError::Api { status, .. } => *status == 409 || *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// How long the cloud asked us to wait before trying again.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            CloudError::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, CloudError::Api { status: 404, .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_escape_keeps_only_unreserved() {
        assert_eq!(
            query_escape("flatstack:cluster=demo"),
            "flatstack%3Acluster%3Ddemo"
        );
        assert_eq!(query_escape("a-b_c.d~"), "a-b_c.d~");
    }

    #[test]
    fn versioned_urls() {
        assert_eq!(
            Service::Network.versioned("http://h:9696"),
            "http://h:9696/v2.0"
        );
        assert_eq!(
            Service::Network.versioned("http://h:9696/v2.0"),
            "http://h:9696/v2.0"
        );
        assert_eq!(
            Service::Image.versioned("http://h:9292"),
            "http://h:9292/v2"
        );
        assert_eq!(
            Service::Compute.versioned("http://h:8774/v2.1"),
            "http://h:8774/v2.1"
        );
    }
}
