//! `qed-grpc`: etcd's v3 gRPC API on TCP, forwarded to a qed cluster over
//! QUIC. Flags follow etcd's (and its grpc-proxy's) names; every flag can
//! also be set as a `QED_GRPC_*` environment variable.
//!
//! With no flags it serves cleartext h2c on 127.0.0.1:2379 (what `etcdctl`
//! dials by default) and forwards to a node on UDP 127.0.0.1:2379.

use clap::Parser;
use qed::client::{Client, ConnectOptions};
use qed::grpc::{self, ServerConfig, Shutdown};
use qed::runtime;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// etcd's v3 gRPC API (what etcdctl and etcd clients speak), served in front
/// of a qed cluster.
#[derive(Parser, Debug)]
#[command(
    name = "qed-grpc",
    version,
    about = "etcd's v3 gRPC API (etcdctl, etcd client libraries) in front of a qed cluster",
    long_about = None
)]
struct Flags {
    /// Comma-separated URLs to serve gRPC on (TCP). http:// is cleartext
    /// HTTP/2 (h2c, what `etcdctl` uses without TLS flags); https:// needs
    /// --cert-file and --key-file.
    #[arg(
        long,
        env = "QED_GRPC_LISTEN_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    listen_client_urls: String,

    /// Certificate for the https:// listeners.
    #[arg(long, env = "QED_GRPC_CERT_FILE", requires = "key_file")]
    cert_file: Option<PathBuf>,

    /// Key for --cert-file.
    #[arg(long, env = "QED_GRPC_KEY_FILE", requires = "cert_file")]
    key_file: Option<PathBuf>,

    /// Require gRPC clients to present a certificate signed by this CA
    /// (https:// listeners only).
    #[arg(long, env = "QED_GRPC_TRUSTED_CA_FILE", requires = "cert_file")]
    trusted_ca_file: Option<PathBuf>,

    /// Comma-separated qed client URLs (QUIC; http and https both mean QUIC
    /// on that UDP port, as the node's flags do). unix:///PATH reaches a
    /// node on this machine through its Unix socket (no --cacert needed).
    #[arg(
        long,
        env = "QED_GRPC_ENDPOINTS",
        default_value = "https://127.0.0.1:2379"
    )]
    endpoints: String,

    /// CA that the qed nodes' certificates chain to (a node that generated
    /// its own keeps it in ${data-dir}/certs/ca.crt).
    #[arg(long, env = "QED_GRPC_CACERT")]
    cacert: Option<PathBuf>,

    /// Client certificate for the qed cluster, if it requires one.
    #[arg(long, env = "QED_GRPC_CERT", requires = "key")]
    cert: Option<PathBuf>,

    /// Key for --cert.
    #[arg(long, env = "QED_GRPC_KEY", requires = "cert")]
    key: Option<PathBuf>,

    /// Deadline for each forwarded call, in seconds. A gRPC client's own
    /// deadline (etcdctl's --command-timeout, 5 s) applies as well; 10 s
    /// leaves room for leader elections on lossy links.
    #[arg(long, env = "QED_GRPC_REQUEST_TIMEOUT", default_value_t = 10)]
    request_timeout: u64,

    /// Deadline for one QUIC handshake with a node, in seconds (etcd's
    /// --dial-timeout default of 2 s).
    #[arg(long, env = "QED_GRPC_DIAL_TIMEOUT", default_value_t = 2)]
    dial_timeout: u64,

    /// How long to keep retrying the first connection to the cluster, in
    /// seconds, so the shim may be started before (or with) the nodes.
    #[arg(long, env = "QED_GRPC_STARTUP_WAIT", default_value_t = 30)]
    startup_wait: u64,

    /// Largest request accepted, as etcd's --max-request-bytes (1.5 MiB);
    /// gRPC messages may be 512 KiB larger, as in etcd. The node checks its
    /// own --max-request-bytes too: raise both together.
    #[arg(long, env = "QED_GRPC_MAX_REQUEST_BYTES", default_value_t = 1536 * 1024)]
    max_request_bytes: usize,

    /// QUIC streams per node that the shim's unary calls share (numbered,
    /// answered in any order) instead of a stream per call: about a fifth
    /// less CPU per small put on both the shim and the node. A lost
    /// packet stalls every call on its stream until resent, so on a lossy
    /// link to the nodes use more streams, or 0 for a stream per call.
    /// Watches and keepalives have streams of their own either way; a
    /// node from before multiplexed streams gets a stream per call.
    #[arg(long, env = "QED_GRPC_MUX_STREAMS", default_value_t = 4)]
    mux_streams: usize,

    /// HTTP/2 streams one connection may have open; etcd's default is
    /// unlimited (2^32 - 1), which watch-heavy clients rely on.
    #[arg(long, env = "QED_GRPC_MAX_CONCURRENT_STREAMS", default_value_t = u32::MAX)]
    max_concurrent_streams: u32,

    /// On SIGTERM, seconds to let in-flight calls finish before exiting.
    #[arg(long, env = "QED_GRPC_SHUTDOWN_GRACE", default_value_t = 10)]
    shutdown_grace: u64,

    /// Ping an idle gRPC client after this long to find vanished ones
    /// (etcd's flag and default: a Go duration such as 2h or 90s; a plain
    /// number is seconds).
    #[arg(long, env = "QED_GRPC_GRPC_KEEPALIVE_INTERVAL", default_value = "2h")]
    grpc_keepalive_interval: String,

    /// Close a gRPC connection whose ping goes unanswered this long
    /// (etcd's default: 20s).
    #[arg(long, env = "QED_GRPC_GRPC_KEEPALIVE_TIMEOUT", default_value = "20s")]
    grpc_keepalive_timeout: String,

    /// etcd's minimum interval between a client's pings (default 5s).
    /// Accepted so etcd's command lines work; it is not enforced: the h2
    /// server answers every ping itself and offers no way to refuse
    /// frequent ones.
    #[arg(long, env = "QED_GRPC_GRPC_KEEPALIVE_MIN_TIME", default_value = "5s")]
    grpc_keepalive_min_time: String,

    /// Threads that serve calls. One by default: the shim's work per call
    /// is a few short hops between tasks (gRPC in, the node's socket, gRPC
    /// out), which one thread runs back to back while several would wake
    /// one another for each hop (about 40% less CPU per put, and far fewer
    /// context switches, beside a node on a small box). Raise it when one
    /// core cannot keep up with the shim's clients (TLS to many of them).
    #[arg(long, env = "QED_GRPC_THREADS", default_value_t = std::num::NonZeroUsize::MIN)]
    threads: std::num::NonZeroUsize,

    /// debug, info, warn or error.
    #[arg(long, env = "QED_GRPC_LOG_LEVEL", default_value = "info")]
    log_level: String,

    /// json (etcd's zap lines) or text [default: text, or json with
    /// --logger zap].
    #[arg(long, env = "QED_GRPC_LOG_FORMAT")]
    log_format: Option<String>,

    /// etcd's --logger: zap (JSON lines) or capnslog (text).
    #[arg(long, env = "QED_GRPC_LOGGER")]
    logger: Option<String>,
}

