//! `flatstack status`: the cluster's cloud resources, whether `up` has work left, and what its
//! API says (nodes, Flatcar releases and reboots, add-ons, secrets left open, and with 3 or 5
//! control planes etcd's members and the API address's holder), as text or JSON.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::cloud::{cloud_config, runtime};
use super::up::{ApiArgs, Output};
use super::{load_spec, state_path};
use crate::apply;
use crate::apply::charts::ChartState;
use crate::apply::status::{ControlPlaneView, KubernetesStatus, StatusReport, StatusRequest};
use crate::kube::{NodeRow, RebootState};
use crate::plan::resources::Observed;

#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// State directory holding the cluster's PKI (default: $XDG_DATA_HOME/flatstack/<name>).
    #[arg(long, env = "FLATSTACK_STATE_DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// `text` for people, `json` for programs.
    #[arg(long, value_enum, default_value = "text")]
    pub(crate) output: Output,
}

pub(crate) fn status(
    file: &Path,
    cloud_flag: Option<&str>,
    args: &StatusArgs,
) -> anyhow::Result<()> {
    let spec = load_spec(file)?;
    let cloud = cloud_config(cloud_flag, &spec)?;
    let state_path = state_path(&spec, args.state_dir.as_ref())?;
    let report = runtime()?.block_on(apply::status::status(StatusRequest {
        spec,
        cloud,
        state_path,
        api_address: args.api.api_address.clone(),
    }))?;
    match args.output {
        Output::Json => out!(
            "{}",
            serde_json::to_string_pretty(&StatusJson::of(&report))?
        ),
        Output::Text => print_status(&report),
    }
    let failed = report.failed_servers();
    if !failed.is_empty() {
        anyhow::bail!("server(s) in ERROR: {}", failed.join(", "));
    }
    Ok(())
}

fn print_status(report: &StatusReport) {
    out!("cluster `{}` on cloud `{}`", report.cluster, report.cloud);
    if report.observed.count() == 0 {
        out!("  nothing in the cloud: run `flatstack up`");
        return;
    }
    out!("{:<16} {:<40} {:<8} detail", "KIND", "NAME", "STATE");
    for r in resources(&report.observed) {
        out!("{:<16} {:<40} {:<8} {}", r.kind, r.name, r.state, r.detail);
    }
    match &report.load_balancer_members {
        Some(Ok(members)) => {
            for m in members {
                out!(
                    "the API's load balancer reaches control plane {} ({}): {}",
                    m.name,
                    m.address,
                    m.operating_status
                );
            }
        }
        Some(Err(why)) => out!("{why}"),
        None => {}
    }
    match &report.pending {
        Ok(0) => {}
        Ok(steps) => out!("{steps} step(s) pending: run `flatstack plan` to see them"),
        Err(why) => out!("cannot plan: {why}"),
    }
    match &report.kubernetes {
        KubernetesStatus::Unavailable(why) => out!("{why}"),
        KubernetesStatus::Answered {
            nodes,
            reboots,
            addons,
            secrets,
            control_planes,
            certificates,
        } => {
            out!();
            crate::kube::print_node_table(nodes);
            print_updates(nodes, reboots);
            if let Some(view) = control_planes {
                print_control_planes(view);
            }
            print_addons(addons);
            for line in secrets {
                out!("{line}");
            }
            print_certificates(certificates);
        }
    }
    match report.secrets_encrypted {
        Some(true) => out!("Secrets at rest: encrypted by the API servers (secretbox)"),
        Some(false) => out!(
            "Secrets at rest: not encrypted (the cluster was made before flatstack encrypted them; `flatstack restore` into a new cluster encrypts them)"
        ),
        None => {}
    }
    match &report.backups {
        None => {}
        Some(Err(why)) => out!("{why}"),
        Some(Ok(backups)) => print_backups(backups),
    }
    let now = time::OffsetDateTime::now_utc();
    for cert in &report.client_certificates {
        let due = if cert.due(now) {
            ": `flatstack up` or `flatstack kubeconfig` re-issues it"
        } else {
            ""
        };
        out!(
            "flatstack's {} client certificate {}{due}",
            cert.who,
            cert.describe(now)
        );
    }
}

