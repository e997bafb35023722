//! `flatstack restore`: the node's restore script run by bash against a scratch root with a
//! real etcd (Debian's 3.4) and its real snapshot, fetched over loopback HTTP and opened with
//! openssl; and the workstation's side on the local OpenStack and Swift: a snapshot staged
//! behind a TempURL that the real Swift serves, the control planes rebuilt with it sealed in
//! the first one's config, the workers kept, and refusals that change nothing.
//!
//! The script runs containers through containerd's `ctr`, which does not run here: a
//! stand-in `ctr` runs each container's command on the host instead (the binaries are the
//! real etcd and etcdctl), and a stand-in `etcdutl` (Debian's etcd 3.4 has none) records its
//! arguments and restores with etcdctl 3.4's `snapshot restore`, leaving out the two flags
//! 3.4 lacks (`--bump-revision`, `--mark-compacted`), which are asserted as recorded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use flatstack::node::restore::{RestoreSource, restore_script};
use flatstack::node::seal::SealKey;

use crate::backup::Etcd;
use crate::support::*;

const NODE: &str = "demo-control-plane-1";
const ETCD_IMAGE: &str = "registry.k8s.io/etcd:3.6.6-0";

/// The stand-ins for containerd's `ctr` and for `etcdutl`, and the log they keep.
struct Shims {
    dir: PathBuf,
    log: PathBuf,
}

impl Shims {
    fn new(base: &Path) -> Shims {
        let dir = base.join("shims");
        std::fs::create_dir_all(&dir).expect("shims");
        let ctr = r#"#!/bin/bash
# Stand-in for containerd's ctr: a container's command runs on the host.
echo "ctr $*" >> "$FLATSTACK_SHIM_LOG"
[[ $1 == -n ]] && shift 2
case $1 in
  images) exit 0 ;;
  run)
    shift
    while [[ $1 == --* ]]; do
      case $1 in
        --mount) shift 2 ;;
        *) shift ;;
      esac
    done
    id=$2
    shift 2
    echo $$ > "$FLATSTACK_SHIM_DIR/$id.pid"
    exec "$@"
    ;;
  task)
    # Only `task kill` acts, and only on the container's own etcd (never a reused pid).
    [[ $2 == kill ]] || exit 0
    id=${*: -1}
    pid=$(cat "$FLATSTACK_SHIM_DIR/$id.pid" 2> /dev/null) || exit 1
    [[ $(cat "/proc/$pid/comm" 2> /dev/null) == etcd ]] || exit 1
    kill -TERM "$pid"
    ;;
esac
"#;
        let etcdutl = r#"#!/bin/bash
# Stand-in for etcdutl: records its arguments, restores with etcdctl 3.4.
echo "etcdutl $*" >> "$FLATSTACK_SHIM_LOG"
args=()
while (($#)); do
  case $1 in
    --bump-revision) shift 2 ;;
    --mark-compacted) shift ;;
    *) args+=("$1"); shift ;;
  esac
