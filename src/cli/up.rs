//! `flatstack plan`, `flatstack up` and `flatstack down`: what would change, making it so, and
//! removing everything the cluster owns.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::cloud::{cloud_config, runtime};
use super::{InvalidInput, load_spec, state_path};
use crate::apply::down::Down;
use crate::apply::execute::Event;
use crate::apply::up::{PlanReport, UpReport, UpRequest};
use crate::apply::{self, timeline};
use crate::plan::resources::Observed;
use crate::plan::steps::{ShownStep, Verb};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub(crate) struct PlanArgs {
    /// `text` for people, `json` for programs.
    #[arg(long, value_enum, default_value = "text")]
    pub(crate) output: Output,
    /// State directory holding the cluster's PKI and recorded sysext digest (default:
    /// $XDG_DATA_HOME/flatstack/<name>).
    #[arg(long, env = "FLATSTACK_STATE_DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// Plan as `up --provision-only` runs: the cloud side only, no drains or join token.
    #[arg(long)]
    pub(crate) provision_only: bool,
    /// Plan as `up --accept-empty-cluster` runs.
    #[arg(long)]
    pub(crate) accept_empty_cluster: bool,
    /// Where `plan` asks the cluster's API whether it answers, when the plan drains nodes,
    /// replaces them or changes etcd's members.
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// Plan as `up --timeout` runs: how long each node may take to be Ready, which sets how
    /// long the join token lasts when nodes join one after another.
    #[arg(long, default_value = "20m", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
}

#[derive(Debug, clap::Args)]
pub(crate) struct UpArgs {
    /// Stop once the cloud side is done (servers ACTIVE, floating IP attached): for clouds whose
    /// servers never boot, like the local test OpenStack.
    #[arg(long)]
    pub(crate) provision_only: bool,
    /// Build a control plane that has run and is gone again: a new, empty cluster behind the
    /// same CA and address (refused without this flag).
    #[arg(long)]
    pub(crate) accept_empty_cluster: bool,
    /// State directory holding the cluster's PKI (default: $XDG_DATA_HOME/flatstack/<name>).
    #[arg(long, env = "FLATSTACK_STATE_DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// How long to wait for the cluster to come up: API, add-ons and every node Ready
    /// (`90s`, `20m`, `1h`).
    #[arg(long, default_value = "20m", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
    /// Also merge the admin kubeconfig into ~/.kube/config (or the first file in $KUBECONFIG),
    /// with a context named after the cluster, made current.
    #[arg(long)]
    pub(crate) merge_kubeconfig: bool,
    /// `text` for people; `json` prints the steps run and the timeline as JSON on stdout
    /// (progress goes to stderr).
    #[arg(long, value_enum, default_value = "text")]
    pub(crate) output: Output,
}

/// How to reach the cluster's Kubernetes API.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ApiArgs {
    /// Reach the Kubernetes API at HOST:PORT instead of the floating IP (an SSH tunnel, a
    /// port forward); the server must still prove itself with the cluster CA.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_host_port)]
    pub(crate) api_address: Option<String>,
}

