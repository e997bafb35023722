//! Host actions: work that must run on a node's host, outside any pod, and outlive the pod
//! that asked for it (a drain evicts pods; a kubelet restart or a sysext swap kills its
//! containers). A node Job of the host profile writes a script flatstack composed to
//! `/var/lib/flatstack/actions/<name>.sh` on the host and starts it as a transient systemd
//! unit, `flatstack-<name>.service`, whose script records its exit status in
//! `<name>.result` when it ends, however it ends. Later Jobs only read that record (and the
//! unit's journal), so flatstack follows what the node did rather than a pod's fate.
//!
//! The launcher runs in a small pinned image ([`HOST_ACTION_IMAGE`]) that has `sh` and
//! `chroot`; it reaches systemd through the host's root. A script is visible in the Job's spec
//! to whoever may read Jobs in `kube-system`: it never carries a secret.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::node_job::{HOST_ROOT, NodeJob, Profile};
use super::{KubeClient, KubeError, Waiting, poll};
use crate::pins::HOST_ACTION_IMAGE;

/// Where host actions keep their scripts and records on the host.
pub(crate) const ACTIONS_DIR: &str = "/var/lib/flatstack/actions";

/// The launcher, run by `sh` in the Job's container with `ACTION`, `MODE` (`start`, `check` or
/// `forget`) and, to start, `SCRIPT` in its environment. It prints `state=...`: `finished`
/// (with the record and the unit's journal), `running`, `started`, `absent` or `forgotten`.
const LAUNCHER: &str = r#"set -eu
root="${HOST_ROOT:-/host}"
dir="$root/var/lib/flatstack/actions"
unit="flatstack-$ACTION.service"
record="$dir/$ACTION.result"
# active, activating, deactivating, reloading: the unit runs (or is about to).
unit_state=$(chroot "$root" systemctl is-active "$unit" 2>/dev/null || true)
case "$unit_state" in
  active | activating | deactivating | reloading | refreshing)
    echo "state=running"
    exit 0
    ;;
esac
if [ "$MODE" = forget ]; then
  rm -f "$record" "$dir/$ACTION.sh"
  echo "state=forgotten"
  exit 0
fi
if [ -e "$record" ]; then
  echo "state=finished"
  cat "$record"
  echo "--- journal"
  chroot "$root" journalctl --unit="$unit" --lines=40 --no-pager --output=cat || true
  exit 0
fi
if [ "$MODE" = check ]; then
  echo "state=absent"
  exit 0
fi
mkdir -p "$dir"
printf '%s\n' "$SCRIPT" > "$dir/$ACTION.sh.new"
mv "$dir/$ACTION.sh.new" "$dir/$ACTION.sh"
# A failed unit of the name that was not collected would refuse a new one.
chroot "$root" systemctl reset-failed "$unit" 2>/dev/null || true
chroot "$root" systemd-run --unit="$unit" --description="flatstack host action $ACTION" \
  --collect --no-block /bin/bash "/var/lib/flatstack/actions/$ACTION.sh"
echo "state=started"
"#;

/// One piece of work on one node's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAction {
    /// Names the unit and the files: lower-case letters, digits and `-`.
    pub name: String,
    pub node: String,
    /// Bash, run as root on the host; it should be safe to run again after an interruption.
    pub body: String,
}

/// What a node says of a host action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostActionState {
    /// Never started, or forgotten.
    Absent,
    /// Started by this request.
    Started,
    /// Its unit is active.
    Running,
    /// It ended with `exit`; `journal` is the end of the unit's log.
    Finished { exit: i32, journal: String },
}

/// Which launcher mode a Job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Start,
    Check,
    Forget,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Start => "start",
            Mode::Check => "check",
            Mode::Forget => "forget",
        }
    }
}

impl HostAction {
    /// The action, if `name` can name a unit and a file.
    pub fn new(name: &str, node: &str, body: &str) -> Result<HostAction, String> {
        let valid = !name.is_empty()
            && name.len() <= 24
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(format!(
                "host action name `{name}`: 1 to 24 lower-case letters, digits and `-`"
            ));
        }
        Ok(HostAction {
            name: name.to_string(),
            node: node.to_string(),
            body: body.to_string(),
        })
    }

    /// The script the unit runs: `set -euo pipefail`, a trap that records the exit status
    /// (and when) atomically whatever ends the script short of SIGKILL, then the body.
    pub fn script(&self) -> String {
        format!(
            "#!/bin/bash\n\
             # flatstack host action {name} on {node}: run by systemd as flatstack-{name}.service\n\
             set -euo pipefail\n\
             record={dir}/{name}.result\n\
             finish() {{\n  \
               local status=$?\n  \
               printf 'exit=%s\\nfinished=%s\\n' \"$status\" \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\" > \"$record.new\"\n  \
               mv \"$record.new\" \"$record\"\n\
             }}\n\
             trap finish EXIT\n\
             {body}\n",
            name = self.name,
            node = self.node,
            dir = ACTIONS_DIR,
            body = self.body.trim_end(),
        )
    }

    /// The Job that starts this action, as applied.
    pub fn start_manifest(&self) -> super::Manifest {
        self.job(Mode::Start).manifest()
    }

    /// The node Job that runs the launcher in `mode` for this action.
    fn job(&self, mode: Mode) -> NodeJob {
        job(&self.node, &self.name, mode, Some(self.script()))
    }
}

