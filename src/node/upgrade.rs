//! The host side of one node's upgrade to another Kubernetes release, as two scripts that run
//! as host actions (see `kube::host_action`), in kubeadm's order with flatstack's drain between
//! them:
//!
//! 1. **stage**: the sysupdate timer stopped (no patch of the old minor lands meanwhile); the
//!    new release's sysext image downloaded beside the active one and verified by its SHA-256
//!    (a mismatch stops here, nothing activated); the image mounted read-only and *its*
//!    kubeadm run (`upgrade apply vX.Y.Z --yes` on the first control plane, `upgrade node`
//!    on the others and the workers) while the old kubelet keeps running.
//! 2. **activate** (after the drain): the kubelet masked for the duration (the bakery's
//!    `multi-user.target` drop-in `Upholds=` it, which would restart a stopped one at once) and
//!    stopped; the sysext link pointed at the new image and `systemd-sysext refresh` run (on
//!    a failure the old image goes back and the kubelet starts again, so the node keeps
//!    running and answering); the
//!    sysupdate transfer switched to the new minor (the old one's removed, so the next patch
//!    never pulls the node back) and other minors' images removed; the kubelet started; the
//!    timer started again when patch updates are on.
//!
//! Each step leaves a mark under the node's upgrade directory, so a script run again after an
//! interruption does only what is left. Paths are parameters ([`HostPaths`]) so the scripts can
//! run against a scratch root in tests; nodes use [`HostPaths::NODE`].

use crate::pins::KubernetesVersion;
use crate::plan::versions::Kubeadm;
use crate::spec::ClusterSpec;

use super::units::{SYSEXT_DIR, SYSEXT_LINK, sysupdate_transfer};

/// Where the scripts read and write on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPaths {
    /// Directory of the Kubernetes sysext images.
    pub sysext_dir: &'static str,
    /// The link `systemd-sysext` merges.
    pub sysext_link: &'static str,
    /// Directory of the Kubernetes sysupdate transfers (`-C kubernetes`).
    pub sysupdate_dir: &'static str,
    /// Where the new image is mounted to run its kubeadm.
    pub mount_dir: &'static str,
    /// Where the marks of finished steps are kept, per release.
    pub marks_dir: &'static str,
}

impl HostPaths {
    /// A Flatcar node's.
    pub const NODE: HostPaths = HostPaths {
        sysext_dir: SYSEXT_DIR,
        sysext_link: SYSEXT_LINK,
        sysupdate_dir: "/etc/sysupdate.kubernetes.d",
        mount_dir: "/run/flatstack/kubernetes",
        marks_dir: "/var/lib/flatstack/upgrade",
    };
}

/// The two host actions' names for an upgrade to `to`: unit and file names (at most 24
/// characters: `k8s-v1-37-10-activate` is 21).
pub fn action_names(to: KubernetesVersion) -> (String, String) {
    let tag = format!("k8s-v{}-{}-{}", to.major, to.minor, to.patch);
    (format!("{tag}-stage"), format!("{tag}-activate"))
}

/// Single-quoted for bash.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The stage script: timer stopped, image staged and verified, the new kubeadm run. `spec`
/// is the pinned spec of the release moved to (its digest set).
pub fn stage_script(spec: &ClusterSpec, kubeadm: Kubeadm, paths: &HostPaths) -> String {
    let release = spec.kubernetes.version;
    let sha256 = spec.kubernetes.sysext_sha256.as_deref().unwrap_or_default();
    let kubeadm_command = match kubeadm {
        Kubeadm::Apply => format!("upgrade apply {release} --yes"),
        Kubeadm::Node => "upgrade node".to_string(),
    };
    format!(
        r#"# flatstack: stage Kubernetes {release} on this node and run its kubeadm.
release={release}
image={image}
url={url}
sha256={sha256}
marks={marks}/{release}
mnt={mount}-{release}
mkdir -p "$marks" {dir}

# No patch of the old minor may land while the node moves.
systemctl stop systemd-sysupdate.timer systemd-sysupdate.service

verified() {{
  [ -e "$1" ] && printf '%s  %s\n' "$sha256" "$1" | sha256sum --check --status
}}
if ! verified "$image"; then
  curl --fail --silent --show-error --location --retry 5 --output "$image.part" "$url"
  if ! verified "$image.part"; then
    rm -f "$image.part"
    echo "the image downloaded from $url does not have SHA-256 $sha256; nothing was activated" >&2
    exit 3
  fi
  mv "$image.part" "$image"
fi

if [ ! -e "$marks/kubeadm" ]; then
  mkdir -p "$mnt"
  mountpoint --quiet "$mnt" || mount -o loop,ro "$image" "$mnt"
  # Unmounted by hand: the host action's own EXIT handler records how the script ended.
  status=0
  "$mnt/usr/bin/kubeadm" {kubeadm_command} || status=$?
  umount "$mnt"
  if [ "$status" -ne 0 ]; then
    echo "kubeadm {kubeadm_command} of $release failed (exit $status); the node still runs its old release" >&2
    exit "$status"
  fi
  touch "$marks/kubeadm"
fi
"#,
        image = quoted(&format!(
            "{}/{}",
            paths.sysext_dir,
            release.sysext_file_name()
        )),
        url = quoted(&spec.kubernetes.sysext_url),
        sha256 = quoted(sha256),
        marks = quoted(paths.marks_dir),
        mount = quoted(paths.mount_dir),
        dir = quoted(paths.sysext_dir),
    )
}

