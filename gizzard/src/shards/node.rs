//! The runtime routing tree. Each node type decides where reads and writes go:
//!
//! | node | reads | writes |
//! |---|---|---|
//! | Replicating | children in weighted-random order, failing over; weight 0 never read | all children |
//! | ReadOnly | pass through | refused (retried later) |
//! | WriteOnly | skipped | pass through |
//! | Blocked | refused | refused (retried later) |
//! | BlackHole | nothing there | dropped |
//! | leaf | the physical table | the physical table |
//!
//! A read is hedged: when the leaf it tried first has not answered within that leaf's hedge
//! ([`LeafHealth::hedge`]), the next leaf in read order is tried too, and the first success
//! wins, so a hung replica costs a read its hedge rather than its deadline.

use std::{future::Future, sync::Arc, time::Instant};

use futures::{StreamExt, stream::FuturesUnordered};
use rand::Rng;

use super::{
    ShardError,
    health::{Admit, LeafHealth, MAX_HEDGE, Op},
};
use crate::nameserver::ShardId;

/// A physical shard in a tree, with the health record shared by every tree holding it.
#[derive(Debug)]
pub struct Leaf<S> {
    pub id: ShardId,
    pub shard: Arc<S>,
    pub health: Arc<LeafHealth>,
}

impl<S> Clone for Leaf<S> {
    fn clone(&self) -> Self {
        Self {
            id: self.id.clone(),
            shard: self.shard.clone(),
            health: self.health.clone(),
        }
    }
}

/// A node of a routing tree.
#[derive(Debug)]
pub enum Node<S> {
    Replicating {
        id: ShardId,
        children: Vec<(u32, Node<S>)>,
    },
    ReadOnly {
        id: ShardId,
        child: Box<Node<S>>,
    },
    WriteOnly {
        id: ShardId,
        child: Box<Node<S>>,
    },
    Blocked {
        id: ShardId,
        child: Box<Node<S>>,
    },
    BlackHole {
        id: ShardId,
    },
    Leaf(Leaf<S>),
}

/// Where one write goes.
#[derive(Debug)]
pub struct WritePlan<'a, S> {
    /// Leaves to write now.
    pub leaves: Vec<&'a Leaf<S>>,
    /// For each of `leaves`, whether reads may go to it (it is not only behind a WriteOnly
    /// node or a link of weight 0): a write is visible once one of those has it.
    pub serves_reads: Vec<bool>,
    /// Leaves behind a ReadOnly or Blocked node: each gets a retry job.
    pub refused: Vec<(&'a Leaf<S>, ShardError)>,
}

impl<S> Node<S> {
    /// Returns this node's shard id.
    pub fn id(&self) -> &ShardId {
        match self {
            Self::Replicating { id, .. }
            | Self::ReadOnly { id, .. }
            | Self::WriteOnly { id, .. }
            | Self::Blocked { id, .. }
            | Self::BlackHole { id } => id,
            Self::Leaf(leaf) => &leaf.id,
        }
    }

    /// Returns every leaf under this node, once each.
    pub fn leaves(&self) -> Vec<&Leaf<S>> {
        let mut out = Vec::new();
        self.collect_leaves(&mut out);
        dedup(&mut out);
        out
    }

