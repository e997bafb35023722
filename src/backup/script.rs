//! The script a control plane's host runs for each snapshot, with Flatcar's own `bash`,
//! `openssl` and `curl` (no image of ours, no shell in the etcd image): it seals the snapshot
//! `etcdctl` saved into the envelope of [`super::envelope`], logs in (a Keystone token for the
//! cluster's credentials, or curl's own SigV4 signing with an S3 access key), uploads the
//! envelope under its name with its SHA-256 (and an MD5 the store checks on arrival), then
//! deletes the oldest snapshots beyond `keep`.
//!
//! Everything comes from the environment, so the script itself holds nothing secret:
//! `FLATSTACK_SNAPSHOT` (the saved snapshot, deleted when the script ends), `FLATSTACK_CLUSTER`,
//! `FLATSTACK_KUBERNETES` (the release, for the name), `FLATSTACK_RECIPIENT` (the backup key's
//! public half, PEM), `FLATSTACK_STORE` (the object store's account URL),
//! `FLATSTACK_CONTAINER`, `FLATSTACK_KEEP`, `FLATSTACK_STORE_API` (`swift` or `s3`); for
//! Swift `FLATSTACK_AUTH_URL` (Keystone v3) and `FLATSTACK_AUTH_REQUEST` (the body of a
//! Keystone token request, from a Secret), for S3 `FLATSTACK_S3_REGION` and `FLATSTACK_S3_USER`
//! (`ID:SECRET`, from a Secret, handed to curl in a config file); and, for a
//! cloud with a CA of its own, `FLATSTACK_CA_BUNDLE` (or `FLATSTACK_INSECURE=true`). The
//! snapshot's one-off keys pass through `openssl`'s arguments for a moment, on the host, as
//! the node's unsealing does: a host process (or an audit log of every command line) sees
//! them, never a pod without the host's PID namespace.

use super::envelope::{INFO, MAGIC};
use crate::cloud::sigv4::EMPTY_PAYLOAD;

/// The largest object Swift takes in one PUT by default (`max_file_size`, 5 GiB + 2 bytes in
/// `swift/common/constraints.py`): a bigger envelope would need a segmented upload.
const SWIFT_OBJECT_LIMIT: u64 = 5 * 1024 * 1024 * 1024;

/// The script's text.
pub(crate) fn upload_script() -> String {
    let magic = String::from_utf8_lossy(MAGIC);
    let magic = magic.trim_end_matches('\n');
    format!(
        r#"#!/bin/bash
# flatstack: seals this control plane's etcd snapshot to the cluster's backup key, uploads it
# to the object store and keeps the newest $FLATSTACK_KEEP.
set -euo pipefail
umask 077
say() {{ echo "flatstack-backup: $*"; }}
hex() {{ od -An -v -tx1 | tr -d ' \n'; }}
api=${{FLATSTACK_STORE_API:-swift}}
case $api in
  swift) login=(FLATSTACK_AUTH_URL FLATSTACK_AUTH_REQUEST) ;;
  s3) login=(FLATSTACK_S3_REGION FLATSTACK_S3_USER) ;;
  *)
    say "FLATSTACK_STORE_API must be swift or s3, not '$api'"
    exit 2
    ;;
esac
for variable in FLATSTACK_SNAPSHOT FLATSTACK_CLUSTER FLATSTACK_KUBERNETES FLATSTACK_RECIPIENT \
  FLATSTACK_STORE FLATSTACK_CONTAINER FLATSTACK_KEEP "${{login[@]}}"; do
  if [[ -z ${{!variable:-}} ]]; then
    say "$variable is not set"
    exit 2
  fi
done
snapshot=$FLATSTACK_SNAPSHOT
dir=$(dirname "$snapshot")
# What runs killed at their deadline left (bash as a container's PID 1 may be killed before
# its EXIT trap runs): plain snapshots and envelopes older than two hours.
find "$dir" -maxdepth 1 \( -name '.flatstack-backup.*' -o -name '*.db' \) -mmin +120 \
  -exec rm -rf {{}} + 2> /dev/null || true
if [[ ! -s $snapshot ]]; then
  say "no snapshot at $snapshot"
  exit 2
fi
if [[ ! $FLATSTACK_KEEP =~ ^[1-9][0-9]*$ ]]; then
  say "FLATSTACK_KEEP must be a positive number, not '$FLATSTACK_KEEP'"
  exit 2
