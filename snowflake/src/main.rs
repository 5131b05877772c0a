//! `snowflake`: the id daemon and its command-line tools.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use daemon::{logs::LogFormat, metrics::Listen};
use snowflake::{
    bench::{self, BenchSettings},
    client::Client,
    clock::SystemClock,
    config::Config,
    id::IdParts,
    server,
};
use tokio_util::sync::CancellationToken;

// Every gRPC call allocates several small buffers; mimalloc serves them faster than glibc's
// malloc, which showed up as a tenth of the daemon's CPU time under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "snowflake",
    version,
    about = "Issues unique, time-ordered 64-bit ids over gRPC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: the size of the serve variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the id daemon.
    Serve(ServeArgs),
    /// Ask a daemon for ids and print one per line.
    Get {
        /// Daemon address, HOST:PORT or https://HOST:PORT.
        #[arg(long, env = "SNOWFLAKE_ADDR", default_value = "127.0.0.1:7609")]
        addr: String,
        /// How many ids.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// User agent to ask as: [a-zA-Z][a-zA-Z0-9-]*.
        #[arg(long, default_value = "snowflake-cli")]
        agent: String,
        /// Deadline for connecting and for the call.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Print the time, datacenter, worker and sequence of ids.
    Decode {
        /// The ids, in decimal.
        #[arg(required = true)]
        ids: Vec<u64>,
    },
    /// Load a daemon and report ids/s and latency percentiles.
    Bench {
        /// Daemon address, HOST:PORT.
        #[arg(long, env = "SNOWFLAKE_ADDR", default_value = "127.0.0.1:7609")]
        addr: String,
        /// Callers in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// How long to run.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Ids per call: 1 uses GetId, more use GetIds.
        #[arg(long, default_value_t = 1)]
        batch: u32,
        /// HTTP/2 connections the callers share.
        #[arg(long, default_value_t = 1)]
        connections: usize,
        #[command(flatten)]
        tls: TlsArgs,
    },
}

/// TLS of a client: used for an `https://` address, or a HOST:PORT with any of these files.
#[derive(Args)]
struct TlsArgs {
    /// PEM bundle of the CAs to trust instead of the system's (implies TLS).
    #[arg(long, env = "SNOWFLAKE_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// PEM client certificate, for a daemon that requires one (implies TLS).
    #[arg(long, env = "SNOWFLAKE_CLIENT_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "SNOWFLAKE_CLIENT_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl TlsArgs {
    fn files(&self) -> edge::client::ClientTls {
        edge::client::ClientTls {
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
        }
    }
}

