//! Observing the cloud: everything the planner and the preflight read, in one concurrent
//! round of reads (two on a reused network): the cluster's resources by tag, those of its
//! exact names that lack the tag, router interfaces, the external network, flavors, images,
//! the keypair, and whether Neutron takes tags in a create.

use std::collections::BTreeMap;

use crate::cloud::compute::{Flavor, Keypair, Server};
use crate::cloud::image::Image;
use crate::cloud::load_balancer::is_service_floating_ip;
use crate::cloud::network::{
    FloatingIp, HasTags, Kind, Network, Port, Router, SecurityGroup, Subnet,
};
use crate::cloud::volume::Volume;
use crate::cloud::{Cloud, CloudError};
use crate::plan::planner::CloudFacts;
use crate::plan::resources::{Names, Observed, Untagged, cluster_tag};
use crate::plan::roster::{ServerFacts, roster};
use crate::spec::{ApiEndpointKind, ClusterSpec, NetworkMode};

use super::ApplyError;

/// What one observation found.
#[derive(Debug, Clone)]
pub(crate) struct Observation {
    pub(crate) observed: Observed,
    pub(crate) facts: CloudFacts,
    /// The images the file's image choice looked at, and the keypairs when the file names one.
    pub(crate) images: Vec<Image>,
    pub(crate) keypairs: Option<Vec<Keypair>>,
}

/// Device owners of a router's interface ports (legacy, distributed and HA routers).
const ROUTER_INTERFACE_OWNERS: [&str; 3] = [
    "network:router_interface",
    "network:router_interface_distributed",
    "network:ha_router_replicated_interface",
];

impl Observation {
    /// What holds the cluster's API address, and why (see `plan::endpoint::choose`).
    pub(crate) fn api_endpoint(&self, spec: &ClusterSpec) -> (ApiEndpointKind, &'static str) {
        crate::plan::endpoint::choose(
            spec,
            &self.observed,
            self.facts.load_balancer_providers.as_deref(),
        )
    }
}

/// Reads everything `plan` and `up` need, concurrently.
pub(crate) async fn observe(cloud: &Cloud, spec: &ClusterSpec) -> Result<Observation, ApplyError> {
    let ((mut observed, flavors), externals, images, keypairs, providers) = tokio::try_join!(
        cluster_resources(cloud, spec),
        cloud.list::<Network>(Kind::Network, &[("router:external", "true")]),
        images_for(cloud, spec),
        async {
            match &spec.access.keypair {
                Some(_) => cloud.keypairs().await.map(Some),
                None => Ok(None),
            }
        },
        async {
            match spec.control_plane.highly_available() {
                true => cloud.load_balancer_providers().await,
                false => Ok(None),
            }
        },
    )?;
    let wanted = spec.network.external_network.as_str();
    let mut external_network = externals
        .into_iter()
        .find(|n| n.name == wanted || n.id == wanted);
    // Not among the external networks listed: asked for by name and ID, in case the listing
    // left it out; it must still be external.
    if external_network.is_none() {
        let (named, with_id) = ([("name", wanted)], [("id", wanted)]);
        let (by_name, by_id) = tokio::try_join!(
            cloud.list::<Network>(Kind::Network, &named),
            cloud.list::<Network>(Kind::Network, &with_id),
        )?;
        external_network = by_name.into_iter().chain(by_id).find(|n| n.external);
    }
    let reused = match &spec.network.mode {
        NetworkMode::Create => None,
        NetworkMode::Reuse {
            network,
            subnet,
            router,
        } => {
            let external_id = external_network
                .as_ref()
                .map(|n| n.id.as_str())
                .unwrap_or_default();
            Some(
                reused_network(
                    cloud,
                    network,
                    subnet.as_deref(),
                    router.as_deref(),
                    external_id,
                )
                .await?,
            )
        }
    };
    let image_id = super::preflight::choose_image(spec, &images).map(|i| i.id.clone());
    // The API's running load balancer, listeners to members, to keep it as the file asks.
    for balancer in observed
        .api_load_balancers
        .iter_mut()
        .filter(|lb| lb.provisioning_status == "ACTIVE")
    {
        balancer.shape = Some(cloud.load_balancer_shape(&balancer.id).await?);
    }
    // A running load balancer's listeners admit the routers' external addresses.
    let router_addresses = match observed
        .api_load_balancers
        .iter()
        .any(|lb| lb.shape.is_some())
    {
        false => Vec::new(),
        true => {
            let names = Names::of(&spec.name);
            let subnet = reused.as_ref().map(|(_, s)| s.id.clone()).or_else(|| {
                observed
                    .subnets
                    .iter()
                    .find(|s| s.name == names.subnet)
                    .map(|s| s.id.clone())
            });
            match subnet {
                Some(subnet) => cloud.router_external_addresses(&subnet).await?,
                None => Vec::new(),
            }
        }
    };
    Ok(Observation {
        observed,
        facts: CloudFacts {
            external_network,
            flavors,
            image_id,
            reused,
            load_balancer_providers: providers,
            router_addresses,
        },
        images,
        keypairs,
    })
}

