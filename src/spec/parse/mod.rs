//! From TOML text to a [`ClusterSpec`]: defaults, types and every semantic rule, each
//! violation reported at the value that breaks it, all of them in one pass. This module reads
//! the file's top level and checks the rules that span sections; each section has its own
//! reader beside it: [`kubernetes`], [`flatcar`], [`nodes`] (control plane and worker pools),
//! [`network`], [`access`], [`addons`] (ingress and JupyterHub), [`updates`] and [`backup`].

mod access;
mod addons;
mod backup;
mod flatcar;
mod kubernetes;
mod network;
mod nodes;
mod updates;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::ops::Range;

use base64::Engine as _;
use ipnet::{IpNet, Ipv4Net};
use toml::de::DeTable;

use super::diagnostic::{Diagnostic, Problems};
use super::document::{At, Table};
use super::*;
use crate::pins::{self, KubernetesVersion};
use access::*;
use addons::*;
use backup::*;
use flatcar::*;
use kubernetes::*;
use network::*;
use nodes::*;
use updates::*;

/// Longest node name: Kubernetes node names and hostnames are DNS-1123 labels.
pub(super) const MAX_NODE_NAME: usize = 63;

/// Most workers one pool may ask for.
pub(super) const MAX_POOL_COUNT: i64 = 500;

/// Most nodes of one cluster: the pod range, the servers created per run and the API's
/// watch load are all sized for this.
pub(super) const MAX_NODES: usize = 1000;

/// Smallest boot volume a Flatcar image fits on, in GB.
pub(super) const MIN_BOOT_VOLUME_GB: i64 = 10;

/// The per-node pod range kube-controller-manager allocates by default (IPv4).
pub(super) const NODE_POD_PREFIX: u8 = 24;

/// Pool addresses of the node subnet left over for Neutron's DHCP ports beyond one per node.
pub(super) const SPARE_POOL_ADDRESSES: u64 = 4;

pub(super) const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

pub(super) fn parse(text: &str) -> Result<ClusterSpec, Vec<Diagnostic>> {
    let document = match DeTable::parse(text) {
        Ok(document) => document,
        Err(error) => {
            let span = error.span().unwrap_or(0..0);
            let message = format!("not valid TOML: {}", error.message().trim_end());
            return Err(vec![
                Diagnostic::new(span, message).hint("see the cluster file reference in the README"),
            ]);
        }
    };
    let mut p = Problems::default();
    let spec = read_cluster(Table::root(&document), &mut p);
    match spec {
        Some(spec) if p.is_empty() => Ok(spec),
        _ => Err(p.into_vec()),
    }
}

pub(super) fn read_cluster(mut root: Table<'_, '_>, p: &mut Problems) -> Option<ClusterSpec> {
    let name = root.string("name", p);
    match &name {
        Some(name) => check_dns_label(name, "name", p),
        None => root.missing(
            "name",
            "add e.g. `name = \"demo\"` at the top of the file",
            p,
        ),
    }
    let cloud = root.string("cloud", p);
    match &cloud {
        Some(c) if c.get_ref().trim().is_empty() => p.error(
            c.span(),
            "`cloud` is empty",
            "name an entry of your clouds.yaml, e.g. `cloud = \"openstack\"`",
        ),
        // Without `cloud`, the cloud comes from --cloud, OS_CLOUD or an openrc's OS_* variables.
        _ => {}
    }

    let kubernetes = read_required(
        &mut root,
        "kubernetes",
        "add a [kubernetes] table with `version`",
        p,
    )
    .and_then(|t| read_kubernetes(t, p));
    let flatcar = match root.table("flatcar", p) {
        Some(t) => read_flatcar(t, p),
        None => Some(FlatcarSpec {
            channel: Channel::Stable,
            version: None,
            image: None,
        }),
    };
    let control_plane = read_required(
        &mut root,
        "control_plane",
        "add a [control_plane] table with at least `flavor`",
        p,
    )
    .and_then(|t| read_control_plane(t, p));
    let pool_tables = root.tables("worker_pools", p);
    let worker_pools: Vec<WorkerPool> = pool_tables
        .into_iter()
        .filter_map(|t| read_worker_pool(t, p))
        .collect();
    let network_table = root.table("network", p);
    let network_span = network_table.as_ref().map_or(0..0, |t| t.span());
    let network = read_network(network_table, p);
    let access = read_access(root.table("access", p), p);
    let addons = read_addons(root.table("addons", p), p);
    let ingress = read_ingress(root.table("ingress", p), p);
    let jupyterhub = read_jupyterhub(root.table("jupyterhub", p), p);
    let default_group = flatcar.as_ref().map_or(Channel::Stable, |f| f.channel);
    let updates = read_updates(root.table("updates", p), default_group, p);
    let backup = read_backup(root.table("backup", p), p);
    let root_span = root.span();
    root.finish(p);

    let spec = ClusterSpec {
        name: name?.into_inner(),
        cloud: cloud.map(At::into_inner),
        kubernetes: kubernetes?,
        flatcar: flatcar?,
        control_plane: control_plane?,
        worker_pools,
        network: network?,
        access: access?,
        addons: addons?,
        ingress: ingress?,
        updates: updates?,
        jupyterhub: jupyterhub?,
        backup: backup?,
    };
    check_cluster_wide(&spec, root_span, network_span, p);
    Some(spec)
}

