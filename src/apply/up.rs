//! `up` as one function of the engine: pin the sysext, take the writer lock, observe, refuse
//! what cannot change in place, run the preflight, load (or, for a new cluster only, make) the
//! PKI, plan, run the plan, write the kubeconfigs, and bootstrap the cluster through its API.
//! Progress goes out as [`Event`]s; the result is an [`UpReport`] for the CLI to print.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bootstrap::{self, Bootstrapped};
use super::execute::{Context, Event};
use super::observe::{Observation, observe};
use super::timeline::{self, Timeline};
use super::{ApplyError, Provisioned, identity, preflight, ranges};
use crate::addons;
use crate::backup::BackupError;
use crate::cloud::{Cloud, CloudConfig, CloudError};
use crate::kube::KubeClient;
use crate::node::seal::SEAL_KEY_METADATA;
use crate::pki::{BootstrapToken, ClusterPki, Kubeconfig, PkiError, StateDir};
use crate::plan::kube_view::{KubeView, Membership, Registered};
use crate::plan::planner::{self, ApiReach, PlanError, Scope};
use crate::plan::steps::Plan;
use crate::spec::ClusterSpec;
use crate::sysext::{self, SysextError};

/// What `up` is asked to do.
pub(crate) struct UpRequest {
    pub(crate) spec: ClusterSpec,
    pub(crate) cloud: CloudConfig,
    pub(crate) state_path: PathBuf,
    /// Stop once the cloud side is done.
    pub(crate) provision_only: bool,
    /// Build a control plane that ran and is gone again (a new, empty cluster).
    pub(crate) accept_empty_cluster: bool,
    /// Bring the cluster back from this snapshot (`flatstack restore`).
    pub(crate) restore: Option<super::restore::RestoreRequest>,
    /// Reach the API at this HOST:PORT instead of the floating IP.
    pub(crate) api_address: Option<String>,
    /// How long the cluster gets to come up.
    pub(crate) timeout: Duration,
}

/// What `up` did.
pub(crate) struct UpReport {
    pub(crate) spec: ClusterSpec,
    pub(crate) plan: Plan,
    pub(crate) provisioned: Provisioned,
    pub(crate) timeline: Timeline,
    pub(crate) api_calls: u64,
    pub(crate) mutating_calls: u64,
    /// The API's URL as clients reach it, and the admin kubeconfig written for it.
    pub(crate) api: String,
    pub(crate) admin_kubeconfig: String,
    pub(crate) admin_kubeconfig_path: PathBuf,
    /// The cluster side, unless `provision_only`.
    pub(crate) booted: Option<Bootstrapped>,
    /// Servers whose sealing key left their metadata in this run (their nodes joined).
    pub(crate) keys_removed: usize,
    /// Tags added that say the control plane has run.
    pub(crate) marked: usize,
}

