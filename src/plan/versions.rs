//! Which Kubernetes release each node runs, and what moving the cluster to the file's release
//! takes. A node's release is what its server records (`flatstack-kubernetes` with the sysext
//! digest beside it, set when the server is made and after each upgrade of it), unless the API
//! answered with a kubelet of another minor (a run stopped after the new image was activated
//! and before the record): then the kubelet's. Patch releases systemd-sysupdate brings a kubelet
//! are drift within the minor and change nothing here.
//!
//! The oldest control plane's release is the cluster's: new nodes boot it until every control
//! plane runs the file's. An upgrade goes one minor at a time, never down, and only from nodes
//! that keep Kubernetes' version-skew policy (API servers within one minor; no kubelet newer
//! than any API server, none more than three minors older). Its order is kubeadm's: control
//! planes one at a time, the first running `kubeadm upgrade apply` (unless it already did, as
//! `kubeadm-config` shows), then the workers.

use super::kube_view::KubeView;
use super::resources::{KUBERNETES_METADATA, Observed};
use crate::pins::KubernetesVersion as Release;

/// Server metadata: the SHA-256 of the Kubernetes sysext image the node runs.
pub(crate) const SYSEXT_DIGEST_METADATA: &str = "flatstack-sysext-sha256";
/// Server metadata on the control planes while an upgrade runs (from kured's lock taken to
/// its release): the release moved to. A later run that finds it asks the API what is left.
pub(crate) const UPGRADING_METADATA: &str = "flatstack-upgrading";

/// How many minors a kubelet may be older than the API servers (version-skew policy, since
/// Kubernetes 1.28 for kubelets of 1.25 and later).
pub(crate) const KUBELET_MINORS_BEHIND: u32 = 3;

/// One running node's release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeRelease {
    pub(crate) name: String,
    pub(crate) server_id: String,
    pub(crate) control_plane: bool,
    pub(crate) release: Release,
    /// What its server records, when it does: the node's upgrade is done once it records the
    /// file's release (the last thing an upgrade step does).
    pub(crate) recorded: Option<Release>,
    /// The sysext digest its server records, when it does.
    pub(crate) sha256: Option<String>,
    /// What its kubelet reports, when the API answered.
    pub(crate) kubelet: Option<Release>,
}

/// The releases the cluster's nodes run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Running {
    /// Nodes whose release is known, control planes first, then by name.
    pub(crate) nodes: Vec<NodeRelease>,
    /// `kubernetesVersion` of `kube-system/kubeadm-config`, when the API answered: what
    /// `kubeadm upgrade apply` last uploaded, and what `kubeadm upgrade node` moves a node to.
    pub(crate) kubeadm: Option<Release>,
    /// A control plane's server carries [`UPGRADING_METADATA`]: an upgrade was started and
    /// has not released kured's lock.
    pub(crate) upgrading: bool,
    /// The control planes' servers (that did not fail to build), which carry that mark.
    pub(crate) control_plane_servers: Vec<String>,
}

impl Running {
    /// The releases of the servers that did not fail to build, as they record them, or as the
    /// API's kubelets show them when those run another minor.
    pub(crate) fn of(observed: &Observed, view: Option<&KubeView>) -> Running {
        let mut nodes: Vec<NodeRelease> = observed
            .servers
            .iter()
            .filter(|s| !s.failed_build())
            .filter_map(|server| {
                let recorded = server
                    .metadata
                    .get(KUBERNETES_METADATA)
                    .and_then(|v| Release::parse(v));
                let kubelet = view
                    .and_then(|v| v.nodes.get(&server.name))
                    .and_then(|n| n.kubelet);
                let release = match (recorded, kubelet) {
                    (Some(r), Some(k)) if r.minor != k.minor => k,
                    (Some(r), _) => r,
                    (None, k) => k?,
                };
                Some(NodeRelease {
                    name: server.name.clone(),
                    server_id: server.id.clone(),
                    control_plane: server.has_role("control-plane"),
                    release,
                    recorded,
                    sha256: server.metadata.get(SYSEXT_DIGEST_METADATA).cloned(),
                    kubelet,
                })
            })
            .collect();
        nodes.sort_by(|a, b| (!a.control_plane, &a.name).cmp(&(!b.control_plane, &b.name)));
        let control_planes = observed
            .servers
            .iter()
            .filter(|s| !s.failed_build() && s.has_role("control-plane"));
        Running {
            nodes,
            kubeadm: view.and_then(|v| v.kubeadm),
            upgrading: control_planes
                .clone()
                .any(|s| s.metadata.contains_key(UPGRADING_METADATA)),
            control_plane_servers: control_planes.map(|s| s.id.clone()).collect(),
        }
    }

