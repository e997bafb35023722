//! From TOML text to a [`ClusterSpec`]: defaults, types and every semantic rule, each
//! violation reported at the value that breaks it, all of them in one pass.

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

/// Longest node name: Kubernetes node names and hostnames are DNS-1123 labels.
const MAX_NODE_NAME: usize = 63;
/// Most workers one pool may ask for.
const MAX_POOL_COUNT: i64 = 500;
/// Most nodes of one cluster: the pod range, the servers created per run and the API's
/// watch load are all sized for this.
const MAX_NODES: usize = 1000;
/// Smallest boot volume a Flatcar image fits on, in GB.
const MIN_BOOT_VOLUME_GB: i64 = 10;
/// The per-node pod range kube-controller-manager allocates by default (IPv4).
const NODE_POD_PREFIX: u8 = 24;
/// Addresses of the node subnet that flatstack leaves for routers, DHCP and DNS.
const RESERVED_NODE_ADDRESSES: u64 = 10;
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

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

fn read_cluster(mut root: Table<'_, '_>, p: &mut Problems) -> Option<ClusterSpec> {
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
    };
    check_cluster_wide(&spec, root_span, network_span, p);
    Some(spec)
}

fn read_required<'a, 'i>(
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

fn read_kubernetes(mut t: Table<'_, '_>, p: &mut Problems) -> Option<KubernetesSpec> {
    let version_text = t.string("version", p);
    let sysext_url = t.string("sysext_url", p);
    let sysext_sha256 = t.string("sysext_sha256", p);
    let sysupdate_url = t.string("sysupdate_url", p);
    let patch_updates = t.boolean("patch_updates", p);
    let span = t.span();
    let version_path = t.key_path("version");
    t.finish(p);

    let Some(version_text) = version_text else {
        p.error(
            span,
            format!("missing required key `{version_path}`"),
            version_hint(),
        );
        return None;
    };
    let Some(version) = KubernetesVersion::parse(version_text.get_ref()) else {
        p.error(
            version_text.span(),
            format!(
                "`{version_path}` is `{}`, not a Kubernetes release MAJOR.MINOR.PATCH",
                version_text.get_ref()
            ),
            version_hint(),
        );
        return None;
    };
    if pins::supported_minor(version).is_none() {
        p.error(
            version_text.span(),
            format!("Kubernetes {version} is not supported"),
            format!(
                "flatstack supports the minors upstream supports: {} (e.g. `version = \"{}\"`)",
                pins::supported_minors_list(),
                pins::default_kubernetes()
                    .to_string()
                    .trim_start_matches('v')
            ),
        );
        return None;
    }

    for url in [&sysext_url, &sysupdate_url].into_iter().flatten() {
        check_http_url(url, p);
    }
    if let Some(url) = &sysext_url
        && url.get_ref().ends_with('/')
    {
        p.error(
            url.span(),
            format!(
                "`kubernetes.sysext_url` `{}` names a directory, not an image file",
                url.get_ref()
            ),
            "end it with the image's file name, e.g. `.../kubernetes-v1.37.1-x86-64.raw`",
        );
    }
    let sha256 = match &sysext_sha256 {
        Some(sha) => {
            let normalized = sha.get_ref().trim().to_ascii_lowercase();
            if normalized.len() != 64 || !normalized.bytes().all(|b| b.is_ascii_hexdigit()) {
                p.error(
                    sha.span(),
                    "`kubernetes.sysext_sha256` must be 64 hexadecimal digits",
                    "use the output of `sha256sum` on the image, without the file name",
                );
                return None;
            }
            Some(normalized)
        }
        None => None,
    };
    // Without a digest here, `plan`, `render` and `up` read it from the SHA256SUMS published
    // beside the image, and record it for the cluster.
    let url = match &sysext_url {
        Some(url) => url.get_ref().clone(),
        None => format!("{}/{}", pins::SYSEXT_BAKERY, version.sysext_file_name()),
    };
    let patch_updates = patch_updates.is_none_or(At::into_inner);
    let sysupdate_url = match (patch_updates, sysupdate_url, &sysext_url) {
        (false, _, _) => None,
        (true, Some(url), _) => Some(url.into_inner()),
        (true, None, None) => Some(format!("{}/kubernetes", pins::SYSEXT_BAKERY)),
        (true, None, Some(_)) => None,
    };
    Some(KubernetesSpec {
        version,
        sysext_url: url,
        sysext_sha256: sha256,
        sysupdate_url,
    })
}

fn version_hint() -> String {
    let version = pins::default_kubernetes().to_string();
    format!("e.g. `version = \"{}\"`", version.trim_start_matches('v'))
}

fn read_flatcar(mut t: Table<'_, '_>, p: &mut Problems) -> Option<FlatcarSpec> {
    let channel = t.string("channel", p);
    let version = t.string("version", p);
    let image = t.string("image", p);
    t.finish(p);
    let channel = match channel {
        None => Some(Channel::Stable),
        Some(c) => {
            let parsed = Channel::parse(c.get_ref());
            if parsed.is_none() {
                p.error(
                    c.span(),
                    format!("unknown Flatcar channel `{}`", c.get_ref()),
                    "use one of stable, beta, alpha, lts",
                );
            }
            parsed
        }
    };
    if let Some(v) = &version {
        let parts: Vec<&str> = v.get_ref().split('.').collect();
        let numeric = parts.len() == 3
            && parts
                .iter()
                .all(|x| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()));
        if !numeric {
            p.error(
                v.span(),
                format!(
                    "`flatcar.version` is `{}`, not a Flatcar release",
                    v.get_ref()
                ),
                "Flatcar releases look like `4230.2.3`; leave it out for the newest of the channel",
            );
        }
    }
    if let Some(i) = &image {
        if i.get_ref().trim().is_empty() {
            p.error(
                i.span(),
                "`flatcar.image` is empty",
                "name a Glance image, or leave it out",
            );
        }
        if let Some(v) = &version {
            p.error(
                v.span(),
                "`flatcar.version` and `flatcar.image` both choose the image",
                "keep one: `image` boots an existing Glance image, `version` the release `flatstack image ensure` uploads",
            );
        }
    }
    Some(FlatcarSpec {
        channel: channel?,
        version: version.map(At::into_inner),
        image: image.map(At::into_inner),
    })
}

