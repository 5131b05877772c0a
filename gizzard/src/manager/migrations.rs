//! The migration calls of the ShardManager: each request is planned against the current
//! topology here, stored, and handed to the job queue, where some server's worker runs it.

use proto::gizzard::v1 as pb;
use tonic::Status;

use super::service::{Manager, queue_status};
use crate::{
    migrate::{
        HashRange, ListFilter, Migration, MigrationId, Plan, Progress, StoreError,
        model::RebalancePlan, plan, runner,
    },
    nameserver::{NodeKind, ShardId, Topology},
};

/// Moves a rebalance runs at once by default, in all and per host.
const DEFAULT_MAX_COPIES: usize = 2;
const DEFAULT_COPIES_PER_HOST: usize = 1;

fn store_status(err: StoreError) -> Status {
    match err {
        StoreError::NotFound(_) => Status::not_found(err.to_string()),
        StoreError::NotRunning { .. } => Status::failed_precondition(err.to_string()),
        _ => Status::unavailable(err.to_string()),
    }
}

fn leaf(topology: &Topology, field: &str, text: &str) -> Result<ShardId, Status> {
    let id: ShardId = text
        .parse()
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))?;
    match topology.shards.get(&id) {
        None => Err(Status::not_found(format!(
            "{field}: shard {id} does not exist"
        ))),
        Some(info)
            if !matches!(
                NodeKind::from_class_name(&info.class_name),
                NodeKind::Leaf(_)
            ) =>
        {
            Err(Status::invalid_argument(format!(
                "{field}: {id} is a {}, not a leaf",
                info.class_name
            )))
        }
        Some(_) => Ok(id),
    }
}

fn hashes(range: Option<pb::HashRange>) -> Result<Option<HashRange>, Status> {
    match range {
        None => Ok(None),
        Some(r) if r.start == 0 && r.end == 0 => Ok(None),
        Some(r) if r.start < r.end => Ok(Some(HashRange {
            start: r.start,
            end: r.end,
        })),
        Some(r) => Err(Status::invalid_argument(format!(
            "hashes: start {} must be below end {}",
            r.start, r.end
        ))),
    }
}

fn pair(
    topology: &Topology,
    pair: pb::ShardPair,
) -> Result<(ShardId, ShardId, Option<HashRange>), Status> {
    let (a, b) = (leaf(topology, "a", &pair.a)?, leaf(topology, "b", &pair.b)?);
    if a == b {
        return Err(Status::invalid_argument("a and b are the same shard"));
    }
    // Rows of one class mean nothing to a table of another: the copy job would fail on every
    // page and be parked, leaving the migration running.
    let class = |id: &ShardId| topology.shards.get(id).map(|info| info.class_name.as_str());
    if class(&a) != class(&b) {
        return Err(Status::invalid_argument(format!(
            "{a} is a {} and {b} a {}: copy, diff and repair need two leaves of one class",
            class(&a).unwrap_or("?"),
            class(&b).unwrap_or("?")
        )));
    }
    Ok((a, b, hashes(pair.hashes)?))
}

fn plan_status(err: plan::PlanError) -> Status {
    Status::failed_precondition(err.0)
}

fn limit(value: u32, default: usize) -> usize {
    match value {
        0 => default,
        n => n as usize,
    }
}

impl Manager {
    pub(super) async fn start(
        &self,
        request: pb::StartMigrationRequest,
    ) -> Result<pb::Migration, Status> {
        use pb::start_migration_request::Kind;
        let topology = self.topology().await?;
        let tag = format!("{:04x}", rand::random::<u16>());
        let plan = match request.kind {
            None => return Err(Status::invalid_argument("kind is not set")),
            Some(Kind::Move(m)) => {
                let shard = leaf(&topology, "shard", &m.shard)?;
                Plan::Move(
                    plan::plan_move(&topology, &shard, &m.to_host, true, &tag)
                        .map_err(plan_status)?,
                )
            }
            Some(Kind::AddReplica(m)) => {
                let shard = leaf(&topology, "shard", &m.shard)?;
                Plan::Move(
                    plan::plan_move(&topology, &shard, &m.host, false, &tag)
                        .map_err(plan_status)?,
                )
            }
            Some(Kind::Split(s)) => Plan::Split(
                plan::plan_split(&topology, s.table_id, s.base_id, s.at, &tag)
                    .map_err(plan_status)?,
            ),
            Some(Kind::Copy(p)) => {
                let (from, to, hashes) = pair(&topology, p)?;
                Plan::Copy { from, to, hashes }
            }
            Some(Kind::Diff(p)) => {
                let (a, b, hashes) = pair(&topology, p)?;
                Plan::Diff { a, b, hashes }
            }
            Some(Kind::Repair(p)) => {
                let (a, b, hashes) = pair(&topology, p)?;
                Plan::Repair { a, b, hashes }
            }
            Some(Kind::Rebalance(r)) => {
                if let Some(running) = self.running_rebalance().await? {
                    let mut shown = self.migration(running).await?;
                    shown.resumed = true;
                    return Ok(shown);
                }
                let plan = plan::plan_rebalance(
                    &topology,
                    &r.hosts,
                    limit(r.max_copies, DEFAULT_MAX_COPIES),
                    limit(r.copies_per_host, DEFAULT_COPIES_PER_HOST),
                    &tag,
                )
                .map_err(plan_status)?;
                if r.dry_run || plan.moves.is_empty() {
                    return Ok(planned(&plan));
                }
                Plan::Rebalance(plan)
            }
        };
        let progress = Progress {
            rows_per_second: (request.rows_per_second > 0).then_some(request.rows_per_second),
            ..Progress::default()
        };
        let id = self
            .migrations
            .create(&plan, &progress, None)
            .await
            .map_err(store_status)?;
        self.queue.enqueue(&runner::job(id)).await.map_err(|e| {
            Status::unavailable(format!(
                "migration {id} is stored but its job could not be queued ({}); \
                 `gizzmo cancel {id}` removes it",
                queue_status(e).message()
            ))
        })?;
        tracing::info!(migration = id, what = %plan.describe(), "migration started");
        self.migration(id).await
    }

