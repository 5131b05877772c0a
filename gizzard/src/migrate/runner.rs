//! [`Migrator`]: runs migrations as jobs of the durable queue. A migration's job is claimed
//! by one worker of one server at a time (the queue's lease); the run takes ownership of the
//! migration's row, works through the workflow's steps and saves its progress after every
//! page. When the server dies, the lease ends, another server's worker claims the job and
//! resumes from the saved step and cursor. Every topology step is one atomic batch that is
//! skipped when a crashed run already applied it.
//!
//! A migration only ever adds a write target (behind a WriteOnly node) before copying, and
//! cuts over only after the copy, a clean diff and an empty retry queue for the shards
//! involved. After each topology change it waits for agreement, never for time: every
//! registered server has confirmed the new version (and so has no write routed with an older
//! one in flight), or its routing lease is provably over by the nameserver database's clock
//! (see [`crate::nameserver::servers`]). A cancel before the cutover removes what was added:
//! the old shards received every write all along.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::{
    model::{HashRange, Migration, MigrationId, MovePlan, Plan, Progress, SplitPlan, Status, Step},
    ops::{self, Copier, Differ, Tuning},
    plan,
    store::{MigrationStore, StoreError},
};
use crate::{
    nameserver::{
        Change, NameServer, Routing, ShardId, Topology, TopologyError, servers::waiting_for,
    },
    scheduler::{ClaimedJob, JobFailure, JobFuture, JobQueue, JobRunner, NewJob, Priority},
    shards::{PhysicalShard, ShardError, ShardRouter},
    topology::TopologyService,
};

/// The job type of migrations.
pub const JOB_TYPE: &str = "gizzard.migration";

/// The payload of a migration's job.
#[derive(Debug, Serialize, Deserialize)]
struct JobPayload {
    migration: MigrationId,
}

/// Returns the job that runs migration `id`.
pub fn job(id: MigrationId) -> NewJob {
    NewJob::json(Priority::Copy, JOB_TYPE, &JobPayload { migration: id })
        .expect("a migration payload encodes")
}

/// How migrations run.
#[derive(Clone, Debug, PartialEq)]
pub struct MigrationSettings {
    pub tuning: Tuning,
    /// Rows a copy moves per second at most; `None` for as fast as the shards go.
    pub rows_per_second: Option<u64>,
    /// How often a waiting step looks again (agreement, retry queue, child migrations).
    pub poll: Duration,
    /// Repair rounds before a migration whose replicas keep differing fails.
    pub max_repair_rounds: u32,
}

impl Default for MigrationSettings {
    fn default() -> Self {
        Self {
            tuning: Tuning::default(),
            rows_per_second: None,
            poll: Duration::from_millis(250),
            max_repair_rounds: 5,
        }
    }
}

/// Why a run stopped before finishing.
#[derive(Debug)]
enum Stop {
    /// An operator asked to cancel.
    Cancelled,
    /// The migration cannot go on; it is rolled back and marked failed.
    Failed(String),
    /// A shard or the nameserver failed for now; the job retries and resumes.
    Retry(String),
    /// Another run took the migration over.
    Lost,
}

impl From<StoreError> for Stop {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Lost(_) => Stop::Lost,
            err => Stop::Retry(err.to_string()),
        }
    }
}

impl From<ShardError> for Stop {
    fn from(err: ShardError) -> Self {
        Stop::Retry(err.to_string())
    }
}

/// Runs migration jobs for shards of type `S`. Cheap to clone.
pub struct Migrator<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Migrator<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<S> {
    nameserver: NameServer,
    routing: Arc<Routing>,
    router: Arc<ShardRouter<S>>,
    topology: TopologyService,
    queue: JobQueue,
    store: MigrationStore,
    settings: MigrationSettings,
}

