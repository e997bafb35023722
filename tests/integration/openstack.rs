//! The cloud module against a real OpenStack on loopback (scripts/local-openstack.sh), with
//! the `openstack` CLI as an independent witness of what exists.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use flatstack::cloud::compute::ServerRequest;
use flatstack::cloud::network::{
    FloatingIp, Kind, Network, Port, Router, SecurityGroup, SecurityGroupRule, Subnet,
};
use flatstack::cloud::{Cloud, CloudConfig, CloudError};
use serde_json::{Value, json};

use crate::support::chain;

/// Where scripts/local-openstack.sh keeps the cloud.
fn openstack_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("FLATSTACK_OPENSTACK_DIR")
            .unwrap_or_else(|_| "/var/tmp/flatstack-openstack".into()),
    )
}

pub(crate) fn clouds_yaml() -> PathBuf {
    let file = openstack_dir().join("clouds.yaml");
    assert!(
        file.is_file(),
        "no local OpenStack ({} missing): run `scripts/local-openstack.sh up` (scripts/test.sh does)",
        file.display()
    );
    file
}

async fn connect(entry: &str) -> Cloud {
    let config = CloudConfig::from_clouds_yaml(&clouds_yaml(), entry).expect("config");
    Cloud::connect(config).await.expect("login")
}

/// The `openstack` CLI of the local cloud, as `entry`, returning parsed JSON output.
pub(crate) fn cli(entry: &str, args: &[&str]) -> Value {
    let output = cli_raw(entry, args);
    assert!(
        output.status.success(),
        "openstack {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    if output.stdout.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("openstack {args:?}: {e}"))
}

pub(crate) fn cli_raw(entry: &str, args: &[&str]) -> std::process::Output {
    Command::new(openstack_dir().join("venv/bin/openstack"))
        .env("OS_CLIENT_CONFIG_FILE", clouds_yaml())
        .env("OS_CLOUD", entry)
        .args(args)
        .output()
        .expect("run the openstack CLI")
}

/// A name no other test (or earlier run) uses.
pub(crate) fn unique(prefix: &str) -> String {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).expect("random");
    format!("{prefix}-{}", hex::encode(bytes))
}

/// The name of a small raw image servers can boot from (the fake driver never reads it),
/// uploaded before the name is first handed out: a test must not depend on another test
/// having run first.
pub(crate) fn test_image_name() -> &'static str {
    test_image();
    TEST_IMAGE
}

const TEST_IMAGE: &str = "flatstack-test-image";

/// The ID of [`test_image_name`], uploading it the first time (once per test process, so
/// tests running side by side do not upload two images of one name).
pub(crate) fn test_image() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(find_or_upload_test_image).clone()
}

fn find_or_upload_test_image() -> String {
    const NAME: &str = TEST_IMAGE;
    let found = cli(
        "local-demo",
        &["image", "list", "--name", NAME, "-f", "json"],
    );
    if let Some(id) = found
        .as_array()
        .and_then(|a| a.first())
        .and_then(|i| i["ID"].as_str())
    {
        return id.to_string();
    }
    let file = tempfile::NamedTempFile::new().expect("file");
    std::fs::write(file.path(), vec![0u8; 4096]).expect("write");
    let path = file.path().to_str().expect("path");
    let created = cli(
        "local-demo",
        &[
            "image",
            "create",
            "--disk-format",
            "raw",
            "--container-format",
            "bare",
            "--file",
            path,
            NAME,
            "-f",
            "json",
        ],
    );
    created["id"].as_str().expect("id").to_string()
}

/// A network, subnet and port for one test server, and the m3.tiny flavor.
pub(crate) struct ServerNetwork {
    pub network: Network,
    pub port: Port,
    pub flavor_id: String,
}

impl ServerNetwork {
    pub(crate) async fn create(cloud: &Cloud, name: &str, tag: &str, cidr: &str) -> ServerNetwork {
        let tags = [tag.to_string()];
        let network: Network = cloud
            .create_tagged(
                Kind::Network,
                &format!("{name}-net"),
                json!({}),
                &tags,
                false,
            )
            .await
            .expect("network");
        let _subnet: Subnet = cloud
            .create_tagged(
                Kind::Subnet,
                &format!("{name}-subnet"),
                json!({ "network_id": network.id, "cidr": cidr, "ip_version": 4 }),
                &tags,
                false,
            )
            .await
            .expect("subnet");
        let port: Port = cloud
            .create_tagged(
                Kind::Port,
                &format!("{name}-port"),
                json!({ "network_id": network.id }),
                &tags,
                false,
            )
            .await
            .expect("port");
        let flavor = cloud
            .flavors()
            .await
            .expect("flavors")
            .into_iter()
            .find(|f| f.name == "m3.tiny")
            .expect("m3.tiny");
        ServerNetwork {
            network,
            port,
            flavor_id: flavor.id,
        }
    }

