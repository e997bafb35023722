//! Backups' object store on the local OpenStack's Swift, with the `openstack` CLI as witness:
//! the container `up` makes (its name recorded in the state directory), what `backup list`
//! reads, what `down` keeps and what `--delete-backups` removes; a store that refuses writes.

use serde_json::Value;

use crate::openstack::{cli, cli_raw, clouds_yaml, unique};
use crate::support::{Workspace, stderr, success};
use crate::up::{Teardown, cluster, command, flatstack};

/// The cluster's containers, as the `openstack` CLI lists them.
fn containers(name: &str) -> Vec<String> {
    let prefix = format!("flatstack-backups.{name}.");
    cli(
        "local-demo",
        &["container", "list", "--prefix", &prefix, "-f", "json"],
    )
    .as_array()
    .cloned()
    .unwrap_or_default()
    .iter()
    .filter_map(|c| c["Name"].as_str().map(str::to_string))
    .collect()
}

fn objects(container: &str) -> Vec<String> {
    cli("local-demo", &["object", "list", container, "-f", "json"])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|o| o["Name"].as_str().map(str::to_string))
        .collect()
}

/// Uploads `bytes` bytes as object `object` of `container` through the `openstack` CLI.
fn upload(workspace: &Workspace, container: &str, object: &str, bytes: usize) {
    let file = workspace.dir.path().join("upload");
    std::fs::write(&file, vec![b'x'; bytes]).expect("write");
    let file = file.to_str().expect("UTF-8 path");
    cli(
        "local-demo",
        &[
            "object", "create", container, file, "--name", object, "-f", "json",
        ],
    );
}

#[test]
fn backups_go_to_a_container_of_their_own_that_down_keeps_unless_told() {
    let name = unique("bak");
    let workspace = Workspace::new();
    let _teardown = Teardown(&workspace);

    workspace.write_cluster(&format!(
        "{}[backup]\nenabled = false\n",
        cluster(&name, 0, "")
    ));
    let off = success(&flatstack(&workspace, &["plan"]));
    assert!(
        off.contains("backups: off (`backup.enabled = false`)"),
        "{off}"
    );

    workspace.write_cluster(&format!(
        "{}[backup]\nevery = \"12h\"\n",
        cluster(&name, 0, "")
    ));
    let none = success(&flatstack(&workspace, &["backup", "list"]));
    assert!(
        none.contains(&format!(
            "none: cluster `{name}` has no backup container yet"
        )),
        "{none}"
    );
    let planned = success(&flatstack(&workspace, &["plan"]));
    assert!(
        planned.contains(&format!(
            "backups: etcd every 12h, the newest 14 kept, to a Swift container `up` makes (flatstack-backups.{name}.<random>)"
        )),
        "{planned}"
    );

    let made = success(&flatstack(&workspace, &["up", "--provision-only"]));
    let recorded = std::fs::read_to_string(workspace.state_dir().join("backup-container"))
        .expect("the container's name is recorded");
    let container = recorded.trim().to_string();
    assert!(
        container.starts_with(&format!("flatstack-backups.{name}.")),
        "{container}"
    );
    assert!(
        made.contains(&format!(
            "made backup container {container} in the object store; it took a test write"
        )),
        "{made}"
    );
    assert_eq!(containers(&name), std::slice::from_ref(&container));
    let shown = cli(
        "local-demo",
        &["container", "show", &container, "-f", "json"],
    );
    assert_eq!(
        shown["properties"]["Flatstack-Cluster"], name,
        "the container names its cluster: {shown}"
    );
    assert_eq!(
        objects(&container),
        Vec::<String>::new(),
        "no write check left"
    );

    // A converged run only looks.
    let again = success(&flatstack(&workspace, &["up", "--provision-only"]));
    assert!(!again.contains("made backup container"), "{again}");
    let planned = success(&flatstack(&workspace, &["plan"]));
    assert!(
        planned.contains(&format!(
            "the newest 14 kept, to Swift container {container}\n"
        )),
        "{planned}"
    );
    let empty = success(&flatstack(&workspace, &["backup", "list"]));
    assert!(
        empty.contains(&format!("none: no snapshot of cluster `{name}` yet")),
        "{empty}"
    );

    // Snapshots as the cluster names them, out of order, and an object of something else.
    for (object, bytes) in [
        (
            format!("{name}-etcd-20261207T120000Z-v1.37.1.db.enc"),
            3 * 1024 * 1024,
        ),
        (format!("{name}-etcd-20261206T000000Z-v1.36.2.db.enc"), 2048),
        (format!("{name}-etcd-20261207T000000Z-v1.37.1.db.enc"), 512),
        ("notes.txt".to_string(), 10),
    ] {
        upload(&workspace, &container, &object, bytes);
    }
    let listed = success(&flatstack(&workspace, &["backup", "list"]));
    let rows: Vec<&str> = listed.lines().filter(|l| l.starts_with("2026-")).collect();
    assert_eq!(rows.len(), 3, "{listed}");
    for (row, (taken, size, release)) in rows.iter().zip([
        ("2026-12-06 00:00:00", "2.0 KiB", "v1.36.2"),
        ("2026-12-07 00:00:00", "512 B", "v1.37.1"),
        ("2026-12-07 12:00:00", "3.0 MiB", "v1.37.1"),
    ]) {
        assert!(
            row.starts_with(taken) && row.contains(size) && row.contains(release),
            "{row}\nin:\n{listed}"
        );
    }
    assert!(
        listed.contains(&format!(
            "(1 other object(s) in the container(s), not snapshots of `{name}`)"
        )),
        "{listed}"
    );

    let down = success(&flatstack(&workspace, &["down", "--yes"]));
    assert!(
        down.contains(&format!(
            "its 3 etcd snapshot(s) are kept in the object store ({container}); `down --delete-backups` removes them"
        )),
        "{down}"
    );
    assert_eq!(objects(&container).len(), 4, "down keeps the backups");

    let deleted = success(&flatstack(
        &workspace,
        &["down", "--yes", "--delete-backups"],
    ));
    assert!(
        deleted.contains(&format!(
            "deleted backup container {container} with its 4 object(s)"
        )),
        "{deleted}"
    );
    assert!(
        !cli_raw("local-demo", &["container", "show", &container])
            .status
            .success(),
        "the container is gone"
    );
    let none = success(&flatstack(&workspace, &["backup", "list"]));
    assert!(none.contains("has no backup container yet"), "{none}");
}

