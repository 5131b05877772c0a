//! `gizzmo`, Gizzard's admin command line: reads and edits the topology, looks up keys,
//! checks that servers route the same version, and controls the job queue, all through a
//! proxy's `gizzard.v1.ShardManager` service. A crate of its own so that applications embedding
//! Gizzard do not build a command line; the binary only parses flags and calls [`run`].
//!
//! - this module: the flags and commands ([`Cli`]).
//! - [`client`]: the connection, with a deadline on every call and the bearer token.
//! - [`plan`]: batches of changes built from a dump (new tables, wrapping and unwrapping),
//!   each sent as one atomic `Apply`.
//! - `commands`: what each command does; `migrations`: starting and watching migrations;
//!   `render`: tables, trees and JSON.

pub mod client;
mod commands;
mod migrations;
pub mod plan;
mod render;

use std::{io::Write, time::Duration};

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use gizzard::nameserver::{MAX_HASH, ShardId};
use proto::gizzard::v1 as pb;

/// The flags and command of one `gizzmo` run.
#[derive(Debug, Parser)]
#[command(
    name = "gizzmo",
    version,
    about = "Administers a Gizzard cluster through a proxy's ShardManager service",
    long_about = "Administers a Gizzard cluster through a proxy's ShardManager service: shards, \
                  links, forwardings and hosts, key lookups, routing versions and the job queue. \
                  Every change is one atomic batch; the new topology version is printed."
)]
pub struct Cli {
    /// ShardManager address of a proxy, HOST:PORT.
    #[arg(
        long,
        global = true,
        env = "GIZZMO_ADDR",
        default_value = "127.0.0.1:7920"
    )]
    pub addr: String,
    /// Admin (or read-only) token, sent as `authorization: Bearer TOKEN`; a server with a
    /// token set needs one for every call.
    #[arg(long, global = true, env = "GIZZMO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the token (one line), so it appears in no command line or environment.
    #[arg(
        long,
        global = true,
        env = "GIZZMO_TOKEN_FILE",
        conflicts_with = "token",
        value_name = "PATH"
    )]
    pub token_file: Option<std::path::PathBuf>,
    /// Print JSON instead of tables and trees.
    #[arg(long, global = true)]
    pub json: bool,
    /// Deadline for connecting and for each call, e.g. 10s or 500ms.
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// PEM bundle of the CAs to trust instead of the system's. TLS is used for an https://
    /// address, or for HOST:PORT with this or --tls-cert.
    #[arg(long, global = true, env = "GIZZMO_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// PEM client certificate, for a server that requires one (implies TLS).
    #[arg(long, global = true, env = "GIZZMO_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, global = true, env = "GIZZMO_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// What `gizzmo` does.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the hosts shards live on, with their urls (passwords hidden) and weights.
    Hosts,
    /// List the tables that have forwardings, with how many each has.
    Tables,
    /// List forwardings: table, base id and the root shard of the range.
    Forwardings {
        /// Only this table.
        #[arg(long)]
        table: Option<i32>,
    },
    /// List shards with their class and busy state.
    Shards {
        /// Only shards on this host (`localhost` lists the virtual routing nodes).
        #[arg(long)]
        host: Option<String>,
    },
    /// Draw the shard trees of every forwarding of a table, or the tree under one shard.
    #[command(group(ArgGroup::new("what").required(true).args(["table", "shard"])))]
    Tree {
        /// The table whose forwardings to draw.
        table: Option<i32>,
        /// Draw only the tree under this shard (HOST/PREFIX).
        #[arg(long)]
        shard: Option<ShardId>,
    },
    /// Show where a key lives: its hash, its forwarding and the tree under it.
    Lookup {
        /// The table.
        table: i32,
        /// The key (for T-Bird, a tweet id or a user id).
        key: u64,
    },
    /// Create a table: N ranges spread evenly over the hash space, each a ReplicatingShard
    /// over one leaf per replica host, in one atomic batch.
    CreateTable(CreateTableArgs),
    /// Add a host shards can live on, or update the one of that name (a new url for a host
    /// that holds shards needs --force).
    AddHost {
        /// Host name, as used in shard ids (HOST/PREFIX).
        name: String,
        /// Connection url: mysql://USER:PASSWORD@HOST:PORT/DB or sqlite://PATH.
        url: String,
        /// Weight of this host for reads when rebalancing.
        #[arg(long, default_value_t = 1)]
        read_weight: u32,
        /// Weight of this host for writes when rebalancing.
        #[arg(long, default_value_t = 1)]
        write_weight: u32,
        /// Change the url of a host that holds shards (their tables must be at the new url).
        #[arg(long)]
        force: bool,
    },
    /// Remove a host that holds no shards.
    RemoveHost {
        /// Host name.
        name: String,
    },
    /// Create a shard: a leaf (its table is created on its host) or a routing node.
    CreateShard {
        /// Shard id, HOST/PREFIX (routing nodes use the host `localhost`).
        id: ShardId,
        /// Class: a registered leaf class, or ReplicatingShard, ReadOnlyShard, WriteOnlyShard,
        /// BlockedShard, BlackHoleShard.
        class: String,
    },
    /// Delete a shard that has no links and no forwardings (a leaf's table is renamed once
    /// every server agrees, and dropped after the grace period; see `gizzmo retired`).
    DeleteShard {
        /// Shard id, HOST/PREFIX.
        id: ShardId,
    },
    /// Link a child under a parent, or change the weight of an existing link.
    Link {
        /// The parent shard.
        up: ShardId,
        /// The child shard.
        down: ShardId,
        /// Read weight of the child under a ReplicatingShard; 0 = written, never read.
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    /// Remove the link between a parent and a child.
    Unlink {
        /// The parent shard.
        up: ShardId,
        /// The child shard.
        down: ShardId,
    },
    /// Put a wrapper node above a shard, taking over its parent links and forwardings.
    Wrap {
        /// The wrapper: read-only, write-only, blocked or black-hole (or the class names).
        #[arg(value_enum)]
        wrapper: plan::Wrapper,
        /// The shard to wrap.
        shard: ShardId,
        /// Id of the wrapper [default: localhost/<SHARD's prefix>_<wrapper>].
        #[arg(long)]
        id: Option<ShardId>,
    },
    /// Remove a wrapper node, putting its child back under its parents and forwardings.
    Unwrap {
        /// The wrapper shard.
        shard: ShardId,
    },
    /// Point the range of a table starting at a base id at a shard tree.
    SetForwarding {
        /// The table.
        table: i32,
        /// First hash of the range, 0 to 2^60-1, decimal or 0x hex.
        #[arg(value_parser = parse_base_id)]
        base_id: i64,
        /// Root shard of the range.
        shard: ShardId,
    },
    /// Remove the forwarding of a table at a base id.
    RemoveForwarding {
        /// The table.
        table: i32,
        /// Base id of the forwarding, decimal or 0x hex.
        #[arg(value_parser = parse_base_id)]
        base_id: i64,
    },
    /// Mark a shard busy (held by a migration).
    MarkBusy {
        /// Shard id, HOST/PREFIX.
        shard: ShardId,
    },
    /// Mark a shard idle (no longer busy).
    MarkIdle {
        /// Shard id, HOST/PREFIX.
        shard: ShardId,
    },
    /// Make the server at --addr reload its routing snapshot now.
    Reload,
    /// Show each server's name, stored and routing versions and lease; fail when one is
    /// unreachable, routes behind the nameserver or cannot confirm its routing.
    Ping {
        /// Server addresses, HOST:PORT [default: every server in the registry].
        addrs: Vec<String>,
    },
    /// List the servers in the registry: the routing version each confirmed and when; a
    /// stale one's lease is over (it acknowledges no writes and no migration waits for it).
    Servers,
    /// List the replica pairs anti-entropy sweeps: when each was last swept in full, what it
    /// repaired, and the sweep running now.
    Sweeps,
    /// List leaves removed from the topology whose tables wait to be fenced (once every
    /// server stopped routing to them) or dropped (after the grace period).
    Retired,
    /// Inspect and control the job queue.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Remove a replica (a leaf under a ReplicatingShard that keeps at least one other).
    RemoveReplica {
        /// The leaf, HOST/PREFIX (its table is renamed once every server agrees, and dropped
        /// after the grace period; see `gizzmo retired`).
        shard: ShardId,
    },
    #[command(flatten)]
    Migration(MigrationCommand),
}

