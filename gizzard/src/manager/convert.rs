//! Conversions between `gizzard.v1` messages and the domain's types: the nameserver's model,
//! migrations and jobs. Incoming messages are checked here, so a malformed shard id or an
//! empty change is refused with the field named.

use proto::gizzard::v1 as pb;
use tonic::Status;

use crate::{
    migrate::{
        HashRange, Migration, Plan,
        anti_entropy::SweepRecord,
        control::{Child, LeafPair, MigrationRequest, MigrationTree, RequestKind, Started},
        model::RebalancePlan,
    },
    nameserver::{
        Change, Forwarding, Host, Link, NodeSpec, RetiredShard, ServerRecord, ShardId, ShardInfo,
        Topology,
    },
    scheduler::{JobRecord, JobState, Priority},
};

/// Parses a shard id field, naming the field when it is malformed.
pub fn shard_id(field: &str, value: &str) -> Result<ShardId, Status> {
    value
        .parse()
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

fn shard_info(field: &str, shard: pb::Shard) -> Result<ShardInfo, Status> {
    if shard.class_name.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field}.class_name is empty"
        )));
    }
    Ok(ShardInfo {
        id: shard_id(&format!("{field}.id"), &shard.id)?,
        class_name: shard.class_name,
        busy: shard.busy,
    })
}

fn link(field: &str, link: pb::Link) -> Result<Link, Status> {
    Ok(Link {
        up: shard_id(&format!("{field}.up"), &link.up)?,
        down: shard_id(&format!("{field}.down"), &link.down)?,
        weight: link.weight,
    })
}

fn forwarding(field: &str, f: pb::Forwarding) -> Result<Forwarding, Status> {
    Ok(Forwarding {
        table_id: f.table_id,
        base_id: f.base_id,
        shard_id: shard_id(&format!("{field}.shard_id"), &f.shard_id)?,
    })
}

/// Converts one change of an `Apply` request; `index` names it in errors.
pub fn change(index: usize, change: pb::Change) -> Result<Change, Status> {
    use pb::change::Change as C;
    let field = format!("changes[{index}]");
    let force = change.force;
    let inner = change
        .change
        .ok_or_else(|| Status::invalid_argument(format!("{field} is empty")))?;
    if force && !matches!(inner, C::SetHost(_)) {
        return Err(Status::invalid_argument(format!(
            "{field}: force applies to set_host only"
        )));
    }
    Ok(match inner {
        C::CreateShard(s) => Change::CreateShard(shard_info(&field, s)?),
        C::DeleteShard(id) => Change::DeleteShard(shard_id(&field, &id)?),
        C::AddLink(l) => Change::AddLink(link(&field, l)?),
        C::RemoveLink(l) => {
            let l = link(&field, l)?;
            Change::RemoveLink {
                up: l.up,
                down: l.down,
            }
        }
        C::SetForwarding(f) => {
            table_id(&field, f.table_id)?;
            Change::SetForwarding(forwarding(&field, f)?)
        }
        C::RemoveForwarding(f) => {
            table_id(&field, f.table_id)?;
            Change::RemoveForwarding {
                table_id: f.table_id,
                base_id: f.base_id,
            }
        }
        C::SetHost(h) => {
            db::url::check(&h.url).map_err(|reason| {
                Status::invalid_argument(format!(
                    "{field}: url of host {:?}: {reason}",
                    bounded(&h.name)
                ))
            })?;
            let host = Host {
                name: h.name,
                url: h.url,
                read_weight: h.read_weight,
                write_weight: h.write_weight,
            };
            if force {
                Change::RepointHost(host)
            } else {
                Change::SetHost(host)
            }
        }
        C::RemoveHost(name) => Change::RemoveHost(name),
        C::SetBusy(s) => Change::SetBusy {
            id: shard_id(&format!("{field}.id"), &s.id)?,
            busy: s.busy,
        },
    })
}

/// Returns the message form of a change, for clients building batches.
pub fn change_to_pb(change: &Change) -> pb::Change {
    use pb::change::Change as C;
    let inner = match change {
        Change::CreateShard(s) => C::CreateShard(shard_to_pb(s)),
        Change::DeleteShard(id) => C::DeleteShard(id.to_string()),
        Change::AddLink(l) => C::AddLink(link_to_pb(l)),
        Change::RemoveLink { up, down } => C::RemoveLink(pb::Link {
            up: up.to_string(),
            down: down.to_string(),
            weight: 0,
        }),
        Change::SetForwarding(f) => C::SetForwarding(forwarding_to_pb(f)),
        Change::RemoveForwarding { table_id, base_id } => C::RemoveForwarding(pb::Forwarding {
            table_id: *table_id,
            base_id: *base_id,
            shard_id: String::new(),
        }),
        Change::SetHost(h) | Change::RepointHost(h) => C::SetHost(host_to_pb(h)),
        Change::RemoveHost(name) => C::RemoveHost(name.clone()),
        Change::SetBusy { id, busy } => C::SetBusy(pb::Shard {
            id: id.to_string(),
            class_name: String::new(),
            busy: *busy,
        }),
    };
    pb::Change {
        change: Some(inner),
        force: matches!(change, Change::RepointHost(_)),
    }
}