done
ETCDCTL_API=3 exec etcdctl "${args[@]}"
"#;
        for (name, text) in [("ctr", ctr), ("etcdutl", etcdutl)] {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write shim");
            set_mode(&path, 0o755);
        }
        Shims {
            log: base.join("shims.log"),
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A real etcd snapshot of a cluster's keys: two Nodes, a lease, a Secret; and a key written
/// after it, which a restore must not bring back.
fn real_snapshot(base: &Path) -> Vec<u8> {
    let etcd = Etcd::start(&base.join("source"), &base.join("source.log"), free_port());
    for (key, value) in [
        (format!("/registry/minions/{NODE}"), "the old control plane"),
        (
            format!("/registry/leases/kube-node-lease/{NODE}"),
            "its lease",
        ),
        ("/registry/minions/demo-default-1".into(), "a kept worker"),
        ("/registry/secrets/default/s".into(), "a Secret"),
    ] {
        etcd.ctl(&["put", &key, value]).expect("put");
    }
    let file = base.join("snapshot.db");
    etcd.ctl(&["snapshot", "save", &file.display().to_string()])
        .expect("snapshot save");
    etcd.ctl(&["put", "/registry/after", "too late"])
        .expect("put");
    std::fs::read(file).expect("read the snapshot")
}

/// Writes the restore's sealed-then-opened env file and the script under `root`.
fn node_root(base: &Path, name: &str, url: String, key: &SealKey) -> (PathBuf, PathBuf) {
    let root = base.join(name);
    std::fs::create_dir_all(root.join("etc/flatstack")).expect("root");
    let source = RestoreSource {
        url,
        key: key.clone(),
        etcd_image: ETCD_IMAGE.into(),
        cluster_token: "demo-restored-abc123".into(),
        stale_nodes: vec![NODE.into()],
        ca_bundle: None,
        insecure: false,
    };
    std::fs::write(root.join("etc/flatstack/restore.env"), source.env_file()).expect("env");
    let script = base.join(format!("{name}-flatstack-restore"));
    std::fs::write(&script, restore_script()).expect("script");
    (root, script)
}

fn run_script(script: &Path, root: &Path, shims: &Shims) -> Output {
    let path = format!(
        "{}:{}",
        shims.dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("bash")
        .arg(script)
        .args([NODE, "10.0.0.5"])
        .env("FLATSTACK_ROOT", root)
        .env("PATH", path)
        .env("FLATSTACK_SHIM_LOG", &shims.log)
        .env("FLATSTACK_SHIM_DIR", &shims.dir)
        .output()
        .expect("run the restore script")
}

/// Each of `wanted` begins a line of `log`, in this order.
fn assert_in_order(log: &str, wanted: &[String]) {
    let mut lines = log.lines();
    for line in wanted {
        assert!(
            lines.any(|l| l == line || l.starts_with(&format!("{line} "))),
            "`{line}` not found in order in:\n{log}"
        );
    }
}

/// The script fetches the sealed snapshot once, checks and opens it, restores it with the
/// member name, peer URL and new token kubeadm's etcd will use (revisions bumped and marked
/// compacted), and deletes the old control plane's Node and lease through a short-lived etcd:
/// a new etcd on the data directory serves every key of the snapshot but those, and none
/// written after it. After a failed `kubeadm init` (whose reset wipes the data directory) it
/// restores again from the snapshot it kept, fetching nothing. A changed or cut blob is
/// refused before anything is written.
#[test]
fn the_node_restores_a_real_snapshot_and_drops_the_old_control_planes_nodes() {
    require_tool("etcd");
    require_tool("etcdctl");
    require_tool("openssl");
    let base = tempfile::tempdir().expect("tempdir");
    let base = base.path();
    let shims = Shims::new(base);
    let plain = real_snapshot(base);
    let key = SealKey::generate().expect("key");
    let sealed = key.seal(&plain).expect("seal");
    let server = FileServer::serve(BTreeMap::from([("blob".to_string(), sealed.clone())]));
    let (root, script) = node_root(base, "node", format!("{}/blob", server.base_url()), &key);

    let ran = run_script(&script, &root, &shims);
    assert!(ran.status.success(), "{}{}", stdout(&ran), stderr(&ran));
    let log = shims.log();
    assert!(
        log.contains(&format!("ctr -n k8s.io images pull {ETCD_IMAGE}")),
        "{log}"
    );
    let data = root.join("var/lib/etcd");
    let restored = format!(
        "etcdutl snapshot restore {snapshot} --name {NODE} --initial-cluster {NODE}=https://10.0.0.5:2380 --initial-advertise-peer-urls https://10.0.0.5:2380 --initial-cluster-token demo-restored-abc123 --data-dir {data} --bump-revision 1000000000 --mark-compacted",
        snapshot = root.join("var/lib/flatstack/restore/snapshot.db").display(),
        data = data.display()
    );
    assert!(log.contains(&restored), "{restored}\nnot in\n{log}");
    // What containerd is asked, in order: each container run after any leftover of its name is
    // removed, with the host's /var/lib at the same path, on the host network. The cleaning
    // etcd starts in the background, so the first health check may be asked for before it:
    // its own order, and the checks', are asserted apart.
    let run = format!(
        "ctr -n k8s.io run --rm --net-host --mount type=bind,src={lib},dst={lib},options=rbind:rw {ETCD_IMAGE}",
        lib = root.join("var/lib").display()
    );
    let data_dir = data.display();
    assert_in_order(
        &log,
        &[
            format!("ctr -n k8s.io images pull {ETCD_IMAGE}"),
            "ctr -n k8s.io task kill -s SIGKILL flatstack-restore".into(),
            "ctr -n k8s.io task rm -f flatstack-restore".into(),
            "ctr -n k8s.io container rm flatstack-restore".into(),
            format!("{run} flatstack-restore etcdutl snapshot restore"),
            "ctr -n k8s.io container rm flatstack-restore-clean".into(),
            format!(
                "{run} flatstack-restore-clean etcd --name {NODE} --data-dir {data_dir} --listen-client-urls http://127.0.0.1:2399 --advertise-client-urls http://127.0.0.1:2399 --listen-peer-urls http://127.0.0.1:2398"
            ),
            "ctr -n k8s.io task kill -s SIGTERM flatstack-restore-clean".into(),
        ],
    );
    assert_in_order(
        &log,
        &[
            format!("{run} flatstack-restore etcdutl snapshot restore"),
            format!(
                "{run} flatstack-restore-check etcdctl --endpoints http://127.0.0.1:2399 endpoint health"
            ),
            format!(
                "{run} flatstack-restore-delete etcdctl --endpoints http://127.0.0.1:2399 del /registry/minions/{NODE}"
            ),
            format!(
                "{run} flatstack-restore-delete etcdctl --endpoints http://127.0.0.1:2399 del /registry/leases/kube-node-lease/{NODE}"
            ),
            "ctr -n k8s.io task kill -s SIGTERM flatstack-restore-clean".into(),
        ],
    );
    let kept = root.join("var/lib/flatstack/restore/snapshot.db");
    assert_eq!(std::fs::read(&kept).expect("kept"), plain);
    assert_eq!(mode_of(&kept), 0o600);
    assert_eq!(mode_of(&root.join("var/lib/flatstack/restore")), 0o700);
    assert!(
        !root
            .join("var/lib/flatstack/restore/snapshot.sealed")
            .exists()
    );
    let fetched = server.requests.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(fetched, 1);

    let check = |what: &str| {
        let etcd = Etcd::start(&data, &base.join(format!("{what}.log")), free_port());
        let keys = etcd
            .ctl(&["get", "/registry", "--prefix", "--keys-only"])
            .expect("keys");
        let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(
            keys,
            [
                "/registry/minions/demo-default-1",
                "/registry/secrets/default/s"
            ],
            "{what}"
        );
    };
    check("restored");

    // kubeadm init failed; its reset wiped the data directory. The snapshot is still here.
    drop(server);
    std::fs::remove_dir_all(&data).expect("reset");
    let again = run_script(&script, &root, &shims);
    assert!(
        again.status.success(),
        "{}{}",
        stdout(&again),
        stderr(&again)
    );
    let restores = shims
        .log()
        .lines()
        .filter(|l| l.starts_with("etcdutl snapshot restore"))
        .count();
    assert_eq!(restores, 2);
    check("restored again");

    // A blob changed or cut short in the store: refused, nothing written.
    let mut changed = sealed.clone();
    changed[100] ^= 1;
    for (name, blob, says) in [
        ("changed", changed, "does not match its key"),
        ("cut", sealed[..40].to_vec(), "truncated"),
    ] {
        let server = FileServer::serve(BTreeMap::from([("blob".to_string(), blob)]));
        let (root, script) = node_root(base, name, format!("{}/blob", server.base_url()), &key);
        let before = shims.log();
        let refused = run_script(&script, &root, &shims);
        assert!(!refused.status.success(), "{name}");
        assert!(
            stdout(&refused).contains(says),
            "{name}: {}",
            stdout(&refused)
        );
        assert!(!root.join("var/lib/etcd").exists(), "{name}");
        assert!(
            !root.join("var/lib/flatstack/restore/snapshot.db").exists(),
            "{name}"
        );
        assert_eq!(shims.log(), before, "{name}: nothing ran");
    }
}

/// The restore script passes Debian's shellcheck.
#[test]
fn the_restore_script_passes_shellcheck() {
    require_tool("shellcheck");
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("flatstack-restore");
    std::fs::write(&script, restore_script()).expect("write");
    let checked = Command::new("shellcheck")
        .args(["--shell=bash", "--severity=style"])
        .arg(&script)
        .output()
        .expect("run shellcheck");
    assert!(checked.status.success(), "{}", stdout(&checked));
}

/// A server's ID, as the `openstack` CLI shows it.
fn server_id(server: &str) -> String {
    crate::openstack::cli("local-demo", &["server", "show", server, "-f", "json"])["id"]
        .as_str()
        .expect("id")
        .to_string()
}

/// `field=value` lines of the restore's env file.
pub(crate) fn env_field(env: &str, field: &str) -> String {
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}=")))
        .unwrap_or_default()
        .to_string()
}

/// `flatstack restore` on the local OpenStack and Swift, with a real etcd snapshot the
/// CronJob's upload script sealed and uploaded: without `--yes` it says what it would do and
/// changes nothing; a snapshot that is not there, or of another minor, is refused with exit
/// code 2 and nothing changed; with `--yes` the snapshot is staged in the container, the
/// control plane's server is replaced by one whose Ignition config holds, sealed with the key
/// in its metadata, a TempURL that the real Swift serves the staged blob at, and the key that
/// opens that blob into the very bytes etcd saved; the worker's server is kept.
#[test]
fn restore_stages_the_snapshot_behind_a_temp_url_and_rebuilds_the_control_plane() {
    use crate::up::{Teardown, admin_view, cluster, flatstack, user_data};
    require_tool("etcd");
    require_tool("etcdctl");
    require_tool("ignition-validate");
    let name = crate::openstack::unique("restore");
    let workspace = Workspace::new();
    workspace.write_cluster(&cluster(&name, 1, "[backup]\nenabled = true\n"));
    let _teardown = Teardown(&workspace);
    success(&flatstack(&workspace, &["up", "--provision-only"]));
    let container = crate::backup::recorded(&workspace).0;
    let control_plane = format!("{name}-control-plane-1");
    let worker = format!("{name}-default-1");
    let (cp_before, worker_before) = (server_id(&control_plane), server_id(&worker));

    let base = tempfile::tempdir().expect("tempdir");
    let plain = real_snapshot(base.path());
    let snapshot_file = base.path().join("snapshot.db");
    let (script, recipient) = crate::backup::rendered_backup(&workspace);
    let uploaded = crate::backup::run_upload(
        &workspace,
        &script,
        &recipient,
        &snapshot_file,
        &name,
        &container,
        14,
    );
    assert!(uploaded.status.success(), "{}", stderr(&uploaded));

    let asked = flatstack(&workspace, &["restore"]);
    refused(&asked, "run again with --yes");
    let said = stdout(&asked);
    assert!(
        said.contains(&format!("deletes its control planes ({control_plane})")),
        "{said}"
    );
    assert!(
        said.contains(&format!("keeps the workers ({worker})")),
        "{said}"
    );
    let missing = flatstack(
        &workspace,
        &["restore", "--snapshot", "nope.db.enc", "--yes"],
    );
    refused(&missing, "there is no snapshot nope.db.enc");
    workspace.write_cluster(
        &cluster(&name, 1, "[backup]\nenabled = true\n").replace("1.37.1", "1.36.2"),
    );
    let other_minor = flatstack(&workspace, &["restore", "--yes", "--provision-only"]);
    refused(&other_minor, "a restore keeps the minor");
    workspace.write_cluster(&cluster(&name, 1, "[backup]\nenabled = true\n"));
    assert_eq!(server_id(&control_plane), cp_before, "nothing changed");
    assert!(
        !crate::backup::objects(&container)
            .iter()
            .any(|o| o.starts_with("flatstack-restore.")),
        "nothing staged"
    );
    assert!(!workspace.state_dir().join("restore-pending").exists());

    // The control plane as a cluster made before flatstack encrypted Secrets has it: no key
    // recorded. The restored cluster encrypts them all the same.
    crate::openstack::cli(
        "local-demo",
        &[
            "server",
            "unset",
            "--property",
            "flatstack-secrets-key",
            &control_plane,
        ],
    );
    let restored = flatstack(&workspace, &["restore", "--yes", "--provision-only"]);
    let shown = success(&restored);
    assert!(shown.contains("staged flatstack-restore."), "{shown}");
    assert!(
        crate::up::server_metadata(&control_plane)["flatstack-secrets-key"]
            .as_str()
            .is_some_and(|f| f.starts_with("sha256:")),
        "the new control plane records the Secrets key"
    );
    // Not finished: the cluster has not been seen running (--provision-only).
    assert!(workspace.state_dir().join("restore-pending").exists());
    assert_ne!(
        server_id(&control_plane),
        cp_before,
        "the control plane is new"
    );
    assert_eq!(server_id(&worker), worker_before, "the worker is kept");
    let staged: Vec<String> = crate::backup::objects(&container)
        .into_iter()
        .filter(|o| o.starts_with("flatstack-restore."))
        .collect();
    assert_eq!(staged.len(), 1, "{staged:?}");

    // What the new control plane boots with, as an admin reads it from Nova.
    let admin = admin_view(&control_plane);
    let config = user_data(&admin);
    let seal = SealKey::parse(
        admin["properties"]["flatstack-seal-key"]
            .as_str()
            .expect("the seal key in the server's metadata"),
    )
    .expect("a seal key");
    let sealed_env = ignition_file(&config, "/etc/flatstack/restore.env.sealed")
        .expect("the restore env, sealed");
    assert!(ignition_file(&config, "/etc/flatstack/restore.env").is_none());
    let env = String::from_utf8(seal.open(&sealed_env).expect("opens with the server's key"))
        .expect("text");
    assert_eq!(env_field(&env, "stale"), control_plane);
    // kubeadm 1.37's etcd (the file's minor), as pinned.
    assert_eq!(env_field(&env, "image"), "registry.k8s.io/etcd:3.7.0-0");
    let url = env_field(&env, "url");
    assert!(url.contains("temp_url_sig="), "{url}");
    assert!(ignition_file(&config, "/opt/flatstack/bin/flatstack-restore").is_some());
    assert!(
        ignition_file(&config, "/etc/flatstack/encryption-config.yaml.in").is_some(),
        "the restored control plane encrypts Secrets"
    );
    // The real Swift serves the staged blob at that URL, with no token.
    let fetched = Command::new("curl")
        .args(["-fsS", &url])
        .output()
        .expect("curl");
    assert!(fetched.status.success(), "{}", stderr(&fetched));
    let blob_key = SealKey::parse(&env_field(&env, "key")).expect("the blob's key");
    assert_eq!(blob_key.open(&fetched.stdout).expect("opens"), plain);
    // Debian's real Ignition accepts the config.
    let config_file = base.path().join("control-plane.ign");
    std::fs::write(&config_file, config.to_string()).expect("write");
    let validated = Command::new("ignition-validate")
        .arg(&config_file)
        .output()
        .expect("run ignition-validate");
    assert!(validated.status.success(), "{}", stderr(&validated));
    // The worker's config has nothing of it.
    let worker_config = user_data(&admin_view(&worker));
    assert!(ignition_file(&worker_config, "/etc/flatstack/restore.env.sealed").is_none());
}

/// `restore` through the API (the stand-in, whose objects play the restored etcd's): the
/// control plane's server is built again and registers anew (the node's script deleted its old
/// Node), the worker the snapshot holds a Node of is kept as it is, and the worker made after
/// the snapshot (no Node in the restored cluster: its kubelet would never register again) is
/// deleted and built again in a second round; a Node no server accounts for is deleted; every
/// node is Ready, and the staged blob is gone. Then a restore stopped after its control plane
/// was made is finished by the next `up`.
#[test]
fn restore_builds_again_the_workers_the_snapshot_has_no_node_of() {
    use crate::kube_standin::{StandIn, World};
    use crate::up::{Kubelets, Teardown, cluster, flatstack};
    require_tool("etcd");
    require_tool("etcdctl");
    let name = crate::openstack::unique("revive");
    let workspace = Workspace::new();
    workspace.write_cluster(&cluster(&name, 2, "[backup]\nenabled = true\n"));
    let _teardown = Teardown(&workspace);
    let pki = crate::kube_standin::pki(&workspace);
    let cp = format!("{name}-control-plane-1");
    let (w1, w2) = (format!("{name}-default-1"), format!("{name}-default-2"));
    let gone = format!("{name}-default-9");
    let mut world = World::default();
    world.register(&cp, true);
    world.register(&w1, false);
    world.register(&w2, false);
    let server = StandIn::of_cluster(&pki, world);
    let api = server.address.to_string();
    success(&flatstack(
        &workspace,
        &["up", "--api-address", api.as_str(), "--timeout", "3m"],
    ));
    let container = crate::backup::recorded(&workspace).0;
    let base = tempfile::tempdir().expect("tempdir");
    real_snapshot(base.path());
    let (script, recipient) = crate::backup::rendered_backup(&workspace);
    let uploaded = crate::backup::run_upload(
        &workspace,
        &script,
        &recipient,
        &base.path().join("snapshot.db"),
        &name,
        &container,
        14,
    );
    assert!(uploaded.status.success(), "{}", stderr(&uploaded));
    let before: Vec<String> = [&cp, &w1, &w2].iter().map(|s| server_id(s)).collect();

    // What the restored etcd holds: no Node of the worker made after the snapshot, and none
    // of the control plane (the restoring node deletes it before its API server starts).
    {
        let mut world = server.world.lock().expect("world");
        world.nodes.remove(&w2);
        world.nodes.remove(&cp);
        // The kept worker's Node names its server, as its kubelet's `--provider-id` made it.
        let kept = world.nodes.get_mut(&w1).expect("the kept worker's Node");
        if let Some(spec) = kept.spec.as_mut() {
            spec.provider_id = Some(format!("openstack:///{}", before[1]));
        }
        // And a Node of a worker whose server is gone for good.
        world.register(&gone, false);
        // Secrets of a snapshot of a cluster that did not encrypt them: stored in clear.
        for secret in ["old-a", "old-b"] {
            let path = format!("/api/v1/namespaces/default/secrets/{secret}");
            world.objects.insert(
                path.clone(),
                serde_json::json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": secret, "namespace": "default",
                        "resourceVersion": "7", "uid": format!("uid-{secret}")},
                    "data": {"k": "dmFsdWU="}}),
            );
            world.secrets_in_clear.insert(path);
        }
    }
    let version = |path: &str| -> serde_json::Value {
        server.world.lock().expect("world").objects[path]["metadata"]["resourceVersion"].clone()
    };
    let encrypted = "/api/v1/namespaces/kube-system/secrets/flatstack-etcd-backup";
    let encrypted_version = version(encrypted);
    let _kubelets = Kubelets::start(&server, &name);
    let restored = flatstack(
        &workspace,
        &[
            "restore",
            "--yes",
            "--api-address",
            api.as_str(),
            "--timeout",
            "3m",
        ],
    );
    let out = success(&restored);
    assert!(
        out.contains(&format!("deleting worker {w2}: made after the snapshot")),
        "{out}"
    );
    assert!(
        out.contains("the restored cluster runs; deleted 1 staged snapshot(s)"),
        "{out}"
    );
    assert!(
        !workspace.state_dir().join("restore-pending").exists(),
        "the restore is recorded as finished"
    );
    assert!(
        out.contains(&format!("deleted the Node object of {gone}")),
        "{out}"
    );
    // Every Secret written back: those in clear are stored again (encrypted), with a new
    // resourceVersion and the same data; one stored encrypted already is left as it is.
    assert!(
        out.contains("Secret(s) back, so the API servers store them encrypted"),
        "{out}"
    );
    {
        let world = server.world.lock().expect("world");
        assert!(
            world.secrets_in_clear.is_empty(),
            "every Secret is encrypted"
        );
        for secret in ["old-a", "old-b"] {
            let stored = &world.objects[&format!("/api/v1/namespaces/default/secrets/{secret}")];
            assert_ne!(stored["metadata"]["resourceVersion"], "7", "{stored}");
            assert_eq!(stored["data"]["k"], "dmFsdWU=", "{stored}");
        }
    }
    assert_eq!(version(encrypted), encrypted_version, "not written again");
    assert!(
        out.contains(&format!("cluster `{name}` is up: 3 node(s) Ready")),
        "{out}"
    );
    let after: Vec<String> = [&cp, &w1, &w2].iter().map(|s| server_id(s)).collect();
    assert_ne!(after[0], before[0], "the control plane is new");
    assert_eq!(after[1], before[1], "the worker with a Node is kept");
    assert_ne!(after[2], before[2], "the worker without one is new");
    assert!(
        !crate::backup::objects(&container)
            .iter()
            .any(|o| o.starts_with("flatstack-restore.")),
        "the staged blob is deleted"
    );
    let nodes: Vec<String> = server
        .world
        .lock()
        .expect("world")
        .nodes
        .keys()
        .cloned()
        .collect();
    assert_eq!(nodes, [cp.clone(), w1.clone(), w2.clone()]);

    // A restore stopped once its control plane was made (here: `--provision-only`) is
    // finished by the next `up`: the worker without a Node is built again, the blob and the
    // record go; the workers that run are left as they are.
    {
        let mut world = server.world.lock().expect("world");
        world.nodes.remove(&w2);
        world.nodes.remove(&cp);
    }
    success(&flatstack(
        &workspace,
        &["restore", "--yes", "--provision-only"],
    ));
    assert!(workspace.state_dir().join("restore-pending").exists());
    let second: Vec<String> = [&cp, &w1, &w2].iter().map(|s| server_id(s)).collect();
    let finished = success(&flatstack(
        &workspace,
        &["up", "--api-address", api.as_str(), "--timeout", "3m"],
    ));
    assert!(
        finished.contains(&format!("deleting worker {w2}: made after the snapshot")),
        "{finished}"
    );
    assert!(
        finished.contains("the restored cluster runs; deleted 1 staged snapshot(s)"),
        "{finished}"
    );
    assert!(!workspace.state_dir().join("restore-pending").exists());
    let third: Vec<String> = [&cp, &w1, &w2].iter().map(|s| server_id(s)).collect();
    assert_eq!(
        third[0], second[0],
        "the control plane the restore made is kept"
    );
    assert_eq!(third[1], second[1], "the worker with a Node is kept");
    assert_ne!(third[2], second[2], "the worker without one is new");
    // A converged cluster's `up` has nothing of a restore left to do.
    let again = success(&flatstack(
        &workspace,
        &["up", "--api-address", api.as_str(), "--timeout", "3m"],
    ));
    assert!(!again.contains("deleting worker"), "{again}");
}
