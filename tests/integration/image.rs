//! `flatstack image ensure` and `image list` against the local OpenStack's Glance, with a
//! loopback server laid out like Flatcar's release servers: a synthetic qcow2 made by
//! `qemu-img`, compressed by `bzip2` (two concatenated streams, as parallel compressors write),
//! a DIGESTS file, and detached signatures made by `gpg` with keys made in the test (a primary
//! that only certifies and a signing subkey, like Flatcar's). The `openstack` CLI is the witness.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use sha2::{Digest, Sha512};

use crate::openstack::{cli, clouds_yaml};
use crate::support::{FileServer, require_tool, stderr, stdout};

const FILE: &str = "flatcar_production_openstack_image.img.bz2";

/// A GnuPG home with one key: a certify-only primary and a signing subkey.
struct TestKey {
    home: tempfile::TempDir,
    primary: String,
    subkey: String,
}

impl TestKey {
    /// `faked_time` (gpg's `YYYYMMDDTHHMMSS`) makes the key, and later signatures, at that time;
    /// `expires` is the subkey's lifetime (`1y`, `never`).
    fn new(faked_time: Option<&str>, expires: &str) -> TestKey {
        require_tool("gpg");
        let home = tempfile::tempdir().expect("gnupg home");
        // Start the agent with no pipes of ours: one gpg would otherwise spawn it holding our
        // stdout, and waiting for that output would never end.
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", home.path())
            .args(["--launch", "gpg-agent"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        gpg(
            home.path(),
            faked_time,
            &[
                "--quick-gen-key",
                "flatstack test <test@flatstack.invalid>",
                "rsa2048",
                "cert",
                "never",
            ],
        );
        let primary = fingerprints(home.path()).remove(0);
        gpg(
            home.path(),
            faked_time,
            &["--quick-add-key", &primary, "rsa2048", "sign", expires],
        );
        let subkey = fingerprints(home.path())[1].clone();
        TestKey {
            home,
            primary,
            subkey,
        }
    }

    /// The public key file, armored.
    fn export(&self, to: &Path) {
        let output = gpg(
            self.home.path(),
            None,
            &["--armor", "--export", &self.primary],
        );
        std::fs::write(to, output.stdout).expect("write key");
    }

    /// A binary detached signature of `data` by the signing subkey.
    fn sign(&self, data: &[u8], faked_time: Option<&str>) -> Vec<u8> {
        let input = self.home.path().join("to-sign");
        let output = self.home.path().join("to-sign.sig");
        std::fs::write(&input, data).expect("write");
        let subkey = format!("{}!", self.subkey);
        gpg(
            self.home.path(),
            faked_time,
            &[
                "--local-user",
                &subkey,
                "--detach-sign",
                "-o",
                &output.to_string_lossy(),
                &input.to_string_lossy(),
            ],
        );
        std::fs::read(output).expect("signature")
    }
}

fn gpg(home: &Path, faked_time: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new("gpg");
    command.env("GNUPGHOME", home).args([
        "--batch",
        "--yes",
        "--pinentry-mode",
        "loopback",
        "--passphrase",
        "",
    ]);
    if let Some(time) = faked_time {
        command.arg(format!("--faked-system-time={time}!"));
    }
    let output = command.args(args).output().expect("run gpg");
    assert!(
        output.status.success(),
        "gpg {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Fingerprints of the keyring's primary key and subkeys, in order.
fn fingerprints(home: &Path) -> Vec<String> {
    let output = gpg(home, None, &["--with-colons", "--list-keys"]);
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.starts_with("fpr:"))
        .filter_map(|l| l.split(':').nth(9).map(str::to_string))
        .collect()
}

impl Drop for TestKey {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "gpg-agent"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A qcow2 made by `qemu-img` from 6 MiB of patterned data, and its bzip2 form in two streams.
fn synthetic_image(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    require_tool("qemu-img");
    require_tool("bzip2");
    let raw = dir.join("disk.raw");
    let data: Vec<u8> = (0..6 * 1024 * 1024u32)
        .map(|i| ((i / 4096) as u8) ^ ((i.wrapping_mul(2_654_435_761) >> 24) as u8))
        .collect();
    std::fs::write(&raw, &data).expect("raw");
    let qcow2 = dir.join("disk.qcow2");
    let status = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2)
        .status()
        .expect("qemu-img");
    assert!(status.success());
    let image = std::fs::read(&qcow2).expect("qcow2");
    let half = image.len() / 2;
    let mut compressed = Vec::new();
    for (n, part) in [&image[..half], &image[half..]].into_iter().enumerate() {
        let piece = dir.join(format!("part-{n}"));
        std::fs::write(&piece, part).expect("part");
        let out = Command::new("bzip2")
            .arg("-c")
            .arg(&piece)
            .output()
            .expect("bzip2");
        assert!(out.status.success());
        compressed.extend(out.stdout);
    }
    (image, compressed)
}

fn digests(compressed: &[u8]) -> String {
    format!(
        "# SHA512 HASH\n{}  {FILE}\n",
        hex::encode(Sha512::digest(compressed))
    )
}

/// A Flatcar version no earlier run used, so nothing is reused by accident.
fn fresh_version() -> String {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).expect("random");
    let n = u32::from_le_bytes(bytes);
    format!(
        "{}.{}.{}",
        9000 + n % 1000,
        (n >> 10) % 100,
        (n >> 17) % 1000
    )
}

/// The release files of `version`, served like the release server lays them out.
fn release_files(
    version: &str,
    compressed: &[u8],
    signature: Option<&[u8]>,
    digests: &str,
) -> BTreeMap<String, Vec<u8>> {
    let dir = format!("amd64-usr/{version}");
    let mut files = BTreeMap::from([
        (format!("{dir}/{FILE}"), compressed.to_vec()),
        (format!("{dir}/{FILE}.DIGESTS"), digests.as_bytes().to_vec()),
        (
            "amd64-usr/current/version.txt".to_string(),
            format!("FLATCAR_BUILD=9\nFLATCAR_VERSION={version}\nFLATCAR_VERSION_ID={version}\n")
                .into_bytes(),
        ),
    ]);
    if let Some(signature) = signature {
        files.insert(format!("{dir}/{FILE}.sig"), signature.to_vec());
    }
    files
}

fn flatstack(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flatstack"))
        .current_dir(dir)
        .env("OS_CLIENT_CONFIG_FILE", clouds_yaml())
        .env_remove("OS_CLOUD")
        .args(["--cloud", "local-demo", "--file", "no-cluster.toml"])
        .args(args)
        .output()
        .expect("run flatstack")
}

/// Every Glance image (any status) of `version`, as the CLI lists them.
fn images_of(version: &str) -> Vec<Value> {
    let property = format!("os_version={version}");
    cli(
        "local-demo",
        &[
            "image",
            "list",
            "--property",
            &property,
            "--long",
            "-f",
            "json",
        ],
    )
    .as_array()
    .cloned()
    .unwrap_or_default()
}

fn delete_images_of(version: &str) {
    for image in images_of(version) {
        if let Some(id) = image["ID"].as_str() {
            cli("local-demo", &["image", "delete", id]);
        }
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    key: TestKey,
    key_file: PathBuf,
    image: Vec<u8>,
    compressed: Vec<u8>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("dir");
    let key = TestKey::new(None, "1y");
    let key_file = dir.path().join("signing-key.asc");
    key.export(&key_file);
    let (image, compressed) = synthetic_image(dir.path());
    Fixture {
        dir,
        key,
        key_file,
        image,
        compressed,
    }
}

#[test]
fn ensure_streams_a_verified_image_into_glance_resumes_and_reuses_it() {
    let f = fixture();
    let version = fresh_version();
    let signature = f.key.sign(&f.compressed, None);
    let server = FileServer::serve(release_files(
        &version,
        &f.compressed,
        Some(&signature),
        &digests(&f.compressed),
    ));
    // The first answer for the image breaks off a third of the way in.
    server.drop_once(
        &format!("amd64-usr/{version}/{FILE}"),
        f.compressed.len() / 3,
    );
    let key = f.key_file.to_string_lossy().to_string();
    let base = server.base_url();
    let ensure = [
        "image",
        "ensure",
        "--channel",
        "beta",
        "--base-url",
        &base,
        "--signing-key",
        &key,
        "--visibility",
        "community",
    ];

    let first = flatstack(f.dir.path(), &ensure);
    let out = stdout(&first);
    assert!(first.status.success(), "{out}{}", stderr(&first));
    assert!(out.contains(&format!("Flatcar {version} x86_64")), "{out}");
    assert!(
        out.contains(&f.key.subkey),
        "names the signing subkey: {out}"
    );
    assert!(out.contains("download resumed 1 time(s)"), "{out}");
    let seen = server.seen.lock().expect("seen").clone();
    assert!(
        seen.iter()
            .any(|s| s.starts_with(&format!("GET /amd64-usr/{version}/{FILE} from "))),
        "a ranged request resumed the download: {seen:?}"
    );

    // What Glance holds, as the CLI sees it.
    let images = images_of(&version);
    assert_eq!(images.len(), 1, "{images:?}");
    let id = images[0]["ID"].as_str().expect("id").to_string();
    let shown = cli("local-demo", &["image", "show", &id, "-f", "json"]);
    assert_eq!(shown["status"], "active");
    assert_eq!(shown["name"], format!("flatcar-beta-{version}"));
    assert_eq!(shown["disk_format"], "qcow2");
    assert_eq!(shown["visibility"], "community");
    let properties = &shown["properties"];
    for (key, value) in [
        ("hw_disk_bus", "scsi"),
        ("hw_scsi_model", "virtio-scsi"),
        ("hw_qemu_guest_agent", "yes"),
        ("os_distro", "flatcar"),
        ("architecture", "x86_64"),
    ] {
        assert_eq!(properties[key], value, "{key} in {properties}");
    }
    assert_eq!(properties["os_version"], version.as_str());
    // Glance's schema types this one boolean: "yes" is stored as true.
    assert_eq!(properties["os_require_quiesce"], true);
    // Glance's checksum is that of the decompressed image.
    assert_eq!(properties["os_hash_algo"], "sha512");
    assert_eq!(
        properties["os_hash_value"],
        hex::encode(Sha512::digest(&f.image)).as_str()
    );

    // Run again: reused, nothing downloaded.
    let requests = server.requests.load(std::sync::atomic::Ordering::SeqCst);
    let second = flatstack(f.dir.path(), &ensure);
    let again = stdout(&second);
    assert!(second.status.success(), "{again}");
    assert!(again.contains("reused"), "{again}");
    let downloads = server
        .seen
        .lock()
        .expect("seen")
        .iter()
        .filter(|s| s.contains(FILE) && !s.contains(".sig") && !s.contains(".DIGESTS"))
        .count();
    assert_eq!(
        downloads, 2,
        "only the first run's two requests fetched the image"
    );
    assert!(
        server.requests.load(std::sync::atomic::Ordering::SeqCst) <= requests + 1,
        "at most version.txt"
    );

    let listed = stdout(&flatstack(f.dir.path(), &["image", "list"]));
    let row = listed.lines().find(|l| l.contains(&id)).unwrap_or_default();
    assert!(
        row.contains(&version) && row.contains("active") && row.contains("x86_64"),
        "{listed}"
    );
    delete_images_of(&version);
}

/// One bad release: name, compressed file, signature (if served), DIGESTS text, the key file to
/// verify with, and the message expected.
type Case<'a> = (&'a str, Vec<u8>, Option<Vec<u8>>, String, &'a str, &'a str);

/// Each way a release can fail verification, with its own message, and no image in Glance.
#[test]
fn nothing_that_fails_verification_reaches_glance() {
    let f = fixture();
    let key = f.key_file.to_string_lossy().to_string();
    let good_signature = f.key.sign(&f.compressed, None);
    let good_digests = digests(&f.compressed);

    let mut flipped = f.compressed.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    let mut other = f.compressed.clone();
    other.extend_from_slice(b"another file");
    let wrong_digests = digests(&other);
    let wrong_signature = f.key.sign(&other, None);
    let expired = TestKey::new(Some("20200101T000000"), "1y");
    let expired_signature = expired.sign(&f.compressed, Some("20200601T000000"));
    let expired_key = f.dir.path().join("expired-key.asc");
    expired.export(&expired_key);
    let stranger = TestKey::new(None, "never");
    let stranger_signature = stranger.sign(&f.compressed, None);

    let cases: Vec<Case<'_>> = vec![
        (
            "flipped byte",
            flipped,
            Some(good_signature.clone()),
            good_digests.clone(),
            key.as_str(),
            "was altered or damaged in transit",
        ),
        (
            "wrong digest",
            f.compressed.clone(),
            Some(good_signature.clone()),
            wrong_digests,
            key.as_str(),
            "matches its signature but not its DIGESTS file",
        ),
        (
            "wrong signature",
            f.compressed.clone(),
            Some(wrong_signature),
            good_digests.clone(),
            key.as_str(),
            "does not match its content",
        ),
        (
            "missing signature",
            f.compressed.clone(),
            None,
            good_digests.clone(),
            key.as_str(),
            "without the signature the image cannot be verified",
        ),
        (
            "expired subkey",
            f.compressed.clone(),
            Some(expired_signature),
            good_digests.clone(),
            expired_key.to_str().unwrap_or_default(),
            "expired on 202",
        ),
        (
            "unknown key",
            f.compressed.clone(),
            Some(stranger_signature),
            good_digests.clone(),
            key.as_str(),
            "which is not the key in",
        ),
    ];
    for (case, compressed, signature, digests, key, message) in cases {
        let version = fresh_version();
        let server = FileServer::serve(release_files(
            &version,
            &compressed,
            signature.as_deref(),
            &digests,
        ));
        let base = server.base_url();
        let output = flatstack(
            f.dir.path(),
            &[
                "image",
                "ensure",
                "--version",
                &version,
                "--base-url",
                &base,
                "--signing-key",
                key,
            ],
        );
        let said = stderr(&output);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{case}: {said}{}",
            stdout(&output)
        );
        assert!(
            said.contains(message),
            "{case}: expected `{message}` in:\n{said}"
        );
        assert!(!said.contains("panicked"), "{case}: {said}");
        let left = images_of(&version);
        assert!(left.is_empty(), "{case}: Glance kept {left:?}");
    }
}

