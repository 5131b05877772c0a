//! The default topology: both T-Bird tables spread over `shards` forwardings, each a
//! Replicating node with one leaf per host. `tbird dev` creates it in a new data dir, and
//! tests use it for their clusters.

use gizzard::nameserver::{Change, Host, ShardIdError, replicated_table};

use crate::store::{TIMELINE_SHARD, TIMELINES_TABLE, TWEET_SHARD, TWEETS_TABLE};

/// Returns the changes that create both tables on `hosts` (name, URL) with `shards` ranges.
pub fn default_changes(
    hosts: &[(String, String)],
    shards: u32,
) -> Result<Vec<Change>, ShardIdError> {
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
    let names: Vec<String> = hosts.iter().map(|(name, _)| name.clone()).collect();
    for (table_id, class) in [
        (TWEETS_TABLE, TWEET_SHARD),
        (TIMELINES_TABLE, TIMELINE_SHARD),
    ] {
        let prefix = format!("t{table_id}");
        changes.extend(replicated_table(table_id, class, &prefix, &names, shards)?);
    }
    Ok(changes)
}
