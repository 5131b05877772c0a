//! The immutable routing snapshot every server routes with: a topology at one version, plus a
//! forwarding index per table that finds the root of a key's shard tree in constant time.
//!
//! The index keeps each table's base ids sorted in one array, and a radix directory on the
//! hash's high bits: slot `b` (hashes `b << shift ..`) gives the range of the array holding
//! the base ids inside that slot, and 16-bit prefixes of its first six. With one or two base
//! ids per slot, a lookup reads one 16-byte directory slot and compares prefixes without a
//! data-dependent branch; only a slot of more than six ids (or a prefix tie) reads the
//! array. The cost stays flat from 1 to 100,000 forwardings (see `benches/routing.rs`).

use std::sync::Arc;

use super::model::{Forwarding, HASH_BITS, MAX_HASH, NodeKind, ShardId, Topology, TopologyError};

/// Slots with at most this many base ids are scanned rather than bisected.
const SHORT_SLOT: usize = 8;

/// The most directory bits: 2^16 slots of 16 bytes make a 1 MiB directory (half the L2 cache
/// of one core here), which gives 99.5% of slots at most [`PREFIXES`] base ids at 100,000
/// forwardings (1.5 per slot on average). Three 32-bit prefixes per slot left 7% of lookups
/// to the array, a second cache miss; 2^17 slots fell out of L2. The prefixes need
/// `HASH_BITS - MAX_DIRECTORY_BITS >= 16`.
const MAX_DIRECTORY_BITS: u32 = 16;

/// The shard tree under one root, as the routing layer builds its nodes from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    pub id: ShardId,
    pub kind: NodeKind,
    pub busy: bool,
    /// The children with their link weights, in id order.
    pub children: Vec<(u32, NodeSpec)>,
}

/// An immutable view of the topology at one version, with fast forwarding lookups.
#[derive(Debug)]
pub struct RoutingSnapshot {
    /// The nameserver version this snapshot was built from.
    pub version: u64,
    /// The topology the snapshot was built from.
    pub topology: Arc<Topology>,
    /// One index per table, sorted by table id.
    tables: Vec<(i32, ForwardingIndex)>,
}

impl RoutingSnapshot {
    /// Builds the snapshot of `topology`, which should have passed validation.
    pub fn new(topology: Topology) -> Self {
        let mut tables: Vec<(i32, Vec<(i64, ShardId)>)> = Vec::new();
        for (&(table_id, base_id), root) in &topology.forwardings {
            match tables.last_mut() {
                Some((last, entries)) if *last == table_id => entries.push((base_id, root.clone())),
                _ => tables.push((table_id, vec![(base_id, root.clone())])),
            }
        }
        let tables = tables
            .into_iter()
            .map(|(table_id, entries)| (table_id, ForwardingIndex::new(entries)))
            .collect();
        Self {
            version: topology.version,
            topology: Arc::new(topology),
            tables,
        }
    }

    /// Returns the root of the tree holding keys of `table_id` with hash `hash`: the root of
    /// the forwarding with the greatest base id `<= hash`, or `None` when the table has no
    /// such forwarding.
    #[inline]
    pub fn lookup(&self, table_id: i32, hash: i64) -> Option<&ShardId> {
        self.index(table_id)?.lookup(hash)
    }

    /// Returns the forwardings of `table_id` in base id order.
    pub fn forwardings(&self, table_id: i32) -> Vec<Forwarding> {
        self.index(table_id).map_or_else(Vec::new, |index| {
            index
                .bases
                .iter()
                .zip(index.roots.iter())
                .map(|(&base_id, root)| Forwarding {
                    table_id,
                    base_id,
                    shard_id: root.clone(),
                })
                .collect()
        })
    }

