//! `flatstack image ensure` and `flatstack image list`: the Flatcar images of the cloud.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::InvalidInput;
use super::cloud::runtime;
use crate::cloud::{Cloud, CloudConfig};
use crate::image::{self, Arch, EnsureOptions, Visibility};
use crate::spec::{Channel, ClusterSpec};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ImageCommand {
    /// Make sure Glance has a verified Flatcar image: reuse an active one of the same version
    /// and architecture, or stream the release through SHA-512, OpenPGP and bzip2 into Glance.
    Ensure(EnsureArgs),
    /// The Flatcar images of the cloud, newest version first.
    List,
}

#[derive(Debug, clap::Args)]
pub(crate) struct EnsureArgs {
    /// stable, beta, alpha or lts (default: the cluster file's, else stable).
    #[arg(long, value_parser = parse_channel)]
    pub(crate) channel: Option<Channel>,
    /// An exact release such as 4230.2.3 (default: the cluster file's, else the channel's current).
    #[arg(long)]
    pub(crate) version: Option<String>,
    /// The nodes' CPU architecture.
    #[arg(long, value_enum, default_value = "amd64")]
    pub(crate) arch: Arch,
    /// A mirror laid out like the release servers: <URL>/<arch>-usr/<version>/<file>.
    #[arg(long, value_name = "URL")]
    pub(crate) base_url: Option<String>,
    /// The release's .img.bz2 already on disk, with its .sig and .DIGESTS files beside it.
    #[arg(long, value_name = "FILE")]
    pub(crate) from_file: Option<PathBuf>,
    /// Verify with the keys in this file instead of Flatcar's key shipped in flatstack.
    #[arg(long, value_name = "FILE")]
    pub(crate) signing_key: Option<PathBuf>,
    /// Glance name; {channel}, {version} and {arch} are filled in.
    #[arg(long, default_value = image::NAME_PATTERN)]
    pub(crate) name: String,
    /// Who may see the image in Glance.
    #[arg(long, value_enum, default_value = "private")]
    pub(crate) visibility: Visibility,
}

fn parse_channel(text: &str) -> Result<Channel, String> {
    Channel::parse(text)
        .ok_or_else(|| format!("`{text}` is not a channel: stable, beta, alpha or lts"))
}

/// The cluster file when there is one: image commands also work without.
fn optional_spec(file: &Path) -> anyhow::Result<Option<ClusterSpec>> {
    if file.exists() {
        super::load_spec(file).map(Some)
    } else {
        Ok(None)
    }
}

fn cloud_for(flag: Option<&str>, spec: Option<&ClusterSpec>) -> anyhow::Result<CloudConfig> {
    match spec {
        Some(spec) => super::cloud::cloud_config(flag, spec),
        None => CloudConfig::resolve(flag).map_err(|e| {
            InvalidInput(format!(
                "{e}\n  hint: pass --cloud, set OS_CLOUD, or run where the cluster file is"
            ))
            .into()
        }),
    }
}

pub(crate) fn run(
    file: &Path,
    cloud_flag: Option<&str>,
    command: &ImageCommand,
) -> anyhow::Result<()> {
    let spec = optional_spec(file)?;
    let config = cloud_for(cloud_flag, spec.as_ref())?;
    match command {
        ImageCommand::List => runtime()?.block_on(async {
            let cloud = Cloud::connect(config).await?;
            let images = image::list(&cloud).await?;
            if images.is_empty() {
                out!("no Flatcar images (os_distro=flatcar) on cloud `{}`: run `flatstack image ensure`", cloud.config().name);
                return Ok(());
            }
            out!("{:<32} {:<38} {:<11} {:<8} {:<8} {:<10} {:>9}", "NAME", "ID", "VERSION", "ARCH", "STATUS", "VISIBILITY", "SIZE");
            for i in &images {
                out!(
                    "{:<32} {:<38} {:<11} {:<8} {:<8} {:<10} {:>9}",
                    i.name.as_deref().unwrap_or(""),
                    i.id,
                    i.os_version.as_deref().unwrap_or("?"),
                    i.architecture.as_deref().unwrap_or("?"),
                    i.status,
                    i.visibility,
                    i.size.map_or_else(|| "-".into(), |s| format!("{} MB", s / 1_000_000)),
                );
            }
            Ok(())
        }),
        ImageCommand::Ensure(args) => {
            let options = EnsureOptions {
                channel: args
                    .channel
                    .or(spec.as_ref().map(|s| s.flatcar.channel))
                    .unwrap_or(Channel::Stable),
                version: args
                    .version
                    .clone()
                    .or_else(|| spec.as_ref().and_then(|s| s.flatcar.version.clone())),
                arch: args.arch,
                base_url: args.base_url.clone(),
                from_file: args.from_file.clone(),
                signing_key: args.signing_key.clone(),
                name_pattern: args.name.clone(),
                visibility: args.visibility,
            };
            runtime()?.block_on(async {
                let started = Instant::now();
                let cloud = Cloud::connect(config).await?;
                let bar = Bar::new();
                let say = |line: &str| bar.say(line);
                let ensured = image::ensure(&cloud, &options, &bar, &say).await;
                bar.finish();
                let ensured = ensured?;
                let name = ensured.image.name.clone().unwrap_or_default();
                match &ensured.streamed {
                    None => out!("image {name} ({}) is ready: Flatcar {}, reused", ensured.image.id, ensured.version),
                    Some(streamed) => {
                        let seconds = started.elapsed().as_secs_f64();
                        out!(
                            "image {name} ({}) is active: Flatcar {} {}, {} MB compressed -> {} MB, SHA-512 and signature by {} verified, {:.1} s ({:.1} MB/s){}",
                            ensured.image.id,
                            ensured.version,
                            options.arch.glance(),
                            streamed.compressed_bytes / 1_000_000,
                            streamed.image_bytes / 1_000_000,
                            ensured.signed_by.as_deref().unwrap_or("?"),
                            seconds,
                            streamed.image_bytes as f64 / 1e6 / seconds.max(0.001),
                            if streamed.resumed > 0 { format!("; download resumed {} time(s)", streamed.resumed) } else { String::new() },
                        );
                    }
                }
                Ok(())
            })
        }
    }
}

/// A progress bar for download and upload on a terminal; a few plain lines otherwise.
struct Bar {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
}

impl Bar {
    fn new() -> Bar {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} read {bytes_per_sec}, ETA {eta} | {msg}",
            ) {
                bar.set_style(style);
            }
            bar
        });
        Bar {
            bar,
            started: Instant::now(),
        }
    }

    fn say(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("  {line}")),
            None => out!("  {line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl image::Progress for Bar {
    fn update(&self, read: u64, total: Option<u64>, uploaded: u64) {
        if let Some(bar) = &self.bar {
            if let Some(total) = total {
                bar.set_length(total);
            }
            bar.set_position(read);
            let rate = uploaded as f64 / self.started.elapsed().as_secs_f64().max(0.001);
            bar.set_message(format!(
                "{} uploaded, {}/s",
                indicatif::HumanBytes(uploaded),
                indicatif::HumanBytes(rate as u64)
            ));
        }
    }
}
