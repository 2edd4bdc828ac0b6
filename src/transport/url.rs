//! etcd-style URLs (`https://10.0.0.1:2379`, `http://localhost:2380`).
//!
//! qed speaks QUIC only, but accepts etcd's http and https URLs so operators'
//! flags and scripts carry over: both schemes mean QUIC on that host and UDP
//! port. A bare `host:port` is accepted too, as etcdctl's `--endpoints` does.
//! Client URLs may also name a Unix socket (`unix:///run/qed.sock`, a path
//! after `unix://`), for a shim or an SDK on the node's own machine.

use super::TransportError;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

/// A resolved endpoint: the name to verify in the peer's certificate and
/// the socket address to send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub addr: SocketAddr,
}

/// Where a client reaches a node, or a node listens for clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientUrl {
    Quic(Endpoint),
    Unix(PathBuf),
}

/// Parses one client URL: `unix://PATH`, or what [`parse`] takes.
pub fn parse_client(url: &str) -> Result<ClientUrl, TransportError> {
    match url.strip_prefix("unix://") {
        Some("") => Err(bad(url, "missing socket path")),
        Some(path) => Ok(ClientUrl::Unix(PathBuf::from(path))),
        None => parse(url).map(ClientUrl::Quic),
    }
}

/// Parses a comma-separated list of client URLs.
pub fn parse_client_list(urls: &str) -> Result<Vec<ClientUrl>, TransportError> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(parse_client)
        .collect()
}

/// Parses and resolves one URL.
pub fn parse(url: &str) -> Result<Endpoint, TransportError> {
    let (host, port) = split(url)?;
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| bad(url, &format!("cannot resolve host: {e}")))?
        .next()
        .ok_or_else(|| bad(url, "host resolves to no address"))?;
    Ok(Endpoint { host, addr })
}

/// The host of a URL, as a certificate must name it; nothing resolved.
pub fn host(url: &str) -> Result<String, TransportError> {
    split(url).map(|(host, _)| host)
}

fn bad(url: &str, reason: &str) -> TransportError {
    TransportError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    }
}

/// A URL's host (without brackets) and port.
fn split(url: &str) -> Result<(String, u16), TransportError> {
    let rest = match url.split_once("://") {
        Some(("http" | "https" | "quic", rest)) => rest,
        Some((scheme, _)) => return Err(bad(url, &format!("unsupported scheme {scheme:?}"))),
        None => url,
    };
    let authority = rest.trim_end_matches('/');
    if authority.contains('/') {
        return Err(bad(url, "a path is not allowed"));
    }
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| bad(url, "missing port"))?;
    let port: u16 = port.parse().map_err(|_| bad(url, "port is not a number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad(url, "missing host"));
    }
    Ok((host.to_string(), port))
}

/// Parses a comma-separated list, as etcd's URL flags take.
pub fn parse_list(urls: &str) -> Result<Vec<Endpoint>, TransportError> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_etcd_forms() {
        let e = parse("https://127.0.0.1:2379").unwrap();
        assert_eq!(e.addr, "127.0.0.1:2379".parse().unwrap());
        assert_eq!(e.host, "127.0.0.1");
        assert_eq!(
            parse("http://[::1]:2380/").unwrap().addr,
            "[::1]:2380".parse().unwrap()
        );
        assert_eq!(parse("127.0.0.1:1").unwrap().addr.port(), 1);
        assert_eq!(parse("http://localhost:2379").unwrap().host, "localhost");
        assert_eq!(parse_list("127.0.0.1:1, 127.0.0.1:2").unwrap().len(), 2);
    }

    #[test]
    fn client_urls_may_name_a_unix_socket() {
        assert_eq!(
            parse_client("unix:///run/qed.sock").unwrap(),
            ClientUrl::Unix("/run/qed.sock".into())
        );
        assert_eq!(
            parse_client("unix://qed.sock").unwrap(),
            ClientUrl::Unix("qed.sock".into())
        );
        assert!(parse_client("unix://").is_err());
        let list = parse_client_list("https://127.0.0.1:1, unix:///a").unwrap();
        assert!(matches!(list[0], ClientUrl::Quic(_)));
        assert_eq!(list[1], ClientUrl::Unix("/a".into()));
        // Peer URLs stay QUIC only.
        assert!(parse("unix:///a").is_err());
    }

    #[test]
    fn rejects_nonsense() {
        for url in [
            "unix://x:1",
            "http://127.0.0.1",
            "http://:1",
            "http://h:x",
            "http://h:1/p",
        ] {
            assert!(parse(url).is_err(), "{url}");
        }
    }
}
