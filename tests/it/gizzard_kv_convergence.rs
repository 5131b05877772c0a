//! The test application's replicas converge too: random puts and deletes of colliding keys,
//! versions and values (values that loose collations would call equal), applied to two KV
//! replicas in different orders and repeated, leave both byte for byte the same rows, the
//! greater `(version, deleted, value bytes)` of each key; and repair after a difference
//! leaves a clean diff. On SQLite always, and on MariaDB through the harness.

use std::{collections::BTreeMap, time::Duration};

use gizzard::{
    db::Database,
    migrate::ops::{Differ, Tuning, repair},
    nameserver::ShardInfo,
    shards::{PhysicalShard, WriteOp},
};
use proptest::{prelude::*, test_runner::TestCaseError};
use tests::{
    kv::{KvRow, KvShard, KvWrite},
    property,
};

const VALUES: [&str; 6] = ["a", "a ", "A", "é", "e\u{301}", "b"];

fn write() -> impl Strategy<Value = KvWrite> {
    (
        1u64..=3,
        1u64..=2,
        prop::option::weighted(0.8, prop::sample::select(&VALUES[..])),
    )
        .prop_map(|(key, version, value)| KvWrite {
            key,
            version,
            value: value.map(str::to_owned),
        })
}

/// Writes, the order replica b gets them in, writes b gets twice, and writes only a gets.
type Case = (Vec<KvWrite>, Vec<KvWrite>, Vec<usize>, Vec<KvWrite>);

fn case() -> impl Strategy<Value = Case> {
    prop::collection::vec(write(), 1..12).prop_flat_map(|writes| {
        let n = writes.len();
        (
            Just(writes.clone()),
            Just(writes).prop_shuffle(),
            prop::collection::vec(0..n, 0..4),
            prop::collection::vec(write(), 0..4),
        )
    })
}

fn row_of(write: &KvWrite) -> KvRow {
    KvRow {
        key: write.key,
        version: write.version,
        deleted: write.value.is_none(),
        value: write.value.clone().unwrap_or_default(),
    }
}

/// The rows the merge rule gives for `writes`, by key.
fn model<'a>(writes: impl IntoIterator<Item = &'a KvWrite>) -> Vec<KvRow> {
    let mut rows: BTreeMap<u64, KvRow> = BTreeMap::new();
    for write in writes {
        let row = row_of(write);
        let merged = match rows.get(&row.key) {
            Some(stored) => stored.merge(&row),
            None => row,
        };
        rows.insert(merged.key, merged);
    }
    rows.into_values().collect()
}

async fn shard(db: &Database, prefix: String) -> KvShard {
    let info = ShardInfo {
        id: format!("h/{prefix}").parse().expect("shard id"),
        class_name: String::new(),
        busy: false,
    };
    let shard = KvShard::new(&info, db.clone());
    shard.materialize().await.expect("table");
    shard
}

async fn apply<'a>(shard: &KvShard, writes: impl IntoIterator<Item = &'a KvWrite>) {
    for write in writes {
        write.apply(shard).await.expect("apply");
    }
}

/// Diffs `a` and `b` and, with `heal`, repairs what differs; returns how many keys differed.
async fn diff(a: &KvShard, b: &KvShard, heal: bool) -> usize {
    let tuning = Tuning {
        chunk_rows: 2,
        confirm_after: Duration::ZERO,
        ..Tuning::default()
    };
    let mut differ = Differ::new(a, b, None, &tuning);
    let mut differing = 0;
    while let Some(chunk) = differ.next_chunk().await.expect("diff") {
        differing += chunk.differences.len();
        if heal && !chunk.differences.is_empty() {
            repair(a, b, &chunk.differences).await.expect("repair");
        }
    }
    differing
}

async fn converge(case: &Case, dbs: &[Database; 2], n: usize) -> Result<(), TestCaseError> {
    let (writes, b_order, b_repeats, a_only) = case;
    let a = shard(&dbs[0], format!("kv_c{n}")).await;
    let b = shard(&dbs[1], format!("kv_c{n}")).await;
    apply(&a, writes).await;
    apply(&b, b_order).await;
    apply(&b, b_repeats.iter().map(|&i| &writes[i])).await;
    let rows_a = a.rows().await.expect("rows");
    prop_assert_eq!(&rows_a, &model(writes), "a against the merge rule");
    prop_assert_eq!(&b.rows().await.expect("rows"), &rows_a, "b against a");

    // The row checksum covers every column, so diff sees every difference repair must heal.
    apply(&a, a_only).await;
    let expected = model(writes.iter().chain(a_only));
    let changed = a.rows().await.expect("rows") != rows_a;
    prop_assert_eq!(
        diff(&a, &b, true).await > 0,
        changed,
        "diff sees the difference"
    );
    prop_assert_eq!(diff(&a, &b, false).await, 0, "a diff after repair is clean");
    prop_assert_eq!(&a.rows().await.expect("rows"), &expected);
    prop_assert_eq!(&b.rows().await.expect("rows"), &expected);
    Ok(())
}

#[test]
fn kv_replicas_converge_on_sqlite() {
    let runtime = property::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let dbs = runtime.block_on(property::sqlite_databases::<2>(dir.path()));
    property::run_cases(case(), 96, &runtime, async |case, n| {
        converge(case, &dbs, n).await
    });
}

#[test]
fn kv_replicas_converge_on_mariadb() {
    let runtime = property::runtime();
    let (_server, dbs) = runtime.block_on(property::mariadb_databases::<2>());
    property::run_cases(case(), 32, &runtime, async |case, n| {
        converge(case, &dbs, n).await
    });
}
