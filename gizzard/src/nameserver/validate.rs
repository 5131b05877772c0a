//! Whole-topology validation, run on the result of every batch of changes before it is stored.
//!
//! The checks run in a fixed order (ids and hosts, shard types, links, cycles, child counts,
//! leaf hosts, forwardings) and the first failure is returned, naming the shards or the table
//! at fault. Iteration follows the topology's sorted maps, so the same topology always yields
//! the same error.

use std::collections::{HashMap, HashSet};

use super::model::{MAX_HASH, NodeKind, ShardId, ShardTypes, Topology, TopologyError};

/// Checks every rule a stored topology obeys:
///
/// - shard ids are well formed, hosts have valid names and `mysql://` or `sqlite://` urls;
/// - every shard's class is a built-in node or a registered leaf type;
/// - links join existing shards, and the links form no cycle (a shard may have several
///   parents);
/// - ReadOnly, WriteOnly and Blocked nodes have exactly one child, Replicating nodes at least
///   one, BlackHole nodes at most one (ignored), leaves none;
/// - leaves sit on a known host (virtual nodes use `localhost` and are not checked);
/// - forwardings point at existing shards, base ids lie in `0..=MAX_HASH`, and every table
///   with forwardings has one at base id 0;
/// - every leaf under one table's forwardings has the same class: a tree of one table never
///   holds another table's rows (two tables may share a tree of that class).
pub fn validate(topology: &Topology, types: &ShardTypes) -> Result<(), TopologyError> {
    check_ids_and_hosts(topology)?;
    let mut kinds = HashMap::with_capacity(topology.shards.len());
    for (id, info) in &topology.shards {
        kinds.insert(id, types.kind(id, &info.class_name)?);
    }
    for (up, down) in topology.links.keys() {
        for end in [up, down] {
            if !topology.shards.contains_key(end) {
                return Err(TopologyError::DanglingLink {
                    link: Box::new((up.clone(), down.clone())),
                    missing: end.clone(),
                });
            }
        }
    }
    if let Some(cycle) = find_cycle(topology) {
        return Err(TopologyError::Cycle(cycle));
    }
    check_child_counts(topology, &kinds)?;
    for (id, kind) in &kinds {
        if matches!(kind, NodeKind::Leaf(_)) && !topology.hosts.contains_key(&id.hostname) {
            return Err(TopologyError::UnknownHost {
                id: (*id).clone(),
                hostname: id.hostname.clone(),
            });
        }
    }
    check_forwardings(topology)?;
    check_table_classes(topology, &kinds)
}

fn check_ids_and_hosts(topology: &Topology) -> Result<(), TopologyError> {
    let shard_ids = topology.shards.keys();
    let link_ids = topology.links.keys().flat_map(|(up, down)| [up, down]);
    let root_ids = topology.forwardings.values();
    for id in shard_ids.chain(link_ids).chain(root_ids) {
        id.check().map_err(|reason| TopologyError::InvalidShardId {
            id: id.to_string(),
            reason,
        })?;
    }
    for (name, host) in &topology.hosts {
        let invalid = |reason: String| TopologyError::InvalidHost {
            name: name.clone(),
            reason,
        };
        if *name != host.name {
            return Err(invalid(format!(
                "stored under a different name than {:?}",
                host.name
            )));
        }
        super::model::check_hostname(name).map_err(|e| invalid(e.to_string()))?;
        db::url::check(&host.url).map_err(|reason| {
            invalid(format!("url {:?}: {reason}", db::text::redact(&host.url)))
        })?;
    }
    Ok(())
}

/// Returns the shards of one cycle in link order, if the links have any.
fn find_cycle(topology: &Topology) -> Option<Vec<ShardId>> {
    #[derive(PartialEq)]
    enum Mark {
        OnPath,
        Done,
    }
    let mut marks: HashMap<&ShardId, Mark> = HashMap::with_capacity(topology.shards.len());
    for start in topology.shards.keys() {
        if marks.contains_key(start) {
            continue;
        }
        // Depth-first, without recursion: a deep chain of wrappers cannot overflow the stack.
        marks.insert(start, Mark::OnPath);
        let mut path = vec![start];
        let mut pending = vec![topology.children(start)];
        while let Some(children) = pending.last_mut() {
            match children.next() {
                Some((child, _)) => match marks.get(child) {
                    Some(Mark::OnPath) => {
                        let from = path.iter().position(|id| *id == child)?;
                        return Some(path[from..].iter().map(|id| (*id).clone()).collect());
                    }
                    Some(Mark::Done) => {}
                    None => {
                        marks.insert(child, Mark::OnPath);
                        path.push(child);
                        pending.push(topology.children(child));
                    }
                },
                None => {
                    pending.pop();
                    if let Some(done) = path.pop() {
                        marks.insert(done, Mark::Done);
                    }
                }
            }
        }
    }
    None
}

