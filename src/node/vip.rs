//! The holder of the API's address with 3 or 5 control planes behind a VIP: kube-vip as a
//! static pod on every control plane. The holders elect one among them through a Lease in the
//! API (so a control plane whose API server is down lets the address go), and the elected one
//! puts the address on its default-route interface and announces it by gratuitous ARP, which
//! Neutron lets through because the address is an allowed address pair of every control
//! plane's port.
//!
//! kube-vip reaches the API through its kubeconfig with the server replaced by
//! `kubernetes:6443`, which the pod's host alias points at 127.0.0.1. Since Kubernetes 1.29
//! kubeadm's `admin.conf` gets its rights from RBAC, which does not exist yet while `kubeadm
//! init` runs, so the initializing control plane starts it with `super-admin.conf` and switches
//! it to `admin.conf` afterwards; joining control planes start it once `kubeadm join` has
//! written `admin.conf` (until then the endpoint is held by a control plane that has joined).
//! `kubeadm reset` empties `/etc/kubernetes/manifests`, so a failed attempt removes it and
//! the next one places it again (kubeadm `phases/reset/cleanupnode.go`).

use std::net::Ipv4Addr;

use serde_json::json;

use super::NodeError;
use crate::pins::KUBE_VIP_IMAGE;

/// Where the manifest waits on a control plane until the bootstrap script places it.
pub(crate) const VIP_TEMPLATE: &str = "/etc/flatstack/kube-vip.yaml.in";
/// Replaced by the kubeconfig kube-vip uses: `super-admin.conf` during `kubeadm init`,
/// `admin.conf` afterwards.
pub(crate) const KUBECONFIG_PLACEHOLDER: &str = "@KUBECONFIG@";
/// The Lease the holders elect one of them by (kube-vip's default, `plndr-cp-lock`), in
/// `kube-system`: its `holderIdentity` is the control plane holding the API's address.
pub const VIP_LEASE: &str = "plndr-cp-lock";
/// How long a holder's lease lasts, and how often it is renewed (seconds): a failed holder's
/// address moves within about the lease's length.
const LEASE_SECONDS: u32 = 15;
const RENEW_DEADLINE_SECONDS: u32 = 10;
const RETRY_SECONDS: u32 = 2;

/// kube-vip's static pod for the API's `address`.
pub(crate) fn static_pod(address: Ipv4Addr) -> Result<String, NodeError> {
    let env = |name: &str, value: String| json!({ "name": name, "value": value });
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "kube-vip", "namespace": "kube-system" },
        "spec": {
            "hostNetwork": true,
            "hostAliases": [{ "ip": "127.0.0.1", "hostnames": ["kubernetes"] }],
            "priorityClassName": "system-node-critical",
            "containers": [{
                "name": "kube-vip",
                "image": KUBE_VIP_IMAGE,
                "imagePullPolicy": "IfNotPresent",
                "args": ["manager"],
                "env": [
                    env("address", address.to_string()),
                    env("port", "6443".into()),
                    env("vip_subnet", "32".into()),
                    env("vip_arp", "true".into()),
                    env("cp_enable", "true".into()),
                    env("cp_namespace", "kube-system".into()),
                    env("svc_enable", "false".into()),
                    env("vip_leaderelection", "true".into()),
                    env("vip_leasename", VIP_LEASE.into()),
                    env("vip_leaseduration", LEASE_SECONDS.to_string()),
                    env("vip_renewdeadline", RENEW_DEADLINE_SECONDS.to_string()),
                    env("vip_retryperiod", RETRY_SECONDS.to_string()),
                    {
                        "name": "vip_nodename",
                        "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } }
                    },
                ],
                "securityContext": {
                    "capabilities": { "add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"] }
                },
                "volumeMounts": [{
                    "name": "kubeconfig",
                    "mountPath": "/etc/kubernetes/admin.conf",
                    "readOnly": true
                }],
            }],
            "volumes": [{
                "name": "kubeconfig",
                "hostPath": { "path": KUBECONFIG_PLACEHOLDER, "type": "File" }
            }],
        },
    });
    serde_saphyr::to_string(&pod).map_err(|e| NodeError::Yaml(e.to_string()))
}