impl UpReport {
    /// Whether the run changed nothing, in the cloud or through the API.
    pub(crate) fn unchanged(&self) -> bool {
        self.plan.is_empty()
            && self.mutating_calls == 0
            && self.keys_removed == 0
            && self.marked == 0
            && self.booted.as_ref().is_none_or(|b| b.changes == 0)
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum UpError {
    /// The file asks for what cannot be done: exit code 2, nothing changed.
    #[error("{0}")]
    Refused(String),
    #[error(
        "preflight failed, nothing was created; {0}\n  hint: `flatstack cloud check` shows the details"
    )]
    Preflight(String),
    #[error(transparent)]
    Sysext(#[from] SysextError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Ranges(#[from] ranges::RecordError),
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Kube(#[from] crate::kube::KubeError),
    #[error(transparent)]
    Addons(#[from] crate::addons::AddonError),
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
    #[error(transparent)]
    Restore(#[from] super::restore::RestoreError),
    #[error("cannot read the cloud's CA bundle for cloud.conf: {0}")]
    CloudConf(String),
    #[error(
        "the cluster side failed\n  the cloud side is done; run `flatstack up` again to carry on, or `flatstack status` to look"
    )]
    Bootstrap(#[source] ApplyError),
    /// The second round after an upgrade (replacing pools that upgrade by replacement)
    /// failed; the upgrade itself is done.
    #[error(
        "every node of the upgrade was moved, then replacing the nodes of pools that upgrade by replacement failed\n  hint: run `flatstack up` again to carry on"
    )]
    Replacement(#[source] Box<UpError>),
    /// The last look at the cloud found the cluster other than `up` made it.
    #[error("{0}")]
    NotAsMade(String),
}

impl UpError {
    pub(crate) fn is_invalid_input(&self) -> bool {
        match self {
            UpError::Refused(_) => true,
            UpError::Sysext(e) => e.is_invalid_input(),
            UpError::Pki(e) => e.is_invalid_input(),
            UpError::Ranges(_) => true,
            UpError::Plan(e) => e.is_invalid_input(),
            UpError::Backup(e) => e.is_invalid_input(),
            UpError::Restore(e) => e.is_invalid_input(),
            _ => false,
        }
    }
}

/// Runs `up`; `events` hears of every step as it starts.
pub(crate) async fn up(
    request: UpRequest,
    events: &(dyn Fn(Event) + Sync),
) -> Result<UpReport, UpError> {
    let started = Instant::now();
    let at = || started.elapsed().as_secs_f64();
    let say = |line: &str| events(Event::Say(line.to_string()));
    let UpRequest {
        spec,
        cloud: config,
        state_path,
        provision_only,
        accept_empty_cluster,
        restore,
        api_address,
        timeout,
    } = request;
    // The sysext digest first: an unpublished release stops here, before anything exists.
    let existing_state = StateDir::open_existing(&state_path)?;
    let sysext = sysext::pin(&spec.kubernetes, existing_state.as_ref()).await?;
    let mut spec = sysext.pinned_into(spec);
    let had_state = existing_state.is_some();
    // One writer per cluster, from before the cloud is looked at until the run ends.
    let (state, _lock) = StateDir::open_locked(&state_path, "up")?;
    let cloud = Arc::new(Cloud::connect(config).await?);
    let connected = at();
    let recorded_ranges = ranges::recorded(Some(&state))?;
    let Checked {
        observation,
        problems,
        ..
    } = observe_checked(&cloud, &mut spec, recorded_ranges).await?;
    let observed_at = at();
    let observed = &observation.observed;
    if !problems.is_empty() {
        return Err(UpError::Preflight(problems.join("; ")));
    }
    // The PKI is the cluster's identity: nodes trust its CA. Never mint one for a cluster that
    // exists in the cloud.
    let existing_pki = match had_state {
        true => ClusterPki::load_existing(&state)?,
        false => None,
    };
    if existing_pki.is_none() && observed.count() > 0 {
        return Err(UpError::Refused(missing_pki(&spec.name, &state_path)));
    }
    let mut pki = match existing_pki {
        Some(pki) => pki,
        None => ClusterPki::load_or_create(&state)?,
    };
    identity::check(&spec.name, &observed.servers, &pki, &state_path)
        .map_err(|e| UpError::Refused(e.to_string()))?;
    identity::check_secrets_key(&spec.name, &observed.servers, &pki, &state_path)
        .map_err(|e| UpError::Refused(e.to_string()))?;
    pki.ensure_secrets_key(&state)?;
    for old in pki.renew_client_certificates(&state, time::OffsetDateTime::now_utc())? {
        say(&format!(
            "re-issued the {} client certificate, which {}: kubeconfigs made before keep working until then; `flatstack kubeconfig --merge` refreshes yours",
            old.who,
            old.describe(time::OffsetDateTime::now_utc())
        ));
    }
    sysext::record(&state, &sysext)?;
    if recorded_ranges.is_none() {
        ranges::record(&state, &spec)?;
    }
    // A restore first plans as it will run and checks the project can hold it; then it
    // stages the snapshot, deletes the control planes and looks again.
    let restoring = match &restore {
        None => None,
        Some(request) => {
            trial_restore(&cloud, &spec, &observation, timeout).await?;
            Some(
                super::restore::begin(&cloud, &state, &spec, request, &observed.servers, &say)
                    .await?,
            )
        }
    };
    // A restore's blob to delete once its cluster runs: this one's, or one a stopped restore
    // left (whose workers without a Node this run also builds again).
    let restored_from = match &restoring {
        Some(r) => Some(r.staged.container.clone()),
        None => super::restore::pending(&state)?,
    };
    let observation = match &restoring {
        None => observation,
        Some(_) => {
            let Checked {
                observation,
                problems,
                ..
            } = observe_checked(&cloud, &mut spec, ranges::recorded(Some(&state))?).await?;
            if !problems.is_empty() {
                return Err(UpError::Preflight(problems.join("; ")));
            }
            observation
        }
    };
    let observed = &observation.observed;
    if !identity::encrypts_secrets(&observed.servers) {
        // Made before flatstack encrypted Secrets: kept as it runs (the key stays in the state
        // directory, for clusters made or restored from it). Decided from the last look: a
        // restore has deleted the control planes by now, and the new ones encrypt.
        pki.secrets_key = None;
    }
    let scope = Scope {
        kubernetes: !provision_only,
        accept_empty_cluster,
        restoring: restoring.is_some(),
        api: ApiReach::Unasked,
        node_wait: timeout,
    };
    let (plan, kube, silence) =
        plan_asking_the_api(&spec, &observation, scope, &pki, api_address.as_deref()).await?;
    if let Some(silence) = silence {
        say(&silence);
    }
    if let Some(short) = growth_shortfall(&cloud, observed, &observation.facts, &plan).await? {
        return Err(UpError::Preflight(short));
    }
    let backup_target = backup_target(&cloud, &state, &spec, &say).await?;
    let planned_at = at();
    say(&format!(
        "Kubernetes {}: sysext {}",
        spec.kubernetes.version,
        sysext.describe()
    ));
    let rounds = Rounds {
        cloud: &cloud,
        pki: &pki,
        timeout,
        started,
        events,
    };
    let provisioned = rounds
        .provision(
            &spec,
            kube,
            &observation,
            &plan,
            restoring.as_ref().map(|r| r.source.clone()),
        )
        .await?;
    // Workers without a Node of their own in the restored cluster are built again, once its
    // API answers: their kubelets registered before and never register again.
    let (plan, provisioned) = match (&restored_from, provision_only) {
        (Some(_), false) => {
            let api = api_url(&provisioned, api_address.as_deref());
            let again = Again {
                state: &state,
                accept_empty_cluster,
                api_address: api_address.as_deref(),
            };
            // Only the workers that were there before this run: the ones it made have no
            // Node yet, and need none to be theirs.
            let kept: Vec<String> = observation
                .observed
                .servers
                .iter()
                .map(|s| s.id.clone())
                .collect();
            rounds
                .after_restore(&mut spec, &again, &api, &kept, plan, provisioned)
                .await?
        }
        _ => (plan, provisioned),
    };
    // Pools that upgrade by replacement wait for the control planes to run the release: a
    // second round, planned from a fresh look, replaces their nodes.
    let (plan, provisioned) = match plan.replaces_after_upgrade() && !provision_only {
        false => (plan, provisioned),
        true => {
            let again = Again {
                state: &state,
                accept_empty_cluster,
                api_address: api_address.as_deref(),
            };
            rounds
                .again(
                    &mut spec,
                    &again,
                    plan,
                    provisioned,
                    "the control planes run the file's release: replacing the nodes of pools that upgrade by replacement",
                )
                .await
                .map_err(|e| UpError::Replacement(Box::new(e)))?
        }
    };
    let provisioned_at = at();
    let mutating_calls = cloud.counter.mutating();
    let server = api_url(&provisioned, None);
    let admin = crate::pki::kubeconfig_yaml(&pki, &spec.name, &server, Kubeconfig::Admin)?;
    let admin_kubeconfig_path = state.write("admin.kubeconfig", admin.as_bytes(), 0o600)?;
    let super_admin =
        crate::pki::kubeconfig_yaml(&pki, &spec.name, &server, Kubeconfig::SuperAdmin)?;
    state.write("super-admin.kubeconfig", super_admin.as_bytes(), 0o600)?;
    let api = api_url(&provisioned, api_address.as_deref());
    let before = [
        ("log in".to_string(), 0.0, connected),
        ("observe, preflight".to_string(), connected, observed_at),
        ("PKI, plan".to_string(), observed_at, planned_at),
    ];
    let mut after = Vec::new();
    let booted = match provision_only {
        true => None,
        false => {
            let client = KubeClient::new(&pki, &api)?;
            let project_id = cloud.project_id().await;
            let cloud_conf = addons::cloud_conf(&addons::CloudConfInputs {
                config: cloud.config(),
                project_id: project_id.as_deref(),
                external_network_id: &provisioned.external_network_id,
                subnet_id: &provisioned.subnet_id,
            })
            .map_err(|e| UpError::CloudConf(e.to_string()))?;
            let digest_key = pki.ca.key_pem.expose().as_bytes();
            let addon_set = addons::for_cluster(&spec, &cloud_conf, digest_key)?;
            let addon_set = match &backup_target {
                Some(target) => addons::with_backups(
                    addon_set,
                    crate::backup::objects::manifests(&spec, target),
                    digest_key,
                ),
                None => addon_set,
            };
            let booted = bootstrap::bootstrap(&client, &plan.nodes, &addon_set, timeout, &say)
                .await
                .map_err(UpError::Bootstrap)?;
            if backup_target.is_none() {
                // Backups turned off (or the store gone): no CronJob keeps uploading, and no
                // Secret keeps the credentials.
                crate::backup::objects::remove(&client).await?;
            }
            let mut clock = provisioned_at;
            for (phase, took) in &booted.timings {
                after.push((phase.to_string(), clock, clock + took.as_secs_f64()));
                clock += took.as_secs_f64();
            }
            Some(booted)
        }
    };
    let joined = booted.as_ref().map(|b| b.nodes.as_slice());
    let Confirmed {
        marked,
        keys_removed,
    } = confirm(&cloud, &spec, &plan, &pki, joined).await?;
    if keys_removed > 0 {
        say(&format!(
            "removed the key to their sealed secrets from {keys_removed} server(s)' metadata: their nodes have joined"
        ));
    }
    if let (Some(container), Some(_)) = (&restored_from, &booted) {
        let store = crate::backup::Store::of(&cloud, &spec).map_err(BackupError::from)?;
        let deleted = crate::backup::restore::clear(&store, container).await?;
        super::restore::finished(&state)?;
        say(&format!(
            "the restored cluster runs; deleted {deleted} staged snapshot(s){}",
            match store.s3() {
                Some(_) => "",
                None => " and the TempURL key",
            }
        ));
    }
    let timeline = timeline::build(&plan, &provisioned.runs, &before, &after, at());
    Ok(UpReport {
        keys_removed,
        marked,
        spec,
        plan,
        provisioned,
        timeline,
        api_calls: cloud.counter.calls(),
        mutating_calls,
        api,
        admin_kubeconfig: admin,
        admin_kubeconfig_path,
        booted,
    })
}

/// Where the snapshot CronJob sends snapshots, making the container the first time; `None`
/// when backups are off, or when the file leaves them to the cloud (`backup.enabled` unset)
/// and its store refuses the cluster's credentials (Swift's default operator roles leave
/// plain members out): said, not fatal. Required backups that cannot be written stop `up`
/// before it changes anything in the cloud.
async fn backup_target(
    cloud: &Cloud,
    state: &StateDir,
    spec: &ClusterSpec,
    say: &dyn Fn(&str),
) -> Result<Option<crate::backup::objects::BackupTarget>, UpError> {
    // Off: nothing of the store is needed (and no S3 key asked for).
    if spec.backup.enabled == Some(false) {
        return Ok(None);
    }
    let store = crate::backup::Store::of(cloud, spec).map_err(BackupError::from)?;
    if !crate::backup::enabled(spec, store.offered().await, &cloud.config().name)? {
        return Ok(None);
    }
    let ensured = match crate::backup::ensure(&store, state, &spec.name).await {
        Ok(ensured) => ensured,
        Err(e) if e.is_refused() && crate::backup::refusal_turns_off(spec, &store) => {
            say(&format!(
                "backups are off: {}; give the cluster's credentials a role that may write to the object store, or set `backup.enabled = false` to say so",
                e.to_string().lines().next().unwrap_or_default()
            ));
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    if ensured.created {
        say(&format!(
            "made backup {} {} in the object store; it took a test write",
            store.noun(),
            ensured.container
        ));
    }
    Ok(Some(
        crate::backup::target(&store, state, ensured.container).await?,
    ))
}

/// A restore planned as it will run (the control planes gone, the first restoring) and the
/// project's quotas checked against that plan, before anything is deleted.
async fn trial_restore(
    cloud: &Cloud,
    spec: &ClusterSpec,
    observation: &Observation,
    timeout: Duration,
) -> Result<(), UpError> {
    let mut observed = observation.observed.clone();
    observed.servers.retain(|s| !s.has_role("control-plane"));
    let scope = Scope {
        kubernetes: true,
        accept_empty_cluster: false,
        restoring: true,
        api: ApiReach::Unasked,
        node_wait: timeout,
    };
    let plan = planner::plan(spec, &observed, &observation.facts, scope)?;
    // The control planes' new servers take the place of the ones deleted first.
    let flavors = &observation.facts.flavors;
    let mut growth = crate::plan::Needs::growth(&plan, &observed, flavors);
    for old in observation
        .observed
        .servers
        .iter()
        .filter(|s| s.has_role("control-plane"))
    {
        let flavor = old
            .flavor_name()
            .and_then(|name| flavors.iter().find(|f| f.name == name || f.id == name));
        growth.instances = growth.instances.saturating_sub(1);
        if let Some(flavor) = flavor {
            growth.cores = growth.cores.saturating_sub(u64::from(flavor.vcpus));
            growth.ram_mib = growth.ram_mib.saturating_sub(flavor.ram);
        }
    }
    if growth.is_zero() {
        return Ok(());
    }
    let quotas = preflight::quotas(cloud, &growth).await?;
    match preflight::quota_shortfall(&quotas) {
        Some(short) => Err(UpError::Preflight(short)),
        None => Ok(()),
    }
}

/// The API's URL: at `api_address` when given, else at the floating IP (the private address
/// without one).
fn api_url(provisioned: &Provisioned, api_address: Option<&str>) -> String {
    match (api_address, provisioned.endpoint.public) {
        (Some(address), _) => format!("https://{address}"),
        (None, Some(ip)) => format!("https://{ip}:6443"),
        (None, None) => format!("https://{}:6443", provisioned.endpoint.internal),
    }
}

/// What every round of `up`'s cloud side shares.
struct Rounds<'a> {
    cloud: &'a Arc<Cloud>,
    pki: &'a ClusterPki,
    timeout: Duration,
    started: Instant,
    events: &'a (dyn Fn(Event) + Sync),
}

/// What a second round plans with besides the spec.
struct Again<'a> {
    state: &'a StateDir,
    accept_empty_cluster: bool,
    api_address: Option<&'a str>,
}

impl Rounds<'_> {
    /// Runs `plan`, made from `observation`, with a join token of its own for its new nodes.
    async fn provision(
        &self,
        spec: &ClusterSpec,
        kube: Option<KubeClient>,
        observation: &Observation,
        plan: &Plan,
        restore: Option<crate::node::restore::RestoreSource>,
    ) -> Result<Provisioned, UpError> {
        let context = Arc::new(Context {
            cloud: self.cloud.clone(),
            spec: spec.clone(),
            pki: Some(self.pki.clone()),
            join_token: Some(BootstrapToken::generate()?),
            kube,
            node_ready_within: self.timeout,
            restore,
        });
        Ok(super::provision(context, observation, plan, self.started, self.events).await?)
    }

    /// After a restore, once the restored API answers: Nodes that no server accounts for are
    /// deleted, and workers without a Node of their own (see
    /// [`super::restore::unregistered`]) are deleted, their stale Node first, and built again
    /// in a second round. The servers are listed afresh: the first round may have changed them.
    async fn after_restore(
        &self,
        spec: &mut ClusterSpec,
        again: &Again<'_>,
        api: &str,
        kept: &[String],
        plan: Plan,
        provisioned: Provisioned,
    ) -> Result<(Plan, Provisioned), UpError> {
        let say = |line: String| (self.events)(Event::Say(line));
        let client = KubeClient::new(self.pki, api)?;
        say("waiting for the restored cluster's API".into());
        client.wait_ready(self.timeout).await?;
        if self.pki.secrets_key.is_some() {
            let rewritten = super::restore::rewrite_secrets(&client).await?;
            say(format!(
                "wrote the restored cluster's {} Secret(s) back, so the API servers store them encrypted",
                rewritten.written
            ));
            if !rewritten.failed.is_empty() {
                say(format!(
                    "warning: {} Secret(s) could not be written back and may stay stored in clear until they change ({}): {}",
                    rewritten.failed.len(),
                    rewritten
                        .failed
                        .iter()
                        .take(5)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", "),
                    rewritten.first_error.as_deref().unwrap_or_default()
                ));
            }
        }
        let nodes = client.nodes().await?;
        let tag = crate::plan::resources::cluster_tag(&spec.name);
        let servers = self.cloud.servers_tagged(&[tag.as_str()]).await?;
        for gone in super::restore::gone_nodes(spec, &servers, &nodes) {
            client.delete(&format!("/api/v1/nodes/{gone}")).await?;
            say(format!(
                "deleted the Node object of {gone}: no server of the cluster is left for it"
            ));
        }
        let before: Vec<crate::cloud::compute::Server> = servers
            .iter()
            .filter(|s| kept.contains(&s.id))
            .cloned()
            .collect();
        let unregistered = super::restore::unregistered(&before, &nodes);
        if unregistered.is_empty() {
            return Ok((plan, provisioned));
        }
        for worker in &unregistered {
            let name = &worker.server.name;
            match &worker.stale_node {
                Some(node) => {
                    client.delete(&format!("/api/v1/nodes/{node}")).await?;
                    say(format!(
                        "deleting worker {name}: its Node in the restored cluster names another server (deleted); it is built again"
                    ));
                }
                None => say(format!(
                    "deleting worker {name}: made after the snapshot, it has no Node in the restored cluster and is built again"
                )),
            }
            match self.cloud.delete_server(&worker.server.id).await {
                Err(e) if e.is_not_found() => {}
                result => result?,
            }
        }
        for worker in &unregistered {
            self.cloud
                .wait_server_deleted(&worker.server.id, Duration::from_secs(600))
                .await?;
        }
        self.again(
            spec,
            again,
            plan,
            provisioned,
            "building again the workers the restored cluster has no Node of",
        )
        .await
    }

