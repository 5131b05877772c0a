//! The README's grpcurl examples, run the way grpcurl runs them against real servers (a
//! Snowflake daemon and `tbird dev`): descriptors fetched by reflection, requests built from
//! the README's JSON, answers printed as JSON. A README example that no longer works fails
//! here.

use std::time::Duration;

use tests::{
    grpcurl,
    stack::{Daemon, free_port},
    wait_until,
};

const LIMIT: Duration = Duration::from_secs(40);

/// One `grpcurl -plaintext [-d JSON] ADDR SERVICE/METHOD` line of the README.
#[derive(Debug)]
struct Example {
    json: String,
    port: u16,
    method: String,
}

/// Returns the grpcurl examples of the README, in order.
fn readme_examples() -> Vec<Example> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("read README.md");
    readme
        .lines()
        .filter_map(|line| line.trim().strip_prefix("grpcurl -plaintext "))
        .map(|rest| {
            let rest = rest.split(" #").next().unwrap_or(rest).trim();
            let (json, rest) = match rest.strip_prefix("-d '") {
                Some(data) => data.split_once("' ").expect("-d 'JSON' ADDR METHOD"),
                None => ("{}", rest),
            };
            let mut words = rest.split_whitespace();
            let addr = words.next().expect("an address");
            let method = words.next().expect("a method").to_owned();
            let port = addr
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("HOST:PORT");
            Example {
                json: json.to_owned(),
                port,
                method,
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_grpcurl_examples_work_by_reflection() {
    let examples = readme_examples();
    for service in [
        "tbird.v1.Tweets",
        "gizzard.v1.ShardManager",
        "snowflake.v1.Snowflake",
    ] {
        assert!(
            examples.iter().any(|e| e.method.starts_with(service)),
            "README shows {service}: {examples:?}"
        );
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let (snowflake, tweets, admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let _snowflake = Daemon::spawn(
        "snowflake",
        "snowflake",
        &[
            "serve",
            "--worker-id",
            "2",
            "--listen",
            &snowflake,
            "--no-metrics",
        ],
    );
    let data = dir.path().to_str().expect("utf-8 path");
    let _dev = Daemon::spawn(
        "tbird",
        "tbird",
        &[
            "dev",
            "--listen",
            &tweets,
            "--admin-listen",
            &admin,
            "--data-dir",
            data,
        ],
    );
    for addr in [&snowflake, &tweets, &admin] {
        wait_until(&format!("{addr} serves"), LIMIT, || async {
            grpcurl::connect(addr).await.is_ok()
        })
        .await;
    }

    let mut posted: Option<String> = None;
    for example in examples {
        let addr = match example.port {
            7609 => &snowflake,
            7915 => &tweets,
            7920 => &admin,
            port => panic!("no server for port {port} in {example:?}"),
        };
        let json = match &posted {
            Some(id) => example.json.replace("\"ID\"", &format!("\"{id}\"")),
            None => example.json.clone(),
        };
        let channel = grpcurl::connect(addr).await.expect("connect");
        let answer = grpcurl::call(&channel, &example.method, &json)
            .await
            .unwrap_or_else(|e| panic!("{example:?}: {e:?}"));
        // 64-bit integers come back as strings, as grpcurl prints them.
        match example.method.as_str() {
            "tbird.v1.Tweets/PostTweet" => {
                assert_eq!(answer["text"], "hello", "{answer}");
                let id = answer["id"].as_str().expect("id as a string");
                assert!(id.parse::<u64>().is_ok_and(|id| id > 0), "{answer}");
                posted = Some(id.to_owned());
            }
            "tbird.v1.Tweets/GetTweet" => assert_eq!(answer["text"], "hello", "{answer}"),
            "tbird.v1.Tweets/UserTweets" => {
                assert_eq!(answer["tweets"][0]["text"], "hello", "{answer}");
            }
            "snowflake.v1.Snowflake/GetIds" => {
                let ids = answer["ids"].as_array().expect("ids");
                assert_eq!(ids.len(), 3, "{answer}");
                assert!(
                    ids.iter()
                        .all(|id| id.as_str().is_some_and(|id| id.parse::<u64>().is_ok()))
                );
            }
            "gizzard.v1.ShardManager/Lookup" => {
                assert!(answer["hash"].is_string(), "{answer}");
            }
            _ => assert!(answer.is_object(), "{answer}"),
        }
    }
    assert!(posted.is_some(), "the README posts a tweet");
}
