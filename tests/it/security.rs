//! Hostile and careless callers (issue 13): the admin service closed by default and checked
//! before anything is decoded, no password or token in any response, error or `--help`,
//! refusals of malformed requests with INVALID_ARGUMENT, and TLS to MariaDB.

use std::{process::Output, time::Duration};

use proto::{
    gizzard::v1::{self as gpb, shard_manager_client::ShardManagerClient},
    tbird::v1::{UserTweetsRequest, tweets_client::TweetsClient},
};
use tests::{
    MariaDb,
    mariadb::TestCa,
    stack::{ADMIN_TOKEN, TbirdStack, free_port, ok},
};
use tonic::{Code, Request, transport::Channel};

/// Runs a workspace binary with only `env` (and PATH) in its environment.
fn run_with_env(package: &str, name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    std::process::Command::new(tests::binary::path(package, name))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("run binary")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn help_and_errors_print_no_secret() {
    let secret_env = [
        ("TBIRD_ADMIN_TOKEN", "tok-SECRET-1"),
        ("TBIRD_READ_ONLY_TOKEN", "ro-SECRET-2"),
        ("TBIRD_NAMESERVER_URL", "mysql://u:pw-SECRET-3@db:3306/x"),
        ("SNOWFLAKE_LEASE_URL", "mysql://u:pw-SECRET-4@db:3306/x"),
        ("GIZZMO_TOKEN", "tok-SECRET-5"),
    ];
    for (package, name, args, variable) in [
        (
            "tbird",
            "tbird",
            &["serve", "--help"][..],
            "TBIRD_ADMIN_TOKEN",
        ),
        (
            "tbird",
            "tbird",
            &["bench", "--help"],
            "TBIRD_NAMESERVER_URL",
        ),
        (
            "snowflake",
            "snowflake",
            &["serve", "--help"],
            "SNOWFLAKE_LEASE_URL",
        ),
        ("gizzmo", "gizzmo", &["--help"], "GIZZMO_TOKEN"),
    ] {
        let output = run_with_env(package, name, args, &secret_env);
        let help = text(&output);
        assert!(output.status.success(), "{name} {args:?}: {help}");
        // The variable is documented; its value is not shown.
        assert!(help.contains(variable), "{name} {args:?}: {help}");
        assert!(
            !help.contains("SECRET"),
            "{name} {args:?} prints a secret:\n{help}"
        );
    }

    // Mistyped database urls are refused without echoing their password.
    let tbird = run_with_env(
        "tbird",
        "tbird",
        &[
            "serve",
            "--nameserver-url",
            "mysql://u:pw-SECRET-6@127.0.0.1:1",
        ],
        &[],
    );
    let err = text(&tbird);
    assert!(!tbird.status.success(), "{err}");
    assert!(err.contains("nameserver-url: no database name"), "{err}");
    assert!(!err.contains("SECRET"), "{err}");
    let snowflake = run_with_env(
        "snowflake",
        "snowflake",
        &[
            "serve",
            "--no-metrics",
            "--lease-url",
            "mysql://u:pw-SECRET-7@127.0.0.1:1/x?pool_max=z",
        ],
        &[],
    );
    let err = text(&snowflake);
    assert!(!snowflake.status.success(), "{err}");
    assert!(
        err.contains("lease-url") && err.contains("pool_max"),
        "{err}"
    );
    assert!(!err.contains("SECRET"), "{err}");
}

#[test]
fn tbird_serve_refuses_an_open_admin_service_off_loopback() {
    let admin = format!("0.0.0.0:{}", free_port());
    let output = run_with_env(
        "tbird",
        "tbird",
        &[
            "serve",
            "--nameserver-url",
            "mysql://u@127.0.0.1:1/x",
            "--admin-listen",
            &admin,
            "--metrics-listen",
            "off",
        ],
        &[],
    );
    let err = text(&output);
    assert!(!output.status.success(), "{err}");
    assert!(
        err.contains("reachable from other machines, with no token")
            && err.contains("--admin-token-file")
            && err.contains("127.0.0.1:7920"),
        "{err}"
    );
    // `tbird dev` has no token: loopback only.
    let output = run_with_env("tbird", "tbird", &["dev", "--admin-listen", &admin], &[]);
    let err = text(&output);
    assert!(
        !output.status.success() && err.contains("no token"),
        "{err}"
    );
}

/// Returns the peak resident set of process `pid`, in KiB (`VmHWM` in /proc).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

async fn admin_client(addr: &str) -> ShardManagerClient<Channel> {
    ShardManagerClient::connect(format!("http://{addr}"))
        .await
        .expect("connect admin")
        .max_decoding_message_size(64 << 20)
}

fn with_token<T>(message: T, value: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", value.parse().expect("ascii"));
    request
}

fn set_host(name: &str, url: String) -> gpb::ApplyRequest {
    gpb::ApplyRequest {
        changes: vec![gpb::Change {
            change: Some(gpb::change::Change::SetHost(gpb::Host {
                name: name.into(),
                url,
                read_weight: 1,
                write_weight: 1,
            })),
            force: false,
        }],
    }
}

/// Returns the error output of a gizzmo run that must fail.
fn refused(output: Output) -> String {
    let err = text(&output);
    assert!(!output.status.success(), "should fail: {err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_service_is_closed_and_hands_out_no_password() {
    let dir = tempfile::tempdir().expect("temp dir");
    let read_file = dir.path().join("read-only-token");
    std::fs::write(&read_file, "stack-reader\n").expect("write token");
    let read_file = read_file.display().to_string();
    let stack =
        TbirdStack::start_serving(2, 2, false, &[], &["--read-only-token-file", &read_file]).await;
    let mut admin = admin_client(&stack.admin_addr).await;
    let bearer = format!("bearer {ADMIN_TOKEN}");

    // Reads need the token too, and the dump it gets has no password.
    let status = admin
        .dump(gpb::DumpRequest {})
        .await
        .expect_err("a dump without a token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    ok(stack.gizzmo(&[
        "add-host",
        "p",
        "mysql://tbird:hunter2-SECRET@127.0.0.1:1/tbird",
    ]));
    let dump = admin
        .dump(with_token(gpb::DumpRequest {}, &bearer))
        .await
        .expect("a dump with the token (scheme in lower case)")
        .into_inner();
    let p = dump.hosts.iter().find(|h| h.name == "p").expect("host p");
    assert_eq!(p.url, "mysql://tbird:***@127.0.0.1:1/tbird");
    assert!(!format!("{dump:?}").contains("SECRET"), "{dump:?}");
    assert!(!ok(stack.gizzmo(&["--json", "hosts"])).contains("SECRET"));

    // The read-only token reads, and changes nothing.
    let reader = [
        "--addr",
        stack.admin_addr.as_str(),
        "--token-file",
        &read_file,
    ];
    let gizzmo_as_reader =
        |args: &[&str]| tests::stack::run("gizzmo", "gizzmo", &[&reader[..], args].concat());
    for read in [
        &["hosts"][..],
        &["tree", "1"],
        &["jobs", "list"],
        &["migrations"],
    ] {
        ok(gizzmo_as_reader(read));
    }
    let err = refused(gizzmo_as_reader(&[
        "add-host",
        "q",
        "mysql://u@127.0.0.1:1/q",
    ]));
    assert!(err.contains("read-only token cannot call Apply"), "{err}");

    // A 60 MiB Apply without a token is refused from its headers: the server never buffers
    // or decodes it, so its peak memory barely moves.
    let pid = stack.tbird.pid().expect("tbird runs");
    let huge = || set_host("big", format!("mysql://{}", "a".repeat(60 << 20)));
    let before = peak_rss_kib(pid);
    let status = admin.apply(huge()).await.expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated, "{}", status.message());
    let unauthenticated = peak_rss_kib(pid) - before;
    assert!(
        unauthenticated < 16 << 10,
        "peak memory grew {unauthenticated} KiB for a refused request"
    );
    // The same request with the token is decoded (the measure can see it), then refused for
    // its url, which the error does not echo.
    let status = admin
        .apply(with_token(huge(), &bearer))
        .await
        .expect_err("no database name");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(status.message().len() < 200, "{}", status.message());
    let decoded = peak_rss_kib(pid) - before;
    assert!(
        decoded > 60 << 10,
        "peak memory grew only {decoded} KiB decoding 60 MiB"
    );

    // Validation gaps, each refused with INVALID_ARGUMENT and a message naming the rule.
    let err = refused(stack.gizzmo(&["add-host", "z", "mysql://x"]));
    assert!(
        err.contains("no database name") && err.contains("INVALID_ARGUMENT"),
        "{err}"
    );
    ok(stack.gizzmo(&["create-shard", "a/odd_0000", "TimelineShard"]));
    let err = refused(stack.gizzmo(&["link", "localhost/t1_0000", "a/odd_0000"]));
    assert!(
        err.contains("table 1 would hold leaves of two classes")
            && err.contains("INVALID_ARGUMENT"),
        "{err}"
    );
    for verb in ["copy", "diff"] {
        let err = refused(stack.gizzmo(&[verb, "a/t1_0000", "a/t2_0000", "--detach"]));
        assert!(
            err.contains("need two leaves of one class") && err.contains("INVALID_ARGUMENT"),
            "{verb}: {err}"
        );
    }
    let negative = gpb::ApplyRequest {
        changes: vec![gpb::Change {
            change: Some(gpb::change::Change::SetForwarding(gpb::Forwarding {
                table_id: -1,
                base_id: 0,
                shard_id: "localhost/t1_0000".into(),
            })),
            force: false,
        }],
    };
    let status = admin
        .apply(with_token(negative, &bearer))
        .await
        .expect_err("negative table id");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("table id -1 is negative"),
        "{}",
        status.message()
    );
    // Repointing a host that holds shards needs --force.
    let moved = format!("{}?pool_max=32", stack.hosts[0].url(tests::stack::SHARD_DB));
    let err = refused(stack.gizzmo(&["add-host", "a", &moved]));
    assert!(
        err.contains("pass --force") && err.contains("INVALID_ARGUMENT"),
        "{err}"
    );
    ok(stack.gizzmo(&["add-host", "a", &moved, "--force"]));

    let mut tweets = TweetsClient::connect(format!("http://{}", stack.tweets_addr))
        .await
        .expect("connect tweets");
    let status = tweets
        .user_tweets(UserTweetsRequest {
            user_id: 1,
            max_id: Some(1 << 63),
            limit: 10,
        })
        .await
        .expect_err("max_id past 2^63");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("max_id"), "{}", status.message());
    // The server still serves, on the repointed host.
    let id = ok(tests::stack::run(
        "tbird",
        "tbird",
        &[
            "post",
            "--addr",
            &stack.tweets_addr,
            "--user",
            "1",
            "still here",
        ],
    ));
    assert!(id.trim().parse::<u64>().is_ok(), "{id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_over_tls_verifies_the_server_and_refuses_plaintext() {
    let ca = TestCa::new("tbird test ca");
    let server = MariaDb::start_tls(&ca).await.expect("mariadb with tls");
    let url = server.create_database("secure").await.expect("database");
    assert!(url.contains("ssl-mode=verify-identity"), "{url}");
    let timeout = Duration::from_secs(10);

    // Verified: the certificate is signed by the test's CA and names 127.0.0.1.
    let db = db::Database::open(&url, timeout)
        .await
        .expect("tls connection");
    let cipher: Option<(String, String)> = db
        .mysql(|mut conn| async move {
            use mysql_async::prelude::Queryable;
            conn.query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
                .await
        })
        .await
        .expect("query over tls");
    let cipher = cipher.expect("a status row").1;
    assert!(!cipher.is_empty(), "the session is encrypted");
    // Snowflake's lease store takes the same url.
    snowflake::lease::LeaseStore::open(&url, timeout)
        .await
        .expect("lease store over tls");

    // Plaintext is refused by the server.
    let err = db::Database::open(&server.plain_url("secure"), timeout)
        .await
        .expect_err("plaintext");
    // MariaDB answers a plaintext login with "access denied" (1045) or its secure-transport
    // error, depending on the version.
    let err = err.to_string().to_lowercase();
    assert!(
        err.contains("secure") || err.contains("access denied"),
        "{err}"
    );

    // A client trusting another CA refuses the server.
    let other = TestCa::new("another ca");
    let other_pem = other.write_cert(&server.dir().join("other-ca.pem"));
    let untrusted = format!(
        "{}?ssl-mode=verify-ca&ssl-ca={}",
        server.plain_url("secure"),
        other_pem.display()
    );
    let err = db::Database::open(&untrusted, timeout)
        .await
        .expect_err("a certificate from an unknown CA");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}
