//! QUIC endpoints and their transport tuning.
//!
//! One transport configuration serves nodes and clients: many concurrent
//! streams (every call is a stream, so 128 in-flight calls need 128 streams),
//! keep-alives well inside the idle timeout so a quiet client on a lossy link
//! keeps its connection.

use super::TransportError;
use crate::runtime;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Concurrent calls one connection may have in flight.
pub const MAX_STREAMS: u32 = 4096;

pub fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(MAX_STREAMS.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(30)) {
        t.max_idle_timeout(Some(idle));
    }
    Arc::new(t)
}

fn bind_error(addr: SocketAddr, e: impl std::fmt::Display) -> TransportError {
    TransportError::Bind {
        addr: addr.to_string(),
        reason: e.to_string(),
    }
}

/// A listening endpoint on `addr`.
pub fn server(
    addr: SocketAddr,
    config: quinn::ServerConfig,
) -> Result<quinn::Endpoint, TransportError> {
    let socket = std::net::UdpSocket::bind(addr).map_err(|e| bind_error(addr, e))?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        runtime::quinn_runtime(),
    )
    .map_err(|e| bind_error(addr, e))
}

/// A connecting endpoint on an ephemeral port of the right address family.
pub fn client(
    family_of: SocketAddr,
    config: quinn::ClientConfig,
) -> Result<quinn::Endpoint, TransportError> {
    let local: SocketAddr = if family_of.is_ipv6() {
        SocketAddr::from(([0u16; 8], 0))
    } else {
        SocketAddr::from(([0, 0, 0, 0], 0))
    };
    let socket = std::net::UdpSocket::bind(local).map_err(|e| bind_error(local, e))?;
    let mut endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        runtime::quinn_runtime(),
    )
    .map_err(|e| bind_error(local, e))?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}
