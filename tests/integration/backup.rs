//! Backups' object store on the local OpenStack's Swift, with the `openstack` CLI as witness:
//! the container `up` makes (its name recorded in the state directory), what `backup list`
//! reads, what `down` keeps and what `--delete-backups` removes; a store that refuses writes.

use serde_json::Value;

use crate::openstack::{cli, cli_raw, clouds_yaml, unique};
use crate::support::{Workspace, free_port, stderr, stdout, success};
use crate::up::{Teardown, cluster, command, flatstack};

/// The container (or bucket) the state directory records, and the store it is in.
pub(crate) fn recorded(workspace: &Workspace) -> (String, String) {
    let text = std::fs::read_to_string(workspace.state_dir().join("backup-container"))
        .expect("the container's name is recorded");
    let mut lines = text.lines();
    let name = lines.next().unwrap_or_default().trim().to_string();
    let store = lines.next().unwrap_or_default().trim().to_string();
    (name, store)
}

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

pub(crate) fn objects(container: &str) -> Vec<String> {
    cli("local-demo", &["object", "list", container, "-f", "json"])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|o| o["Name"].as_str().map(str::to_string))
        .collect()
}

/// The snapshot stamp (`YYYYMMDDTHHMMSSZ`) of `hours` ago, and how `backup list` shows it.
fn ago(hours: i64) -> (String, String) {
    let t = time::OffsetDateTime::now_utc() - time::Duration::hours(hours);
    (
        format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        format!(
            "{} {:02}:{:02}:{:02}",
            t.date(),
            t.hour(),
            t.minute(),
            t.second()
        ),
    )
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
    let (container, store) = recorded(&workspace);
    assert_eq!(store, "swift", "the record names the store");
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

    // Snapshots as the cluster names them, taken 30, 20 and 14 hours ago, uploaded out of
    // order, and an object of something else.
    let (old, middle, newest) = (ago(30), ago(20), ago(14));
    for (object, bytes) in [
        (
            format!("{name}-etcd-{}-v1.37.1.db.enc", newest.0),
            3 * 1024 * 1024,
        ),
        (format!("{name}-etcd-{}-v1.36.2.db.enc", old.0), 2048),
        (format!("{name}-etcd-{}-v1.37.1.db.enc", middle.0), 512),
        ("notes.txt".to_string(), 10),
    ] {
        upload(&workspace, &container, &object, bytes);
    }
    let listed = success(&flatstack(&workspace, &["backup", "list"]));
    let rows: Vec<&str> = listed
        .lines()
        .filter(|l| l.contains(&format!("{name}-etcd-")))
        .collect();
    assert_eq!(rows.len(), 3, "{listed}");
    for (row, (taken, age, size, release)) in rows.iter().zip([
        (&old.1, "30h", "2.0 KiB", "v1.36.2"),
        (&middle.1, "20h", "512 B", "v1.37.1"),
        (&newest.1, "14h", "3.0 MiB", "v1.37.1"),
    ]) {
        assert!(
            row.starts_with(taken.as_str())
                && row.contains(&format!(" {age} "))
                && row.contains(size)
                && row.contains(release),
            "{row}\nin:\n{listed}"
        );
    }
    assert!(
        listed.contains(&format!(
            "(1 other object(s) in the container(s), not snapshots of `{name}`)"
        )),
        "{listed}"
    );

    // `status`: the newest's age; with every 12h, 14 hours is within twice the schedule, with
    // every 6h it is not, and stderr says so.
    let status = flatstack(&workspace, &["status"]);
    assert!(
        stdout(&status).contains(&format!(
            "backups: the newest snapshot is 14h old ({name}-etcd-{}-v1.37.1.db.enc); 3 kept in {container} (every 12h)",
            newest.0
        )),
        "{}",
        stdout(&status)
    );
    assert!(
        !stderr(&status).contains("newest etcd snapshot"),
        "{}",
        stderr(&status)
    );
    workspace.write_cluster(&cluster(&name, 0, ""));
    let status = flatstack(&workspace, &["status"]);
    assert!(
        stderr(&status).contains(
            "warning: the newest etcd snapshot is 14h old, more than twice the schedule (every 6h)"
        ),
        "{}",
        stderr(&status)
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
    // Left to the cloud (`enabled` unset), the refusal turns backups off, said by `plan`.
    workspace.write_cluster(&cluster(&name, 0, ""));
    let planned = command(&workspace, &["plan"])
        .env("OS_CLIENT_CONFIG_FILE", &clouds)
        .output()
        .expect("run flatstack");
    cli("local-admin", &["user", "delete", &user]);
    assert!(
        stdout(&planned)
            .contains("backups: off: the object store refused to list the project's containers"),
        "{}{}",
        stdout(&planned),
        stderr(&planned)
    );
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

/// One etcd on loopback (Debian's `etcd-server` 3.4), plain HTTP, killed when dropped.
pub(crate) struct Etcd {
    child: std::process::Child,
    endpoint: String,
}

impl Etcd {
    /// A member named as kubeadm names the first control plane's, its peers at `peer`.
    pub(crate) fn start(data_dir: &std::path::Path, log: &std::path::Path, peer: u16) -> Etcd {
        let client = free_port();
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = std::process::Command::new("etcd")
            .args([
                "--name=demo-control-plane-1",
                &format!("--data-dir={}", data_dir.display()),
                &format!("--listen-client-urls={endpoint}"),
                &format!("--advertise-client-urls={endpoint}"),
                &format!("--listen-peer-urls={peer_url}"),
                &format!("--initial-advertise-peer-urls={peer_url}"),
                &format!("--initial-cluster=demo-control-plane-1={peer_url}"),
                "--listen-metrics-urls=",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).expect("log"))
            .spawn()
            .expect("start etcd");
        let etcd = Etcd { child, endpoint };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while etcd.ctl(&["endpoint", "health"]).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "etcd did not start; see {}",
                log.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        etcd
    }

    pub(crate) fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let output = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .args(args)
            .output()
            .expect("run etcdctl");
        match output.status.success() {
            true => Ok(String::from_utf8_lossy(&output.stdout).into_owned()),
            false => Err(String::from_utf8_lossy(&output.stderr).into_owned()),
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The backup objects `render` writes: the upload script and the backup key's public half.
pub(crate) fn rendered_backup(workspace: &Workspace) -> (String, String) {
    success(&workspace.render(&[]));
    let dir = workspace.out_dir().join("manifests");
    let file = std::fs::read_dir(&dir)
        .expect("manifests")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.to_string_lossy()
                .ends_with("-configmap-kube-system-flatstack-etcd-backup.yaml")
        })
        .expect("the backup ConfigMap is rendered");
    let config: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(file).expect("read")).expect("YAML");
    (
        config["data"]["upload.sh"]
            .as_str()
            .expect("script")
            .to_string(),
        config["data"]["recipient.pem"]
            .as_str()
            .expect("recipient")
            .to_string(),
    )
}

/// Runs the upload script as the CronJob's host does, against the local Keystone and Swift.
pub(crate) fn run_upload(
    workspace: &Workspace,
    script: &str,
    recipient: &str,
    snapshot: &std::path::Path,
    cluster: &str,
    container: &str,
    keep: u32,
) -> std::process::Output {
    let project = cli("local-demo", &["token", "issue", "-f", "json"])["project_id"]
        .as_str()
        .expect("project")
        .to_string();
    let request = serde_json::json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": "demo", "domain": {"name": "Default"}, "password": "secret"}}},
        "scope": {"project": {"name": "demo", "domain": {"name": "Default"}}}}});
    let path = workspace.dir.path().join("upload.sh");
    std::fs::write(&path, script).expect("write script");
    std::process::Command::new("bash")
        .arg(&path)
        .env("FLATSTACK_SNAPSHOT", snapshot)
        .env("FLATSTACK_CLUSTER", cluster)
        .env("FLATSTACK_KUBERNETES", "v1.37.1")
        .env("FLATSTACK_RECIPIENT", recipient)
        .env(
            "FLATSTACK_STORE",
            format!("http://127.0.0.1:8080/v1/AUTH_{project}"),
        )
        .env("FLATSTACK_CONTAINER", container)
        .env("FLATSTACK_KEEP", keep.to_string())
        .env("FLATSTACK_AUTH_URL", "http://127.0.0.1:5000/v3")
        .env("FLATSTACK_AUTH_REQUEST", request.to_string())
        .output()
        .expect("run the upload script")
}

