//! The commented cluster files `flatstack init` writes, one per cloud profile.

use crate::pins::{self, KubernetesVersion};

/// Starting points for a cluster file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Profile {
    /// Jetstream2 (Indiana University): m3.* flavors, external network `public`,
    /// application credentials, allocations billed in SUs.
    Jetstream2,
    /// Any OpenStack cloud: adjust flavors and the external network.
    Generic,
}

struct Choices {
    cloud: &'static str,
    control_plane_flavor: &'static str,
    worker_flavor: &'static str,
    cloud_note: &'static str,
    network_note: &'static str,
    backup_enabled: &'static str,
    /// The commented S3 alternative.
    backup_s3: &'static str,
}

fn choices(profile: Profile) -> Choices {
    match profile {
        Profile::Jetstream2 => Choices {
            cloud: "openstack",
            control_plane_flavor: "m3.small",
            worker_flavor: "m3.small",
            cloud_note: "# Entry in clouds.yaml. Jetstream2's Horizon writes one named `openstack` when you\n\
                         # create an application credential (Identity > Application Credentials).",
            network_note: "# Floating IPs are scarce on Jetstream2 allocations. To reuse the project's\n\
                           # auto-allocated network and router instead of creating new ones:\n\
                           # existing_network = \"auto_allocated_network\"\n\
                           # existing_router = \"auto_allocated_router\"",
            backup_enabled: "enabled = true                  # Jetstream2's object store (Swift) holds them",
            backup_s3: "# Or its S3 API, with a key of yours (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY,\n\
                        # or `s3:` under the cloud's entry in secure.yaml; `openstack ec2 credentials create`):\n\
                        # store = \"s3\"\n\
                        # s3_endpoint = \"https://js2.jetstream-cloud.org:8001\"\n\
                        # s3_region = \"RegionOne\"",
        },
        Profile::Generic => Choices {
            cloud: "openstack",
            control_plane_flavor: "m1.medium",
            worker_flavor: "m1.medium",
            cloud_note: "# Entry in clouds.yaml (or set OS_CLOUD / OS_* variables, as for the openstack CLI).",
            network_note: "# To join an existing network (and router) instead of creating new ones:\n\
                           # existing_network = \"my-network\"\n\
                           # existing_subnet = \"my-subnet\"\n\
                           # existing_router = \"my-router\"",
            backup_enabled: "# enabled = true                # default: on where the cloud's catalog has Swift",
            backup_s3: "# Or an S3-compatible store, with a key of yours (AWS_ACCESS_KEY_ID and\n\
                        # AWS_SECRET_ACCESS_KEY, or `s3:` under the cloud's entry in secure.yaml):\n\
                        # store = \"s3\"\n\
                        # s3_endpoint = \"https://s3.example.org\"\n\
                        # s3_region = \"us-east-1\"",
        },
    }
}

/// The Kubernetes release a new cluster file names, and where its sysext comes from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KubernetesChoice<'a> {
    pub(crate) version: KubernetesVersion,
    /// A mirror of the bakery's `extensions/` directory; `None` for the bakery itself.
    pub(crate) mirror: Option<&'a str>,
}