    pub(crate) fn control_planes(&self) -> impl Iterator<Item = &NodeRelease> {
        self.nodes.iter().filter(|n| n.control_plane)
    }

    /// The oldest control plane's release: what every API server runs at least.
    pub(crate) fn api_release(&self) -> Option<Release> {
        self.control_planes().map(|n| n.release).min()
    }

    /// Whether the control planes are between their release and `to`: one runs `to` while
    /// another does not, or `kubeadm upgrade apply` uploaded `to` (its control-plane
    /// components moved) while a control plane's kubelet has not.
    pub(crate) fn half_done(&self, to: Release) -> bool {
        let behind = self.control_planes().any(|n| n.release != to);
        behind && (self.control_planes().any(|n| n.release == to) || self.kubeadm == Some(to))
    }

    /// The node whose server records `sha256` for a release other than `release`.
    pub(crate) fn digest_of_another(&self, sha256: &str, release: Release) -> Option<&NodeRelease> {
        self.nodes
            .iter()
            .find(|n| n.sha256.as_deref() == Some(sha256) && n.release != release)
    }

    /// Names of the nodes at `release`, for messages.
    fn at(&self, pick: impl Fn(&NodeRelease) -> bool) -> String {
        let names: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| pick(n))
            .map(|n| n.name.as_str())
            .collect();
        names.join(", ")
    }
}

/// The release pools that upgrade by replacement must run (see `roster::ServerFacts`): the
/// file's, once every control plane's server records it or newer.
pub(crate) fn replace_below(
    servers: &[crate::cloud::compute::Server],
    wanted: Release,
) -> Option<Release> {
    servers
        .iter()
        .filter(|s| s.has_role("control-plane") && !s.failed_build())
        .filter_map(|s| s.metadata.get(KUBERNETES_METADATA))
        .filter_map(|v| Release::parse(v))
        .min()
        .filter(|api| *api >= wanted)
        .map(|_| wanted)
}

/// Why the file's release cannot be reached from what runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error(
        "`kubernetes.version` is {wanted} but the control planes run {running} ({nodes}); kubeadm moves a cluster one minor at a time and so does flatstack; nothing was planned\n  hint: set `version` to a release of 1.{next} under [kubernetes], run `flatstack up`, then move on"
    )]
    SkipsMinor {
        wanted: Release,
        running: Release,
        next: u32,
        nodes: String,
    },
    #[error(
        "`kubernetes.version` is {wanted} but {nodes} already run {running}; flatstack never moves a cluster down (etcd and the API's stored objects are not made to go back); nothing was planned\n  hint: set `version = \"{plain}\"` under [kubernetes] or newer; to go back, restore a backup into a new cluster"
    )]
    GoesDown {
        wanted: Release,
        running: Release,
        plain: String,
        nodes: String,
    },
    #[error(
        "the cluster's nodes already break Kubernetes' version-skew policy: {why}; flatstack changes no release from there; nothing was planned\n  hint: `flatstack status` shows each node's release; set `version` under [kubernetes] to what the control planes run and replace the odd nodes (`flatstack up` after deleting their servers)"
    )]
    SkewBroken { why: String },
    #[error(
        "`kubernetes.sysext_sha256` is the digest {node} records for Kubernetes {recorded}, not an image of {wanted}; every release has its own image; nothing was planned\n  hint: give the SHA-256 of kubernetes-{wanted}-x86-64.raw, or leave `sysext_sha256` out to read it from the publisher"
    )]
    DigestOfAnotherRelease {
        wanted: Release,
        recorded: Release,
        node: String,
    },
    #[error(
        "an upgrade to {wanted} is half done (control planes {done} run it, {rest} do not) and control plane {repair} needs rebuilding; a control plane made now could join at neither release safely; nothing was planned\n  hint: run `flatstack up` with the control plane's server back, or finish the upgrade first"
    )]
    RepairMidUpgrade {
        wanted: Release,
        done: String,
        rest: String,
        repair: String,
    },
    #[error(
        "new nodes must boot Kubernetes {release}, which the control planes still run, but {why}; nothing was planned\n  hint: finish the upgrade with `flatstack up` before adding nodes, or set `version` back to {release}"
    )]
    BootUnknown { release: Release, why: String },
}

