//! The peer transport: Raft messages and forwarded calls between members.
//!
//! One QUIC endpoint listens on the `--listen-peer-urls` address (ALPN
//! `qed-peer/3`) and also makes this member's outbound connections (two per
//! member: control and data).
//!
//! Outbound, each other member has three *lanes*, each a task with a bounded
//! queue and one long-lived unidirectional stream of length-prefixed postcard
//! [`Message`] frames: `control` (heartbeats, votes, responses, ReadIndex,
//! TimeoutNow), `append` (appends and forwarded proposals) and `snapshot`
//! (snapshot chunks). Separate streams keep heartbeats and votes from
//! queueing behind a large append or a snapshot chunk, and the control
//! lane has a connection of its own ([`Link`]) so appends never fill the
//! congestion window it sends in. Heartbeats and
//! their responses go as QUIC datagrams on the control lane's connection
//! (unordered, unreliable: nothing waits behind a lost one; the next
//! heartbeat supersedes it), on the stream only if a datagram cannot carry
//! them. The leader's durability announcements (`LeaderDurable`) go only
//! as datagrams, never on a stream: a member too old to decode one drops
//! the datagram, where an undecodable frame would end its stream. A data lane that went quiet after a write nudges its connection
//! with empty datagrams for a while ([`Lane::nudges`]), so QUIC keeps
//! finding and resending lost stream packets while Raft waits on them.
//! The leader times each append to its answer ([`AppendWatch`]) and logs
//! one that took long, with both links' QUIC figures. The Raft loop only
//! ever calls [`Peers::send`], which never blocks: a full queue drops the
//! message (Raft retransmits what matters), and so does a lane that is not
//! connected; a lane that fails reconnects with exponential back-off, and
//! drops what arrives meanwhile. Dropped messages are counted.
//!
//! Inbound, every stream starts with a [`PeerHello`]; a stream from another
//! cluster (other token or member list) or from a member ID not in the
//! table is refused: the connection is closed with the reason, and the
//! refusal logged (at most every few seconds per sender). Frames are read
//! with the length checked against [`MAX_PEER_FRAME`] before allocation; a
//! frame that is too large or does not decode ends that stream only. Each
//! message goes to the Raft loop as is (the core checks terms and indices).
//!
//! Bidirectional streams carry one [`PeerCall`] each: a follower forwarding
//! leader-only work (lease keepalive and TimeToLive, member removal) to the
//! leader. A member removed from the configuration leaves the member table,
//! so its lanes end and its streams are refused.
//!
//! Identity: a hello's `from` is a claim anyone can make (member IDs are
//! hashes of public URLs); the TLS certificate is the proof, required in
//! both directions. [`check_identity`] binds a member to its certificate on
//! every accepted hello and every connection this member makes: with a
//! trusted CA (`--peer-trusted-ca-file`) the certificate chains to it (TLS)
//! and names a host of the member's peer URLs; without one (certificates
//! generated per member, etcd's `--peer-auto-tls`) its fingerprint is pinned
//! on first contact and must not change. Nothing a peer says is believed
//! before that: a connection's "removed" close counts only once one of its
//! streams passed the hello, and the Raft loop believes it only from its
//! leader.

use super::append_watch::AppendWatch;
use super::members::Members;
use super::node::Node;
use crate::metrics::SERVER;
use crate::runtime::{self, channel};
use crate::transport::{self, stream, TransportError};
use qed_wire::peer::{PeerCall, PeerHello, PeerReply};
use qed_wire::raft::{Message, MessageBody, NodeId};
use qed_wire::{Error, MAX_PEER_FRAME};
use quinn::VarInt;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Bound on a hello frame (names and URL lists).
const MAX_HELLO_FRAME: usize = 64 * 1024;

/// Giving up on a connection attempt: about two election timeouts, so a
/// dead member costs its lanes little, but a handshake over a lossy link
/// has time for a few resends of each flight (see the peer transport's
/// initial RTT in `transport::endpoint`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Reconnect back-off bounds.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How long a forwarded call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the same refused sender is logged.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(5);

/// QUIC application codes.
const FRAME_VIOLATION: VarInt = VarInt::from_u32(1);
const REFUSED: VarInt = VarInt::from_u32(2);
/// The peer is no longer a member: it should stop (etcd answers a removed
/// member's messages with "410 Gone" for the same reason: the leader stops
/// talking to it once the removal applies, so it may never see that entry).
const REMOVED: VarInt = VarInt::from_u32(3);

/// The streams to one member, so that small messages never wait for big ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Control = 0,
    Append = 1,
    Snapshot = 2,
}

const LANES: [Lane; 3] = [Lane::Control, Lane::Append, Lane::Snapshot];

impl Lane {
    fn of(body: &MessageBody) -> Lane {
        match body {
            MessageBody::Append { .. } | MessageBody::Propose { .. } => Lane::Append,
            MessageBody::Snapshot { .. } => Lane::Snapshot,
            _ => Lane::Control,
        }
    }

    /// Whether a message goes as a QUIC datagram when it fits: heartbeats
    /// and their responses. Nothing waits behind a lost datagram (on the
    /// ordered control stream, one lost packet held every later heartbeat
    /// until its retransmission, and a follower went silent for seconds at
    /// 20-30% loss), and a lost one is simply superseded by the next: the
    /// leader sends one every heartbeat interval, carrying the current
    /// commit (at most what the follower has) and ReadIndex round.
    fn unordered(body: &MessageBody) -> bool {
        matches!(
            body,
            MessageBody::Heartbeat { .. }
                | MessageBody::HeartbeatResponse { .. }
                | MessageBody::LeaderDurable { .. }
        )
    }

    /// Whether a message goes *only* as a datagram, dropped when none can
    /// carry it: the leader's durability announcements. A member from
    /// before them cannot decode one, which ends a stream but only drops
    /// a datagram (rolling upgrades); losing one only delays a follower's
    /// commit until the leader's.
    fn datagram_only(body: &MessageBody) -> bool {
        matches!(body, MessageBody::LeaderDurable { .. })
    }

    /// Whether this lane, last written at `last_write`, should nudge its
    /// connection at `now` when it has nothing to send for [`NUDGE_EVERY`]:
    /// the data lanes, for [`NUDGE_WINDOW`] after a write. A data link
    /// carries nothing but what Raft sends, and Raft sends nothing while it
    /// waits for what was lost (a follower's clients wait on the forwarded
    /// proposals, the leader's window on the answers), so a lost tail was
    /// left to QUIC's loss probes: at 30% loss appends waited seconds. The
    /// control link needs none: heartbeats cross it every interval.
    fn nudges(self, last_write: Option<Instant>, now: Instant) -> bool {
        self.link() == Link::Data
            && last_write.is_some_and(|at| now.saturating_duration_since(at) < NUDGE_WINDOW)
    }

