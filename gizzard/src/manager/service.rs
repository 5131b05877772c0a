//! [`Manager`]: the `gizzard.v1.ShardManager` service over the nameserver, this server's
//! routing and the job queue.

use std::{future::Future, pin::Pin, sync::Arc};

use proto::gizzard::v1::{self as pb, shard_manager_server::ShardManager};
use tonic::{Request, Response, Status};

use super::{
    auth::{AdminTokens, Guarded},
    convert,
};
use crate::{
    migrate::{MigrationStore, anti_entropy::SweepStore},
    nameserver::{
        Change, Host, NameServer, NameServerError, Routing, ShardInfo, ShardTypes, TopologyError,
        hash,
    },
    scheduler::{JobFilter, JobQueue, QueueError, RetryTarget},
    shards::{PhysicalShard, ShardRouter},
};

/// The most jobs one `ListJobs` call returns.
pub const MAX_LIST_JOBS: u64 = 10_000;

/// Creates the tables of new leaf shards on their hosts; the proxy's shard router is one.
pub trait Materializer: Send + Sync + 'static {
    /// Creates the tables of leaf `info` on `host` when missing.
    fn materialize<'a>(
        &'a self,
        info: &'a ShardInfo,
        host: &'a Host,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

impl<S: PhysicalShard> Materializer for ShardRouter<S> {
    fn materialize<'a>(
        &'a self,
        info: &'a ShardInfo,
        host: &'a Host,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            ShardRouter::materialize(self, info, host)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// Serves the admin API of one proxy.
#[derive(Clone)]
pub struct Manager {
    pub(super) nameserver: NameServer,
    routing: Arc<Routing>,
    pub(super) queue: JobQueue,
    pub(super) migrations: MigrationStore,
    sweeps: SweepStore,
    types: ShardTypes,
    materializer: Arc<dyn Materializer>,
    tokens: AdminTokens,
    server_name: String,
}

impl Manager {
    fn version_response(
        &self,
        stored_version: u64,
        routing_version: u64,
    ) -> pb::GetVersionResponse {
        pb::GetVersionResponse {
            stored_version,
            routing_version,
            server: self.server_name.clone(),
            lease_valid: self.routing.lease_holds(),
            confirmed_age_ms: self
                .routing
                .confirmed_age()
                .map_or(u64::MAX, |age| age.as_millis() as u64),
            server_id: self.routing.identity().id.clone(),
        }
    }
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// What a [`Manager`] works on.
#[derive(Clone)]
pub struct ManagerParts {
    pub nameserver: NameServer,
    pub routing: Arc<Routing>,
    pub queue: JobQueue,
    pub migrations: MigrationStore,
    pub sweeps: SweepStore,
    pub types: ShardTypes,
    pub materializer: Arc<dyn Materializer>,
}

impl Manager {
    /// Returns the service; with an admin token in `tokens`, every call must carry
    /// `authorization: Bearer <token>` (checked by [`Manager::into_server`]).
    pub fn new(parts: ManagerParts, tokens: AdminTokens, server_name: String) -> Self {
        let ManagerParts {
            nameserver,
            routing,
            queue,
            migrations,
            sweeps,
            types,
            materializer,
        } = parts;
        Self {
            nameserver,
            routing,
            queue,
            migrations,
            sweeps,
            types,
            materializer,
            tokens,
            server_name,
        }
    }

    /// Creates the tables of the leaf shards a batch creates, before the batch is applied,
    /// so a shard never routes writes to a table that does not exist.
    async fn materialize_new_leaves(&self, changes: &[Change]) -> Result<(), Status> {
        let leaves: Vec<&ShardInfo> = changes
            .iter()
            .filter_map(|change| match change {
                Change::CreateShard(info) if self.types.is_leaf(&info.class_name) => Some(info),
                _ => None,
            })
            .collect();
        if leaves.is_empty() {
            return Ok(());
        }
        let topology = self.nameserver.load().await.map_err(nameserver_status)?;
        for info in leaves {
            let host = changes
                .iter()
                .find_map(|change| match change {
                    Change::SetHost(host) if host.name == info.id.hostname => Some(host),
                    _ => None,
                })
                .or_else(|| topology.hosts.get(&info.id.hostname));
            // An unknown host is left to validation, which names it.
            if let Some(host) = host {
                self.materializer
                    .materialize(info, host)
                    .await
                    .map_err(|e| {
                        Status::unavailable(format!("create the tables of shard {}: {e}", info.id))
                    })?;
            }
        }
        Ok(())
    }

