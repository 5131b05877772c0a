//! Gizzard nameserver tests against MariaDB and SQLite.
