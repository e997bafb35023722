//! Waiting for a Deployment to be rolled out: its controller has seen the latest spec and
//! every wanted replica is ready.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;

use super::{KubeClient, KubeError, Waiting, poll};

/// Waits until Deployment `namespace/name` has its current generation rolled out and ready.
pub(crate) async fn wait_deployment(
    client: &KubeClient,
    namespace: &str,
    name: &str,
    within: Duration,
) -> Result<(), KubeError> {
    let path = format!("/apis/apps/v1/namespaces/{namespace}/deployments/{name}");
    poll(
        &format!("Deployment {namespace}/{name} ready"),
        within,
        Duration::from_secs(3),
        || async {
            let Some(deployment): Option<Deployment> = client.get(&path).await? else {
                return Ok(Waiting::On("not created yet".into()));
            };
            Ok(if deployment_ready(&deployment) {
                Waiting::Done(())
            } else {
                let status = deployment.status.unwrap_or_default();
                Waiting::On(format!(
                    "{} of {} replica(s) ready",
                    status.ready_replicas.unwrap_or(0),
                    deployment.spec.and_then(|s| s.replicas).unwrap_or(1)
                ))
            })
        },
    )
    .await
}

/// The Deployment's controller has seen its latest spec and every wanted replica is ready.
pub(crate) fn deployment_ready(deployment: &Deployment) -> bool {
    let wanted = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let Some(status) = &deployment.status else {
        return false;
    };
    let seen =
        status.observed_generation.unwrap_or(0) >= deployment.metadata.generation.unwrap_or(0);
    seen && status.ready_replicas.unwrap_or(0) >= wanted
        && status.updated_replicas.unwrap_or(0) >= wanted
}