    /// Returns the tonic server for this service behind its token check, which runs on a
    /// request's headers before its body is decoded. Serve only this: the bare
    /// `ShardManagerServer` checks no token.
    pub fn into_server(self) -> Guarded<pb::shard_manager_server::ShardManagerServer<Self>> {
        let tokens = self.tokens.clone();
        // Large batches (tens of thousands of forwardings) exceed tonic's 4 MiB default.
        let server = pb::shard_manager_server::ShardManagerServer::new(self)
            .max_decoding_message_size(64 << 20);
        Guarded::new(server, tokens)
    }
}

pub(super) fn nameserver_status(err: NameServerError) -> Status {
    match &err {
        // Requests that could never be right as sent: the caller must change them.
        NameServerError::Rejected {
            source: TopologyError::HostHoldsShards { .. },
            ..
        }
        | NameServerError::Invalid(
            TopologyError::MixedClasses { .. } | TopologyError::InvalidHost { .. },
        ) => Status::invalid_argument(err.to_string()),
        NameServerError::Rejected { .. } | NameServerError::Invalid(_) => {
            Status::failed_precondition(err.to_string())
        }
        NameServerError::MaybeApplied(_) => Status::deadline_exceeded(err.to_string()),
        NameServerError::Corrupt { .. } => Status::internal(err.to_string()),
        NameServerError::Db(_) | NameServerError::Unsettled(_) => {
            Status::unavailable(err.to_string())
        }
    }
}

pub(super) fn queue_status(err: QueueError) -> Status {
    match &err {
        QueueError::InvalidJob(_) | QueueError::Parse(_) => {
            Status::invalid_argument(err.to_string())
        }
        QueueError::MaybeApplied { .. } => Status::deadline_exceeded(err.to_string()),
        _ => Status::unavailable(err.to_string()),
    }
}

fn topology_status(err: TopologyError) -> Status {
    Status::not_found(err.to_string())
}

fn job_filter(state: i32, priority: i32, shard: String, limit: u32) -> Result<JobFilter, Status> {
    Ok(JobFilter {
        state: convert::job_state(state)?,
        priority: convert::priority(priority)?,
        shard: (!shard.is_empty()).then_some(shard),
        limit: Some(if limit == 0 {
            100
        } else {
            u64::from(limit).min(MAX_LIST_JOBS)
        }),
    })
}

#[tonic::async_trait]
impl ShardManager for Manager {
    async fn dump(&self, _: Request<pb::DumpRequest>) -> Result<Response<pb::Topology>, Status> {
        let topology = self.nameserver.load().await.map_err(nameserver_status)?;
        Ok(Response::new(convert::topology_to_pb(&topology)))
    }

    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let changes = request
            .into_inner()
            .changes
            .into_iter()
            .enumerate()
            .map(|(i, c)| convert::change(i, c))
            .collect::<Result<Vec<_>, _>>()?;
        if changes.is_empty() {
            return Err(Status::invalid_argument("changes is empty"));
        }
        self.materialize_new_leaves(&changes).await?;
        let version = self
            .nameserver
            .apply(&changes, &self.types)
            .await
            .map_err(nameserver_status)?;
        tracing::info!(version, changes = changes.len(), "topology changed");
        // This server sees its own change at once; the others within their poll interval.
        if let Err(err) = self.routing.reload().await {
            tracing::warn!(error = %err, "reload after a change failed; the poller will retry");
        }
        Ok(Response::new(pb::ApplyResponse { version }))
    }