    /// Deletes the server (waiting until it is gone), then the port and the network.
    pub(crate) async fn remove(self, cloud: &Cloud, server_id: &str) {
        cloud.delete_server(server_id).await.expect("delete server");
        cloud
            .wait_server_deleted(server_id, Duration::from_secs(180))
            .await
            .expect("server gone");
        cloud
            .delete_resource(Kind::Port, &self.port.id)
            .await
            .expect("port");
        cloud
            .delete_resource(Kind::Network, &self.network.id)
            .await
            .expect("network");
    }
}

#[tokio::test]
async fn password_login_sees_the_catalog() {
    let cloud = connect("local-demo").await;
    let kinds: Vec<String> = cloud
        .catalog()
        .await
        .into_iter()
        .map(|e| e.service_type)
        .collect();
    for wanted in ["compute", "network", "image", "block-storage", "identity"] {
        assert!(
            kinds.iter().any(|k| k == wanted),
            "{wanted} missing from {kinds:?}"
        );
    }
    let project = cloud.project_id().await.expect("scoped");
    let witness = cli("local-admin", &["project", "show", "demo", "-f", "json"]);
    assert_eq!(witness["id"], project.as_str());
    let flavors = cloud.flavors().await.expect("flavors");
    let small = flavors
        .iter()
        .find(|f| f.name == "m3.small")
        .expect("m3.small");
    assert_eq!((small.vcpus, small.ram, small.disk), (2, 6144, 20));
}

#[tokio::test]
async fn application_credential_login() {
    let name = unique("appcred");
    let secret = unique("secret");
    let created = cli(
        "local-demo",
        &[
            "application",
            "credential",
            "create",
            "--role",
            "member",
            "--secret",
            &secret,
            &name,
            "-f",
            "json",
        ],
    );
    let id = created["ID"].as_str().expect("ID").to_string();
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("clouds.yaml");
    std::fs::write(
        &file,
        format!(
            "clouds:\n  appcred:\n    auth_type: v3applicationcredential\n    auth:\n      auth_url: http://127.0.0.1:5000/v3\n      application_credential_id: {id}\n      application_credential_secret: {secret}\n    region_name: RegionOne\n    interface: public\n"
        ),
    )
    .expect("write");
    let config = CloudConfig::from_clouds_yaml(&file, "appcred").expect("config");
    let cloud = Cloud::connect(config)
        .await
        .expect("application credential login");
    assert!(
        cloud
            .flavors()
            .await
            .expect("flavors")
            .iter()
            .any(|f| f.name == "m3.tiny")
    );
    // The same credential by name, with the user that owns it.
    std::fs::write(
        &file,
        format!(
            "clouds:\n  appcred:\n    auth_type: v3applicationcredential\n    auth:\n      auth_url: http://127.0.0.1:5000/v3\n      application_credential_name: {name}\n      username: demo\n      user_domain_name: Default\n      application_credential_secret: {secret}\n    region_name: RegionOne\n"
        ),
    )
    .expect("write");
    let config = CloudConfig::from_clouds_yaml(&file, "appcred").expect("config");
    let by_name = Cloud::connect(config)
        .await
        .expect("login by credential name");
    assert_eq!(by_name.project_id().await, cloud.project_id().await);
    cli("local-demo", &["application", "credential", "delete", &id]);
    // The deleted credential no longer logs in, and says so.
    let config = CloudConfig::from_clouds_yaml(&file, "appcred").expect("config");
    let error = Cloud::connect(config).await.err().expect("refused");
    assert!(matches!(error, CloudError::Auth { .. }), "{error}");
    assert!(!chain(&error).contains(&secret));
}

