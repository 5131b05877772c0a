//! Tweet ids prefetched from a real Snowflake daemon over gRPC.

use std::{collections::HashSet, sync::Arc, time::Duration};

use snowflake::{client::Client, clock::SystemClock, config::Config, id::IdParts, server};
use tbird::ids::{IdSource, IdsError, PrefetchSettings};
use tokio_util::sync::CancellationToken;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetched_ids_are_unique_fresh_and_fail_cleanly_without_snowflake() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let daemon_stop = CancellationToken::new();
    let config = Config {
        worker_id: Some(4),
        metrics_listen: None,
        ..Config::default()
    };
    let daemon = tokio::spawn(server::run(
        listener,
        config,
        Arc::new(SystemClock::default()),
        daemon_stop.clone(),
    ));

    let client = Client::connect(&addr, "tbird", Duration::from_secs(2))
        .await
        .expect("connect");
    let settings = PrefetchSettings {
        batch: 100,
        buffer: 200,
        max_age: Duration::from_millis(100),
        wait: Duration::from_millis(500),
    };
    let shutdown = CancellationToken::new();
    let ids = IdSource::remote(client, settings, shutdown.clone());

    // Many callers at once get distinct ids, all issued as worker 4.
    let takers: Vec<_> = (0..8)
        .map(|_| {
            let ids = ids.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..250 {
                    got.push(ids.next_id().await.expect("id"));
                }
                got
            })
        })
        .collect();
    let mut all = HashSet::new();
    for taker in takers {
        for id in taker.await.expect("taker") {
            assert!(all.insert(id), "id {id} handed out twice");
            assert_eq!(IdParts::decompose(id).expect("valid").worker_id, 4);
        }
    }
    assert_eq!(all.len(), 2_000);

    // After a quiet spell the buffered ids are stale; the next one handed out is fresh: issued
    // after the spell, not taken from the buffer filled before it. (Judged against the
    // spell's end, so a slow machine cannot make a fresh id look stale.)
    tokio::time::sleep(Duration::from_millis(400)).await;
    let spell_ended = now_ms();
    let id = ids.next_id().await.expect("fresh id");
    let issued = IdParts::decompose(id).expect("valid").timestamp_ms;
    assert!(
        issued + 100 >= spell_ended,
        "handed out an id issued {} ms before the quiet spell ended",
        spell_ended.saturating_sub(issued)
    );

    // Without the daemon, callers get a clear error within the wait, once the buffer is stale.
    daemon_stop.cancel();
    daemon
        .await
        .expect("daemon task")
        .expect("daemon stopped cleanly");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let err = ids.next_id().await.expect_err("no daemon");
    assert!(matches!(err, IdsError::Timeout(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    shutdown.cancel();
}