/// `up` (through its preflight, shown by `cloud check`) boots the newest release of the cluster's
/// channel: versions compared as numbers, images of other channels left aside.
#[test]
fn the_newest_image_of_the_channel_is_chosen() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("tiny.raw");
    std::fs::write(&data, vec![0u8; 1024]).expect("data");
    let tag = crate::openstack::unique("pick");
    let mut ids = Vec::new();
    for (version, channel) in [
        ("99998.2.0", "alpha"),
        ("99998.10.0", "alpha"),
        ("99999.0.0", "beta"),
    ] {
        let name = format!("{tag}-{channel}-{version}");
        let image = cli(
            "local-demo",
            &[
                "image",
                "create",
                "--disk-format",
                "raw",
                "--file",
                &data.to_string_lossy(),
                "--property",
                "os_distro=flatcar",
                "--property",
                &format!("os_version={version}"),
                "--property",
                "architecture=x86_64",
                "--property",
                &format!("flatcar_channel={channel}"),
                &name,
                "-f",
                "json",
            ],
        );
        ids.push(image["id"].as_str().expect("id").to_string());
    }
    std::fs::write(
        dir.path().join("cluster.toml"),
        format!(
            "name = \"{tag}\"\ncloud = \"local-demo\"\n[kubernetes]\nversion = \"1.37.1\"\nsysext_sha256 = \"{}\"\n[flatcar]\nchannel = \"alpha\"\n[control_plane]\nflavor = \"m3.tiny\"\n",
            "ab".repeat(32)
        ),
    )
    .expect("cluster file");
    let output = Command::new(env!("CARGO_BIN_EXE_flatstack"))
        .current_dir(dir.path())
        .env("OS_CLIENT_CONFIG_FILE", clouds_yaml())
        .env_remove("OS_CLOUD")
        .args(["cloud", "check"])
        .output()
        .expect("run");
    for id in &ids {
        cli("local-demo", &["image", "delete", id]);
    }
    let out = stdout(&output);
    let line = out
        .lines()
        .find(|l| l.contains("Flatcar alpha image"))
        .unwrap_or_default();
    assert!(line.contains(&format!("{tag}-alpha-99998.10.0")), "{out}");
}