    /// Messages a lane may hold while its stream is busy: many small ones,
    /// a few appends (each up to ~1 MiB), a couple of snapshot chunks.
    fn capacity(self) -> usize {
        match self {
            Lane::Control => 1024,
            Lane::Append => 64,
            Lane::Snapshot => 4,
        }
    }

    fn priority(self) -> i32 {
        match self {
            Lane::Control => 2,
            Lane::Append => 1,
            Lane::Snapshot => 0,
        }
    }

    /// Giving up on one frame write: the peer stopped reading (or vanished
    /// without a reset); the lane starts over on a new stream. Big frames
    /// on slow links get longer.
    fn write_timeout(self) -> Duration {
        match self {
            Lane::Control => Duration::from_secs(3),
            Lane::Append => Duration::from_secs(10),
            Lane::Snapshot => Duration::from_secs(30),
        }
    }

    fn link(self) -> Link {
        match self {
            Lane::Control => Link::Control,
            Lane::Append | Lane::Snapshot => Link::Data,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Lane::Control => "control",
            Lane::Append => "append",
            Lane::Snapshot => "snapshot",
        }
    }
}

/// One outbound connection, made on first use and again after it closed.
type ConnectionSlot = Arc<runtime::Mutex<Option<quinn::Connection>>>;

/// The two connections to each member. QUIC's congestion window is per
/// connection: on one shared connection, appends filled it at 20-30% loss
/// and the heartbeats behind them (datagrams are congestion-controlled
/// too) waited for an election timeout. The control link carries only
/// the control lane (heartbeats, votes, responses): a few small packets
/// per heartbeat, so its window is never what holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Control = 0,
    /// Appends, snapshot chunks and forwarded calls.
    Data = 1,
}

/// Why a peer stream was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The sender computed another cluster ID: another token or member list.
    OtherCluster { theirs: u64, ours: u64 },
    /// The sender's member ID is not in our table.
    UnknownMember(NodeId),
    /// The stream is addressed to another member.
    NotForUs(NodeId),
    /// The sender was removed from the cluster.
    Removed(NodeId),
    /// The sender's certificate does not prove it is that member.
    Identity { id: NodeId, why: String },
}

/// How members prove who they are, beyond the hello's claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerTrust {
    /// `--peer-trusted-ca-file`: TLS verifies both directions against the
    /// CA, and a member's certificate must name a host of its peer URLs
    /// (subject alternative name) or carry its name (as the member table
    /// knows it, not as it claims) as its common name.
    Ca,
    /// Generated certificates: each member's certificate fingerprint is
    /// pinned on first contact and must not change (trust on first use).
    Pinned,
}

/// Whether the certificates `certs` (as the TLS handshake presented them)
/// prove the other side is member `id`. `peer_urls` are the URLs it claims
/// (used only if they hash to `id` and the table has none for it).
pub fn check_identity(
    trust: PeerTrust,
    members: &Members,
    id: NodeId,
    peer_urls: &[String],
    certs: &[rustls::pki_types::CertificateDer<'_>],
) -> Result<(), Refusal> {
    let refuse = |why: String| Refusal::Identity { id, why };
    let Some(leaf) = certs.first() else {
        return Err(refuse("it presented no certificate".into()));
    };
    match trust {
        PeerTrust::Ca => {
            let mut urls = members.get(id).map(|m| m.peer_urls).unwrap_or_default();
            if urls.is_empty() && super::members::member_id(peer_urls, &members.token) == id {
                urls = peer_urls.to_vec();
            }
            let hosts: Vec<String> = urls
                .iter()
                .filter_map(|u| transport::url::host(u).ok())
                .collect();
            let name = members.get(id).map(|m| m.name).unwrap_or_default();
            if hosts.iter().any(|h| transport::tls::names_host(leaf, h))
                || (!name.is_empty()
                    && super::auth::cert_common_name(leaf).as_deref() == Some(name.as_str()))
            {
                Ok(())
            } else {
                Err(refuse(format!(
                    "its certificate names none of its peer URL hosts {hosts:?} (subject \
                     alternative names), nor its name {name:?} (common name)"
                )))
            }
        }
        PeerTrust::Pinned => members
            .check_pin(id, transport::tls::fingerprint(leaf))
            .map_err(|e| refuse(e.to_string())),
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::OtherCluster { theirs, ours } => write!(
                f,
                "it belongs to cluster {theirs:x}, this member to cluster {ours:x}: \
                 check that --initial-cluster and --initial-cluster-token are the same on \
                 every member"
            ),
            Refusal::UnknownMember(id) => write!(
                f,
                "member {id:x} is not in this cluster's member table: check its \
                 --initial-advertise-peer-urls against --initial-cluster"
            ),
            Refusal::Removed(id) => write!(f, "member {id:x} was removed from the cluster"),
            Refusal::Identity { id, why } => {
                write!(f, "it does not prove it is member {id:x}: {why}")
            }
            Refusal::NotForUs(id) => write!(
                f,
                "it is addressed to member {id:x}, not to this member: check the peer URLs \
                 in --initial-cluster"
            ),
        }
    }
}

/// Whether a hello may open a stream to this member.
/// A member joining a running cluster does not know the cluster ID yet
/// (it is 0): it takes the one of the first member of its table that
/// contacts it (the leader, once the member-add entry applied).
pub fn check_hello(hello: &PeerHello, members: &Members) -> Result<(), Refusal> {
    let ours = members.cluster_id();
    let other_cluster = Refusal::OtherCluster {
        theirs: hello.cluster_id,
        ours,
    };
    if ours != 0 && hello.cluster_id != ours {
        return Err(other_cluster);
    }
    if members.was_removed(hello.from) {
        return Err(Refusal::Removed(hello.from));
    }
    if hello.from == members.local || !members.contains(hello.from) {
        return Err(Refusal::UnknownMember(hello.from));
    }
    if hello.to != members.local {
        return Err(Refusal::NotForUs(hello.to));
    }
    if hello.cluster_id == 0 {
        return Err(other_cluster);
    }
    Ok(())
}

/// What this member tells the others about itself in every hello.
#[derive(Debug, Clone)]
pub struct LocalMember {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    /// Where a joining member saves the cluster ID it learns.
    pub cluster_id_file: PathBuf,
}

