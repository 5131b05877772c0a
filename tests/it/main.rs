//! Integration tests of every crate, in one binary to save link time: real gRPC over loopback,
//! real MariaDB servers from the harness, real SQLite files.

mod daemon_ops;
mod edge_hygiene;
mod edge_ports;
mod edge_tls;
mod gizzard_anti_entropy;
mod gizzard_cluster;
mod gizzard_fencing;
mod gizzard_kv_convergence;
mod gizzard_nameserver;
mod gizzard_queue_locks;
mod gizzard_scheduler;
mod gizzmo_cli;
mod grpcurl_examples;
mod harness;
mod security;
mod snowflake_daemon;
mod snowflake_leases;
mod tbird_coalesce;
mod tbird_conflicts;
mod tbird_convergence;
mod tbird_dev;
mod tbird_frozen_replica;
mod tbird_ids;
mod tbird_ledger;
mod tbird_metrics;
mod tbird_migrations;
mod tbird_serve;
mod tbird_service;
mod tbird_store;