#[tokio::test]
async fn wrong_password_is_refused_without_showing_it() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("clouds.yaml");
    std::fs::write(
        &file,
        "clouds:\n  bad:\n    auth:\n      auth_url: http://127.0.0.1:5000/v3\n      username: demo\n      password: not-the-password-9x\n      project_name: demo\n      user_domain_name: Default\n      project_domain_name: Default\n",
    )
    .expect("write");
    let config = CloudConfig::from_clouds_yaml(&file, "bad").expect("config");
    assert!(!format!("{config:?}").contains("not-the-password-9x"));
    let error = Cloud::connect(config).await.err().expect("refused");
    let shown = error.to_string();
    assert!(matches!(error, CloudError::Auth { .. }), "{shown}");
    assert!(shown.contains("refused the credentials"), "{shown}");
    assert!(!shown.contains("not-the-password-9x"), "{shown}");
}

#[tokio::test]
async fn unknown_cloud_names_the_known_ones() {
    let error = CloudConfig::from_clouds_yaml(&clouds_yaml(), "nope").expect_err("unknown");
    let shown = error.to_string();
    assert!(shown.contains("cloud `nope` is not in"), "{shown}");
    assert!(shown.contains("local-admin, local-demo"), "{shown}");
}

#[tokio::test]
async fn unreachable_keystone_is_reported_as_such() {
    // A port nothing listens on: bind one, learn its number, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("clouds.yaml");
    std::fs::write(
        &file,
        format!("clouds:\n  gone:\n    auth:\n      auth_url: http://127.0.0.1:{port}/v3\n      username: demo\n      password: secret\n      project_name: demo\n"),
    )
    .expect("write");
    let config = CloudConfig::from_clouds_yaml(&file, "gone").expect("config");
    let policy = flatstack::cloud::RetryPolicy {
        attempts: 2,
        ..Default::default()
    };
    let error = Cloud::connect_with(config, policy)
        .await
        .err()
        .expect("unreachable");
    assert!(
        matches!(
            error,
            CloudError::Unreachable {
                service: "identity",
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error.to_string().contains(&format!("127.0.0.1:{port}")),
        "{error}"
    );
}

#[tokio::test]
async fn quotas_read_back_after_an_admin_changes_them() {
    let cloud = connect("local-demo").await;
    let before = cloud.compute_limits().await.expect("limits");
    let before_network = cloud.network_limits().await.expect("network limits");
    cli(
        "local-admin",
        &[
            "quota",
            "set",
            "--instances",
            "37",
            "--floating-ips",
            "41",
            "demo",
        ],
    );
    let after = cloud.compute_limits().await.expect("limits");
    let network = cloud.network_limits().await.expect("network limits");
    cli(
        "local-admin",
        &[
            "quota",
            "set",
            "--instances",
            &before.instances.limit.unwrap_or(10).to_string(),
            "--floating-ips",
            &before_network.floating_ips.limit.unwrap_or(50).to_string(),
            "demo",
        ],
    );
    assert_eq!(after.instances.limit, Some(37));
    assert_eq!(network.floating_ips.limit, Some(41));
    let witness = cli("local-demo", &["quota", "show", "-f", "json"]);
    assert!(witness.is_object() || witness.is_array());
}

/// One of everything a cluster needs, created through the cloud module, checked with the CLI,
/// then deleted and checked gone.
#[tokio::test]
async fn resources_are_created_tagged_and_deleted() {
    let cloud = connect("local-demo").await;
    let cluster = unique("lifecycle");
    let tag = format!("flatstack:cluster={cluster}");
    let tags = vec![tag.clone()];

    let network: Network = cloud
        .create_tagged(
            Kind::Network,
            &format!("{cluster}-net"),
            json!({}),
            &tags,
            true,
        )
        .await
        .expect("network");
    assert_eq!(network.tags, tags);
    let subnet: Subnet = cloud
        .create_tagged(
            Kind::Subnet,
            &format!("{cluster}-subnet"),
            json!({ "network_id": network.id, "cidr": "10.42.0.0/24", "ip_version": 4, "dns_nameservers": ["192.0.2.53"] }),
            &tags, true
        )
        .await
        .expect("subnet");
    let public = cloud
        .external_network("public")
        .await
        .expect("list")
        .expect("public exists");
    let router: Router = cloud
        .create_tagged(
            Kind::Router,
            &format!("{cluster}-router"),
            json!({ "external_gateway_info": { "network_id": public.id } }),
            &tags,
            true,
        )
        .await
        .expect("router");
    cloud
        .add_router_interface(&router.id, &subnet.id)
        .await
        .expect("interface");
    cloud
        .add_router_interface(&router.id, &subnet.id)
        .await
        .expect("interface again is fine");
    let group: SecurityGroup = cloud
        .create_tagged(
            Kind::SecurityGroup,
            &format!("{cluster}-nodes"),
            json!({ "description": "test" }),
            &tags,
            true,
        )
        .await
        .expect("security group");
    let api_rule = SecurityGroupRule {
        direction: "ingress".into(),
        protocol: Some("tcp".into()),
        port_range_min: Some(6443),
        port_range_max: Some(6443),
        remote_ip_prefix: Some("0.0.0.0/0".into()),
        ..Default::default()
    };
    cloud
        .add_security_group_rule(&group.id, &api_rule)
        .await
        .expect("rule");
    cloud
        .add_security_group_rule(&group.id, &api_rule)
        .await
        .expect("same rule again is fine");
    let port: Port = cloud
        .create_tagged(
            Kind::Port,
            &format!("{cluster}-control-plane-1"),
            json!({ "network_id": network.id, "fixed_ips": [{ "subnet_id": subnet.id, "ip_address": "10.42.0.10" }], "security_groups": [group.id] }),
            &tags, true
        )
        .await
        .expect("port");
    assert_eq!(port.fixed_ips[0].ip_address, "10.42.0.10");
    let floating: FloatingIp = cloud
        .create_floating_ip(
            &public.id,
            &format!("{cluster}-api"),
            Some(&port.id),
            &tags,
            true,
        )
        .await
        .expect("floating ip");
    assert_eq!(floating.port_id.as_deref(), Some(port.id.as_str()));
    let keypair = cloud
        .create_keypair(&format!("{cluster}-key"), crate::support::SSH_KEY)
        .await
        .expect("keypair");
    let server_group = cloud
        .create_server_group(&format!("{cluster}-control-plane"), "anti-affinity")
        .await
        .expect("server group");
    let image_id = test_image();
    let flavor = cloud
        .flavors()
        .await
        .expect("flavors")
        .into_iter()
        .find(|f| f.name == "m3.tiny")
        .expect("m3.tiny");
    let ignition = r#"{"ignition":{"version":"3.3.0"}}"#;
    let mut metadata = BTreeMap::new();
    metadata.insert("flatstack-cluster".to_string(), cluster.clone());
    let server = cloud
        .create_server(&ServerRequest {
            name: format!("{cluster}-control-plane-1"),
            flavor_id: flavor.id.clone(),
            image_id: image_id.clone(),
            port_ids: vec![port.id.clone()],
            key_name: Some(keypair.name.clone()),
            user_data: Some(ignition.to_string()),
            tags: tags.clone(),
            metadata,
            server_group_id: Some(server_group.id.clone()),
            boot_volume_gb: None,
        })
        .await
        .expect("server");
    let server = cloud
        .wait_server_active(&server.id, Duration::from_secs(120))
        .await
        .expect("ACTIVE");
    assert_eq!(server.tags, tags);

    // The independent witness.
    let shown = cli(
        "local-demo",
        &[
            "--os-compute-api-version",
            "2.79",
            "server",
            "show",
            &server.id,
            "-f",
            "json",
        ],
    );
    assert_eq!(shown["status"], "ACTIVE");
    assert!(
        shown["tags"].to_string().contains(&tag),
        "{}",
        shown["tags"]
    );
    assert_eq!(shown["key_name"], keypair.name.as_str());
    assert!(
        shown["properties"].to_string().contains(&cluster),
        "{}",
        shown["properties"]
    );
    let user_data = cli(
        "local-admin",
        &[
            "--os-compute-api-version",
            "2.79",
            "server",
            "show",
            &server.id,
            "-f",
            "json",
            "-c",
            "OS-EXT-SRV-ATTR:user_data",
        ],
    );
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(
            user_data["OS-EXT-SRV-ATTR:user_data"]
                .as_str()
                .expect("user_data"),
        )
        .expect("base64");
    assert_eq!(decoded, ignition.as_bytes());
    for (kind, id) in [
        ("network", &network.id),
        ("subnet", &subnet.id),
        ("router", &router.id),
        ("port", &port.id),
        ("security group", &group.id),
    ] {
        let mut args: Vec<&str> = kind.split(' ').collect();
        args.extend(["show", id.as_str(), "-f", "json"]);
        let shown = cli("local-demo", &args);
        assert!(
            shown["tags"].to_string().contains(&tag),
            "{kind}: {}",
            shown["tags"]
        );
    }
    let fip = cli(
        "local-demo",
        &["floating", "ip", "show", &floating.id, "-f", "json"],
    );
    assert_eq!(fip["port_id"], port.id.as_str());
    let listed = cloud.servers_tagged(&[&tag]).await.expect("by tag");
    assert_eq!(
        listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        [server.id.as_str()]
    );
    let console = cloud.console_log(&server.id, 20).await;
    assert!(
        console.is_ok() || matches!(console, Err(CloudError::Api { .. })),
        "{console:?}"
    );

    // Delete in dependency order, then nothing of the cluster is left.
    cloud
        .delete_server(&server.id)
        .await
        .expect("delete server");
    cloud
        .wait_server_deleted(&server.id, Duration::from_secs(120))
        .await
        .expect("gone");
    cloud
        .delete_resource(Kind::FloatingIp, &floating.id)
        .await
        .expect("fip");
    cloud
        .delete_resource(Kind::Port, &port.id)
        .await
        .expect("port");
    cloud
        .remove_router_interface(&router.id, &subnet.id)
        .await
        .expect("interface");
    cloud
        .clear_router_gateway(&router.id)
        .await
        .expect("gateway");
    cloud
        .delete_resource(Kind::Router, &router.id)
        .await
        .expect("router");
    cloud
        .delete_resource(Kind::Subnet, &subnet.id)
        .await
        .expect("subnet");
    cloud
        .delete_resource(Kind::Network, &network.id)
        .await
        .expect("network");
    cloud
        .delete_resource(Kind::SecurityGroup, &group.id)
        .await
        .expect("security group");
    cloud
        .delete_server_group(&server_group.id)
        .await
        .expect("server group");
    cloud.delete_keypair(&keypair.name).await.expect("keypair");
    cloud
        .delete_resource(Kind::Network, &network.id)
        .await
        .expect("deleting twice is fine");

    for kind in [
        "network",
        "subnet",
        "router",
        "port",
        "security group",
        "floating ip",
    ] {
        let mut args: Vec<&str> = kind.split(' ').collect();
        args.extend(["list", "--tags", tag.as_str(), "-f", "json"]);
        let left = cli("local-demo", &args);
        assert_eq!(left, json!([]), "{kind} left: {left}");
    }
    let servers = cli(
        "local-demo",
        &["server", "list", "--name", &cluster, "-f", "json"],
    );
    assert_eq!(servers, json!([]));
    let keypairs = cli("local-demo", &["keypair", "list", "-f", "json"]);
    assert!(!keypairs.to_string().contains(&cluster));
}

fn check_workspace(extra: &str) -> crate::support::Workspace {
    let workspace = crate::support::Workspace::new();
    workspace.write_cluster(&format!(
        "name = \"check\"\ncloud = \"local-demo\"\n[kubernetes]\nversion = \"1.37.1\"\nsysext_sha256 = \"{}\"\n[control_plane]\nflavor = \"m3.small\"\n{extra}",
        "ab".repeat(32)
    ));
    workspace
}

fn cloud_check(workspace: &crate::support::Workspace) -> std::process::Output {
    cloud_check_with(workspace, &clouds_yaml())
}

/// `flatstack cloud check` with the clouds.yaml at `clouds`.
fn cloud_check_with(
    workspace: &crate::support::Workspace,
    clouds: &std::path::Path,
) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_flatstack"))
        .current_dir(workspace.dir.path())
        .env("OS_CLIENT_CONFIG_FILE", clouds)
        .env("HOME", workspace.dir.path())
        .env_remove("OS_CLOUD")
        .args([
            "--file",
            workspace.cluster_file().to_str().expect("path"),
            "cloud",
            "check",
        ])
        .output()
        .expect("run flatstack")
}

#[tokio::test]
async fn cloud_check_reports_what_is_missing_and_short() {
    let image_name = unique("check-image");
    let file = tempfile::NamedTempFile::new().expect("file");
    std::fs::write(file.path(), vec![0u8; 4096]).expect("write");
    cli(
        "local-demo",
        &[
            "image",
            "create",
            "--disk-format",
            "raw",
            "--container-format",
            "bare",
            "--file",
            file.path().to_str().expect("path"),
            &image_name,
            "-f",
            "json",
        ],
    );

    let good = check_workspace(&format!(
        "[flatcar]\nimage = \"{image_name}\"\n[[worker_pools]]\nname = \"w\"\ncount = 2\nflavor = \"m3.tiny\"\n"
    ));
    let output = cloud_check(&good);
    let shown = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{shown}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(shown.contains("region     RegionOne"), "{shown}");
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("cores") && l.contains(" 4 ")),
        "2 + 2 x 1 vCPU:\n{shown}"
    );
    assert!(shown.contains("cloud check passed"));

    let bad = check_workspace(
        "[network]\nexternal_network = \"elsewhere\"\n[access]\nkeypair = \"no-such-key\"\n[[worker_pools]]\nname = \"big\"\ncount = 70\nflavor = \"m3.small\"\n[[worker_pools]]\nname = \"odd\"\ncount = 1\nflavor = \"m9.huge\"\n",
    );
    let output = cloud_check(&bad);
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(1), "{shown}");
    for fragment in [
        "flavor m9.huge",
        "external network elsewhere",
        "keypair no-such-key",
        "Flatcar stable image",
        "quota too small",
    ] {
        assert!(shown.contains(fragment), "{fragment} in\n{shown}");
    }
    let images = cli(
        "local-demo",
        &["image", "list", "--name", &image_name, "-f", "json"],
    );
    for image in images.as_array().into_iter().flatten() {
        cli(
            "local-demo",
            &["image", "delete", image["ID"].as_str().expect("id")],
        );
    }
}