/// The node Job for action `name` on `node` in `mode`, named per action, mode and node (a
/// digest of the node's name keeps it short).
fn job(node: &str, name: &str, mode: Mode, script: Option<String>) -> NodeJob {
    let digest = hex::encode(&Sha256::digest(node.as_bytes())[..4]);
    let mut env = vec![
        ("ACTION".to_string(), name.to_string()),
        ("MODE".to_string(), mode.as_str().to_string()),
        ("HOST_ROOT".to_string(), HOST_ROOT.to_string()),
    ];
    // Kubernetes expands `$(VAR)` in env values and turns `$$` into `$`: doubled, every `$`
    // reaches the container as written.
    if let Some(script) = script {
        env.push(("SCRIPT".to_string(), script.replace('$', "$$")));
    }
    NodeJob {
        name: format!("flatstack-host-{name}-{}-{digest}", mode.as_str()),
        node: node.to_string(),
        image: HOST_ACTION_IMAGE.to_string(),
        command: vec!["sh".into(), "-c".into(), LAUNCHER.into()],
        profile: Profile::Host { env },
    }
}

/// Reads the launcher's output.
pub fn parse_state(output: &str) -> Result<HostActionState, String> {
    let (head, journal) = match output.split_once("--- journal\n") {
        Some((head, journal)) => (head, journal.trim_end().to_string()),
        None => (output, String::new()),
    };
    let field = |key: &str| {
        head.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
    };
    match field("state") {
        Some("absent") | Some("forgotten") => Ok(HostActionState::Absent),
        Some("started") => Ok(HostActionState::Started),
        Some("running") => Ok(HostActionState::Running),
        Some("finished") => {
            let exit = field("exit")
                .and_then(|e| e.trim().parse().ok())
                .ok_or_else(|| format!("a finished host action without its exit status: {head}"))?;
            Ok(HostActionState::Finished { exit, journal })
        }
        _ => Err(format!(
            "the host action launcher printed no state: {output}"
        )),
    }
}

impl KubeClient {
    async fn run_launcher(
        &self,
        job: &NodeJob,
        within: Duration,
    ) -> Result<HostActionState, KubeError> {
        let log = self.run_node_job(job, within).await?;
        parse_state(&log).map_err(|message| KubeError::NodeJob {
            job: job.name.clone(),
            node: job.node.clone(),
            log: message,
        })
    }

    /// Starts `action` on its node unless it runs or has finished there (then says which).
    pub async fn start_host_action(
        &self,
        action: &HostAction,
        within: Duration,
    ) -> Result<HostActionState, KubeError> {
        self.run_launcher(&action.job(Mode::Start), within).await
    }

    /// What `node` says of action `name`.
    pub async fn host_action_state(
        &self,
        node: &str,
        name: &str,
        within: Duration,
    ) -> Result<HostActionState, KubeError> {
        self.run_launcher(&job(node, name, Mode::Check, None), within)
            .await
    }

    /// Removes the record of action `name` on `node`, so that it can be started again.
    pub async fn forget_host_action(
        &self,
        node: &str,
        name: &str,
        within: Duration,
    ) -> Result<(), KubeError> {
        self.run_launcher(&job(node, name, Mode::Forget, None), within)
            .await
            .map(|_| ())
    }

    /// Starts `action` (unless it already ran) and waits until it finished: `Ok` with exit 0,
    /// else an error carrying the unit's journal. A start or a check that cannot run for a
    /// while (the node's kubelet restarting, the only API server restarting under `kubeadm
    /// upgrade apply`) is tried again until `within` is spent: a start whose answer was lost
    /// shows in the next check.
    pub async fn run_host_action(
        &self,
        action: &HostAction,
        within: Duration,
    ) -> Result<(), KubeError> {
        use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
        let step = Duration::from_secs(120).min(within);
        let started = AtomicBool::new(false);
        // A unit gone without a record was killed (or its node rebooted): after three looks.
        let vanished = AtomicU32::new(0);
        let finished = |state: HostActionState| match state {
            HostActionState::Finished { exit, journal } => Some((exit, journal)),
            _ => None,
        };
        let (exit, journal) = poll(
            &format!("host action {} on {}", action.name, action.node),
            within,
            Duration::from_secs(5),
            || async {
                if !started.load(Ordering::Relaxed) {
                    return Ok(match self.start_host_action(action, step).await {
                        Ok(state) => {
                            started.store(true, Ordering::Relaxed);
                            match finished(state) {
                                Some(done) => Waiting::Done(done),
                                None => Waiting::On("started".into()),
                            }
                        }
                        Err(e) => Waiting::On(format!("cannot start it yet: {e}")),
                    });
                }
                Ok(
                    match self
                        .host_action_state(&action.node, &action.name, step)
                        .await
                    {
                        Ok(HostActionState::Finished { exit, journal }) => {
                            Waiting::Done((exit, journal))
                        }
                        Ok(HostActionState::Absent) => {
                            let seen = vanished.fetch_add(1, Ordering::Relaxed);
                            match seen >= 2 {
                                true => Waiting::Done((
                                    -1,
                                    "its unit ended without recording how (killed, or the node restarted); `journalctl -u flatstack-<name>` on the node tells more".to_string(),
                                )),
                                false => Waiting::On("its unit is gone without a record".into()),
                            }
                        }
                        Ok(state) => Waiting::On(format!("{state:?}")),
                        Err(e) => Waiting::On(format!("cannot ask the node yet: {e}")),
                    },
                )
            },
        )
        .await?;
        match exit {
            0 => Ok(()),
            _ => Err(KubeError::NodeJob {
                job: format!("flatstack-{}.service", action.name),
                node: action.node.clone(),
                log: format!("exited with {exit}; its journal:\n{journal}"),
            }),
        }
    }
}

