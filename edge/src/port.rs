//! [`Port`]: the services one listener serves, with their health and reflection, and
//! [`Port::serve`], which serves them with the [`Settings`] of [`crate::settings`].

use std::{collections::HashMap, convert::Infallible, future::Future};

use tokio::net::TcpListener;
use tonic::{body::Body, server::NamedService, service::RoutesBuilder, transport::Server};
use tonic_health::{
    ServingStatus,
    pb::health_server::HealthServer,
    server::{HealthReporter, HealthService},
};
use tower_service::Service;

use crate::{
    guard::{GuardLayer, Limits},
    incoming::{ConnectionLimit, Timeouts, accept},
    settings::Settings,
};

/// Why a port could not be served. It ends the process, whose exit message prints the chain
/// of causes, so each variant states what was being done and holds the cause as its source.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("invalid settings: {0}")]
    Settings(String),
    #[error("read TLS file {}", path.display())]
    TlsFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("load the TLS certificate and key")]
    Tls(#[source] tonic::transport::Error),
    #[error("build the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("serve gRPC")]
    Serve(#[source] tonic::transport::Error),
}

/// The name of the health service, as health and reflection list it.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
/// The names of the reflection services every port serves.
pub const REFLECTION_SERVICES: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The services of one listener.
pub struct Port {
    routes: RoutesBuilder,
    names: Vec<String>,
    limits: HashMap<String, usize>,
    descriptors: &'static [u8],
    health: HealthReporter,
    /// Whether every service was reported SERVING yet.
    health_started: bool,
}

impl std::fmt::Debug for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port")
            .field("services", &self.names)
            .finish_non_exhaustive()
    }
}

impl Port {
    /// Returns a port with no service yet; `descriptors` is the encoded file descriptor set
    /// that describes the services it will serve, for reflection.
    pub fn new(descriptors: &'static [u8]) -> Self {
        Self {
            routes: RoutesBuilder::default(),
            names: Vec::new(),
            limits: HashMap::new(),
            descriptors,
            health: HealthReporter::new(),
            health_started: false,
        }
    }

    /// Adds a service whose request messages may be up to `max_request_bytes` long; larger
    /// ones are refused with RESOURCE_EXHAUSTED before they are read.
    pub fn add_service<S>(mut self, service: S, max_request_bytes: usize) -> Self
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes.add_service(service);
        self.names.push(S::NAME.to_owned());
        self.limits.insert(S::NAME.to_owned(), max_request_bytes);
        self
    }

    /// Returns the health reporter of this port, to mark a service NOT_SERVING while it cannot
    /// serve (and SERVING again), once every service added so far is reported SERVING (as is
    /// "", the whole server). Call it after the last [`Port::add_service`].
    pub async fn health(&mut self) -> HealthReporter {
        if !self.health_started {
            self.health_started = true;
            for name in self.names.iter().map(String::as_str).chain([""]) {
                self.health
                    .set_service_status(name, ServingStatus::Serving)
                    .await;
            }
        }
        self.health.clone()
    }

    /// Returns the services reflection lists on this port: those added, health, reflection.
    pub fn service_names(&self) -> Vec<String> {
        let mut names = self.names.clone();
        names.push(HEALTH_SERVICE.to_owned());
        names.extend(REFLECTION_SERVICES.map(str::to_owned));
        names
    }

    /// Serves the port on `listener` until `shutdown` completes, then lets the calls in flight
    /// finish. Connections count against `limit`, which every port of the process shares.
    pub async fn serve(
        mut self,
        listener: TcpListener,
        settings: &Settings,
        limit: ConnectionLimit,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), EdgeError> {
        settings.validate().map_err(EdgeError::Settings)?;
        let names = self.service_names();
        let health = self.health().await;
        let reflection = || {
            names.iter().fold(
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(self.descriptors)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
                |builder, name| builder.with_service_name(name),
            )
        };
        let mut routes = self.routes;
        routes
            .add_service(HealthServer::new(HealthService::from_health_reporter(
                health,
            )))
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?);

        let mut server = Server::builder()
            .http2_keepalive_interval(Some(settings.keepalive_interval))
            .http2_keepalive_timeout(Some(settings.keepalive_timeout))
            .max_concurrent_streams(settings.max_concurrent_streams);
        if let Some(tls) = &settings.tls {
            server = server
                .tls_config(tls.load(settings.handshake_timeout)?)
                .map_err(EdgeError::Tls)?;
        }
        let timeouts = Timeouts {
            handshake: settings.handshake_timeout,
            idle: settings.idle_timeout,
        };
        let incoming = accept(listener, limit, timeouts);
        server
            .layer(GuardLayer {
                limits: Limits::new(self.limits),
            })
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(EdgeError::Serve)
    }
}