fn read_control_plane(mut t: Table<'_, '_>, p: &mut Problems) -> Option<ControlPlaneSpec> {
    let count = t.integer("count", p);
    let flavor = read_flavor(&mut t, p);
    let boot_volume_gb = read_boot_volume(&mut t, p);
    t.finish(p);
    let count = match count {
        None => Some(1),
        Some(c) if *c.get_ref() == 1 => Some(1),
        Some(c) if *c.get_ref() == 3 => {
            p.error(
                c.span(),
                "3 control planes are not supported yet",
                "use `count = 1`; highly available control planes are planned",
            );
            None
        }
        Some(c) => {
            p.error(
                c.span(),
                format!("`control_plane.count` is {}; it must be 1", c.get_ref()),
                "etcd needs an odd number of members; flatstack runs 1 (3 later)",
            );
            None
        }
    };
    Some(ControlPlaneSpec {
        count: count?,
        flavor: flavor?,
        boot_volume_gb: boot_volume_gb?,
    })
}

fn read_flavor(t: &mut Table<'_, '_>, p: &mut Problems) -> Option<String> {
    match t.string("flavor", p) {
        Some(f) if f.get_ref().trim().is_empty() => {
            p.error(
                f.span(),
                format!("`{}` is empty", t.key_path("flavor")),
                "name a Nova flavor, e.g. `m3.small`",
            );
            None
        }
        Some(f) => Some(f.into_inner()),
        None => {
            t.missing(
                "flavor",
                "name a Nova flavor, e.g. `flavor = \"m3.small\"`",
                p,
            );
            None
        }
    }
}

/// `Some(None)` when absent, `None` when invalid.
fn read_boot_volume(t: &mut Table<'_, '_>, p: &mut Problems) -> Option<Option<u32>> {
    match t.integer("boot_volume_gb", p) {
        None => Some(None),
        Some(gb) if (MIN_BOOT_VOLUME_GB..=16_384).contains(gb.get_ref()) => {
            Some(u32::try_from(*gb.get_ref()).ok())
        }
        Some(gb) => {
            p.error(
                gb.span(),
                format!("`{}` is {}", t.key_path("boot_volume_gb"), gb.get_ref()),
                format!("a boot volume holds {MIN_BOOT_VOLUME_GB} to 16384 GB; leave it out to boot from the flavor's disk"),
            );
            None
        }
    }
}

