//! The object store a cluster's snapshots go to, as the cluster file chooses it: the cloud's
//! Swift through the cluster's own login (the default), or an S3-compatible endpoint with an
//! access key of the user's (`AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, or the cloud's
//! `s3` entry in secure.yaml). One set of calls for both: containers (buckets) found by prefix
//! and made, objects listed, written, read and deleted.

use crate::cloud::object_store::{ContainerEntry, Made, StoredObject};
use crate::cloud::s3::S3Store;
use crate::cloud::sigv4::S3Keys;
use crate::cloud::{Cloud, CloudError};
use crate::secret::Secret;
use crate::spec::{BackupStore, ClusterSpec};

/// The environment's S3 access key, as the AWS tools name it.
pub(crate) const ACCESS_KEY_VARIABLE: &str = "AWS_ACCESS_KEY_ID";
pub(crate) const SECRET_KEY_VARIABLE: &str = "AWS_SECRET_ACCESS_KEY";

/// The longest bucket name S3 takes.
const S3_NAME_LIMIT: usize = 63;

/// A cluster's object store, reached through `cloud`'s HTTPS settings.
pub(crate) struct Store<'a> {
    cloud: &'a Cloud,
    s3: Option<S3Store>,
}

/// Why the cluster file's S3 store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreConfigError {
    #[error(
        "the cluster file keeps backups in an S3 store ({endpoint}), but no access key was given\n  hint: set {ACCESS_KEY_VARIABLE} and {SECRET_KEY_VARIABLE}, or put `s3: {{access_key_id: ..., secret_access_key: ...}}` under cloud `{cloud}` in secure.yaml (on Jetstream2, `openstack ec2 credentials create` makes a pair)"
    )]
    NoKeys { endpoint: String, cloud: String },
    #[error("{0}\n  hint: set only one of them, or neither to take secure.yaml's")]
    HalfKey(String),
    #[error(
        "AWS_SESSION_TOKEN is set: temporary S3 credentials are not supported (the cluster's CronJob keeps its key for months)\n  hint: give a long-lived access key (on Jetstream2, `openstack ec2 credentials create`), and unset AWS_SESSION_TOKEN"
    )]
    SessionToken,
    #[error(
        "cluster name `{name}` is too long for an S3 bucket of its backups (`flatstack-backups.{name}.` and 8 random characters come to {length}; S3 allows 63)\n  hint: use a name of at most 36 characters, or `store = \"swift\"`"
    )]
    NameTooLong { name: String, length: usize },
    #[error(transparent)]
    Endpoint(CloudError),
}

