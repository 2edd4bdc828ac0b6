//! The node: Raft, storage and the state machine, serving clients.
//!
//! [`start`] recovers the durable log (`<data-dir>/member/{wal,snap}`),
//! rebuilds the state machine from the newest snapshot, starts the Raft
//! driver ([`raft_loop`]), sets up TLS (generating a CA and certificates in
//! the data directory when none are given) and serves the client URLs; with
//! other members in `--initial-cluster` ([`members`]) it also serves the
//! peer URL ([`peer`]), through which the Raft driver talks to them.
//! [`node::Node`] is the single entry point for every call;
//! [`state_machine`] is what applying a request means; [`service`] turns
//! QUIC streams into calls.

mod append_watch;
pub mod auth;
pub mod budget;
pub mod compactor;
mod held;
pub mod members;
pub mod node;
pub mod peer;
pub mod probes;
pub mod quota;
pub mod raft_loop;
pub mod service;
pub mod snapshot_file;
pub mod state_machine;
pub mod timing;
pub mod watchers;

use crate::lease::{min_lease_ttl, LeaseConfig};
use crate::raft;
use crate::runtime::channel;
use crate::storage::durable_log::{DurableLog, LogOptions};
use crate::storage::wal::DEFAULT_SEGMENT_BYTES;
use crate::storage::StorageError;
use crate::transport::{self, tls::TlsFiles, TransportError};
use crate::wire::raft::{ConfState, SnapshotMeta};
use node::{Identity, Node};
use raft_loop::LoopOptions;
use state_machine::{Limits, StateMachine};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use watchers::Watchers;

/// Milliseconds of the process's monotonic clock: the `now` the pure
/// lessor and watch hub are given.
pub(crate) fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Everything a node needs to start; the `qed` binary fills it from flags.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
    pub initial_advertise_peer_urls: Vec<String>,
    /// etcd's `--initial-cluster` (`name=url,...`); empty means this member
    /// alone (`<name>=<initial-advertise-peer-urls>`).
    pub initial_cluster: String,
    pub initial_cluster_token: String,
    /// etcd's `--initial-cluster-state existing`: with an empty data
    /// directory, join a running cluster that added this member.
    pub join_existing: bool,
    /// Where to listen for peers (used only when there are peers).
    pub listen_peer_urls: Vec<String>,
    /// etcd's `--listen-metrics-urls`: plain HTTP for /metrics and /health.
    pub listen_metrics_urls: Vec<String>,
    /// Peer TLS (etcd's `--peer-*` flags); without them the member's client
    /// certificate is used and peers are not verified (`--peer-auto-tls`).
    pub peer_cert_file: Option<PathBuf>,
    pub peer_key_file: Option<PathBuf>,
    pub peer_trusted_ca_file: Option<PathBuf>,
    pub peer_client_cert_auth: bool,
    /// etcd's `--strict-reconfig-check` (on by default): refuse membership
    /// changes that would leave fewer started or reachable voters than a
    /// quorum.
    pub strict_reconfig_check: bool,
    /// Certificate and key for the client listener; generated when unset.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// With `client_cert_auth`, clients must present a certificate signed by it.
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
    pub quota_backend_bytes: u64,
    /// `--max-request-bytes` and `--max-txn-ops`.
    pub limits: node::ClientLimits,
    /// Fewest applied entries between snapshots (etcd's `--snapshot-count`;
    /// a snapshot also waits for a log a quarter of the last one's size).
    pub snapshot_count: u64,
    /// Applied entries the Raft log keeps in memory (etcd 3.6's
    /// `--experimental-snapshot-catchup-entries`).
    pub snapshot_catchup_entries: u64,
    /// Snapshot files kept (etcd's `--max-snapshots`).
    pub max_snapshots: usize,
    /// WAL files kept even when covered by a snapshot (etcd's `--max-wals`).
    pub max_wals: usize,
    /// One Raft tick (etcd's `--heartbeat-interval`).
    pub heartbeat_interval: Duration,
    /// Ticks without a leader before an election (etcd's
    /// `--election-timeout` divided by the heartbeat interval).
    pub election_ticks: u32,
    /// With `auto` for either flag: the Raft loop derives both from the
    /// measured peer links (`timing.rs`), starting from the two above.
    pub auto_timing: Option<timing::TimingFlags>,
    /// etcd's `--auto-compaction-mode` and `--auto-compaction-retention`
    /// (`None`: off, etcd's default).
    pub auto_compaction: Option<crate::mvcc::auto_compact::Retention>,
    /// `--auth-token`, `--auth-token-ttl`, `--bcrypt-cost`.
    pub auth: auth::AuthConfig,
}

