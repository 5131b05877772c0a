//! The lease table's behaviour, one suite run on SQLite and on MariaDB, one test per case.

use std::time::Duration;

use snowflake::lease::{LeaseError, LeaseStore, store::Pair};

const TTL: Duration = Duration::from_millis(800);
const PAIR: Pair = Pair {
    datacenter_id: 2,
    worker_id: 9,
};

tests::backend_suite!(
    a_free_pair_is_taken_and_another_owner_is_told_who_holds_it,
    the_holder_renews_and_takes_its_own_pair_again,
    other_pairs_are_independent,
    after_expiry_another_owner_inherits_the_floor_and_the_old_holder_has_lost,
    a_release_frees_the_pair_and_records_the_last_time_issued,
    a_release_by_a_non_holder_changes_nothing,
);

async fn open(url: &str) -> LeaseStore {
    LeaseStore::open(url, Duration::from_secs(2))
        .await
        .expect("open the lease store")
}

/// Returns a store in which "alpha" holds [`PAIR`], having reserved up to 6,000.
async fn held_by_alpha(url: &str) -> LeaseStore {
    let store = open(url).await;
    store
        .acquire(PAIR, "alpha", TTL, 5_000)
        .await
        .expect("free pair");
    store
        .renew(PAIR, "alpha", TTL, 6_000)
        .await
        .expect("alpha renews");
    store
}

async fn a_free_pair_is_taken_and_another_owner_is_told_who_holds_it(url: &str) {
    let store = open(url).await;
    // Nobody held it before, so nothing is below the floor.
    let floor = store
        .acquire(PAIR, "alpha", TTL, 5_000)
        .await
        .expect("free pair");
    assert_eq!(floor, 0);

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
}

async fn the_holder_renews_and_takes_its_own_pair_again(url: &str) {
    let store = held_by_alpha(url).await;
    assert_eq!(
        store
            .acquire(PAIR, "alpha", TTL, 6_500)
            .await
            .expect("own pair"),
        6_000
    );
}

async fn other_pairs_are_independent(url: &str) {
    let store = held_by_alpha(url).await;
    let other = Pair {
        datacenter_id: 2,
        worker_id: 10,
    };
    store
        .acquire(other, "beta", TTL, 1)
        .await
        .expect("a different pair is free");
}

async fn after_expiry_another_owner_inherits_the_floor_and_the_old_holder_has_lost(url: &str) {
    let store = held_by_alpha(url).await;
    let mut floor = None;
    tests::wait_until("alpha's lease expires for beta", TTL * 10, async || {
        floor = store.acquire(PAIR, "beta", TTL, 7_000).await.ok();
        floor.is_some()
    })
    .await;
    let floor = floor.expect("expired lease");
    assert_eq!(floor, 6_000, "the latest reservation alpha recorded");
    let err = store
        .renew(PAIR, "alpha", TTL, 8_000)
        .await
        .expect_err("beta holds it now");
    assert!(
        matches!(err, LeaseError::Lost { worker_id: 9, .. }),
        "{err}"
    );
}

async fn a_release_frees_the_pair_and_records_the_last_time_issued(url: &str) {
    let store = held_by_alpha(url).await;
    store.release(PAIR, "alpha", 6_900).await.expect("release");
    let floor = store
        .acquire(PAIR, "gamma", TTL, 10_000)
        .await
        .expect("released pair is free");
    assert_eq!(floor, 6_900);
}

async fn a_release_by_a_non_holder_changes_nothing(url: &str) {
    let store = held_by_alpha(url).await;
    store.release(PAIR, "beta", 1).await.expect("no-op release");
    assert!(
        store.acquire(PAIR, "delta", TTL, 1).await.is_err(),
        "alpha still holds it"
    );
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
