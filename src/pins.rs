//! Every version flatstack pins, in one place: the Kubernetes system extension images nodes
//! boot with (by SHA-256), the range of Kubernetes releases the node configs are made for, and
//! the add-ons (container images and Helm charts) installed into every cluster.
//! Upgrading a pin is editing this file and re-running `flatstack up`.

use std::fmt;

/// Where the Flatcar sysext-bakery publishes its images and sysupdate indexes. Digests are
/// not pinned here: the bakery rebuilds images per release, so each cluster reads the digest
/// from the published `SHA256SUMS` once and records it (see `sysext`).
pub(crate) const SYSEXT_BAKERY: &str = "https://extensions.flatcar.org/extensions";

/// A Kubernetes minor flatstack supports, and every pin that depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupportedMinor {
    pub minor: u32,
    /// The last day upstream supports the minor (YYYY-MM-DD), from kubernetes.io/releases.
    pub(crate) end_of_life: &'static str,
    /// A patch release of the minor that `flatstack init` proposes.
    pub proposed_patch: u32,
    /// openstack-cloud-controller-manager chart: the project releases chart `2.N` for
    /// Kubernetes `1.N` and supports that pairing only.
    pub(crate) cloud_controller_chart: &'static str,
    /// openstack-cinder-csi chart, released in step with the cloud controller's.
    pub(crate) cinder_csi_chart: &'static str,
    /// The etcd image kubeadm of the minor runs its stacked etcd with (`kubeadm config images
    /// list`), whose `etcdctl` takes the backups' snapshots: the image the control planes
    /// already hold. etcd's own distroless image since 3.6.5: no shell.
    pub(crate) etcd_image: &'static str,
}

/// The minors upstream supports on 2026-12-02 (kubernetes.io/releases: 1.35, 1.36 and 1.37;
/// 1.33 ended 2026-06-28 and 1.34 on 2026-10-27), oldest first. kubeadm reads the
/// `kubeadm.k8s.io/v1beta4` configuration flatstack writes in all of them.
///
/// Chart versions are tags of kubernetes/cloud-provider-openstack
/// (`openstack-cloud-controller-manager-2.N.P`, `openstack-cinder-csi-2.N.P`), which releases
/// chart `2.N` for Kubernetes `1.N`: 2.35.0 (2026-01-23) and 2.36.0 (2026-05-13) are the
/// newest of their series in the repository. No 2.37 release could be confirmed from here, so
/// 1.37 clusters run 2.36.0, one minor behind (the controllers talk to the API server through
/// client-go, which supports a skew of one minor); move to 2.37 once its tag, values and
/// templates are in `tests/data`. etcd images are each kubeadm release's own `kubeadm config
/// images list` (as kubernetes/minikube records it per release, through v1.35.7, v1.36.3 and
/// v1.37.0-rc.0; kubernetes/kubernetes#135271, #137107, #140333 set them); a 1.37 patch may
/// move to 3.7.1 (#141032, held for the 1.37 code freeze), in which case the snapshot Job pulls
/// 3.7.0-0 beside it and works the same. Proposed patches: 1.35.6 and 1.36.2 are sysext-bakery release
/// tags; 1.37.1 is upstream's (2026-09-15). `init` proposes the newest release the bakery
/// actually lists when it can ask.
pub const SUPPORTED_MINORS: &[SupportedMinor] = &[
    SupportedMinor {
        minor: 35,
        end_of_life: "2027-02-28",
        proposed_patch: 6,
        cloud_controller_chart: "2.35.0",
        cinder_csi_chart: "2.35.0",
        etcd_image: "registry.k8s.io/etcd:3.6.6-0",
    },
    SupportedMinor {
        minor: 36,
        end_of_life: "2027-06-28",
        proposed_patch: 2,
        cloud_controller_chart: "2.36.0",
        cinder_csi_chart: "2.36.0",
        etcd_image: "registry.k8s.io/etcd:3.6.8-0",
    },
    SupportedMinor {
        minor: 37,
        end_of_life: "2027-10-28",
        proposed_patch: 1,
        cloud_controller_chart: "2.36.0",
        cinder_csi_chart: "2.36.0",
        etcd_image: "registry.k8s.io/etcd:3.7.0-0",
    },
];

