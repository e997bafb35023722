//! Benchmark (not a test): create 20 servers, each with its own port, on the local OpenStack
//! (scripts/local-openstack.sh up), through flatstack's cloud module (concurrently) and
//! through a shell loop of `openstack` CLI calls, and print wall times, calls and the ratio.
//!
//! Run with `cargo bench --bench cloud`. It raises the demo project's quotas as admin first.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flatstack::cloud::compute::ServerRequest;
use flatstack::cloud::network::{Kind, Network, Port, Subnet};
use flatstack::cloud::{Cloud, CloudConfig};
use serde_json::json;

const SERVERS: usize = 20;

fn openstack_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("FLATSTACK_OPENSTACK_DIR")
            .unwrap_or_else(|_| "/var/tmp/flatstack-openstack".into()),
    )
}

fn cli(cloud: &str, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let output = Command::new(openstack_dir().join("venv/bin/openstack"))
        .env("OS_CLIENT_CONFIG_FILE", openstack_dir().join("clouds.yaml"))
        .env("OS_CLOUD", cloud)
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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let clouds = openstack_dir().join("clouds.yaml");
    if !clouds.is_file() {
        return Err(format!(
            "no local OpenStack at {}: run scripts/local-openstack.sh up",
            clouds.display()
        )
        .into());
    }
    cli(
        "local-admin",
        &[
            "quota",
            "set",
            "--instances",
            "100",
            "--cores",
            "200",
            "--ram",
            "1000000",
            "--ports",
            "500",
            "demo",
        ],
    )?;
    let image = match cli(
        "local-demo",
        &[
            "image",
            "list",
            "--name",
            "flatstack-bench-image",
            "-f",
            "value",
            "-c",
            "ID",
        ],
    )? {
        id if !id.is_empty() => id,
        _ => {
            let file = std::env::temp_dir().join("flatstack-bench-image.raw");
            std::fs::write(&file, vec![0u8; 4096])?;
            cli(
                "local-demo",
                &[
                    "image",
                    "create",
                    "--disk-format",
                    "raw",
                    "--container-format",
                    "bare",
                    "--file",
                    &file.display().to_string(),
                    "flatstack-bench-image",
                    "-f",
                    "value",
                    "-c",
                    "id",
                ],
            )?
        }
    };
    let config = CloudConfig::from_clouds_yaml(&clouds, "local-demo")?;
    let cloud = Arc::new(Cloud::connect(config).await?);
    let flavor = cloud
        .flavors()
        .await?
        .into_iter()
        .find(|f| f.name == "m3.tiny")
        .ok_or("no m3.tiny")?;
    let network: Network = cloud
        .create_tagged(
            Kind::Network,
            "bench-net",
            json!({}),
            &["flatstack:bench".into()],
            false,
        )
        .await?;
    let subnet: Subnet = cloud
        .create_tagged(
            Kind::Subnet,
            "bench-subnet",
            json!({ "network_id": network.id, "cidr": "10.88.0.0/24", "ip_version": 4 }),
            &[],
            false,
        )
        .await?;

    // flatstack: every port and server at once (ports first, as `up` does).
    let calls_before = cloud.counter.calls();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..SERVERS {
        let cloud = cloud.clone();
        let (network_id, flavor_id, image_id) =
            (network.id.clone(), flavor.id.clone(), image.clone());
        tasks.spawn(async move {
            let name = format!("bench-fs-{n}");
            let port: Port = cloud
                .create_tagged(
                    Kind::Port,
                    &name,
                    json!({ "network_id": network_id }),
                    &["flatstack:bench".into()],
                    false,
                )
                .await?;
            let server = cloud
                .create_server(&ServerRequest {
                    name,
                    flavor_id,
                    image_id,
                    port_ids: vec![port.id],
                    tags: vec!["flatstack:bench".into()],
                    ..Default::default()
                })
                .await?;
            cloud
                .wait_server_active(&server.id, Duration::from_secs(300))
                .await
        });
    }
    let mut ids = Vec::new();
    while let Some(result) = tasks.join_next().await {
        ids.push(result??.id);
    }
    let flatstack_time = started.elapsed();
    let flatstack_calls = cloud.counter.calls() - calls_before;

    // The baseline: what a user scripts with the openstack CLI.
    let started = Instant::now();
    let mut invocations = 0;
    for n in 0..SERVERS {
        let name = format!("bench-cli-{n}");
        let port = cli(
            "local-demo",
            &[
                "port",
                "create",
                "--network",
                &network.id,
                &name,
                "-f",
                "value",
                "-c",
                "id",
            ],
        )?;
        cli(
            "local-demo",
            &[
                "server", "create", "--flavor", "m3.tiny", "--image", &image, "--port", &port,
                "--wait", &name, "-f", "value", "-c", "id",
            ],
        )?;
        invocations += 2;
    }
    let cli_time = started.elapsed();

    println!(
        "cloud benchmark: {SERVERS} servers, each with its own port, to ACTIVE, on the local OpenStack"
    );
    println!(
        "  flatstack cloud module (concurrent)  {:>7.1} s  {flatstack_calls} API calls",
        flatstack_time.as_secs_f64()
    );
    println!(
        "  openstack CLI shell loop            {:>7.1} s  {invocations} CLI invocations (each logs in and looks names up)",
        cli_time.as_secs_f64()
    );
    println!(
        "  ratio (CLI / flatstack)             {:>7.1}x",
        cli_time.as_secs_f64() / flatstack_time.as_secs_f64()
    );

    // Clean up everything both made.
    for id in cli(
        "local-demo",
        &[
            "server", "list", "--name", "^bench-", "-f", "value", "-c", "ID",
        ],
    )?
    .lines()
    {
        cloud.delete_server(id).await?;
        ids.push(id.to_string());
    }
    for id in &ids {
        cloud.delete_server(id).await?;
        cloud
            .wait_server_deleted(id, Duration::from_secs(300))
            .await?;
    }
    let ports: Vec<Port> = cloud
        .list(Kind::Port, &[("network_id", &network.id)])
        .await?;
    for port in ports {
        cloud.delete_resource(Kind::Port, &port.id).await?;
    }
    cloud.delete_resource(Kind::Subnet, &subnet.id).await?;
    cloud.delete_resource(Kind::Network, &network.id).await?;
    cli(
        "local-admin",
        &[
            "quota",
            "set",
            "--instances",
            "10",
            "--cores",
            "20",
            "--ram",
            "51200",
            "demo",
        ],
    )?;
    Ok(())
}
