//! qed's wire protocol: every message that crosses a socket.
//!
//! Messages are plain serde types encoded with [postcard]; [`frame`] puts a
//! length prefix in front of each and enforces a hard size limit before any
//! allocation. This crate has no I/O, no async and no server logic, so the
//! node, the client SDK, the gRPC shim and the fuzz targets all share exactly
//! one definition of the protocol.
//!
//! The client protocol mirrors etcd's v3 API call for call ([`kv`],
//! [`watch`], [`lease`], [`cluster`], [`maintenance`], [`auth`]) so the gRPC
//! shim is a field-by-field translation. Errors ([`error::Error`]) map
//! one-to-one onto etcd's gRPC errors.
//!
//! Versioning: incompatible changes bump [`PROTOCOL_VERSION`], which is part
//! of the ALPN, so mismatched peers fail at the TLS handshake with a clear
//! error instead of misreading each other's bytes.

pub mod auth;
pub mod bytes;
pub mod call;
pub mod cluster;
pub mod command;
pub mod error;
pub mod frame;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod peer;
pub mod raft;
pub mod watch;

pub use call::{
    Call, ClientRequest, Reply, Request, Response, StreamAccept, UnixReply, UnixRequest,
};
pub use error::Error;
pub use kv::{KeyValue, ResponseHeader};

/// Bumped on every incompatible change to any message in this crate.
pub const PROTOCOL_VERSION: u32 = 2;

/// ALPN a client offers when it connects to a node's client port.
pub const CLIENT_ALPN: &[u8] = b"qed-client/1";

/// ALPN a node offers when it connects to a peer's Raft port (2: snapshot
/// chunks carry the image's checksum; 3: heartbeats and their responses
/// may come as QUIC datagrams, which a member of 2 would never read). The
/// client protocol did not change with it, so [`CLIENT_ALPN`] stayed.
pub const PEER_ALPN: &[u8] = b"qed-peer/3";

/// The largest frame a member accepts from a peer: an append of
/// `max_size_per_msg` (1 MiB) can carry one entry of up to a maximal client
/// request over that, and a snapshot chunk is 1 MiB; the slack is for
/// forwarded proposal bursts.
pub const MAX_PEER_FRAME: usize = 64 * 1024 * 1024;
