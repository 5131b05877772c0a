//! Planning: turning an operator's request into a [`Plan`] against the current topology, and
//! the topology changes each workflow step applies. Everything here is pure, so it is tested
//! without databases.

use std::collections::{BTreeMap, BTreeSet};

use super::model::{HashRange, MovePlan, RebalancePlan, SplitPlan};
use crate::nameserver::{
    Change, Forwarding, Link, MAX_HASH, NodeKind, ShardId, ShardInfo, Topology, VIRTUAL_HOST,
};

/// Why a request cannot be planned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

fn refuse<T>(message: String) -> Result<T, PlanError> {
    Err(PlanError(message))
}

fn info<'a>(topology: &'a Topology, id: &ShardId) -> Result<&'a ShardInfo, PlanError> {
    topology
        .shards
        .get(id)
        .ok_or_else(|| PlanError(format!("shard {id} does not exist")))
}

fn is_leaf(info: &ShardInfo) -> bool {
    matches!(
        NodeKind::from_class_name(&info.class_name),
        NodeKind::Leaf(_)
    )
}

fn virtual_id(prefix: &str) -> Result<ShardId, PlanError> {
    ShardId::new(VIRTUAL_HOST, prefix).map_err(|e| PlanError(e.to_string()))
}

fn leaf_id(host: &str, prefix: &str) -> Result<ShardId, PlanError> {
    ShardId::new(host, prefix).map_err(|e| PlanError(e.to_string()))
}

/// Returns the Replicating parent of leaf `source` and the link's weight.
fn replicating_parent(topology: &Topology, source: &ShardId) -> Result<(ShardId, u32), PlanError> {
    let parents: Vec<(&ShardId, u32)> = topology.parents(source).collect();
    let [(parent, weight)] = parents.as_slice() else {
        return refuse(format!(
            "{source} has {} parents; only a leaf with one Replicating parent can be moved",
            parents.len()
        ));
    };
    let kind = NodeKind::from_class_name(&info(topology, parent)?.class_name);
    if kind != NodeKind::Replicating {
        return refuse(format!(
            "{source} sits under {parent}, a {} node; it must sit directly under a ReplicatingShard",
            kind.class_name()
        ));
    }
    Ok(((*parent).clone(), *weight))
}

/// The hosts of the leaves under `node` (through any wrappers).
fn leaf_hosts(topology: &Topology, node: &ShardId) -> BTreeSet<String> {
    let mut hosts = BTreeSet::new();
    let mut stack = vec![node.clone()];
    while let Some(id) = stack.pop() {
        match topology.shards.get(&id) {
            Some(info) if is_leaf(info) => {
                hosts.insert(id.hostname.clone());
            }
            Some(_) => stack.extend(topology.children(&id).map(|(child, _)| child.clone())),
            None => {}
        }
    }
    hosts
}

/// Plans copying leaf `source` to a new leaf on `host`: a move when `remove_source`, else a
/// new replica. `tag` makes the temporary node's name unique.
pub fn plan_move(
    topology: &Topology,
    source: &ShardId,
    host: &str,
    remove_source: bool,
    tag: &str,
) -> Result<MovePlan, PlanError> {
    let source_info = info(topology, source)?;
    if !is_leaf(source_info) {
        return refuse(format!(
            "{source} is a {}, not a leaf: name a physical shard (HOST/PREFIX)",
            source_info.class_name
        ));
    }
    if source_info.busy {
        return refuse(format!("{source} is busy with another migration"));
    }
    if !topology.hosts.contains_key(host) {
        return refuse(format!(
            "host {host:?} is not in the nameserver (gizzmo hosts)"
        ));
    }
    let (parent, weight) = replicating_parent(topology, source)?;
    if leaf_hosts(topology, &parent).contains(host) {
        return refuse(format!("{parent} already has a replica on {host}"));
    }
    let target = leaf_id(host, &source.table_prefix)?;
    if topology.shards.contains_key(&target) {
        return refuse(format!("{target} already exists"));
    }
    Ok(MovePlan {
        source: source.clone(),
        wrapper: virtual_id(&format!("{}_w{tag}", source.table_prefix))?,
        parent,
        target,
        class_name: source_info.class_name.clone(),
        weight,
        remove_source,
    })
}