/// Everything the cluster owns, concurrently: by tag; the shared resources, the nodes' ports
/// and the API's floating IP also by their exact names when untagged (to adopt); server
/// groups (which cannot be tagged) by name; the router interfaces of the project; the boot
/// volumes of volume-booted servers; and what the cloud controller made by its own naming.
/// With the cloud's flavors, which tell whether a server runs what its pool asks for.
pub(crate) async fn cluster_resources(
    cloud: &Cloud,
    spec: &ClusterSpec,
) -> Result<(Observed, Vec<Flavor>), CloudError> {
    let cluster = spec.name.as_str();
    let tag = cluster_tag(cluster);
    let tags = [tag.as_str()];
    let names = Names::of(cluster);
    let owners: Vec<(&str, &str)> = ROUTER_INTERFACE_OWNERS
        .iter()
        .map(|o| ("device_owner", *o))
        .collect();
    let (
        (networks, subnets, routers, security_groups, ports, servers, groups),
        ((load_balancers, api_load_balancers), all_floating_ips, router_interfaces, flavors),
    ) = tokio::try_join!(
        async {
            tokio::try_join!(
                cloud.list_tagged(Kind::Network, &tags),
                cloud.list_tagged(Kind::Subnet, &tags),
                cloud.list_tagged::<Router>(Kind::Router, &tags),
                cloud.list_tagged(Kind::SecurityGroup, &tags),
                cloud.list_tagged(Kind::Port, &tags),
                cloud.servers_tagged(&tags),
                cloud.server_groups(),
            )
        },
        async {
            tokio::try_join!(
                cloud.cluster_load_balancers(cluster, &names.api_port),
                cloud.list::<FloatingIp>(Kind::FloatingIp, &[]),
                cloud.list::<Port>(Kind::Port, &owners),
                cloud.flavors(),
            )
        },
    )?;
    let servers: Vec<Server> = servers;
    let boot_volumes = match servers.iter().any(Server::boots_from_volume) {
        true => boot_volume_sizes(&cloud.volumes().await?),
        false => BTreeMap::new(),
    };
    // The nodes the plan will have, kept or new: their ports are looked up by name.
    let node_names: Vec<String> = {
        let facts = ServerFacts {
            servers: &servers,
            flavors: &flavors,
            boot_volumes: &boot_volumes,
            replace_below: crate::plan::versions::replace_below(&servers, spec.kubernetes.version),
        };
        roster(spec, facts)
            .nodes
            .into_iter()
            .map(|n| n.name)
            .collect()
    };
    // The cluster's names that no tagged resource has: looked up by name, to adopt what a run
    // stopped between a create and its tag left (a converged cluster needs no look-up).
    // With 3 or 5 control planes the API's endpoint has a port of its own.
    let mut node_refs: Vec<&str> = node_names.iter().map(String::as_str).collect();
    if spec.control_plane.highly_available() {
        node_refs.push(&names.api_port);
    }
    let missing_networks = missing_names(
        networks.iter().map(|n: &Network| n.name.as_str()),
        &[&names.network],
    );
    let missing_subnets = missing_names(
        subnets.iter().map(|n: &Subnet| n.name.as_str()),
        &[&names.subnet],
    );
    let missing_routers = missing_names(
        routers.iter().map(|n: &Router| n.name.as_str()),
        &[&names.router],
    );
    let missing_groups = missing_names(
        security_groups
            .iter()
            .map(|n: &SecurityGroup| n.name.as_str()),
        &[&names.nodes_group, &names.control_plane_group],
    );
    let missing_ports = missing_names(ports.iter().map(|n: &Port| n.name.as_str()), &node_refs);
    let (named_networks, named_subnets, named_routers, named_groups, named_ports) = tokio::try_join!(
        list_named::<Network>(cloud, Kind::Network, &missing_networks),
        list_named::<Subnet>(cloud, Kind::Subnet, &missing_subnets),
        list_named::<Router>(cloud, Kind::Router, &missing_routers),
        list_named::<SecurityGroup>(cloud, Kind::SecurityGroup, &missing_groups),
        list_named::<Port>(cloud, Kind::Port, &missing_ports),
    )?;
    let (floating_ips, all_floating_ips): (Vec<FloatingIp>, Vec<FloatingIp>) = all_floating_ips
        .into_iter()
        .partition(|f| f.tags.contains(&tag));
    let mut observed = Observed {
        networks,
        subnets,
        routers,
        security_groups,
        ports,
        floating_ips,
        servers,
        server_groups: groups
            .into_iter()
            .filter(|g| g.name == names.server_group)
            .collect(),
        load_balancers,
        api_load_balancers,
        service_floating_ips: Vec::new(),
        router_interfaces,
        boot_volumes,
        adopt: Vec::new(),
    };
    // What a run stopped between a create and its tag left: the cluster's by its exact name.
    adopt(
        &mut observed.adopt,
        &mut observed.networks,
        named_networks,
        Kind::Network,
    );
    adopt(
        &mut observed.adopt,
        &mut observed.subnets,
        named_subnets,
        Kind::Subnet,
    );
    adopt(
        &mut observed.adopt,
        &mut observed.routers,
        named_routers,
        Kind::Router,
    );
    adopt(
        &mut observed.adopt,
        &mut observed.security_groups,
        named_groups,
        Kind::SecurityGroup,
    );
    adopt(
        &mut observed.adopt,
        &mut observed.ports,
        named_ports,
        Kind::Port,
    );
    for floating in all_floating_ips {
        if is_service_floating_ip(&floating.description, cluster) {
            observed.service_floating_ips.push(floating);
        } else if floating.description == names.api_address
            && !observed.floating_ips.iter().any(|f| f.id == floating.id)
            && !floating.tags.iter().any(|t| t.starts_with(TAG_PREFIX))
        {
            observed.adopt.push(Untagged {
                kind: Kind::FloatingIp,
                id: floating.id.clone(),
                name: floating.floating_ip_address.clone(),
            });
            observed.floating_ips.push(floating);
        }
    }
    // The cloud lists in no promised order: sorted, two observations of the same cloud are
    // equal, and so are the plans made from them.
    observed
        .networks
        .sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    observed
        .subnets
        .sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    observed
        .routers
        .sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    observed
        .ports
        .sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    observed
        .servers
        .sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    observed.server_groups.sort_by(|a, b| a.id.cmp(&b.id));
    observed.floating_ips.sort_by(|a, b| a.id.cmp(&b.id));
    observed.router_interfaces.sort_by(|a, b| a.id.cmp(&b.id));
    observed
        .security_groups
        .sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    for group in &mut observed.security_groups {
        group.security_group_rules.sort_by(|a, b| a.id.cmp(&b.id));
    }
    Ok((observed, flavors))
}