    /// A second round, `why` said first: looked at, planned and run afresh (after an upgrade
    /// moved the control planes, the roster replaces the nodes of pools that upgrade by
    /// replacement; after a restore, workers deleted are built again); both rounds' steps and
    /// runs reported as one.
    async fn again(
        &self,
        spec: &mut ClusterSpec,
        again: &Again<'_>,
        first: Plan,
        provisioned: Provisioned,
        why: &str,
    ) -> Result<(Plan, Provisioned), UpError> {
        (self.events)(Event::Say(why.to_string()));
        let Checked {
            observation,
            problems,
            ..
        } = observe_checked(self.cloud, spec, ranges::recorded(Some(again.state))?).await?;
        if !problems.is_empty() {
            return Err(UpError::Preflight(problems.join("; ")));
        }
        let scope = Scope {
            kubernetes: true,
            accept_empty_cluster: again.accept_empty_cluster,
            restoring: false,
            api: ApiReach::Unasked,
            node_wait: self.timeout,
        };
        let (next, kube, silence) =
            plan_asking_the_api(spec, &observation, scope, self.pki, again.api_address).await?;
        if let Some(silence) = silence {
            (self.events)(Event::Say(silence));
        }
        let observed = &observation.observed;
        if let Some(short) =
            growth_shortfall(self.cloud, observed, &observation.facts, &next).await?
        {
            return Err(UpError::Preflight(short));
        }
        let second = self
            .provision(spec, kube, &observation, &next, None)
            .await?;
        let offset = first.steps.len();
        let mut runs = provisioned.runs;
        runs.extend(second.runs.into_iter().map(|mut run| {
            run.step += offset;
            run
        }));
        Ok((first.then(next), Provisioned { runs, ..second }))
    }
}

