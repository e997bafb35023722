//! `flatstack plan`, `up --provision-only` and `down` end to end on the local OpenStack, with
//! the `openstack` CLI confirming every resource, its tags and the user_data servers got.

use std::process::{Command, Output};

use serde_json::Value;

use crate::openstack::{cli, cli_raw, clouds_yaml, unique};
use crate::support::*;

fn cluster(name: &str, workers: u32, extra: &str) -> String {
    format!(
        r#"name = "{name}"
cloud = "local-demo"
[kubernetes]
version = "1.33.2"
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

fn flatstack(workspace: &Workspace, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flatstack"))
        .current_dir(workspace.dir.path())
        .env("OS_CLIENT_CONFIG_FILE", clouds_yaml())
        .env_remove("OS_CLOUD")
        .env("FLATSTACK_STATE_DIR", workspace.state_dir())
        .arg("--file")
        .arg(workspace.cluster_file())
        .args(args)
        .output()
        .expect("run flatstack")
}

fn tagged(kind: &str, name: &str) -> Vec<Value> {
    let tag = format!("flatstack:cluster={name}");
    let mut args: Vec<&str> = kind.split(' ').collect();
    args.extend(["list", "--tags", tag.as_str(), "-f", "json"]);
    cli("local-demo", &args)
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn servers(name: &str) -> Vec<String> {
    let mut names: Vec<String> = tagged("server", name)
        .iter()
        .filter_map(|s| s["Name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

fn assert_nothing_left(name: &str) {
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

/// Runs `flatstack down --yes` when a test ends, passed or failed, so no run leaks resources
/// into the shared local cloud.
struct Teardown<'a>(&'a Workspace);

impl Drop for Teardown<'_> {
    fn drop(&mut self) {
        let _ = flatstack(self.0, &["down", "--yes"]);
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
    let creates = plan["actions"].as_array().expect("actions").len();
    assert_eq!(creates, 13, "{plan}");
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

    // Each server's user_data is exactly what `render` writes for it with the same endpoint.
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
        assert!(
            user_data == rendered,
            "user_data of {node} differs from `flatstack render`"
        );
        assert!(
            shown["tags"]
                .to_string()
                .contains(&format!("flatstack:cluster={name}"))
        );
    }

    // A second run changes nothing.
    let again = success(&flatstack(&workspace, &["up", "--provision-only"]));
    assert!(
        again.contains("nothing to change (0 changes made)"),
        "{again}"
    );

    // Scale 2 -> 4 -> 1 workers.
    workspace.write_cluster(&cluster(&name, 4, ""));
    success(&flatstack(&workspace, &["up", "--provision-only"]));
    assert_eq!(servers(&name).len(), 5);
    workspace.write_cluster(&cluster(&name, 1, ""));
    let plan = String::from_utf8_lossy(&flatstack(&workspace, &["plan"]).stdout).into_owned();
    assert!(
        plan.contains(&format!("- server          {name}-default-4")),
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
    // 30 workers of 1 vCPU need more than the demo project's 10 instances.
    workspace.write_cluster(&cluster(
        &name,
        30,
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
    assert!(message.contains("instances (need 31"), "{message}");
    assert_nothing_left(&name);
    assert!(
        !cli_raw("local-demo", &["network", "show", &format!("{name}-net")])
            .status
            .success()
    );
}
