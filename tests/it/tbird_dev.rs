//! `tbird dev` as a user runs it: the real binary, a fresh data dir, the client commands, and a
//! restart that keeps the data.

use std::{
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn tbird(args: &[&str]) -> Output {
    Command::new(tests::binary::path("tbird", "tbird"))
        .args(args)
        .output()
        .expect("run tbird")
}

struct Dev(Child);

impl Dev {
    fn start(dir: &std::path::Path, port: u16, admin: u16) -> Self {
        let child = Command::new(tests::binary::path("tbird", "tbird"))
            .args([
                "dev",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin}"),
            ])
            .arg("--data-dir")
            .arg(dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn tbird dev");
        let addr = format!("127.0.0.1:{port}");
        let started = Instant::now();
        while tbird(&["timeline", "--addr", &addr, "--user", "1"])
            .status
            .code()
            != Some(0)
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "tbird dev did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self(child)
    }

    fn stop(mut self) {
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        assert!(
            self.0.wait().expect("wait").success(),
            "tbird dev exits 0 on SIGTERM"
        );
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn tbird_dev_serves_tweets_and_keeps_them_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, admin) = (free_port(), free_port());
    let addr = format!("127.0.0.1:{port}");
    let dev = Dev::start(dir.path(), port, admin);

    let posted = tbird(&["post", "--addr", &addr, "--user", "42", "hello from dev"]);
    assert!(
        posted.status.success(),
        "{}",
        String::from_utf8_lossy(&posted.stderr)
    );
    let id = String::from_utf8(posted.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    assert!(id.parse::<u64>().is_ok(), "post prints the id: {id:?}");

    let bad = tbird(&["post", "--addr", &addr, "--user", "42", ""]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("text is empty"));

    dev.stop();
    let dev = Dev::start(dir.path(), port, admin);
    let got = tbird(&["get", "--addr", &addr, "--json", &id]);
    let text = String::from_utf8_lossy(&got.stdout);
    assert!(
        got.status.success() && text.contains("hello from dev"),
        "{text}"
    );
    let timeline = tbird(&["timeline", "--addr", &addr, "--user", "42"]);
    assert!(String::from_utf8_lossy(&timeline.stdout).contains(&id));
    dev.stop();
}

/// Runs a command line `tbird dev` printed, through the shell, as a user pastes it.
fn shell(line: &str) -> Output {
    Command::new("sh")
        .args(["-c", line])
        .output()
        .expect("run sh")
}

#[test]
fn tbird_dev_prints_commands_that_run_at_once_and_json_pages() {
    // gizzmo beside tbird, as a workspace build leaves it: dev names it by its path.
    tests::binary::path("gizzmo", "gizzmo");
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, admin) = (free_port(), free_port());
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(tests::binary::path("tbird", "tbird"))
        .args(["dev", "--listen", &addr])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn tbird dev");
    let stdout = child.stdout.take().expect("stdout");
    let _dev = Dev(child);
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let mut hints = Vec::new();
    while hints.len() < 3 {
        let line = lines.next().expect("dev prints its hints").expect("read");
        if let Some(hint) = line.strip_prefix("try:").or_else(|| {
            (!hints.is_empty())
                .then_some(line.as_str())
                .filter(|l| l.starts_with("  "))
        }) {
            hints.push(hint.trim().to_owned());
        }
    }
    assert!(
        hints.iter().all(|h| !h.starts_with("cargo ")),
        "commands that need no build: {hints:?}"
    );
    let (post, timeline, gizzmo) = (&hints[0], &hints[1], &hints[2]);
    let exe = tests::binary::path("tbird", "tbird");
    assert!(post.starts_with(&exe.display().to_string()), "{post}");

    let first = shell(post);
    assert!(first.status.success(), "{first:?}");
    let second = shell(post);
    let second_id = String::from_utf8_lossy(&second.stdout).trim().to_owned();
    assert!(second_id.parse::<u64>().is_ok(), "{second:?}");
    assert!(shell(timeline).status.success());
    let tree = shell(gizzmo);
    assert!(
        tree.status.success() && String::from_utf8_lossy(&tree.stdout).contains("t1_"),
        "{tree:?}"
    );

    // JSON pages: one tweet a page, the cursor as a string, ids as strings.
    let page = |max_id: Option<&str>| {
        let mut args = vec!["timeline", "--addr", &addr, "--user", "1", "--limit", "1"];
        args.push("--json");
        if let Some(max_id) = max_id {
            args.extend(["--max-id", max_id]);
        }
        let out = tbird(&args);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("one JSON object")
    };
    let newest = page(None);
    assert_eq!(newest["tweets"][0]["id"], second_id.as_str(), "{newest}");
    assert_eq!(newest["tweets"][0]["user_id"], "1", "{newest}");
    let next = newest["next_max_id"]
        .as_str()
        .expect("a cursor, as a string");
    let older = page(Some(next));
    let first_id = older["tweets"][0]["id"].as_str().expect("id as a string");
    assert!(first_id.parse::<u64>().expect("decimal") < second_id.parse::<u64>().expect("id"));

    let got = tbird(&["get", "--addr", &addr, "--json", first_id, "12345"]);
    assert_eq!(got.status.code(), Some(1), "a missing id fails the command");
    let got: serde_json::Value = serde_json::from_slice(&got.stdout).expect("JSON");
    assert_eq!(got["tweets"][0]["id"], first_id, "{got}");
    assert_eq!(got["missing"], serde_json::json!(["12345"]), "{got}");
}