/// The newest snapshot's age, and a warning on stderr when the CronJob missed two in a row.
fn print_backups(backups: &crate::backup::Freshness) {
    let container = backups.containers.first().map_or("", String::as_str);
    match (&backups.newest, backups.age_seconds) {
        (Some(newest), Some(age)) => {
            out!(
                "backups: the newest snapshot is {} old ({newest}); {} kept in {container} (every {}h)",
                crate::kube::age_between(0, age),
                backups.count,
                backups.every_hours
            );
            if backups.stale {
                eprintln!(
                    "warning: the newest etcd snapshot is {} old, more than twice the schedule (every {}h): the snapshot CronJob has missed at least two\n  hint: `kubectl -n kube-system get jobs -l app.kubernetes.io/name=flatstack-etcd-backup` and their pods' logs say why",
                    crate::kube::age_between(0, age),
                    backups.every_hours
                );
            }
        }
        _ => {
            out!(
                "backups: no snapshot yet in {container} (the CronJob takes one every {}h)",
                backups.every_hours
            );
            if let (true, Some(age)) = (backups.stale, backups.container_age_seconds) {
                eprintln!(
                    "warning: no etcd snapshot in {container}, which was made {} ago, more than twice the schedule (every {}h): the snapshot CronJob has missed at least two\n  hint: `kubectl -n kube-system get jobs -l app.kubernetes.io/name=flatstack-etcd-backup` and their pods' logs say why",
                    crate::kube::age_between(0, age),
                    backups.every_hours
                );
            }
        }
    }
}

/// When kubeadm's certificates expire: the soonest, and a warning for each within 30 days.
fn print_certificates(certificates: &apply::status::Certificates) {
    if let Some(soonest) = certificates.expiries.first() {
        out!(
            "kubeadm's certificates: the soonest, {} on {}, expires {} (in {} days)",
            soonest.name,
            soonest.node,
            soonest.expires,
            soonest.days_left
        );
    }
    for cert in certificates.expiring() {
        eprintln!(
            "warning: certificate {} on {} expires {} (in {} days)\n  hint: an upgrade renews the certificates of every component kubeadm replaces (`kubernetes.version` to the next patch, then `flatstack up`); `kubeadm certs renew all` on that control plane renews them all",
            cert.name, cert.node, cert.expires, cert.days_left
        );
    }
    for why in &certificates.unread {
        out!("cannot read kubeadm's certificates on {why}");
    }
}

/// One resource of the cluster's in the cloud.
#[derive(Serialize)]
struct ResourceRow {
    kind: &'static str,
    name: String,
    state: String,
    detail: String,
}

