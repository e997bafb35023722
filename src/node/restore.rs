//! The node side of `flatstack restore`: the control plane that initializes a restored
//! cluster fetches an etcd snapshot, sealed for it, from the object store through a signed
//! URL (a Swift TempURL or an S3 presigned URL), opens it, and has etcd's own `etcdutl` (from the etcd image kubeadm runs, through
//! containerd's `ctr`) restore it into `/var/lib/etcd` before `kubeadm init` starts etcd on
//! it. The old control planes' Node objects are deleted from the restored data (through a
//! short-lived etcd on loopback) so each new kubelet registers a Node of its own instead of
//! inheriting one that names a server that is gone. The opened snapshot stays on the node's
//! disk until `kubeadm init` succeeds: the bootstrap's `kubeadm reset` after a failed attempt
//! wipes `/var/lib/etcd`, and every attempt restores afresh.

use std::fmt::Write as _;

use super::seal::SealKey;

/// The script the bootstrap runs before `kubeadm init` when the node restores.
pub(crate) const RESTORE_SCRIPT: &str = "/opt/flatstack/bin/flatstack-restore";
/// What the restore needs (sealed: it holds the signed URL and the snapshot's key).
pub(crate) const RESTORE_ENV: &str = "/etc/flatstack/restore.env";
/// The cloud's own CA, when it has one: what curl trusts to fetch the snapshot (readable).
pub(crate) const RESTORE_CA: &str = "/etc/flatstack/restore-ca.pem";
/// Where the snapshot is kept, opened, until `kubeadm init` succeeds.
pub(crate) const RESTORE_DIR: &str = "/var/lib/flatstack/restore";
/// The revision etcd's guide tells Kubernetes restores to jump by, so that no watch or
/// informer silently goes back in time (with `--mark-compacted`, they relist).
pub const BUMP_REVISION: u64 = 1_000_000_000;
/// kubeadm's etcd data directory.
const ETCD_DATA_DIR: &str = "/var/lib/etcd";
/// The loopback ports of the short-lived etcd that cleans the restored data.
const CLEANING_CLIENT_PORT: u16 = 2399;
const CLEANING_PEER_PORT: u16 = 2398;

/// What one restore gives the node that initializes the cluster.
#[derive(Clone)]
pub struct RestoreSource {
    /// A signed URL (TempURL or presigned) that reads the sealed snapshot, and only it.
    pub url: String,
    /// The key the snapshot is sealed with (the node's own seal format).
    pub key: SealKey,
    /// The etcd image (the one kubeadm runs for the cluster's minor): its `etcdutl`,
    /// `etcd` and `etcdctl` do the work.
    pub etcd_image: String,
    /// A new token for the restored etcd cluster, as etcd's guide asks.
    pub cluster_token: String,
    /// The control planes' node names: their Node objects and leases from the snapshot are
    /// deleted before the API server starts.
    pub stale_nodes: Vec<String>,
    /// The cloud's own CA (PEM), which the object store's certificate is signed by.
    pub ca_bundle: Option<String>,
    /// The cloud is reached without checking certificates (clouds.yaml `verify: false`).
    pub insecure: bool,
}

impl std::fmt::Debug for RestoreSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreSource")
            .field("etcd_image", &self.etcd_image)
            .field("stale_nodes", &self.stale_nodes)
            .finish_non_exhaustive()
    }
}

impl RestoreSource {
    /// The contents of [`RESTORE_ENV`]: one `field=value` per line, nothing quoted (no
    /// value holds a newline; the script reads them with `read`, never `source`).
    pub fn env_file(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "url={}", self.url);
        let _ = writeln!(text, "key={}", self.key.expose_hex());
        let _ = writeln!(text, "image={}", self.etcd_image);
        let _ = writeln!(text, "token={}", self.cluster_token);
        let _ = writeln!(text, "stale={}", self.stale_nodes.join(" "));
        let _ = writeln!(text, "insecure={}", u8::from(self.insecure));
        text
    }
}

/// The restore script. Its steps are marked so a second attempt after a failed one does only
/// what is left: the snapshot is fetched and opened once (its tag checked before a byte is
/// decrypted), the data directory restored every time. `FLATSTACK_ROOT` lets a test run it
/// on a scratch root, with the containers' commands run by stand-ins.
pub fn restore_script() -> String {
    format!(
        r#"#!/bin/bash
# flatstack: restore this control plane's etcd from a snapshot before kubeadm init starts it.
set -euo pipefail
umask 077
root=${{FLATSTACK_ROOT:-}}
name=${{1:?usage: flatstack-restore NODE-NAME ADDRESS}}
address=${{2:?usage: flatstack-restore NODE-NAME ADDRESS}}
say() {{
  echo "flatstack: $*"
  echo "flatstack: $*" > /dev/kmsg 2>/dev/null || true
}}
hex() {{ od -An -v -tx1 | tr -d ' \n'; }}

env_file=$root{RESTORE_ENV}
dir=$root{RESTORE_DIR}
data=$root{ETCD_DATA_DIR}
url="" key="" image="" token="" stale="" insecure=0
while IFS='=' read -r field value; do
  case $field in
    url) url=$value ;;
    key) key=$value ;;
    image) image=$value ;;
    token) token=$value ;;
    stale) stale=$value ;;
    insecure) insecure=$value ;;
  esac
done < "$env_file"
# The object store's certificate as the cloud's own clients check it: its CA besides the
# system's (an S3 store elsewhere may have a public certificate).
tls=()
if [[ $insecure == 1 ]]; then
  tls=(--insecure)
