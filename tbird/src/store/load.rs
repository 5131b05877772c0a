//! Bulk copies into MySQL through `LOAD DATA LOCAL INFILE`: the rows as a file in the
//! statement's default format, sent from memory.

use db::Param;
use gizzard::shards::ShardError;

use super::{Row, TbirdShard};

/// Rows per `LOAD DATA` statement, and the fewest that go that way rather than as a merge.
pub(super) const LOAD_ROWS: usize = 10_000;
pub(super) const LOAD_MIN_ROWS: usize = 100;

impl TbirdShard {
    /// Writes rows as a copy does, on MySQL: `LOAD DATA` puts in the rows whose key is new,
    /// at about half the server's cost of a multi-row `INSERT ... ON DUPLICATE KEY UPDATE`
    /// (measured on MariaDB 10.11); if any key was already there (a live write landed first),
    /// the rows are merged after it, so the result is the merge's.
    pub(super) async fn load(&self, rows: &[Row]) -> Result<(), ShardError> {
        self.check_kind(rows)?;
        // The file's format spelled out, as `encode` writes it.
        let sql = format!(
            "LOAD DATA LOCAL INFILE 'rows' IGNORE INTO TABLE {} CHARACTER SET utf8mb4 \
             FIELDS TERMINATED BY '\\t' ENCLOSED BY '' ESCAPED BY '\\\\' \
             LINES TERMINATED BY '\\n' ({})",
            self.table,
            self.kind.written_columns().join(", ")
        );
        let loaded = self
            .db
            .load_data(sql, encode(rows), rows.len() as u64)
            .await
            .map_err(|e| self.err(e))?;
        if loaded
            == (db::Loaded::Committed {
                inserted: rows.len() as u64,
            })
        {
            return Ok(());
        }
        if loaded == db::Loaded::Refused {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    shard = %self.id,
                    "the MySQL server refuses LOAD DATA LOCAL (local_infile is off): \
                     copies fall back to multi-row INSERTs, about half as fast"
                );
            });
        }
        self.merge_all(rows).await
    }
}

/// Encodes rows for `LOAD DATA` in its default format: their values
/// ([`Row::push_values`]) as tab-separated fields, one line per row, `\N` for NULL, and
/// backslash escapes in text.
fn encode(rows: &[Row]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * 96);
    let mut values = Vec::new();
    for row in rows {
        values.clear();
        row.push_values(&mut values);
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            push_field(&mut out, value);
        }
        out.push(b'\n');
    }
    out
}

fn push_field(out: &mut Vec<u8>, value: &Param) {
    match value {
        Param::Null => out.extend_from_slice(b"\\N"),
        Param::Int(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Param::Text(text) => push_escaped(out, text),
    }
}

/// Appends `text` with the bytes `LOAD DATA` would read as syntax escaped.
fn push_escaped(out: &mut Vec<u8>, text: &str) {
    for &byte in text.as_bytes() {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0 => out.extend_from_slice(b"\\0"),
            _ => out.push(byte),
        }
    }
}

#[cfg(test)]
mod tests {
    use gizzard::nameserver::hash;
    use proptest::prelude::*;

    use super::*;
    use crate::tweet::Tweet;

    fn tweet(text: &str, in_reply_to: Option<u64>) -> Row {
        Row::Tweet(Tweet {
            id: 5,
            user_id: 6,
            text: text.into(),
            in_reply_to,
            deleted: false,
        })
    }

    /// Reads a file back as MySQL's `LOAD DATA` does with the statement's format: lines end at
    /// a bare newline, fields at a bare tab, `\N` alone is NULL, and a backslash escapes the
    /// byte after it (`\0`, `\t`, `\n`, `\r` name bytes; any other stands for itself).
    fn parse(file: &[u8]) -> Vec<Vec<Option<Vec<u8>>>> {
        let mut lines = Vec::new();
        let (mut fields, mut field) = (Vec::new(), Vec::new());
        let mut bytes = file.iter();
        let mut null = false;
        while let Some(&byte) = bytes.next() {
            match byte {
                b'\\' => match bytes.next().copied() {
                    Some(b'N') if field.is_empty() => null = true,
                    Some(b'0') => field.push(0),
                    Some(b't') => field.push(b'\t'),
                    Some(b'n') => field.push(b'\n'),
                    Some(b'r') => field.push(b'\r'),
                    Some(other) => field.push(other),
                    None => panic!("a file ending in a lone backslash"),
                },
                b'\t' | b'\n' => {
                    let value = std::mem::take(&mut field);
                    fields.push((!std::mem::take(&mut null)).then_some(value));
                    if byte == b'\n' {
                        lines.push(std::mem::take(&mut fields));
                    }
                }
                _ => field.push(byte),
            }
        }
        assert!(
            fields.is_empty() && field.is_empty(),
            "a last line without its newline"
        );
        lines
    }

    fn text(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }

    #[test]
    fn syntax_bytes_in_text_are_escaped() {
        let file = encode(&[tweet("a\tb\nc\rd\\e\0f", None)]);
        let line = format!("5\t{}\t6\ta\\tb\\nc\\rd\\\\e\\0f\t\\N\t0\n", hash(5));
        assert_eq!(String::from_utf8(file).expect("utf-8"), line);
    }

    #[test]
    fn null_is_a_bare_backslash_n_and_a_text_backslash_n_is_not_null() {
        let file = encode(&[tweet("\\N", None), tweet("N", Some(9))]);
        let lines = parse(&file);
        assert_eq!(lines[0][3], text("\\N"), "the text \\N");
        assert_eq!(lines[0][4], None, "no reply is NULL");
        assert_eq!(lines[1][3], text("N"));
        assert_eq!(lines[1][4], text("9"));
    }

    #[test]
    fn timeline_rows_are_four_integer_fields() {
        let rows = [
            Row::Timeline {
                user_id: u64::MAX,
                tweet_id: 3,
                deleted: true,
            },
            Row::Timeline {
                user_id: 2,
                tweet_id: 4,
                deleted: false,
            },
        ];
        let file = String::from_utf8(encode(&rows)).expect("utf-8");
        assert_eq!(
            file,
            format!("-1\t3\t{}\t1\n2\t4\t{}\t0\n", hash(u64::MAX), hash(2))
        );
    }

    proptest! {
        /// Whatever the text, the file reads back as one line per row, six fields, the text
        /// byte for byte.
        #[test]
        fn any_text_reads_back_unchanged(texts in prop::collection::vec(any::<String>(), 1..8)) {
            let rows: Vec<Row> = texts.iter().map(|t| tweet(t, None)).collect();
            let lines = parse(&encode(&rows));
            prop_assert_eq!(lines.len(), rows.len());
            for (line, t) in lines.iter().zip(&texts) {
                prop_assert_eq!(line.len(), 6);
                prop_assert_eq!(&line[3], &text(t));
            }
        }
    }
}
