//! `flatstack cloud check`: log in, show where we are, and compare what the cluster file needs
//! (flavors, image, external network, keypair, quotas) with what the cloud has: the engine's
//! preflight, printed.

use std::path::Path;

use super::{InvalidInput, load_spec};
use crate::apply::observe::observe;
use crate::apply::preflight::{self, Inspection};
use crate::cloud::{Cloud, CloudConfig};
use crate::plan::Needs;
use crate::spec::ClusterSpec;

/// Which cloud to use: `--cloud`, else `OS_CLOUD`, else the cluster file's `cloud`.
pub(crate) fn cloud_config(flag: Option<&str>, spec: &ClusterSpec) -> anyhow::Result<CloudConfig> {
    let from_env = std::env::var("OS_CLOUD").ok().filter(|c| !c.is_empty());
    let name = flag.map(str::to_string).or(from_env).or(spec.cloud.clone());
    CloudConfig::resolve(name.as_deref()).map_err(|e| InvalidInput(e.to_string()).into())
}

/// A runtime for the commands that talk to the cloud.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

pub(crate) fn check(file: &Path, cloud_flag: Option<&str>) -> anyhow::Result<()> {
    let spec = load_spec(file)?;
    let config = cloud_config(cloud_flag, &spec)?;
    runtime()?.block_on(async {
        let cloud = Cloud::connect(config).await?;
        print_location(&cloud).await;
        let observation = observe(&cloud, &spec).await?;
        let mut spec = spec;
        spec.control_plane.api_endpoint = observation.api_endpoint(&spec).0;
        let (needs, _) = Needs::of(&spec, &observation.facts.flavors);
        let quotas = preflight::quotas(&cloud, &needs).await?;
        let inspection = preflight::inspect(&spec, &observation, quotas);
        print_inspection(&inspection);
        let problems = inspection.problems();
        if problems.is_empty() {
            out!("cloud check passed");
            return Ok(());
        }
        anyhow::bail!("cloud check failed; {}", problems.join("; "))
    })
}

async fn print_location(cloud: &Cloud) {
    let config = cloud.config();
    out!("cloud      {}", config.name);
    out!("identity   {}", config.auth_url);
    out!(
        "region     {}   interface {}",
        config.region.as_deref().unwrap_or("(any)"),
        config.interface
    );
    out!(
        "project    {}",
        cloud.project_id().await.unwrap_or_default()
    );
    for entry in cloud.catalog().await {
        out!("endpoint   {:<14} {}", entry.service_type, entry.url);
    }
    out!();
}

fn print_inspection(inspection: &Inspection) {
    out!("{:<32} {:<8} detail", "check", "status");
    for check in &inspection.checks {
        out!(
            "{:<32} {:<8} {}",
            check.what,
            if check.ok { "ok" } else { "MISSING" },
            check.detail
        );
    }
    out!();
    out!(
        "{:<22} {:>8} {:>8} {:>8}  status",
        "quota",
        "need",
        "used",
        "limit"
    );
    for (name, need, usage) in &inspection.quotas {
        let enough = usage.left().is_none_or(|left| left >= *need);
        out!(
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
    out!(
        "\nthe cluster would use {} vCPUs: {} SU per hour on Jetstream2",
        inspection.needs.cores,
        inspection.needs.vcpu_hours_per_hour()
    );
}
