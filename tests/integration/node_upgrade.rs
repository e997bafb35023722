//! A node's upgrade scripts, run for real: each as its host action runs it (`bash`, the
//! action's own record in a scratch `/var/lib`), against a scratch root, with recording
//! stand-ins for what only a Flatcar host has (`systemctl`, `systemd-sysext`, the loop mount,
//! `curl`, and the new image's `kubeadm`, which the mount stand-in puts where a mounted image
//! has it). `sha256sum`, `ln`, `mv`, `readlink` and the shell are Debian's. Both pass
//! shellcheck.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use flatstack::kube::host_action::HostAction;
use flatstack::node::upgrade::{HostPaths, action_names, activate_script, stage_script};
use flatstack::plan::versions::Kubeadm;
use flatstack::spec::ClusterSpec;

use crate::host_action::on_host;
use crate::support::*;

/// The new image's bytes, and their digest.
const IMAGE: &[u8] = b"kubernetes v1.37.1 sysext image (squashfs in life)\n";

/// A stand-in that logs `name args` and does `body`.
fn stand_in(bin: &Path, name: &str, body: &str) {
    let path = bin.join(name);
    std::fs::write(
        &path,
        format!("#!/bin/bash\nprintf '%s\\n' \"{name} $*\" >> \"$LOG\"\n{body}\n"),
    )
    .expect("write stand-in");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("mode");
}

/// A scratch Flatcar host at release v1.36.2, with its stand-ins.
struct Host {
    workspace: Workspace,
    paths: HostPaths,
}

