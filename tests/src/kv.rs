//! A small key-value application on Gizzard, so the framework's tests run on real tables:
//! each key holds a value and a version. Of two rows of one key the greater
//! `(version, deleted, value bytes)` is kept: the higher version wins, at equal versions a
//! delete (tombstone) wins, and between two different values of one version the one greater
//! byte by byte wins. That is a total order, so the merge (its maximum) commutes and repeats
//! safely: replicas that receive the same writes in any order end byte for byte identical.

use std::ops::{Range, RangeInclusive};

use gizzard::{
    db::{Database, DbError, Param},
    nameserver::{ShardId, ShardInfo, hash},
    shards::{Checksum, PhysicalShard, Registry, ShardError, WriteOp},
};
use mysql_async::prelude::Queryable;
use serde::{Deserialize, Serialize};

/// The class name of KV shards in the nameserver.
pub const KV_SHARD: &str = "KvShard";

/// One stored key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvRow {
    pub key: u64,
    pub version: u64,
    pub value: String,
    pub deleted: bool,
}

impl KvRow {
    /// Returns the row's place in the merge order; the greater of two rows of a key is kept.
    pub fn merge_key(&self) -> (u64, bool, &[u8]) {
        (self.version, self.deleted, self.value.as_bytes())
    }

    /// Returns the merge of two rows of one key, as both backends' SQL computes it.
    pub fn merge(&self, other: &KvRow) -> KvRow {
        if other.merge_key() > self.merge_key() {
            other.clone()
        } else {
            self.clone()
        }
    }

    /// Returns the row's CRC32, computed the same way MySQL computes it in `checksum`.
    fn crc(&self) -> u64 {
        let text = format!(
            "{}|{}|{}|{}",
            self.key,
            self.version,
            u8::from(self.deleted),
            self.value
        );
        u64::from(crc32fast::hash(text.as_bytes()))
    }
}

/// A write: `Some(value)` stores, `None` deletes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvWrite {
    pub key: u64,
    pub version: u64,
    pub value: Option<String>,
}

/// One KV table on one host.
#[derive(Debug)]
pub struct KvShard {
    id: ShardId,
    table: String,
    db: Database,
}

/// Returns a registry holding the KV shard type.
pub fn registry() -> Registry<KvShard> {
    Registry::default().register(KV_SHARD, |info: &ShardInfo, db| Ok(KvShard::new(info, db)))
}

type RawRow = (i64, i64, String, bool);

fn to_row((key, version, value, deleted): RawRow) -> KvRow {
    KvRow {
        key: key as u64,
        version: version as u64,
        value,
        deleted,
    }
}

impl KvShard {
    /// Returns the shard for `info` on `db`; its table is `<prefix>_kv`.
    pub fn new(info: &ShardInfo, db: Database) -> Self {
        // The prefix is a validated SQL identifier, so it can be spliced into statements.
        Self {
            id: info.id.clone(),
            table: format!("{}_kv", info.id.table_prefix),
            db,
        }
    }

    fn err(&self, err: DbError) -> ShardError {
        ShardError::from_db(&self.id, err)
    }

    /// Returns the row of `key`, tombstones included.
    pub async fn get(&self, key: u64) -> Result<Option<KvRow>, ShardError> {
        let rows = self.select("k = ?", vec![key as i64], None).await?;
        Ok(rows.into_iter().next())
    }

    /// Returns every row, ordered by key.
    pub async fn rows(&self) -> Result<Vec<KvRow>, ShardError> {
        self.select("1 = 1", Vec::new(), None).await
    }

    /// Selects rows matching `filter` (with `?` placeholders for `params`) in key order.
    async fn select(
        &self,
        filter: &str,
        params: Vec<i64>,
        limit: Option<usize>,
    ) -> Result<Vec<KvRow>, ShardError> {
        let limit = limit.map_or(String::new(), |n| format!(" LIMIT {n}"));
        let sql = format!(
            "SELECT k, version, value, deleted FROM {} WHERE {filter} ORDER BY k{limit}",
            self.table
        );
        let rows: Vec<RawRow> = match &self.db {
            Database::Mysql { .. } => {
                let params: Vec<mysql_async::Value> = params.into_iter().map(Into::into).collect();
                self.db
                    .mysql(|mut c| async move { c.exec(sql, params).await })
                    .await
            }
            Database::Sqlite { .. } => {
                self.db
                    .sqlite(move |c| {
                        let mut stmt = c.prepare_cached(&sql)?;
                        let rows = stmt
                            .query_map(rusqlite::params_from_iter(params.iter()), |r| {
                                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                            })?;
                        rows.collect()
                    })
                    .await
            }
        }
        .map_err(|e| self.err(e))?;
        Ok(rows.into_iter().map(to_row).collect())
    }

