//! What a migration is: the operator's request, fixed when it starts ([`Plan`]), and how far it
//! has got ([`Progress`]). Both are kept in the nameserver database, so whichever server runs
//! the migration's job next resumes it where the last one stopped.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::nameserver::ShardId;

/// A migration's number in the nameserver.
pub type MigrationId = u64;

/// The most differing keys a diff keeps to report; it still counts them all.
pub const MAX_REPORTED_KEYS: usize = 1_000;

/// Where a migration stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    Running,
    Done,
    Failed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Done => "done",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// Whether the migration has stopped for good.
    pub fn is_final(self) -> bool {
        self != Status::Running
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Status::Running,
            Status::Done,
            Status::Failed,
            Status::Cancelled,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
        .ok_or_else(|| format!("unknown migration status {s:?}"))
    }
}

/// Hashes `start..end`, as a split moves them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashRange {
    pub start: i64,
    pub end: i64,
}

impl HashRange {
    pub fn range(self) -> std::ops::Range<i64> {
        self.start..self.end
    }
}

/// A new replica filled from an existing one: the target leaf sits behind a WriteOnly node
/// under the source's Replicating parent while rows are copied, then takes the source's place
/// (a move) or joins it (a new replica).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovePlan {
    /// The leaf copied from.
    pub source: ShardId,
    /// The Replicating node both leaves hang under.
    pub parent: ShardId,
    /// The new leaf.
    pub target: ShardId,
    /// The leaves' class.
    pub class_name: String,
    /// The WriteOnly node in front of the target during the copy.
    pub wrapper: ShardId,
    /// The source's link weight, which the target gets.
    pub weight: u32,
    /// True for a move (the source leaves the tree at cutover); false for a new replica.
    pub remove_source: bool,
}

/// The upper part `at..end` of the range of forwarding `(table_id, base_id)` moved to a new
/// tree. During the copy a bridge (a Replicating node over the old root and a WriteOnly
/// wrapper of the new root) is forwarded from `at`, so writes reach both trees while reads
/// stay on the old one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitPlan {
    pub table_id: i32,
    pub base_id: i64,
    pub moved: HashRange,
    pub old_root: ShardId,
    pub old_leaves: Vec<ShardId>,
    /// The old leaf rows are copied from.
    pub source: ShardId,
    pub new_root: ShardId,
    pub new_leaves: Vec<ShardId>,
    pub class_name: String,
    pub bridge: ShardId,
    pub wrapper: ShardId,
}

/// Moves that even out leaves per host, run a few at a time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebalancePlan {
    pub moves: Vec<MovePlan>,
    /// Moves running at once, in all.
    pub max_copies: usize,
    /// Moves running at once that read from or write to one host.
    pub copies_per_host: usize,
}

/// What the operator asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Plan {
    /// Merges the rows of `from` into `to`.
    Copy {
        from: ShardId,
        to: ShardId,
        hashes: Option<HashRange>,
    },
    /// Reports the keys whose rows differ between `a` and `b`.
    Diff {
        a: ShardId,
        b: ShardId,
        hashes: Option<HashRange>,
    },
    /// Makes `a` and `b` agree, writing only the keys that differ.
    Repair {
        a: ShardId,
        b: ShardId,
        hashes: Option<HashRange>,
    },
    Move(MovePlan),
    Split(SplitPlan),
    Rebalance(RebalancePlan),
}

impl Plan {
    /// The kind's name, as listings show it.
    pub fn kind(&self) -> &'static str {
        match self {
            Plan::Copy { .. } => "copy",
            Plan::Diff { .. } => "diff",
            Plan::Repair { .. } => "repair",
            Plan::Move(plan) if plan.remove_source => "move",
            Plan::Move(_) => "add-replica",
            Plan::Split(_) => "split",
            Plan::Rebalance(_) => "rebalance",
        }
    }

    /// One line saying what the migration does.
    pub fn describe(&self) -> String {
        let range = |hashes: &Option<HashRange>| {
            hashes.map_or(String::new(), |h| {
                format!(" (hashes {:#x}..{:#x})", h.start, h.end)
            })
        };
        match self {
            Plan::Copy { from, to, hashes } => format!("copy {from} to {to}{}", range(hashes)),
            Plan::Diff { a, b, hashes } => format!("diff {a} and {b}{}", range(hashes)),
            Plan::Repair { a, b, hashes } => format!("repair {a} and {b}{}", range(hashes)),
            Plan::Move(m) if m.remove_source => format!("move {} to {}", m.source, m.target),
            Plan::Move(m) => format!("add replica {} of {}", m.target, m.source),
            Plan::Split(s) => format!(
                "split table {} at {:#x}: hashes {:#x}..{:#x} from {} to {}",
                s.table_id, s.moved.start, s.moved.start, s.moved.end, s.old_root, s.new_root
            ),
            Plan::Rebalance(r) => format!(
                "rebalance: {} moves, at most {} at once, {} per host",
                r.moves.len(),
                r.max_copies,
                r.copies_per_host
            ),
        }
    }
}

/// The steps of the workflows; copy, diff and repair alone use only their own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// The new shards are not in the topology yet.
    #[default]
    Prepare,
    /// Waiting until every registered server routes with the new topology or has provably
    /// stopped acknowledging writes (its routing lease is over).
    Settle,
    Copy,
    /// Waiting until no retry job targets the shards involved.
    Drain,
    Diff,
    Cutover,
    /// Deleting the rows a split moved away from the old tree.
    Cleanup,
    /// Running child migrations (a rebalance).
    Children,
    Finished,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Prepare => "prepare",
            Step::Settle => "settle",
            Step::Copy => "copy",
            Step::Drain => "drain",
            Step::Diff => "diff",
            Step::Cutover => "cutover",
            Step::Cleanup => "cleanup",
            Step::Children => "children",
            Step::Finished => "finished",
        }
    }
}

/// How far a migration has got; saved after every page, so a resumed run loses little.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub step: Step,
    /// The copy's cursor: the last row copied (the shard type's cursor, JSON).
    pub cursor: Option<serde_json::Value>,
    pub rows_copied: u64,
    /// The copy's rows-per-second limit; `None` for the server's setting.
    pub rows_per_second: Option<u64>,
    /// Times a copy went on from a saved cursor (after its server died, say).
    pub resumes: u32,
    /// The source's row count when the copy started.
    pub rows_total: u64,
    pub rows_compared: u64,
    /// Keys whose rows differed (confirmed twice), at most [`MAX_REPORTED_KEYS`].
    pub differing_keys: Vec<u64>,
    pub differing: u64,
    /// Keys rewritten by repair.
    pub repaired: u64,
    /// Diff rounds run before the last clean one.
    pub diff_rounds: u32,
    /// For a rebalance: the child migration of each planned move, once started.
    pub children: Vec<Option<MigrationId>>,
    /// What the migration is doing or waiting for, in words.
    pub note: String,
}

/// A migration as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    pub id: MigrationId,
    /// The rebalance this move belongs to.
    pub parent: Option<MigrationId>,
    pub plan: Plan,
    pub progress: Progress,
    pub status: Status,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    pub cancel_requested: bool,
    pub created_ms: i64,
    pub updated_ms: i64,
}
