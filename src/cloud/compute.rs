//! Nova: flavors, keypairs, server groups, servers (tags, metadata, user_data, ports, boot
//! volumes), fault messages, console logs and the project's limits.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Cloud, CloudError, Service, query_escape};

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Flavor {
    pub id: String,
    pub name: String,
    pub vcpus: u32,
    /// MiB.
    pub ram: u64,
    /// Root disk, GB.
    pub disk: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Keypair {
    pub name: String,
    pub(crate) public_key: String,
    #[serde(default)]
    pub(crate) fingerprint: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ServerGroup {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub(crate) policy: Option<String>,
    #[serde(default)]
    pub(crate) members: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Server {
    pub id: String,
    pub name: String,
    pub(crate) status: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub(crate) metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) fault: Option<Fault>,
    #[serde(default)]
    pub(crate) addresses: BTreeMap<String, Vec<Address>>,
    #[serde(default)]
    pub(crate) flavor: Value,
    /// The image it booted from, or `""` when it boots from a volume.
    #[serde(default)]
    pub(crate) image: Value,
    /// When its guest first started (Nova's `OS-SRV-USG:launched_at`); `None` while it builds
    /// and for a build that failed before the guest ever ran.
    #[serde(default, rename = "OS-SRV-USG:launched_at")]
    pub(crate) launched_at: Option<String>,
}

impl Server {
    /// The name of the flavor it runs (microversion 2.47 and later embed the flavor).
    pub(crate) fn flavor_name(&self) -> Option<&str> {
        self.flavor.get("original_name").and_then(Value::as_str)
    }

    /// Whether its build failed before the guest ever ran: in ERROR without a launch time. Such
    /// a server holds nothing (no disk written, no node joined), so it can be rebuilt.
    pub(crate) fn failed_build(&self) -> bool {
        self.status == "ERROR" && self.launched_at.is_none()
    }

    /// Whether it carries the tag of `role` (`control-plane`, `worker`).
    pub(crate) fn has_role(&self, role: &str) -> bool {
        let tag = crate::plan::resources::role_tag(role);
        self.tags.contains(&tag)
    }

    /// Whether it boots from a volume: Nova shows such a server's image as `""`.
    pub(crate) fn boots_from_volume(&self) -> bool {
        self.image.as_str() == Some("")
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub(crate) struct Fault {
    #[serde(default)]
    pub(crate) message: String,
    #[serde(default)]
    pub(crate) code: Option<u16>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub(crate) struct Address {
    pub(crate) addr: String,
    #[serde(rename = "OS-EXT-IPS:type", default)]
    pub(crate) kind: Option<String>,
}

/// What a new server is made of.
#[derive(Debug, Clone, Default)]
pub struct ServerRequest {
    pub name: String,
    pub flavor_id: String,
    pub image_id: String,
    /// Neutron ports to attach, made beforehand (so their addresses are known).
    pub port_ids: Vec<String>,
    pub key_name: Option<String>,
    /// Ignition JSON; base64-encoded on the way.
    pub user_data: Option<String>,
    pub tags: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub server_group_id: Option<String>,
    /// Boot from a new volume of this size, deleted with the server.
    pub boot_volume_gb: Option<u32>,
}

/// The project's compute limits and usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ComputeLimits {
    pub instances: Usage,
    pub(crate) cores: Usage,
    /// MiB.
    pub(crate) ram_mib: Usage,
    pub(crate) server_groups: Usage,
    pub(crate) keypairs: Usage,
}

/// A quota and how much of it is used; `limit` of `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub limit: Option<u64>,
    pub used: u64,
}

impl Usage {
    fn from(limit: &Value, used: &Value) -> Usage {
        let limit = limit.as_i64().and_then(|l| u64::try_from(l).ok());
        Usage {
            limit,
            used: used.as_u64().unwrap_or(0),
        }
    }

    /// What is left, `None` when unlimited.
    pub(crate) fn left(&self) -> Option<u64> {
        self.limit.map(|l| l.saturating_sub(self.used))
    }
}

impl Cloud {
    pub async fn flavors(&self) -> Result<Vec<Flavor>, CloudError> {
        #[derive(Deserialize)]
        struct List {
            flavors: Vec<Flavor>,
        }
        Ok(self
            .get::<List>(Service::Compute, "/flavors/detail")
            .await?
            .flavors)
    }

    pub(crate) async fn keypairs(&self) -> Result<Vec<Keypair>, CloudError> {
        #[derive(Deserialize)]
        struct Item {
            keypair: Keypair,
        }
        #[derive(Deserialize)]
        struct List {
            keypairs: Vec<Item>,
        }
        let list: List = self.get(Service::Compute, "/os-keypairs").await?;
        Ok(list.keypairs.into_iter().map(|i| i.keypair).collect())
    }

    pub async fn create_keypair(
        &self,
        name: &str,
        public_key: &str,
    ) -> Result<Keypair, CloudError> {
        let body = json!({ "keypair": { "name": name, "public_key": public_key, "type": "ssh" } });
        self.create(
            Service::Compute,
            "/os-keypairs",
            &body,
            "keypair",
            || async { Ok(self.keypairs().await?.into_iter().find(|k| k.name == name)) },
        )
        .await
    }

    pub async fn delete_keypair(&self, name: &str) -> Result<(), CloudError> {
        self.delete(
            Service::Compute,
            &format!("/os-keypairs/{}", query_escape(name)),
        )
        .await
    }

    pub(crate) async fn server_groups(&self) -> Result<Vec<ServerGroup>, CloudError> {
        #[derive(Deserialize)]
        struct List {
            server_groups: Vec<ServerGroup>,
        }
        Ok(self
            .get::<List>(Service::Compute, "/os-server-groups")
            .await?
            .server_groups)
    }

    /// A server group with `policy` (`anti-affinity`, `soft-anti-affinity`, ...).
    pub async fn create_server_group(
        &self,
        name: &str,
        policy: &str,
    ) -> Result<ServerGroup, CloudError> {
        let body = json!({ "server_group": { "name": name, "policy": policy } });
        self.create(
            Service::Compute,
            "/os-server-groups",
            &body,
            "server_group",
            || async {
                Ok(self
                    .server_groups()
                    .await?
                    .into_iter()
                    .find(|g| g.name == name))
            },
        )
        .await
    }

    pub async fn delete_server_group(&self, id: &str) -> Result<(), CloudError> {
        self.delete(Service::Compute, &format!("/os-server-groups/{id}"))
            .await
    }

    pub(crate) async fn server(&self, id: &str) -> Result<Server, CloudError> {
        #[derive(Deserialize)]
        struct One {
            server: Server,
        }
        Ok(self
            .get::<One>(Service::Compute, &format!("/servers/{id}"))
            .await?
            .server)
    }

    /// Servers carrying every one of `tags`.
    pub async fn servers_tagged(&self, tags: &[&str]) -> Result<Vec<Server>, CloudError> {
        #[derive(Deserialize)]
        struct List {
            servers: Vec<Server>,
        }
        let tags: Vec<String> = tags.iter().map(|t| query_escape(t)).collect();
        let path = format!("/servers/detail?tags={}", tags.join(","));
        Ok(self.get::<List>(Service::Compute, &path).await?.servers)
    }

    /// Servers whose name matches exactly.
    pub(crate) async fn servers_named(&self, name: &str) -> Result<Vec<Server>, CloudError> {
        #[derive(Deserialize)]
        struct List {
            servers: Vec<Server>,
        }
        // Nova's `name` filter is a regular expression: anchor it and escape the dots.
        let pattern = format!("^{}$", name.replace('.', "\\."));
        let path = format!("/servers/detail?name={}", query_escape(&pattern));
        let servers = self.get::<List>(Service::Compute, &path).await?.servers;
        Ok(servers.into_iter().filter(|s| s.name == name).collect())
    }

    /// Creates a server; a retried create finds the first attempt's server by name and tag.
    pub async fn create_server(&self, request: &ServerRequest) -> Result<Server, CloudError> {
        let mut server = json!({
            "name": request.name,
            "flavorRef": request.flavor_id,
            "networks": request.port_ids.iter().map(|p| json!({ "port": p })).collect::<Vec<_>>(),
            "tags": request.tags,
            "metadata": request.metadata,
        });
        match request.boot_volume_gb {
            Some(size) => {
                server["imageRef"] = json!("");
                server["block_device_mapping_v2"] = json!([{
                    "boot_index": 0,
                    "uuid": request.image_id,
                    "source_type": "image",
                    "destination_type": "volume",
                    "volume_size": size,
                    "delete_on_termination": true,
                }]);
            }
            None => server["imageRef"] = json!(request.image_id),
        }
        if let Some(key) = &request.key_name {
            server["key_name"] = json!(key);
        }
        if let Some(user_data) = &request.user_data {
            server["user_data"] =
                json!(base64::engine::general_purpose::STANDARD.encode(user_data));
        }
        let mut body = json!({ "server": server });
        if let Some(group) = &request.server_group_id {
            body["os:scheduler_hints"] = json!({ "group": group });
        }
        #[derive(Deserialize)]
        struct Created {
            id: String,
        }
        let created: Created = self
            .create(Service::Compute, "/servers", &body, "server", || async {
                let found = self.servers_named(&request.name).await?;
                Ok(found
                    .into_iter()
                    .find(|s| request.tags.iter().all(|t| s.tags.contains(t)))
                    .map(|s| Created { id: s.id }))
            })
            .await?;
        self.server(&created.id).await
    }

    /// Attaches an existing port to a server (a port deleted by hand, made again).
    pub(crate) async fn attach_port(
        &self,
        server_id: &str,
        port_id: &str,
    ) -> Result<(), CloudError> {
        let body = json!({ "interfaceAttachment": { "port_id": port_id } });
        self.request(
            Service::Compute,
            reqwest::Method::POST,
            &format!("/servers/{server_id}/os-interface"),
            Some(&body),
        )
        .await
        .map(|_| ())
    }

    /// Sets keys of a server's metadata, keeping the others (Nova's `POST .../metadata`).
    pub async fn update_server_metadata(
        &self,
        id: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), CloudError> {
        let body = json!({ "metadata": metadata });
        self.request(
            Service::Compute,
            reqwest::Method::POST,
            &format!("/servers/{id}/metadata"),
            Some(&body),
        )
        .await
        .map(|_| ())
    }

    /// Deletes one key of a server's metadata; a key already gone counts as deleted.
    pub async fn delete_server_metadata(&self, id: &str, key: &str) -> Result<(), CloudError> {
        let path = format!("/servers/{id}/metadata/{}", query_escape(key));
        match self.delete(Service::Compute, &path).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    pub async fn delete_server(&self, id: &str) -> Result<(), CloudError> {
        self.delete(Service::Compute, &format!("/servers/{id}"))
            .await
    }

    /// Polls until the server is ACTIVE; ERROR is reported with Nova's fault message.
    pub async fn wait_server_active(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<Server, CloudError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(250);
        loop {
            let server = self.server(id).await?;
            match server.status.as_str() {
                "ACTIVE" => return Ok(server),
                "ERROR" => {
                    return Err(CloudError::Failed {
                        what: format!("server {} ({id})", server.name),
                        next: server.failed_build().then_some(
                            "its guest never started, so the next `up` deletes it and builds it \
                             again; if the fault is one you can fix (quota, flavor, image, \
                             volume), fix it first",
                        ),
                        fault: server
                            .fault
                            .map(|f| f.message)
                            .filter(|m| !m.is_empty())
                            .unwrap_or_else(|| "Nova gave no fault message".into()),
                    });
                }
                _ if started.elapsed() >= timeout => {
                    return Err(CloudError::Timeout {
                        what: format!("server {} ({id})", server.name),
                        wanted: "ACTIVE".into(),
                        state: server.status,
                        waited: timeout,
                    });
                }
                _ => {}
            }
            tokio::time::sleep(pause).await;
            // At most a second between looks: the wait ends at most a second late.
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// Polls until the server is gone.
    pub async fn wait_server_deleted(&self, id: &str, timeout: Duration) -> Result<(), CloudError> {
        let started = Instant::now();
        loop {
            match self.server(id).await {
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(e),
                Ok(server) if started.elapsed() >= timeout => {
                    return Err(CloudError::Timeout {
                        what: format!("server {} ({id})", server.name),
                        wanted: "deleted".into(),
                        state: server.status,
                        waited: timeout,
                    });
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// The last `lines` lines of the server's console log.
    pub async fn console_log(&self, id: &str, lines: u32) -> Result<String, CloudError> {
        #[derive(Deserialize)]
        struct Output {
            output: Option<String>,
        }
        let body = json!({ "os-getConsoleOutput": { "length": lines } });
        let output: Output = self
            .action(Service::Compute, &format!("/servers/{id}/action"), &body)
            .await?;
        Ok(output.output.unwrap_or_default())
    }

    /// The project's compute quotas and what is used of them.
    pub async fn compute_limits(&self) -> Result<ComputeLimits, CloudError> {
        let limits: Value = self.get(Service::Compute, "/limits").await?;
        let absolute = &limits["limits"]["absolute"];
        let usage = |limit: &str, used: &str| Usage::from(&absolute[limit], &absolute[used]);
        Ok(ComputeLimits {
            instances: usage("maxTotalInstances", "totalInstancesUsed"),
            cores: usage("maxTotalCores", "totalCoresUsed"),
            ram_mib: usage("maxTotalRAMSize", "totalRAMUsed"),
            server_groups: usage("maxServerGroups", "totalServerGroupsUsed"),
            keypairs: Usage {
                limit: absolute["maxTotalKeypairs"]
                    .as_i64()
                    .and_then(|l| u64::try_from(l).ok()),
                used: 0,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_left_handles_unlimited() {
        assert_eq!(Usage::from(&json!(10), &json!(3)).left(), Some(7));
        assert_eq!(Usage::from(&json!(-1), &json!(3)).left(), None);
        assert_eq!(Usage::from(&json!(2), &json!(3)).left(), Some(0));
    }
}