fi
work=$(mktemp -d "$dir/.flatstack-backup.XXXXXX")
trap 'rm -rf "$work" "$snapshot"' EXIT
trap 'exit 143' TERM INT
object="$FLATSTACK_CLUSTER-etcd-$(date -u +%Y%m%dT%H%M%SZ)-$FLATSTACK_KUBERNETES.db.enc"

# curl as the cloud wants it: its CA besides the system's (an S3 store elsewhere may have a
# public certificate), or no verification when clouds.yaml says so.
tls=()
if [[ -n ${{FLATSTACK_CA_BUNDLE:-}} ]]; then
  printf '%s\n' "$FLATSTACK_CA_BUNDLE" > "$work/ca.crt"
  tls=(--cacert "$work/ca.crt" --capath /etc/ssl/certs)
elif [[ ${{FLATSTACK_INSECURE:-}} == true ]]; then
  tls=(--insecure)
fi
fetch() {{ curl -sS --connect-timeout 30 "${{tls[@]}}" "$@"; }}

# The envelope: a fresh X25519 key agreed with the recipient's, HKDF-SHA256 to a cipher and
# a MAC key, AES-256-CTR, then HMAC-SHA256 over everything before the tag.
printf '%s\n' "$FLATSTACK_RECIPIENT" > "$work/recipient.pem"
openssl genpkey -algorithm X25519 -out "$work/ephemeral.pem" 2> "$work/openssl.log"
openssl pkey -in "$work/ephemeral.pem" -pubout -outform DER | tail -c 32 > "$work/ephemeral.pub"
openssl pkey -pubin -in "$work/recipient.pem" -outform DER | tail -c 32 > "$work/recipient.pub"
shared=$(openssl pkeyutl -derive -inkey "$work/ephemeral.pem" -peerkey "$work/recipient.pem" | hex)
salt=$(cat "$work/ephemeral.pub" "$work/recipient.pub" | hex)
keys=$(openssl kdf -keylen 64 -kdfopt digest:SHA256 -kdfopt "hexkey:$shared" \
  -kdfopt "hexsalt:$salt" -kdfopt "info:{INFO}" -binary HKDF | hex)
