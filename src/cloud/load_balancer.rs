//! Octavia: the load balancer flatstack makes in front of 3 or 5 control planes
//! (`<cluster>-api`, on a VIP port flatstack made, created fully populated in one call), and
//! the load balancers the cloud controller makes for a cluster's `LoadBalancer` Services, which
//! `down` must remove (the cluster owns them, but flatstack did not make them). The cloud
//! controller names them `kube_service_<cluster>_<namespace>_<service>` and gives each a
//! floating IP described as `Floating IP for Kubernetes external service ... from cluster
//! <cluster>`.

use std::time::{Duration, Instant};

use serde::Deserialize;

use super::compute::Usage;
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
    /// `amphora`, `ovn`, ...
    #[serde(default)]
    pub(crate) provider: Option<String>,
    /// Its listeners, pools, monitors and members, read for the API's load balancer when it is
    /// ACTIVE (flatstack keeps them as the file asks).
    #[serde(skip)]
    pub(crate) shape: Option<Shape>,
}

/// What a load balancer serves, as flatstack compares it with the file: each listener with
/// who may connect, its data timeouts and its default pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) listeners: Vec<ListenerShape>,
    /// Pools no listener uses (left when a listener was deleted by hand).
    pub(crate) unused_pools: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListenerShape {
    pub(crate) id: String,
    pub(crate) port: u16,
    /// Empty: anyone may connect.
    pub(crate) allowed_cidrs: Vec<String>,
    pub(crate) timeout_client_data: Option<u64>,
    pub(crate) timeout_member_data: Option<u64>,
    pub(crate) pool: Option<PoolShape>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PoolShape {
    pub(crate) id: String,
    pub(crate) monitored: bool,
    /// Each member's address and port.
    pub(crate) members: Vec<(String, u16)>,
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

/// A pool member as Octavia's status tree shows it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, serde::Serialize)]
pub(crate) struct MemberHealth {
    #[serde(default)]
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) address: String,
    pub(crate) operating_status: String,
}

/// The project's Octavia quotas and their use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadBalancerLimits {
    pub(crate) load_balancers: Usage,
    pub(crate) listeners: Usage,
    pub(crate) pools: Usage,
    pub(crate) health_monitors: Usage,
    pub(crate) members: Usage,
}

#[derive(Deserialize)]
struct One {
    loadbalancer: LoadBalancer,
}

impl Cloud {
    /// The Octavia providers the cloud offers (`amphora`, `ovn`, ...), or `None` when the
    /// catalog has no load-balancer service.
    pub(crate) async fn load_balancer_providers(&self) -> Result<Option<Vec<String>>, CloudError> {
        if !self.offers(Service::LoadBalancer).await {
            return Ok(None);
        }
        #[derive(Deserialize)]
        struct Provider {
            name: String,
        }
        #[derive(Deserialize)]
        struct List {
            providers: Vec<Provider>,
        }
        let list: List = self.get(Service::LoadBalancer, "/lbaas/providers").await?;
        Ok(Some(list.providers.into_iter().map(|p| p.name).collect()))
    }

    /// The load balancers named `name` (the API's is `<cluster>-api`); none when the cloud
    /// has no load-balancer service.
    pub(crate) async fn load_balancers_named(
        &self,
        name: &str,
    ) -> Result<Vec<LoadBalancer>, CloudError> {
        Ok(self
            .load_balancers(&format!("?name={name}"))
            .await?
            .into_iter()
            .filter(|lb| lb.name == name && lb.provisioning_status != "DELETED")
            .collect())
    }

    /// The project's load balancers matching `query` (`?name=...`, or empty for all); none
    /// when the cloud has no load-balancer service.
    async fn load_balancers(&self, query: &str) -> Result<Vec<LoadBalancer>, CloudError> {
        if !self.offers(Service::LoadBalancer).await {
            return Ok(Vec::new());
        }
        #[derive(Deserialize)]
        struct List {
            loadbalancers: Vec<LoadBalancer>,
        }
        let list: List = self
            .get(
                Service::LoadBalancer,
                &format!("/lbaas/loadbalancers{query}"),
            )
            .await?;
        Ok(list.loadbalancers)
    }