/// Refuses a negative table id: table ids are 0 and up.
fn table_id(field: &str, table_id: i32) -> Result<(), Status> {
    if table_id < 0 {
        return Err(Status::invalid_argument(format!(
            "{field}: table id {table_id} is negative: table ids are 0 or more"
        )));
    }
    Ok(())
}

/// Returns client input as an error may echo it.
fn bounded(text: &str) -> std::borrow::Cow<'_, str> {
    db::text::bounded(text, db::text::MAX_ECHO)
}

pub fn shard_to_pb(s: &ShardInfo) -> pb::Shard {
    pb::Shard {
        id: s.id.to_string(),
        class_name: s.class_name.clone(),
        busy: s.busy,
    }
}

pub fn link_to_pb(l: &Link) -> pb::Link {
    pb::Link {
        up: l.up.to_string(),
        down: l.down.to_string(),
        weight: l.weight,
    }
}

pub fn forwarding_to_pb(f: &Forwarding) -> pb::Forwarding {
    pb::Forwarding {
        table_id: f.table_id,
        base_id: f.base_id,
        shard_id: f.shard_id.to_string(),
    }
}

pub fn host_to_pb(h: &Host) -> pb::Host {
    pb::Host {
        name: h.name.clone(),
        url: h.url.clone(),
        read_weight: h.read_weight,
        write_weight: h.write_weight,
    }
}

/// Returns the message form of a whole topology.
pub fn topology_to_pb(t: &Topology) -> pb::Topology {
    pb::Topology {
        version: t.version,
        shards: t.shards.values().map(shard_to_pb).collect(),
        links: t.link_list().map(|l| link_to_pb(&l)).collect(),
        forwardings: t
            .forwardings
            .iter()
            .map(|(&(table_id, base_id), id)| {
                forwarding_to_pb(&Forwarding {
                    table_id,
                    base_id,
                    shard_id: id.clone(),
                })
            })
            .collect(),
        // No password leaves the server: a dump is for reading, and changes name urls anew.
        hosts: t
            .hosts
            .values()
            .map(|h| pb::Host {
                url: db::text::redact(&h.url).into_owned(),
                ..host_to_pb(h)
            })
            .collect(),
    }
}

/// Returns the message form of a tree, `weight` being the link weight from its parent.
pub fn tree_to_pb(spec: &NodeSpec, weight: u32) -> pb::TreeNode {
    pb::TreeNode {
        id: spec.id.to_string(),
        class_name: spec.kind.class_name().to_owned(),
        busy: spec.busy,
        weight,
        children: spec
            .children
            .iter()
            .map(|(w, child)| tree_to_pb(child, *w))
            .collect(),
    }
}

/// Reads an optional priority field.
pub fn priority(value: i32) -> Result<Option<Priority>, Status> {
    match pb::Priority::try_from(value) {
        Ok(pb::Priority::Unspecified) => Ok(None),
        Ok(pb::Priority::High) => Ok(Some(Priority::High)),
        Ok(pb::Priority::Low) => Ok(Some(Priority::Low)),
        Ok(pb::Priority::Copy) => Ok(Some(Priority::Copy)),
        Err(_) => Err(Status::invalid_argument(format!(
            "priority {value} is unknown"
        ))),
    }
}

pub fn priority_to_pb(p: Priority) -> pb::Priority {
    match p {
        Priority::High => pb::Priority::High,
        Priority::Low => pb::Priority::Low,
        Priority::Copy => pb::Priority::Copy,
    }
}

/// Reads an optional job state field.
pub fn job_state(value: i32) -> Result<Option<JobState>, Status> {
    match pb::JobState::try_from(value) {
        Ok(pb::JobState::Unspecified) => Ok(None),
        Ok(pb::JobState::Ready) => Ok(Some(JobState::Ready)),
        Ok(pb::JobState::Bad) => Ok(Some(JobState::Bad)),
        Err(_) => Err(Status::invalid_argument(format!(
            "state {value} is unknown"
        ))),
    }
}

pub fn job_state_to_pb(s: JobState) -> pb::JobState {
    match s {
        JobState::Ready => pb::JobState::Ready,
        JobState::Bad => pb::JobState::Bad,
    }
}

pub fn job_to_pb(job: &JobRecord) -> pb::Job {
    pb::Job {
        id: job.id as i64,
        priority: priority_to_pb(job.priority) as i32,
        job_type: job.job_type.clone(),
        shard: job.shard.clone().unwrap_or_default(),
        state: job_state_to_pb(job.state) as i32,
        attempts: job.attempts,
        last_error: job.last_error.clone().unwrap_or_default(),
        run_after_ms: job.run_after_ms,
        created_at_ms: job.created_at_ms,
    }
}

/// Converts a registered server.
pub fn server_to_pb(server: &ServerRecord) -> pb::Server {
    pb::Server {
        id: server.id.clone(),
        name: server.name.clone(),
        address: server.address.clone(),
        version: server.version,
        confirmed_age_ms: server.confirmed_age().as_millis() as u64,
        lease_ms: server.lease_ms.max(0) as u64,
        stale: server.is_stale(),
    }
}

