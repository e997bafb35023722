//! The rules every node loads to keep pods away from the cloud's metadata service, as
//! rendered into its Ignition config, loaded by Debian's real `nft` into network namespaces
//! this test makes: a "pod" behind a masquerading "node", and a "metadata" host that alone
//! holds 169.254.169.254 and serves HTTP there. No packet leaves the namespaces.

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use crate::support::*;

/// Three namespaces wired pod — node — metadata, removed when dropped.
struct Namespaces {
    pod: String,
    node: String,
    metadata: String,
    server: Option<Child>,
}

fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        output.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn inside(namespace: &str, command: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", namespace])
        .args(command)
        .output()
        .expect("run in namespace")
}

fn ok_inside(namespace: &str, command: &[&str]) -> String {
    let output = inside(namespace, command);
    assert!(
        output.status.success(),
        "{command:?} in {namespace}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl Namespaces {
    fn new() -> Namespaces {
        let id = std::process::id() % 100_000;
        let namespaces = Namespaces {
            pod: format!("flatstack-pod-{id}"),
            node: format!("flatstack-node-{id}"),
            metadata: format!("flatstack-md-{id}"),
            server: None,
        };
        for ns in [&namespaces.pod, &namespaces.node, &namespaces.metadata] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns]);
            ok_inside(ns, &["ip", "link", "set", "lo", "up"]);
        }
        let (pod_if, node_pod_if) = (format!("fsp{id}"), format!("fsn{id}"));
        let (node_up_if, md_if) = (format!("fsu{id}"), format!("fsm{id}"));
        ip(&[
            "link",
            "add",
            &pod_if,
            "netns",
            &namespaces.pod,
            "type",
            "veth",
            "peer",
            "name",
            &node_pod_if,
            "netns",
            &namespaces.node,
        ]);
        ip(&[
            "link",
            "add",
            &node_up_if,
            "netns",
            &namespaces.node,
            "type",
            "veth",
            "peer",
            "name",
            &md_if,
            "netns",
            &namespaces.metadata,
        ]);
        // The pod: an address of the cluster's pod range, its default route via the node.
        ok_inside(
            &namespaces.pod,
            &["ip", "addr", "add", "10.244.1.5/24", "dev", &pod_if],
        );
        ok_inside(&namespaces.pod, &["ip", "link", "set", &pod_if, "up"]);
        ok_inside(
            &namespaces.pod,
            &["ip", "route", "add", "default", "via", "10.244.1.1"],
        );
        // The node: forwards, reaches the metadata host on its uplink.
        ok_inside(
            &namespaces.node,
            &["ip", "addr", "add", "10.244.1.1/24", "dev", &node_pod_if],
        );
        ok_inside(
            &namespaces.node,
            &["ip", "addr", "add", "198.51.100.1/24", "dev", &node_up_if],
        );
        ok_inside(&namespaces.node, &["ip", "link", "set", &node_pod_if, "up"]);
        ok_inside(&namespaces.node, &["ip", "link", "set", &node_up_if, "up"]);
        ok_inside(
            &namespaces.node,
            &[
                "ip",
                "route",
                "add",
                "169.254.169.254/32",
                "via",
                "198.51.100.2",
            ],
        );
        ok_inside(
            &namespaces.node,
            &["sysctl", "-qw", "net.ipv4.ip_forward=1"],
        );
        // The metadata host holds 169.254.169.254.
        ok_inside(
            &namespaces.metadata,
            &["ip", "addr", "add", "198.51.100.2/24", "dev", &md_if],
        );
        ok_inside(
            &namespaces.metadata,
            &["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"],
        );
        ok_inside(&namespaces.metadata, &["ip", "link", "set", &md_if, "up"]);
        namespaces
    }

    /// Serves a page standing for user_data at http://169.254.169.254/ in the metadata host.
    fn serve_metadata(&mut self, dir: &Path) {
        std::fs::write(dir.join("user_data"), "secret user_data\n").expect("page");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.metadata])
            .args([
                "python3",
                "-m",
                "http.server",
                "80",
                "--bind",
                "169.254.169.254",
            ])
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the metadata stand-in");
        self.server = Some(child);
        let started = Instant::now();
        while !self.fetches(&self.metadata.clone()) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the metadata stand-in never answered"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether a process in `namespace` gets the user_data page (2 s at most).
    fn fetches(&self, namespace: &str) -> bool {
        let output = inside(
            namespace,
            &[
                "python3",
                "-c",
                "import urllib.request; print(urllib.request.urlopen('http://169.254.169.254/user_data', timeout=2).read().decode())",
            ],
        );
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains("user_data")
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        for ns in [&self.pod, &self.node, &self.metadata] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// flannel's rule on a node: pods masqueraded when they leave the pod range (iptables, nft
/// backend, as on Flatcar).
fn masquerade_pods(node: &str) {
    ok_inside(
        node,
        &[
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            "10.244.0.0/16",
            "!",
            "-d",
            "10.244.0.0/16",
            "-j",
            "MASQUERADE",
        ],
    );
}

#[test]
fn pods_cannot_reach_the_metadata_service_and_the_node_can() {
    for tool in ["ip", "nft", "iptables", "python3"] {
        require_tool(tool);
    }
    let workspace = Workspace::new();
    workspace.write_cluster(&cluster_text(
        "https://mirror.example.org/ext",
        &"ab".repeat(32),
        1,
    ));
    success(&workspace.render(&["--endpoint", "203.0.113.7"]));
    let rules_path = workspace.path("metadata-guard.nft");
    for node in ["demo-control-plane-1", "demo-default-1"] {
        let config = read_json(&workspace.out_dir().join(format!("{node}.ign")));
        let rules = ignition_file(&config, "/etc/flatstack/metadata-guard.nft")
            .unwrap_or_else(|| panic!("{node} has no metadata guard"));
        std::fs::write(&rules_path, rules).expect("write rules");
    }
    let rules = rules_path.to_str().expect("path");

    let mut namespaces = Namespaces::new();
    let www = workspace.path("www");
    std::fs::create_dir_all(&www).expect("www");
    namespaces.serve_metadata(&www);
    let (pod, node) = (namespaces.pod.clone(), namespaces.node.clone());
    // What flannel sets up on a node: pods masqueraded off the node, their forwarding accepted
    // (iptables, nft backend, as on Flatcar).
    masquerade_pods(&node);
    ok_inside(
        &node,
        &[
            "iptables",
            "-A",
            "FORWARD",
            "-s",
            "10.244.0.0/16",
            "-j",
            "ACCEPT",
        ],
    );
    assert!(
        namespaces.fetches(&pod),
        "without the rules a pod reaches the metadata service: the test's network works"
    );

    ok_inside(&node, &["nft", "-f", rules]);
    assert!(!namespaces.fetches(&pod), "a pod still reaches it");
    assert!(
        namespaces.fetches(&node),
        "the node itself must still reach it"
    );

    // The node's tables rewritten as flannel and kube-proxy do: iptables chains flushed and
    // filled again, kube-proxy's own nftables table accepting forwarded traffic.
    ok_inside(&node, &["iptables", "-t", "nat", "-F", "POSTROUTING"]);
    masquerade_pods(&node);
    ok_inside(&node, &["iptables", "-F", "FORWARD"]);
    ok_inside(&node, &["iptables", "-A", "FORWARD", "-j", "ACCEPT"]);
    ok_inside(
        &node,
        &[
            "nft",
            "add table ip kube-proxy; add chain ip kube-proxy forward { type filter hook forward priority filter; policy accept; }; add rule ip kube-proxy forward accept",
        ],
    );
    assert!(!namespaces.fetches(&pod), "the rule no longer holds");
    assert!(namespaces.fetches(&node));

    // Loaded again (a reboot, a re-run of the unit): still one rule, nobody else's touched.
    ok_inside(&node, &["nft", "-f", rules]);
    let table = ok_inside(
        &node,
        &["nft", "list", "table", "inet", "flatstack_metadata_guard"],
    );
    assert_eq!(table.matches("drop").count(), 1, "{table}");
    let dropped = table
        .split("packets ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok());
    assert_eq!(dropped, Some(0), "a fresh table's counter: {table}");
    let nat = ok_inside(&node, &["iptables", "-t", "nat", "-S", "POSTROUTING"]);
    assert!(nat.contains("MASQUERADE"), "{nat}");
    let others = ok_inside(&node, &["nft", "list", "table", "ip", "kube-proxy"]);
    assert!(others.contains("accept"), "{others}");
    assert!(!namespaces.fetches(&pod));
    let table = ok_inside(
        &node,
        &["nft", "list", "table", "inet", "flatstack_metadata_guard"],
    );
    assert!(
        !table.contains("packets 0 "),
        "the drop counted the pod's packets: {table}"
    );
}
