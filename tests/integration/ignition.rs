//! Rendered Ignition configs checked by Debian's real Ignition: `ignition-validate`, then
//! its fetch and files stages applied to a scratch root, whose tree is inspected.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::support::*;

struct Rendered {
    workspace: Workspace,
    server: FileServer,
    sysext: Vec<u8>,
}

/// Renders a 1+2 cluster whose sysext is served from loopback.
fn render_cluster() -> Rendered {
    render_with_control_planes(1)
}

/// Renders a cluster of `control_planes` control planes and 2 workers.
fn render_with_control_planes(control_planes: u32) -> Rendered {
    let sysext: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let mut files = BTreeMap::new();
    files.insert(SYSEXT_NAME.to_string(), sysext.clone());
    let server = FileServer::serve(files);
    let workspace = Workspace::new();
    workspace.write_cluster(
        &cluster_text(&server.base_url(), &sha256_hex(&sysext), 2).replacen(
            "[control_plane]\n",
            &format!("[control_plane]\ncount = {control_planes}\n"),
            1,
        ),
    );
    success(&workspace.render(&["--endpoint", "203.0.113.7"]));
    Rendered {
        workspace,
        server,
        sysext,
    }
}

fn apply(rendered: &Rendered, node: &str) -> AppliedRoot {
    let config = rendered.workspace.out_dir().join(format!("{node}.ign"));
    let scratch = rendered.workspace.path(&format!("scratch-{node}"));
    let applied = apply_ignition(&config, &scratch)
        .unwrap_or_else(|log| panic!("Ignition failed on {node}:\n{log}"));
    assert!(applied.log.contains("files passed"), "{}", applied.log);
    applied
}

const NODES: [&str; 3] = ["demo-control-plane-1", "demo-default-1", "demo-default-2"];

