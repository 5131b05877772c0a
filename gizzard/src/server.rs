//! A Gizzard proxy's moving parts, started together: the nameserver and its routing snapshot
//! (polled for changes), the job queue and its workers, the shard router and the writer, and
//! the admin service. The application (T-Bird) serves its own API next to them.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    db::{Database, DbError},
    manager::{AdminTokens, Manager, ManagerParts},
    migrate::{
        self, MigrationSettings, MigrationStore, Migrations, Migrator, StoreError,
        anti_entropy::{self, AntiEntropy, AntiEntropySettings, SweepError, SweepStore},
    },
    nameserver::{
        DEFAULT_POLL_INTERVAL, NameServer, NameServerError, Routing, ServerIdentity,
        routing::DEFAULT_LEASE,
    },
    scheduler::{
        ClaimedJob, JobFailure, JobFuture, JobQueue, JobRunner, QueueError, WorkerSettings, Workers,
    },
    shards::{
        PhysicalShard, Registry, ShardRouter, WriteOp, Writer, retire, retire::Retirement,
        write::DEFAULT_LEAF_TIMEOUT,
    },
    topology::TopologyService,
};

/// How a proxy runs. Its `Debug` form shows no token and no password.
#[derive(Clone)]
pub struct ProxySettings {
    /// The nameserver database: `mysql://...` or `sqlite://PATH`.
    pub nameserver_url: String,
    /// Deadline of each nameserver and shard database operation.
    pub db_timeout: Duration,
    /// Deadline of a write on one replica, after which it is queued for retry.
    pub leaf_timeout: Duration,
    /// How often the routing is confirmed with the nameserver (and reloaded when it moved).
    pub poll_interval: Duration,
    /// How long a confirmation lets this server acknowledge writes: past it, without a newer
    /// one, writes are refused. Migrations wait at most this (plus a margin) for a server
    /// that stopped answering.
    pub routing_lease: Duration,
    /// How long a leaf deleted from the topology keeps its (fenced) tables.
    pub retired_grace: Duration,
    /// The job workers.
    pub workers: WorkerSettings,
    /// The bearer token every admin call must carry once set (none: every caller is allowed).
    pub admin_token: Option<String>,
    /// A bearer token that allows the admin calls that change nothing; needs `admin_token`.
    pub read_only_token: Option<String>,
    /// This server's name, reported by `gizzmo ping` and `gizzmo servers`.
    pub server_name: String,
    /// Where this server's ShardManager answers, as registered for `gizzmo ping`.
    pub advertise_addr: String,
    /// How migrations run in this server's workers.
    pub migrations: MigrationSettings,
    /// How often replica pairs are swept and repaired in the background, and how fast.
    pub anti_entropy: AntiEntropySettings,
}

impl std::fmt::Debug for ProxySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |token: &Option<String>| token.as_ref().map(|_| "***");
        f.debug_struct("ProxySettings")
            .field(
                "nameserver_url",
                &crate::db::text::redact(&self.nameserver_url),
            )
            .field("db_timeout", &self.db_timeout)
            .field("leaf_timeout", &self.leaf_timeout)
            .field("poll_interval", &self.poll_interval)
            .field("routing_lease", &self.routing_lease)
            .field("retired_grace", &self.retired_grace)
            .field("workers", &self.workers)
            .field("admin_token", &set(&self.admin_token))
            .field("read_only_token", &set(&self.read_only_token))
            .field("server_name", &self.server_name)
            .field("advertise_addr", &self.advertise_addr)
            .field("migrations", &self.migrations)
            .field("anti_entropy", &self.anti_entropy)
            .finish()
    }
}