/// What `kubeadm` runs on a node being upgraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kubeadm {
    /// `kubeadm upgrade apply vX.Y.Z`: the first control plane; it uploads the new release to
    /// `kubeadm-config`.
    Apply,
    /// `kubeadm upgrade node`: every other node, to what `kubeadm-config` holds.
    Node,
}

impl Kubeadm {
    /// The command line, as people read it.
    pub(crate) fn command(self, to: Release) -> String {
        match self {
            Kubeadm::Apply => format!("kubeadm upgrade apply {to}"),
            Kubeadm::Node => "kubeadm upgrade node".to_string(),
        }
    }
}

/// One node's turn in an upgrade.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct NodeUpgrade {
    pub(crate) node: String,
    #[serde(skip)]
    pub(crate) server_id: String,
    pub(crate) control_plane: bool,
    pub(crate) from: Release,
    pub(crate) kubeadm: Kubeadm,
}

/// Moving the cluster from `from` (its oldest control plane's release) to `to`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Upgrade {
    pub(crate) from: Release,
    pub(crate) to: Release,
    /// Nodes not yet at `to`, in kubeadm's order.
    pub(crate) order: Vec<NodeUpgrade>,
    /// Why this run does not upgrade, when it does not (a control plane built in it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) waits: Option<String>,
    /// Nodes of pools that upgrade by replacement, not yet at `to`: replaced once the control
    /// planes run it (`up` plans a second round for them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) replaced: Vec<String>,
}

