//! The node: serves clients from the state machine.
//!
//! [`run`] sets up TLS (generating a CA and certificates in the data
//! directory when none are given), binds the client URLs and serves them
//! until the process ends. [`node::Node`] is the single entry point for
//! every call; [`state_machine`] is what applying a request means;
//! [`service`] turns QUIC streams into calls.

pub mod node;
pub mod service;
pub mod state_machine;

use crate::transport::{self, tls::TlsFiles, TransportError};
use node::{Identity, Node};
use state_machine::Limits;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// Everything a node needs to start; the `qed` binary fills it from flags.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
    pub initial_advertise_peer_urls: Vec<String>,
    pub initial_cluster_token: String,
    /// Certificate and key for the client listener; generated when unset.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// With `client_cert_auth`, clients must present a certificate signed by it.
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
    pub quota_backend_bytes: u64,
}

#[derive(Debug)]
pub enum ServerError {
    /// The data directory cannot be created or used.
    DataDir {
        path: PathBuf,
        reason: String,
    },
    Transport(TransportError),
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
}

/// Binds every client URL and starts serving in the background.
pub fn start(config: &NodeConfig) -> Result<RunningNode, ServerError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| ServerError::DataDir {
        path: config.data_dir.clone(),
        reason: e.to_string(),
    })?;
    let listen = transport::url::parse_list(&config.listen_client_urls.join(","))?;
    if listen.is_empty() {
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
                .chain(transport::url::parse_list(&config.advertise_client_urls.join(","))?.iter())
                .map(|e| e.host.clone())
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
    let identity = Identity::new(
        config.name.clone(),
        config.initial_advertise_peer_urls.clone(),
        config.advertise_client_urls.clone(),
        &config.initial_cluster_token,
    );
    let node = Arc::new(Node::new(
        identity,
        Limits {
            quota_bytes: config.quota_backend_bytes,
        },
    ));
    let mut endpoints = Vec::new();
    for url in &listen {
        let endpoint = transport::endpoint::server(url.addr, server_config.clone())?;
        log::info!("serving client requests on {} (QUIC)", url.addr);
        crate::runtime::spawn(service::serve(endpoint.clone(), node.clone()));
        endpoints.push(endpoint);
    }
    Ok(RunningNode {
        node,
        endpoints,
        ca_file,
    })
}