impl<S: PhysicalShard> Migrator<S> {
    pub fn new(
        routing: Arc<Routing>,
        router: Arc<ShardRouter<S>>,
        queue: JobQueue,
        store: MigrationStore,
        settings: MigrationSettings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                nameserver: routing.nameserver().clone(),
                routing,
                topology: TopologyService::for_router(router.clone()),
                router,
                queue,
                store,
                settings,
            }),
        }
    }

    /// Runs migration `id` as `owner` until it ends or must wait for a retry of its job.
    async fn run(&self, id: MigrationId, owner: String) -> Result<(), JobFailure> {
        let migration = match self.inner.store.take(id, &owner).await {
            Ok(migration) => migration,
            // Finished by an earlier run whose job was not completed: nothing to do.
            Err(StoreError::NotRunning { .. }) => return Ok(()),
            Err(err) => return Err(JobFailure::counted(err.to_string())),
        };
        let mut run = Run {
            migrator: self,
            id,
            owner,
            progress: migration.progress.clone(),
            saved_at: Instant::now(),
        };
        // A rebalance still drives its running moves through their own cancellation.
        let rebalance = matches!(migration.plan, Plan::Rebalance(_));
        let outcome = if migration.cancel_requested && !rebalance {
            Err(Stop::Cancelled)
        } else {
            run.execute(&migration.plan).await
        };
        run.conclude(&migration, outcome).await
    }
}

impl<S: PhysicalShard> JobRunner for Migrator<S> {
    fn run<'a>(&'a self, job: &'a ClaimedJob) -> JobFuture<'a> {
        Box::pin(async move {
            let payload: JobPayload = job
                .decode()
                .map_err(|e| JobFailure::counted(e.to_string()))?;
            let owner = format!("{}#{}", job.owner, job.id);
            Migrator::run(self, payload.migration, owner).await
        })
    }

    fn timeout(&self, _job: &ClaimedJob) -> Option<Duration> {
        // A migration runs as long as its data takes; its lease heartbeat and saved progress
        // cover a server that dies, and operators cancel it instead.
        Some(Duration::from_secs(7 * 24 * 3600))
    }
}

/// One run of one migration.
struct Run<'a, S> {
    migrator: &'a Migrator<S>,
    id: MigrationId,
    owner: String,
    progress: Progress,
    saved_at: Instant,
}

/// How often a copy or diff saves its cursor and counts. A page takes milliseconds and each
/// save is a durable write to the nameserver the copy would wait on; a resumed copy redoes at
/// most this much work, and its writes merge.
const SAVE_EVERY: Duration = Duration::from_millis(250);

