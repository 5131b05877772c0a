//! Batches of changes built client-side from a dump of the topology: a new table's
//! forwardings and shard trees, and wrapping or unwrapping a shard. Each batch is sent as one
//! `Apply`, so it lands whole or not at all; [`check`] tries it on the dump first so that a
//! mistake is named before anything is sent.

use std::collections::BTreeSet;

use anyhow::{Context, bail, ensure};
use clap::ValueEnum;
use gizzard::nameserver::{
    Change, Forwarding, Host, Link, NodeKind, ShardId, ShardInfo, Topology, VIRTUAL_HOST,
    replicated_table,
};
use proto::gizzard::v1 as pb;

/// The most forwardings `create-table` makes for one table.
pub const MAX_TABLE_SHARDS: u32 = 65_536;

/// Returns the topology a `Dump` answered with, refusing malformed ids.
pub fn topology_from_pb(dump: pb::Topology) -> anyhow::Result<Topology> {
    let id = |text: &str| -> anyhow::Result<ShardId> {
        text.parse()
            .with_context(|| format!("the dump holds a malformed shard id {text:?}"))
    };
    let mut topology = Topology {
        version: dump.version,
        ..Topology::default()
    };
    for s in dump.shards {
        let info = ShardInfo {
            id: id(&s.id)?,
            class_name: s.class_name,
            busy: s.busy,
        };
        topology.shards.insert(info.id.clone(), info);
    }
    for l in dump.links {
        topology.links.insert((id(&l.up)?, id(&l.down)?), l.weight);
    }
    for f in dump.forwardings {
        topology
            .forwardings
            .insert((f.table_id, f.base_id), id(&f.shard_id)?);
    }
    for h in dump.hosts {
        let host = Host {
            name: h.name,
            url: h.url,
            read_weight: h.read_weight,
            write_weight: h.write_weight,
        };
        topology.hosts.insert(host.name.clone(), host);
    }
    Ok(topology)
}

/// Applies `changes` to a copy of `topology`, returning the result or the first change that
/// makes no sense (the server also validates the whole result, with the registered types).
pub fn check(topology: &Topology, changes: &[Change]) -> anyhow::Result<Topology> {
    let mut after = topology.clone();
    for change in changes {
        after.apply(change)?;
    }
    Ok(after)
}

/// What `create-table` makes.
#[derive(Clone, Debug)]
pub struct TableSpec {
    pub table_id: i32,
    /// The number of forwardings (hash ranges), each with its own replicated tree.
    pub shards: u32,
    /// The hosts each range gets one leaf on.
    pub replicas: Vec<String>,
    /// The leaf class, one the application registered.
    pub class_name: String,
    /// Table prefix of the shards: range `i` lives in tables `<prefix>_<i:04>`.
    pub prefix: String,
}

/// Returns the changes that create table `spec.table_id`: per range, a `ReplicatingShard`
/// `localhost/<prefix>_<i:04>` over one leaf `<host>/<prefix>_<i:04>` per replica host (links
/// of weight 1), and the forwarding to it.
pub fn create_table(topology: &Topology, spec: &TableSpec) -> anyhow::Result<Vec<Change>> {
    ensure!(
        (1..=MAX_TABLE_SHARDS).contains(&spec.shards),
        "--shards must be between 1 and {MAX_TABLE_SHARDS}, not {}",
        spec.shards
    );
    ensure!(
        !spec.replicas.is_empty(),
        "--replicas needs at least one host"
    );
    let mut seen = BTreeSet::new();
    for host in &spec.replicas {
        ensure!(
            seen.insert(host),
            "--replicas names host {host:?} more than once"
        );
        ensure!(
            topology.hosts.contains_key(host),
            "host {host:?} does not exist; add it first with `gizzmo add-host`"
        );
    }
    if NodeKind::built_in(&spec.class_name).is_some() {
        bail!(
            "--class {} is a routing node; name the leaf class the application registered",
            spec.class_name
        );
    }
    let existing = topology.table_forwardings(spec.table_id).count();
    ensure!(
        existing == 0,
        "table {} already has {existing} forwarding(s); pick another table id or remove them",
        spec.table_id
    );
    let changes = replicated_table(
        spec.table_id,
        &spec.class_name,
        &spec.prefix,
        &spec.replicas,
        spec.shards,
    )
    .with_context(|| format!("--prefix {:?} with the replica hosts", spec.prefix))?;
    check(topology, &changes)?;
    Ok(changes)
}

