//! The pod and service ranges a cluster was made with, recorded in its state directory
//! (`ranges.json`): they live in kubeadm's configuration on the nodes, where the cloud cannot
//! show them, and cannot change in place.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::pki::{PkiError, StateDir};

use crate::spec::ClusterSpec;

const FILE: &str = "ranges.json";

/// A record that cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the cluster's recorded ranges in {}: {why}\n  hint: restore the state directory from a backup, or delete the file to take the cluster file's ranges as the cluster's", path.display())]
pub(crate) struct RecordError {
    pub(crate) path: std::path::PathBuf,
    pub(crate) why: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ranges {
    pub(crate) pod_cidr: Ipv4Net,
    pub(crate) service_cidr: Ipv4Net,
}

/// The file's form.
#[derive(Serialize, Deserialize)]
struct Record {
    pod_cidr: String,
    service_cidr: String,
}

impl Ranges {
    pub(crate) fn of(spec: &ClusterSpec) -> Ranges {
        Ranges {
            pod_cidr: spec.network.pod_cidr,
            service_cidr: spec.network.service_cidr,
        }
    }
}

/// The recorded ranges, if any. A record that cannot be read is an error naming the file.
pub(crate) fn recorded(state: Option<&StateDir>) -> Result<Option<Ranges>, RecordError> {
    let Some(state) = state else {
        return Ok(None);
    };
    let path = state.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(RecordError {
                path,
                why: e.to_string(),
            });
        }
    };
    let damaged = |why: String| RecordError {
        path: path.clone(),
        why: format!("not the ranges flatstack records ({why})"),
    };
    let record: Record = serde_json::from_str(&text).map_err(|e| damaged(e.to_string()))?;
    Ok(Some(Ranges {
        pod_cidr: record
            .pod_cidr
            .parse()
            .map_err(|_| damaged(record.pod_cidr.clone()))?,
        service_cidr: record
            .service_cidr
            .parse()
            .map_err(|_| damaged(record.service_cidr.clone()))?,
    }))
}

/// Records the file's ranges (the first `up` of a cluster, or one made before the record).
pub(crate) fn record(state: &StateDir, spec: &ClusterSpec) -> Result<(), PkiError> {
    let record = Record {
        pod_cidr: spec.network.pod_cidr.to_string(),
        service_cidr: spec.network.service_cidr.to_string(),
    };
    let mut text = serde_json::to_string_pretty(&record).unwrap_or_default();
    text.push('\n');
    state.write(FILE, text.as_bytes(), 0o600).map(|_| ())
}

/// What differs between the recorded ranges and the file's, one sentence each.
pub(crate) fn changes(recorded: Option<Ranges>, spec: &ClusterSpec) -> Vec<String> {
    let Some(recorded) = recorded else {
        return Vec::new();
    };
    let wanted = Ranges::of(spec);
    let mut changes = Vec::new();
    if recorded.pod_cidr != wanted.pod_cidr {
        changes.push(format!(
            "`network.pod_cidr` is {}, but the cluster's pods are on {}",
            wanted.pod_cidr, recorded.pod_cidr
        ));
    }
    if recorded.service_cidr != wanted.service_cidr {
        changes.push(format!(
            "`network.service_cidr` is {}, but the cluster's services are on {}",
            wanted.service_cidr, recorded.service_cidr
        ));
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::test_spec;

    #[test]
    fn changed_ranges_are_named_and_unrecorded_ones_pass() {
        let spec = test_spec("");
        assert!(changes(None, &spec).is_empty());
        assert!(changes(Some(Ranges::of(&spec)), &spec).is_empty());
        let moved = test_spec("[network]\npod_cidr = \"10.200.0.0/16\"\n");
        assert_eq!(
            changes(Some(Ranges::of(&spec)), &moved),
            [format!(
                "`network.pod_cidr` is 10.200.0.0/16, but the cluster's pods are on {}",
                spec.network.pod_cidr
            )]
        );
    }
}
