//! Tweet ids from Snowflake. A post must not wait on a Snowflake round trip, so the remote
//! source prefetches batches with `GetIds` in the background and hands them out from a
//! buffer; ids older than `max_age` are dropped at hand-out, so a quiet server's buffered ids
//! do not give new tweets a stale creation time. `tbird dev` uses an in-process worker instead.

use std::{sync::Arc, time::Duration};

use snowflake::{
    client::Client,
    clock::{Clock, SystemClock},
    id::IdParts,
    worker::{IdError, IdWorker},
};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

/// Why no id could be had. The text becomes a gRPC status, which prints one message, so the
/// worker's refusal is in it rather than a `source`.
#[derive(Debug, thiserror::Error)]
pub enum IdsError {
    #[error("snowflake gave no id within {0:?}")]
    Timeout(Duration),
    #[error("snowflake: {0}")]
    Refused(IdError),
    #[error("snowflake: the id prefetcher stopped")]
    Stopped,
}

/// How the remote source prefetches.
#[derive(Clone, Debug)]
pub struct PrefetchSettings {
    /// Ids asked for per `GetIds` call.
    pub batch: u32,
    /// Ids held ready (at least one batch).
    pub buffer: usize,
    /// Buffered ids older than this are dropped rather than handed out.
    pub max_age: Duration,
    /// How long a caller waits for an id before giving up.
    pub wait: Duration,
}

impl Default for PrefetchSettings {
    fn default() -> Self {
        Self {
            batch: 1_000,
            buffer: 2_000,
            max_age: Duration::from_secs(1),
            wait: Duration::from_secs(2),
        }
    }
}

/// Where tweet ids come from.
#[derive(Clone, Debug)]
pub enum IdSource {
    /// A worker in this process (`tbird dev`).
    Local(Arc<IdWorker>),
    /// A Snowflake daemon, prefetched.
    Remote(Arc<Prefetched>),
}

/// Ids prefetched from a daemon.
#[derive(Debug)]
pub struct Prefetched {
    ids: Mutex<mpsc::Receiver<u64>>,
    settings: PrefetchSettings,
    clock: SystemClock,
}

impl IdSource {
    /// Starts prefetching from `client` until `shutdown`.
    pub fn remote(client: Client, settings: PrefetchSettings, shutdown: CancellationToken) -> Self {
        let (tx, rx) = mpsc::channel(settings.buffer.max(settings.batch as usize));
        tokio::spawn(prefetch(client, settings.batch, tx, shutdown));
        let clock = SystemClock::default();
        Self::Remote(Arc::new(Prefetched {
            ids: Mutex::new(rx),
            settings,
            clock,
        }))
    }

    /// Returns a fresh id.
    pub async fn next_id(&self) -> Result<u64, IdsError> {
        match self {
            Self::Local(worker) => worker.next_id().map_err(IdsError::Refused),
            Self::Remote(prefetched) => prefetched.next_id().await,
        }
    }
}

impl Prefetched {
    async fn next_id(&self) -> Result<u64, IdsError> {
        let wait = self.settings.wait;
        let take = async {
            let mut ids = self.ids.lock().await;
            loop {
                let id = ids.recv().await?;
                let issued = IdParts::decompose(id).map_or(0, |p| p.timestamp_ms);
                let age = self.clock.now_ms().saturating_sub(issued);
                if age <= self.settings.max_age.as_millis() as u64 {
                    return Some(id);
                }
            }
        };
        match tokio::time::timeout(wait, take).await {
            Ok(Some(id)) => Ok(id),
            Ok(None) => Err(IdsError::Stopped),
            Err(_) => Err(IdsError::Timeout(wait)),
        }
    }
}

/// Fills the buffer with batches until shutdown; a failed call is retried after a pause.
async fn prefetch(client: Client, batch: u32, tx: mpsc::Sender<u64>, shutdown: CancellationToken) {
    let mut pause = Duration::from_millis(50);
    loop {
        let ids = tokio::select! {
            () = shutdown.cancelled() => return,
            ids = client.get_ids(batch) => ids,
        };
        match ids {
            Ok(ids) => {
                pause = Duration::from_millis(50);
                for id in ids {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        sent = tx.send(id) => if sent.is_err() { return },
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "prefetch ids from snowflake");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}