fn check_child_counts(
    topology: &Topology,
    kinds: &HashMap<&ShardId, NodeKind>,
) -> Result<(), TopologyError> {
    let mut counts: HashMap<&ShardId, usize> = HashMap::new();
    for (up, _) in topology.links.keys() {
        *counts.entry(up).or_default() += 1;
    }
    for (id, info) in &topology.shards {
        let found = counts.get(id).copied().unwrap_or(0);
        let (expected, ok) = match kinds.get(id) {
            Some(NodeKind::ReadOnly | NodeKind::WriteOnly | NodeKind::Blocked) => {
                ("exactly one", found == 1)
            }
            Some(NodeKind::Replicating) => ("at least one", found >= 1),
            // A black hole may wrap the shard it replaces, as Gizzard's did; it ignores it.
            Some(NodeKind::BlackHole) => ("at most one", found <= 1),
            Some(NodeKind::Leaf(_)) | None => ("no", found == 0),
        };
        if !ok {
            return Err(TopologyError::WrongChildCount {
                id: id.clone(),
                class_name: info.class_name.clone(),
                expected,
                found,
            });
        }
    }
    Ok(())
}

fn check_forwardings(topology: &Topology) -> Result<(), TopologyError> {
    let mut previous_table = None;
    // Sorted by (table, base): the first entry of each table holds its smallest base id.
    for (&(table_id, base_id), root) in &topology.forwardings {
        if !(0..=MAX_HASH).contains(&base_id) {
            return Err(TopologyError::BaseIdOutOfRange { table_id, base_id });
        }
        if previous_table != Some(table_id) && base_id != 0 {
            return Err(TopologyError::TableNotStartingAtZero {
                table_id,
                first_base_id: base_id,
            });
        }
        previous_table = Some(table_id);
        if !topology.shards.contains_key(root) {
            return Err(TopologyError::DanglingForwarding {
                table_id,
                base_id,
                shard: root.clone(),
            });
        }
    }
    Ok(())
}

