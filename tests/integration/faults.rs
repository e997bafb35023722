//! Faults injected by a loopback HTTP proxy in front of the local OpenStack's APIs: bursts of
//! 503, 409 conflicts, 429 with Retry-After, dropped connections (before the request reaches
//! the cloud, and after the cloud acted on it), slow answers. Every operation must still
//! succeed, and the `openstack` CLI must find exactly one of each resource afterwards.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flatstack::cloud::compute::ServerRequest;
use flatstack::cloud::network::{FloatingIp, Kind, Network};
use flatstack::cloud::{Cloud, CloudConfig, RetryPolicy};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::openstack::{cli, test_image, unique};

#[derive(Debug, Clone, Copy)]
pub(crate) enum Fault {
    /// Answer with this status (and Retry-After seconds) without asking the cloud.
    Status(u16, Option<u64>),
    /// Close the connection before the request reaches the cloud.
    DropBefore,
    /// Let the cloud act on the request, then close the connection without an answer.
    DropAfter,
    /// Wait this long, then forward.
    Delay(Duration),
}

struct Rule {
    method: &'static str,
    path: &'static str,
    fault: Fault,
    times: usize,
}

#[derive(Default)]
struct Script {
    rules: VecDeque<Rule>,
    injected: usize,
}

impl Script {
    /// The fault for this request, if a rule with uses left matches it.
    fn take(&mut self, method: &str, path: &str) -> Option<Fault> {
        let rule = self
            .rules
            .iter_mut()
            .find(|r| r.times > 0 && r.method == method && path.contains(r.path))?;
        rule.times -= 1;
        self.injected += 1;
        Some(rule.fault)
    }
}

/// One proxy per upstream API, all sharing one script.
pub(crate) struct FaultProxy {
    script: Arc<Mutex<Script>>,
    ports: Vec<(String, u16)>,
}

impl FaultProxy {
    async fn start(upstreams: &[(&str, u16)]) -> FaultProxy {
        let script = Arc::new(Mutex::new(Script::default()));
        let mut ports = Vec::new();
        for (name, upstream_port) in upstreams {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            ports.push((
                name.to_string(),
                listener.local_addr().expect("addr").port(),
            ));
            let upstream: SocketAddr = format!("127.0.0.1:{upstream_port}").parse().expect("addr");
            let script = script.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(relay(client, upstream, script.clone()));
                }
            });
        }
        FaultProxy { script, ports }
    }

    fn port(&self, name: &str) -> u16 {
        self.ports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| *p)
            .expect("proxied API")
    }

    pub(crate) fn inject(
        &self,
        method: &'static str,
        path: &'static str,
        fault: Fault,
        times: usize,
    ) {
        self.script.lock().expect("script").rules.push_back(Rule {
            method,
            path,
            fault,
            times,
        });
    }

    pub(crate) fn injected(&self) -> usize {
        self.script.lock().expect("script").injected
    }

    /// Writes a clouds.yaml whose entry `faulty` sends every API call through the proxy.
    pub(crate) fn write_clouds_yaml(&self, file: &std::path::Path) {
        std::fs::write(
            file,
            format!(
                "clouds:\n  faulty:\n    auth:\n      auth_url: http://127.0.0.1:{}/v3\n      username: demo\n      password: secret\n      project_name: demo\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n    compute_endpoint_override: http://127.0.0.1:{}/v2.1\n    network_endpoint_override: http://127.0.0.1:{}\n",
                self.port("identity"),
                self.port("compute"),
                self.port("network"),
            ),
        )
        .expect("write");
    }

    /// A session as the demo user whose every API call goes through the proxy.
    async fn connect(&self) -> Cloud {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("clouds.yaml");
        self.write_clouds_yaml(&file);
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
}

pub(crate) async fn standard_proxy() -> FaultProxy {
    FaultProxy::start(&[("identity", 5000), ("compute", 8774), ("network", 9696)]).await
}

