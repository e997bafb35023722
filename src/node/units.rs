//! The systemd units, drop-ins, scripts and small config files every node boots with.
//! They are written by hand, short, and each says what it is for.

use crate::spec::ClusterSpec;

use super::Bootstrap;
use super::kubeadm::{
    CERTIFICATES_DIR, INSTANCE_UUID_PLACEHOLDER, JOIN_TOKEN_PLACEHOLDER, NODE_NAME_PLACEHOLDER,
};
use super::restore::{RESTORE_DIR, RESTORE_ENV, RESTORE_SCRIPT};
use super::seal::{SEAL_KEY_METADATA, SEALED_SUFFIX};
use super::vip::{KUBECONFIG_PLACEHOLDER, VIP_TEMPLATE};
use crate::pki::secrets_key::{CONFIG_PATH as ENCRYPTION_CONFIG, KEY_PLACEHOLDER};

/// Where flatstack keeps its files on a node.
pub(crate) const CONFIG_DIR: &str = "/etc/flatstack";
/// The kubeadm configuration with placeholders, as rendered on the workstation.
pub(crate) const KUBEADM_TEMPLATE: &str = "/etc/flatstack/kubeadm.yaml.in";
/// Pristine copies of the CAs and service-account key on control planes; copied into
/// kubeadm's certificates directory before every `kubeadm init` attempt, so a reset after a
/// failed attempt can never make kubeadm mint a CA of its own.
pub(crate) const PKI_SOURCE_DIR: &str = "/etc/flatstack/pki";
pub(crate) const BOOTSTRAP_SCRIPT: &str = "/opt/flatstack/bin/flatstack-bootstrap";
/// The script that opens the node's sealed secrets with the key in its server's metadata.
pub(crate) const UNSEAL_SCRIPT: &str = "/opt/flatstack/bin/flatstack-unseal";
/// The join token, opened from its sealed copy; the kubeadm template names it by placeholder.
pub(crate) const JOIN_TOKEN_FILE: &str = "/etc/flatstack/join-token";
/// The API server's EncryptionConfiguration with a placeholder for the key (readable), and
/// the key, opened from its sealed copy: control planes only.
pub(crate) const ENCRYPTION_TEMPLATE: &str = "/etc/flatstack/encryption-config.yaml.in";
pub(crate) const SECRETS_KEY_FILE: &str = "/etc/flatstack/secrets-encryption.key";
/// Where the OpenStack metadata service serves this server's metadata (its `meta` map).
const METADATA_URL: &str = "http://169.254.169.254/openstack/latest/meta_data.json";
pub(crate) const KUBEADM_UNIT: &str = "kubeadm.service";
/// Directory of the Kubernetes sysext images, and the symlink systemd-sysext merges.
pub(crate) const SYSEXT_DIR: &str = "/opt/extensions/kubernetes";
pub(crate) const SYSEXT_LINK: &str = "/etc/extensions/kubernetes.raw";