/// `up`'s last step, before it reports: every server of the cluster file is still there and
/// trusts this state directory's CA (another workstation's `down`, or its `up` with a state
/// directory of its own, may have run meanwhile); once nodes have joined (`joined`), the keys
/// to their sealed secrets leave their servers' metadata. Control planes seen ACTIVE are
/// marked as having run.
async fn confirm(
    cloud: &Cloud,
    spec: &ClusterSpec,
    plan: &Plan,
    pki: &ClusterPki,
    joined: Option<&[k8s_openapi::api::core::v1::Node]>,
) -> Result<Confirmed, UpError> {
    let tag = crate::plan::resources::cluster_tag(&spec.name);
    let servers = cloud.servers_tagged(&[tag.as_str()]).await?;
    let vanished: Vec<&str> = plan
        .nodes
        .iter()
        .filter(|n| !servers.iter().any(|s| s.name == n.name))
        .map(|n| n.name.as_str())
        .collect();
    if !vanished.is_empty() {
        return Err(UpError::NotAsMade(format!(
            "cluster `{}` is not as this run made it: {} vanished while it ran (a `flatstack down` from another workstation?)\n  hint: `flatstack status` shows what exists; `flatstack up` makes what is missing again",
            spec.name,
            vanished.join(", ")
        )));
    }
    let ours = pki.discovery_hash();
    let foreign = crate::plan::resources::servers_trusting_another_ca(&servers, &ours);
    if !foreign.is_empty() {
        let named: Vec<String> = foreign
            .iter()
            .map(|(server, ca)| format!("{} (trusts {ca})", server.name))
            .collect();
        return Err(UpError::NotAsMade(format!(
            "cluster `{}` has servers made with another state directory than this one (CA {ours}): {}; their nodes can never join the others\n  hint: another workstation made this cluster at the same time; run `flatstack up` with the state directory whose CA the control plane trusts (the others are refused): it builds the other workers again",
            spec.name,
            named.join(", ")
        )));
    }
    let marked = mark_control_planes_ran(cloud, spec, &servers).await?;
    let Some(joined) = joined else {
        return Ok(Confirmed {
            marked,
            keys_removed: 0,
        });
    };
    let mut keys_removed = 0;
    for server in servers.iter().filter(|s| {
        s.metadata.contains_key(SEAL_KEY_METADATA)
            && joined
                .iter()
                .any(|n| n.metadata.name.as_deref() == Some(s.name.as_str()))
    }) {
        cloud
            .delete_server_metadata(&server.id, SEAL_KEY_METADATA)
            .await?;
        keys_removed += 1;
    }
    Ok(Confirmed {
        marked,
        keys_removed,
    })
}