#[test]
fn cloud_check_with_an_unknown_cloud_fails_clearly() {
    let workspace = check_workspace("");
    let output = Command::new(env!("CARGO_BIN_EXE_flatstack"))
        .current_dir(workspace.dir.path())
        .env("OS_CLIENT_CONFIG_FILE", clouds_yaml())
        .args([
            "--file",
            workspace.cluster_file().to_str().expect("path"),
            "--cloud",
            "mars",
            "cloud",
            "check",
        ])
        .output()
        .expect("run");
    let shown = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{shown}");
    assert!(shown.contains("cloud `mars` is not in"), "{shown}");
}

#[tokio::test]
async fn a_region_without_endpoints_names_the_regions() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("clouds.yaml");
    std::fs::write(
        &file,
        "clouds:\n  elsewhere:\n    auth:\n      auth_url: http://127.0.0.1:5000/v3\n      username: demo\n      password: secret\n      project_name: demo\n    region_name: Atlantis\n",
    )
    .expect("write");
    let config = CloudConfig::from_clouds_yaml(&file, "elsewhere").expect("config");
    let error = Cloud::connect(config).await.err().expect("no endpoints");
    let shown = error.to_string();
    assert!(matches!(error, CloudError::NoRegion { .. }), "{shown}");
    assert!(
        shown.contains("region `Atlantis`; its regions: RegionOne"),
        "{shown}"
    );
}

