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