    fn collect_leaves<'a>(&'a self, out: &mut Vec<&'a Leaf<S>>) {
        match self {
            Self::Replicating { children, .. } => {
                children
                    .iter()
                    .for_each(|(_, child)| child.collect_leaves(out));
            }
            Self::ReadOnly { child, .. }
            | Self::WriteOnly { child, .. }
            | Self::Blocked { child, .. } => {
                child.collect_leaves(out);
            }
            Self::BlackHole { .. } => {}
            Self::Leaf(leaf) => out.push(leaf),
        }
    }

    /// Returns the leaves a read tries, in order: weighted-random among replicas, suspect
    /// leaves last. Fails when a Blocked node refuses and nothing else can be read.
    pub fn read_order(&self, rng: &mut impl Rng) -> Result<Vec<&Leaf<S>>, ShardError> {
        let mut order = Vec::new();
        let mut refusal = None;
        self.collect_reads(rng, &mut order, &mut refusal);
        dedup(&mut order);
        if order.is_empty() {
            return Err(refusal.unwrap_or_else(|| ShardError::NotReadable {
                shard: self.id().to_string(),
            }));
        }
        // Stable: healthy leaves keep their random order, suspect ones move to the back. Each
        // is asked once: a stall is judged by the clock, and a key must not change mid-sort.
        order.sort_by_cached_key(|leaf| leaf.health.is_suspect());
        Ok(order)
    }

    fn collect_reads<'a>(
        &'a self,
        rng: &mut impl Rng,
        out: &mut Vec<&'a Leaf<S>>,
        refusal: &mut Option<ShardError>,
    ) {
        match self {
            Self::Replicating { children, .. } => {
                for child in weighted_order(children, rng) {
                    child.collect_reads(rng, out, refusal);
                }
            }
            Self::ReadOnly { child, .. } => child.collect_reads(rng, out, refusal),
            Self::WriteOnly { .. } | Self::BlackHole { .. } => {}
            Self::Blocked { id, .. } => {
                *refusal = Some(ShardError::Refused {
                    shard: id.to_string(),
                    reason: "blocked".into(),
                });
            }
            Self::Leaf(leaf) => out.push(leaf),
        }
    }

    /// Returns where a write goes: the writable leaves, and the leaves a ReadOnly or Blocked
    /// node keeps from it for now.
    pub fn write_plan(&self) -> WritePlan<'_, S> {
        let mut plan = WritePlan {
            leaves: Vec::new(),
            serves_reads: Vec::new(),
            refused: Vec::new(),
        };
        self.collect_writes(true, &mut plan);
        plan
    }

    fn collect_writes<'a>(&'a self, read: bool, plan: &mut WritePlan<'a, S>) {
        match self {
            Self::Replicating { children, .. } => {
                children
                    .iter()
                    .for_each(|(weight, child)| child.collect_writes(read && *weight > 0, plan));
            }
            Self::WriteOnly { child, .. } => child.collect_writes(false, plan),
            Self::ReadOnly { id, child } | Self::Blocked { id, child } => {
                let reason = if matches!(self, Self::ReadOnly { .. }) {
                    "read-only"
                } else {
                    "blocked"
                };
                for leaf in child.leaves() {
                    let err = ShardError::Refused {
                        shard: id.to_string(),
                        reason: reason.into(),
                    };
                    plan.refused.push((leaf, err));
                }
            }
            Self::BlackHole { .. } => {}
            // A leaf reached twice (a DAG) is written once, and read if either path reads it.
            Self::Leaf(leaf) => match plan.leaves.iter().position(|l| l.id == leaf.id) {
                Some(i) => plan.serves_reads[i] |= read,
                None => {
                    plan.leaves.push(leaf);
                    plan.serves_reads.push(read);
                }
            },
        }
    }

    /// Runs a read on the leaves in read order until one succeeds. A leaf that has not
    /// answered within its hedge gets company: the next leaf is tried too, and whichever
    /// succeeds first answers. A failure moves on to the next leaf at once. Unreachable
    /// leaves count towards failure accrual, and a leaf left behind at its hedge while it owes
    /// answers is marked suspect. When a suspect leaf is due for a probe, this read tries it
    /// first (hedged as any), so a replica that only serves reads can come back too.
    pub async fn read<'a, T, F, Fut>(&'a self, op: F) -> Result<T, ShardError>
    where
        F: Fn(&'a Leaf<S>) -> Fut,
        Fut: Future<Output = Result<T, ShardError>>,
    {
        let mut order = self.read_order(&mut rand::rng())?;
        if let Some(i) = order
            .iter()
            .skip(1)
            .position(|leaf| leaf.health.is_suspect() && leaf.health.admit() == Admit::Probe)
        {
            let probe = order.remove(i + 1);
            order.insert(0, probe);
        }
        let attempt = |leaf: &'a Leaf<S>, started: Instant| {
            let in_flight = leaf.health.start();
            let read = op(leaf);
            async move { (leaf, started, in_flight, read.await) }
        };
        let mut running = FuturesUnordered::new();
        // The leaf started last, and when: the next one starts at its hedge.
        let mut last = (order[0], Instant::now());
        running.push(attempt(last.0, last.1));
        let mut next = 1;
        let mut last_err = None;
        loop {
            let hedge_at = (next < order.len())
                .then(|| last.1 + last.0.health.hedge(Op::Read, MAX_HEDGE))
                .map(tokio::time::Instant::from_std);
            let finished = tokio::select! {
                finished = running.next() => finished,
                () = sleep_until(hedge_at) => {
                    last.0.health.overdue(last.1);
                    tracing::debug!(shard = %last.0.id,
                        "read past its hedge; trying the next replica too");
                    None
                }
            };
            if let Some((leaf, started, in_flight, result)) = finished {
                match result {
                    Ok(value) => {
                        in_flight.answered();
                        leaf.health.record(Op::Read, started.elapsed());
                        leaf.health.succeeded();
                        return Ok(value);
                    }
                    Err(err) => {
                        if matches!(
                            err,
                            ShardError::Unavailable { .. } | ShardError::Timeout { .. }
                        ) {
                            drop(in_flight);
                            leaf.health.failed();
                        } else {
                            in_flight.answered();
                        }
                        tracing::debug!(shard = %leaf.id, error = %err,
                            "read failed; trying the next replica");
                        last_err = Some(err);
                    }
                }
            }
            // Past the hedge, or failed: the next leaf, if any.
            let Some(&leaf) = order.get(next) else {
                if running.is_empty() {
                    break;
                }
                continue;
            };
            last = (leaf, Instant::now());
            running.push(attempt(last.0, last.1));
            next += 1;
        }
        Err(last_err.unwrap_or_else(|| ShardError::NotReadable {
            shard: self.id().to_string(),
        }))
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Returns the children with weight above zero in weighted-random order.
fn weighted_order<'a, S>(children: &'a [(u32, Node<S>)], rng: &mut impl Rng) -> Vec<&'a Node<S>> {
    let mut pool: Vec<(u64, &Node<S>)> = children
        .iter()
        .filter(|(w, _)| *w > 0)
        .map(|(w, n)| (u64::from(*w), n))
        .collect();
    let mut order = Vec::with_capacity(pool.len());
    while !pool.is_empty() {
        let total: u64 = pool.iter().map(|(w, _)| w).sum();
        let mut pick = rng.random_range(0..total);
        let index = pool
            .iter()
            .position(|(w, _)| {
                if pick < *w {
                    return true;
                }
                pick -= w;
                false
            })
            .unwrap_or(pool.len() - 1);
        order.push(pool.swap_remove(index).1);
    }
    order
}