    async fn lookup(
        &self,
        request: Request<pb::LookupRequest>,
    ) -> Result<Response<pb::LookupResponse>, Status> {
        let pb::LookupRequest { table_id, key } = request.into_inner();
        let snapshot = self.routing.current();
        let hash = hash(key);
        let root = snapshot.lookup(table_id, hash).ok_or_else(|| {
            Status::not_found(format!(
                "table {table_id} has no forwarding for hash {hash}"
            ))
        })?;
        let base_id = snapshot
            .topology
            .forwardings
            .range((table_id, i64::MIN)..=(table_id, hash))
            .next_back()
            .map_or(0, |(&(_, base), _)| base);
        let tree = snapshot.tree(root).map_err(topology_status)?;
        Ok(Response::new(pb::LookupResponse {
            hash,
            forwarding: Some(pb::Forwarding {
                table_id,
                base_id,
                shard_id: root.to_string(),
            }),
            tree: Some(convert::tree_to_pb(&tree, 0)),
        }))
    }

    async fn tree(
        &self,
        request: Request<pb::TreeRequest>,
    ) -> Result<Response<pb::TreeNode>, Status> {
        let id = convert::shard_id("shard_id", &request.into_inner().shard_id)?;
        let tree = self.routing.current().tree(&id).map_err(topology_status)?;
        Ok(Response::new(convert::tree_to_pb(&tree, 0)))
    }

    async fn get_version(
        &self,
        _: Request<pb::GetVersionRequest>,
    ) -> Result<Response<pb::GetVersionResponse>, Status> {
        let stored_version = self.nameserver.version().await.map_err(nameserver_status)?;
        Ok(Response::new(self.version_response(
            stored_version,
            self.routing.current().version,
        )))
    }

    async fn reload(
        &self,
        _: Request<pb::ReloadRequest>,
    ) -> Result<Response<pb::GetVersionResponse>, Status> {
        let routing_version = self.routing.reload().await.map_err(nameserver_status)?;
        let stored_version = self.nameserver.version().await.map_err(nameserver_status)?;
        Ok(Response::new(
            self.version_response(stored_version, routing_version),
        ))
    }

    async fn list_servers(
        &self,
        _: Request<pb::ListServersRequest>,
    ) -> Result<Response<pb::ListServersResponse>, Status> {
        let servers = self.nameserver.servers().await.map_err(nameserver_status)?;
        let stored_version = self.nameserver.version().await.map_err(nameserver_status)?;
        Ok(Response::new(pb::ListServersResponse {
            servers: servers.iter().map(convert::server_to_pb).collect(),
            stored_version,
        }))
    }

    async fn list_sweeps(
        &self,
        _: Request<pb::ListSweepsRequest>,
    ) -> Result<Response<pb::ListSweepsResponse>, Status> {
        let sweeps = self
            .sweeps
            .list()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(pb::ListSweepsResponse {
            sweeps: sweeps.iter().map(convert::sweep_to_pb).collect(),
        }))
    }