#[derive(Debug)]
pub enum ServerError {
    /// The data directory cannot be created or used.
    DataDir {
        path: PathBuf,
        reason: String,
    },
    Transport(TransportError),
    /// The WAL or a snapshot could not be recovered.
    Storage(StorageError),
    /// A flag combination that cannot work.
    Config(String),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::DataDir { path, reason } => {
                write!(f, "data directory {}: {reason}", path.display())
            }
            ServerError::Transport(e) => write!(f, "{e}"),
            ServerError::Storage(e) => write!(f, "{e}"),
            ServerError::Config(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ServerError {}

impl From<TransportError> for ServerError {
    fn from(e: TransportError) -> Self {
        ServerError::Transport(e)
    }
}

/// A node that is listening; dropping it does not stop it.
pub struct RunningNode {
    pub node: Arc<Node>,
    pub endpoints: Vec<quinn::Endpoint>,
    /// The CA clients should trust (generated or given).
    pub ca_file: Option<PathBuf>,
    /// Yields why, if the node stops on its own (a storage failure).
    pub stopped: channel::Receiver<String>,
}

/// Binds every client URL and starts serving in the background.
pub fn start(config: &NodeConfig) -> Result<RunningNode, ServerError> {
    // Durable in its parent too, so a power cut cannot take a new member's
    // whole data directory after it acknowledged writes.
    crate::storage::create_dir_durable(&crate::storage::fs::OsFs, &config.data_dir).map_err(
        |e| ServerError::DataDir {
            path: config.data_dir.clone(),
            reason: e.to_string(),
        },
    )?;
    let mut listen = Vec::new();
    let mut listen_unix = Vec::new();
    let client_urls = transport::url::parse_client_list(&config.listen_client_urls.join(","))?;
    for url in client_urls {
        match url {
            transport::url::ClientUrl::Quic(endpoint) => listen.push(endpoint),
            transport::url::ClientUrl::Unix(path) => listen_unix.push(path),
        }
    }
    if listen.is_empty() && listen_unix.is_empty() {
        return Err(ServerError::Config("--listen-client-urls is empty".into()));
    }
    let (files, ca_file) = match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => (
            TlsFiles {
                cert: Some(cert.clone()),
                key: Some(key.clone()),
                ca: config
                    .trusted_ca_file
                    .clone()
                    .filter(|_| config.client_cert_auth),
            },
            config.trusted_ca_file.clone(),
        ),
        (None, None) => {
            let hosts: Vec<String> = listen
                .iter()
                .map(|e| e.host.clone())
                .chain(
                    transport::url::parse_client_list(&config.advertise_client_urls.join(","))?
                        .into_iter()
                        .filter_map(|url| match url {
                            transport::url::ClientUrl::Quic(e) => Some(e.host),
                            transport::url::ClientUrl::Unix(_) => None,
                        }),
                )
                .collect();
            let generated =
                transport::tls::ensure_self_signed(&config.data_dir.join("certs"), &hosts)?;
            let mut files = generated.node;
            if !config.client_cert_auth {
                files.ca = None;
            }
            (files, Some(generated.ca))
        }
        _ => {
            return Err(ServerError::Config(
                "--cert-file and --key-file must be given together".into(),
            ))
        }
    };
    if config.client_cert_auth && files.ca.is_none() {
        return Err(ServerError::Config(
            "--client-cert-auth needs --trusted-ca-file".into(),
        ));
    }
    let server_config = transport::tls::server_config(&files, qed_wire::CLIENT_ALPN)?;
    // The private key is stable across restarts and secret: a good seed for
    // the stateless-reset key (see `transport::endpoint`).
    let reset_secret = files.key.as_ref().and_then(|k| std::fs::read(k).ok());
    let authenticator = auth::Authenticator::new(&config.auth).map_err(ServerError::Config)?;
    let local_auth = Arc::new(auth::LocalAuth::new(config.auth.token_ttl));
    // The IDs this member was created with, if its data directory is not
    // new: they stay when its peer URLs change (MemberUpdate).
    let identity_file = config.data_dir.join("member").join("id");
    let stored = members::load_identity(&identity_file).map_err(|e| ServerError::DataDir {
        path: identity_file.clone(),
        reason: e.to_string(),
    })?;
    let members = Arc::new(initial_members(config, stored.map(|(id, _)| id))?);
    if let Some((_, cluster)) = stored.filter(|(_, cluster)| *cluster != 0) {
        members.adopt_cluster_id(cluster);
    }
    let identity = Identity {
        name: config.name.clone(),
        peer_urls: config.initial_advertise_peer_urls.clone(),
        client_urls: config.advertise_client_urls.clone(),
        member_id: members.local,
    };
    // A member joining a running cluster starts with no configuration (it
    // learns it from the leader) and no cluster ID (it learns it from the
    // first member that contacts it, and saves it for its restarts).
    let cluster_id_file = config.data_dir.join("member").join("cluster_id");
    let saved_cluster_id = peer::load_cluster_id(&cluster_id_file);
    let join = config.join_existing && saved_cluster_id.is_none();
    let initial_voters = if join { Vec::new() } else { members.ids() };
    let joined = join || saved_cluster_id.is_some();
    let (state, core, log, fresh, snapshot_bytes) = recover(
        config,
        &identity,
        &initial_voters,
        joined,
        local_auth.clone(),
    )?;
    match saved_cluster_id {
        Some(id) => members.adopt_cluster_id(id),
        // An initial member restarting with `existing` keeps the ID its
        // flags give; only a member with no data yet waits to learn it.
        None if join && fresh => {
            members.adopt_cluster_id(0);
            log::info!("joining a running cluster: waiting for its leader to contact this member");
        }
        None => {}
    }
    // The recovered configuration decides who is a member (a snapshot may
    // hold members added or removed since `--initial-cluster`); a fresh
    // log's configuration arrives with the first `Ready`.
    let conf = core.conf_state();
    if !conf.voters.is_empty() {
        members.sync(&conf);
    }
    members.set_updated_urls(state.member_urls());
    // The data directory is this member's now: keep its IDs, so that
    // they no longer depend on its flags.
    if stored.is_none_or(|(_, cluster)| cluster == 0 && members.cluster_id() != 0) {
        members::save_identity(&identity_file, members.local, members.cluster_id()).map_err(
            |e| ServerError::DataDir {
                path: identity_file.clone(),
                reason: e.to_string(),
            },
        )?;
    }
    let state = Arc::new(RwLock::new(state));
    let options = LoopOptions {
        tick: config.heartbeat_interval,
        snapshot_count: config.snapshot_count.max(1),
        snapshot_bytes,
        election_timeout: config.heartbeat_interval * config.election_ticks.max(2),
        strict_reconfig_check: config.strict_reconfig_check,
        auto_timing: config.auto_timing,
    };
    let watchers = Watchers::start(state.clone());
    // A cluster of one listens for peers too, as etcd does, so that
    // `member add` can grow it; but its peer port being taken (another
    // single node on the same machine, default ports) is no reason not to
    // serve: it runs without one, and says so.
    let peers = match start_peers(config, &members, &files, cluster_id_file) {
        Ok(peers) => Some(peers),
        Err(e) if members.ids().len() == 1 => {
            log::warn!(
                "a cluster of one without a peer port ({e}): members cannot be added \
                 until it is restarted with a free --listen-peer-urls"
            );
            None
        }
        Err(e) => return Err(e),
    };
    let (raft, stopped) = raft_loop::start(
        core,
        log,
        state.clone(),
        watchers.clone(),
        peers.clone(),
        members.clone(),
        options,
    );
    if let Some(retention) = config.auto_compaction {
        compactor::start(retention, identity.member_id, raft.clone(), state.clone());
    }
    let node = Arc::new(Node::new(
        identity,
        members,
        peers.clone(),
        state,
        raft,
        watchers,
        authenticator,
        local_auth,
        quota::Quota {
            bytes: config.quota_backend_bytes,
        },
        config.limits,
    ));
    if let Some(peers) = peers {
        crate::runtime::spawn(peer::serve(peers, node.clone()));
    }
    probes::serve(&config.listen_metrics_urls, node.clone()).map_err(ServerError::Config)?;
    let mut endpoints = Vec::new();
    for url in &listen {
        let endpoint =
            transport::endpoint::server(url.addr, server_config.clone(), reset_secret.as_deref())?;
        log::info!("serving client requests on {} (QUIC)", url.addr);
        crate::runtime::spawn(service::serve(endpoint.clone(), node.clone()));
        endpoints.push(endpoint);
    }
    for path in listen_unix {
        let listener = service::bind_unix(&path).map_err(|e| {
            ServerError::Transport(TransportError::Bind {
                addr: format!("unix://{}", path.display()),
                reason: e.to_string(),
            })
        })?;
        log::info!("serving client requests on unix://{}", path.display());
        crate::runtime::spawn(service::serve_unix(listener, path, node.clone()));
    }
    Ok(RunningNode {
        node,
        endpoints,
        ca_file,
        stopped,
    })
}

/// The member table from `--initial-cluster` (this member alone when
/// empty); `stored_id`: this member's ID from its data directory.
fn initial_members(
    config: &NodeConfig,
    stored_id: Option<u64>,
) -> Result<members::Members, ServerError> {
    let initial = if config.initial_cluster.trim().is_empty() {
        vec![(
            config.name.clone(),
            config.initial_advertise_peer_urls.clone(),
        )]
    } else {
        members::parse_initial_cluster(&config.initial_cluster)
            .map_err(|e| ServerError::Config(e.to_string()))?
    };
    members::Members::from_initial_cluster_keeping(
        &initial,
        &config.name,
        &config.initial_advertise_peer_urls,
        &config.advertise_client_urls,
        &config.initial_cluster_token,
        stored_id,
    )
    .map_err(|e| ServerError::Config(e.to_string()))
}

/// Binds the peer port and starts the lanes to the other members.
fn start_peers(
    config: &NodeConfig,
    members: &Arc<members::Members>,
    client_files: &TlsFiles,
    cluster_id_file: PathBuf,
) -> Result<Arc<peer::Peers>, ServerError> {
    let listen = transport::url::parse_list(&config.listen_peer_urls.join(","))?;
    let Some(first) = listen.first() else {
        return Err(ServerError::Config("--listen-peer-urls is empty".into()));
    };
    if listen.len() > 1 {
        log::warn!(
            "only the first --listen-peer-urls address ({}) is served",
            first.addr
        );
    }
    let files = match (&config.peer_cert_file, &config.peer_key_file) {
        (Some(cert), Some(key)) => TlsFiles {
            cert: Some(cert.clone()),
            key: Some(key.clone()),
            ca: config.peer_trusted_ca_file.clone(),
        },
        (None, None) => {
            log::warn!(
                "no --peer-cert-file: peer connections are encrypted with this member's \
                 generated certificate, and each member's certificate is trusted on first \
                 contact (pinned in member/peer_pins); give --peer-cert-file, --peer-key-file \
                 and --peer-trusted-ca-file to verify members against a CA"
            );
            TlsFiles {
                ca: None,
                ..client_files.clone()
            }
        }
        _ => {
            return Err(ServerError::Config(
                "--peer-cert-file and --peer-key-file must be given together".into(),
            ))
        }
    };
    if config.peer_client_cert_auth && files.ca.is_none() {
        return Err(ServerError::Config(
            "--peer-client-cert-auth needs --peer-trusted-ca-file".into(),
        ));
    }
    // With a CA both directions are verified, whatever
    // --peer-client-cert-auth says: a member that could connect unverified
    // could claim any member's ID. Without one, certificates are pinned.
    let trust = match &files.ca {
        Some(_) => peer::PeerTrust::Ca,
        None => {
            let pins = config.data_dir.join("member").join("peer_pins");
            members
                .load_pins(pins.clone())
                .map_err(|e| ServerError::DataDir {
                    path: pins,
                    reason: e.to_string(),
                })?;
            peer::PeerTrust::Pinned
        }
    };
    let server = transport::tls::peer_server_config(&files)?;
    let reset_secret = files.key.as_ref().and_then(|k| std::fs::read(k).ok());
    let client = transport::tls::peer_client_config(&files)?;
    Ok(peer::Peers::start(
        members.clone(),
        first.addr,
        server,
        client,
        peer::LocalMember {
            name: config.name.clone(),
            peer_urls: config.initial_advertise_peer_urls.clone(),
            client_urls: config.advertise_client_urls.clone(),
            cluster_id_file,
        },
        trust,
        reset_secret.as_deref(),
    )?)
}

/// The smallest bound on a snapshot received from the leader (see
/// `raft::Config::max_snapshot_bytes`), whatever the quota.
const MIN_SNAPSHOT_BOUND: u64 = 1 << 30;

/// Rebuilds the state machine and the Raft core from the durable log;
/// also says how large the state in the recovered snapshot is (0: none),
/// where the snapshot trigger's size condition starts.
fn recover(
    config: &NodeConfig,
    identity: &Identity,
    initial_voters: &[u64],
    joined: bool,
    local_auth: Arc<auth::LocalAuth>,
) -> Result<(StateMachine, raft::Node, DurableLog, bool, u64), ServerError> {
    let heartbeat_ms = u64::try_from(config.heartbeat_interval.as_millis()).unwrap_or(100);
    let limits = Limits {
        lease: LeaseConfig {
            min_ttl: min_lease_ttl(u64::from(config.election_ticks.max(2)), heartbeat_ms),
            ..LeaseConfig::default()
        },
    };
    let member_dir = config.data_dir.join("member");
    let started = std::time::Instant::now();
    let (log, recovered) = DurableLog::open(
        &member_dir,
        LogOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            max_snapshots: config.max_snapshots,
            max_wals: config.max_wals,
        },
    )
    .map_err(ServerError::Storage)?;
    let id = identity.member_id;
    // A new data directory starts with every initial member as a voter
    // (the core turns it into the first log entries, the same on all).
    let initial_conf = ConfState {
        voters: initial_voters.to_vec(),
        learners: Vec::new(),
    };
    // Nothing durable yet: a new member (it bootstraps, or waits to join).
    let fresh = recovered.snapshot.is_none()
        && recovered.entries.is_empty()
        && recovered.hard_state == Default::default();
    let snapshot_bytes = recovered.snapshot.as_ref().map_or(0, |(_, data)| data.len);
    let (state, snapshot) = match recovered.snapshot {
        // A member that joined a running cluster may hold a snapshot from
        // before it was added; any other must be in its newest snapshot.
        Some((meta, _))
            if !joined
                && !meta.conf_state.voters.contains(&id)
                && !meta.conf_state.learners.contains(&id) =>
        {
            return Err(ServerError::Config(format!(
                "{} belongs to member(s) {:x?}, not to this member ({id:x}); start with the \
                 --name, --initial-advertise-peer-urls and --initial-cluster-token it was created \
                 (or restored) with",
                config.data_dir.display(),
                meta.conf_state.voters
            )))
        }
        Some((meta, data)) => {
            let state = load_snapshot_state(&data, limits, local_auth)?;
            (
                state,
                raft::Snapshot {
                    meta,
                    data: raft::Image::default(),
                },
            )
        }
        None => (
            StateMachine::new(limits, local_auth),
            raft::Snapshot {
                meta: SnapshotMeta {
                    index: 0,
                    term: 0,
                    conf_state: initial_conf,
                },
                data: raft::Image::default(),
            },
        ),
    };
    let entries = recovered.entries.len();
    let mut cfg = raft::Config::new(id);
    cfg.catch_up_entries = config.snapshot_catchup_entries;
    cfg.election_tick = config.election_ticks.max(2);
    cfg.heartbeat_tick = 1;
    // The leader's image is about the size of its state, which its quota
    // bounds; quotas may differ between members, hence the slack.
    cfg.max_snapshot_bytes = config
        .quota_backend_bytes
        .saturating_mul(4)
        .max(MIN_SNAPSHOT_BOUND);
    let core = raft::Node::new(
        cfg,
        raft::RestartState {
            hard_state: recovered.hard_state,
            snapshot,
            entries: recovered.entries,
        },
    )
    .map_err(|e| ServerError::DataDir {
        path: member_dir.clone(),
        reason: format!("the recovered log is inconsistent: {e:?}"),
    })?;
    log::info!(
        "recovered {}: snapshot at index {}, {entries} log entries after it, in {:?}",
        member_dir.display(),
        state.applied(),
        started.elapsed()
    );
    // The snapshot file and the WAL records are gone; what they left free
    // inside the heap goes back too (see `heap`).
    crate::heap::release_free();
    Ok((state, core, log, fresh, snapshot_bytes))
}

