//! The engine on the local OpenStack: `up` runs exactly the steps `plan` shows, for every
//! kind of change, and converges after being killed the moment any kind of create or delete
//! was answered (watched in `-v`'s call log, never by timing).

use std::io::BufRead;
use std::process::{Output, Stdio};

use serde_json::Value;

use crate::openstack::{cli, cli_raw, unique};
use crate::support::*;
use crate::up::{Teardown, assert_nothing_left, cluster, command, flatstack, tagged};

fn json(output: &Output) -> Value {
    let text = success(output);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// `plan --output json`, then `up --output json`: the same steps; then a plan with none.
fn up_runs_the_plan(workspace: &Workspace, change: &str) -> Vec<Value> {
    let planned = json(&flatstack(
        workspace,
        &["plan", "--provision-only", "--output", "json"],
    ))["actions"]
        .clone();
    let ran = json(&flatstack(
        workspace,
        &["up", "--provision-only", "--output", "json"],
    ));
    assert_eq!(
        planned, ran["steps"],
        "{change}: planned\n{planned:#}\nran\n{ran:#}"
    );
    let after = json(&flatstack(
        workspace,
        &["plan", "--provision-only", "--output", "json"],
    ));
    assert_eq!(after["actions"], Value::Array(vec![]), "{change}: after up");
    planned.as_array().cloned().unwrap_or_default()
}

/// `kind name` of every step, with its sign.
fn described(steps: &[Value]) -> Vec<String> {
    steps
        .iter()
        .map(|s| {
            format!(
                "{} {} {}",
                s["action"].as_str().unwrap_or(""),
                s["kind"].as_str().unwrap_or(""),
                s["name"].as_str().unwrap_or("")
            )
        })
        .collect()
}

#[test]
fn up_runs_exactly_the_planned_steps_for_every_kind_of_change() {
    let name = unique("exact");
    let workspace = Workspace::new();
    workspace.write_cluster(&cluster(&name, 1, ""));
    let _teardown = Teardown(&workspace);

    let created = up_runs_the_plan(&workspace, "new cluster");
    assert!(created.len() > 15, "{created:#?}");

    workspace.write_cluster(&cluster(&name, 3, ""));
    let grown = described(&up_runs_the_plan(&workspace, "scale up"));
    for step in [
        format!("create port {name}-default-3"),
        format!("create server {name}-default-2"),
        format!("run wait {name}-default-3"),
    ] {
        assert!(grown.contains(&step), "{step} in {grown:#?}");
    }

    // A rule deleted by hand.
    let group = format!("{name}-control-plane");
    let rules = cli(
        "local-demo",
        &["security", "group", "rule", "list", &group, "-f", "json"],
    );
    let api_rule = rules
        .as_array()
        .and_then(|r| r.iter().find(|r| r["Port Range"] == "6443:6443"))
        .and_then(|r| r["ID"].as_str())
        .expect("the API rule")
        .to_string();
    cli(
        "local-demo",
        &["security", "group", "rule", "delete", &api_rule],
    );
    let repaired = up_runs_the_plan(&workspace, "rule drift");
    assert_eq!(described(&repaired), [format!("create rule {group}")]);
    assert_eq!(repaired[0]["detail"], "tcp 6443 from 0.0.0.0/0 (IPv4)");

    // A narrowed CIDR: new rules in, the wider ones out.
    workspace.write_cluster(&cluster(
        &name,
        3,
        "[ingress]\nhttp_cidrs = [\"198.51.100.0/24\"]",
    ));
    let narrowed = described(&up_runs_the_plan(&workspace, "narrowed CIDR"));
    assert_eq!(narrowed.len(), 4, "{narrowed:#?}");

    // The port of a running server deleted by hand (Neutron's policy leaves that to an
    // admin): made again, attached.
    let port = cli(
        "local-demo",
        &["port", "show", &format!("{name}-default-2"), "-f", "json"],
    );
    cli(
        "local-admin",
        &["port", "delete", port["id"].as_str().expect("port id")],
    );
    let ported = described(&up_runs_the_plan(&workspace, "deleted port"));
    assert_eq!(
        ported,
        [
            format!("create port {name}-default-2"),
            format!("update server {name}-default-2")
        ]
    );
    let interfaces = cli(
        "local-demo",
        &[
            "port",
            "list",
            "--server",
            &format!("{name}-default-2"),
            "-f",
            "json",
        ],
    );
    assert_eq!(interfaces.as_array().map(Vec::len), Some(1), "{interfaces}");

    // A subnet that hands out every address, as flatstack made them before it kept the fixed
    // ones out: narrowed in place, though nodes already hold addresses on it.
    let subnet = format!("{name}-subnet");
    let set = cli_raw(
        "local-demo",
        &[
            "subnet",
            "set",
            "--no-allocation-pool",
            "--allocation-pool",
            "start=10.42.0.2,end=10.42.0.254",
            &subnet,
        ],
    );
    assert!(set.status.success(), "{set:?}");
    let narrowed_pool = up_runs_the_plan(&workspace, "subnet pool");
    assert_eq!(
        described(&narrowed_pool),
        [format!("update subnet {subnet}")]
    );
    let shown = cli("local-demo", &["subnet", "show", &subnet, "-f", "json"]);
    assert_eq!(
        shown["allocation_pools"],
        serde_json::json!([{ "start": "10.42.0.17", "end": "10.42.0.254" }]),
        "{shown}"
    );

    // A detached floating IP.
    let fip = tagged("floating ip", &name)[0]["Floating IP Address"]
        .as_str()
        .expect("address")
        .to_string();
    cli("local-demo", &["floating", "ip", "unset", "--port", &fip]);
    let attached = described(&up_runs_the_plan(&workspace, "detached floating IP"));
    assert_eq!(attached, [format!("update floating IP {fip}")]);

    workspace.write_cluster(&cluster(
        &name,
        1,
        "[ingress]\nhttp_cidrs = [\"198.51.100.0/24\"]",
    ));
    let shrunk = described(&up_runs_the_plan(&workspace, "scale down"));
    assert_eq!(shrunk.len(), 4, "{shrunk:#?}");

    success(&flatstack(&workspace, &["down", "--yes"]));
    assert_nothing_left(&name);
}

/// Runs `up -v` (or `down -v`) and SIGKILLs it the moment a call matching `call` is answered
/// with success. Returns whether the call was seen.
fn kill_when_answered(workspace: &Workspace, args: &[&str], call: &(&str, &str)) -> bool {
    let verbose: Vec<&str> = std::iter::once("-v").chain(args.iter().copied()).collect();
    let mut child = command(workspace, &verbose)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("flatstack");
    let stderr = child.stderr.take().expect("stderr");
    let (method, path) = call;
    let mut seen = false;
    for line in std::io::BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
    {
        let answered =
            line.contains(&format!(" {method} ")) && line.contains(path) && line.contains("-> 2");
        if answered {
            let _ = child.kill();
            seen = true;
            break;
        }
    }
    let _ = child.wait();
    seen
}

/// Every create `up` makes, as it shows in the call log.
const CREATES: [(&str, &str); 11] = [
    ("POST", "/networks ->"),
    ("POST", "/subnets ->"),
    ("POST", "/routers ->"),
    ("PUT", "/tags ->"),
    ("PUT", "/add_router_interface ->"),
    ("POST", "/security-groups ->"),
    ("POST", "/security-group-rules ->"),
    ("POST", "/os-server-groups ->"),
    ("POST", "/ports ->"),
    ("POST", "/floatingips ->"),
    ("POST", "/servers ->"),
];

/// Exactly one of every resource of a 1+1 cluster, each tagged where taggable.
fn assert_one_of_everything(name: &str, at: &str) {
    for (kind, wanted) in [
        ("network", 1),
        ("subnet", 1),
        ("router", 1),
        ("security group", 2),
        ("port", 2),
        ("floating ip", 1),
        ("server", 2),
    ] {
        assert_eq!(
            tagged(kind, name).len(),
            wanted,
            "{kind} after a kill at {at}"
        );
    }
    // Nothing of the cluster's names without its tag.
    let ports = cli("local-demo", &["port", "list", "-f", "json", "-c", "Name"]);
    let named = ports
        .as_array()
        .map(|p| {
            p.iter()
                .filter(|p| p["Name"].as_str().is_some_and(|n| n.starts_with(name)))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(named, 2, "ports named {name}-* after a kill at {at}");
    let networks = cli("local-demo", &["network", "list", "-f", "json"]);
    let named = networks
        .as_array()
        .map(|n| {
            n.iter()
                .filter(|n| n["Name"] == format!("{name}-net").as_str())
                .count()
        })
        .unwrap_or(0);
    assert_eq!(named, 1, "networks after a kill at {at}");
    let groups = cli("local-demo", &["server", "group", "list", "-f", "json"]);
    let named = groups
        .as_array()
        .map(|g| {
            g.iter()
                .filter(|g| g["Name"] == format!("{name}-control-plane").as_str())
                .count()
        })
        .unwrap_or(0);
    assert_eq!(named, 1, "server groups after a kill at {at}");
}

/// `plan --provision-only` has nothing left to do after a kill at `at`.
fn assert_nothing_to_plan(workspace: &Workspace, at: &str) {
    let plan = success(&flatstack(workspace, &["plan", "--provision-only"]));
    assert!(
        plan.contains("nothing to change"),
        "after a kill at {at}:\n{plan}"
    );
}

#[test]
fn up_killed_the_moment_any_create_is_answered_converges_with_one_of_everything() {
    for call in CREATES {
        let name = unique("kill");
        let workspace = Workspace::new();
        workspace.write_cluster(&cluster(&name, 1, ""));
        let _teardown = Teardown(&workspace);
        let at = format!("{} {}", call.0, call.1.trim_end_matches(" ->"));
        assert!(
            kill_when_answered(&workspace, &["up", "--provision-only"], &call),
            "{at} never happened"
        );
        // Requests the killed process had already sent are still being carried out by the
        // cloud; one that lands after the next run looked is a duplicate the run after removes
        // (see the two-writers test). Here the next run starts once they have landed.
        std::thread::sleep(std::time::Duration::from_secs(3));
        success(&flatstack(&workspace, &["up", "--provision-only"]));
        assert_one_of_everything(&name, &at);
        assert_nothing_to_plan(&workspace, &at);
        success(&flatstack(&workspace, &["down", "--yes"]));
        assert_nothing_left(&name);
    }
}

/// Every kind of delete `down` makes.
const DELETES: [(&str, &str); 9] = [
    ("DELETE", "/servers/"),
    ("DELETE", "/floatingips/"),
    ("DELETE", "/ports/"),
    ("PUT", "/remove_router_interface ->"),
    ("DELETE", "/routers/"),
    ("DELETE", "/subnets/"),
    ("DELETE", "/networks/"),
    ("DELETE", "/security-groups/"),
    ("DELETE", "/os-server-groups/"),
];

#[test]
fn down_killed_the_moment_any_delete_is_answered_finishes_when_run_again() {
    for call in DELETES {
        let name = unique("undo");
        let workspace = Workspace::new();
        workspace.write_cluster(&cluster(&name, 1, ""));
        let _teardown = Teardown(&workspace);
        success(&flatstack(&workspace, &["up", "--provision-only"]));
        let at = format!("{} {}", call.0, call.1);
        assert!(
            kill_when_answered(&workspace, &["down", "--yes"], &call),
            "{at} never happened"
        );
        success(&flatstack(&workspace, &["down", "--yes"]));
        assert_nothing_left(&name);
    }
}

/// Copies a state directory, modes included.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create");
    for entry in std::fs::read_dir(from).expect("read") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "lock" {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
    let mode = std::fs::metadata(from).expect("mode").permissions();
    std::fs::set_permissions(to, mode).expect("set mode");
}

/// Two workstations with copies of one state directory run `up` at the same moment: each
/// holds only its own lock, and both build the cluster. The next `up` keeps the side the API
/// address uses and removes every duplicate.
///
/// The race is made certain, not left to timing: both writers reach the network API through
/// a proxy that holds each create for a few seconds, so each has read the cloud before the
/// other's first network, router or group exists. (Left to chance, the later writer may read
/// the other's network before its subnet, and its own subnet on that network is refused as
/// overlapping: a clear error, but then there are no duplicates to remove.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_of_two_writers_at_once_are_removed_by_the_next_up() {
    use crate::proxy::{Fault, standard_proxy};
    let proxy = standard_proxy().await;
    let name = unique("twin");
    let first = Workspace::new();
    first.write_cluster(&cluster(&name, 1, ""));
    let _teardown = Teardown(&first);
    success(&first.render(&["--endpoint", "203.0.113.9"]));
    let second = Workspace::new();
    second.write_cluster(&cluster(&name, 1, ""));
    copy_dir(&first.state_dir(), &second.state_dir());

    // The proxied cloud keeps the name the cluster file gives.
    let clouds = first.path("clouds-through-proxy.yaml");
    proxy.write_clouds_yaml(&clouds);
    let text = std::fs::read_to_string(&clouds).expect("read clouds.yaml");
    std::fs::write(&clouds, text.replace("  faulty:", "  local-demo:")).expect("write");
    proxy.inject(
        "POST",
        "/v2.0/",
        Fault::Delay(std::time::Duration::from_secs(6)),
        usize::MAX,
    );
    let start = |workspace: &Workspace| {
        command(workspace, &["up", "--provision-only"])
            .env("OS_CLIENT_CONFIG_FILE", &clouds)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start flatstack")
    };
    let (one, two) = (start(&first), start(&second));
    let (one, two) = tokio::task::spawn_blocking(move || {
        (
            one.wait_with_output().expect("first up"),
            two.wait_with_output().expect("second up"),
        )
    })
    .await
    .expect("join");
    proxy.clear();
    // Each writer made the whole cluster: two networks, and every server twice.
    let (networks, servers) = (
        tagged("network", &name).len(),
        tagged("server", &name).len(),
    );
    assert!(
        networks == 2 && servers == 4,
        "not two of everything ({networks} networks, {servers} servers):\n{}{}\n{}{}",
        stdout(&one),
        stderr(&one),
        stdout(&two),
        stderr(&two)
    );
    // Both writers may have given one port to their servers: Nova binds it to one, and the
    // other's build fails and is retried for a while before it settles in ERROR. Once
    // settled, such a failed build is rebuilt by the next `up` like any other.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while tagged("server", &name)
        .iter()
        .any(|s| s["Status"] == "BUILD")
    {
        assert!(std::time::Instant::now() < deadline, "builds never settled");
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    let plan = success(&flatstack(&first, &["plan", "--provision-only"]));
    assert!(plan.contains("duplicate"), "{plan}");
    success(&flatstack(&first, &["up", "--provision-only"]));
    assert_one_of_everything(&name, "two writers at once");
    assert_nothing_to_plan(&first, "two writers at once");
    success(&flatstack(&first, &["down", "--yes"]));
    assert_nothing_left(&name);
}

/// The cluster's subnet made by someone else between `up`'s look and its create (here by
/// hand, while a proxy holds `up`'s create): Neutron refuses `up`'s as overlapping, and `up`
/// takes the one on its network with its name and range, tags it, and carries on; one subnet,
/// nothing left to plan. (CI saw this when the answer to a create was lost with a killed
/// neutron-server, and with two writers at once.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subnet_made_meanwhile_on_the_clusters_network_is_taken() {
    use crate::proxy::{Fault, standard_proxy};
    let proxy = standard_proxy().await;
    let name = unique("meanwhile");
    let workspace = Workspace::new();
    workspace.write_cluster(&cluster(&name, 1, ""));
    let _teardown = Teardown(&workspace);
    let clouds = workspace.path("clouds-through-proxy.yaml");
    proxy.write_clouds_yaml(&clouds);
    let text = std::fs::read_to_string(&clouds).expect("read clouds.yaml");
    std::fs::write(&clouds, text.replace("  faulty:", "  local-demo:")).expect("write");
    proxy.inject(
        "POST",
        "/v2.0/subnets",
        Fault::Delay(std::time::Duration::from_secs(15)),
        1,
    );
    let up = command(&workspace, &["up", "--provision-only"])
        .env("OS_CLIENT_CONFIG_FILE", &clouds)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start flatstack");
    // Once the network is there, the subnet `up` waits to create is made by hand.
    let network = format!("{name}-net");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while tagged("network", &name).is_empty() {
        assert!(std::time::Instant::now() < deadline, "no network");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    cli(
        "local-demo",
        &[
            "subnet",
            "create",
            "--network",
            &network,
            "--subnet-range",
            "10.42.0.0/24",
            "--allocation-pool",
            "start=10.42.0.17,end=10.42.0.254",
            "-f",
            "json",
            &format!("{name}-subnet"),
        ],
    );
    let output = tokio::task::spawn_blocking(move || up.wait_with_output())
        .await
        .expect("join")
        .expect("up");
    proxy.clear();
    assert!(
        output.status.success(),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    assert_eq!(proxy.injected(), 1, "the create was held");
    assert_one_of_everything(&name, "a subnet made meanwhile");
    assert_nothing_to_plan(&workspace, "a subnet made meanwhile");
    success(&flatstack(&workspace, &["down", "--yes"]));
    assert_nothing_left(&name);
}

/// The names and flavors of the cluster's servers, sorted by name.
fn server_flavors(name: &str) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = tagged("server", name)
        .iter()
        .map(|s| {
            let field = |key: &str| s[key].as_str().unwrap_or_default().to_string();
            (field("Name"), field("Flavor"))
        })
        .collect();
    found.sort();
    found
}

/// A pool's rolling replacement killed the moment a new server, an old server's deletion or
/// an old port's deletion was answered: the next `up` finishes it, with the pool at its
/// count, every worker on the new flavor, one port per server, and nothing left to plan.
#[test]
fn a_rolling_replacement_killed_at_each_kind_of_step_is_finished_by_the_next_up() {
    let name = unique("rekill");
    let workspace = Workspace::new();
    workspace.write_cluster(&cluster(&name, 2, ""));
    let _teardown = Teardown(&workspace);
    success(&flatstack(&workspace, &["up", "--provision-only"]));
    // Each round changes the pool's flavor back or forth and kills at one kind of step.
    for (round, call) in [
        ("POST", "/servers ->"),
        ("DELETE", "/servers/"),
        ("DELETE", "/ports/"),
    ]
    .iter()
    .enumerate()
    {
        let flavor = ["m3.small", "m3.tiny"][round % 2];
        workspace.write_cluster(&cluster(&name, 2, "").replace(
            "count = 2\nflavor = \"m3.tiny\"",
            &format!("count = 2\nflavor = \"{flavor}\""),
        ));
        let at = format!(
            "{} {} (to {flavor})",
            call.0,
            call.1.trim_end_matches(" ->")
        );
        assert!(
            kill_when_answered(&workspace, &["up", "--provision-only"], call),
            "{at} never happened"
        );
        std::thread::sleep(std::time::Duration::from_secs(3));
        success(&flatstack(&workspace, &["up", "--provision-only"]));
        let servers = server_flavors(&name);
        let workers: Vec<&(String, String)> = servers
            .iter()
            .filter(|(n, _)| n.starts_with(&format!("{name}-default-")))
            .collect();
        assert_eq!(servers.len(), 3, "after a kill at {at}: {servers:?}");
        assert_eq!(workers.len(), 2, "after a kill at {at}: {servers:?}");
        assert!(
            workers.iter().all(|(_, f)| f == flavor),
            "after a kill at {at}: {servers:?}"
        );
        let ports: Vec<String> = tagged("port", &name)
            .iter()
            .map(|p| p["Name"].as_str().unwrap_or_default().to_string())
            .collect();
        let mut names: Vec<String> = servers.iter().map(|(n, _)| n.clone()).collect();
        let mut port_names = ports.clone();
        names.sort();
        port_names.sort();
        assert_eq!(
            port_names, names,
            "one port per server after a kill at {at}"
        );
        assert_nothing_to_plan(&workspace, &at);
    }
    success(&flatstack(&workspace, &["down", "--yes"]));
    assert_nothing_left(&name);
}