fn create(id: &ShardId, class_name: &str) -> Change {
    Change::CreateShard(ShardInfo {
        id: id.clone(),
        class_name: class_name.to_owned(),
        busy: false,
    })
}

/// A routing node that wraps one shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Wrapper {
    /// ReadOnlyShard: reads pass, writes are refused and retried later.
    #[value(name = "read-only", alias = "ReadOnlyShard")]
    ReadOnly,
    /// WriteOnlyShard: writes pass, reads skip it (a replica being filled).
    #[value(name = "write-only", alias = "WriteOnlyShard")]
    WriteOnly,
    /// BlockedShard: reads and writes are refused (writes retried later).
    #[value(name = "blocked", alias = "BlockedShard")]
    Blocked,
    /// BlackHoleShard: reads find nothing, writes are dropped.
    #[value(name = "black-hole", alias = "BlackHoleShard")]
    BlackHole,
}

impl Wrapper {
    const ALL: [Wrapper; 4] = [
        Wrapper::ReadOnly,
        Wrapper::WriteOnly,
        Wrapper::Blocked,
        Wrapper::BlackHole,
    ];

    /// Returns the class name of the wrapper node.
    pub fn class_name(self) -> &'static str {
        match self {
            Wrapper::ReadOnly => "ReadOnlyShard",
            Wrapper::WriteOnly => "WriteOnlyShard",
            Wrapper::Blocked => "BlockedShard",
            Wrapper::BlackHole => "BlackHoleShard",
        }
    }

    /// Returns the suffix of the wrapper's table prefix.
    pub fn suffix(self) -> &'static str {
        match self {
            Wrapper::ReadOnly => "read_only",
            Wrapper::WriteOnly => "write_only",
            Wrapper::Blocked => "blocked",
            Wrapper::BlackHole => "black_hole",
        }
    }

    /// Returns the wrapper of class `class_name`, if it is one.
    pub fn from_class_name(class_name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.class_name() == class_name)
    }
}

/// Returns the id of the wrapper node `wrap` creates over `shard` unless told another:
/// `localhost/<prefix>_<suffix>`.
pub fn wrapper_id(wrapper: Wrapper, shard: &ShardId) -> anyhow::Result<ShardId> {
    let prefix = format!("{}_{}", shard.table_prefix, wrapper.suffix());
    ShardId::new(VIRTUAL_HOST, prefix)
        .with_context(|| format!("name the {} over {shard}: pass --id", wrapper.class_name()))
}

/// Returns the changes that put a new `wrapper` node `id` above `shard`: the node takes over
/// the shard's parent links (with their weights) and forwardings, and has the shard as its
/// only child.
pub fn wrap(
    topology: &Topology,
    wrapper: Wrapper,
    shard: &ShardId,
    id: &ShardId,
) -> anyhow::Result<Vec<Change>> {
    ensure!(
        topology.shards.contains_key(shard),
        "shard {shard} does not exist"
    );
    ensure!(
        !topology.shards.contains_key(id),
        "shard {id} already exists; pass --id to name the wrapper"
    );
    let mut changes = vec![create(id, wrapper.class_name())];
    changes.extend(relink_parents(topology, shard, id));
    changes.extend(retarget_forwardings(topology, shard, id));
    changes.push(Change::AddLink(Link {
        up: id.clone(),
        down: shard.clone(),
        weight: 1,
    }));
    check(topology, &changes)?;
    Ok(changes)
}

