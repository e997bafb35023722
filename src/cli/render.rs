//! `flatstack render`: every node's Ignition config and the admin kubeconfig, from the cluster
//! file and the local PKI alone. What `up` gives Nova as user_data is exactly this.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::cloud::runtime;
use super::{InvalidInput, load_spec};
use crate::addons;
use crate::kube::Manifest;
use crate::node::{self, ApiEndpoint};
use crate::pki::{self, BootstrapToken, ClusterPki, Kubeconfig, StateDir};
use crate::spec::Role;
use crate::sysext;

#[derive(Debug, clap::Args)]
pub(crate) struct RenderArgs {
    /// Directory for `<node>.ign` files and `kubeconfig`.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// The control plane's public address (floating IP): added to the API certificate and
    /// used in the kubeconfig.
    #[arg(long, value_name = "IP")]
    pub(crate) endpoint: Option<IpAddr>,
    /// The control plane's private address, which nodes join through. Defaults to the 10th
    /// address of `network.node_cidr` when flatstack creates the network.
    #[arg(long, value_name = "IP")]
    pub(crate) internal_endpoint: Option<Ipv4Addr>,
    /// State directory holding the cluster's PKI (default: $XDG_DATA_HOME/flatstack/<name>).
    #[arg(long, env = "FLATSTACK_STATE_DIR")]
    pub(crate) state_dir: Option<PathBuf>,
}

pub(crate) fn run(file: &Path, cloud_flag: Option<&str>, args: &RenderArgs) -> anyhow::Result<()> {
    let spec = load_spec(file)?;
    let internal = match args
        .internal_endpoint
        .or(spec.network.default_api_address())
    {
        Some(ip) => ip,
        None => {
            return Err(InvalidInput(
                "the cluster joins an existing network, so the control plane's private address is not known yet\n  hint: pass --internal-endpoint IP (`flatstack up` learns it from the port it creates)".into(),
            )
            .into());
        }
    };
    if let Some(cidr) = spec.network.node_cidr
        && !cidr.contains(&internal)
    {
        return Err(InvalidInput(format!(
            "--internal-endpoint {internal} is not in `network.node_cidr` {cidr}, where the control plane's port is\n  hint: give an address of {cidr}"
        ))
        .into());
    }
    let endpoint = ApiEndpoint {
        internal,
        public: args.endpoint,
    };
    let state_path = super::state_path(&spec, args.state_dir.as_ref())?;
    // The digest first: a release that is not published stops here, before anything is written.
    let existing = StateDir::open_existing(&state_path)?;
    let sysext = runtime()?.block_on(sysext::pin(&spec.kubernetes, existing.as_ref()))?;
    let spec = sysext.pinned_into(spec);
    let state = match existing {
        Some(state) => state,
        None => StateDir::open_or_create(&state_path)?,
    };
    let minting = ClusterPki::load_existing(&state)?.is_none();
    let mut pki = ClusterPki::load_or_create(&state)?;
    pki.ensure_secrets_key(&state)?;
    if minting && let Some(warning) = existing_cluster_warning(&spec, cloud_flag, &pki) {
        eprintln!("warning: {warning}");
    }
    // A token of this render's own, sealed like the key: `up` makes a fresh one per run.
    let token = BootstrapToken::generate()?;
    let nodes = node::render_cluster(&spec, &pki, &endpoint, &token)?;
    let digest_key = pki.ca.key_pem.expose().as_bytes();
    let review = addons::for_review(&spec, digest_key)?;
    // Backups are on unless the file turns them off (`up` also needs the cloud to have a store).
    let review = match spec.backup.enabled {
        Some(false) => review,
        _ => {
            let target = crate::backup::objects::review_target(
                &spec,
                crate::backup::recorded_container(Some(&state))?,
                crate::backup::load_or_create_key(&state)?.public_pem(),
            );
            let objects = crate::backup::objects::manifests(&spec, &target);
            addons::with_backups(review, objects, digest_key)
        }
    };
    let manifests = addons::in_apply_order(&review);
    sysext::record(&state, &sysext)?;

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    for rendered in &nodes {
        // Sealed, but still the cluster's secrets for whoever holds the key: private.
        let path = args.out.join(format!("{}.ign", rendered.name));
        pki::write_atomically(&path, rendered.ignition.as_bytes(), 0o600)?;
    }
    let server = format!(
        "https://{}",
        host_port(endpoint.public.unwrap_or(IpAddr::V4(internal)))
    );
    let admin = pki::kubeconfig_yaml(&pki, &spec.name, &server, Kubeconfig::Admin)?;
    let super_admin = pki::kubeconfig_yaml(&pki, &spec.name, &server, Kubeconfig::SuperAdmin)?;
    pki::write_atomically(&args.out.join("kubeconfig"), admin.as_bytes(), 0o600)?;
    write_manifests(&args.out.join("manifests"), &manifests)?;
    state.write("admin.kubeconfig", admin.as_bytes(), 0o600)?;
    state.write("super-admin.kubeconfig", super_admin.as_bytes(), 0o600)?;

    out!("{:<44} {:<14} {:>10}", "NODE", "ROLE", "USER_DATA");
    for rendered in &nodes {
        let role = match rendered.role {
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
        };
        out!(
            "{:<44} {:<14} {:>10}",
            rendered.name,
            role,
            rendered.user_data_len()
        );
    }
    out!(
        "wrote {} Ignition config(s), kubeconfig and {} Kubernetes object(s) (manifests/, in the order `up` applies them, credentials replaced by a marker) to {}; API endpoint {server}, join endpoint {internal}:6443",
        nodes.len(),
        manifests.len(),
        args.out.display()
    );
    out!("Kubernetes sysext: {}", sysext.describe());
    out!("state directory: {}", state.path().display());
    Ok(())
}

