//! Private MariaDB instances for tests.
//!
//! Each instance copies a template datadir (made once per MariaDB version with
//! `mariadb-install-db`, shared between test processes under a file lock), listens on a free
//! loopback port, and lives in its own temporary directory. Dropping it kills the server and
//! removes the directory; the server also dies with the test process (`PR_SET_PDEATHSIG`), so
//! a test killed by its runner leaks nothing that keeps running.
//!
//! Fault hooks: [`MariaDb::stop`] (clean shutdown), [`MariaDb::kill`] (SIGKILL),
//! [`MariaDb::pause`] / [`MariaDb::resume`] (SIGSTOP / SIGCONT) and [`MariaDb::restart`] (same
//! datadir and port).
//!
//! TLS: [`MariaDb::start_tls`] serves a certificate for 127.0.0.1 signed by a [`TestCa`] the
//! test made, and refuses plaintext (`--require-secure-transport`); its [`MariaDb::url`]s then
//! ask for `ssl-mode=verify-identity` with that CA.

use std::{
    fs,
    io::{self, Read, Seek, SeekFrom},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use mysql_async::prelude::Queryable;

/// How long a server may take to accept queries after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Why the harness could not provide a server.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(
        "mariadbd not found in PATH or /usr/sbin: install mariadb-server-core \
         (scripts/test.sh does so)"
    )]
    NotInstalled,
    #[error("{action}")]
    Io { action: String, source: io::Error },
    #[error("mariadb-install-db failed ({status}):\n{output}")]
    Install { status: String, output: String },
    #[error("mariadbd on port {port} did not become ready: {reason}\nerror log tail:\n{log_tail}")]
    NotReady {
        port: u16,
        reason: String,
        log_tail: String,
    },
    #[error("query on the test server")]
    Query(#[from] mysql_async::Error),
}

fn io_err(action: impl Into<String>) -> impl FnOnce(io::Error) -> HarnessError {
    let action = action.into();
    move |source| HarnessError::Io { action, source }
}

/// One private `mariadbd`.
#[derive(Debug)]
pub struct MariaDb {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    paused: bool,
    /// Flags after the harness's own, which they override.
    extra_flags: &'static [&'static str],
    /// The CA certificate (PEM file) the server's certificate is signed by, when it serves
    /// TLS only.
    tls_ca: Option<PathBuf>,
}

/// A certificate authority made for one test (an ECDSA P-256 key, never written anywhere
/// but the test's own directories), and the server certificates it signs.
#[derive(Debug)]
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    cert_pem: String,
}

impl TestCa {
    /// Makes a new CA named `name`.
    pub fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().expect("generate a CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).expect("self-sign the CA");
        Self {
            issuer: rcgen::Issuer::new(params, key),
            cert_pem: cert.pem(),
        }
    }

    /// Returns the CA's certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes the CA's certificate to `path` and returns it.
    pub fn write_cert(&self, path: &Path) -> PathBuf {
        fs::write(path, &self.cert_pem).expect("write the CA certificate");
        path.to_owned()
    }

    /// Returns a server certificate for `names` (IP addresses or DNS names) and its key, PEM.
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("generate a server key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("server params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tbird test server");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign the server certificate");
        (cert.pem(), key.serialize_pem())
    }
}

impl MariaDb {
    /// Starts a server and waits until it accepts queries.
    pub async fn start() -> Result<Self, HarnessError> {
        Self::start_with(&[]).await
    }