/// This member's side of the peer transport.
pub struct Peers {
    members: Arc<Members>,
    trust: PeerTrust,
    /// This member's hello, `to` and `cluster_id` filled in per stream.
    hello: PeerHello,
    cluster_id_file: PathBuf,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    lanes: RwLock<HashMap<NodeId, [channel::Sender<Message>; 3]>>,
    /// Two connections per member (see [`Link`]), indexed by `Link`.
    connections: RwLock<HashMap<NodeId, [ConnectionSlot; 2]>>,
    /// Messages dropped so far (full queues, lanes without a connection);
    /// logged at every power of two.
    dropped: AtomicU64,
    /// When each refused sender was last logged.
    refusals_logged: std::sync::Mutex<HashMap<NodeId, Instant>>,
    /// When each member's refusal of us was last logged.
    refused_by: std::sync::Mutex<HashMap<NodeId, Instant>>,
    /// When a failed inbound handshake was last logged.
    handshake_logged: std::sync::Mutex<Option<Instant>>,
    /// The member that last closed a connection saying this one was
    /// removed (only members that proved who they are: see
    /// [`Peers::take_removal_claims`]).
    /// Every member that said so since the loop last looked (a set: the
    /// leader's word must not be overwritten by another member's refusal).
    removal_claims: std::sync::Mutex<std::collections::BTreeSet<NodeId>>,
    /// When each member's last Raft message arrived, in ms after `epoch`
    /// plus one (0: never), for etcd's strict reconfiguration checks.
    heard: RwLock<HashMap<NodeId, Arc<AtomicU64>>>,
    epoch: Instant,
    /// How long our appends wait for their answers, per follower; and
    /// when a slow one was last logged (with how many since).
    append_watch: std::sync::Mutex<(AppendWatch, Option<Instant>, u64)>,
}

impl Peers {
    /// Binds the peer endpoint and starts a lane task per lane per member.
    /// Serving inbound streams starts with [`serve`], once the node exists.
    pub fn start(
        members: Arc<Members>,
        listen: std::net::SocketAddr,
        server_config: quinn::ServerConfig,
        client_config: quinn::ClientConfig,
        local: LocalMember,
        trust: PeerTrust,
        reset_secret: Option<&[u8]>,
    ) -> Result<Arc<Peers>, TransportError> {
        // With a stable reset secret, a restarted member resets the other
        // members' connections to its previous run at once (see
        // `transport::endpoint`), so their lanes reconnect without waiting
        // for the idle timeout.
        let endpoint = transport::endpoint::server(listen, server_config, reset_secret)?;
        let peers = Arc::new(Peers {
            hello: PeerHello {
                cluster_id: 0,
                from: members.local,
                to: 0,
                name: local.name,
                peer_urls: local.peer_urls,
                client_urls: local.client_urls,
            },
            cluster_id_file: local.cluster_id_file,
            members,
            trust,
            endpoint,
            client_config,
            lanes: RwLock::new(HashMap::new()),
            connections: RwLock::new(HashMap::new()),
            dropped: AtomicU64::new(0),
            refusals_logged: std::sync::Mutex::new(HashMap::new()),
            refused_by: std::sync::Mutex::new(HashMap::new()),
            handshake_logged: std::sync::Mutex::new(None),
            removal_claims: std::sync::Mutex::new(Default::default()),
            heard: RwLock::new(HashMap::new()),
            epoch: Instant::now(),
            append_watch: Default::default(),
        });
        for id in peers.members.ids() {
            peers.add_member(id);
        }
        log::info!("serving peers on {listen} (QUIC)");
        Ok(peers)
    }

