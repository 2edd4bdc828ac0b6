// Shared by the examples: where the node is and which CA to trust.
// QED_ENDPOINTS (default https://127.0.0.1:2379) and QED_CACERT (default
// default.qed/certs/ca.crt, the CA `make run` generates).

use qed::client::{Client, ClientError, ConnectOptions};
use std::path::PathBuf;

pub async fn connect() -> Result<Client, ClientError> {
    let endpoints: Vec<String> = std::env::var("QED_ENDPOINTS")
        .unwrap_or_else(|_| "https://127.0.0.1:2379".into())
        .split(',')
        .map(String::from)
        .collect();
    let ca = std::env::var("QED_CACERT").unwrap_or_else(|_| "default.qed/certs/ca.crt".into());
    Client::connect(
        &endpoints,
        ConnectOptions {
            ca_file: Some(PathBuf::from(ca)),
            ..Default::default()
        },
    )
    .await
}
