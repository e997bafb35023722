//! The Kubernetes objects that take the snapshots: a CronJob on the control planes, whose pod
//! saves a snapshot with `etcdctl` from kubeadm's etcd image (an init container: that image has
//! no shell) into a host directory, then has the host seal and upload it with the script of
//! [`super::script`]; a ConfigMap with that script and the backup key's public half; a Secret
//! with what the host logs in with (a Keystone token request, or an S3 access key). One Job at a time
//! (`concurrencyPolicy: Forbid`), so three control planes make one snapshot per schedule.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapKeySelector, ConfigMapVolumeSource, Container, EnvVar, EnvVarSource,
    HostPathVolumeSource, ObjectFieldSelector, PodSpec, PodTemplateSpec, SecretKeySelector,
    SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::addons::{meta, secret};
use crate::kube::Manifest;
use crate::pins;
use crate::secret::Secret;
use crate::spec::ClusterSpec;

/// The name of the CronJob, its ConfigMap and its Secret.
pub(crate) const NAME: &str = "flatstack-etcd-backup";
const NAMESPACE: &str = "kube-system";
/// Where on the host `etcdctl` saves the snapshot and the script runs.
pub(crate) const HOST_DIR: &str = "/var/lib/flatstack/backup";
/// Where kubeadm keeps the etcd CA and the health-check client certificate.
const ETCD_PKI: &str = "/etc/kubernetes/pki/etcd";
/// Where the upload container sees the host's root and the ConfigMap.
const HOST_ROOT: &str = "/host";
const SCRIPT_DIR: &str = "/flatstack";
const SCRIPT_KEY: &str = "upload.sh";
const RECIPIENT_KEY: &str = "recipient.pem";
const CA_KEY: &str = "ca.crt";
const AUTH_KEY: &str = "auth-request";
const S3_USER_KEY: &str = "s3-user";

/// What the objects need besides the cluster file.
#[derive(Debug, Clone)]
pub(crate) struct BackupTarget {
    /// The object store's account URL (Swift's catalog endpoint), or the S3 endpoint.
    pub(crate) store_url: String,
    pub(crate) container: String,
    pub(crate) login: StoreLogin,
    /// The backup key's public half, PEM.
    pub(crate) recipient_pem: String,
    /// The cloud's own CA (clouds.yaml `cacert`), PEM, when it has one.
    pub(crate) ca_bundle: Option<String>,
    /// clouds.yaml's `verify: false`.
    pub(crate) insecure: bool,
}

/// How the host logs in to the store.
#[derive(Debug, Clone)]
pub(crate) enum StoreLogin {
    /// Swift: a token from Keystone's v3 URL for the cluster's credentials.
    Keystone {
        auth_url: String,
        /// The body of a Keystone token request.
        auth_request: Secret,
    },
    /// S3: requests signed with an access key for the region.
    S3 {
        region: String,
        keys: crate::cloud::sigv4::S3Keys,
    },
}

/// The target `render` shows, which asks no cloud: markers where `up` writes what it reads
/// from the cloud, the container when the state directory records one, the real public key.
pub(crate) fn review_target(
    spec: &ClusterSpec,
    container: Option<String>,
    recipient_pem: String,
) -> BackupTarget {
    let cluster = spec.name.as_str();
    let (store_url, login) = match &spec.backup.store {
        crate::spec::BackupStore::S3 { endpoint, region } => (
            endpoint.clone(),
            StoreLogin::S3 {
                region: region.clone(),
                keys: crate::cloud::sigv4::S3Keys {
                    access_key_id: "<the access key ID: `flatstack up` writes the one it is given>"
                        .into(),
                    secret_access_key: Secret::new("<its secret: never on disk>"),
                },
            },
        ),
        crate::spec::BackupStore::Swift => (
            "<the object store's account URL: `flatstack up` reads it from the cloud's catalog>"
                .into(),
            StoreLogin::Keystone {
                auth_url: "<Keystone's v3 URL: `flatstack up` writes the one it logs in to>".into(),
                auth_request: Secret::new(
                    "<a Keystone token request: written by `flatstack up` from the credentials it logs in with; never on disk>",
                ),
            },
        ),
    };
    BackupTarget {
        store_url,
        container: container.unwrap_or_else(|| {
            format!(
                "<{}<random>: made by `flatstack up`>",
                super::container_prefix(cluster)
            )
        }),
        login,
        recipient_pem,
        ca_bundle: None,
        insecure: false,
    }
}

