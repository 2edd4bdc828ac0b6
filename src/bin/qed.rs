//! `qed`: start a node. Flags follow etcd's names and defaults; every flag
//! can also be set as a `QED_*` environment variable (`--data-dir` is
//! `QED_DATA_DIR`), or as etcd's `ETCD_*` one when the `QED_*` one is unset
//! (what `etcdctl member add` prints works verbatim).

use clap::{Parser, Subcommand};
use qed::server::{self, timing, NodeConfig};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// An etcd-compatible key-value store for the edge, over QUIC.
///
/// With no subcommand, starts a node.
#[derive(Parser, Debug)]
#[command(name = "qed", version, about, long_about = None, args_conflicts_with_subcommands = true)]
struct Flags {
    #[command(subcommand)]
    command: Option<Command>,

    /// Human-readable name for this member.
    #[arg(long, env = "QED_NAME", default_value = "default")]
    name: String,

    /// Path to the data directory [default: ${name}.qed].
    #[arg(long, env = "QED_DATA_DIR")]
    data_dir: Option<PathBuf>,

    /// Comma-separated URLs to serve clients on. http and https both mean
    /// QUIC on that host and UDP port; unix:///PATH is a Unix socket (mode
    /// 0660) for a shim or SDK on this machine: the same calls without
    /// QUIC's encryption and packets, auth as for any client.
    #[arg(
        long,
        env = "QED_LISTEN_CLIENT_URLS",
        default_value = "https://127.0.0.1:2379"
    )]
    listen_client_urls: String,

    /// Comma-separated client URLs to advertise to the cluster
    /// [default: the listen client URLs].
    #[arg(long, env = "QED_ADVERTISE_CLIENT_URLS")]
    advertise_client_urls: Option<String>,

    /// This member's peer URLs, advertised to the cluster; with the cluster
    /// token they determine the member ID.
    #[arg(
        long,
        env = "QED_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    initial_advertise_peer_urls: String,

    /// Initial cluster token, so that distinct clusters get distinct IDs.
    /// Every member of a cluster must be given the same one.
    #[arg(long, env = "QED_INITIAL_CLUSTER_TOKEN", default_value = "qed-cluster")]
    initial_cluster_token: String,

    /// Every initial member as name=peer-url, comma-separated, the same on
    /// every member, e.g. n1=http://10.0.0.1:2380,n2=http://10.0.0.2:2380
    /// [default: ${name}=${initial-advertise-peer-urls}, a cluster of one].
    /// Member and cluster IDs are derived from it and the token, so every
    /// member computes the same ones.
    #[arg(long, env = "QED_INITIAL_CLUSTER")]
    initial_cluster: Option<String>,

    /// new: bootstrap the cluster from --initial-cluster. existing: join a
    /// running cluster that added this member with member add (give
    /// --initial-cluster as member add printed it); ignored on a restart.
    #[arg(long, env = "QED_INITIAL_CLUSTER_STATE", default_value = "new")]
    initial_cluster_state: String,

    /// etcd's --auto-compaction-mode: periodic (keep history newer than the
    /// retention) or revision (keep that many revisions). The leader
    /// proposes each compaction through Raft.
    #[arg(long, env = "QED_AUTO_COMPACTION_MODE", default_value = "periodic")]
    auto_compaction_mode: String,

    /// etcd's --auto-compaction-retention: periodic: a duration (30m, 1h30m)
    /// or a plain number of hours; revision: a number of revisions. 0 (the
    /// default, as etcd's) turns auto-compaction off; without it history
    /// grows until the quota raises NOSPACE.
    #[arg(long, env = "QED_AUTO_COMPACTION_RETENTION", default_value = "0")]
    auto_compaction_retention: String,

    /// Comma-separated http:// URLs (TCP) serving /metrics (Prometheus),
    /// /health, /livez, /readyz and /version, as etcd's flag. Default: none
    /// (etcd serves them on its client port too; qed-grpc does that).
    #[arg(long, env = "QED_LISTEN_METRICS_URLS")]
    listen_metrics_urls: Option<String>,

    /// Comma-separated URLs to listen on for the other members (QUIC on
    /// that UDP port). A cluster of one listens too, as etcd does, so
    /// members can be added to it (if the port is taken, it runs without).
    #[arg(
        long,
        env = "QED_LISTEN_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    listen_peer_urls: String,

    /// Certificate for peer connections (both directions). Without it, the
    /// member's client certificate is used and peers are not verified, as
    /// etcd's --peer-auto-tls.
    #[arg(long, env = "QED_PEER_CERT_FILE", requires = "peer_key_file")]
    peer_cert_file: Option<PathBuf>,

    /// Key for --peer-cert-file.
    #[arg(long, env = "QED_PEER_KEY_FILE", requires = "peer_cert_file")]
    peer_key_file: Option<PathBuf>,

    /// CA the other members' peer certificates must chain to.
    #[arg(long, env = "QED_PEER_TRUSTED_CA_FILE")]
    peer_trusted_ca_file: Option<PathBuf>,

    /// Require connecting members to present a certificate signed by
    /// --peer-trusted-ca-file.
    #[arg(long, env = "QED_PEER_CLIENT_CERT_AUTH")]
    peer_client_cert_auth: bool,

    /// Refuse membership changes that would leave fewer started (or
    /// reachable) voters than a quorum, as etcd does; on by default,
    /// because such a change can leave the cluster unable to commit.
    #[arg(long, env = "QED_STRICT_RECONFIG_CHECK", default_value_t = true,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    strict_reconfig_check: bool,

    /// Certificate for the client listener. With neither this nor
    /// --key-file, a CA and certificate are generated in ${data-dir}/certs.
    #[arg(long, env = "QED_CERT_FILE", requires = "key_file")]
    cert_file: Option<PathBuf>,

    /// Key for --cert-file.
    #[arg(long, env = "QED_KEY_FILE", requires = "cert_file")]
    key_file: Option<PathBuf>,

    /// CA that client certificates must chain to (with --client-cert-auth).
    #[arg(long, env = "QED_TRUSTED_CA_FILE")]
    trusted_ca_file: Option<PathBuf>,

    /// Require clients to present a certificate signed by the trusted CA.
    #[arg(long, env = "QED_CLIENT_CERT_AUTH")]
    client_cert_auth: bool,

    /// Raise the NOSPACE alarm when the in-memory key space and history
    /// exceed this many bytes; 0 means etcd's default of 2 GiB.
    #[arg(long, env = "QED_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    quota_backend_bytes: u64,

    /// Largest request a client may send, in bytes (etcd's default: 1.5
    /// MiB); larger ones get `etcdserver: request is too large`. Checked by
    /// the member the request arrives at.
    #[arg(long, env = "QED_MAX_REQUEST_BYTES", default_value_t = 1536 * 1024)]
    max_request_bytes: usize,

    /// Most operations in one txn (etcd's default: 128); more get
    /// `etcdserver: too many operations in txn request`.
    #[arg(long, env = "QED_MAX_TXN_OPS", default_value_t = 128)]
    max_txn_ops: usize,

    /// Fewest applied entries between snapshots; after one, the WAL
    /// segments it covers are released. Default 10,000 (etcd 3.6's). A
    /// snapshot also waits until the log written since the last one is a
    /// quarter of that snapshot's size: each snapshot writes the whole
    /// state, so a large state is not rewritten every 10,000 entries, and
    /// the WAL kept (what a restart replays) stays under a quarter of it
    /// (and under 20 times this count in entries).
    #[arg(long, env = "QED_SNAPSHOT_COUNT", default_value_t = 10_000)]
    snapshot_count: u64,

    /// Applied Raft entries kept in memory for followers a little behind;
    /// one further behind catches up from a snapshot. etcd 3.6's flag and
    /// default.
    #[arg(
        long,
        env = "QED_EXPERIMENTAL_SNAPSHOT_CATCHUP_ENTRIES",
        default_value_t = 5000
    )]
    experimental_snapshot_catchup_entries: u64,

    /// Snapshot files to keep (older ones are removed). Default 1:
    /// recovery uses only the newest, and each holds the whole state.
    #[arg(long, env = "QED_MAX_SNAPSHOTS", default_value_t = qed::storage::snapshot::DEFAULT_MAX_SNAPSHOTS)]
    max_snapshots: usize,

    /// WAL files to keep even when a snapshot covers them. Default 0: only
    /// what recovery needs (a follower behind the in-memory log gets a
    /// snapshot, never old WAL).
    #[arg(long, env = "QED_MAX_WALS", default_value_t = 0)]
    max_wals: usize,

    /// Time of one Raft heartbeat, in milliseconds; etcd's default suits
    /// loopback and LANs, lossy WAN links want more. `auto`: about one
    /// round trip to the slowest member (100-500 ms), measured as the
    /// cluster runs and logged when it changes.
    #[arg(long, env = "QED_HEARTBEAT_INTERVAL", default_value = "100")]
    heartbeat_interval: String,

    /// Time without a leader before an election, in milliseconds: at least
    /// 5 heartbeats, so that a lost heartbeat or two is not an election.
    /// `auto`: at least 10 heartbeats and 10 round trips, more on a lossy
    /// link (losing every heartbeat of one timeout stays below one in a
    /// million), 1-50 s, measured as the cluster runs.
    #[arg(long, env = "QED_ELECTION_TIMEOUT", default_value = "1000")]
    election_timeout: String,

    /// Threads that run the node's tasks (client calls, the Raft loop,
    /// peers); 0, the default, is one per core. The WAL writer and blocking
    /// work (fsync, bcrypt, snapshots) have threads of their own either way.
    /// One thread costs less CPU per call beside a shim and other programs
    /// on a small box (fewer wake-ups between threads), at the price of
    /// running on one core.
    #[arg(long, env = "QED_THREADS", default_value_t = 0)]
    threads: usize,

    /// debug, info, warn or error.
    #[arg(long, env = "QED_LOG_LEVEL", default_value = "info")]
    log_level: String,

    /// json (etcd's zap lines: level, ts, caller, msg, name) or text
    /// [default: text, or json with --logger zap].
    #[arg(long, env = "QED_LOG_FORMAT")]
    log_format: Option<String>,

    /// etcd's --logger: zap (JSON lines) or capnslog (text); accepted so
    /// etcd's command lines work.
    #[arg(long, env = "QED_LOGGER")]
    logger: Option<String>,

    /// Auth tokens: `simple` (random, kept by every member for
    /// --auth-token-ttl after last use), or signed JWTs:
    /// `jwt,pub-key=PATH,priv-key=PATH,sign-method=RS256|RS384|RS512|ES256|ES384|EdDSA[,ttl=5m]`
    /// (PEM keys: PKCS#8, or PKCS#1 for RSA; any member with the public key
    /// verifies a token).
    #[arg(long, env = "QED_AUTH_TOKEN", default_value = "simple")]
    auth_token: String,

    /// Seconds an unused simple token stays valid (etcd's default).
    #[arg(long, env = "QED_AUTH_TOKEN_TTL", default_value_t = 300)]
    auth_token_ttl: u64,

    /// bcrypt cost of stored password hashes (etcd's default: 10, about
    /// 50-100 ms per check; each step doubles it).
    #[arg(long, env = "QED_BCRYPT_COST", default_value_t = 10)]
    bcrypt_cost: u32,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Save, inspect or restore snapshots (etcdctl/etcdutl snapshot).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Create a CA, a node certificate and a client certificate.
    Certs {
        /// Directory to write ca.crt, ca.key, node.crt, node.key,
        /// client.crt and client.key into.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Comma-separated host names and IP addresses the node certificate
        /// is valid for, besides localhost and the loopback addresses.
        #[arg(long, default_value = "")]
        hosts: String,
    },
}