/// The activate script: the kubelet kept down while the image is swapped, the sysupdate
/// transfer switched, the kubelet started at the new release.
pub fn activate_script(spec: &ClusterSpec, paths: &HostPaths) -> String {
    let release = spec.kubernetes.version;
    let series = release.minor_series();
    let transfer = match &spec.kubernetes.sysupdate_url {
        Some(source_dir) => format!(
            "cat > \"$transfers/kubernetes-v{series}.conf\" <<'TRANSFER'\n{}TRANSFER\n",
            sysupdate_transfer(spec, source_dir)
        ),
        None => "# Patch updates are off: no transfer.\n".to_string(),
    };
    let timer = match spec.kubernetes.sysupdate_url {
        Some(_) => "systemctl start systemd-sysupdate.timer\n",
        None => "",
    };
    format!(
        r#"# flatstack: activate Kubernetes {release} on this (drained) node.
release={release}
image={image}
link={link}
transfers={transfers}
marks={marks}/{release}
[ -e "$marks/kubeadm" ] || {{ echo "kubeadm of $release has not run on this node" >&2; exit 4; }}

if [ ! -e "$marks/activated" ]; then
  if [ ! -e "$marks/swapped" ]; then
    # The image to go back to, kept from the first try (a later one may find the new link).
    if [ ! -s "$marks/previous" ] && current=$(readlink "$link"); then
      printf '%s\n' "$current" > "$marks/previous"
    fi
    # The bakery's multi-user.target Upholds= the kubelet: masked, a stopped one stays down.
    systemctl mask --runtime kubelet.service
    systemctl stop kubelet.service
    if ! {{ ln -sfn "$image" "$link.new" && mv -T "$link.new" "$link" && systemd-sysext refresh; }}; then
      # Back to the old image, and the kubelet up again: the node keeps running (and
      # answering node Jobs) at its old release. Each step is tried whatever the last did.
      previous=$(cat "$marks/previous" 2>/dev/null || true)
      if [ -n "$previous" ]; then
        {{ ln -sfn "$previous" "$link.new" && mv -T "$link.new" "$link"; }} || true
        systemd-sysext refresh || true
        echo "activating $release failed; $previous is put back" >&2
      else
        echo "activating $release failed; no earlier image is known to put back" >&2
      fi
      systemctl unmask --runtime kubelet.service || true
      systemctl start kubelet.service || true
      exit 5
    fi
    touch "$marks/swapped"
  fi
  systemctl unmask --runtime kubelet.service
  mkdir -p "$transfers"
  for old in "$transfers"/kubernetes-v*.conf; do
    [ "$old" = "$transfers/kubernetes-v{series}.conf" ] || rm -f "$old"
  done
{transfer}  for other in {dir}/kubernetes-v*.raw; do
    case "$other" in
      {dir}/kubernetes-v{series}.*) ;;
      *) rm -f "$other" ;;
    esac
  done
  systemctl daemon-reload
  systemctl restart kubelet.service
  touch "$marks/activated"
fi
{timer}"#,
        image = quoted(&format!(
            "{}/{}",
            paths.sysext_dir,
            release.sysext_file_name()
        )),
        link = quoted(paths.sysext_link),
        transfers = quoted(paths.sysupdate_dir),
        marks = quoted(paths.marks_dir),
        dir = paths.sysext_dir,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_script_replaces_the_host_actions_exit_trap() {
        let spec = crate::spec::test_spec("");
        for script in [
            stage_script(&spec, Kubeadm::Apply, &HostPaths::NODE),
            activate_script(&spec, &HostPaths::NODE),
        ] {
            assert!(!script.contains("trap"), "{script}");
        }
    }

    #[test]
    fn action_names_fit_a_host_action() {
        let (stage, activate) = action_names(KubernetesVersion::new(1, 37, 10));
        assert_eq!(stage, "k8s-v1-37-10-stage");
        assert_eq!(activate, "k8s-v1-37-10-activate");
        assert!(crate::kube::host_action::HostAction::new(&activate, "n", "true").is_ok());
    }

    #[test]
    fn values_are_quoted_for_bash() {
        assert_eq!(quoted("a'b"), r"'a'\''b'");
    }
}