/// What `up`'s last step changed.
struct Confirmed {
    /// Tags added that say the control plane has run.
    marked: usize,
    /// Servers whose sealing key left their metadata.
    keys_removed: usize,
}

/// Marks the cluster as having run once a control plane's server is ACTIVE: a tag on that
/// control plane's port and on the API's floating IP (either survives the other's deletion),
/// so a control plane lost later is never built again blank. Returns how many tags it added.
async fn mark_control_planes_ran(
    cloud: &Cloud,
    spec: &ClusterSpec,
    servers: &[crate::cloud::compute::Server],
) -> Result<usize, UpError> {
    use crate::cloud::network::{Kind, Port};
    use crate::plan::resources::{CONTROL_PLANE_RAN_TAG, cluster_tag};
    let ran: Vec<&str> = servers
        .iter()
        .filter(|s| s.status == "ACTIVE" && s.has_role("control-plane"))
        .map(|s| s.name.as_str())
        .collect();
    if ran.is_empty() {
        return Ok(0);
    }
    let unmarked = |tags: &[String]| !tags.iter().any(|t| t == CONTROL_PLANE_RAN_TAG);
    let with_mark = |tags: &[String]| {
        let mut tags = tags.to_vec();
        tags.push(CONTROL_PLANE_RAN_TAG.to_string());
        tags
    };
    let mut marked = 0;
    let tag = cluster_tag(&spec.name);
    let ports: Vec<Port> = cloud.list_tagged(Kind::Port, &[tag.as_str()]).await?;
    for port in ports
        .iter()
        .filter(|p| ran.contains(&p.name.as_str()) && unmarked(&p.tags))
    {
        cloud
            .set_tags(Kind::Port, &port.id, &with_mark(&port.tags))
            .await?;
        marked += 1;
    }
    let floating = super::cluster::api_floating_ips(cloud, spec).await?;
    for address in floating.iter().filter(|f| unmarked(&f.tags)) {
        cloud
            .set_tags(Kind::FloatingIp, &address.id, &with_mark(&address.tags))
            .await?;
        marked += 1;
    }
    Ok(marked)
}