#[derive(Subcommand, Debug)]
enum SnapshotCommand {
    /// Stream a snapshot of a running node's state into FILE.
    Save {
        file: PathBuf,
        /// The node to snapshot.
        #[arg(long, env = "QED_ENDPOINTS", default_value = "https://127.0.0.1:2379")]
        endpoints: String,
        /// CA the node's certificate chains to [default: default.qed/certs/ca.crt].
        #[arg(long, env = "QED_CACERT")]
        cacert: Option<PathBuf>,
        /// Client certificate, for nodes with --client-cert-auth.
        #[arg(long, env = "QED_CERT")]
        cert: Option<PathBuf>,
        #[arg(long, env = "QED_KEY")]
        key: Option<PathBuf>,
    },
    /// Print a snapshot file's hash, revision, key count and size (qed's
    /// own snapshots and etcd v3 ones, `etcdctl snapshot save`'s bbolt file).
    Status {
        file: PathBuf,
        /// simple or table.
        #[arg(long = "write-out", short = 'w', default_value = "simple")]
        write_out: String,
    },
    /// Create a new data directory holding FILE's state (a qed snapshot or
    /// an etcd v3 one), as the only member of a new cluster.
    Restore {
        file: PathBuf,
        /// Directory to create [default: ${name}.qed].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The restored member's name, as it will be started.
        #[arg(long, default_value = "default")]
        name: String,
        /// The restored member's peer URLs, as it will be started.
        #[arg(long, default_value = "http://localhost:2380")]
        initial_advertise_peer_urls: String,
        /// Every member of the new cluster (`name=url,...`), as they will be
        /// started; restore each member's directory from the same file.
        /// [default: ${name}=${initial-advertise-peer-urls}]
        #[arg(long)]
        initial_cluster: Option<String>,
        #[arg(long, default_value = "qed-cluster")]
        initial_cluster_token: String,
    },
}