/// `HOST:PORT` as `--api-address` takes it: a host name or address (IPv6 in brackets) and a
/// port from 1 to 65535, no scheme.
pub(crate) fn parse_host_port(text: &str) -> Result<String, String> {
    if text.contains("://") {
        return Err(format!(
            "`{text}`: give HOST:PORT without a scheme, e.g. 127.0.0.1:6443"
        ));
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("`{text}` has no port: give HOST:PORT, e.g. 127.0.0.1:6443"))?;
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    let host_ok = match bare {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        }
    };
    if !host_ok {
        return Err(format!(
            "`{host}` is not a host name or address (IPv6 goes in brackets)"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(text.to_string()),
        _ => Err(format!("`{port}` is not a port from 1 to 65535")),
    }
}

/// The longest wait any command accepts.
const MAX_WAIT_SECONDS: u64 = 24 * 3600;

/// `90s`, `20m`, `1h`, or plain seconds: from 1 s to 24 h.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 90s, 20m or 1h"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("`{text}`: the unit must be s, m or h")),
    };
    match value.checked_mul(scale) {
        Some(seconds) if (1..=MAX_WAIT_SECONDS).contains(&seconds) => {
            Ok(Duration::from_secs(seconds))
        }
        _ => Err(format!("`{text}`: give a duration from 1s to 24h")),
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct DownArgs {
    /// State directory of the cluster, whose lock `down` takes (default:
    /// $XDG_DATA_HOME/flatstack/<name>).
    #[arg(long, env = "FLATSTACK_STATE_DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub(crate) yes: bool,
    /// Also delete the persistent volumes the cluster's Cinder CSI driver created.
    #[arg(long)]
    pub(crate) delete_volumes: bool,
    /// Also delete the cluster's etcd snapshots and their container in the object store.
    #[arg(long)]
    pub(crate) delete_backups: bool,
}

pub(crate) fn plan(file: &Path, cloud_flag: Option<&str>, args: &PlanArgs) -> anyhow::Result<()> {
    let spec = load_spec(file)?;
    let config = cloud_config(cloud_flag, &spec)?;
    let state_path = state_path(&spec, args.state_dir.as_ref())?;
    let warnings = super::end_of_life_warning(&spec).into_iter().collect();
    let open_api = spec.access.api_cidrs.iter().any(|c| c.prefix_len() == 0);
    let report = runtime()?.block_on(apply::up::plan(
        spec,
        config,
        state_path,
        crate::plan::planner::Scope {
            kubernetes: !args.provision_only,
            accept_empty_cluster: args.accept_empty_cluster,
            restoring: false,
            api: crate::plan::planner::ApiReach::Unasked,
            node_wait: args.timeout,
        },
        args.api.api_address.as_deref(),
        warnings,
    ))?;
    match args.output {
        Output::Json => out!("{}", serde_json::to_string_pretty(&report)?),
        Output::Text => print_plan(&report, open_api),
    }
    Ok(())
}

fn print_plan(report: &PlanReport, open_api: bool) {
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    out!("cluster `{}` on cloud `{}`", report.cluster, report.cloud);
    out!(
        "Kubernetes {}: sysext {}",
        report.kubernetes,
        report.sysext.describe()
    );
    out!(
        "API endpoint: {} ({})",
        report.api_endpoint,
        report.api_endpoint_why
    );
    let backup = &report.backup;
    match backup.enabled {
        true => out!(
            "backups: etcd every {}h, the newest {} kept, {}",
            backup.every_hours,
            backup.keep,
            backup.note
        ),
        false => out!("backups: {}", backup.note),
    }
    out!("Secrets at rest: {}", report.secrets_at_rest);
    if !report.releases.is_empty() {
        let nodes: Vec<String> = report
            .releases
            .iter()
            .map(|(node, release)| format!("{node} {release}"))
            .collect();
        out!("running: {}", nodes.join(", "));
    }
    if let Some(up) = &report.upgrade {
        let order: Vec<String> = up.upgrade.order.iter().map(|n| n.node.clone()).collect();
        out!(
            "upgrade {} to {}, one node at a time, control planes first: {}",
            up.upgrade.from,
            up.upgrade.to,
            order.join(", ")
        );
        out!(
            "  each node gets {} sha256:{}",
            report.sysext.file,
            report.sysext.sha256
        );
        for pin in &up.addon_pins {
            out!("  after the last control plane: {pin}");
        }
        if !up.upgrade.replaced.is_empty() {
            out!(
                "  replaced by new nodes at {} once the control planes run it: {}",
                up.upgrade.to,
                up.upgrade.replaced.join(", ")
            );
        }
        if let Some(waits) = &up.upgrade.waits {
            out!("  waits: {waits}");
        }
        if !up.performed {
            out!(
                "  not with --provision-only: new nodes boot {}, which the control planes run",
                up.upgrade.from
            );
        }
    }
    for action in &report.actions {
        out!(
            "  {} {:<15} {:<40} {}",
            action.action.sign(),
            action.kind,
            action.name,
            action.detail
        );
    }
    let count = |verb: Verb| report.actions.iter().filter(|a| a.action == verb).count();
    if report.actions.is_empty() {
        out!("  nothing to change: the cloud matches the cluster file");
    } else {
        out!(
            "  {}",
            summary(
                count(Verb::Create),
                count(Verb::Update),
                count(Verb::Delete)
            )
        );
    }
    if open_api {
        out!(
            "note: the Kubernetes API (6443) is open to any address; it demands client certificates"
        );
    }
    out!(
        "cost: {} vCPUs = {} SU per hour (Jetstream2 bills 1 SU per vCPU-hour)",
        report.vcpus,
        report.su_per_hour
    );
}

/// What `up --output json` prints.
#[derive(Serialize)]
struct UpJson<'a> {
    cluster: &'a str,
    /// The steps run: exactly the plan made from this run's observation.
    steps: Vec<ShownStep>,
    api_calls: u64,
    mutating_calls: u64,
    timeline: &'a timeline::Timeline,
}

