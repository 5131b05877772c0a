//! Retired leaves (`gizzard_retired`): a leaf that a batch of changes deletes (a move's old
//! replica, a removed replica, a rolled-back copy target) is recorded in the same transaction,
//! with the version that retired it. Its table then goes through two steps, run by every
//! server's retirement sweep (`crate::shards::retire`):
//!
//! 1. **Fenced**, once every server routes with that version or has let its lease lapse: its
//!    tables are renamed ([`fenced_prefix`]), so a late write from any server, however stale,
//!    fails instead of landing where nothing reads.
//! 2. **Dropped**, after the grace period that starts at the fence.
//!
//! Until it is fenced, a leaf of the same id cannot be created again (its table would be the
//! one the fence renames).

use std::time::Duration;

use super::{
    model::{ShardId, TopologyError},
    store::{NameServer, NameServerError},
};
use crate::db::Param;

pub(super) const MYSQL_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS gizzard_retired (
    hostname VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    table_prefix VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    retired_version BIGINT NOT NULL,
    class_name VARCHAR(255) NOT NULL,
    fenced_prefix VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
    drop_after_ms BIGINT NULL,
    PRIMARY KEY (hostname, table_prefix, retired_version)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";

pub(super) const SQLITE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS gizzard_retired (
    hostname TEXT NOT NULL,
    table_prefix TEXT NOT NULL,
    retired_version INTEGER NOT NULL,
    class_name TEXT NOT NULL,
    fenced_prefix TEXT NULL,
    drop_after_ms INTEGER NULL,
    PRIMARY KEY (hostname, table_prefix, retired_version)
);";

/// Retired leaves not yet fenced, read inside a batch's transaction.
pub(super) const SELECT_UNFENCED: &str =
    "SELECT hostname, table_prefix FROM gizzard_retired WHERE fenced_prefix IS NULL";

pub(super) const INSERT: &str = "INSERT INTO gizzard_retired \
    (hostname, table_prefix, retired_version, class_name) VALUES (?, ?, ?, ?)";

const SELECT_ALL: &str = "SELECT hostname, table_prefix, retired_version, class_name, \
    fenced_prefix, drop_after_ms FROM gizzard_retired ORDER BY retired_version, hostname, \
    table_prefix";

/// A leaf the topology no longer has, whose table waits to be fenced or dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetiredShard {
    pub id: ShardId,
    pub class_name: String,
    /// The version whose batch deleted it.
    pub retired_version: u64,
    /// The prefix its tables were renamed to, once fenced.
    pub fenced_prefix: Option<String>,
    /// When its tables may be dropped (database clock, ms), once fenced.
    pub drop_after_ms: Option<i64>,
    /// The database's clock at the read.
    pub now_ms: i64,
}

impl RetiredShard {
    /// Whether its grace period is over.
    pub fn may_drop(&self) -> bool {
        self.drop_after_ms.is_some_and(|at| at <= self.now_ms)
    }
}

/// The longest fenced prefix: room is left for what an application appends to a prefix to
/// name its tables, within the 64 characters of a MySQL table name.
const MAX_FENCED_PREFIX: usize = 48;

/// Returns the table prefix a leaf `prefix` retired at `version` is renamed to: unique per
/// retirement, and at most [`MAX_FENCED_PREFIX`] characters.
pub fn fenced_prefix(prefix: &str, version: u64) -> String {
    let suffix = format!("_r{version}");
    if prefix.len() + suffix.len() <= MAX_FENCED_PREFIX {
        return format!("{prefix}{suffix}");
    }
    let hash = xxhash_rust::xxh3::xxh3_64(prefix.as_bytes());
    let suffix = format!("_{hash:016x}{suffix}");
    format!("{}{suffix}", &prefix[..MAX_FENCED_PREFIX - suffix.len()])
}

/// The error a batch gets for creating a leaf whose retired namesake is not fenced yet.
pub(super) fn still_retiring(id: &ShardId) -> TopologyError {
    TopologyError::StillRetiring(id.clone())
}

impl NameServer {
    /// Returns every retired leaf whose table is not dropped yet.
    pub async fn retired(&self) -> Result<Vec<RetiredShard>, NameServerError> {
        type Row = (String, String, i64, String, Option<String>, Option<i64>);
        let db = self.database();
        let now_ms = db.now_ms().await?;
        let rows: Vec<Row> = db.query(SELECT_ALL, Vec::new()).await?;
        let corrupt = |reason: String| NameServerError::Corrupt {
            table: "gizzard_retired",
            reason,
        };
        rows.into_iter()
            .map(
                |(host, prefix, version, class_name, fenced_prefix, drop_after_ms)| {
                    Ok(RetiredShard {
                        id: ShardId::new(host, prefix).map_err(|e| corrupt(e.to_string()))?,
                        class_name,
                        retired_version: u64::try_from(version)
                            .map_err(|_| corrupt(format!("negative version {version}")))?,
                        fenced_prefix,
                        drop_after_ms,
                        now_ms,
                    })
                },
            )
            .collect()
    }

