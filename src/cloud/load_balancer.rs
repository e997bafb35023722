//! Octavia: the load balancers the cloud controller makes for a cluster's `LoadBalancer`
//! Services, which `down` must remove (the cluster owns them, but flatstack did not make them).
//! The cloud controller names them `kube_service_<cluster>_<namespace>_<service>` and gives each
//! a floating IP described as `Floating IP for Kubernetes external service ... from cluster
//! <cluster>`.

use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{Cloud, CloudError, Service};

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub(crate) struct LoadBalancer {
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) name: String,
    pub(crate) provisioning_status: String,
    #[serde(default)]
    pub(crate) vip_address: Option<String>,
    #[serde(default)]
    pub(crate) vip_port_id: Option<String>,
}

/// The name prefix of the load balancers the cloud controller makes for `cluster`. Cluster names
/// have no `_`, so no other cluster's load balancers share it.
pub(crate) fn service_prefix(cluster: &str) -> String {
    format!("kube_service_{cluster}_")
}

/// Whether a floating IP's description says the cloud controller made it for `cluster`.
pub(crate) fn is_service_floating_ip(description: &str, cluster: &str) -> bool {
    description.starts_with("Floating IP for Kubernetes external service ")
        && description.ends_with(&format!(" from cluster {cluster}"))
}

impl Cloud {
    /// The cluster's load balancers; none when the cloud has no load-balancer service.
    pub(crate) async fn cluster_load_balancers(
        &self,
        cluster: &str,
    ) -> Result<Vec<LoadBalancer>, CloudError> {
        if !self.offers(Service::LoadBalancer).await {
            return Ok(Vec::new());
        }
        #[derive(Deserialize)]
        struct List {
            loadbalancers: Vec<LoadBalancer>,
        }
        let prefix = service_prefix(cluster);
        let all: List = self
            .get(Service::LoadBalancer, "/lbaas/loadbalancers")
            .await?;
        Ok(all
            .loadbalancers
            .into_iter()
            .filter(|lb| lb.name.starts_with(&prefix))
            .collect())
    }

    /// Deletes a load balancer with its listeners, pools and members, and waits until Octavia
    /// has removed it. A load balancer that is still changing (PENDING_*) is refused with 409 by
    /// Octavia; the session retries that.
    pub(crate) async fn delete_load_balancer(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<(), CloudError> {
        let path = format!("/lbaas/loadbalancers/{id}");
        self.delete(Service::LoadBalancer, &format!("{path}?cascade=true"))
            .await?;
        let started = Instant::now();
        loop {
            #[derive(Deserialize)]
            struct One {
                loadbalancer: LoadBalancer,
            }
            let state = match self.get::<One>(Service::LoadBalancer, &path).await {
                Ok(one) => one.loadbalancer.provisioning_status,
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(e),
            };
            if state == "DELETED" {
                return Ok(());
            }
            if state == "ERROR" {
                return Err(CloudError::Failed {
                    what: format!("load balancer {id}"),
                    fault: "Octavia set it to ERROR while deleting it".into(),
                    next: None,
                });
            }
            if started.elapsed() >= timeout {
                return Err(CloudError::Timeout {
                    what: format!("load balancer {id}"),
                    wanted: "DELETED".into(),
                    state,
                    waited: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_descriptions_belong_to_one_cluster_only() {
        let prefix = service_prefix("demo");
        assert!("kube_service_demo_default_web".starts_with(&prefix));
        assert!(!"kube_service_demo-2_default_web".starts_with(&prefix));
        let ours = "Floating IP for Kubernetes external service default/web from cluster demo";
        assert!(is_service_floating_ip(ours, "demo"));
        assert!(!is_service_floating_ip(ours, "demo-2"));
        assert!(!is_service_floating_ip(
            "Floating IP for Kubernetes external service default/web from cluster other-demo",
            "demo"
        ));
        assert!(!is_service_floating_ip("flatstack demo API", "demo"));
    }
}
