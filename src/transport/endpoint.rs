//! QUIC endpoints and their transport tuning.
//!
//! One transport configuration serves nodes and clients: many concurrent
//! streams (every call is a stream, so 128 in-flight calls need 128 streams),
//! keep-alives well inside the idle timeout so a quiet client on a lossy link
//! keeps its connection.
//!
//! A node's endpoint derives its stateless-reset key from a stable secret
//! (its TLS private key) rather than a random one, and its connection IDs
//! are plain random ones (not signed with a per-run key), so after a restart on
//! the same port it can reset the connections of clients that were talking
//! to its previous run: they learn at once that the connection is gone and
//! reconnect, instead of waiting out the 30 s idle timeout.

use super::TransportError;
use crate::runtime;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Concurrent calls one connection may have in flight.
pub const MAX_STREAMS: u32 = 4096;

/// Unread bytes a node's client listener lets one connection send ahead
/// (QUIC connection flow control; quinn's default has no limit). A request
/// larger than this still arrives: the node reads it as it comes and the
/// window reopens. Bytes read are bounded by `server::budget`.
pub const SERVER_RECEIVE_WINDOW: u32 = 1024 * 1024;
/// Bytes a node buffers for sending on one client connection (quinn's
/// default is about 10 MB): a client that does not read holds no more.
pub const SERVER_SEND_WINDOW: u64 = 4 * 1024 * 1024;

fn client_facing() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(MAX_STREAMS.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(30)) {
        t.max_idle_timeout(Some(idle));
    }
    t
}

/// A client's side of its connections.
pub fn transport_config() -> Arc<quinn::TransportConfig> {
    Arc::new(client_facing())
}

/// The SDK's side of its connections: a ping every `keep_alive` when
/// nothing else is sent, and the connection is dead after `idle` without a
/// packet from the node. The node's listener allows 30 s, but QUIC uses the
/// shorter of both sides' idle timeouts, so the client decides how soon a
/// dead node is noticed (`ConnectOptions::keep_alive_timeout`).
pub fn client_transport_config(
    keep_alive: Duration,
    idle: Duration,
) -> Arc<quinn::TransportConfig> {
    let mut t = client_facing();
    t.keep_alive_interval(Some(keep_alive));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    Arc::new(t)
}

/// A node's client listener: as [`transport_config`], with bounded receive
/// and send windows.
pub fn server_transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = client_facing();
    t.receive_window(SERVER_RECEIVE_WINDOW.into());
    t.stream_receive_window(SERVER_RECEIVE_WINDOW.into());
    t.send_window(SERVER_SEND_WINDOW);
    Arc::new(t)
}

/// The ACK delay a member asks of the other end of its peer connections.
pub const PEER_MAX_ACK_DELAY: Duration = Duration::from_millis(2);

/// Peer connections: Raft's lanes are long-lived unidirectional streams and
/// forwarded calls are bidirectional ones. The idle timeout is short so that
/// a member that vanished (killed, partitioned) is noticed within a few
/// election timeouts and its lanes reconnect, instead of writing into a dead
/// connection for 30 s; but not so short that a very lossy link (30%) drops
/// connections that are alive (a member restarted on the same port resets
/// the old connections at once anyway).
pub fn peer_transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(256u32.into());
    t.max_concurrent_uni_streams(64u32.into());
    t.keep_alive_interval(Some(Duration::from_millis(500)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(6)) {
        t.max_idle_timeout(Some(idle));
    }
    // quinn's default (333 ms) puts a lost handshake packet's first resend
    // a second later: at 30% loss most handshakes missed the peer connect
    // timeout. Members' links are rarely that slow, and a too-small guess
    // costs only an early resend; the estimate follows the measured RTT.
    t.initial_rtt(Duration::from_millis(100));
    // Loss-based controllers (quinn's default, Cubic) read random loss as
    // congestion: at 20-30% loss the window sat at its 2-packet minimum
    // and heartbeats (datagrams are congestion-controlled too) waited
    // behind appends for over an election timeout. BBR paces by measured
    // bandwidth and RTT instead, but its loss recovery also holds the
    // window at 4 packets when every round loses some: a floor under it
    // (`transport::congestion`) keeps new packets, and so the ACKs that
    // find the lost ones, flowing.
    t.congestion_controller_factory(Arc::new(super::congestion::FlooredBbrConfig {
        bbr: Arc::new(quinn::congestion::BbrConfig::default()),
        floor: super::congestion::PEER_WINDOW_FLOOR,
    }));
    // Ask the other side to ACK within 2 ms rather than QUIC's 25 ms (the
    // ACK_FREQUENCY extension quinn speaks on both sides): the loss-probe
    // timeout is the RTT plus that delay, doubled for each probe lost in a
    // row, so on a fast link a 25 ms delay made every lost tail cost tens
    // of ms and a run of lost probes seconds. The delay is also capped at
    // the RTT, and a link's packets are ACKed every second packet anyway.
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.max_ack_delay(Some(PEER_MAX_ACK_DELAY));
    t.ack_frequency_config(Some(ack));
    Arc::new(t)
}

fn bind_error(addr: SocketAddr, e: impl std::fmt::Display) -> TransportError {
    TransportError::Bind {
        addr: addr.to_string(),
        reason: e.to_string(),
    }
}

/// Random 8-byte connection IDs that any later run accepts as its own, so
/// it answers them with a stateless reset.
struct RandomCids;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; CID_LEN];
        if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
            // The OS RNG does not fail on supported platforms; a counter
            // keeps IDs distinct if it ever did.
            static FALLBACK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            bytes = FALLBACK
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .to_le_bytes();
        }
        quinn::ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

const CID_LEN: usize = 8;

/// A listening endpoint on `addr`; with `reset_secret`, stateless resets
/// survive restarts (see the module doc).
pub fn server(
    addr: SocketAddr,
    config: quinn::ServerConfig,
    reset_secret: Option<&[u8]>,
) -> Result<quinn::Endpoint, TransportError> {
    let socket = std::net::UdpSocket::bind(addr).map_err(|e| bind_error(addr, e))?;
    let endpoint_config = match reset_secret {
        Some(secret) => {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            ctx.update(b"qed stateless reset key v1");
            ctx.update(secret);
            let digest = ctx.finish();
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, digest.as_ref());
            let mut config = quinn::EndpointConfig::new(Arc::new(key));
            // quinn's default generator signs connection IDs with a key of
            // this run and sends no reset for IDs of an earlier run.
            config.cid_generator(|| Box::new(RandomCids));
            config
        }
        None => quinn::EndpointConfig::default(),
    };
    quinn::Endpoint::new(
        endpoint_config,
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