pub(super) fn read_required<'a, 'i>(
    root: &mut Table<'a, 'i>,
    key: &'static str,
    hint: &str,
    p: &mut Problems,
) -> Option<Table<'a, 'i>> {
    let table = root.table(key, p);
    if table.is_none() {
        root.missing(key, hint, p);
    }
    table
}

/// Rules that involve more than one table.
pub(super) fn check_cluster_wide(
    spec: &ClusterSpec,
    root: Range<usize>,
    network: Range<usize>,
    p: &mut Problems,
) {
    if spec.addons.ingress
        && spec.ingress.exposure == IngressExposure::LoadBalancer
        && !spec.addons.cloud_controller
    {
        p.error(
            root.clone(),
            "`ingress.exposure = \"load-balancer\"` needs `addons.cloud_controller`",
            "the cloud controller makes the load balancer; use \"control-plane\" without it",
        );
    }
    if matches!(spec.jupyterhub.authenticator, Authenticator::GitHub { .. })
        && spec.ingress.hostname.is_none()
    {
        p.error(
            root.clone(),
            "`jupyterhub.authenticator = \"github\"` needs `ingress.hostname`",
            "GitHub sends users back to https://<hostname>/hub/oauth_callback: set `hostname` and `acme_email` in [ingress]",
        );
    }
    let mut seen = BTreeSet::new();
    for pool in &spec.worker_pools {
        if !seen.insert(pool.name.as_str()) {
            p.error(
                root.clone(),
                format!("two worker pools are named `{}`", pool.name),
                "give every [[worker_pools]] its own name",
            );
        }
        if pool.name == "control-plane" || pool.name.starts_with("control-plane-") {
            p.error(
                root.clone(),
                format!(
                    "worker pool `{}` would clash with control-plane node names",
                    pool.name
                ),
                "choose another pool name",
            );
        }
    }
    for node in spec.nodes() {
        if node.name.len() > MAX_NODE_NAME {
            p.error(
                root.clone(),
                format!(
                    "node name `{}` has {} characters; node names are at most {MAX_NODE_NAME}",
                    node.name,
                    node.name.len()
                ),
                "shorten the cluster name or the pool name",
            );
            break;
        }
    }

    let net = &spec.network;
    // Ranges a node, pod or service address can never come from.
    for (name, cidr) in net
        .node_cidr
        .map(|c| ("network.node_cidr", c))
        .into_iter()
        .chain([
            ("network.pod_cidr", net.pod_cidr),
            ("network.service_cidr", net.service_cidr),
        ])
    {
        if let Some(why) = reserved_range(cidr) {
            p.error(
                network.clone(),
                format!("`{name}` {cidr} lies in {why}"),
                "use a private range (10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16)",
            );
        }
    }
    let total = spec.nodes().len();
    if total > MAX_NODES {
        p.error(
            root.clone(),
            format!(
                "the cluster has {total} nodes; flatstack makes clusters of at most {MAX_NODES}"
            ),
            "lower the worker pools' counts, or split the work across clusters",
        );
    }
    let mut ranges = vec![
        ("network.pod_cidr", net.pod_cidr),
        ("network.service_cidr", net.service_cidr),
    ];
    if let Some(node) = net.node_cidr {
        ranges.insert(0, ("network.node_cidr", node));
    }
    for (i, (a_name, a)) in ranges.iter().enumerate() {
        for (b_name, b) in &ranges[i + 1..] {
            if a.contains(b) || b.contains(a) {
                p.error(
                    network.clone(),
                    format!("`{a_name}` {a} overlaps `{b_name}` {b}"),
                    "node, pod and service ranges must be disjoint",
                );
            }
        }
    }
    let total_nodes = spec.nodes().len() as u64;
    if let Some(node) = net.node_cidr {
        let usable = node.hosts().count() as u64;
        let fixed = match net.mode {
            NetworkMode::Create => super::FIXED_NODE_ADDRESSES as u64,
            NetworkMode::Reuse { .. } => 0,
        };
        if usable < total_nodes + fixed + SPARE_POOL_ADDRESSES {
            p.error(
                network.clone(),
                format!("`network.node_cidr` {node} has {usable} addresses for {total_nodes} nodes"),
                format!(
                    "flatstack keeps the first {fixed} for the gateway and fixed addresses and {SPARE_POOL_ADDRESSES} for DHCP; use a larger range such as /24"
                ),
            );
        }
    }
    let pod_prefix = net.pod_cidr.prefix_len();
    let node_ranges = if pod_prefix <= NODE_POD_PREFIX {
        1u64 << (NODE_POD_PREFIX - pod_prefix)
    } else {
        0
    };
    if node_ranges < total_nodes {
        p.error(
            network,
            format!(
                "`network.pod_cidr` {} has room for {node_ranges} nodes' /{NODE_POD_PREFIX} pod ranges, the cluster has {total_nodes} nodes",
                net.pod_cidr
            ),
            "use a larger pod range, e.g. 10.244.0.0/16",
        );
    }
}