/// One listener, parsed from --listen-client-urls.
struct Listen {
    addr: String,
    tls: bool,
}

fn parse_listen(urls: &str) -> Result<Vec<Listen>, String> {
    let mut out = Vec::new();
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let (tls, rest) = match url.split_once("://") {
            Some(("http", rest)) => (false, rest),
            Some(("https", rest)) => (true, rest),
            Some((scheme, _)) => return Err(format!("{url}: unsupported scheme {scheme:?}")),
            None => (false, url),
        };
        let addr = rest.trim_end_matches('/');
        if addr.contains('/') || !addr.contains(':') {
            return Err(format!("{url}: expected scheme://host:port"));
        }
        out.push(Listen {
            addr: addr.to_string(),
            tls,
        });
    }
    if out.is_empty() {
        return Err("no URL given".into());
    }
    Ok(out)
}

/// A keepalive flag: a Go duration (etcd's form) or a plain number of
/// seconds; at least a second.
fn keepalive_flag(name: &str, text: &str) -> Result<Duration, String> {
    let parsed = match text.trim().parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => qed::mvcc::auto_compact::parse_go_duration(text.trim()),
    };
    parsed
        .map(|d| d.max(Duration::from_secs(1)))
        .ok_or_else(|| format!("--{name} {text:?}: not a duration (e.g. 2h, 20s, 90)"))
}

