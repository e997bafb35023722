//! `flatstack init`: write a commented cluster file for a cloud profile.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;

use super::InvalidInput;
use super::cloud::runtime;
use crate::pins;
use crate::spec::ClusterSpec;
use crate::spec::profile::{KubernetesChoice, Profile, cluster_file};
use crate::sysext;

#[derive(Debug, clap::Args)]
pub(crate) struct InitArgs {
    /// The cloud the file is tuned for.
    #[arg(long, value_enum, default_value = "jetstream2")]
    pub(crate) profile: Profile,
    /// Cluster name (default: the current directory's name, if it is a valid one).
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Replace an existing file.
    #[arg(long)]
    pub(crate) force: bool,
    /// Take the Kubernetes sysext from this mirror of the bakery's `extensions/` directory
    /// (images and `SHA256SUMS` files laid out as the bakery serves them) instead of the bakery.
    #[arg(long, value_name = "URL")]
    pub(crate) sysext_mirror: Option<String>,
}

pub(crate) fn run(path: &Path, args: &InitArgs) -> anyhow::Result<()> {
    let name = match &args.name {
        Some(name) => name.clone(),
        None => default_name(),
    };
    if !crate::spec::is_valid_name(&name) {
        return Err(InvalidInput(format!(
            "`{name}` cannot name a cluster; nothing was written\n  hint: {}",
            crate::spec::NAME_RULE
        ))
        .into());
    }
    let base = args.sysext_mirror.as_deref().unwrap_or(pins::SYSEXT_BAKERY);
    let default = pins::default_kubernetes();
    let version = match runtime()?.block_on(sysext::newest_published(base)) {
        Ok(Some(version)) => {
            out!("Kubernetes {version}: the newest supported release {base} publishes");
            version
        }
        Ok(None) => {
            out!(
                "{base} publishes no release of {}; proposing Kubernetes {default}",
                pins::supported_minors_list()
            );
            default
        }
        Err(why) => {
            out!(
                "could not ask {base} for its newest release ({why}); proposing Kubernetes {default}"
            );
            default
        }
    };
    let kubernetes = KubernetesChoice {
        version,
        mirror: args
            .sysext_mirror
            .as_deref()
            .map(|m| m.trim_end_matches('/')),
    };
    let text = cluster_file(args.profile, &name, &kubernetes);
    // The profiles are tested to validate; this guards against a broken build, not user input.
    ClusterSpec::parse(&path.display().to_string(), &text).map_err(|invalid| {
        anyhow::anyhow!(
            "internal error: the {:?} profile is invalid:\n{invalid}",
            args.profile
        )
    })?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if args.force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = match options.open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(InvalidInput(format!(
                "{} exists already; nothing was changed\n  hint: pass --force to replace it, or --file to write another",
                path.display()
            ))
            .into());
        }
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
    };
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    out!(
        "wrote {} for cluster `{name}` ({:?} profile)",
        path.display(),
        args.profile
    );
    out!("next: `flatstack image ensure` once per cloud, then `flatstack plan` and `flatstack up`");
    Ok(())
}

/// The current directory's name when it makes a valid cluster name, else `cluster`.
fn default_name() -> String {
    std::env::current_dir()
        .ok()
        .and_then(|dir| dir.file_name().map(|n| n.to_string_lossy().to_lowercase()))
        .filter(|n| crate::spec::is_valid_name(n))
        .unwrap_or_else(|| "cluster".to_string())
}
