//! Benchmark (not a test): render every node of a 1 + 100 worker cluster and report the time
//! and the largest user_data, which must stay under Nova's 65535-byte limit.
//!
//! Run with `cargo bench --bench render`. There is no offline baseline to compare with: the
//! tools flatstack replaces template node configuration over SSH at deploy time.

use std::time::Instant;

use flatstack::node::{ApiEndpoint, USER_DATA_LIMIT, render_cluster};
use flatstack::pki::ClusterPki;
use flatstack::spec::{ClusterSpec, Role};

const WORKERS: u32 = 100;
const ROUNDS: u32 = 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let text = format!(
        r#"name = "bench"
cloud = "openstack"
[kubernetes]
version = "1.37.1"
sysext_url = "https://mirror.example.org/kubernetes-v1.37.1-x86-64.raw"
sysext_sha256 = "{sha}"
sysupdate_url = "https://mirror.example.org/kubernetes"
[control_plane]
flavor = "m3.medium"
[[worker_pools]]
name = "batch"
count = {WORKERS}
flavor = "m3.quad"
labels = {{ "example.org/tier" = "batch", "example.org/team" = "genomics" }}
taints = ["example.org/dedicated=batch:NoSchedule"]
[access]
ssh_public_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ3TfW5bG1sUu2Y6QzYrQb4N8v0o0Hq1rj9bUqWqfG1c ops@example"]
"#,
        sha = "ab".repeat(32)
    );
    let started = Instant::now();
    let spec = ClusterSpec::parse("bench.toml", &text)?;
    let parse = started.elapsed();

    let started = Instant::now();
    let pki = ClusterPki::generate()?;
    let pki_time = started.elapsed();

    let endpoint = ApiEndpoint {
        internal: "10.42.0.10".parse()?,
        public: Some("203.0.113.7".parse()?),
    };
    let token = flatstack::pki::BootstrapToken::generate()?;
    let mut nodes = Vec::new();
    let started = Instant::now();
    for _ in 0..ROUNDS {
        nodes = render_cluster(&spec, &pki, &endpoint, &token)?;
    }
    let render = started.elapsed() / ROUNDS;

    let largest = |role: Role| {
        nodes
            .iter()
            .filter(|n| n.role == role)
            .map(|n| n.user_data_len())
            .max()
            .unwrap_or(0)
    };
    let control_plane = largest(Role::ControlPlane);
    let worker = largest(Role::Worker);
    let under_limit = nodes.iter().all(|n| n.user_data_len() <= USER_DATA_LIMIT);

    println!("render benchmark: 1 control plane + {WORKERS} workers, mean of {ROUNDS} rounds");
    println!(
        "  parse + validate cluster file  {:>10.3} ms",
        parse.as_secs_f64() * 1e3
    );
    println!(
        "  generate PKI (3 CAs, SA, 2 admins) {:>6.3} ms",
        pki_time.as_secs_f64() * 1e3
    );
    println!(
        "  render {} Ignition configs      {:>10.3} ms ({:.1} us per node)",
        nodes.len(),
        render.as_secs_f64() * 1e3,
        render.as_secs_f64() * 1e6 / nodes.len() as f64
    );
    println!(
        "  largest user_data: control plane {control_plane} B ({:.0}% of {USER_DATA_LIMIT}), worker {worker} B ({:.0}%)",
        control_plane as f64 * 100.0 / USER_DATA_LIMIT as f64,
        worker as f64 * 100.0 / USER_DATA_LIMIT as f64
    );
    println!("  every config under the user_data limit: {under_limit}");

    // Diagnostics stay linear in the number of problems: a file with 40,000 unknown keys.
    let noisy: String = (0..40_000)
        .map(|i| format!("unknown_key_{i} = {i}\n"))
        .chain(std::iter::once(text.clone()))
        .collect();
    let started = Instant::now();
    let report = match ClusterSpec::parse("noisy.toml", &noisy) {
        Ok(_) => return Err("40,000 unknown keys were accepted".into()),
        Err(invalid) => invalid.to_string(),
    };
    let diagnose = started.elapsed();
    println!(
        "  validate and report 40,000 unknown keys ({} KiB) {:>8.3} ms ({} lines of report)",
        noisy.len() >> 10,
        diagnose.as_secs_f64() * 1e3,
        report.lines().count()
    );
    if !under_limit {
        return Err("a node's user_data exceeds Nova's limit".into());
    }
    Ok(())
}
