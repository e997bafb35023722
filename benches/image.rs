//! Benchmark (not a test): a ~500 MB Flatcar-like release (qcow2 from `qemu-img`, compressed by
//! `bzip2`, signed by a `gpg` key made here) into the local OpenStack's Glance, three ways:
//!
//! - flatstack `image ensure` from a loopback HTTP server (download, verify, decompress, upload
//!   in one streaming pass);
//! - flatstack `image ensure --from-file` on the same file on disk;
//! - the by-hand baseline on the same file: `gpg --verify`, `bunzip2 -k`, then
//!   `openstack image create --file`.
//!
//! Prints wall time, peak memory (the largest VmHWM among each step's processes) and peak
//! temporary disk, and the ratios. Run with `cargo bench --bench image`
//! (`FLATSTACK_BENCH_IMAGE_MB` sets the raw disk size; the default 750 makes a ~500 MB qcow2).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FILE: &str = "flatcar_production_openstack_image.img.bz2";

fn openstack_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("FLATSTACK_OPENSTACK_DIR")
            .unwrap_or_else(|_| "/var/tmp/flatstack-openstack".into()),
    )
}

type Error = Box<dyn std::error::Error>;

/// Runs `command` to completion, sampling its peak resident memory (kB) while it runs.
fn measured(mut command: Command) -> Result<(Duration, u64, std::process::Output), Error> {
    let started = Instant::now();
    let mut child: Child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let mut peak = 0u64;
    let sampler = std::thread::spawn(move || {
        let mut peak = 0u64;
        let status = format!("/proc/{pid}/status");
        while let Ok(text) = std::fs::read_to_string(&status) {
            if let Some(kb) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kb);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    });
    let output = {
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let out = std::thread::spawn(move || {
            let mut buffer = Vec::new();
            if let Some(mut s) = stdout {
                let _ = std::io::Read::read_to_end(&mut s, &mut buffer);
            }
            buffer
        });
        let err = std::thread::spawn(move || {
            let mut buffer = Vec::new();
            if let Some(mut s) = stderr {
                let _ = std::io::Read::read_to_end(&mut s, &mut buffer);
            }
            buffer
        });
        let status = child.wait()?;
        std::process::Output {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        }
    };
    let elapsed = started.elapsed();
    peak = peak.max(sampler.join().unwrap_or(0));
    if !output.status.success() {
        return Err(format!(
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok((elapsed, peak, output))
}

fn run(program: &str, args: &[&str], dir: &Path) -> Result<(), Error> {
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        return Err(format!("{program} {args:?} failed").into());
    }
    Ok(())
}

fn gpg(home: &Path, args: &[&str]) -> Result<Vec<u8>, Error> {
    let output = Command::new("gpg")
        .env("GNUPGHOME", home)
        .args([
            "--batch",
            "--yes",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if !output.status.success() {
        return Err(format!("gpg {args:?}: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    Ok(output.stdout)
}

fn openstack(args: &[&str]) -> Command {
    let mut command = Command::new(openstack_dir().join("venv/bin/openstack"));
    command
        .env("OS_CLIENT_CONFIG_FILE", openstack_dir().join("clouds.yaml"))
        .env("OS_CLOUD", "local-demo")
        .args(args);
    command
}

fn delete_images(version: &str) -> Result<(), Error> {
    let property = format!("os_version={version}");
    let listed = openstack(&[
        "image",
        "list",
        "--property",
        &property,
        "-f",
        "value",
        "-c",
        "ID",
    ])
    .output()?;
    for id in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
        openstack(&["image", "delete", id]).output()?;
    }
    Ok(())
}

fn main() -> Result<(), Error> {
    if !openstack_dir().join("clouds.yaml").is_file() {
        return Err("no local OpenStack: run scripts/local-openstack.sh up".into());
    }
    let megabytes: usize = std::env::var("FLATSTACK_BENCH_IMAGE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(750);
    let work = tempfile::Builder::new()
        .prefix("flatstack-image-bench")
        .tempdir_in("/var/tmp")?;
    let dir = work.path();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let version = format!("{}.{}.0", 8000 + stamp % 1000, stamp % 97);

    // An OS-image-like raw disk: runs of zeros and of pseudo-random bytes.
    println!("making an image from a {megabytes} MB raw disk (qemu-img, bzip2, gpg) ...");
    let raw = dir.join("disk.raw");
    {
        use std::io::Write;
        let mut file = std::io::BufWriter::new(std::fs::File::create(&raw)?);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut block = vec![0u8; 1 << 20];
        for n in 0..megabytes {
            if n % 3 != 0 {
                for byte in block.iter_mut() {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    *byte = (state >> 56) as u8 & 0x3f;
                }
            } else {
                block.fill(0);
            }
            file.write_all(&block)?;
        }
    }
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "disk.raw",
            "disk.qcow2",
        ],
        dir,
    )?;
    std::fs::remove_file(&raw)?;
    let release = dir.join("amd64-usr").join(&version);
    std::fs::create_dir_all(&release)?;
    let compressed = release.join(FILE);
    let bz2 = Command::new("bzip2")
        .arg("-c")
        .arg(dir.join("disk.qcow2"))
        .output()?;
    std::fs::write(&compressed, &bz2.stdout)?;
    let qcow2_size = std::fs::metadata(dir.join("disk.qcow2"))?.len();
    std::fs::remove_file(dir.join("disk.qcow2"))?;
    let home = dir.join("gnupg");
    std::fs::create_dir_all(&home)?;
    let _ = Command::new("gpgconf")
        .env("GNUPGHOME", &home)
        .args(["--launch", "gpg-agent"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    gpg(
        &home,
        &[
            "--quick-gen-key",
            "bench <bench@flatstack.invalid>",
            "rsa2048",
            "cert",
            "never",
        ],
    )?;
    let listing = String::from_utf8(gpg(&home, &["--with-colons", "--list-keys"])?)?;
    let primary = listing
        .lines()
        .find_map(|l| l.strip_prefix("fpr:").and_then(|r| r.split(':').nth(8)))
        .ok_or("no key")?
        .to_string();
    gpg(
        &home,
        &["--quick-add-key", &primary, "rsa2048", "sign", "1y"],
    )?;
    let signature = release.join(format!("{FILE}.sig"));
    gpg(
        &home,
        &[
            "--detach-sign",
            "-o",
            &signature.to_string_lossy(),
            &compressed.to_string_lossy(),
        ],
    )?;
    std::fs::write(
        dir.join("key.asc"),
        gpg(&home, &["--armor", "--export", &primary])?,
    )?;
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha512::digest(std::fs::read(&compressed)?))
    };
    std::fs::write(
        release.join(format!("{FILE}.DIGESTS")),
        format!("# SHA512 HASH\n{digest}  {FILE}\n"),
    )?;
    let compressed_size = std::fs::metadata(&compressed)?.len();
    println!(
        "release {version}: qcow2 {} MB, bz2 {} MB",
        qcow2_size / 1_000_000,
        compressed_size / 1_000_000
    );

    // A loopback HTTP server over the release tree.
    let mut server = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", "18089"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(2));
    let key = dir.join("key.asc").to_string_lossy().to_string();
    let flatstack = |extra: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_flatstack"));
        command
            .current_dir(dir)
            .env("OS_CLIENT_CONFIG_FILE", openstack_dir().join("clouds.yaml"))
            .args([
                "--cloud",
                "local-demo",
                "--file",
                "none.toml",
                "image",
                "ensure",
            ])
            .args(["--version", &version, "--signing-key", &key])
            .args(extra);
        command
    };
    let result = (|| -> Result<_, Error> {
        let (url_time, url_peak, _) =
            measured(flatstack(&["--base-url", "http://127.0.0.1:18089"]))?;
        delete_images(&version)?;
        let file = compressed.to_string_lossy().to_string();
        let (file_time, file_peak, _) = measured(flatstack(&["--from-file", &file]))?;
        delete_images(&version)?;

        // The baseline on the same file: verify, decompress to disk, upload.
        let mut verify = Command::new("gpg");
        verify
            .env("GNUPGHOME", &home)
            .args(["--batch", "--verify"])
            .arg(&signature)
            .arg(&compressed);
        let (verify_time, verify_peak, _) = measured(verify)?;
        let mut bunzip = Command::new("bunzip2");
        bunzip.arg("-k").arg(&compressed);
        let (bunzip_time, bunzip_peak, _) = measured(bunzip)?;
        let decompressed = release.join("flatcar_production_openstack_image.img");
        let temp_disk = std::fs::metadata(&decompressed)?.len();
        let name = format!("baseline-{version}");
        let upload = openstack(&[
            "image",
            "create",
            "--disk-format",
            "qcow2",
            "--container-format",
            "bare",
            "--property",
            "hw_disk_bus=scsi",
            "--property",
            "hw_scsi_model=virtio-scsi",
            "--property",
            "hw_qemu_guest_agent=yes",
            "--property",
            "os_require_quiesce=yes",
            "--property",
            "os_distro=flatcar",
            "--property",
            &format!("os_version={version}"),
            "--file",
            &decompressed.to_string_lossy(),
            &name,
        ]);
        let (upload_time, upload_peak, _) = measured(upload)?;
        delete_images(&version)?;
        let baseline = verify_time + bunzip_time + upload_time;
        let baseline_peak = verify_peak.max(bunzip_peak).max(upload_peak);
        Ok((
            url_time,
            url_peak,
            file_time,
            file_peak,
            baseline,
            baseline_peak,
            temp_disk,
            bunzip_time,
            upload_time,
        ))
    })();
    let _ = server.kill();
    let _ = server.wait();
    let (
        url_time,
        url_peak,
        file_time,
        file_peak,
        baseline,
        baseline_peak,
        temp_disk,
        bunzip_time,
        upload_time,
    ) = result?;
    let mb = |kb: u64| kb as f64 / 1024.0;
    println!(
        "{:<52} {:>9} {:>12} {:>14}",
        "", "wall", "peak memory", "peak temp disk"
    );
    println!(
        "{:<52} {:>8.1}s {:>9.0} MB {:>11} MB",
        "flatstack image ensure (loopback HTTP)",
        url_time.as_secs_f64(),
        mb(url_peak),
        0
    );
    println!(
        "{:<52} {:>8.1}s {:>9.0} MB {:>11} MB",
        "flatstack image ensure --from-file",
        file_time.as_secs_f64(),
        mb(file_peak),
        0
    );
    println!(
        "{:<52} {:>8.1}s {:>9.0} MB {:>11} MB",
        format!(
            "gpg --verify + bunzip2 ({:.1}s) + openstack image create ({:.1}s)",
            bunzip_time.as_secs_f64(),
            upload_time.as_secs_f64()
        ),
        baseline.as_secs_f64(),
        mb(baseline_peak),
        temp_disk / 1_000_000
    );
    println!(
        "ratio (baseline / flatstack --from-file): {:.2}x wall; flatstack from HTTP, download included: {:.2}x",
        baseline.as_secs_f64() / file_time.as_secs_f64(),
        baseline.as_secs_f64() / url_time.as_secs_f64()
    );
    Ok(())
}
