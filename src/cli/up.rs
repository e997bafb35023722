//! `flatstack plan`, `flatstack up` and `flatstack down`: what would change, making it so, and
//! removing everything the cluster owns.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::cloud::{cloud_config, inspect, runtime};
use super::{InvalidInput, load_spec};
use crate::apply;
use crate::cloud::Cloud;
use crate::pki::{ClusterPki, Kubeconfig, StateDir};
use crate::plan::resources::{Action, Observed, Verb, diff};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// `text` for people, `json` for programs.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Stop once the cloud side is done (servers ACTIVE, floating IP attached): for clouds whose
    /// servers never boot, like the local test OpenStack.
    #[arg(long)]
    pub provision_only: bool,
    /// State directory holding the cluster's PKI (default: $XDG_DATA_HOME/flatstack/<name>).
    #[arg(long, env = "FLATSTACK_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct DownArgs {
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Also delete the persistent volumes the cluster's Cinder CSI driver created.
    #[arg(long)]
    pub delete_volumes: bool,
}

#[derive(Serialize)]
struct PlanReport<'a> {
    cluster: &'a str,
    cloud: &'a str,
    actions: &'a [Action],
    vcpus: u64,
    su_per_hour: u64,
}

pub fn plan(file: &Path, cloud_flag: Option<&str>, args: &PlanArgs) -> anyhow::Result<()> {
    let spec = load_spec(file)?;
    let config = cloud_config(cloud_flag, &spec)?;
    runtime()?.block_on(async {
        let cloud = Cloud::connect(config).await?;
        let observed = Observed::collect(&cloud, &spec.name).await?;
        let actions = diff(&spec, &observed);
        let flavors = cloud.flavors().await?;
        let (needs, _) = crate::plan::Needs::of(&spec, &flavors);
        let report = PlanReport {
            cluster: &spec.name,
            cloud: &cloud.config().name,
            actions: &actions,
            vcpus: needs.cores,
            su_per_hour: needs.vcpu_hours_per_hour(),
        };
        match args.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            Output::Text => print_plan(&report, &spec),
        }
        Ok(())
    })
}

fn print_plan(report: &PlanReport<'_>, spec: &crate::spec::ClusterSpec) {
    println!("cluster `{}` on cloud `{}`", report.cluster, report.cloud);
    for action in report.actions {
        let sign = match action.action {
            Verb::Create => '+',
            Verb::Delete => '-',
        };
        println!(
            "  {sign} {:<15} {:<40} {}",
            action.kind, action.name, action.detail
        );
    }
    let creates = report
        .actions
        .iter()
        .filter(|a| a.action == Verb::Create)
        .count();
    let deletes = report.actions.len() - creates;
    if report.actions.is_empty() {
        println!("  nothing to change: the cloud matches the cluster file");
    } else {
        println!("  {creates} to create, {deletes} to delete");
    }
    if spec.access.api_cidrs.iter().any(|c| c.prefix_len() == 0) {
        println!(
            "note: the Kubernetes API (6443) is open to any address; it demands client certificates"
        );
    }
    println!(
        "cost: {} vCPUs = {} SU per hour (Jetstream2 bills 1 SU per vCPU-hour)",
        report.vcpus, report.su_per_hour
    );
}

pub fn up(file: &Path, cloud_flag: Option<&str>, args: &UpArgs) -> anyhow::Result<()> {
    let spec = load_spec(file)?;
    if !args.provision_only {
        return Err(InvalidInput(
            "`flatstack up` can so far only provision the cloud side; bootstrap waiting and add-ons are not built yet\n  hint: run `flatstack up --provision-only`".into(),
        )
        .into());
    }
    let config = cloud_config(cloud_flag, &spec)?;
    let state_path = match &args.state_dir {
        Some(dir) => dir.clone(),
        None => StateDir::default_path(&spec.name)?,
    };
    runtime()?.block_on(async {
        let started = Instant::now();
        let cloud = Arc::new(Cloud::connect(config).await?);
        let observed = Observed::collect(&cloud, &spec.name).await?;
        let actions = diff(&spec, &observed);
        // Preflight: everything checked before the first create; quotas only for a new cluster.
        let inspection = inspect(&cloud, &spec, observed.count() == 0).await?;
        let problems = inspection.problems();
        if !problems.is_empty() {
            anyhow::bail!(
                "preflight failed, nothing was created; {}\n  hint: `flatstack cloud check` shows the details",
                problems.join("; ")
            );
        }
        if actions.is_empty() {
            let mutating = cloud.counter.mutating();
            println!("cluster `{}` is up to date: nothing to change ({mutating} changes made)", spec.name);
            return Ok(());
        }
        let image = inspection
            .image_id
            .ok_or_else(|| anyhow::anyhow!("no image to boot from"))?;
        let state = StateDir::open_or_create(&state_path)?;
        let pki = ClusterPki::load_or_create(&state)?;
        let progress = Progress::new();
        let say = |line: &str| progress.step(line);
        let provisioned = apply::provision(&cloud, &spec, &pki, &image, &say).await;
        progress.finish();
        let provisioned = provisioned?;
        let server = match provisioned.endpoint.public {
            Some(ip) => format!("https://{ip}:6443"),
            None => format!("https://{}:6443", provisioned.endpoint.internal),
        };
        let admin = crate::pki::kubeconfig_yaml(&pki, &spec.name, &server, Kubeconfig::Admin)?;
        state.write("admin.kubeconfig", admin.as_bytes(), 0o600)?;
        let super_admin = crate::pki::kubeconfig_yaml(&pki, &spec.name, &server, Kubeconfig::SuperAdmin)?;
        state.write("super-admin.kubeconfig", super_admin.as_bytes(), 0o600)?;
        println!("{:<44} {:<10} ID", "SERVER", "STATUS");
        for server in &provisioned.servers {
            println!("{:<44} {:<10} {}", server.name, server.status, server.id);
        }
        let mut timings = provisioned.timings.clone();
        timings.sort_by_key(|(_, took)| std::cmp::Reverse(*took));
        println!("timing, longest first:");
        for (phase, took) in &timings {
            println!("  {:<32} {:>7.2} s", phase, took.as_secs_f64());
        }
        println!("  {:<32} {:>7.2} s", "total", started.elapsed().as_secs_f64());
        println!(
            "cluster `{}` provisioned in {:.1} s with {} API calls; API endpoint {server}; kubeconfig {}",
            spec.name,
            started.elapsed().as_secs_f64(),
            cloud.counter.calls(),
            state.join("admin.kubeconfig").display()
        );
        Ok(())
    })
}