    /// Starts the lanes to a member (one that joined the configuration, or
    /// one of the initial members); nothing if it has them or is us.
    pub fn add_member(self: &Arc<Self>, id: NodeId) {
        if id == self.members.local {
            return;
        }
        let mut lanes = self.lanes.write().unwrap_or_else(|p| p.into_inner());
        if lanes.contains_key(&id) {
            return;
        }
        let queues = LANES.map(|lane| channel::bounded(lane.capacity()));
        lanes.insert(id, queues.clone().map(|(tx, _)| tx));
        self.connections
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Default::default());
        for (lane, (_, rx)) in LANES.into_iter().zip(queues) {
            runtime::spawn(run_lane(self.clone(), id, lane, rx));
        }
    }

    /// Ends the lanes to a member that left the configuration (their tasks
    /// see their queues close) and closes its connection.
    pub fn remove_member(&self, id: NodeId) {
        self.append_watch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .forget(id);
        self.lanes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let slots = self
            .connections
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        for slot in slots.into_iter().flatten() {
            if let Some(conn) = slot.try_lock().and_then(|c| c.clone()) {
                conn.close(REMOVED, b"removed from the cluster");
            }
        }
    }

    /// Our hello to member `to`.
    fn hello_to(&self, to: NodeId) -> Result<PeerHello, TransportError> {
        match self.members.cluster_id() {
            0 => Err(TransportError::Stream(
                "the cluster ID is not known yet: this member joins a running cluster and \
                 waits for its leader to contact it"
                    .into(),
            )),
            cluster_id => Ok(PeerHello {
                cluster_id,
                to,
                ..self.hello.clone()
            }),
        }
    }

    /// Queues a Raft message for its member; never blocks. A message that
    /// does not fit (or is for no known member) is dropped and counted.
    pub fn send(&self, message: Message) {
        let lane = Lane::of(&message.body);
        let to = message.to;
        let heartbeat = matches!(message.body, MessageBody::Heartbeat { .. });
        let queued = match self
            .lanes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&to)
        {
            Some(lanes) => lanes[lane as usize].try_send(message).is_ok(),
            None => false,
        };
        if !queued {
            if heartbeat {
                SERVER.heartbeat_send_failures.inc();
            }
            self.count_drop(to, lane.name());
        }
    }

    fn count_drop(&self, to: NodeId, why: &str) {
        SERVER.peer_dropped.with(&[&format!("{to:x}"), why]).inc();
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() && n >= 64 {
            log::info!("{n} peer messages dropped so far (latest: to {to:x}, {why})");
        } else {
            log::debug!("dropped a peer message to {to:x} ({why})");
        }
    }

    /// Forwards a call to member `to` (the leader) and waits for its answer.
    pub async fn call(&self, to: NodeId, call: PeerCall) -> PeerReply {
        let unavailable = |e: TransportError| {
            log::debug!("forwarding to member {to:x} failed: {e}");
            Error::TimeoutDueToConnectionLost
        };
        let exchange = async {
            let conn = self.connection(to, Link::Data).await?;
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| TransportError::Stream(e.to_string()))?;
            let hello = self.hello_to(to)?;
            stream::write(&mut send, &hello, MAX_HELLO_FRAME).await?;
            stream::write(&mut send, &call, MAX_PEER_FRAME).await?;
            let _ = send.finish();
            stream::read::<PeerReply>(&mut recv, MAX_PEER_FRAME)
                .await?
                .ok_or_else(|| TransportError::Stream("the leader sent no answer".into()))
        };
        match runtime::timeout(CALL_TIMEOUT, exchange).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// The `link` connection to `to`, made if there is none (or it closed).
    async fn connection(
        &self,
        to: NodeId,
        link: Link,
    ) -> Result<quinn::Connection, TransportError> {
        let slot = self
            .connections
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&to)
            .map(|slots| slots[link as usize].clone())
            .ok_or_else(|| TransportError::Connect {
                addr: format!("member {to:x}"),
                reason: "not a member of this cluster".into(),
            })?;
        let mut current = slot.lock().await;
        if let Some(conn) = current.as_ref() {
            match conn.close_reason() {
                None => return Ok(conn.clone()),
                Some(e) => {
                    self.note_refusal(to, &e);
                }
            }
        }
        let member = self.members.get(to);
        let url = member
            .as_ref()
            .and_then(|m| m.peer_urls.first())
            .ok_or_else(|| TransportError::Connect {
                addr: format!("member {to:x}"),
                reason: "no peer URL known".into(),
            })?;
        let target = transport::url::parse(url)?;
        let fail = |reason: String| TransportError::Connect {
            addr: url.clone(),
            reason,
        };
        let connecting = self
            .endpoint
            .connect_with(self.client_config.clone(), target.addr, &target.host)
            .map_err(|e| fail(e.to_string()))?;
        let conn = runtime::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| fail(format!("no handshake within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| fail(e.to_string()))?;
        // Whoever answers at that URL must prove it is the member.
        let certs = transport::tls::peer_certificates(&conn);
        if let Err(why) = check_identity(self.trust, &self.members, to, &[], &certs) {
            conn.close(REFUSED, why.to_string().as_bytes());
            return Err(fail(why.to_string()));
        }
        *current = Some(conn.clone());
        Ok(conn)
    }

    /// Opens a lane's stream: a new unidirectional stream and our hello;
    /// with the connection it is on (for datagrams).
    async fn open_lane(
        &self,
        to: NodeId,
        lane: Lane,
    ) -> Result<(quinn::Connection, quinn::SendStream), TransportError> {
        let hello = self.hello_to(to)?;
        let conn = self.connection(to, lane.link()).await?;
        let mut send = runtime::timeout(CONNECT_TIMEOUT, conn.open_uni())
            .await
            .map_err(|_| TransportError::Stream("no stream credit from the peer".into()))?
            .map_err(|e| TransportError::Stream(e.to_string()))?;
        // QUIC sends higher-priority streams' data first: votes and
        // heartbeats overtake appends, which overtake snapshot chunks.
        let _ = send.set_priority(lane.priority());
        stream::write(&mut send, &hello, MAX_HELLO_FRAME).await?;
        Ok((conn, send))
    }

    /// A joining member learns its cluster's ID from the first member that
    /// contacts it, and keeps it in the data directory for its restarts.
    fn adopt_cluster_id(&self, hello: &PeerHello) {
        self.members.adopt_cluster_id(hello.cluster_id);
        log::info!(
            "joined cluster {:x} (contacted by member {:x})",
            hello.cluster_id,
            hello.from
        );
        if let Err(e) = save_cluster_id(&self.cluster_id_file, hello.cluster_id) {
            log::error!(
                "cannot save the cluster ID in {}: {e}; start this member again with \
                 --initial-cluster-state existing to learn it again",
                self.cluster_id_file.display()
            );
        }
    }

    /// Whether nothing was logged through here for `period` (and if so,
    /// starts a new period).
    fn quiet_for(&self, period: Duration) -> bool {
        let mut last = self
            .handshake_logged
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|at| at.elapsed() < period) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// Whether a Raft message from member `id` arrived within `within`
    /// (etcd's "active" peer, which its strict reconfiguration checks ask).
    pub fn heard_within(&self, id: NodeId, within: Duration) -> bool {
        let Some(at) = self
            .heard
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .map(|a| a.load(Ordering::Relaxed))
        else {
            return false;
        };
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        at != 0 && now.saturating_sub(at) <= within.as_millis() as u64
    }

    /// What this member knows of its link to member `id`, for a log line
    /// that has to explain a silence: when its last Raft message arrived,
    /// and QUIC's view of our connection to it (smoothed RTT, packets sent
    /// and lost, congestion window and events).
    pub fn link_report(&self, id: NodeId) -> String {
        let heard = self
            .heard
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .map(|a| a.load(Ordering::Relaxed))
            .unwrap_or(0);
        let mut report = match heard {
            0 => "never heard from it".to_string(),
            at => {
                let now = self.epoch.elapsed().as_millis() as u64 + 1;
                format!("last message {} ms ago", now.saturating_sub(at))
            }
        };
        match self.live_connection(id, Link::Control) {
            Some(conn) => {
                let path = conn.stats().path;
                report.push_str(&format!(
                    "; control link: rtt {:.1} ms, {} of {} packets lost, cwnd {} B, {} congestion events",
                    path.rtt.as_secs_f64() * 1000.0,
                    path.lost_packets,
                    path.sent_packets,
                    path.cwnd,
                    path.congestion_events
                ));
            }
            None => report.push_str("; no control connection to it"),
        }
        report
    }

    /// An append to `to` went out on `conn` (the data link): times it (see
    /// [`Peers::note_append_answer`]).
    fn note_append_sent(&self, to: NodeId, body: &MessageBody, conn: &quinn::Connection) {
        let MessageBody::Append {
            prev_index,
            entries,
            ..
        } = body
        else {
            return;
        };
        if entries.is_empty() {
            return;
        }
        let last = prev_index.saturating_add(entries.len() as u64);
        let packets = conn.stats().path.sent_packets;
        self.append_watch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .sent(to, last, Instant::now(), packets);
    }

    /// Packets sent so far on the data link to `id` (0 without one).
    fn data_packets_sent(&self, id: NodeId) -> u64 {
        self.live_connection(id, Link::Data)
            .map_or(0, |conn| conn.stats().path.sent_packets)
    }

    /// Follower `from` holds our log through `index`: times the appends
    /// this answers, and logs one that waited long (at most once a second,
    /// with how many did since) with both links' QUIC figures.
    fn note_append_answer(&self, from: NodeId, index: u64) {
        let packets = self.data_packets_sent(from);
        let now = Instant::now();
        let mut guard = self.append_watch.lock().unwrap_or_else(|p| p.into_inner());
        let (watch, logged, unlogged) = &mut *guard;
        let Some(slow) = watch.answered(from, index, now, packets) else {
            return;
        };
        *unlogged += 1;
        if logged.is_some_and(|at| now.duration_since(at) < Duration::from_secs(1)) {
            return;
        }
        let count = std::mem::take(unlogged);
        *logged = Some(now);
        drop(guard);
        log::info!(
            "member {from:x} answered our append through {} after {} ms ({count} slow answer(s) \
             since the last such line); the data link sent {} packet(s) meanwhile; {}",
            slow.index,
            slow.waited.as_millis(),
            slow.packets_sent,
            self.link_stats(from)
        );
    }

    /// Both links' QUIC figures to `id`, for a log line.
    fn link_stats(&self, id: NodeId) -> String {
        let mut out = Vec::new();
        for (link, name) in [(Link::Control, "control"), (Link::Data, "data")] {
            match self.live_connection(id, link) {
                Some(conn) => {
                    let path = conn.stats().path;
                    out.push(format!(
                        "{name} link: rtt {:.1} ms, {} of {} packets lost, cwnd {} B, {} \
                         congestion events",
                        path.rtt.as_secs_f64() * 1000.0,
                        path.lost_packets,
                        path.sent_packets,
                        path.cwnd,
                        path.congestion_events
                    ));
                }
                None => out.push(format!("no {name} link")),
            }
        }
        out.join("; ")
    }

    /// The `link` connection to `id`, if it is open (never waits).
    fn live_connection(&self, id: NodeId, link: Link) -> Option<quinn::Connection> {
        self.connections
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .and_then(|slots| slots[link as usize].try_lock().and_then(|c| c.clone()))
            .filter(|conn| conn.close_reason().is_none())
    }

    /// Each member's live outbound control connection as (member,
    /// smoothed RTT, packets lost, packets sent), the counts since the
    /// connection opened; for `auto` Raft timing. The control link carries
    /// no bulk data, so its RTT is the path's, not a queue's.
    pub fn link_figures(&self) -> Vec<(NodeId, Duration, u64, u64)> {
        let ids: Vec<NodeId> = self
            .connections
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        ids.into_iter()
            .filter_map(|id| {
                let path = self.live_connection(id, Link::Control)?.stats().path;
                Some((id, path.rtt, path.lost_packets, path.sent_packets))
            })
            .collect()
    }

    /// The clock a member's messages stamp (see [`Peers::heard_within`]).
    fn heard_clock(&self, id: NodeId) -> Arc<AtomicU64> {
        if let Some(clock) = self
            .heard
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return clock.clone();
        }
        let mut heard = self.heard.write().unwrap_or_else(|p| p.into_inner());
        // Only members pass the hello, but members come and go: keep the
        // map from growing over a long life.
        if heard.len() > 1024 {
            heard.retain(|id, _| self.members.contains(*id));
        }
        heard.entry(id).or_default().clone()
    }

    /// The member that said this one was removed from the cluster, if one
    /// did since the last call. It is a member that proved who it is (it
    /// passed the hello on the connection it closed, or it is the member we
    /// connected to), but any member may say so: the Raft loop believes it
    /// only from the leader it follows.
    pub fn take_removal_claims(&self) -> Vec<NodeId> {
        let mut claims = self
            .removal_claims
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *claims).into_iter().collect()
    }

    /// Notes a connection from or to member `by` closed with the "removed"
    /// code.
    fn note_removed(&self, e: &quinn::ConnectionError, by: NodeId) {
        if let quinn::ConnectionError::ApplicationClosed(closed) = e {
            if closed.error_code == REMOVED {
                let mut claims = self
                    .removal_claims
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                // Bounded: only members pass the hello.
                if claims.len() < 1024 {
                    claims.insert(by);
                }
            }
        }
    }

    /// Whether `e` is member `to` refusing us; if so, says why (at most
    /// every [`REFUSAL_LOG_EVERY`] per member).
    fn note_refusal(&self, to: NodeId, e: &quinn::ConnectionError) -> bool {
        self.note_removed(e, to);
        let quinn::ConnectionError::ApplicationClosed(closed) = e else {
            return false;
        };
        if closed.error_code != REFUSED && closed.error_code != REMOVED {
            return false;
        }
        let mut logged = self.refused_by.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if logged
            .get(&to)
            .is_none_or(|at| now.duration_since(*at) >= REFUSAL_LOG_EVERY)
        {
            logged.insert(to, now);
            log::warn!(
                "member {to:x} refused this member: {}",
                String::from_utf8_lossy(&closed.reason)
            );
        }
        true
    }

    /// Logs a refusal, at most every [`REFUSAL_LOG_EVERY`] per sender.
    fn log_refusal(&self, hello: &PeerHello, from: std::net::SocketAddr, why: &Refusal) {
        let mut logged = self
            .refusals_logged
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if logged
            .get(&hello.from)
            .is_some_and(|at| now.duration_since(*at) < REFUSAL_LOG_EVERY)
        {
            return;
        }
        // Senders pick their claimed IDs; keep the map small.
        if logged.len() >= 1024 {
            logged.clear();
        }
        logged.insert(hello.from, now);
        log::warn!(
            "refused peer {from} (member {:x}, name {:?}): {why}",
            hello.from,
            hello.name
        );
    }
}