    /// Returns the ids of the tables that have forwardings, in order.
    pub fn table_ids(&self) -> impl Iterator<Item = i32> + '_ {
        self.tables.iter().map(|(table_id, _)| *table_id)
    }

    /// Returns the tree under `root`, or an error when a shard in it is missing or the links
    /// under it loop.
    pub fn tree(&self, root: &ShardId) -> Result<NodeSpec, TopologyError> {
        let mut path = Vec::new();
        self.subtree(root, &mut path)
    }

    fn subtree<'a>(
        &'a self,
        id: &'a ShardId,
        path: &mut Vec<&'a ShardId>,
    ) -> Result<NodeSpec, TopologyError> {
        let info = self
            .topology
            .shards
            .get(id)
            .ok_or_else(|| TopologyError::ShardNotFound(id.clone()))?;
        if let Some(from) = path.iter().position(|p| *p == id) {
            return Err(TopologyError::Cycle(
                path[from..].iter().map(|p| (*p).clone()).collect(),
            ));
        }
        path.push(id);
        let mut children = Vec::new();
        for (child, weight) in self.topology.children(id) {
            children.push((weight, self.subtree(child, path)?));
        }
        path.pop();
        Ok(NodeSpec {
            id: id.clone(),
            kind: NodeKind::from_class_name(&info.class_name),
            busy: info.busy,
            children,
        })
    }

    #[inline]
    fn index(&self, table_id: i32) -> Option<&ForwardingIndex> {
        // Applications have a handful of tables: a scan beats hashing.
        self.tables
            .iter()
            .find(|(id, _)| *id == table_id)
            .map(|(_, index)| index)
    }
}

/// How many base ids a slot keeps prefixes of.
const PREFIXES: usize = 6;

/// One directory slot: where its base ids start in the sorted array, and the top 16 bits of
/// the offsets in the slot of its first base ids (`u16::MAX` past the slot's end). The prefixes
/// settle a lookup in a slot of at most [`PREFIXES`] base ids without touching the array and
/// without a data-dependent branch, so the CPU overlaps the cache misses of many lookups.
#[derive(Clone, Copy, Debug)]
#[repr(align(16))]
struct Slot {
    start: u32,
    prefixes: [u16; PREFIXES],
}

/// The forwardings of one table: sorted base ids, their roots, and the radix directory.
#[derive(Debug)]
struct ForwardingIndex {
    /// `hash >> shift` is a hash's directory slot.
    shift: u32,
    /// Hashes below this may take the prefix shortcut: 2^60 when every base id is in range
    /// (always, after validation), else 0, which sends every lookup to the exact search.
    shortcut_below: u64,
    /// One slot per directory entry plus a sentinel; `slots[b].start..slots[b + 1].start` are
    /// the positions of the base ids in slot `b`. The first slot also holds any base id
    /// below 0, the last any at or above 2^60.
    slots: Box<[Slot]>,
    bases: Box<[i64]>,
    roots: Box<[ShardId]>,
}

impl ForwardingIndex {
    /// Builds the index of `entries`, sorted by base id without duplicates.
    fn new(entries: Vec<(i64, ShardId)>) -> Self {
        let n = entries.len();
        // One or two base ids per slot: nearly every slot holds at most PREFIXES.
        let bits = n
            .next_power_of_two()
            .trailing_zeros()
            .saturating_sub(1)
            .min(MAX_DIRECTORY_BITS);
        let shift = HASH_BITS - bits;
        let slot_count = 1usize << bits;
        let (bases, roots): (Vec<i64>, Vec<ShardId>) = entries.into_iter().unzip();
        let in_range = bases.iter().all(|base| (0..=MAX_HASH).contains(base));
        let mut slots = Vec::with_capacity(slot_count + 1);
        let mut next = 0;
        for slot in 0..slot_count {
            let start = next;
            let last = slot + 1 == slot_count;
            while next < n && (last || bases[next] < ((slot as i64 + 1) << shift)) {
                next += 1;
            }
            let mut prefixes = [u16::MAX; PREFIXES];
            for (p, &base) in prefixes.iter_mut().zip(&bases[start..next]) {
                *p = prefix(base, shift);
            }
            slots.push(Slot {
                start: start as u32,
                prefixes,
            });
        }
        slots.push(Slot {
            start: n as u32,
            prefixes: [u16::MAX; PREFIXES],
        });
        Self {
            shift,
            shortcut_below: if in_range { 1 << HASH_BITS } else { 0 },
            slots: slots.into_boxed_slice(),
            bases: bases.into_boxed_slice(),
            roots: roots.into_boxed_slice(),
        }
    }