impl Host {
    fn new() -> Host {
        let workspace = Workspace::new();
        let root = workspace.path("host");
        let leak = |p: PathBuf| -> &'static str {
            Box::leak(p.to_string_lossy().into_owned().into_boxed_str())
        };
        let paths = HostPaths {
            sysext_dir: leak(root.join("opt/extensions/kubernetes")),
            sysext_link: leak(root.join("etc/extensions/kubernetes.raw")),
            sysupdate_dir: leak(root.join("etc/sysupdate.kubernetes.d")),
            mount_dir: leak(root.join("run/flatstack/kubernetes")),
            marks_dir: leak(root.join("var/lib/flatstack/upgrade")),
        };
        for dir in [
            paths.sysext_dir,
            paths.sysupdate_dir,
            "var/lib/flatstack/actions",
        ] {
            std::fs::create_dir_all(root.join(dir)).expect("dirs");
        }
        std::fs::create_dir_all(root.join("etc/extensions")).expect("dirs");
        let old = format!("{}/kubernetes-v1.36.2-x86-64.raw", paths.sysext_dir);
        std::fs::write(&old, b"old image").expect("old image");
        std::os::unix::fs::symlink(&old, paths.sysext_link).expect("link");
        std::fs::write(
            format!("{}/kubernetes-v1.36.conf", paths.sysupdate_dir),
            "old transfer",
        )
        .expect("old transfer");
        std::fs::write(workspace.path("image"), IMAGE).expect("image");
        let bin = workspace.path("bin");
        std::fs::create_dir_all(&bin).expect("bin");
        stand_in(&bin, "systemctl", "");
        stand_in(&bin, "systemd-sysext", r#"exit "${SYSEXT_EXIT:-0}""#);
        stand_in(
            &bin,
            "curl",
            r#"out=""; while [ $# -gt 0 ]; do [ "$1" = --output ] && out=$2; shift; done; cp "$IMAGE_SOURCE" "$out""#,
        );
        stand_in(
            &bin,
            "mount",
            r#"mnt=${!#}; mkdir -p "$mnt/usr/bin"; touch "$mnt/.mounted"
printf '#!/bin/bash\nprintf "%%s\\n" "kubeadm $*" >> "$LOG"\nexit "${KUBEADM_EXIT:-0}"\n' > "$mnt/usr/bin/kubeadm"
chmod +x "$mnt/usr/bin/kubeadm""#,
        );
        std::fs::write(
            bin.join("mountpoint"),
            "#!/bin/bash\n[ -e \"${!#}/.mounted\" ]\n",
        )
        .expect("mountpoint");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            bin.join("mountpoint"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("mode");
        stand_in(&bin, "umount", r#"rm -rf "$1/usr" "$1/.mounted""#);
        Host { workspace, paths }
    }

    fn root(&self) -> PathBuf {
        self.workspace.path("host")
    }

    /// Runs `body` as host action `name` runs it: its exit code, and the stand-ins' log
    /// since the last run (the scratch root's path shown as `<root>`).
    fn run(&self, name: &str, body: &str, envs: &[(&str, &str)]) -> (Option<i32>, Vec<String>) {
        let action = HostAction::new(name, "demo-default-1", body).expect("valid");
        let script = self.workspace.path(&format!("{name}.sh"));
        std::fs::write(&script, action.script()).expect("script");
        let log = self.workspace.path("log");
        let _ = std::fs::remove_file(&log);
        let path = format!(
            "{}:{}",
            self.workspace.path("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let image = self.workspace.path("image");
        let script_text = script.to_string_lossy().into_owned();
        let mut all: Vec<(&str, &str)> = vec![
            ("LOG", log.to_str().expect("utf-8")),
            ("IMAGE_SOURCE", image.to_str().expect("utf-8")),
        ];
        all.extend_from_slice(envs);
        // The stand-ins come first only for the script: the bind mount is the real one.
        let path = format!("PATH={path}");
        let output: Output = on_host(&self.root(), &all, "env", &[&path, "bash", &script_text]);
        let root = self.root().to_string_lossy().into_owned();
        let lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| l.replace(&root, "<root>"))
            .collect();
        assert!(
            output.status.success() || !stderr(&output).is_empty(),
            "a failure says why"
        );
        (output.status.code(), lines)
    }
}

fn spec_at(version: &str, sha256: &str) -> ClusterSpec {
    let text = format!(
        "name = \"demo\"\ncloud = \"c\"\n[kubernetes]\nversion = \"{version}\"\nsysext_sha256 = \"{sha256}\"\n[control_plane]\nflavor = \"m3.small\"\n"
    );
    ClusterSpec::parse("cluster.toml", &text).expect("valid cluster file")
}

fn image_sha256() -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(IMAGE))
}

#[test]
fn the_upgrade_scripts_pass_shellcheck() {
    require_tool("shellcheck");
    let spec = spec_at("1.37.1", &image_sha256());
    let workspace = Workspace::new();
    for (name, body) in [
        (
            "apply",
            stage_script(&spec, Kubeadm::Apply, &HostPaths::NODE),
        ),
        ("node", stage_script(&spec, Kubeadm::Node, &HostPaths::NODE)),
        ("activate", activate_script(&spec, &HostPaths::NODE)),
    ] {
        let action = HostAction::new(name, "n", &body).expect("valid");
        let file = workspace.path(name);
        std::fs::write(&file, action.script()).expect("write");
        let output = Command::new("shellcheck")
            .args(["--shell", "bash", "--severity", "style"])
            .arg(&file)
            .output()
            .expect("run shellcheck");
        assert!(output.status.success(), "{name}:\n{}", stdout(&output));
    }
}

/// The first control plane's turn: stage (timer stopped, image fetched and verified, the new
/// kubeadm's `upgrade apply`), then activate; each run again does only what is left.
#[test]
fn the_first_control_plane_stages_applies_and_activates_in_order() {
    require_tool("unshare");
    let host = Host::new();
    let sha = image_sha256();
    let spec = spec_at("1.37.1", &sha);
    let (stage, activate) = action_names(flatstack::pins::KubernetesVersion::new(1, 37, 1));
    let stage_body = stage_script(&spec, Kubeadm::Apply, &host.paths);
    let activate_body = activate_script(&spec, &host.paths);
    let new_image = "<root>/opt/extensions/kubernetes/kubernetes-v1.37.1-x86-64.raw";
    let mount = "<root>/run/flatstack/kubernetes-v1.37.1";

    let (code, log) = host.run(&stage, &stage_body, &[]);
    assert_eq!(code, Some(0), "{log:?}");
    assert_eq!(
        log,
        [
            "systemctl stop systemd-sysupdate.timer systemd-sysupdate.service".to_string(),
            format!(
                "curl --fail --silent --show-error --location --retry 5 --output {new_image}.part https://extensions.flatcar.org/extensions/kubernetes-v1.37.1-x86-64.raw"
            ),
            format!("mount -o loop,ro {new_image} {mount}"),
            "kubeadm upgrade apply v1.37.1 --yes".to_string(),
            format!("umount {mount}"),
        ]
    );
    // The old image is still the active one until the drain is done.
    let link = std::fs::read_link(host.paths.sysext_link).expect("link");
    assert!(link.ends_with("kubernetes-v1.36.2-x86-64.raw"), "{link:?}");
    let (code, log) = host.run(&stage, &stage_body, &[]);
    assert_eq!(code, Some(0));
    assert_eq!(
        log,
        ["systemctl stop systemd-sysupdate.timer systemd-sysupdate.service"],
        "a second run: the image is there and verified, kubeadm ran"
    );

    let (code, log) = host.run(&activate, &activate_body, &[]);
    assert_eq!(code, Some(0), "{log:?}");
    assert_eq!(
        log,
        [
            "systemctl mask --runtime kubelet.service",
            "systemctl stop kubelet.service",
            "systemd-sysext refresh",
            "systemctl unmask --runtime kubelet.service",
            "systemctl daemon-reload",
            "systemctl restart kubelet.service",
            "systemctl start systemd-sysupdate.timer",
        ]
    );
    let link = std::fs::read_link(host.paths.sysext_link).expect("link");
    assert!(link.ends_with("kubernetes-v1.37.1-x86-64.raw"), "{link:?}");
    let transfers: Vec<String> = std::fs::read_dir(host.paths.sysupdate_dir)
        .expect("transfers")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(transfers, ["kubernetes-v1.37.conf"]);
    let transfer = std::fs::read_to_string(format!(
        "{}/kubernetes-v1.37.conf",
        host.paths.sysupdate_dir
    ))
    .expect("transfer");
    assert!(
        transfer.contains("MatchPattern=kubernetes-v1.37.@v-%a.raw"),
        "{transfer}"
    );
    let images: Vec<String> = std::fs::read_dir(host.paths.sysext_dir)
        .expect("images")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        images,
        ["kubernetes-v1.37.1-x86-64.raw"],
        "the old minor's image goes"
    );
    let (code, log) = host.run(&activate, &activate_body, &[]);
    assert_eq!(code, Some(0));
    assert_eq!(log, ["systemctl start systemd-sysupdate.timer"]);
}