/// Migrations: they run in the servers' job workers; these commands start them and watch.
#[derive(Debug, Subcommand)]
pub enum MigrationCommand {
    /// Move a replica to another host: copy behind a WriteOnly node, diff, cut over, remove
    /// the old one.
    Move {
        /// The leaf to move, HOST/PREFIX.
        shard: ShardId,
        /// The host to move it to.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        start: StartArgs,
    },
    /// Add a replica of a leaf's tree on another host, copied from that leaf.
    AddReplica {
        /// A leaf of the tree, HOST/PREFIX.
        shard: ShardId,
        /// The host of the new replica.
        #[arg(long)]
        on: String,
        #[command(flatten)]
        start: StartArgs,
    },
    /// Split a range: its upper part moves to a new tree on the same hosts.
    Split {
        /// The table.
        table: i32,
        /// Base id of the forwarding to split, decimal or 0x hex.
        #[arg(value_parser = parse_base_id)]
        base_id: i64,
        /// First hash of the moved part [default: the middle of the range].
        #[arg(long, value_parser = parse_base_id)]
        at: Option<i64>,
        #[command(flatten)]
        start: StartArgs,
    },
    /// Copy one leaf's rows into another (merging: newer versions and tombstones win).
    Copy {
        /// The leaf copied from.
        from: ShardId,
        /// The leaf copied into.
        to: ShardId,
        #[command(flatten)]
        start: StartArgs,
    },
    /// Compare two replicas by chunk checksums and list the keys that differ (exit 1 if any).
    Diff {
        /// One leaf.
        a: ShardId,
        /// The other leaf.
        b: ShardId,
        #[command(flatten)]
        start: StartArgs,
    },
    /// Make two replicas agree, rewriting only the keys that differ.
    Repair {
        /// One leaf.
        a: ShardId,
        /// The other leaf.
        b: ShardId,
        #[command(flatten)]
        start: StartArgs,
    },
    /// Even out leaves per host (by write weight) with moves run a few at a time; rerun it to
    /// follow a rebalance already running.
    #[command(args_conflicts_with_subcommands = true)]
    Rebalance {
        #[command(subcommand)]
        action: Option<RebalanceAction>,
        #[command(flatten)]
        args: RebalanceArgs,
    },
    /// Follow a migration until it ends.
    Watch {
        /// Migration id.
        id: u64,
    },
    /// Show a migration (a rebalance with its moves).
    #[command(name = "migration")]
    Show {
        /// Migration id.
        id: u64,
    },
    /// Stop a migration; before its cutover it is rolled back.
    Cancel {
        /// Migration id.
        id: u64,
    },
    /// List running migrations.
    #[command(name = "migrations")]
    List {
        /// List finished ones too.
        #[arg(long)]
        all: bool,
    },
}

