//! Host actions' shell, run for real: the launcher by `dash` (POSIX `sh`, as busybox's is)
//! against a scratch host root, and the script it writes by `bash`, as the transient unit runs
//! it, in a mount namespace whose `/var/lib` is the scratch root's, so the script's absolute
//! paths land there; both pass Debian's shellcheck. systemd is not PID 1 on this machine:
//! starting the unit (`systemd-run` in the host's root) is the one part not run here, and the
//! launcher's failure to find it is what a node without systemd would report.

use std::path::Path;
use std::process::{Command, Output};

use flatstack::kube::host_action::{HostAction, HostActionState, launcher, parse_state};

use crate::support::*;

/// Runs `program args` in a new mount namespace where `/var/lib` is `root`'s.
pub(crate) fn on_host(root: &Path, envs: &[(&str, &str)], program: &str, args: &[&str]) -> Output {
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg("mount --bind \"$ROOT/var/lib\" /var/lib && exec \"$@\"")
        .arg("on-host")
        .arg(program)
        .args(args)
        .env("ROOT", root)
        .env("HOST_ROOT", root);
    for (key, value) in envs {
        command.env(key, value);
    }
    command.output().expect("run unshare")
}

fn launch(root: &Path, action: &HostAction, mode: &str) -> Output {
    let script = action.script();
    on_host(
        root,
        &[
            ("ACTION", &action.name),
            ("MODE", mode),
            ("SCRIPT", &script),
        ],
        "dash",
        &["-c", launcher()],
    )
}

fn state(output: &Output) -> HostActionState {
    assert!(output.status.success(), "{}", stderr(output));
    parse_state(&stdout(output)).expect("a state")
}

#[test]
fn the_launcher_and_a_host_script_pass_shellcheck() {
    require_tool("shellcheck");
    let action = HostAction::new(
        "demo",
        "n",
        "kubeadm upgrade node\nsystemctl restart kubelet",
    )
    .expect("valid");
    for (shell, text) in [("sh", launcher().to_string()), ("bash", action.script())] {
        let workspace = Workspace::new();
        let file = workspace.path("script");
        std::fs::write(&file, &text).expect("write");
        let output = Command::new("shellcheck")
            .args(["--shell", shell, "--severity", "style"])
            .arg(&file)
            .output()
            .expect("run shellcheck");
        assert!(output.status.success(), "{shell}:\n{}", stdout(&output));
    }
}

/// Check, start, the unit's run, check again, a second start, forget: the record decides.
#[test]
fn a_host_action_is_started_once_and_its_record_says_how_it_ended() {
    require_tool("unshare");
    require_tool("dash");
    let workspace = Workspace::new();
    let root = workspace.path("host");
    std::fs::create_dir_all(root.join("var/lib")).expect("root");
    let action = HostAction::new(
        "upgrade-node",
        "demo-default-1",
        "echo upgrading\nfalse\necho never reached",
    )
    .expect("valid");
    let actions = root.join("var/lib/flatstack/actions");

    assert_eq!(
        state(&launch(&root, &action, "check")),
        HostActionState::Absent
    );
    // Start writes the script, then asks systemd for the unit: here there is none to ask.
    let started = launch(&root, &action, "start");
    assert!(!started.status.success(), "{}", stdout(&started));
    let written = std::fs::read_to_string(actions.join("upgrade-node.sh")).expect("script");
    assert_eq!(written.trim_end(), action.script().trim_end());

    // What the unit runs: `/bin/bash /var/lib/flatstack/actions/upgrade-node.sh`.
    let ran = on_host(
        &root,
        &[],
        "bash",
        &["/var/lib/flatstack/actions/upgrade-node.sh"],
    );
    assert_eq!(ran.status.code(), Some(1), "{}", stderr(&ran));
    assert_eq!(stdout(&ran), "upgrading\n", "set -e stops at the failure");
    let record = std::fs::read_to_string(actions.join("upgrade-node.result")).expect("record");
    assert!(record.starts_with("exit=1\nfinished=20"), "{record}");

    // The record is what later Jobs read; a second start does not run it again.
    match state(&launch(&root, &action, "check")) {
        HostActionState::Finished { exit, .. } => assert_eq!(exit, 1),
        other => panic!("{other:?}"),
    }
    let again = launch(&root, &action, "start");
    assert!(
        matches!(state(&again), HostActionState::Finished { exit: 1, .. }),
        "{}",
        stdout(&again)
    );
    // Forgotten, it can start afresh.
    assert_eq!(
        state(&launch(&root, &action, "forget")),
        HostActionState::Absent
    );
    assert!(!actions.join("upgrade-node.result").exists());
    assert_eq!(
        state(&launch(&root, &action, "check")),
        HostActionState::Absent
    );

    // A body that ends well records 0, and an explicit exit its status.
    for (body, exit) in [("true", 0), ("exit 7", 7)] {
        let action = HostAction::new("other", "demo-default-1", body).expect("valid");
        let _ = launch(&root, &action, "start");
        let ran = on_host(&root, &[], "bash", &["/var/lib/flatstack/actions/other.sh"]);
        assert_eq!(ran.status.code(), Some(exit), "{}", stderr(&ran));
        match state(&launch(&root, &action, "check")) {
            HostActionState::Finished { exit: recorded, .. } => assert_eq!(recorded, exit),
            other => panic!("{other:?}"),
        }
        let _ = launch(&root, &action, "forget");
    }
}