/// `--from-file`: the release file on disk, verified with the `.sig` and `.DIGESTS` beside it,
/// the version read from the `version.txt` beside it.
#[test]
fn from_file_verifies_with_the_files_beside_it() {
    let f = fixture();
    let version = fresh_version();
    let release = f.dir.path().join("release");
    std::fs::create_dir_all(&release).expect("dir");
    let file = release.join(FILE);
    std::fs::write(&file, &f.compressed).expect("image");
    std::fs::write(
        release.join(format!("{FILE}.sig")),
        f.key.sign(&f.compressed, None),
    )
    .expect("sig");
    std::fs::write(
        release.join(format!("{FILE}.DIGESTS")),
        digests(&f.compressed),
    )
    .expect("digests");
    std::fs::write(
        release.join("version.txt"),
        format!("FLATCAR_VERSION={version}\n"),
    )
    .expect("version");
    let key = f.key_file.to_string_lossy().to_string();
    let path = file.to_string_lossy().to_string();
    let output = flatstack(
        f.dir.path(),
        &[
            "image",
            "ensure",
            "--from-file",
            &path,
            "--signing-key",
            &key,
            "--name",
            "from-disk-{version}",
        ],
    );
    assert!(
        output.status.success(),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    let images = images_of(&version);
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images[0]["Name"], format!("from-disk-{version}"));
    assert_eq!(images[0]["Status"], "active");
    delete_images_of(&version);

    // Without the signature beside it, nothing is uploaded.
    std::fs::remove_file(release.join(format!("{FILE}.sig"))).expect("remove");
    let output = flatstack(
        f.dir.path(),
        &[
            "image",
            "ensure",
            "--from-file",
            &path,
            "--signing-key",
            &key,
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains(".sig"), "{}", stderr(&output));
    assert!(images_of(&version).is_empty());
}
