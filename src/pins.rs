//! Every version flatstack pins, in one place: the Kubernetes system extension images nodes
//! boot with (by SHA-256), the range of Kubernetes releases the node configs are made for, and
//! the add-ons (container images and Helm charts) installed into every cluster.
//! Upgrading a pin is editing this file and re-running `flatstack up`.

use std::fmt;

/// Where the Flatcar sysext-bakery publishes its images and sysupdate indexes.
pub const SYSEXT_BAKERY: &str = "https://extensions.flatcar.org/extensions";

/// Oldest Kubernetes minor whose kubeadm reads `kubeadm.k8s.io/v1beta4` (the config flatstack writes).
pub const OLDEST_MINOR: u32 = 31;
/// Newest Kubernetes minor the node configs were checked against.
pub const NEWEST_MINOR: u32 = 35;

/// Kubernetes sysext images from the bakery whose SHA-256 flatstack pins. Each digest must be
/// read from the bakery's published `SHA256SUMS`, with its source named in the README. None
/// could be checked from the machines flatstack is developed on (no route to the bakery), so
/// the table is empty and cluster files give `kubernetes.sysext_sha256` themselves.
pub const KUBERNETES_SYSEXTS: &[(KubernetesVersion, &str)] = &[];

/// The Kubernetes release `flatstack init` proposes.
pub const DEFAULT_KUBERNETES: KubernetesVersion = KubernetesVersion::new(1, 33, 5);

/// The Kubernetes release `flatstack init` proposes: the newest pinned, or the default.
pub fn default_kubernetes() -> KubernetesVersion {
    KUBERNETES_SYSEXTS
        .iter()
        .map(|(v, _)| *v)
        .max()
        .unwrap_or(DEFAULT_KUBERNETES)
}

/// The pinned SHA-256 of the bakery's image for `version`, if flatstack knows it.
pub fn kubernetes_sysext_sha256(version: KubernetesVersion) -> Option<&'static str> {
    KUBERNETES_SYSEXTS
        .iter()
        .find(|(v, _)| *v == version)
        .map(|(_, sha)| *sha)
}

/// The in-cluster Helm engine: k3s-io/helm-controller, which turns `HelmChart` resources into
/// Helm install Jobs (the same engine k3s and RKE2 ship). Tags from the project's releases.
pub const HELM_CONTROLLER_IMAGE: &str = "ghcr.io/k3s-io/helm-controller:v0.17.7";
/// The image those Jobs run Helm in, as helm-controller v0.17.7's own manifest names it.
pub const HELM_JOB_IMAGE: &str = "ghcr.io/k3s-io/klipper-helm:v0.9.10-build20251111";

/// A Helm chart from a repository, at an exact version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chart {
    pub repo: &'static str,
    pub name: &'static str,
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

/// openstack-cloud-controller-manager and Cinder CSI charts, by Kubernetes minor: the project
/// releases chart `2.N` for Kubernetes `1.N` and supports that pairing only. Newest patch tag
/// of each series in the repository (chart tags `openstack-cloud-controller-manager-2.N.P`,
/// `openstack-cinder-csi-2.N.P`).
const OPENSTACK_CHARTS: &[(u32, &str, &str)] = &[
    (31, "2.31.4", "2.31.8"),
    (32, "2.32.1", "2.32.2"),
    (33, "2.33.1", "2.33.1"),
    (34, "2.34.2", "2.34.3"),
    (35, "2.35.0", "2.35.0"),
];

/// The cloud controller chart made for `version`'s minor.
pub fn cloud_controller_chart(version: KubernetesVersion) -> Option<Chart> {
    openstack_charts(version).map(|(occm, _)| Chart {
        repo: CLOUD_PROVIDER_OPENSTACK,
        name: "openstack-cloud-controller-manager",
        version: occm,
    })
}

/// The Cinder CSI chart made for `version`'s minor.
pub fn cinder_csi_chart(version: KubernetesVersion) -> Option<Chart> {
    openstack_charts(version).map(|(_, csi)| Chart {
        repo: CLOUD_PROVIDER_OPENSTACK,
        name: "openstack-cinder-csi",
        version: csi,
    })
}

fn openstack_charts(version: KubernetesVersion) -> Option<(&'static str, &'static str)> {
    OPENSTACK_CHARTS
        .iter()
        .find(|(minor, _, _)| version.major == 1 && *minor == version.minor)
        .map(|(_, occm, csi)| (*occm, *csi))
}

/// Traefik, the ingress controller (ingress-nginx was retired in March 2026). Chart 41.3.0
/// deploys Traefik v3.7.11; the image tag is set explicitly so the pin is visible here.
pub const TRAEFIK: Chart = Chart {
    repo: "https://traefik.github.io/charts",
    name: "traefik",
    version: "41.3.0",
};
pub const TRAEFIK_IMAGE_TAG: &str = "v3.7.11";

/// cert-manager, which gets certificates from Let's Encrypt for the ingress. Its chart
/// versions keep the leading `v`; controller, webhook, cainjector and startupapicheck images
/// share the chart's tag.
pub const CERT_MANAGER: Chart = Chart {
    repo: "https://charts.jetstack.io",
    name: "cert-manager",
    version: "v1.21.1",
};
pub const CERT_MANAGER_IMAGE_TAG: &str = "v1.21.1";

/// kured, which drains and reboots one node at a time after Flatcar or Kubernetes sysext
/// updates. Chart 6.1.0 deploys kured 1.23.0.
pub const KURED: Chart = Chart {
    repo: "https://kubereboot.github.io/charts",
    name: "kured",
    version: "6.1.0",
};
pub const KURED_IMAGE_TAG: &str = "1.23.0";

/// metrics-server, for `kubectl top` and autoscalers. Chart 3.13.1 deploys v0.8.1.
pub const METRICS_SERVER: Chart = Chart {
    repo: "https://kubernetes-sigs.github.io/metrics-server/",
    name: "metrics-server",
    version: "3.13.1",
};
pub const METRICS_SERVER_IMAGE_TAG: &str = "v0.8.1";

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
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
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
    pub fn parse(text: &str) -> Option<KubernetesVersion> {
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
    pub fn minor_series(&self) -> String {
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
        for minor in OLDEST_MINOR..=NEWEST_MINOR {
            let version = KubernetesVersion::new(1, minor, 0);
            let occm = cloud_controller_chart(version).expect("cloud controller chart");
            let csi = cinder_csi_chart(version).expect("cinder csi chart");
            // Chart 2.N is made for Kubernetes 1.N.
            assert!(occm.version.starts_with(&format!("2.{minor}.")), "{occm:?}");
            assert!(csi.version.starts_with(&format!("2.{minor}.")), "{csi:?}");
        }
        assert_eq!(
            cloud_controller_chart(KubernetesVersion::new(1, 30, 0)),
            None
        );
        for image in [HELM_CONTROLLER_IMAGE, HELM_JOB_IMAGE, SMOKE_IMAGE] {
            let tag = image.rsplit_once(':').map(|(_, tag)| tag).unwrap_or("");
            assert!(!tag.is_empty() && tag != "latest", "{image}");
        }
    }

    #[test]
    fn pinned_digests_are_sha256_hex_within_the_supported_range() {
        for (version, sha) in KUBERNETES_SYSEXTS {
            assert_eq!(sha.len(), 64, "{version}");
            assert!(sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
            assert!((OLDEST_MINOR..=NEWEST_MINOR).contains(&version.minor));
        }
    }
}
