//! An S3-compatible object store (Jetstream2's Swift through its S3 API, Ceph's RADOS Gateway,
//! AWS S3) reached with an access key rather than the cloud's login: buckets found by prefix,
//! made, listed page by page, written, read and emptied, each request signed with SigV4
//! ([`super::sigv4`]). URLs are path-style (`endpoint/bucket/object`): flatstack's bucket
//! names hold dots, which virtual-hosted names cannot carry under TLS. What goes into the
//! buckets is [`crate::backup`]'s business.

use reqwest::Method;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::object_store::{ContainerEntry, Made, StoredObject};
use super::sigv4::{self, EMPTY_PAYLOAD, S3Keys};
use super::{Cloud, CloudError, Reply, Service};

/// An S3-compatible endpoint and the key that signs for it.
#[derive(Debug, Clone)]
pub(crate) struct S3Store {
    /// Scheme, host and any path, without a trailing slash.
    endpoint: String,
    /// What the Host header carries: `host` or `host:port`.
    host: String,
    /// The endpoint's own path, without a trailing slash (usually empty).
    base_path: String,
    region: String,
    keys: S3Keys,
}

#[derive(Debug, Deserialize)]
struct ListBucketResult {
    #[serde(rename = "Contents", default)]
    contents: Vec<Contents>,
    #[serde(rename = "IsTruncated", default)]
    is_truncated: bool,
    #[serde(rename = "NextContinuationToken", default)]
    next_continuation_token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Contents {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "LastModified", default)]
    last_modified: String,
}

#[derive(Debug, Deserialize)]
struct ListAllMyBucketsResult {
    #[serde(rename = "Buckets", default)]
    buckets: Buckets,
}

#[derive(Debug, Default, Deserialize)]
struct Buckets {
    #[serde(rename = "Bucket", default)]
    bucket: Vec<Bucket>,
}

#[derive(Debug, Deserialize)]
struct Bucket {
    #[serde(rename = "Name")]
    name: String,
}

fn decode_xml<T: for<'de> Deserialize<'de>>(reply: &Reply, call: &str) -> Result<T, CloudError> {
    let text = std::str::from_utf8(&reply.body).map_err(|e| CloudError::Decode {
        service: Service::ObjectStore.name(),
        call: call.to_string(),
        source: e.into(),
    })?;
    quick_xml::de::from_str(text).map_err(|e| CloudError::Decode {
        service: Service::ObjectStore.name(),
        call: call.to_string(),
        source: e.into(),
    })
}

/// What an S3 error body says its code is.
fn error_code(error: &CloudError) -> Option<&str> {
    match error {
        CloudError::Api { message, .. } => message.split(':').next(),
        _ => None,
    }
}

impl S3Store {
    /// The store at `endpoint` (an `http(s)://host[:port][/path]` URL) in `region`.
    pub(crate) fn new(endpoint: &str, region: &str, keys: S3Keys) -> Result<S3Store, CloudError> {
        let invalid = |why: &str| CloudError::Config(format!("S3 endpoint `{endpoint}` {why}"));
        let url =
            reqwest::Url::parse(endpoint).map_err(|e| invalid(&format!("is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("is neither http:// nor https://"));
        }
        if url.query().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("must not carry a query or credentials"));
        }
        let host = url.host_str().ok_or_else(|| invalid("names no host"))?;
        let host = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let base_path = url.path().trim_end_matches('/').to_string();
        Ok(S3Store {
            endpoint: format!("{}://{host}{base_path}", url.scheme()),
            host,
            base_path,
            region: region.to_string(),
            keys,
        })
    }

    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub(crate) fn region(&self) -> &str {
        &self.region
    }

    pub(crate) fn keys(&self) -> &S3Keys {
        &self.keys
    }

    /// The path under the host of the bucket, or of an object in it.
    fn path(&self, bucket: Option<&str>, object: Option<&str>) -> String {
        let parts: String = [bucket, object]
            .into_iter()
            .flatten()
            .map(|part| format!("/{}", sigv4::encode(part)))
            .collect();
        match parts.is_empty() {
            true => format!("{}/", self.base_path),
            false => format!("{}{parts}", self.base_path),
        }
    }