/// Writes the cluster ID file (temp file, fsync, rename, fsync directory).
fn save_cluster_id(path: &std::path::Path, id: u64) -> std::io::Result<()> {
    let fs = crate::storage::fs::OsFs;
    crate::storage::fs::write_atomic(&fs, path, format!("{id:x}\n").as_bytes())
}

/// The cluster ID a joining member saved, if any.
pub fn load_cluster_id(path: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    u64::from_str_radix(text.trim(), 16)
        .ok()
        .filter(|id| *id != 0)
}

/// One lane to one member: takes messages off its queue and writes them to
/// its stream, (re)connecting as needed. Ends when the queue is dropped.
async fn run_lane(peers: Arc<Peers>, to: NodeId, lane: Lane, queue: channel::Receiver<Message>) {
    let mut stream: Option<(quinn::Connection, quinn::SendStream)> = None;
    let mut retry_at = Instant::now();
    let mut backoff = MIN_BACKOFF;
    // Whether the current outage was logged (once per outage, not per try).
    let mut reported = false;
    let mut last_write: Option<Instant> = None;
    let sent_bytes = SERVER.peer_sent_bytes.with(&[&format!("{to:x}")]);
    loop {
        if !peers.members.contains(to) {
            log::debug!("member {to:x} left; its {} lane ends", lane.name());
            return;
        }
        // The control lane connects even with nothing to send, every
        // MAX_BACKOFF while it has no stream: members that never exchange
        // Raft messages (two followers) still learn each other's client
        // URLs from the hello, and a leader is reachable for forwarding.
        let next = if stream.is_some() && lane.nudges(last_write, Instant::now()) {
            match runtime::timeout(NUDGE_EVERY, queue.recv()).await {
                Ok(received) => received.ok(),
                Err(_) => {
                    if let Some((conn, _)) = stream.as_ref() {
                        nudge(conn);
                    }
                    continue;
                }
            }
        } else if stream.is_none() && lane == Lane::Control {
            match runtime::timeout(MAX_BACKOFF, queue.recv()).await {
                Ok(received) => received.ok(),
                Err(_) => {
                    if Instant::now() >= retry_at {
                        if let Ok(s) = peers.open_lane(to, lane).await {
                            stream = Some(s);
                            backoff = MIN_BACKOFF;
                        }
                    }
                    continue;
                }
            }
        } else {
            queue.recv().await.ok()
        };
        let Some(message) = next else {
            return;
        };
        if stream.is_none() {
            if Instant::now() < retry_at {
                peers.count_drop(to, "reconnecting");
                continue;
            }
            match peers.open_lane(to, lane).await {
                Ok(s) => {
                    if reported {
                        log::info!("reconnected to member {to:x} ({} lane)", lane.name());
                    }
                    stream = Some(s);
                    backoff = MIN_BACKOFF;
                    reported = false;
                }
                Err(e) => {
                    if !reported && lane == Lane::Control {
                        log::warn!("cannot reach member {to:x}: {e}; retrying");
                        reported = true;
                    } else {
                        log::debug!("member {to:x} ({} lane): {e}", lane.name());
                    }
                    retry_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    peers.count_drop(to, "no connection");
                    continue;
                }
            }
        }
        let Some(conn) = stream.as_ref().map(|(conn, _)| conn.clone()) else {
            continue;
        };
        let frame = match qed_wire::frame::encode(&message, MAX_PEER_FRAME) {
            Ok(frame) => frame,
            Err(e) => {
                log::warn!("a Raft message to {to:x} does not encode ({e}); dropped");
                peers.count_drop(to, "encode");
                continue;
            }
        };
        // The stream's hello went first on this connection, so the peer
        // knows who its datagrams are from (one that overtakes the hello
        // is dropped there, as a lost one would be).
        if Lane::unordered(&message.body)
            && conn
                .max_datagram_size()
                .is_some_and(|max| frame.len() <= max)
        {
            let len = frame.len() as u64;
            match conn.send_datagram(frame.clone().into()) {
                Ok(()) => {
                    sent_bytes.add(len);
                    continue;
                }
                Err(quinn::SendDatagramError::ConnectionLost(e)) => {
                    if peers.note_refusal(to, &e) {
                        retry_at = Instant::now() + MAX_BACKOFF;
                    }
                    log::debug!("member {to:x}: connection lost ({e})");
                    stream = None;
                    peers.count_drop(to, "connection lost");
                    continue;
                }
                // Not possible on this connection after all: the stream.
                Err(e) => log::debug!("member {to:x}: datagram not sent ({e})"),
            }
        }
        if Lane::datagram_only(&message.body) {
            peers.count_drop(to, "no datagram");
            continue;
        }
        let Some((_, send)) = stream.as_mut() else {
            continue;
        };
        let written = runtime::timeout(lane.write_timeout(), send.write_all(&frame)).await;
        if matches!(written, Ok(Ok(()))) {
            sent_bytes.add(frame.len() as u64);
            last_write = Some(Instant::now());
            peers.note_append_sent(to, &message.body, &conn);
        } else {
            match written {
                Ok(Err(quinn::WriteError::ConnectionLost(e))) if peers.note_refusal(to, &e) => {
                    retry_at = Instant::now() + MAX_BACKOFF;
                }
                _ => log::debug!("member {to:x} ({} lane): write failed", lane.name()),
            }
            // A partial frame may have left: the receiver must not read on.
            let _ = send.reset(FRAME_VIOLATION);
            stream = None;
            peers.count_drop(to, "write failed");
        }
    }
}