/// The upgrade from what runs to `wanted` (`None` when every node runs it, or no node records
/// a release), or why it is refused. `leaving` are nodes this plan deletes: not upgraded.
pub(crate) fn upgrade(
    running: &Running,
    wanted: Release,
    wanted_sha256: Option<&str>,
    leaving: &[&str],
) -> Result<Option<Upgrade>, ReleaseError> {
    let Some(api) = running.api_release() else {
        return Ok(None);
    };
    // `kubeadm upgrade apply` moved the control-plane components past the file: going back
    // is going down, whatever the nodes record.
    if let Some(kubeadm) = running.kubeadm
        && kubeadm > wanted
    {
        return Err(ReleaseError::GoesDown {
            wanted,
            running: kubeadm,
            plain: plain(kubeadm),
            nodes: "the control-plane components (kube-system/kubeadm-config)".into(),
        });
    }
    let stays = |n: &&NodeRelease| !leaving.contains(&n.name.as_str());
    let behind: Vec<&NodeRelease> = running
        .nodes
        .iter()
        .filter(stays)
        .filter(|n| n.recorded.unwrap_or(n.release) != wanted)
        .collect();
    if behind.is_empty() {
        return Ok(None);
    }
    check_skew(running)?;
    // A kubelet a patch ahead of its record (systemd-sysupdate brought it) counts: activating
    // the file's image would step it down.
    let newest_of = |n: &NodeRelease| n.kubelet.map_or(n.release, |k| k.max(n.release));
    if let Some(newest) = running.nodes.iter().map(newest_of).max()
        && newest > wanted
    {
        return Err(ReleaseError::GoesDown {
            wanted,
            running: newest,
            plain: plain(newest),
            nodes: running.at(|n| newest_of(n) == newest),
        });
    }
    if wanted.minor > api.minor + 1 {
        return Err(ReleaseError::SkipsMinor {
            wanted,
            running: api,
            next: api.minor + 1,
            nodes: running.at(|n| n.control_plane && n.release == api),
        });
    }
    // Every kubelet stays within three minors of the API servers while they move.
    let too_old: Vec<String> = running
        .nodes
        .iter()
        .filter(|n| n.release.minor + KUBELET_MINORS_BEHIND < wanted.minor)
        .map(|n| format!("{} runs kubelet {}", n.name, n.release))
        .collect();
    if !too_old.is_empty() {
        return Err(ReleaseError::SkewBroken {
            why: format!(
                "{}, more than {KUBELET_MINORS_BEHIND} minors behind API servers at {wanted}",
                too_old.join("; ")
            ),
        });
    }
    if let Some(node) = wanted_sha256.and_then(|sha| running.digest_of_another(sha, wanted)) {
        return Err(ReleaseError::DigestOfAnotherRelease {
            wanted,
            recorded: node.release,
            node: node.name.clone(),
        });
    }
    // `upgrade apply` until kubeadm-config holds the release (then `upgrade node`); unread,
    // until a control plane runs it.
    let applied = match running.kubeadm {
        Some(kubeadm) => kubeadm == wanted,
        None => running.control_planes().any(|n| n.release == wanted),
    };
    let mut order: Vec<NodeUpgrade> = Vec::new();
    for node in behind {
        let first = node.control_plane && !applied && order.is_empty();
        order.push(NodeUpgrade {
            node: node.name.clone(),
            server_id: node.server_id.clone(),
            control_plane: node.control_plane,
            from: node.release,
            kubeadm: if first { Kubeadm::Apply } else { Kubeadm::Node },
        });
    }
    Ok(Some(Upgrade {
        from: api,
        to: wanted,
        order,
        waits: None,
        replaced: Vec::new(),
    }))
}

fn plain(release: Release) -> String {
    format!("{}.{}.{}", release.major, release.minor, release.patch)
}

/// Refuses nodes that already break the version-skew policy.
fn check_skew(running: &Running) -> Result<(), ReleaseError> {
    let (Some(oldest_api), Some(newest_api)) = (
        running.api_release(),
        running.control_planes().map(|n| n.release).max(),
    ) else {
        return Ok(());
    };
    if newest_api.minor > oldest_api.minor + 1 {
        return Err(ReleaseError::SkewBroken {
            why: format!(
                "API servers run {oldest_api} and {newest_api}, more than one minor apart"
            ),
        });
    }
    let mut problems: Vec<String> = Vec::new();
    for node in running.nodes.iter().filter(|n| !n.control_plane) {
        if node.release.minor > oldest_api.minor {
            problems.push(format!(
                "{} runs kubelet {}, newer than the API server at {oldest_api}",
                node.name, node.release
            ));
        } else if node.release.minor + KUBELET_MINORS_BEHIND < newest_api.minor {
            problems.push(format!(
                "{} runs kubelet {}, more than {KUBELET_MINORS_BEHIND} minors behind the API server at {newest_api}",
                node.name, node.release
            ));
        }
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(ReleaseError::SkewBroken {
            why: problems.join("; "),
        }),
    }
}

/// What a new node boots while the control planes run `release`: the image of that release
/// beside the file's (the file's URL with the release's file name), and the digest a control
/// plane at that release records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Boot {
    pub(crate) release: Release,
    pub(crate) url: String,
    pub(crate) sha256: String,
}

