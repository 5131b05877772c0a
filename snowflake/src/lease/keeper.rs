//! The lease keeper: acquires a (datacenter, worker) pair, renews it every third of its
//! time-to-live, and keeps the id worker's grant in step. When a renewal fails the grant runs
//! out on its own at the lease's local deadline, so ids stop within the lease time even when
//! the database hangs; the keeper goes on trying and grants again once it holds a lease.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{LeaseError, LeaseStore, store::Pair};
use crate::{
    id::MAX_WORKER_ID,
    worker::{Grant, IdWorker},
};

/// How a daemon leases its worker id.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub datacenter_id: u8,
    /// A worker id to hold; `None` takes the first free one.
    pub worker_id: Option<u8>,
    pub ttl: Duration,
    /// How long start-up waits for a pair held by someone else (such as this daemon's own
    /// previous, crashed run) to expire.
    pub acquire_timeout: Duration,
}

impl LeaseSettings {
    /// Returns how often the lease is renewed: a third of its time-to-live, so two renewals
    /// may fail before it runs out.
    pub fn renew_interval(&self) -> Duration {
        self.ttl / 3
    }

    /// Returns how long before the database's expiry this daemon stops issuing, to absorb
    /// clock rate differences and the renewal's own round trip.
    fn safety_margin(&self) -> Duration {
        self.ttl / 10
    }
}

/// Holds the lease for one daemon.
#[derive(Debug)]
pub struct LeaseKeeper {
    store: LeaseStore,
    settings: LeaseSettings,
    owner: String,
    worker: Arc<IdWorker>,
    held: Option<Pair>,
    holding: watch::Sender<bool>,
}

impl LeaseKeeper {
    /// Returns a keeper for `worker`; it holds nothing until [`LeaseKeeper::acquire`].
    pub fn new(store: LeaseStore, settings: LeaseSettings, worker: Arc<IdWorker>) -> Self {
        let (holding, _) = watch::channel(false);
        Self {
            store,
            settings,
            owner: owner_name(),
            worker,
            held: None,
            holding,
        }
    }

    /// Returns this daemon's name in the lease table.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Returns a receiver that tells whether a lease is held (for the health service).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.holding.subscribe()
    }

    /// Acquires a pair, retrying while it is held by someone else, for at most the settings'
    /// acquire timeout. Returns the grant now in force.
    pub async fn acquire(&mut self) -> Result<Grant, LeaseError> {
        let give_up = Instant::now() + self.settings.acquire_timeout;
        loop {
            match self.try_acquire().await {
                Ok(grant) => return Ok(grant),
                Err(err) if Instant::now() >= give_up => return Err(err),
                Err(err) => {
                    tracing::info!(error = %err, "worker id not acquired yet; retrying");
                    let pause = self.settings.renew_interval().min(Duration::from_secs(1));
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    async fn try_acquire(&mut self) -> Result<Grant, LeaseError> {
        let datacenter_id = self.settings.datacenter_id;
        let candidates: Vec<u8> = match self.settings.worker_id {
            Some(worker_id) => vec![worker_id],
            None => (0..=MAX_WORKER_ID).collect(),
        };
        for worker_id in candidates {
            let pair = Pair {
                datacenter_id,
                worker_id,
            };
            let started = Instant::now();
            let reserve_ms = self.reserve_ms();
            match self
                .store
                .acquire(pair, &self.owner, self.settings.ttl, reserve_ms)
                .await
            {
                Ok(floor_ms) => {
                    let grant = self.grant(pair, started, reserve_ms);
                    self.worker.grant(grant, floor_ms);
                    self.held = Some(pair);
                    self.holding.send_replace(true);
                    tracing::info!(datacenter_id, worker_id, floor_ms, owner = %self.owner, "worker id leased");
                    return Ok(grant);
                }
                // Without a pinned worker id, any free one will do.
                Err(LeaseError::Conflict { .. }) if self.settings.worker_id.is_none() => {}
                Err(err) => return Err(err),
            }
        }
        Err(LeaseError::AllTaken(datacenter_id))
    }

    /// Renews the lease until `shutdown`, then releases it.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let interval = self.settings.renew_interval();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(interval) => {}
            }
            let result = match self.held {
                Some(pair) => self.renew(pair).await,
                None => self.try_acquire().await.map(drop),
            };
            if let Err(err) = result {
                self.on_failure(err);
            }
        }
        self.release().await;
    }

    async fn renew(&mut self, pair: Pair) -> Result<(), LeaseError> {
        let started = Instant::now();
        let reserve_ms = self.reserve_ms();
        self.store
            .renew(pair, &self.owner, self.settings.ttl, reserve_ms)
            .await?;
        self.worker.grant(self.grant(pair, started, reserve_ms), 0);
        self.holding.send_replace(true);
        Ok(())
    }

    fn on_failure(&mut self, err: LeaseError) {
        if let LeaseError::Lost { .. } = err {
            // Another daemon holds the pair: stop at once rather than at the deadline.
            self.worker.revoke();
            self.held = None;
        }
        let expired = self
            .worker
            .current_grant()
            .and_then(|grant| grant.valid_until)
            .is_none_or(|until| Instant::now() >= until);
        if expired {
            self.holding.send_replace(false);
        }
        tracing::warn!(error = %err, expired, "worker-id lease not renewed");
    }

    async fn release(&mut self) {
        let Some((grant, last_ms)) = self.worker.revoke() else {
            return;
        };
        self.holding.send_replace(false);
        let pair = Pair {
            datacenter_id: grant.datacenter_id,
            worker_id: grant.worker_id,
        };
        match self.store.release(pair, &self.owner, last_ms).await {
            Ok(()) => tracing::info!(
                worker_id = pair.worker_id,
                last_ms,
                "worker-id lease released"
            ),
            Err(err) => {
                tracing::warn!(error = %err, "worker-id lease not released; it will expire")
            }
        }
    }

    /// Returns the latest id time to reserve now: the worker's clock plus the lease time, so
    /// ids issued until the lease runs out are covered.
    fn reserve_ms(&self) -> u64 {
        self.worker.clock().now_ms() + self.settings.ttl.as_millis() as u64
    }

    fn grant(&self, pair: Pair, started: Instant, reserve_ms: u64) -> Grant {
        // The database set the expiry after `started`, so stopping a margin before
        // `started + ttl` stops before the database considers the lease free.
        let valid_until = started + self.settings.ttl - self.settings.safety_margin();
        Grant {
            datacenter_id: pair.datacenter_id,
            worker_id: pair.worker_id,
            valid_until: Some(valid_until),
            ceiling_ms: reserve_ms,
        }
    }
}

/// Returns a name unique to this process: host, pid and a random tag.
fn owner_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".into());
    format!(
        "{host}/{}/{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}
