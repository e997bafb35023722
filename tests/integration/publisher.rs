//! The Kubernetes sysext digest read from its publisher. Two loopback servers stand in for
//! the Flatcar sysext bakery: one laid out like `https://extensions.flatcar.org/extensions/`,
//! answering 302 by the rules of the bakery's `tools/http-url-rewrite-server/Caddyfile`, and
//! one laid out like the GitHub release downloads it redirects to (`kubernetes-vX.Y.Z`
//! releases with both architectures' images and their `SHA256SUMS`, the `kubernetes`
//! metadata release, the global `SHA256SUMS` release), as the bakery's `release.sh` and
//! `release_meta.sh` publish them. Debian's real Ignition then fetches the image through the
//! redirect and checks it against the digest flatstack read.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::support::*;
use crate::up::flatstack;

/// The release-download server's base URL, for the redirect rules (set once per test binary
/// run: each publisher below redirects to the download server made with it).
static DOWNLOADS: OnceLock<std::sync::Mutex<String>> = OnceLock::new();

fn downloads_base() -> String {
    DOWNLOADS
        .get()
        .and_then(|m| m.lock().ok().map(|s| s.clone()))
        .unwrap_or_default()
}

/// The Caddyfile's rules, with the release downloads at `downloads_base()`:
/// `.../extensions/[dir/]NAME-VERSION-ARCH.raw` -> `NAME-VERSION/NAME-VERSION-ARCH.raw`,
/// `/extensions/RELEASE/SHA256SUMS` -> `RELEASE/SHA256SUMS`,
/// `/extensions/SHA256SUMS` -> `SHA256SUMS/SHA256SUMS`; anything else goes to the bakery's
/// documentation site, which this stand-in does not serve.
fn bakery_redirects(path: &str) -> Option<String> {
    let base = downloads_base();
    let rest = path.strip_prefix("/extensions/")?;
    if rest == "SHA256SUMS" {
        return Some(format!("{base}/SHA256SUMS/SHA256SUMS"));
    }
    if let Some((release, "SHA256SUMS")) = rest.split_once('/')
        && !release.is_empty()
        && !release.contains('/')
    {
        return Some(format!("{base}/{release}/SHA256SUMS"));
    }
    let file = rest.rsplit('/').next()?;
    for arch in ["x86-64", "arm64"] {
        if let Some(stem) = file.strip_suffix(&format!("-{arch}.raw"))
            && let Some((name, version)) = stem.rsplit_once('-')
        {
            return Some(format!(
                "{base}/{name}-{version}/{name}-{version}-{arch}.raw"
            ));
        }
    }
    Some("https://flatcar.github.io/sysext-bakery/".to_string())
}

/// Images of a few releases, and the servers publishing them.
struct Bakery {
    /// The release-download server (GitHub's role).
    downloads: FileServer,
    /// The redirector (extensions.flatcar.org's role).
    publisher: FileServer,
    images: BTreeMap<String, Vec<u8>>,
}

const RELEASES: [&str; 4] = ["v1.37.1", "v1.37.0", "v1.36.2", "v1.35.6"];

fn image_bytes(release: &str, arch: &str, salt: u8) -> Vec<u8> {
    let seed = release
        .bytes()
        .chain(arch.bytes())
        .fold(salt, |a, b| a.wrapping_mul(31).wrapping_add(b));
    (0..32 * 1024)
        .map(|i| (i as u8).wrapping_mul(seed | 1))
        .collect()
}

impl Bakery {
    /// Publishes [`RELEASES`] (`salt` changes every image's bytes, as a rebuild would).
    fn publish(salt: u8) -> Bakery {
        let mut files = BTreeMap::new();
        let mut images = BTreeMap::new();
        let mut every_kubernetes = String::new();
        for release in RELEASES {
            let mut sums = String::new();
            for arch in ["x86-64", "arm64"] {
                let name = format!("kubernetes-{release}-{arch}.raw");
                let bytes = image_bytes(release, arch, salt);
                sums.push_str(&format!("{}  {name}\n", sha256_hex(&bytes)));
                files.insert(format!("kubernetes-{release}/{name}"), bytes.clone());
                images.insert(name, bytes);
            }
            files.insert(
                format!("kubernetes-{release}/SHA256SUMS"),
                sums.clone().into_bytes(),
            );
            every_kubernetes.push_str(&sums);
        }
        files.insert(
            "kubernetes/SHA256SUMS".into(),
            every_kubernetes.clone().into_bytes(),
        );
        // The global file also lists other extensions, and (like a lagging rebuild) not v1.37.1.
        let global: String = every_kubernetes
            .lines()
            .filter(|l| !l.contains("v1.37.1"))
            .map(|l| format!("{l}\n"))
            .chain(std::iter::once(format!(
                "{}  docker-28.0.1-x86-64.raw\n",
                "cd".repeat(32)
            )))
            .collect();
        files.insert("SHA256SUMS/SHA256SUMS".into(), global.into_bytes());
        let downloads = FileServer::serve(files);
        let cell = DOWNLOADS.get_or_init(|| std::sync::Mutex::new(String::new()));
        *cell.lock().expect("downloads") = downloads.base_url();
        let publisher = FileServer::serve_with(BTreeMap::new(), bakery_redirects);
        Bakery {
            downloads,
            publisher,
            images,
        }
    }