impl Boot {
    /// `spec` with this release's image as the one nodes boot.
    pub(crate) fn applied_to(&self, spec: &crate::spec::ClusterSpec) -> crate::spec::ClusterSpec {
        let mut spec = spec.clone();
        spec.kubernetes.version = self.release;
        spec.kubernetes.sysext_url = self.url.clone();
        spec.kubernetes.sysext_sha256 = Some(self.sha256.clone());
        spec
    }
}

/// The release new nodes boot: the file's, unless a control plane still runs an older one
/// (then that one, so no kubelet is ever newer than an API server).
pub(crate) fn boot(
    running: &Running,
    wanted: Release,
    wanted_url: &str,
) -> Result<Option<Boot>, ReleaseError> {
    let Some(api) = running.api_release() else {
        return Ok(None);
    };
    if api >= wanted {
        return Ok(None);
    }
    let file = wanted.sysext_file_name();
    let url = match wanted_url.strip_suffix(&file) {
        Some(base) => format!("{base}{}", api.sysext_file_name()),
        None => {
            return Err(ReleaseError::BootUnknown {
                release: api,
                why: format!(
                    "`kubernetes.sysext_url` does not end in {file}, so the image of {api} beside it is unknown"
                ),
            });
        }
    };
    let sha256 = running
        .control_planes()
        .filter(|n| n.release == api)
        .find_map(|n| n.sha256.clone())
        .ok_or_else(|| ReleaseError::BootUnknown {
            release: api,
            why: format!("no control plane at {api} records its image's digest"),
        })?;
    Ok(Some(Boot {
        release: api,
        url,
        sha256,
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn v(text: &str) -> Release {
        Release::parse(text).expect("release")
    }

    fn node(name: &str, release: &str) -> NodeRelease {
        NodeRelease {
            name: name.into(),
            server_id: format!("id-{name}"),
            control_plane: name.contains("control-plane"),
            release: v(release),
            recorded: Some(v(release)),
            sha256: Some(format!("sha-{release}")),
            kubelet: None,
        }
    }

    fn running(nodes: &[(&str, &str)]) -> Running {
        Running {
            nodes: nodes.iter().map(|(n, r)| node(n, r)).collect(),
            ..Running::default()
        }
    }

    fn three_and_two(release: &str) -> Running {
        running(&[
            ("cp-control-plane-1", release),
            ("cp-control-plane-2", release),
            ("cp-control-plane-3", release),
            ("cp-default-1", release),
            ("cp-default-2", release),
        ])
    }

    fn order(upgrade: &Upgrade) -> Vec<(String, Kubeadm)> {
        upgrade
            .order
            .iter()
            .map(|n| (n.node.clone(), n.kubeadm))
            .collect()
    }

    #[test]
    fn a_minor_up_goes_control_planes_first_the_first_applying() {
        let up = upgrade(&three_and_two("1.36.2"), v("1.37.1"), None, &[])
            .expect("allowed")
            .expect("an upgrade");
        assert_eq!((up.from, up.to), (v("1.36.2"), v("1.37.1")));
        assert_eq!(
            order(&up),
            [
                ("cp-control-plane-1".to_string(), Kubeadm::Apply),
                ("cp-control-plane-2".to_string(), Kubeadm::Node),
                ("cp-control-plane-3".to_string(), Kubeadm::Node),
                ("cp-default-1".to_string(), Kubeadm::Node),
                ("cp-default-2".to_string(), Kubeadm::Node),
            ]
        );
    }

    #[test]
    fn a_patch_up_is_an_upgrade_and_the_same_release_is_none() {
        let up = upgrade(&three_and_two("1.37.1"), v("1.37.3"), None, &[])
            .expect("allowed")
            .expect("an upgrade");
        assert_eq!(up.order.len(), 5);
        assert_eq!(up.order[0].kubeadm, Kubeadm::Apply);
        assert_eq!(
            upgrade(&three_and_two("1.37.1"), v("1.37.1"), None, &[]),
            Ok(None)
        );
    }

    #[test]
    fn a_half_done_upgrade_continues_where_it_stopped() {
        let mut half = three_and_two("1.36.2");
        half.nodes[0] = node("cp-control-plane-1", "1.37.1");
        let up = upgrade(&half, v("1.37.1"), None, &[])
            .expect("allowed")
            .expect("an upgrade");
        assert!(half.half_done(up.to));
        assert_eq!(
            order(&up)[0],
            ("cp-control-plane-2".to_string(), Kubeadm::Node)
        );
        assert_eq!(up.order.len(), 4);
        // kubeadm-config, when read, decides whether `apply` ran: here it did not.
        half.kubeadm = Some(v("1.36.2"));
        let up = upgrade(&half, v("1.37.1"), None, &[])
            .expect("allowed")
            .expect("an upgrade");
        assert_eq!(up.order[0].kubeadm, Kubeadm::Apply);
        // Upgraded but not yet recorded (a run stopped after the kubelet moved): its turn is
        // run again, which finds every part done and records it.
        let mut unrecorded = three_and_two("1.36.2");
        unrecorded.nodes[0].release = v("1.37.1");
        unrecorded.kubeadm = Some(v("1.37.1"));
        let up = upgrade(&unrecorded, v("1.37.1"), None, &[])
            .expect("allowed")
            .expect("an upgrade");
        assert_eq!(
            order(&up)[0],
            ("cp-control-plane-1".to_string(), Kubeadm::Node)
        );
        // Leaving nodes are not upgraded.
        let up = upgrade(
            &three_and_two("1.36.2"),
            v("1.37.1"),
            None,
            &["cp-default-2"],
        )
        .expect("allowed")
        .expect("an upgrade");
        assert!(up.order.iter().all(|n| n.node != "cp-default-2"));
    }

    #[test]
    fn skipping_a_minor_going_down_and_another_releases_digest_are_refused() {
        let skip = upgrade(&three_and_two("1.35.6"), v("1.37.1"), None, &[]).expect_err("skip");
        assert!(
            matches!(&skip, ReleaseError::SkipsMinor { next: 36, .. }),
            "{skip}"
        );
        assert!(skip.to_string().contains("one minor at a time"), "{skip}");
        let down = upgrade(&three_and_two("1.37.1"), v("1.36.2"), None, &[]).expect_err("down");
        assert!(matches!(down, ReleaseError::GoesDown { .. }), "{down}");
        let patch_down =
            upgrade(&three_and_two("1.37.3"), v("1.37.1"), None, &[]).expect_err("down");
        assert!(
            patch_down.to_string().contains("already run v1.37.3"),
            "{patch_down}"
        );
        let digest = upgrade(
            &three_and_two("1.36.2"),
            v("1.37.1"),
            Some("sha-1.36.2"),
            &[],
        )
        .expect_err("reused digest");
        assert!(
            digest
                .to_string()
                .contains("the digest cp-control-plane-1 records for Kubernetes v1.36.2"),
            "{digest}"
        );
    }

    #[test]
    fn kubeadm_config_past_the_file_and_a_kubelet_patch_ahead_are_going_down() {
        let mut applied = three_and_two("1.36.2");
        applied.kubeadm = Some(v("1.37.1"));
        let error = upgrade(&applied, v("1.36.2"), None, &[]).expect_err("down");
        assert!(error.to_string().contains("kubeadm-config"), "{error}");
        // Between releases: the control-plane components moved, no kubelet yet.
        let up = upgrade(&applied, v("1.37.1"), None, &[])
            .expect("allowed")
            .expect("an upgrade");
        assert!(applied.half_done(up.to));
        assert_eq!(up.order[0].kubeadm, Kubeadm::Node);
        let mut drifted = three_and_two("1.37.1");
        drifted.nodes[3].kubelet = Some(v("1.37.4"));
        let error = upgrade(&drifted, v("1.37.3"), None, &[]).expect_err("down");
        assert!(
            error
                .to_string()
                .contains("cp-default-1 already run v1.37.4"),
            "{error}"
        );
        // Drift alone, with the file at the recorded release, is no change.
        assert_eq!(upgrade(&drifted, v("1.37.1"), None, &[]), Ok(None));
        assert!(upgrade(&drifted, v("1.37.4"), None, &[]).is_ok());
    }

    #[test]
    fn nodes_that_already_break_the_skew_policy_are_refused() {
        let mut newer_kubelet = three_and_two("1.36.2");
        newer_kubelet.nodes[4] = node("cp-default-2", "1.37.1");
        let error = upgrade(&newer_kubelet, v("1.37.1"), None, &[]).expect_err("skew");
        assert!(
            error.to_string().contains(
                "cp-default-2 runs kubelet v1.37.1, newer than the API server at v1.36.2"
            ),
            "{error}"
        );
        let mut apart = three_and_two("1.37.1");
        apart.nodes[2] = node("cp-control-plane-3", "1.35.6");
        let error = upgrade(&apart, v("1.37.1"), None, &[]).expect_err("skew");
        assert!(
            error.to_string().contains("more than one minor apart"),
            "{error}"
        );
    }

    #[test]
    fn a_kubelet_of_another_minor_than_recorded_is_what_runs() {
        let mut view = KubeView::default();
        view.nodes.insert(
            "demo-default-1".into(),
            super::super::kube_view::Registered {
                ready: true,
                control_plane: false,
                kubelet: Some(v("1.37.1")),
                cordoned_for_upgrade: false,
            },
        );
        let server = |name: &str, role: &str| crate::cloud::compute::Server {
            id: format!("id-{name}"),
            name: name.into(),
            status: "ACTIVE".into(),
            tags: vec![super::super::resources::role_tag(role)],
            metadata: BTreeMap::from([(KUBERNETES_METADATA.to_string(), "v1.36.2".to_string())]),
            fault: None,
            addresses: BTreeMap::new(),
            flavor: serde_json::Value::Null,
            image: serde_json::Value::Null,
            launched_at: Some("2026-12-01T00:00:00".into()),
        };
        let observed = Observed {
            servers: vec![
                server("demo-default-1", "worker"),
                server("demo-control-plane-1", "control-plane"),
            ],
            ..Observed::default()
        };
        let running = Running::of(&observed, Some(&view));
        assert_eq!(running.nodes[0].name, "demo-control-plane-1");
        assert_eq!(running.nodes[1].release, v("1.37.1"));
        // A patch the timer brought is drift: the record stands.
        view.nodes.get_mut("demo-default-1").expect("node").kubelet = Some(v("1.36.5"));
        let running = Running::of(&observed, Some(&view));
        assert_eq!(running.nodes[1].release, v("1.36.2"));
    }

    #[test]
    fn new_nodes_boot_what_the_control_planes_run_until_they_all_run_the_files() {
        let url = "https://mirror.example/ext/kubernetes-v1.37.1-x86-64.raw";
        let mut half = three_and_two("1.36.2");
        half.nodes[0] = node("cp-control-plane-1", "1.37.1");
        let boot = boot(&half, v("1.37.1"), url).expect("known").expect("old");
        assert_eq!(boot.release, v("1.36.2"));
        assert_eq!(
            boot.url,
            "https://mirror.example/ext/kubernetes-v1.36.2-x86-64.raw"
        );
        assert_eq!(boot.sha256, "sha-1.36.2");
        assert_eq!(
            super::boot(&three_and_two("1.37.1"), v("1.37.1"), url),
            Ok(None)
        );
        let odd =
            super::boot(&half, v("1.37.1"), "https://mirror.example/k8s.raw").expect_err("unknown");
        assert!(odd.to_string().contains("does not end in"), "{odd}");
    }
}