impl ProxySettings {
    /// Returns settings with defaults for everything but the nameserver.
    pub fn new(nameserver_url: impl Into<String>) -> Self {
        Self {
            nameserver_url: nameserver_url.into(),
            db_timeout: crate::db::DEFAULT_TIMEOUT,
            leaf_timeout: DEFAULT_LEAF_TIMEOUT,
            poll_interval: DEFAULT_POLL_INTERVAL,
            routing_lease: DEFAULT_LEASE,
            retired_grace: retire::DEFAULT_GRACE,
            workers: WorkerSettings::default(),
            admin_token: None,
            read_only_token: None,
            server_name: "gizzard".into(),
            advertise_addr: String::new(),
            migrations: MigrationSettings::default(),
            anti_entropy: AntiEntropySettings::default(),
        }
    }

    /// Returns the tokens the admin service accepts, or why they cannot be used.
    pub fn admin_tokens(&self) -> Result<AdminTokens, StartError> {
        AdminTokens::new(self.admin_token.clone(), self.read_only_token.clone())
            .map_err(StartError::Settings)
    }

    /// Checks that the settings can run together.
    pub fn validate(&self) -> Result<(), StartError> {
        self.admin_tokens()?;
        if self.routing_lease < self.poll_interval * 2 {
            return Err(StartError::Settings(format!(
                "routing-lease ({:?}) must be at least twice the poll interval ({:?}), or every \
                 late poll would stop writes",
                self.routing_lease, self.poll_interval
            )));
        }
        Ok(())
    }
}

