//! The gRPC edge every daemon of the workspace serves through, so that each port behaves the
//! same: it turns an already-bound `TcpListener`, a set of tonic services and [`Settings`] into
//! a served port ([`Port::serve`]), and gives clients one way to connect ([`client`]).
//!
//! Every port gets:
//!
//! - **TLS** when [`Settings::tls`] is set: a server certificate and key, and optionally a CA
//!   bundle that client certificates must chain to (then a client without one is refused).
//! - **Connection hygiene** ([`Settings`], defaults in [`Settings::default`]): HTTP/2
//!   keepalive pings with a timeout (a dead peer is dropped), a handshake timeout (a socket
//!   that sends no byte is closed), an idle timeout (a connection with no call in flight for
//!   that long is closed), a cap on concurrent streams per connection, and a cap on
//!   connections per process that also stays below the file-descriptor limit, so a flood of
//!   idle sockets waits in the kernel's backlog instead of exhausting descriptors the
//!   database pools need. Accept errors (EMFILE, ENFILE, ...) back off from 5 ms to 1 s
//!   instead of spinning.
//! - **Health** (`grpc.health.v1.Health`): every service SERVING from the start; the owner
//!   flips one to NOT_SERVING through [`Port::health`] while it cannot serve.
//! - **Reflection** v1 and v1alpha, listing exactly the services of the port (and health and
//!   reflection themselves).
//! - **Protocol status codes**: a request message over the service's size limit is refused
//!   with RESOURCE_EXHAUSTED as soon as its 5-byte gRPC frame header arrives, before the body
//!   is read or decoded (see [`guard`]).
//!
//! Modules:
//!
//! - [`settings`]: the knobs and their defaults, and the server's TLS files.
//! - [`incoming`]: the accept loop (connection cap, backoff) and the per-connection timers.
//! - [`guard`]: the per-call layer: counts calls in flight per connection, enforces the
//!   message size limit.
//! - [`port`]: [`Port`], the services of one listener with their health and reflection.
//! - [`client`]: [`client::ClientTls`] and [`client::endpoint`], the one rule for when a client
//!   uses TLS.

pub mod client;
pub mod guard;
pub mod incoming;
pub mod port;
pub mod settings;

pub use incoming::ConnectionLimit;
pub use port::{EdgeError, Port};
pub use settings::{ServerTls, Settings};
