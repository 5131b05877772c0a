//! The gRPC status of every error Gizzard's services return, and of the shard errors an
//! application's own service passes on (T-Bird's does): [`GrpcCode`] gives each error type's
//! code in one `match`, composite errors defer to their parts, and each type has one
//! `From<Error> for Status` carrying its text. The table of conditions and codes is in
//! `docs/ARCHITECTURE.md` ("Errors and status codes").

use tonic::{Code, Status};

use crate::{
    migrate::{MigrationError, StoreError, anti_entropy::SweepError},
    nameserver::{NameServerError, TopologyError},
    scheduler::QueueError,
    shards::{ShardError, WriteError, router::RouteError},
    topology::TopologyServiceError,
};

/// The gRPC code of an error: the one place each error type's conditions meet their codes.
pub trait GrpcCode {
    /// Returns the code a client receives for this error.
    fn code(&self) -> Code;
}

/// Implements `From<E> for Status` from [`GrpcCode`] and the error's text.
macro_rules! status_from {
    ($($error:ty),* $(,)?) => {$(
        impl From<$error> for Status {
            fn from(err: $error) -> Self {
                Status::new(err.code(), err.to_string())
            }
        }
    )*};
}

status_from!(
    ShardError,
    RouteError,
    WriteError,
    QueueError,
    TopologyServiceError,
    MigrationError,
);

impl GrpcCode for ShardError {
    fn code(&self) -> Code {
        match self {
            Self::Unavailable { .. }
            | Self::Timeout { .. }
            | Self::Refused { .. }
            | Self::NotReadable { .. } => Code::Unavailable,
            Self::Query { .. } => Code::Internal,
        }
    }
}

impl GrpcCode for RouteError {
    fn code(&self) -> Code {
        match self {
            // Tables start at base id 0, so a hash without a forwarding means the table does
            // not exist: asking again will not help.
            Self::NoForwarding { .. } | Self::Topology(TopologyError::ShardNotFound(_)) => {
                Code::NotFound
            }
            // The snapshot was validated: a tree or host missing from it is a bug.
            Self::UnknownShard(_) | Self::Topology(_) | Self::UnknownHost { .. } => Code::Internal,
            Self::Host { .. } => Code::Unavailable,
            Self::Shard(err) => err.code(),
        }
    }
}

impl GrpcCode for WriteError {
    fn code(&self) -> Code {
        match self {
            Self::Route(err) => err.code(),
            // Writes are idempotent merges: retrying one that may have landed is safe.
            Self::NotDurable { .. } | Self::Unconfirmed(_) | Self::LeaseLapsed(_) => {
                Code::Unavailable
            }
        }
    }
}

impl GrpcCode for NameServerError {
    fn code(&self) -> Code {
        match self {
            // Batches that could never be right as sent: the caller must change them.
            Self::Rejected {
                reason: TopologyError::HostHoldsShards { .. },
                ..
            }
            | Self::Invalid(
                TopologyError::MixedClasses { .. } | TopologyError::InvalidHost { .. },
            ) => Code::InvalidArgument,
            Self::Rejected { .. } | Self::Invalid(_) => Code::FailedPrecondition,
            Self::MaybeApplied(_) => Code::DeadlineExceeded,
            Self::Corrupt { .. } => Code::Internal,
            Self::Db(_) | Self::Unsettled(_) => Code::Unavailable,
        }
    }
}

impl GrpcCode for QueueError {
    fn code(&self) -> Code {
        match self {
            Self::InvalidJob(_) | Self::Parse(_) => Code::InvalidArgument,
            Self::MaybeApplied { .. } => Code::DeadlineExceeded,
            Self::LeaseLost { .. } => Code::Aborted,
            Self::Db { .. } => Code::Unavailable,
            Self::InvalidOwner(_) | Self::BadRow(_) | Self::Encode { .. } | Self::Decode { .. } => {
                Code::Internal
            }
        }
    }
}

impl GrpcCode for StoreError {
    fn code(&self) -> Code {
        match self {
            Self::NotFound(_) => Code::NotFound,
            Self::NotRunning { .. } => Code::FailedPrecondition,
            Self::Lost(_) => Code::Aborted,
            Self::Corrupt { .. } => Code::Internal,
            Self::Db { .. } => Code::Unavailable,
        }
    }
}

impl GrpcCode for SweepError {
    fn code(&self) -> Code {
        match self {
            Self::Db(_) => Code::Unavailable,
            Self::Corrupt(_) => Code::Internal,
        }
    }
}

impl GrpcCode for TopologyServiceError {
    fn code(&self) -> Code {
        match self {
            Self::NoChanges => Code::InvalidArgument,
            Self::Materialize { cause, .. } => cause.code(),
            Self::NameServer(err) => err.code(),
            Self::Route(err) => err.code(),
        }
    }
}