    fn extensions(&self) -> String {
        format!("{}/extensions", self.publisher.base_url())
    }

    /// Requests for SHA256SUMS files, at either server.
    fn sums_requests(&self) -> usize {
        [&self.publisher, &self.downloads]
            .iter()
            .map(|s| {
                s.seen
                    .lock()
                    .expect("seen")
                    .iter()
                    .filter(|line| line.ends_with("SHA256SUMS"))
                    .count()
            })
            .sum()
    }
}

/// The publisher tests run one at a time: they share the redirect target.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn cluster(extensions: &str, version: &str) -> String {
    format!(
        r#"name = "demo"
cloud = "local-demo"
[kubernetes]
version = "{version}"
sysext_url = "{extensions}/kubernetes-v{version}-x86-64.raw"
[control_plane]
flavor = "m3.tiny"
[[worker_pools]]
name = "default"
count = 1
flavor = "m3.tiny"
"#
    )
}

fn verification_hash(workspace: &Workspace, node: &str) -> String {
    let config = read_json(&workspace.out_dir().join(format!("{node}.ign")));
    let image = config["storage"]["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|f| f["path"].as_str().is_some_and(|p| p.ends_with(".raw")))
        .expect("sysext file")
        .clone();
    image["contents"]["verification"]["hash"]
        .as_str()
        .expect("hash")
        .to_string()
}

#[test]
fn init_and_render_read_the_digest_from_the_publisher_once_and_ignition_accepts_the_image() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bakery = Bakery::publish(1);
    let workspace = Workspace::new();

    // `init` proposes the newest release of the newest supported minor the publisher lists.
    let out = success(&workspace.flatstack(&[
        "init",
        "--name",
        "demo",
        "--sysext-mirror",
        &bakery.extensions(),
    ]));
    assert!(
        out.contains("Kubernetes v1.37.1: the newest supported release"),
        "{out}"
    );
    let text = std::fs::read_to_string(workspace.cluster_file()).expect("written");
    assert!(text.contains("version = \"1.37.1\""), "{text}");
    assert!(
        !text.lines().any(|l| l.starts_with("sysext_sha256")),
        "{text}"
    );
    let before = bakery.sums_requests();

    // No digest in the file: render reads the release's own SHA256SUMS through the redirect.
    let out = success(&workspace.render(&["--endpoint", "203.0.113.7"]));
    let wanted = sha256_hex(&bakery.images["kubernetes-v1.37.1-x86-64.raw"]);
    assert_eq!(
        verification_hash(&workspace, "demo-control-plane-1"),
        format!("sha256-{wanted}")
    );
    assert_eq!(
        verification_hash(&workspace, "demo-default-1"),
        format!("sha256-{wanted}")
    );
    let release_sums = format!("{}/kubernetes-v1.37.1/SHA256SUMS", bakery.extensions());
    assert!(
        out.contains(&format!("read now from {release_sums}")),
        "{out}"
    );
    assert_eq!(
        bakery.sums_requests() - before,
        2,
        "one redirect, one download"
    );

    // Recorded in the state directory, with where and when.
    let record = read_json(&workspace.state_dir().join("sysext-digests.json"));
    let entry = &record["kubernetes-v1.37.1-x86-64.raw"];
    assert_eq!(entry["sha256"], wanted.as_str());
    assert_eq!(entry["url"], release_sums.as_str());
    assert_eq!(
        entry["read_on"].as_str().map(str::len),
        Some(10),
        "{record}"
    );
    assert_eq!(
        mode_of(&workspace.state_dir().join("sysext-digests.json")),
        0o600
    );

    // Debian's Ignition fetches the image through the publisher's redirect and accepts it.
    let config = workspace.out_dir().join("demo-default-1.ign");
    let applied = apply_ignition(&config, &workspace.path("scratch"))
        .unwrap_or_else(|log| panic!("Ignition failed:\n{log}"));
    let image = applied
        .root
        .join("opt/extensions/kubernetes/kubernetes-v1.37.1-x86-64.raw");
    assert_eq!(
        std::fs::read(&image).expect("image"),
        bakery.images["kubernetes-v1.37.1-x86-64.raw"]
    );
    let seen = bakery.publisher.seen.lock().expect("seen").clone();
    assert!(
        seen.iter()
            .any(|l| l == "GET /extensions/kubernetes-v1.37.1-x86-64.raw"),
        "{seen:?}"
    );

    // Later runs use the record: nothing is fetched again, even with the publisher gone.
    let before = bakery.sums_requests();
    let out = success(&workspace.render(&["--endpoint", "203.0.113.7"]));
    assert!(out.contains("recorded for this cluster"), "{out}");
    assert_eq!(bakery.sums_requests(), before);
    drop(bakery);
    let out = success(&workspace.render(&["--endpoint", "203.0.113.7"]));
    assert!(out.contains("recorded for this cluster"), "{out}");
    assert_eq!(
        verification_hash(&workspace, "demo-control-plane-1"),
        format!("sha256-{wanted}")
    );
}