    async fn list_retired(
        &self,
        _: Request<pb::ListRetiredRequest>,
    ) -> Result<Response<pb::ListRetiredResponse>, Status> {
        let retired = self.nameserver.retired().await.map_err(nameserver_status)?;
        Ok(Response::new(pb::ListRetiredResponse {
            shards: retired.iter().map(convert::retired_to_pb).collect(),
        }))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let r = request.into_inner();
        let filter = job_filter(r.state, r.priority, r.shard, r.limit)?;
        let jobs = self.queue.list(&filter).await.map_err(queue_status)?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: jobs.iter().map(convert::job_to_pb).collect(),
        }))
    }

    async fn retry_jobs(
        &self,
        request: Request<pb::RetryJobsRequest>,
    ) -> Result<Response<pb::CountResponse>, Status> {
        let ids = job_ids(&request.into_inner().ids)?;
        let target = if ids.is_empty() {
            RetryTarget::AllBad
        } else {
            RetryTarget::Ids(ids)
        };
        let count = self.queue.retry_now(&target).await.map_err(queue_status)?;
        Ok(Response::new(pb::CountResponse { count }))
    }

    async fn purge_jobs(
        &self,
        request: Request<pb::PurgeJobsRequest>,
    ) -> Result<Response<pb::CountResponse>, Status> {
        let r = request.into_inner();
        let mut filter = job_filter(r.state, r.priority, r.shard, 0)?;
        filter.limit = None;
        if !r.ids.is_empty() {
            let ids = job_ids(&r.ids)?;
            let count = self.queue.purge_ids(&ids).await.map_err(queue_status)?;
            return Ok(Response::new(pb::CountResponse { count }));
        }
        if filter.state.is_none() && filter.priority.is_none() && filter.shard.is_none() {
            return Err(Status::invalid_argument(
                "purge needs ids, a state, a priority or a shard: refusing to purge every job",
            ));
        }
        let count = self.queue.purge(&filter).await.map_err(queue_status)?;
        Ok(Response::new(pb::CountResponse { count }))
    }

    async fn pause_jobs(
        &self,
        request: Request<pb::QueueControlRequest>,
    ) -> Result<Response<pb::QueueStatus>, Status> {
        for priority in priorities(request.into_inner().priority)? {
            self.queue.pause(priority).await.map_err(queue_status)?;
        }
        self.queue_status().await
    }

    async fn resume_jobs(
        &self,
        request: Request<pb::QueueControlRequest>,
    ) -> Result<Response<pb::QueueStatus>, Status> {
        for priority in priorities(request.into_inner().priority)? {
            self.queue.resume(priority).await.map_err(queue_status)?;
        }
        self.queue_status().await
    }

    async fn start_migration(
        &self,
        request: Request<pb::StartMigrationRequest>,
    ) -> Result<Response<pb::Migration>, Status> {
        self.start(request.into_inner()).await.map(Response::new)
    }

    async fn get_migration(
        &self,
        request: Request<pb::GetMigrationRequest>,
    ) -> Result<Response<pb::Migration>, Status> {
        self.migration(request.into_inner().id)
            .await
            .map(Response::new)
    }

    async fn list_migrations(
        &self,
        request: Request<pb::ListMigrationsRequest>,
    ) -> Result<Response<pb::ListMigrationsResponse>, Status> {
        self.list(request.into_inner()).await.map(Response::new)
    }

    async fn cancel_migration(
        &self,
        request: Request<pb::GetMigrationRequest>,
    ) -> Result<Response<pb::Migration>, Status> {
        self.cancel(request.into_inner().id)
            .await
            .map(Response::new)
    }

    async fn get_queue_status(
        &self,
        _: Request<pb::QueueStatusRequest>,
    ) -> Result<Response<pb::QueueStatus>, Status> {
        self.queue_status().await
    }
}

fn job_ids(ids: &[i64]) -> Result<Vec<u64>, Status> {
    ids.iter()
        .map(|&id| u64::try_from(id).ok().filter(|&id| id > 0))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Status::invalid_argument("ids: job ids are positive"))
}

/// One priority, or all of them when unspecified.
fn priorities(value: i32) -> Result<Vec<crate::scheduler::Priority>, Status> {
    Ok(match convert::priority(value)? {
        Some(p) => vec![p],
        None => crate::scheduler::Priority::ALL.to_vec(),
    })
}

impl Manager {
    async fn queue_status(&self) -> Result<Response<pb::QueueStatus>, Status> {
        let paused = self.queue.paused().await.map_err(queue_status)?;
        let depth = self.queue.depth().await.map_err(queue_status)?;
        Ok(Response::new(pb::QueueStatus {
            paused: paused
                .into_iter()
                .map(|p| convert::priority_to_pb(p) as i32)
                .collect(),
            depth: depth
                .into_iter()
                .map(|((priority, state), count)| pb::QueueDepth {
                    priority: convert::priority_to_pb(priority) as i32,
                    state: convert::job_state_to_pb(state) as i32,
                    count,
                })
                .collect(),
        }))
    }
}