fn read_worker_pool(mut t: Table<'_, '_>, p: &mut Problems) -> Option<WorkerPool> {
    let name = t.string("name", p);
    let count = t.integer("count", p);
    let flavor = read_flavor(&mut t, p);
    let boot_volume_gb = read_boot_volume(&mut t, p);
    let labels = t.string_map("labels", p).unwrap_or_default();
    let taints = t.strings("taints", p).unwrap_or_default();
    let label_path = t.key_path("labels");
    let taint_path = t.key_path("taints");
    match &name {
        Some(n) => check_dns_label(n, &t.key_path("name"), p),
        None => t.missing("name", "give the pool a name, e.g. `name = \"default\"`", p),
    }
    let count = match count {
        None => {
            t.missing("count", "say how many workers, e.g. `count = 2`", p);
            None
        }
        Some(c) if (0..=MAX_POOL_COUNT).contains(c.get_ref()) => u32::try_from(*c.get_ref()).ok(),
        Some(c) => {
            p.error(
                c.span(),
                format!("`{}` is {}", t.key_path("count"), c.get_ref()),
                format!("a pool holds 0 to {MAX_POOL_COUNT} workers"),
            );
            None
        }
    };
    t.finish(p);

    let mut label_map = BTreeMap::new();
    for (key, value) in labels {
        check_label_key(&key, &label_path, p);
        check_label_value(&value, &label_path, p);
        label_map.insert(key.into_inner(), value.into_inner());
    }
    let taints: Vec<Taint> = taints
        .iter()
        .filter_map(|taint| parse_taint(taint, &taint_path, p))
        .collect();
    Some(WorkerPool {
        name: name?.into_inner(),
        count: count?,
        flavor: flavor?,
        boot_volume_gb: boot_volume_gb?,
        labels: label_map,
        taints,
    })
}

fn read_network(t: Option<Table<'_, '_>>, p: &mut Problems) -> Option<NetworkSpec> {
    let Some(mut t) = t else {
        return Some(default_network());
    };
    let existing_network = t.string("existing_network", p);
    let existing_subnet = t.string("existing_subnet", p);
    let existing_router = t.string("existing_router", p);
    let external_network = t.string("external_network", p);
    let node_cidr = t.string("node_cidr", p);
    let pod_cidr = t.string("pod_cidr", p);
    let service_cidr = t.string("service_cidr", p);
    let dns_servers = t.strings("dns_servers", p).unwrap_or_default();
    t.finish(p);

    let defaults = default_network();
    let mode = match existing_network {
        Some(network) => NetworkMode::Reuse {
            network: network.into_inner(),
            subnet: existing_subnet.map(At::into_inner),
            router: existing_router.map(At::into_inner),
        },
        None => {
            for orphan in [&existing_subnet, &existing_router].into_iter().flatten() {
                p.error(
                    orphan.span(),
                    "an existing subnet or router needs `network.existing_network` too",
                    "name the existing network the nodes should join, or remove this key to let flatstack create one",
                );
            }
            NetworkMode::Create
        }
    };
    let node_cidr = match (&mode, node_cidr) {
        (_, Some(text)) => Some(parse_ipv4_cidr(&text, "network.node_cidr", p)?),
        (NetworkMode::Create, None) => defaults.node_cidr,
        (NetworkMode::Reuse { .. }, None) => None,
    };
    let pod_cidr = match pod_cidr {
        Some(text) => parse_ipv4_cidr(&text, "network.pod_cidr", p),
        None => Some(defaults.pod_cidr),
    };
    let service_cidr = match service_cidr {
        Some(text) => {
            let cidr = parse_ipv4_cidr(&text, "network.service_cidr", p);
            if let Some(c) = cidr
                && !(12..=28).contains(&c.prefix_len())
            {
                p.error(
                    text.span(),
                    format!(
                        "`network.service_cidr` {c} has a /{} prefix",
                        c.prefix_len()
                    ),
                    "kube-apiserver takes a service range from /12 (largest) to /28",
                );
            }
            cidr
        }
        None => Some(defaults.service_cidr),
    };
    let mut dns = Vec::new();
    for server in &dns_servers {
        match server.get_ref().parse::<IpAddr>() {
            Ok(ip) if dns.contains(&ip) => p.error(
                server.span(),
                format!("`{ip}` is listed twice in `network.dns_servers`"),
                "Neutron refuses a subnet with a duplicate DNS server: list each once",
            ),
            Ok(ip) => dns.push(ip),
            Err(_) => p.error(
                server.span(),
                format!(
                    "`{}` in `network.dns_servers` is not an IP address",
                    server.get_ref()
                ),
                "write addresses such as \"8.8.8.8\"",
            ),
        }
    }
    Some(NetworkSpec {
        mode,
        external_network: match external_network {
            Some(n) if n.get_ref().trim().is_empty() => {
                p.error(
                    n.span(),
                    "`network.external_network` is empty",
                    "name the network floating IPs come from, e.g. `public`",
                );
                return None;
            }
            Some(n) => n.into_inner(),
            None => defaults.external_network,
        },
        node_cidr,
        pod_cidr: pod_cidr?,
        service_cidr: service_cidr?,
        dns_servers: dns,
    })
}

fn default_network() -> NetworkSpec {
    NetworkSpec {
        mode: NetworkMode::Create,
        external_network: "public".to_string(),
        node_cidr: "10.42.0.0/24".parse().ok(),
        pod_cidr: Ipv4Net::new(std::net::Ipv4Addr::new(10, 244, 0, 0), 16).unwrap_or_default(),
        service_cidr: Ipv4Net::new(std::net::Ipv4Addr::new(10, 96, 0, 0), 12).unwrap_or_default(),
        dns_servers: Vec::new(),
    }
}