async fn relay(mut client: TcpStream, upstream: SocketAddr, script: Arc<Mutex<Script>>) {
    let Some((head, body)) = read_request(&mut client).await else {
        return;
    };
    let mut words = head.split_whitespace();
    let method = words.next().unwrap_or_default().to_string();
    let path = words.next().unwrap_or_default().to_string();
    let fault = script.lock().ok().and_then(|mut s| s.take(&method, &path));
    match fault {
        Some(Fault::Status(code, retry_after)) => {
            let body = format!(r#"{{"message": "injected {code}"}}"#);
            let retry = retry_after
                .map(|s| format!("Retry-After: {s}\r\n"))
                .unwrap_or_default();
            let answer = format!(
                "HTTP/1.1 {code} Injected\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{retry}Connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.write_all(answer.as_bytes()).await;
        }
        Some(Fault::DropBefore) => {}
        Some(Fault::DropAfter) => {
            let _ = forward(upstream, &head, &body).await;
        }
        Some(Fault::Delay(wait)) => {
            tokio::time::sleep(wait).await;
            if let Some(answer) = forward(upstream, &head, &body).await {
                let _ = client.write_all(&answer).await;
            }
        }
        None => {
            if let Some(answer) = forward(upstream, &head, &body).await {
                let _ = client.write_all(&answer).await;
            }
        }
    }
    let _ = client.shutdown().await;
}

/// The request head (without the blank line) and its body, by Content-Length.
async fn read_request(client: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = client.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let n = client.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((head, body))
}

/// Sends the request upstream on a fresh connection it asks to close, and returns the whole
/// answer as it came.
async fn forward(upstream: SocketAddr, head: &str, body: &[u8]) -> Option<Vec<u8>> {
    let mut server = TcpStream::connect(upstream).await.ok()?;
    let mut rewritten: Vec<&str> = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    rewritten.push("Connection: close");
    let mut request = rewritten.join("\r\n").into_bytes();
    request.extend_from_slice(b"\r\n\r\n");
    request.extend_from_slice(body);
    server.write_all(&request).await.ok()?;
    let mut answer = Vec::new();
    server.read_to_end(&mut answer).await.ok()?;
    Some(answer)
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
    let cloud = proxy.connect().await;
    assert!(cloud.project_id().await.is_some());
    assert_eq!(proxy.injected(), 2);
}

#[tokio::test]
async fn creates_survive_503_bursts_and_dropped_answers_without_duplicates() {
    let proxy = standard_proxy().await;
    let cloud = proxy.connect().await;
    let cluster = unique("faults");
    let tag = format!("flatstack:cluster={cluster}");
    let tags = vec![tag.clone()];

    // A burst of 503s, then an answer lost after Neutron created the network.
    proxy.inject("POST", "/v2.0/networks", Fault::Status(503, None), 3);
    proxy.inject("POST", "/v2.0/networks", Fault::DropAfter, 1);
    let network: Network = cloud
        .create_tagged(Kind::Network, &format!("{cluster}-net"), json!({}), &tags)
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
        .create_floating_ip(&public.id, &format!("{cluster}-api"), None, &tags)
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
    let cloud = proxy.connect().await;
    let name = unique("lost-answer");
    let tag = format!("flatstack:cluster={name}");
    let tags = vec![tag.clone()];
    let flavor = cloud
        .flavors()
        .await
        .expect("flavors")
        .into_iter()
        .find(|f| f.name == "m3.tiny")
        .expect("m3.tiny");
    let network: Network = cloud
        .create_tagged(Kind::Network, &format!("{name}-net"), json!({}), &tags)
        .await
        .expect("network");
    let _subnet: flatstack::cloud::network::Subnet = cloud
        .create_tagged(
            Kind::Subnet,
            &format!("{name}-subnet"),
            json!({ "network_id": network.id, "cidr": "10.77.0.0/24", "ip_version": 4 }),
            &tags,
        )
        .await
        .expect("subnet");
    let port: flatstack::cloud::network::Port = cloud
        .create_tagged(
            Kind::Port,
            &format!("{name}-port"),
            json!({ "network_id": network.id }),
            &tags,
        )
        .await
        .expect("port");

    proxy.inject("POST", "/v2.1/servers", Fault::Status(503, None), 1);
    proxy.inject("POST", "/v2.1/servers", Fault::DropAfter, 1);
    let server = cloud
        .create_server(&ServerRequest {
            name: name.clone(),
            flavor_id: flavor.id,
            image_id: test_image(),
            port_ids: vec![port.id.clone()],
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

    cloud.delete_server(&server.id).await.expect("delete");
    cloud
        .wait_server_deleted(&server.id, Duration::from_secs(120))
        .await
        .expect("gone");
    cloud
        .delete_resource(Kind::Port, &port.id)
        .await
        .expect("port");
    cloud
        .delete_resource(Kind::Network, &network.id)
        .await
        .expect("network");
    assert_eq!(count_tagged("network", &tag), 0);
}