/// Every resource of the cluster's in the cloud, as rows.
fn resources(observed: &Observed) -> Vec<ResourceRow> {
    let mut rows = Vec::new();
    let mut row = |kind: &'static str, name: &str, state: &str, detail: String| {
        rows.push(ResourceRow {
            kind,
            name: name.to_string(),
            state: state.to_string(),
            detail,
        })
    };
    for n in &observed.networks {
        row("network", &n.name, &n.status, n.id.clone());
    }
    for s in &observed.subnets {
        row("subnet", &s.name, "", s.cidr.clone());
    }
    for r in &observed.routers {
        row("router", &r.name, &r.status, r.id.clone());
    }
    for g in &observed.security_groups {
        let rules = format!("{} rules", g.security_group_rules.len());
        row("security group", &g.name, "", rules);
    }
    for g in &observed.server_groups {
        let members = format!("{} member(s)", g.members.len());
        row("server group", &g.name, "", members);
    }
    for p in &observed.ports {
        let addresses: Vec<&str> = p
            .fixed_ips
            .iter()
            .map(|ip| ip.ip_address.as_str())
            .collect();
        row("port", &p.name, &p.status, addresses.join(", "));
    }
    for f in &observed.floating_ips {
        let target = observed
            .ports
            .iter()
            .find(|p| Some(&p.id) == f.port_id.as_ref())
            .map_or("not attached".to_string(), |p| format!("-> {}", p.name));
        row("floating IP", &f.floating_ip_address, &f.status, target);
    }
    for balancer in &observed.api_load_balancers {
        let vip = balancer.vip_address.as_deref().unwrap_or("no address");
        let detail = format!("VIP {vip} (the API's)");
        row(
            "load balancer",
            &balancer.name,
            &balancer.provisioning_status,
            detail,
        );
    }
    for balancer in &observed.load_balancers {
        let vip = balancer.vip_address.as_deref().unwrap_or("no address");
        let detail = format!("VIP {vip} (made by the cloud controller)");
        row(
            "load balancer",
            &balancer.name,
            &balancer.provisioning_status,
            detail,
        );
    }
    for f in &observed.service_floating_ips {
        row(
            "floating IP",
            &f.floating_ip_address,
            &f.status,
            f.description.clone(),
        );
    }
    for server in &observed.servers {
        let detail = match &server.fault {
            Some(fault) if server.status == "ERROR" => format!("fault: {}", fault.message),
            _ => match server
                .metadata
                .get(crate::plan::resources::KUBERNETES_METADATA)
            {
                Some(release) => format!("{}, Kubernetes {release}", server.id),
                None => server.id.clone(),
            },
        };
        row("server", &server.name, &server.status, detail);
    }
    rows
}

fn print_addons(addons: &Result<Vec<ChartState>, String>) {
    match addons {
        Ok(charts) if !charts.is_empty() => {
            out!();
            out!("{:<36} {:<36} {:<10} STATE", "ADD-ON", "CHART", "VERSION");
            for c in charts {
                out!(
                    "{:<36} {:<36} {:<10} {}",
                    c.name,
                    c.chart,
                    c.version,
                    c.state
                );
            }
        }
        Ok(_) => out!("no add-ons yet: `flatstack up` installs them"),
        Err(e) => out!("cannot read the add-ons: {e}"),
    }
}

/// Each node's Flatcar release and whether it waits for kured to reboot it.
fn print_updates(
    nodes: &[k8s_openapi::api::core::v1::Node],
    reboots: &std::collections::BTreeMap<String, RebootState>,
) {
    out!();
    out!("{:<40} {:<12} REBOOT", "NODE", "FLATCAR");
    for node in nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        let version = crate::kube::flatcar_version(node).unwrap_or_else(|| "-".into());
        let state = reboots.get(&name).copied().unwrap_or(RebootState::Unknown);
        out!("{name:<40} {version:<12} {}", state.as_str());
    }
}

/// Each control plane's etcd membership, and who holds the API's address.
fn print_control_planes(view: &ControlPlaneView) {
    out!();
    match &view.members {
        Ok(rows) => {
            out!("{:<40} {:<20} MEMBER", "CONTROL PLANE", "ETCD");
            for r in rows {
                out!(
                    "{:<40} {:<20} {}",
                    r.name,
                    r.etcd,
                    r.member_id.as_deref().unwrap_or("-")
                );
            }
        }
        Err(why) => out!("{why}"),
    }
    match &view.holder {
        Some(Ok(Some(holder))) => out!("the API's address is held by {holder} (kube-vip)"),
        Some(Ok(None)) => {
            out!("no control plane holds the API's address (kube-vip has no leader)")
        }
        Some(Err(why)) => out!("{why}"),
        None => {}
    }
}