    /// Records that `shard`'s tables were renamed to `prefix`; they may be dropped `grace`
    /// from now (database clock).
    pub async fn mark_fenced(
        &self,
        shard: &RetiredShard,
        prefix: &str,
        grace: Duration,
    ) -> Result<(), NameServerError> {
        let now = self.database().now_ms_sql();
        let sql = format!(
            "UPDATE gizzard_retired SET fenced_prefix = ?, drop_after_ms = {now} + ? \
             WHERE hostname = ? AND table_prefix = ? AND retired_version = ? \
             AND fenced_prefix IS NULL"
        );
        let params = vec![
            Param::from(prefix),
            Param::Int(grace.as_millis() as i64),
            Param::from(&shard.id.hostname),
            Param::from(&shard.id.table_prefix),
            Param::Int(shard.retired_version as i64),
        ];
        self.database().execute(sql, params).await?;
        Ok(())
    }

    /// Forgets `shard` once its tables are dropped.
    pub async fn forget_retired(&self, shard: &RetiredShard) -> Result<(), NameServerError> {
        let sql = "DELETE FROM gizzard_retired \
                   WHERE hostname = ? AND table_prefix = ? AND retired_version = ?";
        let params = vec![
            Param::from(&shard.id.hostname),
            Param::from(&shard.id.table_prefix),
            Param::Int(shard.retired_version as i64),
        ];
        self.database().execute(sql.into(), params).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Database;
    use crate::nameserver::{Change, Host, Link, ShardInfo, ShardTypes};

    fn id(s: &str) -> ShardId {
        s.parse().expect("valid shard id")
    }

    fn create(s: &str, class_name: &str) -> Change {
        Change::CreateShard(ShardInfo {
            id: id(s),
            class_name: class_name.into(),
            busy: false,
        })
    }

    /// Deleting a leaf records it with the version that deleted it, virtual nodes are not
    /// recorded, and the same leaf cannot come back until its old table is fenced.
    #[tokio::test]
    async fn deleted_leaves_are_retired_and_not_recreated_before_their_fence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("ns.db").display());
        let db = Database::open(&url, Duration::from_secs(30))
            .await
            .expect("open sqlite");
        let ns = NameServer::open(db).await.expect("create tables");
        let types = ShardTypes::new(["TweetShard"]);
        let host = Change::SetHost(Host {
            name: "h1".into(),
            url: "sqlite:///tmp/x".into(),
            read_weight: 1,
            write_weight: 1,
        });
        let link = |up: &str, down: &str| {
            Change::AddLink(Link {
                up: id(up),
                down: id(down),
                weight: 1,
            })
        };
        ns.apply(
            &[
                host,
                create("localhost/r", "ReplicatingShard"),
                create("h1/a", "TweetShard"),
                create("h1/b", "TweetShard"),
                link("localhost/r", "h1/a"),
                link("localhost/r", "h1/b"),
            ],
            &types,
        )
        .await
        .expect("create");
        let unlink = |down: &str| Change::RemoveLink {
            up: id("localhost/r"),
            down: id(down),
        };
        let version = ns
            .apply(&[unlink("h1/b"), Change::DeleteShard(id("h1/b"))], &types)
            .await
            .expect("remove a replica");
        let retired = ns.retired().await.expect("retired");
        assert_eq!(retired.len(), 1, "{retired:?}");
        assert_eq!(
            (&retired[0].id, retired[0].retired_version),
            (&id("h1/b"), version)
        );
        assert_eq!(retired[0].fenced_prefix, None);

        let again = [create("h1/b", "TweetShard"), link("localhost/r", "h1/b")];
        let err = ns.apply(&again, &types).await.expect_err("not fenced yet");
        assert!(
            matches!(err.topology_error(), Some(TopologyError::StillRetiring(_))),
            "{err}"
        );

        ns.mark_fenced(&retired[0], "b_r2", Duration::ZERO)
            .await
            .expect("fenced");
        let fenced = ns.retired().await.expect("retired");
        assert_eq!(fenced[0].fenced_prefix.as_deref(), Some("b_r2"));
        assert!(fenced[0].may_drop());
        ns.apply(&again, &types).await.expect("created again");
        ns.forget_retired(&fenced[0]).await.expect("forget");
        assert!(ns.retired().await.expect("retired").is_empty());
    }

    #[test]
    fn fenced_prefixes_are_unique_per_retirement_and_fit_a_table_name() {
        assert_eq!(fenced_prefix("t1_0003", 57), "t1_0003_r57");
        let long = "p".repeat(64);
        let fenced = fenced_prefix(&long, u64::MAX);
        assert_eq!(fenced.len(), MAX_FENCED_PREFIX);
        assert_ne!(fenced, fenced_prefix(&"p".repeat(63), u64::MAX));
        crate::nameserver::model::check_table_prefix(&fenced).expect("a valid prefix");
    }
}