fn split(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect()
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    runtime::set_worker_threads(flags.threads);
    let format = match qed::log_writer::LogFormat::from_flags(
        flags.log_format.as_deref(),
        flags.logger.as_deref(),
    ) {
        Ok(format) => format,
        Err(e) => {
            eprintln!("qed-grpc: --log-format: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = qed::log_writer::init_with(&flags.log_level, format, "") {
        eprintln!("qed-grpc: --log-level: {e}");
        return ExitCode::from(2);
    }
    let keepalive = keepalive_flag("grpc-keepalive-interval", &flags.grpc_keepalive_interval)
        .and_then(|interval| {
            keepalive_flag("grpc-keepalive-timeout", &flags.grpc_keepalive_timeout)
                .map(|timeout| (interval, timeout))
        })
        .and_then(|pair| {
            keepalive_flag("grpc-keepalive-min-time", &flags.grpc_keepalive_min_time).map(|_| pair)
        });
    let (keepalive_interval, keepalive_timeout) = match keepalive {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("qed-grpc: {e}");
            return ExitCode::from(2);
        }
    };
    let listens = match parse_listen(&flags.listen_client_urls) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("qed-grpc: --listen-client-urls: {e}");
            return ExitCode::from(2);
        }
    };
    let tls = match (&flags.cert_file, &flags.key_file) {
        (Some(cert), Some(key)) => {
            match grpc::tls::server_config(cert, key, flags.trusted_ca_file.as_deref()) {
                Ok(c) => Some(Arc::new(c)),
                Err(e) => {
                    eprintln!("qed-grpc: TLS: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => None,
    };
    if listens.iter().any(|l| l.tls) && tls.is_none() {
        eprintln!("qed-grpc: an https:// listen URL needs --cert-file and --key-file");
        return ExitCode::from(2);
    }
    let endpoints = split(&flags.endpoints);
    let options = ConnectOptions {
        ca_file: flags.cacert.clone(),
        cert_file: flags.cert.clone(),
        key_file: flags.key.clone(),
        request_timeout: Duration::from_secs(flags.request_timeout.max(1)),
        dial_timeout: Duration::from_secs(flags.dial_timeout.max(1)),
        // What the shim admits, it forwards: frames as large as its gRPC
        // messages (the node's --max-request-bytes still decides).
        max_call_send_bytes: flags
            .max_request_bytes
            .saturating_add(512 * 1024)
            .max(ConnectOptions::default().max_call_send_bytes),
        mux_streams: flags.mux_streams,
        // Each gRPC call carries its caller's own token (metadata `token`).
        ..ConnectOptions::default()
    };
    let base = ServerConfig {
        max_recv_bytes: flags.max_request_bytes.saturating_add(512 * 1024),
        max_concurrent_streams: flags.max_concurrent_streams,
        tls: None,
        shutdown_grace: Duration::from_secs(flags.shutdown_grace),
        keepalive_interval,
        keepalive_timeout,
    };

    let shutdown = Shutdown::new();
    if let Err(e) = watch_signals(shutdown.clone()) {
        eprintln!("qed-grpc: cannot install signal handlers: {e}");
        return ExitCode::from(1);
    }

    runtime::block_on(async move {
        let client = match connect(&endpoints, options, flags.startup_wait, &shutdown).await {
            Ok(c) => c,
            Err(e) => {
                log::error!(
                    "cannot connect to the qed cluster at {}: {e}",
                    flags.endpoints
                );
                return ExitCode::from(1);
            }
        };
        let mut servers = Vec::new();
        for listen in &listens {
            let listener = match runtime::TcpListener::bind(&listen.addr).await {
                Ok(l) => l,
                Err(e) => {
                    log::error!("cannot listen on {}: {e}", listen.addr);
                    return ExitCode::from(1);
                }
            };
            let mut config = base.clone();
            if listen.tls {
                config.tls = tls.clone();
            }
            log::info!(
                "serving etcd gRPC on {}://{} for qed at {}",
                if listen.tls { "https" } else { "http" },
                listen.addr,
                flags.endpoints
            );
            servers.push(runtime::spawn(grpc::serve(
                listener,
                client.clone(),
                config,
                shutdown.clone(),
            )));
        }
        for server in servers {
            server.await;
        }
        log::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// Connects to the cluster, retrying until `wait` seconds pass.
async fn connect(
    endpoints: &[String],
    options: ConnectOptions,
    wait: u64,
    shutdown: &Shutdown,
) -> Result<Client, String> {
    let deadline = Instant::now() + Duration::from_secs(wait);
    loop {
        match Client::connect(endpoints, options.clone()).await {
            Ok(client) => return Ok(client),
            Err(e) if Instant::now() >= deadline || shutdown.is_triggered() => {
                return Err(e.to_string())
            }
            Err(e) => {
                log::info!("waiting for the qed cluster: {e}");
                runtime::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// SIGTERM and SIGINT start a graceful shutdown; a second one exits at once.
fn watch_signals(shutdown: Shutdown) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            for signal in signals.forever() {
                seen += 1;
                if seen > 1 {
                    std::process::exit(128 + signal);
                }
                log::info!("signal {signal}: shutting down, letting in-flight calls finish");
                shutdown.trigger();
            }
        })?;
    Ok(())
}
