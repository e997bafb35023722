//! Benchmark (not a test): `flatstack up --provision-only` for 1+2, 1+10 and 1+50 nodes on the
//! local OpenStack with 150 ms added to every API call (a loopback proxy), against a straight
//! `openstack` CLI script creating the same resources through the same proxy; then the re-run
//! on the converged cluster and `down`. Prints wall times, API calls and ratios.
//!
//! Run with `cargo bench --bench up` after `scripts/local-openstack.sh up`. It takes minutes.

#[path = "../tests/integration/proxy.rs"]
mod proxy;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const LATENCY: Duration = Duration::from_millis(150);
const SIZES: [u32; 3] = [2, 10, 50];

fn openstack_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("FLATSTACK_OPENSTACK_DIR")
            .unwrap_or_else(|_| "/var/tmp/flatstack-openstack".into()),
    )
}

type Failure = Box<dyn std::error::Error>;

/// The `openstack` CLI through the proxy (`faulty` entry of `clouds`).
fn cli(clouds: &Path, args: &[&str]) -> Result<String, Failure> {
    let output = Command::new(openstack_dir().join("venv/bin/openstack"))
        .env("OS_CLIENT_CONFIG_FILE", clouds)
        .env("OS_CLOUD", "faulty")
        .args(args)
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "openstack {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn flatstack(dir: &Path, clouds: &Path, file: &Path, args: &[&str]) -> Result<String, Failure> {
    let output = Command::new(env!("CARGO_BIN_EXE_flatstack"))
        .current_dir(dir)
        .env("OS_CLIENT_CONFIG_FILE", clouds)
        .env_remove("OS_CLOUD")
        .env("FLATSTACK_STATE_DIR", dir.join("state"))
        .arg("--file")
        .arg(file)
        .args(args)
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "flatstack {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `up --provision-only --output json`: its report.
fn up_json(dir: &Path, clouds: &Path, file: &Path) -> Result<serde_json::Value, Failure> {
    let out = flatstack(
        dir,
        clouds,
        file,
        &["up", "--provision-only", "--output", "json"],
    )?;
    Ok(serde_json::from_str(&out)?)
}

fn cluster_file(name: &str, workers: u32) -> String {
    format!(
        "name = \"{name}\"\ncloud = \"faulty\"\n[kubernetes]\nversion = \"1.37.1\"\nsysext_sha256 = \"{}\"\n[flatcar]\nimage = \"flatstack-bench-image\"\n[control_plane]\nflavor = \"m3.tiny\"\n[[worker_pools]]\nname = \"default\"\ncount = {workers}\nflavor = \"m3.tiny\"\n",
        "ab".repeat(32)
    )
}

/// What a user would script by hand: the same resources, one CLI call after the other.
fn cli_script(clouds: &Path, name: &str, workers: u32) -> Result<usize, Failure> {
    let tag = format!("flatstack:cluster={name}");
    let mut calls = 0;
    let mut run = |args: &[&str]| -> Result<String, Failure> {
        calls += 1;
        cli(clouds, args)
    };
    let net = format!("{name}-net");
    run(&[
        "network", "create", "--tag", &tag, &net, "-f", "value", "-c", "id",
    ])?;
    run(&[
        "subnet",
        "create",
        "--tag",
        &tag,
        "--network",
        &net,
        "--subnet-range",
        "10.42.0.0/24",
        &format!("{name}-subnet"),
    ])?;
    let router = format!("{name}-router");
    run(&["router", "create", "--tag", &tag, &router])?;
    run(&["router", "set", "--external-gateway", "public", &router])?;
    run(&[
        "router",
        "add",
        "subnet",
        &router,
        &format!("{name}-subnet"),
    ])?;
    let nodes = format!("{name}-nodes");
    let control = format!("{name}-control-plane");
    run(&["security", "group", "create", "--tag", &tag, &nodes])?;
    run(&["security", "group", "create", "--tag", &tag, &control])?;
    run(&[
        "security",
        "group",
        "rule",
        "create",
        "--remote-group",
        &nodes,
        "--ethertype",
        "IPv4",
        &nodes,
    ])?;
    run(&[
        "security",
        "group",
        "rule",
        "create",
        "--remote-group",
        &nodes,
        "--ethertype",
        "IPv6",
        &nodes,
    ])?;
    run(&[
        "security",
        "group",
        "rule",
        "create",
        "--protocol",
        "tcp",
        "--dst-port",
        "6443",
        &control,
    ])?;
    run(&[
        "server",
        "group",
        "create",
        "--policy",
        "anti-affinity",
        &control,
    ])?;
    let mut nodes_list = vec![format!("{name}-control-plane-1")];
    nodes_list.extend((1..=workers).map(|n| format!("{name}-default-{n}")));
    for node in &nodes_list {
        run(&[
            "port",
            "create",
            "--tag",
            &tag,
            "--network",
            &net,
            "--security-group",
            &nodes,
            node,
        ])?;
        run(&[
            "--os-compute-api-version",
            "2.52",
            "server",
            "create",
            "--tag",
            &tag,
            "--flavor",
            "m3.tiny",
            "--image",
            "flatstack-bench-image",
            "--port",
            node,
            "--wait",
            node,
        ])?;
    }
    let fip = run(&[
        "floating",
        "ip",
        "create",
        "--tag",
        &tag,
        "--description",
        &format!("{name}-api"),
        "public",
        "-f",
        "value",
        "-c",
        "id",
    ])?;
    run(&["floating", "ip", "set", "--port", &nodes_list[0], &fip])?;
    Ok(calls)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Failure> {
    let direct = openstack_dir().join("clouds.yaml");
    if !direct.is_file() {
        return Err(format!(
            "no local OpenStack at {}: run scripts/local-openstack.sh up",
            direct.display()
        )
        .into());
    }
    let proxy =
        proxy::FaultProxy::start(&[("identity", 5000), ("compute", 8774), ("network", 9696)]).await;
    let work = tempfile::tempdir()?;
    let clouds = work.path().join("clouds.yaml");
    proxy.write_clouds_yaml(&clouds);
    // Image and quotas are set up without added latency.
    if cli(&clouds, &["image", "show", "flatstack-bench-image"]).is_err() {
        let image = work.path().join("image.raw");
        std::fs::write(&image, vec![0u8; 4096])?;
        cli(
            &clouds,
            &[
                "image",
                "create",
                "--disk-format",
                "raw",
                "--container-format",
                "bare",
                "--file",
                &image.display().to_string(),
                "flatstack-bench-image",
            ],
        )?;
    }
    proxy.set_latency(LATENCY);

    println!(
        "up benchmark: {} ms added to every API call, local OpenStack, m3.tiny nodes",
        LATENCY.as_millis()
    );
    println!(
        "{:<7} {:>11} {:>6} {:>8} {:>8} {:>8} {:>7} {:>7} {:>9} {:>5} {:>7}",
        "nodes",
        "flatstack s",
        "calls",
        "bound s",
        "x bound",
        "CLI s",
        "calls*",
        "CLI/fs",
        "re-run s",
        "muts",
        "down s"
    );
    // FLATSTACK_BENCH_SIZES=10,50 runs only those sizes.
    let sizes: Vec<u32> = match std::env::var("FLATSTACK_BENCH_SIZES") {
        Ok(list) => list
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect(),
        Err(_) => SIZES.to_vec(),
    };
    for workers in sizes {
        let dir = work.path().join(format!("w{workers}"));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("cluster.toml");
        std::fs::write(&file, cluster_file(&format!("bench-fs-{workers}"), workers))?;
        let before = proxy.requests();
        let started = Instant::now();
        let report = up_json(&dir, &clouds, &file)?;
        let up_time = started.elapsed();
        let up_calls = proxy.requests() - before;
        // The critical path's steps as measured in this run, plus log-in, observe and plan.
        let bound = report["timeline"]["bound_seconds"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let started = Instant::now();
        let rerun_report = up_json(&dir, &clouds, &file)?;
        let rerun = started.elapsed();
        let rerun_mutating = rerun_report["mutating_calls"].as_u64().unwrap_or(u64::MAX);

        let started = Instant::now();
        flatstack(&dir, &clouds, &file, &["down", "--yes"])?;
        let down = started.elapsed();

        // The CLI script's resources carry the same kind of tag: flatstack removes them after.
        // FLATSTACK_BENCH_NO_CLI=1 leaves the baseline out (its columns then read NaN), for
        // quick looks at flatstack alone; the figures in the README come with the baseline.
        let (cli_time, cli_calls) = match std::env::var_os("FLATSTACK_BENCH_NO_CLI") {
            Some(_) => (f64::NAN, 0),
            None => {
                let cli_name = format!("bench-cli-{workers}");
                let started = Instant::now();
                let cli_calls = cli_script(&clouds, &cli_name, workers)?;
                let cli_time = started.elapsed().as_secs_f64();
                let cli_file = dir.join("cli.toml");
                std::fs::write(&cli_file, cluster_file(&cli_name, workers))?;
                flatstack(&dir, &clouds, &cli_file, &["down", "--yes"])?;
                (cli_time, cli_calls)
            }
        };

        println!(
            "{:<7} {:>11.2} {:>6} {:>8.2} {:>7.2}x {:>8.1} {:>7} {:>6.1}x {:>9.2} {:>5} {:>7.1}",
            format!("1+{workers}"),
            up_time.as_secs_f64(),
            up_calls,
            bound,
            up_time.as_secs_f64() / bound,
            cli_time,
            cli_calls,
            cli_time / up_time.as_secs_f64(),
            rerun.as_secs_f64(),
            rerun_mutating,
            down.as_secs_f64(),
        );
    }
    println!(
        "* CLI invocations; each one logs in and looks names up, so it makes several API calls"
    );
    println!(
        "bound: log-in, observe and plan, plus the longest chain of dependent steps, each as long as it took in this run; x bound = flatstack / bound; muts = mutating calls of the re-run"
    );
    Ok(())
}
