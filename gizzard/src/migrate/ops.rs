//! Copy, diff and repair between physical shards, built on the hooks every shard type
//! implements ([`PhysicalShard`]). They run against live shards: writes keep flowing, so a
//! copy merges rows (never overwrites a newer version) and a diff confirms a difference twice
//! before reporting it.

use std::{
    collections::BTreeMap,
    ops::{Range, RangeInclusive},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::future::{join_all, try_join_all};

pub use crate::shards::MAX_KEY;
use crate::shards::{PhysicalShard, ShardError};

/// How copies and diffs pace themselves.
#[derive(Clone, Debug, PartialEq)]
pub struct Tuning {
    /// Rows a copy reads per page at first; pages double after a success, up to
    /// `max_page_rows`, and halve after a timeout, down to `min_page_rows`.
    pub page_rows: usize,
    pub min_page_rows: usize,
    pub max_page_rows: usize,
    /// Statements a copy writes at once into each target.
    pub write_parallelism: usize,
    /// Rows per diff chunk (one checksum per replica).
    pub chunk_rows: usize,
    /// How long a diff waits before confirming a difference, so writes in flight land.
    pub confirm_after: Duration,
    /// Times a failed page is retried before the copy gives up (and its job retries later).
    pub page_attempts: u32,
    /// The fewest rows a copy must have before it drops a nearly empty target's
    /// migration-only indexes and builds them after the last page.
    pub defer_indexes_min_rows: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            page_rows: 2_000,
            min_page_rows: 50,
            max_page_rows: 16_000,
            write_parallelism: 2,
            chunk_rows: 50_000,
            confirm_after: Duration::from_millis(200),
            page_attempts: 5,
            defer_indexes_min_rows: 10_000,
        }
    }
}

/// What a copy reports after each page.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<C> {
    /// The cursor past the page's last row: where a resumed copy starts.
    pub cursor: C,
    pub rows: usize,
}

/// Copies the rows after a cursor (hashes in a range) from one shard into others, a page at
/// a time; the caller saves each page's cursor. Reads of the next page overlap the writes of
/// the current one, and a rows-per-second limit throttles it.
pub struct Copier<'a, S: PhysicalShard> {
    from: &'a S,
    to: &'a [Arc<S>],
    hashes: Option<Range<i64>>,
    tuning: &'a Tuning,
    rows_per_second: Option<u64>,
    page_rows: usize,
    cursor: Option<S::Cursor>,
    /// The next page, read while the last one was written.
    prefetched: Option<Vec<S::Row>>,
    started: Instant,
    copied: u64,
}

impl<'a, S: PhysicalShard> Copier<'a, S> {
    pub fn new(
        from: &'a S,
        to: &'a [Arc<S>],
        hashes: Option<Range<i64>>,
        cursor: Option<S::Cursor>,
        tuning: &'a Tuning,
        rows_per_second: Option<u64>,
    ) -> Self {
        Self {
            from,
            to,
            hashes,
            tuning,
            rows_per_second: rows_per_second.filter(|&r| r > 0),
            page_rows: tuning
                .page_rows
                .clamp(tuning.min_page_rows, tuning.max_page_rows),
            cursor,
            prefetched: None,
            started: Instant::now(),
            copied: 0,
        }
    }

    /// Copies the next page and returns where it ended, or `None` when the source has no
    /// more rows. After an error the next call starts again from the last page returned.
    pub async fn next_page(&mut self) -> Result<Option<Page<S::Cursor>>, ShardError> {
        let page = match self.prefetched.take() {
            Some(page) => page,
            None => self.read(self.cursor.clone()).await?,
        };
        let Some(last) = page.last().map(S::cursor_of) else {
            return Ok(None);
        };
        let (written, next) = tokio::join!(
            write_all(self.to, &page, self.tuning.write_parallelism),
            read_page(
                self.from,
                Some(last.clone()),
                self.page_rows,
                &self.hashes,
                self.tuning
            ),
        );
        written?;
        let (next, page_rows) = next?;
        self.page_rows = page_rows;
        self.prefetched = Some(next);
        self.cursor = Some(last.clone());
        self.copied += page.len() as u64;
        if let Some(rate) = self.rows_per_second {
            let due = Duration::from_secs_f64(self.copied as f64 / rate as f64);
            tokio::time::sleep(due.saturating_sub(self.started.elapsed())).await;
        }
        Ok(Some(Page {
            cursor: last,
            rows: page.len(),
        }))
    }