    /// The project's Octavia quotas and what is used of them (Octavia reports no usage: the
    /// project's load balancers, listeners, pools, health monitors and pools' members are
    /// counted), or `None` when the cloud has no load-balancer service or will not show them.
    pub(crate) async fn load_balancer_limits(
        &self,
    ) -> Result<Option<LoadBalancerLimits>, CloudError> {
        if !self.offers(Service::LoadBalancer).await {
            return Ok(None);
        }
        #[derive(Deserialize)]
        struct Quota {
            quota: serde_json::Map<String, serde_json::Value>,
        }
        #[derive(Deserialize)]
        struct Listed {
            #[serde(default)]
            members: Vec<serde_json::Value>,
        }
        /// One of Octavia's lists: each answer has the one field its path names.
        #[derive(Deserialize)]
        struct Listing {
            #[serde(default)]
            loadbalancers: Vec<Listed>,
            #[serde(default)]
            listeners: Vec<Listed>,
            #[serde(default)]
            pools: Vec<Listed>,
            #[serde(default)]
            healthmonitors: Vec<Listed>,
        }
        // An admin's token lists every project's: ask for this project's only.
        let Some(project) = self.project_id().await else {
            return Ok(None);
        };
        let project = project.as_str();
        let list = |kind: &'static str| async move {
            let path = format!("/lbaas/{kind}?project_id={project}");
            self.get::<Listing>(Service::LoadBalancer, &path).await
        };
        let quota_path = format!("/lbaas/quotas/{project}");
        // Octavia's policy may keep a project's quota from its members: then unknown.
        let quota = async {
            match self.get::<Quota>(Service::LoadBalancer, &quota_path).await {
                Err(CloudError::Api { status: 403, .. }) => Ok(None),
                other => other.map(Some),
            }
        };
        let (quota, balancers, listeners, pools, monitors) = tokio::try_join!(
            quota,
            list("loadbalancers"),
            list("listeners"),
            list("pools"),
            list("healthmonitors"),
        )?;
        // Octavia answers both spellings (`load_balancer` and the older `loadbalancer`);
        // -1 is unlimited.
        let Some(quota) = quota else {
            return Ok(None);
        };
        let limit = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| quota.quota.get(*k).and_then(|v| v.as_i64()))
                .and_then(|l| u64::try_from(l).ok())
        };
        let usage = |keys: &[&str], used: usize| Usage {
            limit: limit(keys),
            used: used as u64,
        };
        let members = pools.pools.iter().map(|p| p.members.len()).sum();
        Ok(Some(LoadBalancerLimits {
            load_balancers: usage(
                &["load_balancer", "loadbalancer"],
                balancers.loadbalancers.len(),
            ),
            listeners: usage(&["listener"], listeners.listeners.len()),
            pools: usage(&["pool"], pools.pools.len()),
            health_monitors: usage(
                &["health_monitor", "healthmonitor"],
                monitors.healthmonitors.len(),
            ),
            members: usage(&["member"], members),
        }))
    }

    /// Creates a load balancer from `body` (the whole `loadbalancer` object, listeners, pools,
    /// members and monitors included). A create whose answer was lost is looked up by name
    /// before it is sent again: never a second one.
    pub(crate) async fn create_load_balancer(
        &self,
        body: &serde_json::Value,
    ) -> Result<LoadBalancer, CloudError> {
        let name = body["name"].as_str().unwrap_or_default().to_string();
        let envelope = serde_json::json!({ "loadbalancer": body });
        self.create(
            Service::LoadBalancer,
            "/lbaas/loadbalancers",
            &envelope,
            "loadbalancer",
            || {
                let name = name.clone();
                async move { Ok(self.load_balancers_named(&name).await?.into_iter().next()) }
            },
        )
        .await
    }

    /// Waits until Octavia has built the load balancer (`ACTIVE`); `ERROR` is a failure.
    pub(crate) async fn wait_load_balancer_active(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<LoadBalancer, CloudError> {
        let path = format!("/lbaas/loadbalancers/{id}");
        let started = Instant::now();
        loop {
            let balancer = self
                .get::<One>(Service::LoadBalancer, &path)
                .await?
                .loadbalancer;
            match balancer.provisioning_status.as_str() {
                "ACTIVE" => return Ok(balancer),
                "ERROR" | "DELETED" => {
                    return Err(CloudError::Failed {
                        what: format!("load balancer {}", balancer.name),
                        fault: format!(
                            "Octavia set it to {} while building it",
                            balancer.provisioning_status
                        ),
                        next: Some("the next `up` deletes it and makes it again"),
                    });
                }
                state if started.elapsed() >= timeout => {
                    return Err(CloudError::Timeout {
                        what: format!("load balancer {}", balancer.name),
                        wanted: "ACTIVE".into(),
                        state: state.to_string(),
                        waited: timeout,
                    });
                }
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// Each member of the pools of the listener named `listener`, with its operating status
    /// (`ONLINE`, `ERROR`, `NO_MONITOR`, ...), from Octavia's status tree.
    pub(crate) async fn load_balancer_members(
        &self,
        id: &str,
        listener: &str,
    ) -> Result<Vec<MemberHealth>, CloudError> {
        #[derive(Deserialize)]
        struct Tree {
            statuses: Statuses,
        }
        #[derive(Deserialize)]
        struct Statuses {
            loadbalancer: Node,
        }
        #[derive(Deserialize)]
        struct Node {
            #[serde(default)]
            listeners: Vec<Listener>,
        }
        #[derive(Deserialize)]
        struct Listener {
            #[serde(default)]
            name: String,
            #[serde(default)]
            pools: Vec<Pool>,
        }
        #[derive(Deserialize)]
        struct Pool {
            #[serde(default)]
            members: Vec<MemberHealth>,
        }
        let tree: Tree = self
            .get(
                Service::LoadBalancer,
                &format!("/lbaas/loadbalancers/{id}/status"),
            )
            .await?;
        Ok(tree
            .statuses
            .loadbalancer
            .listeners
            .into_iter()
            .filter(|l| l.name == listener)
            .flat_map(|l| l.pools)
            .flat_map(|p| p.members)
            .collect())
    }

    /// The cluster's load balancers from one listing: those the cloud controller made, and
    /// the API's (named `api_name`, not deleted); none when the cloud has no load-balancer
    /// service.
    pub(crate) async fn cluster_load_balancers(
        &self,
        cluster: &str,
        api_name: &str,
    ) -> Result<(Vec<LoadBalancer>, Vec<LoadBalancer>), CloudError> {
        let prefix = service_prefix(cluster);
        let (services, rest): (Vec<LoadBalancer>, Vec<LoadBalancer>) = self
            .load_balancers("")
            .await?
            .into_iter()
            .partition(|lb| lb.name.starts_with(&prefix));
        let api = rest
            .into_iter()
            .filter(|lb| lb.name == api_name && lb.provisioning_status != "DELETED")
            .collect();
        Ok((services, api))
    }

    /// The listeners of load balancer `id`, each with its default pool (monitored or not) and
    /// that pool's members: two listings and one per pool.
    pub(crate) async fn load_balancer_shape(&self, id: &str) -> Result<Shape, CloudError> {
        #[derive(Deserialize)]
        struct Listeners {
            listeners: Vec<Listener>,
        }
        #[derive(Deserialize)]
        struct OfBalancer {
            id: String,
        }
        #[derive(Deserialize)]
        struct Listener {
            id: String,
            #[serde(default)]
            loadbalancers: Vec<OfBalancer>,
            protocol_port: u16,
            #[serde(default)]
            allowed_cidrs: Option<Vec<String>>,
            #[serde(default)]
            timeout_client_data: Option<u64>,
            #[serde(default)]
            timeout_member_data: Option<u64>,
            #[serde(default)]
            default_pool_id: Option<String>,
        }
        #[derive(Deserialize)]
        struct Pools {
            pools: Vec<Pool>,
        }
        #[derive(Deserialize)]
        struct Pool {
            id: String,
            #[serde(default)]
            loadbalancers: Vec<OfBalancer>,
            #[serde(default)]
            healthmonitor_id: Option<String>,
        }
        #[derive(Deserialize)]
        struct Members {
            members: Vec<Member>,
        }
        #[derive(Deserialize)]
        struct Member {
            address: String,
            protocol_port: u16,
        }
        let listeners_path = format!("/lbaas/listeners?loadbalancer_id={id}");
        let pools_path = format!("/lbaas/pools?loadbalancer_id={id}");
        let (listeners, mut pools) = tokio::try_join!(
            self.get::<Listeners>(Service::LoadBalancer, &listeners_path),
            self.get::<Pools>(Service::LoadBalancer, &pools_path),
        )?;
        // Octavia ignores the filter when its `allow_filtering` is off: kept to this one here.
        let ours = |of: &[OfBalancer]| of.iter().any(|lb| lb.id == id);
        pools.pools.retain(|p| ours(&p.loadbalancers));
        let mut shape = Shape::default();
        for listener in listeners
            .listeners
            .into_iter()
            .filter(|l| ours(&l.loadbalancers))
        {
            let pool = match pools
                .pools
                .iter()
                .find(|p| Some(&p.id) == listener.default_pool_id.as_ref())
            {
                None => None,
                Some(pool) => {
                    let path = format!("/lbaas/pools/{}/members", pool.id);
                    // A pool deleted since it was listed leaves its listener without one.
                    match self.get::<Members>(Service::LoadBalancer, &path).await {
                        Err(CloudError::Api { status: 404, .. }) => None,
                        Err(e) => return Err(e),
                        Ok(members) => Some(PoolShape {
                            id: pool.id.clone(),
                            monitored: pool.healthmonitor_id.is_some(),
                            members: members
                                .members
                                .into_iter()
                                .map(|m| (m.address, m.protocol_port))
                                .collect(),
                        }),
                    }
                }
            };
            shape.listeners.push(ListenerShape {
                id: listener.id,
                port: listener.protocol_port,
                allowed_cidrs: listener.allowed_cidrs.unwrap_or_default(),
                timeout_client_data: listener.timeout_client_data,
                timeout_member_data: listener.timeout_member_data,
                pool,
            });
        }
        shape.listeners.sort_by_key(|l| l.port);
        shape.unused_pools = pools
            .pools
            .into_iter()
            .filter(|p| {
                !shape
                    .listeners
                    .iter()
                    .any(|l| l.pool.as_ref().is_some_and(|used| used.id == p.id))
            })
            .map(|p| p.id)
            .collect();
        Ok(shape)
    }

    /// Creates one of a load balancer's parts (`listener`, `pool`, `healthmonitor`) from
    /// `body`, named `name` and under `parent` (`?loadbalancer_id=...` or `?pool_id=...`, where
    /// a lost answer's creation is looked for), and waits until the load balancer `id` is
    /// ACTIVE again: Octavia takes one change at a time. The part's ID.
    pub(crate) async fn create_load_balancer_part(
        &self,
        id: &str,
        kind: &str,
        parent: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<String, CloudError> {
        #[derive(Deserialize)]
        struct Part {
            id: String,
            #[serde(default)]
            name: String,
        }
        let name = body["name"].as_str().unwrap_or_default().to_string();
        let plural = format!("{kind}s");
        let envelope = serde_json::json!({ kind: body });
        let made: Part = self
            .create(
                Service::LoadBalancer,
                &format!("/lbaas/{plural}"),
                &envelope,
                kind,
                || {
                    let (name, plural) = (name.clone(), plural.clone());
                    async move {
                        let list: serde_json::Value = self
                            .get(Service::LoadBalancer, &format!("/lbaas/{plural}{parent}"))
                            .await?;
                        let parts: Vec<Part> =
                            serde_json::from_value(list[plural.as_str()].clone())
                                .unwrap_or_default();
                        Ok(parts.into_iter().find(|p| p.name == name))
                    }
                },
            )
            .await?;
        self.wait_load_balancer_active(id, timeout).await?;
        Ok(made.id)
    }

    /// Changes one of load balancer `id`'s parts in place (PUT `path` with `body`, e.g. a
    /// listener's allowed CIDRs, or a pool's whole member list), then waits until the load
    /// balancer is ACTIVE again.
    pub(crate) async fn change_load_balancer_part(
        &self,
        id: &str,
        path: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<(), CloudError> {
        self.put(Service::LoadBalancer, path, body).await?;
        self.wait_load_balancer_active(id, timeout).await?;
        Ok(())
    }

    /// Deletes one of load balancer `id`'s parts (`path`), then waits until it is ACTIVE again.
    pub(crate) async fn delete_load_balancer_part(
        &self,
        id: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<(), CloudError> {
        self.delete(Service::LoadBalancer, path).await?;
        self.wait_load_balancer_active(id, timeout).await?;
        Ok(())
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
