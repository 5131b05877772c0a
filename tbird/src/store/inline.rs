//! Statement parameters written into the statement as MySQL literals, for the combined round
//! trips of [`super::merges`]: several statements travel as one text, and the text protocol
//! binds no parameters.
//!
//! A placeholder is a `?` outside quotes, as the server finds them when it prepares the same
//! statement: a `?` inside a quoted literal or identifier is text. The count of parameters
//! must match the count of placeholders exactly; either mismatch is an error, never a NULL
//! filled in or a value dropped.

use std::fmt::Write;

use db::Param;

/// A statement whose placeholders and parameters do not pair up.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the statement has {placeholders} placeholders but {params} parameters")]
pub(super) struct ParamCount {
    placeholders: usize,
    params: usize,
}

/// Returns `sql` with each placeholder replaced by its parameter as a literal: integers in
/// decimal, NULL, and text as a hex literal in utf8mb4, which needs no escaping whatever the
/// server's SQL mode.
pub(super) fn inline(sql: &str, params: Vec<Param>) -> Result<String, ParamCount> {
    let at = placeholders(sql);
    if at.len() != params.len() {
        return Err(ParamCount {
            placeholders: at.len(),
            params: params.len(),
        });
    }
    let mut out = String::with_capacity(sql.len() + params.len() * 24);
    let mut copied = 0;
    for (i, param) in at.into_iter().zip(params) {
        out.push_str(&sql[copied..i]);
        copied = i + 1;
        // Writing into a String cannot fail.
        let _ = match param {
            Param::Int(n) => write!(out, "{n}"),
            Param::Null => out.write_str("NULL"),
            Param::Text(text) => {
                out.push_str("_utf8mb4 X'");
                for byte in text.as_bytes() {
                    let _ = write!(out, "{byte:02x}");
                }
                out.write_char('\'')
            }
        };
    }
    out.push_str(&sql[copied..]);
    Ok(out)
}

/// Returns the byte offsets of the placeholders of `sql`: the `?`s outside `'...'`, `"..."`
/// and `` `...` ``. Inside the first two a backslash escapes the next character (MySQL's
/// default mode); in all three a doubled quote stands for itself, which a scan that leaves
/// the quote and enters it again reads the same way.
fn placeholders(sql: &str) -> Vec<usize> {
    let mut found = Vec::new();
    let mut quote = None;
    let mut chars = sql.char_indices();
    while let Some((i, c)) = chars.next() {
        match (quote, c) {
            (None, '?') => found.push(i),
            (None, '\'' | '"' | '`') => quote = Some(c),
            (Some('\'' | '"'), '\\') => {
                chars.next();
            }
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Param {
        Param::Text(s.into())
    }

    #[test]
    fn integers_go_in_decimal_with_their_sign() {
        let sql = inline(
            "VALUES (?, ?, ?, ?)",
            vec![
                Param::Int(0),
                Param::Int(-1),
                Param::Int(i64::MIN),
                Param::Int(i64::MAX),
            ],
        );
        assert_eq!(
            sql.as_deref(),
            Ok("VALUES (0, -1, -9223372036854775808, 9223372036854775807)")
        );
    }

    #[test]
    fn unsigned_ids_go_in_as_the_bit_pattern_the_codecs_store() {
        // Params carry no unsigned type: ids are cast to i64 on the way in (see `rows`).
        let id = u64::MAX - 1;
        let sql = inline("id = ?", vec![Param::Int(id as i64)]);
        assert_eq!(sql.as_deref(), Ok("id = -2"));
    }

    #[test]
    fn null_goes_in_as_null() {
        assert_eq!(
            inline("(?, ?)", vec![Param::Null, Param::Int(1)]).as_deref(),
            Ok("(NULL, 1)")
        );
    }

    #[test]
    fn text_goes_in_as_hex_whatever_it_holds() {
        let cases = [
            ("", "_utf8mb4 X''"),
            ("ab", "_utf8mb4 X'6162'"),
            ("'", "_utf8mb4 X'27'"),
            ("\"`", "_utf8mb4 X'2260'"),
            ("\\", "_utf8mb4 X'5c'"),
            ("\0", "_utf8mb4 X'00'"),
            ("?", "_utf8mb4 X'3f'"),
            (
                "\\'; DROP TABLE t; --",
                "_utf8mb4 X'5c273b2044524f50205441424c4520743b202d2d'",
            ),
            ("é🐦", "_utf8mb4 X'c3a9f09f90a6'"),
        ];
        for (value, literal) in cases {
            let sql = inline("x = ?", vec![text(value)]);
            assert_eq!(sql, Ok(format!("x = {literal}")), "{value:?}");
        }
    }

    #[test]
    fn every_byte_of_the_text_is_two_hex_digits() {
        // Text is UTF-8 (a `String`), so the bytes that can occur are every byte of a UTF-8
        // encoding: all of them but 0xc0, 0xc1 and 0xf5..=0xff.
        let all: String = ['\0', '\u{7f}', '\u{80}', '\u{7ff}', '\u{800}', '\u{ffff}']
            .into_iter()
            .chain(['\u{10000}', '\u{10ffff}'])
            .collect();
        let sql = inline("?", vec![text(&all)]).expect("one placeholder");
        let hex: String = all.bytes().map(|b| format!("{b:02x}")).collect();
        assert_eq!(sql, format!("_utf8mb4 X'{hex}'"));
    }

    #[test]
    fn a_missing_parameter_is_an_error() {
        assert_eq!(
            inline("(?, ?, ?)", vec![Param::Int(1), Param::Int(2)]),
            Err(ParamCount {
                placeholders: 3,
                params: 2
            })
        );
        assert_eq!(
            inline("(?)", vec![]),
            Err(ParamCount {
                placeholders: 1,
                params: 0
            })
        );
    }

    #[test]
    fn a_surplus_parameter_is_an_error() {
        let err = inline("(?)", vec![Param::Int(1), Param::Null]).expect_err("surplus");
        assert_eq!(
            err,
            ParamCount {
                placeholders: 1,
                params: 2
            }
        );
        assert_eq!(
            err.to_string(),
            "the statement has 1 placeholders but 2 parameters"
        );
        assert!(inline("SELECT 1", vec![Param::Int(1)]).is_err());
    }

    #[test]
    fn question_marks_inside_quotes_are_not_placeholders() {
        let sql = "SELECT '?', \"?\", `a?`, 'it\\'s ?', 'it''s ?', ? FROM t WHERE x = ?";
        let inlined = inline(sql, vec![Param::Int(1), Param::Int(2)]);
        assert_eq!(
            inlined.as_deref(),
            Ok("SELECT '?', \"?\", `a?`, 'it\\'s ?', 'it''s ?', 1 FROM t WHERE x = 2")
        );
        assert_eq!(
            inline("SELECT '?'", vec![Param::Int(1)]),
            Err(ParamCount {
                placeholders: 0,
                params: 1
            })
        );
    }

    #[test]
    fn statements_without_parameters_are_unchanged() {
        assert_eq!(inline("SELECT 1", vec![]).as_deref(), Ok("SELECT 1"));
    }
}