    async fn execute(&self, sql: String, params: Vec<Param>) -> Result<u64, ShardError> {
        self.db.execute(sql, params).await.map_err(|e| self.err(e))
    }

    /// Merges rows in one statement, keeping the greater `(version, deleted, value bytes)` of
    /// each key ([`KvRow::merge`]). Values compare as bytes on both backends: on MySQL through
    /// a cast to binary, since a `_bin` collation ignores trailing spaces.
    async fn merge(&self, rows: &[KvRow]) -> Result<(), ShardError> {
        if rows.is_empty() {
            return Ok(());
        }
        let table = &self.table;
        let values = vec!["(?, ?, ?, ?, ?)"; rows.len()].join(", ");
        let sql = match &self.db {
            Database::Mysql { .. } => {
                // Assignments run left to right and see earlier ones, so they go from the least
                // significant column of the order to the most: once a column took the new
                // value, the comparison still holds for the next exactly when it must change.
                let wins = "((VALUES(version), VALUES(deleted), CAST(VALUES(value) AS BINARY)) > \
                            (version, deleted, CAST(value AS BINARY)))";
                format!(
                    "INSERT INTO {table} (k, hash, version, value, deleted) VALUES {values} \
                     ON DUPLICATE KEY UPDATE value = IF({wins}, VALUES(value), value), \
                     deleted = IF({wins}, VALUES(deleted), deleted), \
                     version = IF({wins}, VALUES(version), version)"
                )
            }
            // SQLite compares text with memcmp, as a BLOB.
            Database::Sqlite { .. } => format!(
                "INSERT INTO {table} (k, hash, version, value, deleted) VALUES {values} \
                 ON CONFLICT(k) DO UPDATE SET value = excluded.value, \
                 deleted = excluded.deleted, version = excluded.version \
                 WHERE (excluded.version, excluded.deleted, CAST(excluded.value AS BLOB)) > \
                 ({table}.version, {table}.deleted, CAST({table}.value AS BLOB))"
            ),
        };
        let mut params = Vec::with_capacity(rows.len() * 5);
        for row in rows {
            params.push(Param::Int(row.key as i64));
            params.push(Param::Int(hash(row.key)));
            params.push(Param::Int(row.version as i64));
            params.push(Param::Text(row.value.clone()));
            params.push(Param::Int(i64::from(row.deleted)));
        }
        self.execute(sql, params).await.map(drop)
    }
}

fn hash_filter(hashes: &Option<Range<i64>>, params: &mut Vec<i64>) -> &'static str {
    match hashes {
        Some(range) => {
            params.extend([range.start, range.end]);
            " AND hash >= ? AND hash < ?"
        }
        None => "",
    }
}

impl PhysicalShard for KvShard {
    type Row = KvRow;
    type Cursor = u64;

