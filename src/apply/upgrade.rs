//! `up`'s upgrade steps, one node at a time (see `plan::versions` for the order): kured's lock
//! held around them; on each node the stage host action (image staged and verified, its
//! kubeadm run), the drain (cordon and evict; the Node stays), the activate host action (new
//! image, kubelet restarted), the wait for the node Ready at the new release, the uncordon, and
//! the release recorded in its server's metadata. Each part first looks where the node is (a
//! host action that finished is not run again; one that failed in an earlier run is run
//! afresh), so an `up` stopped anywhere continues; a failure stops the upgrade with the node's
//! log, the node cordoned, every other node as it was.

use std::collections::BTreeMap;
use std::time::Duration;

use super::ApplyError;
use super::execute::Context;
use crate::kube::host_action::{HostAction, HostActionState};
use crate::kube::{AfterDrain, KubeClient, KubeError};
use crate::node::upgrade::{HostPaths, action_names, activate_script, stage_script};
use crate::pins::KubernetesVersion;
use crate::plan::resources::KUBERNETES_METADATA;
use crate::plan::steps::Action;
use crate::plan::versions::{Kubeadm, SYSEXT_DIGEST_METADATA, UPGRADING_METADATA};

/// Longest one host action may take: the download of the image and `kubeadm upgrade apply`
/// (which waits up to 5 min for each static pod) fit well inside.
const HOST_ACTION_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Longest the pods of a node being upgraded get to leave. A PodDisruptionBudget that allows
/// no eviction (one replica with `minAvailable: 1`) stops the upgrade here, naming the pod:
/// flatstack never deletes what a budget protects.
const UPGRADE_DRAIN_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Longest a reboot kured started may hold its lock before the upgrade gives up waiting.
const REBOOT_LOCK_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Runs an upgrade step: the line it reports, or `None` when `action` is not one.
pub(super) async fn run(
    action: &Action,
    context: &Context,
) -> Option<Result<Option<String>, ApplyError>> {
    let upgrade_step = matches!(
        action,
        Action::HoldReboots { .. }
            | Action::ReleaseReboots { .. }
            | Action::Uncordon { .. }
            | Action::UpgradeNode { .. }
    );
    if !upgrade_step {
        return None;
    }
    let Some(kube) = context.kube.as_ref() else {
        return Some(Err(ApplyError::Missing(
            "cannot upgrade: the cluster's API does not answer; nothing was upgraded; run `flatstack up` again once it does".into(),
        )));
    };
    Some(match action {
        Action::HoldReboots { servers, to } => hold(kube, context, servers, *to).await,
        Action::ReleaseReboots { servers } => release(kube, context, servers).await,
        Action::Uncordon { node } => match kube.uncordon_after_upgrade(node).await {
            Ok(()) => Ok(Some(format!(
                "uncordoned {node}, which an upgrade that stopped left cordoned"
            ))),
            // Gone meanwhile: nothing left to uncordon.
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        },
        Action::UpgradeNode {
            node,
            server_id,
            from,
            to,
            kubeadm,
            ..
        } => {
            let turn = Turn {
                node,
                server_id,
                from: *from,
                to: *to,
                kubeadm: *kubeadm,
            };
            upgrade_node(kube, context, &turn).await
        }
        _ => return None,
    })
}

/// kured's lock taken, then the control planes' servers marked as upgrading.
async fn hold(
    kube: &KubeClient,
    context: &Context,
    servers: &[String],
    to: KubernetesVersion,
) -> Result<Option<String>, ApplyError> {
    let held = kube.hold_reboot_lock(REBOOT_LOCK_TIMEOUT).await?;
    let mark = BTreeMap::from([(UPGRADING_METADATA.to_string(), to.to_string())]);
    for server in servers {
        match context.cloud.update_server_metadata(server, &mark).await {
            // Gone meanwhile (a control plane replaced): nothing to mark.
            Err(e) if e.is_not_found() => {}
            other => other?,
        }
    }
    Ok(Some(match held {
        true => "holding kured's reboot lock: no node reboots while nodes are upgraded".into(),
        false => "kured is not installed: no reboot lock to hold".into(),
    }))
}

/// kured's lock released (if flatstack holds it), then the upgrading mark cleared.
async fn release(
    kube: &KubeClient,
    context: &Context,
    servers: &[String],
) -> Result<Option<String>, ApplyError> {
    let held = kube.release_reboot_lock().await?;
    for server in servers {
        context
            .cloud
            .delete_server_metadata(server, UPGRADING_METADATA)
            .await?;
    }
    Ok(Some(match held {
        true => "released kured's reboot lock".into(),
        false => "the upgrade is over: no reboot lock held".into(),
    }))
}

