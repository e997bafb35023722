//! Flatcar images in Glance: resolve a release (channel or exact version), then stream its
//! OpenStack image through SHA-512 (DIGESTS), OpenPGP verification and bzip2 decoding into a
//! Glance image with the properties OpenStack clouds want, reusing an active image of the same
//! version and architecture instead. A file that does not verify never becomes an active image,
//! and no queued one is left behind.

mod pipeline;
pub(crate) mod release;
pub(crate) mod signature;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub(crate) use pipeline::{Input, Progress, Streamed};
pub(crate) use release::{Arch, IMAGE_FILE};

use crate::cloud::image::Image;
use crate::cloud::{Cloud, CloudError};
use crate::spec::Channel;
use signature::{Keyring, SignatureError};

#[derive(Debug, thiserror::Error)]
pub(crate) enum ImageError {
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("downloading {url} failed: {detail}")]
    Download { url: String, detail: String },
    #[error("cannot read {what}: {detail}")]
    Read { what: String, detail: String },
    #[error("{0}")]
    Release(String),
    #[error(
        "the SHA-512 of {file} does not match its DIGESTS file\n  expected {expected}\n  got      {actual}\n  the file was altered or damaged in transit; nothing was kept in Glance"
    )]
    DigestMismatch {
        file: String,
        expected: String,
        actual: String,
    },
    #[error(
        "{file} matches its signature but not its DIGESTS file\n  DIGESTS says {expected}\n  the file is  {actual}\n  the DIGESTS file is wrong or belongs to another file; nothing was kept in Glance"
    )]
    DigestsDisagree {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("the image does not decompress as bzip2: {0}")]
    Decompress(String),
    #[error(
        "Glance stored a different image than was sent: its SHA-512 is {glance}, the decompressed image's is {ours}"
    )]
    StoredDifferently { glance: String, ours: String },
    #[error("internal error: {0}")]
    Internal(String),
}

/// Who may see the image in Glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Visibility {
    Private,
    Shared,
    Community,
    Public,
}

impl Visibility {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Visibility::Private => "private",
            Visibility::Shared => "shared",
            Visibility::Community => "community",
            Visibility::Public => "public",
        }
    }
}

/// What `image ensure` is asked for.
#[derive(Debug, Clone)]
pub(crate) struct EnsureOptions {
    pub(crate) channel: Channel,
    /// An exact release; `None` means the channel's current one.
    pub(crate) version: Option<String>,
    pub(crate) arch: Arch,
    /// A mirror laid out like the release servers (`<base>/<arch>-usr/<version>/...`).
    pub(crate) base_url: Option<String>,
    /// The compressed image already on disk, with `<file>.sig` and `<file>.DIGESTS` beside it.
    pub(crate) from_file: Option<PathBuf>,
    /// A key file to verify with instead of the shipped Flatcar key.
    pub(crate) signing_key: Option<PathBuf>,
    /// Glance name; `{channel}`, `{version}` and `{arch}` are filled in.
    pub(crate) name_pattern: String,
    pub(crate) visibility: Visibility,
}

/// The default Glance name.
pub(crate) const NAME_PATTERN: &str = "flatcar-{channel}-{version}";

/// What `ensure` did.
#[derive(Debug, Clone)]
pub(crate) struct Ensured {
    pub(crate) image: Image,
    pub(crate) version: String,
    /// `None` when an active image was reused.
    pub(crate) streamed: Option<Streamed>,
    /// Fingerprint of the key that signed the image.
    pub(crate) signed_by: Option<String>,
}