    async fn read(&mut self, after: Option<S::Cursor>) -> Result<Vec<S::Row>, ShardError> {
        let (rows, page_rows) =
            read_page(self.from, after, self.page_rows, &self.hashes, self.tuning).await?;
        self.page_rows = page_rows;
        Ok(rows)
    }
}

/// Reads one page of `page_rows` rows, halving the page after a timeout and retrying
/// transient failures a few times. Returns the rows and the next page size, doubled after a
/// success.
async fn read_page<S: PhysicalShard>(
    from: &S,
    after: Option<S::Cursor>,
    mut page_rows: usize,
    hashes: &Option<Range<i64>>,
    tuning: &Tuning,
) -> Result<(Vec<S::Row>, usize), ShardError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match from
            .read_page(after.clone(), page_rows, hashes.clone())
            .await
        {
            Ok(rows) => return Ok((rows, (page_rows * 2).min(tuning.max_page_rows))),
            Err(err) if attempt < tuning.page_attempts && !err.counts_as_failure() => {
                if matches!(err, ShardError::Timeout { .. }) {
                    page_rows = (page_rows / 2).max(tuning.min_page_rows);
                }
                tracing::warn!(error = %err, page_rows, "copy read failed; retrying");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Writes `rows` into every target, in `parallelism` slices at once per target, retrying a
/// failed slice a few times (writes merge, so rewriting is safe).
async fn write_all<S: PhysicalShard>(
    to: &[Arc<S>],
    rows: &[S::Row],
    parallelism: usize,
) -> Result<(), ShardError> {
    let slice = rows.len().div_ceil(parallelism.max(1)).max(1);
    let writes = to.iter().flat_map(|target| {
        rows.chunks(slice)
            .map(move |chunk| write_slice(&**target, chunk))
    });
    try_join_all(writes).await.map(drop)
}

async fn write_slice<S: PhysicalShard>(target: &S, rows: &[S::Row]) -> Result<(), ShardError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match target.write_rows(rows).await {
            Ok(()) => return Ok(()),
            Err(err) if attempt < 5 && !err.counts_as_failure() => {
                tracing::warn!(error = %err, "copy write failed; retrying");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// The rows of one key on each side of a diff.
#[derive(Clone, Debug, PartialEq)]
pub struct Difference<R> {
    pub key: u64,
    pub a: Vec<R>,
    pub b: Vec<R>,
}

/// One chunk of a diff.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk<R> {
    /// Rows of the first shard in the chunk.
    pub compared: u64,
    /// Keys whose rows differed in two reads `confirm_after` apart, in key order.
    pub differences: Vec<Difference<R>>,
}

/// Compares two shards (hashes in a range) chunk by chunk: checksums of about
/// `tuning.chunk_rows` rows per side, and for a chunk that differs, its rows, read twice.
pub struct Differ<'a, S: PhysicalShard> {
    a: &'a S,
    b: &'a S,
    hashes: Option<Range<i64>>,
    tuning: &'a Tuning,
    /// The last key of the previous chunk.
    after: Option<u64>,
    /// The end of the next chunk, found while the last one was compared.
    next_end: Option<Option<u64>>,
    done: bool,
}

impl<'a, S: PhysicalShard> Differ<'a, S> {
    pub fn new(a: &'a S, b: &'a S, hashes: Option<Range<i64>>, tuning: &'a Tuning) -> Self {
        Self {
            a,
            b,
            hashes,
            tuning,
            after: None,
            next_end: None,
            done: false,
        }
    }

    /// Returns the differ starting after key `after` (from the first key when `None`), where
    /// an earlier diff of the same shards stopped.
    pub fn resume(mut self, after: Option<u64>) -> Self {
        self.after = after;
        self
    }

    /// Returns the last key of the chunks compared so far, to resume after.
    pub fn position(&self) -> Option<u64> {
        self.after
    }

    /// Compares the next chunk, or returns `None` past the last.
    pub async fn next_chunk(&mut self) -> Result<Option<Chunk<S::Row>>, ShardError> {
        if self.done {
            return Ok(None);
        }
        let (a, b, hashes, rows) = (self.a, self.b, &self.hashes, self.tuning.chunk_rows);
        let end = match self.next_end.take() {
            Some(end) => end,
            None => a.chunk_end(self.after, rows, hashes.clone()).await?,
        };
        let keys = self.after.map_or(0, |k| k + 1)..=end.unwrap_or(MAX_KEY);
        // The next chunk's end is looked up while both sides sum this one.
        let following = async {
            match end {
                Some(end) if end < MAX_KEY => a.chunk_end(Some(end), rows, hashes.clone()).await,
                _ => Ok(None),
            }
        };
        let (sum_a, sum_b, following) = tokio::try_join!(
            a.checksum(keys.clone(), hashes.clone()),
            b.checksum(keys.clone(), hashes.clone()),
            following,
        )?;
        self.next_end = Some(following);
        let mut chunk = Chunk {
            compared: sum_a.rows,
            differences: Vec::new(),
        };
        if sum_a != sum_b {
            let first = differences(a, b, self.after, &keys, hashes).await?;
            if !first.is_empty() {
                tokio::time::sleep(self.tuning.confirm_after).await;
                let again = differences(a, b, self.after, &keys, hashes).await?;
                // Only keys that differed both times, with their rows as now: a write in
                // flight during one read is not a difference.
                let seen: std::collections::BTreeSet<u64> = first.iter().map(|d| d.key).collect();
                chunk.differences = again
                    .into_iter()
                    .filter(|d| seen.contains(&d.key))
                    .collect();
            }
        }
        match end {
            Some(end) if end < MAX_KEY => self.after = Some(end),
            _ => self.done = true,
        }
        Ok(Some(chunk))
    }
}

/// Reads the rows of `keys` from both shards and returns the keys whose rows differ.
async fn differences<S: PhysicalShard>(
    a: &S,
    b: &S,
    after: Option<u64>,
    keys: &RangeInclusive<u64>,
    hashes: &Option<Range<i64>>,
) -> Result<Vec<Difference<S::Row>>, ShardError> {
    let (rows_a, rows_b) = tokio::try_join!(
        rows_in(a, after, keys, hashes),
        rows_in(b, after, keys, hashes)
    )?;
    type Sides<R> = (Vec<R>, Vec<R>);
    let mut by_key: BTreeMap<u64, Sides<S::Row>> = BTreeMap::new();
    for row in rows_a {
        by_key.entry(S::key_of(&row)).or_default().0.push(row);
    }
    for row in rows_b {
        by_key.entry(S::key_of(&row)).or_default().1.push(row);
    }
    Ok(by_key
        .into_iter()
        .filter(|(_, (a, b))| a != b)
        .map(|(key, (a, b))| Difference { key, a, b })
        .collect())
}

/// Returns the rows with keys in `keys`, which start after key `after`.
async fn rows_in<S: PhysicalShard>(
    shard: &S,
    after: Option<u64>,
    keys: &RangeInclusive<u64>,
    hashes: &Option<Range<i64>>,
) -> Result<Vec<S::Row>, ShardError> {
    const PAGE: usize = 5_000;
    let mut rows = Vec::new();
    let mut cursor = after.map(S::cursor_past);
    loop {
        let page = shard.read_page(cursor, PAGE, hashes.clone()).await?;
        let full = page.len() == PAGE;
        cursor = page.last().map(S::cursor_of);
        let before = rows.len();
        rows.extend(
            page.into_iter()
                .take_while(|row| S::key_of(row) <= *keys.end()),
        );
        if !full || rows.len() - before < PAGE {
            return Ok(rows);
        }
    }
}

/// Makes both sides agree on each difference by merging each side's rows into the other
/// (the newer version and a tombstone win), writing only the keys that differ. Returns the
/// keys written.
pub async fn repair<S: PhysicalShard>(
    a: &S,
    b: &S,
    differences: &[Difference<S::Row>],
) -> Result<u64, ShardError> {
    let missing = |have: &[S::Row], from: &[S::Row]| -> Vec<S::Row> {
        from.iter()
            .filter(|row| !have.contains(row))
            .cloned()
            .collect()
    };
    let (mut into_a, mut into_b) = (Vec::new(), Vec::new());
    for d in differences {
        into_a.extend(missing(&d.a, &d.b));
        into_b.extend(missing(&d.b, &d.a));
    }
    let results = join_all([a.write_rows(&into_a), b.write_rows(&into_b)]).await;
    for result in results {
        result?;
    }
    Ok(differences.len() as u64)
}