/// Checks that the leaves under each table's forwardings share one class. Each table's trees
/// are walked once (a shard under several roots of the table is visited once).
fn check_table_classes(
    topology: &Topology,
    kinds: &HashMap<&ShardId, NodeKind>,
) -> Result<(), TopologyError> {
    let mut tables = topology.forwardings.iter().peekable();
    while let Some((&(table_id, _), root)) = tables.next() {
        let mut roots = vec![root];
        while let Some((_, root)) = tables.next_if(|((t, _), _)| *t == table_id) {
            roots.push(root);
        }
        let mut seen: HashSet<&ShardId> = HashSet::new();
        let mut pending = roots;
        let mut first: Option<(&ShardId, &str)> = None;
        while let Some(id) = pending.pop() {
            if !seen.insert(id) {
                continue;
            }
            if let Some(NodeKind::Leaf(class_name)) = kinds.get(id) {
                match first {
                    None => first = Some((id, class_name)),
                    Some((first, expected)) if expected != class_name.as_str() => {
                        return Err(TopologyError::MixedClasses {
                            table_id,
                            first: Box::new(first.clone()),
                            expected: expected.to_owned(),
                            id: Box::new(id.clone()),
                            class_name: class_name.clone(),
                        });
                    }
                    Some(_) => {}
                }
            }
            pending.extend(topology.children(id).map(|(child, _)| child));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nameserver::model::{Change, Forwarding, Host, Link, ShardInfo};

    fn id(s: &str) -> ShardId {
        s.parse().expect("valid shard id")
    }

    fn types() -> ShardTypes {
        ShardTypes::new(["TweetShard", "TimelineShard"])
    }

    fn shard(s: &str, class: &str) -> Change {
        Change::CreateShard(ShardInfo {
            id: id(s),
            class_name: class.into(),
            busy: false,
        })
    }

    fn link(up: &str, down: &str) -> Change {
        Change::AddLink(Link {
            up: id(up),
            down: id(down),
            weight: 1,
        })
    }

    fn forward(table_id: i32, base_id: i64, root: &str) -> Change {
        Change::SetForwarding(Forwarding {
            table_id,
            base_id,
            shard_id: id(root),
        })
    }

    /// A valid topology: two replicated trees (one behind a WriteOnly wrapper) on two hosts.
    fn base() -> Topology {
        let mut t = Topology::default();
        let changes = [
            Change::SetHost(Host {
                name: "h1".into(),
                url: "mysql://u@h1:3306/db".into(),
                read_weight: 1,
                write_weight: 1,
            }),
            Change::SetHost(Host {
                name: "h2".into(),
                url: "sqlite:///tmp/h2.db".into(),
                read_weight: 1,
                write_weight: 1,
            }),
            shard("h1/t0", "TweetShard"),
            shard("h2/t0", "TweetShard"),
            shard("h2/t1", "TweetShard"),
            shard("localhost/r0", "ReplicatingShard"),
            shard("localhost/r1", "ReplicatingShard"),
            shard("localhost/w1", "WriteOnlyShard"),
            link("localhost/r0", "h1/t0"),
            link("localhost/r0", "h2/t0"),
            link("localhost/r1", "localhost/w1"),
            link("localhost/w1", "h2/t1"),
            // A shard with two parents (as during a split) is fine.
            link("localhost/r1", "h1/t0"),
            forward(1, 0, "localhost/r0"),
            forward(1, 1 << 59, "localhost/r1"),
            forward(2, 0, "localhost/r1"),
        ];
        for c in &changes {
            t.apply(c).expect("valid change");
        }
        t
    }

    fn with(changes: &[Change]) -> Result<(), TopologyError> {
        let mut t = base();
        for c in changes {
            t.apply(c)?;
        }
        validate(&t, &types())
    }

    #[test]
    fn a_valid_topology_passes() {
        assert_eq!(validate(&base(), &types()), Ok(()));
        assert_eq!(validate(&Topology::default(), &types()), Ok(()));
    }

    #[test]
    fn cycles_are_refused_naming_their_shards() {
        let err = with(&[
            shard("localhost/a", "ReplicatingShard"),
            shard("localhost/b", "ReplicatingShard"),
            shard("localhost/c", "ReadOnlyShard"),
            link("localhost/a", "localhost/b"),
            link("localhost/b", "localhost/c"),
            link("localhost/c", "localhost/a"),
        ])
        .expect_err("cycle");
        assert_eq!(
            err,
            TopologyError::Cycle(vec![
                id("localhost/a"),
                id("localhost/b"),
                id("localhost/c")
            ])
        );
        assert_eq!(
            err.to_string(),
            "shard tree has a cycle: localhost/a -> localhost/b -> localhost/c -> localhost/a"
        );
        let err = with(&[link("localhost/r0", "localhost/r0")]).expect_err("self link");
        assert_eq!(err, TopologyError::Cycle(vec![id("localhost/r0")]));
    }

    #[test]
    fn dangling_links_and_unknown_types_are_refused() {
        let err = with(&[link("localhost/r0", "h1/nope")]).expect_err("dangling");
        assert!(
            matches!(&err, TopologyError::DanglingLink { missing, .. } if *missing == id("h1/nope"))
        );
        assert!(err.to_string().contains("refers to shard h1/nope"), "{err}");
        let err = with(&[shard("h1/x", "UserShard")]).expect_err("unknown type");
        assert!(
            matches!(err, TopologyError::UnknownShardType { .. }),
            "{err}"
        );
    }

    #[test]
    fn child_counts_follow_the_node_kind() {
        let err = with(&[link("localhost/w1", "h1/t0")]).expect_err("wrapper with two");
        assert_eq!(
            err.to_string(),
            "shard localhost/w1 (WriteOnlyShard) must have exactly one child(ren), has 2"
        );
        let err = with(&[shard("localhost/e", "ReplicatingShard")]).expect_err("empty");
        assert!(
            matches!(err, TopologyError::WrongChildCount { found: 0, .. }),
            "{err}"
        );
        let err = with(&[link("h1/t0", "h2/t0")]).expect_err("leaf with child");
        assert!(matches!(&err, TopologyError::WrongChildCount { id: i, .. } if *i == id("h1/t0")));
        let bh = shard("localhost/bh", "BlackHoleShard");
        assert_eq!(with(std::slice::from_ref(&bh)), Ok(()));
        assert_eq!(
            with(&[bh.clone(), link("localhost/bh", "h2/t0")]),
            Ok(()),
            "wraps one"
        );
        let err = with(&[
            bh,
            link("localhost/bh", "h2/t0"),
            link("localhost/bh", "h1/t0"),
        ])
        .expect_err("black hole with two children");
        assert!(
            matches!(err, TopologyError::WrongChildCount { found: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn leaves_need_a_known_host_and_hosts_a_valid_url() {
        let err = with(&[shard("h9/t0", "TweetShard")]).expect_err("unknown host");
        assert_eq!(
            err,
            TopologyError::UnknownHost {
                id: id("h9/t0"),
                hostname: "h9".into()
            }
        );
        let err = with(&[Change::RemoveHost("h2".into())]).expect_err("host still used");
        assert!(matches!(err, TopologyError::UnknownHost { .. }), "{err}");
        let err = with(&[Change::SetHost(Host {
            name: "h3".into(),
            url: "postgres://x".into(),
            read_weight: 1,
            write_weight: 1,
        })])
        .expect_err("bad url");
        assert!(err.to_string().contains("\"postgres://x\""), "{err}");
        let err = with(&[Change::SetHost(Host {
            name: "h3".into(),
            url: "mysql://u:hunter2@x".into(),
            read_weight: 1,
            write_weight: 1,
        })])
        .expect_err("no database");
        assert!(err.to_string().contains("no database name"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn a_table_holds_leaves_of_one_class() {
        // A TimelineShard leaf under the Replicating root of table 1.
        let err = with(&[
            shard("h1/l0", "TimelineShard"),
            link("localhost/r0", "h1/l0"),
        ])
        .expect_err("two classes under table 1");
        assert!(
            matches!(&err, TopologyError::MixedClasses { table_id: 1, id: i, .. } if **i == id("h1/l0")),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("table 1 would hold leaves of two classes")
                && err.to_string().contains("h1/l0 a TimelineShard"),
            "{err}"
        );
        // A forwarding straight to a leaf of the other class.
        let err = with(&[shard("h1/l0", "TimelineShard"), forward(1, 7, "h1/l0")])
            .expect_err("leaf root of another class");
        assert!(matches!(err, TopologyError::MixedClasses { .. }), "{err}");
        // Another table of the other class is fine, and so is a leaf nothing forwards to.
        assert_eq!(
            with(&[
                shard("h1/l0", "TimelineShard"),
                forward(3, 0, "h1/l0"),
                shard("h2/l1", "TimelineShard"),
            ]),
            Ok(())
        );
    }

    #[test]
    fn hand_built_bad_ids_are_refused() {
        let bad = ShardId {
            hostname: "h1".into(),
            table_prefix: "t;drop".into(),
        };
        let err = with(&[Change::CreateShard(ShardInfo {
            id: bad,
            class_name: "TweetShard".into(),
            busy: false,
        })])
        .expect_err("bad prefix");
        assert!(matches!(err, TopologyError::InvalidShardId { .. }), "{err}");
        assert!(err.to_string().contains("\"t;drop\""), "{err}");
    }

    #[test]
    fn forwardings_need_a_start_at_zero_and_existing_roots() {
        let err = with(&[forward(3, 5, "localhost/r0")]).expect_err("no zero");
        assert_eq!(
            err,
            TopologyError::TableNotStartingAtZero {
                table_id: 3,
                first_base_id: 5
            }
        );
        let err = with(&[Change::RemoveForwarding {
            table_id: 1,
            base_id: 0,
        }])
        .expect_err("first removed");
        assert!(
            err.to_string()
                .contains("table 1 does not start at base id 0"),
            "{err}"
        );
        let err = with(&[forward(1, 1 << 60, "localhost/r0")]).expect_err("too big");
        assert!(
            matches!(err, TopologyError::BaseIdOutOfRange { .. }),
            "{err}"
        );
        let err = with(&[forward(1, -1, "localhost/r0")]).expect_err("negative");
        assert!(
            matches!(err, TopologyError::BaseIdOutOfRange { base_id: -1, .. }),
            "{err}"
        );
        let err = with(&[forward(1, 7, "localhost/none")]).expect_err("missing root");
        assert!(
            err.to_string()
                .contains("points at missing shard localhost/none"),
            "{err}"
        );
        assert_eq!(with(&[forward(1, MAX_HASH, "h1/t0")]), Ok(()));
    }
}
