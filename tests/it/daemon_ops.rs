//! What the daemons show their operator, checked on the real binaries: logs written to a file
//! are plain text (no ANSI colour codes) or JSON lines, an invalid `RUST_LOG` directive is
//! reported by name, and `/metrics` carries `# HELP` for every series (parsed with a
//! Prometheus text parser) and answers no other path.

use std::{path::Path, process::Command, time::Duration};

use tests::{
    stack::{Daemon, free_port, scrape_text},
    wait_until,
};

const LIMIT: Duration = Duration::from_secs(40);

async fn log_holds(log: &Path, text: &str) {
    wait_until(&format!("the log holds {text:?}"), LIMIT, || async {
        std::fs::read_to_string(log).is_ok_and(|l| l.contains(text))
    })
    .await;
}

/// Checks a scrape as Prometheus parses it: every series has `# HELP`; returns the names.
fn every_series_has_help(text: &str) -> Vec<String> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let mut names: Vec<String> = scrape.samples.iter().map(|s| s.metric.clone()).collect();
    names.sort();
    names.dedup();
    // A histogram's `_sum` and `_count` series belong to its family, which the HELP names.
    let family = |name: &str| {
        ["_sum", "_count", "_bucket"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| scrape.docs.contains_key(*base))
            .unwrap_or(name)
            .to_owned()
    };
    let undescribed: Vec<&String> = names
        .iter()
        .filter(|name| !scrape.docs.contains_key(&family(name)))
        .collect();
    assert!(
        undescribed.is_empty(),
        "no HELP for {undescribed:?}\n{text}"
    );
    names
}

async fn only_metrics_is_served(addr: &str) {
    for path in ["/", "/health", "/metrics/x"] {
        let (head, _) = daemon::metrics::request(addr, "GET", path)
            .await
            .expect("GET");
        assert!(head.starts_with("HTTP/1.1 404"), "{path}: {head}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snowflake_logs_plain_text_or_json_and_describes_its_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (grpc, metrics) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let text_log = dir.path().join("text.log");
    let args = ["serve", "--worker-id", "3", "--listen", &grpc];
    let daemon = Daemon::spawn_logged(
        "snowflake",
        "snowflake",
        &[&args[..], &["--metrics-listen", &metrics]].concat(),
        "info,snowflake=loud",
        Some(&text_log),
    );
    log_holds(&text_log, "snowflake serving").await;
    let ids = Command::new(tests::binary::path("snowflake", "snowflake"))
        .args(["get", "--addr", &grpc, "--count", "2"])
        .output()
        .expect("snowflake get");
    assert!(ids.status.success(), "{ids:?}");

    let names = every_series_has_help(&scrape_text(&metrics).await.expect("scrape"));
    assert!(
        names.contains(&"snowflake_ids_issued_total".to_owned()),
        "{names:?}"
    );
    only_metrics_is_served(&metrics).await;
    drop(daemon);

    let log = std::fs::read_to_string(&text_log).expect("read the log");
    assert!(!log.contains('\x1b'), "no escape codes in a file:\n{log:?}");
    assert!(log.contains(" INFO "), "grep ' INFO ' finds lines:\n{log}");
    let warning = log
        .lines()
        .find(|l| l.contains(" WARN ") && l.contains("RUST_LOG"))
        .unwrap_or_else(|| panic!("a warning about RUST_LOG:\n{log}"));
    assert!(warning.contains("snowflake=loud"), "{warning}");

    // The same daemon in JSON: every line is an object with a level and a message.
    let json_log = dir.path().join("json.log");
    let _daemon = Daemon::spawn_logged(
        "snowflake",
        "snowflake",
        &[&args[..], &["--no-metrics", "--log-format", "json"]].concat(),
        "info",
        Some(&json_log),
    );
    log_holds(&json_log, "snowflake serving").await;
    let log = std::fs::read_to_string(&json_log).expect("read the log");
    for line in log.lines() {
        let entry: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        assert!(entry["level"].is_string(), "{line}");
        assert!(entry["fields"]["message"].is_string(), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tbird_dev_logs_plain_text_and_describes_its_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tweets, admin, metrics) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let log = dir.path().join("dev.log");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8 path");
    let _dev = Daemon::spawn_logged(
        "tbird",
        "tbird",
        &[
            "dev",
            "--listen",
            &tweets,
            "--admin-listen",
            &admin,
            "--metrics-listen",
            &metrics,
            "--data-dir",
            data,
        ],
        "info",
        Some(&log),
    );
    log_holds(&log, "created the default topology").await;
    let posted = Command::new(tests::binary::path("tbird", "tbird"))
        .args(["post", "--addr", &tweets, "--user", "1", "described"])
        .output()
        .expect("tbird post");
    assert!(posted.status.success(), "{posted:?}");
    // The queue gauge and its timestamp come with the first count.
    wait_until("the queue is counted", LIMIT, || async {
        scrape_text(&metrics)
            .await
            .is_ok_and(|t| t.contains("gizzard_queue_jobs_counted_timestamp_seconds"))
    })
    .await;
    let names = every_series_has_help(&scrape_text(&metrics).await.expect("scrape"));
    for name in [
        "tbird_requests_total",
        "gizzard_queue_jobs",
        "gizzard_routing_lease_valid",
    ] {
        assert!(names.contains(&name.to_owned()), "{name} in {names:?}");
    }
    only_metrics_is_served(&metrics).await;

    let text = std::fs::read_to_string(&log).expect("read the log");
    assert!(
        !text.contains('\x1b'),
        "no escape codes in a file:\n{text:?}"
    );
    assert!(text.contains(" INFO "), "{text}");
}
