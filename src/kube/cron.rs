//! A CronJob run at once, as `kubectl create job --from=cronjob/...` does: a Job made from its
//! template, owned by it and marked as started by hand, waited for until it succeeds or fails.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::{KubeClient, KubeError, Manifest, Waiting, poll};

/// How long a Job started by hand stays after it ended (the CronJob's own are pruned by its
/// history limits).
const KEEP_SECONDS: i32 = 24 * 3600;

/// How a Job started by hand ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ran {
    /// A Job of the CronJob was running already (its controller lists it as active): none
    /// was started beside it.
    Busy {
        jobs: Vec<String>,
    },
    Succeeded {
        job: String,
    },
    /// Its pods failed as often as its `backoffLimit` allows; the job controller's message.
    Failed {
        job: String,
        message: String,
    },
}

impl KubeClient {
    /// Starts CronJob `namespace/name` now and waits up to `within` for its Job to end;
    /// `None` when there is no such CronJob.
    pub(crate) async fn run_cron_job_now(
        &self,
        namespace: &str,
        name: &str,
        within: Duration,
    ) -> Result<Option<Ran>, KubeError> {
        let path = format!("/apis/batch/v1/namespaces/{namespace}/cronjobs/{name}");
        let Some(cron) = self.get::<CronJob>(&path).await? else {
            return Ok(None);
        };
        // Jobs made from its template, scheduled or by hand, that have not ended: the
        // controller's active list holds only those it started (a Job made by hand gets an
        // `UnexpectedJob` event, not a place in it: `cronjob_controllerv2.go`, `syncCronJob`).
        let selector: Vec<String> = cron
            .spec
            .as_ref()
            .and_then(|s| s.job_template.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| format!("{k}%3D{v}"))
            .collect();
        if !selector.is_empty() {
            let jobs: Vec<Job> = self
                .list(&format!(
                    "/apis/batch/v1/namespaces/{namespace}/jobs?labelSelector={}",
                    selector.join(",")
                ))
                .await?;
            let running: Vec<String> = jobs
                .iter()
                .filter(|j| !ended(j))
                .filter_map(|j| j.metadata.name.clone())
                .collect();
            if !running.is_empty() {
                return Ok(Some(Ran::Busy { jobs: running }));
            }
        }
        let mut suffix = [0u8; 3];
        getrandom::fill(&mut suffix).map_err(|e| KubeError::Random(e.to_string()))?;
        let job = job_from(&cron, &format!("{name}-now-{}", hex::encode(suffix)));
        let job_name = job.metadata.name.clone().unwrap_or_default();
        let job_path = format!("/apis/batch/v1/namespaces/{namespace}/jobs/{job_name}");
        self.apply(&Manifest::of(&job)).await?;
        let ran = poll(
            &format!("Job {job_name}"),
            within,
            Duration::from_secs(2),
            || async {
                let status = self
                    .get::<Job>(&job_path)
                    .await?
                    .and_then(|j| j.status)
                    .unwrap_or_default();
                let failed = status
                    .conditions
                    .iter()
                    .flatten()
                    .find(|c| c.type_ == "Failed" && c.status == "True");
                Ok(if status.succeeded.unwrap_or(0) > 0 {
                    Waiting::Done(Ran::Succeeded {
                        job: job_name.clone(),
                    })
                } else if let Some(failed) = failed {
                    Waiting::Done(Ran::Failed {
                        job: job_name.clone(),
                        message: failed
                            .message
                            .clone()
                            .or(failed.reason.clone())
                            .unwrap_or_default(),
                    })
                } else {
                    Waiting::On(format!(
                        "{} pod(s) running, {} failed",
                        status.active.unwrap_or(0),
                        status.failed.unwrap_or(0)
                    ))
                })
            },
        )
        .await?;
        Ok(Some(ran))
    }
}

/// Whether the job controller has marked `job` Complete or Failed.
fn ended(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
        || job
            .status
            .as_ref()
            .is_some_and(|s| s.succeeded.unwrap_or(0) > 0)
}

/// The Job `kubectl create job --from=cronjob/...` makes of `cron`, named `name`.
fn job_from(cron: &CronJob, name: &str) -> Job {
    let template = cron
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let mut spec = template.spec.unwrap_or_default();
    spec.ttl_seconds_after_finished = Some(KEEP_SECONDS);
    let labels = template.metadata.as_ref().and_then(|m| m.labels.clone());
    Job {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: cron.metadata.namespace.clone(),
            labels,
            annotations: Some(BTreeMap::from([(
                "cronjob.kubernetes.io/instantiate".to_string(),
                "manual".to_string(),
            )])),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "CronJob".into(),
                name: cron.metadata.name.clone().unwrap_or_default(),
                uid: cron.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: None,
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_from_a_cron_job_is_its_template_owned_by_it_and_marked_manual() {
        let cron: CronJob = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "flatstack-etcd-backup", "namespace": "kube-system", "uid": "u-1"},
            "spec": {"schedule": "1 */6 * * *", "jobTemplate": {
                "metadata": {"labels": {"app.kubernetes.io/name": "flatstack-etcd-backup"}},
                "spec": {"backoffLimit": 2, "template": {"spec": {"containers": [
                    {"name": "upload", "image": "busybox"}]}}}}}
        }))
        .expect("cron job");
        let job = job_from(&cron, "flatstack-etcd-backup-now-abcdef");
        let body = Manifest::of(&job).body().clone();
        assert_eq!(body["metadata"]["namespace"], "kube-system");
        assert_eq!(
            body["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"],
            "manual"
        );
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(
            body["metadata"]["labels"]["app.kubernetes.io/name"],
            "flatstack-etcd-backup"
        );
        assert_eq!(body["spec"]["backoffLimit"], 2);
        assert_eq!(body["spec"]["ttlSecondsAfterFinished"], KEEP_SECONDS);
        assert_eq!(
            body["spec"]["template"]["spec"]["containers"][0]["name"],
            "upload"
        );
    }
}