/// The script `kubeadm.service` runs: fill in the node's identity, run kubeadm.
pub(crate) fn bootstrap_script() -> String {
    format!(
        r#"#!/bin/bash
# flatstack node bootstrap: opens the node's sealed secrets, learns its name and instance UUID
# from Afterburn's metadata (/run/metadata/flatcar), writes the kubeadm configuration and runs
# kubeadm once.
set -euo pipefail

role=${{1:?usage: flatstack-bootstrap init|control-plane|worker}}
say() {{
  echo "flatstack: $*"
  echo "flatstack: $*" > /dev/kmsg 2>/dev/null || true
}}

name=${{COREOS_OPENSTACK_HOSTNAME:-$(hostname)}}
name=${{name%%.*}}
name=${{name,,}}
uuid=${{COREOS_OPENSTACK_INSTANCE_UUID:-}}
if [[ -z $uuid && -r /sys/class/dmi/id/product_uuid ]]; then
  uuid=$(tr '[:upper:]' '[:lower:]' < /sys/class/dmi/id/product_uuid)
fi
if [[ ! $name =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]]; then
  say "cannot use '$name' as the node name"
  exit 1
fi
if [[ ! $uuid =~ ^[0-9a-f]{{8}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{12}}$ ]]; then
  say "cannot tell this instance's UUID (COREOS_OPENSTACK_INSTANCE_UUID is empty)"
  exit 1
fi

umask 077
{UNSEAL_SCRIPT}
token=$(< {JOIN_TOKEN_FILE})
if [[ ! $token =~ ^[a-z0-9]{{6}}\.[a-z0-9]{{16}}$ ]]; then
  say "{JOIN_TOKEN_FILE} holds no join token"
  exit 1
fi
sed -e "s/{NODE_NAME_PLACEHOLDER}/$name/g" -e "s/{INSTANCE_UUID_PLACEHOLDER}/$uuid/g" \
  -e "s/{JOIN_TOKEN_PLACEHOLDER}/$token/g" {KUBEADM_TEMPLATE} > {CONFIG_DIR}/kubeadm.yaml

# With 3 or 5 control planes, kube-vip holds the API's address: started with the kubeconfig
# given, once kubeadm lets it (see flatstack's node/vip.rs).
manifests=/etc/kubernetes/manifests
place_vip_holder() {{
  [[ -f {VIP_TEMPLATE} ]] || return 0
  mkdir -p "$manifests"
  sed "s|{KUBECONFIG_PLACEHOLDER}|$1|" {VIP_TEMPLATE} > "$manifests/.kube-vip.yaml"
  mv -f "$manifests/.kube-vip.yaml" "$manifests/kube-vip.yaml"
}}

# Control planes: the API server's EncryptionConfiguration, its key put in, where kubeadm's
# kube-apiserver reads it (inside the certificates directory it mounts).
place_encryption_config() {{
  [[ -f {ENCRYPTION_TEMPLATE} ]] || return 0
  local key template
  key=$(< {SECRETS_KEY_FILE})
  if [[ ! $key =~ ^[A-Za-z0-9+/]{{43}}=$ ]]; then
    say "{SECRETS_KEY_FILE} holds no key for Secrets"
    exit 1
  fi
  template=$(< {ENCRYPTION_TEMPLATE})
  mkdir -p "$(dirname {ENCRYPTION_CONFIG})"
  # Put in by bash itself: the key never stands in a command's arguments.
  printf '%s\n' "${{template//{KEY_PLACEHOLDER}/$key}}" > {ENCRYPTION_CONFIG}.new
  mv -f {ENCRYPTION_CONFIG}.new {ENCRYPTION_CONFIG}
}}

case $role in
  init)
    mkdir -p {CERTIFICATES_DIR}
    cp -a {PKI_SOURCE_DIR}/. {CERTIFICATES_DIR}/
    place_encryption_config
    place_vip_holder /etc/kubernetes/super-admin.conf
    # The join command kubeadm would print carries the bootstrap token.
    command=(kubeadm init --config {CONFIG_DIR}/kubeadm.yaml --skip-token-print)
    # A restored cluster: etcd's data directory is filled from the snapshot first, on every
    # attempt (a failed one's reset wipes it), and kubeadm told to start etcd on it.
    if [[ -f {RESTORE_ENV} ]]; then
      # etcd's peer address as kubeadm picks it: the first global IPv4 address of the
      # interface that holds the default route.
      device=$(ip -4 route show default | awk '{{for (i = 1; i < NF; i++) if ($i == "dev") {{print $(i + 1); exit}}}}')
      if [[ -z $device ]]; then
        say "cannot restore etcd: this node has no IPv4 default route to take its address from"
        exit 1
      fi
      address=$(ip -4 -o addr show dev "$device" scope global | awk '{{split($4, a, "/"); print a[1]; exit}}')
      {RESTORE_SCRIPT} "$name" "$address"
      command+=(--ignore-preflight-errors=DirAvailable--var-lib-etcd)
    fi
    ;;
  control-plane)
    mkdir -p {CERTIFICATES_DIR}
    cp -a {PKI_SOURCE_DIR}/. {CERTIFICATES_DIR}/
    place_encryption_config
    command=(kubeadm join --config {CONFIG_DIR}/kubeadm.yaml)
    ;;
  worker)
    command=(kubeadm join --config {CONFIG_DIR}/kubeadm.yaml)
    ;;
  *)
    say "unknown role '$role'"
    exit 2
    ;;
esac

say "kubeadm $role starting on $name"
if "${{command[@]}}"; then
  say "kubeadm $role finished on $name"
  # The restored cluster runs: the snapshot and what opened it are needed no more (removed
  # first: the unit never runs again once kubeadm succeeded).
  rm -rf {RESTORE_DIR} {RESTORE_ENV}
  [[ $role == worker ]] || place_vip_holder /etc/kubernetes/admin.conf
else
  status=$?
  say "kubeadm $role failed with status $status on $name; resetting for the next attempt"
  kubeadm reset --force || true
  exit "$status"
fi
"#
    )
}