elif [[ -f $root{RESTORE_CA} ]]; then
  tls=(--cacert "$root{RESTORE_CA}" --capath /etc/ssl/certs)
fi
if [[ ! $key =~ ^[0-9a-f]{{128}}$ || -z $url || -z $image || ! $token =~ ^[A-Za-z0-9-]+$ ]]; then
  say "$env_file does not say where the snapshot is and how to open it"
  exit 1
fi
if [[ ! $address =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
  say "cannot restore etcd: '$address' is not this node's IPv4 address"
  exit 1
fi

mkdir -p "$dir"
chmod 0700 "$dir"
snapshot=$dir/snapshot.db
if [[ ! -f $snapshot ]]; then
  say "fetching the etcd snapshot to restore"
  rm -f "$dir/snapshot.sealed"
  # The URL goes to curl on its standard input, never in its arguments.
  printf 'url = "%s"\n' "$url" | curl -fsS --retry 10 --retry-all-errors --retry-delay 3 \
    --connect-timeout 10 --speed-limit 1024 --speed-time 60 "${{tls[@]}}" -K - \
    -o "$dir/snapshot.sealed"
  size=$(stat -c %s "$dir/snapshot.sealed")
  if (( size < 48 )); then
    say "the sealed snapshot is truncated ($size bytes)"
    exit 1
  fi
  body=$((size - 32))
  expected=$(tail -c 32 "$dir/snapshot.sealed" | hex)
  actual=$(head -c "$body" "$dir/snapshot.sealed" \
    | openssl dgst -sha256 -mac HMAC -macopt "hexkey:${{key:64:64}}" -binary | hex)
  if [[ $expected != "$actual" ]]; then
    say "the sealed snapshot does not match its key: it was changed or cut short; nothing restored"
    exit 1
  fi
  iv=$(head -c 16 "$dir/snapshot.sealed" | hex)
  head -c "$body" "$dir/snapshot.sealed" | tail -c +17 \
    | openssl enc -d -aes-256-ctr -K "${{key:0:64}}" -iv "$iv" > "$snapshot.opening"
  mv -f "$snapshot.opening" "$snapshot"
  rm -f "$dir/snapshot.sealed"
fi

ctr -n k8s.io images pull "$image" > /dev/null
# A container an attempt that was stopped (a reboot, a crash) left behind is removed first:
# `--rm` removes it only while ctr runs.
remove_container() {{
  ctr -n k8s.io task kill -s SIGKILL "$1" > /dev/null 2>&1 || true
  ctr -n k8s.io task rm -f "$1" > /dev/null 2>&1 || true
  ctr -n k8s.io container rm "$1" > /dev/null 2>&1 || true
}}
in_etcd_image() {{
  local id=$1
  shift
  remove_container "$id"
  ctr -n k8s.io run --rm --net-host \
    --mount "type=bind,src=$root/var/lib,dst=$root/var/lib,options=rbind:rw" \
    "$image" "$id" "$@"
}}

say "restoring etcd from the snapshot as member $name at https://$address:2380"
# Nothing of a stopped attempt may still use the data directory (its cleaning etcd above all).
for leftover in flatstack-restore flatstack-restore-clean flatstack-restore-check \
  flatstack-restore-delete; do
  remove_container "$leftover"
done
rm -rf "$data"
in_etcd_image flatstack-restore etcdutl snapshot restore "$snapshot" \
  --name "$name" \
  --initial-cluster "$name=https://$address:2380" \
  --initial-advertise-peer-urls "https://$address:2380" \
  --initial-cluster-token "$token" \
  --data-dir "$data" \
  --bump-revision {BUMP_REVISION} --mark-compacted

# The old control planes' Node objects name servers that are gone: deleted before the API
# server starts, so each new kubelet registers its own.
if [[ -n $stale ]]; then
  client=http://127.0.0.1:{CLEANING_CLIENT_PORT}
  in_etcd_image flatstack-restore-clean etcd --name "$name" --data-dir "$data" \
    --listen-client-urls "$client" --advertise-client-urls "$client" \
    --listen-peer-urls http://127.0.0.1:{CLEANING_PEER_PORT} > "$dir/cleaning.log" 2>&1 &
  cleaning=$!
  stop_cleaning() {{
    ctr -n k8s.io task kill -s SIGTERM flatstack-restore-clean > /dev/null 2>&1 || true
    wait "$cleaning" || true
  }}
  trap stop_cleaning EXIT
  ready=""
  for _ in $(seq 1 60); do
    if ! kill -0 "$cleaning" 2> /dev/null; then
      break
    fi
    if in_etcd_image flatstack-restore-check etcdctl --endpoints "$client" \
      endpoint health > /dev/null 2>&1; then
      ready=yes
      break
    fi
    sleep 1
  done
  if [[ -z $ready ]]; then
    say "the restored etcd did not start to be cleaned; see $dir/cleaning.log"
    exit 1
  fi
  for node in $stale; do
    in_etcd_image flatstack-restore-delete etcdctl --endpoints "$client" \
      del "/registry/minions/$node" > /dev/null
    in_etcd_image flatstack-restore-delete etcdctl --endpoints "$client" \
      del "/registry/leases/kube-node-lease/$node" > /dev/null
  done
  stop_cleaning
  trap - EXIT
fi
say "etcd restored; kubeadm init starts it"
"#
    )
}
