//! `tbird`: the tweet store's server and its client commands.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use daemon::{logs::LogFormat, metrics::Listen};
use proto::tbird::v1::{
    DeleteTweetRequest, GetTweetsRequest, PostTweetRequest, PutTweetRequest, Tweet,
    UserTweetsRequest, tweets_client::TweetsClient,
};
use tbird::{
    bench::{self, BenchSettings, Mix},
    dev::{self, DevSettings},
    server::ServerConfig,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

// The server and the load generator allocate several small buffers per call (gRPC frames,
// rows); glibc's malloc and free took about a sixth of either process's CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tbird",
    version,
    about = "Tweet storage on Gizzard, with ids from Snowflake"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the largest variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run a production server: a MySQL nameserver, shards on MySQL hosts, ids from Snowflake.
    Serve(ServeArgs),
    /// Run everything in one process on SQLite files: nothing to install.
    Dev {
        /// Where the nameserver, the job queue and the two shard hosts keep their files.
        #[arg(long, env = "TBIRD_DATA_DIR", default_value = "tbird-dev-data")]
        data_dir: PathBuf,
        /// Address of the tweet service.
        #[arg(long, env = "TBIRD_LISTEN", default_value = "127.0.0.1:7915")]
        listen: SocketAddr,
        /// Address of the ShardManager admin service (for gizzmo).
        #[arg(long, env = "TBIRD_ADMIN_LISTEN", default_value = "127.0.0.1:7920")]
        admin_listen: SocketAddr,
        /// Serve /metrics on this address [default: off].
        #[arg(long, env = "TBIRD_METRICS_LISTEN", value_name = "ADDR|off")]
        metrics_listen: Option<Listen>,
        /// How log lines are written [default: text].
        #[arg(long, env = "TBIRD_LOG_FORMAT", value_enum)]
        log_format: Option<LogFormat>,
    },
    /// Post a tweet and print its id.
    Post {
        #[command(flatten)]
        client: ClientArgs,
        /// The author's user id.
        #[arg(long)]
        user: u64,
        /// The id of the tweet this one replies to.
        #[arg(long)]
        reply_to: Option<u64>,
        /// The text, 1 to 280 characters.
        text: String,
    },
    /// Store a tweet with a given id: finishes a post that failed part-way (`post` prints the
    /// command). Repeating it changes nothing; an id holding other content is refused.
    Put {
        #[command(flatten)]
        client: ClientArgs,
        /// The tweet's id.
        #[arg(long)]
        id: u64,
        /// The author's user id.
        #[arg(long)]
        user: u64,
        /// The id of the tweet this one replies to.
        #[arg(long)]
        reply_to: Option<u64>,
        /// The text, 1 to 280 characters.
        text: String,
    },
    /// Print tweets by id; exits 1 when one is not found.
    Get {
        #[command(flatten)]
        client: ClientArgs,
        /// The ids of the tweets.
        #[arg(required = true)]
        ids: Vec<u64>,
    },
    /// Delete tweets by id.
    Delete {
        #[command(flatten)]
        client: ClientArgs,
        /// The ids of the tweets.
        #[arg(required = true)]
        ids: Vec<u64>,
    },
    /// Print a user's tweets, newest first.
    Timeline {
        #[command(flatten)]
        client: ClientArgs,
        /// The user whose tweets to list.
        #[arg(long)]
        user: u64,
        /// Only tweets with ids at most this (the `next` id of the previous page).
        #[arg(long)]
        max_id: Option<u64>,
        /// Tweets per page, 1 to 200.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Load a server with a mix of calls and report ops/s and latency per call, optionally
    /// beside the same SQL sent straight to the shards.
    Bench {
        /// Tweet service address, HOST:PORT or https://HOST:PORT.
        #[arg(long, env = "TBIRD_ADDR", default_value = "127.0.0.1:7915")]
        addr: String,
        /// Callers in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Measured time per target and round.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Unmeasured time before each measured run.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        warmup: Duration,
        /// Measured runs per target, alternating between the proxy and the baseline.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Operations with weights: post, get, multi-get, timeline.
        #[arg(long, default_value = "post=20,get=60,multi-get=10,timeline=10")]
        mix: Mix,
        /// Run one operation alone, instead of the mix.
        #[arg(long, conflicts_with = "mix")]
        op: Option<bench::Op>,
        /// Tweets are posted by users 1 to N.
        #[arg(long, default_value_t = 500)]
        users: u64,
        /// Tweets posted before measuring, for reads to find.
        #[arg(long, default_value_t = 10_000)]
        preload: usize,
        /// Ids per multi-get.
        #[arg(long, default_value_t = 20)]
        multi_get: usize,
        /// Tweets per timeline page.
        #[arg(long, default_value_t = 20)]
        page: u32,
        /// HTTP/2 connections the callers share. One multiplexes every call and cost the
        /// least CPU per call on both ends (see "Clients" in README.md).
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Also run the workload without the proxy: `direct` sends the same SQL to the shards.
        #[arg(long, value_enum, requires = "nameserver_url")]
        baseline: Option<Baseline>,
        /// The nameserver to read the shards' topology from, for `--baseline direct`.
        #[arg(long, env = "TBIRD_NAMESERVER_URL", hide_env_values = true)]
        nameserver_url: Option<String>,
        /// The server's /metrics address, HOST:PORT, or `off`: its CPU seconds are read
        /// before and after each run to print the server's CPU per call.
        #[arg(
            long,
            env = "TBIRD_BENCH_SERVER_METRICS",
            default_value = "127.0.0.1:9990"
        )]
        server_metrics: Listen,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        tls: ClientTlsArgs,
    },
}