fn read_access(t: Option<Table<'_, '_>>, p: &mut Problems) -> Option<AccessSpec> {
    let default_api = vec![IpNet::V4(Ipv4Net::default())];
    let Some(mut t) = t else {
        return Some(AccessSpec {
            ssh_public_keys: Vec::new(),
            keypair: None,
            api_cidrs: default_api,
            ssh_cidrs: Vec::new(),
        });
    };
    let keys = t.strings("ssh_public_keys", p).unwrap_or_default();
    let keypair = t.string("keypair", p);
    let api_cidrs = t.strings("api_cidrs", p);
    let ssh_cidrs = t.strings("ssh_cidrs", p).unwrap_or_default();
    let span = t.span();
    t.finish(p);

    for key in &keys {
        check_ssh_key(key, p);
    }
    if let Some(k) = &keypair
        && k.get_ref().trim().is_empty()
    {
        p.error(
            k.span(),
            "`access.keypair` is empty",
            "name a Nova keypair, or leave it out",
        );
    }
    let api = match api_cidrs {
        Some(list) => list
            .iter()
            .filter_map(|c| parse_cidr(c, "access.api_cidrs", p))
            .collect(),
        None => default_api,
    };
    let ssh: Vec<IpNet> = ssh_cidrs
        .iter()
        .filter_map(|c| parse_cidr(c, "access.ssh_cidrs", p))
        .collect();
    if !ssh.is_empty() && keys.is_empty() && keypair.is_none() {
        p.error(
            span,
            "`access.ssh_cidrs` opens SSH, but no key would let anyone in",
            "add `ssh_public_keys` or `keypair`, or remove `ssh_cidrs` (flatstack never needs SSH)",
        );
    }
    Some(AccessSpec {
        ssh_public_keys: keys
            .into_iter()
            .map(|k| k.into_inner().trim().to_string())
            .collect(),
        keypair: keypair.map(At::into_inner),
        api_cidrs: api,
        ssh_cidrs: ssh,
    })
}

fn read_addons(t: Option<Table<'_, '_>>, p: &mut Problems) -> Option<AddonsSpec> {
    let mut addons = AddonsSpec {
        cloud_controller: true,
        cinder_csi: true,
        ingress: true,
        metrics_server: true,
        kured: true,
    };
    let Some(mut t) = t else {
        return Some(addons);
    };
    let mut read = |key, slot: &mut bool| {
        if let Some(b) = t.boolean(key, p) {
            *slot = b.into_inner();
        }
    };
    read("cloud_controller", &mut addons.cloud_controller);
    read("cinder_csi", &mut addons.cinder_csi);
    read("ingress", &mut addons.ingress);
    read("metrics_server", &mut addons.metrics_server);
    read("kured", &mut addons.kured);
    let span = t.span();
    t.finish(p);
    if addons.cinder_csi && !addons.cloud_controller {
        p.error(
            span,
            "`addons.cinder_csi` needs `addons.cloud_controller`",
            "Cinder CSI attaches volumes by the OpenStack provider ID the cloud controller sets",
        );
    }
    Some(addons)
}

