//! Every version flatstack pins, in one place: the Kubernetes system extension images nodes
//! boot with (by SHA-256) and the range of Kubernetes releases the node configs are made for.
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
    fn pinned_digests_are_sha256_hex_within_the_supported_range() {
        for (version, sha) in KUBERNETES_SYSEXTS {
            assert_eq!(sha.len(), 64, "{version}");
            assert!(sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
            assert!((OLDEST_MINOR..=NEWEST_MINOR).contains(&version.minor));
        }
    }
}