/// The flags of `tbird serve`: each overrides the config file's key of the same name.
#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file (see tbird/tbird.example.toml).
    #[arg(long, env = "TBIRD_CONFIG")]
    config: Option<PathBuf>,
    /// The nameserver database, overriding the file.
    #[arg(long, env = "TBIRD_NAMESERVER_URL", hide_env_values = true)]
    nameserver_url: Option<String>,
    /// The Snowflake daemon, HOST:PORT, overriding the file.
    #[arg(long, env = "TBIRD_SNOWFLAKE_ADDR")]
    snowflake_addr: Option<String>,
    /// Address of the tweet service, overriding the file.
    #[arg(long, env = "TBIRD_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address of the ShardManager, overriding the file [default: 127.0.0.1:7920; another
    /// address needs an admin token].
    #[arg(long, env = "TBIRD_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Admin bearer token, overriding the file (prefer --admin-token-file: a command line
    /// is visible to every user of the machine).
    #[arg(long, env = "TBIRD_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// File holding the admin token (one line), overriding the file.
    #[arg(
        long,
        env = "TBIRD_ADMIN_TOKEN_FILE",
        conflicts_with = "admin_token",
        value_name = "PATH"
    )]
    admin_token_file: Option<PathBuf>,
    /// Token that allows only the admin calls that change nothing, overriding the file.
    #[arg(long, env = "TBIRD_READ_ONLY_TOKEN", hide_env_values = true)]
    read_only_token: Option<String>,
    /// File holding the read-only token (one line), overriding the file.
    #[arg(
        long,
        env = "TBIRD_READ_ONLY_TOKEN_FILE",
        conflicts_with = "read_only_token",
        value_name = "PATH"
    )]
    read_only_token_file: Option<PathBuf>,
    /// Address serving /metrics, or `off`, overriding the file [default: 0.0.0.0:9990].
    #[arg(long, env = "TBIRD_METRICS_LISTEN", value_name = "ADDR|off")]
    metrics_listen: Option<tbird::metrics::Listen>,
    /// Reads, and separately writes, in flight on one shard host, overriding the file
    /// [default: 2].
    #[arg(long, env = "TBIRD_STATEMENTS_PER_HOST")]
    statements_per_host: Option<usize>,
    /// Async threads serving calls, overriding the file [default: 1]; 1 runs everything on
    /// one thread, the cheapest per call.
    #[arg(long, env = "TBIRD_THREADS")]
    threads: Option<usize>,
    /// Where gizzmo reaches the ShardManager, HOST:PORT, as registered in the nameserver
    /// [default: admin-listen, with the hostname for 0.0.0.0].
    #[arg(long, env = "TBIRD_ADVERTISE_ADDR")]
    advertise_addr: Option<String>,
    /// How long a confirmation of the routing lets this server acknowledge writes, e.g.
    /// 5s, overriding the file [default: 5s].
    #[arg(long, env = "TBIRD_ROUTING_LEASE", value_parser = humantime::parse_duration)]
    routing_lease: Option<std::time::Duration>,
    /// How long a removed shard's renamed tables are kept before they are dropped, e.g.
    /// 24h, overriding the file [default: 24h].
    #[arg(long, env = "TBIRD_RETIRED_GRACE", value_parser = humantime::parse_duration)]
    retired_grace: Option<std::time::Duration>,
    /// How often anti-entropy sweeps every replica pair in full, e.g. 10m, or `off`,
    /// overriding the file [default: 10m].
    #[arg(long, env = "TBIRD_ANTI_ENTROPY_INTERVAL", value_name = "DURATION|off")]
    anti_entropy_interval: Option<tbird::server::Interval>,
    /// Rows one anti-entropy sweep compares per second at most, overriding the file
    /// [default: 10000].
    #[arg(long, env = "TBIRD_ANTI_ENTROPY_ROWS_PER_SECOND")]
    anti_entropy_rows_per_second: Option<u64>,
    /// Job workers in this server, overriding the file [default: 4].
    #[arg(long, env = "TBIRD_JOB_WORKERS")]
    job_workers: Option<usize>,
    /// Deadline of a write on one replica before it is queued for retry, e.g. 2s,
    /// overriding the file [default: 2s].
    #[arg(long, env = "TBIRD_LEAF_TIMEOUT", value_parser = humantime::parse_duration)]
    leaf_timeout: Option<Duration>,
    /// Deadline of each nameserver and queue database operation, e.g. 5s, overriding the
    /// file [default: 5s].
    #[arg(long, env = "TBIRD_DB_TIMEOUT", value_parser = humantime::parse_duration)]
    db_timeout: Option<Duration>,
    /// Name reported to `gizzmo ping` and `gizzmo servers`, overriding the file
    /// [default: tbird].
    #[arg(long, env = "TBIRD_SERVER_NAME")]
    server_name: Option<String>,
    /// How log lines are written, overriding the file [default: text].
    #[arg(long, env = "TBIRD_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    #[command(flatten)]
    transport: TransportArgs,
}