/// Credentials of a role Swift refuses (its keystoneauth serves `member` and `admin` here; a
/// `reader` may not even list): `up` stops before anything is made and says why.
#[test]
fn a_store_that_refuses_writes_stops_up_before_anything_is_made() {
    let name = unique("bakro");
    let user = format!("{name}-reader");
    cli(
        "local-admin",
        &[
            "user",
            "create",
            "--password",
            "secret",
            "--domain",
            "default",
            &user,
            "-f",
            "json",
        ],
    );
    cli(
        "local-admin",
        &[
            "role",
            "add",
            "--project",
            "demo",
            "--user",
            &user,
            "reader",
        ],
    );
    let workspace = Workspace::new();
    let clouds = workspace.dir.path().join("clouds.yaml");
    let text = std::fs::read_to_string(clouds_yaml()).expect("clouds.yaml");
    let parsed: Value = serde_saphyr::from_str(&text).expect("clouds.yaml is YAML");
    let mut entry = parsed["clouds"]["local-demo"].clone();
    entry["auth"]["username"] = Value::String(user.clone());
    std::fs::write(
        &clouds,
        serde_json::to_string(&serde_json::json!({"clouds": {"local-demo": entry}})).expect("json"),
    )
    .expect("write clouds.yaml");
    workspace.write_cluster(&format!(
        "{}[backup]\nenabled = true\n",
        cluster(&name, 0, "")
    ));

    let output = command(&workspace, &["up", "--provision-only"])
        .env("OS_CLIENT_CONFIG_FILE", &clouds)
        .output()
        .expect("run flatstack");
    cli("local-admin", &["user", "delete", &user]);
    let error = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{error}");
    assert!(
        error.contains("the object store refused to list the project's containers")
            && error.contains("answered 403")
            && error.contains("need a role that may read and write the object store"),
        "{error}"
    );
    assert_eq!(containers(&name), Vec::<String>::new());
    assert_eq!(crate::up::tagged("network", &name), Vec::<Value>::new());
}
