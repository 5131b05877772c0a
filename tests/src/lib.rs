//! The test harness every crate's integration tests use, and nothing else: tests never touch
//! the machine's own MariaDB on 3306.
//!
//! - [`mariadb`]: private `mariadbd` instances on free loopback ports, started from a cached
//!   template datadir, which tests can stop, kill, pause, resume and restart.
//! - [`binary`]: builds and locates the workspace's binaries, for tests that run a daemon as
//!   a real process (to SIGKILL it).

pub mod binary;
pub mod mariadb;

pub use mariadb::{HarnessError, MariaDb};
