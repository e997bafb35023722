//! Shared test equipment: a scratch workspace, the flatstack binary, a loopback file server
//! standing in for the sysext download host, and Debian's real Ignition.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

pub const KUBERNETES_VERSION: &str = "1.37.1";
pub const SYSEXT_NAME: &str = "kubernetes-v1.37.1-x86-64.raw";
pub const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ3TfW5bG1sUu2Y6QzYrQb4N8v0o0Hq1rj9bUqWqfG1c dev@example";

/// A scratch directory with a cluster file, a state directory and an output directory.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        Workspace {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn cluster_file(&self) -> PathBuf {
        self.path("cluster.toml")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path("state")
    }

    pub fn out_dir(&self) -> PathBuf {
        self.path("out")
    }

    pub fn write_cluster(&self, text: &str) {
        std::fs::write(self.cluster_file(), text).expect("write cluster file");
    }

    /// Runs flatstack in the workspace with the workspace's cluster file.
    pub fn flatstack(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_flatstack"))
            .current_dir(self.dir.path())
            .env_remove("FLATSTACK_FILE")
            .env_remove("FLATSTACK_STATE_DIR")
            .env("HOME", self.dir.path())
            .env("XDG_DATA_HOME", self.path("xdg"))
            .arg("--file")
            .arg(self.cluster_file())
            .args(args)
            .output()
            .expect("run flatstack")
    }

    /// `flatstack render` into the workspace's out and state directories.
    pub fn render(&self, extra: &[&str]) -> Output {
        let out = self.out_dir();
        let state = self.state_dir();
        let mut args = vec![
            "render",
            "--out",
            out.to_str().expect("utf-8 path"),
            "--state-dir",
            state.to_str().expect("utf-8 path"),
        ];
        args.extend_from_slice(extra);
        self.flatstack(&args)
    }
}