/// How often a data lane that went quiet nudges its connection (see
/// [`Lane::nudges`]): a few times per loopback or LAN round trip, so a lost
/// tail is found within about one; on a WAN link, tens of tiny packets a
/// second, and only for [`NUDGE_WINDOW`] after a write.
const NUDGE_EVERY: Duration = Duration::from_millis(20);
/// How long after its last write a data lane keeps nudging: long enough
/// for many nudge round trips even at 30% loss each way (each gets through
/// and back about half the time), short enough that a quiet link falls
/// back to QUIC's keep-alive.
const NUDGE_WINDOW: Duration = Duration::from_secs(1);

/// One nudge: an empty QUIC datagram on `conn`, which a receiver ignores
/// (older members: an undecodable datagram, dropped). It is ACK-eliciting,
/// so its ACK lets QUIC declare the stream packets sent before it lost (the
/// time threshold) and resend them at once, instead of waiting for a loss
/// probe whose timeout doubles each time one is lost.
fn nudge(conn: &quinn::Connection) {
    if conn.max_datagram_size().is_some() {
        let _ = conn.send_datagram(Vec::new().into());
    }
}

/// How often a lane from a member samples the connection's RTT.
const RTT_SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Accepts peer connections until the endpoint closes.
pub async fn serve(peers: Arc<Peers>, node: Arc<Node>) {
    while let Some(incoming) = peers.endpoint.accept().await {
        let (peers, node) = (peers.clone(), node.clone());
        runtime::spawn(async move {
            let from = incoming.remote_address();
            match incoming.await {
                Ok(conn) => serve_connection(conn, peers, node).await,
                // Most likely a certificate that does not chain to
                // --peer-trusted-ca-file; worth a line, but not one per retry.
                Err(e) if peers.quiet_for(REFUSAL_LOG_EVERY) => {
                    log::warn!("rejected a peer connection from {from}: {e}");
                }
                Err(e) => log::debug!("rejected a peer connection from {from}: {e}"),
            }
        });
    }
}

/// One inbound connection. `sender` is the member whose hello some stream
/// of it passed (0 until one did): only such a connection's close code is
/// heard at all.
async fn serve_connection(conn: quinn::Connection, peers: Arc<Peers>, node: Arc<Node>) {
    let sender = Arc::new(AtomicU64::new(0));
    let calls = {
        let (conn, peers, node, sender) =
            (conn.clone(), peers.clone(), node.clone(), sender.clone());
        runtime::spawn(async move {
            while let Ok((send, recv)) = conn.accept_bi().await {
                runtime::spawn(serve_call(
                    conn.clone(),
                    send,
                    recv,
                    peers.clone(),
                    node.clone(),
                    sender.clone(),
                ));
            }
        })
    };
    runtime::spawn(serve_datagrams(
        conn.clone(),
        peers.clone(),
        node.clone(),
        sender.clone(),
    ));
    loop {
        match conn.accept_uni().await {
            Ok(recv) => {
                runtime::spawn(serve_lane(
                    conn.clone(),
                    recv,
                    peers.clone(),
                    node.clone(),
                    sender.clone(),
                ));
            }
            Err(e) => {
                // The leader closes its connection to a member it removed.
                match sender.load(Ordering::Relaxed) {
                    0 => {}
                    by => peers.note_removed(&e, by),
                }
                break;
            }
        }
    }
    calls.await;
}