/// `rebalance status` and `rebalance cancel`.
#[derive(Debug, Subcommand)]
pub enum RebalanceAction {
    /// Show the running rebalance and its moves.
    Status,
    /// Stop the running rebalance; moves before their cutover roll back.
    Cancel,
}

/// Flags of `rebalance`.
#[derive(Debug, Args)]
pub struct RebalanceArgs {
    /// Hosts to even out, comma-separated [default: all].
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Print the plan only.
    #[arg(long)]
    pub dry_run: bool,
    /// Moves running at once [default: 2].
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub max_copies: u32,
    /// Moves running at once that read from or write to one host [default: 1].
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub copies_per_host: u32,
    #[command(flatten)]
    pub start: StartArgs,
}

/// How a migration starts.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// Start it and return without watching.
    #[arg(long)]
    pub detach: bool,
    /// Copy at most this many rows per second per move [default: the servers' setting].
    #[arg(long)]
    pub rows_per_second: Option<u64>,
}

/// Flags of `create-table`.
#[derive(Debug, Args)]
pub struct CreateTableArgs {
    /// The table id.
    pub table: i32,
    /// Number of ranges (forwardings), 1 to 65536.
    #[arg(long)]
    pub shards: u32,
    /// Hosts each range gets a replica on, comma-separated.
    #[arg(long, required = true, value_delimiter = ',', num_args = 1..)]
    pub replicas: Vec<String>,
    /// Leaf class the application registered (for example KvShard or TweetShard).
    #[arg(long)]
    pub class: String,
    /// Table prefix of the shards [default: t<TABLE>]; range i uses <PREFIX>_<i:04>.
    #[arg(long)]
    pub prefix: Option<String>,
}

/// Which jobs a command takes: those matching every filter given.
#[derive(Debug, clap::Args)]
pub struct JobFilterArgs {
    /// Only jobs in this state.
    #[arg(long, value_enum)]
    pub state: Option<JobStateArg>,
    /// Only jobs of this priority.
    #[arg(long, value_enum)]
    pub priority: Option<PriorityArg>,
    /// Only jobs on this shard.
    #[arg(long)]
    pub shard: Option<String>,
}

/// Job queue commands.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, soonest first.
    List {
        #[command(flatten)]
        filter: JobFilterArgs,
        /// At most this many jobs (the server caps it at 10000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// Run jobs again now: the given ids, or every bad job when none are given.
    Retry {
        /// Job ids.
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        ids: Vec<i64>,
    },
    /// Delete jobs: by id, or every job matching a state, priority and shard.
    #[command(group(
        ArgGroup::new("which").required(true).multiple(true)
            .args(["ids", "state", "priority", "shard"])
    ))]
    Purge {
        /// Job ids, comma-separated or repeated.
        #[arg(
            long,
            num_args = 1..,
            value_delimiter = ',',
            conflicts_with_all = ["state", "priority", "shard"],
            value_parser = clap::value_parser!(i64).range(1..)
        )]
        ids: Vec<i64>,
        #[command(flatten)]
        filter: JobFilterArgs,
    },
    /// Stop workers from claiming jobs of a priority (every priority when none is given).
    Pause {
        /// The priority.
        #[arg(value_enum)]
        priority: Option<PriorityArg>,
    },
    /// Let workers claim jobs of a priority again (every priority when none is given).
    Resume {
        /// The priority.
        #[arg(value_enum)]
        priority: Option<PriorityArg>,
    },
    /// Show the queue's depth per priority and state, and the paused priorities.
    Status,
}

