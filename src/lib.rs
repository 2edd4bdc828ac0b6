//! qed: an etcd-compatible, strongly consistent key-value store for the edge.
//!
//! Data flows client -> [`transport`] -> [`server`] -> [`raft`] -> [`storage`],
//! and back through [`server`] -> [`mvcc`] / [`lease`] / [`watch`] -> client.
//! `raft`, `mvcc`, `lease`, `watch` and `auth` are pure state machines: they take
//! time and input as arguments and return what to do. Only `server`,
//! `transport`, `storage`, `client` and [`runtime`] touch sockets, files,
//! clocks and tasks, and only `runtime` names the async runtime.
//! See ARCHITECTURE.md for the map.

pub mod auth;
pub mod bbolt;
pub mod client;
pub mod etcd_db;
pub mod heap;
pub mod http1;
pub mod lease;
pub mod log_writer;
pub mod metrics;
pub mod mvcc;
pub mod raft;
pub mod runtime;
pub mod server;
pub mod storage;
pub mod transport;
pub mod watch;

#[cfg(feature = "grpc")]
pub mod grpc;

pub use qed_wire as wire;

#[cfg(test)]
mod test_rng;