/// One observation of the cloud for `spec`, checked as `up` checks it before anything is made:
/// the API's endpoint is chosen and set in `spec` (with why), what cannot change in place is
/// refused; the preflight's problems are returned (quotas are asked for a new cluster only,
/// since an existing one already uses some), with what the cluster needs.
async fn observe_checked(
    cloud: &Cloud,
    spec: &mut ClusterSpec,
    recorded_ranges: Option<ranges::Ranges>,
) -> Result<Checked, UpError> {
    let observation = observe(cloud, spec).await?;
    let (endpoint, endpoint_chosen) = observation.api_endpoint(spec);
    spec.control_plane.api_endpoint = endpoint;
    refuse_immutable_changes(spec, &observation, recorded_ranges)?;
    let (needs, _) = crate::plan::Needs::of(spec, &observation.facts.flavors);
    let quotas = match observation.observed.count() {
        0 => preflight::quotas(cloud, &needs).await?,
        _ => Vec::new(),
    };
    let problems = preflight::inspect(spec, &observation, quotas).problems();
    Ok(Checked {
        observation,
        needs,
        problems,
        endpoint_chosen,
    })
}

/// What [`observe_checked`] found.
struct Checked {
    observation: Observation,
    needs: crate::plan::Needs,
    problems: Vec<String>,
    /// Why the API's endpoint is of its kind.
    endpoint_chosen: &'static str,
}

/// For a cluster that exists, whether the project's quotas leave room for what `plan` adds at
/// its peak (a new cluster's whole needs are checked by the preflight instead).
async fn growth_shortfall(
    cloud: &Cloud,
    observed: &crate::plan::resources::Observed,
    facts: &crate::plan::planner::CloudFacts,
    plan: &crate::plan::steps::Plan,
) -> Result<Option<String>, CloudError> {
    if observed.count() == 0 {
        return Ok(None);
    }
    let growth = crate::plan::Needs::growth(plan, observed, &facts.flavors);
    if growth.is_zero() {
        return Ok(None);
    }
    let quotas = preflight::quotas(cloud, &growth).await?;
    Ok(preflight::quota_shortfall(&quotas))
}

/// Refuses a file that changes what an existing cluster cannot change in place.
pub(crate) fn refuse_immutable_changes(
    spec: &ClusterSpec,
    observation: &Observation,
    ranges: Option<ranges::Ranges>,
) -> Result<(), UpError> {
    let observed = &observation.observed;
    if observed.count() == 0 {
        return Ok(());
    }
    let external = observation.facts.external_network.as_ref();
    let mut changes = crate::plan::resources::immutable_changes(
        spec,
        observed,
        external.map(|n| n.id.as_str()),
        &observation.facts.flavors,
    );
    changes.extend(ranges::changes(ranges, spec));
    if changes.is_empty() {
        return Ok(());
    }
    Err(UpError::Refused(format!(
        "the cluster file changes what cluster `{}` cannot change in place; nothing was changed:\n  {}\n  hint: put the old value back, or make a new cluster with the new one and move to it (`flatstack down` removes this one)",
        spec.name,
        changes.join("\n  ")
    )))
}

/// The refusal for a cluster that exists in the cloud but whose PKI is not here.
pub(crate) fn missing_pki(cluster: &str, state_path: &std::path::Path) -> String {
    format!(
        "cluster `{cluster}` exists in the cloud, but its PKI is not in {}: its nodes trust a CA only that state directory holds, and a new one would lock every later node out; nothing was changed\n  hint: copy the state directory from the machine that ran `flatstack up` first (or a backup) to {}, or pass --state-dir",
        state_path.join("pki").display(),
        state_path.display()
    )
}

