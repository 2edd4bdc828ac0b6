//! The operator endpoints against real processes: `/metrics` parsed as a
//! Prometheus exposition (every etcd metric we promise, with etcd's type
//! and labels, counters moving under load), `/health` false without a
//! leader and true again, and the same endpoints on qed-grpc's port.

mod common;

use common::{free_tcp_port, TempDir, TestCluster, TestNode};
use qed::wire::kv::PutRequest;
use qed::wire::Request;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `GET path` over HTTP/1.1: `(status, body)`, or `None` if nobody answers.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Polls `path` until `ok(status, body)` or the deadline.
fn wait_for(port: u16, path: &str, what: &str, ok: impl Fn(u16, &str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    while Instant::now() < deadline {
        if let Some((status, body)) = http_get(port, path) {
            if ok(status, &body) {
                return body;
            }
            last = Some((status, body));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: {path} never did; last answer {last:?}");
}

/// One family of a parsed exposition.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    /// Each sample: (suffix-less name, labels, value).
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

/// Parses the text format strictly enough to catch a malformed line.
fn parse_exposition(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            let old = families.insert(
                name.to_string(),
                Family {
                    kind: kind.to_string(),
                    ..Default::default()
                },
            );
            assert!(old.is_none(), "{name} has two TYPE lines");
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let labels = body
                    .split("\",")
                    .map(|pair| {
                        let (k, v) = pair.split_once("=\"").expect("label pair");
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|s| name.strip_suffix(s))
            .find(|base| families.get(*base).is_some_and(|f| f.kind == "histogram"))
            .unwrap_or(&name)
            .to_string();
        families
            .get_mut(&family)
            .unwrap_or_else(|| panic!("sample {name} before its TYPE line"))
            .samples
            .push((name, labels, value));
    }
    families
}

fn value(families: &BTreeMap<String, Family>, name: &str) -> f64 {
    families
        .get(name)
        .and_then(|f| f.samples.first())
        .map(|s| s.2)
        .unwrap_or_else(|| panic!("{name} has no sample"))
}

/// Every node metric the issue lists, with etcd's type and label names.
const NODE_METRICS: &[(&str, &str, &[&str])] = &[
    ("etcd_server_has_leader", "gauge", &[]),
    ("etcd_server_is_leader", "gauge", &[]),
    ("etcd_server_leader_changes_seen_total", "counter", &[]),
    ("etcd_server_proposals_committed_total", "gauge", &[]),
    ("etcd_server_proposals_applied_total", "gauge", &[]),
    ("etcd_server_proposals_pending", "gauge", &[]),
    ("etcd_server_proposals_failed_total", "counter", &[]),
    ("etcd_server_slow_apply_total", "counter", &[]),
    ("etcd_server_heartbeat_send_failures_total", "counter", &[]),
    ("etcd_disk_wal_fsync_duration_seconds", "histogram", &[]),
    (
        "etcd_disk_backend_commit_duration_seconds",
        "histogram",
        &[],
    ),
    ("etcd_mvcc_db_total_size_in_bytes", "gauge", &[]),
    ("etcd_mvcc_db_total_size_in_use_in_bytes", "gauge", &[]),
    ("etcd_debugging_mvcc_keys_total", "gauge", &[]),
    ("etcd_mvcc_put_total", "counter", &[]),
    ("etcd_server_quota_backend_bytes", "gauge", &[]),
    ("process_resident_memory_bytes", "gauge", &[]),
    ("process_open_fds", "gauge", &[]),
];

/// Checks type and label names of each listed metric that has samples.
fn check_families(families: &BTreeMap<String, Family>, expected: &[(&str, &str, &[&str])]) {
    for (name, kind, labels) in expected {
        let family = families
            .get(*name)
            .unwrap_or_else(|| panic!("{name} missing from /metrics"));
        assert_eq!(family.kind, *kind, "{name}'s type");
        assert!(!family.samples.is_empty(), "{name} has no sample");
        for (sample, got, _) in &family.samples {
            let mut names: Vec<&str> = got.keys().map(String::as_str).collect();
            names.retain(|l| *l != "le" || !sample.ends_with("_bucket"));
            let mut want: Vec<&str> = labels.to_vec();
            want.sort();
            assert_eq!(names, want, "{sample}'s labels");
        }
    }
}

#[test]
fn node_metrics_move_under_load_and_health_answers() {
    let port = free_tcp_port();
    let url = format!("http://127.0.0.1:{port}");
    let node = TestNode::start(&["--listen-metrics-urls", &url]);
    let text = qed::runtime::block_on(async {
        let client = node.client().await;
        for i in 0..50 {
            let put = Request::Put(PutRequest {
                key: format!("k{i}").into_bytes(),
                value: b"v".to_vec(),
                ..Default::default()
            });
            client.call(put).await.expect("put");
        }
        wait_for(port, "/metrics", "puts counted", |s, body| {
            s == 200 && value(&parse_exposition(body), "etcd_mvcc_put_total") >= 50.0
        })
    });
    let families = parse_exposition(&text);
    check_families(&families, NODE_METRICS);
    assert_eq!(value(&families, "etcd_server_has_leader"), 1.0);
    assert_eq!(value(&families, "etcd_server_is_leader"), 1.0);
    assert_eq!(value(&families, "etcd_debugging_mvcc_keys_total"), 50.0);
    assert!(value(&families, "etcd_server_proposals_applied_total") >= 50.0);
    assert!(value(&families, "etcd_mvcc_db_total_size_in_bytes") > 0.0);
    let fsyncs = &families["etcd_disk_wal_fsync_duration_seconds"].samples;
    let count = fsyncs
        .iter()
        .find(|s| s.0.ends_with("_count"))
        .map(|s| s.2)
        .expect("fsync count");
    assert!(count >= 1.0, "no fsync observed after 50 puts");
    // etcd's buckets: 14 bounds from 1 ms, plus +Inf.
    let buckets: Vec<&String> = fsyncs
        .iter()
        .filter(|s| s.0.ends_with("_bucket"))
        .map(|s| &s.1["le"])
        .collect();
    assert_eq!(buckets.len(), 15);
    assert_eq!(
        (buckets[0].as_str(), buckets[13].as_str()),
        ("0.001", "8.192")
    );

    let (status, body) = http_get(port, "/health").expect("health");
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"health":"true","reason":""}"#)
    );
    let (status, body) = http_get(port, "/version").expect("version");
    assert_eq!(status, 200);
    assert!(body.contains("\"etcdserver\":\"3.4."), "{body}");
    assert_eq!(http_get(port, "/livez").expect("livez").0, 200);
    let (status, body) = http_get(port, "/readyz?verbose").expect("readyz");
    assert_eq!(status, 200);
    assert!(body.contains("[+]linearizable_read ok"), "{body}");
    assert_eq!(http_get(port, "/nope").expect("404").0, 404);
}

#[test]
fn health_is_false_without_a_leader_and_true_again() {
    let ports: Vec<u16> = (0..3).map(|_| free_tcp_port()).collect();
    let metrics = ports.clone();
    let mut cluster = TestCluster::start_each(3, move |i| {
        vec![
            "--listen-metrics-urls".into(),
            format!("http://127.0.0.1:{}", metrics[i]),
        ]
    });
    let healthy = |s: u16, body: &str| s == 200 && body.contains(r#""health":"true""#);
    wait_for(ports[0], "/health", "member 1 healthy", healthy);
    // Peer traffic flows: bytes per member, RTT samples, etcd's labels.
    let text = wait_for(ports[0], "/metrics", "peer metrics", |s, body| {
        let f = parse_exposition(body);
        s == 200
            && f["etcd_network_peer_sent_bytes_total"].samples.len() == 2
            && f["etcd_network_peer_received_bytes_total"].samples.len() == 2
            && !f["etcd_network_peer_round_trip_time_seconds"]
                .samples
                .is_empty()
    });
    let families = parse_exposition(&text);
    check_families(
        &families,
        &[
            ("etcd_network_peer_sent_bytes_total", "counter", &["To"]),
            (
                "etcd_network_peer_received_bytes_total",
                "counter",
                &["From"],
            ),
            (
                "etcd_network_peer_round_trip_time_seconds",
                "histogram",
                &["To"],
            ),
        ],
    );
    assert_eq!(
        families["etcd_server_is_leader"].samples.len(),
        1,
        "one is_leader sample"
    );

    cluster.kill(1);
    cluster.kill(2);
    let body = wait_for(ports[0], "/health", "member 1 unhealthy", |s, _| s == 503);
    assert!(body.contains(r#""health":"false""#), "{body}");
    assert!(body.contains("RAFT"), "{body}");
    wait_for(ports[0], "/readyz", "member 1 not ready", |s, _| s == 503);
    // This member's own view (etcd 3.5's ?serializable=true) is still fine.
    let (status, _) = http_get(ports[0], "/health?serializable=true").expect("health");
    assert_eq!(status, 200);
    let failures = value(
        &parse_exposition(&http_get(ports[0], "/metrics").expect("metrics").1),
        "etcd_server_health_failures",
    );
    assert!(failures >= 1.0, "failed health checks not counted");

    cluster.restart(1);
    wait_for(ports[0], "/health", "member 1 healthy again", healthy);
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn shim_serves_health_and_grpc_metrics_on_its_port() {
    let node = TestNode::start(&[]);
    qed::runtime::block_on(async {
        node.client().await;
    });
    let dir = TempDir::new("shim");
    let port = free_tcp_port();
    let _shim = Proc(
        Command::new(env!("CARGO_BIN_EXE_qed-grpc"))
            .args(["--endpoints", &node.url])
            .arg("--cacert")
            .arg(node.ca_file())
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{port}")])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(dir.0.join("shim.log")).expect("shim log"))
            .spawn()
            .expect("spawn qed-grpc"),
    );
    let body = wait_for(port, "/health", "shim healthy", |s, _| s == 200);
    assert_eq!(body, r#"{"health":"true","reason":""}"#);
    assert_eq!(http_get(port, "/livez").expect("livez").0, 200);
    // A gRPC call through the same port moves the gRPC counters.
    if Command::new("etcdctl").arg("version").output().is_ok() {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &format!("127.0.0.1:{port}"), "put", "a", "b"])
            .output()
            .expect("etcdctl");
        assert!(out.status.success(), "{out:?}");
        let text = wait_for(port, "/metrics", "grpc counters", |s, body| {
            s == 200 && body.contains("grpc_method=\"Put\"")
        });
        let families = parse_exposition(&text);
        check_families(
            &families,
            &[
                (
                    "grpc_server_started_total",
                    "counter",
                    &["grpc_type", "grpc_service", "grpc_method"],
                ),
                (
                    "grpc_server_handled_total",
                    "counter",
                    &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
                ),
                ("process_resident_memory_bytes", "gauge", &[]),
            ],
        );
        let handled = &families["grpc_server_handled_total"].samples;
        assert!(handled.iter().any(|(_, l, v)| l["grpc_method"] == "Put"
            && l["grpc_service"] == "etcdserverpb.KV"
            && l["grpc_type"] == "unary"
            && l["grpc_code"] == "OK"
            && *v >= 1.0));
        // Every method starts at zero for every code, as etcd's.
        assert!(handled
            .iter()
            .any(|(_, l, v)| l["grpc_method"] == "Defragment"
                && l["grpc_code"] == "Unavailable"
                && *v == 0.0));
        let started = &families["grpc_server_started_total"].samples;
        assert!(started
            .iter()
            .any(|(_, l, _)| l["grpc_method"] == "Watch" && l["grpc_type"] == "bidi_stream"));
    }
}

#[test]
fn shim_answers_probes_over_tls_in_http1_and_h2() {
    if Command::new("curl").arg("--version").output().is_err() {
        println!("skipping: curl is not installed");
        return;
    }
    let node = TestNode::start(&[]);
    qed::runtime::block_on(async {
        node.client().await;
    });
    let certs = node.dir.0.join("data/certs");
    let dir = TempDir::new("shim-tls");
    let port = free_tcp_port();
    let _shim = Proc(
        Command::new(env!("CARGO_BIN_EXE_qed-grpc"))
            .args(["--endpoints", &node.url])
            .arg("--cacert")
            .arg(node.ca_file())
            .args(["--listen-client-urls", &format!("https://127.0.0.1:{port}")])
            .arg("--cert-file")
            .arg(certs.join("node.crt"))
            .arg("--key-file")
            .arg(certs.join("node.key"))
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(dir.0.join("shim.log")).expect("shim log"))
            .spawn()
            .expect("spawn qed-grpc"),
    );
    let url = format!("https://127.0.0.1:{port}/health");
    for version in ["--http1.1", "--http2"] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new("curl")
                .args(["-s", "--max-time", "5", version, "--cacert"])
                .arg(node.ca_file())
                .arg(&url)
                .output()
                .expect("curl");
            let body = String::from_utf8_lossy(&out.stdout);
            if body == r#"{"health":"true","reason":""}"# {
                break;
            }
            assert!(Instant::now() < deadline, "{version}: {out:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