    async fn topology(&self) -> Result<Topology, Status> {
        self.nameserver
            .load()
            .await
            .map_err(super::service::nameserver_status)
    }

    async fn running_rebalance(&self) -> Result<Option<MigrationId>, Status> {
        let running = self
            .migrations
            .list(ListFilter {
                running_only: true,
                ..Default::default()
            })
            .await
            .map_err(store_status)?;
        Ok(running
            .into_iter()
            .find(|m| matches!(m.plan, Plan::Rebalance(_)))
            .map(|m| m.id))
    }

    /// Returns migration `id` with a rebalance's moves.
    pub(super) async fn migration(&self, id: MigrationId) -> Result<pb::Migration, Status> {
        let migration = self.migrations.get(id).await.map_err(store_status)?;
        let mut shown = to_pb(&migration);
        if let Plan::Rebalance(plan) = &migration.plan {
            let children = self
                .migrations
                .list(ListFilter {
                    parent: Some(id),
                    ..Default::default()
                })
                .await
                .map_err(store_status)?;
            shown.children = plan
                .moves
                .iter()
                .enumerate()
                .map(|(i, planned_move)| {
                    let started = migration.progress.children.get(i).copied().flatten();
                    match children.iter().find(|c| Some(c.id) == started) {
                        Some(child) => to_pb(child),
                        None => planned_pb(&Plan::Move(planned_move.clone())),
                    }
                })
                .collect();
        }
        Ok(shown)
    }

    pub(super) async fn list(
        &self,
        request: pb::ListMigrationsRequest,
    ) -> Result<pb::ListMigrationsResponse, Status> {
        let migrations = self
            .migrations
            .list(ListFilter {
                running_only: request.running_only,
                parent: None,
                limit: request.limit.clamp(1, 1_000),
            })
            .await
            .map_err(store_status)?;
        Ok(pb::ListMigrationsResponse {
            migrations: migrations.iter().map(to_pb).collect(),
        })
    }

    pub(super) async fn cancel(&self, id: MigrationId) -> Result<pb::Migration, Status> {
        let migration = self.migrations.get(id).await.map_err(store_status)?;
        if migration.status.is_final() {
            return Err(Status::failed_precondition(format!(
                "migration {id} is already {}",
                migration.status
            )));
        }
        self.migrations
            .request_cancel(id)
            .await
            .map_err(store_status)?;
        // A fresh job, so a migration whose job was parked as bad (or never stored) still
        // rolls back; a run in progress loses ownership to it and stops.
        if migration.parent.is_none() {
            self.queue
                .enqueue(&runner::job(id))
                .await
                .map_err(queue_status)?;
        }
        tracing::info!(migration = id, "migration cancel requested");
        self.migration(id).await
    }
}

fn planned_pb(plan: &Plan) -> pb::Migration {
    pb::Migration {
        kind: plan.kind().into(),
        description: plan.describe(),
        status: "planned".into(),
        ..Default::default()
    }
}

/// A dry run's or an already balanced cluster's answer: the plan, stored nowhere.
fn planned(plan: &RebalancePlan) -> pb::Migration {
    let mut shown = planned_pb(&Plan::Rebalance(plan.clone()));
    if plan.moves.is_empty() {
        shown.status = "done".into();
        shown.note = "already balanced: nothing to move".into();
    }
    shown.children = plan
        .moves
        .iter()
        .map(|m| planned_pb(&Plan::Move(m.clone())))
        .collect();
    shown
}

fn to_pb(m: &Migration) -> pb::Migration {
    let p = &m.progress;
    pb::Migration {
        id: m.id,
        parent_id: m.parent.unwrap_or(0),
        kind: m.plan.kind().into(),
        description: m.plan.describe(),
        status: m.status.as_str().into(),
        step: p.step.as_str().into(),
        rows_copied: p.rows_copied,
        rows_total: p.rows_total,
        rows_compared: p.rows_compared,
        differing: p.differing,
        differing_keys: p.differing_keys.clone(),
        repaired: p.repaired,
        note: p.note.clone(),
        error: m.error.clone().unwrap_or_default(),
        cancel_requested: m.cancel_requested,
        children: Vec::new(),
        created_ms: m.created_ms,
        updated_ms: m.updated_ms,
        resumed: false,
        resumes: p.resumes,
    }
}