pub(crate) fn up(file: &Path, cloud_flag: Option<&str>, args: &UpArgs) -> anyhow::Result<()> {
    let spec = load_spec(file)?;
    let request = UpRequest {
        cloud: cloud_config(cloud_flag, &spec)?,
        state_path: state_path(&spec, args.state_dir.as_ref())?,
        spec,
        provision_only: args.provision_only,
        accept_empty_cluster: args.accept_empty_cluster,
        restore: None,
        api_address: args.api.api_address.clone(),
        timeout: args.timeout,
    };
    run_up(request, args.merge_kubeconfig, args.output)
}

/// Runs `up` (or a restore, which is `up` with one more thing to do) and prints its report.
pub(crate) fn run_up(
    request: UpRequest,
    merge_kubeconfig: bool,
    output: Output,
) -> anyhow::Result<()> {
    let json = output == Output::Json;
    let progress = Progress::new(json);
    let report = runtime()?.block_on(apply::up::up(request, &|e| progress.event(e)));
    progress.finish();
    let report = report?;
    if merge_kubeconfig {
        let path = crate::pki::merge_into_user_kubeconfig(&report.admin_kubeconfig)?;
        out!(
            "merged context `{}` into {} and made it current",
            report.spec.name,
            path.display()
        );
    }
    if json {
        let shown = UpJson {
            cluster: &report.spec.name,
            steps: report.plan.shown(),
            api_calls: report.api_calls,
            mutating_calls: report.mutating_calls,
            timeline: &report.timeline,
        };
        out!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(());
    }
    print_up(&report);
    Ok(())
}

fn print_up(report: &UpReport) {
    let name = &report.spec.name;
    let kubeconfig = report.admin_kubeconfig_path.display();
    match &report.booted {
        None => {
            out!("{:<44} {:<10} ID", "SERVER", "STATUS");
            for server in &report.provisioned.servers {
                out!("{:<44} {:<10} {}", server.name, server.status, server.id);
            }
        }
        Some(booted) => crate::kube::print_node_table(&booted.nodes),
    }
    out_inline!("{}", timeline::render(&report.timeline, 50));
    let took = report.timeline.total_seconds;
    match &report.booted {
        _ if report.unchanged() => {
            out!("cluster `{name}` is up to date: nothing to change (0 changes made)")
        }
        None => out!(
            "cluster `{name}` provisioned in {took:.1} s with {} API calls ({} steps); API endpoint {}; kubeconfig {kubeconfig}",
            report.api_calls,
            report.plan.steps.len(),
            report.api
        ),
        Some(booted) => out!(
            "cluster `{name}` is up: {} node(s) Ready in {took:.1} s ({} cloud API calls, {} Kubernetes objects applied)",
            booted.nodes.len(),
            report.api_calls,
            booted.changes
        ),
    }
    if report.booted.is_none() {
        return;
    }
    out!(
        "API {}; kubeconfig {kubeconfig} (`export KUBECONFIG={kubeconfig}`)",
        report.api
    );
    let spec = &report.spec;
    if spec.addons.ingress {
        match (spec.ingress.exposure, report.provisioned.endpoint.public) {
            (crate::spec::IngressExposure::ControlPlane, Some(ip)) => out!(
                "ingress: http://{ip}/ (Traefik on the control planes); `flatstack smoke` checks it"
            ),
            _ => out!(
                "ingress: behind the load balancer the cloud controller makes; `flatstack smoke` finds and checks it"
            ),
        }
    }
}

/// "2 to create, 1 to repair, 0 to delete" (repairs only when there are some).
fn summary(creates: usize, updates: usize, deletes: usize) -> String {
    match updates {
        0 => format!("{creates} to create, {deletes} to delete"),
        _ => format!("{creates} to create, {updates} to repair, {deletes} to delete"),
    }
}