/// Flags of `serve`; each overrides the config file key of its name and has a SNOWFLAKE_*
/// variable (the `the_serve_flags_keys_and_variables_match` test holds them to it).
#[derive(Args)]
struct ServeArgs {
    /// TOML config file (see snowflake/snowflake.example.toml).
    #[arg(long, env = "SNOWFLAKE_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC address [default: 0.0.0.0:7609].
    #[arg(long, env = "SNOWFLAKE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Metrics address, serving /metrics, or `off` [default: 0.0.0.0:9990].
    #[arg(long, env = "SNOWFLAKE_METRICS_LISTEN", value_name = "ADDR|off")]
    metrics_listen: Option<Listen>,
    /// Serve no metrics, whatever --metrics-listen says; in the file: metrics-listen = "off".
    #[arg(
        long,
        env = "SNOWFLAKE_NO_METRICS",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    no_metrics: bool,
    /// Datacenter id, 0 to 31 [default: 0].
    #[arg(long, env = "SNOWFLAKE_DATACENTER_ID")]
    datacenter_id: Option<u8>,
    /// Worker id, 0 to 31: static, or the one to lease with --lease-url.
    #[arg(long, env = "SNOWFLAKE_WORKER_ID")]
    worker_id: Option<u8>,
    /// Lease the worker id from mysql://USER@HOST:PORT/DB or sqlite://PATH.
    #[arg(long, env = "SNOWFLAKE_LEASE_URL", hide_env_values = true)]
    lease_url: Option<String>,
    /// Lease time-to-live [default: 10s].
    #[arg(long, env = "SNOWFLAKE_LEASE_TTL", value_parser = humantime::parse_duration)]
    lease_ttl: Option<Duration>,
    /// How long start-up waits for a worker id held elsewhere [default: twice the lease ttl].
    #[arg(long, env = "SNOWFLAKE_LEASE_ACQUIRE_TIMEOUT", value_parser = humantime::parse_duration)]
    lease_acquire_timeout: Option<Duration>,
    /// Backward clock steps up to this long are waited out [default: 5ms].
    #[arg(long, env = "SNOWFLAKE_CLOCK_TOLERANCE", value_parser = humantime::parse_duration)]
    clock_tolerance: Option<Duration>,
    /// Largest GetIds batch [default: 100000].
    #[arg(long, env = "SNOWFLAKE_MAX_BATCH")]
    max_batch: Option<u32>,
    /// Async worker threads [default: one per core]; 1 is best when a load generator shares
    /// a small machine.
    #[arg(long, env = "SNOWFLAKE_THREADS")]
    threads: Option<usize>,
    /// How log lines are written [default: text].
    #[arg(long, env = "SNOWFLAKE_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    // Transport (see the `edge` crate and the README's "TLS and connection limits").
    /// PEM certificate chain; with --tls-key the daemon serves TLS only.
    #[arg(long, env = "SNOWFLAKE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "SNOWFLAKE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// PEM bundle of the CAs client certificates must chain to; every client then needs one.
    #[arg(long, env = "SNOWFLAKE_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// Close a connection with no call in flight this long [default: 5m].
    #[arg(long, env = "SNOWFLAKE_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    idle_timeout: Option<Duration>,
    /// Close a new connection that sends no byte this long [default: 10s].
    #[arg(long, env = "SNOWFLAKE_HANDSHAKE_TIMEOUT", value_parser = humantime::parse_duration)]
    handshake_timeout: Option<Duration>,
    /// Interval of HTTP/2 keepalive pings [default: 60s].
    #[arg(long, env = "SNOWFLAKE_KEEPALIVE_INTERVAL", value_parser = humantime::parse_duration)]
    keepalive_interval: Option<Duration>,
    /// Drop a connection whose keepalive ping is unanswered this long [default: 20s].
    #[arg(long, env = "SNOWFLAKE_KEEPALIVE_TIMEOUT", value_parser = humantime::parse_duration)]
    keepalive_timeout: Option<Duration>,
    /// Open connections at most, kept below 3/4 of the descriptor limit [default: 10000].
    #[arg(long, env = "SNOWFLAKE_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Calls in flight on one connection at most [default: 1024].
    #[arg(long, env = "SNOWFLAKE_MAX_CONCURRENT_STREAMS")]
    max_concurrent_streams: Option<u32>,
    /// Fault injection for tests: shift the daemon's clock by this many milliseconds.
    #[arg(long, hide = true, allow_hyphen_values = true, default_value_t = 0)]
    clock_offset_ms: i64,
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        macro_rules! overlay {
            ($($field:ident),*) => { $( if let Some(v) = &self.$field { config.$field = v.clone().into(); } )* };
        }
        overlay!(
            listen,
            datacenter_id,
            worker_id,
            lease_url,
            lease_ttl,
            lease_acquire_timeout
        );
        overlay!(clock_tolerance, max_batch, threads, log_format);
        if let Some(listen) = self.metrics_listen {
            config.metrics_listen = listen.0;
        }
        overlay!(
            tls_cert,
            tls_key,
            tls_client_ca,
            idle_timeout,
            handshake_timeout
        );
        overlay!(
            keepalive_interval,
            keepalive_timeout,
            max_connections,
            max_concurrent_streams
        );
        if self.no_metrics {
            config.metrics_listen = None;
        }
        config.validate()?;
        Ok(config)
    }
}

