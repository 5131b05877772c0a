//! The application's physical shard types, by the class names the nameserver stores.

use std::{
    collections::BTreeMap,
    fmt::Debug,
    future::Future,
    ops::{Range, RangeInclusive},
    sync::Arc,
};

use serde::{Serialize, de::DeserializeOwned};

use super::ShardError;
use crate::{
    db::Database,
    nameserver::{ShardInfo, ShardTypes},
};

/// The largest routing key (keys are below 2^63, so they fit a signed BIGINT).
pub const MAX_KEY: u64 = i64::MAX as u64;

/// The row count and an order-independent digest of a range of rows: equal checksums mean
/// equal rows, so replicas are compared without shipping rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checksum {
    pub rows: u64,
    pub digest: u64,
}

/// A physical shard: one table (or set of tables, named by the shard's table prefix) on one
/// host. The application implements its data operations on the same type; the methods here
/// are what Gizzard itself needs: creating tables, and the hooks copy, diff and repair use.
///
/// Keys are the routing keys (below 2^63, so they order the same signed and unsigned); every
/// row stores its key's hash so a hash range is a range scan.
pub trait PhysicalShard: Send + Sync + 'static {
    /// One stored row, tombstones included, as copy and repair move it between replicas.
    type Row: Serialize + DeserializeOwned + Clone + PartialEq + Debug + Send + Sync + 'static;
    /// Where a page of rows ends: the row's key, or more when one key holds several rows.
    type Cursor: Serialize + DeserializeOwned + Clone + PartialEq + Debug + Send + Sync + 'static;

    /// Creates the shard's tables when they are missing.
    fn materialize(&self) -> impl Future<Output = Result<(), ShardError>> + Send;

    /// Returns the row's routing key.
    fn key_of(row: &Self::Row) -> u64;

    /// Returns the cursor just past `row`.
    fn cursor_of(row: &Self::Row) -> Self::Cursor;

    /// Returns the cursor past every row of `key`, so a page can start at the next key.
    fn cursor_past(key: u64) -> Self::Cursor;

    /// Returns up to `limit` rows after `after` (from the first when `None`), in cursor order,
    /// only those whose hash is in `hashes` when given.
    fn read_page(
        &self,
        after: Option<Self::Cursor>,
        limit: usize,
        hashes: Option<Range<i64>>,
    ) -> impl Future<Output = Result<Vec<Self::Row>, ShardError>> + Send;

    /// Merges `rows` in as writes would (the newer version wins, a tombstone wins a tie), so
    /// copying a row twice or over a newer one changes nothing.
    fn write_rows(&self, rows: &[Self::Row])
    -> impl Future<Output = Result<(), ShardError>> + Send;

    /// Returns the key that ends a chunk of about `rows` rows after key `after` (from the
    /// first key when `None`), counting only rows whose hash is in `hashes` when given; `None`
    /// when fewer rows remain. Diffs cut a shard into chunks with it.
    fn chunk_end(
        &self,
        after: Option<u64>,
        rows: usize,
        hashes: Option<Range<i64>>,
    ) -> impl Future<Output = Result<Option<u64>, ShardError>> + Send;

    /// Returns the checksum of the rows with keys in `keys` (and hashes in `hashes`).
    fn checksum(
        &self,
        keys: RangeInclusive<u64>,
        hashes: Option<Range<i64>>,
    ) -> impl Future<Output = Result<Checksum, ShardError>> + Send;

    /// Returns how many rows the shard holds (only those whose hash is in `hashes` when
    /// given), for a copy's progress estimate. By default, from a checksum.
    fn count_rows(
        &self,
        hashes: Option<Range<i64>>,
    ) -> impl Future<Output = Result<u64, ShardError>> + Send {
        async move {
            let all = 0..=MAX_KEY;
            Ok(self.checksum(all, hashes).await?.rows)
        }
    }

    /// Drops the secondary indexes that only migrations read (such as the one on the key's
    /// hash), so that a copy into a new, empty shard does not update them row by row;
    /// [`PhysicalShard::build_indexes`] puts them back before the copy counts as done. By
    /// default there are none.
    fn defer_indexes(&self) -> impl Future<Output = Result<(), ShardError>> + Send {
        async { Ok(()) }
    }

    /// Creates the secondary indexes that are missing, without blocking writes; `rows`, about
    /// how many the shard holds, sizes the deadline.
    fn build_indexes(&self, _rows: u64) -> impl Future<Output = Result<(), ShardError>> + Send {
        async { Ok(()) }
    }

    /// Renames the shard's tables to the names the same class gives table prefix `prefix`, so
    /// that no write reaches them by their old names any more (a leaf retired by a cutover);
    /// succeeds without doing anything when that was done already.
    fn fence(&self, prefix: &str) -> impl Future<Output = Result<(), ShardError>> + Send;

    /// Drops the shard's tables (a fenced leaf's, after its grace period); succeeds when they
    /// are gone already.
    fn drop_tables(&self) -> impl Future<Output = Result<(), ShardError>> + Send;

    /// Deletes the rows whose hash is in `hashes` (after a split moved them elsewhere).
    fn delete_hash_range(
        &self,
        hashes: Range<i64>,
    ) -> impl Future<Output = Result<u64, ShardError>> + Send;
}

/// Builds a physical shard for a shard record on its host's database.
pub type Factory<S> = Arc<dyn Fn(&ShardInfo, Database) -> Result<S, ShardError> + Send + Sync>;

/// Physical shard types by class name.
pub struct Registry<S> {
    factories: BTreeMap<String, Factory<S>>,
}

impl<S> std::fmt::Debug for Registry<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.factories.keys()).finish()
    }
}

impl<S> Default for Registry<S> {
    fn default() -> Self {
        Self {
            factories: BTreeMap::new(),
        }
    }
}

impl<S: PhysicalShard> Registry<S> {
    /// Registers `class_name` (for example `"TweetShard"`), built by `factory`.
    pub fn register(
        mut self,
        class_name: &str,
        factory: impl Fn(&ShardInfo, Database) -> Result<S, ShardError> + Send + Sync + 'static,
    ) -> Self {
        self.factories
            .insert(class_name.to_owned(), Arc::new(factory));
        self
    }

    /// Returns the class names the nameserver should accept for leaves.
    pub fn shard_types(&self) -> ShardTypes {
        ShardTypes::new(self.factories.keys().cloned())
    }

    /// Builds the physical shard for `info` on `db`.
    pub fn build(&self, info: &ShardInfo, db: Database) -> Result<S, ShardError> {
        let factory = self
            .factories
            .get(&info.class_name)
            .ok_or_else(|| ShardError::Query {
                shard: info.id.to_string(),
                message: format!("unknown shard type {:?}", info.class_name),
            })?;
        factory(info, db)
    }
}
