//! Neutron: networks, subnets, routers (gateway and interfaces), ports with fixed IPs,
//! security groups and rules, floating IPs, tags and the project's network quotas.
//!
//! Tags go in the create itself where Neutron offers the `tag-creation` extension, so a
//! resource is the cluster's from the moment it exists; elsewhere they are set with the tags
//! API right after (a run stopped in between leaves a resource the engine adopts by its exact
//! name). A create that must be retried is first looked up by name.

use std::net::Ipv4Addr;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::compute::Usage;
use super::{Cloud, CloudError, Service, query_escape};

/// Neutron resource collections flatstack manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Network,
    Subnet,
    Router,
    Port,
    SecurityGroup,
    FloatingIp,
}

impl Kind {
    /// Singular JSON key, e.g. `security_group`.
    pub(crate) fn singular(self) -> &'static str {
        match self {
            Kind::Network => "network",
            Kind::Subnet => "subnet",
            Kind::Router => "router",
            Kind::Port => "port",
            Kind::SecurityGroup => "security_group",
            Kind::FloatingIp => "floatingip",
        }
    }

    /// URL path and plural JSON key, e.g. `security-groups` / `security_groups`.
    fn collection(self) -> (&'static str, &'static str) {
        match self {
            Kind::Network => ("networks", "networks"),
            Kind::Subnet => ("subnets", "subnets"),
            Kind::Router => ("routers", "routers"),
            Kind::Port => ("ports", "ports"),
            Kind::SecurityGroup => ("security-groups", "security_groups"),
            Kind::FloatingIp => ("floatingips", "floatingips"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Network {
    pub id: String,
    pub(crate) name: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub(crate) subnets: Vec<String>,
    #[serde(rename = "router:external", default)]
    pub(crate) external: bool,
    #[serde(default)]
    pub(crate) status: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Subnet {
    pub id: String,
    pub(crate) name: String,
    pub(crate) network_id: String,
    pub(crate) cidr: String,
    #[serde(default)]
    pub(crate) allocation_pools: Vec<AllocationPool>,
    #[serde(default)]
    pub(crate) tags: Vec<String>,
}

/// A range of a subnet's addresses Neutron hands out to ports without a fixed address.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub(crate) struct AllocationPool {
    pub(crate) start: String,
    pub(crate) end: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Router {
    pub id: String,
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) tags: Vec<String>,
    #[serde(default)]
    pub(crate) external_gateway_info: Option<Value>,
}

impl Router {
    /// The network its external gateway is on, if it has one.
    pub(crate) fn gateway_network_id(&self) -> Option<&str> {
        self.external_gateway_info
            .as_ref()
            .and_then(|g| g.get("network_id"))
            .and_then(|id| id.as_str())
    }

    /// Its IPv4 addresses on the external network.
    pub(crate) fn external_addresses(&self) -> Vec<std::net::Ipv4Addr> {
        self.external_gateway_info
            .as_ref()
            .and_then(|g| g.get("external_fixed_ips"))
            .and_then(|ips| ips.as_array())
            .into_iter()
            .flatten()
            .filter_map(|ip| ip.get("ip_address")?.as_str()?.parse().ok())
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Port {
    pub id: String,
    pub(crate) name: String,
    pub(crate) network_id: String,
    #[serde(default)]
    pub fixed_ips: Vec<FixedIp>,
    #[serde(default)]
    pub(crate) tags: Vec<String>,
    #[serde(default)]
    pub(crate) device_id: String,
    #[serde(default)]
    pub(crate) device_owner: String,
    #[serde(default)]
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) security_groups: Vec<String>,
    /// Other addresses the port may send from: a control plane's holds the API's address.
    #[serde(default)]
    pub(crate) allowed_address_pairs: Vec<AddressPair>,
}

impl Port {
    /// Whether the port may send from exactly `address` (a /32 pair or the bare address,
    /// as Neutron may store either), and from nothing else.
    pub(crate) fn allows_only(&self, address: &str) -> bool {
        matches!(self.allowed_address_pairs.as_slice(),
            [only] if only.ip_address.trim_end_matches("/32") == address)
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct AddressPair {
    pub(crate) ip_address: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct FixedIp {
    pub(crate) subnet_id: String,
    pub ip_address: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct SecurityGroup {
    pub id: String,
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) tags: Vec<String>,
    #[serde(default)]
    pub(crate) security_group_rules: Vec<SecurityGroupRule>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
pub struct SecurityGroupRule {
    #[serde(default)]
    pub id: String,
    pub direction: String,
    #[serde(default)]
    pub ethertype: String,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub port_range_min: Option<u16>,
    #[serde(default)]
    pub port_range_max: Option<u16>,
    #[serde(default)]
    pub remote_ip_prefix: Option<String>,
    #[serde(default)]
    pub remote_group_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct FloatingIp {
    pub id: String,
    pub(crate) floating_ip_address: String,
    pub(crate) floating_network_id: String,
    #[serde(default)]
    pub port_id: Option<String>,
    #[serde(default)]
    pub(crate) tags: Vec<String>,
    #[serde(default)]
    pub(crate) description: String,
    #[serde(default)]
    pub(crate) status: String,
}

/// The project's network quotas and usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetworkLimits {
    pub(crate) networks: Usage,
    pub(crate) subnets: Usage,
    pub(crate) routers: Usage,
    pub(crate) ports: Usage,
    pub floating_ips: Usage,
    pub(crate) security_groups: Usage,
    pub(crate) security_group_rules: Usage,
}

impl Cloud {
    /// Lists a collection with query filters, e.g. `[("name", "x"), ("tags", "a,b")]`.
    pub async fn list<T: DeserializeOwned>(
        &self,
        kind: Kind,
        filters: &[(&str, &str)],
    ) -> Result<Vec<T>, CloudError> {
        let (path, key) = kind.collection();
        let query: Vec<String> = filters
            .iter()
            .map(|(k, v)| format!("{k}={}", query_escape(v)))
            .collect();
        let url = if query.is_empty() {
            format!("/{path}")
        } else {
            format!("/{path}?{}", query.join("&"))
        };
        let mut value: Value = self.get(Service::Network, &url).await?;
        serde_json::from_value(value.get_mut(key).map(Value::take).unwrap_or(Value::Null)).map_err(
            |e| CloudError::Decode {
                service: "network",
                call: format!("GET {url}"),
                source: e.into(),
            },
        )
    }

    /// The IPv4 addresses the routers on `subnet_id` have on their external networks: what a
    /// node's traffic to a floating IP of its own cloud comes from once the router sent it
    /// back in (source NAT).
    pub(crate) async fn router_external_addresses(
        &self,
        subnet_id: &str,
    ) -> Result<Vec<std::net::Ipv4Addr>, CloudError> {
        let on_subnet = format!("subnet_id={subnet_id}");
        let ports: Vec<Port> = self.list(Kind::Port, &[("fixed_ips", &on_subnet)]).await?;
        let mut routers: Vec<&str> = ports
            .iter()
            .filter(|p| {
                p.device_owner.starts_with("network:router_interface")
                    || p.device_owner == "network:ha_router_replicated_interface"
            })
            .map(|p| p.device_id.as_str())
            .collect();
        routers.sort_unstable();
        routers.dedup();
        let mut addresses = Vec::new();
        for id in routers {
            let router: Vec<Router> = self.list(Kind::Router, &[("id", id)]).await?;
            addresses.extend(router.iter().flat_map(Router::external_addresses));
        }
        Ok(addresses)
    }

    /// Resources carrying every one of `tags`.
    pub async fn list_tagged<T: DeserializeOwned>(
        &self,
        kind: Kind,
        tags: &[&str],
    ) -> Result<Vec<T>, CloudError> {
        let joined = tags.join(",");
        self.list(kind, &[("tags", &joined)]).await
    }

    /// Creates a named, tagged resource (see [`Cloud::post_tagged`] for how it is tagged).
    /// `attributes` is the body inside the envelope.
    pub async fn create_tagged<T: DeserializeOwned + HasTags>(
        &self,
        kind: Kind,
        name: &str,
        mut attributes: Value,
        tags: &[String],
        tag_on_create: bool,
    ) -> Result<T, CloudError> {
        attributes["name"] = json!(name);
        let (path, _) = kind.collection();
        let post = |attributes: Value| async move {
            let body = json!({ kind.singular(): attributes });
            self.create::<T, _, _>(
                Service::Network,
                &format!("/{path}"),
                &body,
                kind.singular(),
                || async {
                    let mut found: Vec<T> = self.list(kind, &[("name", name)]).await?;
                    Ok(if found.len() == 1 { found.pop() } else { None })
                },
            )
            .await
        };
        self.post_tagged(kind, attributes, tags, tag_on_create, post)
            .await
    }

    /// Creates through `post` and tags the result: in the create where the cloud keeps tags
    /// there (checked on its answer), else in a second call right after. A cloud that refuses
    /// or drops them is not asked again in this session.
    async fn post_tagged<T, F, Fut>(
        &self,
        kind: Kind,
        attributes: Value,
        tags: &[String],
        tag_on_create: bool,
        post: F,
    ) -> Result<T, CloudError>
    where
        T: DeserializeOwned + HasTags,
        F: Fn(Value) -> Fut,
        Fut: std::future::Future<Output = Result<T, CloudError>>,
    {
        use std::sync::atomic::Ordering::Relaxed;
        let in_create =
            tag_on_create && !tags.is_empty() && !self.tags_refused_in_create.load(Relaxed);
        let mut created = match in_create {
            false => post(attributes).await?,
            true => {
                let mut tagged = attributes.clone();
                tagged["tags"] = json!(tags);
                match post(tagged).await {
                    Ok(created) if tags.iter().all(|t| created.tags().contains(t)) => {
                        return Ok(created);
                    }
                    // Accepted, but the tags were dropped: tagged below.
                    Ok(created) => {
                        self.tags_refused_in_create.store(true, Relaxed);
                        created
                    }
                    Err(CloudError::Api {
                        status: 400,
                        message,
                        ..
                    }) if message.contains("'tags' not allowed") => {
                        self.tags_refused_in_create.store(true, Relaxed);
                        post(attributes).await?
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        if !tags.is_empty() {
            // The tags API answers with the tags as stored: no read-back needed.
            *created.tags_mut() = self.set_tags(kind, created.id(), tags).await?;
        }
        Ok(created)
    }

    /// Replaces the resource's tags; returns them as stored.
    pub(crate) async fn set_tags(
        &self,
        kind: Kind,
        id: &str,
        tags: &[String],
    ) -> Result<Vec<String>, CloudError> {
        #[derive(Deserialize)]
        struct Tags {
            tags: Vec<String>,
        }
        let (path, _) = kind.collection();
        let call = format!("/{path}/{id}/tags");
        self.put(Service::Network, &call, &json!({ "tags": tags }))
            .await?
            .json::<Tags>(Service::Network, &format!("PUT {call}"))
            .map(|t| t.tags)
    }

    pub async fn delete_resource(&self, kind: Kind, id: &str) -> Result<(), CloudError> {
        let (path, _) = kind.collection();
        self.delete(Service::Network, &format!("/{path}/{id}"))
            .await
    }

    /// Allocates a floating IP, identified by its `description` (floating IPs have no name);
    /// tagged as [`Cloud::create_tagged`] tags.
    pub async fn create_floating_ip(
        &self,
        floating_network_id: &str,
        description: &str,
        port_id: Option<&str>,
        tags: &[String],
        tag_on_create: bool,
    ) -> Result<FloatingIp, CloudError> {
        let attributes = json!({
            "floating_network_id": floating_network_id,
            "description": description,
            "port_id": port_id,
        });
        let post = |attributes: Value| async move {
            let body = json!({ "floatingip": attributes });
            self.create::<FloatingIp, _, _>(
                Service::Network,
                "/floatingips",
                &body,
                "floatingip",
                || async {
                    let mut found: Vec<FloatingIp> = self
                        .list(Kind::FloatingIp, &[("description", description)])
                        .await?;
                    Ok(if found.len() == 1 { found.pop() } else { None })
                },
            )
            .await
        };
        self.post_tagged(Kind::FloatingIp, attributes, tags, tag_on_create, post)
            .await
    }

    /// The external network called (or with the ID) `name`.
    pub async fn external_network(&self, name: &str) -> Result<Option<Network>, CloudError> {
        let networks: Vec<Network> = self
            .list(Kind::Network, &[("router:external", "true")])
            .await?;
        Ok(networks
            .into_iter()
            .find(|n| n.name == name || n.id == name))
    }

    pub async fn add_router_interface(
        &self,
        router_id: &str,
        subnet_id: &str,
    ) -> Result<(), CloudError> {
        let path = format!("/routers/{router_id}/add_router_interface");
        let body = json!({ "subnet_id": subnet_id });
        match self.put(Service::Network, &path, &body).await {
            Ok(_) => Ok(()),
            // Already attached: the interface exists, which is what was wanted.
            Err(CloudError::Api {
                status: 400,
                message,
                ..
            }) if message.contains("already has a port") || message.contains("overlaps") => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn remove_router_interface(
        &self,
        router_id: &str,
        subnet_id: &str,
    ) -> Result<(), CloudError> {
        let path = format!("/routers/{router_id}/remove_router_interface");
        match self
            .put(Service::Network, &path, &json!({ "subnet_id": subnet_id }))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sets the router's external gateway to `network_id`.
    pub(crate) async fn set_router_gateway(
        &self,
        router_id: &str,
        network_id: &str,
    ) -> Result<(), CloudError> {
        let body = json!({ "router": { "external_gateway_info": { "network_id": network_id } } });
        self.put(Service::Network, &format!("/routers/{router_id}"), &body)
            .await
            .map(|_| ())
    }

    /// Sets the addresses Neutron hands out on the subnet; addresses already given stay.
    pub(crate) async fn set_allocation_pool(
        &self,
        subnet_id: &str,
        start: Ipv4Addr,
        end: Ipv4Addr,
    ) -> Result<(), CloudError> {
        let body = json!({ "subnet": { "allocation_pools": [{ "start": start, "end": end }] } });
        self.put(Service::Network, &format!("/subnets/{subnet_id}"), &body)
            .await
            .map(|_| ())
    }

    /// Lets the port send from `address` as well as its own (an allowed address pair of
    /// exactly that /32), replacing whatever pairs it had.
    pub(crate) async fn allow_address(
        &self,
        port_id: &str,
        address: &str,
    ) -> Result<(), CloudError> {
        let body = json!({ "port": { "allowed_address_pairs": [{ "ip_address": format!("{address}/32") }] } });
        self.put(Service::Network, &format!("/ports/{port_id}"), &body)
            .await
            .map(|_| ())
    }

    /// Clears the router's external gateway (needed before deleting it on some clouds).
    pub async fn clear_router_gateway(&self, router_id: &str) -> Result<(), CloudError> {
        let body = json!({ "router": { "external_gateway_info": {} } });
        self.put(Service::Network, &format!("/routers/{router_id}"), &body)
            .await
            .map(|_| ())
    }

    /// Adds a rule; an identical existing rule (409) counts as added.
    pub async fn add_security_group_rule(
        &self,
        group_id: &str,
        rule: &SecurityGroupRule,
    ) -> Result<(), CloudError> {
        let mut attributes = json!({
            "security_group_id": group_id,
            "direction": rule.direction,
            "ethertype": if rule.ethertype.is_empty() { "IPv4" } else { rule.ethertype.as_str() },
        });
        if let Some(protocol) = &rule.protocol {
            attributes["protocol"] = json!(protocol);
        }
        if let Some(min) = rule.port_range_min {
            attributes["port_range_min"] = json!(min);
        }
        if let Some(max) = rule.port_range_max {
            attributes["port_range_max"] = json!(max);
        }
        if let Some(prefix) = &rule.remote_ip_prefix {
            attributes["remote_ip_prefix"] = json!(prefix);
        }
        if let Some(group) = &rule.remote_group_id {
            attributes["remote_group_id"] = json!(group);
        }
        let body = json!({ "security_group_rule": attributes });
        match self
            .request(
                Service::Network,
                reqwest::Method::POST,
                "/security-group-rules",
                Some(&body),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(CloudError::Api { status: 409, .. }) => Ok(()),
            // The POST may have landed before the connection dropped: the rule then exists,
            // and posting it again answers 409, which counts as added.
            Err(e) if e.is_transient() => {
                match self
                    .request(
                        Service::Network,
                        reqwest::Method::POST,
                        "/security-group-rules",
                        Some(&body),
                    )
                    .await
                {
                    Ok(_) | Err(CloudError::Api { status: 409, .. }) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Removes a rule; one already gone counts as removed.
    pub(crate) async fn delete_security_group_rule(&self, rule_id: &str) -> Result<(), CloudError> {
        self.delete(
            Service::Network,
            &format!("/security-group-rules/{rule_id}"),
        )
        .await
    }

    /// Points a floating IP at a port (or detaches it with `None`).
    pub(crate) async fn attach_floating_ip(
        &self,
        floating_ip_id: &str,
        port_id: Option<&str>,
    ) -> Result<FloatingIp, CloudError> {
        #[derive(Deserialize)]
        struct One {
            floatingip: FloatingIp,
        }
        let body = json!({ "floatingip": { "port_id": port_id } });
        self.put(
            Service::Network,
            &format!("/floatingips/{floating_ip_id}"),
            &body,
        )
        .await?
        .json::<One>(Service::Network, "PUT /floatingips")
        .map(|o| o.floatingip)
    }

    /// The project's network quotas and what is used of them.
    pub async fn network_limits(&self) -> Result<NetworkLimits, CloudError> {
        let project = self.project_id().await.unwrap_or_default();
        let value: Value = self
            .get(Service::Network, &format!("/quotas/{project}/details.json"))
            .await?;
        let quota = &value["quota"];
        let usage = |key: &str| {
            let entry = &quota[key];
            let limit = entry["limit"].as_i64().and_then(|l| u64::try_from(l).ok());
            Usage {
                limit,
                used: entry["used"].as_u64().unwrap_or(0) + entry["reserved"].as_u64().unwrap_or(0),
            }
        };
        Ok(NetworkLimits {
            networks: usage("network"),
            subnets: usage("subnet"),
            routers: usage("router"),
            ports: usage("port"),
            floating_ips: usage("floatingip"),
            security_groups: usage("security_group"),
            security_group_rules: usage("security_group_rule"),
        })
    }
}

/// Resources that have an ID.
pub trait HasId {
    fn id(&self) -> &str;
}

/// Named resources that carry tags.
pub trait HasTags: HasId {
    fn name(&self) -> &str;
    fn tags(&self) -> &[String];
    fn tags_mut(&mut self) -> &mut Vec<String>;
}

macro_rules! has_id {
    ($($t:ty),*) => { $(impl HasId for $t { fn id(&self) -> &str { &self.id } })* };
}
has_id!(
    Network,
    Subnet,
    Router,
    Port,
    SecurityGroup,
    FloatingIp,
    super::compute::Server,
    super::compute::ServerGroup
);

macro_rules! has_tags {
    ($($t:ty),*) => { $(impl HasTags for $t {
        fn name(&self) -> &str { &self.name }
        fn tags(&self) -> &[String] { &self.tags }
        fn tags_mut(&mut self) -> &mut Vec<String> { &mut self.tags }
    })* };
}
has_tags!(Network, Subnet, Router, Port, SecurityGroup);

/// A floating IP is known by its description, having no name.
impl HasTags for FloatingIp {
    fn name(&self) -> &str {
        &self.description
    }
    fn tags(&self) -> &[String] {
        &self.tags
    }
    fn tags_mut(&mut self) -> &mut Vec<String> {
        &mut self.tags
    }
}