/// When a cloud can be reached and already holds a cluster of this name, what minting a new
/// PKI for it means. Asked with a short deadline and never fatal: `render` works offline.
fn existing_cluster_warning(
    spec: &crate::spec::ClusterSpec,
    cloud_flag: Option<&str>,
    pki: &ClusterPki,
) -> Option<String> {
    let config = super::cloud::cloud_config(cloud_flag, spec).ok()?;
    let servers = runtime().ok()?.block_on(async {
        let look = async {
            let cloud = crate::cloud::Cloud::connect(config).await.ok()?;
            let tag = crate::plan::resources::cluster_tag(&spec.name);
            cloud.servers_tagged(&[tag.as_str()]).await.ok()
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), look)
            .await
            .ok()
            .flatten()
    })?;
    if servers.is_empty() {
        return None;
    }
    let theirs = crate::apply::identity::cluster_ca(&servers)
        .map_or_else(|| "a CA it does not record".to_string(), str::to_string);
    Some(format!(
        "minted a new PKI (CA {}) for cluster `{}`, which already exists in the cloud with {} server(s) trusting {theirs}: configs rendered from it can never join that cluster, and `flatstack up` with this state directory will refuse it\n  hint: render with the cluster's own state directory (--state-dir), or pick another name",
        pki.discovery_hash(),
        spec.name,
        servers.len()
    ))
}

/// Writes each object as `NN-<kind>-[<namespace>-]<name>.yaml` (kind in lowercase), numbered in apply order,
/// replacing what an earlier render left there.
fn write_manifests(dir: &Path, manifests: &[Manifest]) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("cannot replace {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (index, manifest) in manifests.iter().enumerate() {
        let kind = manifest.kind().to_ascii_lowercase();
        let stem = match manifest.namespace() {
            Some(ns) => format!("{kind}-{ns}-{}", manifest.name()),
            None => format!("{kind}-{}", manifest.name()),
        };
        let file = dir.join(format!("{:02}-{stem}.yaml", index + 1));
        let yaml = serde_saphyr::to_string(manifest.body())
            .map_err(|e| anyhow::anyhow!("cannot write {} as YAML: {e}", manifest))?;
        pki::write_atomically(&file, yaml.as_bytes(), 0o644)?;
    }
    Ok(())
}

fn host_port(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:6443"),
        IpAddr::V6(v6) => format!("[{v6}]:6443"),
    }
}
