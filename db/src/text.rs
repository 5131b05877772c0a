//! Text that leaves a process: every URL with its secrets redacted ([`redact`]), client
//! input echoed within a bound ([`bounded`]), and an error with its causes, each named once
//! ([`causes`]).
//!
//! Database URLs carry passwords (`mysql://user:PASSWORD@host/db`, or a `password=` query
//! parameter), and they reach logs, error messages and admin responses. Everything that prints
//! a URL, or an error that may hold one, passes it through [`redact`] first.

use std::{borrow::Cow, error::Error};

/// What replaces a secret.
pub const REDACTED: &str = "***";

/// Query parameter names (lowercase, compared without `-` and `_`) whose values are secrets:
/// a name containing any of these is redacted.
const SECRET_PARAMS: [&str; 8] = [
    "pass",
    "pwd",
    "token",
    "secret",
    "key",
    "auth",
    "credential",
    "signature",
];

/// Returns `text` with the secrets of every URL in it replaced by [`REDACTED`]: the password
/// of the user-info (`mysql://user:***@host/db`) and the value of every query parameter whose
/// name looks secret (`password`, `pass`, `pwd`, `token`, `secret`, `key`, `auth`, ...).
///
/// `text` may be one URL or any message holding URLs (an error, a log line). A URL runs from
/// its scheme to the next whitespace or quote. A password holding an unescaped `/` or `@` is
/// redacted whole: the user-info ends at the last `@` before the query.
pub fn redact(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        // The scheme: the letters, digits, `+`, `.` and `-` just before `://`.
        let scheme_start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-')))
            .map_or(0, |i| i + 1);
        let after = at + 3;
        let end = rest[after..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
            .map_or(rest.len(), |i| after + i);
        out.push_str(&rest[..scheme_start]);
        if scheme_start == at {
            // No scheme: not a URL.
            out.push_str(&rest[at..after]);
            rest = &rest[after..];
            continue;
        }
        out.push_str(&rest[scheme_start..after]);
        redact_after_scheme(&rest[after..end], &mut out);
        rest = &rest[end..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Appends `url` (what follows `scheme://`) to `out` with its secrets redacted.
fn redact_after_scheme(url: &str, out: &mut String) {
    let (before_query, query) = match url.find(['?', '#']) {
        Some(i) => url.split_at(i),
        None => (url, ""),
    };
    match before_query.rfind('@') {
        Some(at) => {
            let user_info = &before_query[..at];
            match user_info.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(REDACTED);
                }
                None => out.push_str(user_info),
            }
            out.push_str(&before_query[at..]);
        }
        None => out.push_str(before_query),
    }
    let Some(query) = query.strip_prefix('?') else {
        out.push_str(query);
        return;
    };
    let (query, fragment) = match query.find('#') {
        Some(i) => query.split_at(i),
        None => (query, ""),
    };
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, _)) if is_secret_param(name) => {
                out.push_str(name);
                out.push('=');
                out.push_str(REDACTED);
            }
            _ => out.push_str(pair),
        }
    }
    out.push_str(fragment);
}

/// Returns whether a query parameter of this name holds a secret.
fn is_secret_param(name: &str) -> bool {
    let name: String = name
        .chars()
        .filter(|c| !matches!(c, '-' | '_'))
        .flat_map(char::to_lowercase)
        .collect();
    SECRET_PARAMS.iter().any(|secret| name.contains(secret))
}

/// The most characters of client input an error message echoes by default.
pub const MAX_ECHO: usize = 64;

/// Returns `input` as an error message may echo it: whole when it has at most `max`
/// characters, otherwise its first `max` characters, an ellipsis and its length
/// (`"abc… (10000 characters)"`). Client input echoed whole can overflow the client's
/// metadata limit and turns every error into a copy of the request.
pub fn bounded(input: &str, max: usize) -> Cow<'_, str> {
    match input.char_indices().nth(max) {
        None => Cow::Borrowed(input),
        Some((cut, _)) => Cow::Owned(format!(
            "{}… ({} characters)",
            &input[..cut],
            input.chars().count()
        )),
    }
}

