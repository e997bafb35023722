//! Swift, the cloud's object store: containers found by prefix, made with the cluster's name
//! in their metadata, listed page by page, written to and emptied. What goes into them is
//! [`crate::backup`]'s business.

use reqwest::Method;
use serde::Deserialize;

use super::session::{Cloud, Reply};
use super::{CloudError, Service, query_escape};

/// The metadata header naming the cluster a container belongs to.
const CLUSTER_METADATA: &str = "X-Container-Meta-Flatstack-Cluster";

/// One entry of a container listing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct StoredObject {
    pub(crate) name: String,
    pub(crate) bytes: u64,
    pub(crate) last_modified: String,
}

/// One entry of the account's container listing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct ContainerEntry {
    pub(crate) name: String,
    /// When it last changed (an empty container: when it was made), UTC,
    /// `YYYY-MM-DDTHH:MM:SS.ffffff`.
    #[serde(default)]
    pub(crate) last_modified: Option<String>,
}

/// What a container create found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Made {
    Created,
    /// It was there already (Swift answers 202).
    Existed,
    /// Another project holds the name (409 from a store whose names are global).
    Taken,
}

/// Swift answers an empty listing with 204 and no body.
fn listing<T: for<'de> Deserialize<'de>>(reply: &Reply, call: &str) -> Result<Vec<T>, CloudError> {
    if reply.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    reply.json(Service::ObjectStore, call)
}

/// `/container` or `/container/object`, each part percent-encoded.
fn path(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| format!("/{}", query_escape(p)))
        .collect()
}

impl Cloud {
    /// Whether the cloud has an object store in its catalog.
    pub(crate) async fn offers_object_store(&self) -> bool {
        self.offers(Service::ObjectStore).await
    }

    /// The object store's account URL (the catalog's endpoint), under which containers are.
    pub(crate) async fn object_store_url(&self) -> Result<String, CloudError> {
        self.endpoint(Service::ObjectStore).await
    }

    /// An object's bytes, however long they take to arrive; `None` when there is no such
    /// object.
    pub(crate) async fn get_object(
        &self,
        container: &str,
        name: &str,
    ) -> Result<Option<Vec<u8>>, CloudError> {
        self.download(Service::ObjectStore, &path(&[container, name]))
            .await
    }

    /// The project's containers whose names start with `prefix`.
    pub(crate) async fn containers(&self, prefix: &str) -> Result<Vec<ContainerEntry>, CloudError> {
        let mut names = Vec::new();
        let mut marker = String::new();
        loop {
            let call = format!(
                "?format=json&prefix={}&marker={}",
                query_escape(prefix),
                query_escape(&marker)
            );
            let reply = match self
                .request(Service::ObjectStore, Method::GET, &call, None)
                .await
            {
                Ok(reply) => reply,
                // An account Swift has not made yet holds nothing.
                Err(CloudError::Api { status: 404, .. }) => return Ok(names),
                Err(e) => return Err(e),
            };
            let page: Vec<ContainerEntry> = listing(&reply, "GET the account's containers")?;
            match page.last() {
                Some(last) => marker = last.name.clone(),
                None => return Ok(names),
            }
            names.extend(page);
        }
    }

    /// Makes container `name` for `cluster` (or finds it made).
    pub(crate) async fn create_container(
        &self,
        name: &str,
        cluster: &str,
    ) -> Result<Made, CloudError> {
        let result = self
            .request_with_headers(
                Service::ObjectStore,
                Method::PUT,
                &path(&[name]),
                None,
                &[(CLUSTER_METADATA, cluster)],
            )
            .await;
        match result {
            Ok(reply) if reply.status == 202 => Ok(Made::Existed),
            Ok(_) => Ok(Made::Created),
            Err(CloudError::Api { status: 409, .. }) => Ok(Made::Taken),
            Err(e) => Err(e),
        }
    }

    /// The objects in `container`, oldest name first; `None` when there is no such container.
    pub(crate) async fn objects(
        &self,
        container: &str,
    ) -> Result<Option<Vec<StoredObject>>, CloudError> {
        let mut objects = Vec::new();
        let mut marker = String::new();
        loop {
            let call = format!(
                "{}?format=json&marker={}",
                path(&[container]),
                query_escape(&marker)
            );
            let reply = match self
                .request(Service::ObjectStore, Method::GET, &call, None)
                .await
            {
                Ok(reply) => reply,
                Err(CloudError::Api { status: 404, .. }) => return Ok(None),
                Err(e) => return Err(e),
            };
            let page: Vec<StoredObject> = listing(&reply, &format!("GET container {container}"))?;
            match page.last() {
                Some(last) => marker = last.name.clone(),
                None => return Ok(Some(objects)),
            }
            objects.extend(page);
        }
    }

    /// Writes `contents` as object `name` (sent once: the caller decides about retries).
    pub(crate) async fn put_object(
        &self,
        container: &str,
        name: &str,
        contents: Vec<u8>,
    ) -> Result<(), CloudError> {
        let length = contents.len() as u64;
        self.upload(
            Service::ObjectStore,
            &path(&[container, name]),
            contents.into(),
            Some(length),
        )
        .await
        .map(|_| ())
    }

    /// Sets the container's TempURL key (Swift's `X-Container-Meta-Temp-URL-Key`): URLs
    /// signed with it read the container's objects until they expire.
    pub(crate) async fn set_temp_url_key(
        &self,
        container: &str,
        key: &str,
    ) -> Result<(), CloudError> {
        self.request_with_headers(
            Service::ObjectStore,
            Method::POST,
            &path(&[container]),
            None,
            &[("X-Container-Meta-Temp-URL-Key", key)],
        )
        .await
        .map(|_| ())
    }

    /// Removes the container's TempURL key: every URL signed with it stops working.
    pub(crate) async fn remove_temp_url_key(&self, container: &str) -> Result<(), CloudError> {
        self.request_with_headers(
            Service::ObjectStore,
            Method::POST,
            &path(&[container]),
            None,
            &[("X-Remove-Container-Meta-Temp-URL-Key", "x")],
        )
        .await
        .map(|_| ())
    }

    /// Deletes an object; one already gone counts as deleted.
    pub(crate) async fn delete_object(
        &self,
        container: &str,
        name: &str,
    ) -> Result<(), CloudError> {
        self.delete(Service::ObjectStore, &path(&[container, name]))
            .await
    }

    /// Deletes every object of `container`, then the container; returns how many objects
    /// there were. A container already gone counts as deleted. Swift answers 409 to deleting
    /// a container its listing still shows objects in (a listing that lags, or an upload that
    /// arrived meanwhile): it is emptied and deleted again, a few times.
    pub(crate) async fn delete_container(&self, container: &str) -> Result<usize, CloudError> {
        const ATTEMPTS: u32 = 5;
        let mut deleted = 0;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(objects) = self.objects(container).await? else {
                return Ok(deleted);
            };
            for object in &objects {
                self.delete_object(container, &object.name).await?;
            }
            deleted += objects.len();
            match self.delete(Service::ObjectStore, &path(&[container])).await {
                Err(CloudError::Api { status: 409, .. }) if attempt < ATTEMPTS => {
                    tokio::time::sleep(std::time::Duration::from_secs(u64::from(attempt))).await;
                }
                result => return result.map(|()| deleted),
            }
        }
    }
}