/// The key pair the environment gives, if any.
fn keys_from_environment() -> Result<Option<S3Keys>, StoreConfigError> {
    let read = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if read("AWS_SESSION_TOKEN").is_some() && read(ACCESS_KEY_VARIABLE).is_some() {
        return Err(StoreConfigError::SessionToken);
    }
    match (read(ACCESS_KEY_VARIABLE), read(SECRET_KEY_VARIABLE)) {
        (Some(id), Some(secret)) => Ok(Some(S3Keys {
            access_key_id: id,
            secret_access_key: Secret::new(secret),
        })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(StoreConfigError::HalfKey(format!(
            "{ACCESS_KEY_VARIABLE} is set but {SECRET_KEY_VARIABLE} is not"
        ))),
        (None, Some(_)) => Err(StoreConfigError::HalfKey(format!(
            "{SECRET_KEY_VARIABLE} is set but {ACCESS_KEY_VARIABLE} is not"
        ))),
    }
}

impl<'a> Store<'a> {
    /// The store `spec` names, on `cloud`. For S3 the access key comes from the environment,
    /// else from the cloud's `s3` entry.
    pub(crate) fn of(cloud: &'a Cloud, spec: &ClusterSpec) -> Result<Store<'a>, StoreConfigError> {
        let s3 = match &spec.backup.store {
            BackupStore::Swift => None,
            BackupStore::S3 { endpoint, region } => {
                let length = super::container_prefix(&spec.name).len() + super::SUFFIX_LEN;
                if length > S3_NAME_LIMIT {
                    return Err(StoreConfigError::NameTooLong {
                        name: spec.name.clone(),
                        length,
                    });
                }
                let keys =
                    match keys_from_environment()? {
                        Some(keys) => keys,
                        None => cloud.config().s3_keys.clone().ok_or_else(|| {
                            StoreConfigError::NoKeys {
                                endpoint: endpoint.clone(),
                                cloud: cloud.config().name.clone(),
                            }
                        })?,
                    };
                Some(S3Store::new(endpoint, region, keys).map_err(StoreConfigError::Endpoint)?)
            }
        };
        Ok(Store { cloud, s3 })
    }

    pub(crate) fn cloud(&self) -> &'a Cloud {
        self.cloud
    }

    /// The S3 endpoint, when the store is one.
    pub(crate) fn s3(&self) -> Option<&S3Store> {
        self.s3.as_ref()
    }

    /// What a container is called in this store, for messages.
    pub(crate) fn noun(&self) -> &'static str {
        match self.s3 {
            Some(_) => "bucket",
            None => "container",
        }
    }

    /// The store's kind and its word for a container, for messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self.s3 {
            Some(_) => "S3 bucket",
            None => "Swift container",
        }
    }

    /// [`Store::kind`] with its article.
    pub(crate) fn a_kind(&self) -> &'static str {
        match self.s3 {
            Some(_) => "an S3 bucket",
            None => "a Swift container",
        }
    }

    /// What the state directory records the store as: `swift`, or `s3 <endpoint>`.
    pub(crate) fn identity(&self) -> String {
        match &self.s3 {
            Some(s3) => format!("s3 {}", s3.endpoint()),
            None => "swift".to_string(),
        }
    }

    /// Whether there is a store: Swift in the cloud's catalog, or an S3 endpoint named.
    pub(crate) async fn offered(&self) -> bool {
        match self.s3 {
            Some(_) => true,
            None => self.cloud.offers_object_store().await,
        }
    }

    pub(crate) async fn containers(&self, prefix: &str) -> Result<Vec<ContainerEntry>, CloudError> {
        match &self.s3 {
            Some(s3) => s3.buckets(self.cloud, prefix).await,
            None => self.cloud.containers(prefix).await,
        }
    }

    pub(crate) async fn create_container(
        &self,
        name: &str,
        cluster: &str,
    ) -> Result<Made, CloudError> {
        match &self.s3 {
            Some(s3) => s3.create_bucket(self.cloud, name).await,
            None => self.cloud.create_container(name, cluster).await,
        }
    }

    pub(crate) async fn objects(
        &self,
        container: &str,
    ) -> Result<Option<Vec<StoredObject>>, CloudError> {
        match &self.s3 {
            Some(s3) => s3.objects(self.cloud, container).await,
            None => self.cloud.objects(container).await,
        }
    }

    pub(crate) async fn put_object(
        &self,
        container: &str,
        name: &str,
        contents: Vec<u8>,
    ) -> Result<(), CloudError> {
        match &self.s3 {
            Some(s3) => s3.put_object(self.cloud, container, name, contents).await,
            None => self.cloud.put_object(container, name, contents).await,
        }
    }

    pub(crate) async fn get_object(
        &self,
        container: &str,
        name: &str,
    ) -> Result<Option<Vec<u8>>, CloudError> {
        match &self.s3 {
            Some(s3) => s3.get_object(self.cloud, container, name).await,
            None => self.cloud.get_object(container, name).await,
        }
    }

    pub(crate) async fn delete_object(
        &self,
        container: &str,
        name: &str,
    ) -> Result<(), CloudError> {
        match &self.s3 {
            Some(s3) => s3.delete_object(self.cloud, container, name).await,
            None => self.cloud.delete_object(container, name).await,
        }
    }

    pub(crate) async fn delete_container(&self, container: &str) -> Result<usize, CloudError> {
        match &self.s3 {
            Some(s3) => s3.delete_bucket(self.cloud, container).await,
            None => self.cloud.delete_container(container).await,
        }
    }

    /// When the store lists no time for its containers (S3), the time of this object, which
    /// `up` leaves in each new bucket, stands for when it was made.
    pub(crate) fn keeps_write_check(&self) -> bool {
        self.s3.is_some()
    }
}