/// The changes that put a move's target, behind its WriteOnly wrapper, under the parent.
pub fn move_prepare(plan: &MovePlan) -> Vec<Change> {
    vec![
        Change::CreateShard(ShardInfo {
            id: plan.wrapper.clone(),
            class_name: "WriteOnlyShard".into(),
            busy: false,
        }),
        Change::CreateShard(ShardInfo {
            id: plan.target.clone(),
            class_name: plan.class_name.clone(),
            busy: true,
        }),
        Change::AddLink(Link {
            up: plan.wrapper.clone(),
            down: plan.target.clone(),
            weight: 1,
        }),
        Change::AddLink(Link {
            up: plan.parent.clone(),
            down: plan.wrapper.clone(),
            weight: 0,
        }),
        Change::SetBusy {
            id: plan.source.clone(),
            busy: true,
        },
    ]
}

/// The changes that drop the wrapper and let the target serve reads, removing the source
/// for a move.
pub fn move_cutover(plan: &MovePlan) -> Vec<Change> {
    let mut changes = unwrap_target(plan);
    changes.extend([
        Change::AddLink(Link {
            up: plan.parent.clone(),
            down: plan.target.clone(),
            weight: plan.weight,
        }),
        Change::SetBusy {
            id: plan.target.clone(),
            busy: false,
        },
    ]);
    if plan.remove_source {
        changes.extend([
            Change::RemoveLink {
                up: plan.parent.clone(),
                down: plan.source.clone(),
            },
            Change::DeleteShard(plan.source.clone()),
        ]);
    } else {
        changes.push(Change::SetBusy {
            id: plan.source.clone(),
            busy: false,
        });
    }
    changes
}

/// The changes that undo [`move_prepare`]: the tree is as before, the source kept every write.
pub fn move_rollback(plan: &MovePlan) -> Vec<Change> {
    let mut changes = unwrap_target(plan);
    changes.extend([
        Change::DeleteShard(plan.target.clone()),
        Change::SetBusy {
            id: plan.source.clone(),
            busy: false,
        },
    ]);
    changes
}

fn unwrap_target(plan: &MovePlan) -> Vec<Change> {
    vec![
        Change::RemoveLink {
            up: plan.parent.clone(),
            down: plan.wrapper.clone(),
        },
        Change::RemoveLink {
            up: plan.wrapper.clone(),
            down: plan.target.clone(),
        },
        Change::DeleteShard(plan.wrapper.clone()),
    ]
}

/// Plans splitting the range of forwarding `(table_id, base_id)` at hash `at` (by default
/// its middle): hashes from `at` to the next forwarding move to a new tree on the same hosts.
pub fn plan_split(
    topology: &Topology,
    table_id: i32,
    base_id: i64,
    at: Option<i64>,
    tag: &str,
) -> Result<SplitPlan, PlanError> {
    let Some(old_root) = topology.forwardings.get(&(table_id, base_id)) else {
        return refuse(format!(
            "table {table_id} has no forwarding at base id {base_id} (gizzmo forwardings)"
        ));
    };
    let end = topology
        .forwardings
        .range((table_id, base_id + 1)..=(table_id, i64::MAX))
        .next()
        .map_or(MAX_HASH + 1, |(&(_, next), _)| next);
    let at = at.unwrap_or(base_id + (end - base_id) / 2);
    if at <= base_id || at >= end {
        return refuse(format!(
            "split point {at:#x} must lie strictly inside the range {base_id:#x}..{end:#x}"
        ));
    }
    let root_info = info(topology, old_root)?;
    if NodeKind::from_class_name(&root_info.class_name) != NodeKind::Replicating {
        return refuse(format!(
            "{old_root} is a {}; only a range rooted at a ReplicatingShard can be split",
            root_info.class_name
        ));
    }
    let mut old_leaves = Vec::new();
    let mut class_names = BTreeSet::new();
    for (child, _) in topology.children(old_root) {
        let child_info = info(topology, child)?;
        if !is_leaf(child_info) {
            return refuse(format!(
                "{old_root} has a {} child {child}; finish the migration in progress first",
                child_info.class_name
            ));
        }
        if child_info.busy {
            return refuse(format!("{child} is busy with another migration"));
        }
        class_names.insert(child_info.class_name.clone());
        old_leaves.push(child.clone());
    }
    let class_names: Vec<String> = class_names.into_iter().collect();
    let ([class_name], Some(source)) = (class_names.as_slice(), old_leaves.first().cloned()) else {
        return refuse(format!(
            "{old_root} must hold leaves of one class to be split"
        ));
    };
    let prefix = format!("{}_s{tag}", old_root.table_prefix);
    let new_leaves = old_leaves
        .iter()
        .map(|leaf| leaf_id(&leaf.hostname, &prefix))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SplitPlan {
        table_id,
        base_id,
        moved: HashRange { start: at, end },
        old_root: old_root.clone(),
        source,
        old_leaves,
        new_root: virtual_id(&prefix)?,
        new_leaves,
        class_name: class_name.clone(),
        bridge: virtual_id(&format!("{prefix}_bridge"))?,
        wrapper: virtual_id(&format!("{prefix}_w"))?,
    })
}

