//! Faults injected by a loopback HTTP proxy in front of the local OpenStack's APIs: bursts of
//! 503, 409 conflicts, 429 with Retry-After, dropped connections (before the request reaches
//! the cloud, and after the cloud acted on it), slow answers. Every operation must still
//! succeed, and the `openstack` CLI must find exactly one of each resource afterwards.

use std::time::Duration;

use crate::openstack::{ServerNetwork, cli, test_image, unique};
use crate::proxy::{Fault, FaultProxy, standard_proxy};
use flatstack::cloud::compute::ServerRequest;
use flatstack::cloud::network::{FloatingIp, Kind, Network};
use flatstack::cloud::{Cloud, CloudConfig, RetryPolicy};
use serde_json::json;

/// A session as the demo user whose every API call goes through `proxy`.
async fn connect(proxy: &FaultProxy) -> Cloud {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("clouds.yaml");
    proxy.write_clouds_yaml(&file);
    let config = CloudConfig::from_clouds_yaml(&file, "faulty").expect("config");
    let policy = RetryPolicy {
        first_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(400),
        ..RetryPolicy::default()
    };
    Cloud::connect_with(config, policy)
        .await
        .expect("login through the proxy")
}

fn count_tagged(kind: &str, tag: &str) -> usize {
    let mut args: Vec<&str> = kind.split(' ').collect();
    args.extend(["list", "--tags", tag, "-f", "json"]);
    cli("local-demo", &args).as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn login_survives_a_503_burst() {
    let proxy = standard_proxy().await;
    proxy.inject("POST", "/v3/auth/tokens", Fault::Status(503, None), 2);
    let cloud = connect(&proxy).await;
    assert!(cloud.project_id().await.is_some());
    assert_eq!(proxy.injected(), 2);
}

#[tokio::test]
async fn creates_survive_503_bursts_and_dropped_answers_without_duplicates() {
    let proxy = standard_proxy().await;
    let cloud = connect(&proxy).await;
    let cluster = unique("faults");
    let tag = format!("flatstack:cluster={cluster}");
    let tags = vec![tag.clone()];

    // A burst of 503s, then an answer lost after Neutron created the network.
    proxy.inject("POST", "/v2.0/networks", Fault::Status(503, None), 3);
    proxy.inject("POST", "/v2.0/networks", Fault::DropAfter, 1);
    let network: Network = cloud
        .create_tagged(
            Kind::Network,
            &format!("{cluster}-net"),
            json!({}),
            &tags,
            false,
        )
        .await
        .expect("network despite the faults");
    assert_eq!(proxy.injected(), 4);
    assert_eq!(count_tagged("network", &tag), 1, "exactly one network");

    // The tags call itself is hit by a 409 and a dropped connection.
    proxy.inject("PUT", "/tags", Fault::Status(409, None), 1);
    proxy.inject("PUT", "/tags", Fault::DropBefore, 1);
    let public = cloud
        .external_network("public")
        .await
        .expect("list")
        .expect("public");
    proxy.inject("POST", "/v2.0/floatingips", Fault::DropAfter, 1);
    let floating: FloatingIp = cloud
        .create_floating_ip(&public.id, &format!("{cluster}-api"), None, &tags, false)
        .await
        .expect("floating ip despite the faults");
    assert_eq!(
        count_tagged("floating ip", &tag),
        1,
        "exactly one floating IP"
    );

    // Rate limited, then slow: reads still succeed.
    proxy.inject("GET", "/v2.0/networks", Fault::Status(429, Some(1)), 2);
    proxy.inject(
        "GET",
        "/v2.0/networks",
        Fault::Delay(Duration::from_millis(1500)),
        1,
    );
    let listed: Vec<Network> = cloud
        .list_tagged(Kind::Network, &[&tag])
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);

    // Deletes retried through conflicts and dropped connections.
    proxy.inject("DELETE", "/v2.0/floatingips", Fault::Status(409, None), 2);
    proxy.inject("DELETE", "/v2.0/networks", Fault::DropBefore, 1);
    proxy.inject("DELETE", "/v2.0/networks", Fault::Status(502, None), 1);
    cloud
        .delete_resource(Kind::FloatingIp, &floating.id)
        .await
        .expect("delete fip");
    cloud
        .delete_resource(Kind::Network, &network.id)
        .await
        .expect("delete network");
    assert_eq!(count_tagged("network", &tag), 0);
    assert_eq!(count_tagged("floating ip", &tag), 0);
    assert!(
        cloud.counter.retries() >= 8,
        "retries: {}",
        cloud.counter.retries()
    );
}

#[tokio::test]
async fn a_server_whose_create_answer_is_lost_is_created_once() {
    let proxy = standard_proxy().await;
    let cloud = connect(&proxy).await;
    let name = unique("lost-answer");
    let tag = format!("flatstack:cluster={name}");
    let net = ServerNetwork::create(&cloud, &name, &tag, "10.77.0.0/24").await;

    proxy.inject("POST", "/v2.1/servers", Fault::Status(503, None), 1);
    proxy.inject("POST", "/v2.1/servers", Fault::DropAfter, 1);
    let server = cloud
        .create_server(&ServerRequest {
            name: name.clone(),
            flavor_id: net.flavor_id.clone(),
            image_id: test_image(),
            port_ids: vec![net.port.id.clone()],
            tags: vec![tag.clone()],
            ..Default::default()
        })
        .await
        .expect("server despite the faults");
    let server = cloud
        .wait_server_active(&server.id, Duration::from_secs(120))
        .await
        .expect("ACTIVE");
    let witnesses = cli(
        "local-demo",
        &[
            "server",
            "list",
            "--name",
            &format!("^{name}$"),
            "-f",
            "json",
        ],
    );
    assert_eq!(
        witnesses.as_array().map_or(0, Vec::len),
        1,
        "exactly one server: {witnesses}"
    );

    net.remove(&cloud, &server.id).await;
    assert_eq!(count_tagged("network", &tag), 0);
}