/// The snapshot path end to end with real parts: a real etcd's snapshot, sealed and uploaded
/// by the script the CronJob runs (Debian's bash, openssl, curl) to the local Swift through
/// the local Keystone, listed and opened by flatstack into the very bytes etcd saved, and
/// restored by etcd into a new data directory that serves every key written before the
/// snapshot and none after. Then pruning to `keep`, and a changed, a cut and a foreign
/// snapshot refused with nothing written.
#[test]
fn a_snapshot_sealed_on_the_host_comes_back_byte_for_byte_and_restores() {
    crate::support::require_tool("etcd");
    crate::support::require_tool("etcdctl");
    let name = unique("snap");
    let workspace = Workspace::new();
    let _teardown = Teardown(&workspace);
    workspace.write_cluster(&cluster(&name, 0, ""));
    success(&flatstack(&workspace, &["up", "--provision-only"]));
    let container = recorded(&workspace).0;
    let key_file = workspace.state_dir().join("backup.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file)
            .expect("key")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let (script, recipient) = rendered_backup(&workspace);
    crate::support::require_tool("shellcheck");
    let checked = std::process::Command::new("shellcheck")
        .args(["--shell", "bash", "--severity", "style", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(script.as_bytes())?;
            child.wait_with_output()
        })
        .expect("run shellcheck");
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stdout)
    );
    assert!(
        !script.contains(
            &std::fs::read_to_string(&key_file)
                .expect("key")
                .trim()
                .to_string()
        )
    );

    // etcd with keys, its snapshot, then one key more.
    let etcd = Etcd::start(
        &workspace.dir.path().join("etcd"),
        &workspace.dir.path().join("etcd.log"),
        free_port(),
    );
    for i in 0..50 {
        etcd.ctl(&[
            "put",
            &format!("/registry/secrets/default/s{i}"),
            &format!("value-{i}"),
        ])
        .expect("put");
    }
    let saved = workspace.dir.path().join("saved.db");
    etcd.ctl(&["snapshot", "save", &saved.to_string_lossy()])
        .expect("snapshot save");
    etcd.ctl(&["put", "/registry/after", "not in the snapshot"])
        .expect("put");
    let original = std::fs::read(&saved).expect("saved");

    let snapshot = workspace.dir.path().join("snapshot.db");
    std::fs::copy(&saved, &snapshot).expect("copy");
    let uploaded = run_upload(
        &workspace, &script, &recipient, &snapshot, &name, &container, 2,
    );
    let said = String::from_utf8_lossy(&uploaded.stdout).into_owned();
    assert!(
        uploaded.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&uploaded.stderr)
    );
    assert!(
        said.contains(&format!("flatstack-backup: uploaded {name}-etcd-")),
        "{said}"
    );
    assert!(
        said.contains("kept the newest 1 of 1 snapshot(s); deleted 0"),
        "{said}"
    );
    assert!(!snapshot.exists(), "the script deletes the plain snapshot");
    let stored = objects(&container);
    assert_eq!(stored.len(), 1, "{stored:?}");
    let sealed = cli_raw(
        "local-demo",
        &["object", "save", &container, &stored[0], "--file", "-"],
    )
    .stdout;
    assert!(
        !sealed.windows(7).any(|w| w == b"value-1"),
        "the store holds no plain value"
    );

    let listed = success(&flatstack(&workspace, &["backup", "list"]));
    assert!(
        listed.contains(&stored[0]) && listed.contains("v1.37.1"),
        "{listed}"
    );
    let got = workspace.dir.path().join("got.db");
    let fetched = success(&flatstack(
        &workspace,
        &["backup", "get", "--out", &got.to_string_lossy()],
    ));
    assert!(
        fetched.contains(&format!("wrote {}", stored[0])),
        "{fetched}"
    );
    assert_eq!(std::fs::read(&got).expect("got"), original, "byte for byte");
    assert_eq!(
        std::fs::metadata(&got).expect("got").permissions().mode() & 0o777,
        0o600
    );

    // etcd restores it into a new data directory, which serves what was there then.
    let restored_dir = workspace.dir.path().join("restored");
    let peer = free_port();
    etcd.ctl(&[
        "snapshot",
        "restore",
        &got.to_string_lossy(),
        "--name=demo-control-plane-1",
        &format!("--initial-cluster=demo-control-plane-1=http://127.0.0.1:{peer}"),
        &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
        &format!("--data-dir={}", restored_dir.display()),
    ])
    .expect("restore");
    drop(etcd);
    let restored = Etcd::start(
        &restored_dir,
        &workspace.dir.path().join("restored.log"),
        peer,
    );
    let values = restored
        .ctl(&[
            "get",
            "--prefix",
            "/registry/secrets/",
            "--print-value-only",
        ])
        .expect("get");
    assert_eq!(
        values.lines().filter(|l| l.starts_with("value-")).count(),
        50
    );
    assert_eq!(
        restored.ctl(&["get", "/registry/after"]).expect("get"),
        "",
        "written after the snapshot"
    );

    // Two more runs with keep = 2: the oldest goes.
    for _ in 0..2 {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        std::fs::copy(&saved, &snapshot).expect("copy");
        let run = run_upload(
            &workspace, &script, &recipient, &snapshot, &name, &container, 2,
        );
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    let kept = objects(&container);
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(
        !kept.contains(&stored[0]),
        "the oldest was pruned: {kept:?}"
    );

    // A changed byte and a cut copy, uploaded as the newest: refused, nothing written.
    let newest = kept.iter().max().expect("one").clone();
    let good = cli_raw(
        "local-demo",
        &["object", "save", &container, &newest, "--file", "-"],
    )
    .stdout;
    let mut changed = good.clone();
    let middle = changed.len() / 2;
    changed[middle] ^= 0x40;
    for (object, bytes) in [
        (
            format!("{name}-etcd-20991231T000000Z-v1.37.1.db.enc"),
            changed,
        ),
        (
            format!("{name}-etcd-20991231T000001Z-v1.37.1.db.enc"),
            good[..good.len() - 100].to_vec(),
        ),
    ] {
        let file = workspace.dir.path().join("bad");
        std::fs::write(&file, bytes).expect("write");
        cli(
            "local-demo",
            &[
                "object",
                "create",
                &container,
                &file.to_string_lossy(),
                "--name",
                &object,
                "-f",
                "json",
            ],
        );
        let out = workspace.dir.path().join("bad.db");
        let refused = flatstack(
            &workspace,
            &[
                "backup",
                "get",
                "--snapshot",
                &object,
                "--out",
                &out.to_string_lossy(),
            ],
        );
        assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
        assert!(
            stderr(&refused).contains(&format!(
                "snapshot {object} cannot be opened with this state directory's backup key: its tag does not match"
            )),
            "{}",
            stderr(&refused)
        );
        assert!(!out.exists(), "nothing written");
    }

    // Names that are not this cluster's snapshots in the store: exit 2, named.
    let out = workspace.dir.path().join("none.db");
    for (snapshot, says) in [
        (
            format!("{name}-etcd-20200101T000000Z-v1.37.1.db.enc"),
            "there is no snapshot",
        ),
        (
            "other-etcd-20200101T000000Z-v1.37.1.db.enc".to_string(),
            "is not one of cluster",
        ),
    ] {
        let refused = flatstack(
            &workspace,
            &[
                "backup",
                "get",
                "--snapshot",
                &snapshot,
                "--out",
                &out.to_string_lossy(),
            ],
        );
        assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
        assert!(stderr(&refused).contains(says), "{}", stderr(&refused));
        assert!(!out.exists());
    }
}