/// The etcd image of `version`'s minor (see [`SupportedMinor::etcd_image`]); the newest
/// supported minor's for one flatstack does not support (the cluster file refuses those).
pub(crate) fn etcd_image(version: KubernetesVersion) -> &'static str {
    supported_minor(version)
        .or(SUPPORTED_MINORS.last())
        .map_or("registry.k8s.io/etcd:3.7.0-0", |m| m.etcd_image)
}

/// What flatstack pins for `version`'s minor, if it supports it.
pub(crate) fn supported_minor(version: KubernetesVersion) -> Option<&'static SupportedMinor> {
    SUPPORTED_MINORS
        .iter()
        .find(|m| version.major == 1 && m.minor == version.minor)
}

/// The add-on pins that differ between `from`'s minor and `to`'s, as `name old -> new`.
pub(crate) fn minor_pin_changes(from: KubernetesVersion, to: KubernetesVersion) -> Vec<String> {
    let (Some(old), Some(new)) = (supported_minor(from), supported_minor(to)) else {
        return Vec::new();
    };
    [
        (
            "openstack-cloud-controller-manager chart",
            old.cloud_controller_chart,
            new.cloud_controller_chart,
        ),
        (
            "openstack-cinder-csi chart",
            old.cinder_csi_chart,
            new.cinder_csi_chart,
        ),
    ]
    .into_iter()
    .filter(|(_, a, b)| a != b)
    .map(|(name, a, b)| format!("{name} {a} -> {b}"))
    .collect()
}

/// The supported minors for messages: `1.35, 1.36, 1.37`.
pub(crate) fn supported_minors_list() -> String {
    SUPPORTED_MINORS
        .iter()
        .map(|m| format!("1.{}", m.minor))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The Kubernetes release `flatstack init` proposes: the newest supported minor.
pub fn default_kubernetes() -> KubernetesVersion {
    let newest = SUPPORTED_MINORS
        .iter()
        .max_by_key(|m| m.minor)
        .expect("at least one supported minor");
    KubernetesVersion::new(1, newest.minor, newest.proposed_patch)
}

/// A warning when `version`'s minor is past its end of life on `today` (YYYY-MM-DD).
pub(crate) fn end_of_life_warning(version: KubernetesVersion, today: &str) -> Option<String> {
    let minor = supported_minor(version)?;
    (today > minor.end_of_life).then(|| {
        format!(
            "Kubernetes {} reached its end of life on {}: upstream publishes no more fixes for it\n  hint: move to a newer minor ({}), one minor at a time",
            version.minor_series(),
            minor.end_of_life,
            supported_minors_list()
        )
    })
}

/// The in-cluster Helm engine: k3s-io/helm-controller, which turns `HelmChart` resources into
/// Helm install Jobs (the same engine k3s and RKE2 ship). Tags from the project's releases.
pub const HELM_CONTROLLER_IMAGE: &str = "ghcr.io/k3s-io/helm-controller:v0.17.7";
/// The image those Jobs run Helm in, as helm-controller v0.17.7's own manifest names it.
pub(crate) const HELM_JOB_IMAGE: &str = "ghcr.io/k3s-io/klipper-helm:v0.9.10-build20251111";

/// The VIP holder of control planes behind a VIP: kube-vip as a static pod (ARP mode, leader
/// election through the API). Tag v1.2.3 of kube-vip/kube-vip (2026-08-10), as its release
/// workflow publishes it.
pub const KUBE_VIP_IMAGE: &str = "ghcr.io/kube-vip/kube-vip:v1.2.3";

/// The image host actions' launcher runs in (`sh`, `chroot`, `mkdir`, `mv`, `rm`, `cat`, all
/// busybox applets): the official busybox image, tag 1.37.0.
pub const HOST_ACTION_IMAGE: &str = "docker.io/library/busybox:1.37.0";

/// A Helm chart from a repository, at an exact version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chart {
    pub repo: &'static str,
    pub(crate) name: &'static str,
    pub version: &'static str,
}

/// Flannel, the pod network (VXLAN), from the project's chart repository.
pub const FLANNEL: Chart = Chart {
    repo: "https://flannel-io.github.io/flannel/",
    name: "flannel",
    version: "v0.28.9",
};

/// The chart repository of kubernetes/cloud-provider-openstack.
const CLOUD_PROVIDER_OPENSTACK: &str = "https://kubernetes.github.io/cloud-provider-openstack";