pub fn status(file: &Path, cloud_flag: Option<&str>) -> anyhow::Result<()> {
    let spec = load_spec(file)?;
    let config = cloud_config(cloud_flag, &spec)?;
    runtime()?.block_on(async {
        let cloud = Cloud::connect(config).await?;
        let observed = Observed::collect(&cloud, &spec.name).await?;
        println!("cluster `{}` on cloud `{}`", spec.name, cloud.config().name);
        if observed.count() == 0 {
            println!("  nothing in the cloud: run `flatstack up`");
            return Ok(());
        }
        println!("{:<16} {:<40} {:<8} detail", "KIND", "NAME", "STATE");
        let row = |kind: &str, name: &str, state: &str, detail: &str| {
            println!("{kind:<16} {name:<40} {state:<8} {detail}");
        };
        for n in &observed.networks {
            row("network", &n.name, &n.status, &n.id);
        }
        for s in &observed.subnets {
            row("subnet", &s.name, "", &s.cidr);
        }
        for r in &observed.routers {
            row("router", &r.name, &r.status, &r.id);
        }
        for g in &observed.security_groups {
            row(
                "security group",
                &g.name,
                "",
                &format!("{} rules", g.security_group_rules.len()),
            );
        }
        for g in &observed.server_groups {
            row(
                "server group",
                &g.name,
                "",
                &format!("{} member(s)", g.members.len()),
            );
        }
        for p in &observed.ports {
            let addresses: Vec<&str> = p
                .fixed_ips
                .iter()
                .map(|ip| ip.ip_address.as_str())
                .collect();
            row("port", &p.name, &p.status, &addresses.join(", "));
        }
        for f in &observed.floating_ips {
            let target = observed
                .ports
                .iter()
                .find(|p| Some(&p.id) == f.port_id.as_ref())
                .map_or("not attached".to_string(), |p| format!("-> {}", p.name));
            row("floating IP", &f.floating_ip_address, &f.status, &target);
        }
        let mut failed = Vec::new();
        for server in &observed.servers {
            let detail = match &server.fault {
                Some(fault) if server.status == "ERROR" => format!("fault: {}", fault.message),
                _ => server.id.clone(),
            };
            if server.status == "ERROR" {
                failed.push(server.name.clone());
            }
            row("server", &server.name, &server.status, &detail);
        }
        let missing = diff(&spec, &observed);
        if !missing.is_empty() {
            println!(
                "{} change(s) pending: run `flatstack plan` to see them",
                missing.len()
            );
        }
        println!(
            "the Kubernetes API is not queried yet: the node table comes with bootstrap waiting"
        );
        if !failed.is_empty() {
            anyhow::bail!("server(s) in ERROR: {}", failed.join(", "));
        }
        Ok(())
    })
}

pub fn down(file: &Path, cloud_flag: Option<&str>, args: &DownArgs) -> anyhow::Result<()> {
    let spec = load_spec(file)?;
    let config = cloud_config(cloud_flag, &spec)?;
    runtime()?.block_on(async {
        let cloud = Arc::new(Cloud::connect(config).await?);
        let observed = Observed::collect(&cloud, &spec.name).await?;
        let volumes = crate::plan::resources::cluster_volumes(&cloud, &spec.name).await?;
        if observed.count() == 0 && (volumes.is_empty() || !args.delete_volumes) {
            println!("cluster `{}` has nothing in the cloud", spec.name);
            for volume in &volumes {
                println!(
                    "  its volume {} ({} GB) is kept; `down --delete-volumes` removes it",
                    volume.id, volume.size
                );
            }
            return Ok(());
        }
        if !args.yes {
            confirm(&spec.name, &observed)?;
        }
        let progress = Progress::new();
        let say = |line: &str| progress.step(line);
        let removed = apply::teardown(&cloud, &spec.name, args.delete_volumes, &say).await;
        progress.finish();
        removed?;
        println!(
            "cluster `{}` removed: {} resource(s) deleted, none left",
            spec.name,
            observed.count()
        );
        Ok(())
    })
}

fn confirm(cluster: &str, observed: &Observed) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        return Err(InvalidInput(format!(
            "`down` would delete {} resource(s) of cluster `{cluster}`; pass --yes to confirm without a terminal",
            observed.count()
        ))
        .into());
    }
    println!("`down` deletes everything cluster `{cluster}` owns:");
    for line in observed.describe() {
        println!("  {line}");
    }
    print!("type the cluster name to confirm: ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() != cluster {
        return Err(InvalidInput("not confirmed; nothing was deleted".into()).into());
    }
    Ok(())
}

/// Step lines of a run: a spinner with the current step on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new() -> Progress {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        Progress { bar }
    }

    fn step(&self, line: &str) {
        match &self.bar {
            Some(bar) => {
                bar.println(format!("  {line}"));
                bar.set_message(line.to_string());
            }
            None => println!("  {line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