/// The script that opens every `*.sealed` file under [`CONFIG_DIR`] (see [`super::seal`]) with
/// the key in this server's metadata: from the metadata service, or from a config drive when
/// the service does not answer. Each file's tag is checked before it is decrypted; the opened
/// file replaces the sealed one atomically, so a second run (kubeadm failed and the unit
/// restarts, after flatstack may have deleted the key) finds nothing left to open. The keys
/// pass through `openssl`'s arguments for a moment, before the node runs any pod.
/// `FLATSTACK_ROOT` and `FLATSTACK_METADATA_URL` let a test run it on a scratch root.
pub(crate) fn unseal_script() -> String {
    format!(
        r#"#!/bin/bash
# flatstack: opens the secrets sealed into this node's Ignition config (AES-256-CTR, then
# HMAC-SHA256 over IV and ciphertext) with the key in this server's metadata, which flatstack
# deletes once the node has joined.
set -euo pipefail
root=${{FLATSTACK_ROOT:-}}
metadata_url=${{FLATSTACK_METADATA_URL:-{METADATA_URL}}}
say() {{
  echo "flatstack: $*"
  echo "flatstack: $*" > /dev/kmsg 2>/dev/null || true
}}
hex() {{ od -An -v -tx1 | tr -d ' \n'; }}

mapfile -t sealed < <(find "$root{CONFIG_DIR}" -type f -name '*{SEALED_SUFFIX}' | sort)
(( ${{#sealed[@]}} )) || exit 0

key_from() {{ jq -r '.meta["{SEAL_KEY_METADATA}"] // empty' 2>/dev/null || true; }}
key=""
for attempt in 1 2 3 4 5 6 7 8 9 10; do
  if metadata=$(curl -fsS --max-time 5 "$metadata_url"); then
    key=$(key_from <<<"$metadata")
    break
  fi
  sleep 3
done
if [[ -z $key && -e /dev/disk/by-label/config-2 ]]; then
  drive=$(mktemp -d)
  if mount -o ro /dev/disk/by-label/config-2 "$drive"; then
    key=$(key_from < "$drive/openstack/latest/meta_data.json")
    umount "$drive"
  fi
  rmdir "$drive"
fi
if [[ ! $key =~ ^[0-9a-f]{{128}}$ ]]; then
  say "the key to this node's sealed secrets is not in its server's metadata ({SEAL_KEY_METADATA}); flatstack deletes it once the node has joined"
  exit 1
fi
cipher_key=${{key:0:64}}
mac_key=${{key:64:64}}

for file in "${{sealed[@]}}"; do
  target=${{file%{SEALED_SUFFIX}}}
  size=$(stat -c %s "$file")
  if (( size < 48 )); then
    say "$target: the sealed file is truncated"
    exit 1
  fi
  body=$((size - 32))
  expected=$(tail -c 32 "$file" | hex)
  actual=$(head -c "$body" "$file" | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$mac_key" -binary | hex)
  if [[ $expected != "$actual" ]]; then
    say "$target: the sealed file does not match this server's key"
    exit 1
  fi
  iv=$(head -c 16 "$file" | hex)
  head -c "$body" "$file" | tail -c +17 \
    | openssl enc -d -aes-256-ctr -K "$cipher_key" -iv "$iv" > "$target.opening"
  chmod 0600 "$target.opening"
  mv -f "$target.opening" "$target"
  rm -f "$file"
done
say "opened ${{#sealed[@]}} sealed file(s)"
"#
    )
}

/// The oneshot unit that bootstraps the node, once: kubelet.conf exists afterwards. kubeadm's
/// output goes to the journal only.
pub(crate) fn kubeadm_unit(bootstrap: Bootstrap) -> String {
    let role = bootstrap.as_str();
    format!(
        r#"[Unit]
Description=flatstack: join this node to its Kubernetes cluster with kubeadm
Wants=network-online.target
After=network-online.target containerd.service coreos-metadata.service systemd-sysext.service
Requires=containerd.service coreos-metadata.service
ConditionPathExists=!/etc/kubernetes/kubelet.conf

[Service]
Type=oneshot
RemainAfterExit=yes
EnvironmentFile=/run/metadata/flatcar
ExecStart={BOOTSTRAP_SCRIPT} {role}
Restart=on-failure
RestartSec=20s
# The journal only: every project member can read the console log through Nova's API. The
# script's own progress lines (no secrets) still reach the console through /dev/kmsg.
StandardOutput=journal
StandardError=journal

[Install]
WantedBy=multi-user.target
"#
    )
}

/// The netfilter rules that keep pods away from the cloud's metadata service.
pub(crate) const METADATA_GUARD_RULES: &str = "/etc/flatstack/metadata-guard.nft";
/// The unit that loads them before the kubelet starts.
pub(crate) const METADATA_GUARD_UNIT: &str = "flatstack-metadata-guard.service";
/// The OpenStack metadata service's address, link-local on every server.
const METADATA_ADDRESS: &str = "169.254.169.254";

/// nftables rules dropping what pods send to the metadata service, which hands this server's
/// user_data to anyone who asks from inside it. Pods reach it through the node's routing and
/// masquerade, so their packets pass the forward hook with a pod address as source. The drop
/// sits in a base chain of flatstack's own table: a verdict `drop` in any base chain is final,
/// whatever flannel and kube-proxy accept in theirs, and reloading the file replaces only this
/// table (it is made, deleted and made again), never anyone else's rules. Host-network pods
/// share the node's own path and are not covered; the metadata service's IPv6 address is
/// link-local and never routed from pods.
pub(crate) fn metadata_guard_rules(spec: &ClusterSpec) -> String {
    let pods = spec.network.pod_cidr;
    format!(
        "#!/usr/sbin/nft -f\n\
         # flatstack: pods ({pods}) may not reach the metadata service ({METADATA_ADDRESS}).\n\
         table inet flatstack_metadata_guard\n\
         delete table inet flatstack_metadata_guard\n\
         table inet flatstack_metadata_guard {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter - 10; policy accept;\n\
         \t\tip saddr {pods} ip daddr {METADATA_ADDRESS} counter drop\n\
         \t}}\n\
         }}\n"
    )
}

/// Loads [`metadata_guard_rules`] before the network and the kubelet come up; the kubelet
/// requires it, so no pod ever runs on a node without the rules.
pub(crate) fn metadata_guard_unit() -> String {
    format!(
        r#"[Unit]
Description=flatstack: keep pods away from the cloud's metadata service
Wants=network-pre.target
Before=network-pre.target kubelet.service {KUBEADM_UNIT}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=nft -f {METADATA_GUARD_RULES}

[Install]
WantedBy=multi-user.target
RequiredBy=kubelet.service
"#
    )
}

/// `/etc/flatcar/update.conf`: update group and server; locksmithd never reboots on its own.
pub(crate) fn update_conf(spec: &ClusterSpec) -> String {
    let updates = &spec.updates;
    let mut text = format!(
        "# flatstack: Flatcar updates. Reboots are coordinated in the cluster (kured), one node\n\
         # at a time, {} {}-{} {}; locksmithd is masked.\nGROUP={}\nREBOOT_STRATEGY=off\n",
        updates.reboot_window.days.join(","),
        updates.reboot_window.start,
        updates.reboot_window.end,
        updates.reboot_window.timezone,
        updates.group
    );
    match (&updates.server, updates.enabled) {
        (_, false) => text
            .push_str("# Updates are off: an invalid server stops downloads.\nSERVER=disabled\n"),
        (Some(server), true) => text.push_str(&format!("SERVER={server}\n")),
        (None, true) => {}
    }
    text
}

/// The sysupdate transfer that fetches patch releases of the pinned Kubernetes minor.
pub(crate) fn sysupdate_transfer(spec: &ClusterSpec, source_dir: &str) -> String {
    let series = spec.kubernetes.version.minor_series();
    format!(
        r#"# flatstack: patch releases of Kubernetes {series} for systemd-sysupdate.
[Transfer]
Verify=false

[Source]
Type=url-file
Path={source_dir}
MatchPattern=kubernetes-v{series}.@v-%a.raw

[Target]
InstancesMax=3
Type=regular-file
Path={SYSEXT_DIR}
CurrentSymlink={SYSEXT_LINK}
"#
    )
}

/// A transfer that never matches, so the default `systemd-sysupdate` run has one to read.
pub(crate) const SYSUPDATE_NOOP: &str = r#"# flatstack: placeholder transfer; the Flatcar OS itself updates through update-engine.
[Source]
Type=regular-file
Path=/
MatchPattern=invalid@v.raw

[Target]
Type=regular-file
Path=/
"#;

/// Drop-in for `systemd-sysupdate.service`: update the Kubernetes sysext, and when the active
/// image changed, ask kured for a reboot.
pub(crate) fn sysupdate_dropin() -> String {
    format!(
        r#"[Service]
ExecStartPre=/usr/bin/sh -c 'readlink -f {SYSEXT_LINK} > /run/flatstack-kubernetes-sysext'
ExecStartPre=/usr/lib/systemd/systemd-sysupdate -C kubernetes update
ExecStartPost=/usr/bin/sh -c '[ "$$(readlink -f {SYSEXT_LINK})" = "$$(cat /run/flatstack-kubernetes-sysext)" ] || touch /run/reboot-required'
"#
    )
}
