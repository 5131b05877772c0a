//! The MariaDB harness itself: instances start concurrently, fault hooks do what they say, and
//! nothing is left behind.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use tests::MariaDb;

fn process_alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_start_concurrently_obey_fault_hooks_and_leave_nothing_behind() {
    let mut servers = MariaDb::start_many(2).await.expect("start two servers");
    assert_ne!(servers[0].port(), servers[1].port());
    assert_ne!(servers[0].port(), 3306, "never the machine's own server");
    let (pid, dir) = (
        servers[0].pid().expect("running"),
        servers[0].dir().to_owned(),
    );

    let db = &mut servers[0];
    db.create_database("h").await.expect("create database");
    let mut conn = db.connect("h").await.expect("connect");
    conn.query_drop("CREATE TABLE t (k INT PRIMARY KEY) ENGINE=InnoDB; INSERT INTO t VALUES (1)")
        .await
        .expect("write");
    drop(conn);

    // Paused: the server accepts nothing until resumed.
    db.pause();
    let frozen = tokio::time::timeout(Duration::from_secs(2), db.connect("h")).await;
    assert!(
        frozen.is_err() || frozen.is_ok_and(|r| r.is_err()),
        "a paused server answered"
    );
    db.resume();
    db.connect("h").await.expect("answers after resume");

    // Killed: gone at once; restarted on the same port and datadir, the data is there.
    let port = db.port();
    db.kill();
    assert!(!db.is_running());
    assert!(db.connect("h").await.is_err(), "a killed server answered");
    db.restart().await.expect("restart");
    assert_eq!(db.port(), port);
    let mut conn = db.connect("h").await.expect("connect after restart");
    let rows: Vec<i32> = conn.query("SELECT k FROM t").await.expect("read");
    assert_eq!(rows, [1], "committed rows survive SIGKILL");
    drop(conn);

    // Dropped: the process is reaped and its directory removed.
    let pid_after_restart = servers[0].pid().expect("running");
    assert_ne!(pid, pid_after_restart);
    drop(servers);
    assert!(!process_alive(pid_after_restart), "server process leaked");
    assert!(
        !dir.exists(),
        "instance directory leaked: {}",
        dir.display()
    );
}