impl ServeArgs {
    /// Returns the config file's settings (or the defaults) with the flags applied.
    fn config(self) -> anyhow::Result<ServerConfig> {
        let Self {
            config,
            nameserver_url,
            snowflake_addr,
            listen,
            admin_listen,
            admin_token,
            admin_token_file,
            read_only_token,
            read_only_token_file,
            metrics_listen,
            statements_per_host,
            threads,
            advertise_addr,
            routing_lease,
            retired_grace,
            anti_entropy_interval,
            anti_entropy_rows_per_second,
            job_workers,
            leaf_timeout,
            db_timeout,
            server_name,
            log_format,
            transport,
        } = self;
        let mut server = match config {
            Some(path) => ServerConfig::from_file(&path)?,
            None => ServerConfig::default(),
        };
        server.nameserver_url = nameserver_url.unwrap_or(server.nameserver_url);
        server.snowflake_addr = snowflake_addr.unwrap_or(server.snowflake_addr);
        server.listen = listen.unwrap_or(server.listen);
        server.admin_listen = admin_listen.unwrap_or(server.admin_listen);
        // A flag replaces the file's token, and a file named by a flag its inline one.
        if admin_token.is_some() || admin_token_file.is_some() {
            (server.admin_token, server.admin_token_file) = (admin_token, admin_token_file);
        }
        if read_only_token.is_some() || read_only_token_file.is_some() {
            (server.read_only_token, server.read_only_token_file) =
                (read_only_token, read_only_token_file);
        }
        server.metrics_listen = metrics_listen.map_or(server.metrics_listen, |m| m.0);
        server.statements_per_host = statements_per_host.unwrap_or(server.statements_per_host);
        server.threads = threads.unwrap_or(server.threads);
        server.advertise_addr = advertise_addr.or(server.advertise_addr);
        server.routing_lease = routing_lease.unwrap_or(server.routing_lease);
        server.retired_grace = retired_grace.unwrap_or(server.retired_grace);
        server.anti_entropy_interval =
            anti_entropy_interval.map_or(server.anti_entropy_interval, |i| i.0);
        server.anti_entropy_rows_per_second =
            anti_entropy_rows_per_second.unwrap_or(server.anti_entropy_rows_per_second);
        server.job_workers = job_workers.unwrap_or(server.job_workers);
        server.leaf_timeout = leaf_timeout.unwrap_or(server.leaf_timeout);
        server.db_timeout = db_timeout.unwrap_or(server.db_timeout);
        server.server_name = server_name.unwrap_or(server.server_name);
        server.log_format = log_format.unwrap_or(server.log_format);
        transport.overlay(&mut server);
        Ok(server)
    }
}

