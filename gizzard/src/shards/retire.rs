//! The retirement sweep every server runs: it takes each leaf the topology deleted (see
//! [`crate::nameserver::retired`]) through its two steps. A leaf is fenced (its tables renamed)
//! once no registered server can still route writes to it: each has confirmed the version that
//! deleted it, or its lease is provably over. Its tables are dropped once the grace period
//! after the fence is over. Both steps are idempotent, so servers sweeping at once, or a sweep
//! cut short by a crash, do no harm.

use std::{sync::Arc, time::Duration};

use tokio::{task::JoinHandle, time::MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{PhysicalShard, ShardRouter};
use crate::nameserver::{
    NameServerError, RetiredShard, ShardId, ShardInfo, retired::fenced_prefix, servers::waiting_for,
};

/// How long a fenced leaf's tables are kept by default before they are dropped: time to
/// notice a mistake and copy rows back by hand.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);

/// What one sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    pub fenced: Vec<ShardId>,
    pub dropped: Vec<ShardId>,
}

/// Fences and drops retired leaves of shard type `S`.
pub struct Retirement<S> {
    router: Arc<ShardRouter<S>>,
    grace: Duration,
}

impl<S: PhysicalShard> Retirement<S> {
    /// Returns a sweep over `router`'s topology that drops tables `grace` after their fence.
    pub fn new(router: Arc<ShardRouter<S>>, grace: Duration) -> Self {
        Self { router, grace }
    }

    /// Fences every retired leaf no server can still write, and drops those whose grace
    /// period is over. A leaf whose host fails is left for the next sweep.
    pub async fn sweep(&self) -> Result<Sweep, NameServerError> {
        let nameserver = self.router.routing().nameserver();
        let retired = nameserver.retired().await?;
        let mut done = Sweep::default();
        if retired.is_empty() {
            return Ok(done);
        }
        let servers = nameserver.servers().await?;
        for shard in retired {
            match &shard.fenced_prefix {
                None if waiting_for(&servers, shard.retired_version).is_empty() => {
                    let prefix = fenced_prefix(&shard.id.table_prefix, shard.retired_version);
                    let to = prefix.clone();
                    if self
                        .step(&shard, &shard.id, |s| async move { s.fence(&to).await })
                        .await
                    {
                        nameserver.mark_fenced(&shard, &prefix, self.grace).await?;
                        tracing::info!(shard = %shard.id, fenced = prefix, "retired leaf fenced");
                        done.fenced.push(shard.id.clone());
                    }
                }
                Some(prefix) if shard.may_drop() => {
                    let fenced = ShardId {
                        hostname: shard.id.hostname.clone(),
                        table_prefix: prefix.clone(),
                    };
                    if self
                        .step(&shard, &fenced, |s| async move { s.drop_tables().await })
                        .await
                    {
                        nameserver.forget_retired(&shard).await?;
                        tracing::info!(shard = %shard.id, "retired leaf dropped");
                        done.dropped.push(shard.id.clone());
                    }
                }
                _ => {}
            }
        }
        Ok(done)
    }

    /// Runs `step` on the physical shard `id` of `shard`'s class; returns whether it worked.
    async fn step<F, Fut>(&self, shard: &RetiredShard, id: &ShardId, step: F) -> bool
    where
        F: FnOnce(S) -> Fut,
        Fut: Future<Output = Result<(), super::ShardError>>,
    {
        let info = ShardInfo {
            id: id.clone(),
            class_name: shard.class_name.clone(),
            busy: false,
        };
        let result = match self.router.physical(&info).await {
            Ok(physical) => step(physical).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = &result {
            tracing::warn!(shard = %shard.id, %error, "retired leaf: will try again");
        }
        result.is_ok()
    }

    /// Spawns a task that sweeps every `interval` until `shutdown`.
    pub fn spawn(self, interval: Duration, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = ticks.tick() => {}
                }
                let swept = tokio::select! {
                    () = shutdown.cancelled() => break,
                    swept = self.sweep() => swept,
                };
                if let Err(error) = swept {
                    tracing::warn!(%error, "retirement sweep failed");
                }
            }
        })
    }
}