/// Why a proxy could not start. It ends the process, whose exit message prints the chain of
/// causes, so each variant states the step that failed and holds the cause as its source.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Settings(String),
    #[error("open nameserver database")]
    Database(#[from] DbError),
    #[error("open nameserver")]
    NameServer(#[from] NameServerError),
    #[error("open job queue")]
    Queue(#[from] QueueError),
    #[error("open migrations table")]
    Migrations(#[from] StoreError),
    #[error("open anti-entropy table")]
    Sweeps(#[from] SweepError),
}

/// A running proxy for physical shards `S` and writes `W`.
pub struct Proxy<S, W> {
    pub nameserver: NameServer,
    pub routing: Arc<Routing>,
    pub queue: JobQueue,
    pub router: Arc<ShardRouter<S>>,
    pub writer: Arc<Writer<S, W>>,
    pub migrations: MigrationStore,
    pub sweeps: SweepStore,
    settings: ProxySettings,
    tokens: AdminTokens,
    tasks: Vec<JoinHandle<()>>,
}

impl<S, W> std::fmt::Debug for Proxy<S, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<S: PhysicalShard, W: WriteOp<S>> Proxy<S, W> {
    /// Opens the nameserver and the queue, loads the routing snapshot, and starts the poller
    /// and the job workers, which run write retries and the `runners` given (by job type)
    /// until `shutdown`.
    pub async fn start(
        settings: ProxySettings,
        registry: Registry<S>,
        runners: HashMap<String, Arc<dyn JobRunner>>,
        shutdown: CancellationToken,
    ) -> Result<Self, StartError> {
        settings.validate()?;
        let tokens = settings.admin_tokens()?;
        let db = Database::open(&settings.nameserver_url, settings.db_timeout).await?;
        let nameserver = NameServer::open(db.clone()).await?;
        let queue = JobQueue::open(db.clone()).await?;
        let migrations = MigrationStore::open(db.clone()).await?;
        let sweeps = SweepStore::open(db).await?;
        let identity = ServerIdentity::new(&settings.server_name, &settings.advertise_addr);
        let routing =
            Arc::new(Routing::start(nameserver.clone(), identity, settings.routing_lease).await?);
        tracing::info!(
            server = routing.identity().id,
            version = routing.current().version,
            lease = ?settings.routing_lease,
            "registered in the nameserver"
        );
        let poller = routing
            .clone()
            .spawn_poller(settings.poll_interval, shutdown.clone());
        let router = Arc::new(ShardRouter::new(
            routing.clone(),
            registry,
            settings.db_timeout,
        ));
        let writer = Arc::new(Writer::new(
            router.clone(),
            queue.clone(),
            settings.leaf_timeout,
        ));
        let migrator = Migrator::new(
            routing.clone(),
            router.clone(),
            queue.clone(),
            migrations.clone(),
            settings.migrations.clone(),
        );
        let anti_entropy = Arc::new(AntiEntropy::new(
            router.clone(),
            queue.clone(),
            sweeps.clone(),
            settings.anti_entropy.clone(),
            settings.migrations.tuning.clone(),
        ));
        let mut dispatch = Dispatch { runners };
        dispatch
            .runners
            .insert(anti_entropy::JOB_TYPE.to_owned(), anti_entropy.clone());
        dispatch.runners.insert(
            W::JOB_TYPE.to_owned(),
            Arc::new(WriteRetries(writer.clone())),
        );
        dispatch
            .runners
            .insert(migrate::JOB_TYPE.to_owned(), Arc::new(migrator));
        let workers = Workers::spawn(
            queue.clone(),
            Arc::new(dispatch),
            settings.workers.clone(),
            shutdown.clone(),
        );
        let sweeper = Retirement::new(router.clone(), settings.retired_grace)
            .spawn(settings.poll_interval * 2, shutdown.clone());
        let mut tasks = vec![poller, workers, sweeper];
        tasks.extend(anti_entropy.spawn_planner(settings.poll_interval, shutdown));
        Ok(Self {
            nameserver,
            routing,
            queue,
            router,
            writer,
            migrations,
            settings,
            tokens,
            sweeps,
            tasks,
        })
    }

    /// Returns the settings the proxy runs with.
    pub fn settings(&self) -> &ProxySettings {
        &self.settings
    }

    /// Returns the topology service of this proxy: changes that create new leaves' tables
    /// on this proxy's hosts and reload its routing.
    pub fn topology(&self) -> TopologyService {
        TopologyService::for_router(self.router.clone())
    }

    /// Returns the admin service of this proxy.
    pub fn manager(&self) -> Manager {
        let topology = self.topology();
        let migrations = Migrations::new(
            topology.clone(),
            self.migrations.clone(),
            self.queue.clone(),
            self.sweeps.clone(),
        );
        let parts = ManagerParts {
            topology,
            migrations,
            queue: self.queue.clone(),
        };
        Manager::new(
            parts,
            self.tokens.clone(),
            self.settings.server_name.clone(),
        )
    }

    /// Waits for the poller, the workers and the retirement sweep to stop after shutdown was
    /// cancelled; the poller leaves the server registry once the writes in flight are done.
    pub async fn stopped(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Runs each job with the runner of its type.
struct Dispatch {
    runners: HashMap<String, Arc<dyn JobRunner>>,
}

impl JobRunner for Dispatch {
    fn run<'a>(&'a self, job: &'a ClaimedJob) -> JobFuture<'a> {
        match self.runners.get(&job.job_type) {
            Some(runner) => runner.run(job),
            // Counted: after the error limit it parks as bad, where an operator sees it.
            None => Box::pin(async move {
                Err(JobFailure::counted(format!(
                    "no runner for job type {:?} on this server",
                    job.job_type
                )))
            }),
        }
    }

    fn timeout(&self, job: &ClaimedJob) -> Option<Duration> {
        self.runners
            .get(&job.job_type)
            .and_then(|runner| runner.timeout(job))
    }
}

/// Runs write retries.
struct WriteRetries<S, W>(Arc<Writer<S, W>>);

impl<S: PhysicalShard, W: WriteOp<S>> JobRunner for WriteRetries<S, W> {
    fn run<'a>(&'a self, job: &'a ClaimedJob) -> JobFuture<'a> {
        Box::pin(async move {
            self.0.retry(job).await.map_err(|err| JobFailure {
                counts: err.counts_as_failure(),
                message: err.to_string(),
            })
        })
    }
}