    #[inline]
    fn lookup(&self, hash: i64) -> Option<&ShardId> {
        let last_slot = self.slots.len() - 2;
        let slot = ((hash.max(0) as u64 >> self.shift) as usize).min(last_slot);
        let Slot { start, prefixes } = self.slots[slot];
        let (lo, hi) = (start as usize, self.slots[slot + 1].start as usize);
        // Every base id before `lo` is in an earlier slot, so it is at most `hash`; every one
        // from `hi` on is in a later slot, so above it.
        let hash_prefix = prefix(hash, self.shift);
        let below = prefixes
            .iter()
            .map(|&p| usize::from(hash_prefix > p))
            .sum::<usize>();
        let tie = prefixes.contains(&hash_prefix);
        let at_most = if hi - lo <= PREFIXES && !tie && (hash as u64) < self.shortcut_below {
            lo + below
        } else {
            // Slots hold a few base ids unless the ids cluster: scan short, bisect long.
            let slot_bases = &self.bases[lo..hi];
            lo + if slot_bases.len() <= SHORT_SLOT {
                slot_bases.iter().take_while(|&&base| base <= hash).count()
            } else {
                slot_bases.partition_point(|&base| base <= hash)
            }
        };
        at_most.checked_sub(1).map(|i| &self.roots[i])
    }
}

