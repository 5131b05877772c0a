//! Online migrations: copy, diff and repair between replicas, and the workflows built on them
//! (move a replica, add one, split a range, rebalance hosts), which run as jobs of the durable
//! queue while writes keep flowing.
//!
//! - [`model`]: plans and progress, as stored.
//! - [`store`]: the migrations table in the nameserver database.
//! - [`plan`]: planning requests against the topology, and each step's topology changes.
//! - [`ops`]: copy, diff and repair over the physical shard hooks.
//! - [`runner`]: [`Migrator`], the job runner that drives workflows and resumes them.
//! - [`control`]: [`Migrations`], the service operators start, show and cancel them with.
//! - [`anti_entropy`]: background sweeps that diff and repair every replica pair.

pub mod anti_entropy;
pub mod control;
pub mod model;
pub mod ops;
pub mod plan;
pub mod runner;
pub mod store;

pub use control::{MigrationError, Migrations};
pub use model::{HashRange, Migration, MigrationId, MovePlan, Plan, Progress, Status, Step};
pub use plan::PlanError;
pub use runner::{JOB_TYPE, MigrationSettings, Migrator};
pub use store::{ListFilter, MigrationStore, StoreError};