/// TLS and connection limits of `tbird serve`'s listeners and Snowflake client, overriding the
/// file (see the README's "TLS and connection limits").
#[derive(clap::Args)]
struct TransportArgs {
    /// PEM certificate chain of both gRPC listeners; with --tls-key they serve TLS only.
    #[arg(long, env = "TBIRD_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "TBIRD_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// PEM bundle of the CAs client certificates must chain to; every client then needs one.
    #[arg(long, env = "TBIRD_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// PEM bundle of the CAs to trust for the Snowflake daemon (implies TLS to it).
    #[arg(long, env = "TBIRD_SNOWFLAKE_TLS_CA")]
    snowflake_tls_ca: Option<PathBuf>,
    /// PEM client certificate for the Snowflake daemon (implies TLS to it).
    #[arg(long, env = "TBIRD_SNOWFLAKE_TLS_CERT")]
    snowflake_tls_cert: Option<PathBuf>,
    /// PEM private key of --snowflake-tls-cert.
    #[arg(long, env = "TBIRD_SNOWFLAKE_TLS_KEY")]
    snowflake_tls_key: Option<PathBuf>,
    /// Close a connection with no call in flight this long [default: 5m].
    #[arg(long, env = "TBIRD_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    idle_timeout: Option<Duration>,
    /// Close a new connection that sends no byte this long [default: 10s].
    #[arg(long, env = "TBIRD_HANDSHAKE_TIMEOUT", value_parser = humantime::parse_duration)]
    handshake_timeout: Option<Duration>,
    /// Interval of HTTP/2 keepalive pings [default: 60s].
    #[arg(long, env = "TBIRD_KEEPALIVE_INTERVAL", value_parser = humantime::parse_duration)]
    keepalive_interval: Option<Duration>,
    /// Drop a connection whose keepalive ping is unanswered this long [default: 20s].
    #[arg(long, env = "TBIRD_KEEPALIVE_TIMEOUT", value_parser = humantime::parse_duration)]
    keepalive_timeout: Option<Duration>,
    /// Open gRPC connections at most, both ports together, kept below 3/4 of the descriptor
    /// limit [default: 10000].
    #[arg(long, env = "TBIRD_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Calls in flight on one connection at most [default: 1024].
    #[arg(long, env = "TBIRD_MAX_CONCURRENT_STREAMS")]
    max_concurrent_streams: Option<u32>,
}

