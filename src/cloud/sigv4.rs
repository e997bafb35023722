//! AWS Signature Version 4 as S3-compatible stores check it: the canonical request (method,
//! path, sorted query, signed headers, payload hash), the string to sign under a
//! `date/region/s3/aws4_request` scope, and the key derived from the secret by HMAC-SHA256 one
//! scope part at a time; signed either into an `Authorization` header or into a URL's query
//! (a presigned URL, which anyone may use until it expires).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::secret::Secret;

/// The SHA-256 of nothing: the payload hash of a request without a body.
pub(crate) const EMPTY_PAYLOAD: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// What a presigned URL signs instead of a payload it cannot know.
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const SERVICE: &str = "s3";
/// The longest a presigned URL may last (SigV4 refuses more than seven days).
pub(crate) const MAX_PRESIGNED_SECONDS: u32 = 7 * 24 * 3600;

/// An S3 access key: its ID and its secret.
#[derive(Debug, Clone)]
pub(crate) struct S3Keys {
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: Secret,
}

/// One request to sign. `path` is the URL's path as sent (each segment percent-encoded
/// already); `query` and `headers` are as sent, unencoded, header names in any case.
#[derive(Debug, Clone)]
pub(crate) struct Request<'a> {
    pub(crate) method: &'a str,
    /// `host` or `host:port`, as the Host header carries it.
    pub(crate) host: &'a str,
    pub(crate) path: &'a str,
    pub(crate) query: &'a [(&'a str, &'a str)],
    pub(crate) headers: &'a [(&'a str, &'a str)],
}

/// `YYYYMMDDTHHMMSSZ` and `YYYYMMDD` of `now`, UTC.
pub(crate) fn stamps(now: OffsetDateTime) -> (String, String) {
    let now = now.to_offset(time::UtcOffset::UTC);
    let date = format!(
        "{:04}{:02}{:02}",
        now.year(),
        u8::from(now.month()),
        now.day()
    );
    let time = format!(
        "{date}T{:02}{:02}{:02}Z",
        now.hour(),
        now.minute(),
        now.second()
    );
    (time, date)
}

/// SigV4's URI encoding: every byte but the unreserved ones as `%XX`.
pub(crate) fn encode(text: &str) -> String {
    super::query_escape(text)
}

fn hmac(key: &[u8], data: &str) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().into()
}

fn signing_key(secret: &Secret, date: &str, region: &str) -> [u8; 32] {
    let key = hmac(format!("AWS4{}", secret.expose()).as_bytes(), date);
    let key = hmac(&key, region);
    let key = hmac(&key, SERVICE);
    hmac(&key, "aws4_request")
}

/// The signature of `request` at `amz_date` with `payload_hash`, and the signed header names.
fn sign(
    keys: &S3Keys,
    region: &str,
    request: &Request<'_>,
    amz_date: &str,
    payload_hash: &str,
) -> (String, String) {
    let date = &amz_date[..8];
    let mut query: Vec<(String, String)> = request
        .query
        .iter()
        .map(|(k, v)| (encode(k), encode(v)))
        .collect();
    query.sort();
    let query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut headers: Vec<(String, String)> = std::iter::once(("host", request.host))
        .chain(request.headers.iter().copied())
        .map(|(name, value)| {
            let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
            (name.to_ascii_lowercase(), value)
        })
        .collect();
    headers.sort();
    let canonical_headers: String = headers
        .iter()
        .map(|(name, value)| format!("{name}:{value}\n"))
        .collect();
    let signed_headers = headers
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{}\n{}\n{query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}",
        request.method, request.path
    );
    let scope = format!("{date}/{region}/{SERVICE}/aws4_request");
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let key = signing_key(&keys.secret_access_key, date, region);
    (hex::encode(hmac(&key, &string_to_sign)), signed_headers)
}

/// The `Authorization` header of `request`, whose headers must include `x-amz-date` (set to
/// `amz_date`) and `x-amz-content-sha256` (set to `payload_hash`).
pub(crate) fn authorization(
    keys: &S3Keys,
    region: &str,
    request: &Request<'_>,
    amz_date: &str,
    payload_hash: &str,
) -> String {
    let (signature, signed_headers) = sign(keys, region, request, amz_date, payload_hash);
    format!(
        "{ALGORITHM} Credential={}/{}/{region}/{SERVICE}/aws4_request, SignedHeaders={signed_headers}, Signature={signature}",
        keys.access_key_id,
        &amz_date[..8]
    )
}

/// The query of a URL that performs `method` on `path` for `expires` seconds from `amz_date`
/// without credentials (only the Host header signed).
pub(crate) fn presigned_query(
    keys: &S3Keys,
    region: &str,
    method: &str,
    host: &str,
    path: &str,
    amz_date: &str,
    expires: u32,
) -> String {
    let credential = format!(
        "{}/{}/{region}/{SERVICE}/aws4_request",
        keys.access_key_id,
        &amz_date[..8]
    );
    let expires = expires.min(MAX_PRESIGNED_SECONDS).to_string();
    let query = [
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", credential.as_str()),
        ("X-Amz-Date", amz_date),
        ("X-Amz-Expires", expires.as_str()),
        ("X-Amz-SignedHeaders", "host"),
    ];
    let request = Request {
        method,
        host,
        path,
        query: &query,
        headers: &[],
    };
    let (signature, _) = sign(keys, region, &request, amz_date, UNSIGNED_PAYLOAD);
    query
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .chain(std::iter::once(format!("X-Amz-Signature={signature}")))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example keys and time of AWS's "Signature Calculations for the Authorization
    /// Header" and "Authenticating Requests: Using Query Parameters" pages of the S3 API
    /// reference, whose signatures are the figures below.
    fn example() -> (S3Keys, &'static str) {
        (
            S3Keys {
                access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
                secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
            },
            "20130524T000000Z",
        )
    }

    #[test]
    fn a_get_is_signed_as_aws_documents_it() {
        let (keys, at) = example();
        let request = Request {
            method: "GET",
            host: "examplebucket.s3.amazonaws.com",
            path: "/test.txt",
            query: &[],
            headers: &[
                ("Range", "bytes=0-9"),
                ("x-amz-content-sha256", EMPTY_PAYLOAD),
                ("x-amz-date", at),
            ],
        };
        assert_eq!(
            authorization(&keys, "us-east-1", &request, at, EMPTY_PAYLOAD),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn a_listing_signs_its_sorted_query() {
        let (keys, at) = example();
        let request = Request {
            method: "GET",
            host: "examplebucket.s3.amazonaws.com",
            path: "/",
            query: &[("prefix", "J"), ("max-keys", "2")],
            headers: &[("x-amz-content-sha256", EMPTY_PAYLOAD), ("x-amz-date", at)],
        };
        let header = authorization(&keys, "us-east-1", &request, at, EMPTY_PAYLOAD);
        assert!(
            header.ends_with(
                "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
            ),
            "{header}"
        );
    }

    #[test]
    fn a_presigned_url_is_signed_as_aws_documents_it() {
        let (keys, at) = example();
        let query = presigned_query(
            &keys,
            "us-east-1",
            "GET",
            "examplebucket.s3.amazonaws.com",
            "/test.txt",
            at,
            86400,
        );
        assert_eq!(
            query,
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        );
    }

    #[test]
    fn stamps_are_utc() {
        let at = OffsetDateTime::from_unix_timestamp(1_369_353_600).expect("time");
        assert_eq!(
            stamps(at),
            ("20130524T000000Z".to_string(), "20130524".to_string())
        );
    }
}
