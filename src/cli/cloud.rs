//! `flatstack cloud check`: log in, show where we are, and compare what the cluster file needs
//! (flavors, image, external network, keypair, quotas) with what the cloud has. `up` runs the
//! same inspection as its preflight.

use std::path::Path;

use super::{InvalidInput, load_spec};
use crate::cloud::compute::Usage;
use crate::cloud::{Cloud, CloudConfig};
use crate::plan::Needs;
use crate::spec::ClusterSpec;

/// Which cloud to use: `--cloud`, else `OS_CLOUD`, else the cluster file's `cloud`.
pub fn cloud_config(flag: Option<&str>, spec: &ClusterSpec) -> anyhow::Result<CloudConfig> {
    let from_env = std::env::var("OS_CLOUD").ok().filter(|c| !c.is_empty());
    let name = flag.map(str::to_string).or(from_env).or(spec.cloud.clone());
    CloudConfig::resolve(name.as_deref()).map_err(|e| InvalidInput(e.to_string()).into())
}

/// A runtime for the commands that talk to the cloud.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// One line of the report.
pub struct Check {
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

/// What the cloud has against what the cluster needs.
pub struct Inspection {
    pub checks: Vec<Check>,
    pub quotas: Vec<(&'static str, u64, Usage)>,
    pub needs: Needs,
    /// The Glance image servers boot from, if one was found.
    pub image_id: Option<String>,
}

impl Inspection {
    /// Everything that would stop `up`, one phrase each.
    pub fn problems(&self) -> Vec<String> {
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
        let short: Vec<String> = self
            .quotas
            .iter()
            .filter(|(_, need, usage)| usage.left().is_some_and(|left| left < *need))
            .map(|(name, need, usage)| {
                format!("{name} (need {need}, {} left)", usage.left().unwrap_or(0))
            })
            .collect();
        if !short.is_empty() {
            problems.push(format!("quota too small: {}", short.join(", ")));
        }
        problems
    }
}

pub fn check(file: &Path, cloud_flag: Option<&str>) -> anyhow::Result<()> {
    let spec = load_spec(file)?;
    let config = cloud_config(cloud_flag, &spec)?;
    runtime()?.block_on(async {
        let cloud = Cloud::connect(config).await?;
        print_location(&cloud).await;
        let inspection = inspect(&cloud, &spec, true).await?;
        print_inspection(&inspection);
        let problems = inspection.problems();
        if problems.is_empty() {
            println!("cloud check passed");
            return Ok(());
        }
        anyhow::bail!("cloud check failed; {}", problems.join("; "))
    })
}

async fn print_location(cloud: &Cloud) {
    let config = cloud.config();
    println!("cloud      {}", config.name);
    println!("identity   {}", config.auth_url);
    println!(
        "region     {}   interface {}",
        config.region.as_deref().unwrap_or("(any)"),
        config.interface
    );
    println!(
        "project    {}",
        cloud.project_id().await.unwrap_or_default()
    );
    for entry in cloud.catalog().await {
        println!("endpoint   {:<14} {}", entry.service_type, entry.url);
    }
    println!();
}

/// Compares the cloud with what `spec` needs, touching nothing. With `whole_cluster` false,
/// quotas are not compared (the cluster exists in part and already uses some of them).
pub async fn inspect(
    cloud: &Cloud,
    spec: &ClusterSpec,
    whole_cluster: bool,
) -> anyhow::Result<Inspection> {
    let mut checks = Vec::new();
    let flavors = cloud.flavors().await?;
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

    let (what, images) = match &spec.flatcar.image {
        Some(name) => (
            format!("image {name}"),
            cloud.images(&[("name", name)]).await?,
        ),
        None => {
            let mut filters = vec![("os_distro", "flatcar")];
            if let Some(version) = &spec.flatcar.version {
                filters.push(("os_version", version));
            }
            let label = match &spec.flatcar.version {
                Some(v) => format!("Flatcar {v} image"),
                None => format!("Flatcar {} image", spec.flatcar.channel.as_str()),
            };
            (label, cloud.images(&filters).await?)
        }
    };
    // The newest release wins: of the cluster's channel when images say theirs (as `image
    // ensure` records it), on the architecture nodes run (or unstated), newest upload last.
    let channel = spec.flatcar.channel.as_str();
    let usable: Vec<&crate::cloud::image::Image> = images
        .iter()
        .filter(|i| i.status == "active")
        .filter(|i| i.architecture.as_deref().is_none_or(|a| a == "x86_64"))
        .collect();
    let of_channel: Vec<&crate::cloud::image::Image> = usable
        .iter()
        .copied()
        .filter(|i| i.properties.get("flatcar_channel").and_then(|c| c.as_str()) == Some(channel))
        .collect();
    let candidates = if spec.flatcar.image.is_none() && !of_channel.is_empty() {
        of_channel
    } else {
        usable
    };
    let active = candidates.into_iter().max_by(|a, b| {
        crate::image::version_key(a.os_version.as_deref())
            .cmp(&crate::image::version_key(b.os_version.as_deref()))
            .then_with(|| a.created_at.cmp(&b.created_at))
    });
    checks.push(Check {
        what,
        ok: active.is_some(),
        detail: match active {
            Some(image) => format!("{} ({})", image.name.as_deref().unwrap_or(""), image.id),
            None => "none active; run `flatstack image ensure` to upload a verified one, or set `flatcar.image`".into(),
        },
    });

    let external = cloud
        .external_network(&spec.network.external_network)
        .await?;
    checks.push(Check {
        what: format!("external network {}", spec.network.external_network),
        ok: external.is_some(),
        detail: match &external {
            Some(n) => n.id.clone(),
            None => "not found among the external networks".into(),
        },
    });
    if let Some(keypair) = &spec.access.keypair {
        let found = cloud
            .keypairs()
            .await?
            .into_iter()
            .any(|k| &k.name == keypair);
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
    let (needs, _) = Needs::of(spec, &flavors);
    let mut quotas = Vec::new();
    if whole_cluster {
        let compute = cloud.compute_limits().await?;
        let network = cloud.network_limits().await?;
        quotas = vec![
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
        if needs.volumes > 0 {
            let volume = cloud.volume_limits().await?;
            quotas.push(("volumes", needs.volumes, volume.volumes));
            quotas.push(("volume GB", needs.volume_gb, volume.gigabytes));
        }
    }
    Ok(Inspection {
        checks,
        quotas,
        needs,
        image_id: active.map(|i| i.id.clone()),
    })
}

fn print_inspection(inspection: &Inspection) {
    println!("{:<32} {:<8} detail", "check", "status");
    for check in &inspection.checks {
        println!(
            "{:<32} {:<8} {}",
            check.what,
            if check.ok { "ok" } else { "MISSING" },
            check.detail
        );
    }
    println!();
    println!(
        "{:<22} {:>8} {:>8} {:>8}  status",
        "quota", "need", "used", "limit"
    );
    for (name, need, usage) in &inspection.quotas {
        let enough = usage.left().is_none_or(|left| left >= *need);
        println!(
            "{:<22} {:>8} {:>8} {:>8}  {}",
            name,
            need,
            usage.used,
            usage
                .limit
                .map_or_else(|| "none".to_string(), |l| l.to_string()),
            if enough { "ok" } else { "SHORT" }
        );
    }
    println!(
        "\nthe cluster would use {} vCPUs: {} SU per hour on Jetstream2",
        inspection.needs.cores,
        inspection.needs.vcpu_hours_per_hour()
    );
}