pub(crate) fn down(file: &Path, cloud_flag: Option<&str>, args: &DownArgs) -> anyhow::Result<()> {
    let spec = load_spec(file)?;
    let name = spec.name.clone();
    let config = cloud_config(cloud_flag, &spec)?;
    let state_path = state_path(&spec, args.state_dir.as_ref())?;
    runtime()?.block_on(async {
        let down = Down::open(spec, config, &state_path).await?;
        let kept = kept_backups(&down, args.delete_backups, &state_path);
        if down.is_empty(args.delete_volumes, args.delete_backups) {
            out!("cluster `{name}` has nothing in the cloud");
            for volume in &down.volumes {
                out!(
                    "  its volume {} ({} GB) is kept; `down --delete-volumes` removes it",
                    volume.id,
                    volume.size
                );
            }
            for snapshot in &down.volume_snapshots {
                out!(
                    "  its volume snapshot {} ({} GB) is kept; `down --delete-volumes` removes it",
                    snapshot.id,
                    snapshot.size
                );
            }
            kept.iter().for_each(|line| out!("  {line}"));
            return Ok(());
        }
        if !args.yes {
            confirm(&name, &down, args.delete_backups)?;
        }
        let progress = Progress::new(false);
        let removed = down
            .run(args.delete_volumes, args.delete_backups, &|line| {
                progress.step(line)
            })
            .await;
        progress.finish();
        out!(
            "cluster `{name}` removed: {} resource(s) deleted, none left",
            removed?
        );
        kept.iter().for_each(|line| out!("  {line}"));
        Ok(())
    })
}

/// What `down` says of the snapshots it keeps: where they are, and that only the state
/// directory reads them.
fn kept_backups(down: &Down, delete_backups: bool, state_path: &Path) -> Vec<String> {
    let backups = &down.backups;
    if delete_backups {
        return Vec::new();
    }
    if let Some(why) = &down.backups_unread {
        return vec![format!(
            "its backups, if any, are kept: the object store could not be read ({why})"
        )];
    }
    if backups.containers.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "its {} etcd snapshot(s) are kept in the object store ({}); `down --delete-backups` removes them; only the state directory {} can read them",
        backups.snapshots.len(),
        backups.containers.join(", "),
        state_path.display()
    )]
}

fn confirm(cluster: &str, down: &Down, delete_backups: bool) -> anyhow::Result<()> {
    let observed: &Observed = &down.observed;
    let backups = match delete_backups {
        true => down.backups.containers.len(),
        false => 0,
    };
    if !std::io::stdin().is_terminal() {
        return Err(InvalidInput(format!(
            "`down` would delete {} resource(s) of cluster `{cluster}`{}; pass --yes to confirm without a terminal",
            observed.count(),
            match backups {
                0 => String::new(),
                n => format!(" and {n} backup container(s)"),
            }
        ))
        .into());
    }
    out!("`down` deletes everything cluster `{cluster}` owns:");
    for line in observed.describe() {
        out!("  {line}");
    }
    if delete_backups {
        for container in &down.backups.containers {
            out!("  backup container {container} and every snapshot in it");
        }
    }
    out_inline!("type the cluster name to confirm: ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() != cluster {
        return Err(InvalidInput("not confirmed; nothing was deleted".into()).into());
    }
    Ok(())
}

/// Step lines of a run: a spinner with the current step on a terminal, plain lines otherwise
/// (on stderr when stdout carries JSON).
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    to_stderr: bool,
}

impl Progress {
    fn new(to_stderr: bool) -> Progress {
        let terminal = match to_stderr {
            true => std::io::stderr().is_terminal(),
            false => std::io::stdout().is_terminal(),
        };
        let bar = terminal.then(|| {
            let bar = match to_stderr {
                true => indicatif::ProgressBar::with_draw_target(
                    None,
                    indicatif::ProgressDrawTarget::stderr(),
                ),
                false => indicatif::ProgressBar::new_spinner(),
            };
            bar.set_style(indicatif::ProgressStyle::default_spinner());
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        Progress { bar, to_stderr }
    }

    fn step(&self, line: &str) {
        match (&self.bar, self.to_stderr) {
            (Some(bar), _) => {
                bar.println(format!("  {line}"));
                bar.set_message(line.to_string());
            }
            (None, true) => eprintln!("  {line}"),
            (None, false) => out!("  {line}"),
        }
    }

    /// An engine event: a step's line, or a count on the spinner (and as a line without one).
    fn event(&self, event: Event) {
        match event {
            Event::Started { line, .. } | Event::Finished { line, .. } | Event::Say(line) => {
                self.step(&line)
            }
            Event::ServersActive { done, total } => match &self.bar {
                Some(bar) => bar.set_message(format!("servers {done}/{total} ACTIVE")),
                None => self.step(&format!("{done}/{total} servers ACTIVE")),
            },
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