/// The size of each server's boot volume, by server ID: the bootable volume attached to it
/// (the first by device name, should a server have several).
fn boot_volume_sizes(volumes: &[Volume]) -> BTreeMap<String, u64> {
    let mut boot: BTreeMap<String, (&str, u64)> = BTreeMap::new();
    for volume in volumes.iter().filter(|v| v.bootable == "true") {
        for attachment in &volume.attachments {
            let entry = boot
                .entry(attachment.server_id.clone())
                .or_insert((&attachment.device, volume.size));
            if attachment.device.as_str() < entry.0 {
                *entry = (&attachment.device, volume.size);
            }
        }
    }
    boot.into_iter().map(|(id, (_, size))| (id, size)).collect()
}

/// The names of `wanted` that `found` lacks.
fn missing_names<'a>(found: impl Iterator<Item = &'a str>, wanted: &[&str]) -> Vec<String> {
    let found: Vec<&str> = found.collect();
    wanted
        .iter()
        .filter(|w| !found.contains(w))
        .map(|w| w.to_string())
        .collect()
}

/// Resources with any of `names`, a few dozen names to a request (Neutron takes a repeated
/// `name` filter as "any of"); no request for no names.
async fn list_named<T: serde::de::DeserializeOwned>(
    cloud: &Cloud,
    kind: Kind,
    names: &[String],
) -> Result<Vec<T>, CloudError> {
    let mut found = Vec::new();
    for chunk in names.chunks(60) {
        let filters: Vec<(&str, &str)> = chunk.iter().map(|n| ("name", n.as_str())).collect();
        found.extend(cloud.list::<T>(kind, &filters).await?);
    }
    Ok(found)
}

/// The prefix of every flatstack cluster tag.
const TAG_PREFIX: &str = "flatstack:cluster=";