/// One node's turn.
struct Turn<'a> {
    node: &'a str,
    server_id: &'a str,
    from: KubernetesVersion,
    to: KubernetesVersion,
    kubeadm: Kubeadm,
}

async fn upgrade_node(
    kube: &KubeClient,
    context: &Context,
    turn: &Turn<'_>,
) -> Result<Option<String>, ApplyError> {
    let spec = &context.spec;
    if spec.kubernetes.version != turn.to {
        return Err(ApplyError::Missing(format!(
            "the plan upgrades {} to {} but the cluster file names {}",
            turn.node, turn.to, spec.kubernetes.version
        )));
    }
    let node = turn.node;
    // Where the node stands when a part fails, for the error.
    let stopped = |stands: String| {
        let to = turn.to;
        move |source: KubeError| ApplyError::Upgrade {
            node: node.to_string(),
            to,
            stands,
            source: Box::new(source),
        }
    };
    let (stage_name, activate_name) = action_names(turn.to);
    let stage = HostAction::new(
        &stage_name,
        node,
        &stage_script(spec, turn.kubeadm, &HostPaths::NODE),
    )
    .map_err(ApplyError::Missing)?;
    let staged_stands = match turn.kubeadm {
        Kubeadm::Apply => format!(
            "not drained, its kubelet at {}; `kubeadm upgrade apply` may have moved the control-plane components already (the next `up` continues from what kubeadm-config says)",
            turn.from
        ),
        Kubeadm::Node => format!("not drained, its kubelet at {}", turn.from),
    };
    let staged = state_of(kube, &stage)
        .await
        .map_err(stopped(staged_stands.clone()))?;
    run_afresh(kube, &stage, staged)
        .await
        .map_err(stopped(staged_stands))?;
    let cordoned = format!("cordoned, its kubelet at {}", turn.from);
    // `upgrade apply` on the only control plane restarted the only API server.
    kube.wait_ready(context.node_ready_within)
        .await
        .map_err(stopped(format!(
            "not drained, its kubelet at {}",
            turn.from
        )))?;
    let activate = HostAction::new(
        &activate_name,
        node,
        &activate_script(spec, &HostPaths::NODE),
    )
    .map_err(ApplyError::Missing)?;
    // A turn stopped after the activation (before the record) is not drained again.
    let activation = state_of(kube, &activate).await.map_err(stopped(
        "where it was left (its activation's record could not be read)".to_string(),
    ))?;
    let mut evicted = 0;
    if !matches!(activation, HostActionState::Finished { exit: 0, .. }) {
        kube.cordon_for_upgrade(node, turn.to)
            .await
            .map_err(stopped(format!("its kubelet at {}", turn.from)))?;
        evicted =
            crate::kube::drain_node(kube, node, UPGRADE_DRAIN_TIMEOUT, AfterDrain::KeepCordoned)
                .await
                .map_err(stopped(cordoned.clone()))?
                .evicted;
        run_afresh(kube, &activate, activation).await.map_err(stopped(format!(
            "{cordoned} (a failed activation puts the old image back and starts the kubelet again)"
        )))?;
    }
    kube.wait_node_at(node, turn.to, context.node_ready_within)
        .await
        .map_err(stopped("cordoned, its new image active".to_string()))?;
    kube.uncordon_after_upgrade(node).await?;
    let metadata = BTreeMap::from([
        (KUBERNETES_METADATA.to_string(), turn.to.to_string()),
        (
            SYSEXT_DIGEST_METADATA.to_string(),
            spec.kubernetes.sysext_sha256.clone().unwrap_or_default(),
        ),
    ]);
    context
        .cloud
        .update_server_metadata(turn.server_id, &metadata)
        .await?;
    Ok(Some(format!(
        "upgraded {node} from {} to {} ({}); {} pod(s) evicted and free to come back",
        turn.from,
        turn.to,
        turn.kubeadm.command(turn.to),
        evicted
    )))
}

/// What `action`'s node says of it.
async fn state_of(kube: &KubeClient, action: &HostAction) -> Result<HostActionState, KubeError> {
    kube.host_action_state(&action.node, &action.name, Duration::from_secs(120))
        .await
}

/// Runs `action` on its node unless it finished there (`state`, as just read); one that
/// failed in an earlier run is forgotten and run again (its script does only what is left).
async fn run_afresh(
    kube: &KubeClient,
    action: &HostAction,
    state: HostActionState,
) -> Result<(), KubeError> {
    match state {
        HostActionState::Finished { exit: 0, .. } => return Ok(()),
        HostActionState::Finished { .. } => {
            kube.forget_host_action(&action.node, &action.name, Duration::from_secs(120))
                .await?
        }
        _ => {}
    }
    kube.run_host_action(action, HOST_ACTION_TIMEOUT).await
}
