//! What every daemon of the workspace (`tbird serve`, `tbird dev`, `snowflake serve`) shares,
//! so that each behaves the same way for its operator, and what every binary (those and
//! `gizzmo`) prints when it fails.
//!
//! - [`logs`]: `tracing` to stderr, as text (ANSI colour only on a terminal) or JSON lines,
//!   filtered by `RUST_LOG`, whose invalid directives are reported instead of dropped silently.
//! - [`metrics`]: the process-wide Prometheus recorder and a small HTTP server that answers
//!   `GET /metrics` with its text and every other path with 404; [`metrics::Listen`], an
//!   address or `off`.
//! - [`process`]: the standard process metrics (CPU seconds, resident memory, open fds) each
//!   scrape carries, read from `/proc/self`.
//! - [`config`]: the rule every setting follows (a flag, an environment variable and a TOML
//!   key of one name) and the checks that tests run against each binary's command line.
//! - [`error_chain`]: the exit message of a binary, an error and each of its causes once;
//!   [`exit`] prints it and ends `main` with status 1.

pub mod config;
mod error;
pub mod logs;
pub mod metrics;
pub mod process;

pub use error::{error_chain, exit};