/// Moves the resources of `named` that carry no flatstack tag into `found`, to be tagged.
/// One tagged with another cluster's tag is never taken.
fn adopt<T: HasTags>(adopt: &mut Vec<Untagged>, found: &mut Vec<T>, named: Vec<T>, kind: Kind) {
    for resource in named {
        if resource.tags().iter().any(|t| t.starts_with(TAG_PREFIX)) {
            continue;
        }
        adopt.push(Untagged {
            kind,
            id: resource.id().to_string(),
            name: resource.name().to_string(),
        });
        found.push(resource);
    }
}

/// The images the file's choice looks at: by name, or Flatcar's of the version or channel.
async fn images_for(cloud: &Cloud, spec: &ClusterSpec) -> Result<Vec<Image>, CloudError> {
    match &spec.flatcar.image {
        Some(name) => cloud.images(&[("name", name)]).await,
        None => {
            let mut filters = vec![("os_distro", "flatcar")];
            if let Some(version) = &spec.flatcar.version {
                filters.push(("os_version", version));
            }
            cloud.images(&filters).await
        }
    }
}

/// The existing network and subnet a cluster reuses. Floating IPs reach its nodes only through
/// a router with an interface on the subnet and a gateway on the external network; flatstack
/// changes neither: it checks them, before anything is created.
async fn reused_network(
    cloud: &Cloud,
    network: &str,
    subnet: Option<&str>,
    router: Option<&str>,
    external_id: &str,
) -> Result<(Network, Subnet), ApplyError> {
    let (named, with_id) = ([("name", network)], [("id", network)]);
    let (by_name, by_id) = tokio::try_join!(
        cloud.list::<Network>(Kind::Network, &named),
        cloud.list::<Network>(Kind::Network, &with_id),
    )?;
    let found =
        by_name.into_iter().chain(by_id).next().ok_or_else(|| {
            ApplyError::Missing(format!("existing network `{network}` not found"))
        })?;
    let on_network = [("network_id", found.id.as_str())];
    let (subnets, ports, routers) = tokio::try_join!(
        cloud.list::<Subnet>(Kind::Subnet, &on_network),
        cloud.list::<Port>(Kind::Port, &on_network),
        async {
            match router {
                Some(wanted) => {
                    let (named, with_id) = ([("name", wanted)], [("id", wanted)]);
                    let (named, by_id) = tokio::try_join!(
                        cloud.list::<Router>(Kind::Router, &named),
                        cloud.list::<Router>(Kind::Router, &with_id),
                    )?;
                    Ok(named
                        .into_iter()
                        .chain(by_id)
                        .next()
                        .map(Some)
                        .unwrap_or(None))
                }
                None => Ok(None),
            }
        },
    )?;
    let subnet = match subnet {
        Some(wanted) => subnets
            .into_iter()
            .find(|s| s.name == wanted || s.id == wanted),
        None => subnets.into_iter().next(),
    }
    .ok_or_else(|| ApplyError::Missing(format!("network `{}` has no usable subnet", found.name)))?;
    let on_subnet: Vec<&str> = ports
        .iter()
        .filter(|p| ROUTER_INTERFACE_OWNERS.contains(&p.device_owner.as_str()))
        .filter(|p| p.fixed_ips.iter().any(|ip| ip.subnet_id == subnet.id))
        .map(|p| p.device_id.as_str())
        .collect();
    let Some(wanted) = router else {
        if on_subnet.is_empty() {
            return Err(ApplyError::Missing(format!(
                "subnet `{}` of network `{}` has no router, so a floating IP cannot reach the nodes\n  hint: add the subnet to a router with a gateway on the external network, and name it as `network.existing_router`",
                subnet.name, found.name
            )));
        }
        return Ok((found, subnet));
    };
    let router = routers
        .ok_or_else(|| ApplyError::Missing(format!("existing router `{wanted}` not found")))?;
    if !on_subnet.contains(&router.id.as_str()) {
        return Err(ApplyError::Missing(format!(
            "router `{wanted}` has no interface on subnet `{}`; flatstack leaves routers it did not make as they are\n  hint: `openstack router add subnet {wanted} {}`",
            subnet.name, subnet.id
        )));
    }
    if router.gateway_network_id() != Some(external_id) {
        return Err(ApplyError::Missing(format!(
            "router `{wanted}` has no gateway on the external network the floating IPs come from\n  hint: `openstack router set --external-gateway <external network> {wanted}`"
        )));
    }
    Ok((found, subnet))
}
