//! QUIC endpoints, TLS and framed streams: everything between a socket and a
//! typed message.
//!
//! Both the node and the client SDK build their endpoints here, so TLS
//! settings (TLS 1.3 only, ring provider, ALPN carrying the protocol version)
//! and transport tuning live in one place. Nothing here knows what a message
//! means; [`stream`] moves length-prefixed postcard frames and refuses
//! oversized ones before allocating.

pub mod congestion;
pub mod endpoint;
pub mod stream;
pub mod tls;
pub mod url;

use std::fmt;

/// Why a transport operation failed.
#[derive(Debug)]
pub enum TransportError {
    /// A certificate or key file could not be read, parsed or written.
    Tls { path: String, reason: String },
    /// The TLS configuration was refused (bad key, unsupported algorithm).
    TlsConfig(String),
    /// A URL in the configuration could not be used.
    BadUrl { url: String, reason: String },
    /// Binding or configuring a UDP socket failed.
    Bind { addr: String, reason: String },
    /// Connecting to a peer failed (handshake, ALPN mismatch, timeout).
    Connect { addr: String, reason: String },
    /// The QUIC connection or stream failed mid-call.
    Stream(String),
    /// A frame violated the protocol (too large, malformed).
    Frame(qed_wire::frame::FrameError),
    /// The bytes in flight allowed to this connection (or node) are spent.
    Busy,
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Tls { path, reason } => write!(f, "TLS file {path}: {reason}"),
            TransportError::TlsConfig(reason) => write!(f, "TLS configuration: {reason}"),
            TransportError::BadUrl { url, reason } => write!(f, "bad URL {url:?}: {reason}"),
            TransportError::Bind { addr, reason } => write!(f, "cannot listen on {addr}: {reason}"),
            TransportError::Connect { addr, reason } => {
                write!(f, "cannot connect to {addr}: {reason}")
            }
            TransportError::Stream(reason) => write!(f, "stream failed: {reason}"),
            TransportError::Frame(e) => write!(f, "{e}"),
            TransportError::Busy => f.write_str("too many bytes in flight"),
        }
    }
}

impl std::error::Error for TransportError {}

impl From<qed_wire::frame::FrameError> for TransportError {
    fn from(e: qed_wire::frame::FrameError) -> Self {
        TransportError::Frame(e)
    }
}
