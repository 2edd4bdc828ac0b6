//! A tiny HTTP/1.1 responder for the operator endpoints (`/metrics`,
//! `/health`, `/livez`, `/readyz`, `/version`), served by the node on
//! `--listen-metrics-urls` and by `qed-grpc` next to gRPC on its port.
//!
//! Role: read one request head, hand its method and target to a handler,
//! write the handler's response and close the connection (no keep-alive,
//! no request bodies: Prometheus and curl need neither). Also the
//! `process_*` figures every Prometheus exporter has, read from `/proc`.
//!
//! Invariants: a request head larger than [`MAX_HEAD_BYTES`] or slower than
//! [`READ_TIMEOUT`] is answered 400/408 or dropped, never buffered further;
//! nothing read from the socket can panic; every connection is closed after
//! one response.

use crate::metrics::Exposition;
use crate::runtime::{self, TcpListener};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use std::future::Future;
use std::time::Duration;

/// Largest request head read (request line and headers).
pub const MAX_HEAD_BYTES: usize = 8 << 10;

/// How long a client may take to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The parts of a request the handlers look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// After `?`, undecoded (`""` when there is none).
    pub query: String,
}

impl Request {
    /// Whether the query has `name` as a key (`?verbose`, `?verbose=1`).
    pub fn has_param(&self, name: &str) -> bool {
        self.params().any(|(k, _)| k == name)
    }

    /// `key=value` pairs of the query, in order (values undecoded).
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
    }
}

/// What a handler answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
        }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::new(status, "text/plain; charset=utf-8", body)
    }

    pub fn json(status: u16, body: impl Into<String>) -> Response {
        Response::new(status, "application/json", body)
    }

    pub fn not_found() -> Response {
        Response::text(404, "404 page not found\n")
    }

    pub fn method_not_allowed() -> Response {
        Response::text(405, "Method Not Allowed\n")
    }

    /// The response as bytes on the wire (`HEAD` gets no body).
    pub fn encode(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if !head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Parses a request head (everything before the blank line): `None` when
/// the request line is not `METHOD target HTTP/1.x`.
pub fn parse_head(head: &[u8]) -> Option<Request> {
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len());
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || !version.starts_with("HTTP/1.")
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
    {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Some(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
    })
}

/// Whether the first bytes a client sent look like an HTTP/1.x request
/// (rather than the HTTP/2 preface `PRI * HTTP/2.0` or a TLS hello).
pub fn looks_like_http1(first: &[u8]) -> bool {
    const METHODS: [&[u8]; 4] = [b"GET ", b"HEAD", b"POST", b"PUT "];
    first.len() >= 4 && METHODS.iter().any(|m| first.starts_with(m))
}

/// Accepts connections until the listener fails for good, one task each.
pub async fn serve<H, F>(listener: TcpListener, handler: H)
where
    H: Fn(Request) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let handler = handler.clone();
                runtime::spawn(serve_connection(stream, handler));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("metrics listener accept: {e}");
                runtime::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reads one request head, answers it and closes the connection (a TCP
/// stream, or a TLS stream that negotiated `http/1.1`).
pub async fn serve_connection<S, H, F>(mut stream: S, handler: H)
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Fn(Request) -> F,
    F: Future<Output = Response>,
{
    let head = match runtime::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(head)) => head,
        Ok(Err(HeadError::TooLarge)) => {
            let _ = stream
                .write_all(&Response::text(431, "request head too large\n").encode(false))
                .await;
            return;
        }
        Ok(Err(HeadError::Closed)) => return,
        Err(_) => {
            let _ = stream
                .write_all(&Response::text(408, "request timeout\n").encode(false))
                .await;
            return;
        }
    };
    let response = match parse_head(&head) {
        Some(request) => {
            let head_only = request.method == "HEAD";
            let response = handler(request).await;
            response.encode(head_only)
        }
        None => Response::text(400, "bad request\n").encode(false),
    };
    let _ = stream.write_all(&response).await;
    let _ = stream.flush().await;
}

enum HeadError {
    TooLarge,
    Closed,
}

async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await.map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(from + end);
            return Ok(head);
        }
        if head.len() > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Writes the `process_*` figures of this process (Linux `/proc`; absent
/// elsewhere): resident memory, open and maximum file descriptors, CPU time.
pub fn write_process_metrics(out: &mut Exposition) {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as f64;
    if let Some(rss_pages) = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
    {
        out.gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            rss_pages * page,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.gauge(
            "process_open_fds",
            "Number of open file descriptors.",
            fds.count() as f64,
        );
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        out.gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
            limit.rlim_cur as f64,
        );
    }
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are
            // the 14th and 15th fields of the whole line.
            let rest = &s[s.rfind(')')? + 1..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            (ticks > 0).then(|| (utime + stime) / ticks as f64)
        });
    if let Some(cpu) = cpu {
        out.counter_f64(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            cpu,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_lines() {
        let r = parse_head(b"GET /readyz?verbose&exclude=x HTTP/1.1\r\nHost: a").unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/readyz");
        assert!(r.has_param("verbose"));
        assert_eq!(r.params().nth(1), Some(("exclude", "x")));
        assert_eq!(parse_head(b"GET /health HTTP/1.0").unwrap().query, "");
        for bad in [
            &b"GET /x HTTP/2.0"[..],
            b"get /x HTTP/1.1",
            b"GET x HTTP/1.1",
            b"GET /x HTTP/1.1 extra",
            b"GET",
            b"\xff\xfe",
            b"",
        ] {
            assert_eq!(parse_head(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn tells_http1_from_h2_and_tls() {
        assert!(looks_like_http1(b"GET /health HTTP/1.1"));
        assert!(looks_like_http1(b"HEAD /"));
        assert!(!looks_like_http1(b"PRI * HTTP/2.0\r\n"));
        assert!(!looks_like_http1(&[0x16, 3, 1, 0, 5]));
        assert!(!looks_like_http1(b"GE"));
    }

    #[test]
    fn encodes_with_length_and_close() {
        let r = Response::json(503, "{}");
        let bytes = String::from_utf8(r.encode(false)).unwrap();
        assert!(bytes.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(bytes.contains("Content-Length: 2\r\n"));
        assert!(bytes.ends_with("\r\n\r\n{}"));
        assert!(String::from_utf8(r.encode(true))
            .unwrap()
            .ends_with("\r\n\r\n"));
    }
}