/// The text of a new cluster file named `name`.
pub(crate) fn cluster_file(profile: Profile, name: &str, choice: &KubernetesChoice<'_>) -> String {
    let c = choices(profile);
    let version = choice.version;
    let kubernetes = version.to_string().trim_start_matches('v').to_string();
    let mirror = match choice.mirror {
        Some(mirror) => format!(
            "sysext_url = \"{mirror}/{}\"\nsysupdate_url = \"{mirror}/kubernetes\"\n",
            version.sysext_file_name()
        ),
        None => String::new(),
    };
    format!(
        r#"# flatstack cluster file. Reference: the "Cluster file" section of the flatstack README.
# `flatstack plan` shows what this file would create; `flatstack up` makes it so.

# Cluster name: 1-40 lowercase letters, digits and '-'. Every node and cloud resource
# carries it, and `flatstack down` removes exactly what carries it.
name = "{name}"

{cloud_note}
cloud = "{cloud}"

[kubernetes]
# Kubernetes release ({supported} are supported). Nodes boot the Flatcar sysext image of
# this release, verified by SHA-256, and take patch releases of the same minor automatically
# (see [updates]).
version = "{kubernetes}"
{mirror}# The image's SHA-256 is read from the SHA256SUMS published beside it the first time the
# cluster needs it, and recorded in the cluster's state directory: every node of the cluster
# boots the same bytes. To pin it yourself instead:
# sysext_sha256 = "<sha256sum of the image>"
# A mirror or your own build (SHA256SUMS beside it, or sysext_sha256 above):
# sysext_url = "https://mirror.example.org/extensions/kubernetes-v{kubernetes}-x86-64.raw"
# Directory systemd-sysupdate polls for patch releases (needs a SHA256SUMS index there):
# sysupdate_url = "https://mirror.example.org/extensions/kubernetes"
# patch_updates = true

[flatcar]
# Release channel of Flatcar Container Linux: stable, beta, alpha or lts.
channel = "stable"
# An exact release instead of the newest of the channel:
# version = "4230.2.3"
# Or boot an image that is already in Glance:
# image = "flatcar-stable-4230.2.3"

[control_plane]
count = 1                       # 1, or 3 or 5 for a highly available control plane
# api_endpoint = "load-balancer" # with 3 or 5: "load-balancer" (Octavia) or "vip"; default:
                                # a load balancer where the cloud has Octavia, else a VIP
flavor = "{control_plane_flavor}"
# boot_volume_gb = 40           # boot from a Cinder volume instead of the flavor's disk

[[worker_pools]]
name = "default"
count = 2
flavor = "{worker_flavor}"
# boot_volume_gb = 60
# max_surge = 1                 # new nodes at a time when a changed flavor replaces the pool
# labels = {{ "example.org/role" = "general" }}
# taints = ["example.org/dedicated=gpu:NoSchedule"]

[network]
{network_note}
external_network = "public"     # floating IPs come from here
node_cidr = "10.42.0.0/24"      # subnet flatstack creates for the nodes
pod_cidr = "10.244.0.0/16"      # flannel's default
service_cidr = "10.96.0.0/12"   # kubeadm's default
# dns_servers = ["8.8.8.8"]     # default: the cloud's resolver

[access]
# Keys for the `core` user. Nothing in flatstack needs SSH; it is only for you.
# ssh_public_keys = ["ssh-ed25519 AAAA... you@laptop"]
# keypair = "my-nova-keypair"
# Who may reach the Kubernetes API. It demands client certificates, so open is defensible.
api_cidrs = ["0.0.0.0/0"]
# Who may reach SSH on the nodes. Empty keeps port 22 closed.
ssh_cidrs = []

[addons]
cloud_controller = true         # openstack-cloud-controller-manager
cinder_csi = true               # Cinder volumes, default StorageClass
ingress = true                  # ingress controller on the control plane's floating IP
metrics_server = true
kured = true                    # reboots after updates, one node at a time, in the window below

[ingress]
exposure = "control-plane"      # Traefik on ports 80/443 of the API's floating IP; or "load-balancer" (Octavia)
http_cidrs = ["0.0.0.0/0"]      # who may reach ports 80 and 443 (control-plane exposure)
# HTTPS with Let's Encrypt: a DNS name pointing at the ingress, and a contact address.
# hostname = "hub.myproject.projects.jetstream-cloud.org"
# acme_email = "you@example.org"
# acme_server = "staging"       # Let's Encrypt's staging CA while you try things out

[jupyterhub]                    # `flatstack jupyterhub install`
authenticator = "shared-password"  # one password flatstack makes, for trials; "github" for GitHub OAuth
# admin_users = ["your-github-login"]
# github_client_id = "Iv1.0123456789abcdef"
# github_client_secret_env = "GITHUB_CLIENT_SECRET"  # read from the environment, never from this file
# github_allowed_organizations = ["your-org"]
user_storage_gb = 10            # each user's home directory, a Cinder volume
# values_file = "jupyterhub.yaml"  # more chart values, merged over flatstack's

[updates]
enabled = true                  # Flatcar's update-engine fetches new releases
group = "stable"                # update group: the channel, or a Nebraska group
# server = "https://nebraska.example.org/v1/update/"
reboot_days = ["mon", "tue", "wed", "thu", "fri"]
reboot_start = "02:00"
reboot_end = "05:00"
timezone = "UTC"

[backup]                        # etcd snapshots in the cloud's object store; back up the state directory too
{backup_enabled}
every = "6h"                    # 1h, 2h, 3h, 4h, 6h, 8h, 12h or 24h
keep = 14                       # the newest snapshots kept
{backup_s3}
"#,
        cloud_note = c.cloud_note,
        cloud = c.cloud,
        control_plane_flavor = c.control_plane_flavor,
        worker_flavor = c.worker_flavor,
        network_note = c.network_note,
        backup_enabled = c.backup_enabled,
        backup_s3 = c.backup_s3,
        supported = pins::supported_minors_list(),
    )
}
