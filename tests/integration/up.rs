//! `flatstack plan`, `up --provision-only` and `down` end to end on the local OpenStack, with
//! the `openstack` CLI confirming every resource, its tags and the user_data servers got.

use std::collections::BTreeMap;
use std::process::{Command, Output};

use serde_json::Value;

use crate::openstack::{cli, cli_raw, clouds_yaml, unique};
use crate::support::*;

/// An API address on loopback where nothing listens: `status` asks it instead of the cluster's
/// floating IP, which is on no machine (and which no test may dial).
const NO_API: &str = "127.0.0.1:9";

pub(crate) fn cluster(name: &str, workers: u32, extra: &str) -> String {
    format!(
        r#"name = "{name}"
cloud = "local-demo"
[kubernetes]
version = "1.37.1"
sysext_sha256 = "{sha}"
[flatcar]
image = "{image}"
[control_plane]
flavor = "m3.tiny"
[[worker_pools]]
name = "default"
count = {workers}
flavor = "m3.tiny"
{extra}
"#,
        sha = "ab".repeat(32),
        image = crate::openstack::test_image_name(),
    )
}

/// flatstack with `args` in `workspace`, against the local OpenStack (`local-demo`).
pub(crate) fn command(workspace: &Workspace, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flatstack"));
    command
        .current_dir(workspace.dir.path())
        .env("OS_CLIENT_CONFIG_FILE", clouds_yaml())
        .env_remove("OS_CLOUD")
        .env("FLATSTACK_STATE_DIR", workspace.state_dir())
        .arg("--file")
        .arg(workspace.cluster_file())
        .args(args);
    command
}

/// Runs flatstack in `workspace` against the local OpenStack (`local-demo`).
pub(crate) fn flatstack(workspace: &Workspace, args: &[&str]) -> Output {
    command(workspace, args).output().expect("run flatstack")
}

pub(crate) fn tagged(kind: &str, name: &str) -> Vec<Value> {
    let tag = format!("flatstack:cluster={name}");
    let mut args: Vec<&str> = kind.split(' ').collect();
    args.extend(["list", "--tags", tag.as_str(), "-f", "json"]);
    cli("local-demo", &args)
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The TCP ports the control planes' group opens, as `MIN:MAX from CIDR`, sorted.
fn control_plane_ports(name: &str) -> Vec<String> {
    group_ports(&format!("{name}-control-plane"))
}

/// The TCP ports security group `group` opens, as `MIN:MAX from CIDR`, sorted.
fn group_ports(group: &str) -> Vec<String> {
    let rules = cli(
        "local-demo",
        &["security", "group", "rule", "list", group, "-f", "json"],
    );
    let mut open: Vec<String> = rules
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["Direction"] == "ingress" && r["IP Protocol"] == "tcp")
        .map(|r| {
            format!(
                "{} from {}",
                r["Port Range"].as_str().unwrap_or(""),
                r["IP Range"].as_str().unwrap_or("")
            )
        })
        .collect();
    open.sort();
    open
}

