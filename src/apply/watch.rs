//! One watcher for every server a run waits on. While anyone waits, it lists the cluster's
//! servers (one call) about once a second and hands each waiter its server's status, where
//! one poll per server made fifty calls a second for fifty servers and crowded out the creates.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cloud::{Cloud, CloudError};

/// Time between two listings while someone waits.
const INTERVAL: Duration = Duration::from_secs(1);

/// Listings in a row that may lack a server before its waiter asks Nova for it alone.
const ABSENT_LISTINGS: usize = 3;

/// The latest listing: each server's status by ID; `None` when the listing failed.
type Listing = Option<BTreeMap<String, String>>;

pub(crate) struct ServerWatch {
    cloud: Arc<Cloud>,
    listings: watch::Receiver<Arc<Listing>>,
    waiters: Arc<AtomicUsize>,
    wake: Arc<Notify>,
    poller: JoinHandle<()>,
}

impl Drop for ServerWatch {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

/// Counts a waiter for as long as it lives.
struct Waiter<'a>(&'a AtomicUsize);

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ServerWatch {
    /// Watches the servers carrying `tag`; lists nothing until someone waits.
    pub(crate) fn start(cloud: Arc<Cloud>, tag: String) -> ServerWatch {
        let (sender, listings) = watch::channel(Arc::new(None));
        let waiters = Arc::new(AtomicUsize::new(0));
        let wake = Arc::new(Notify::new());
        let poller = tokio::spawn(poll(
            cloud.clone(),
            tag,
            sender,
            waiters.clone(),
            wake.clone(),
        ));
        ServerWatch {
            cloud,
            listings,
            waiters,
            wake,
            poller,
        }
    }

    /// Waits until server `id` is ACTIVE. One that goes to ERROR, or that the listings keep
    /// missing, is asked for alone: Nova's answer then carries the fault or the 404.
    pub(crate) async fn until_active(&self, id: &str, within: Duration) -> Result<(), CloudError> {
        let deadline = Instant::now() + within;
        let left = || deadline.saturating_duration_since(Instant::now());
        self.waiters.fetch_add(1, Ordering::Relaxed);
        let _waiter = Waiter(&self.waiters);
        self.wake.notify_one();
        let mut listings = self.listings.clone();
        listings.mark_unchanged();
        let mut absent = 0;
        loop {
            match tokio::time::timeout_at(deadline, listings.changed()).await {
                // Out of time, or no watcher any more: Nova says where the server is.
                Err(_) | Ok(Err(_)) => break,
                Ok(Ok(())) => {}
            }
            let listing = listings.borrow_and_update().clone();
            let Some(statuses) = listing.as_ref() else {
                break;
            };
            match statuses.get(id).map(String::as_str) {
                Some("ACTIVE") => return Ok(()),
                Some("ERROR") => break,
                Some(_) => absent = 0,
                None if absent + 1 >= ABSENT_LISTINGS => break,
                None => absent += 1,
            }
        }
        self.cloud.wait_server_active(id, left()).await.map(|_| ())
    }
}

/// Lists the tagged servers once a second while anyone waits; sleeps otherwise.
async fn poll(
    cloud: Arc<Cloud>,
    tag: String,
    sender: watch::Sender<Arc<Listing>>,
    waiters: Arc<AtomicUsize>,
    wake: Arc<Notify>,
) {
    loop {
        if waiters.load(Ordering::Relaxed) == 0 {
            wake.notified().await;
            continue;
        }
        let started = Instant::now();
        let listing = cloud.servers_tagged(&[&tag]).await.ok().map(|servers| {
            servers
                .into_iter()
                .map(|s| (s.id, s.status))
                .collect::<BTreeMap<_, _>>()
        });
        if sender.send(Arc::new(listing)).is_err() {
            return;
        }
        tokio::time::sleep_until(started + INTERVAL).await;
    }
}
