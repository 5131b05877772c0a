//! One test suite, every backend: [`backend_suite!`] turns a list of test cases (each an
//! `async fn(url: &str)` taking a fresh, empty database) into one test per case and backend,
//! `on_sqlite::CASE` and `on_mariadb::CASE`, so a failure names its case and hides no other
//! (the shape of Quickwit's `metastore_test_suite!`).

use crate::MariaDb;

/// A fresh, empty database of one backend; dropping it removes the database and its server.
pub struct Backend {
    /// Where the database is (`sqlite://...` or `mysql://...`).
    pub url: String,
    _sqlite: Option<tempfile::TempDir>,
    _mariadb: Option<MariaDb>,
}

impl Backend {
    /// Returns an SQLite file in a new temporary directory.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self {
            url: format!("sqlite://{}", dir.path().join("suite.db").display()),
            _sqlite: Some(dir),
            _mariadb: None,
        }
    }

    /// Returns a database on a private MariaDB server of its own.
    pub async fn mariadb() -> Self {
        let server = MariaDb::start().await.expect("start mariadb");
        let url = server
            .create_database("suite")
            .await
            .expect("create database");
        Self {
            url,
            _sqlite: None,
            _mariadb: Some(server),
        }
    }
}

/// Declares one test per case and backend. Each case is an `async fn(url: &str)` in the
/// calling module, run on a fresh database: `backend_suite!(enqueue_order, backoff);`.
#[macro_export]
macro_rules! backend_suite {
    ($($case:ident),+ $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let backend = $crate::backend::Backend::sqlite();
                    super::$case(&backend.url).await;
                }
            )+
        }
        mod on_mariadb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let backend = $crate::backend::Backend::mariadb().await;
                    super::$case(&backend.url).await;
                }
            )+
        }
    };
}
