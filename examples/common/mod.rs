// Shared by the examples: where the node is and which CA to trust.
// QED_ENDPOINTS (default https://127.0.0.1:2379) and QED_CACERT (default
// default.qed/certs/ca.crt, the CA `make run` generates).
#![allow(dead_code)] // each example uses what it needs

use qed::client::{Client, ClientError, ConnectOptions};
use std::path::PathBuf;

pub async fn connect() -> Result<Client, ClientError> {
    connect_with(ConnectOptions::default()).await
}

/// Logs in as `user` (a node with auth on).
pub async fn connect_as(user: &str, password: &str) -> Result<Client, ClientError> {
    connect_with(ConnectOptions {
        user: Some(user.into()),
        password: Some(password.into()),
        ..Default::default()
    })
    .await
}

async fn connect_with(options: ConnectOptions) -> Result<Client, ClientError> {
    let endpoints: Vec<String> = std::env::var("QED_ENDPOINTS")
        .unwrap_or_else(|_| "https://127.0.0.1:2379".into())
        .split(',')
        .map(String::from)
        .collect();
    let ca = std::env::var("QED_CACERT").unwrap_or_else(|_| "default.qed/certs/ca.crt".into());
    let options = ConnectOptions {
        ca_file: Some(PathBuf::from(ca)),
        ..options
    };
    Client::connect(&endpoints, options).await
}