#[test]
fn every_config_passes_ignition_validate() {
    require_tool("ignition-validate");
    let rendered = render_cluster();
    for node in NODES {
        let config = rendered.workspace.out_dir().join(format!("{node}.ign"));
        let output = Command::new("ignition-validate")
            .arg(&config)
            .output()
            .expect("run");
        assert!(
            output.status.success(),
            "{node}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(read_json(&config)["ignition"]["version"], "3.3.0");
    }
}

#[test]
fn ignition_validate_rejects_a_broken_config() {
    // Guards the guard: the validator must actually read our files.
    require_tool("ignition-validate");
    let rendered = render_cluster();
    let path = rendered.workspace.out_dir().join("demo-default-1.ign");
    let mut config = read_json(&path);
    config["storage"]["files"][0]["path"] = "relative/path".into();
    let broken = rendered.workspace.path("broken.ign");
    std::fs::write(&broken, config.to_string()).expect("write");
    let output = Command::new("ignition-validate")
        .arg(&broken)
        .output()
        .expect("run");
    assert!(!output.status.success());
}

fn assert_common_tree(root: &Path, sysext: &[u8]) {
    let image = root.join("opt/extensions/kubernetes").join(SYSEXT_NAME);
    assert_eq!(std::fs::read(&image).expect("sysext image"), sysext);
    assert_eq!(mode_of(&image), 0o644);
    let link = std::fs::read_link(root.join("etc/extensions/kubernetes.raw")).expect("sysext link");
    assert_eq!(
        link,
        Path::new("/opt/extensions/kubernetes").join(SYSEXT_NAME)
    );

    let units = root.join("etc/systemd/system");
    let kubeadm = std::fs::read_to_string(units.join("kubeadm.service")).expect("kubeadm.service");
    assert!(kubeadm.contains("Type=oneshot"));
    assert!(kubeadm.contains("ConditionPathExists=!/etc/kubernetes/kubelet.conf"));
    assert!(kubeadm.contains("EnvironmentFile=/run/metadata/flatcar"));
    let preset = std::fs::read_to_string(root.join("etc/systemd/system-preset/20-ignition.preset"))
        .expect("preset");
    assert!(
        preset.lines().any(|l| l == "enable kubeadm.service"),
        "{preset}"
    );
    assert!(
        preset
            .lines()
            .any(|l| l == "enable systemd-sysupdate.timer"),
        "{preset}"
    );
    // Every node keeps pods away from the metadata service before its kubelet starts.
    assert!(
        preset
            .lines()
            .any(|l| l == "enable flatstack-metadata-guard.service"),
        "{preset}"
    );
    let guard = std::fs::read_to_string(units.join("flatstack-metadata-guard.service"))
        .expect("metadata guard unit");
    assert!(guard.contains("RequiredBy=kubelet.service"), "{guard}");
    assert!(
        guard.contains("Before=network-pre.target kubelet.service"),
        "{guard}"
    );
    let rules = std::fs::read_to_string(root.join("etc/flatstack/metadata-guard.nft"))
        .expect("metadata guard rules");
    assert!(
        rules.contains("ip saddr 10.244.0.0/16 ip daddr 169.254.169.254 counter drop"),
        "{rules}"
    );
    let locksmithd =
        std::fs::read_link(units.join("locksmithd.service")).expect("masked locksmithd");
    assert_eq!(locksmithd, Path::new("/dev/null"));
    let dropin = std::fs::read_to_string(
        units.join("systemd-sysupdate.service.d/flatstack-kubernetes.conf"),
    )
    .expect("sysupdate drop-in");
    assert!(dropin.contains("systemd-sysupdate -C kubernetes update"));
    assert!(dropin.contains("/run/reboot-required"));

    let transfer =
        std::fs::read_to_string(root.join("etc/sysupdate.kubernetes.d/kubernetes-v1.37.conf"))
            .expect("sysupdate transfer");
    assert!(
        transfer.contains("MatchPattern=kubernetes-v1.37.@v-%a.raw"),
        "{transfer}"
    );
    assert!(transfer.contains("CurrentSymlink=/etc/extensions/kubernetes.raw"));
    assert!(root.join("etc/sysupdate.d/noop.conf").is_file());

    let update =
        std::fs::read_to_string(root.join("etc/flatcar/update.conf")).expect("update.conf");
    assert!(update.lines().any(|l| l == "GROUP=stable"), "{update}");
    assert!(
        update.lines().any(|l| l == "REBOOT_STRATEGY=off"),
        "{update}"
    );

    let keys = std::fs::read_to_string(root.join("home/core/.ssh/authorized_keys.d/ignition"))
        .expect("core's keys");
    assert!(keys.contains(SSH_KEY), "{keys}");
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("passwd");
    assert!(passwd.lines().any(|l| l.starts_with("core:")), "{passwd}");

    for script in ["flatstack-bootstrap", "flatstack-unseal"] {
        let script = root.join("opt/flatstack/bin").join(script);
        assert_eq!(mode_of(&script), 0o755);
        let syntax = Command::new("bash")
            .arg("-n")
            .arg(&script)
            .output()
            .expect("bash -n");
        assert!(
            syntax.status.success(),
            "{}",
            String::from_utf8_lossy(&syntax.stderr)
        );
    }
    assert_eq!(mode_of(&root.join("etc/flatstack")), 0o700);
    assert_eq!(mode_of(&root.join("etc/flatstack/kubeadm.yaml.in")), 0o600);
}

#[test]
fn control_plane_tree_has_the_cluster_cas() {
    let rendered = render_cluster();
    let applied = apply(&rendered, "demo-control-plane-1");
    let root = &applied.root;
    assert_common_tree(root, &rendered.sysext);
    assert!(
        rendered
            .server
            .requests
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    );

    let state = rendered.workspace.state_dir().join("pki");
    for (on_node, in_state) in [
        ("ca.crt", "ca.crt"),
        ("etcd/ca.crt", "etcd-ca.crt"),
        ("sa.pub", "sa.pub"),
    ] {
        let path = root.join("etc/flatstack/pki").join(on_node);
        let node_bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{on_node}: {e}"));
        assert_eq!(
            node_bytes,
            std::fs::read(state.join(in_state)).expect("state file"),
            "{on_node}"
        );
        assert_eq!(mode_of(&path), 0o644, "{on_node}");
    }
    // The keys travel sealed: opened at boot with the key in the server's metadata (tested
    // against Nova in `up.rs`), never in clear in user_data.
    for key in ["ca.key", "front-proxy-ca.key", "etcd/ca.key", "sa.key"] {
        let pki = root.join("etc/flatstack/pki");
        assert!(!pki.join(key).exists(), "{key} in clear");
        let sealed = pki.join(format!("{key}.sealed"));
        assert_eq!(mode_of(&sealed), 0o600, "{key}");
        assert!(
            std::fs::metadata(&sealed).expect("sealed").len() > 200,
            "{key}"
        );
    }
    assert_eq!(private_keys_under(root), Vec::<String>::new());
    assert_eq!(
        mode_of(&root.join("etc/flatstack/join-token.sealed")),
        0o600
    );
    let config = std::fs::read_to_string(
        rendered
            .workspace
            .out_dir()
            .join("demo-control-plane-1.ign"),
    )
    .expect("config");
    assert!(!config.contains("PRIVATE KEY"));
    let kubeadm =
        std::fs::read_to_string(root.join("etc/flatstack/kubeadm.yaml.in")).expect("kubeadm");
    assert!(kubeadm.contains("kind: InitConfiguration"));
    assert!(kubeadm.contains("kind: ClusterConfiguration"));
    assert!(
        kubeadm.contains("controlPlaneEndpoint: 10.42.0.10:6443"),
        "{kubeadm}"
    );
    assert!(
        kubeadm.contains("\"203.0.113.7\""),
        "floating IP in certSANs:\n{kubeadm}"
    );
    let unit =
        std::fs::read_to_string(root.join("etc/systemd/system/kubeadm.service")).expect("unit");
    assert!(unit.contains("flatstack-bootstrap init"));
    // The console log is every project member's to read (Nova's API): kubeadm's output, and
    // the join command with its token that `kubeadm init` prints, never reach it.
    for line in unit.lines().filter(|l| l.starts_with("Standard")) {
        assert!(!line.contains("console"), "{line}");
    }
    let script = std::fs::read_to_string(root.join("opt/flatstack/bin/flatstack-bootstrap"))
        .expect("bootstrap script");
    assert!(
        script.contains("kubeadm init --config /etc/flatstack/kubeadm.yaml --skip-token-print"),
        "{script}"
    );
}

#[test]
fn worker_tree_has_no_private_key_and_joins_by_token_and_hash() {
    let rendered = render_cluster();
    let applied = apply(&rendered, "demo-default-1");
    let root = &applied.root;
    assert_common_tree(root, &rendered.sysext);
    assert_eq!(private_keys_under(root), Vec::<String>::new());
    assert!(!root.join("etc/flatstack/pki").exists());

    let kubeadm =
        std::fs::read_to_string(root.join("etc/flatstack/kubeadm.yaml.in")).expect("kubeadm");
    assert!(kubeadm.contains("kind: JoinConfiguration"));
    // The token is sealed; the readable configuration names it by placeholder.
    assert!(kubeadm.contains("token: \"@JOIN_TOKEN@\""), "{kubeadm}");
    assert!(
        !rendered
            .workspace
            .state_dir()
            .join("pki/bootstrap-token")
            .exists()
    );
    assert_eq!(
        mode_of(&root.join("etc/flatstack/join-token.sealed")),
        0o600
    );
    assert!(
        kubeadm.contains("apiServerEndpoint: 10.42.0.10:6443"),
        "{kubeadm}"
    );
    assert!(kubeadm.contains("example.org/tier=general"), "{kubeadm}");
    assert!(kubeadm.contains("effect: NoSchedule"), "{kubeadm}");
    let unit =
        std::fs::read_to_string(root.join("etc/systemd/system/kubeadm.service")).expect("unit");
    assert!(unit.contains("flatstack-bootstrap worker"));
}

/// With three control planes, the second joins as a control plane through the endpoint: it
/// gets the cluster's CAs sealed like the first, kube-vip's static pod for the API's address
/// (placed by the bootstrap script once kubeadm has joined), and no InitConfiguration.
#[test]
fn a_joining_control_plane_has_the_sealed_cas_and_the_address_holder() {
    require_tool("ignition-validate");
    let rendered = render_with_control_planes(3);
    for node in [
        "demo-control-plane-1",
        "demo-control-plane-2",
        "demo-control-plane-3",
    ] {
        let config = rendered.workspace.out_dir().join(format!("{node}.ign"));
        let output = Command::new("ignition-validate")
            .arg(&config)
            .output()
            .expect("run");
        assert!(
            output.status.success(),
            "{node}: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    let applied = apply(&rendered, "demo-control-plane-2");
    let root = &applied.root;
    assert_common_tree(root, &rendered.sysext);
    assert_eq!(
        private_keys_under(root),
        Vec::<String>::new(),
        "sealed only"
    );
    for key in ["ca.key", "front-proxy-ca.key", "etcd/ca.key", "sa.key"] {
        let sealed = root.join(format!("etc/flatstack/pki/{key}.sealed"));
        assert_eq!(mode_of(&sealed), 0o600, "{key}");
    }
    let kubeadm =
        std::fs::read_to_string(root.join("etc/flatstack/kubeadm.yaml.in")).expect("kubeadm");
    assert!(kubeadm.contains("kind: JoinConfiguration"), "{kubeadm}");
    assert!(!kubeadm.contains("InitConfiguration"), "{kubeadm}");
    assert!(
        kubeadm.contains("apiServerEndpoint: 10.42.0.10:6443"),
        "{kubeadm}"
    );
    let unit =
        std::fs::read_to_string(root.join("etc/systemd/system/kubeadm.service")).expect("unit");
    assert!(unit.contains("flatstack-bootstrap control-plane"), "{unit}");

    let holder = root.join("etc/flatstack/kube-vip.yaml.in");
    assert_eq!(mode_of(&holder), 0o600);
    let pod: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(&holder).expect("kube-vip")).expect("YAML");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], flatstack::pins::KUBE_VIP_IMAGE);
    let env = |name: &str| {
        container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    assert_eq!(env("address"), Some("10.42.0.10".into()));
    assert_eq!(env("vip_arp"), Some("true".into()));
    assert_eq!(env("vip_leaderelection"), Some("true".into()));
    assert_eq!(
        pod["spec"]["volumes"][0]["hostPath"]["path"],
        "@KUBECONFIG@"
    );
    assert_eq!(
        pod["spec"]["hostAliases"][0],
        serde_json::json!({ "ip": "127.0.0.1", "hostnames": ["kubernetes"] })
    );

    // The first initializes: kube-vip starts with super-admin.conf (admin.conf has no rights
    // before kubeadm's RBAC exists) and is switched to admin.conf after; joins place it after.
    let first = apply(&rendered, "demo-control-plane-1");
    let unit = std::fs::read_to_string(first.root.join("etc/systemd/system/kubeadm.service"))
        .expect("unit");
    assert!(unit.contains("flatstack-bootstrap init"), "{unit}");
    let script = std::fs::read_to_string(first.root.join("opt/flatstack/bin/flatstack-bootstrap"))
        .expect("script");
    assert!(script.contains("place_vip_holder /etc/kubernetes/super-admin.conf"));
    assert!(script.contains("place_vip_holder /etc/kubernetes/admin.conf"));
}

#[test]
fn a_tampered_sysext_is_refused_by_ignition() {
    let rendered = render_cluster();
    let mut tampered = rendered.sysext.clone();
    tampered[1000] ^= 0xff;
    let mut files = BTreeMap::new();
    files.insert(SYSEXT_NAME.to_string(), tampered);
    let evil = FileServer::serve(files);
    // Same config, pointed at the server with the flipped byte.
    let path = rendered.workspace.out_dir().join("demo-default-1.ign");
    let text = std::fs::read_to_string(&path)
        .expect("config")
        .replace(&rendered.server.base_url(), &evil.base_url());
    let config = rendered.workspace.path("tampered.ign");
    std::fs::write(&config, text).expect("write");
    let log = match apply_ignition(&config, &rendered.workspace.path("scratch-tampered")) {
        Ok(_) => panic!("Ignition accepted an image whose SHA-256 does not match"),
        Err(log) => log,
    };
    assert!(log.to_lowercase().contains("hash"), "{log}");
}

/// Units Flatcar provides that ours depend on; stand-ins so systemd can resolve them.
const FLATCAR_UNITS: [&str; 3] = [
    "coreos-metadata.service",
    "containerd.service",
    "kubelet.service",
];

#[test]
fn units_pass_systemd_analyze_verify() {
    require_tool("systemd-analyze");
    let rendered = render_cluster();
    for node in ["demo-control-plane-1", "demo-default-1"] {
        let applied = apply(&rendered, node);
        let units = applied.root.join("usr/lib/systemd/system");
        std::fs::create_dir_all(&units).expect("unit dir");
        // The image's own units (targets and the like) come from this machine's systemd.
        for entry in std::fs::read_dir("/lib/systemd/system")
            .expect("host units")
            .flatten()
        {
            let target = units.join(entry.file_name());
            if entry.file_type().is_ok_and(|t| t.is_file()) && !target.exists() {
                std::fs::copy(entry.path(), target).expect("copy unit");
            }
        }
        for unit in FLATCAR_UNITS {
            std::fs::write(
                units.join(unit),
                "[Unit]\nDescription=stand-in for a Flatcar unit\n[Service]\nType=oneshot\nExecStart=/bin/true\n",
            )
            .expect("stand-in");
        }
        // Flatcar ships nft in /usr/sbin (its iptables is nft-based since 3510.2.0).
        let sbin = applied.root.join("usr/sbin");
        std::fs::create_dir_all(&sbin).expect("sbin");
        std::fs::write(sbin.join("nft"), "#!/bin/sh\n").expect("nft stand-in");
        std::fs::set_permissions(
            sbin.join("nft"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        for unit in ["kubeadm.service", "flatstack-metadata-guard.service"] {
            let unit = applied.root.join("etc/systemd/system").join(unit);
            let output = Command::new("systemd-analyze")
                .arg("verify")
                .arg(format!("--root={}", applied.root.display()))
                .arg(&unit)
                .output()
                .expect("run systemd-analyze");
            let complaints = String::from_utf8_lossy(&output.stderr);
            assert!(
                output.status.success() && complaints.trim().is_empty(),
                "{node} {}: {complaints}",
                unit.display()
            );
        }
    }
}