fn main() -> std::process::ExitCode {
    daemon::exit(start())
}

fn start() -> anyhow::Result<()> {
    let command = Cli::parse().command;
    let runtime = match &command {
        Command::Serve(args) => {
            // The config decides the log format and the threads, so it is read first; its
            // errors print as the exit message.
            let config = args.config()?;
            daemon::logs::init(config.log_format);
            let threads = config.threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            });
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()
        }
        // The tools run on the calling thread: a load generator sharing the machine with the
        // daemon should leave it the other cores, and one thread needs no cross-thread wake-ups.
        _ => {
            daemon::logs::init(LogFormat::Text);
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        }
    }
    .context("start the async runtime")?;
    runtime.block_on(run(command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(args).await,
        Command::Get {
            addr,
            count,
            agent,
            timeout,
            tls,
        } => {
            let client = Client::connect_with(&addr, &tls.files(), &agent, timeout).await?;
            let ids = if count == 1 {
                vec![client.get_id().await?]
            } else {
                client.get_ids(count).await?
            };
            let lines: Vec<String> = ids.iter().map(u64::to_string).collect();
            println!("{}", lines.join("\n"));
            Ok(())
        }
        Command::Decode { ids } => {
            for id in ids {
                let parts = IdParts::decompose(id).with_context(|| format!("decode {id}"))?;
                println!("{id}: {parts}");
            }
            Ok(())
        }
        Command::Bench {
            addr,
            concurrency,
            duration,
            batch,
            connections,
            tls,
        } => {
            if concurrency == 0 || batch == 0 {
                bail!("--concurrency and --batch must be at least 1");
            }
            let settings = BenchSettings {
                addr,
                concurrency,
                duration,
                batch,
                connections,
                tls: tls.files(),
            };
            println!("{}", bench::run(settings).await?);
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let shutdown = CancellationToken::new();
    if let Some(addr) = config.metrics_listen {
        const BUCKETS: &[f64] = &[
            0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 0.5,
        ];
        daemon::metrics::install(addr, BUCKETS, shutdown.clone()).await?;
        snowflake::service::describe_metrics();
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen on {}", config.listen))?;
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let clock = Arc::new(SystemClock::with_offset(args.clock_offset_ms));
    server::run(listener, config, clock, shutdown).await?;
    Ok(())
}

/// Cancels `shutdown` on Ctrl-C or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_serve_flags_keys_and_variables_match() {
        let command = Cli::command();
        let serve = command.find_subcommand("serve").expect("serve");
        // Deliberately a flag only: `config` names the file; `no-metrics` is
        // `metrics-listen = "off"` in the file.
        let problems = daemon::config::coverage_problems(
            serve,
            &daemon::config::keys::<Config>(),
            "SNOWFLAKE",
            &["config", "no-metrics"],
        );
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn every_argument_has_help() {
        let missing = daemon::config::undocumented_args(&Cli::command());
        assert!(missing.is_empty(), "{missing:#?}");
    }

    #[test]
    fn no_metrics_and_off_turn_metrics_off() {
        let parse = |args: &[&str]| match Cli::try_parse_from(args).expect("parses").command {
            Command::Serve(serve) => serve.config().expect("valid"),
            _ => unreachable!("serve"),
        };
        let off = parse(&[
            "snowflake",
            "serve",
            "--worker-id",
            "1",
            "--metrics-listen",
            "off",
        ]);
        assert_eq!(off.metrics_listen, None);
        let none = parse(&["snowflake", "serve", "--worker-id", "1", "--no-metrics"]);
        assert_eq!(none.metrics_listen, None);
        let threads =
            Cli::try_parse_from(["snowflake", "serve", "--worker-id", "1", "--threads", "0"])
                .expect("parses");
        let Command::Serve(serve) = threads.command else {
            unreachable!("serve")
        };
        let err = serve.config().expect_err("no threads");
        assert!(err.to_string().contains("threads"), "{err}");
    }
}
