//! A loopback HTTP proxy in front of the local OpenStack's APIs that injects faults (status
//! codes with Retry-After, connections dropped before or after the cloud acted, delays) by
//! rules, and can add a fixed latency to every call. Shared by the fault tests and the `up`
//! benchmark (which includes this file by path).

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy)]
pub enum Fault {
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
    /// Added before every forwarded request.
    latency: Duration,
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
pub struct FaultProxy {
    script: Arc<Mutex<Script>>,
    ports: Vec<(String, u16)>,
    /// Requests seen, faulted or forwarded.
    requests: Arc<AtomicUsize>,
}

impl FaultProxy {
    pub async fn start(upstreams: &[(&str, u16)]) -> FaultProxy {
        let script = Arc::new(Mutex::new(Script::default()));
        let requests = Arc::new(AtomicUsize::new(0));
        let mut ports = Vec::new();
        for (name, upstream_port) in upstreams {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            ports.push((
                name.to_string(),
                listener.local_addr().expect("addr").port(),
            ));
            let upstream: SocketAddr = format!("127.0.0.1:{upstream_port}").parse().expect("addr");
            let script = script.clone();
            let requests = requests.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(relay(client, upstream, script.clone(), requests.clone()));
                }
            });
        }
        FaultProxy {
            script,
            ports,
            requests,
        }
    }

    pub fn port(&self, name: &str) -> u16 {
        self.ports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| *p)
            .expect("proxied API")
    }

    pub fn inject(&self, method: &'static str, path: &'static str, fault: Fault, times: usize) {
        self.script.lock().expect("script").rules.push_back(Rule {
            method,
            path,
            fault,
            times,
        });
    }

    /// Drops every rule not yet used up: later requests pass untouched.
    pub fn clear(&self) {
        self.script.lock().expect("script").rules.clear();
    }

    /// Adds `latency` before every forwarded request (all APIs).
    pub fn set_latency(&self, latency: Duration) {
        self.script.lock().expect("script").latency = latency;
    }

    /// Requests the proxy has seen so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn injected(&self) -> usize {
        self.script.lock().expect("script").injected
    }

    /// Writes a clouds.yaml whose entry `faulty` sends every API call through the proxy.
    pub fn write_clouds_yaml(&self, file: &std::path::Path) {
        std::fs::write(
            file,
            format!(
                "clouds:\n  faulty:\n    auth:\n      auth_url: http://127.0.0.1:{}/v3\n      username: demo\n      password: secret\n      project_name: demo\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n    compute_endpoint_override: http://127.0.0.1:{}/v2.1\n    network_endpoint_override: http://127.0.0.1:{}\n    load_balancer_endpoint_override: http://127.0.0.1:{}\n",
                self.port("identity"),
                self.port("compute"),
                self.port("network"),
                self.port("load-balancer"),
            ),
        )
        .expect("write");
    }
}

pub async fn standard_proxy() -> FaultProxy {
    FaultProxy::start(&[
        ("identity", 5000),
        ("compute", 8774),
        ("network", 9696),
        ("load-balancer", 9876),
    ])
    .await
}

async fn relay(
    mut client: TcpStream,
    upstream: SocketAddr,
    script: Arc<Mutex<Script>>,
    requests: Arc<AtomicUsize>,
) {
    let Some((head, body)) = read_request(&mut client).await else {
        return;
    };
    requests.fetch_add(1, Ordering::SeqCst);
    let latency = script.lock().map(|s| s.latency).unwrap_or_default();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
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