impl<S: PhysicalShard> Run<'_, S> {
    fn inner(&self) -> &Inner<S> {
        &self.migrator.inner
    }

    /// Saves progress; stops the run when an operator asked to cancel.
    async fn save(&mut self) -> Result<(), Stop> {
        let cancel = self
            .inner()
            .store
            .save(self.id, &self.owner, &self.progress)
            .await?;
        self.saved_at = Instant::now();
        if cancel { Err(Stop::Cancelled) } else { Ok(()) }
    }

    /// Saves progress if the last save is [`SAVE_EVERY`] old.
    async fn save_now_and_then(&mut self) -> Result<(), Stop> {
        if self.saved_at.elapsed() < SAVE_EVERY {
            return Ok(());
        }
        self.save().await
    }

    async fn step(&mut self, step: Step) -> Result<(), Stop> {
        tracing::info!(migration = self.id, step = step.as_str(), "migration step");
        self.progress.step = step;
        self.progress.note.clear();
        self.save().await
    }

    async fn execute(&mut self, plan: &Plan) -> Result<(), Stop> {
        match plan {
            Plan::Copy { from, to, hashes } => {
                if self.progress.step != Step::Copy {
                    self.step(Step::Copy).await?;
                }
                self.copy_step(from, std::slice::from_ref(to), *hashes)
                    .await
            }
            Plan::Diff { a, b, hashes } | Plan::Repair { a, b, hashes } => {
                // A resumed diff starts over: it keeps no cursor.
                self.progress.rows_compared = 0;
                let repair = matches!(plan, Plan::Repair { .. });
                self.step(Step::Diff).await?;
                self.diff_step(a, b, *hashes, repair).await.map(drop)
            }
            Plan::Move(plan) => self.run_move(plan).await,
            Plan::Split(plan) => self.run_split(plan).await,
            Plan::Rebalance(plan) => self.run_rebalance(plan).await,
        }
    }

    /// Records how the run ended; rolls back a workflow that stops before its cutover.
    async fn conclude(
        mut self,
        migration: &Migration,
        outcome: Result<(), Stop>,
    ) -> Result<(), JobFailure> {
        let (status, error) = match outcome {
            Ok(()) => (Status::Done, None),
            Err(Stop::Lost) => {
                tracing::warn!(migration = self.id, "migration taken over; this run stops");
                return Ok(());
            }
            Err(Stop::Retry(reason)) => {
                tracing::warn!(migration = self.id, %reason, "migration paused; its job retries");
                self.progress.note = format!("waiting to retry: {reason}");
                let _ = self
                    .inner()
                    .store
                    .save(self.id, &self.owner, &self.progress)
                    .await;
                return Err(JobFailure::counted(reason));
            }
            Err(Stop::Cancelled) => (Status::Cancelled, Some("cancelled by an operator".into())),
            Err(Stop::Failed(reason)) => (Status::Failed, Some(reason)),
        };
        if status != Status::Done
            && let Err(err) = self.roll_back(&migration.plan).await
        {
            // The job retries the rollback; the migration stays running until it lands.
            return Err(JobFailure::counted(format!("roll back: {err}")));
        }
        self.progress.step = Step::Finished;
        self.progress.note.clear();
        self.inner()
            .store
            .finish(
                self.id,
                &self.owner,
                status,
                &self.progress,
                error.as_deref(),
            )
            .await
            .map_err(|e| JobFailure::counted(e.to_string()))?;
        tracing::info!(migration = self.id, %status, "migration ended");
        Ok(())
    }

    /// Undoes a workflow's prepare step, unless its cutover already happened.
    async fn roll_back(&self, plan: &Plan) -> Result<(), String> {
        let topology = self.topology().await.map_err(|e| format!("{e:?}"))?;
        let changes = match plan {
            Plan::Move(m) if topology.shards.contains_key(&m.wrapper) => plan::move_rollback(m),
            Plan::Split(s) if topology.shards.contains_key(&s.bridge) => plan::split_rollback(s),
            _ => return Ok(()),
        };
        self.apply(&changes).await.map_err(|e| format!("{e:?}"))
    }

    async fn topology(&self) -> Result<Arc<Topology>, Stop> {
        self.inner().topology.current().await.map_err(retry)
    }

    /// Applies `changes` as one batch, creating the tables of new leaves first.
    async fn apply(&self, changes: &[Change]) -> Result<(), Stop> {
        match self.inner().topology.apply(changes).await {
            Ok(_) => Ok(()),
            Err(err) => match err.topology_error() {
                // A namesake of a new leaf was just retired: its fence comes within a lease.
                Some(TopologyError::StillRetiring(_)) | None => Err(retry(err)),
                Some(_) => Err(Stop::Failed(format!("topology change refused: {err}"))),
            },
        }
    }

    async fn leaf(&self, id: &ShardId) -> Result<Arc<S>, Stop> {
        self.inner()
            .router
            .leaf(id)
            .await
            .map(|leaf| leaf.shard)
            .map_err(|e| Stop::Failed(format!("{id}: {e}")))
    }

    /// Waits until every registered server routes with the nameserver's current version or
    /// has provably stopped acknowledging writes; the note names those it waits for. After a
    /// cutover (`cancellable` false) a cancel has nothing left to undo and is ignored.
    async fn agree(&mut self, cancellable: bool) -> Result<(), Stop> {
        let inner = self.inner();
        // This server confirms at once rather than at its next poll.
        inner.routing.refresh(false).await.map_err(retry)?;
        let version = inner.nameserver.version().await.map_err(retry)?;
        loop {
            let servers = self.inner().nameserver.servers().await.map_err(retry)?;
            let waiting = waiting_for(&servers, version);
            if waiting.is_empty() {
                return Ok(());
            }
            let names: Vec<String> = waiting
                .iter()
                .map(|s| {
                    format!(
                        "{} at {} (on v{}, confirmed {:.1}s ago, lease over in {:.1}s)",
                        s.id,
                        s.address,
                        s.version,
                        s.confirmed_age().as_secs_f64(),
                        s.stale_in().as_secs_f64()
                    )
                })
                .collect();
            self.progress.note = format!(
                "waiting for {} to route with version {version}",
                names.join(", ")
            );
            if cancellable {
                self.save().await?;
            } else {
                self.save_ignoring_cancel().await?;
            }
            tokio::time::sleep(self.inner().settings.poll).await;
        }
    }

    /// Copies `from` into `to`, resuming at the saved cursor.
    async fn copy_step(
        &mut self,
        from: &ShardId,
        to: &[ShardId],
        hashes: Option<HashRange>,
    ) -> Result<(), Stop> {
        let source = self.leaf(from).await?;
        let mut targets = Vec::new();
        for id in to {
            targets.push(self.leaf(id).await?);
        }
        let tuning = self.inner().settings.tuning.clone();
        if self.progress.rows_total == 0 {
            self.progress.rows_total = source.count_rows(hashes.map(HashRange::range)).await?;
        }
        if self.progress.cursor.is_none() {
            self.defer_indexes(&targets, self.progress.rows_total, &tuning)
                .await?;
        }
        let cursor = match &self.progress.cursor {
            Some(value) => Some({
                self.progress.resumes += 1;
                tracing::info!(
                    migration = self.id,
                    rows = self.progress.rows_copied,
                    "copy resumes at its saved cursor"
                );
                serde_json::from_value::<S::Cursor>(value.clone())
                    .map_err(|e| Stop::Failed(format!("unreadable copy cursor: {e}")))?
            }),
            None => None,
        };
        let rows_per_second = self
            .progress
            .rows_per_second
            .or(self.inner().settings.rows_per_second);
        let mut copier = Copier::new(
            &*source,
            &targets,
            hashes.map(HashRange::range),
            cursor,
            &tuning,
            rows_per_second,
        );
        while let Some(page) = copier.next_page().await? {
            self.progress.cursor = serde_json::to_value(&page.cursor).ok();
            self.progress.rows_copied += page.rows as u64;
            self.save_now_and_then().await?;
        }
        // Also after a resume: the indexes may have been dropped before a crash.
        self.progress.note = "building the copy's indexes".into();
        self.save().await?;
        for target in &targets {
            target.build_indexes(self.progress.rows_copied).await?;
        }
        self.progress.note.clear();
        Ok(())
    }

    /// Drops the migration-only indexes of targets that hold under a tenth of the `rows` to
    /// copy, when there are enough rows for it to pay: loading rows into a table without its
    /// index on random hashes, then building the index in one sorted pass, took MariaDB
    /// about half the time of updating the index row by row (1M tweet rows, 2 cores).
    async fn defer_indexes(
        &mut self,
        targets: &[Arc<S>],
        rows: u64,
        tuning: &Tuning,
    ) -> Result<(), Stop> {
        if rows < tuning.defer_indexes_min_rows {
            return Ok(());
        }
        for target in targets {
            if target.count_rows(None).await?.saturating_mul(10) <= rows {
                target.defer_indexes().await?;
            }
        }
        Ok(())
    }

    /// Diffs `a` and `b`, records what differs and, when `repair`, repairs it. Returns the
    /// number of differing keys.
    async fn diff_step(
        &mut self,
        a: &ShardId,
        b: &ShardId,
        hashes: Option<HashRange>,
        repair: bool,
    ) -> Result<u64, Stop> {
        let (shard_a, shard_b) = (self.leaf(a).await?, self.leaf(b).await?);
        let tuning = self.inner().settings.tuning.clone();
        let mut differ = Differ::new(&*shard_a, &*shard_b, hashes.map(HashRange::range), &tuning);
        let mut differences = Vec::new();
        while let Some(chunk) = differ.next_chunk().await? {
            self.progress.rows_compared += chunk.compared;
            differences.extend(chunk.differences);
            self.save_now_and_then().await?;
        }
        let found = differences.len() as u64;
        self.progress.differing = found;
        self.progress.differing_keys = differences
            .iter()
            .take(super::model::MAX_REPORTED_KEYS)
            .map(|d| d.key)
            .collect();
        if repair && found > 0 {
            self.progress.repaired += ops::repair(&*shard_a, &*shard_b, &differences).await?;
        }
        self.save().await?;
        Ok(found)
    }

    /// Waits until no retry job targets any of `shards`.
    async fn drain(&mut self, shards: &[&ShardId]) -> Result<(), Stop> {
        loop {
            let mut waiting = Vec::new();
            for shard in shards {
                let pending = self
                    .inner()
                    .queue
                    .pending_for_shard(&shard.to_string())
                    .await
                    .map_err(retry)?;
                if pending > 0 {
                    waiting.push(format!("{pending} on {shard}"));
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            self.progress.note = format!(
                "waiting for retry jobs ({}); `gizzmo jobs list` shows them, bad ones need a retry or purge",
                waiting.join(", ")
            );
            self.save().await?;
            tokio::time::sleep(self.inner().settings.poll).await;
        }
    }

    /// Diffs and repairs `source` against each target until a diff comes back clean after
    /// the retry queue drained.
    async fn verify(
        &mut self,
        source: &ShardId,
        targets: &[ShardId],
        hashes: Option<HashRange>,
        drain: &[&ShardId],
    ) -> Result<(), Stop> {
        loop {
            self.drain(drain).await?;
            let mut differing = 0;
            self.progress.rows_compared = 0;
            for target in targets {
                differing += self.diff_step(source, target, hashes, true).await?;
            }
            if differing == 0 {
                return Ok(());
            }
            self.progress.diff_rounds += 1;
            if self.progress.diff_rounds > self.inner().settings.max_repair_rounds {
                return Err(Stop::Failed(format!(
                    "replicas still differ after {} repair rounds (keys {:?})",
                    self.progress.diff_rounds - 1,
                    self.progress.differing_keys
                )));
            }
            tracing::info!(
                migration = self.id,
                differing,
                "repaired differences; diffing again"
            );
        }
    }

    async fn run_move(&mut self, m: &MovePlan) -> Result<(), Stop> {
        loop {
            match self.progress.step {
                Step::Prepare => {
                    if !self.topology().await?.shards.contains_key(&m.wrapper) {
                        self.apply(&plan::move_prepare(m)).await?;
                    }
                    self.step(Step::Settle).await?;
                }
                Step::Settle => {
                    self.agree(true).await?;
                    self.step(Step::Copy).await?;
                }
                Step::Copy => {
                    self.copy_step(&m.source, std::slice::from_ref(&m.target), None)
                        .await?;
                    self.step(Step::Diff).await?;
                }
                Step::Drain | Step::Diff => {
                    let drain = [&m.source, &m.target];
                    self.verify(&m.source, std::slice::from_ref(&m.target), None, &drain)
                        .await?;
                    self.step(Step::Cutover).await?;
                }
                Step::Cutover => {
                    if self.topology().await?.shards.contains_key(&m.wrapper) {
                        self.apply(&plan::move_cutover(m)).await?;
                    }
                    // Done means no server writes the old replica any more.
                    self.agree(false).await?;
                    self.progress.step = Step::Finished;
                    self.save_ignoring_cancel().await?;
                }
                Step::Cleanup | Step::Children | Step::Finished => return Ok(()),
            }
        }
    }

    async fn run_split(&mut self, s: &SplitPlan) -> Result<(), Stop> {
        let hashes = Some(s.moved);
        loop {
            match self.progress.step {
                Step::Prepare => {
                    if !self.topology().await?.shards.contains_key(&s.bridge) {
                        self.apply(&plan::split_prepare(s)).await?;
                    }
                    self.step(Step::Settle).await?;
                }
                Step::Settle => {
                    self.agree(true).await?;
                    self.step(Step::Copy).await?;
                }
                Step::Copy => {
                    self.copy_step(&s.source, &s.new_leaves, hashes).await?;
                    self.step(Step::Diff).await?;
                }
                Step::Drain | Step::Diff => {
                    let drain: Vec<&ShardId> = s.old_leaves.iter().chain(&s.new_leaves).collect();
                    self.verify(&s.source, &s.new_leaves, hashes, &drain)
                        .await?;
                    self.step(Step::Cutover).await?;
                }
                Step::Cutover => {
                    if self.topology().await?.shards.contains_key(&s.bridge) {
                        self.apply(&plan::split_cutover(s)).await?;
                    }
                    self.progress.step = Step::Cleanup;
                    self.save_ignoring_cancel().await?;
                }
                Step::Cleanup => {
                    // Once every server routes the moved range to the new tree, none reads
                    // or writes the old tree's copies of those rows, so they can go.
                    self.agree(false).await?;
                    for leaf in &s.old_leaves {
                        let shard = self.leaf(leaf).await?;
                        let deleted = shard.delete_hash_range(s.moved.range()).await?;
                        tracing::info!(migration = self.id, shard = %leaf, deleted, "split cleanup");
                    }
                    self.progress.step = Step::Finished;
                    self.save_ignoring_cancel().await?;
                }
                Step::Children | Step::Finished => return Ok(()),
            }
        }
    }

    /// Saves progress after the cutover, when a cancel has nothing left to undo.
    async fn save_ignoring_cancel(&mut self) -> Result<(), Stop> {
        match self.save().await {
            Err(Stop::Cancelled) => Ok(()),
            other => other,
        }
    }

    /// Runs the planned moves as child migrations, at most `max_copies` at once and
    /// `copies_per_host` per host, in this job. A resumed run picks up the children it had
    /// started.
    async fn run_rebalance(&mut self, plan: &super::model::RebalancePlan) -> Result<(), Stop> {
        if self.progress.children.len() != plan.moves.len() {
            self.progress.children = vec![None; plan.moves.len()];
            self.step(Step::Children).await?;
        }
        let mut running: JoinSet<MigrationId> = JoinSet::new();
        let mut live: BTreeMap<MigrationId, usize> = BTreeMap::new();
        let mut cancelled = false;
        loop {
            let statuses = self.child_statuses().await?;
            // Running children without a task here (a resumed run's, or one whose job must
            // retry) are started again.
            for (i, child) in self.progress.children.iter().enumerate() {
                if let Some(id) = child
                    && statuses.get(id) == Some(&Status::Running)
                    && !live.contains_key(id)
                {
                    live.insert(*id, i);
                    running.spawn(self.child_task(*id));
                }
            }
            if !cancelled {
                self.start_children(plan, &mut live, &mut running).await?;
            }
            let done = self
                .progress
                .children
                .iter()
                .all(|c| c.is_some_and(|id| statuses.get(&id).is_some_and(|s| s.is_final())));
            if done || (cancelled && live.is_empty()) {
                break;
            }
            tokio::select! {
                Some(Ok(id)) = running.join_next(), if !running.is_empty() => {
                    live.remove(&id);
                }
                () = tokio::time::sleep(self.inner().settings.poll) => {}
            }
            match self.save().await {
                Err(Stop::Cancelled) if !cancelled => {
                    cancelled = true;
                    // Flags the moves started since the operator asked, too.
                    self.inner().store.request_cancel(self.id).await?;
                }
                Err(Stop::Cancelled) => {}
                other => other?,
            }
        }
        let statuses = self.child_statuses().await?;
        let failed: Vec<String> = statuses
            .iter()
            .filter(|(_, s)| **s == Status::Failed)
            .map(|(id, _)| id.to_string())
            .collect();
        if cancelled {
            return Err(Stop::Cancelled);
        }
        if !failed.is_empty() {
            return Err(Stop::Failed(format!(
                "moves {} failed (gizzmo migrations show them)",
                failed.join(", ")
            )));
        }
        Ok(())
    }

    async fn child_statuses(&self) -> Result<BTreeMap<MigrationId, Status>, Stop> {
        let children = self
            .inner()
            .store
            .list(super::store::ListFilter {
                parent: Some(self.id),
                ..Default::default()
            })
            .await?;
        Ok(children.into_iter().map(|c| (c.id, c.status)).collect())
    }

    /// Starts unstarted moves while the limits allow.
    async fn start_children(
        &mut self,
        plan: &super::model::RebalancePlan,
        live: &mut BTreeMap<MigrationId, usize>,
        running: &mut JoinSet<MigrationId>,
    ) -> Result<(), Stop> {
        for i in 0..plan.moves.len() {
            if live.len() >= plan.max_copies {
                return Ok(());
            }
            if self.progress.children[i].is_some() {
                continue;
            }
            let m = &plan.moves[i];
            let busy_on = |host: &str| {
                live.values()
                    .filter(|&&j| {
                        let other = &plan.moves[j];
                        other.source.hostname == host || other.target.hostname == host
                    })
                    .count()
            };
            if busy_on(&m.source.hostname) >= plan.copies_per_host
                || busy_on(&m.target.hostname) >= plan.copies_per_host
            {
                continue;
            }
            let id = self
                .inner()
                .store
                .create(
                    &Plan::Move(m.clone()),
                    &Progress {
                        rows_per_second: self.progress.rows_per_second,
                        ..Progress::default()
                    },
                    Some(self.id),
                )
                .await?;
            self.progress.children[i] = Some(id);
            self.save().await?;
            live.insert(id, i);
            running.spawn(self.child_task(id));
        }
        Ok(())
    }

    /// Runs child migration `id` in this job, under this run's ownership.
    fn child_task(&self, id: MigrationId) -> impl Future<Output = MigrationId> + Send + 'static {
        let migrator = self.migrator.clone();
        let owner = format!("{}/{id}", self.owner);
        async move {
            // A child that must retry is picked up again by the rebalance's next pass.
            if let Err(failure) = migrator.run(id, owner).await {
                tracing::warn!(migration = id, error = %failure, "move paused; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            id
        }
    }
}

fn retry(err: impl std::fmt::Display) -> Stop {
    Stop::Retry(err.to_string())
}