#[tokio::test]
async fn an_unreachable_service_endpoint_is_named() {
    // Keystone answers, but the image API it points to does not.
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("clouds.yaml");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    std::fs::write(
        &file,
        format!("clouds:\n  partial:\n    auth:\n      auth_url: http://127.0.0.1:5000/v3\n      username: demo\n      password: secret\n      project_name: demo\n    image_endpoint_override: http://127.0.0.1:{port}\n"),
    )
    .expect("write");
    let config = CloudConfig::from_clouds_yaml(&file, "partial").expect("config");
    let policy = flatstack::cloud::RetryPolicy {
        attempts: 2,
        ..Default::default()
    };
    let cloud = Cloud::connect_with(config, policy).await.expect("login");
    let error = cloud.images(&[]).await.expect_err("unreachable image API");
    assert!(
        error
            .to_string()
            .starts_with("cannot reach the image API at"),
        "{error}"
    );
}

#[tokio::test]
async fn images_are_created_streamed_and_deleted() {
    use sha2::Digest as _;
    let cloud = connect("local-demo").await;
    let name = unique("stream-image");
    let data: Vec<u8> = (0..2 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = tempfile::NamedTempFile::new().expect("file");
    std::fs::write(file.path(), &data).expect("write");
    let mut properties = BTreeMap::new();
    properties.insert("hw_disk_bus".to_string(), "scsi".to_string());
    properties.insert("os_distro".to_string(), "flatcar".to_string());
    properties.insert("os_version".to_string(), "0.0.1-test".to_string());
    let image = cloud
        .create_image(&name, "raw", "private", &properties)
        .await
        .expect("create");
    assert_eq!(image.status, "queued");
    let stream = tokio::fs::File::open(file.path()).await.expect("open");
    cloud
        .upload_image(
            &image.id,
            reqwest::Body::from(stream),
            Some(data.len() as u64),
        )
        .await
        .expect("upload");
    let uploaded = cloud.image(&image.id).await.expect("read back");
    assert_eq!(uploaded.status, "active");
    assert_eq!(uploaded.os_hash_algo.as_deref(), Some("sha512"));
    assert_eq!(
        uploaded.os_hash_value.as_deref(),
        Some(hex::encode(sha2::Sha512::digest(&data)).as_str())
    );
    let found = cloud
        .images(&[("os_version", "0.0.1-test"), ("name", &name)])
        .await
        .expect("find");
    assert_eq!(found.len(), 1);

    let shown = cli("local-demo", &["image", "show", &image.id, "-f", "json"]);
    assert_eq!(shown["visibility"], "private");
    assert_eq!(shown["size"], data.len());
    assert!(
        shown["properties"]
            .to_string()
            .contains("\"hw_disk_bus\":\"scsi\""),
        "{}",
        shown["properties"]
    );

    cloud.delete_image(&image.id).await.expect("delete");
    let gone = cli_raw("local-demo", &["image", "show", &image.id]);
    assert!(!gone.status.success());
}

#[tokio::test]
async fn volumes_are_created_and_deleted() {
    let cloud = connect("local-demo").await;
    let name = unique("volume");
    let mut metadata = BTreeMap::new();
    metadata.insert("flatstack-cluster".to_string(), name.clone());
    let volume = cloud
        .create_volume(&name, 1, &metadata)
        .await
        .expect("create");
    let volume = cloud
        .wait_volume(&volume.id, "available", Duration::from_secs(120))
        .await
        .expect("available");
    assert_eq!(volume.size, 1);
    let shown = cli("local-demo", &["volume", "show", &volume.id, "-f", "json"]);
    assert_eq!(shown["status"], "available");
    assert!(
        shown["properties"].to_string().contains(&name),
        "{}",
        shown["properties"]
    );
    let limits = cloud.volume_limits().await.expect("limits");
    assert!(limits.volumes.used >= 1);
    cloud.delete_volume(&volume.id).await.expect("delete");
    for _ in 0..120 {
        if !cli_raw("local-demo", &["volume", "show", &volume.id])
            .status
            .success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("volume {} still exists", volume.id);
}

#[tokio::test]
async fn a_failed_build_is_reported_with_novas_fault() {
    let cloud = connect("local-demo").await;
    let name = unique("bootvol");
    let tag = format!("flatstack:cluster={name}");
    let net = ServerNetwork::create(&cloud, &name, &tag, "10.43.0.0/24").await;
    let server = cloud
        .create_server(&ServerRequest {
            name: name.clone(),
            flavor_id: net.flavor_id.clone(),
            image_id: test_image(),
            port_ids: vec![net.port.id.clone()],
            tags: vec![tag.clone()],
            boot_volume_gb: Some(1),
            ..Default::default()
        })
        .await
        .expect("server");
    // The local cloud's fake Cinder cannot fill a volume from an image (its privsep helper
    // wants sudo), so Nova aborts the build: exactly the failure `up` must report with Nova's
    // own fault message rather than as a timeout.
    let error = cloud
        .wait_server_active(&server.id, Duration::from_secs(180))
        .await
        .expect_err("the build fails on this cloud");
    let shown = error.to_string();
    assert!(matches!(error, CloudError::Failed { .. }), "{shown}");
    assert!(shown.contains(&format!("server {name}")), "{shown}");
    assert!(
        shown.contains("Build of instance") && shown.contains("Volume"),
        "Nova's fault: {shown}"
    );
    let witness = cli("local-demo", &["server", "show", &server.id, "-f", "json"]);
    assert_eq!(witness["status"], "ERROR");

    net.remove(&cloud, &server.id).await;
}

#[test]
fn verbose_logs_name_calls_but_never_credentials() {
    let workspace = check_workspace("");
    for verbosity in ["-v", "-vv"] {
        let output = Command::new(env!("CARGO_BIN_EXE_flatstack"))
            .current_dir(workspace.dir.path())
            .env("OS_CLIENT_CONFIG_FILE", clouds_yaml())
            .env_remove("OS_CLOUD")
            .args([
                "--file",
                workspace.cluster_file().to_str().expect("path"),
                verbosity,
                "cloud",
                "check",
            ])
            .output()
            .expect("run");
        let logs = String::from_utf8_lossy(&output.stderr);
        assert!(
            logs.contains("compute GET /flavors/detail -> 200"),
            "{logs}"
        );
        assert!(logs.contains("network GET /quotas/"), "{logs}");
        // The local cloud's password is "secret"; no token or password may appear at any verbosity.
        assert!(!logs.to_lowercase().contains("secret"), "{logs}");
        assert!(
            !logs.contains("X-Auth-Token") && !logs.contains("gAAAA"),
            "{logs}"
        );
    }
}

/// An openrc file's `OS_*` variables alone choose the cloud when the cluster file names none.
#[test]
fn an_openrc_alone_chooses_the_cloud_of_a_file_without_cloud() {
    let workspace = check_workspace("");
    let text = std::fs::read_to_string(workspace.cluster_file()).expect("file");
    workspace.write_cluster(&text.replace("cloud = \"local-demo\"\n", ""));
    let output = Command::new(env!("CARGO_BIN_EXE_flatstack"))
        .current_dir(workspace.dir.path())
        .env_remove("OS_CLIENT_CONFIG_FILE")
        .env_remove("OS_CLOUD")
        .env("HOME", workspace.dir.path())
        .envs([
            ("OS_AUTH_URL", "http://127.0.0.1:5000/v3"),
            ("OS_USERNAME", "demo"),
            ("OS_PASSWORD", "secret"),
            ("OS_PROJECT_NAME", "demo"),
            ("OS_USER_DOMAIN_NAME", "Default"),
            ("OS_PROJECT_DOMAIN_NAME", "Default"),
            ("OS_REGION_NAME", "RegionOne"),
        ])
        .args([
            "--file",
            workspace.cluster_file().to_str().expect("path"),
            "cloud",
            "check",
        ])
        .output()
        .expect("run flatstack");
    let shown = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        shown.contains("region     RegionOne"),
        "{shown}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Credentials never reach an error message: not a password YAML reads as a number, not the
/// lines around a syntax error in clouds.yaml or secure.yaml.
#[test]
fn credentials_in_broken_cloud_files_are_never_echoed() {
    let workspace = check_workspace("");
    let dir = workspace.path("openstack");
    std::fs::create_dir_all(&dir).expect("dir");
    let clouds = dir.join("clouds.yaml");
    let run = || cloud_check_with(&workspace, &clouds);
    let entry = |password: &str| {
        format!(
            "clouds:\n  local-demo:\n    auth:\n      auth_url: http://127.0.0.1:5000/v3\n      username: demo\n      password: {password}\n      project_name: demo\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n"
        )
    };
    // A numeric password is the string it looks like: the login is attempted with it.
    std::fs::write(&clouds, entry("8675309123")).expect("write");
    let output = run();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!all.contains("8675309123"), "{all}");
    assert!(!all.contains("invalid type"), "{all}");
    // Syntax errors in clouds.yaml and in secure.yaml: where, never what.
    for (file, text) in [
        (
            clouds.clone(),
            format!("{}      broken: [unclosed\n", entry("hunter2-secret")),
        ),
        (
            dir.join("secure.yaml"),
            "clouds:\n  local-demo:\n    auth:\n      password: \"hunter2-secret\n      x: [\n"
                .to_string(),
        ),
    ] {
        if file.ends_with("secure.yaml") {
            std::fs::write(&clouds, entry("placeholder")).expect("write");
        }
        std::fs::write(&file, text).expect("write");
        let output = run();
        let err = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(2), "{err}");
        assert!(err.contains("is not valid YAML at line"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}

/// The local OpenStack's floating IPs (203.0.113.0/24) are on no machine, and the test
/// command routes their range nowhere: a connection to one fails on this machine at once
/// (the kernel answers "unreachable" without sending a packet), so no test can reach past it.
#[test]
fn the_floating_ip_range_is_routed_nowhere() {
    assert!(
        std::env::var_os("FLATSTACK_FLOATING_RANGE_UNROUTED").is_some(),
        "run the tests through scripts/test.sh, which routes 203.0.113.0/24 nowhere"
    );
    let route = Command::new("ip")
        .args(["route", "get", "203.0.113.7"])
        .output()
        .expect("run ip");
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&route.stdout),
        String::from_utf8_lossy(&route.stderr)
    );
    assert!(
        !route.status.success() && shown.contains("No route to host"),
        "{shown}"
    );
    let address = std::net::SocketAddr::from(([203, 0, 113, 7], 6443));
    let error = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .expect_err("a floating IP answered");
    assert_eq!(error.kind(), std::io::ErrorKind::HostUnreachable, "{error}");
}