impl GrpcCode for MigrationError {
    fn code(&self) -> Code {
        match self {
            Self::ShardNotFound { .. } => Code::NotFound,
            Self::NotALeaf { .. } | Self::SameShard | Self::ClassMismatch { .. } => {
                Code::InvalidArgument
            }
            Self::Plan(_) | Self::Finished { .. } => Code::FailedPrecondition,
            Self::NotQueued { cause, .. } => cause.code(),
            Self::Store(err) => err.code(),
            Self::Queue(err) => err.code(),
            Self::Topology(err) => err.code(),
            Self::Sweeps(err) => err.code(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use db::DbError;

    use super::*;
    use crate::{
        migrate::{PlanError, Status as MigrationStatus},
        nameserver::{RoutingLeaseError, ShardId},
    };

    fn id() -> ShardId {
        "h1/t1_0000".parse().expect("shard id")
    }

    fn db() -> DbError {
        DbError::Timeout(Duration::from_secs(1))
    }

    fn json_error() -> serde_json::Error {
        serde_json::from_str::<u8>("x").expect_err("not a number")
    }

    fn shard_errors() -> Vec<(ShardError, Code)> {
        let shard = || "h1/t1_0000".to_owned();
        vec![
            (
                ShardError::Unavailable {
                    shard: shard(),
                    reason: "refused".into(),
                },
                Code::Unavailable,
            ),
            (
                ShardError::Timeout {
                    shard: shard(),
                    after: Duration::from_secs(1),
                },
                Code::Unavailable,
            ),
            (
                ShardError::Refused {
                    shard: shard(),
                    reason: "read-only".into(),
                },
                Code::Unavailable,
            ),
            (
                ShardError::Query {
                    shard: shard(),
                    message: "syntax".into(),
                },
                Code::Internal,
            ),
            (
                ShardError::NotReadable { shard: shard() },
                Code::Unavailable,
            ),
        ]
    }

    fn route_errors() -> Vec<(RouteError, Code)> {
        let mut cases = vec![
            (
                RouteError::NoForwarding {
                    table_id: 9,
                    hash: 1,
                },
                Code::NotFound,
            ),
            (
                RouteError::Topology(TopologyError::ShardNotFound(id())),
                Code::NotFound,
            ),
            (RouteError::UnknownShard(id().to_string()), Code::Internal),
            (
                RouteError::Topology(TopologyError::Cycle(vec![id()])),
                Code::Internal,
            ),
            (
                RouteError::UnknownHost {
                    host: "h1".into(),
                    shard: id().to_string(),
                },
                Code::Internal,
            ),
            (
                RouteError::Host {
                    host: "h1".into(),
                    cause: db(),
                },
                Code::Unavailable,
            ),
        ];
        cases.extend(
            shard_errors()
                .into_iter()
                .map(|(err, code)| (RouteError::Shard(err), code)),
        );
        cases
    }

    fn queue_errors() -> Vec<(QueueError, Code)> {
        vec![
            (
                QueueError::Db {
                    action: "claim".into(),
                    cause: db(),
                },
                Code::Unavailable,
            ),
            (
                QueueError::MaybeApplied {
                    action: "enqueue".into(),
                    timeout: Duration::from_secs(1),
                },
                Code::DeadlineExceeded,
            ),
            (
                QueueError::LeaseLost {
                    id: 1,
                    owner: "w".into(),
                },
                Code::Aborted,
            ),
            (
                QueueError::InvalidJob("no type".into()),
                Code::InvalidArgument,
            ),
            (QueueError::Parse("priority".into()), Code::InvalidArgument),
            (QueueError::InvalidOwner(String::new()), Code::Internal),
            (QueueError::BadRow("state".into()), Code::Internal),
            (
                QueueError::Encode {
                    job_type: "t".into(),
                    cause: json_error(),
                },
                Code::Internal,
            ),
            (
                QueueError::Decode {
                    id: 1,
                    job_type: "t".into(),
                    cause: json_error(),
                },
                Code::Internal,
            ),
        ]
    }

    fn nameserver_errors() -> Vec<(NameServerError, Code)> {
        let rejected = |reason| NameServerError::Rejected { index: 0, reason };
        vec![
            (
                rejected(TopologyError::HostHoldsShards {
                    name: "h1".into(),
                    shards: 2,
                }),
                Code::InvalidArgument,
            ),
            (
                rejected(TopologyError::ShardNotFound(id())),
                Code::FailedPrecondition,
            ),
            (
                NameServerError::Invalid(TopologyError::MixedClasses {
                    table_id: 1,
                    first: Box::new(id()),
                    expected: "A".into(),
                    id: Box::new(id()),
                    class_name: "B".into(),
                }),
                Code::InvalidArgument,
            ),
            (
                NameServerError::Invalid(TopologyError::InvalidHost {
                    name: "h1".into(),
                    reason: "url".into(),
                }),
                Code::InvalidArgument,
            ),
            (
                NameServerError::Invalid(TopologyError::Cycle(vec![id()])),
                Code::FailedPrecondition,
            ),
            (
                NameServerError::MaybeApplied(Duration::from_secs(1)),
                Code::DeadlineExceeded,
            ),
            (NameServerError::Unsettled(3), Code::Unavailable),
            (
                NameServerError::Corrupt {
                    table: "gizzard_shards",
                    reason: "id".into(),
                },
                Code::Internal,
            ),
            (NameServerError::Db(db()), Code::Unavailable),
        ]
    }

    fn topology_errors() -> Vec<(TopologyServiceError, Code)> {
        let mut cases = vec![(TopologyServiceError::NoChanges, Code::InvalidArgument)];
        cases.extend(
            route_errors()
                .into_iter()
                .map(|(err, code)| (TopologyServiceError::Route(err), code)),
        );
        cases.extend(route_errors().into_iter().map(|(cause, code)| {
            let shard = Box::new(id());
            (TopologyServiceError::Materialize { shard, cause }, code)
        }));
        cases.extend(
            nameserver_errors()
                .into_iter()
                .map(|(err, code)| (TopologyServiceError::NameServer(err), code)),
        );
        cases
    }

    fn assert_codes<E: GrpcCode + std::fmt::Display>(cases: Vec<(E, Code)>)
    where
        Status: From<E>,
    {
        assert!(!cases.is_empty());
        for (err, code) in cases {
            let text = err.to_string();
            let status = Status::from(err);
            assert_eq!(status.code(), code, "{text}");
            assert_eq!(
                status.message(),
                text,
                "the status carries the error's text"
            );
        }
    }

    #[test]
    fn shard_errors_map_to_their_codes() {
        assert_codes(shard_errors());
    }

    #[test]
    fn route_errors_map_to_their_codes() {
        assert_codes(route_errors());
    }

    #[test]
    fn write_errors_map_to_their_codes() {
        let lease = RoutingLeaseError::Closed;
        let mut cases = vec![
            (
                WriteError::NotDurable {
                    reason: "queue down".into(),
                },
                Code::Unavailable,
            ),
            (WriteError::Unconfirmed(lease.clone()), Code::Unavailable),
            (WriteError::LeaseLapsed(lease), Code::Unavailable),
        ];
        cases.extend(
            route_errors()
                .into_iter()
                .map(|(err, code)| (WriteError::Route(err), code)),
        );
        assert_codes(cases);
    }

    #[test]
    fn queue_errors_map_to_their_codes() {
        assert_codes(queue_errors());
    }

    #[test]
    fn topology_errors_map_to_their_codes() {
        assert_codes(topology_errors());
    }

    #[test]
    fn migration_errors_map_to_their_codes() {
        let mut cases = vec![
            (
                MigrationError::ShardNotFound {
                    field: "shard",
                    id: id(),
                },
                Code::NotFound,
            ),
            (
                MigrationError::NotALeaf {
                    field: "a",
                    id: id(),
                    class_name: "ReplicatingShard".into(),
                },
                Code::InvalidArgument,
            ),
            (MigrationError::SameShard, Code::InvalidArgument),
            (
                MigrationError::ClassMismatch {
                    a: Box::new(id()),
                    a_class: "A".into(),
                    b: Box::new(id()),
                    b_class: "B".into(),
                },
                Code::InvalidArgument,
            ),
            (
                MigrationError::Plan(PlanError("no such host".into())),
                Code::FailedPrecondition,
            ),
            (
                MigrationError::Finished {
                    id: 3,
                    status: MigrationStatus::Done,
                },
                Code::FailedPrecondition,
            ),
            (
                MigrationError::Store(StoreError::NotFound(3)),
                Code::NotFound,
            ),
            (
                MigrationError::Store(StoreError::NotRunning {
                    id: 3,
                    status: MigrationStatus::Failed,
                }),
                Code::FailedPrecondition,
            ),
            (MigrationError::Store(StoreError::Lost(3)), Code::Aborted),
            (
                MigrationError::Store(StoreError::Corrupt {
                    id: 3,
                    reason: "plan".into(),
                }),
                Code::Internal,
            ),
            (
                MigrationError::Store(StoreError::Db {
                    action: "get".into(),
                    cause: db(),
                }),
                Code::Unavailable,
            ),
            (
                MigrationError::Sweeps(SweepError::Db(db())),
                Code::Unavailable,
            ),
            (
                MigrationError::Sweeps(SweepError::Corrupt("a".into())),
                Code::Internal,
            ),
        ];
        cases.extend(
            queue_errors()
                .into_iter()
                .map(|(err, code)| (MigrationError::Queue(err), code)),
        );
        for (cause, code) in queue_errors() {
            cases.push((MigrationError::NotQueued { id: 3, cause }, code));
        }
        cases.extend(
            topology_errors()
                .into_iter()
                .map(|(err, code)| (MigrationError::Topology(err), code)),
        );
        assert_codes(cases);
    }
}