fn create(id: &ShardId, class_name: &str) -> Change {
    Change::CreateShard(ShardInfo {
        id: id.clone(),
        class_name: class_name.to_owned(),
        busy: false,
    })
}

fn link(up: &ShardId, down: &ShardId, weight: u32) -> Change {
    Change::AddLink(Link {
        up: up.clone(),
        down: down.clone(),
        weight,
    })
}

fn unlink(up: &ShardId, down: &ShardId) -> Change {
    Change::RemoveLink {
        up: up.clone(),
        down: down.clone(),
    }
}

/// The changes that create the new tree and forward the moved range to the bridge, which
/// reads the old tree and writes both.
pub fn split_prepare(plan: &SplitPlan) -> Vec<Change> {
    let mut changes = vec![create(&plan.new_root, "ReplicatingShard")];
    for leaf in &plan.new_leaves {
        changes.push(create(leaf, &plan.class_name));
        changes.push(link(&plan.new_root, leaf, 1));
    }
    changes.extend([
        create(&plan.wrapper, "WriteOnlyShard"),
        link(&plan.wrapper, &plan.new_root, 1),
        create(&plan.bridge, "ReplicatingShard"),
        link(&plan.bridge, &plan.old_root, 1),
        link(&plan.bridge, &plan.wrapper, 0),
        Change::SetForwarding(Forwarding {
            table_id: plan.table_id,
            base_id: plan.moved.start,
            shard_id: plan.bridge.clone(),
        }),
    ]);
    changes
}

fn remove_bridge(plan: &SplitPlan) -> Vec<Change> {
    vec![
        unlink(&plan.bridge, &plan.old_root),
        unlink(&plan.bridge, &plan.wrapper),
        unlink(&plan.wrapper, &plan.new_root),
        Change::DeleteShard(plan.bridge.clone()),
        Change::DeleteShard(plan.wrapper.clone()),
    ]
}

/// The changes that forward the moved range to the new tree alone.
pub fn split_cutover(plan: &SplitPlan) -> Vec<Change> {
    let mut changes = vec![Change::SetForwarding(Forwarding {
        table_id: plan.table_id,
        base_id: plan.moved.start,
        shard_id: plan.new_root.clone(),
    })];
    changes.extend(remove_bridge(plan));
    changes
}

/// The changes that undo [`split_prepare`]: the old tree serves the whole range again.
pub fn split_rollback(plan: &SplitPlan) -> Vec<Change> {
    let mut changes = vec![Change::RemoveForwarding {
        table_id: plan.table_id,
        base_id: plan.moved.start,
    }];
    changes.extend(remove_bridge(plan));
    for leaf in &plan.new_leaves {
        changes.push(unlink(&plan.new_root, leaf));
        changes.push(Change::DeleteShard(leaf.clone()));
    }
    changes.push(Change::DeleteShard(plan.new_root.clone()));
    changes
}