    /// Starts a server with `extra_flags` after the harness's own (see [`BENCH_FLAGS`]).
    pub async fn start_with(extra_flags: &'static [&'static str]) -> Result<Self, HarnessError> {
        Self::start_inner(extra_flags, None).await
    }

    /// Starts a server that accepts TLS connections only, with a certificate for 127.0.0.1
    /// signed by `ca`. Its URLs ask for `ssl-mode=verify-identity` with `ca`'s certificate.
    pub async fn start_tls(ca: &TestCa) -> Result<Self, HarnessError> {
        Self::start_inner(&[], Some(ca)).await
    }

    async fn start_inner(
        extra_flags: &'static [&'static str],
        ca: Option<&TestCa>,
    ) -> Result<Self, HarnessError> {
        let template = tokio::task::spawn_blocking(template_datadir)
            .await
            .map_err(|e| io_err("make template")(io::Error::other(e)))??;
        let dir = tempfile::Builder::new()
            .prefix("tbird-mariadb-")
            .tempdir()
            .map_err(io_err("create instance dir"))?;
        copy_dir(&template, &dir.path().join("data"))?;
        let tls_ca = match ca {
            Some(ca) => {
                let (cert, key) = ca.issue(&["127.0.0.1", "localhost"]);
                let write = |name: &str, text: &str| {
                    fs::write(dir.path().join(name), text).map_err(io_err(format!("write {name}")))
                };
                write("server-cert.pem", &cert)?;
                write("server-key.pem", &key)?;
                write("ca.pem", ca.cert_pem())?;
                Some(dir.path().join("ca.pem"))
            }
            None => None,
        };
        // A port picked free may be taken before the server binds it; then try another.
        let mut server = Self {
            port: 0,
            dir,
            child: None,
            paused: false,
            extra_flags,
            tls_ca,
        };
        let mut attempt = 0;
        loop {
            server.port = free_port()?;
            match server.launch().await {
                Ok(()) => return Ok(server),
                Err(_) if attempt < 2 && server.log_tail().contains("Address already in use") => {
                    server.kill();
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Starts `n` servers concurrently.
    pub async fn start_many(n: usize) -> Result<Vec<Self>, HarnessError> {
        Self::start_many_with(n, &[]).await
    }

    /// Starts `n` servers concurrently, each with `extra_flags`.
    pub async fn start_many_with(
        n: usize,
        extra_flags: &'static [&'static str],
    ) -> Result<Vec<Self>, HarnessError> {
        futures::future::try_join_all((0..n).map(|_| Self::start_with(extra_flags))).await
    }

    /// Returns the server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns the server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Returns a `mysql://` URL for database `db` as root; for a TLS server, one that verifies
    /// the server's certificate and name with the test's CA.
    pub fn url(&self, db: &str) -> String {
        let plain = self.plain_url(db);
        match &self.tls_ca {
            Some(ca) => format!("{plain}?ssl-mode=verify-identity&ssl-ca={}", ca.display()),
            None => plain,
        }
    }

    /// Returns a `mysql://` URL for database `db` as root, without TLS options.
    pub fn plain_url(&self, db: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `db` if missing and returns its URL.
    pub async fn create_database(&self, db: &str) -> Result<String, HarnessError> {
        let mut conn = self.connect("").await?;
        conn.query_drop(format!("CREATE DATABASE IF NOT EXISTS `{db}`"))
            .await?;
        conn.disconnect().await?;
        Ok(self.url(db))
    }

    /// Opens one connection to database `db` (empty for none), over TCP (TLS for a TLS
    /// server).
    pub async fn connect(&self, db: &str) -> Result<mysql_async::Conn, HarnessError> {
        let opts =
            mysql_async::Opts::from_url(&self.plain_url(db)).expect("harness URLs are valid");
        let mut opts = mysql_async::OptsBuilder::from_opts(opts).prefer_socket(false);
        if let Some(ca) = &self.tls_ca {
            let ssl = mysql_async::SslOpts::default()
                .with_root_certs(vec![ca.clone().into()])
                .with_disable_built_in_roots(true);
            opts = opts.ssl_opts(Some(ssl));
        }
        let connect = mysql_async::Conn::new(opts);
        match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(conn) => Ok(conn?),
            Err(_) => Err(HarnessError::NotReady {
                port: self.port,
                reason: "connect timed out after 10s".into(),
                log_tail: self.log_tail(),
            }),
        }
    }

    /// Returns whether the server process is alive (paused counts as alive).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Shuts the server down cleanly and waits for it to exit.
    pub fn stop(&mut self) {
        self.signal_and_reap(libc::SIGTERM);
    }

    /// Kills the server with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&mut self) {
        self.signal_and_reap(libc::SIGKILL);
    }

    /// Freezes the server with SIGSTOP: connections stay open and nothing answers. Returns once
    /// every thread has stopped: the signal lands asynchronously, and a thread still running on
    /// another core could otherwise answer one more query.
    pub fn pause(&mut self) {
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGSTOP);
            self.paused = true;
            wait_until_stopped(pid);
        }
    }

    /// Thaws a paused server with SIGCONT.
    pub fn resume(&mut self) {
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGCONT);
            self.paused = false;
        }
    }

    /// Starts the server again on the same datadir and port (after `stop` or `kill`, or
    /// restarts a running one) and waits until it accepts queries.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop();
        self.launch().await
    }

    /// Returns the last lines of the server's error log.
    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("error.log"), 4096)
    }

    /// Returns the server's process id while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Returns the instance's directory (datadir, socket, error log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn signal_and_reap(&mut self, sig: i32) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if self.paused {
            signal(child.id() as i32, libc::SIGCONT);
            self.paused = false;
        }
        signal(child.id() as i32, sig);
        let _ = child.wait();
    }

    async fn launch(&mut self) -> Result<(), HarnessError> {
        let mariadbd = mariadbd_path()?;
        let dir = self.dir.path();
        let mut command = Command::new(mariadbd);
        command
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", dir.join("error.log").display()))
            .args(SERVER_FLAGS)
            .args(self.extra_flags)
            .args(self.tls_ca.iter().flat_map(|_| {
                [
                    format!("--ssl-cert={}", dir.join("server-cert.pem").display()),
                    format!("--ssl-key={}", dir.join("server-key.pem").display()),
                    format!("--ssl-ca={}", dir.join("ca.pem").display()),
                    // Plaintext TCP is refused, for every user.
                    "--require-secure-transport=ON".to_owned(),
                ]
            }))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if is_root() {
            command.arg("--user=root");
        }
        // SAFETY: prctl is async-signal-safe; the closure touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                // Die with the thread that started us, so a killed test leaks no server.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(command.spawn().map_err(io_err("spawn mariadbd"))?);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<(), HarnessError> {
        let started = Instant::now();
        let not_ready = |me: &Self, reason: String| HarnessError::NotReady {
            port: me.port,
            reason,
            log_tail: me.log_tail(),
        };
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(not_ready(self, format!("mariadbd exited with {status}")));
            }
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok()
                && self.ping().await.is_ok()
            {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(not_ready(
                    self,
                    format!("no answer within {READY_TIMEOUT:?}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn ping(&self) -> Result<(), HarnessError> {
        let mut conn = self.connect("").await?;
        conn.query_drop("SELECT 1").await?;
        conn.disconnect().await?;
        Ok(())
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Flags for speed and isolation. Durability is kept for a killed server process: InnoDB's
/// log reaches the OS on every commit, which survives SIGKILL (not a power cut).
const SERVER_FLAGS: &[&str] = &[
    "--skip-name-resolve",
    "--skip-log-bin",
    "--performance-schema=OFF",
    "--innodb-buffer-pool-size=64M",
    "--innodb-log-file-size=16M",
    "--innodb-flush-log-at-trx-commit=2",
    "--innodb-doublewrite=0",
    "--max-connections=1000",
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_bin",
];

/// Flags for benchmarks: a buffer pool and redo log sized like a small production server's,
/// so a few million rows stay in memory instead of being read back from disk.
pub const BENCH_FLAGS: &[&str] = &[
    "--innodb-buffer-pool-size=1G",
    "--innodb-log-file-size=512M",
];

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill has no memory preconditions; pid is our own child.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Waits (up to 5 s) until every thread of `pid` shows state `T` (stopped) in `/proc`.
fn wait_until_stopped(pid: i32) {
    let all_stopped = || {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            return true;
        };
        tasks.flatten().all(|task| {
            fs::read_to_string(task.path().join("stat")).map_or(true, |stat| {
                // The state follows the parenthesised command name, which may hold spaces.
                stat.rsplit_once(") ")
                    .is_none_or(|(_, rest)| rest.starts_with('T'))
            })
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !all_stopped() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Returns the mariadbd binary, searched in PATH and the sbin directories Debian uses.
pub fn mariadbd_path() -> Result<PathBuf, HarnessError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            "/usr/sbin".into(),
            "/usr/local/sbin".into(),
            "/usr/local/mysql/bin".into(),
        ])
        .map(|dir| dir.join("mariadbd"))
        .find(|candidate| candidate.is_file())
        .ok_or(HarnessError::NotInstalled)
}

fn free_port() -> Result<u16, HarnessError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("find a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(io_err("read the free port"))?
        .port())
}

/// Returns the template datadir for the installed MariaDB, creating it under a file lock the
/// first time so concurrent test processes make it once.
fn template_datadir() -> Result<PathBuf, HarnessError> {
    let mariadbd = mariadbd_path()?;
    let version = Command::new(&mariadbd)
        .arg("--version")
        .output()
        .map_err(io_err("run mariadbd --version"))?;
    let key = fnv1a(&version.stdout);
    let base = std::env::temp_dir().join("tbird-mariadb-templates");
    fs::create_dir_all(&base).map_err(io_err("create template dir"))?;
    let template = base.join(format!("{key:016x}"));
    if template.join("READY").exists() {
        return Ok(template);
    }
    let lock = fs::File::create(base.join(".lock")).map_err(io_err("create template lock"))?;
    lock.lock().map_err(io_err("lock template dir"))?;
    if template.join("READY").exists() {
        return Ok(template);
    }
    let building = base.join(format!("{key:016x}.building"));
    let _ = fs::remove_dir_all(&building);
    let mut install = Command::new("mariadb-install-db");
    install
        .arg("--no-defaults")
        .arg(format!("--datadir={}", building.display()))
        .args([
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
        ])
        .args([
            "--innodb-log-file-size=16M",
            "--innodb-buffer-pool-size=32M",
        ]);
    if is_root() {
        install.arg("--user=root");
    }
    let output = install.output().map_err(io_err("run mariadb-install-db"))?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        return Err(HarnessError::Install {
            status: output.status.to_string(),
            output: text,
        });
    }
    fs::write(building.join("READY"), b"").map_err(io_err("mark template ready"))?;
    fs::rename(&building, &template).map_err(io_err("publish template"))?;
    Ok(template)
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), HarnessError> {
    fs::create_dir_all(to).map_err(io_err(format!("create {}", to.display())))?;
    for entry in fs::read_dir(from).map_err(io_err(format!("read {}", from.display())))? {
        let entry = entry.map_err(io_err("read template entry"))?;
        let target = to.join(entry.file_name());
        if entry
            .file_type()
            .map_err(io_err("stat template entry"))?
            .is_dir()
        {
            copy_dir(&entry.path(), &target)?;
        } else if entry.file_name() != "READY" {
            fs::copy(entry.path(), &target)
                .map_err(io_err(format!("copy {}", target.display())))?;
        }
    }
    Ok(())
}

fn tail(path: &Path, bytes: u64) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return format!("({} missing)", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(bytes)));
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    text
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}