/// The schedule: every `every_hours` hours at a minute (and, daily, an hour) drawn from the
/// cluster's name, so clusters of a project do not all snapshot at once.
pub(crate) fn schedule(cluster: &str, every_hours: u32) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(cluster.as_bytes());
    let minute = digest[0] % 60;
    match every_hours {
        1 => format!("{minute} * * * *"),
        24 => format!("{minute} {} * * *", digest[1] % 24),
        n => format!("{minute} */{n} * * *"),
    }
}

/// The ConfigMap, Secret and CronJob of `spec`'s backups to `target`.
pub(crate) fn manifests(spec: &ClusterSpec, target: &BackupTarget) -> Vec<Manifest> {
    let config = ConfigMap {
        metadata: meta(NAME, Some(NAMESPACE)),
        data: Some(
            [
                (SCRIPT_KEY, Some(super::script::upload_script())),
                (RECIPIENT_KEY, Some(target.recipient_pem.clone())),
                (CA_KEY, target.ca_bundle.clone()),
            ]
            .into_iter()
            .filter_map(|(key, value)| Some((key.to_string(), value?)))
            .collect(),
        ),
        ..ConfigMap::default()
    };
    let s3_user;
    let login = match &target.login {
        StoreLogin::Keystone { auth_request, .. } => (AUTH_KEY, auth_request.expose()),
        StoreLogin::S3 { keys, .. } => {
            s3_user = curl_user(keys);
            (S3_USER_KEY, s3_user.as_str())
        }
    };
    let credentials = secret(meta(NAME, Some(NAMESPACE)), "Opaque", [login]);
    vec![
        Manifest::of(&config),
        Manifest::of(&credentials),
        Manifest::of(&cron_job(spec, target)),
    ]
}

/// An access key as curl's `--user` takes it (`ID:SECRET`), which the host script writes into
/// a curl config file: it never appears in a command line.
fn curl_user(keys: &crate::cloud::sigv4::S3Keys) -> String {
    format!("{}:{}", keys.access_key_id, keys.secret_access_key.expose())
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn host_path(name: &str, path: &str, kind: &str) -> Volume {
    Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: Some(kind.into()),
        }),
        ..Volume::default()
    }
}