/// The plan, made with what the API said (see [`ApiReach`]) when it has steps that need the
/// API or 3 or 5 control planes run, else as if it answers; with the client for those steps
/// and, when the API was asked and did not answer, the line that says so.
async fn plan_asking_the_api(
    spec: &ClusterSpec,
    observation: &Observation,
    mut scope: Scope,
    pki: &ClusterPki,
    api_address: Option<&str>,
) -> Result<(Plan, Option<KubeClient>, Option<String>), UpError> {
    let observed = &observation.observed;
    if !scope.kubernetes {
        return Ok((
            planner::plan(spec, observed, &observation.facts, scope)?,
            None,
            None,
        ));
    }
    // With 3 or 5 control planes the API is asked before any planning: etcd's members decide
    // what a lost control plane needs, and a member of no control plane, or a control plane
    // whose member is gone, is repaired.
    let control_planes_run = spec.control_plane.highly_available()
        && observed
            .servers
            .iter()
            .any(|s| s.status == "ACTIVE" && s.has_role("control-plane"));
    if !control_planes_run {
        let plan = planner::plan(spec, observed, &observation.facts, scope.clone())?;
        if !plan.needs_api() {
            return Ok((plan, None, None));
        }
    }
    let floating = observed
        .api_floating_ip(&spec.name)
        .map(|f| format!("{}:6443", f.floating_ip_address));
    let client = match api_address.map(str::to_string).or(floating) {
        Some(address) => Some(KubeClient::new(pki, &format!("https://{address}"))?),
        None => None,
    };
    scope.api = match &client {
        None => ApiReach::Silent("the cluster has no API floating IP".into()),
        Some(client) => match client.readyz().await {
            Ok(()) => match read_kube_view(spec, observed, client).await {
                Ok(view) => ApiReach::Answers(view),
                Err(e) => ApiReach::Silent(crate::kube::error_chain(&e)),
            },
            Err(e) => ApiReach::Silent(crate::kube::error_chain(&e)),
        },
    };
    let silence = match &scope.api {
        ApiReach::Silent(why) => Some(format!("the Kubernetes API does not answer ({why})")),
        _ => None,
    };
    let plan = planner::plan(spec, observed, &observation.facts, scope)?;
    Ok((plan, client, silence))
}

/// How long reading etcd's members for the plan may take (a node Job started, run and read).
const ETCD_LIST_TIMEOUT: Duration = Duration::from_secs(90);

/// What the API shows the planner (see [`KubeView`]): the registered Nodes and, with 3 or 5
/// control planes, etcd's members as the first running, Ready control plane that answers
/// lists them.
async fn read_kube_view(
    spec: &ClusterSpec,
    observed: &crate::plan::resources::Observed,
    client: &KubeClient,
) -> Result<KubeView, crate::kube::KubeError> {
    let nodes: BTreeMap<String, Registered> = client
        .nodes()
        .await?
        .iter()
        .filter_map(|node| {
            let labels = node.metadata.labels.as_ref();
            let registered = Registered {
                ready: crate::kube::is_ready(node),
                control_plane: labels.is_some_and(|l| l.contains_key(addons::CONTROL_PLANE_LABEL)),
                kubelet: crate::kube::upgrade::kubelet_release(node),
                cordoned_for_upgrade: node
                    .metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(crate::kube::upgrade::UPGRADING_ANNOTATION)),
            };
            Some((node.metadata.name.clone()?, registered))
        })
        .collect();
    let candidates: Vec<String> = spec
        .nodes()
        .into_iter()
        .filter(|n| n.role == crate::spec::Role::ControlPlane)
        .map(|n| n.name)
        .filter(|name| {
            nodes.get(name).is_some_and(|n| n.ready)
                && observed
                    .servers
                    .iter()
                    .any(|s| &s.name == name && s.status == "ACTIVE")
        })
        .collect();
    // Each in turn: a Ready control plane may run no etcd (its member removed, or a learner
    // still catching up); only when none answers are the members unread.
    let mut etcd = Membership::NotAsked;
    let mut failures: Vec<String> = Vec::new();
    for via in candidates
        .iter()
        .filter(|_| spec.control_plane.highly_available())
    {
        match client.etcd_members(via, ETCD_LIST_TIMEOUT).await {
            Ok(members) => {
                etcd = Membership::Listed(members);
                break;
            }
            Err(e) => failures.push(format!("{via}: {}", crate::kube::error_chain(&e))),
        }
    }
    if let (Membership::NotAsked, Some(first), false) =
        (&etcd, candidates.first(), failures.is_empty())
    {
        etcd = Membership::Unread {
            via: first.clone(),
            why: failures.join("; "),
        };
    }
    // Neither read may make the whole view silent: unread, they count as unknown (the
    // servers' records decide) and as no lock held.
    let kubeadm = client.kubeadm_release().await.unwrap_or(None);
    let reboot_lock_held = client.reboot_lock_held().await.unwrap_or(false);
    Ok(KubeView {
        nodes,
        etcd,
        kubeadm,
        reboot_lock_held,
    })
}

