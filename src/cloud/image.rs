//! Glance: finding images by name or property, creating them with properties and visibility,
//! streaming uploads, and deleting them.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Cloud, CloudError, Service, query_escape};

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Image {
    pub id: String,
    #[serde(default)]
    pub(crate) name: Option<String>,
    pub status: String,
    #[serde(default)]
    pub(crate) visibility: String,
    #[serde(default)]
    pub(crate) checksum: Option<String>,
    #[serde(default)]
    pub(crate) size: Option<u64>,
    #[serde(default)]
    pub(crate) os_version: Option<String>,
    #[serde(default)]
    pub(crate) os_distro: Option<String>,
    #[serde(default)]
    pub(crate) architecture: Option<String>,
    #[serde(default)]
    pub(crate) created_at: Option<String>,
    #[serde(default)]
    pub os_hash_algo: Option<String>,
    #[serde(default)]
    pub os_hash_value: Option<String>,
    /// Every other property (hw_disk_bus, ...), as Glance returns them.
    #[serde(flatten)]
    pub(crate) properties: BTreeMap<String, Value>,
}

impl Cloud {
    /// Images matching every filter, e.g. `[("name", "x")]` or `[("os_distro", "flatcar")]`.
    pub async fn images(&self, filters: &[(&str, &str)]) -> Result<Vec<Image>, CloudError> {
        #[derive(Deserialize)]
        struct Page {
            images: Vec<Image>,
            #[serde(default)]
            next: Option<String>,
        }
        let mut query: Vec<String> = filters
            .iter()
            .map(|(k, v)| format!("{k}={}", query_escape(v)))
            .collect();
        query.push("limit=200".into());
        let mut path = format!("/images?{}", query.join("&"));
        let mut all = Vec::new();
        loop {
            let page: Page = self.get(Service::Image, &path).await?;
            all.extend(page.images);
            match page.next {
                // `next` is absolute from the API root: /v2/images?marker=...
                Some(next) => path = next.trim_start_matches("/v2").to_string(),
                None => return Ok(all),
            }
        }
    }

    pub async fn image(&self, id: &str) -> Result<Image, CloudError> {
        self.get(Service::Image, &format!("/images/{id}")).await
    }

    /// Creates an image record (status `queued`) with extra string properties.
    pub async fn create_image(
        &self,
        name: &str,
        disk_format: &str,
        visibility: &str,
        properties: &BTreeMap<String, String>,
    ) -> Result<Image, CloudError> {
        let mut body = json!({
            "name": name,
            "disk_format": disk_format,
            "container_format": "bare",
            "visibility": visibility,
        });
        for (key, value) in properties {
            body[key] = Value::String(value.clone());
        }
        let reply = self
            .request(
                Service::Image,
                reqwest::Method::POST,
                "/images",
                Some(&body),
            )
            .await?;
        reply.json(Service::Image, "POST /images")
    }

    /// Streams the image data into a queued image; Glance then marks it active.
    pub async fn upload_image(
        &self,
        id: &str,
        data: reqwest::Body,
        length: Option<u64>,
    ) -> Result<(), CloudError> {
        self.upload(Service::Image, &format!("/images/{id}/file"), data, length)
            .await
            .map(|_| ())
    }

    pub async fn delete_image(&self, id: &str) -> Result<(), CloudError> {
        self.delete(Service::Image, &format!("/images/{id}")).await
    }
}
