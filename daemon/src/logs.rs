//! Logging set-up shared by the daemons and tools: one `tracing` subscriber writing to stderr.
//!
//! Text lines carry ANSI colour only when stderr is a terminal, so a log redirected to a file
//! reads (and greps) as plain text. [`LogFormat::Json`] writes one JSON object per line for
//! log collectors. `RUST_LOG` filters as usual (default `info`); a directive that does not
//! parse is left out and named in a warning once logging runs, instead of silently turning
//! the whole variable into the default.

use std::{io::IsTerminal, str::FromStr};

use serde::{Deserialize, Serialize};
use tracing_subscriber::{EnvFilter, filter::Directive};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines; coloured on a terminal only.
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, fields.
    Json,
}

/// The filter `RUST_LOG` asks for, and the directives of it that did not parse, each with
/// the reason.
#[derive(Debug)]
pub struct Filter {
    /// The filter built of the directives that parsed (`info` when none did or none were
    /// given).
    pub filter: EnvFilter,
    /// `(directive, reason)` of each directive left out.
    pub invalid: Vec<(String, String)>,
}

/// Returns the filter of `spec` (the value of `RUST_LOG`, if set).
pub fn filter(spec: Option<&str>) -> Filter {
    let mut valid = Vec::new();
    let mut invalid = Vec::new();
    for directive in spec.unwrap_or_default().split(',').map(str::trim) {
        if directive.is_empty() {
            continue;
        }
        match Directive::from_str(directive) {
            Ok(_) => valid.push(directive),
            Err(e) => invalid.push((directive.to_owned(), e.to_string())),
        }
    }
    let spec = if valid.is_empty() {
        "info".to_owned()
    } else {
        valid.join(",")
    };
    Filter {
        // Every directive parsed alone, so together they parse too; `info` if not.
        filter: EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info")),
        invalid,
    }
}

/// Installs the process-wide subscriber: `format` lines on stderr, filtered by `RUST_LOG`.
/// Invalid `RUST_LOG` directives are reported as a warning. Does nothing if a subscriber is
/// already installed (a test that runs two servers in one process).
pub fn init(format: LogFormat) {
    let Filter { filter, invalid } = filter(std::env::var("RUST_LOG").ok().as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
    if installed.is_err() {
        return;
    }
    for (directive, reason) in invalid {
        tracing::warn!(%directive, %reason, "ignoring an invalid RUST_LOG directive");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_directives_are_named_and_the_rest_kept() {
        let parsed = filter(Some("warn,tbird=loud, gizzard=debug"));
        assert_eq!(parsed.invalid.len(), 1, "{:?}", parsed.invalid);
        assert_eq!(parsed.invalid[0].0, "tbird=loud");
        let shown = parsed.filter.to_string();
        assert!(
            shown.contains("gizzard=debug") && shown.contains("warn"),
            "{shown}"
        );

        let none = filter(None);
        assert!(none.invalid.is_empty());
        assert_eq!(none.filter.to_string(), "info");
        let all_bad = filter(Some("=="));
        assert_eq!(all_bad.invalid.len(), 1);
        assert_eq!(all_bad.filter.to_string(), "info");
    }

    #[test]
    fn formats_read_from_config_and_flags() {
        #[derive(Deserialize)]
        struct Config {
            f: LogFormat,
        }
        let config: Config = toml::from_str("f = \"json\"").expect("json parses");
        assert_eq!(config.f, LogFormat::Json);
        assert_eq!(
            <LogFormat as clap::ValueEnum>::from_str("text", false),
            Ok(LogFormat::Text)
        );
    }
}