/// The stand-in's Jobs of the snapshot CronJob run as a control plane's kubelet would run their
/// pod: the upload container's environment resolved from the Job's spec (values, the
/// ConfigMap's and the Secret's keys, as `up` applied them), the ConfigMap's script run by
/// bash on a copy of a real etcd snapshot (what the init container's `etcdctl` saves), and the
/// Job's status set from the script's exit.
struct SnapshotKubelet {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SnapshotKubelet {
    fn start(
        server: &crate::kube_standin::StandIn,
        saved: std::path::PathBuf,
        scratch: std::path::PathBuf,
    ) -> SnapshotKubelet {
        use std::sync::atomic::Ordering;
        let stop: std::sync::Arc<std::sync::atomic::AtomicBool> = Default::default();
        let (world, stop_here) = (server.world.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop_here.load(Ordering::Relaxed) {
                let pending: Vec<(String, Value)> = {
                    let world = world.lock().expect("world");
                    world
                        .objects
                        .iter()
                        .filter(|(path, job)| {
                            path.starts_with("/apis/batch/v1/namespaces/kube-system/jobs/")
                                && job["metadata"]["labels"]["app.kubernetes.io/name"]
                                    == "flatstack-etcd-backup"
                                && job["status"].is_null()
                        })
                        .map(|(p, j)| (p.clone(), j.clone()))
                        .collect()
                };
                for (path, job) in pending {
                    let status = run_pod(&world, &job, &saved, &scratch);
                    let mut world = world.lock().expect("world");
                    if let Some(stored) = world.objects.get_mut(&path) {
                        stored["status"] = status;
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        });
        SnapshotKubelet {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SnapshotKubelet {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A real etcd with a key and its saved snapshot, and a [`SnapshotKubelet`] for `server` that
/// runs the snapshot Jobs' pods on it in a scratch directory: the etcd (kept running for the
/// test), the snapshot's file, the scratch directory (the pod's `upload.log` is there).
fn snapshot_kubelet(
    workspace: &Workspace,
    server: &crate::kube_standin::StandIn,
) -> (
    Etcd,
    std::path::PathBuf,
    std::path::PathBuf,
    SnapshotKubelet,
) {
    let etcd = Etcd::start(
        &workspace.dir.path().join("etcd"),
        &workspace.dir.path().join("etcd.log"),
        free_port(),
    );
    etcd.ctl(&["put", "/registry/configmaps/default/c", "kept"])
        .expect("put");
    let saved = workspace.dir.path().join("saved.db");
    etcd.ctl(&["snapshot", "save", &saved.to_string_lossy()])
        .expect("save");
    let scratch = workspace.dir.path().join("host");
    std::fs::create_dir_all(&scratch).expect("scratch");
    let kubelet = SnapshotKubelet::start(server, saved.clone(), scratch.clone());
    (etcd, saved, scratch, kubelet)
}

/// Runs the upload container of `job`'s pod; the Job's status as the job controller sets it.
fn run_pod(
    world: &std::sync::Mutex<crate::kube_standin::World>,
    job: &Value,
    saved: &std::path::Path,
    scratch: &std::path::Path,
) -> Value {
    use base64::Engine as _;
    let pod = &job["spec"]["template"]["spec"];
    let upload = &pod["containers"][0];
    let (script, env) = {
        let world = world.lock().expect("world");
        let object = |kind: &str, name: &str| {
            world
                .objects
                .get(&format!("/api/v1/namespaces/kube-system/{kind}/{name}"))
                .cloned()
                .unwrap_or_default()
        };
        let config = object("configmaps", "flatstack-etcd-backup");
        let env: Vec<(String, String)> = upload["env"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let name = e["name"].as_str().unwrap_or_default().to_string();
                let from = &e["valueFrom"];
                let value = if let Some(v) = e["value"].as_str() {
                    v.to_string()
                } else if !from["fieldRef"].is_null() {
                    job["metadata"]["uid"]
                        .as_str()
                        .unwrap_or("a-pod-uid")
                        .to_string()
                } else if !from["configMapKeyRef"].is_null() {
                    let r = &from["configMapKeyRef"];
                    object("configmaps", r["name"].as_str().unwrap_or_default())["data"]
                        [r["key"].as_str().unwrap_or_default()]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
                } else {
                    let r = &from["secretKeyRef"];
                    let encoded = object("secrets", r["name"].as_str().unwrap_or_default())["data"]
                        [r["key"].as_str().unwrap_or_default()]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                    String::from_utf8(
                        base64::engine::general_purpose::STANDARD
                            .decode(encoded)
                            .unwrap_or_default(),
                    )
                    .unwrap_or_default()
                };
                (name, value)
            })
            .collect();
        (
            config["data"]["upload.sh"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            env,
        )
    };
    // What the init container's etcdctl saved, where the pod's host path has it.
    let snapshot = scratch.join("snapshot.db");
    std::fs::copy(saved, &snapshot).expect("copy the snapshot");
    let file = scratch.join("upload.sh");
    std::fs::write(&file, script).expect("write the script");
    let mut command = std::process::Command::new("bash");
    command
        .arg(&file)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for (name, value) in env {
        command.env(&name, value);
    }
    command.env("FLATSTACK_SNAPSHOT", &snapshot);
    let output = command.output().expect("run the upload script");
    std::fs::write(
        scratch.join("upload.log"),
        [output.stdout, output.stderr].concat(),
    )
    .expect("log");
    match output.status.success() {
        true => serde_json::json!({"succeeded": 1}),
        false => serde_json::json!({"failed": 3, "conditions": [{"type": "Failed",
            "status": "True", "reason": "BackoffLimitExceeded",
            "message": "Job has reached the specified backoff limit"}]}),
    }
}

/// `up` applies the snapshot CronJob with its ConfigMap and Secret (against the stand-in);
/// `backup now` starts a Job from it and waits; the Job's pod, run from exactly what `up`
/// applied, seals and uploads a real etcd snapshot to the local Swift through the local
/// Keystone with the cluster's own credentials; `backup now` names it and `backup get` brings
/// back etcd's bytes. A Job that fails is reported with where to look.
#[test]
fn backup_now_runs_the_cron_job_whose_pod_uploads_a_real_snapshot() {
    use crate::kube_standin::{StandIn, World};
    crate::support::require_tool("etcd");
    crate::support::require_tool("etcdctl");
    let name = unique("bnow");
    let workspace = Workspace::new();
    workspace.write_cluster(&cluster(&name, 1, "[backup]\nkeep = 3\n"));
    let _teardown = Teardown(&workspace);
    let pki = crate::kube_standin::pki(&workspace);
    let mut world = World {
        job_polls: 1,
        ..World::default()
    };
    world.register(&format!("{name}-control-plane-1"), true);
    world.register(&format!("{name}-default-1"), false);
    let server = StandIn::of_cluster(&pki, world);
    let api = server.address.to_string();
    success(&flatstack(
        &workspace,
        &["up", "--api-address", &api, "--timeout", "3m"],
    ));
    let cron = server.world.lock().expect("world").objects
        ["/apis/batch/v1/namespaces/kube-system/cronjobs/flatstack-etcd-backup"]
        .clone();
    assert_eq!(cron["spec"]["concurrencyPolicy"], "Forbid", "{cron}");

    let (_etcd, saved, scratch, kubelet) = snapshot_kubelet(&workspace, &server);

    let now = flatstack(
        &workspace,
        &["backup", "now", "--api-address", &api, "--timeout", "2m"],
    );
    let log = std::fs::read_to_string(scratch.join("upload.log")).unwrap_or_default();
    let said = success(&now);
    assert!(
        said.contains(&format!("snapshot {name}-etcd-"))
            && said.contains("; Job flatstack-etcd-backup-now-"),
        "{said}\nthe pod's log:\n{log}"
    );
    assert!(log.contains("kept the newest 1 of 1 snapshot(s)"), "{log}");
    let got = workspace.dir.path().join("got.db");
    success(&flatstack(
        &workspace,
        &["backup", "get", "--out", &got.to_string_lossy()],
    ));
    assert_eq!(
        std::fs::read(&got).expect("got"),
        std::fs::read(&saved).expect("saved")
    );

    // A pod that cannot log in: the Job fails and `backup now` says where to look.
    {
        let mut world = server.world.lock().expect("world");
        let secret = world
            .objects
            .get_mut("/api/v1/namespaces/kube-system/secrets/flatstack-etcd-backup")
            .expect("secret");
        secret["data"]["auth-request"] = Value::String("e30=".into()); // `{}`
    }
    let failed = flatstack(
        &workspace,
        &["backup", "now", "--api-address", &api, "--timeout", "2m"],
    );
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    assert!(
        stderr(&failed).contains("failed: Job has reached the specified backoff limit")
            && stderr(&failed).contains("-c upload"),
        "{}",
        stderr(&failed)
    );
    let log = std::fs::read_to_string(scratch.join("upload.log")).unwrap_or_default();
    assert!(log.contains("gave no token (HTTP 400)"), "{log}");
    drop(kubelet);

    // A snapshot Job still running (scheduled, or started by hand): none is started beside it.
    let running = "/apis/batch/v1/namespaces/kube-system/jobs/flatstack-etcd-backup-29000000";
    server.world.lock().expect("world").objects.insert(
        running.into(),
        serde_json::json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "flatstack-etcd-backup-29000000", "namespace": "kube-system",
                "labels": {"app.kubernetes.io/name": "flatstack-etcd-backup"}},
            "status": {"active": 1}}),
    );
    let jobs = |server: &StandIn| -> Vec<String> {
        let world = server.world.lock().expect("world");
        world
            .objects
            .keys()
            .filter(|p| p.starts_with("/apis/batch/v1/"))
            .cloned()
            .collect()
    };
    let jobs_before = jobs(&server);
    let busy = flatstack(
        &workspace,
        &["backup", "now", "--api-address", &api, "--timeout", "30s"],
    );
    assert_eq!(busy.status.code(), Some(1), "{}", stderr(&busy));
    assert!(
        stderr(&busy).contains(
            "a snapshot Job is running already (flatstack-etcd-backup-29000000); none was started beside it"
        ),
        "{}",
        stderr(&busy)
    );
    assert_eq!(jobs(&server), jobs_before, "no Job was started");

    // Backups turned off: `up` deletes the CronJob, its ConfigMap and the Secret with the
    // credentials.
    workspace.write_cluster(&cluster(&name, 1, "[backup]\nenabled = false\n"));
    success(&flatstack(
        &workspace,
        &["up", "--api-address", &api, "--timeout", "3m"],
    ));
    let world = server.world.lock().expect("world");
    for path in [
        "/apis/batch/v1/namespaces/kube-system/cronjobs/flatstack-etcd-backup",
        "/api/v1/namespaces/kube-system/configmaps/flatstack-etcd-backup",
        "/api/v1/namespaces/kube-system/secrets/flatstack-etcd-backup",
    ] {
        assert!(!world.objects.contains_key(path), "{path} is still there");
    }
}

/// Runs flatstack with a clouds.yaml of the test's own (a secure.yaml may sit beside it) and
/// no S3 key in the environment.
fn with_clouds(
    workspace: &Workspace,
    clouds: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    command(workspace, args)
        .env("OS_CLIENT_CONFIG_FILE", clouds)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .expect("run flatstack")
}

/// Tears a cluster down through the test's own clouds.yaml, and forgets its EC2 credentials.
struct S3Teardown<'a> {
    workspace: &'a Workspace,
    clouds: std::path::PathBuf,
    access: String,
}

impl Drop for S3Teardown<'_> {
    fn drop(&mut self) {
        let _ = with_clouds(
            self.workspace,
            &self.clouds,
            &["down", "--yes", "--delete-backups"],
        );
        let _ = cli_raw(
            "local-demo",
            &["ec2", "credentials", "delete", &self.access],
        );
    }
}

/// An S3 store: the local Swift's S3 API (s3api and s3token behind the local Keystone), with
/// EC2 credentials Keystone made for the demo user, given in a secure.yaml beside a clouds.yaml
/// of the test's own. Without a key `plan` refuses; `up` makes the bucket; the CronJob's pod,
/// run from what `up` applied, signs its upload, listing and pruning with Debian's curl
/// (`--aws-sigv4`), which the store checks; `backup get` brings back etcd's very bytes;
/// `restore` stages the snapshot behind a presigned URL that curl fetches with no key; `down
/// --delete-backups` deletes the bucket. The `openstack` CLI witnesses each step (an S3 bucket
/// is a Swift container of the project).
#[test]
fn an_s3_store_keeps_the_snapshots_and_serves_the_restore() {
    use crate::kube_standin::{StandIn, World};
    use flatstack::node::seal::SealKey;
    crate::support::require_tool("etcd");
    crate::support::require_tool("etcdctl");
    let name = unique("bs3");
    let workspace = Workspace::new();
    let made = cli(
        "local-demo",
        &["ec2", "credentials", "create", "-f", "json"],
    );
    let (access, secret) = (
        made["access"].as_str().expect("access").to_string(),
        made["secret"].as_str().expect("secret").to_string(),
    );
    let clouds_dir = workspace.dir.path().join("clouds");
    std::fs::create_dir_all(&clouds_dir).expect("clouds dir");
    let clouds = clouds_dir.join("clouds.yaml");
    std::fs::copy(clouds_yaml(), &clouds).expect("copy clouds.yaml");
    let _teardown = S3Teardown {
        workspace: &workspace,
        clouds: clouds.clone(),
        access: access.clone(),
    };
    let run = |args: &[&str]| with_clouds(&workspace, &clouds, args);
    let s3_file = cluster(
        &name,
        1,
        "[backup]\nstore = \"s3\"\ns3_endpoint = \"http://127.0.0.1:8080\"\ns3_region = \"RegionOne\"\nkeep = 2\n",
    );
    workspace.write_cluster(&s3_file);

    // `render` asks no cloud and needs no key: the CronJob signs for S3, a marker in place of
    // the key.
    success(&workspace.render(&[]));
    let cron_file = std::fs::read_dir(workspace.out_dir().join("manifests"))
        .expect("manifests")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.to_string_lossy()
                .ends_with("-cronjob-kube-system-flatstack-etcd-backup.yaml")
        })
        .expect("the CronJob is rendered");
    let cron = std::fs::read_to_string(cron_file).expect("read");
    for wanted in [
        "FLATSTACK_STORE_API",
        "value: s3",
        "http://127.0.0.1:8080",
        "FLATSTACK_S3_REGION",
        "RegionOne",
    ] {
        assert!(cron.contains(wanted), "{wanted} in\n{cron}");
    }

