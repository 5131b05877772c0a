//! Property tests against real databases: a proptest runner calls each case synchronously, so
//! the cases run on a runtime of their own, against databases opened once for every case.

use std::{
    path::Path,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use db::Database;
use proptest::{
    strategy::Strategy,
    test_runner::{Config, TestCaseError, TestRunner},
};
use tokio::runtime::Runtime;

use crate::MariaDb;

/// Returns the runtime the cases run on.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Opens `N` SQLite databases, `0.db`, `1.db`, ... in `dir`.
pub async fn sqlite_databases<const N: usize>(dir: &Path) -> [Database; N] {
    let mut dbs = Vec::new();
    for i in 0..N {
        let url = format!("sqlite://{}", dir.join(format!("{i}.db")).display());
        let db = Database::open(&url, Duration::from_secs(5)).await;
        dbs.push(db.expect("open sqlite"));
    }
    dbs.try_into()
        .unwrap_or_else(|_| unreachable!("N databases"))
}

/// Starts a private MariaDB server holding `N` databases and opens them.
pub async fn mariadb_databases<const N: usize>() -> (MariaDb, [Database; N]) {
    let server = MariaDb::start().await.expect("mariadb");
    let mut dbs = Vec::new();
    for i in 0..N {
        let url = server
            .create_database(&format!("db{i}"))
            .await
            .expect("database");
        let db = Database::open(&url, Duration::from_secs(5)).await;
        dbs.push(db.expect("open mariadb"));
    }
    let dbs = dbs
        .try_into()
        .unwrap_or_else(|_| unreachable!("N databases"));
    (server, dbs)
}

/// Runs `cases` random cases of `strategy` through `check` (given the case and its number)
/// on `runtime`; panics with proptest's report, shrunk, when one fails.
pub fn run_cases<S: Strategy>(
    strategy: S,
    cases: u32,
    runtime: &Runtime,
    check: impl AsyncFn(&S::Value, usize) -> Result<(), TestCaseError>,
) {
    let n = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases,
        // Every shrink step costs a few round trips to the databases.
        max_shrink_iters: 200,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, |case| {
        runtime.block_on(check(&case, n.fetch_add(1, Ordering::Relaxed)))
    });
    if let Err(err) = result {
        panic!("{err}");
    }
}