/// Returns the changes that remove leaf `id` from its Replicating parent, which must keep
/// another readable replica. Retry jobs still aimed at it go to the tree's other leaves.
pub fn remove_replica(topology: &Topology, id: &ShardId) -> anyhow::Result<Vec<Change>> {
    let info = topology
        .shards
        .get(id)
        .with_context(|| format!("shard {id} does not exist"))?;
    ensure!(
        matches!(
            NodeKind::from_class_name(&info.class_name),
            NodeKind::Leaf(_)
        ),
        "{id} is a {}, not a leaf",
        info.class_name
    );
    ensure!(!info.busy, "{id} is busy with a migration");
    let parents: Vec<(&ShardId, u32)> = topology.parents(id).collect();
    let [(parent, _)] = parents.as_slice() else {
        bail!(
            "{id} has {} parents; it must have one ReplicatingShard parent",
            parents.len()
        );
    };
    let parent_class = &topology.shards[*parent].class_name;
    ensure!(
        NodeKind::from_class_name(parent_class) == NodeKind::Replicating,
        "{id} sits under {parent}, a {parent_class}, not a ReplicatingShard"
    );
    let readable_others = topology
        .children(parent)
        .filter(|(child, weight)| *child != id && *weight > 0)
        .count();
    ensure!(
        readable_others > 0,
        "{id} is the last readable replica of {parent}; add another first"
    );
    let changes = vec![
        Change::RemoveLink {
            up: (*parent).clone(),
            down: id.clone(),
        },
        Change::DeleteShard(id.clone()),
    ];
    check(topology, &changes)?;
    Ok(changes)
}

/// Returns the changes that remove wrapper `id` and put its only child in its place (under
/// its parents, with their weights, and in its forwardings), with the child's id.
pub fn unwrap(topology: &Topology, id: &ShardId) -> anyhow::Result<(ShardId, Vec<Change>)> {
    let Some(info) = topology.shards.get(id) else {
        bail!("shard {id} does not exist")
    };
    if Wrapper::from_class_name(&info.class_name).is_none() {
        bail!(
            "shard {id} is a {}, not a wrapper (ReadOnlyShard, WriteOnlyShard, BlockedShard or \
             BlackHoleShard): unwrap removes wrappers only",
            info.class_name
        );
    }
    let children: Vec<_> = topology.children(id).collect();
    let child = match children.as_slice() {
        [(child, _)] => (*child).clone(),
        [] => bail!("wrapper {id} has no child to put in its place"),
        more => bail!(
            "wrapper {id} has {} children; a wrapper has exactly one",
            more.len()
        ),
    };
    let mut changes = relink_parents(topology, id, &child);
    changes.extend(retarget_forwardings(topology, id, &child));
    changes.push(Change::RemoveLink {
        up: id.clone(),
        down: child.clone(),
    });
    changes.push(Change::DeleteShard(id.clone()));
    check(topology, &changes)?;
    Ok((child, changes))
}

/// Moves every parent link of `from` to `to`, with its weight.
fn relink_parents(topology: &Topology, from: &ShardId, to: &ShardId) -> Vec<Change> {
    let mut changes = Vec::new();
    for (up, weight) in topology.parents(from) {
        changes.push(Change::RemoveLink {
            up: up.clone(),
            down: from.clone(),
        });
        changes.push(Change::AddLink(Link {
            up: up.clone(),
            down: to.clone(),
            weight,
        }));
    }
    changes
}

