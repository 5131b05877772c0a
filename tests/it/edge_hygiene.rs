//! Connection hygiene against a real daemon process: `snowflake serve` started with a low
//! descriptor limit (RLIMIT_NOFILE 128) is flooded with more idle sockets than it may hold. New
//! callers are still served, the daemon does not spin on failed accepts, and silent sockets
//! are closed after the handshake timeout; an HTTP/2 connection with no call is closed after
//! the idle timeout.

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use snowflake::client::Client;
use tests::{binary, stack::free_port};

/// The daemon's descriptor limit: fewer than the sockets of the flood.
const NOFILE: u64 = 128;
/// Idle sockets opened at once.
const FLOOD: usize = 300;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Returns the CPU time (user and system) the process has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat format")
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1_000 / per_second)
}

/// Reads `socket` until the server closes it; panics when it stays open 20 s.
fn read_to_close(mut socket: TcpStream) {
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    let mut buf = [0u8; 1024];
    loop {
        match socket.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
}

async fn get_id(addr: &str, timeout: Duration) -> Result<u64, String> {
    let client = Client::connect(addr, "flood", timeout)
        .await
        .map_err(|e| e.to_string())?;
    client.get_id().await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_socket_flood_under_a_low_descriptor_limit_does_not_starve_new_callers() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut command = Command::new(binary::path("snowflake", "snowflake"));
    command
        .args([
            "serve",
            "--worker-id",
            "9",
            "--no-metrics",
            "--threads",
            "1",
            "--listen",
            &addr,
            "--handshake-timeout",
            "2s",
            "--idle-timeout",
            "3s",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: NOFILE,
                rlim_max: NOFILE,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let daemon = Killed(command.spawn().expect("spawn snowflake"));
    let pid = daemon.0.id();
    let started = Instant::now();
    while get_id(&addr, Duration::from_secs(1)).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "daemon did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The flood: sockets that never send a byte, more than the daemon may hold.
    let flood: Vec<TcpStream> = (0..FLOOD)
        .map(|_| TcpStream::connect(&addr).expect("connect a flood socket"))
        .collect();
    let cpu_before = cpu_time(pid);
    let flooded = Instant::now();

    // A new caller is served: at once, or once silent sockets are closed (2 s) and its
    // connection is accepted from the backlog.
    let id = get_id(&addr, Duration::from_secs(15))
        .await
        .expect("a new caller is served during the flood");
    assert!(id > 0);
    let served_after = flooded.elapsed();
    assert!(
        served_after < Duration::from_secs(10),
        "served after {served_after:?}"
    );

    // Every silent socket is closed by the daemon (EOF or reset); what it reads before is the
    // server's HTTP/2 settings.
    let mut closed_after = Vec::new();
    for socket in flood {
        read_to_close(socket);
        closed_after.push(flooded.elapsed());
    }
    let last = closed_after.iter().max().copied().unwrap_or_default();
    assert!(last < Duration::from_secs(25), "last closed after {last:?}");

    // Not spinning: the daemon used a small part of one core while the flood lasted.
    let elapsed = flooded.elapsed();
    let cpu = cpu_time(pid).saturating_sub(cpu_before);
    assert!(
        cpu.as_secs_f64() < 0.25 * elapsed.as_secs_f64(),
        "daemon used {cpu:?} of CPU over {elapsed:?} of flood"
    );
    assert!(
        get_id(&addr, Duration::from_secs(5)).await.is_ok(),
        "served after the flood"
    );

    // An HTTP/2 connection that opens no stream is closed after the idle timeout (3 s), not
    // at the handshake timeout: it spoke.
    let mut h2 = TcpStream::connect(&addr).expect("connect");
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .expect("preface and settings");
    let opened = Instant::now();
    read_to_close(h2);
    let idle = opened.elapsed();
    assert!(
        idle >= Duration::from_millis(2_500) && idle < Duration::from_secs(15),
        "idle HTTP/2 connection closed after {idle:?}"
    );
}
