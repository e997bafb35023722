//! `flatstack smoke`: the cluster-level `docker run nginx` + `curl`.

use std::path::Path;
use std::time::Duration;

use super::cloud::runtime;
use super::cluster::ClusterArgs;
use super::up::parse_duration;
use crate::addons::smoke::Smoke;

#[derive(Debug, clap::Args)]
pub(crate) struct SmokeArgs {
    #[command(flatten)]
    pub(crate) cluster: ClusterArgs,
    /// How long the pod and the ingress may take (`90s`, `5m`).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
}

pub(crate) fn run(file: &Path, cloud_flag: Option<&str>, args: &SmokeArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let spec = super::load_spec(file)?;
        let cluster = args.cluster.connect(spec, cloud_flag).await?;
        if !cluster.spec.addons.ingress {
            anyhow::bail!(
                "cluster `{}` has no ingress (`addons.ingress = false`): nothing to fetch the page through",
                cluster.spec.name
            );
        }
        let address = cluster.ingress_address().await?;
        let token = crate::pki::random_chars(10)?;
        let smoke = Smoke::new(&token);
        let say = |line: &str| out!("  {line}");
        let report = crate::apply::smoke::smoke(
            &cluster.client,
            &smoke,
            &format!("http://{address}"),
            args.timeout,
            &say,
        )
        .await
        .map_err(|e| anyhow::anyhow!("smoke test failed: {e}"))?;
        out!(
            "smoke test passed: {} served the page {:.1} s after the start (pod ready after {:.1} s); everything removed",
            report.url,
            report.served_after.as_secs_f64(),
            report.pod_ready_after.as_secs_f64()
        );
        Ok(())
    })
}