fn read_ingress(t: Option<Table<'_, '_>>, p: &mut Problems) -> Option<IngressSpec> {
    let mut ingress = IngressSpec {
        exposure: IngressExposure::ControlPlane,
        http_cidrs: vec![IpNet::V4(Ipv4Net::default())],
        hostname: None,
        acme: None,
    };
    let Some(mut t) = t else {
        return Some(ingress);
    };
    let exposure = t.string("exposure", p);
    let cidrs = t.strings("http_cidrs", p);
    let hostname = t.string("hostname", p);
    let email = t.string("acme_email", p);
    let server = t.string("acme_server", p);
    t.finish(p);

    let mut valid = true;
    if let Some(e) = exposure {
        match e.get_ref().as_str() {
            "control-plane" => ingress.exposure = IngressExposure::ControlPlane,
            "load-balancer" => ingress.exposure = IngressExposure::LoadBalancer,
            other => {
                p.error(
                    e.span(),
                    format!("`ingress.exposure` `{other}` is not known"),
                    "use \"control-plane\" (ports 80/443 of the API's floating IP) or \"load-balancer\" (an Octavia load balancer)",
                );
                valid = false;
            }
        }
    }
    if let Some(list) = cidrs {
        let before = list.len();
        ingress.http_cidrs = list
            .iter()
            .filter_map(|c| parse_cidr(c, "ingress.http_cidrs", p))
            .collect();
        valid &= ingress.http_cidrs.len() == before;
    }
    if let Some(h) = &hostname {
        valid &= check_hostname(h, p);
    }
    match (&hostname, email) {
        (Some(h), Some(email)) => {
            let address = email.get_ref();
            let ok = address
                .split_once('@')
                .is_some_and(|(user, domain)| !user.is_empty() && domain.contains('.'))
                && !address.contains(char::is_whitespace);
            if !ok {
                p.error(
                    email.span(),
                    format!("`{address}` is not an email address"),
                    "Let's Encrypt writes to this address about expiring certificates",
                );
                valid = false;
            }
            let server = match server {
                None => LETSENCRYPT_PRODUCTION.to_string(),
                Some(s) => match s.get_ref().as_str() {
                    "production" => LETSENCRYPT_PRODUCTION.to_string(),
                    "staging" => LETSENCRYPT_STAGING.to_string(),
                    url if url.starts_with("https://") => url.to_string(),
                    _ => {
                        p.error(
                            s.span(),
                            format!("`ingress.acme_server` `{}` is not known", s.get_ref()),
                            "use \"production\", \"staging\" or an https:// ACME directory URL",
                        );
                        valid = false;
                        String::new()
                    }
                },
            };
            ingress.hostname = Some(h.get_ref().to_ascii_lowercase());
            ingress.acme = Some(AcmeSpec {
                email: address.clone(),
                server,
            });
        }
        (Some(h), None) => {
            p.error(
                h.span(),
                "`ingress.hostname` is set but `ingress.acme_email` is not",
                "add `acme_email = \"you@example.org\"` so Let's Encrypt can issue the certificate",
            );
            valid = false;
        }
        (None, Some(email)) => {
            p.error(
                email.span(),
                "`ingress.acme_email` without `ingress.hostname`",
                "certificates are issued for a name: add `hostname`, or remove `acme_email`",
            );
            valid = false;
        }
        (None, None) => {
            if let Some(s) = server {
                p.error(
                    s.span(),
                    "`ingress.acme_server` without `ingress.hostname`",
                    "add `hostname` and `acme_email`, or remove `acme_server`",
                );
                valid = false;
            }
        }
    }
    valid.then_some(ingress)
}

/// A DNS name Let's Encrypt can issue for: letters, digits and hyphens in dot-separated
/// labels, at least two labels, at most 64 characters (a certificate's common name limit).
fn check_hostname(h: &At<String>, p: &mut Problems) -> bool {
    let name = h.get_ref();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !(name.contains('.') && name.split('.').all(label_ok)) {
        p.error(
            h.span(),
            format!("`{name}` is not a DNS name"),
            "write a name such as \"hub.myproject.projects.jetstream-cloud.org\" (no scheme, no port)",
        );
        return false;
    }
    if name.len() > 64 {
        p.error(
            h.span(),
            format!("`{name}` is {} characters long", name.len()),
            "Let's Encrypt issues only for names of at most 64 characters: use a shorter name",
        );
        return false;
    }
    true
}

