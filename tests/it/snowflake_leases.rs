//! The lease table's behaviour, one suite run on SQLite and on MariaDB.

use std::time::Duration;

use snowflake::lease::{LeaseError, LeaseStore, store::Pair};
use tests::MariaDb;

const TTL: Duration = Duration::from_millis(800);
const PAIR: Pair = Pair {
    datacenter_id: 2,
    worker_id: 9,
};

async fn suite(store: LeaseStore) {
    // A free pair is taken; nobody held it before, so nothing is below the floor.
    let floor = store
        .acquire(PAIR, "alpha", TTL, 5_000)
        .await
        .expect("free pair");
    assert_eq!(floor, 0);

    // Another owner is refused while the lease runs, and told who holds it.
    let err = store
        .acquire(PAIR, "beta", TTL, 9_000)
        .await
        .expect_err("held by alpha");
    assert!(
        matches!(&err, LeaseError::Conflict { owner, remaining_ms, .. } if owner == "alpha" && *remaining_ms > 0),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("worker 9 in datacenter 2 is leased by \"alpha\""),
        "{err}"
    );

    // The holder renews and may take its own pair again.
    store
        .renew(PAIR, "alpha", TTL, 6_000)
        .await
        .expect("alpha renews");
    assert_eq!(
        store
            .acquire(PAIR, "alpha", TTL, 6_500)
            .await
            .expect("own pair"),
        6_000
    );

    // Other pairs are independent.
    let other = Pair {
        datacenter_id: 2,
        worker_id: 10,
    };
    store
        .acquire(other, "beta", TTL, 1)
        .await
        .expect("a different pair is free");

    // After expiry another owner takes over and inherits the reservation as its floor; the
    // old holder's renewal then fails as lost.
    let mut floor = None;
    tests::wait_until("alpha's lease expires for beta", TTL * 10, async || {
        floor = store.acquire(PAIR, "beta", TTL, 7_000).await.ok();
        floor.is_some()
    })
    .await;
    let floor = floor.expect("expired lease");
    assert_eq!(floor, 6_500, "the latest reservation alpha recorded");
    let err = store
        .renew(PAIR, "alpha", TTL, 8_000)
        .await
        .expect_err("beta holds it now");
    assert!(
        matches!(err, LeaseError::Lost { worker_id: 9, .. }),
        "{err}"
    );

    // A release frees the pair at once and records the exact last time issued.
    store.release(PAIR, "beta", 6_900).await.expect("release");
    let floor = store
        .acquire(PAIR, "gamma", TTL, 10_000)
        .await
        .expect("released pair is free");
    assert_eq!(floor, 6_900);

    // A release by a non-holder changes nothing.
    store
        .release(PAIR, "alpha", 1)
        .await
        .expect("no-op release");
    assert!(
        store.acquire(PAIR, "delta", TTL, 1).await.is_err(),
        "gamma still holds it"
    );
}

#[tokio::test]
async fn lease_table_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("leases.db").display());
    suite(
        LeaseStore::open(&url, Duration::from_secs(2))
            .await
            .expect("open sqlite"),
    )
    .await;
}

#[tokio::test]
async fn lease_table_on_mariadb() {
    let db = MariaDb::start().await.expect("start mariadb");
    let url = db
        .create_database("snowflake")
        .await
        .expect("create database");
    suite(
        LeaseStore::open(&url, Duration::from_secs(2))
            .await
            .expect("open mysql"),
    )
    .await;
}

#[tokio::test]
async fn bad_lease_urls_are_named() {
    let err = LeaseStore::open("postgres://x/y", Duration::from_secs(1))
        .await
        .expect_err("scheme");
    assert!(err.to_string().contains("postgres://x/y"), "{err}");
    let err = LeaseStore::open("sqlite://", Duration::from_secs(1))
        .await
        .expect_err("no path");
    assert!(err.to_string().contains("no file path"), "{err}");
    // Nothing listens on port 1: the error comes back within the deadline.
    let started = std::time::Instant::now();
    let err = LeaseStore::open("mysql://root@127.0.0.1:1/x", Duration::from_secs(1)).await;
    assert!(err.is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
}