/// Converts a retired leaf.
pub fn retired_to_pb(shard: &RetiredShard) -> pb::RetiredShard {
    pb::RetiredShard {
        shard_id: shard.id.to_string(),
        class_name: shard.class_name.clone(),
        retired_version: shard.retired_version,
        fenced_prefix: shard.fenced_prefix.clone().unwrap_or_default(),
        drop_in_ms: shard
            .drop_after_ms
            .map_or(0, |at| at.saturating_sub(shard.now_ms).max(0) as u64),
    }
}

/// Converts a replica pair's anti-entropy record.
pub fn sweep_to_pb(sweep: &SweepRecord) -> pb::Sweep {
    pb::Sweep {
        a: sweep.a.to_string(),
        b: sweep.b.to_string(),
        last_full_age_ms: sweep.age().as_millis() as u64,
        last_repaired: sweep.last_repaired,
        running: sweep.running(),
        rows_compared: sweep.rows_compared,
        keys_repaired: sweep.keys_repaired,
        total_repaired: sweep.total_repaired,
    }
}

/// Converts a `StartMigration` request.
pub fn migration_request(request: pb::StartMigrationRequest) -> Result<MigrationRequest, Status> {
    use pb::start_migration_request::Kind;
    let pair = |p: pb::ShardPair| -> Result<LeafPair, Status> {
        Ok(LeafPair {
            a: shard_id("a", &p.a)?,
            b: shard_id("b", &p.b)?,
            hashes: hash_range(p.hashes)?,
        })
    };
    // Zero is protobuf's unset: the server's setting, or the default.
    let limit = |value: u32| (value > 0).then_some(value as usize);
    let kind = match request.kind {
        None => return Err(Status::invalid_argument("kind is not set")),
        Some(Kind::Move(m)) => RequestKind::Move {
            shard: shard_id("shard", &m.shard)?,
            to_host: m.to_host,
        },
        Some(Kind::AddReplica(m)) => RequestKind::AddReplica {
            shard: shard_id("shard", &m.shard)?,
            host: m.host,
        },
        Some(Kind::Split(s)) => RequestKind::Split {
            table_id: s.table_id,
            base_id: s.base_id,
            at: s.at,
        },
        Some(Kind::Copy(p)) => RequestKind::Copy(pair(p)?),
        Some(Kind::Diff(p)) => RequestKind::Diff(pair(p)?),
        Some(Kind::Repair(p)) => RequestKind::Repair(pair(p)?),
        Some(Kind::Rebalance(r)) => RequestKind::Rebalance {
            hosts: r.hosts,
            max_copies: limit(r.max_copies),
            copies_per_host: limit(r.copies_per_host),
            dry_run: r.dry_run,
        },
    };
    Ok(MigrationRequest {
        kind,
        rows_per_second: (request.rows_per_second > 0).then_some(request.rows_per_second),
    })
}

/// Reads a hash range; none, or both ends zero, is every row.
fn hash_range(range: Option<pb::HashRange>) -> Result<Option<HashRange>, Status> {
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

/// Converts what a start did: the migration stored or resumed, or a plan stored nowhere.
pub fn started_to_pb(started: &Started) -> pb::Migration {
    match started {
        Started::Stored(tree) => migration_tree_to_pb(tree),
        Started::Resumed(tree) => pb::Migration {
            resumed: true,
            ..migration_tree_to_pb(tree)
        },
        Started::Planned(plan) => rebalance_plan_to_pb(plan),
    }
}

/// Converts a migration with a rebalance's moves.
pub fn migration_tree_to_pb(tree: &MigrationTree) -> pb::Migration {
    pb::Migration {
        children: tree
            .children
            .iter()
            .map(|child| match child {
                Child::Started(migration) => migration_to_pb(migration),
                Child::Planned(planned) => plan_to_pb(&Plan::Move(planned.as_ref().clone())),
            })
            .collect(),
        ..migration_to_pb(&tree.migration)
    }
}

/// A dry run's or an already balanced cluster's answer: the plan, stored nowhere.
fn rebalance_plan_to_pb(plan: &RebalancePlan) -> pb::Migration {
    let mut shown = plan_to_pb(&Plan::Rebalance(plan.clone()));
    if plan.moves.is_empty() {
        shown.status = "done".into();
        shown.note = "already balanced: nothing to move".into();
    }
    shown.children = plan
        .moves
        .iter()
        .map(|m| plan_to_pb(&Plan::Move(m.clone())))
        .collect();
    shown
}

/// A planned migration, which has no id (0) or progress yet.
fn plan_to_pb(plan: &Plan) -> pb::Migration {
    pb::Migration {
        kind: plan.kind().into(),
        description: plan.describe(),
        status: "planned".into(),
        ..Default::default()
    }
}

/// Converts a stored migration, without its children.
pub fn migration_to_pb(m: &Migration) -> pb::Migration {
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