/// What `status --output json` prints.
#[derive(Serialize)]
struct StatusJson<'a> {
    cluster: &'a str,
    cloud: &'a str,
    resources: Vec<ResourceRow>,
    /// How many steps `up` would run; absent when no plan could be made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pending_steps: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cannot_plan: Option<&'a str>,
    /// Why the API was not asked or did not answer; absent when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    kubernetes_unavailable: Option<&'a str>,
    nodes: Vec<NodeJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    addons: Option<&'a [ChartState]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    control_planes: Option<ControlPlanesJson<'a>>,
    /// kubeadm's certificates on the control planes, soonest to expire first.
    certificates: &'a [crate::kube::certificates::CertificateExpiry],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    certificates_unreadable: &'a [String],
    secrets: &'a [String],
    failed_servers: Vec<&'a str>,
    /// The API load balancer's members and Octavia's view of their health.
    #[serde(skip_serializing_if = "Option::is_none")]
    load_balancer_members: Option<&'a [crate::cloud::load_balancer::MemberHealth]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    load_balancer_members_unreadable: Option<&'a str>,
    /// The newest snapshot and how many are kept; absent when backups are off.
    #[serde(skip_serializing_if = "Option::is_none")]
    backups: Option<&'a crate::backup::Freshness>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backups_unreadable: Option<&'a str>,
}

#[derive(Serialize)]
struct NodeJson {
    #[serde(flatten)]
    row: NodeRow,
    flatcar: Option<String>,
    reboot: &'static str,
}

#[derive(Serialize)]
struct ControlPlanesJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    etcd: Option<&'a [apply::status::MemberRow]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    etcd_unreadable: Option<&'a str>,
    /// The control plane holding the API's address, when one does.
    api_address_holder: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    holder_unreadable: Option<&'a str>,
}

impl<'a> StatusJson<'a> {
    fn of(report: &'a StatusReport) -> StatusJson<'a> {
        let now = crate::kube::now();
        let mut json = StatusJson {
            cluster: &report.cluster,
            cloud: &report.cloud,
            resources: resources(&report.observed),
            pending_steps: report.pending.as_ref().ok().copied(),
            cannot_plan: report.pending.as_ref().err().map(String::as_str),
            kubernetes_unavailable: None,
            nodes: Vec::new(),
            addons: None,
            control_planes: None,
            certificates: &[],
            certificates_unreadable: &[],
            secrets: &[],
            failed_servers: report.failed_servers(),
            load_balancer_members: match &report.load_balancer_members {
                Some(Ok(members)) => Some(members),
                _ => None,
            },
            load_balancer_members_unreadable: match &report.load_balancer_members {
                Some(Err(why)) => Some(why),
                _ => None,
            },
            backups: report.backups.as_ref().and_then(|b| b.as_ref().ok()),
            backups_unreadable: report
                .backups
                .as_ref()
                .and_then(|b| b.as_ref().err())
                .map(String::as_str),
        };
        match &report.kubernetes {
            KubernetesStatus::Unavailable(why) => json.kubernetes_unavailable = Some(why),
            KubernetesStatus::Answered {
                nodes,
                reboots,
                addons,
                secrets,
                control_planes,
                certificates,
            } => {
                json.certificates = &certificates.expiries;
                json.certificates_unreadable = &certificates.unread;
                json.nodes = nodes
                    .iter()
                    .map(|node| {
                        let name = node.metadata.name.clone().unwrap_or_default();
                        NodeJson {
                            row: NodeRow::of(node, now),
                            flatcar: crate::kube::flatcar_version(node),
                            reboot: reboots
                                .get(&name)
                                .copied()
                                .unwrap_or(RebootState::Unknown)
                                .as_str(),
                        }
                    })
                    .collect();
                json.addons = addons.as_ref().ok().map(Vec::as_slice);
                json.secrets = secrets;
                json.control_planes = control_planes.as_ref().map(|view| ControlPlanesJson {
                    etcd: view.members.as_ref().ok().map(Vec::as_slice),
                    etcd_unreadable: view.members.as_ref().err().map(String::as_str),
                    api_address_holder: view
                        .holder
                        .as_ref()
                        .and_then(|h| h.as_ref().ok())
                        .and_then(|h| h.as_deref()),
                    holder_unreadable: view
                        .holder
                        .as_ref()
                        .and_then(|h| h.as_ref().err())
                        .map(String::as_str),
                });
            }
        }
        json
    }
}