    /// One signed request, retried (each time signed afresh) while the store is unreachable or
    /// answers 429 or 5xx.
    async fn send(
        &self,
        cloud: &Cloud,
        method: Method,
        (bucket, object): (Option<&str>, Option<&str>),
        query: &[(&str, &str)],
        body: Option<bytes::Bytes>,
    ) -> Result<Reply, CloudError> {
        let path = self.path(bucket, object);
        let payload = match &body {
            Some(body) => hex::encode(Sha256::digest(body)),
            None => EMPTY_PAYLOAD.to_string(),
        };
        let url = match query.is_empty() {
            true => format!("{}://{}{path}", self.scheme(), self.host),
            false => format!(
                "{}://{}{path}?{}",
                self.scheme(),
                self.host,
                query
                    .iter()
                    .map(|(k, v)| format!("{}={}", sigv4::encode(k), sigv4::encode(v)))
                    .collect::<Vec<_>>()
                    .join("&")
            ),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (amz_date, _) = sigv4::stamps(OffsetDateTime::now_utc());
            let mut headers = vec![
                ("x-amz-content-sha256", payload.as_str()),
                ("x-amz-date", amz_date.as_str()),
            ];
            if body.is_some() {
                headers.push(("content-type", "application/octet-stream"));
            }
            let request = sigv4::Request {
                method: method.as_str(),
                host: &self.host,
                path: &path,
                query,
                headers: &headers,
            };
            let authorization =
                sigv4::authorization(&self.keys, &self.region, &request, &amz_date, &payload);
            headers.push(("authorization", authorization.as_str()));
            // Listings and small calls have the session's timeout; object reads and writes
            // take their time.
            let timed = object.is_none() || !matches!(method, Method::GET | Method::PUT);
            let result = cloud
                .send_to(
                    Service::ObjectStore,
                    method.clone(),
                    &url,
                    &headers,
                    body.clone(),
                    timed,
                )
                .await;
            match result {
                Err(e)
                    if e.is_transient()
                        && !matches!(e, CloudError::Api { status: 409, .. })
                        && attempt < cloud.attempts() =>
                {
                    tokio::time::sleep(cloud.delay(attempt, e.retry_after())).await;
                }
                result => return result,
            }
        }
    }

    fn scheme(&self) -> &str {
        self.endpoint.split("://").next().unwrap_or("https")
    }

    /// The key's buckets whose names start with `prefix`. S3 listings carry no usable time
    /// (Swift's S3 API gives every bucket the same date), so none is given.
    pub(crate) async fn buckets(
        &self,
        cloud: &Cloud,
        prefix: &str,
    ) -> Result<Vec<ContainerEntry>, CloudError> {
        let reply = self
            .send(cloud, Method::GET, (None, None), &[], None)
            .await?;
        let listing: ListAllMyBucketsResult = decode_xml(&reply, "GET the key's buckets")?;
        Ok(listing
            .buckets
            .bucket
            .into_iter()
            .filter(|b| b.name.starts_with(prefix))
            .map(|b| ContainerEntry {
                name: b.name,
                last_modified: None,
            })
            .collect())
    }

