//! The default topology: both T-Bird tables spread over `shards` forwardings, each a
//! Replicating node with one leaf per host. `tbird dev` creates it in a new data dir, and
//! tests use it for their clusters.

use gizzard::nameserver::{
    Change, Forwarding, Host, Link, MAX_HASH, ShardId, ShardInfo, VIRTUAL_HOST,
};

use crate::store::{TIMELINE_SHARD, TIMELINES_TABLE, TWEET_SHARD, TWEETS_TABLE};

/// Returns the changes that create both tables on `hosts` (name, URL) with `shards` ranges.
pub fn default_changes(hosts: &[(String, String)], shards: usize) -> Vec<Change> {
    let mut changes: Vec<Change> = hosts
        .iter()
        .map(|(name, url)| {
            Change::SetHost(Host {
                name: name.clone(),
                url: url.clone(),
                read_weight: 1,
                write_weight: 1,
            })
        })
        .collect();
    for (table_id, class) in [
        (TWEETS_TABLE, TWEET_SHARD),
        (TIMELINES_TABLE, TIMELINE_SHARD),
    ] {
        changes.extend(table_changes(table_id, class, hosts, shards));
    }
    changes
}

fn table_changes(
    table_id: i32,
    class: &str,
    hosts: &[(String, String)],
    shards: usize,
) -> Vec<Change> {
    let step = (MAX_HASH as u64 + 1) / shards.max(1) as u64;
    let mut changes = Vec::new();
    for s in 0..shards.max(1) {
        let prefix = format!("t{table_id}_{s:04}");
        let root = ShardId {
            hostname: VIRTUAL_HOST.into(),
            table_prefix: prefix.clone(),
        };
        changes.push(Change::CreateShard(ShardInfo {
            id: root.clone(),
            class_name: "ReplicatingShard".into(),
            busy: false,
        }));
        for (host, _) in hosts {
            let leaf = ShardId {
                hostname: host.clone(),
                table_prefix: prefix.clone(),
            };
            changes.push(Change::CreateShard(ShardInfo {
                id: leaf.clone(),
                class_name: class.into(),
                busy: false,
            }));
            changes.push(Change::AddLink(Link {
                up: root.clone(),
                down: leaf,
                weight: 1,
            }));
        }
        let base_id = (s as u64 * step) as i64;
        changes.push(Change::SetForwarding(Forwarding {
            table_id,
            base_id,
            shard_id: root,
        }));
    }
    changes
}