/// The launcher's text, as the Job's `sh -c` runs it.
pub fn launcher() -> &'static str {
    LAUNCHER
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_action_job_is_privileged_in_the_hosts_pid_namespace_with_its_root() {
        let action = HostAction::new("upgrade-node", "demo-default-1", "kubeadm upgrade node")
            .expect("valid");
        let manifest = action.job(Mode::Start).manifest();
        let body = manifest.body();
        let name = body["metadata"]["name"].as_str().expect("name");
        assert!(
            name.starts_with("flatstack-host-upgrade-node-start-"),
            "{name}"
        );
        assert!(name.len() <= 63, "{name}");
        let pod = &body["spec"]["template"]["spec"];
        assert_eq!(pod["nodeName"], "demo-default-1");
        assert_eq!(pod["hostPID"], true);
        let container = &pod["containers"][0];
        assert_eq!(container["image"], HOST_ACTION_IMAGE);
        assert_eq!(container["securityContext"]["privileged"], true);
        assert_eq!(container["volumeMounts"][0]["mountPath"], HOST_ROOT);
        assert_eq!(container["volumeMounts"][0]["readOnly"], false);
        assert_eq!(pod["volumes"][0]["hostPath"]["path"], "/");
        let env: Vec<(&str, &str)> = container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
            .collect();
        assert!(env.contains(&("ACTION", "upgrade-node")), "{env:?}");
        assert!(env.contains(&("MODE", "start")), "{env:?}");
        let script = env.iter().find(|(k, _)| *k == "SCRIPT").expect("script").1;
        assert!(script.contains("trap finish EXIT"), "{script}");
        assert!(script.ends_with("kubeadm upgrade node\n"), "{script}");
        // Another node, another Job: actions on two nodes at once never share one.
        let other = HostAction::new("upgrade-node", "demo-default-2", "true").expect("valid");
        assert_ne!(
            other.job(Mode::Start).manifest().body()["metadata"]["name"],
            body["metadata"]["name"]
        );
        // Kubernetes' `$(VAR)` and `$$` expansion gives back the script as written; the
        // launcher, in `command`, has no `$$` and no `$(NAME)` of a variable the Job defines.
        let body = "echo $$ $(MODE) $HOME";
        let dollars = HostAction::new("x", "n", body)
            .expect("valid")
            .job(Mode::Start);
        let Profile::Host { env } = &dollars.profile else {
            panic!("a host Job");
        };
        let sent = &env.iter().find(|(k, _)| k == "SCRIPT").expect("script").1;
        assert!(
            sent.replace("$$", "$").ends_with(&format!("{body}\n")),
            "{sent}"
        );
        assert!(!LAUNCHER.contains("$$"), "{LAUNCHER}");
        for name in ["ACTION", "MODE", "HOST_ROOT", "SCRIPT"] {
            assert!(!LAUNCHER.contains(&format!("$({name})")), "{name}");
        }
        // A check carries no script.
        let check = job("demo-default-1", "upgrade-node", Mode::Check, None);
        match check.profile {
            Profile::Host { env } => assert!(env.iter().all(|(k, _)| k != "SCRIPT")),
            Profile::Command { .. } => panic!("a host Job"),
        }
    }

    #[test]
    fn names_that_cannot_name_a_unit_and_a_file_are_refused() {
        for bad in ["", "Upgrade", "a/b", "a b", "x.service", &"a".repeat(25)] {
            assert!(HostAction::new(bad, "n", "true").is_err(), "{bad}");
        }
    }

    #[test]
    fn the_launchers_answers_are_read() {
        assert_eq!(parse_state("state=absent\n"), Ok(HostActionState::Absent));
        assert_eq!(parse_state("state=started\n"), Ok(HostActionState::Started));
        assert_eq!(parse_state("state=running\n"), Ok(HostActionState::Running));
        assert_eq!(
            parse_state(
                "state=finished\nexit=3\nfinished=2026-12-07T03:00:00Z\n--- journal\nno space left\n"
            ),
            Ok(HostActionState::Finished {
                exit: 3,
                journal: "no space left".into()
            })
        );
        assert!(parse_state("state=finished\n--- journal\n").is_err());
        assert!(parse_state("chroot: can't execute 'systemctl'").is_err());
    }
}