/// Points every forwarding whose root is `from` at `to`.
fn retarget_forwardings(topology: &Topology, from: &ShardId, to: &ShardId) -> Vec<Change> {
    topology
        .forwardings
        .iter()
        .filter(|(_, root)| *root == from)
        .map(|(&(table_id, base_id), _)| {
            Change::SetForwarding(Forwarding {
                table_id,
                base_id,
                shard_id: to.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gizzard::nameserver::{MAX_HASH, base_ids};

    fn id(s: &str) -> ShardId {
        s.parse().expect("valid shard id")
    }

    fn with_hosts(names: &[&str]) -> Topology {
        let mut t = Topology::default();
        for name in names {
            let host = Host {
                name: (*name).into(),
                url: format!("sqlite:///tmp/{name}.db"),
                read_weight: 1,
                write_weight: 1,
            };
            t.hosts.insert(host.name.clone(), host);
        }
        t
    }

    fn spec(shards: u32, replicas: &[&str]) -> TableSpec {
        TableSpec {
            table_id: 1,
            shards,
            replicas: replicas.iter().map(|h| (*h).to_owned()).collect(),
            class_name: "KvShard".into(),
            prefix: "t1".into(),
        }
    }

    #[test]
    fn base_ids_split_the_hash_space_evenly() {
        assert_eq!(base_ids(1), vec![0]);
        assert_eq!(base_ids(4), vec![0, 1 << 58, 2 << 58, 3 << 58]);
        let many = base_ids(MAX_TABLE_SHARDS);
        assert_eq!(many.len(), 65_536);
        assert!(many.windows(2).all(|w| w[1] - w[0] == 1 << 44));
        assert!(many.iter().all(|b| (0..=MAX_HASH).contains(b)));
        let odd = base_ids(3);
        assert_eq!(odd, vec![0, (1i64 << 60) / 3, (2i64 << 60) / 3]);
    }

    #[test]
    fn create_table_builds_replicated_trees_for_each_range() {
        let t = with_hosts(&["a", "b"]);
        let changes = create_table(&t, &spec(4, &["a", "b"])).expect("valid spec");
        let after = check(&t, &changes).expect("applies");
        let forwardings: Vec<_> = after.table_forwardings(1).collect();
        assert_eq!(forwardings.len(), 4);
        assert_eq!(forwardings[0].base_id, 0);
        assert_eq!(forwardings[3].shard_id, id("localhost/t1_0003"));
        assert_eq!(
            after.shards[&id("localhost/t1_0002")].class_name,
            "ReplicatingShard"
        );
        let children: Vec<_> = after.children(&id("localhost/t1_0002")).collect();
        assert_eq!(children, vec![(&id("a/t1_0002"), 1), (&id("b/t1_0002"), 1)]);
        assert_eq!(after.shards[&id("b/t1_0002")].class_name, "KvShard");
        assert_eq!(after.shards.len(), 12);
    }

    #[test]
    fn create_table_refuses_bad_specs_naming_the_problem() {
        let t = with_hosts(&["a", "b"]);
        let err = |s: TableSpec| create_table(&t, &s).expect_err("refused").to_string();
        assert!(err(spec(0, &["a"])).contains("--shards must be between 1 and 65536, not 0"));
        assert!(err(spec(65_537, &["a"])).contains("not 65537"));
        assert!(err(spec(2, &["a", "b", "a"])).contains("names host \"a\" more than once"));
        assert!(err(spec(2, &["a", "zz"])).contains("host \"zz\" does not exist"));
        assert!(err(spec(2, &[])).contains("at least one host"));
        let mut routing = spec(2, &["a"]);
        routing.class_name = "ReplicatingShard".into();
        assert!(err(routing).contains("is a routing node"));
        let mut bad_prefix = spec(2, &["a"]);
        bad_prefix.prefix = "9x".into();
        let message = format!(
            "{:#}",
            create_table(&t, &bad_prefix).expect_err("bad prefix")
        );
        assert!(message.contains("--prefix \"9x\""), "{message}");
        let made = check(&t, &create_table(&t, &spec(2, &["a"])).expect("ok")).expect("applies");
        assert!(err_of(create_table(&made, &spec(2, &["a"]))).contains("already has 2"));
    }

    fn err_of<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
        r.expect_err("refused").to_string()
    }

    #[test]
    fn wrap_then_unwrap_restores_the_topology() {
        let t = with_hosts(&["a", "b"]);
        let t = check(&t, &create_table(&t, &spec(2, &["a", "b"])).expect("ok")).expect("ok");
        let mut t = t;
        t.links
            .insert((id("localhost/t1_0000"), id("a/t1_0000")), 3);

        // A leaf under a replicating node: the wrapper takes its place and its weight.
        let leaf = id("a/t1_0000");
        let wrapper = wrapper_id(Wrapper::WriteOnly, &leaf).expect("fits");
        assert_eq!(wrapper, id("localhost/t1_0000_write_only"));
        let wrapped = check(
            &t,
            &wrap(&t, Wrapper::WriteOnly, &leaf, &wrapper).expect("ok"),
        )
        .expect("applies");
        let under_root: Vec<_> = wrapped.children(&id("localhost/t1_0000")).collect();
        assert_eq!(under_root, vec![(&id("b/t1_0000"), 1), (&wrapper, 3)]);
        assert_eq!(
            wrapped.children(&wrapper).collect::<Vec<_>>(),
            vec![(&leaf, 1)]
        );
        let (child, changes) = unwrap(&wrapped, &wrapper).expect("a wrapper");
        assert_eq!(child, leaf);
        assert_eq!(check(&wrapped, &changes).expect("applies"), t);

        // A root: the wrapper takes over the forwarding.
        let root = id("localhost/t1_0001");
        let ro = wrapper_id(Wrapper::ReadOnly, &root).expect("fits");
        let wrapped =
            check(&t, &wrap(&t, Wrapper::ReadOnly, &root, &ro).expect("ok")).expect("applies");
        assert_eq!(wrapped.forwardings[&(1, 1 << 59)], ro);
        assert!(err_of(wrap(&wrapped, Wrapper::ReadOnly, &root, &ro)).contains("already exists"));
        let (_, changes) = unwrap(&wrapped, &ro).expect("a wrapper");
        assert_eq!(check(&wrapped, &changes).expect("applies"), t);
    }

    #[test]
    fn unwrap_refuses_what_is_not_a_wrapper() {
        let t = with_hosts(&["a"]);
        let t = check(&t, &create_table(&t, &spec(1, &["a"])).expect("ok")).expect("ok");
        let message = err_of(unwrap(&t, &id("localhost/t1_0000")));
        assert!(
            message.contains("is a ReplicatingShard, not a wrapper"),
            "{message}"
        );
        assert!(err_of(unwrap(&t, &id("a/nope"))).contains("shard a/nope does not exist"));
        assert!(
            err_of(wrap(
                &t,
                Wrapper::Blocked,
                &id("a/nope"),
                &id("localhost/x")
            ))
            .contains("shard a/nope does not exist")
        );
        assert_eq!(
            Wrapper::from_class_name("BlockedShard"),
            Some(Wrapper::Blocked)
        );
        assert_eq!(Wrapper::from_class_name("KvShard"), None);
    }

    #[test]
    fn dumps_convert_to_topologies() {
        let dump = pb::Topology {
            version: 7,
            shards: vec![pb::Shard {
                id: "a/t".into(),
                class_name: "KvShard".into(),
                busy: true,
            }],
            links: vec![],
            forwardings: vec![pb::Forwarding {
                table_id: 1,
                base_id: 0,
                shard_id: "a/t".into(),
            }],
            hosts: vec![],
        };
        let t = topology_from_pb(dump.clone()).expect("valid");
        assert_eq!(t.version, 7);
        assert!(t.shards[&id("a/t")].busy);
        let mut bad = dump;
        bad.shards[0].id = "nope".into();
        assert!(format!("{:#}", topology_from_pb(bad).expect_err("bad")).contains("\"nope\""));
    }
}