/// An error with every cause after it, as the CLI prints it.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        text.push_str(": ");
        text.push_str(&next.to_string());
        cause = next.source();
    }
    text
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Asserts success and returns stdout.
/// Every leaf of a JSON object by its key path: scalars, lists and empty objects (lists are
/// values, not descended into).
pub fn leaf_values(value: &serde_json::Value) -> BTreeMap<Vec<String>, serde_json::Value> {
    fn walk(
        value: &serde_json::Value,
        path: &mut Vec<String>,
        out: &mut BTreeMap<Vec<String>, serde_json::Value>,
    ) {
        match value.as_object() {
            Some(map) if !map.is_empty() => {
                for (key, child) in map {
                    path.push(key.clone());
                    walk(child, path, out);
                    path.pop();
                }
            }
            _ => {
                out.insert(path.clone(), value.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(value, &mut Vec::new(), &mut out);
    out
}

/// Asserts that `output` is a refusal of invalid input (exit 2) whose message holds
/// `fragment`; returns the message.
pub fn refused(output: &Output, fragment: &str) -> String {
    let message = stderr(output);
    assert_eq!(output.status.code(), Some(2), "{message}");
    assert!(
        message.contains(fragment),
        "wanted `{fragment}` in:\n{message}"
    );
    message
}

pub fn success(output: &Output) -> String {
    assert!(
        output.status.success(),
        "flatstack failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        stdout(output),
        stderr(output)
    );
    stdout(output)
}

/// A valid cluster file whose sysext comes from `sysext_url` with digest `sha256`.
pub fn cluster_text(sysext_base: &str, sha256: &str, workers: u32) -> String {
    format!(
        r#"name = "demo"
cloud = "openstack"

[kubernetes]
version = "{KUBERNETES_VERSION}"
sysext_url = "{sysext_base}/{SYSEXT_NAME}"
sysext_sha256 = "{sha256}"
sysupdate_url = "{sysext_base}/kubernetes"

[control_plane]
flavor = "m3.small"

[[worker_pools]]
name = "default"
count = {workers}
flavor = "m3.small"
labels = {{ "example.org/tier" = "general" }}
taints = ["example.org/dedicated=batch:NoSchedule"]

[access]
ssh_public_keys = ["{SSH_KEY}"]
ssh_cidrs = ["203.0.113.0/24"]
"#
    )
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Fails the test with a clear message when a tool the test checks against is missing.
/// A TCP port on 127.0.0.1 that nothing listens on at the moment.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn require_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` is not installed: run scripts/test.sh, which installs it"
    );
}

/// A tiny HTTP/1.1 file server on 127.0.0.1, standing in for the sysext and Flatcar release
/// hosts: answers `Range: bytes=N-` with 206, and can drop a connection part-way.
pub struct FileServer {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    pub requests: Arc<AtomicUsize>,
    /// Every request line with its Range header, if any.
    pub seen: Arc<Mutex<Vec<String>>>,
    /// Path -> bytes after which the next full answer for it is cut off.
    drops: Arc<Mutex<BTreeMap<String, usize>>>,
    thread: Option<JoinHandle<()>>,
}

/// Where a server sends a request instead of answering it: `/path` -> `Location` (302).
pub type Redirects = fn(&str) -> Option<String>;

impl FileServer {
    pub fn serve(files: BTreeMap<String, Vec<u8>>) -> FileServer {
        FileServer::serve_with(files, |_| None)
    }

    /// Serves `files`, answering 302 where `redirects` gives a location.
    pub fn serve_with(files: BTreeMap<String, Vec<u8>>, redirects: Redirects) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let address = listener.local_addr().expect("address");
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let drops = Arc::new(Mutex::new(BTreeMap::new()));
        let files = Arc::new(files);
        let thread = {
            let (stop, requests, seen, drops) =
                (stop.clone(), requests.clone(), seen.clone(), drops.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        requests.fetch_add(1, Ordering::SeqCst);
                        let _ = answer(stream, &files, redirects, &seen, &drops);
                    }
                }
            })
        };
        FileServer {
            address,
            stop,
            requests,
            seen,
            drops,
            thread: Some(thread),
        }
    }

    /// Cuts the next full answer for `path` off after `bytes` bytes of its body.
    pub fn drop_once(&self, path: &str, bytes: usize) {
        self.drops
            .lock()
            .expect("drops")
            .insert(path.trim_start_matches('/').to_string(), bytes);
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.address);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer(
    stream: TcpStream,
    files: &BTreeMap<String, Vec<u8>>,
    redirects: Redirects,
    seen: &Mutex<Vec<String>>,
    drops: &Mutex<BTreeMap<String, usize>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut range_start = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
        if let Some(value) = header.to_ascii_lowercase().strip_prefix("range: bytes=") {
            range_start = value.trim().trim_end_matches('-').parse::<usize>().ok();
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_string();
    if let Ok(mut seen) = seen.lock() {
        seen.push(match range_start {
            Some(start) => format!("GET /{path} from {start}"),
            None => format!("GET /{path}"),
        });
    }
    let mut stream = stream;
    if let Some(location) = redirects(&format!("/{path}")) {
        write!(
            stream,
            "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        return stream.flush();
    }
    match (files.get(&path), range_start) {
        (Some(body), Some(start)) if start < body.len() => {
            write!(
                stream,
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
                body.len() - start,
                body.len() - 1,
                body.len()
            )?;
            stream.write_all(&body[start..])?;
        }
        (Some(body), _) => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            let cut = drops.lock().ok().and_then(|mut d| d.remove(&path));
            match cut {
                Some(after) => {
                    stream.write_all(&body[..after.min(body.len())])?;
                    stream.flush()?;
                    // Gone mid-answer, as a dropped connection.
                    return stream.shutdown(std::net::Shutdown::Both);
                }
                None => stream.write_all(body)?,
            }
        }
        (None, _) => write!(
            stream,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?,
    }
    stream.flush()
}

/// A root file system tree produced by Ignition's real `files` stage.
pub struct AppliedRoot {
    pub root: PathBuf,
    pub log: String,
}

const IGNITION: &str = "/usr/lib/dracut/modules.d/30ignition/ignition";

/// Runs Debian's Ignition (fetch, then files stage) for `config` on a fresh scratch root.
/// Returns the tree, or the log when a stage fails.
pub fn apply_ignition(config: &Path, scratch: &Path) -> Result<AppliedRoot, String> {
    assert!(
        Path::new(IGNITION).is_file(),
        "{IGNITION} missing: run scripts/test.sh"
    );
    let root = scratch.join("root");
    let etc = root.join("etc");
    std::fs::create_dir_all(etc.join("selinux")).expect("scratch root");
    std::fs::write(
        etc.join("selinux/config"),
        "SELINUX=disabled\nSELINUXTYPE=targeted\n",
    )
    .expect("selinux config");
    // A minimal account database, like a fresh Flatcar's, for useradd to extend.
    std::fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/bash\n").expect("passwd");
    std::fs::write(etc.join("group"), "root:x:0:\ndocker:x:233:\nsudo:x:150:\n").expect("group");
    std::fs::write(etc.join("shadow"), "root:*:19000:0:99999:7:::\n").expect("shadow");
    std::fs::write(etc.join("gshadow"), "root:*::\ndocker:!::\nsudo:!::\n").expect("gshadow");
    // Debian's Ignition relabels for SELinux after the files stage; Flatcar does not enforce it.
    let fake_bin = scratch.join("fake-bin");
    std::fs::create_dir_all(&fake_bin).expect("fake bin");
    let setfiles = fake_bin.join("setfiles");
    std::fs::write(&setfiles, "#!/bin/sh\ncat > /dev/null\n").expect("setfiles");
    set_mode(&setfiles, 0o755);
    let path = format!(
        "{}:{}",
        fake_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut log = String::new();
    for stage in ["fetch", "files"] {
        let output = Command::new(IGNITION)
            .env("PATH", &path)
            .env("IGNITION_CONFIG_FILE", config)
            .arg(format!("--root={}", root.display()))
            .arg("--platform=file")
            .arg(format!("--stage={stage}"))
            .arg("--log-to-stdout")
            .arg(format!(
                "--config-cache={}",
                scratch.join("cache.json").display()
            ))
            .arg(format!("--state-file={}", scratch.join("state").display()))
            .output()
            .expect("run ignition");
        log.push_str(&String::from_utf8_lossy(&output.stdout));
        log.push_str(&String::from_utf8_lossy(&output.stderr));
        if !output.status.success() {
            return Err(log);
        }
    }
    Ok(AppliedRoot { root, log })
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

pub fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// The decompressed contents of a file in an Ignition config, by path.
pub fn ignition_file(config: &serde_json::Value, path: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    use std::io::Read as _;
    let file = config["storage"]["files"]
        .as_array()?
        .iter()
        .find(|f| f["path"] == path)?;
    let source = file["contents"]["source"].as_str()?;
    let data = source.strip_prefix("data:;base64,")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .ok()?;
    if file["contents"]["compression"] == "gzip" {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .ok()?;
        Some(out)
    } else {
        Some(bytes)
    }
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("json")
}

/// Every file under `dir` whose contents hold a PEM private key.
pub fn private_keys_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).expect("read dir").flatten() {
            let path = entry.path();
            let kind = entry.file_type().expect("file type");
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let bytes = std::fs::read(&path).expect("read");
                if String::from_utf8_lossy(&bytes).contains("PRIVATE KEY-----") {
                    found.push(
                        path.strip_prefix(dir)
                            .unwrap_or(&path)
                            .display()
                            .to_string(),
                    );
                }
            }
        }
    }
    found.sort();
    found
}

/// An Ignition config with the contents of its sealed files blanked, and their paths.
pub fn without_sealed_bytes(config: &[u8]) -> (serde_json::Value, Vec<String>) {
    let mut config: serde_json::Value = serde_json::from_slice(config).expect("Ignition JSON");
    let mut sealed = Vec::new();
    for file in config["storage"]["files"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        let path = file["path"].as_str().unwrap_or_default().to_string();
        if path.ends_with(".sealed") {
            file["contents"]["source"] = serde_json::Value::Null;
            sealed.push(path);
        }
    }
    (config, sealed)
}

/// A token's shape: `[a-z0-9]{6}.[a-z0-9]{16}`.
pub fn is_token(text: &str) -> bool {
    let valid = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    text.split_once('.')
        .is_some_and(|(id, secret)| valid(id, 6) && valid(secret, 16))
}