/// Reads and checks a stream's hello; a refused one closes the connection.
/// An accepted one names the connection's `sender`.
async fn accept_hello(
    conn: &quinn::Connection,
    recv: &mut quinn::RecvStream,
    peers: &Peers,
    sender: &AtomicU64,
) -> Option<PeerHello> {
    let hello = match stream::read::<PeerHello>(recv, MAX_HELLO_FRAME).await {
        Ok(Some(hello)) => hello,
        Ok(None) => return None,
        Err(e) => {
            log::debug!("peer {}: bad hello: {e}", conn.remote_address());
            let _ = recv.stop(FRAME_VIOLATION);
            return None;
        }
    };
    let checked = check_hello(&hello, &peers.members).and_then(|()| {
        let certs = transport::tls::peer_certificates(conn);
        check_identity(
            peers.trust,
            &peers.members,
            hello.from,
            &hello.peer_urls,
            &certs,
        )
    });
    if let Err(why) = checked {
        peers.log_refusal(&hello, conn.remote_address(), &why);
        let code = match why {
            Refusal::Removed(_) => REMOVED,
            _ => REFUSED,
        };
        conn.close(code, why.to_string().as_bytes());
        return None;
    }
    if peers.members.cluster_id() == 0 {
        peers.adopt_cluster_id(&hello);
    }
    peers.members.learn(
        hello.from,
        &hello.name,
        &hello.peer_urls,
        &hello.client_urls,
    );
    sender.store(hello.from, Ordering::Relaxed);
    Some(hello)
}

/// One inbound lane: Raft messages from one member, handed to the Raft loop.
async fn serve_lane(
    conn: quinn::Connection,
    mut recv: quinn::RecvStream,
    peers: Arc<Peers>,
    node: Arc<Node>,
    sender: Arc<AtomicU64>,
) {
    let Some(hello) = accept_hello(&conn, &mut recv, &peers, &sender).await else {
        return;
    };
    let from = format!("{:x}", hello.from);
    let received_bytes = SERVER.peer_received_bytes.with(&[&from]);
    let rtt = SERVER.peer_rtt.with(&[&from]);
    let lost = SERVER.peer_lost_packets.with(&[&from]);
    let mut rtt_sampled = Instant::now();
    let heard = peers.heard_clock(hello.from);
    loop {
        let read = stream::read_raw(&mut recv, MAX_PEER_FRAME).await;
        if let Ok(Some(raw)) = &read {
            received_bytes.add((qed_wire::frame::PREFIX_LEN + raw.0.len()) as u64);
            // quinn's smoothed RTT of this connection, sampled at most once
            // a second.
            if rtt_sampled.elapsed() >= RTT_SAMPLE_EVERY {
                rtt_sampled = Instant::now();
                rtt.observe(conn.rtt());
                lost.set(conn.stats().path.lost_packets);
            }
        }
        match read.and_then(|raw| raw.map(|r| r.decode::<Message>()).transpose()) {
            // A member speaks only for itself.
            Ok(Some(message)) if message.from == hello.from => {
                heard.store(
                    peers.epoch.elapsed().as_millis() as u64 + 1,
                    Ordering::Relaxed,
                );
                if let MessageBody::AppendResponse {
                    index,
                    reject: false,
                    ..
                } = message.body
                {
                    peers.note_append_answer(hello.from, index);
                }
                node.step(message);
            }
            Ok(Some(message)) => {
                log::warn!(
                    "member {:x} sent a message claiming to be from {:x}; stream dropped",
                    hello.from,
                    message.from
                );
                let _ = recv.stop(FRAME_VIOLATION);
                return;
            }
            Ok(None) => return,
            Err(TransportError::Frame(e)) => {
                log::warn!(
                    "member {:x} sent a bad frame ({e}); stream dropped",
                    hello.from
                );
                let _ = recv.stop(FRAME_VIOLATION);
                return;
            }
            Err(e) => {
                log::debug!("lane from member {:x} ended: {e}", hello.from);
                return;
            }
        }
    }
}

/// The datagrams of one inbound connection: heartbeats and their
/// responses (see [`Lane::unordered`]), each one frame. Believed only once
/// a stream of the connection passed the hello, only from the member that
/// hello named, and only of those kinds; anything else is dropped.
/// Ends with the connection.
async fn serve_datagrams(
    conn: quinn::Connection,
    peers: Arc<Peers>,
    node: Arc<Node>,
    sender: Arc<AtomicU64>,
) {
    while let Ok(datagram) = conn.read_datagram().await {
        let from = sender.load(Ordering::Relaxed);
        if from == 0 || datagram.is_empty() {
            continue;
        }
        match qed_wire::frame::decode_frame::<Message>(&datagram, MAX_HELLO_FRAME) {
            Ok(message) if message.from == from && Lane::unordered(&message.body) => {
                SERVER
                    .peer_received_bytes
                    .with(&[&format!("{from:x}")])
                    .add(datagram.len() as u64);
                peers.heard_clock(from).store(
                    peers.epoch.elapsed().as_millis() as u64 + 1,
                    Ordering::Relaxed,
                );
                node.step(message);
            }
            Ok(_) => log::debug!("member {from:x} sent an unexpected datagram; dropped"),
            Err(e) => log::debug!("member {from:x} sent a bad datagram ({e}); dropped"),
        }
    }
}