impl TransportArgs {
    fn overlay(self, server: &mut ServerConfig) {
        let or = |flag: Option<PathBuf>, file: &mut Option<PathBuf>| {
            if flag.is_some() {
                *file = flag;
            }
        };
        or(self.tls_cert, &mut server.tls_cert);
        or(self.tls_key, &mut server.tls_key);
        or(self.tls_client_ca, &mut server.tls_client_ca);
        or(self.snowflake_tls_ca, &mut server.snowflake_tls_ca);
        or(self.snowflake_tls_cert, &mut server.snowflake_tls_cert);
        or(self.snowflake_tls_key, &mut server.snowflake_tls_key);
        server.idle_timeout = self.idle_timeout.unwrap_or(server.idle_timeout);
        server.handshake_timeout = self.handshake_timeout.unwrap_or(server.handshake_timeout);
        server.keepalive_interval = self.keepalive_interval.unwrap_or(server.keepalive_interval);
        server.keepalive_timeout = self.keepalive_timeout.unwrap_or(server.keepalive_timeout);
        server.max_connections = self.max_connections.unwrap_or(server.max_connections);
        server.max_concurrent_streams = self
            .max_concurrent_streams
            .unwrap_or(server.max_concurrent_streams);
    }
}

/// TLS of a client: used for an `https://` address, or a HOST:PORT with any of these files.
#[derive(clap::Args, Clone)]
struct ClientTlsArgs {
    /// PEM bundle of the CAs to trust instead of the system's (implies TLS).
    #[arg(long, env = "TBIRD_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// PEM client certificate, for a server that requires one (implies TLS).
    #[arg(long, env = "TBIRD_CLIENT_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "TBIRD_CLIENT_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl ClientTlsArgs {
    fn files(&self) -> edge::client::ClientTls {
        edge::client::ClientTls {
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
        }
    }
}

/// What `tbird bench` compares the proxy with.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Baseline {
    /// The same SQL sent straight to the shards.
    Direct,
}

#[derive(clap::Args)]
struct ClientArgs {
    /// Tweet service address, HOST:PORT or https://HOST:PORT.
    #[arg(long, env = "TBIRD_ADDR", default_value = "127.0.0.1:7915")]
    addr: String,
    /// Print JSON instead of text (64-bit integers as strings, as in protobuf's JSON).
    #[arg(long)]
    json: bool,
    /// Deadline for connecting and for each call.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    tls: ClientTlsArgs,
}

impl ClientArgs {
    async fn connect(&self) -> anyhow::Result<TweetsClient<Channel>> {
        let channel = edge::client::endpoint(&self.addr, &self.tls.files())?
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .connect()
            .await
            .with_context(|| format!("connect to {}", self.addr))?;
        Ok(TweetsClient::new(channel))
    }

    /// Prints tweets as lines of text.
    fn print(&self, tweets: &[Tweet]) {
        for t in tweets {
            let when = chrono::DateTime::from_timestamp_millis(t.created_at_ms)
                .map_or_else(String::new, |d| d.format("%Y-%m-%d %H:%M:%S").to_string());
            println!("{}  user {}  {when}  {}", t.id, t.user_id, t.text);
        }
    }
}

/// Returns a tweet as JSON with the field names of `tbird.proto`, 64-bit integers as decimal
/// strings (JavaScript and some jq builds round numbers above 2^53).
fn tweet_json(t: &Tweet) -> serde_json::Value {
    serde_json::json!({
        "id": t.id.to_string(),
        "user_id": t.user_id.to_string(),
        "text": t.text,
        "in_reply_to": t.in_reply_to.map(|id| id.to_string()),
        "created_at_ms": t.created_at_ms.to_string(),
    })
}

/// Returns ids as JSON strings.
fn ids_json(ids: &[u64]) -> serde_json::Value {
    ids.iter().map(u64::to_string).collect()
}

fn main() -> std::process::ExitCode {
    daemon::exit(start())
}