/// Returns `err` and its chain of sources as `err: cause: cause`, each cause named once.
///
/// Some errors print their source inside their own message as well (mysql_async's: `Input/output
/// error: Input/output error: Connection refused`; tonic's transport errors), so a message that
/// ends with `: ` and its source's text is cut before it, and a part equal to the one before
/// it is left out.
pub fn causes(err: &(dyn Error + 'static)) -> String {
    let texts: Vec<String> = std::iter::successors(Some(err), |&cause| cause.source())
        .map(ToString::to_string)
        .collect();
    let mut parts: Vec<&str> = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let own = texts
            .get(i + 1)
            .and_then(|source| text.strip_suffix(source.as_str()))
            .and_then(|rest| {
                if rest.is_empty() {
                    Some(rest)
                } else {
                    rest.strip_suffix(": ")
                }
            })
            .unwrap_or(text);
        if !own.is_empty() && parts.last() != Some(&own) {
            parts.push(own);
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_user_info_are_redacted() {
        let cases = [
            ("mysql://u:pw@db:3306/ns", "mysql://u:***@db:3306/ns"),
            ("mysql://u@db:3306/ns", "mysql://u@db:3306/ns"),
            ("mysql://:pw@db/ns", "mysql://:***@db/ns"),
            // An unescaped `/` or `@` in the password does not leak its tail.
            ("mysql://u:p/w@x@db/ns", "mysql://u:***@db/ns"),
            ("mysql://u:p%40w@db/ns?x=1", "mysql://u:***@db/ns?x=1"),
            ("sqlite:///tmp/a@b.db", "sqlite:///tmp/a@b.db"),
            ("nonsense", "nonsense"),
            ("", ""),
        ];
        for (url, want) in cases {
            assert_eq!(redact(url), want, "{url}");
        }
    }

    #[test]
    fn secret_query_parameters_are_redacted() {
        let url = "mysql://u@db/ns?password=pw&ssl-mode=required&PWD=x&api_token=t\
                   &client-secret=s&ssl-key=/k.pem&pass=p#frag";
        assert_eq!(
            redact(url),
            "mysql://u@db/ns?password=***&ssl-mode=required&PWD=***&api_token=***\
             &client-secret=***&ssl-key=***&pass=***#frag"
        );
        assert_eq!(
            redact("mysql://u@db/ns?ssl-ca=/ca.pem&pool_max=32"),
            "mysql://u@db/ns?ssl-ca=/ca.pem&pool_max=32"
        );
    }

    #[test]
    fn every_url_in_a_message_is_redacted() {
        let text = "invalid database url \"mysql://root:hunter2@db/x?token=abc\": bad; \
                    also mysql://a:b@c/d, and ://x:y@z";
        let redacted = redact(text);
        assert!(!redacted.contains("hunter2"), "{redacted}");
        assert!(!redacted.contains("abc"), "{redacted}");
        assert!(!redacted.contains(":b@"), "{redacted}");
        assert_eq!(
            redacted,
            "invalid database url \"mysql://root:***@db/x?token=***\": bad; \
             also mysql://a:***@c/d, and ://x:y@z"
        );
        assert!(matches!(redact("no urls here"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_driver_error_that_repeats_its_source_names_it_once() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let err = mysql_async::Error::from(refused);
        assert_eq!(
            err.to_string(),
            "Input/output error: Input/output error: connection refused"
        );
        assert_eq!(causes(&err), "Input/output error: connection refused");
    }

    #[test]
    fn echoes_are_bounded_with_the_length() {
        assert_eq!(bounded("short", 64), "short");
        let long = "a".repeat(10_000);
        let echoed = bounded(&long, 64);
        assert_eq!(echoed, format!("{}… (10000 characters)", "a".repeat(64)));
        // Cut on a character boundary.
        assert_eq!(bounded("ééé", 2), "éé… (3 characters)");
        assert_eq!(bounded("éé", 2), "éé");
    }
}