/// A mirror laid out as systemd-sysupdate expects: images and one `SHA256SUMS` in one directory.
fn flat_mirror(salt: u8) -> (FileServer, String) {
    let name = "kubernetes-v1.37.0-x86-64.raw";
    let image = image_bytes("v1.37.0", "x86-64", salt);
    let sha = sha256_hex(&image);
    let mut files = BTreeMap::new();
    files.insert(format!("mirror/{name}"), image);
    files.insert(
        "mirror/SHA256SUMS".to_string(),
        format!(
            "{}  docker-28.0.1-x86-64.raw\n{sha}  {name}\n",
            "ef".repeat(32)
        )
        .into_bytes(),
    );
    (FileServer::serve(files), sha)
}

#[test]
fn a_mirror_is_read_through_its_directory_sums_and_a_changed_digest_is_reported_not_followed() {
    let (mirror, recorded) = flat_mirror(2);
    let workspace = Workspace::new();
    let directory = format!("{}/mirror", mirror.base_url());
    workspace.write_cluster(&cluster(&directory, "1.37.0"));
    let out = success(&workspace.render(&[]));
    assert!(
        out.contains(&format!("read now from {directory}/SHA256SUMS")),
        "{out}"
    );
    let seen = mirror.seen.lock().expect("seen").clone();
    assert_eq!(
        seen,
        [
            "GET /mirror/kubernetes-v1.37.0/SHA256SUMS",
            "GET /mirror/SHA256SUMS"
        ],
        "the release's own SHA256SUMS first, then the directory's"
    );

    // The mirror's image is rebuilt: plan says so and keeps the recorded digest.
    drop(mirror);
    let (rebuilt, listed) = flat_mirror(3);
    assert_ne!(recorded, listed);
    workspace.write_cluster(&cluster(
        &format!("{}/mirror", rebuilt.base_url()),
        "1.37.0",
    ));
    let plan = flatstack(&workspace, &["plan"]);
    let (out, err) = (success(&plan), stderr(&plan));
    assert!(
        out.contains(&format!("sha256:{recorded} (recorded for this cluster")),
        "{out}"
    );
    assert!(err.contains(&format!("now lists sha256:{listed}")), "{err}");
    assert!(
        err.contains(&format!("not the sha256:{recorded} recorded")),
        "{err}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&flatstack(&workspace, &["plan", "--output", "json"]).stdout)
            .expect("plan json");
    assert_eq!(json["sysext"]["sha256"], recorded.as_str());
    assert_eq!(json["sysext"]["origin"]["from"], "recorded");
    assert_eq!(json["sysext_publisher_lists"], listed.as_str());
    success(&workspace.render(&[]));
    assert_eq!(
        verification_hash(&workspace, "demo-default-1"),
        format!("sha256-{recorded}")
    );
}

#[test]
fn an_unpublished_release_is_refused_with_the_published_ones_and_nothing_written() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bakery = Bakery::publish(4);
    let workspace = Workspace::new();
    workspace.write_cluster(&cluster(&bakery.extensions(), "1.37.9"));
    for args in [
        vec!["render", "--out", "out"],
        vec!["plan"],
        vec!["up", "--provision-only"],
    ] {
        let output = flatstack(&workspace, &args);
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {message}");
        assert!(
            message.contains("Kubernetes v1.37.9 is not published"),
            "{message}"
        );
        assert!(
            message
                .contains("published releases of Kubernetes 1.37, newest first: v1.37.1, v1.37.0"),
            "{message}"
        );
        assert!(
            !workspace.state_dir().exists(),
            "{args:?} wrote the state directory"
        );
        assert!(!workspace.path("out").exists(), "{args:?} wrote configs");
    }
}

#[test]
fn an_unreachable_publisher_is_an_error_naming_the_url() {
    let workspace = Workspace::new();
    // A port nothing listens on any more.
    let gone = FileServer::serve(BTreeMap::new());
    let base = format!("{}/extensions", gone.base_url());
    drop(gone);
    workspace.write_cluster(&cluster(&base, "1.37.1"));
    let output = workspace.render(&[]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(
        message.contains("cannot read the SHA-256 of kubernetes-v1.37.1-x86-64.raw"),
        "{message}"
    );
    assert!(
        message.contains(&format!("{base}/kubernetes-v1.37.1/SHA256SUMS: ")),
        "{message}"
    );
    assert!(
        message.contains(&format!("{base}/SHA256SUMS: ")),
        "{message}"
    );
    assert!(!workspace.state_dir().exists());
}
