//! Certificates and TLS configurations.
//!
//! TLS 1.3 only, ring provider, one ALPN per protocol ([`qed_wire::CLIENT_ALPN`]
//! or [`qed_wire::PEER_ALPN`]) so a client of the wrong kind or version fails
//! at the handshake. A node started without certificates creates a CA and a
//! node certificate in its data directory (once; later starts reuse them), so
//! a single node runs encrypted with no set-up: clients trust `ca.crt` from
//! that directory.

use super::TransportError;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a node's or client's certificates live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain presented to the other side.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// CA that the other side's certificate must chain to.
    pub ca: Option<PathBuf>,
}

/// Names of the files [`ensure_self_signed`] writes into its directory.
pub const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const NODE_CERT: &str = "node.crt";
const NODE_KEY: &str = "node.key";
const CLIENT_CERT: &str = "client.crt";
const CLIENT_KEY: &str = "client.key";

/// The files of a generated CA and the certificates it signed.
#[derive(Debug, Clone)]
pub struct GeneratedCerts {
    pub ca: PathBuf,
    pub node: TlsFiles,
    pub client: TlsFiles,
}

/// Creates a CA, a node certificate valid for `hosts` (plus localhost and
/// the loopback addresses) and a client certificate in `dir`, unless they
/// exist already, in which case they are reused as they are.
pub fn ensure_self_signed(dir: &Path, hosts: &[String]) -> Result<GeneratedCerts, TransportError> {
    let at = |name: &str| dir.join(name);
    let out = GeneratedCerts {
        ca: at(CA_CERT),
        node: TlsFiles {
            cert: Some(at(NODE_CERT)),
            key: Some(at(NODE_KEY)),
            ca: Some(at(CA_CERT)),
        },
        client: TlsFiles {
            cert: Some(at(CLIENT_CERT)),
            key: Some(at(CLIENT_KEY)),
            ca: Some(at(CA_CERT)),
        },
    };
    if [CA_CERT, NODE_CERT, NODE_KEY]
        .iter()
        .all(|f| at(f).exists())
    {
        return Ok(out);
    }
    let fail = |path: &Path, e: &dyn std::fmt::Display| TransportError::Tls {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(dir, &e))?;

    let ca_key = KeyPair::generate().map_err(|e| fail(dir, &e))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(|e| fail(dir, &e))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "qed CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(|e| fail(dir, &e))?;
    let issuer = Issuer::from_params(&ca_params, &ca_key);

    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for h in hosts {
        if !names.contains(h) {
            names.push(h.clone());
        }
    }
    let leaf = |cn: &str, names: Vec<String>| -> Result<(String, String), TransportError> {
        let key = KeyPair::generate().map_err(|e| fail(dir, &e))?;
        let mut params = CertificateParams::new(names).map_err(|e| fail(dir, &e))?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer).map_err(|e| fail(dir, &e))?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (node_cert, node_key) = leaf("qed node", names)?;
    let (client_cert, client_key) = leaf("root", vec!["localhost".into()])?;

    write_file(&at(CA_KEY), &ca_key.serialize_pem(), true)?;
    write_file(&at(NODE_KEY), &node_key, true)?;
    write_file(&at(NODE_CERT), &node_cert, false)?;
    write_file(&at(CLIENT_KEY), &client_key, true)?;
    write_file(&at(CLIENT_CERT), &client_cert, false)?;
    // The CA certificate goes last: its presence marks the set complete.
    write_file(&at(CA_CERT), &ca_cert.pem(), false)?;
    Ok(out)
}

fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), TransportError> {
    use std::io::Write;
    let fail = |e: std::io::Error| TransportError::Tls {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(path).map_err(fail)?;
    f.write_all(text.as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let fail = |reason: String| TransportError::Tls {
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TransportError::Tls {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn roots(ca: &Path) -> Result<rustls::RootCertStore, TransportError> {
    let mut store = rustls::RootCertStore::empty();
    for cert in load_certs(ca)? {
        store.add(cert).map_err(|e| TransportError::Tls {
            path: ca.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    Ok(store)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_error(e: impl std::fmt::Display) -> TransportError {
    TransportError::TlsConfig(e.to_string())
}

/// TLS for a listening endpoint. With `files.ca` set, clients must present a
/// certificate signed by it (etcd's `--client-cert-auth`).
pub fn server_config(files: &TlsFiles, alpn: &[u8]) -> Result<quinn::ServerConfig, TransportError> {
    let (Some(cert), Some(key)) = (&files.cert, &files.key) else {
        return Err(TransportError::TlsConfig(
            "a listener needs both a certificate and a key file".into(),
        ));
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?;
    let builder = match &files.ca {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                provider(),
            )
            .build()
            .map_err(config_error)?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut tls = builder
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(config_error)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(config_error)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(super::endpoint::server_transport_config());
    Ok(config)
}

/// TLS for the peer port. Connecting members must always present a
/// certificate: with `files.ca` one that chains to it; without (generated
/// certificates) any, whose fingerprint the peer transport then pins (see
/// `server::peer`). Either way the handshake proves they hold its key.
pub fn peer_server_config(files: &TlsFiles) -> Result<quinn::ServerConfig, TransportError> {
    let (Some(cert), Some(key)) = (&files.cert, &files.key) else {
        return Err(TransportError::TlsConfig(
            "the peer listener needs both a certificate and a key file".into(),
        ));
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?;
    let builder = match &files.ca {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                provider(),
            )
            .build()
            .map_err(config_error)?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_client_cert_verifier(Arc::new(UnverifiedPeer(provider()))),
    };
    let mut tls = builder
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(config_error)?;
    tls.alpn_protocols = vec![qed_wire::PEER_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(config_error)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(super::endpoint::peer_transport_config());
    Ok(config)
}

/// SHA-256 of a certificate (DER): what a member's certificate is pinned by.
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Whether `cert` (DER) is valid for `host` (a DNS name or an IP address
/// in its subject alternative names). Checks the name only, not the chain.
pub fn names_host(cert: &CertificateDer<'_>, host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let Ok(name) = rustls::pki_types::ServerName::try_from(host) else {
        return false;
    };
    rustls::server::ParsedCertificate::try_from(cert)
        .and_then(|parsed| rustls::client::verify_server_name(&parsed, &name))
        .is_ok()
}

/// The certificate chain the other side of a QUIC connection presented.
pub fn peer_certificates(conn: &quinn::Connection) -> Vec<CertificateDer<'static>> {
    conn.peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .map(|certs| *certs)
        .unwrap_or_default()
}

/// TLS for connecting to peers. With `files.ca`, the peer's certificate must
/// chain to it and name the host dialled; without, any certificate is
/// taken here (etcd's `--peer-auto-tls`: each member made its own CA) and
/// the peer transport pins its fingerprint. The member's own certificate
/// is presented either way.
pub fn peer_client_config(files: &TlsFiles) -> Result<quinn::ClientConfig, TransportError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?;
    let builder = match &files.ca {
        Some(ca) => builder.with_root_certificates(roots(ca)?),
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(UnverifiedPeer(provider()))),
    };
    let mut tls = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(config_error)?,
        _ => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![qed_wire::PEER_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(config_error)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(super::endpoint::peer_transport_config());
    Ok(config)
}

/// Accepts any peer certificate (auto TLS), but still checks the handshake
/// signatures, so the session keys belong to whoever holds that certificate
/// (which the peer transport then pins). Both directions: a listener
/// requires connecting members to present one.
#[derive(Debug)]
struct UnverifiedPeer(Arc<rustls::crypto::CryptoProvider>);

/// The handshake-signature methods both verifier traits require, the same
/// for both: the signatures are always checked with the provider's
/// algorithms (only the certificate chain is left to the pins).
macro_rules! handshake_signatures_checked {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    };
}

impl rustls::server::danger::ClientCertVerifier for UnverifiedPeer {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    handshake_signatures_checked!();
}

impl rustls::client::danger::ServerCertVerifier for UnverifiedPeer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    handshake_signatures_checked!();
}

/// TLS for a connecting endpoint: trusts `files.ca` and presents
/// `files.cert`/`files.key` when both are set.
pub fn client_config(files: &TlsFiles, alpn: &[u8]) -> Result<quinn::ClientConfig, TransportError> {
    let Some(ca) = &files.ca else {
        return Err(TransportError::TlsConfig(
            "no CA certificate to verify the server with (pass the node's ca.crt)".into(),
        ));
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_root_certificates(roots(ca)?);
    let mut tls = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(config_error)?,
        _ => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(config_error)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(super::endpoint::transport_config());
    Ok(config)
}