pub(crate) fn servers(name: &str) -> Vec<String> {
    let mut names: Vec<String> = tagged("server", name)
        .iter()
        .filter_map(|s| s["Name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

pub(crate) fn assert_nothing_left(name: &str) {
    for kind in [
        "server",
        "network",
        "subnet",
        "router",
        "port",
        "security group",
        "floating ip",
    ] {
        assert_eq!(
            tagged(kind, name),
            Vec::<Value>::new(),
            "{kind} left of {name}"
        );
    }
    let groups = cli("local-demo", &["server", "group", "list", "-f", "json"]);
    assert!(
        !groups
            .to_string()
            .contains(&format!("{name}-control-plane")),
        "server group left"
    );
}

/// flatstack with `args` in `workspace`, against the clouds `clouds` names (a fault proxy's).
fn through(workspace: &Workspace, clouds: &std::path::Path, args: &[&str]) -> Command {
    let mut command = command(workspace, args);
    command.env("OS_CLIENT_CONFIG_FILE", clouds);
    command
}

/// Runs a command (a `down` through a proxy) when a test ends, passed or failed.
struct RunOnDrop(Command);

impl Drop for RunOnDrop {
    fn drop(&mut self) {
        let _ = self.0.output();
    }
}

/// Runs `flatstack down --yes` when a test ends, passed or failed, so no run leaks resources
/// into the shared local cloud.
pub(crate) struct Teardown<'a>(pub(crate) &'a Workspace);

impl Drop for Teardown<'_> {
    fn drop(&mut self) {
        let _ = flatstack(self.0, &["down", "--yes", "--delete-backups"]);
    }
}

#[test]
fn up_converges_scales_and_down_removes_everything() {
    let name = unique("up");
    let workspace = Workspace::new();
    workspace.write_cluster(&cluster(&name, 2, ""));
    let _teardown = Teardown(&workspace);

    // Plan on an empty cloud: every resource to create, and the cost.
    let plan: Value =
        serde_json::from_slice(&flatstack(&workspace, &["plan", "--output", "json"]).stdout)
            .expect("plan json");
    let steps = plan["actions"].as_array().expect("actions");
    let count = |verb: &str, kind: &str| {
        steps
            .iter()
            .filter(|s| s["action"] == verb && s["kind"] == kind)
            .count()
    };
    for (verb, kind, wanted) in [
        ("create", "network", 1),
        ("create", "subnet", 1),
        ("create", "router", 1),
        ("create", "router interface", 1),
        ("create", "security group", 2),
        ("create", "server group", 1),
        ("create", "port", 3),
        ("create", "floating IP", 1),
        ("create", "attachment", 1),
        ("run", "ignition", 1),
        ("create", "server", 3),
        ("run", "wait", 3),
        // Nodes to each other (IPv4, IPv6), the API, Traefik's 80 and 443.
        ("create", "rule", 5),
    ] {
        assert_eq!(count(verb, kind), wanted, "{verb} {kind} in {plan}");
    }
    assert_eq!(steps.len(), 24, "{plan}");
    assert_eq!(plan["su_per_hour"], 3);
    assert_nothing_left(&name);

    let out = success(&flatstack(&workspace, &["up", "--provision-only"]));
    assert!(out.contains("provisioned"), "{out}");
    assert_eq!(
        servers(&name),
        [
            format!("{name}-control-plane-1"),
            format!("{name}-default-1"),
            format!("{name}-default-2")
        ]
    );
    for server in tagged("server", &name) {
        assert_eq!(server["Status"], "ACTIVE", "{server}");
    }
    assert_eq!(tagged("network", &name).len(), 1);
    assert_eq!(tagged("router", &name).len(), 1);
    assert_eq!(tagged("security group", &name).len(), 2);
    assert_eq!(tagged("port", &name).len(), 3);
    // Control planes take the API, and Traefik's 80 and 443 (ingress on the control planes).
    assert_eq!(
        control_plane_ports(&name),
        [
            "443:443 from 0.0.0.0/0",
            "6443:6443 from 0.0.0.0/0",
            "80:80 from 0.0.0.0/0"
        ]
    );

    // The floating IP points at the control plane's port, whose address is the 10th of the subnet.
    let fips = tagged("floating ip", &name);
    assert_eq!(fips.len(), 1);
    let fip = fips[0]["Floating IP Address"]
        .as_str()
        .expect("address")
        .to_string();
    let port = cli(
        "local-demo",
        &[
            "port",
            "show",
            &format!("{name}-control-plane-1"),
            "-f",
            "json",
        ],
    );
    assert_eq!(fips[0]["Port"], port["id"]);
    assert!(
        port["fixed_ips"].to_string().contains("10.42.0.10"),
        "{}",
        port["fixed_ips"]
    );
    // Neutron picks pool addresses at random (neutron/ipam/drivers/neutrondb_ipam/driver.py),
    // so the pool leaves out the fixed addresses; every worker's address is drawn from it.
    let subnet = cli(
        "local-demo",
        &["subnet", "show", &format!("{name}-subnet"), "-f", "json"],
    );
    assert_eq!(
        subnet["allocation_pools"],
        serde_json::json!([{ "start": "10.42.0.17", "end": "10.42.0.254" }]),
        "{subnet}"
    );
    for worker in ["default-1", "default-2"] {
        let port = cli(
            "local-demo",
            &["port", "show", &format!("{name}-{worker}"), "-f", "json"],
        );
        let address: std::net::Ipv4Addr = port["fixed_ips"][0]["ip_address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("worker address");
        assert!(address.octets()[3] >= 17, "{worker}: {address}");
    }

    // Each server's user_data is exactly what `render` writes for it with the same endpoint,
    // but for the sealed files' bytes (each sealed under its own key and IV).
    success(&workspace.render(&["--endpoint", &fip]));
    for server in tagged("server", &name) {
        let node = server["Name"].as_str().expect("name");
        let id = server["ID"].as_str().expect("id");
        let shown = cli(
            "local-admin",
            &[
                "--os-compute-api-version",
                "2.79",
                "server",
                "show",
                id,
                "-f",
                "json",
            ],
        );
        use base64::Engine as _;
        let user_data = base64::engine::general_purpose::STANDARD
            .decode(
                shown["OS-EXT-SRV-ATTR:user_data"]
                    .as_str()
                    .expect("user_data"),
            )
            .expect("base64");
        let rendered =
            std::fs::read(workspace.out_dir().join(format!("{node}.ign"))).expect("rendered");
        let (user_data, sealed) = without_sealed_bytes(&user_data);
        let (rendered, rendered_sealed) = without_sealed_bytes(&rendered);
        assert!(
            user_data == rendered,
            "user_data of {node} differs from `flatstack render`"
        );
        assert_eq!(sealed, rendered_sealed, "{node}: the same files sealed");
        assert!(sealed.contains(&"/etc/flatstack/join-token.sealed".to_string()));
        assert!(
            shown["tags"]
                .to_string()
                .contains(&format!("flatstack:cluster={name}"))
        );
    }

    // status lists every resource with its state. Its API is asked on a loopback port where
    // nothing listens: the floating IP is on no machine, and nothing may dial it.
    let status = success(&flatstack(&workspace, &["status", "--api-address", NO_API]));
    for fragment in [
        format!("{name}-net"),
        format!("{name}-router"),
        format!("-> {name}-control-plane-1"),
        format!("{name}-default-2"),
        // Its control plane's server records the Secrets key's fingerprint.
        "Secrets at rest: encrypted by the API servers (secretbox)".to_string(),
    ] {
        assert!(status.contains(&fragment), "{fragment} in\n{status}");
    }
    assert!(
        status
            .lines()
            .filter(|l| l.starts_with("server ") && l.contains(" ACTIVE "))
            .count()
            == 3,
        "{status}"
    );

    // A second run changes nothing.
    let again = success(&flatstack(&workspace, &["up", "--provision-only"]));
    assert!(
        again.contains("nothing to change (0 changes made)"),
        "{again}"
    );

    // The node range cannot change in place: plan and up refuse, and nothing changes.
    workspace.write_cluster(&cluster(
        &name,
        2,
        "[network]\nnode_cidr = \"10.43.0.0/24\"",
    ));
    for args in [&["plan"][..], &["up", "--provision-only"][..]] {
        refused(
            &flatstack(&workspace, args),
            "`network.node_cidr` is 10.43.0.0/24, but the cluster's nodes are on 10.42.0.0/24",
        );
    }
    assert_eq!(tagged("subnet", &name).len(), 1);
    workspace.write_cluster(&cluster(&name, 2, ""));

    // Drift is repaired: a detached floating IP (plan shows it), a router without its
    // interface and gateway (checked on every run).
    cli("local-demo", &["floating", "ip", "unset", "--port", &fip]);
    let plan = success(&flatstack(&workspace, &["plan"]));
    assert!(
        plan.contains(&format!("~ floating IP     {fip}"))
            && plan.contains(&format!("attach to {name}-control-plane-1"))
            && plan.contains("0 to create, 1 to repair, 0 to delete"),
        "{plan}"
    );
    let router = format!("{name}-router");
    cli(
        "local-demo",
        &[
            "router",
            "remove",
            "subnet",
            &router,
            &format!("{name}-subnet"),
        ],
    );
    cli(
        "local-demo",
        &["router", "unset", "--external-gateway", &router],
    );
    let repaired = success(&flatstack(&workspace, &["up", "--provision-only"]));
    for step in [
        "attaching the API floating IP",
        "setting the gateway of router",
        "adding subnet",
    ] {
        assert!(repaired.contains(step), "{step} in\n{repaired}");
    }
    // Back on the control plane's port read at the start: the same port, never replaced.
    let floating = cli(
        "local-demo",
        &["floating", "ip", "show", &fip, "-f", "json"],
    );
    assert_eq!(floating["port_id"], port["id"]);
    let shown = cli("local-demo", &["router", "show", &router, "-f", "json"]);
    assert!(
        shown["external_gateway_info"]
            .to_string()
            .contains("network_id"),
        "{shown}"
    );
    assert!(
        shown["interfaces_info"].to_string().contains("10.42.0."),
        "{shown}"
    );
    let settled = success(&flatstack(&workspace, &["up", "--provision-only"]));
    assert!(
        settled.contains("nothing to change (0 changes made)"),
        "{settled}"
    );

    // Narrowing who may reach the ingress replaces its rules: nothing wider stays behind.
    workspace.write_cluster(&cluster(
        &name,
        2,
        "[ingress]\nhttp_cidrs = [\"198.51.100.0/24\"]",
    ));
    let plan = success(&flatstack(&workspace, &["plan"]));
    for change in [
        format!("+ rule            {name}-control-plane"),
        format!("- rule            {name}-control-plane"),
    ] {
        assert!(plan.contains(&change), "{change} in\n{plan}");
    }
    assert!(
        plan.contains("tcp 443 from 198.51.100.0/24 (IPv4)"),
        "{plan}"
    );
    assert!(plan.contains("tcp 80 from 0.0.0.0/0 (IPv4)"), "{plan}");
    assert!(plan.contains("2 to create, 2 to delete"), "{plan}");
    success(&flatstack(&workspace, &["up", "--provision-only"]));
    let settled = success(&flatstack(&workspace, &["plan"]));
    assert!(settled.contains("nothing to change"), "{settled}");
    assert_eq!(
        control_plane_ports(&name),
        [
            "443:443 from 198.51.100.0/24",
            "6443:6443 from 0.0.0.0/0",
            "80:80 from 198.51.100.0/24"
        ]
    );
    // Behind a load balancer, Traefik is reached through node ports instead.
    workspace.write_cluster(&cluster(
        &name,
        2,
        "[ingress]\nexposure = \"load-balancer\"\nhttp_cidrs = [\"198.51.100.0/24\"]",
    ));
    success(&flatstack(&workspace, &["up", "--provision-only"]));
    assert_eq!(control_plane_ports(&name), ["6443:6443 from 0.0.0.0/0"]);
    assert_eq!(
        group_ports(&format!("{name}-nodes")),
        [
            "30000:32767 from 10.42.0.0/24",
            "30000:32767 from 198.51.100.0/24"
        ]
    );

    // Scale 2 -> 4 -> 1 workers.
    workspace.write_cluster(&cluster(&name, 4, ""));
    success(&flatstack(&workspace, &["up", "--provision-only"]));
    assert_eq!(servers(&name).len(), 5);
    workspace.write_cluster(&cluster(&name, 1, ""));
    // Nothing answers at NO_API: the leaving workers are deleted undrained, and the plan says so.
    let plan =
        String::from_utf8_lossy(&flatstack(&workspace, &["plan", "--api-address", NO_API]).stdout)
            .into_owned();
    assert!(
        plan.contains(&format!("- server          {name}-default-4")),
        "{plan}"
    );
    assert!(
        plan.contains("not drained: the Kubernetes API does not answer"),
        "{plan}"
    );
    success(&flatstack(&workspace, &["up", "--provision-only"]));
    assert_eq!(
        servers(&name),
        [
            format!("{name}-control-plane-1"),
            format!("{name}-default-1")
        ]
    );
    assert_eq!(tagged("port", &name).len(), 2);

    // down asks first; without a terminal it needs --yes, and deletes nothing until then.
    let refused = flatstack(&workspace, &["down"]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert_eq!(servers(&name).len(), 2);
    let out = success(&flatstack(&workspace, &["down", "--yes"]));
    assert!(out.contains("none left"), "{out}");
    assert_nothing_left(&name);
    let again = success(&flatstack(&workspace, &["down", "--yes"]));
    assert!(again.contains("has nothing in the cloud"), "{again}");
}

#[test]
fn preflight_stops_before_anything_exists() {
    let name = unique("short");
    let workspace = Workspace::new();
    // 80 workers need more instances than the local cloud's demo project may have.
    workspace.write_cluster(&cluster(
        &name,
        80,
        "[access]\nkeypair = \"no-such-keypair\"",
    ));
    let _teardown = Teardown(&workspace);
    let output = flatstack(&workspace, &["up", "--provision-only"]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(
        message.contains("preflight failed, nothing was created"),
        "{message}"
    );
    assert!(message.contains("keypair no-such-keypair"), "{message}");
    assert!(message.contains("instances (need 81"), "{message}");
    assert_nothing_left(&name);
    assert!(
        !cli_raw("local-demo", &["network", "show", &format!("{name}-net")])
            .status
            .success()
    );
}

/// On a cluster that exists, what a change adds is checked against what the project has left
/// before anything is made: growing past the quota is refused by `up` and foretold by `plan`.
#[test]
fn growing_an_existing_cluster_past_its_quota_is_refused_before_anything_is_made() {
    let name = unique("grow");
    let workspace = Workspace::new();
    workspace.write_cluster(&cluster(&name, 0, ""));
    let _teardown = Teardown(&workspace);
    success(&flatstack(&workspace, &["up", "--provision-only"]));
    // 80 more workers than the local cloud's demo project may have instances for.
    workspace.write_cluster(&cluster(&name, 80, ""));
    let plan = flatstack(&workspace, &["plan", "--provision-only"]);
    let warned = format!("{}{}", stdout(&plan), stderr(&plan));
    assert!(
        warned.contains("`up` would stop before creating anything: quota too small")
            && warned.contains("instances (need 80,"),
        "{warned}"
    );
    let output = flatstack(&workspace, &["up", "--provision-only"]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(
        message.contains("nothing was created") && message.contains("instances (need 80,"),
        "{message}"
    );
    assert_eq!(tagged("server", &name).len(), 1, "no server was added");
    assert_eq!(tagged("port", &name).len(), 1, "no port was added");
    success(&flatstack(&workspace, &["down", "--yes"]));
    assert_nothing_left(&name);
}

/// The API's load balancer counts against Octavia's quotas, which Octavia reports without
/// usage: with the admin project's load-balancer quota at 0 and its member quota below the
/// three control planes on each of 6443, 80 and 443, `plan` foretells the refusal and `up` makes nothing. (The admin
/// project, which no other test makes load balancers in, so the quota change races nobody.)
#[test]
fn a_load_balancer_past_octavias_quota_is_foretold_by_plan_and_refused_by_up() {
    struct Restore(String);
    impl Drop for Restore {
        fn drop(&mut self) {
            let unlimited = ["--loadbalancer", "-1", "--member", "-1"];
            let mut args = vec!["loadbalancer", "quota", "set"];
            args.extend(unlimited);
            args.push(&self.0);
            cli_raw("local-admin", &args);
        }
    }
    let name = unique("lbquota");
    let workspace = Workspace::new();
    workspace.write_cluster(
        &cluster(&name, 1, "")
            .replace("cloud = \"local-demo\"", "cloud = \"local-admin\"")
            .replacen(
                "[control_plane]\n",
                "[control_plane]\ncount = 3\napi_endpoint = \"load-balancer\"\n",
                1,
            ),
    );
    let project = cli("local-admin", &["token", "issue", "-f", "json"])["project_id"]
        .as_str()
        .expect("the admin project")
        .to_string();
    let _restore = Restore(project.clone());
    let limits = [
        "loadbalancer",
        "quota",
        "set",
        "--loadbalancer",
        "0",
        "--member",
        "2",
    ];
    let mut args = limits.to_vec();
    args.push(&project);
    let set = cli_raw("local-admin", &args);
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let plan = flatstack(&workspace, &["plan", "--provision-only"]);
    let warned = format!("{}{}", stdout(&plan), stderr(&plan));
    assert!(
        warned.contains("`up` would stop before creating anything: quota too small")
            && warned.contains("load balancers (need 1, 0 left)")
            && warned.contains("pool members (need 9, 2 left)"),
        "{warned}"
    );
    let output = flatstack(&workspace, &["up", "--provision-only"]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(
        message.contains("nothing was created")
            && message.contains("load balancers (need 1, 0 left)"),
        "{message}"
    );
    let made = cli(
        "local-admin",
        &[
            "network",
            "list",
            "--name",
            &format!("{name}-net"),
            "-f",
            "json",
        ],
    );
    assert_eq!(made.as_array().map(Vec::len), Some(0), "{made}");
}

/// `up` through a proxy that fails creates in every way, killed part-way, then run again:
/// the cluster converges with exactly one of everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_converges_through_faults_and_after_being_killed() {
    use crate::proxy::{Fault, standard_proxy};
    let proxy = standard_proxy().await;
    let name = unique("killed");
    let workspace = Workspace::new();
    let clouds = workspace.path("clouds.yaml");
    proxy.write_clouds_yaml(&clouds);
    workspace.write_cluster(
        &cluster(&name, 5, "").replace("cloud = \"local-demo\"", "cloud = \"faulty\""),
    );
    let run = |args: &'static [&'static str]| through(&workspace, &clouds, args);
    proxy.inject("POST", "/v2.0/networks", Fault::DropAfter, 1);
    proxy.inject("POST", "/v2.0/ports", Fault::Status(503, None), 3);
    proxy.inject("POST", "/v2.0/ports", Fault::DropAfter, 2);
    proxy.inject("POST", "/v2.0/floatingips", Fault::DropAfter, 1);
    proxy.inject("POST", "/v2.1/os-server-groups", Fault::DropAfter, 1);
    proxy.inject("POST", "/v2.1/servers", Fault::Status(503, None), 2);
    proxy.inject("POST", "/v2.1/servers", Fault::DropAfter, 2);
    proxy.inject("GET", "/v2.1/servers/", Fault::DropBefore, 3);
    proxy.inject("GET", "/v2.1/servers/", Fault::Status(429, Some(1)), 1);

    // The first run is killed part-way.
    let mut first = run(&["up", "--provision-only"]).spawn().expect("start up");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let _ = first.kill();
    let _ = first.wait();

    let mut second = run(&["up", "--provision-only"]);
    let output = tokio::task::spawn_blocking(move || second.output())
        .await
        .expect("join")
        .expect("run");
    let teardown = {
        let mut down = run(&["down", "--yes"]);
        move || down.output()
    };
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let counts = [
        ("server", tagged("server", &name).len()),
        ("port", tagged("port", &name).len()),
        ("network", tagged("network", &name).len()),
        ("subnet", tagged("subnet", &name).len()),
        ("router", tagged("router", &name).len()),
        ("security group", tagged("security group", &name).len()),
        ("floating ip", tagged("floating ip", &name).len()),
    ];
    let groups = cli("local-demo", &["server", "group", "list", "-f", "json"]);
    let group_count = groups.as_array().map_or(0, |g| {
        g.iter()
            .filter(|g| g["Name"] == format!("{name}-control-plane").as_str())
            .count()
    });
    let again = run(&["up", "--provision-only"]).output().expect("run");
    let down = tokio::task::spawn_blocking(teardown)
        .await
        .expect("join")
        .expect("down");

    assert!(output.status.success(), "second up failed:\n{shown}");
    assert_eq!(
        counts,
        [
            ("server", 6),
            ("port", 6),
            ("network", 1),
            ("subnet", 1),
            ("router", 1),
            ("security group", 2),
            ("floating ip", 1)
        ],
        "{shown}"
    );
    assert_eq!(group_count, 1, "server groups: {groups}");
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to change (0 changes made)"));
    assert!(
        proxy.injected() >= 5,
        "only {} faults were hit",
        proxy.injected()
    );
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert_nothing_left(&name);
}

/// A server that fails to build is reported with Nova's fault by `up` and `status`, and
/// rebuilt by the next `up` (its guest never ran).
#[test]
fn a_failed_build_is_reported_by_up_and_status() {
    let name = unique("broken");
    let workspace = Workspace::new();
    // The local cloud's fake Cinder cannot fill a boot volume from an image: the build fails.
    let text = cluster(&name, 0, "").replace(
        "flavor = \"m3.tiny\"\n[[worker_pools]]",
        "flavor = \"m3.tiny\"\nboot_volume_gb = 10\n[[worker_pools]]",
    );
    workspace.write_cluster(&text);
    let _teardown = Teardown(&workspace);
    let output = flatstack(&workspace, &["up", "--provision-only"]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(
        message.contains(&format!("server {name}-control-plane-1"))
            && message.contains("went to ERROR"),
        "{message}"
    );
    assert!(
        message.contains("Build of instance"),
        "Nova's own words:\n{message}"
    );
    let status = flatstack(&workspace, &["status", "--api-address", NO_API]);
    let shown = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.status.code(), Some(1));
    assert!(
        shown
            .lines()
            .any(|l| l.contains(&format!("{name}-control-plane-1"))
                && l.contains("ERROR")
                && l.contains("fault: ")),
        "{shown}"
    );
    assert!(
        stderr(&status).contains("server(s) in ERROR"),
        "{}",
        stderr(&status)
    );
    assert!(
        message.contains("the next `up` deletes it and builds it again"),
        "{message}"
    );
    // Its guest never started (Nova gives it no launch time), so the next run rebuilds it on
    // the same port; the cause is still there, so the new one fails the same way.
    let server_id = |of: &str| -> Vec<String> {
        tagged("server", &name)
            .iter()
            .map(|s| {
                s["ID"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{of}: {s}"))
                    .to_string()
            })
            .collect()
    };
    let first = server_id("first build");
    assert_eq!(first.len(), 1);
    let shown = cli("local-demo", &["server", "show", &first[0], "-f", "json"]);
    assert!(
        shown["OS-SRV-USG:launched_at"].is_null(),
        "Nova's witness: never launched: {shown}"
    );
    let plan = success(&flatstack(&workspace, &["plan", "--provision-only"]));
    assert!(
        plan.lines().any(|l| l.trim_start().starts_with("- server")
            && l.contains(&format!("{name}-control-plane-1"))
            && l.contains("its build failed (Build of instance")),
        "{plan}"
    );
    let again = flatstack(&workspace, &["up", "--provision-only"]);
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("went to ERROR"),
        "{}",
        stderr(&again)
    );
    let second = server_id("rebuild");
    assert_eq!(second.len(), 1, "the failed build is gone: {second:?}");
    assert_ne!(second, first, "a new server was built");
    let port = format!("{name}-control-plane-1");
    let ports = cli(
        "local-demo",
        &["port", "list", "--name", &port, "-f", "json"],
    );
    assert_eq!(ports.as_array().map(Vec::len), Some(1), "one port: {ports}");
    success(&flatstack(&workspace, &["down", "--yes"]));
    assert_nothing_left(&name);
}

/// Persistent volumes the cluster's CSI driver made, and their snapshots, survive `down` unless
/// asked for; then the snapshots go first (Cinder deletes no volume that has one).
#[test]
fn volumes_are_kept_unless_down_is_told_to_delete_them() {
    let name = unique("vols");
    let workspace = Workspace::new();
    workspace.write_cluster(&cluster(&name, 0, ""));
    let _teardown = Teardown(&workspace);
    success(&flatstack(&workspace, &["up", "--provision-only"]));
    let property = format!("cinder.csi.openstack.org/cluster={name}");
    let volume = cli(
        "local-demo",
        &[
            "volume",
            "create",
            "--size",
            "1",
            "--property",
            &property,
            &format!("pvc-{name}"),
            "-f",
            "json",
        ],
    );
    let id = volume["id"].as_str().expect("id").to_string();
    // `show` arguments: waits until Cinder says `available`.
    let settled = |show: &[&str]| {
        for _ in 0..120 {
            if cli("local-demo", &[show, &["-f", "json"]].concat())["status"] == "available" {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        panic!("{show:?} never became available");
    };
    settled(&["volume", "show", &id]);
    // A snapshot as Cinder CSI makes one for a VolumeSnapshot: the cluster's ID in its
    // metadata. Cinder deletes no volume that has one.
    let snapshot = cli(
        "local-demo",
        &[
            "volume",
            "snapshot",
            "create",
            "--volume",
            &id,
            "--property",
            &property,
            &format!("snapshot-{name}"),
            "-f",
            "json",
        ],
    );
    let snapshot_id = snapshot["id"].as_str().expect("id").to_string();
    settled(&["volume", "snapshot", "show", &snapshot_id]);

    let kept = success(&flatstack(&workspace, &["down", "--yes"]));
    assert!(
        kept.contains(&format!("keeping volume pvc-{name} (1 GB)")),
        "{kept}"
    );
    assert!(
        kept.contains(&format!("keeping volume snapshot snapshot-{name} (1 GB)")),
        "{kept}"
    );
    assert!(
        cli_raw("local-demo", &["volume", "show", &id])
            .status
            .success(),
        "the volume must survive"
    );
    assert_nothing_left(&name);

    let removed = success(&flatstack(
        &workspace,
        &["down", "--yes", "--delete-volumes"],
    ));
    assert!(
        removed.contains(&format!("deleting volume snapshot snapshot-{name}")),
        "{removed}"
    );
    assert!(
        removed.contains(&format!("deleting volume pvc-{name}")),
        "{removed}"
    );
    assert!(
        !cli_raw("local-demo", &["volume", "snapshot", "show", &snapshot_id])
            .status
            .success(),
        "the snapshot must be gone"
    );
    assert!(
        !cli_raw("local-demo", &["volume", "show", &id])
            .status
            .success(),
        "the volume must be gone"
    );
}

/// The whole `flatstack up`: the cloud side on the local OpenStack, the cluster side against
/// the Kubernetes API stand-in reached through `--api-address` (the floating IP of a fake
/// server leads nowhere). Then a converged re-run, `status`, a drained scale-down and a
/// scale-up with a join token of its own, deleted once the node joined.
#[test]
fn up_bootstraps_through_the_api_and_drains_before_scaling_down() {
    use crate::kube_standin::{StandIn, World};
    let name = unique("boot");
    let workspace = Workspace::new();
    workspace.write_cluster(&cluster(&name, 2, ""));
    let _teardown = Teardown(&workspace);
    // The cluster's PKI, made where `up` will find it, so the stand-in can serve with its CA.
    let pki = crate::kube_standin::pki(&workspace);
    let cp = format!("{name}-control-plane-1");
    let (w1, w2) = (format!("{name}-default-1"), format!("{name}-default-2"));
    let mut world = World {
        readyz_failures: 2,
        job_polls: 1,
        ..World::default()
    };
    world.register(&cp, true);
    world.register(&w1, false);
    world.register(&w2, false);
    world.run_pod("default", "web-1", &w2, false);
    // The token `kubeadm init` makes from the first control plane's configuration.
    world.apply_object(
        "/api/v1/namespaces/kube-system/secrets/bootstrap-token-abcdef",
        &serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
            "metadata": {"name": "bootstrap-token-abcdef", "namespace": "kube-system"},
            "stringData": {"token-id": "abcdef", "token-secret": "0123456789abcdef",
                "description": flatstack::node::kubeadm::JOIN_TOKEN_DESCRIPTION},
        }),
        "kubeadm",
    );
    let server = StandIn::of_cluster(&pki, world);
    let api = server.address.to_string();
    let up = ["up", "--api-address", api.as_str(), "--timeout", "3m"];

    let output = flatstack(&workspace, &up);
    let out = success(&output);
    assert!(
        out.contains("NAME") && out.contains("CONTAINER-RUNTIME"),
        "{out}"
    );
    for node in [&cp, &w1, &w2] {
        let row = out
            .lines()
            .find(|l| l.starts_with(node.as_str()))
            .unwrap_or_default();
        assert!(row.contains(" Ready "), "{node} Ready in:\n{out}");
    }
    assert!(
        out.contains(&format!("cluster `{name}` is up: 3 node(s) Ready")),
        "{out}"
    );
    // Every node joined: the first control plane's token is gone, and so are the keys to the
    // nodes' sealed secrets.
    assert!(out.contains("deleted 1 join token(s)"), "{out}");
    assert!(bootstrap_tokens(&server).is_empty());
    assert!(
        out.contains("removed the key to their sealed secrets from 3 server(s)' metadata"),
        "{out}"
    );
    for node in [&cp, &w1, &w2] {
        assert_no_seal_key(node);
    }
    assert!(
        out.contains("nodes Ready") && out.contains("API ready"),
        "timing profile: {out}"
    );
    for shown in [out.as_str(), stderr(&output).as_str()] {
        assert!(!shown.contains("password ="), "credentials shown: {shown}");
    }
    // cloud.conf holds this cloud's login and the cluster's network, as the CLI sees them.
    let conf = {
        let world = server.world.lock().expect("world");
        world
            .secret_text(
                "/api/v1/namespaces/kube-system/secrets/cloud-config",
                "cloud.conf",
            )
            .expect("cloud-config Secret")
    };
    let public = cli("local-demo", &["network", "show", "public", "-f", "json"]);
    let subnet = tagged("subnet", &name);
    assert!(conf.contains("auth-url = \"http://127.0.0.1"), "{conf}");
    assert!(conf.contains("username = \"demo\""), "{conf}");
    assert!(
        conf.contains(&format!("floating-network-id = {}", public["id"])),
        "{conf}"
    );
    assert!(
        conf.contains(&format!("subnet-id = {}", subnet[0]["ID"])),
        "{conf}"
    );

    // Converged: no change in the cloud and no write to the API.
    let writes = server.writes().len();
    let again = success(&flatstack(&workspace, &up));
    assert!(
        again.contains("nothing to change (0 changes made)"),
        "{again}"
    );
    assert_eq!(server.writes().len(), writes, "{:?}", server.writes());

    let status = success(&flatstack(&workspace, &["status", "--api-address", &api]));
    assert!(
        status.contains("CONTAINER-RUNTIME") && status.contains(&w2),
        "{status}"
    );
    // Each node's Flatcar release (no kured pod answers in the stand-in), and every add-on.
    assert!(
        status
            .lines()
            .any(|l| l.starts_with(&w2) && l.contains("4230.2.3") && l.ends_with("unknown")),
        "{status}"
    );
    for chart in ["flannel", "traefik", "kured", "metrics-server"] {
        assert!(
            status
                .lines()
                .any(|l| l.starts_with(&format!("{chart} ")) && l.ends_with(" installed")),
            "{chart} in\n{status}"
        );
    }
    // When flatstack's own client certificates expire.
    for who in ["admin", "super-admin"] {
        assert!(
            status.contains(&format!("flatstack's {who} client certificate expires "))
                && status.contains("(in 364 days)"),
            "{status}"
        );
    }

    // kubeadm's certificates on the control plane (a node Job running its kubeadm): the
    // soonest shown, and a warning once one expires within 30 days.
    assert!(
        status.contains(&format!(
            "kubeadm's certificates: the soonest, admin.conf on {cp}, expires "
        )) && status.contains("(in 364 days)"),
        "{status}"
    );
    let soon = flatstack::kube::now()
        .checked_add(k8s_openapi::jiff::SignedDuration::from_hours(20 * 24 + 1))
        .expect("time")
        .to_string();
    server
        .world
        .lock()
        .expect("world")
        .certificates_expire
        .insert(cp.clone(), soon);
    let warned = flatstack(&workspace, &["status", "--api-address", &api]);
    let warning = stderr(&warned);
    assert!(warned.status.success(), "{warning}");
    assert!(
        warning.contains(&format!("warning: certificate apiserver on {cp} expires "))
            && warning.contains("(in 20 days)")
            && warning.contains("an upgrade renews"),
        "{warning}"
    );
    let json: Value = serde_json::from_slice(
        &flatstack(
            &workspace,
            &["status", "--api-address", &api, "--output", "json"],
        )
        .stdout,
    )
    .expect("status json");
    assert_eq!(json["certificates"][0]["days_left"], 20, "{json}");
    assert_eq!(json["certificates"][0]["node"], cp.as_str());

    // Scale down: the worker is drained through the API before its server goes.
    workspace.write_cluster(&cluster(&name, 1, ""));
    let down = success(&flatstack(&workspace, &up));
    assert!(
        down.contains(&format!("drained {w2}: 1 pod(s) evicted")),
        "{down}"
    );
    assert_eq!(servers(&name), [cp.clone(), w1.clone()]);
    {
        let world = server.world.lock().expect("world");
        assert!(!world.nodes.contains_key(&w2), "node object deleted");
        let on_w2: Vec<_> = world
            .pods
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(w2.as_str()))
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        assert!(
            !on_w2.contains(&"web-1".to_string()),
            "pod evicted: {on_w2:?}"
        );
    }

    // Scale up: a join token of this run's own is made before the new server boots with it,
    // and deleted once the node has joined.
    server.world.lock().expect("world").register(&w2, false);
    workspace.write_cluster(&cluster(&name, 2, ""));
    let writes = server.writes().len();
    let grown = success(&flatstack(&workspace, &up));
    assert!(grown.contains("making a join token"), "{grown}");
    assert!(grown.contains("deleted 1 join token(s)"), "{grown}");
    assert_eq!(servers(&name), [cp, w1, w2.clone()]);
    let token_writes: Vec<_> = server.writes()[writes..]
        .iter()
        .filter(|w| w.path.contains("/secrets/bootstrap-token-"))
        .map(|w| (w.method.clone(), w.path.clone()))
        .collect();
    assert_eq!(token_writes.len(), 2, "{token_writes:?}");
    assert_eq!(token_writes[0].0, "PATCH", "{token_writes:?}");
    assert_eq!(
        token_writes[1],
        ("DELETE".to_string(), token_writes[0].1.clone())
    );
    assert!(bootstrap_tokens(&server).is_empty());
    // The new server's sealing key left its metadata once its node had joined.
    assert_no_seal_key(&w2);
}

/// The bootstrap-token Secrets the stand-in holds.
fn bootstrap_tokens(server: &crate::kube_standin::StandIn) -> Vec<String> {
    let world = server.world.lock().expect("world");
    world
        .objects
        .keys()
        .filter(|p| p.starts_with("/api/v1/namespaces/kube-system/secrets/bootstrap-token-"))
        .cloned()
        .collect()
}

/// The server's metadata, as Nova shows it to the project.
pub(crate) fn server_metadata(server: &str) -> Value {
    cli("local-demo", &["server", "show", server, "-f", "json"])["properties"].clone()
}

fn assert_no_seal_key(server: &str) {
    let metadata = server_metadata(server);
    assert!(metadata.get("flatstack-seal-key").is_none(), "{metadata}");
    assert!(
        metadata["flatstack-ca"]
            .as_str()
            .is_some_and(|ca| ca.starts_with("sha256:")),
        "{metadata}"
    );
}

/// A pool whose flavor changed is replaced node by node on the local OpenStack, each new node
/// `Ready` in the cluster before the node it replaces is drained and deleted. Nodes register
/// with the Kubernetes API stand-in as a kubelet would: once their server is ACTIVE (a
/// background watcher lists the cluster's servers with the openstack CLI). A replacement that
/// never joins leaves the node it replaces in place.
#[test]
fn a_pool_with_a_new_flavor_is_replaced_node_by_node_new_node_ready_first() {
    use crate::kube_standin::{StandIn, World};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let name = unique("roll");
    let workspace = Workspace::new();
    workspace.write_cluster(&cluster(&name, 2, ""));
    let _teardown = Teardown(&workspace);
    let pki = crate::kube_standin::pki(&workspace);
    let node = |n: &str| format!("{name}-{n}");
    let mut world = World::default();
    world.register(&node("control-plane-1"), true);
    world.register(&node("default-1"), false);
    world.register(&node("default-2"), false);
    let server = StandIn::of_cluster(&pki, world);
    // The kubelets: a server's node registers once the server is ACTIVE, unless kept out.
    let never: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let joiner = {
        let (world, never, stop, name) = (
            server.world.clone(),
            never.clone(),
            stop.clone(),
            name.clone(),
        );
        std::thread::spawn(move || {
            let mut joined: Vec<String> = ["control-plane-1", "default-1", "default-2"]
                .map(|n| format!("{name}-{n}"))
                .to_vec();
            while !stop.load(Ordering::Relaxed) {
                for s in tagged("server", &name) {
                    let server_name = s["Name"].as_str().unwrap_or_default().to_string();
                    let kept_out = never.lock().expect("never").contains(&server_name);
                    if s["Status"] == "ACTIVE" && !kept_out && !joined.contains(&server_name) {
                        world.lock().expect("world").register(&server_name, false);
                        eprintln!("kubelet: {server_name} registered");
                        joined.push(server_name);
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        })
    };
    let api = server.address.to_string();
    let up = |timeout: &str| {
        flatstack(
            &workspace,
            &["up", "--api-address", api.as_str(), "--timeout", timeout],
        )
    };
    success(&up("3m"));
    assert_eq!(
        servers(&name),
        [
            node("control-plane-1"),
            node("default-1"),
            node("default-2")
        ]
    );

    // The pool's flavor changes: `plan` shows the replacements, `up` makes them.
    workspace.write_cluster(&cluster(&name, 2, "").replace(
        "count = 2\nflavor = \"m3.tiny\"",
        "count = 2\nflavor = \"m3.small\"",
    ));
    let plan: Value = serde_json::from_slice(
        &flatstack(
            &workspace,
            &["plan", "--output", "json", "--api-address", api.as_str()],
        )
        .stdout,
    )
    .expect("plan json");
    let steps: Vec<String> = plan["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|s| format!("{} {} {}", s["action"], s["kind"], s["name"]).replace('"', ""))
        .collect();
    for step in [
        format!("create server {}", node("default-3")),
        format!("run wait {}", node("default-3")),
        format!("run drain {}", node("default-1")),
        format!("delete server {}", node("default-1")),
        format!("create server {}", node("default-4")),
        format!("run drain {}", node("default-2")),
        format!("delete server {}", node("default-2")),
    ] {
        assert!(steps.contains(&step), "{step} in {steps:#?}");
    }
    let output = up("3m");
    let out = format!("{}{}", success(&output), stderr(&output));
    let at = |line: &str| {
        out.find(line)
            .unwrap_or_else(|| panic!("`{line}` in\n{out}"))
    };
    // Each new node Ready before the old one is drained; the next new server only after the
    // old one is gone (one extra server at a time).
    assert!(
        at(&format!("{} is Ready", node("default-3")))
            < at(&format!("drained {}", node("default-1")))
    );
    assert!(
        at(&format!("drained {}", node("default-1")))
            < at(&format!("creating server {}", node("default-4")))
    );
    assert!(
        at(&format!("{} is Ready", node("default-4")))
            < at(&format!("drained {}", node("default-2")))
    );
    assert_eq!(
        servers(&name),
        [
            node("control-plane-1"),
            node("default-3"),
            node("default-4")
        ]
    );
    for new in ["default-3", "default-4"] {
        let shown = cli("local-demo", &["server", "show", &node(new), "-f", "json"]);
        assert_eq!(shown["flavor"]["name"], "m3.small", "{shown}");
    }
    {
        let world = server.world.lock().expect("world");
        for old in ["default-1", "default-2"] {
            assert!(
                !world.nodes.contains_key(&node(old)),
                "{old} Node object deleted"
            );
        }
    }
    let again = success(&flatstack(
        &workspace,
        &["plan", "--api-address", api.as_str()],
    ));
    assert!(again.contains("nothing to change"), "{again}");

    // Back to the old flavor, but the first replacement never joins: `up` fails and the node
    // it was to replace stays, undrained.
    never.lock().expect("never").push(node("default-1"));
    workspace.write_cluster(&cluster(&name, 2, ""));
    let failed = up("20s");
    assert!(!failed.status.success());
    let message = stderr(&failed);
    assert!(
        message.contains(&format!("node {} Ready did not happen", node("default-1"))),
        "{message}"
    );
    assert_eq!(
        servers(&name),
        [
            node("control-plane-1"),
            node("default-1"),
            node("default-3"),
            node("default-4")
        ]
    );
    {
        let world = server.world.lock().expect("world");
        let unschedulable = world.nodes[&node("default-3")]
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable);
        assert_ne!(unschedulable, Some(true), "default-3 was not cordoned");
    }
    stop.store(true, Ordering::Relaxed);
    let _ = joiner.join();
}

/// A Nova or Neutron API server of the local cloud running on a port of its own, so this test
/// can kill it (SIGKILL to its whole process group) and start it again without disturbing the
/// cloud the other tests use.
struct ApiProcess {
    service: &'static str,
    port: u16,
    child: Option<std::process::Child>,
}

impl ApiProcess {
    fn start(service: &'static str, port: u16) -> ApiProcess {
        use std::os::unix::process::CommandExt;
        let child = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/local-openstack.sh"
        ))
        .args(["api-instance", service, &port.to_string()])
        .process_group(0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start an API server");
        let mut process = ApiProcess {
            service,
            port,
            child: Some(child),
        };
        for _ in 0..120 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return process;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        process.kill();
        panic!("the {service} API on port {port} did not start");
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        self.kill();
        *self = ApiProcess::start(self.service, self.port);
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// neutron-server killed while `up` creates the network side, then nova-api killed and
/// restarted while it creates servers: `up` reports what it could not reach, and running it
/// again converges with exactly one of everything.
#[test]
fn up_converges_after_nova_api_and_neutron_server_are_killed() {
    crate::openstack::test_image();
    let mut network = ApiProcess::start("network", free_port());
    let mut compute = ApiProcess::start("compute", free_port());
    let name = unique("outage");
    let workspace = Workspace::new();
    let clouds = workspace.path("clouds.yaml");
    std::fs::write(
        &clouds,
        format!(
            "clouds:\n  outage:\n    auth:\n      auth_url: http://127.0.0.1:5000/v3\n      username: demo\n      password: secret\n      project_name: demo\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n    compute_endpoint_override: http://127.0.0.1:{}/v2.1\n    network_endpoint_override: http://127.0.0.1:{}\n",
            compute.port, network.port
        ),
    )
    .expect("clouds.yaml");
    workspace.write_cluster(&cluster(&name, 3, "").replace("local-demo", "outage"));
    // Through this clouds.yaml, the only one that names `outage`, passed or failed.
    let _teardown = RunOnDrop({
        let mut down = command(&workspace, &["down", "--yes", "--delete-backups"]);
        down.env("OS_CLIENT_CONFIG_FILE", &clouds);
        down
    });
    // Through the API processes above, which only this clouds.yaml names.
    let through_them = |args: &[&str]| {
        let mut command = command(&workspace, args);
        command.env("OS_CLIENT_CONFIG_FILE", &clouds);
        command
    };
    let run = || {
        let mut up = through_them(&["up", "--provision-only"]);
        up.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        up
    };
    // Runs `up` and calls `when` once a line containing `marker` is printed, mid-apply.
    let run_until = |marker: &str, when: &mut dyn FnMut()| -> (Output, String) {
        use std::io::BufRead;
        let mut child = run().spawn().expect("up");
        let stdout = child.stdout.take().expect("stdout");
        let mut printed = String::new();
        let mut lines = std::io::BufReader::new(stdout).lines();
        for line in lines.by_ref().map_while(Result::ok) {
            printed.push_str(&line);
            printed.push('\n');
            if line.contains(marker) {
                when();
                break;
            }
        }
        for line in lines.map_while(Result::ok) {
            printed.push_str(&line);
            printed.push('\n');
        }
        (child.wait_with_output().expect("up ends"), printed)
    };

    // neutron-server dies while `up` creates ports, and stays down: `up` gives up, naming the
    // API it could not reach.
    let (first, printed) = run_until("creating port", &mut || network.kill());
    let said = String::from_utf8_lossy(&first.stderr).to_string();
    assert!(
        printed.contains("creating port"),
        "never got to ports:\n{printed}{said}"
    );
    assert_eq!(first.status.code(), Some(1), "{printed}{said}");
    assert!(said.contains("cannot reach the network API"), "{said}");
    assert!(!said.contains("panicked"), "{said}");

    // neutron-server back; nova-api killed while servers are being created, and started again.
    network.restart();
    let (second, printed) = run_until("creating server", &mut || compute.restart());
    assert!(
        printed.contains("creating server"),
        "never got to servers:\n{printed}{}",
        String::from_utf8_lossy(&second.stderr)
    );

    // Whatever the second run managed, the third finishes the job with no duplicates.
    let third = run().output().expect("up");
    let shown = |o: &Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert!(
        third.status.success(),
        "second:\n{printed}{}\nthird:\n{}",
        shown(&second),
        shown(&third)
    );
    let counts = [
        ("server", tagged("server", &name).len()),
        ("port", tagged("port", &name).len()),
        ("network", tagged("network", &name).len()),
        ("subnet", tagged("subnet", &name).len()),
        ("router", tagged("router", &name).len()),
        ("security group", tagged("security group", &name).len()),
        ("floating ip", tagged("floating ip", &name).len()),
    ];
    assert_eq!(
        counts,
        [
            ("server", 4),
            ("port", 4),
            ("network", 1),
            ("subnet", 1),
            ("router", 1),
            ("security group", 2),
            ("floating ip", 1)
        ],
        "second:\n{printed}{}",
        shown(&second)
    );
    let fourth = run().output().expect("up");
    assert!(
        String::from_utf8_lossy(&fourth.stdout).contains("nothing to change (0 changes made)"),
        "{}",
        shown(&fourth)
    );
    // Removed through the same API processes (the shared Teardown knows only local-demo).
    let down = through_them(&["down", "--yes"]).output().expect("down");
    assert!(down.status.success(), "{}", shown(&down));
    assert_nothing_left(&name);
}

/// Load balancers the cloud controller made for `LoadBalancer` Services (made here through
/// Octavia's API as the cloud controller would, with its naming) and their floating IPs are
/// shown by `status` and removed by `down`, with their listeners and pools; a look-alike of
/// another cluster is left alone.
#[test]
fn down_removes_the_cloud_controllers_load_balancers() {
    let name = unique("lbs");
    let workspace = Workspace::new();
    workspace.write_cluster(&cluster(&name, 1, ""));
    let _teardown = Teardown(&workspace);
    success(&flatstack(&workspace, &["up", "--provision-only"]));
    let subnet = tagged("subnet", &name)[0]["ID"]
        .as_str()
        .expect("subnet")
        .to_string();
    let ours = format!("kube_service_{name}_default_web");
    let theirs = format!("kube_service_{name}-other_default_web");
    for balancer in [&ours, &theirs] {
        cli(
            "local-demo",
            &[
                "loadbalancer",
                "create",
                "--name",
                balancer,
                "--vip-subnet-id",
                &subnet,
                "--wait",
                "-f",
                "json",
            ],
        );
    }
    cli(
        "local-demo",
        &[
            "loadbalancer",
            "listener",
            "create",
            "--name",
            &format!("{name}-http"),
            "--protocol",
            "TCP",
            "--protocol-port",
            "80",
            "--wait",
            &ours,
            "-f",
            "json",
        ],
    );
    cli(
        "local-demo",
        &[
            "loadbalancer",
            "pool",
            "create",
            "--name",
            &format!("{name}-pool"),
            "--lb-algorithm",
            "ROUND_ROBIN",
            "--listener",
            &format!("{name}-http"),
            "--protocol",
            "TCP",
            "--wait",
            "-f",
            "json",
        ],
    );
    let description =
        format!("Floating IP for Kubernetes external service default/web from cluster {name}");
    let fip = cli(
        "local-demo",
        &[
            "floating",
            "ip",
            "create",
            "--description",
            &description,
            "public",
            "-f",
            "json",
        ],
    );
    let fip_id = fip["id"].as_str().expect("id").to_string();

    let status = success(&flatstack(&workspace, &["status"]));
    assert!(
        status.contains(&ours) && status.contains("made by the cloud controller"),
        "{status}"
    );
    assert!(status.contains(&description), "{status}");
    assert!(!status.contains(&theirs), "{status}");

    let down = success(&flatstack(&workspace, &["down", "--yes"]));
    assert!(
        down.contains(&format!("deleting load balancer {ours}")),
        "{down}"
    );
    let balancers: Vec<String> = cli("local-demo", &["loadbalancer", "list", "-f", "json"])
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["name"].as_str().map(str::to_string))
        .collect();
    assert!(!balancers.contains(&ours), "{balancers:?}");
    assert!(
        balancers.contains(&theirs),
        "another cluster's: {balancers:?}"
    );
    assert!(
        !cli_raw("local-demo", &["floating", "ip", "show", &fip_id])
            .status
            .success(),
        "the service's floating IP must be released"
    );
    assert_nothing_left(&name);
    cli(
        "local-demo",
        &["loadbalancer", "delete", "--cascade", "--wait", &theirs],
    );
}

/// Removes what a test made with the `openstack` CLI, passed or failed.
struct CliCleanup(Vec<Vec<String>>);

impl Drop for CliCleanup {
    fn drop(&mut self) {
        for args in &self.0 {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let _ = cli_raw("local-demo", &args);
        }
    }
}

/// The parts of a router flatstack must leave as they were: its gateway and interfaces.
fn router_wiring(router: &str) -> (Value, Vec<String>) {
    let shown = cli("local-demo", &["router", "show", router, "-f", "json"]);
    let mut interfaces: Vec<String> = cli(
        "local-demo",
        &[
            "port",
            "list",
            "--router",
            router,
            "-f",
            "json",
            "-c",
            "ID",
            "-c",
            "Fixed IP Addresses",
        ],
    )
    .as_array()
    .into_iter()
    .flatten()
    .map(Value::to_string)
    .collect();
    interfaces.sort();
    (shown["external_gateway_info"].clone(), interfaces)
}

#[test]
fn up_on_an_existing_network_leaves_it_as_it_was_and_kubeconfig_points_at_the_cluster() {
    let name = unique("byo");
    let (net, subnet, router) = (
        format!("{name}-own-net"),
        format!("{name}-own-subnet"),
        format!("{name}-own-router"),
    );
    // The project's network and router, made beforehand as a Jetstream2 user has them.
    let _cleanup = CliCleanup(vec![
        vec![
            "router".into(),
            "remove".into(),
            "subnet".into(),
            router.clone(),
            subnet.clone(),
        ],
        vec!["router".into(), "delete".into(), router.clone()],
        vec!["network".into(), "delete".into(), net.clone()],
    ]);
    cli("local-demo", &["network", "create", &net, "-f", "json"]);
    cli(
        "local-demo",
        &[
            "subnet",
            "create",
            &subnet,
            "--network",
            &net,
            "--subnet-range",
            "10.77.0.0/24",
            "-f",
            "json",
        ],
    );
    cli(
        "local-demo",
        &[
            "router",
            "create",
            &router,
            "--external-gateway",
            "public",
            "-f",
            "json",
        ],
    );
    success_cli(&["router", "add", "subnet", &router, &subnet]);
    let wiring = router_wiring(&router);
    assert!(wiring.0.to_string().contains("network_id"), "{wiring:?}");

    let workspace = Workspace::new();
    let reuse = format!(
        "[network]\nexisting_network = \"{net}\"\nexisting_subnet = \"{subnet}\"\nexisting_router = \"{router}\""
    );
    workspace.write_cluster(&cluster(&name, 1, &reuse));
    let _teardown = Teardown(&workspace);

    // No kubeconfig before there is a cluster: nothing to make it from.
    refused(
        &flatstack(&workspace, &["kubeconfig"]),
        "no PKI for cluster",
    );

    let out = success(&flatstack(&workspace, &["up", "--provision-only"]));
    assert!(out.contains("provisioned"), "{out}");
    // Nothing network-shaped was made; the nodes' ports are on the project's subnet.
    for kind in ["network", "subnet", "router"] {
        assert_eq!(tagged(kind, &name), Vec::<Value>::new(), "{kind} made");
    }
    let ports = tagged("port", &name);
    assert_eq!(ports.len(), 2);
    for port in &ports {
        assert!(
            port["Fixed IP Addresses"].to_string().contains("10.77.0."),
            "{port}"
        );
    }
    assert_eq!(router_wiring(&router), wiring, "the router was changed");
    let fip = tagged("floating ip", &name)[0]["Floating IP Address"]
        .as_str()
        .expect("floating IP")
        .to_string();
    let again = success(&flatstack(&workspace, &["up", "--provision-only"]));
    assert!(
        again.contains("nothing to change (0 changes made)"),
        "{again}"
    );
    // Dropping the existing network from the file would need a new network: refused.
    workspace.write_cluster(&cluster(&name, 1, ""));
    refused(
        &flatstack(&workspace, &["up", "--provision-only"]),
        "made on an existing network",
    );
    assert_eq!(tagged("network", &name), Vec::<Value>::new());
    workspace.write_cluster(&cluster(&name, 1, &reuse));

    // The admin kubeconfig, from the local PKI, at the floating IP or a tunnel.
    let printed = success(&flatstack(&workspace, &["kubeconfig"]));
    assert!(
        printed.contains(&format!("server: https://{fip}:6443")),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("name: {name}-admin")),
        "{printed}"
    );
    let tunnel = success(&flatstack(
        &workspace,
        &["kubeconfig", "--api-address", "127.0.0.1:16443"],
    ));
    assert!(
        tunnel.contains("server: https://127.0.0.1:16443"),
        "{tunnel}"
    );
    let break_glass = success(&flatstack(&workspace, &["kubeconfig", "--super-admin"]));
    assert!(
        break_glass.contains(&format!("name: {name}-super-admin")),
        "{break_glass}"
    );
    for bad in [
        "",
        "http://127.0.0.1:6443",
        "127.0.0.1:99999",
        "127.0.0.1",
        "a b:1",
    ] {
        let output = flatstack(&workspace, &["kubeconfig", "--api-address", bad]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{bad:?}: {}",
            stderr(&output)
        );
    }
    let output = flatstack(&workspace, &["kubeconfig", "--merge", "--super-admin"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    // --merge keeps what the user's kubeconfig had; kubectl reads the result.
    let user_config = workspace.path("user-kubeconfig");
    std::fs::write(
        &user_config,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: other\n  cluster:\n    server: https://192.0.2.1:6443\ncontexts:\n- name: other\n  context:\n    cluster: other\n    user: other\ncurrent-context: other\nusers:\n- name: other\n  user:\n    token: abc\n",
    )
    .expect("user kubeconfig");
    let merged = Command::new(env!("CARGO_BIN_EXE_flatstack"))
        .current_dir(workspace.dir.path())
        .env("OS_CLIENT_CONFIG_FILE", clouds_yaml())
        .env_remove("OS_CLOUD")
        .env("FLATSTACK_STATE_DIR", workspace.state_dir())
        .env("KUBECONFIG", &user_config)
        .args(["--file", workspace.cluster_file().to_str().expect("utf-8")])
        .args(["kubeconfig", "--merge"])
        .output()
        .expect("run flatstack");
    assert!(merged.status.success(), "{}", stderr(&merged));
    let view = Command::new("kubectl")
        .env("KUBECONFIG", &user_config)
        .args(["config", "view", "-o", "json"])
        .output()
        .expect("kubectl");
    let view: Value = serde_json::from_slice(&view.stdout).expect("kubectl json");
    assert_eq!(view["current-context"], name.as_str());
    let clusters: Vec<&str> = view["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(
        clusters.contains(&"other") && clusters.contains(&name.as_str()),
        "{view}"
    );

    // Without its state directory, the cluster's PKI is never minted anew: up refuses and
    // status says what is missing, and neither writes anything.
    let state = workspace.state_dir();
    let away = workspace.path("state-away");
    std::fs::rename(&state, &away).expect("move the state directory away");
    refused(
        &flatstack(&workspace, &["up", "--provision-only"]),
        "exists in the cloud, but its PKI is not in",
    );
    assert!(!state.exists(), "up wrote a state directory");
    let status = success(&flatstack(&workspace, &["status"]));
    assert!(status.contains("no PKI in"), "{status}");
    std::fs::create_dir(&state).expect("empty state directory");
    set_mode(&state, 0o700);
    let status = success(&flatstack(&workspace, &["status"]));
    assert!(status.contains("no PKI in"), "{status}");
    assert!(!state.join("pki").exists(), "status minted a PKI");
    std::fs::remove_dir(&state).expect("remove");
    std::fs::rename(&away, &state).expect("restore the state directory");

    // down removes what flatstack made and nothing of the project's.
    let out = success(&flatstack(&workspace, &["down", "--yes"]));
    assert!(out.contains("none left"), "{out}");
    assert_nothing_left(&name);
    assert_eq!(router_wiring(&router), wiring, "down changed the router");
    cli("local-demo", &["network", "show", &net, "-f", "json"]);
    cli("local-demo", &["subnet", "show", &subnet, "-f", "json"]);
}

#[test]
fn a_reused_subnet_without_a_router_is_refused_before_anything_is_made() {
    let name = unique("norouter");
    let net = format!("{name}-own-net");
    let _cleanup = CliCleanup(vec![vec!["network".into(), "delete".into(), net.clone()]]);
    cli("local-demo", &["network", "create", &net, "-f", "json"]);
    cli(
        "local-demo",
        &[
            "subnet",
            "create",
            &format!("{name}-own-subnet"),
            "--network",
            &net,
            "--subnet-range",
            "10.78.0.0/24",
            "-f",
            "json",
        ],
    );
    let workspace = Workspace::new();
    workspace.write_cluster(&cluster(
        &name,
        1,
        &format!("[network]\nexisting_network = \"{net}\""),
    ));
    let _teardown = Teardown(&workspace);
    let output = flatstack(&workspace, &["up", "--provision-only"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("has no router"),
        "{}",
        stderr(&output)
    );
    for kind in ["port", "security group", "floating ip", "server"] {
        assert_eq!(tagged(kind, &name), Vec::<Value>::new(), "{kind} made");
    }
}

fn success_cli(args: &[&str]) {
    let output = cli_raw("local-demo", args);
    assert!(
        output.status.success(),
        "openstack {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Waits until the cluster's lock names `command`: the run holding it has started.
fn wait_for_lock(workspace: &Workspace, command: &str) {
    let lock = workspace.state_dir().join("lock");
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&lock)
        .is_ok_and(|t| t.contains(&format!("`flatstack {command}`")))
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "no lock by `{command}`"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// flatstack started with `args`, its output piped.
pub(crate) fn spawn(workspace: &Workspace, args: &[&str]) -> std::process::Child {
    command(workspace, args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start flatstack")
}

/// One writer per cluster: a second `up`, or a `down`, while `up` runs is refused, and so is
/// an `up` while `down` runs; the runs that hold the lock finish as if alone.
#[test]
fn one_writer_at_a_time() {
    let name = unique("lock");
    let workspace = Workspace::new();
    workspace.write_cluster(&cluster(&name, 1, ""));
    let _teardown = Teardown(&workspace);

    let first = spawn(&workspace, &["up", "--provision-only"]);
    wait_for_lock(&workspace, "up");
    for args in [&["up", "--provision-only"][..], &["down", "--yes"][..]] {
        let message = refused(
            &flatstack(&workspace, args),
            "another flatstack is changing this cluster right now (pid",
        );
        assert!(message.contains("`flatstack up`"), "{message}");
    }
    let first = first.wait_with_output().expect("first up");
    success(&first);
    assert_eq!(
        servers(&name),
        [
            format!("{name}-control-plane-1"),
            format!("{name}-default-1")
        ]
    );
    assert_eq!(tagged("network", &name).len(), 1);

    let removing = spawn(&workspace, &["down", "--yes"]);
    wait_for_lock(&workspace, "down");
    refused(
        &flatstack(&workspace, &["up", "--provision-only"]),
        "`flatstack down`",
    );
    success(&removing.wait_with_output().expect("down"));
    assert_nothing_left(&name);
}

/// What Nova holds after `up --provision-only`, read back as an admin reads it: no private key
/// and no join token in any server's user_data, nor the token in its console log; the config
/// written out by Debian's real Ignition opens its sealed secrets with the key in the
/// server's metadata (served on loopback as the metadata service serves `meta_data.json`),
/// and a control plane then holds exactly the state directory's CA keys.
#[test]
fn user_data_holds_only_sealed_secrets_that_the_metadata_key_opens() {
    use base64::Engine as _;
    for tool in ["openssl", "jq", "curl"] {
        require_tool(tool);
    }
    let name = unique("seal");
    let workspace = Workspace::new();
    workspace.write_cluster(&cluster(&name, 1, ""));
    let _teardown = Teardown(&workspace);
    success(&flatstack(&workspace, &["up", "--provision-only"]));
    let state = workspace.state_dir().join("pki");
    let mut tokens = Vec::new();
    let mut cas = Vec::new();
    for (node, control_plane) in [
        (format!("{name}-control-plane-1"), true),
        (format!("{name}-default-1"), false),
    ] {
        let shown = cli("local-demo", &["server", "show", &node, "-f", "json"]);
        let id = shown["id"].as_str().expect("id").to_string();
        let metadata = shown["properties"].clone();
        let key = metadata["flatstack-seal-key"].as_str().unwrap_or_default();
        assert_eq!(key.len(), 128, "{node}: {metadata}");
        cas.push(metadata["flatstack-ca"].clone());

        let admin = cli(
            "local-admin",
            &[
                "--os-compute-api-version",
                "2.3",
                "server",
                "show",
                &id,
                "-f",
                "json",
            ],
        );
        let encoded = admin["OS-EXT-SRV-ATTR:user_data"]
            .as_str()
            .expect("user_data");
        let user_data = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("base64");
        let text = String::from_utf8_lossy(&user_data).into_owned();
        assert!(!text.contains("PRIVATE KEY"), "{node}");
        assert!(!text.contains(key), "{node}: the key is in user_data");
        // Ignition writes the tree as a node's first boot would (the sysext, fetched from the
        // bakery, is left out: no test reaches the internet).
        let mut config: Value = serde_json::from_slice(&user_data).expect("Ignition JSON");
        if let Some(files) = config["storage"]["files"].as_array_mut() {
            files.retain(|f| {
                !f["contents"]["source"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("http"))
            });
        }
        let config_path = workspace.path(&format!("{node}.ign"));
        std::fs::write(&config_path, config.to_string()).expect("write config");
        let applied = apply_ignition(&config_path, &workspace.path(&format!("scratch-{node}")))
            .unwrap_or_else(|log| panic!("Ignition failed on {node}:\n{log}"));
        let root = &applied.root;
        assert_eq!(private_keys_under(root), Vec::<String>::new(), "{node}");

        let served = FileServer::serve(BTreeMap::from([(
            "meta_data.json".to_string(),
            serde_json::json!({"uuid": id, "meta": metadata})
                .to_string()
                .into_bytes(),
        )]));
        let unseal = Command::new("bash")
            .arg(root.join("opt/flatstack/bin/flatstack-unseal"))
            .env("FLATSTACK_ROOT", root)
            .env(
                "FLATSTACK_METADATA_URL",
                format!("{}/meta_data.json", served.base_url()),
            )
            .output()
            .expect("run flatstack-unseal");
        assert!(
            unseal.status.success(),
            "{node}: {}{}",
            String::from_utf8_lossy(&unseal.stdout),
            String::from_utf8_lossy(&unseal.stderr)
        );
        let token =
            std::fs::read_to_string(root.join("etc/flatstack/join-token")).expect("opened token");
        assert!(is_token(&token), "{node}: {token:?}");
        assert_eq!(mode_of(&root.join("etc/flatstack/join-token")), 0o600);
        assert!(!text.contains(&token), "{node}: the token is in user_data");
        let console = cli_raw("local-demo", &["console", "log", "show", &id]);
        assert!(!String::from_utf8_lossy(&console.stdout).contains(&token));
        tokens.push(token);
        if control_plane {
            for (on_node, in_state) in [
                ("ca.key", "ca.key"),
                ("front-proxy-ca.key", "front-proxy-ca.key"),
                ("etcd/ca.key", "etcd-ca.key"),
                ("sa.key", "sa.key"),
            ] {
                let opened = root.join("etc/flatstack/pki").join(on_node);
                assert_eq!(
                    std::fs::read(&opened).expect("opened key"),
                    std::fs::read(state.join(in_state)).expect("state key"),
                    "{on_node}"
                );
                assert_eq!(mode_of(&opened), 0o600, "{on_node}");
                assert!(
                    !root
                        .join(format!("etc/flatstack/pki/{on_node}.sealed"))
                        .exists()
                );
            }
            // The key Secrets are encrypted with, opened as the others; its fingerprint, not
            // the key, in the server's metadata.
            let line = std::fs::read_to_string(state.join("secrets-encryption.key"))
                .expect("the state directory's Secrets key");
            let (_, secrets_key) = line.trim().split_once(' ').expect("name and key");
            let opened = root.join("etc/flatstack/secrets-encryption.key");
            assert_eq!(
                std::fs::read_to_string(&opened).expect("opened"),
                secrets_key
            );
            assert_eq!(mode_of(&opened), 0o600);
            let fingerprint = metadata["flatstack-secrets-key"]
                .as_str()
                .unwrap_or_default();
            assert!(
                fingerprint.starts_with("sha256:") && fingerprint.len() == 39,
                "{node}: {metadata}"
            );
            assert!(!metadata.to_string().contains(secrets_key));
        } else {
            assert!(
                metadata.get("flatstack-secrets-key").is_none(),
                "{metadata}"
            );
            assert!(!root.join("etc/flatstack/secrets-encryption.key").exists());
        }
        // Another server's key opens nothing here.
        let wrong = FileServer::serve(BTreeMap::from([(
            "meta_data.json".to_string(),
            serde_json::json!({"meta": {"flatstack-seal-key": "0".repeat(128)}})
                .to_string()
                .into_bytes(),
        )]));
        let again = apply_ignition(&config_path, &workspace.path(&format!("again-{node}")))
            .unwrap_or_else(|log| panic!("Ignition failed on {node}:\n{log}"));
        let refused = Command::new("bash")
            .arg(again.root.join("opt/flatstack/bin/flatstack-unseal"))
            .env("FLATSTACK_ROOT", &again.root)
            .env(
                "FLATSTACK_METADATA_URL",
                format!("{}/meta_data.json", wrong.base_url()),
            )
            .output()
            .expect("run flatstack-unseal");
        assert!(!refused.status.success());
        assert!(
            String::from_utf8_lossy(&refused.stdout).contains("does not match this server's key"),
            "{}",
            String::from_utf8_lossy(&refused.stdout)
        );
        assert!(!again.root.join("etc/flatstack/join-token").exists());
    }
    // One run, one token; every server names the CA its node trusts.
    assert_eq!(tokens[0], tokens[1]);
    assert_eq!(cas[0], cas[1]);
    assert!(cas[0].as_str().is_some_and(|c| c.starts_with("sha256:")));
}

/// A state directory whose Secrets key is not the one the control planes record (lost and
/// made again, or another's) is refused by `plan` and `up` with exit 2, naming both
/// fingerprints, before anything changes: a control plane given another key could read none
/// of the cluster's Secrets.
#[test]
fn a_secrets_key_the_control_planes_do_not_record_is_refused() {
    let name = unique("skey");
    let workspace = Workspace::new();
    workspace.write_cluster(&cluster(&name, 0, ""));
    let _teardown = Teardown(&workspace);
    success(&flatstack(&workspace, &["up", "--provision-only"]));
    let control_plane = format!("{name}-control-plane-1");
    let recorded = server_metadata(&control_plane)["flatstack-secrets-key"]
        .as_str()
        .expect("the fingerprint on the control plane")
        .to_string();
    let planned = success(&flatstack(&workspace, &["plan"]));
    assert!(
        planned.contains("Secrets at rest: encrypted by the API servers"),
        "{planned}"
    );
    let key_file = workspace.state_dir().join("pki/secrets-encryption.key");
    let kept = std::fs::read(&key_file).expect("key");
    std::fs::remove_file(&key_file).expect("lose the key");
    let before = servers(&name);
    for command in [&["plan"][..], &["up", "--provision-only"]] {
        let output = flatstack(&workspace, command);
        let error = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{command:?}: {error}");
        assert!(
            error.contains(&format!(
                "does not hold the key cluster `{name}` encrypts its Secrets with: its control plane {control_plane} records {recorded}, the state directory has none"
            )),
            "{command:?}: {error}"
        );
    }
    assert!(!key_file.exists(), "no key is made in its place");
    assert_eq!(servers(&name), before);
    std::fs::write(&key_file, kept).expect("put the key back");
    // An older cluster: its control planes record no key, so it is said to run unencrypted.
    cli(
        "local-demo",
        &[
            "server",
            "unset",
            "--property",
            "flatstack-secrets-key",
            &control_plane,
        ],
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("mode");
    let again = success(&flatstack(&workspace, &["up", "--provision-only"]));
    assert!(again.contains("nothing to change"), "{again}");
    let planned = success(&flatstack(&workspace, &["plan"]));
    assert!(
        planned.contains(
            "Secrets at rest: not encrypted: the cluster was made before flatstack encrypted them"
        ),
        "{planned}"
    );
}

/// A state directory is the cluster's own or it is refused. `render` with a fresh state
/// directory says it minted a CA for a cluster that exists; then `plan`, `up`, `status` and
/// `kubeconfig` with that directory stop with exit code 2, naming both CAs, and change nothing.
#[test]
fn a_state_directory_that_is_not_the_clusters_is_refused_by_every_command() {
    let name = unique("foreign");
    let workspace = Workspace::new();
    workspace.write_cluster(&cluster(&name, 1, ""));
    let _teardown = Teardown(&workspace);
    success(&flatstack(&workspace, &["up", "--provision-only"]));
    let ours = server_metadata(&format!("{name}-control-plane-1"))["flatstack-ca"]
        .as_str()
        .expect("the CA on the control plane")
        .to_string();
    let before = servers(&name);

    let elsewhere = Workspace::new();
    elsewhere.write_cluster(&cluster(&name, 1, ""));
    let out = elsewhere.path("out");
    let rendered = flatstack(
        &elsewhere,
        &["render", "--out", out.to_str().expect("utf-8 path")],
    );
    let warning = stderr(&rendered);
    assert!(rendered.status.success(), "{warning}");
    assert!(
        warning.contains(&format!(
            "for cluster `{name}`, which already exists in the cloud with 2 server(s) trusting {ours}"
        )),
        "{warning}"
    );
    for command in [
        &["plan"][..],
        &["up", "--provision-only"],
        &["status", "--api-address", NO_API],
        &["kubeconfig"],
    ] {
        let output = flatstack(&elsewhere, command);
        let error = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{command:?}: {error}");
        assert!(
            error.contains(&format!("is not cluster `{name}`'s"))
                && error.contains(&format!("the cluster's nodes trust {ours}"))
                && error.contains("its CA is sha256:"),
            "{command:?}: {error}"
        );
    }
    assert_eq!(servers(&name), before);
    // The cluster's own state directory is still welcome. A worker that another state
    // directory made (as two workstations starting the cluster at once would) trusts a CA no
    // control plane has: it is built again, on its port.
    success(&flatstack(&workspace, &["plan"]));
    let worker = format!("{name}-default-1");
    let old_id = cli("local-demo", &["server", "show", &worker, "-f", "json"])["id"].clone();
    let theirs = format!("sha256:{}", "0".repeat(64));
    cli(
        "local-demo",
        &[
            "server",
            "set",
            "--property",
            &format!("flatstack-ca={theirs}"),
            &worker,
        ],
    );
    // Nothing answers at NO_API: the join token waits for the API when `up` runs.
    let plan = success(&flatstack(&workspace, &["plan", "--api-address", NO_API]));
    assert!(
        plan.lines().any(|l| l.contains("- server")
            && l.contains(&worker)
            && l.contains(&format!(
                "its node trusts CA {theirs}, not the cluster's {ours}"
            ))),
        "{plan}"
    );
    success(&flatstack(&workspace, &["up", "--provision-only"]));
    let rebuilt = cli("local-demo", &["server", "show", &worker, "-f", "json"]);
    assert_ne!(rebuilt["id"], old_id);
    assert_eq!(rebuilt["properties"]["flatstack-ca"], ours.as_str());
    assert_eq!(servers(&name), before);
}

/// `up` confirms what it made before it says so: a worker's server deleted by someone else
/// while `up` waits for the nodes (its node had registered, as a kubelet does) ends the run
/// with exit code 1 naming the server, not with "up".
#[test]
fn up_says_what_vanished_while_it_ran() {
    use crate::kube_standin::{StandIn, World};
    let name = unique("vanish");
    let workspace = Workspace::new();
    workspace.write_cluster(&cluster(&name, 1, ""));
    let _teardown = Teardown(&workspace);
    let pki = crate::kube_standin::pki(&workspace);
    let (cp, w1) = (
        format!("{name}-control-plane-1"),
        format!("{name}-default-1"),
    );
    let mut world = World::default();
    world.register(&cp, true);
    let server = StandIn::of_cluster(&pki, world);
    let api = server.address.to_string();
    let run = spawn(
        &workspace,
        &["up", "--api-address", api.as_str(), "--timeout", "3m"],
    );
    // The worker's server is deleted once ACTIVE (as another workstation's `down` would),
    // then its node registers, so `up`'s wait for the nodes ends.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    loop {
        assert!(std::time::Instant::now() < deadline, "{w1} never ACTIVE");
        let shown = cli_raw("local-demo", &["server", "show", &w1, "-f", "json"]);
        let active = shown.status.success()
            && serde_json::from_slice::<Value>(&shown.stdout)
                .is_ok_and(|s| s["status"] == "ACTIVE");
        if active {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    cli("local-demo", &["server", "delete", "--wait", &w1]);
    server.world.lock().expect("world").register(&w1, false);
    let output = run.wait_with_output().expect("up");
    let error = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{error}");
    assert!(
        error.contains(&format!(
            "cluster `{name}` is not as this run made it: {w1} vanished while it ran"
        )),
        "{error}"
    );
    assert!(!String::from_utf8_lossy(&output.stdout).contains("is up"));
}

/// A control plane that ran is never built again blank: once `up` has seen it ACTIVE, its
/// port and the API's floating IP are marked; with its server deleted, `plan` and `up` refuse
/// (exit 2) and build nothing, and only `--accept-empty-cluster` builds it again.
#[test]
fn a_lost_control_plane_that_ran_is_refused_not_rebuilt_blank() {
    let name = unique("lost");
    let workspace = Workspace::new();
    workspace.write_cluster(&cluster(&name, 1, ""));
    let _teardown = Teardown(&workspace);
    success(&flatstack(&workspace, &["up", "--provision-only"]));
    let (cp, w1) = (
        format!("{name}-control-plane-1"),
        format!("{name}-default-1"),
    );
    let port = cli("local-demo", &["port", "show", &cp, "-f", "json"]);
    assert!(
        port["tags"]
            .to_string()
            .contains("flatstack:control-plane-ran"),
        "{port}"
    );
    let again = success(&flatstack(&workspace, &["up", "--provision-only"]));
    assert!(again.contains("nothing to change"), "{again}");
    // The release each server was made with is on it, with its image's digest. From that
    // record alone (no API here) a step down is refused, a patch or minor up is reported (and
    // left for an `up` that reaches the API), another release under the running image's
    // digest is refused.
    for server in [&cp, &w1] {
        assert_eq!(server_metadata(server)["flatstack-kubernetes"], "v1.37.1");
        assert_eq!(
            server_metadata(server)["flatstack-sysext-sha256"],
            "ab".repeat(32)
        );
    }
    for down in ["1.36.2", "1.37.0"] {
        workspace.write_cluster(&cluster(&name, 1, "").replace("1.37.1", down));
        for command in [
            &["plan", "--provision-only"][..],
            &["up", "--provision-only"],
        ] {
            let output = flatstack(&workspace, command);
            let error = stderr(&output);
            assert_eq!(output.status.code(), Some(2), "{command:?}: {error}");
            assert!(
                error.contains(&format!(
                    "`kubernetes.version` is v{down} but {cp}, {w1} already run v1.37.1"
                )) && error.contains("never moves a cluster down"),
                "{command:?}: {error}"
            );
        }
    }
    workspace.write_cluster(&cluster(&name, 1, "").replace("1.37.1", "1.37.2"));
    let reused = flatstack(&workspace, &["plan", "--provision-only"]);
    assert_eq!(reused.status.code(), Some(2), "{}", stderr(&reused));
    assert!(
        stderr(&reused).contains(&format!(
            "is the digest {cp} records for Kubernetes v1.37.1"
        )),
        "{}",
        stderr(&reused)
    );
    workspace.write_cluster(
        &cluster(&name, 1, "")
            .replace("1.37.1", "1.37.2")
            .replace(&"ab".repeat(32), &"cd".repeat(32)),
    );
    let patch = success(&flatstack(&workspace, &["plan", "--provision-only"]));
    assert!(
        patch.contains(&format!(
            "upgrade v1.37.1 to v1.37.2, one node at a time, control planes first: {cp}, {w1}"
        )) && patch.contains("not with --provision-only")
            && patch.contains("nothing to change"),
        "{patch}"
    );
    // Nodes that already disagree beyond the skew policy (a kubelet newer than the API
    // server, as the servers record it) are refused any change.
    workspace.write_cluster(&cluster(&name, 1, ""));
    let set = |release: &str| {
        let property = format!("flatstack-kubernetes={release}");
        let set = cli_raw(
            "local-demo",
            &["server", "set", "--property", &property, &cp],
        );
        assert!(set.status.success(), "{}", stderr(&set));
    };
    set("v1.36.2");
    let skewed = flatstack(&workspace, &["plan", "--provision-only"]);
    assert_eq!(skewed.status.code(), Some(2), "{}", stderr(&skewed));
    assert!(
        stderr(&skewed).contains(&format!(
            "already break Kubernetes' version-skew policy: {w1} runs kubelet v1.37.1, newer than the API server at v1.36.2"
        )),
        "{}",
        stderr(&skewed)
    );
    set("v1.37.1");
    workspace.write_cluster(&cluster(&name, 1, ""));

    cli("local-demo", &["server", "delete", "--wait", &cp]);
    for command in [&["plan"][..], &["up", "--provision-only"]] {
        let output = flatstack(&workspace, command);
        let error = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{command:?}: {error}");
        assert!(
            error.contains(&format!(
                "control plane {cp} has run (an `up` saw its server ACTIVE) and its server is gone"
            )) && error.contains("--accept-empty-cluster"),
            "{command:?}: {error}"
        );
    }
    assert_eq!(servers(&name), std::slice::from_ref(&w1), "nothing built");
    success(&flatstack(
        &workspace,
        &["up", "--provision-only", "--accept-empty-cluster"],
    ));
    assert_eq!(servers(&name), [cp, w1]);
}

/// What an admin sees of the demo project's `server`: its host and user_data too.
pub(crate) fn admin_view(server: &str) -> Value {
    let shown = cli("local-demo", &["server", "show", server, "-f", "json"]);
    let id = shown["id"].as_str().expect("id");
    cli(
        "local-admin",
        &[
            "--os-compute-api-version",
            "2.3",
            "server",
            "show",
            id,
            "-f",
            "json",
        ],
    )
}

/// The user_data Nova holds for `server`, decoded: the Ignition config.
pub(crate) fn user_data(admin: &Value) -> Value {
    use base64::Engine as _;
    let encoded = admin["OS-EXT-SRV-ATTR:user_data"]
        .as_str()
        .expect("user_data");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("base64");
    serde_json::from_slice(&bytes).expect("Ignition JSON")
}

/// The bare addresses of a port's allowed address pairs, as the `openstack` CLI shows them.
fn allowed_addresses(port: &Value) -> Vec<String> {
    port["allowed_address_pairs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|pair| pair["ip_address"].as_str())
        .map(|a| a.trim_end_matches("/32").to_string())
        .collect()
}

/// Three control planes behind a VIP, provisioned on the local OpenStack: the API's address
/// and floating IP on a port of its own, every control plane's port allowed to hold it, the
/// control planes on three compute hosts at the next fixed addresses, the first initializing
/// and the others joining as control planes through the endpoint; a re-run changes nothing, a
/// lost pair is put back, and `down` leaves nothing.
#[test]
fn three_control_planes_hold_the_api_address_on_a_port_of_their_own() {
    let name = unique("ha");
    let workspace = Workspace::new();
    workspace.write_cluster(&cluster(&name, 1, "").replacen(
        "[control_plane]\n",
        "[control_plane]\ncount = 3\napi_endpoint = \"vip\"\n",
        1,
    ));
    let _teardown = Teardown(&workspace);
    let planned = success(&flatstack(&workspace, &["plan", "--provision-only"]));
    assert!(planned.contains("API endpoint: vip ("), "{planned}");
    assert!(
        planned.contains(&format!("+ port            {name}-api")),
        "{planned}"
    );
    success(&flatstack(&workspace, &["up", "--provision-only"]));

    let endpoint = cli(
        "local-demo",
        &["port", "show", &format!("{name}-api"), "-f", "json"],
    );
    assert_eq!(
        endpoint["fixed_ips"][0]["ip_address"], "10.42.0.10",
        "{endpoint}"
    );
    assert!(
        endpoint["tags"]
            .to_string()
            .contains(&format!("flatstack:cluster={name}"))
    );
    assert_eq!(
        endpoint["device_id"], "",
        "the endpoint's port belongs to no server"
    );
    let floating = tagged("floating ip", &name);
    assert_eq!(floating.len(), 1, "{floating:?}");
    assert_eq!(floating[0]["Port"], endpoint["id"], "{floating:?}");

    let mut hosts = Vec::new();
    for n in 1..=3 {
        let server = format!("{name}-control-plane-{n}");
        let port = cli("local-demo", &["port", "show", &server, "-f", "json"]);
        assert_eq!(
            port["fixed_ips"][0]["ip_address"],
            format!("10.42.0.{}", 10 + n),
            "{port}"
        );
        assert_eq!(allowed_addresses(&port), ["10.42.0.10"], "{server}");
        let admin = admin_view(&server);
        hosts.push(
            admin["OS-EXT-SRV-ATTR:host"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );

        let config = user_data(&admin);
        let kubeadm = String::from_utf8(
            ignition_file(&config, "/etc/flatstack/kubeadm.yaml.in").expect("kubeadm config"),
        )
        .expect("UTF-8");
        let unit = config["systemd"]["units"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|u| u["name"] == "kubeadm.service")
            .and_then(|u| u["contents"].as_str())
            .unwrap_or_default()
            .to_string();
        let holder = String::from_utf8(
            ignition_file(&config, "/etc/flatstack/kube-vip.yaml.in").expect("kube-vip"),
        )
        .expect("UTF-8");
        assert!(holder.contains("10.42.0.10"), "{holder}");
        if n == 1 {
            assert!(kubeadm.contains("kind: InitConfiguration"), "{kubeadm}");
            assert!(
                kubeadm.contains("controlPlaneEndpoint: 10.42.0.10:6443"),
                "{kubeadm}"
            );
            for san in [
                format!("{name}-control-plane-2"),
                "10.42.0.13".to_string(),
                floating[0]["Floating IP Address"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string(),
            ] {
                let cluster: Value =
                    serde_saphyr::from_str(kubeadm.split("---\n").nth(1).unwrap_or_default())
                        .expect("ClusterConfiguration");
                assert!(
                    cluster["apiServer"]["certSANs"]
                        .as_array()
                        .is_some_and(|sans| sans.contains(&Value::from(san.as_str()))),
                    "{san} in {kubeadm}"
                );
            }
            assert!(unit.contains("flatstack-bootstrap init"), "{unit}");
        } else {
            assert!(kubeadm.contains("kind: JoinConfiguration"), "{kubeadm}");
            assert!(kubeadm.contains("controlPlane:"), "{kubeadm}");
            assert!(
                kubeadm.contains("apiServerEndpoint: 10.42.0.10:6443"),
                "{kubeadm}"
            );
            assert!(!kubeadm.contains("InitConfiguration"), "{kubeadm}");
            assert!(unit.contains("flatstack-bootstrap control-plane"), "{unit}");
            assert!(
                ignition_file(&config, "/etc/flatstack/pki/ca.key.sealed").is_some(),
                "a joining control plane gets the CAs, sealed"
            );
        }
    }
    hosts.sort();
    hosts.dedup();
    assert_eq!(hosts.len(), 3, "hard anti-affinity: {hosts:?}");
    let worker = cli(
        "local-demo",
        &["port", "show", &format!("{name}-default-1"), "-f", "json"],
    );
    assert_eq!(allowed_addresses(&worker), Vec::<String>::new());

    let again = success(&flatstack(&workspace, &["up", "--provision-only"]));
    assert!(again.contains("nothing to change"), "{again}");

    // A control plane's port that lost its pair gets it back on the next run.
    let second = format!("{name}-control-plane-2");
    cli_raw(
        "local-demo",
        &["port", "set", "--no-allowed-address", &second],
    );
    let port = cli("local-demo", &["port", "show", &second, "-f", "json"]);
    assert_eq!(allowed_addresses(&port), Vec::<String>::new(), "{port}");
    let repair = success(&flatstack(&workspace, &["plan", "--provision-only"]));
    assert!(
        repair.contains(&format!("~ port            {second}"))
            && repair.contains("may hold the API's address 10.42.0.10"),
        "{repair}"
    );
    success(&flatstack(&workspace, &["up", "--provision-only"]));
    let port = cli("local-demo", &["port", "show", &second, "-f", "json"]);
    assert_eq!(allowed_addresses(&port), ["10.42.0.10"], "{port}");

    success(&flatstack(&workspace, &["down", "--yes"]));
    assert_nothing_left(&name);
}

/// Three control planes through faults at the new kinds of call: the endpoint's and control
/// planes' port creates dropped after Neutron made them, a run killed part-way, then the pairs
/// removed and their repair dropped or refused once each; every run after converges, with one
/// endpoint port, every pair in place and nothing to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_control_planes_converge_through_faults_and_a_kill() {
    use crate::proxy::{Fault, standard_proxy};
    let proxy = standard_proxy().await;
    let name = unique("hakill");
    let workspace = Workspace::new();
    let clouds = workspace.path("clouds.yaml");
    proxy.write_clouds_yaml(&clouds);
    workspace.write_cluster(
        &cluster(&name, 1, "")
            .replace("cloud = \"local-demo\"", "cloud = \"faulty\"")
            .replacen(
                "[control_plane]\n",
                "[control_plane]\ncount = 3\napi_endpoint = \"vip\"\n",
                1,
            ),
    );
    let run = |args: &'static [&'static str]| through(&workspace, &clouds, args);
    let _teardown = RunOnDrop(run(&["down", "--yes"]));
    proxy.inject("POST", "/v2.0/ports", Fault::DropAfter, 3);
    proxy.inject("POST", "/v2.1/servers", Fault::DropAfter, 1);
    let mut first = run(&["up", "--provision-only"]).spawn().expect("start up");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let _ = first.kill();
    let _ = first.wait();
    let mut second = run(&["up", "--provision-only"]);
    let output = tokio::task::spawn_blocking(move || second.output())
        .await
        .expect("join")
        .expect("run");
    assert!(output.status.success(), "{}", stderr(&output));

    let endpoints = tagged("port", &name)
        .into_iter()
        .filter(|p| p["Name"] == format!("{name}-api").as_str())
        .count();
    assert_eq!(endpoints, 1, "one endpoint port");
    let pairs = || -> Vec<Vec<String>> {
        (1..=3)
            .map(|n| {
                let port = format!("{name}-control-plane-{n}");
                allowed_addresses(&cli("local-demo", &["port", "show", &port, "-f", "json"]))
            })
            .collect()
    };
    assert_eq!(pairs(), vec![vec!["10.42.0.10".to_string()]; 3]);

    for n in 1..=3 {
        let port = format!("{name}-control-plane-{n}");
        cli_raw(
            "local-demo",
            &["port", "set", "--no-allowed-address", &port],
        );
    }
    proxy.inject("PUT", "/v2.0/ports/", Fault::DropAfter, 1);
    proxy.inject("PUT", "/v2.0/ports/", Fault::Status(503, None), 1);
    let mut third = run(&["up", "--provision-only"]);
    let repaired = tokio::task::spawn_blocking(move || third.output())
        .await
        .expect("join")
        .expect("run");
    assert!(repaired.status.success(), "{}", stderr(&repaired));
    assert_eq!(pairs(), vec![vec!["10.42.0.10".to_string()]; 3]);
    let again = run(&["up", "--provision-only"]).output().expect("run");
    assert!(
        stdout(&again).contains("nothing to change (0 changes made)"),
        "{}",
        stdout(&again)
    );
    assert!(
        proxy.injected() >= 4,
        "only {} faults were hit",
        proxy.injected()
    );
}

/// Stand-in kubelets for the servers of cluster `name` that appear after it starts: each
/// registers once its server is ACTIVE (a control plane joins etcd and is marked by kubeadm as
/// it joins), and what etcd and the API held of its name at that moment is recorded, with the
/// names of the other control planes that were members then.
pub(crate) struct Kubelets {
    seen: std::sync::Arc<std::sync::Mutex<Vec<Rejoined>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A server's node registering: its name, whether etcd and the API still listed it, and the
/// members etcd had then.
#[derive(Debug, Clone, PartialEq)]
struct Rejoined {
    name: String,
    member: bool,
    node: bool,
    members: Vec<String>,
}

impl Kubelets {
    pub(crate) fn start(server: &crate::kube_standin::StandIn, name: &str) -> Kubelets {
        use std::sync::atomic::Ordering;
        let seen: std::sync::Arc<std::sync::Mutex<Vec<Rejoined>>> = Default::default();
        let stop: std::sync::Arc<std::sync::atomic::AtomicBool> = Default::default();
        let (world, seen_here, stop_here, name) = (
            server.world.clone(),
            seen.clone(),
            stop.clone(),
            name.to_string(),
        );
        // The servers there now registered before the stand-in started: known before the
        // caller goes on to change what the API shows of them.
        let mut known: Vec<String> = tagged("server", &name)
            .into_iter()
            .filter(|s| s["Status"] == "ACTIVE")
            .filter_map(|s| s["ID"].as_str().map(str::to_string))
            .collect();
        let thread = std::thread::spawn(move || {
            while !stop_here.load(Ordering::Relaxed) {
                for s in tagged("server", &name) {
                    let id = s["ID"].as_str().unwrap_or_default().to_string();
                    let server_name = s["Name"].as_str().unwrap_or_default().to_string();
                    if s["Status"] != "ACTIVE" || known.contains(&id) {
                        continue;
                    }
                    known.push(id);
                    let mut world = world.lock().expect("world");
                    let control_plane = server_name.contains("-control-plane-");
                    let member = world.etcd_members.iter().any(|m| m.name == server_name);
                    let node = world.nodes.contains_key(&server_name);
                    if node && (member || !control_plane) {
                        continue; // registered before the stand-in started
                    }
                    let mut members: Vec<String> =
                        world.etcd_members.iter().map(|m| m.name.clone()).collect();
                    members.sort();
                    seen_here.lock().expect("seen").push(Rejoined {
                        name: server_name.clone(),
                        member,
                        node,
                        members,
                    });
                    world.register(&server_name, control_plane);
                    if control_plane {
                        world.kubeadm_marks_now();
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
        });
        Kubelets {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<Rejoined> {
        self.seen.lock().expect("seen").clone()
    }
}

impl Drop for Kubelets {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A cluster of three control planes and one worker, registered in a stand-in with their
/// etcd members, made by `up` through it.
struct HighlyAvailable {
    name: String,
    workspace: Workspace,
    server: crate::kube_standin::StandIn,
    api: String,
}

impl HighlyAvailable {
    fn up(prefix: &str) -> HighlyAvailable {
        use crate::kube_standin::{StandIn, World};
        let name = unique(prefix);
        let workspace = Workspace::new();
        workspace.write_cluster(&Self::text(&name, "m3.tiny"));
        let pki = crate::kube_standin::pki(&workspace);
        let mut world = World::default();
        for n in 1..=3 {
            world.register(&format!("{name}-control-plane-{n}"), true);
        }
        world.register(&format!("{name}-default-1"), false);
        let server = StandIn::of_cluster(&pki, world);
        let api = server.address.to_string();
        let cluster = HighlyAvailable {
            name,
            workspace,
            server,
            api,
        };
        success(&cluster.run_up());
        cluster
    }

    fn text(name: &str, control_plane_flavor: &str) -> String {
        cluster(name, 1, "").replacen(
            "[control_plane]\nflavor = \"m3.tiny\"\n",
            &format!(
                "[control_plane]\ncount = 3\napi_endpoint = \"vip\"\nflavor = \"{control_plane_flavor}\"\n"
            ),
            1,
        )
    }

    fn node(&self, n: &str) -> String {
        format!("{}-{n}", self.name)
    }

    fn run_up(&self) -> Output {
        flatstack(
            &self.workspace,
            &["up", "--api-address", self.api.as_str(), "--timeout", "3m"],
        )
    }

    /// The node Jobs the stand-in ran: Job, node and etcdctl's command without its flags.
    /// Each node Job run, by the name it has before its run's suffix (six hex digits, which
    /// every one must carry), node and command.
    fn node_jobs(&self) -> Vec<(String, String, String)> {
        let world = self.server.world.lock().expect("world");
        world
            .node_job_runs
            .iter()
            .map(|(job, node, command)| {
                let args: Vec<&str> = command
                    .iter()
                    .map(String::as_str)
                    .filter(|a| !a.starts_with("--"))
                    .collect();
                let (base, suffix) = job.rsplit_once('-').expect("a suffix");
                assert!(
                    suffix.len() == 6 && suffix.bytes().all(|b| b.is_ascii_hexdigit()),
                    "{job}"
                );
                (base.to_string(), node.clone(), args.join(" "))
            })
            .collect()
    }

    fn member_id(&self, node: &str) -> u64 {
        let world = self.server.world.lock().expect("world");
        world
            .etcd_members
            .iter()
            .find(|m| m.name == node)
            .expect("member")
            .id
    }

    fn members(&self) -> Vec<String> {
        let world = self.server.world.lock().expect("world");
        let mut names: Vec<String> = world.etcd_members.iter().map(|m| m.name.clone()).collect();
        names.sort();
        names
    }
}

/// A control plane of three that ran is deleted in the cloud. With the other two running,
/// `plan` shows its etcd member removed through one of them and its Node deleted before its
/// server is built again; `up` does exactly that (the member removed by a node Job running
/// etcdctl from the etcd image on a surviving control plane), and the new server joins as a
/// control plane, a new member.
#[test]
fn a_lost_control_plane_of_three_leaves_etcd_before_it_is_built_again_to_join() {
    let cluster = HighlyAvailable::up("rejoin");
    let _teardown = Teardown(&cluster.workspace);
    let kubelets = Kubelets::start(&cluster.server, &cluster.name);
    let (first, lost) = (
        cluster.node("control-plane-1"),
        cluster.node("control-plane-2"),
    );
    let old_member = cluster.member_id(&lost);

    cli("local-demo", &["server", "delete", "--wait", &lost]);
    let planned = success(&flatstack(
        &cluster.workspace,
        &["plan", "--api-address", cluster.api.as_str()],
    ));
    for line in [
        format!("> etcd member     {lost:<40} remove through {first}"),
        format!("> node            {lost:<40} delete its Node object"),
        format!("+ server          {lost:<40} m3.tiny"),
    ] {
        assert!(planned.contains(&line), "{line}\nin:\n{planned}");
    }
    let output = success(&cluster.run_up());
    assert!(
        output.contains(&format!(
            "removed etcd member {old_member:x} of {lost} through {first}; 2 member(s) left"
        )),
        "{output}"
    );
    let seen = kubelets.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (seen[0].name.as_str(), seen[0].member, seen[0].node),
        (lost.as_str(), false, false),
        "when its new server ran, neither etcd nor the API still listed it"
    );
    // Listed for `plan`, for `up`'s plan, and again just before the removal.
    let list = (
        "flatstack-etcd-members".to_string(),
        first.clone(),
        "etcdctl member list -w json".to_string(),
    );
    assert_eq!(
        cluster.node_jobs(),
        [
            list.clone(),
            list.clone(),
            list,
            (
                "flatstack-etcd-remove".to_string(),
                first.clone(),
                format!("etcdctl member remove {old_member:x}")
            ),
        ]
    );
    assert_eq!(
        cluster.members(),
        [first.clone(), lost.clone(), cluster.node("control-plane-3")]
    );
    assert_ne!(cluster.member_id(&lost), old_member, "a new member");
    {
        let world = cluster.server.world.lock().expect("world");
        assert!(world.node_job_pods.is_empty(), "node Jobs cleaned up");
        assert!(
            !world
                .objects
                .keys()
                .any(|p| p.starts_with("/apis/batch/v1/namespaces/kube-system/jobs/flatstack-")),
            "node Jobs deleted"
        );
        assert!(
            world
                .seen
                .iter()
                .any(|s| s.path == format!("/api/v1/namespaces/kube-system/pods/etcd-{first}")),
            "the Job's image is read from the etcd pod on the control plane it runs on"
        );
    }
    let config = user_data(&admin_view(&lost));
    let kubeadm = String::from_utf8(
        ignition_file(&config, "/etc/flatstack/kubeadm.yaml.in").expect("kubeadm config"),
    )
    .expect("UTF-8");
    assert!(
        kubeadm.contains("controlPlane:") && !kubeadm.contains("InitConfiguration"),
        "{kubeadm}"
    );
}

/// What the API shows is planning input on a cluster of three: a member of no control plane
/// (left by one removed outside flatstack) is removed, and a control plane whose member was
/// removed by hand, which can never start its etcd again, is replaced in place (drained, no
/// member left to remove, built again to join). It is the first control plane, the one etcd
/// would be asked through first: its Job finds no etcd pod there, and the next one answers.
/// `plan` shows both and `up` does them; then nothing is left to change.
#[test]
fn a_stray_etcd_member_is_removed_and_a_control_plane_without_one_rebuilt() {
    let cluster = HighlyAvailable::up("etcdview");
    let _teardown = Teardown(&cluster.workspace);
    let kubelets = Kubelets::start(&cluster.server, &cluster.name);
    let (first, second) = (
        cluster.node("control-plane-1"),
        cluster.node("control-plane-2"),
    );
    let stray = 0x5eed_u64;
    {
        let mut world = cluster.server.world.lock().expect("world");
        world.kubeadm_marks_now(); // as it did when each joined
        world.etcd_members.retain(|m| m.name != first);
        world.etcd_members.push(crate::kube_standin::Member {
            id: stray,
            name: "old-control-plane-9".into(),
            peer_url: "https://10.42.0.99:2380".into(),
        });
    }
    let planned = success(&flatstack(
        &cluster.workspace,
        &["plan", "--api-address", cluster.api.as_str()],
    ));
    for line in [
        format!(
            "> etcd member     {:<40} remove through {second}: of no control plane",
            "old-control-plane-9 (5eed)"
        ),
        format!("> drain           {first:<40} evict its pods"),
        format!("+ server          {first:<40} m3.tiny"),
    ] {
        assert!(planned.contains(&line), "{line}\nin:\n{planned}");
    }
    assert!(
        planned.contains(&format!(
            "- server          {first:<40} it was removed from etcd"
        )),
        "{planned}"
    );
    assert!(
        !planned.contains(&format!("> etcd member     {first}")),
        "no member of it to remove: {planned}"
    );

    let output = success(&cluster.run_up());
    assert!(
        output.contains(&format!(
            "removed etcd member 5eed, of no control plane, through {second}; 2 member(s) left"
        )),
        "{output}"
    );
    let seen = kubelets.seen();
    assert_eq!(
        seen.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        [first.as_str()],
        "only the control plane without a member was built again"
    );
    assert_eq!(
        cluster.members(),
        [first, second, cluster.node("control-plane-3")]
    );
    let again = success(&cluster.run_up());
    assert!(again.contains("nothing to change"), "{again}");
}

/// The control planes' flavor changes on a cluster of three: each is replaced in place, one at
/// a time (drained, its member removed through another, built again to join, a voting member
/// before the next), so two of three are members whenever one is rebuilt.
#[test]
fn a_control_plane_flavor_change_rolls_one_control_plane_at_a_time() {
    let cluster = HighlyAvailable::up("cproll");
    let _teardown = Teardown(&cluster.workspace);
    let kubelets = Kubelets::start(&cluster.server, &cluster.name);
    cluster
        .workspace
        .write_cluster(&HighlyAvailable::text(&cluster.name, "m3.small"));
    let planned = success(&flatstack(
        &cluster.workspace,
        &["plan", "--api-address", cluster.api.as_str()],
    ));
    assert!(
        planned.contains(&format!(
            "- server          {:<40} it runs flavor m3.tiny, the file asks for m3.small: replaced in place",
            cluster.node("control-plane-1")
        )),
        "{planned}"
    );
    success(&cluster.run_up());
    let seen = kubelets.seen();
    let names: Vec<&str> = seen.iter().map(|r| r.name.as_str()).collect();
    let cps: Vec<String> = (1..=3)
        .map(|n| cluster.node(&format!("control-plane-{n}")))
        .collect();
    assert_eq!(
        names,
        cps.iter().map(String::as_str).collect::<Vec<_>>(),
        "one after another"
    );
    for rejoined in &seen {
        assert!(!rejoined.member && !rejoined.node, "{rejoined:?}");
        let others: Vec<String> = cps
            .iter()
            .filter(|c| **c != rejoined.name)
            .cloned()
            .collect();
        assert_eq!(
            rejoined.members, others,
            "the two others were members while it was rebuilt"
        );
    }
    for cp in &cps {
        let server = cli("local-demo", &["server", "show", cp, "-f", "json"]);
        assert_eq!(server["flavor"]["name"], "m3.small", "{cp}");
    }
    assert_eq!(cluster.members(), cps);
    let again = success(&cluster.run_up());
    assert!(again.contains("nothing to change"), "{again}");
}

/// `status` on a cluster of three: each control plane's etcd membership (read by node Jobs on
/// a Ready control plane, which it deletes) and the control plane kube-vip's Lease names as
/// holding the API's address, as text and as JSON.
#[test]
fn status_shows_each_control_planes_etcd_membership_and_the_addresss_holder() {
    let cluster = HighlyAvailable::up("hastatus");
    let _teardown = Teardown(&cluster.workspace);
    let (first, second) = (
        cluster.node("control-plane-1"),
        cluster.node("control-plane-2"),
    );
    cluster.server.world.lock().expect("world").apply_object(
        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/plndr-cp-lock",
        &serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "plndr-cp-lock", "namespace": "kube-system"},
            "spec": {"holderIdentity": second, "leaseDurationSeconds": 15},
        }),
        "kube-vip",
    );
    let status = ["status", "--api-address", cluster.api.as_str()];
    let text = success(&flatstack(&cluster.workspace, &status));
    let row = |name: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(name) && l.contains(" leader")
                    || l.starts_with(name) && l.contains(" voting")
            })
            .unwrap_or_default()
            .to_string()
    };
    assert!(text.contains("CONTROL PLANE"), "{text}");
    assert!(row(&first).contains(" leader "), "{text}");
    assert!(row(&second).contains(" voting "), "{text}");
    assert!(
        text.contains(&format!("the API's address is held by {second} (kube-vip)")),
        "{text}"
    );
    let json: Value = serde_json::from_str(&success(&flatstack(
        &cluster.workspace,
        &[&status[..], &["--output", "json"]].concat(),
    )))
    .expect("JSON");
    let etcd: Vec<(String, String)> = json["control_planes"]["etcd"]
        .as_array()
        .expect("etcd rows")
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default().to_string(),
                r["etcd"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        etcd,
        [
            (first.clone(), "leader".to_string()),
            (second.clone(), "voting".to_string()),
            (cluster.node("control-plane-3"), "voting".to_string()),
        ]
    );
    assert_eq!(
        json["control_planes"]["api_address_holder"],
        second.as_str()
    );
    assert_eq!(json["nodes"].as_array().map(Vec::len), Some(4), "{json}");
    assert!(json["resources"].as_array().is_some_and(|r| {
        r.iter()
            .any(|r| r["kind"] == "port" && r["name"] == format!("{}-api", cluster.name).as_str())
    }));
    let world = cluster.server.world.lock().expect("world");
    assert!(
        world.node_job_pods.is_empty(),
        "status leaves no node Job behind"
    );
}

/// Three control planes behind an Octavia load balancer, the default where the catalog has
/// Octavia, on the local OpenStack (whose Octavia validates `vip_port_id` against the real
/// Neutron, with no-op amphorae), the `openstack` CLI as witness: the load balancer on the
/// endpoint's port with the floating IP, TCP listeners on 6443, 80 and 443 with hour-long
/// data timeouts and `allowed_cidrs`, a pool of the three control planes with an HTTPS `/readyz`
/// monitor; no allowed pairs, no kube-vip; a re-run changes nothing; a create whose answer was
/// lost and a killed run converge with one load balancer; `down` leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_control_planes_behind_an_octavia_load_balancer() {
    use crate::proxy::{Fault, standard_proxy};
    let proxy = standard_proxy().await;
    let name = unique("halb");
    let workspace = Workspace::new();
    let clouds = workspace.path("clouds.yaml");
    proxy.write_clouds_yaml(&clouds);
    workspace.write_cluster(
        &cluster(&name, 1, "[access]\napi_cidrs = [\"198.51.100.0/24\"]\n")
            .replace("cloud = \"local-demo\"", "cloud = \"faulty\"")
            .replacen("[control_plane]\n", "[control_plane]\ncount = 3\n", 1),
    );
    let run = |args: &'static [&'static str]| through(&workspace, &clouds, args);
    let _teardown = RunOnDrop(run(&["down", "--yes"]));
    let planned = run(&["plan", "--provision-only"]).output().expect("plan");
    let planned = success(&planned);
    assert!(
        planned.contains("API endpoint: load-balancer (the cloud's catalog has Octavia: "),
        "{planned}"
    );
    assert!(
        planned.contains(&format!(
            "+ load balancer   {:<40} amphora, TCP 6443, 80, 443 to 3 control planes",
            format!("{name}-api")
        )),
        "{planned}"
    );
    // The create's answer is lost once, and the run is killed while it creates the load
    // balancer.
    proxy.inject("POST", "/v2/lbaas/loadbalancers", Fault::DropAfter, 1);
    let mut first = run(&["up", "--provision-only"]);
    first.stdout(std::process::Stdio::piped());
    let mut first = first.spawn().expect("start up");
    let printed = first.stdout.take().expect("stdout");
    let reached = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(printed)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("creating load balancer"))
    })
    .await
    .expect("join");
    assert!(reached, "the first run never created the load balancer");
    let _ = first.kill();
    let _ = first.wait();
    // What the killed run had sent lands (a server, the load balancer) before anyone looks
    // again, as it would before a person runs `up` again; otherwise the next run can race it
    // and leave a duplicate for the run after.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let mut second = run(&["up", "--provision-only"]);
    let output = tokio::task::spawn_blocking(move || second.output())
        .await
        .expect("join")
        .expect("run");
    assert!(
        output.status.success(),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );

    let balancers = cli(
        "local-demo",
        &[
            "loadbalancer",
            "list",
            "--name",
            &format!("{name}-api"),
            "-f",
            "json",
        ],
    );
    assert_eq!(
        balancers.as_array().map(Vec::len),
        Some(1),
        "one load balancer: {balancers}"
    );
    let balancer = cli(
        "local-demo",
        &["loadbalancer", "show", &format!("{name}-api"), "-f", "json"],
    );
    let endpoint = cli(
        "local-demo",
        &["port", "show", &format!("{name}-api"), "-f", "json"],
    );
    assert_eq!(balancer["vip_port_id"], endpoint["id"], "{balancer}");
    assert_eq!(balancer["vip_address"], "10.42.0.10");
    assert_eq!(balancer["provisioning_status"], "ACTIVE");
    assert_eq!(balancer["provider"], "amphora");
    let floating = tagged("floating ip", &name);
    assert_eq!(floating[0]["Port"], endpoint["id"], "{floating:?}");

    let api = cli(
        "local-demo",
        &[
            "loadbalancer",
            "listener",
            "show",
            &format!("{name}-api-6443"),
            "-f",
            "json",
        ],
    );
    assert_eq!(api["protocol"], "TCP");
    assert_eq!(api["protocol_port"], 6443);
    assert_eq!(api["timeout_client_data"], 3_600_000);
    assert_eq!(api["timeout_member_data"], 3_600_000);
    // The router's external address too: nodes and pods that reach the floating IP come back
    // in from it.
    let router = cli(
        "local-demo",
        &["router", "show", &format!("{name}-router"), "-f", "json"],
    );
    let router_address = router["external_gateway_info"]["external_fixed_ips"][0]["ip_address"]
        .as_str()
        .expect("the router's external address")
        .to_string();
    let allowed = api["allowed_cidrs"].to_string();
    assert!(
        allowed.contains("198.51.100.0/24")
            && allowed.contains("10.42.0.0/24")
            && allowed.contains(&format!("{router_address}/32")),
        "{api}"
    );
    for port in ["80", "443"] {
        let listener = cli(
            "local-demo",
            &[
                "loadbalancer",
                "listener",
                "show",
                &format!("{name}-api-{port}"),
                "-f",
                "json",
            ],
        );
        assert_eq!(listener["protocol_port"].to_string(), port);
    }
    let pool = cli(
        "local-demo",
        &[
            "loadbalancer",
            "pool",
            "show",
            &format!("{name}-api-6443"),
            "-f",
            "json",
        ],
    );
    assert_eq!(pool["lb_algorithm"], "ROUND_ROBIN");
    let monitor_id = pool["healthmonitor_id"]
        .as_str()
        .expect("a monitor")
        .to_string();
    let monitor = cli(
        "local-demo",
        &[
            "loadbalancer",
            "healthmonitor",
            "show",
            &monitor_id,
            "-f",
            "json",
        ],
    );
    assert_eq!(monitor["type"], "HTTPS");
    assert_eq!(monitor["url_path"], "/readyz");
    assert_eq!(monitor["expected_codes"], "200");
    let members = cli(
        "local-demo",
        &[
            "loadbalancer",
            "member",
            "list",
            &format!("{name}-api-6443"),
            "-f",
            "json",
        ],
    );
    let mut addresses: Vec<String> = members
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["address"].as_str().map(str::to_string))
        .collect();
    addresses.sort();
    assert_eq!(addresses, ["10.42.0.11", "10.42.0.12", "10.42.0.13"]);
    for n in 1..=3 {
        let server = format!("{name}-control-plane-{n}");
        let port = cli("local-demo", &["port", "show", &server, "-f", "json"]);
        assert_eq!(allowed_addresses(&port), Vec::<String>::new(), "{server}");
        let config = user_data(&admin_view(&server));
        assert!(
            ignition_file(&config, "/etc/flatstack/kube-vip.yaml.in").is_none(),
            "{server}"
        );
    }
    let again = run(&["up", "--provision-only"]).output().expect("run");
    assert!(
        stdout(&again).contains("nothing to change (0 changes made)"),
        "{}",
        stdout(&again)
    );
    assert!(proxy.injected() >= 1, "the fault was hit");
    let status = success(
        &run(&["status", "--api-address", NO_API])
            .output()
            .expect("status"),
    );
    for n in 1..=3 {
        assert!(
            status.contains(&format!(
                "the API's load balancer reaches control plane {name}-control-plane-{n} (10.42.0.{}): ",
                10 + n
            )),
            "{status}"
        );
    }

    // Changed by hand, and the file narrows who may reach the API: `up` puts it back in
    // shape, one change at a time, without making it again. A member of 6443 deleted, the 80
    // listener deleted (its pool left unused), the 443 pool's monitor deleted.
    let lb = format!("{name}-api");
    let member = members
        .as_array()
        .and_then(|m| m.first())
        .and_then(|m| m["id"].as_str())
        .expect("a member")
        .to_string();
    let pool_443 = cli(
        "local-demo",
        &[
            "loadbalancer",
            "pool",
            "show",
            &format!("{lb}-443"),
            "-f",
            "json",
        ],
    );
    let monitor_443 = pool_443["healthmonitor_id"].as_str().expect("a monitor");
    for change in [
        vec![
            "member",
            "delete",
            "--wait",
            &format!("{lb}-6443"),
            member.as_str(),
        ],
        vec!["listener", "delete", "--wait", &format!("{lb}-80")],
        vec!["healthmonitor", "delete", "--wait", monitor_443],
    ] {
        cli("local-demo", &[&["loadbalancer"], &change[..]].concat());
    }
    workspace.write_cluster(
        &cluster(&name, 1, "[access]\napi_cidrs = [\"198.51.100.0/25\"]\n")
            .replace("cloud = \"local-demo\"", "cloud = \"faulty\"")
            .replacen("[control_plane]\n", "[control_plane]\ncount = 3\n", 1),
    );
    let planned = success(&run(&["plan", "--provision-only"]).output().expect("plan"));
    assert!(
        planned.contains(&format!(
            "~ load balancer   {lb:<40} remove a pool of no listener; listener 6443: who may connect, timeouts; members 6443; add listener 80; add monitor 443"
        )),
        "{planned}"
    );
    let repaired = run(&["up", "--provision-only"]).output().expect("up");
    assert!(repaired.status.success(), "{}", stderr(&repaired));
    let api = cli(
        "local-demo",
        &[
            "loadbalancer",
            "listener",
            "show",
            &format!("{lb}-6443"),
            "-f",
            "json",
        ],
    );
    let allowed = api["allowed_cidrs"].to_string();
    assert!(
        allowed.contains("198.51.100.0/25")
            && !allowed.contains("198.51.100.0/24")
            && allowed.contains(&format!("{router_address}/32")),
        "{api}"
    );
    assert_eq!(api["timeout_client_data"], 3_600_000);
    for port in [6443, 80, 443] {
        let pool = cli(
            "local-demo",
            &[
                "loadbalancer",
                "pool",
                "show",
                &format!("{lb}-{port}"),
                "-f",
                "json",
            ],
        );
        assert!(pool["healthmonitor_id"].is_string(), "{pool}");
        let listener = cli(
            "local-demo",
            &[
                "loadbalancer",
                "listener",
                "show",
                &format!("{lb}-{port}"),
                "-f",
                "json",
            ],
        );
        assert_eq!(listener["default_pool_id"], pool["id"], "{listener}");
        let members = cli(
            "local-demo",
            &[
                "loadbalancer",
                "member",
                "list",
                &format!("{lb}-{port}"),
                "-f",
                "json",
            ],
        );
        let mut addresses: Vec<(String, u64)> = members
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                Some((
                    m["address"].as_str()?.to_string(),
                    m["protocol_port"].as_u64()?,
                ))
            })
            .collect();
        addresses.sort();
        let wanted: Vec<(String, u64)> = (11..=13)
            .map(|host| (format!("10.42.0.{host}"), port))
            .collect();
        assert_eq!(addresses, wanted, "{port}");
    }
    let pools = cli(
        "local-demo",
        &[
            "loadbalancer",
            "pool",
            "list",
            "--loadbalancer",
            &lb,
            "-f",
            "json",
        ],
    );
    assert_eq!(pools.as_array().map(Vec::len), Some(3), "{pools}");
    let again = run(&["up", "--provision-only"]).output().expect("run");
    assert!(
        stdout(&again).contains("nothing to change (0 changes made)"),
        "{}",
        stdout(&again)
    );

    let down = run(&["down", "--yes"]).output().expect("down");
    assert!(down.status.success(), "{}", stderr(&down));
    assert_nothing_left(&name);
    let left = cli(
        "local-demo",
        &[
            "loadbalancer",
            "list",
            "--name",
            &format!("{name}-api"),
            "-f",
            "json",
        ],
    );
    assert_eq!(left.as_array().map(Vec::len), Some(0), "{left}");
}
