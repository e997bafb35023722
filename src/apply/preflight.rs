//! The preflight: what the cluster file needs (flavors, image, external network, keypair,
//! quotas) against what an observation found, before anything is created. `cloud check`
//! prints it; `up` stops on any problem.

use crate::cloud::Cloud;
use crate::cloud::CloudError;
use crate::cloud::compute::Usage;
use crate::cloud::image::Image;
use crate::plan::Needs;
use crate::spec::ClusterSpec;

use super::observe::Observation;

/// One line of the report.
pub(crate) struct Check {
    pub(crate) what: String,
    pub(crate) ok: bool,
    pub(crate) detail: String,
}

/// What the cloud has against what the cluster needs.
pub(crate) struct Inspection {
    pub(crate) checks: Vec<Check>,
    pub(crate) quotas: Vec<(&'static str, u64, Usage)>,
    pub(crate) needs: Needs,
}

impl Inspection {
    /// Everything that would stop `up`, one phrase each.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let missing: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.what.as_str())
            .collect();
        if !missing.is_empty() {
            problems.push(format!("missing: {}", missing.join(", ")));
        }
        problems.extend(quota_shortfall(&self.quotas));
        problems
    }
}

/// `quota too small: ...` naming every quota with less left than needed, if any has.
pub(crate) fn quota_shortfall(quotas: &[(&'static str, u64, Usage)]) -> Option<String> {
    let short: Vec<String> = quotas
        .iter()
        .filter(|(_, need, usage)| usage.left().is_some_and(|left| left < *need))
        .map(|(name, need, usage)| {
            format!("{name} (need {need}, {} left)", usage.left().unwrap_or(0))
        })
        .collect();
    (!short.is_empty()).then(|| format!("quota too small: {}", short.join(", ")))
}

/// The image servers boot from: the newest release of the cluster's channel when images say
/// theirs (as `image ensure` records it), on the architecture nodes run (or unstated), newest
/// upload last.
pub(crate) fn choose_image<'a>(spec: &ClusterSpec, images: &'a [Image]) -> Option<&'a Image> {
    let channel = spec.flatcar.channel.as_str();
    let usable: Vec<&Image> = images
        .iter()
        .filter(|i| i.status == "active")
        .filter(|i| i.architecture.as_deref().is_none_or(|a| a == "x86_64"))
        .collect();
    let of_channel: Vec<&Image> = usable
        .iter()
        .copied()
        .filter(|i| i.properties.get("flatcar_channel").and_then(|c| c.as_str()) == Some(channel))
        .collect();
    let candidates = if spec.flatcar.image.is_none() && !of_channel.is_empty() {
        of_channel
    } else {
        usable
    };
    candidates.into_iter().max_by(|a, b| {
        crate::image::version_key(a.os_version.as_deref())
            .cmp(&crate::image::version_key(b.os_version.as_deref()))
            .then_with(|| a.created_at.cmp(&b.created_at))
    })
}

/// Compares what `observation` found with what `spec` needs; `quotas` are the project's
/// limits when the whole cluster is to be made (see [`quotas`]).
pub(crate) fn inspect(
    spec: &ClusterSpec,
    observation: &Observation,
    quotas: Vec<(&'static str, u64, Usage)>,
) -> Inspection {
    let mut checks = Vec::new();
    let flavors = &observation.facts.flavors;
    let mut flavor_names: Vec<&String> = std::iter::once(&spec.control_plane.flavor)
        .chain(spec.worker_pools.iter().map(|p| &p.flavor))
        .collect();
    flavor_names.sort();
    flavor_names.dedup();
    for name in flavor_names {
        let found = flavors.iter().find(|f| &f.name == name || &f.id == name);
        checks.push(Check {
            what: format!("flavor {name}"),
            ok: found.is_some(),
            detail: match found {
                Some(f) => format!("{} vCPU, {} MiB RAM, {} GB disk", f.vcpus, f.ram, f.disk),
                None => format!(
                    "not found; this cloud has {}",
                    flavors
                        .iter()
                        .map(|f| f.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
        });
    }
    let what = match (&spec.flatcar.image, &spec.flatcar.version) {
        (Some(name), _) => format!("image {name}"),
        (None, Some(v)) => format!("Flatcar {v} image"),
        (None, None) => format!("Flatcar {} image", spec.flatcar.channel.as_str()),
    };
    let active = choose_image(spec, &observation.images);
    checks.push(Check {
        what,
        ok: active.is_some(),
        detail: match active {
            Some(image) => format!("{} ({})", image.name.as_deref().unwrap_or(""), image.id),
            None => "none active; run `flatstack image ensure` to upload a verified one, or set `flatcar.image`".into(),
        },
    });
    let external = &observation.facts.external_network;
    checks.push(Check {
        what: format!("external network {}", spec.network.external_network),
        ok: external.is_some(),
        detail: match external {
            Some(n) => n.id.clone(),
            None => "not found among the external networks".into(),
        },
    });
    if let (Some(keypair), Some(keypairs)) = (&spec.access.keypair, &observation.keypairs) {
        let found = keypairs.iter().any(|k| &k.name == keypair);
        checks.push(Check {
            what: format!("keypair {keypair}"),
            ok: found,
            detail: if found {
                "present".into()
            } else {
                "not found in this project".into()
            },
        });
    }
    // Missing flavors are reported above; the other servers still count against quotas.
    let (needs, _) = Needs::of(spec, flavors);
    Inspection {
        checks,
        quotas,
        needs,
    }
}

/// The project's quotas against what the whole cluster needs, read concurrently.
pub(crate) async fn quotas(
    cloud: &Cloud,
    needs: &Needs,
) -> Result<Vec<(&'static str, u64, Usage)>, CloudError> {
    let (compute, network, volume, balancing) = tokio::try_join!(
        cloud.compute_limits(),
        cloud.network_limits(),
        async {
            match needs.volumes {
                0 => Ok(None),
                _ => cloud.volume_limits().await.map(Some),
            }
        },
        async {
            match needs.load_balancers {
                0 => Ok(None),
                _ => cloud.load_balancer_limits().await,
            }
        },
    )?;
    let mut quotas = vec![
        ("instances", needs.instances, compute.instances),
        ("cores", needs.cores, compute.cores),
        ("RAM (MiB)", needs.ram_mib, compute.ram_mib),
        ("server groups", needs.server_groups, compute.server_groups),
        ("floating IPs", needs.floating_ips, network.floating_ips),
        ("networks", needs.networks, network.networks),
        ("subnets", needs.subnets, network.subnets),
        ("routers", needs.routers, network.routers),
        ("ports", needs.ports, network.ports),
        (
            "security groups",
            needs.security_groups,
            network.security_groups,
        ),
        (
            "security group rules",
            needs.security_group_rules,
            network.security_group_rules,
        ),
    ];
    if let Some(volume) = volume {
        quotas.push(("volumes", needs.volumes, volume.volumes));
        quotas.push(("volume GB", needs.volume_gb, volume.gigabytes));
    }
    if let Some(balancing) = balancing {
        quotas.extend([
            (
                "load balancers",
                needs.load_balancers,
                balancing.load_balancers,
            ),
            ("listeners", needs.listeners, balancing.listeners),
            ("pools", needs.pools, balancing.pools),
            (
                "health monitors",
                needs.health_monitors,
                balancing.health_monitors,
            ),
            ("pool members", needs.members, balancing.members),
        ]);
    }
    Ok(quotas)
}
