//! The etcd v3 gRPC shim: etcd's API on HTTP/2, forwarded to a qed cluster.
//!
//! Role: `qed-grpc` serves etcd 3.4's gRPC services so that etcdctl and every
//! etcd v3 client work unchanged, and forwards each call to the cluster over
//! the QUIC client SDK. It is thin and stateless beyond streams in flight:
//!
//! - [`pb`]: etcd's protobuf messages, hand-written with prost derives;
//! - [`codec`]: gRPC's 5-byte message framing and the receive limit;
//! - [`convert`]: method routing by path, and pb <-> wire translation;
//! - [`status`]: gRPC status codes and the one wire-error -> status mapping;
//! - [`backend`]: what the server forwards to (the [`backend::Backend`]
//!   trait; the QUIC client is the real one, tests use a stub);
//! - [`client_backend`]: `Backend` for the QUIC [`crate::client::Client`];
//! - [`tls`]: the listener's rustls configuration;
//! - [`probes`]: `/health`, `/metrics` and friends on the gRPC port
//!   (HTTP/1.1 and h2), as etcd serves them on 2379;
//! - [`authority`]: lets through the `:authority` values grpc-go accepts
//!   (`http://host:port`) by rewriting them before `h2` parses them;
//! - [`coalesce`]: the frames h2 writes in one turn of a connection's
//!   task leave in one socket write;
//! - [`server`]: the h2 (h2c or TLS) listener, per-stream handlers,
//!   flow control, keepalive and graceful shutdown.
//!
//! Invariant: nothing read from a socket can panic the shim; every failure
//! becomes a gRPC status (or, below gRPC, an HTTP/2 reset).

pub mod authority;
pub mod backend;
pub mod client_backend;
pub mod coalesce;
pub mod codec;
pub mod convert;
pub mod pb;
pub mod probes;
pub mod server;
pub mod status;
pub mod tls;

#[cfg(test)]
mod tests;

pub use backend::Backend;
pub use server::{serve, ServerConfig, Shutdown};
pub use status::{Code, Status};
