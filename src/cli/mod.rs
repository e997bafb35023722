//! Command-line interface: the clap definitions of every command, and the code that runs
//! each one and prints its output. Exit codes: 0 success, 1 failure, 2 invalid input.

/// `println!` for the commands' output, which a reader that went away (`flatstack status |
/// head`) does not stop: least of all `up` half-way through its plan.
macro_rules! out {
    () => {
        $crate::cli::write_out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` likewise.
macro_rules! out_inline {
    ($($arg:tt)*) => {
        $crate::cli::write_out(format_args!($($arg)*))
    };
}

mod backup;
mod cloud;
mod cluster;
mod image;
mod init;
mod jupyterhub;
mod kubeconfig;
mod render;
mod restore;
mod smoke;
mod status;
mod up;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::spec::{ClusterSpec, InvalidClusterFile};

/// Writes to standard output (see `out!`). What a closed pipe refuses is dropped; any other
/// failure (a full disk under `flatstack kubeconfig > admin.conf`) ends the command with exit
/// code 1 rather than leave a truncated file behind a success.
pub(crate) fn write_out(text: std::fmt::Arguments) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("error: cannot write to standard output: {e}");
            std::process::exit(1);
        }
        _ => {}
    }
}

/// Kubernetes on OpenStack with Flatcar Container Linux, from one cluster file.
#[derive(Debug, Parser)]
#[command(name = "flatstack", version, about, max_term_width = 100)]
pub struct Cli {
    /// The cluster file.
    #[arg(
        short,
        long,
        global = true,
        env = "FLATSTACK_FILE",
        default_value = "cluster.toml"
    )]
    pub(crate) file: PathBuf,
    /// The clouds.yaml entry to use instead of the cluster file's `cloud` (like OS_CLOUD).
    #[arg(long, global = true)]
    pub(crate) cloud: Option<String>,
    /// Log every API call (-v) and retries; -vv for more. Never logs credentials or tokens.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Write a commented cluster file to start from.
    Init(init::InitArgs),
    /// Check the cluster file and report every problem in it.
    Validate,
    /// Write each node's Ignition config and an admin kubeconfig, touching no cloud.
    Render(render::RenderArgs),
    /// Show what `up` would create or delete, and what the cluster costs; touches nothing.
    Plan(up::PlanArgs),
    /// Create whatever of the cluster is missing, wait for it to boot, install the add-ons and
    /// wait until every node is Ready.
    Up(up::UpArgs),
    /// Every cloud resource of the cluster with its state (and Nova's fault for ERROR servers),
    /// then, when the Kubernetes API answers, the nodes, their Flatcar releases and pending
    /// reboots, and the add-ons.
    Status(status::StatusArgs),
    /// Delete everything the cluster owns, then check that nothing is left.
    Down(up::DownArgs),
    /// Print the cluster's admin kubeconfig (made locally from its CA), or merge it into
    /// ~/.kube/config with --merge.
    Kubeconfig(kubeconfig::KubeconfigArgs),
    /// Inspect the OpenStack cloud.
    #[command(subcommand)]
    Cloud(CloudCommand),
    /// Flatcar images in Glance: verified uploads and what is there.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// JupyterHub on the cluster (zero-to-jupyterhub), reached through the ingress.
    #[command(subcommand)]
    Jupyterhub(jupyterhub::HubCommand),
    /// Deploy nginx, fetch its page through the ingress from here, and remove it again.
    Smoke(smoke::SmokeArgs),
    /// The cluster's etcd snapshots in the cloud's object store.
    #[command(subcommand)]
    Backup(backup::BackupCommand),
    /// Bring the cluster back from an etcd snapshot (the newest unless --snapshot names one):
    /// its control planes are built again, the first restoring etcd, the others joining it;
    /// the workers are kept. Says what it will do; changes nothing without --yes.
    Restore(restore::RestoreArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum CloudCommand {
    /// Log in, show region and endpoints, and check flavors, image, external network,
    /// keypair and quotas against what the cluster file needs.
    Check,
}

/// Exit code for invalid input: cluster files, arguments, unsafe state directories.
pub(crate) const EXIT_INVALID_INPUT: u8 = 2;

/// An error in what the user gave us, as opposed to a failure while acting on it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct InvalidInput(pub String);

pub fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.verbose > 0 {
        let level = if cli.verbose > 1 {
            tracing::Level::DEBUG
        } else {
            tracing::Level::INFO
        };
        // Colour only on a terminal, and never when NO_COLOR is set (no-color.org).
        let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(colour)
            .with_writer(std::io::stderr)
            .with_target(false)
            .init();
    }
    match cli.command {
        Command::Init(args) => init::run(&cli.file, &args),
        Command::Validate => {
            let spec = load_spec(&cli.file)?;
            if let Some(warning) = end_of_life_warning(&spec) {
                eprintln!("warning: {warning}");
            }
            out!(
                "{}: cluster `{}` is valid: {} node(s), Kubernetes {}",
                cli.file.display(),
                spec.name,
                spec.nodes().len(),
                spec.kubernetes.version
            );
            Ok(())
        }
        Command::Render(args) => render::run(&cli.file, cli.cloud.as_deref(), &args),
        Command::Cloud(CloudCommand::Check) => cloud::check(&cli.file, cli.cloud.as_deref()),
        Command::Image(command) => image::run(&cli.file, cli.cloud.as_deref(), &command),
        Command::Plan(args) => up::plan(&cli.file, cli.cloud.as_deref(), &args),
        Command::Up(args) => up::up(&cli.file, cli.cloud.as_deref(), &args),
        Command::Down(args) => up::down(&cli.file, cli.cloud.as_deref(), &args),
        Command::Status(args) => status::status(&cli.file, cli.cloud.as_deref(), &args),
        Command::Kubeconfig(args) => kubeconfig::run(&cli.file, cli.cloud.as_deref(), &args),
        Command::Jupyterhub(command) => jupyterhub::run(&cli.file, cli.cloud.as_deref(), &command),
        Command::Smoke(args) => smoke::run(&cli.file, cli.cloud.as_deref(), &args),
        Command::Backup(command) => backup::run(&cli.file, cli.cloud.as_deref(), &command),
        Command::Restore(args) => restore::run(&cli.file, cli.cloud.as_deref(), &args),
    }
}

/// How an error is shown: problems in a cluster file carry their own `file:line:column:
/// error:` prefixes; everything else gets `error:` and its chain of causes.
pub fn report(error: &anyhow::Error) -> String {
    match error.downcast_ref::<InvalidClusterFile>() {
        Some(invalid) => invalid.to_string(),
        None => format!("error: {error:#}"),
    }
}

/// The exit code for an error: 2 when the input was wrong, 1 otherwise.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    let invalid = error.chain().any(|cause| {
        cause.is::<InvalidClusterFile>()
            || cause.is::<InvalidInput>()
            || cause
                .downcast_ref::<crate::sysext::SysextError>()
                .is_some_and(crate::sysext::SysextError::is_invalid_input)
            || cause
                .downcast_ref::<crate::node::NodeError>()
                .is_some_and(crate::node::NodeError::is_invalid_input)
            || cause
                .downcast_ref::<crate::pki::PkiError>()
                .is_some_and(crate::pki::PkiError::is_invalid_input)
            || cause.is::<crate::apply::ranges::RecordError>()
            || cause
                .downcast_ref::<crate::apply::up::UpError>()
                .is_some_and(crate::apply::up::UpError::is_invalid_input)
            || cause
                .downcast_ref::<crate::plan::planner::PlanError>()
                .is_some_and(crate::plan::planner::PlanError::is_invalid_input)
            || cause
                .downcast_ref::<crate::apply::cluster::ClusterError>()
                .is_some_and(crate::apply::cluster::ClusterError::is_invalid_input)
            || cause
                .downcast_ref::<crate::apply::ApplyError>()
                .is_some_and(crate::apply::ApplyError::is_invalid_input)
            || cause
                .downcast_ref::<crate::apply::jupyterhub::HubError>()
                .is_some_and(crate::apply::jupyterhub::HubError::is_invalid_input)
    });
    if invalid { EXIT_INVALID_INPUT } else { 1 }
}

/// A warning when the cluster's Kubernetes minor is past its end of life today.
pub(crate) fn end_of_life_warning(spec: &ClusterSpec) -> Option<String> {
    let today = time::OffsetDateTime::now_utc().date().to_string();
    crate::pins::end_of_life_warning(spec.kubernetes.version, &today)
}

/// The state directory: `--state-dir` (or `FLATSTACK_STATE_DIR`), else the cluster's default.
pub(crate) fn state_path(
    spec: &ClusterSpec,
    flag: Option<&std::path::PathBuf>,
) -> anyhow::Result<std::path::PathBuf> {
    Ok(match flag {
        Some(dir) => dir.clone(),
        None => crate::pki::StateDir::default_path(&spec.name)?,
    })
}

pub(crate) fn load_spec(path: &std::path::Path) -> anyhow::Result<ClusterSpec> {
    match ClusterSpec::load(path) {
        Ok(spec) => Ok(spec),
        Err(crate::spec::LoadError::Invalid(invalid)) => Err(invalid.into()),
        Err(crate::spec::LoadError::Read { path, source }) => Err(InvalidInput(format!(
            "cannot read cluster file {path}: {source}\n  hint: run `flatstack init` to write one, or pass --file"
        ))
        .into()),
    }
}