if (( ${{#keys}} != 128 )); then
  say "openssl derived no keys"
  exit 1
fi
openssl rand -out "$work/iv" 16
{{
  printf '%s\n' '{magic}'
  cat "$work/ephemeral.pub" "$work/iv"
  openssl enc -aes-256-ctr -K "${{keys:0:64}}" -iv "$(hex < "$work/iv")" -in "$snapshot"
}} > "$work/envelope"
openssl dgst -sha256 -mac HMAC -macopt "hexkey:${{keys:64:64}}" -binary < "$work/envelope" \
  > "$work/tag"
cat "$work/tag" >> "$work/envelope"
rm -f "$work/ephemeral.pem" "$snapshot"
size=$(stat -c %s "$work/envelope")
if (( size > {SWIFT_OBJECT_LIMIT} )); then
  say "the sealed snapshot is $size bytes, more than the object store takes in one object ({SWIFT_OBJECT_LIMIT}); segmented uploads are not built: compact and defragment etcd"
  exit 1
fi
sha256=$(sha256sum "$work/envelope" | cut -d' ' -f1)
md5=$(md5sum "$work/envelope" | cut -d' ' -f1)

container_url="${{FLATSTACK_STORE%/}}/$FLATSTACK_CONTAINER"
if [[ $api == swift ]]; then
  # A token for the cluster's credentials; it travels in a header file, never in arguments.
  printf '%s' "$FLATSTACK_AUTH_REQUEST" > "$work/auth.json"
  status=$(fetch --max-time 120 -o "$work/token.json" -D "$work/token.headers" \
    -w '%{{http_code}}' -H 'Content-Type: application/json' --data-binary @"$work/auth.json" \
    "${{FLATSTACK_AUTH_URL%/}}/auth/tokens") || status=000
  rm -f "$work/auth.json"
  token=$(sed -n 's/^[Xx]-[Ss]ubject-[Tt]oken: *\([^[:space:]]*\).*$/\1/p' "$work/token.headers" \
    2> /dev/null || true)
  if [[ $status != 201 || -z $token ]]; then
    say "Keystone at $FLATSTACK_AUTH_URL gave no token (HTTP $status)"
    exit 1
  fi
  printf 'X-Auth-Token: %s\n' "$token" > "$work/auth.header"
  # store PAYLOAD-SHA256 CURL-ARGS...: one request to the store.
  store() {{ shift; fetch -H @"$work/auth.header" "$@"; }}
  put_headers=(-H "ETag: $md5" -H "X-Object-Meta-Sha256: $sha256")
  put_ok=201
  listing_url="$container_url?format=plain&prefix=$FLATSTACK_CLUSTER-etcd-"
else
  # curl signs each request (SigV4) with the key from a config file, never in arguments; the
  # payload's SHA-256 is given, as S3 wants it signed and curl does not compute it.
  user=${{FLATSTACK_S3_USER//\\/\\\\}}
  printf 'user = "%s"\n' "${{user//\"/\\\"}}" > "$work/s3.conf"
  store() {{
    local payload=$1
    shift
    fetch -K "$work/s3.conf" --aws-sigv4 "aws:amz:$FLATSTACK_S3_REGION:s3" \
      -H "x-amz-content-sha256: $payload" "$@"
  }}
  md5_base64=$(openssl dgst -md5 -binary < "$work/envelope" | openssl base64 -A)
  put_headers=(-H "Content-MD5: $md5_base64" -H "x-amz-meta-sha256: $sha256")
  put_ok=200
  listing_url="$container_url?list-type=2&prefix=$FLATSTACK_CLUSTER-etcd-"
fi
empty={EMPTY_PAYLOAD}

# Slower than 10 KiB/s for five minutes is a stalled upload.
status=$(store "$sha256" --speed-limit 10240 --speed-time 300 -o "$work/put.out" \
  -w '%{{http_code}}' -X PUT -H 'Content-Type: application/octet-stream' "${{put_headers[@]}}" \
  -T "$work/envelope" "$container_url/$object") || status=000
if [[ $status != "$put_ok" ]]; then
  say "uploading $object to $container_url failed (HTTP $status): $(head -c 300 "$work/put.out" 2> /dev/null || true)"
  exit 1
fi
say "uploaded $object ($size bytes, sha256 $sha256)"

# The newest $FLATSTACK_KEEP snapshots stay; names sort by time. The snapshot is stored by
# now: a failure here is reported, and the next run prunes.
status=$(store "$empty" --max-time 120 -o "$work/listing" -w '%{{http_code}}' "$listing_url") \
  || status=000
if [[ $status != 200 && $status != 204 ]]; then
  say "warning: listing $container_url failed (HTTP $status); nothing pruned this time"
  exit 0
fi
if [[ $api == s3 ]]; then
  # One key per line from the XML; the names are plain (no entities), as the pattern checks.
  grep -o '<Key>[^<]*</Key>' "$work/listing" | sed 's/<[^>]*>//g' > "$work/names" || true
else
  cp "$work/listing" "$work/names"
fi
pattern="^$FLATSTACK_CLUSTER-etcd-[0-9]{{8}}T[0-9]{{6}}Z-v[0-9]+\.[0-9]+\.[0-9]+\.db\.enc\$"
mapfile -t snapshots < <(grep -E "$pattern" "$work/names" | sort || true)
pruned=0
for ((i = 0; i + FLATSTACK_KEEP < ${{#snapshots[@]}}; i++)); do
  status=$(store "$empty" --max-time 120 -o /dev/null -w '%{{http_code}}' -X DELETE \
    "$container_url/${{snapshots[i]}}") || status=000
  case $status in
    204 | 404) pruned=$((pruned + 1)) ;;
    *) say "warning: deleting ${{snapshots[i]}} failed (HTTP $status)" ;;
  esac
done
say "kept the newest $((${{#snapshots[@]}} - pruned)) of ${{#snapshots[@]}} snapshot(s); deleted $pruned"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_writes_the_envelope_open_reads() {
        let script = upload_script();
        assert!(script.contains("printf '%s\\n' 'flatstack etcd snapshot v1'"));
        assert!(script.contains("-kdfopt \"info:flatstack etcd snapshot v1\""));
        // Secrets never in arguments: the token goes through a header file, the S3 key
        // through curl's config file.
        assert!(script.contains("-H @\"$work/auth.header\""));
        assert!(!script.contains("-H \"X-Auth-Token"));
        assert!(script.contains("-K \"$work/s3.conf\""));
        assert!(!script.contains("--user"));
    }
}