/// Makes sure Glance has the Flatcar image `options` ask for.
pub(crate) async fn ensure(
    cloud: &Cloud,
    options: &EnsureOptions,
    progress: &dyn Progress,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Ensured, ImageError> {
    let http = download_client()?;
    let keyring = match &options.signing_key {
        Some(path) => Keyring::from_file(path)?,
        None => Keyring::flatcar()?,
    };
    let base = release::channel_url(options.channel, options.base_url.as_deref());
    let version = match (&options.version, &options.from_file) {
        (Some(v), _) if release::is_version(v) => v.clone(),
        (Some(v), _) => {
            return Err(ImageError::Release(format!(
                "`{v}` is not a Flatcar version (BUILD.BRANCH.PATCH, e.g. 4230.2.3)"
            )));
        }
        (None, Some(file)) => {
            let beside = file.with_file_name("version.txt");
            let text = std::fs::read_to_string(&beside).map_err(|e| ImageError::Read {
                what: beside.display().to_string(),
                detail: format!("{e}\n  hint: pass --version with --from-file"),
            })?;
            release::parse_version_txt(&text).ok_or_else(|| {
                ImageError::Release(format!("{} names no FLATCAR_VERSION", beside.display()))
            })?
        }
        (None, None) => {
            let url = format!(
                "{}/version.txt",
                release::release_url(&base, options.arch, "current")
            );
            let text = fetch_text(&http, &url).await?;
            release::parse_version_txt(&text)
                .ok_or_else(|| ImageError::Release(format!("{url} names no FLATCAR_VERSION")))?
        }
    };

    // An active image of this version and architecture is reused.
    let existing = cloud
        .images(&[
            ("os_distro", "flatcar"),
            ("os_version", &version),
            ("architecture", options.arch.glance()),
        ])
        .await?;
    if let Some(image) = existing
        .iter()
        .filter(|i| i.status == "active")
        .max_by(|a, b| a.created_at.cmp(&b.created_at))
    {
        say(&format!(
            "reusing image {} ({}): Flatcar {version} {} is already active",
            image.name.as_deref().unwrap_or(""),
            image.id,
            options.arch.glance()
        ));
        return Ok(Ensured {
            image: image.clone(),
            version,
            streamed: None,
            signed_by: None,
        });
    }
    let name = options
        .name_pattern
        .replace("{channel}", options.channel.as_str())
        .replace("{version}", &version)
        .replace("{arch}", options.arch.glance());
    // Queued or failed uploads of this release (a run that was stopped) are never usable.
    for stale in existing.iter().filter(|i| i.status != "active") {
        say(&format!(
            "deleting unfinished image {} ({})",
            stale.id, stale.status
        ));
        cloud.delete_image(&stale.id).await?;
    }

    // Everything that can be checked before a byte of the image moves.
    let (input, file, signature_bytes, digests) = match &options.from_file {
        Some(path) => {
            let file = path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| IMAGE_FILE.to_string());
            let read = |suffix: &str| {
                let beside = PathBuf::from(format!("{}{suffix}", path.display()));
                std::fs::read(&beside).map_err(|e| ImageError::Read {
                    what: beside.display().to_string(),
                    detail: format!(
                        "{e}\n  hint: keep the release's {suffix} file beside the image"
                    ),
                })
            };
            let signature = read(".sig")?;
            let digests = String::from_utf8_lossy(&read(".DIGESTS")?).to_string();
            (Input::File(path.clone()), file, signature, digests)
        }
        None => {
            let dir = release::release_url(&base, options.arch, &version);
            let url = format!("{dir}/{IMAGE_FILE}");
            let signature =
                fetch_bytes(&http, &format!("{url}.sig"))
                    .await
                    .map_err(|e| match e {
                        ImageError::Download { url, detail } => ImageError::Download {
                            url,
                            detail: format!(
                                "{detail}; without the signature the image cannot be verified"
                            ),
                        },
                        other => other,
                    })?;
            let digests = fetch_text(&http, &format!("{url}.DIGESTS")).await?;
            (Input::Url(url), IMAGE_FILE.to_string(), signature, digests)
        }
    };
    let sha512 = release::sha512_from_digests(&digests, &file).ok_or_else(|| {
        ImageError::Release(format!("the DIGESTS file has no SHA512 line for {file}"))
    })?;
    let detached = Keyring::read_signature(&signature_bytes, &format!("{file}.sig"))?;
    let signer = keyring.signer(&detached.signature, &file)?;
    let signed_by = signer.fingerprint.clone();
    say(&format!(
        "Flatcar {version} {}: signature by {} (primary {}) to be checked while streaming",
        options.arch.glance(),
        signer.fingerprint,
        signer.primary
    ));

    let properties: BTreeMap<String, String> = [
        ("hw_disk_bus", "scsi"),
        ("hw_scsi_model", "virtio-scsi"),
        ("hw_qemu_guest_agent", "yes"),
        ("os_require_quiesce", "yes"),
        ("os_distro", "flatcar"),
        ("os_type", "linux"),
        ("os_version", version.as_str()),
        ("architecture", options.arch.glance()),
        ("flatcar_channel", options.channel.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let image = cloud
        .create_image(&name, "qcow2", options.visibility.as_str(), &properties)
        .await?;
    say(&format!("streaming into image {name} ({})", image.id));
    let streamed = pipeline::stream_into_glance(
        cloud,
        &http,
        &image.id,
        &input,
        &file,
        Some(&sha512),
        Some((signer, detached.signature)),
        progress,
    )
    .await;
    let streamed = match streamed {
        Ok(streamed) => streamed,
        Err(e) => {
            // Nothing that failed to verify or arrive stays in Glance.
            if let Err(cleanup) = cloud.delete_image(&image.id).await {
                tracing::warn!("could not delete image {}: {cleanup}", image.id);
            }
            return Err(e);
        }
    };
    let stored = cloud.image(&image.id).await?;
    if stored
        .os_hash_value
        .as_deref()
        .is_some_and(|glance| glance != streamed.image_sha512)
    {
        let glance = stored.os_hash_value.clone().unwrap_or_default();
        cloud.delete_image(&image.id).await?;
        return Err(ImageError::StoredDifferently {
            glance,
            ours: streamed.image_sha512,
        });
    }
    Ok(Ensured {
        image: stored,
        version,
        streamed: Some(streamed),
        signed_by: Some(signed_by),
    })
}

/// The Flatcar images of the cloud (`os_distro=flatcar`), newest version first.
pub(crate) async fn list(cloud: &Cloud) -> Result<Vec<Image>, ImageError> {
    let mut images = cloud.images(&[("os_distro", "flatcar")]).await?;
    images.sort_by(|a, b| {
        version_key(b.os_version.as_deref()).cmp(&version_key(a.os_version.as_deref()))
    });
    Ok(images)
}

/// Orders Flatcar versions numerically (`4230.2.3` after `4081.3.10`).
pub(crate) fn version_key(version: Option<&str>) -> Vec<u64> {
    version
        .unwrap_or_default()
        .split('.')
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

fn download_client() -> Result<reqwest::Client, ImageError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .user_agent(concat!("flatstack/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(20))
        .read_timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| ImageError::Internal(e.to_string()))
}

async fn fetch_bytes(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, ImageError> {
    let failed = |detail: String| ImageError::Download {
        url: url.to_string(),
        detail,
    };
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|e| failed(crate::kube::error_chain(&e)))?;
    let status = response.status();
    if !status.is_success() {
        return Err(failed(format!("the server answered {status}")));
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| failed(crate::kube::error_chain(&e)))?;
    Ok(body.to_vec())
}

async fn fetch_text(http: &reqwest::Client, url: &str) -> Result<String, ImageError> {
    Ok(String::from_utf8_lossy(&fetch_bytes(http, url).await?).to_string())
}
