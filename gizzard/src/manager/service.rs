//! [`Manager`]: the `gizzard.v1.ShardManager` service. Each handler decodes its request
//! ([`super::convert`]), calls [`TopologyService`], [`Migrations`] or the job queue, and encodes
//! the answer; errors become statuses through [`super::status`].

use proto::gizzard::v1::{self as pb, shard_manager_server::ShardManager};
use tonic::{Request, Response, Status};

use super::{
    auth::{AdminTokens, Guarded},
    convert,
};
use crate::{
    migrate::Migrations,
    scheduler::{JobFilter, JobQueue, RetryTarget},
    topology::{RoutingStatus, TopologyService},
};

/// The most jobs one `ListJobs` call returns.
pub const MAX_LIST_JOBS: u64 = 10_000;

/// Serves the admin API of one proxy.
#[derive(Clone)]
pub struct Manager {
    topology: TopologyService,
    migrations: Migrations,
    queue: JobQueue,
    tokens: AdminTokens,
    server_name: String,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// The services a [`Manager`] serves.
#[derive(Clone, Debug)]
pub struct ManagerParts {
    pub topology: TopologyService,
    pub migrations: Migrations,
    pub queue: JobQueue,
}

impl Manager {
    /// Returns the service; with an admin token in `tokens`, every call must carry
    /// `authorization: Bearer <token>` (checked by [`Manager::into_server`]).
    pub fn new(parts: ManagerParts, tokens: AdminTokens, server_name: String) -> Self {
        let ManagerParts {
            topology,
            migrations,
            queue,
        } = parts;
        Self {
            topology,
            migrations,
            queue,
            tokens,
            server_name,
        }
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

    fn version_response(&self, status: RoutingStatus) -> pb::GetVersionResponse {
        pb::GetVersionResponse {
            stored_version: status.stored_version,
            routing_version: status.routing_version,
            server: self.server_name.clone(),
            lease_valid: status.lease_holds,
            confirmed_age_ms: status
                .confirmed_age
                .map_or(u64::MAX, |age| age.as_millis() as u64),
            server_id: status.server_id,
        }
    }

    async fn queue_status(&self) -> Result<Response<pb::QueueStatus>, Status> {
        let paused = self.queue.paused().await?;
        let depth = self.queue.depth().await?;
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
        let topology = self.topology.dump().await?;
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
        let version = self.topology.apply(&changes).await?;
        Ok(Response::new(pb::ApplyResponse { version }))
    }

    async fn lookup(
        &self,
        request: Request<pb::LookupRequest>,
    ) -> Result<Response<pb::LookupResponse>, Status> {
        let pb::LookupRequest { table_id, key } = request.into_inner();
        let lookup = self.topology.lookup(table_id, key)?;
        Ok(Response::new(pb::LookupResponse {
            hash: lookup.hash,
            forwarding: Some(pb::Forwarding {
                table_id,
                base_id: lookup.base_id,
                shard_id: lookup.root.to_string(),
            }),
            tree: Some(convert::tree_to_pb(&lookup.tree, 0)),
        }))
    }

    async fn tree(
        &self,
        request: Request<pb::TreeRequest>,
    ) -> Result<Response<pb::TreeNode>, Status> {
        let id = convert::shard_id("shard_id", &request.into_inner().shard_id)?;
        let tree = self.topology.tree(&id)?;
        Ok(Response::new(convert::tree_to_pb(&tree, 0)))
    }

    async fn get_version(
        &self,
        _: Request<pb::GetVersionRequest>,
    ) -> Result<Response<pb::GetVersionResponse>, Status> {
        let status = self.topology.status().await?;
        Ok(Response::new(self.version_response(status)))
    }

    async fn reload(
        &self,
        _: Request<pb::ReloadRequest>,
    ) -> Result<Response<pb::GetVersionResponse>, Status> {
        let status = self.topology.reload().await?;
        Ok(Response::new(self.version_response(status)))
    }

    async fn list_servers(
        &self,
        _: Request<pb::ListServersRequest>,
    ) -> Result<Response<pb::ListServersResponse>, Status> {
        let (servers, stored_version) = self.topology.servers().await?;
        Ok(Response::new(pb::ListServersResponse {
            servers: servers.iter().map(convert::server_to_pb).collect(),
            stored_version,
        }))
    }

    async fn list_sweeps(
        &self,
        _: Request<pb::ListSweepsRequest>,
    ) -> Result<Response<pb::ListSweepsResponse>, Status> {
        let sweeps = self.migrations.sweeps().await?;
        Ok(Response::new(pb::ListSweepsResponse {
            sweeps: sweeps.iter().map(convert::sweep_to_pb).collect(),
        }))
    }

    async fn list_retired(
        &self,
        _: Request<pb::ListRetiredRequest>,
    ) -> Result<Response<pb::ListRetiredResponse>, Status> {
        let retired = self.topology.retired().await?;
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
        let jobs = self.queue.list(&filter).await?;
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
        let count = self.queue.retry_now(&target).await?;
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
            let count = self.queue.purge_ids(&ids).await?;
            return Ok(Response::new(pb::CountResponse { count }));
        }
        if filter.state.is_none() && filter.priority.is_none() && filter.shard.is_none() {
            return Err(Status::invalid_argument(
                "purge needs ids, a state, a priority or a shard: refusing to purge every job",
            ));
        }
        let count = self.queue.purge(&filter).await?;
        Ok(Response::new(pb::CountResponse { count }))
    }

    async fn pause_jobs(
        &self,
        request: Request<pb::QueueControlRequest>,
    ) -> Result<Response<pb::QueueStatus>, Status> {
        for priority in priorities(request.into_inner().priority)? {
            self.queue.pause(priority).await?;
        }
        self.queue_status().await
    }

    async fn resume_jobs(
        &self,
        request: Request<pb::QueueControlRequest>,
    ) -> Result<Response<pb::QueueStatus>, Status> {
        for priority in priorities(request.into_inner().priority)? {
            self.queue.resume(priority).await?;
        }
        self.queue_status().await
    }

    async fn start_migration(
        &self,
        request: Request<pb::StartMigrationRequest>,
    ) -> Result<Response<pb::Migration>, Status> {
        let request = convert::migration_request(request.into_inner())?;
        let started = self.migrations.start(request).await?;
        Ok(Response::new(convert::started_to_pb(&started)))
    }

    async fn get_migration(
        &self,
        request: Request<pb::GetMigrationRequest>,
    ) -> Result<Response<pb::Migration>, Status> {
        let tree = self.migrations.get(request.into_inner().id).await?;
        Ok(Response::new(convert::migration_tree_to_pb(&tree)))
    }

    async fn list_migrations(
        &self,
        request: Request<pb::ListMigrationsRequest>,
    ) -> Result<Response<pb::ListMigrationsResponse>, Status> {
        let pb::ListMigrationsRequest {
            running_only,
            limit,
        } = request.into_inner();
        let migrations = self.migrations.list(running_only, limit).await?;
        Ok(Response::new(pb::ListMigrationsResponse {
            migrations: migrations.iter().map(convert::migration_to_pb).collect(),
        }))
    }

    async fn cancel_migration(
        &self,
        request: Request<pb::GetMigrationRequest>,
    ) -> Result<Response<pb::Migration>, Status> {
        let tree = self.migrations.cancel(request.into_inner().id).await?;
        Ok(Response::new(convert::migration_tree_to_pb(&tree)))
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
