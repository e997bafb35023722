//! Volume snapshots on Cinder: the CSI snapshot controller with the external-snapshotter CRDs
//! (the piraeus `snapshot-controller` chart, pinned; Cinder CSI's chart brings only the
//! sidecar that talks to Cinder), and the cluster's default `VolumeSnapshotClass` for
//! `cinder.csi.openstack.org`, applied as an object of its own once the CRDs are served.

use serde_json::json;

use crate::kube::{CustomResource, Manifest};

/// The default class's name.
pub(crate) const CLASS: &str = "cinder-snapshots";
/// Cinder CSI's driver name.
const DRIVER: &str = "cinder.csi.openstack.org";

/// The chart's values: its CRDs installed with it, no conversion webhook (only clusters that
/// still hold group snapshots of the beta API versions need it), and no classes of the chart's
/// own (flatstack's is applied apart, once the CRDs it needs are served).
pub(crate) fn controller_values() -> serde_json::Value {
    json!({
        "installCRDs": true,
        "webhook": { "enabled": false },
        "volumeSnapshotClasses": [],
        "volumeGroupSnapshotClasses": [],
    })
}

/// The default `VolumeSnapshotClass`: Cinder snapshots (`type: snapshot`, on the volume's own
/// backend), of volumes in use too (`force-create`: a pod's volume is always attached), deleted
/// with their `VolumeSnapshot`.
pub(crate) fn default_class() -> Manifest {
    CustomResource {
        api_version: "snapshot.storage.k8s.io/v1",
        kind: "VolumeSnapshotClass",
        plural: "volumesnapshotclasses",
        namespace: None,
        name: CLASS,
    }
    .with(
        json!({ "snapshot.storage.kubernetes.io/is-default-class": "true" }),
        json!({
            "driver": DRIVER,
            "deletionPolicy": "Delete",
            "parameters": { "force-create": "true", "type": "snapshot" },
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_class_snapshots_volumes_in_use_with_cinder() {
        let class = default_class();
        assert_eq!(
            class.object_path(),
            "/apis/snapshot.storage.k8s.io/v1/volumesnapshotclasses/cinder-snapshots"
        );
        let body = class.body();
        assert_eq!(body["driver"], DRIVER);
        assert_eq!(body["parameters"]["force-create"], "true");
        assert_eq!(
            body["metadata"]["annotations"]["snapshot.storage.kubernetes.io/is-default-class"],
            "true"
        );
        assert!(body.get("spec").is_none(), "the kind has no spec");
    }
}