/// Plans moves that even out leaves per host in proportion to the hosts' write weights,
/// among `hosts` (all hosts when empty). Each move takes a leaf from the most loaded host to
/// the least loaded one that holds no replica of the same tree, while that lowers the pair's
/// larger load, so the plan is short and ends.
pub fn plan_rebalance(
    topology: &Topology,
    hosts: &[String],
    max_copies: usize,
    copies_per_host: usize,
    tag: &str,
) -> Result<RebalancePlan, PlanError> {
    if max_copies == 0 || copies_per_host == 0 {
        return refuse("max-copies and copies-per-host must be at least 1".into());
    }
    let hosts: Vec<String> = if hosts.is_empty() {
        topology.hosts.keys().cloned().collect()
    } else {
        hosts.to_vec()
    };
    let mut weights = BTreeMap::new();
    for host in &hosts {
        let Some(record) = topology.hosts.get(host) else {
            return refuse(format!(
                "host {host:?} is not in the nameserver (gizzmo hosts)"
            ));
        };
        weights.insert(host.clone(), record.write_weight);
    }
    // Leaves per host, and for each movable leaf its parent; each parent's replica hosts.
    let mut leaves: BTreeMap<String, Vec<ShardId>> =
        hosts.iter().map(|h| (h.clone(), Vec::new())).collect();
    let mut parents: BTreeMap<ShardId, ShardId> = BTreeMap::new();
    let mut replica_hosts: BTreeMap<ShardId, BTreeSet<String>> = BTreeMap::new();
    for (id, shard) in &topology.shards {
        if !is_leaf(shard) || !weights.contains_key(&id.hostname) {
            continue;
        }
        leaves
            .entry(id.hostname.clone())
            .or_default()
            .push(id.clone());
        if let Ok((parent, _)) = replicating_parent(topology, id)
            && !shard.busy
        {
            replica_hosts
                .entry(parent.clone())
                .or_insert_with(|| leaf_hosts(topology, &parent));
            parents.insert(id.clone(), parent);
        }
    }
    let load = |count: usize, host: &str| {
        let weight = weights[host];
        if weight == 0 {
            f64::INFINITY
        } else {
            count as f64 / f64::from(weight)
        }
    };
    let mut moves = Vec::new();
    while let Some((leaf, from, to)) = next_move(&leaves, &parents, &replica_hosts, &load) {
        if let Some(held) = leaves.get_mut(&from) {
            held.retain(|id| *id != leaf);
        }
        leaves.entry(to.clone()).or_default().push(leaf.clone());
        let parent = parents.remove(&leaf).unwrap_or_else(|| leaf.clone());
        let replicas = replica_hosts.entry(parent).or_default();
        replicas.remove(&from);
        replicas.insert(to.clone());
        let tag = format!("{tag}{}", moves.len());
        moves.push(plan_move(topology, &leaf, &to, true, &tag)?);
    }
    Ok(RebalancePlan {
        moves,
        max_copies,
        copies_per_host,
    })
}