/// The cloud controller chart made for `version`'s minor.
pub(crate) fn cloud_controller_chart(version: KubernetesVersion) -> Option<Chart> {
    supported_minor(version).map(|m| Chart {
        repo: CLOUD_PROVIDER_OPENSTACK,
        name: "openstack-cloud-controller-manager",
        version: m.cloud_controller_chart,
    })
}

/// The Cinder CSI chart made for `version`'s minor.
pub(crate) fn cinder_csi_chart(version: KubernetesVersion) -> Option<Chart> {
    supported_minor(version).map(|m| Chart {
        repo: CLOUD_PROVIDER_OPENSTACK,
        name: "openstack-cinder-csi",
        version: m.cinder_csi_chart,
    })
}

/// Traefik, the ingress controller (ingress-nginx was retired in March 2026). Chart 41.3.0
/// deploys Traefik v3.7.11; the image tag is set explicitly so the pin is visible here.
pub const TRAEFIK: Chart = Chart {
    repo: "https://traefik.github.io/charts",
    name: "traefik",
    version: "41.3.0",
};
pub(crate) const TRAEFIK_IMAGE_TAG: &str = "v3.7.11";

/// cert-manager, which gets certificates from Let's Encrypt for the ingress. Its chart
/// versions keep the leading `v`; controller, webhook, cainjector and startupapicheck images
/// share the chart's tag.
pub const CERT_MANAGER: Chart = Chart {
    repo: "https://charts.jetstack.io",
    name: "cert-manager",
    version: "v1.21.1",
};
pub(crate) const CERT_MANAGER_IMAGE_TAG: &str = "v1.21.1";

/// kured, which drains and reboots one node at a time after Flatcar or Kubernetes sysext
/// updates. Chart 6.1.0 deploys kured 1.23.0.
pub const KURED: Chart = Chart {
    repo: "https://kubereboot.github.io/charts",
    name: "kured",
    version: "6.1.0",
};
pub(crate) const KURED_IMAGE_TAG: &str = "1.23.0";

/// The CSI snapshot controller and the external-snapshotter CRDs (`VolumeSnapshot`): the
/// piraeus chart 5.2.0 deploys external-snapshotter v8.6.0 (`tests/data/snapshot-controller-5.2.0`
/// holds its values and templates, `tests/data/external-snapshotter-v8.6.0` the CRDs).
pub const SNAPSHOT_CONTROLLER: Chart = Chart {
    repo: "https://piraeus.io/helm-charts/",
    name: "snapshot-controller",
    version: "5.2.0",
};

/// metrics-server, for `kubectl top` and autoscalers. Chart 3.13.1 deploys v0.8.1.
pub const METRICS_SERVER: Chart = Chart {
    repo: "https://kubernetes-sigs.github.io/metrics-server/",
    name: "metrics-server",
    version: "3.13.1",
};
pub(crate) const METRICS_SERVER_IMAGE_TAG: &str = "v0.8.1";

/// JupyterHub's zero-to-jupyterhub chart 4.4.0 (JupyterHub 5.5.0); its images are tagged with
/// the chart version. `tests/data/z2jh-4.4.0` holds its values schema and defaults.
pub const JUPYTERHUB: Chart = Chart {
    repo: "https://hub.jupyter.org/helm-chart/",
    name: "jupyterhub",
    version: "4.4.0",
};

/// The web server `flatstack smoke` deploys (nginx's stable line).
pub const SMOKE_IMAGE: &str = "docker.io/library/nginx:1.30.0-alpine";

/// A Kubernetes release `MAJOR.MINOR.PATCH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KubernetesVersion {
    pub(crate) major: u32,
    pub minor: u32,
    pub(crate) patch: u32,
}

/// Serialized as people write it: `v1.37.1`.
impl serde::Serialize for KubernetesVersion {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl KubernetesVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        KubernetesVersion {
            major,
            minor,
            patch,
        }
    }

    /// Accepts `1.33.2` and `v1.33.2`; pre-releases are not accepted.
    pub(crate) fn parse(text: &str) -> Option<KubernetesVersion> {
        let digits = text.strip_prefix('v').unwrap_or(text);
        let mut parts = digits.split('.').map(|part| {
            let numeric = !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
            let canonical = part == "0" || !part.starts_with('0');
            if numeric && canonical && part.len() <= 6 {
                part.parse::<u32>().ok()
            } else {
                None
            }
        });
        let version = KubernetesVersion::new(parts.next()??, parts.next()??, parts.next()??);
        parts.next().is_none().then_some(version)
    }

    /// The `X.Y` of this release, as sysupdate names its transfer files.
    pub(crate) fn minor_series(&self) -> String {
        format!("{}.{}", self.major, self.minor)
    }

    /// The bakery's file name for this release on x86-64.
    pub fn sysext_file_name(&self) -> String {
        format!("kubernetes-{self}-x86-64.raw")
    }
}