pub(super) fn check_dns_label(value: &At<String>, key: &str, p: &mut Problems) {
    if !is_valid_name(value.get_ref()) {
        p.error(
            value.span(),
            format!("`{key}` is `{}`, not a valid name", value.get_ref()),
            NAME_RULE,
        );
    }
}

/// What cluster and pool names may look like; they become part of DNS names.
pub(crate) const NAME_RULE: &str = "use 1 to 40 lowercase letters, digits and '-', starting with a letter and not ending with '-' (it becomes part of DNS names)";

/// Whether `s` may name a cluster or a worker pool (see [`NAME_RULE`]).
pub(crate) fn is_valid_name(s: &str) -> bool {
    let valid_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let edges = s.starts_with(|c: char| c.is_ascii_lowercase()) && !s.ends_with('-');
    !s.is_empty() && s.len() <= 40 && valid_chars && edges
}

pub(super) fn check_http_url(url: &At<String>, p: &mut Problems) -> bool {
    let s = url.get_ref();
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    let ok = rest
        .is_some_and(|r| !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace));
    if !ok {
        p.error(
            url.span(),
            format!("`{s}` is not an http(s) URL"),
            "write a full URL such as \"https://mirror.example.org/extensions\"",
        );
    }
    ok
}

#[cfg(test)]
pub(super) mod testing {
    use crate::spec::ClusterSpec;

    /// A valid file's top level and required sections, before any section a test adds.
    pub(crate) fn base() -> String {
        format!(
            "name = \"demo\"\ncloud = \"c\"\n[kubernetes]\nversion = \"1.37.1\"\nsysext_sha256 = \"{}\"\n[control_plane]\nflavor = \"m3.small\"\n",
            "a".repeat(64)
        )
    }

    /// `text` parsed, or the messages of its problems.
    pub(crate) fn parsed(text: &str) -> Result<ClusterSpec, Vec<String>> {
        ClusterSpec::parse("cluster.toml", text).map_err(|invalid| {
            invalid
                .problems
                .iter()
                .map(|d| d.message().to_string())
                .collect()
        })
    }

    /// The base file with `extra` after it, parsed.
    pub(crate) fn with(extra: &str) -> Result<ClusterSpec, Vec<String>> {
        parsed(&format!("{}{extra}", base()))
    }

    /// The problems of the base file with `extra`, which must have some.
    pub(crate) fn problems(extra: &str) -> Vec<String> {
        match with(extra) {
            Ok(_) => panic!("accepted: {extra}"),
            Err(problems) => problems,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_valid_name;
    use super::testing::*;

    #[test]
    fn every_problem_of_a_file_is_reported_in_one_pass() {
        let problems = problems("colour = \"blue\"\n[network]\ndns_servers = [\"x\"]\n");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("colour"), "{problems:?}");
    }

    #[test]
    fn the_name_is_required_and_must_be_a_dns_label() {
        let missing = parsed(&base().replace("name = \"demo\"\n", "")).expect_err("no name");
        assert!(missing[0].contains("`name`"), "{missing:?}");
        assert!(!is_valid_name("Demo_1") && is_valid_name("demo-1"));
    }
}