fn mount(name: &str, at: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: at.into(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

/// Deletes the CronJob (its Jobs and their pods with it), its ConfigMap and its Secret; what
/// is not there is not an error.
pub(crate) async fn remove(client: &crate::kube::KubeClient) -> Result<(), crate::kube::KubeError> {
    client
        .delete(&format!(
            "/apis/batch/v1/namespaces/{NAMESPACE}/cronjobs/{NAME}?propagationPolicy=Background"
        ))
        .await?;
    for kind in ["configmaps", "secrets"] {
        client
            .delete(&format!("/api/v1/namespaces/{NAMESPACE}/{kind}/{NAME}"))
            .await?;
    }
    Ok(())
}

/// A variable from the ConfigMap's or the Secret's `key`.
fn env_from(name: &str, key: &str, secret: bool) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(match secret {
            true => EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: NAME.into(),
                    key: key.into(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            },
            false => EnvVarSource {
                config_map_key_ref: Some(ConfigMapKeySelector {
                    name: NAME.into(),
                    key: key.into(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            },
        }),
        ..EnvVar::default()
    }
}

/// The pod's UID, which names its snapshot and script on the host: a Job started by hand
/// beside a scheduled one never touches the other's files.
fn pod_uid() -> EnvVar {
    EnvVar {
        name: "POD_UID".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.uid".into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn cron_job(spec: &ClusterSpec, target: &BackupTarget) -> CronJob {
    // `$(POD_UID)` is expanded by the kubelet (the variable is the container's own).
    let snapshot = format!("{HOST_DIR}/$(POD_UID).db");
    let labels = BTreeMap::from([("app.kubernetes.io/name".to_string(), NAME.to_string())]);
    // etcdctl against the local member, as kubeadm's own health check reaches it.
    let save = Container {
        name: "snapshot".into(),
        image: Some(pins::etcd_image(spec.kubernetes.version).into()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(
            [
                "etcdctl".to_string(),
                "--endpoints=https://127.0.0.1:2379".into(),
                format!("--cacert={ETCD_PKI}/ca.crt"),
                format!("--cert={ETCD_PKI}/healthcheck-client.crt"),
                format!("--key={ETCD_PKI}/healthcheck-client.key"),
                "--dial-timeout=20s".into(),
                "--command-timeout=10m".into(),
                "snapshot".into(),
                "save".into(),
                snapshot.clone(),
            ]
            .into(),
        ),
        env: Some(vec![pod_uid()]),
        volume_mounts: Some(vec![
            mount("etcd-pki", ETCD_PKI, true),
            mount("backup", HOST_DIR, false),
        ]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let host_script = format!("{HOST_DIR}/upload-$POD_UID.sh");
    let upload = Container {
        name: "upload".into(),
        image: Some(pins::HOST_ACTION_IMAGE.into()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            format!(
                "cp {SCRIPT_DIR}/{SCRIPT_KEY} {HOST_ROOT}{host_script} && chroot {HOST_ROOT} /bin/bash {host_script}; status=$?; rm -f {HOST_ROOT}{host_script}; exit $status"
            ),
        ]),
        env: Some({
            let mut env = vec![
                pod_uid(),
                env("FLATSTACK_SNAPSHOT", &snapshot),
                env("FLATSTACK_CLUSTER", &spec.name),
                env("FLATSTACK_KUBERNETES", &spec.kubernetes.version.to_string()),
                env("FLATSTACK_STORE", &target.store_url),
                env("FLATSTACK_CONTAINER", &target.container),
                env("FLATSTACK_KEEP", &spec.backup.keep.to_string()),
                env_from("FLATSTACK_RECIPIENT", RECIPIENT_KEY, false),
            ];
            match &target.login {
                StoreLogin::Keystone { auth_url, .. } => env.extend([
                    self::env("FLATSTACK_STORE_API", "swift"),
                    self::env("FLATSTACK_AUTH_URL", auth_url),
                    env_from("FLATSTACK_AUTH_REQUEST", AUTH_KEY, true),
                ]),
                StoreLogin::S3 { region, .. } => env.extend([
                    self::env("FLATSTACK_STORE_API", "s3"),
                    self::env("FLATSTACK_S3_REGION", region),
                    env_from("FLATSTACK_S3_USER", S3_USER_KEY, true),
                ]),
            }
            if target.ca_bundle.is_some() {
                env.push(env_from("FLATSTACK_CA_BUNDLE", CA_KEY, false));
            } else if target.insecure {
                env.push(self::env("FLATSTACK_INSECURE", "true"));
            }
            env
        }),
        volume_mounts: Some(vec![
            mount("host", HOST_ROOT, false),
            mount("script", SCRIPT_DIR, true),
        ]),
        // chroot into the host's root, and the host's tools run as its root.
        security_context: Some(SecurityContext {
            privileged: Some(true),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let pod = PodSpec {
        restart_policy: Some("Never".into()),
        host_network: Some(true),
        priority_class_name: Some("system-cluster-critical".into()),
        node_selector: Some(BTreeMap::from([(
            "node-role.kubernetes.io/control-plane".to_string(),
            String::new(),
        )])),
        tolerations: Some(vec![Toleration {
            key: Some("node-role.kubernetes.io/control-plane".into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        }]),
        init_containers: Some(vec![save]),
        containers: vec![upload],
        volumes: Some(vec![
            host_path("etcd-pki", ETCD_PKI, "Directory"),
            host_path("backup", HOST_DIR, "DirectoryOrCreate"),
            host_path("host", "/", "Directory"),
            Volume {
                name: "script".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: NAME.into(),
                    default_mode: Some(0o500),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
        ]),
        ..PodSpec::default()
    };
    CronJob {
        metadata: meta(NAME, Some(NAMESPACE)),
        spec: Some(CronJobSpec {
            schedule: schedule(&spec.name, spec.backup.every_hours),
            time_zone: Some("Etc/UTC".into()),
            concurrency_policy: Some("Forbid".into()),
            starting_deadline_seconds: Some(3600),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(3),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(JobSpec {
                    backoff_limit: Some(2),
                    active_deadline_seconds: Some(1800),
                    template: PodTemplateSpec {
                        metadata: Some(ObjectMeta {
                            labels: Some(labels),
                            ..ObjectMeta::default()
                        }),
                        spec: Some(pod),
                    },
                    ..JobSpec::default()
                }),
            },
            ..CronJobSpec::default()
        }),
        ..CronJob::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> BackupTarget {
        BackupTarget {
            store_url: "https://swift.example/v1/AUTH_p".into(),
            container: "flatstack-backups.demo.abcdefgh".into(),
            login: StoreLogin::Keystone {
                auth_url: "https://keystone.example/v3".into(),
                auth_request: Secret::new("TOKEN-REQUEST-WITH-A-PASSWORD"),
            },
            recipient_pem: "-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----\n".into(),
            ca_bundle: None,
            insecure: false,
        }
    }

    #[test]
    fn each_pod_has_files_of_its_own_and_curl_trusts_the_clouds_ca() {
        let spec = crate::spec::test_spec("");
        let mut with_ca = target();
        with_ca.ca_bundle = Some("-----BEGIN CERTIFICATE-----\n".into());
        let manifests = manifests(&spec, &with_ca);
        assert_eq!(
            manifests[0].body()["data"]["ca.crt"],
            "-----BEGIN CERTIFICATE-----\n"
        );
        let pod = &manifests[2].body()["spec"]["jobTemplate"]["spec"]["template"]["spec"];
        let save = &pod["initContainers"][0];
        assert_eq!(
            save["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.uid"
        );
        let command = save["command"].as_array().expect("command");
        assert_eq!(
            command.last().expect("path"),
            "/var/lib/flatstack/backup/$(POD_UID).db"
        );
        let env = pod["containers"][0]["env"].as_array().expect("env");
        let names: Vec<&str> = env.iter().filter_map(|e| e["name"].as_str()).collect();
        assert_eq!(
            names[0], "POD_UID",
            "defined before the variables that name it"
        );
        assert!(names.contains(&"FLATSTACK_CA_BUNDLE"));
        assert!(!names.contains(&"FLATSTACK_INSECURE"));
        let mut insecure = target();
        insecure.insecure = true;
        let env = manifests_env(&spec, &insecure);
        assert!(env.contains(&"FLATSTACK_INSECURE".to_string()));
        assert!(!env.contains(&"FLATSTACK_CA_BUNDLE".to_string()));
    }

    fn manifests_env(spec: &ClusterSpec, target: &BackupTarget) -> Vec<String> {
        manifests(spec, target)[2].body()["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            ["containers"][0]["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["name"].as_str().map(str::to_string))
            .collect()
    }

    #[test]
    fn schedules_spread_clusters_over_the_hour_and_follow_every() {
        assert!(
            schedule("demo", 6).ends_with(" */6 * * *"),
            "{}",
            schedule("demo", 6)
        );
        assert!(schedule("demo", 1).ends_with(" * * * *"));
        let daily = schedule("demo", 24);
        let fields: Vec<&str> = daily.split(' ').collect();
        assert_eq!(fields.len(), 5, "{daily}");
        assert!(fields[1].parse::<u8>().is_ok_and(|h| h < 24), "{daily}");
        let minutes: std::collections::BTreeSet<String> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|n| {
                schedule(n, 6)
                    .split(' ')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        assert!(minutes.len() > 1, "six clusters, one minute: {minutes:?}");
    }

    #[test]
    fn the_cron_job_runs_once_on_a_control_plane_and_keeps_the_credentials_in_the_secret() {
        let spec = crate::spec::test_spec("[backup]\nkeep = 7\nevery = \"12h\"\n");
        let manifests = manifests(&spec, &target());
        let kinds: Vec<&str> = manifests.iter().map(|m| m.kind()).collect();
        assert_eq!(kinds, ["ConfigMap", "Secret", "CronJob"]);
        let cron = manifests[2].body();
        assert_eq!(cron["spec"]["concurrencyPolicy"], "Forbid");
        assert!(
            cron["spec"]["schedule"]
                .as_str()
                .is_some_and(|s| s.ends_with("*/12 * * *"))
        );
        let pod = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"];
        assert_eq!(
            pod["nodeSelector"]["node-role.kubernetes.io/control-plane"],
            ""
        );
        assert_eq!(pod["hostNetwork"], true);
        let env = pod["containers"][0]["env"].as_array().expect("env");
        let value = |name: &str| {
            env.iter()
                .find(|e| e["name"] == name)
                .cloned()
                .unwrap_or_default()
        };
        assert_eq!(value("FLATSTACK_KEEP")["value"], "7");
        assert_eq!(value("FLATSTACK_KUBERNETES")["value"], "v1.37.1");
        assert_eq!(
            value("FLATSTACK_AUTH_REQUEST")["valueFrom"]["secretKeyRef"]["key"],
            AUTH_KEY
        );
        // The credentials are in the Secret only.
        for (manifest, holds) in manifests.iter().zip([false, true, false]) {
            let body = manifest.body().to_string();
            let encoded = base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                "TOKEN-REQUEST-WITH-A-PASSWORD",
            );
            assert_eq!(body.contains(&encoded), holds, "{}", manifest.kind());
            assert!(!body.contains("TOKEN-REQUEST-WITH-A-PASSWORD"));
        }
        assert_eq!(
            pod["initContainers"][0]["command"][0], "etcdctl",
            "the etcd image has no shell"
        );
    }

    #[test]
    fn an_s3_store_s_key_is_in_the_secret_only_and_no_keystone_is_named() {
        let spec = crate::spec::test_spec("");
        let mut s3 = target();
        s3.store_url = "https://js2.jetstream-cloud.org:8001".into();
        s3.login = StoreLogin::S3 {
            region: "RegionOne".into(),
            keys: crate::cloud::sigv4::S3Keys {
                access_key_id: "EC2ACCESS".into(),
                secret_access_key: Secret::new("EC2SECRET"),
            },
        };
        let manifests = manifests(&spec, &s3);
        let encoded = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            "EC2ACCESS:EC2SECRET",
        );
        assert_eq!(manifests[1].body()["data"][S3_USER_KEY], encoded.as_str());
        for manifest in &manifests {
            assert!(!manifest.body().to_string().contains("EC2SECRET"));
        }
        let env = manifests_env(&spec, &s3);
        for name in [
            "FLATSTACK_STORE_API",
            "FLATSTACK_S3_REGION",
            "FLATSTACK_S3_USER",
        ] {
            assert!(env.contains(&name.to_string()), "{name}: {env:?}");
        }
        assert!(!env.contains(&"FLATSTACK_AUTH_URL".to_string()));
        assert!(!env.contains(&"FLATSTACK_AUTH_REQUEST".to_string()));
    }
}