/// The best next move, if any lowers the load of the busiest host it can take from.
fn next_move(
    leaves: &BTreeMap<String, Vec<ShardId>>,
    parents: &BTreeMap<ShardId, ShardId>,
    replica_hosts: &BTreeMap<ShardId, BTreeSet<String>>,
    load: &impl Fn(usize, &str) -> f64,
) -> Option<(ShardId, String, String)> {
    let mut by_load: Vec<(&String, usize)> = leaves.iter().map(|(h, l)| (h, l.len())).collect();
    by_load.sort_by(|a, b| load(b.1, b.0).total_cmp(&load(a.1, a.0)).then(a.0.cmp(b.0)));
    for &(from, from_count) in &by_load {
        for &(to, to_count) in by_load.iter().rev() {
            if load(to_count + 1, to) >= load(from_count, from) {
                break;
            }
            let movable = leaves[from].iter().find(|leaf| {
                parents
                    .get(*leaf)
                    .is_some_and(|parent| !replica_hosts[parent].contains(to))
            });
            if let Some(leaf) = movable {
                return Some((leaf.clone(), from.clone(), to.clone()));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nameserver::{Host, replicated_table};

    fn topology(hosts: &[&str], shards: u32) -> Topology {
        let mut topology = Topology::default();
        for host in hosts {
            topology
                .apply(&Change::SetHost(Host {
                    name: (*host).into(),
                    url: format!("sqlite:///tmp/{host}.db"),
                    read_weight: 1,
                    write_weight: 1,
                }))
                .expect("host");
        }
        let names: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
        for change in replicated_table(1, "KvShard", "kv", &names, shards).expect("table") {
            topology.apply(&change).expect("change");
        }
        topology
    }

    fn apply(topology: &mut Topology, changes: &[Change]) {
        for change in changes {
            topology.apply(change).expect("change applies");
        }
    }

    fn id(s: &str) -> ShardId {
        s.parse().expect("shard id")
    }

    #[test]
    fn a_move_prepares_cuts_over_and_rolls_back_to_valid_trees() {
        let mut t2 = topology(&["a", "b"], 2);
        apply(
            &mut t2,
            &[Change::SetHost(Host {
                name: "c".into(),
                url: "sqlite:///tmp/c.db".into(),
                read_weight: 1,
                write_weight: 1,
            })],
        );
        let plan = plan_move(&t2, &id("a/kv_0000"), "c", true, "x").expect("plan");
        assert_eq!(plan.parent, id("localhost/kv_0000"));
        assert_eq!(plan.target, id("c/kv_0000"));
        let before = t2.clone();
        apply(&mut t2, &move_prepare(&plan));
        let mut rolled = t2.clone();
        apply(&mut rolled, &move_rollback(&plan));
        rolled.version = before.version;
        assert_eq!(rolled, before, "rollback restores the tree");
        apply(&mut t2, &move_cutover(&plan));
        let children: Vec<_> = t2.children(&plan.parent).map(|(c, _)| c.clone()).collect();
        assert_eq!(children, vec![id("b/kv_0000"), id("c/kv_0000")]);
        assert!(!t2.shards.contains_key(&plan.source));
        assert!(!t2.shards[&plan.target].busy);
    }

    #[test]
    fn moves_are_refused_with_the_reason() {
        let t = topology(&["a", "b"], 1);
        let err = |source: &str, host: &str| {
            plan_move(&t, &id(source), host, true, "x")
                .expect_err("refused")
                .to_string()
        };
        assert!(err("a/kv_0000", "b").contains("already has a replica on b"));
        assert!(err("a/kv_0000", "z").contains("host \"z\""));
        assert!(err("localhost/kv_0000", "b").contains("not a leaf"));
        assert!(err("a/nope", "b").contains("does not exist"));
    }

    #[test]
    fn a_split_forwards_the_upper_half_through_a_bridge_then_to_the_new_tree() {
        let mut t = topology(&["a", "b"], 2);
        let base = crate::nameserver::base_ids(2)[1];
        let plan = plan_split(&t, 1, 0, None, "x").expect("plan");
        assert_eq!(
            plan.moved,
            HashRange {
                start: base / 2,
                end: base
            }
        );
        assert_eq!(
            plan.new_leaves,
            vec![id("a/kv_0000_sx"), id("b/kv_0000_sx")]
        );
        let before = t.clone();
        apply(&mut t, &split_prepare(&plan));
        assert_eq!(t.forwardings[&(1, base / 2)], plan.bridge);
        let mut rolled = t.clone();
        apply(&mut rolled, &split_rollback(&plan));
        rolled.version = before.version;
        assert_eq!(rolled, before);
        apply(&mut t, &split_cutover(&plan));
        assert_eq!(t.forwardings[&(1, base / 2)], plan.new_root);
        assert!(!t.shards.contains_key(&plan.bridge));
        let err = plan_split(&t, 1, 0, Some(base + 5), "y").expect_err("outside");
        assert!(err.to_string().contains("strictly inside"), "{err}");
    }

    #[test]
    fn rebalancing_onto_a_new_host_evens_out_leaves_without_doubling_replicas() {
        let mut t = topology(&["a", "b"], 6);
        apply(
            &mut t,
            &[Change::SetHost(Host {
                name: "c".into(),
                url: "sqlite:///tmp/c.db".into(),
                read_weight: 1,
                write_weight: 1,
            })],
        );
        let plan = plan_rebalance(&t, &[], 2, 1, "r").expect("plan");
        // 12 leaves on 3 hosts: 4 each, so 4 move to c.
        assert_eq!(plan.moves.len(), 4, "{plan:#?}");
        let mut t2 = t.clone();
        for m in &plan.moves {
            assert_eq!(m.target.hostname, "c");
            apply(&mut t2, &move_prepare(m));
            apply(&mut t2, &move_cutover(m));
        }
        for (_, root) in t2.forwardings.iter() {
            let hosts = leaf_hosts(&t2, root);
            assert_eq!(hosts.len(), 2, "each tree keeps two replicas on two hosts");
        }
        let again = plan_rebalance(&t2, &[], 2, 1, "s").expect("plan");
        assert!(again.moves.is_empty(), "balanced: {again:#?}");
    }
}