/// Another control plane and a worker run `kubeadm upgrade node` (kubeadm tells them apart by
/// the node's own manifests); a kubeadm that fails leaves no mark and the image unactivated,
/// and the next run runs it again.
#[test]
fn other_nodes_run_upgrade_node_and_a_failed_kubeadm_is_run_again() {
    require_tool("unshare");
    let host = Host::new();
    let spec = spec_at("1.37.1", &image_sha256());
    let (stage, activate) = action_names(flatstack::pins::KubernetesVersion::new(1, 37, 1));
    let body = stage_script(&spec, Kubeadm::Node, &host.paths);
    let (code, log) = host.run(&stage, &body, &[("KUBEADM_EXIT", "1")]);
    assert_eq!(code, Some(1), "{log:?}");
    assert!(log.contains(&"kubeadm upgrade node".to_string()), "{log:?}");
    assert!(
        log.last().is_some_and(|l| l.starts_with("umount ")),
        "{log:?}"
    );
    let (code, log) = host.run(&activate, &activate_script(&spec, &host.paths), &[]);
    assert_eq!(code, Some(4), "activation waits for kubeadm: {log:?}");
    assert!(log.is_empty(), "{log:?}");
    let (code, log) = host.run(&stage, &body, &[]);
    assert_eq!(code, Some(0));
    assert_eq!(
        log.iter().filter(|l| l.starts_with("curl")).count(),
        0,
        "the verified image is kept: {log:?}"
    );
    assert!(log.contains(&"kubeadm upgrade node".to_string()), "{log:?}");
}

/// An image whose digest is not the pinned one is removed and stops the upgrade before
/// anything runs from it or is activated.
#[test]
fn a_digest_mismatch_stops_the_stage_before_anything_is_activated() {
    require_tool("unshare");
    let host = Host::new();
    let spec = spec_at("1.37.1", &"b".repeat(64));
    let (stage, activate) = action_names(flatstack::pins::KubernetesVersion::new(1, 37, 1));
    let (code, log) = host.run(
        &stage,
        &stage_script(&spec, Kubeadm::Apply, &host.paths),
        &[],
    );
    assert_eq!(code, Some(3), "{log:?}");
    assert!(
        log.iter()
            .all(|l| !l.starts_with("kubeadm") && !l.starts_with("mount")),
        "{log:?}"
    );
    let images: Vec<String> = std::fs::read_dir(host.paths.sysext_dir)
        .expect("images")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(images, ["kubernetes-v1.36.2-x86-64.raw"]);
    let (code, _) = host.run(&activate, &activate_script(&spec, &host.paths), &[]);
    assert_eq!(code, Some(4));
    let link = std::fs::read_link(host.paths.sysext_link).expect("link");
    assert!(link.ends_with("kubernetes-v1.36.2-x86-64.raw"), "{link:?}");
}

/// A refresh that fails puts the old image back and starts the kubelet again (unmasked), so
/// the node keeps running and answering; the next run swaps afresh.
#[test]
fn a_failed_activation_puts_the_old_image_back_and_the_kubelet_up() {
    require_tool("unshare");
    let host = Host::new();
    let spec = spec_at("1.37.1", &image_sha256());
    let (stage, activate) = action_names(flatstack::pins::KubernetesVersion::new(1, 37, 1));
    let (code, _) = host.run(
        &stage,
        &stage_script(&spec, Kubeadm::Node, &host.paths),
        &[],
    );
    assert_eq!(code, Some(0));
    let body = activate_script(&spec, &host.paths);
    let (code, log) = host.run(&activate, &body, &[("SYSEXT_EXIT", "1")]);
    assert_eq!(code, Some(5), "{log:?}");
    assert_eq!(
        log,
        [
            "systemctl mask --runtime kubelet.service",
            "systemctl stop kubelet.service",
            "systemd-sysext refresh",
            "systemd-sysext refresh",
            "systemctl unmask --runtime kubelet.service",
            "systemctl start kubelet.service",
        ]
    );
    let link = std::fs::read_link(host.paths.sysext_link).expect("link");
    assert!(link.ends_with("kubernetes-v1.36.2-x86-64.raw"), "{link:?}");
    let (code, log) = host.run(&activate, &body, &[]);
    assert_eq!(code, Some(0), "{log:?}");
    assert_eq!(
        log[..3],
        [
            "systemctl mask --runtime kubelet.service",
            "systemctl stop kubelet.service",
            "systemd-sysext refresh"
        ]
    );
    let link = std::fs::read_link(host.paths.sysext_link).expect("link");
    assert!(link.ends_with("kubernetes-v1.37.1-x86-64.raw"), "{link:?}");
}