    /// Makes bucket `name` (or finds it the key's own already). A 409 is read by looking: the
    /// bucket answers a HEAD when it is ours (Swift's S3 API answers `BucketAlreadyExists` for
    /// the account's own, where AWS says `BucketAlreadyOwnedByYou`), and not when another
    /// holds the name.
    pub(crate) async fn create_bucket(
        &self,
        cloud: &Cloud,
        name: &str,
    ) -> Result<Made, CloudError> {
        // Outside AWS's first region a bucket says where it is; S3-compatible stores take the
        // region they are configured with.
        let body = (self.region != "us-east-1").then(|| {
            bytes::Bytes::from(format!(
                "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
                self.region
            ))
        });
        let result = self
            .send(cloud, Method::PUT, (Some(name), None), &[], body)
            .await;
        match result {
            Ok(_) => Ok(Made::Created),
            Err(e @ CloudError::Api { status: 409, .. }) => {
                if error_code(&e) == Some("BucketAlreadyOwnedByYou") {
                    return Ok(Made::Existed);
                }
                match self
                    .send(cloud, Method::HEAD, (Some(name), None), &[], None)
                    .await
                {
                    Ok(_) => Ok(Made::Existed),
                    Err(CloudError::Api {
                        status: 403 | 404, ..
                    }) => Ok(Made::Taken),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The objects in `bucket`, in name order; `None` when there is no such bucket.
    pub(crate) async fn objects(
        &self,
        cloud: &Cloud,
        bucket: &str,
    ) -> Result<Option<Vec<StoredObject>>, CloudError> {
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        let mut seen = std::collections::BTreeSet::new();
        loop {
            let mut query = vec![("list-type", "2")];
            if let Some(token) = &token {
                query.push(("continuation-token", token.as_str()));
            }
            let reply = match self
                .send(cloud, Method::GET, (Some(bucket), None), &query, None)
                .await
            {
                Ok(reply) => reply,
                Err(CloudError::Api { status: 404, .. }) => return Ok(None),
                Err(e) => return Err(e),
            };
            let page: ListBucketResult = decode_xml(&reply, &format!("GET bucket {bucket}"))?;
            objects.extend(page.contents.into_iter().map(|c| StoredObject {
                name: c.key,
                bytes: c.size,
                last_modified: c.last_modified,
            }));
            match (page.is_truncated, page.next_continuation_token) {
                (false, _) => return Ok(Some(objects)),
                (true, Some(next)) if seen.insert(next.clone()) => token = Some(next),
                // A store that says there is more but not where it goes on (or sends a place
                // again) would have us list a part as the whole, or forever.
                (true, _) => {
                    return Err(CloudError::Decode {
                        service: Service::ObjectStore.name(),
                        call: format!("GET bucket {bucket}"),
                        source:
                            "a listing said it was truncated but gave no new continuation token"
                                .into(),
                    });
                }
            }
        }
    }

    /// Writes `contents` as object `name`, its SHA-256 signed (the store checks it on arrival).
    pub(crate) async fn put_object(
        &self,
        cloud: &Cloud,
        bucket: &str,
        name: &str,
        contents: Vec<u8>,
    ) -> Result<(), CloudError> {
        self.send(
            cloud,
            Method::PUT,
            (Some(bucket), Some(name)),
            &[],
            Some(contents.into()),
        )
        .await
        .map(|_| ())
    }

    /// An object's bytes; `None` when there is no such object.
    pub(crate) async fn get_object(
        &self,
        cloud: &Cloud,
        bucket: &str,
        name: &str,
    ) -> Result<Option<Vec<u8>>, CloudError> {
        match self
            .send(cloud, Method::GET, (Some(bucket), Some(name)), &[], None)
            .await
        {
            Ok(reply) => Ok(Some(Vec::from(reply.body))),
            Err(CloudError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes an object; one already gone counts as deleted.
    pub(crate) async fn delete_object(
        &self,
        cloud: &Cloud,
        bucket: &str,
        name: &str,
    ) -> Result<(), CloudError> {
        match self
            .send(cloud, Method::DELETE, (Some(bucket), Some(name)), &[], None)
            .await
        {
            Ok(_) | Err(CloudError::Api { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes every object of `bucket`, then the bucket; returns how many objects there were.
    /// A bucket already gone counts as deleted; one a listing showed empty too early
    /// (`BucketNotEmpty`) is emptied and deleted again, a few times.
    pub(crate) async fn delete_bucket(
        &self,
        cloud: &Cloud,
        bucket: &str,
    ) -> Result<usize, CloudError> {
        const ATTEMPTS: u32 = 5;
        let mut deleted = 0;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(objects) = self.objects(cloud, bucket).await? else {
                return Ok(deleted);
            };
            for object in &objects {
                self.delete_object(cloud, bucket, &object.name).await?;
            }
            deleted += objects.len();
            match self
                .send(cloud, Method::DELETE, (Some(bucket), None), &[], None)
                .await
            {
                Ok(_) | Err(CloudError::Api { status: 404, .. }) => return Ok(deleted),
                Err(CloudError::Api { status: 409, .. }) if attempt < ATTEMPTS => {
                    tokio::time::sleep(std::time::Duration::from_secs(u64::from(attempt))).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A URL that GETs (or HEADs: S3 signs the method, so a HEAD needs a URL of its own)
    /// `bucket/object` without credentials for `seconds` from `now`.
    pub(crate) fn presigned(
        &self,
        method: Method,
        bucket: &str,
        object: &str,
        seconds: u32,
        now: OffsetDateTime,
    ) -> String {
        let path = self.path(Some(bucket), Some(object));
        let (amz_date, _) = sigv4::stamps(now);
        let query = sigv4::presigned_query(
            &self.keys,
            &self.region,
            method.as_str(),
            &self.host,
            &path,
            &amz_date,
            seconds,
        );
        format!("{}://{}{path}?{query}", self.scheme(), self.host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn store(endpoint: &str) -> Result<S3Store, CloudError> {
        S3Store::new(
            endpoint,
            "RegionOne",
            S3Keys {
                access_key_id: "id".into(),
                secret_access_key: Secret::new("secret"),
            },
        )
    }

    #[test]
    fn endpoints_keep_their_port_and_path_and_refuse_the_rest() {
        let s3 = store("https://js2.jetstream-cloud.org:8001/").expect("endpoint");
        assert_eq!(s3.endpoint(), "https://js2.jetstream-cloud.org:8001");
        assert_eq!(
            s3.path(Some("flatstack-backups.demo.abc"), None),
            "/flatstack-backups.demo.abc"
        );
        let s3 = store("https://s3.example.org:443/store").expect("endpoint");
        assert_eq!(s3.host, "s3.example.org", "the default port is not in Host");
        assert_eq!(s3.path(None, None), "/store/");
        assert_eq!(s3.path(Some("b"), Some("o.db")), "/store/b/o.db");
        for bad in [
            "js2.jetstream-cloud.org:8001",
            "ftp://h/",
            "https://u:p@h/",
            "https://h/?x=1",
        ] {
            let error = store(bad).expect_err(bad).to_string();
            assert!(error.contains(bad), "{error}");
        }
    }

    #[test]
    fn listings_are_read_from_their_xml() {
        let reply = Reply {
            status: 200,
            body: bytes::Bytes::from_static(
                br#"<?xml version='1.0' encoding='UTF-8'?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix></Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated><Contents><Key>demo-etcd-20261207T060009Z-v1.37.1.db.enc</Key><LastModified>2026-12-07T18:49:02.000Z</LastModified><ETag>"b1"</ETag><Size>6</Size><StorageClass>STANDARD</StorageClass></Contents><Contents><Key>a&amp;b</Key><LastModified>2026-12-07T18:49:03.000Z</LastModified><Size>7</Size></Contents><NextContinuationToken>tok</NextContinuationToken></ListBucketResult>"#,
            ),
        };
        let page: ListBucketResult = decode_xml(&reply, "GET").expect("listing");
        assert!(page.is_truncated);
        assert_eq!(page.next_continuation_token.as_deref(), Some("tok"));
        let keys: Vec<(&str, u64)> = page
            .contents
            .iter()
            .map(|c| (c.key.as_str(), c.size))
            .collect();
        assert_eq!(
            keys,
            [("demo-etcd-20261207T060009Z-v1.37.1.db.enc", 6), ("a&b", 7)]
        );
        let empty = Reply {
            status: 200,
            body: bytes::Bytes::from_static(
                b"<ListAllMyBucketsResult><Owner><ID>o</ID></Owner><Buckets/></ListAllMyBucketsResult>",
            ),
        };
        let buckets: ListAllMyBucketsResult = decode_xml(&empty, "GET").expect("buckets");
        assert!(buckets.buckets.bucket.is_empty());
    }

    #[test]
    fn a_presigned_url_names_the_object_and_the_key_but_holds_no_secret() {
        let s3 = store("http://127.0.0.1:8080").expect("endpoint");
        let at = OffsetDateTime::from_unix_timestamp(1_900_000_000).expect("time");
        let url = s3.presigned(Method::GET, "b.c", "o.sealed", 86400, at);
        assert!(
            url.starts_with("http://127.0.0.1:8080/b.c/o.sealed?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=id%2F20300317%2FRegionOne%2Fs3%2Faws4_request&X-Amz-Date=20300317T174640Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature="),
            "{url}"
        );
        assert!(!url.contains("secret"));
        assert_ne!(
            url,
            s3.presigned(Method::HEAD, "b.c", "o.sealed", 86400, at)
        );
    }
}