/// Removes repeated leaves (a leaf reachable twice in a DAG), keeping the first.
fn dedup<S>(leaves: &mut Vec<&Leaf<S>>) {
    // A handful of leaves: comparing beats hashing, and nothing is cloned on every read.
    let mut kept = 0;
    for i in 0..leaves.len() {
        if !leaves[..kept].iter().any(|seen| seen.id == leaves[i].id) {
            leaves.swap(kept, i);
            kept += 1;
        }
    }
    leaves.truncate(kept);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(host: &str) -> Node<()> {
        let id = ShardId::new(host, "t_0001").expect("valid id");
        Node::Leaf(Leaf {
            id,
            shard: Arc::new(()),
            health: Arc::default(),
        })
    }

    fn virtual_id(name: &str) -> ShardId {
        ShardId::new("localhost", name).expect("valid id")
    }

    fn wrap(kind: &str, child: Node<()>) -> Node<()> {
        let (id, child) = (virtual_id(kind), Box::new(child));
        match kind {
            "ro" => Node::ReadOnly { id, child },
            "wo" => Node::WriteOnly { id, child },
            _ => Node::Blocked { id, child },
        }
    }

    fn replicating(children: Vec<(u32, Node<()>)>) -> Node<()> {
        Node::Replicating {
            id: virtual_id("rep"),
            children,
        }
    }

    fn hosts(leaves: &[&Leaf<()>]) -> Vec<String> {
        leaves.iter().map(|l| l.id.hostname.clone()).collect()
    }

    #[test]
    fn node_types_route_as_the_design_says() {
        let tree = replicating(vec![
            (1, leaf("a")),
            (1, wrap("ro", leaf("b"))),
            (1, wrap("wo", leaf("c"))),
            (1, wrap("blocked", leaf("d"))),
            (
                1,
                Node::BlackHole {
                    id: virtual_id("hole"),
                },
            ),
            (0, leaf("e")),
        ]);
        let mut reads = hosts(&tree.read_order(&mut rand::rng()).expect("readable"));
        reads.sort();
        assert_eq!(
            reads,
            ["a", "b"],
            "WriteOnly, Blocked, BlackHole and weight 0 are not read"
        );

        let plan = tree.write_plan();
        assert_eq!(
            hosts(&plan.leaves),
            ["a", "c", "e"],
            "weight 0 is still written"
        );
        let refused: Vec<_> = plan
            .refused
            .iter()
            .map(|(l, _)| l.id.hostname.clone())
            .collect();
        assert_eq!(
            refused,
            ["b", "d"],
            "ReadOnly and Blocked leaves get retry jobs"
        );
    }

    #[test]
    fn a_blocked_tree_refuses_reads() {
        let err = wrap("blocked", leaf("a"))
            .read_order(&mut rand::rng())
            .expect_err("blocked");
        assert!(matches!(err, ShardError::Refused { .. }), "{err}");
        let hole = Node::<()>::BlackHole {
            id: virtual_id("hole"),
        };
        assert!(matches!(
            hole.read_order(&mut rand::rng()),
            Err(ShardError::NotReadable { .. })
        ));
    }

    #[test]
    fn reads_follow_weights_and_put_suspect_leaves_last() {
        let tree = replicating(vec![(9, leaf("heavy")), (1, leaf("light"))]);
        let mut rng = rand::rng();
        let heavy_first = (0..2_000)
            .filter(|_| tree.read_order(&mut rng).expect("readable")[0].id.hostname == "heavy")
            .count();
        assert!(
            (1_650..1_950).contains(&heavy_first),
            "weight 9:1 gave {heavy_first}/2000"
        );

        let Node::Replicating { children, .. } = &tree else {
            unreachable!()
        };
        let Node::Leaf(heavy) = &children[0].1 else {
            unreachable!()
        };
        (0..3).for_each(|_| heavy.health.failed());
        for _ in 0..50 {
            assert_eq!(
                hosts(&tree.read_order(&mut rng).expect("readable")),
                ["light", "heavy"]
            );
        }
    }

    #[tokio::test]
    async fn reads_fail_over_to_the_next_replica() {
        let tree = replicating(vec![(1, leaf("dead")), (1, leaf("live"))]);
        for _ in 0..20 {
            let host = tree
                .read(|leaf| async move {
                    if leaf.id.hostname == "dead" {
                        Err(ShardError::Unavailable {
                            shard: leaf.id.to_string(),
                            reason: "down".into(),
                        })
                    } else {
                        Ok(leaf.id.hostname.clone())
                    }
                })
                .await
                .expect("the live replica answers");
            assert_eq!(host, "live");
        }
    }

    #[tokio::test]
    async fn a_read_waits_for_a_hung_replica_only_its_hedge_then_reads_it_last() {
        let tree = replicating(vec![(1, leaf("hung")), (1, leaf("live"))]);
        let Node::Replicating { children, .. } = &tree else {
            unreachable!()
        };
        let (Node::Leaf(hung), Node::Leaf(live)) = (&children[0].1, &children[1].1) else {
            unreachable!()
        };
        // The live replica starts suspect, so the first read tries the hung one first.
        (0..3).for_each(|_| live.health.failed());
        let tries = std::sync::atomic::AtomicUsize::new(0);
        for _ in 0..20 {
            let read = tree.read(|leaf| {
                let is_hung = leaf.id.hostname == "hung";
                if is_hung {
                    tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                async move {
                    if is_hung {
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, ShardError>(leaf.id.hostname.clone())
                }
            });
            // Far longer than any hedge: only a read that waits for the hung one forever
            // runs into it.
            let host = tokio::time::timeout(std::time::Duration::from_secs(60), read)
                .await
                .expect("the read did not wait for the hung replica")
                .expect("the live replica answers");
            assert_eq!(host, "live");
        }
        assert_eq!(
            tries.into_inner(),
            1,
            "once it hung past its hedge, the replica is read last"
        );
        assert!(hung.health.is_suspect() && !live.health.is_suspect());
    }

    #[tokio::test]
    async fn a_suspect_replica_due_for_a_probe_gets_one_read_and_comes_back_when_it_answers() {
        let probed = Node::Leaf(Leaf {
            id: ShardId::new("probed", "t_0001").expect("valid id"),
            shard: Arc::new(()),
            health: Arc::new(LeafHealth::suspect_for_a_cool_down()),
        });
        let tree = replicating(vec![(1, leaf("healthy")), (1, probed)]);
        let host = tree
            .read(|leaf| async move { Ok::<_, ShardError>(leaf.id.hostname.clone()) })
            .await
            .expect("read");
        assert_eq!(host, "probed", "the probe goes first");
        let Node::Replicating { children, .. } = &tree else {
            unreachable!()
        };
        let Node::Leaf(probed) = &children[1].1 else {
            unreachable!()
        };
        assert!(!probed.health.is_suspect(), "it answered: healthy again");
    }
}