/// Returns the top 16 bits of `value`'s offset in its slot (exact for values in 0..2^60).
#[inline]
fn prefix(value: i64, shift: u32) -> u16 {
    // Truncation drops the slot number above the offset.
    (value >> (shift - 16)) as u16
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::nameserver::model::ShardInfo;

    fn id(s: &str) -> ShardId {
        s.parse().expect("valid shard id")
    }

    fn snapshot_of(table_id: i32, bases: &[i64]) -> RoutingSnapshot {
        let mut topology = Topology {
            version: 7,
            ..Topology::default()
        };
        for (i, &base) in bases.iter().enumerate() {
            topology
                .forwardings
                .insert((table_id, base), id(&format!("localhost/r{i}")));
        }
        RoutingSnapshot::new(topology)
    }

    fn naive(bases: &[i64], hash: i64) -> Option<ShardId> {
        let mut best: Option<(i64, usize)> = None;
        for (i, &base) in bases.iter().enumerate() {
            if base <= hash && best.is_none_or(|(b, _)| base > b) {
                best = Some((base, i));
            }
        }
        best.map(|(_, i)| id(&format!("localhost/r{i}")))
    }

    #[test]
    fn lookup_finds_the_greatest_base_at_most_the_hash() {
        let s = snapshot_of(1, &[0, 100, 1 << 59]);
        assert_eq!(s.version, 7);
        assert_eq!(s.lookup(1, 0), Some(&id("localhost/r0")));
        assert_eq!(s.lookup(1, 99), Some(&id("localhost/r0")));
        assert_eq!(s.lookup(1, 100), Some(&id("localhost/r1")));
        assert_eq!(s.lookup(1, (1 << 59) - 1), Some(&id("localhost/r1")));
        assert_eq!(s.lookup(1, 1 << 59), Some(&id("localhost/r2")));
        assert_eq!(s.lookup(1, MAX_HASH), Some(&id("localhost/r2")));
        assert_eq!(s.lookup(1, -1), None);
        assert_eq!(s.lookup(2, 5), None, "unknown table");
        assert_eq!(s.table_ids().collect::<Vec<_>>(), vec![1]);
        let f = s.forwardings(1);
        assert_eq!(f.len(), 3);
        assert_eq!(
            (f[1].table_id, f[1].base_id, &f[1].shard_id),
            (1, 100, &id("localhost/r1"))
        );
        assert!(s.forwardings(2).is_empty());
        let s = snapshot_of(1, &[50]);
        assert_eq!(s.lookup(1, 49), None, "below the first base id");
        assert_eq!(s.lookup(1, 50), Some(&id("localhost/r0")));
    }

    #[test]
    fn tree_returns_the_nodes_under_a_root() {
        let mut t = Topology::default();
        for (s, class) in [
            ("localhost/r", "ReplicatingShard"),
            ("localhost/w", "WriteOnlyShard"),
            ("h1/a", "TweetShard"),
            ("h2/a", "TweetShard"),
        ] {
            let info = ShardInfo {
                id: id(s),
                class_name: class.into(),
                busy: s == "h2/a",
            };
            t.shards.insert(id(s), info);
        }
        t.links.insert((id("localhost/r"), id("h1/a")), 3);
        t.links.insert((id("localhost/r"), id("localhost/w")), 0);
        t.links.insert((id("localhost/w"), id("h2/a")), 1);
        let s = RoutingSnapshot::new(t.clone());
        let leaf = |s: &str, busy| NodeSpec {
            id: id(s),
            kind: NodeKind::Leaf("TweetShard".into()),
            busy,
            children: vec![],
        };
        let want = NodeSpec {
            id: id("localhost/r"),
            kind: NodeKind::Replicating,
            busy: false,
            children: vec![
                (3, leaf("h1/a", false)),
                (
                    0,
                    NodeSpec {
                        id: id("localhost/w"),
                        kind: NodeKind::WriteOnly,
                        busy: false,
                        children: vec![(1, leaf("h2/a", true))],
                    },
                ),
            ],
        };
        assert_eq!(s.tree(&id("localhost/r")), Ok(want));
        assert_eq!(
            s.tree(&id("h9/x")),
            Err(TopologyError::ShardNotFound(id("h9/x")))
        );

        t.links.insert((id("h2/a"), id("localhost/r")), 1);
        let err = RoutingSnapshot::new(t)
            .tree(&id("localhost/r"))
            .expect_err("cycle");
        assert!(
            matches!(err, TopologyError::Cycle(ref c) if c.len() == 3),
            "{err}"
        );
    }

    #[test]
    fn large_tables_use_the_directory() {
        let bases: Vec<i64> = (0..100_000i64).map(|i| i * (MAX_HASH / 100_000)).collect();
        let s = snapshot_of(3, &bases);
        for (i, &base) in bases.iter().enumerate().step_by(997) {
            let want = id(&format!("localhost/r{i}"));
            assert_eq!(s.lookup(3, base), Some(&want));
            assert_eq!(s.lookup(3, base + 1), Some(&want));
            if i > 0 {
                let before = id(&format!("localhost/r{}", i - 1));
                assert_eq!(s.lookup(3, base - 1), Some(&before));
            }
        }
    }

    fn bases_strategy() -> impl Strategy<Value = Vec<i64>> {
        // Clustered and spread base ids, sometimes without 0, sometimes out of range.
        let base = prop_oneof![
            4 => 0..=MAX_HASH,
            2 => 0i64..5_000,
            1 => (MAX_HASH - 5_000)..=MAX_HASH,
            1 => Just(0i64),
            1 => prop_oneof![Just(-3i64), Just(1 << 60), Just(i64::MAX), Just(i64::MIN)],
        ];
        prop::collection::btree_set(base, 0..300).prop_map(|set| set.into_iter().collect())
    }

    proptest! {
        #[test]
        fn lookup_matches_a_linear_scan(
            bases in bases_strategy(),
            hashes in prop::collection::vec(any::<i64>(), 0..50),
            near in prop::collection::vec((any::<prop::sample::Index>(), -2i64..=2), 0..50),
        ) {
            let s = snapshot_of(9, &bases);
            let mut probes = hashes;
            probes.extend([0, -1, MAX_HASH, 1 << 60, i64::MIN, i64::MAX]);
            if !bases.is_empty() {
                for (index, delta) in near {
                    probes.push(bases[index.index(bases.len())].saturating_add(delta));
                }
            }
            for hash in probes {
                prop_assert_eq!(s.lookup(9, hash).cloned(), naive(&bases, hash), "hash {}", hash);
            }
            let listed: BTreeMap<i64, ShardId> =
                s.forwardings(9).into_iter().map(|f| (f.base_id, f.shard_id)).collect();
            prop_assert_eq!(listed.keys().copied().collect::<Vec<_>>(), bases);
        }
    }
}
