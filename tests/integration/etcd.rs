//! The commands flatstack's node Job runs against a control plane's etcd member, run against a
//! real three-member etcd on loopback (Debian's `etcd-server` and `etcd-client`), with mutual
//! TLS as kubeadm sets it up: the member list read as flatstack reads it, one member removed
//! by its hex ID, and the other two keeping the data.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flatstack::kube::etcd::{Removal, etcdctl, parse_members, removal_outcome};

use crate::support::*;

/// An etcd member process, killed when dropped.
struct Member {
    child: Child,
    client_url: String,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// An etcd CA, a certificate for the members (server and peer, 127.0.0.1) and the client
/// certificate under the names kubeadm gives them in `/etc/kubernetes/pki/etcd`.
fn etcd_pki(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=etcd-ca",
        ],
    );
    for (name, usage, san) in [
        (
            "member",
            "serverAuth,clientAuth",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ),
        (
            "healthcheck-client",
            "clientAuth",
            "subjectAltName=DNS:kube-etcd-healthcheck-client",
        ),
    ] {
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("extendedKeyUsage={usage}\n{san}\n"),
        )
        .expect("write extensions");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-out",
                &format!("{name}.crt"),
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
}

/// flatstack's etcdctl arguments against `endpoint`, run; stdout on success.
fn run_etcdctl(pki: &Path, endpoint: &str, args: &[&str]) -> Result<String, String> {
    let argv = etcdctl(endpoint, &pki.to_string_lossy(), args);
    let output = Command::new(&argv[0])
        .args(&argv[1..])
        .env("ETCDCTL_API", "3")
        .output()
        .expect("run etcdctl");
    match output.status.success() {
        true => Ok(String::from_utf8_lossy(&output.stdout).into_owned()),
        false => Err(String::from_utf8_lossy(&output.stderr).into_owned()),
    }
}

/// [`run_etcdctl`] asked again while a loaded machine times out the request (a leader election
/// after the loss), up to a minute and a half.
fn run_etcdctl_patiently(pki: &Path, endpoint: &str, args: &[&str]) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match run_etcdctl(pki, endpoint, args) {
            Err(e) if e.contains("deadline exceeded") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(500))
            }
            answer => return answer,
        }
    }
}

#[test]
fn the_member_removal_commands_work_on_a_real_three_member_etcd() {
    require_tool("etcd");
    require_tool("etcdctl");
    require_tool("openssl");
    let workspace = Workspace::new();
    let pki = workspace.path("pki");
    std::fs::create_dir_all(&pki).expect("pki dir");
    etcd_pki(&pki);
    let names = [
        "demo-control-plane-1",
        "demo-control-plane-2",
        "demo-control-plane-3",
    ];
    let ports: Vec<(u16, u16)> = names.iter().map(|_| (free_port(), free_port())).collect();
    let initial: Vec<String> = names
        .iter()
        .zip(&ports)
        .map(|(name, (_, peer))| format!("{name}=https://127.0.0.1:{peer}"))
        .collect();
    let file = |name: &str| pki.join(name).to_string_lossy().into_owned();
    let mut members: Vec<Member> = names
        .iter()
        .zip(&ports)
        .map(|(name, (client, peer))| {
            let client_url = format!("https://127.0.0.1:{client}");
            let peer_url = format!("https://127.0.0.1:{peer}");
            let log = std::fs::File::create(workspace.path(&format!("{name}.log"))).expect("log");
            let child = Command::new("etcd")
                .args([
                    &format!("--name={name}"),
                    &format!("--data-dir={}", workspace.path(name).display()),
                    &format!("--listen-client-urls={client_url}"),
                    &format!("--advertise-client-urls={client_url}"),
                    &format!("--listen-peer-urls={peer_url}"),
                    &format!("--initial-advertise-peer-urls={peer_url}"),
                    &format!("--initial-cluster={}", initial.join(",")),
                    "--initial-cluster-state=new",
                    "--initial-cluster-token=flatstack-test",
                    "--client-cert-auth",
                    &format!("--trusted-ca-file={}", file("ca.crt")),
                    &format!("--cert-file={}", file("member.crt")),
                    &format!("--key-file={}", file("member.key")),
                    "--peer-client-cert-auth",
                    &format!("--peer-trusted-ca-file={}", file("ca.crt")),
                    &format!("--peer-cert-file={}", file("member.crt")),
                    &format!("--peer-key-file={}", file("member.key")),
                    "--listen-metrics-urls=",
                ])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start etcd");
            Member { child, client_url }
        })
        .collect();

    // The member list, read as the node Job reads it, once the cluster has a leader.
    let first = &members[0].client_url.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let listed = loop {
        match run_etcdctl(&pki, first, &["member", "list", "-w", "json"]) {
            Ok(out)
                if parse_members(&out)
                    .is_ok_and(|m| m.len() == 3 && m.iter().all(|m| !m.name.is_empty())) =>
            {
                break parse_members(&out).expect("members");
            }
            other if Instant::now() > deadline => panic!("etcd did not form: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    };
    run_etcdctl(&pki, first, &["put", "/registry/flatstack", "kept"]).expect("put");
    // The leader, as `status` reads it from one member: one of the three.
    let status = run_etcdctl(&pki, first, &["endpoint", "status", "-w", "json"]).expect("status");
    let leader = flatstack::kube::etcd::parse_leader(&status).expect("leader");
    assert!(listed.iter().any(|m| m.id == leader), "{status}");

    // Control plane 3 is lost: its member stops, the other two keep quorum and answer.
    drop(members.pop());
    let lost = listed
        .iter()
        .find(|m| m.is_of("demo-control-plane-3", None))
        .expect("member of control plane 3");
    // Found by name, removed by its hex ID through another member, asked again as the node
    // Job path asks (right after the loss etcd may refuse for its 5 s health interval, and a
    // loaded machine may time out a proposal that still lands).
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut asked_before = false;
    loop {
        let answer = run_etcdctl(
            &pki,
            &members[1].client_url,
            &["member", "remove", &lost.hex_id()],
        );
        match removal_outcome(answer.as_ref().err().map(String::as_str), asked_before) {
            Removal::Done => {
                if let Ok(out) = &answer {
                    assert!(out.contains(&lost.hex_id()), "{out}");
                }
                break;
            }
            Removal::AskAgain if Instant::now() < deadline => {
                asked_before = true;
                std::thread::sleep(Duration::from_millis(500))
            }
            _ => panic!("member remove: {answer:?}"),
        }
    }
    let after = run_etcdctl_patiently(&pki, first, &["member", "list", "-w", "json"]);
    let after = parse_members(&after.expect("list")).expect("members");
    let mut left: Vec<&str> = after.iter().map(|m| m.name.as_str()).collect();
    left.sort_unstable();
    assert_eq!(left, ["demo-control-plane-1", "demo-control-plane-2"]);
    for member in &members {
        let value = run_etcdctl_patiently(
            &pki,
            &member.client_url,
            &["get", "/registry/flatstack", "--print-value-only"],
        )
        .expect("get");
        assert_eq!(value.trim(), "kept", "{}", member.client_url);
    }
    // A wrong ID is an error etcd names, which the Job's log would carry.
    let wrong = run_etcdctl(&pki, first, &["member", "remove", &lost.hex_id()]).expect_err("gone");
    assert!(
        wrong.contains("member not found") || wrong.contains("not found"),
        "{wrong}"
    );
}
