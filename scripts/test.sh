#!/usr/bin/env bash
# The project's whole test run, as CI runs it: formatting, lints, unit and integration tests.
# Installs what the tests check against when it is missing: Debian's real Ignition
# (ignition-validate and the ignition binary), shellcheck (host actions' scripts), openssl,
# kubectl, gpg, qemu-img and bzip2 (to make signed Flatcar-like releases), nftables, iptables
# and iproute2 (the metadata guard, loaded into network namespaces the tests make), jq and curl
# (the nodes' unseal script), etcd (a real three-member cluster), the upstream Kubernetes
# schemas (kubernetes-validate from PyPI), and a real OpenStack on 127.0.0.1
# (scripts/local-openstack.sh, left running afterwards for the next run). Routes the local
# OpenStack's floating-IP range nowhere while it runs.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v ignition-validate >/dev/null || missing+=(ignition)
command -v openssl >/dev/null || missing+=(openssl)
command -v kubectl >/dev/null || missing+=(kubernetes-client)
command -v useradd >/dev/null || missing+=(passwd)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v gpg >/dev/null || missing+=(gnupg)
command -v qemu-img >/dev/null || missing+=(qemu-utils)
command -v bzip2 >/dev/null || missing+=(bzip2)
command -v nft >/dev/null || missing+=(nftables)
command -v iptables >/dev/null || missing+=(iptables)
command -v ip >/dev/null || missing+=(iproute2)
command -v jq >/dev/null || missing+=(jq)
command -v curl >/dev/null || missing+=(curl)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)
command -v shellcheck >/dev/null || missing+=(shellcheck)
sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
if ((${#missing[@]})); then
  echo "==> installing ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The local OpenStack's floating IPs (203.0.113.0/24, TEST-NET-3) are on no machine: for the
# run the range is routed nowhere, so anything that dials one fails at once, on this machine,
# instead of sending a packet off it. Package registries this machine reaches at an address
# inside the range (some build networks resolve them there) keep a host route, and the local
# OpenStack never hands those addresses out as floating IPs.
FLOATING_RANGE=203.0.113.0/24
REGISTRIES=(deb.debian.org security.debian.org pypi.org files.pythonhosted.org index.crates.io
  static.crates.io)
reserved=()
for host in "${REGISTRIES[@]}"; do
  while read -r address _; do
    [[ $address == 203.0.113.* ]] && reserved+=("$address")
  done < <(getent ahostsv4 "$host" || true)
done
if ((${#reserved[@]})); then
  mapfile -t reserved < <(printf '%s\n' "${reserved[@]}" | sort -u)
fi
export FLATSTACK_RESERVED_ADDRESSES="${reserved[*]}"
read -r -a default_route < <(ip -4 route show default | head -n 1)
unroute() {
  "${sudo[@]}" ip route del unreachable "$FLOATING_RANGE" 2>/dev/null || true
  for address in "${reserved[@]}"; do
    "${sudo[@]}" ip route del "$address/32" 2>/dev/null || true
  done
}
trap unroute EXIT
if ((${#default_route[@]})); then
  for address in "${reserved[@]}"; do
    "${sudo[@]}" ip route replace "$address/32" "${default_route[@]:1}"
  done
fi
"${sudo[@]}" ip route replace unreachable "$FLOATING_RANGE"
echo "==> $FLOATING_RANGE routed nowhere${reserved:+ (host routes kept for registries at ${reserved[*]})}"
export FLATSTACK_FLOATING_RANGE_UNROUTED=1

# The Kubernetes OpenAPI schemas of every supported minor as JSON schema (strict variants
# too), bundled by the kubernetes-validate package on PyPI, for the schema checks of every
# object flatstack applies.
KUBERNETES_VALIDATE_VERSION=1.37.0
KUBERNETES_VALIDATE_VENV=/var/tmp/flatstack-kubernetes-validate
if [[ $("$KUBERNETES_VALIDATE_VENV/bin/kubernetes-validate" --version 2>/dev/null) != "$KUBERNETES_VALIDATE_VERSION" ]]; then
  echo "==> pip install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION into $KUBERNETES_VALIDATE_VENV"
  python3 -m venv "$KUBERNETES_VALIDATE_VENV"
  "$KUBERNETES_VALIDATE_VENV/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
export FLATSTACK_KUBERNETES_VALIDATE=$KUBERNETES_VALIDATE_VENV/bin/kubernetes-validate

echo "==> local OpenStack (scripts/local-openstack.sh up)"
scripts/local-openstack.sh up

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "==> cargo test"
cargo test --locked