fn read_jupyterhub(t: Option<Table<'_, '_>>, p: &mut Problems) -> Option<JupyterHubSpec> {
    let mut hub = JupyterHubSpec {
        namespace: "jupyterhub".to_string(),
        authenticator: Authenticator::SharedPassword,
        admin_users: Vec::new(),
        allowed_users: Vec::new(),
        user_storage_gb: 10,
        values_file: None,
    };
    let Some(mut t) = t else {
        return Some(hub);
    };
    let namespace = t.string("namespace", p);
    let authenticator = t.string("authenticator", p);
    let admins = t.strings("admin_users", p);
    let allowed = t.strings("allowed_users", p);
    let storage = t.integer("user_storage_gb", p);
    let values = t.string("values_file", p);
    let client_id = t.string("github_client_id", p);
    let secret_env = t.string("github_client_secret_env", p);
    let orgs = t.strings("github_allowed_organizations", p);
    let span = t.span();
    t.finish(p);

    let mut valid = true;
    if let Some(ns) = namespace {
        let name = ns.get_ref();
        let taken = name.starts_with("kube-")
            || name.starts_with("flatstack-smoke-")
            || ["default", "traefik", "cert-manager"].contains(&name.as_str());
        if !is_valid_name(name) {
            p.error(
                ns.span(),
                format!("`{name}` is not a namespace name"),
                NAME_RULE,
            );
            valid = false;
        } else if taken {
            p.error(
                ns.span(),
                format!("namespace `{name}` belongs to the cluster or its add-ons"),
                "give JupyterHub a namespace of its own, e.g. \"jupyterhub\" (uninstalling with --delete-user-data deletes it)",
            );
            valid = false;
        }
        hub.namespace = ns.into_inner();
    }
    let list = |v: Option<Vec<At<String>>>| -> Vec<String> {
        v.unwrap_or_default()
            .into_iter()
            .map(At::into_inner)
            .collect()
    };
    hub.admin_users = list(admins);
    hub.allowed_users = list(allowed);
    if let Some(gb) = storage {
        match u32::try_from(*gb.get_ref()) {
            Ok(n) if (1..=16384).contains(&n) => hub.user_storage_gb = n,
            _ => {
                p.error(
                    gb.span(),
                    format!(
                        "`jupyterhub.user_storage_gb` {} is out of range",
                        gb.get_ref()
                    ),
                    "give each user between 1 and 16384 GB",
                );
                valid = false;
            }
        }
    }
    if let Some(v) = values {
        if v.get_ref().trim().is_empty() {
            p.error(
                v.span(),
                "`jupyterhub.values_file` is empty",
                "name a YAML file of chart values, or leave it out",
            );
            valid = false;
        }
        hub.values_file = Some(std::path::PathBuf::from(v.into_inner()));
    }
    let github_keys = client_id.is_some() || secret_env.is_some() || orgs.is_some();
    match authenticator.as_ref().map(|a| a.get_ref().as_str()) {
        None | Some("shared-password" | "dummy") => {
            if github_keys {
                p.error(
                    span.clone(),
                    "`github_*` keys are set but the authenticator is not GitHub",
                    "add `authenticator = \"github\"`, or remove the github_* keys",
                );
                valid = false;
            }
        }
        Some("github") => match client_id {
            Some(id) if !id.get_ref().trim().is_empty() => {
                let secret_env = secret_env
                    .map(At::into_inner)
                    .unwrap_or_else(|| "GITHUB_CLIENT_SECRET".to_string());
                hub.authenticator = Authenticator::GitHub {
                    client_id: id.into_inner(),
                    client_secret_env: secret_env,
                    allowed_organizations: list(orgs),
                };
            }
            _ => {
                p.error(
                    span.clone(),
                    "`authenticator = \"github\"` needs `github_client_id`",
                    "register an OAuth app at https://github.com/settings/developers with callback https://<hostname>/hub/oauth_callback",
                );
                valid = false;
            }
        },
        Some(other) => {
            let at = authenticator.as_ref().map_or(span.clone(), |a| a.span());
            p.error(
                at,
                format!("`jupyterhub.authenticator` `{other}` is not known"),
                "use \"github\" (GitHub OAuth) or \"shared-password\" (one password flatstack makes, for trials)",
            );
            valid = false;
        }
    }
    valid.then_some(hub)
}

fn read_updates(
    t: Option<Table<'_, '_>>,
    channel: Channel,
    p: &mut Problems,
) -> Option<UpdatesSpec> {
    let mut updates = UpdatesSpec {
        enabled: true,
        group: channel.as_str().to_string(),
        server: None,
        reboot_window: RebootWindow {
            days: WEEKDAYS.iter().map(|d| d.to_string()).collect(),
            start: "00:00".to_string(),
            end: "23:59".to_string(),
            timezone: "UTC".to_string(),
        },
    };
    let Some(mut t) = t else {
        return Some(updates);
    };
    let enabled = t.boolean("enabled", p);
    let group = t.string("group", p);
    let server = t.string("server", p);
    let days = t.strings("reboot_days", p);
    let start = t.string("reboot_start", p);
    let end = t.string("reboot_end", p);
    let timezone = t.string("timezone", p);
    t.finish(p);

    let mut valid = true;
    if let Some(e) = enabled {
        updates.enabled = e.into_inner();
    }
    if let Some(g) = group {
        let ok = !g.get_ref().is_empty()
            && g.get_ref()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.{}".contains(&b));
        if !ok {
            p.error(
                g.span(),
                format!("`updates.group` `{}` is not an update group", g.get_ref()),
                "use a channel (stable, beta, alpha, lts) or a Nebraska group name or ID",
            );
            valid = false;
        }
        updates.group = g.into_inner();
    }
    if let Some(s) = server {
        valid &= check_http_url(&s, p);
        updates.server = Some(s.into_inner());
    }
    if let Some(days) = days {
        let mut seen = BTreeSet::new();
        for day in &days {
            let d = day.get_ref().to_ascii_lowercase();
            if !WEEKDAYS.contains(&d.as_str()) {
                p.error(
                    day.span(),
                    format!("`{}` is not a day", day.get_ref()),
                    "write days as sun, mon, tue, wed, thu, fri, sat",
                );
                valid = false;
            } else if !seen.insert(d) {
                p.error(
                    day.span(),
                    format!("`{}` is listed twice", day.get_ref()),
                    "list each day once",
                );
                valid = false;
            }
        }
        if days.is_empty() {
            p.error(
                t_span_of(&days),
                "`updates.reboot_days` is empty, so nodes could never reboot for updates",
                "list at least one day, or set `enabled = false`",
            );
            valid = false;
        }
        updates.reboot_window.days = seen.into_iter().collect();
        updates
            .reboot_window
            .days
            .sort_by_key(|d| WEEKDAYS.iter().position(|w| w == d));
    }
    for (value, slot) in [
        (start, &mut updates.reboot_window.start),
        (end, &mut updates.reboot_window.end),
    ] {
        if let Some(v) = value {
            if !is_clock_time(v.get_ref()) {
                p.error(
                    v.span(),
                    format!("`{}` is not a time of day", v.get_ref()),
                    "write times as HH:MM on a 24-hour clock, e.g. \"02:30\"",
                );
                valid = false;
            }
            *slot = v.into_inner();
        }
    }
    if let Some(tz) = timezone {
        let ok = !tz.get_ref().is_empty()
            && tz
                .get_ref()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b));
        if !ok {
            p.error(
                tz.span(),
                format!("`{}` is not a time zone", tz.get_ref()),
                "use an IANA name such as \"UTC\" or \"America/Indiana/Indianapolis\"",
            );
            valid = false;
        }
        updates.reboot_window.timezone = tz.into_inner();
    }
    valid.then_some(updates)
}