/// A job priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PriorityArg {
    /// Write retries.
    High,
    /// Maintenance.
    Low,
    /// Copy, diff and repair jobs of migrations.
    Copy,
}

impl PriorityArg {
    fn to_pb(self) -> pb::Priority {
        match self {
            PriorityArg::High => pb::Priority::High,
            PriorityArg::Low => pb::Priority::Low,
            PriorityArg::Copy => pb::Priority::Copy,
        }
    }
}

/// A job state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum JobStateArg {
    /// Waiting to run, or backing off after a failure.
    Ready,
    /// Past the error limit, parked for an operator.
    Bad,
}

impl JobStateArg {
    fn to_pb(self) -> pb::JobState {
        match self {
            JobStateArg::Ready => pb::JobState::Ready,
            JobStateArg::Bad => pb::JobState::Bad,
        }
    }
}

/// Parses a base id: decimal or `0x` hex, within `0..=2^60-1`.
fn parse_base_id(text: &str) -> Result<i64, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => i64::from_str_radix(&hex.replace('_', ""), 16),
        None => text.replace('_', "").parse(),
    };
    match parsed {
        Ok(value) if (0..=MAX_HASH).contains(&value) => Ok(value),
        _ => Err(format!(
            "base ids are integers from 0 to 2^60-1 ({MAX_HASH})"
        )),
    }
}

/// Runs one command, writing what it prints to `out`. Errors name what went wrong; a
/// server's refusal keeps its message and status code.
pub async fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    let Cli {
        addr,
        token,
        token_file,
        json,
        timeout,
        tls_ca,
        tls_cert,
        tls_key,
        command,
    } = cli;
    let token = match token_file {
        Some(path) => {
            Some(gizzard::manager::auth::read_token_file(&path).map_err(|e| anyhow::anyhow!(e))?)
        }
        None => token,
    };
    let global = commands::Global {
        addr,
        token,
        json,
        timeout,
        tls: edge::client::ClientTls {
            ca: tls_ca,
            cert: tls_cert,
            key: tls_key,
        },
    };
    commands::run(&global, command, out).await
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_flags_are_consistent_and_documented() {
        Cli::command().debug_assert();
        fn described(command: &clap::Command) {
            for sub in command.get_subcommands() {
                assert!(sub.get_about().is_some(), "{} has no help", sub.get_name());
                described(sub);
            }
        }
        described(&Cli::command());
        let missing = daemon::config::undocumented_args(&Cli::command());
        assert!(missing.is_empty(), "{missing:#?}");
    }

    #[test]
    fn base_ids_parse_in_decimal_and_hex() {
        assert_eq!(parse_base_id("0"), Ok(0));
        assert_eq!(parse_base_id("0x400000000000000"), Ok(1 << 58));
        assert_eq!(parse_base_id("1_000"), Ok(1000));
        assert!(parse_base_id("-1").is_err());
        assert!(parse_base_id("0x1000000000000000").is_err());
        assert!(parse_base_id("ten").is_err());
    }

    #[test]
    fn purge_needs_a_filter_and_ids_stand_alone() {
        let parse =
            |args: &[&str]| Cli::try_parse_from([&["gizzmo", "jobs", "purge"], args].concat());
        assert!(parse(&[]).is_err());
        assert!(parse(&["--ids", "1,2"]).is_ok());
        assert!(parse(&["--ids", "1", "--state", "bad"]).is_err());
        assert!(parse(&["--state", "bad", "--priority", "high"]).is_ok());
    }

    #[test]
    fn wrappers_take_short_and_class_names() {
        for (text, want) in [
            ("read-only", plan::Wrapper::ReadOnly),
            ("BlockedShard", plan::Wrapper::Blocked),
        ] {
            let cli = Cli::try_parse_from(["gizzmo", "wrap", text, "a/t"]).expect("parses");
            assert!(matches!(cli.command, Command::Wrap { wrapper, .. } if wrapper == want));
        }
        let err = Cli::try_parse_from(["gizzmo", "wrap", "read-only", "bad"]).expect_err("bad id");
        assert!(
            err.to_string()
                .contains("no '/' between hostname and table prefix"),
            "{err}"
        );
    }
}