/// Bytes as etcdctl prints them ("2.1 MB").
fn human_bytes(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// A progress line on stderr, redrawn at most every whole percent.
fn progress_line(verb: &'static str) -> impl FnMut(u64, u64) {
    let mut last = u64::MAX;
    move |done, total| {
        let pct = (done * 100).checked_div(total).unwrap_or(100);
        if pct != last {
            last = pct;
            eprint!(
                "\r{verb} {} / {} ({pct}%)",
                human_bytes(done),
                human_bytes(total)
            );
            if done >= total {
                eprintln!();
            }
        }
    }
}

fn snapshot(command: SnapshotCommand) -> ExitCode {
    use qed::server::snapshot_file;
    match command {
        SnapshotCommand::Save {
            file,
            endpoints,
            cacert,
            cert,
            key,
        } => {
            let options = qed::client::ConnectOptions {
                ca_file: Some(cacert.unwrap_or_else(|| PathBuf::from("default.qed/certs/ca.crt"))),
                cert_file: cert,
                key_file: key,
                ..Default::default()
            };
            let partial = file.with_extension("part");
            let result = qed::runtime::block_on(async {
                let client = qed::client::Client::connect(&split(&endpoints), options).await?;
                let mut out = std::fs::File::create(&partial).map_err(|e| {
                    qed::client::ClientError::Protocol(format!("{}: {e}", partial.display()))
                })?;
                let n = client.snapshot(&mut out, progress_line("received")).await?;
                out.sync_all().map_err(|e| {
                    qed::client::ClientError::Protocol(format!("{}: {e}", partial.display()))
                })?;
                Ok::<u64, qed::client::ClientError>(n)
            });
            match result.and_then(|n| {
                std::fs::rename(&partial, &file).map(|_| n).map_err(|e| {
                    qed::client::ClientError::Protocol(format!("{}: {e}", file.display()))
                })
            }) {
                Ok(_) => {
                    println!("Snapshot saved at {}", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&partial);
                    eprintln!("qed snapshot save: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        SnapshotCommand::Status { file, write_out } => match snapshot_file::status(&file) {
            Ok(s) if write_out == "table" => {
                let size = human_bytes(s.total_size);
                println!("+----------+----------+------------+------------+");
                println!("|   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |");
                println!("+----------+----------+------------+------------+");
                println!(
                    "| {:08x} | {:>8} | {:>10} | {:<10} |",
                    s.hash.unwrap_or(0),
                    s.revision,
                    s.total_keys,
                    size
                );
                println!("+----------+----------+------------+------------+");
                ExitCode::SUCCESS
            }
            Ok(s) => {
                println!(
                    "{:x}, {}, {}, {}",
                    s.hash.unwrap_or(0),
                    s.revision,
                    s.total_keys,
                    human_bytes(s.total_size)
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("qed snapshot status: {e}");
                ExitCode::FAILURE
            }
        },
        SnapshotCommand::Restore {
            file,
            data_dir,
            name,
            initial_advertise_peer_urls,
            initial_cluster,
            initial_cluster_token,
        } => {
            let data_dir = data_dir.unwrap_or_else(|| PathBuf::from(format!("{name}.qed")));
            let peer_urls = split(&initial_advertise_peer_urls);
            let initial_cluster = initial_cluster.unwrap_or_else(|| {
                peer_urls
                    .iter()
                    .map(|u| format!("{name}={u}"))
                    .collect::<Vec<_>>()
                    .join(",")
            });
            let members = match qed::server::members::parse_initial_cluster(&initial_cluster)
                .and_then(|initial| {
                    qed::server::members::Members::from_initial_cluster(
                        &initial,
                        &name,
                        &peer_urls,
                        &[],
                        &initial_cluster_token,
                    )
                }) {
                Ok(members) => members,
                Err(e) => {
                    eprintln!("qed snapshot restore: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let identity = qed::server::node::Identity::new(
                name,
                peer_urls,
                Vec::new(),
                &initial_cluster_token,
            );
            match snapshot_file::restore(
                &file,
                &data_dir,
                &members.ids(),
                &mut progress_line("restoring"),
            ) {
                Ok(s) => {
                    println!(
                        "restored {} snapshot {} (revision {}, {} keys, {} revisions, {} leases, {} users) into {} as member {:x}",
                        s.format,
                        file.display(),
                        s.revision,
                        s.total_keys,
                        s.revisions,
                        s.leases,
                        s.users,
                        data_dir.display(),
                        identity.member_id
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("qed snapshot restore: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

const DEFAULT_QUOTA: u64 = 2 * 1024 * 1024 * 1024;

fn split(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect()
}

fn certs(dir: &Path, hosts: &str) -> ExitCode {
    if dir.join(qed::transport::tls::CA_CERT).exists() {
        eprintln!(
            "qed certs: {} already holds a CA; remove it or choose another --dir",
            dir.display()
        );
        return ExitCode::FAILURE;
    }
    match qed::transport::tls::ensure_self_signed(dir, &split(hosts)) {
        Ok(made) => {
            let show = |p: &Option<PathBuf>| {
                p.as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            };
            println!(
                "CA certificate (clients and peers trust it): {}",
                made.ca.display()
            );
            println!(
                "node  --cert-file {} --key-file {}",
                show(&made.node.cert),
                show(&made.node.key)
            );
            println!(
                "client --cert {} --key {}",
                show(&made.client.cert),
                show(&made.client.key)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("qed certs: {e}");
            ExitCode::FAILURE
        }
    }
}

/// etcd's environment variables stand in for the `QED_*` ones that are
/// not set (`ETCD_NAME` for `QED_NAME`, ...), so the lines `etcdctl member
/// add` prints start the new member verbatim. Runs before any thread.
fn etcd_env_fallbacks() {
    use clap::CommandFactory;
    for arg in Flags::command().get_arguments() {
        let Some(name) = arg.get_env().and_then(|e| e.to_str()) else {
            continue;
        };
        let Some(suffix) = name.strip_prefix("QED_") else {
            continue;
        };
        if std::env::var_os(name).is_some() {
            continue;
        }
        if let Some(value) = std::env::var_os(format!("ETCD_{suffix}")) {
            std::env::set_var(name, value);
        }
    }
}

fn main() -> ExitCode {
    etcd_env_fallbacks();
    qed::heap::init();
    let flags = Flags::parse();
    if let Some(threads) = std::num::NonZeroUsize::new(flags.threads) {
        qed::runtime::set_worker_threads(threads);
    }
    match flags.command {
        Some(Command::Certs { dir, hosts }) => return certs(&dir, &hosts),
        Some(Command::Snapshot(command)) => return snapshot(command),
        None => {}
    }
    let format = match qed::log_writer::LogFormat::from_flags(
        flags.log_format.as_deref(),
        flags.logger.as_deref(),
    ) {
        Ok(format) => format,
        Err(e) => {
            eprintln!("qed: --log-format: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = qed::log_writer::init_with(&flags.log_level, format, &flags.name) {
        eprintln!("qed: --log-level: {e}");
        return ExitCode::from(2);
    }
    let timing = match (
        timing::parse(&flags.heartbeat_interval),
        timing::parse(&flags.election_timeout),
    ) {
        (Ok(heartbeat), Ok(election)) => timing::TimingFlags {
            heartbeat,
            election,
        },
        (Err(e), _) => {
            eprintln!("qed: --heartbeat-interval {e}");
            return ExitCode::from(2);
        }
        (_, Err(e)) => {
            eprintln!("qed: --election-timeout {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = timing.check() {
        eprintln!("qed: {e}");
        return ExitCode::from(2);
    }
    let initial_timing = timing.initial();
    let data_dir = flags
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.qed", flags.name)));
    let join_existing = match flags.initial_cluster_state.as_str() {
        "new" => false,
        "existing" => true,
        other => {
            eprintln!("qed: --initial-cluster-state {other:?}: use new or existing");
            return ExitCode::from(2);
        }
    };
    let listen = split(&flags.listen_client_urls);
    let auto_compaction = match qed::mvcc::auto_compact::parse_retention(
        &flags.auto_compaction_mode,
        &flags.auto_compaction_retention,
    ) {
        Ok(retention) => retention,
        Err(e) => {
            eprintln!("qed: --auto-compaction-retention: {e}");
            return ExitCode::from(2);
        }
    };
    let config = NodeConfig {
        snapshot_count: flags.snapshot_count,
        snapshot_catchup_entries: flags.experimental_snapshot_catchup_entries,
        max_snapshots: flags.max_snapshots,
        max_wals: flags.max_wals,
        heartbeat_interval: initial_timing.heartbeat,
        election_ticks: initial_timing.election_ticks,
        auto_timing: timing.is_auto().then_some(timing),
        data_dir,
        name: flags.name,
        advertise_client_urls: flags
            .advertise_client_urls
            .as_deref()
            .map(split)
            .unwrap_or(listen.clone()),
        listen_client_urls: listen,
        initial_advertise_peer_urls: split(&flags.initial_advertise_peer_urls),
        initial_cluster_token: flags.initial_cluster_token,
        initial_cluster: flags.initial_cluster.unwrap_or_default(),
        join_existing,
        listen_peer_urls: split(&flags.listen_peer_urls),
        listen_metrics_urls: flags
            .listen_metrics_urls
            .as_deref()
            .map(split)
            .unwrap_or_default(),
        peer_cert_file: flags.peer_cert_file,
        peer_key_file: flags.peer_key_file,
        peer_trusted_ca_file: flags.peer_trusted_ca_file,
        peer_client_cert_auth: flags.peer_client_cert_auth,
        strict_reconfig_check: flags.strict_reconfig_check,
        cert_file: flags.cert_file,
        key_file: flags.key_file,
        trusted_ca_file: flags.trusted_ca_file,
        client_cert_auth: flags.client_cert_auth,
        quota_backend_bytes: if flags.quota_backend_bytes == 0 {
            DEFAULT_QUOTA
        } else {
            flags.quota_backend_bytes
        },
        auto_compaction,
        limits: qed::server::node::ClientLimits {
            max_request_bytes: flags.max_request_bytes,
            max_txn_ops: flags.max_txn_ops,
        },
        auth: qed::server::auth::AuthConfig {
            token: flags.auth_token,
            token_ttl: std::time::Duration::from_secs(flags.auth_token_ttl),
            bcrypt_cost: flags.bcrypt_cost,
        },
    };
    qed::runtime::block_on(async move {
        let running = match server::start(&config) {
            Ok(r) => r,
            Err(e) => {
                log::error!("cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        let id = running.node.identity();
        log::info!(
            "member {:x} ({}) of cluster {:x} ready to serve client requests; clients trust {}",
            id.member_id,
            id.name,
            running.node.cluster_id(),
            running
                .ca_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "the CA of --cert-file".into())
        );
        let why = running.stopped.recv().await.unwrap_or_default();
        log::error!("stopping: {why}");
        // Answers already on their way (say, to the member remove that
        // removed this member, asked of this member) get a moment to leave;
        // everything new fails with "server stopped" meanwhile.
        qed::runtime::sleep(std::time::Duration::from_millis(500)).await;
        ExitCode::FAILURE
    })
}
