//! What the cluster's Kubernetes API says, as planning input: which nodes are registered
//! (Ready, marked as control planes by kubeadm) and etcd's members as a control plane lists
//! them. `up` and `plan` read it (`apply::up`) before planning; here it is data, and the
//! questions the planner asks of it.

use std::collections::BTreeMap;

use crate::kube::etcd::EtcdMember;
use crate::pins::KubernetesVersion;

/// The cluster as its API showed it when the plan was made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KubeView {
    /// Registered Nodes, by name.
    pub(crate) nodes: BTreeMap<String, Registered>,
    pub(crate) etcd: Membership,
    /// `kubernetesVersion` in `kube-system/kubeadm-config`: the release `kubeadm upgrade
    /// apply` last uploaded (`upload-config` runs after its control-plane phase).
    pub(crate) kubeadm: Option<KubernetesVersion>,
    /// kured's reboot lock is held by flatstack (an upgrade that has not finished).
    pub(crate) reboot_lock_held: bool,
}

/// One registered Node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Registered {
    pub(crate) ready: bool,
    /// Carries `node-role.kubernetes.io/control-plane`, which kubeadm's `mark-control-plane`
    /// sets only after its `etcd` phase added the node's member (`kubeadm join` runs the
    /// `control-plane-join` subphases in that order).
    pub(crate) control_plane: bool,
    /// `status.nodeInfo.kubeletVersion`: the running kubelet's release, which it reports at
    /// its first status sync after a restart.
    pub(crate) kubelet: Option<KubernetesVersion>,
    /// flatstack cordoned it for an upgrade (its annotation says so) and has not uncordoned
    /// it yet.
    pub(crate) cordoned_for_upgrade: bool,
}

/// etcd's members, when a control plane was asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Membership {
    /// Not asked: one control plane, or none Ready to ask.
    #[default]
    NotAsked,
    /// As a control plane's member listed them (a linearizable read).
    Listed(Vec<EtcdMember>),
    /// The list failed: why (etcd without quorum fails every linearizable read).
    Unread { via: String, why: String },
}

impl KubeView {
    pub(crate) fn is_registered(&self, node: &str) -> bool {
        self.nodes.contains_key(node)
    }

    /// The members, when they were listed.
    pub(crate) fn members(&self) -> Option<&[EtcdMember]> {
        match &self.etcd {
            Membership::Listed(members) => Some(members),
            _ => None,
        }
    }

    /// The member of control plane `name` at `address`, when the members were listed.
    pub(crate) fn member_of(&self, name: &str, address: Option<&str>) -> Option<&EtcdMember> {
        self.members()?.iter().find(|m| m.is_of(name, address))
    }

    /// Control plane `name` at `address` was marked by kubeadm (so it joined etcd) and etcd
    /// lists no member of it: its member was removed, and its etcd cannot start again.
    pub(crate) fn lost_its_member(&self, name: &str, address: Option<&str>) -> bool {
        self.nodes.get(name).is_some_and(|n| n.control_plane)
            && self.members().is_some_and(|members| !members.is_empty())
            && self.member_of(name, address).is_none()
    }
}

/// Members of none of `control_planes` (name and port address): left behind by a control
/// plane removed outside flatstack. Kept: a member of a control plane still wanted, even one
/// that has not started yet (kubeadm adds it before its etcd runs, nameless until then).
pub(crate) fn stray_members<'m>(
    members: &'m [EtcdMember],
    control_planes: &[(&str, Option<&str>)],
) -> Vec<&'m EtcdMember> {
    members
        .iter()
        .filter(|m| {
            !control_planes
                .iter()
                .any(|(name, address)| m.is_of(name, *address))
        })
        .collect()
}

/// How many of `voting` members make a quorum (learners neither vote nor count).
pub(crate) fn quorum_of(voting: usize) -> usize {
    voting / 2 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, name: &str, address: &str) -> EtcdMember {
        EtcdMember {
            id,
            name: name.into(),
            peer_urls: vec![format!("https://{address}:2380")],
            is_learner: false,
        }
    }

    fn view(members: Vec<EtcdMember>, nodes: &[(&str, bool)]) -> KubeView {
        KubeView {
            nodes: nodes
                .iter()
                .map(|(n, cp)| {
                    (
                        n.to_string(),
                        Registered {
                            ready: true,
                            control_plane: *cp,
                            kubelet: None,
                            cordoned_for_upgrade: false,
                        },
                    )
                })
                .collect(),
            etcd: Membership::Listed(members),
            kubeadm: None,
            reboot_lock_held: false,
        }
    }

    #[test]
    fn a_member_not_started_yet_belongs_to_its_control_plane_by_address() {
        let members = vec![
            member(1, "cp-1", "10.0.0.11"),
            member(2, "", "10.0.0.12"),
            member(3, "old-cp-9", "10.0.0.99"),
        ];
        let strays = stray_members(
            &members,
            &[("cp-1", Some("10.0.0.11")), ("cp-2", Some("10.0.0.12"))],
        );
        assert_eq!(strays.iter().map(|m| m.id).collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn only_a_marked_control_plane_without_a_member_lost_it() {
        let seen = view(
            vec![member(1, "cp-1", "10.0.0.11")],
            &[("cp-1", true), ("cp-2", true), ("cp-3", false)],
        );
        assert!(!seen.lost_its_member("cp-1", Some("10.0.0.11")));
        assert!(seen.lost_its_member("cp-2", Some("10.0.0.12")));
        // Registered, not marked yet: kubeadm may be adding its member right now.
        assert!(!seen.lost_its_member("cp-3", Some("10.0.0.13")));
        // Not registered at all.
        assert!(!seen.lost_its_member("cp-4", None));
        let unread = KubeView {
            etcd: Membership::Unread {
                via: "cp-1".into(),
                why: "context deadline exceeded".into(),
            },
            ..seen.clone()
        };
        assert!(!unread.lost_its_member("cp-2", Some("10.0.0.12")));
    }

    #[test]
    fn quorum_is_a_majority_of_voting_members() {
        assert_eq!(
            [1, 2, 3, 4, 5].map(quorum_of),
            [1, 2, 2, 3, 3],
            "etcd's majority: n/2 + 1"
        );
    }
}