/// One forwarded call: hello, call, answer.
async fn serve_call(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    peers: Arc<Peers>,
    node: Arc<Node>,
    sender: Arc<AtomicU64>,
) {
    if accept_hello(&conn, &mut recv, &peers, &sender)
        .await
        .is_none()
    {
        return;
    }
    let reply = match stream::read::<PeerCall>(&mut recv, MAX_PEER_FRAME).await {
        Ok(Some(call)) => node.serve_peer_call(call).await,
        Ok(None) => return,
        Err(e) => {
            let _ = recv.stop(FRAME_VIOLATION);
            Err(Error::InvalidArgument(format!("malformed peer call: {e}")))
        }
    };
    if stream::write(&mut send, &reply, MAX_PEER_FRAME)
        .await
        .is_ok()
    {
        let _ = send.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::members::{member_id, parse_initial_cluster};

    fn members(name: &str, url: &str, token: &str) -> Members {
        let initial = parse_initial_cluster("n1=http://a:1,n2=http://b:2,n3=http://c:3").unwrap();
        Members::from_initial_cluster(&initial, name, &[url.to_string()], &[], token).unwrap()
    }

    #[test]
    fn refuses_strangers() {
        let n1 = members("n1", "http://a:1", "t");
        let n2 = members("n2", "http://b:2", "t");
        let hello = PeerHello {
            cluster_id: n2.cluster_id(),
            from: n2.local,
            to: n1.local,
            ..Default::default()
        };
        assert_eq!(check_hello(&hello, &n1), Ok(()));
        let other_token = members("n2", "http://b:2", "u");
        let stranger = PeerHello {
            cluster_id: other_token.cluster_id(),
            from: other_token.local,
            ..hello.clone()
        };
        assert!(matches!(
            check_hello(&stranger, &n1),
            Err(Refusal::OtherCluster { .. })
        ));
        let unknown = PeerHello {
            from: 42,
            ..hello.clone()
        };
        assert_eq!(check_hello(&unknown, &n1), Err(Refusal::UnknownMember(42)));
        let itself = PeerHello {
            from: n1.local,
            ..hello.clone()
        };
        assert!(check_hello(&itself, &n1).is_err());
        let misaddressed = PeerHello {
            to: 7,
            ..hello.clone()
        };
        assert_eq!(check_hello(&misaddressed, &n1), Err(Refusal::NotForUs(7)));
        // A member removed from the configuration is told so.
        let n3 = members("n3", "http://c:3", "t");
        n1.sync(&qed_wire::raft::ConfState {
            voters: vec![n1.local, n2.local],
            learners: vec![],
        });
        let removed = PeerHello {
            from: n3.local,
            ..hello.clone()
        };
        assert_eq!(check_hello(&removed, &n1), Err(Refusal::Removed(n3.local)));
        // A joining member (cluster ID not known yet) takes a member's
        // hello, but not one that has no cluster ID either.
        n1.adopt_cluster_id(0);
        assert_eq!(check_hello(&hello, &n1), Ok(()));
        let joiner = PeerHello {
            cluster_id: 0,
            ..hello
        };
        assert!(check_hello(&joiner, &n1).is_err());
    }

    fn cert_for(names: &[&str]) -> rustls::pki_types::CertificateDer<'static> {
        cert_named("", names)
    }

    fn cert_named(cn: &str, names: &[&str]) -> rustls::pki_types::CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        if !cn.is_empty() {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, "qed");
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        params.self_signed(&key).unwrap().der().clone()
    }

    /// With a CA, a member's certificate must name a host of its peer URLs.
    #[test]
    fn a_ca_certificate_must_name_the_member() {
        let n1 = members("n1", "http://a:1", "t");
        let n2 = member_id(&["http://b:2".to_string()], "t");
        let check = |cert| check_identity(PeerTrust::Ca, &n1, n2, &[], &[cert]);
        assert_eq!(check(cert_for(&["b"])), Ok(()));
        assert!(matches!(
            check(cert_for(&["a", "other.example"])),
            Err(Refusal::Identity { .. })
        ));
        assert!(check_identity(PeerTrust::Ca, &n1, n2, &[], &[]).is_err());
        // Or the member's name as the common name (the table's name, n2).
        assert_eq!(check(cert_named("n2", &["other.example"])), Ok(()));
        assert!(check(cert_named("n3", &["other.example"])).is_err());
        // IP addresses are matched against IP SANs.
        let initial = parse_initial_cluster("n1=http://10.0.0.1:1,n2=http://10.0.0.2:2").unwrap();
        let ips = Members::from_initial_cluster(
            &initial,
            "n1",
            &["http://10.0.0.1:1".to_string()],
            &[],
            "t",
        )
        .unwrap();
        let n2 = member_id(&["http://10.0.0.2:2".to_string()], "t");
        let check = |cert| check_identity(PeerTrust::Ca, &ips, n2, &[], &[cert]);
        assert_eq!(check(cert_for(&["10.0.0.2"])), Ok(()));
        assert!(check(cert_for(&["10.0.0.1"])).is_err());
    }

    /// Without a CA, the first certificate a member shows is the only one
    /// it may show, across restarts.
    #[test]
    fn generated_certificates_are_pinned_on_first_use() {
        let dir = std::env::temp_dir().join(format!("qed-pins-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("member").join("peer_pins");
        let n1 = members("n1", "http://a:1", "t");
        n1.load_pins(path.clone()).unwrap();
        let n2 = member_id(&["http://b:2".to_string()], "t");
        let (mine, forged) = (cert_for(&["b"]), cert_for(&["b"]));
        let check = |m: &Members, cert: &rustls::pki_types::CertificateDer<'static>| {
            check_identity(PeerTrust::Pinned, m, n2, &[], std::slice::from_ref(cert))
        };
        assert_eq!(check(&n1, &mine), Ok(()), "first contact pins");
        assert_eq!(check(&n1, &mine), Ok(()));
        assert!(matches!(check(&n1, &forged), Err(Refusal::Identity { .. })));
        // A restart keeps the pin.
        let again = members("n1", "http://a:1", "t");
        again.load_pins(path.clone()).unwrap();
        assert!(check(&again, &forged).is_err());
        assert_eq!(check(&again, &mine), Ok(()));
        // A damaged pin file is an error, not a reason to trust anew.
        std::fs::write(&path, "zz\n").unwrap();
        assert!(members("n1", "http://a:1", "t").load_pins(path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn data_lanes_nudge_their_link_for_a_while_after_writing() {
        let t0 = Instant::now();
        let soon = t0 + NUDGE_EVERY;
        let late = t0 + NUDGE_WINDOW;
        for lane in [Lane::Append, Lane::Snapshot] {
            assert!(lane.nudges(Some(t0), soon));
            assert!(!lane.nudges(Some(t0), late), "quiet long enough");
            assert!(!lane.nudges(None, soon), "never wrote");
        }
        // Heartbeats keep the control link's ACKs coming.
        assert!(!Lane::Control.nudges(Some(t0), soon));
    }

    #[test]
    fn small_messages_do_not_share_a_lane_with_big_ones() {
        assert_eq!(
            Lane::of(&MessageBody::Heartbeat {
                commit: 1,
                read_round: 0
            }),
            Lane::Control
        );
        assert_eq!(
            Lane::of(&MessageBody::Propose { entries: vec![] }),
            Lane::Append
        );
        assert_eq!(
            Lane::of(&MessageBody::Snapshot {
                meta: Default::default(),
                offset: 0,
                data: vec![],
                done: false,
                checksum: 0,
            }),
            Lane::Snapshot
        );
    }

    /// A durability announcement rides the control link as a datagram
    /// only (an older member drops an undecodable datagram, while an
    /// undecodable frame would end its stream); heartbeats fall back to
    /// the stream.
    #[test]
    fn durability_announcements_go_only_as_datagrams() {
        let durable = MessageBody::LeaderDurable { index: 7 };
        assert_eq!(Lane::of(&durable), Lane::Control);
        assert!(Lane::unordered(&durable) && Lane::datagram_only(&durable));
        let heartbeat = MessageBody::Heartbeat {
            commit: 1,
            read_round: 0,
        };
        assert!(Lane::unordered(&heartbeat) && !Lane::datagram_only(&heartbeat));
    }
}