/// What `plan` reports: the steps `up` would run and what stands around them.
#[derive(Debug, serde::Serialize)]
pub(crate) struct PlanReport {
    pub(crate) cluster: String,
    pub(crate) cloud: String,
    pub(crate) kubernetes: String,
    pub(crate) sysext: sysext::PinnedSysext,
    /// Another digest the publisher lists today for a recorded one (kept, never followed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sysext_publisher_lists: Option<String>,
    pub(crate) warnings: Vec<String>,
    /// What holds the API's address (`control-plane`, `vip`), and why.
    pub(crate) api_endpoint: &'static str,
    pub(crate) api_endpoint_why: String,
    /// The steps `up` runs, in an order that respects their `needs`.
    pub(crate) actions: Vec<crate::plan::steps::ShownStep>,
    pub(crate) vcpus: u64,
    pub(crate) su_per_hour: u64,
    /// Each running node's Kubernetes release.
    pub(crate) releases: BTreeMap<String, crate::pins::KubernetesVersion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) upgrade: Option<UpgradeReport>,
    pub(crate) backup: crate::backup::BackupView,
    /// Whether the cluster's Secrets are encrypted at rest, and how, in a sentence.
    pub(crate) secrets_at_rest: String,
}

/// The move to the file's release, as `plan` shows it.
#[derive(Debug, serde::Serialize)]
pub(crate) struct UpgradeReport {
    #[serde(flatten)]
    pub(crate) upgrade: crate::plan::versions::Upgrade,
    /// Add-on pins that change with the minor: applied after the last control plane.
    pub(crate) addon_pins: Vec<String>,
    /// Whether this `up` would perform it (not with `--provision-only`).
    pub(crate) performed: bool,
}

/// Plans as `up` would, touching nothing: the same observation, refusals and planner, plus the
/// preflight's problems and the publisher's view of the sysext digest as warnings.
pub(crate) async fn plan(
    spec: ClusterSpec,
    config: CloudConfig,
    state_path: PathBuf,
    scope: Scope,
    api_address: Option<&str>,
    mut warnings: Vec<String>,
) -> Result<PlanReport, UpError> {
    let scope_kubernetes = scope.kubernetes;
    let state = StateDir::open_existing(&state_path)?;
    let sysext = sysext::pin(&spec.kubernetes, state.as_ref()).await?;
    let mut sysext_publisher_lists = None;
    match sysext::check_publisher(&spec.kubernetes, &sysext).await {
        sysext::PublisherCheck::Same => {}
        sysext::PublisherCheck::Changed { url, listed } => {
            warnings.push(format!(
                "{url} now lists sha256:{listed} for {}, not the sha256:{} recorded for this cluster; flatstack keeps the recorded one, so every node boots the same bytes\n  hint: if the publisher rebuilt the image on purpose and you trust it, set `kubernetes.sysext_sha256 = \"{listed}\"` in the cluster file",
                sysext.file, sysext.sha256
            ));
            sysext_publisher_lists = Some(listed);
        }
        sysext::PublisherCheck::Unknown(why) => warnings.push(format!(
            "could not compare the recorded sysext digest with the publisher's: {why}"
        )),
    }
    let cloud = Cloud::connect(config).await?;
    let recorded_ranges = ranges::recorded(state.as_ref())?;
    let mut spec = spec;
    let Checked {
        observation,
        needs,
        problems,
        endpoint_chosen,
    } = observe_checked(&cloud, &mut spec, recorded_ranges).await?;
    let pki = match &state {
        Some(state) => ClusterPki::load_existing(state)?,
        None => None,
    };
    let plan = match &pki {
        Some(pki) => {
            identity::check(&spec.name, &observation.observed.servers, pki, &state_path)
                .map_err(|e| UpError::Refused(e.to_string()))?;
            identity::check_secrets_key(
                &spec.name,
                &observation.observed.servers,
                pki,
                &state_path,
            )
            .map_err(|e| UpError::Refused(e.to_string()))?;
            // That the API does not answer is a warning here.
            let (plan, _, silence) =
                plan_asking_the_api(&spec, &observation, scope, pki, api_address).await?;
            warnings.extend(silence);
            plan
        }
        // No PKI here: nothing to ask the API with (and `up` refuses a cluster that exists).
        None => planner::plan(&spec, &observation.observed, &observation.facts, scope)?,
    };
    let growth = growth_shortfall(&cloud, &observation.observed, &observation.facts, &plan).await?;
    let backup = crate::backup::view(&cloud, &spec, state.as_ref()).await?;
    let secrets_at_rest = match identity::encrypts_secrets(&observation.observed.servers) {
        true => "encrypted by the API servers (secretbox, the state directory's key)".to_string(),
        false => "not encrypted: the cluster was made before flatstack encrypted them".to_string(),
    };
    for problem in problems.into_iter().chain(growth) {
        warnings.push(format!(
            "`up` would stop before creating anything: {problem}\n  hint: `flatstack cloud check` shows the details"
        ));
    }
    Ok(PlanReport {
        cluster: spec.name.clone(),
        cloud: cloud.config().name.clone(),
        kubernetes: spec.kubernetes.version.to_string(),
        sysext,
        sysext_publisher_lists,
        warnings,
        api_endpoint: spec.control_plane.api_endpoint.as_str(),
        api_endpoint_why: format!(
            "{}: {}",
            endpoint_chosen,
            spec.control_plane.api_endpoint.why()
        ),
        actions: plan.shown(),
        vcpus: needs.cores,
        su_per_hour: needs.vcpu_hours_per_hour(),
        releases: plan.releases.clone(),
        upgrade: plan.upgrade.clone().map(|upgrade| UpgradeReport {
            addon_pins: crate::pins::minor_pin_changes(upgrade.from, upgrade.to),
            performed: scope_kubernetes,
            upgrade,
        }),
        backup,
        secrets_at_rest,
    })
}