    async fn materialize(&self) -> Result<(), ShardError> {
        let table = &self.table;
        let sql = match &self.db {
            Database::Mysql { .. } => format!(
                "CREATE TABLE IF NOT EXISTS {table} (k BIGINT NOT NULL PRIMARY KEY, \
                 hash BIGINT NOT NULL, version BIGINT NOT NULL, \
                 value VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
                 deleted BOOLEAN NOT NULL, KEY {table}_hash (hash)) ENGINE=InnoDB"
            ),
            Database::Sqlite { .. } => format!(
                "CREATE TABLE IF NOT EXISTS {table} (k INTEGER NOT NULL PRIMARY KEY, \
                 hash INTEGER NOT NULL, version INTEGER NOT NULL, value TEXT NOT NULL, \
                 deleted INTEGER NOT NULL); \
                 CREATE INDEX IF NOT EXISTS {table}_hash ON {table} (hash)"
            ),
        };
        self.db.execute_batch(sql).await.map_err(|e| self.err(e))
    }

    fn key_of(row: &KvRow) -> u64 {
        row.key
    }

    fn cursor_of(row: &KvRow) -> u64 {
        row.key
    }

    fn cursor_past(key: u64) -> u64 {
        key
    }

    async fn read_page(
        &self,
        after: Option<u64>,
        limit: usize,
        hashes: Option<Range<i64>>,
    ) -> Result<Vec<KvRow>, ShardError> {
        let mut params = vec![after.map_or(-1, |k| k as i64)];
        let filter = format!("k > ?{}", hash_filter(&hashes, &mut params));
        self.select(&filter, params, Some(limit)).await
    }

    async fn write_rows(&self, rows: &[KvRow]) -> Result<(), ShardError> {
        for chunk in rows.chunks(500) {
            self.merge(chunk).await?;
        }
        Ok(())
    }

    async fn chunk_end(
        &self,
        after: Option<u64>,
        rows: usize,
        hashes: Option<Range<i64>>,
    ) -> Result<Option<u64>, ShardError> {
        let mut params = vec![after.map_or(-1, |k| k as i64)];
        let sql = format!(
            "SELECT k FROM {} WHERE k > ?{} ORDER BY k LIMIT 1 OFFSET {}",
            self.table,
            hash_filter(&hashes, &mut params),
            rows.max(1) - 1
        );
        let params = params.into_iter().map(Param::Int).collect();
        let found = self
            .db
            .query_ints(sql, params)
            .await
            .map_err(|e| ShardError::from_db(&self.id, e))?;
        Ok(found.first().and_then(|row| row[0]).map(|k| k as u64))
    }

    async fn checksum(
        &self,
        keys: RangeInclusive<u64>,
        hashes: Option<Range<i64>>,
    ) -> Result<Checksum, ShardError> {
        let mut params = vec![*keys.start() as i64, *keys.end() as i64];
        let filter = format!("k >= ? AND k <= ?{}", hash_filter(&hashes, &mut params));
        // SQLite has no CRC32: sum the same per-row CRC32 here instead of in the database.
        if let Database::Sqlite { .. } = self.db {
            let rows = self.select(&filter, params, None).await?;
            let digest = rows
                .iter()
                .fold(0u64, |sum, row| sum.wrapping_add(row.crc()));
            return Ok(Checksum {
                rows: rows.len() as u64,
                digest,
            });
        }
        let sql = format!(
            "SELECT COUNT(*), CAST(COALESCE(SUM(CRC32(CONCAT_WS('|', k, version, deleted, value))), 0) \
             AS UNSIGNED) FROM {} WHERE {filter}",
            self.table
        );
        let params: Vec<mysql_async::Value> = params.into_iter().map(Into::into).collect();
        let row: Option<(u64, u64)> = self
            .db
            .mysql(|mut c| async move { c.exec_first(sql, params).await })
            .await
            .map_err(|e| self.err(e))?;
        let (rows, digest) = row.unwrap_or_default();
        Ok(Checksum { rows, digest })
    }

    async fn fence(&self, prefix: &str) -> Result<(), ShardError> {
        let to = format!("{prefix}_kv");
        self.db
            .rename_table(&self.table, &to)
            .await
            .map_err(|e| self.err(e))
    }

    async fn drop_tables(&self) -> Result<(), ShardError> {
        let sql = format!("DROP TABLE IF EXISTS {}", self.table);
        self.db.execute_batch(sql).await.map_err(|e| self.err(e))
    }

    async fn delete_hash_range(&self, hashes: Range<i64>) -> Result<u64, ShardError> {
        let sql = format!("DELETE FROM {} WHERE hash >= ? AND hash < ?", self.table);
        self.execute(sql, vec![Param::Int(hashes.start), Param::Int(hashes.end)])
            .await
    }
}

impl WriteOp<KvShard> for KvWrite {
    const JOB_TYPE: &'static str = "kv.write";

    async fn apply(&self, shard: &KvShard) -> Result<(), ShardError> {
        let row = KvRow {
            key: self.key,
            version: self.version,
            deleted: self.value.is_none(),
            value: self.value.clone().unwrap_or_default(),
        };
        shard.merge(std::slice::from_ref(&row)).await
    }
}