fn start() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => {
            // The config decides the log format and the runtime, so it is read first; its
            // errors print as the exit message.
            let config = args.config()?;
            config.validate()?;
            daemon::logs::init(config.log_format);
            server_runtime(config.threads)?.block_on(serve(config))
        }
        command => {
            let log_format = match &command {
                Command::Dev { log_format, .. } => log_format.unwrap_or_default(),
                _ => LogFormat::Text,
            };
            daemon::logs::init(log_format);
            let runtime = match command {
                // The embedded stack runs SQLite and every daemon in one process.
                Command::Dev { .. } => tokio::runtime::Runtime::new(),
                // Clients, the load generator included, run on the calling thread: one
                // thread needs no cross-thread wake-ups, and a load generator sharing the
                // machine with the server leaves it the other cores (see "Clients" in
                // README.md).
                _ => tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build(),
            }
            .context("start the async runtime")?;
            runtime.block_on(run(command))
        }
    }
}

/// Returns the server's runtime: with one thread, a current-thread runtime, where a call,
/// its database statements and its reply run without waking another thread; with more, a
/// multi-threaded one. Measured with `tbird bench` on 2 cores beside MariaDB (issue #14),
/// the multi-threaded runtime cost 40-80% more CPU per GetTweet, its workers parking and
/// waking each other.
fn server_runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    match threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
    .context("start the async runtime")
}

/// Runs `tbird serve` until SIGINT or SIGTERM.
async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminate() => {}
        }
        stop.cancel();
    });
    tbird::server::run(config, shutdown).await?;
    Ok(())
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(_) => unreachable!("start() runs the server"),
        Command::Dev {
            data_dir,
            listen,
            admin_listen,
            metrics_listen,
            log_format: _,
        } => {
            // The dev stack's admin service has no token: loopback only.
            gizzard::manager::AdminTokens::default()
                .check_listener(admin_listen)
                .map_err(anyhow::Error::msg)?;
            run_dev(DevSettings {
                data_dir,
                listen,
                admin_listen,
                metrics_listen: metrics_listen.and_then(|m| m.0),
            })
            .await
        }
        Command::Post {
            client,
            user,
            reply_to,
            text,
        } => {
            let request = PostTweetRequest {
                user_id: user,
                text: text.clone(),
                in_reply_to: reply_to,
            };
            let tweet = client
                .connect()
                .await?
                .post_tweet(request)
                .await
                .map_err(|s| post_failed(s, user, reply_to, &text))?
                .into_inner();
            if client.json {
                println!("{}", tweet_json(&tweet));
            } else {
                println!("{}", tweet.id)
            }
            Ok(())
        }
        Command::Put {
            client,
            id,
            user,
            reply_to,
            text,
        } => {
            let tweet = Tweet {
                id,
                user_id: user,
                text,
                in_reply_to: reply_to,
                ..Tweet::default()
            };
            let request = PutTweetRequest { tweet: Some(tweet) };
            let tweet = client
                .connect()
                .await?
                .put_tweet(request)
                .await
                .map_err(status)?
                .into_inner();
            if client.json {
                println!("{}", tweet_json(&tweet));
            } else {
                println!("{}", tweet.id)
            }
            Ok(())
        }
        Command::Get { client, ids } => {
            let got = client
                .connect()
                .await?
                .get_tweets(GetTweetsRequest { ids })
                .await
                .map_err(status)?
                .into_inner();
            if client.json {
                let tweets: Vec<_> = got.tweets.iter().map(tweet_json).collect();
                let json =
                    serde_json::json!({ "tweets": tweets, "missing": ids_json(&got.missing) });
                println!("{json}");
            } else {
                client.print(&got.tweets);
            }
            if !got.missing.is_empty() {
                let missing: Vec<String> = got.missing.iter().map(u64::to_string).collect();
                bail!("not found: {}", missing.join(", "));
            }
            Ok(())
        }
        Command::Delete { client, ids } => {
            let mut tweets = client.connect().await?;
            for id in ids {
                tweets
                    .delete_tweet(DeleteTweetRequest { id })
                    .await
                    .map_err(status)?;
            }
            Ok(())
        }
        Command::Timeline {
            client,
            user,
            max_id,
            limit,
        } => {
            let request = UserTweetsRequest {
                user_id: user,
                max_id,
                limit,
            };
            let page = client
                .connect()
                .await?
                .user_tweets(request)
                .await
                .map_err(status)?
                .into_inner();
            if client.json {
                let tweets: Vec<_> = page.tweets.iter().map(tweet_json).collect();
                let next = page.next_max_id.map(|id| id.to_string());
                println!(
                    "{}",
                    serde_json::json!({ "tweets": tweets, "next_max_id": next })
                );
            } else {
                client.print(&page.tweets);
                if let Some(next) = page.next_max_id {
                    println!("more: --max-id {next}");
                }
            }
            Ok(())
        }
        Command::Bench {
            addr,
            concurrency,
            duration,
            warmup,
            rounds,
            mix,
            op,
            users,
            preload,
            multi_get,
            page,
            connections,
            baseline,
            nameserver_url,
            server_metrics,
            json,
            tls,
        } => {
            let settings = BenchSettings {
                addr,
                concurrency,
                duration,
                warmup,
                rounds,
                mix: op.map_or(mix, |op| Mix(vec![(op, 1)])),
                users,
                preload,
                multi_get,
                page,
                connections,
                direct_nameserver_url: baseline.and(nameserver_url),
                server_metrics: server_metrics.0.map(|addr| addr.to_string()),
                tls: tls.files(),
            };
            let report = bench::run(settings).await?;
            if json {
                println!("{}", report.json());
            } else {
                print!("{}", report.table());
            }
            Ok(())
        }
    }
}