fn t_span_of(days: &[At<String>]) -> Range<usize> {
    days.first().map_or(0..0, |d| d.span())
}

fn is_clock_time(text: &str) -> bool {
    let Some((h, m)) = text.split_once(':') else {
        return false;
    };
    let two_digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    two_digits(h)
        && two_digits(m)
        && h.parse::<u8>().is_ok_and(|h| h < 24)
        && m.parse::<u8>().is_ok_and(|m| m < 60)
}

/// Rules that involve more than one table.
fn check_cluster_wide(
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
        if usable < total_nodes + RESERVED_NODE_ADDRESSES {
            p.error(
                network.clone(),
                format!("`network.node_cidr` {node} has {usable} addresses for {total_nodes} nodes"),
                format!("flatstack keeps {RESERVED_NODE_ADDRESSES} addresses free; use a larger range such as /24"),
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

/// Why no cluster address may come from `cidr`: loopback, link-local (where the metadata
/// service answers), multicast, "this network", broadcast or reserved space.
fn reserved_range(cidr: Ipv4Net) -> Option<&'static str> {
    let reserved: [(&str, [u8; 4], u8); 5] = [
        ("\"this network\" (0.0.0.0/8)", [0, 0, 0, 0], 8),
        ("loopback (127.0.0.0/8)", [127, 0, 0, 0], 8),
        (
            "link-local space (169.254.0.0/16, where the metadata service answers)",
            [169, 254, 0, 0],
            16,
        ),
        ("multicast (224.0.0.0/4)", [224, 0, 0, 0], 4),
        (
            "reserved space (240.0.0.0/4, broadcast included)",
            [240, 0, 0, 0],
            4,
        ),
    ];
    reserved.into_iter().find_map(|(why, octets, prefix)| {
        let range = Ipv4Net::new(octets.into(), prefix).ok()?;
        (range.contains(&cidr) || cidr.contains(&range)).then_some(why)
    })
}

fn check_dns_label(value: &At<String>, key: &str, p: &mut Problems) {
    if !is_valid_name(value.get_ref()) {
        p.error(
            value.span(),
            format!("`{key}` is `{}`, not a valid name", value.get_ref()),
            NAME_RULE,
        );
    }
}

/// What cluster and pool names may look like; they become part of DNS names.
pub const NAME_RULE: &str = "use 1 to 40 lowercase letters, digits and '-', starting with a letter and not ending with '-' (it becomes part of DNS names)";

/// Whether `s` may name a cluster or a worker pool (see [`NAME_RULE`]).
pub fn is_valid_name(s: &str) -> bool {
    let valid_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let edges = s.starts_with(|c: char| c.is_ascii_lowercase()) && !s.ends_with('-');
    !s.is_empty() && s.len() <= 40 && valid_chars && edges
}

fn check_http_url(url: &At<String>, p: &mut Problems) -> bool {
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

fn parse_cidr(text: &At<String>, key: &str, p: &mut Problems) -> Option<IpNet> {
    let s = text.get_ref();
    match s.parse::<IpNet>() {
        Ok(net) if net.network() == net.addr() => Some(net),
        Ok(net) => {
            p.error(
                text.span(),
                format!("`{s}` in `{key}` has host bits set"),
                format!("did you mean {}?", net.trunc()),
            );
            None
        }
        Err(_) => {
            p.error(
                text.span(),
                format!("`{s}` in `{key}` is not a CIDR range"),
                "write ranges as address/prefix, e.g. \"203.0.113.0/24\" or \"0.0.0.0/0\"",
            );
            None
        }
    }
}

fn parse_ipv4_cidr(text: &At<String>, key: &str, p: &mut Problems) -> Option<Ipv4Net> {
    match parse_cidr(text, key, p)? {
        IpNet::V4(net) => Some(net),
        IpNet::V6(_) => {
            p.error(
                text.span(),
                format!("`{key}` must be an IPv4 range"),
                "IPv6 node, pod and service ranges are not supported yet",
            );
            None
        }
    }
}

fn check_ssh_key(key: &At<String>, p: &mut Problems) {
    const TYPES: [&str; 7] = [
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];
    let mut fields = key.get_ref().split_whitespace();
    let kind = fields.next().unwrap_or_default();
    let blob = fields.next().unwrap_or_default();
    let decoded = base64::engine::general_purpose::STANDARD.decode(blob).ok();
    // The blob starts with the key type again, as a length-prefixed string.
    let consistent = decoded.as_deref().is_some_and(|d| {
        d.len() > 4 + kind.len()
            && d[..4] == (kind.len() as u32).to_be_bytes()
            && &d[4..4 + kind.len()] == kind.as_bytes()
    });
    if !TYPES.contains(&kind) || !consistent {
        let shown: String = key.get_ref().chars().take(24).collect();
        p.error(
            key.span(),
            format!("`{shown}...` is not an OpenSSH public key"),
            "paste one line of a .pub file, e.g. the output of `cat ~/.ssh/id_ed25519.pub`",
        );
    }
}

/// Label keys: optional DNS-subdomain prefix, `/`, and a name of at most 63 characters.
fn check_label_key(key: &At<String>, path: &str, p: &mut Problems) {
    let k = key.get_ref();
    let (prefix, name) = match k.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, k.as_str()),
    };
    let prefix_ok = prefix.is_none_or(|pre| {
        !pre.is_empty()
            && pre.len() <= 253
            && pre.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    });
    if !prefix_ok || !is_label_name(name) || name.is_empty() {
        p.error(
            key.span(),
            format!("`{k}` in `{path}` is not a valid label key"),
            "keys are an optional DNS prefix and '/', then up to 63 letters, digits, '-', '_' or '.'",
        );
        return;
    }
    if let Some(prefix) = prefix {
        let reserved = |domain: &str| prefix == domain || prefix.ends_with(&format!(".{domain}"));
        let allowed = ["kubelet.kubernetes.io", "node.kubernetes.io"]
            .iter()
            .any(|d| prefix == *d || prefix.ends_with(&format!(".{d}")));
        if (reserved("kubernetes.io") || reserved("k8s.io")) && !allowed {
            p.error(
                key.span(),
                format!("a node may not set the label `{k}` on itself"),
                "the NodeRestriction admission plugin forbids kubernetes.io and k8s.io labels other than node.kubernetes.io/ and kubelet.kubernetes.io/; use your own prefix",
            );
        }
    }
}

fn check_label_value(value: &At<String>, path: &str, p: &mut Problems) {
    let v = value.get_ref();
    if !v.is_empty() && !is_label_name(v) {
        p.error(
            value.span(),
            format!("`{v}` in `{path}` is not a valid label value"),
            "values are empty or up to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
        );
    }
}

fn is_label_name(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// `key=value:Effect` or `key:Effect`, as `kubectl taint` writes them.
fn parse_taint(text: &At<String>, path: &str, p: &mut Problems) -> Option<Taint> {
    let s = text.get_ref();
    let bad = |p: &mut Problems, why: String| {
        p.error(
            text.span(),
            format!("`{s}` in `{path}` {why}"),
            "write taints as key=value:Effect or key:Effect, Effect one of NoSchedule, PreferNoSchedule, NoExecute",
        );
    };
    let Some((key_value, effect)) = s.rsplit_once(':') else {
        bad(p, "has no effect".to_string());
        return None;
    };
    let effect = match effect {
        "NoSchedule" => TaintEffect::NoSchedule,
        "PreferNoSchedule" => TaintEffect::PreferNoSchedule,
        "NoExecute" => TaintEffect::NoExecute,
        other => {
            bad(p, format!("has the unknown effect `{other}`"));
            return None;
        }
    };
    let (key, value) = match key_value.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (key_value, None),
    };
    let mut probe = Problems::default();
    check_label_key(&At::new(text.span(), key.to_string()), path, &mut probe);
    let value_ok = value.is_none_or(|v| v.is_empty() || is_label_name(v));
    if !probe.is_empty() || !value_ok {
        bad(p, "is not a valid taint".to_string());
        return None;
    }
    Some(Taint {
        key: key.to_string(),
        value: value.map(str::to_string),
        effect,
    })
}
