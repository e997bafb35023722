//! When kubeadm's certificates on a control plane expire, as `kubeadm certs check-expiration
//! -o json` on that node says (kubeadm's `output.kubeadm.k8s.io/v1alpha3`
//! `CertificateExpirationInfo`: each certificate's `name`, `expirationDate` in RFC 3339,
//! `missing`). kubeadm's leaf certificates last a year; an upgrade renews those of each
//! component it replaces. The command runs from the node's own kubeadm through a host-profile
//! node Job (it reads `/etc/kubernetes`, and prints dates only, never a key).

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;

use super::node_job::{NodeJob, Profile};
use super::{KubeClient, KubeError};
use crate::pins::HOST_ACTION_IMAGE;

/// The command the Job's shell runs.
pub const CHECK_EXPIRATION: &str = "chroot /host /usr/bin/kubeadm certs check-expiration -o json";

/// One certificate kubeadm manages on a control plane.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertificateExpiry {
    pub node: String,
    pub name: String,
    /// RFC 3339, UTC.
    pub expires: String,
    /// Whole days left (negative once expired).
    pub days_left: i64,
}

#[derive(Deserialize)]
struct Info {
    #[serde(default)]
    certificates: Vec<Entry>,
    #[serde(default, rename = "certificateAuthorities")]
    certificate_authorities: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    name: String,
    #[serde(rename = "expirationDate", default)]
    expiration_date: Option<String>,
    #[serde(default)]
    missing: bool,
}

/// The certificates (and CAs) in kubeadm's JSON, which follows whatever it printed before it
/// (`[check-expiration] Reading configuration ...`), as of `now`; missing ones are left out.
pub fn parse_check_expiration(
    node: &str,
    output: &str,
    now: Timestamp,
) -> Result<Vec<CertificateExpiry>, String> {
    let json = output
        .find('{')
        .map(|at| &output[at..])
        .ok_or_else(|| format!("kubeadm printed no JSON: {}", output.trim()))?;
    let info: Info = serde_json::from_str(json)
        .map_err(|e| format!("cannot read kubeadm's certificate expiry: {e}"))?;
    info.certificates
        .into_iter()
        .chain(info.certificate_authorities)
        .filter(|e| !e.missing)
        .filter_map(|e| Some((e.expiration_date?, e.name)))
        .map(|(date, name)| {
            let expires: Timestamp = date
                .parse()
                .map_err(|e| format!("certificate {name} expires on `{date}`, not a time: {e}"))?;
            Ok(CertificateExpiry {
                node: node.to_string(),
                name,
                expires: expires.to_string(),
                days_left: expires.duration_since(now).as_secs().div_euclid(86_400),
            })
        })
        .collect()
}

impl KubeClient {
    /// kubeadm's certificates on control plane `node`, with when each expires.
    pub(crate) async fn certificate_expiries(
        &self,
        node: &str,
        within: Duration,
    ) -> Result<Vec<CertificateExpiry>, KubeError> {
        let job = NodeJob {
            name: "flatstack-certificates".into(),
            node: node.to_string(),
            image: HOST_ACTION_IMAGE.to_string(),
            command: vec!["sh".into(), "-c".into(), CHECK_EXPIRATION.into()],
            profile: Profile::Host { env: Vec::new() },
        };
        let output = self.run_node_job(&job, within).await?;
        parse_check_expiration(node, &output, super::now()).map_err(|log| KubeError::NodeJob {
            job: job.name,
            node: node.to_string(),
            log,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeadms_json_is_read_after_its_progress_lines() {
        let output = r#"[check-expiration] Reading configuration from the "kubeadm-config" ConfigMap in namespace "kube-system"...
{
  "kind": "CertificateExpirationInfo",
  "apiVersion": "output.kubeadm.k8s.io/v1alpha3",
  "certificates": [
    {"name": "apiserver", "expirationDate": "2027-01-01T10:00:00Z", "residualTime": 2160000, "externallyManaged": false, "caName": "ca", "missing": false},
    {"name": "etcd-peer", "expirationDate": "0001-01-01T00:00:00Z", "residualTime": 0, "externallyManaged": false, "caName": "etcd-ca", "missing": true}
  ],
  "certificateAuthorities": [
    {"name": "ca", "expirationDate": "2036-12-01T10:00:00Z", "residualTime": 315360000, "externallyManaged": false, "missing": false}
  ]
}"#;
        let now: Timestamp = "2026-12-07T10:00:00Z".parse().expect("time");
        let read = parse_check_expiration("cp-1", output, now).expect("read");
        assert_eq!(read.len(), 2, "the missing one is left out: {read:?}");
        assert_eq!(read[0].name, "apiserver");
        assert_eq!(read[0].days_left, 25);
        assert_eq!(read[1].name, "ca");
        assert!(parse_check_expiration("cp-1", "error: no kubeadm", now).is_err());
        // Expired half a day ago: -1 day, not 0.
        let later: Timestamp = "2027-01-01T22:00:00Z".parse().expect("time");
        let expired = parse_check_expiration("cp-1", output, later).expect("read");
        assert_eq!(expired[0].days_left, -1);
    }
}
