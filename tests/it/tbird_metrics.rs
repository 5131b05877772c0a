//! The metrics an operator scrapes from `/metrics`: `tbird serve` on MariaDB counts and times
//! calls by method and status code, counts a dead replica's failures by shard, shows the retry
//! jobs queued for it and counts them running; `tbird dev` serves the same when asked to.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use proto::tbird::v1::{GetTweetRequest, PostTweetRequest, tweets_client::TweetsClient};
use tests::{
    stack::{Metrics, TbirdStack, free_port, scrape},
    wait_until,
};
use tonic::{Code, transport::Channel};

const LIMIT: Duration = Duration::from_secs(40);

async fn connect(addr: &str) -> TweetsClient<Channel> {
    TweetsClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the tweet service")
}

async fn post(client: &mut TweetsClient<Channel>, text: &str) -> Result<u64, Code> {
    client
        .post_tweet(PostTweetRequest {
            user_id: 7,
            text: text.to_owned(),
            in_reply_to: None,
        })
        .await
        .map(|r| r.into_inner().id)
        .map_err(|s| s.code())
}

fn requests(m: &Metrics, method: &str, code: &str) -> Option<f64> {
    m.get(
        "tbird_requests_total",
        &[("method", method), ("code", code)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tbird_metrics_count_calls_shard_failures_and_retries() {
    let mut stack = TbirdStack::start(2, 2, true).await;
    let mut client = connect(&stack.tweets_addr).await;

    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            post(&mut client, &format!("metered {n}"))
                .await
                .expect("post"),
        );
    }
    assert_eq!(post(&mut client, "").await, Err(Code::InvalidArgument));
    client
        .get_tweet(GetTweetRequest { id: ids[0] })
        .await
        .expect("get");
    let missing = client.get_tweet(GetTweetRequest { id: 12_345 }).await;
    assert_eq!(missing.map(drop).map_err(|s| s.code()), Err(Code::NotFound));

    let m = stack.scrape().await;
    assert_eq!(requests(&m, "PostTweet", "OK"), Some(3.0), "{m:#?}");
    assert_eq!(requests(&m, "PostTweet", "InvalidArgument"), Some(1.0));
    assert_eq!(requests(&m, "GetTweet", "OK"), Some(1.0));
    assert_eq!(requests(&m, "GetTweet", "NotFound"), Some(1.0));
    assert_eq!(requests(&m, "UserTweets", "OK"), None, "no call, no series");
    let latency = "tbird_request_duration_seconds";
    assert_eq!(
        m.get(&format!("{latency}_count"), &[("method", "PostTweet")]),
        Some(4.0),
        "every call is timed, refused ones too"
    );
    assert_eq!(
        m.get(
            &format!("{latency}_bucket"),
            &[("method", "PostTweet"), ("le", "+Inf")]
        ),
        Some(4.0)
    );
    assert!(
        m.get(&format!("{latency}_sum"), &[("method", "GetTweet")])
            .is_some_and(|s| s > 0.0)
    );
    assert_eq!(
        m.sum("gizzard_leaf_failures_total", &[]),
        0.0,
        "no replica failed yet"
    );
    // The queue gauge is published from the start, every priority and state.
    for priority in ["high", "low", "copy"] {
        for state in ["ready", "bad"] {
            assert_eq!(
                m.get(
                    "gizzard_queue_jobs",
                    &[("priority", priority), ("state", state)]
                ),
                Some(0.0),
                "{priority}/{state}"
            );
        }
    }

    // Replica b dies: posts still succeed, its leaves count failures, retry jobs wait.
    stack.hosts[1].kill();
    for n in 0..10 {
        post(&mut client, &format!("while b is down {n}"))
            .await
            .expect("posts succeed on one replica");
    }
    let queued = |m: &Metrics| {
        m.get(
            "gizzard_queue_jobs",
            &[("priority", "high"), ("state", "ready")],
        )
        .unwrap_or(0.0)
    };
    wait_until("the queue gauge shows retries", LIMIT, || async {
        queued(&stack.scrape().await) > 0.0
    })
    .await;
    let m = stack.scrape().await;
    let failures: Vec<(String, f64)> = m
        .matching("gizzard_leaf_failures_total", &[])
        .filter(|(_, v)| *v > 0.0)
        .map(|(k, v)| (k.clone(), v))
        .collect();
    assert!(
        failures
            .iter()
            .all(|(series, _)| series.contains("shard=\"b/")),
        "only b's leaves failed: {failures:?}"
    );
    assert!(
        failures.iter().map(|(_, v)| v).sum::<f64>() > 0.0,
        "b's failures are counted: {failures:?}"
    );

    // Replica b is back: the retries run, succeed, and the queue empties.
    stack.hosts[1].restart().await.expect("restart b");
    stack.drain(LIMIT).await;
    let job = [("job_type", "tbird.write")];
    wait_until("the gauge shows the empty queue", LIMIT, || async {
        queued(&stack.scrape().await) == 0.0
    })
    .await;
    let m = stack.scrape().await;
    let run = m.sum("gizzard_jobs_run_total", &job);
    let succeeded = m.sum("gizzard_jobs_succeeded_total", &job);
    let failed = m.sum("gizzard_jobs_failed_total", &job);
    assert!(succeeded >= 1.0, "retries succeeded: {m:#?}");
    assert_eq!(run, succeeded + failed, "every run has one outcome");
    assert_eq!(m.sum("gizzard_jobs_parked_total", &job), 0.0);
}

struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tbird_metrics_are_served_by_dev_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tweets, admin, metrics) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let _dev = Dev(Command::new(tests::binary::path("tbird", "tbird"))
        .args(["dev", "--listen", &tweets, "--admin-listen", &admin])
        .args(["--metrics-listen", &metrics])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn tbird dev"));
    wait_until("tbird dev serves tweets", LIMIT, || async {
        TweetsClient::connect(format!("http://{tweets}"))
            .await
            .is_ok()
    })
    .await;
    let mut client = connect(&tweets).await;
    post(&mut client, "hello, metrics").await.expect("post");
    let m = scrape(&metrics).await.expect("scrape");
    assert_eq!(requests(&m, "PostTweet", "OK"), Some(1.0), "{m:#?}");
    wait_until("the queue gauge", LIMIT, || async {
        scrape(&metrics).await.is_ok_and(|m| {
            m.get(
                "gizzard_queue_jobs",
                &[("priority", "high"), ("state", "ready")],
            ) == Some(0.0)
        })
    })
    .await;
}
