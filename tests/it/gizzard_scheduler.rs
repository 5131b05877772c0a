//! Gizzard job queue tests against MariaDB and SQLite.