/// The state machine in the snapshot a member restarts from. The file is
/// mapped and the key space's values stay in it (`mvcc::Backing`): a
/// restarted member holds the keys and indexes on its heap, and a value's
/// pages only once something reads it, as etcd's bbolt does. The pages
/// read while decoding are released afterwards. Where the file cannot be
/// mapped, the state is streamed from it onto the heap instead; either
/// way the image is never in memory whole, and the Raft core gets none (it
/// asks for a new snapshot should a follower need one).
fn load_snapshot_state(
    data: &crate::storage::durable_log::SnapshotState,
    limits: state_machine::Limits,
    local_auth: Arc<auth::LocalAuth>,
) -> Result<StateMachine, ServerError> {
    match data.map() {
        Ok(mapped) => {
            let backing = mapped.backing.clone();
            let loaded = StateMachine::from_snapshot_backed(
                mapped.backing,
                mapped.range,
                limits,
                local_auth,
            );
            backing.release_pages();
            loaded.map_err(|e| {
                ServerError::Storage(crate::storage::StorageError::Corrupt {
                    path: data.path(),
                    offset: 0,
                    reason: format!("snapshot state does not load: {e}"),
                })
            })
        }
        Err(e) => {
            log::warn!("cannot map the snapshot ({e}); reading it onto the heap instead");
            data.read_with(|image| {
                StateMachine::from_snapshot_stream(image, limits, local_auth)
                    .map_err(|e| e.to_string())
            })
            .map_err(ServerError::Storage)
        }
    }
}