    let no_key = run(&["plan"]);
    assert_eq!(no_key.status.code(), Some(2), "{}", stderr(&no_key));
    assert!(
        stderr(&no_key).contains("no access key was given")
            && stderr(&no_key).contains("secure.yaml"),
        "{}",
        stderr(&no_key)
    );
    std::fs::write(
        clouds_dir.join("secure.yaml"),
        format!(
            "clouds:\n  local-demo:\n    s3:\n      access_key_id: {access}\n      secret_access_key: {secret}\n"
        ),
    )
    .expect("secure.yaml");
    let planned = success(&run(&["plan"]));
    assert!(
        planned.contains(&format!(
            "to an S3 bucket at http://127.0.0.1:8080 `up` makes (flatstack-backups.{name}.<random>)"
        )),
        "{planned}"
    );
    // A name whose bucket name would pass S3's 63 characters: refused, named.
    let long = "a-cluster-name-of-forty-characters-long0";
    workspace.write_cluster(&s3_file.replace(&name, long));
    let refused = run(&["plan"]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains(&format!(
            "cluster name `{long}` is too long for an S3 bucket"
        )),
        "{}",
        stderr(&refused)
    );
    workspace.write_cluster(&s3_file);

    let pki = crate::kube_standin::pki(&workspace);
    let mut world = World {
        job_polls: 1,
        ..World::default()
    };
    world.register(&format!("{name}-control-plane-1"), true);
    world.register(&format!("{name}-default-1"), false);
    let server = StandIn::of_cluster(&pki, world);
    let api = server.address.to_string();
    let up = success(&run(&["up", "--api-address", &api, "--timeout", "3m"]));
    let (bucket, store) = recorded(&workspace);
    assert_eq!(
        store, "s3 http://127.0.0.1:8080",
        "the record names the store"
    );
    assert!(
        up.contains(&format!(
            "made backup bucket {bucket} in the object store; it took a test write"
        )),
        "{up}"
    );
    // The write check stays: S3 listings give a bucket no date, and it stands for one.
    assert_eq!(objects(&bucket), [".flatstack-write-check"]);
    // The file turned to Swift with the bucket recorded: refused, nothing made.
    workspace.write_cluster(&cluster(&name, 1, ""));
    let changed = run(&["plan"]);
    assert_eq!(changed.status.code(), Some(2), "{}", stderr(&changed));
    assert!(
        stderr(&changed).contains(&format!(
            "the state directory records the backups in s3 http://127.0.0.1:8080 (container {bucket}), but the cluster file now names swift"
        )),
        "{}",
        stderr(&changed)
    );
    workspace.write_cluster(&s3_file);
    let credentials = server.world.lock().expect("world").objects
        ["/api/v1/namespaces/kube-system/secrets/flatstack-etcd-backup"]["data"]["s3-user"]
        .clone();
    use base64::Engine as _;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(credentials.as_str().expect("s3-user"))
            .expect("base64"),
        format!("{access}:{secret}").as_bytes(),
        "the key is in the Secret"
    );

    // Three snapshots by the CronJob's pod, keep = 2.
    let (_etcd, saved, scratch, kubelet) = snapshot_kubelet(&workspace, &server);
    for round in 0..3 {
        if round > 0 {
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
        let now = run(&["backup", "now", "--api-address", &api, "--timeout", "2m"]);
        let log = std::fs::read_to_string(scratch.join("upload.log")).unwrap_or_default();
        assert!(
            now.status.success(),
            "{}\nthe pod's log:\n{log}",
            stderr(&now)
        );
    }
    drop(kubelet);
    let log = std::fs::read_to_string(scratch.join("upload.log")).unwrap_or_default();
    assert!(
        log.contains("kept the newest 2 of 3 snapshot(s); deleted 1"),
        "{log}"
    );
    let stored: Vec<String> = objects(&bucket)
        .into_iter()
        .filter(|o| o.starts_with(&format!("{name}-etcd-")))
        .collect();
    assert_eq!(stored.len(), 2, "{stored:?}");
    // The upload's SHA-256, signed and checked by the store, is in the object's metadata.
    let bytes = cli_raw(
        "local-demo",
        &["object", "save", &bucket, &stored[1], "--file", "-"],
    )
    .stdout;
    let shown = cli(
        "local-demo",
        &["object", "show", &bucket, &stored[1], "-f", "json"],
    );
    assert_eq!(
        shown["properties"]["Sha256"].as_str(),
        Some(crate::support::sha256_hex(&bytes).as_str()),
        "{shown}"
    );

    let listed = success(&run(&["backup", "list"]));
    assert!(
        listed.contains(&stored[0]) && listed.contains(&stored[1]),
        "{listed}"
    );
    let got = workspace.dir.path().join("got.db");
    success(&run(&["backup", "get", "--out", &got.to_string_lossy()]));
    assert_eq!(
        std::fs::read(&got).expect("got"),
        std::fs::read(&saved).expect("saved"),
        "byte for byte"
    );
    let status = run(&["status", "--api-address", &api]);
    assert!(
        stdout(&status).contains(&format!("2 kept in {bucket}")),
        "{}{}",
        stdout(&status),
        stderr(&status)
    );

    // The restore's copy: a presigned URL the store serves with no key.
    let restored = run(&["restore", "--yes", "--provision-only"]);
    let said = success(&restored);
    assert!(said.contains("staged flatstack-restore."), "{said}");
    let control_plane = format!("{name}-control-plane-1");
    let admin = crate::up::admin_view(&control_plane);
    let config = crate::up::user_data(&admin);
    let seal = SealKey::parse(
        admin["properties"]["flatstack-seal-key"]
            .as_str()
            .expect("the seal key in the server's metadata"),
    )
    .expect("a seal key");
    let sealed_env = crate::support::ignition_file(&config, "/etc/flatstack/restore.env.sealed")
        .expect("the restore env, sealed");
    let env = String::from_utf8(seal.open(&sealed_env).expect("opens")).expect("text");
    let url = crate::restore::env_field(&env, "url");
    assert!(
        url.starts_with(&format!(
            "http://127.0.0.1:8080/{bucket}/flatstack-restore."
        )) && url.contains("X-Amz-Signature="),
        "{url}"
    );
    assert!(!url.contains(&secret), "no secret in the URL");
    let fetched = std::process::Command::new("curl")
        .args(["-fsS", &url])
        .output()
        .expect("curl");
    assert!(fetched.status.success(), "{}", stderr(&fetched));
    let blob_key = SealKey::parse(&crate::restore::env_field(&env, "key")).expect("key");
    assert_eq!(
        blob_key.open(&fetched.stdout).expect("opens"),
        std::fs::read(&saved).expect("saved")
    );

    let deleted = success(&run(&["down", "--yes", "--delete-backups"]));
    assert!(
        deleted.contains(&format!("deleted backup bucket {bucket} with its ")),
        "{deleted}"
    );
    assert!(
        !cli_raw("local-demo", &["container", "show", &bucket])
            .status
            .success(),
        "the bucket is gone"
    );
}