fn status(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", status.message(), status.code())
}

/// Returns the error of a failed post; when the server names a tweet id the post may have
/// partly stored, it ends with the `tbird put` command that finishes that tweet.
fn post_failed(
    failed: tonic::Status,
    user: u64,
    reply_to: Option<u64>,
    text: &str,
) -> anyhow::Error {
    let Some(id) = tbird::service::partly_posted_id(&failed) else {
        return status(failed);
    };
    let reply = reply_to.map_or_else(String::new, |r| format!(" --reply-to {r}"));
    anyhow::anyhow!(
        "{} ({:?})\ntweet {id} may be partly stored; finish it with PutTweet, not another \
         post:\n  tbird put --id {id} --user {user}{reply} {}",
        failed.message(),
        failed.code(),
        shell_quote(text)
    )
}

/// Returns `text` quoted for a POSIX shell.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

async fn run_dev(settings: DevSettings) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let data_dir = settings.data_dir.clone();
    let mut stack = tokio::spawn(dev::run(settings, ready_tx, shutdown.clone()));
    let Ok((tweets, admin)) = ready.await else {
        // The stack stopped before it served: its error says why.
        return stack.await.context("dev stack")?.map_err(Into::into);
    };
    println!(
        "tbird dev: tweets on {tweets}, ShardManager on {admin}, data in {}",
        data_dir.display()
    );
    let (tbird, gizzmo) = commands();
    println!("try:  {tbird} post --addr {tweets} --user 1 'hello, world'");
    println!("      {tbird} timeline --addr {tweets} --user 1");
    println!("      {gizzmo} --addr {admin} tree 1");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => shutdown.cancel(),
        () = terminate() => shutdown.cancel(),
        result = &mut stack => return result.context("dev stack")?.map_err(Into::into),
    }
    stack.await.context("dev stack")??;
    Ok(())
}

/// Returns how a shell runs `tbird` and `gizzmo` at once: this binary's path, and the `gizzmo`
/// built beside it (cargo builds both into one directory); a release `cargo run` for one that
/// is not there.
fn commands() -> (String, String) {
    let exe = std::env::current_exe().ok();
    let tbird = exe.as_ref().map_or_else(
        || "cargo run --release -p tbird --".to_owned(),
        |path| shell_quote_path(path),
    );
    let gizzmo = exe
        .map(|path| path.with_file_name("gizzmo"))
        .filter(|path| path.is_file())
        .map_or_else(
            || "cargo run --release -p gizzmo --".to_owned(),
            |path| shell_quote_path(&path),
        );
    (tbird, gizzmo)
}