/// Shown as kubeadm and the bakery spell it: `v1.33.2`.
impl fmt::Display for KubernetesVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_and_without_v() {
        assert_eq!(
            KubernetesVersion::parse("v1.33.2"),
            Some(KubernetesVersion::new(1, 33, 2))
        );
        assert_eq!(
            KubernetesVersion::parse("1.31.10"),
            Some(KubernetesVersion::new(1, 31, 10))
        );
        for bad in [
            "1.33",
            "1.33.2.1",
            "v1.33.x",
            "1.033.2",
            "",
            "1.33.2-rc.1",
            "+1.2.3",
        ] {
            assert_eq!(KubernetesVersion::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn displays_like_kubeadm() {
        let v = KubernetesVersion::new(1, 33, 2);
        assert_eq!(v.to_string(), "v1.33.2");
        assert_eq!(v.sysext_file_name(), "kubernetes-v1.33.2-x86-64.raw");
        assert_eq!(v.minor_series(), "1.33");
    }

    #[test]
    fn every_supported_minor_has_its_own_openstack_charts() {
        for supported in SUPPORTED_MINORS {
            let minor = supported.minor;
            let version = KubernetesVersion::new(1, minor, 0);
            let occm = cloud_controller_chart(version).expect("cloud controller chart");
            let csi = cinder_csi_chart(version).expect("cinder csi chart");
            // Chart 2.N is made for Kubernetes 1.N; at most one minor behind while 2.N is not
            // confirmed released, never ahead.
            for chart in [occm, csi] {
                let chart_minor: u32 = chart
                    .version
                    .split('.')
                    .nth(1)
                    .and_then(|m| m.parse().ok())
                    .expect("2.N.P");
                assert!(chart.version.starts_with("2."), "{chart:?}");
                assert!(
                    chart_minor == minor || chart_minor + 1 == minor,
                    "{chart:?} for 1.{minor}"
                );
            }
        }
        for unsupported in [30, 33, 34, 38] {
            let version = KubernetesVersion::new(1, unsupported, 0);
            assert_eq!(cloud_controller_chart(version), None);
            assert_eq!(supported_minor(version), None);
        }
        for image in [
            HELM_CONTROLLER_IMAGE,
            HELM_JOB_IMAGE,
            SMOKE_IMAGE,
            KUBE_VIP_IMAGE,
            HOST_ACTION_IMAGE,
        ] {
            let tag = image.rsplit_once(':').map(|(_, tag)| tag).unwrap_or("");
            assert!(!tag.is_empty() && tag != "latest", "{image}");
        }
    }

    #[test]
    fn the_support_table_is_ordered_and_dated() {
        let minors: Vec<u32> = SUPPORTED_MINORS.iter().map(|m| m.minor).collect();
        assert_eq!(minors, [35, 36, 37]);
        for pair in SUPPORTED_MINORS.windows(2) {
            assert!(pair[0].end_of_life < pair[1].end_of_life, "{pair:?}");
        }
        for m in SUPPORTED_MINORS {
            let date = m.end_of_life.as_bytes();
            assert!(
                date.len() == 10 && date[4] == b'-' && date[7] == b'-',
                "{m:?}"
            );
        }
        assert_eq!(default_kubernetes(), KubernetesVersion::new(1, 37, 1));
        assert_eq!(supported_minors_list(), "1.35, 1.36, 1.37");
    }

    #[test]
    fn a_minor_past_its_end_of_life_is_warned_about() {
        let v135 = KubernetesVersion::new(1, 35, 4);
        assert_eq!(end_of_life_warning(v135, "2027-02-28"), None);
        let warning = end_of_life_warning(v135, "2027-03-01").expect("past");
        assert!(
            warning.contains("1.35 reached its end of life on 2027-02-28"),
            "{warning}"
        );
        assert_eq!(
            end_of_life_warning(KubernetesVersion::new(1, 37, 1), "2027-03-01"),
            None
        );
    }
}