/// Returns `path` as a shell word: as it is when it holds only safe characters.
fn shell_quote_path(path: &std::path::Path) -> String {
    let text = path.display().to_string();
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+".contains(c);
    if text.chars().all(safe) {
        text
    } else {
        shell_quote(&text)
    }
}

async fn terminate() {
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        term.recv().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partly_stored_post_names_its_id_and_the_put_that_finishes_it() {
        let mut failed = tonic::Status::unavailable("tweet 42 may be partly stored: store");
        failed.metadata_mut().insert(
            tbird::service::TWEET_ID_METADATA,
            tonic::metadata::MetadataValue::from(42u64),
        );
        let text = post_failed(failed, 7, Some(9), "it's").to_string();
        assert!(
            text.contains("tbird put --id 42 --user 7 --reply-to 9 'it'\\''s'"),
            "{text}"
        );
        // A failure that stored nothing names no id and suggests nothing.
        let text = post_failed(
            tonic::Status::invalid_argument("text is empty"),
            7,
            None,
            "",
        )
        .to_string();
        assert!(!text.contains("tbird put"), "{text}");
    }

    #[test]
    fn the_serve_flags_keys_and_variables_match() {
        use clap::CommandFactory;
        let command = Cli::command();
        let serve = command.find_subcommand("serve").expect("serve");
        // `config` names the file itself.
        let problems = daemon::config::coverage_problems(
            serve,
            &daemon::config::keys::<ServerConfig>(),
            "TBIRD",
            &["config"],
        );
        assert!(problems.is_empty(), "{problems:#?}");
        // Every flag of `dev` is one of `serve`'s settings (same name, same variable) or its
        // own data dir.
        let dev = command.find_subcommand("dev").expect("dev");
        let problems = daemon::config::coverage_problems(
            dev,
            &["listen", "admin-listen", "metrics-listen", "log-format"],
            "TBIRD",
            &["data-dir"],
        );
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn every_argument_has_help() {
        use clap::CommandFactory;
        let missing = daemon::config::undocumented_args(&Cli::command());
        assert!(missing.is_empty(), "{missing:#?}");
    }

    #[test]
    fn dev_takes_off_for_metrics_and_serve_every_setting() {
        let dev = Cli::try_parse_from(["tbird", "dev", "--metrics-listen", "off"]).expect("off");
        assert!(matches!(
            dev.command,
            Command::Dev {
                metrics_listen: Some(Listen(None)),
                ..
            }
        ));
        let serve = Cli::try_parse_from([
            "tbird",
            "serve",
            "--job-workers",
            "2",
            "--leaf-timeout",
            "1s",
            "--log-format",
            "json",
            "--threads",
            "2",
        ])
        .expect("serve parses");
        let Command::Serve(args) = serve.command else {
            panic!("a serve command");
        };
        let config = args.config().expect("the flags make a config");
        assert_eq!(
            (config.log_format, config.threads, config.job_workers),
            (LogFormat::Json, 2, 2)
        );
        assert_eq!(config.leaf_timeout, Duration::from_secs(1));
    }

    #[test]
    fn json_writes_64_bit_integers_as_strings() {
        let tweet = Tweet {
            id: (1 << 62) + 1,
            user_id: 7,
            text: "hi".into(),
            in_reply_to: Some(u64::MAX >> 1),
            created_at_ms: 1_700_000_000_000,
            deleted: false,
        };
        let json = tweet_json(&tweet);
        let back: serde_json::Value = serde_json::from_str(&json.to_string()).expect("parses back");
        assert_eq!(back["id"], ((1u64 << 62) + 1).to_string());
        assert_eq!(back["in_reply_to"], (u64::MAX >> 1).to_string());
        assert_eq!(back["text"], "hi");
    }

    #[test]
    fn the_commands_parse() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["tbird", "put", "--id", "5", "--user", "7", "hi"])
            .expect("put parses");
        assert!(matches!(cli.command, Command::Put { id: 5, user: 7, .. }));
    }
}
