//! Prometheus metrics: a small registry of atomics and the text exposition
//! format (version 0.0.4), with etcd's metric names.
//!
//! Role: counters and histograms that code on the hot path bumps
//! ([`SERVER`] for the node, [`GRPC`] for the shim: process-wide statics,
//! as Prometheus' Go client keeps its default registry), and an
//! [`Exposition`] writer that the scrape handlers fill with those and with
//! gauges they read at scrape time (Raft status, store size). No I/O, no
//! clock: durations are passed in.
//!
//! Invariants: updating a metric never blocks on a scrape (plain atomics;
//! a labelled family takes a short mutex only to find or add a child, and
//! its label sets are bounded: members, gRPC methods × codes, lanes);
//! histogram buckets are etcd's, so the etcd-mixin's quantiles mean the
//! same; the exposition has one `# HELP`/`# TYPE` per family, label values
//! escaped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (a count of things in flight).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub const fn new() -> Gauge {
        Gauge(AtomicU64::new(0))
    }

    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Most buckets any histogram here has (etcd's RTT histogram has 16).
const MAX_BUCKETS: usize = 17;

/// etcd's `ExponentialBuckets(0.001, 2, 14)`: 1 ms .. 8.192 s (WAL fsync,
/// backend commit).
pub const DISK_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192,
];

/// etcd's `ExponentialBuckets(0.0001, 2, 16)`: 0.1 ms .. 3.2768 s (peer RTT).
pub const RTT_BUCKETS: &[f64] = &[
    0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048,
    0.4096, 0.8192, 1.6384, 3.2768,
];

/// A histogram with fixed upper bounds (seconds); counts are per bucket and
/// made cumulative when written out.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: [AtomicU64; MAX_BUCKETS],
    count: AtomicU64,
    /// The sum of observations, in nanoseconds.
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// `bounds` must be ascending and at most 17 long (longer is cut).
    pub const fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; MAX_BUCKETS],
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let bounds = &self.bounds[..self.bounds.len().min(MAX_BUCKETS)];
        if let Some(i) = bounds.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Children of one metric told apart by label values (etcd's `*Vec`).
pub struct Family<T> {
    children: Mutex<BTreeMap<Vec<String>, Arc<T>>>,
    make: fn() -> T,
}

impl<T> Family<T> {
    pub const fn new(make: fn() -> T) -> Family<T> {
        Family {
            children: Mutex::new(BTreeMap::new()),
            make,
        }
    }

    /// The child for these label values (created at zero when new).
    pub fn with(&self, values: &[&str]) -> Arc<T> {
        let key: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        children
            .entry(key)
            .or_insert_with(|| Arc::new((self.make)()))
            .clone()
    }

    /// Forgets a child (a member that left).
    pub fn remove(&self, values: &[&str]) {
        let key: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        children.remove(&key);
    }

    fn snapshot(&self) -> Vec<(Vec<String>, Arc<T>)> {
        let children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        children
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// The node's event-driven metrics (gauges are read at scrape time).
pub struct ServerMetrics {
    pub leader_changes: Counter,
    pub proposals_failed: Counter,
    pub proposals_pending: Gauge,
    pub slow_applies: Counter,
    pub heartbeat_send_failures: Counter,
    /// `/health` answers, true and false.
    pub health_successes: Counter,
    pub health_failures: Counter,
    pub wal_fsync: Histogram,
    pub backend_commit: Histogram,
    pub puts: Counter,
    /// Label `To` (member ID in hex, as etcd's).
    pub peer_sent_bytes: Family<Counter>,
    /// Label `From`.
    pub peer_received_bytes: Family<Counter>,
    /// Label `To`.
    pub peer_rtt: Family<Histogram>,
    /// Label `Remote`: packets quinn declared lost on the connection a
    /// member opened to us (sampled with the RTT).
    pub peer_lost_packets: Family<Gauge>,
    /// Labels `To`, `reason`: messages dropped (lane full, no connection, ...).
    pub peer_dropped: Family<Counter>,
}

pub static SERVER: ServerMetrics = ServerMetrics {
    leader_changes: Counter::new(),
    proposals_failed: Counter::new(),
    proposals_pending: Gauge::new(),
    slow_applies: Counter::new(),
    heartbeat_send_failures: Counter::new(),
    health_successes: Counter::new(),
    health_failures: Counter::new(),
    wal_fsync: Histogram::new(DISK_BUCKETS),
    backend_commit: Histogram::new(DISK_BUCKETS),
    puts: Counter::new(),
    peer_sent_bytes: Family::new(Counter::new),
    peer_received_bytes: Family::new(Counter::new),
    peer_rtt: Family::new(|| Histogram::new(RTT_BUCKETS)),
    peer_lost_packets: Family::new(Gauge::new),
    peer_dropped: Family::new(Counter::new),
};

/// The shim's metrics: go-grpc-prometheus' names and labels, as etcd
/// exports them.
pub struct GrpcMetrics {
    /// Labels `grpc_type`, `grpc_service`, `grpc_method`.
    pub started: Family<Counter>,
    /// Labels `grpc_type`, `grpc_service`, `grpc_method`, `grpc_code`.
    pub handled: Family<Counter>,
}

pub static GRPC: GrpcMetrics = GrpcMetrics {
    started: Family::new(Counter::new),
    handled: Family::new(Counter::new),
};

impl GrpcMetrics {
    /// Writes both families.
    pub fn write(&self, out: &mut Exposition) {
        out.counter_family(
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            &["grpc_type", "grpc_service", "grpc_method"],
            &self.started,
        );
        out.counter_family(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            &self.handled,
        );
    }
}

impl ServerMetrics {
    /// Writes every event-driven node metric.
    pub fn write(&self, out: &mut Exposition) {
        out.counter(
            "etcd_server_leader_changes_seen_total",
            "The number of leader changes seen.",
            self.leader_changes.get(),
        );
        out.counter(
            "etcd_server_proposals_failed_total",
            "The total number of failed proposals seen.",
            self.proposals_failed.get(),
        );
        out.counter(
            "etcd_server_slow_apply_total",
            "The total number of slow apply requests (likely overloaded from slow disk).",
            self.slow_applies.get(),
        );
        out.counter(
            "etcd_server_heartbeat_send_failures_total",
            "The total number of leader heartbeat send failures (likely overloaded from slow disk).",
            self.heartbeat_send_failures.get(),
        );
        out.counter(
            "etcd_server_health_success",
            "The total number of successful health checks",
            self.health_successes.get(),
        );
        out.counter(
            "etcd_server_health_failures",
            "The total number of failed health checks",
            self.health_failures.get(),
        );
        out.histogram(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
            &self.wal_fsync,
        );
        out.histogram(
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
            &self.backend_commit,
        );
        out.counter(
            "etcd_mvcc_put_total",
            "Total number of puts seen by this member.",
            self.puts.get(),
        );
        out.counter_family(
            "etcd_network_peer_sent_bytes_total",
            "The total number of bytes sent to peers.",
            &["To"],
            &self.peer_sent_bytes,
        );
        out.counter_family(
            "etcd_network_peer_received_bytes_total",
            "The total number of bytes received from peers.",
            &["From"],
            &self.peer_received_bytes,
        );
        out.histogram_family(
            "etcd_network_peer_round_trip_time_seconds",
            "Round-Trip-Time histogram between peers",
            &["To"],
            &self.peer_rtt,
        );
        out.gauge_family(
            "qed_network_peer_lost_packets",
            "Packets lost on the QUIC connection a member opened to this one (quinn's count).",
            &["Remote"],
            &self.peer_lost_packets,
        );
        out.counter_family(
            "qed_peer_dropped_messages_total",
            "Peer messages dropped (lane full or broken, no connection).",
            &["To", "reason"],
            &self.peer_dropped,
        );
    }
}

/// The text exposition being written.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    pub fn finish(self) -> String {
        self.out
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, help, "counter");
        let _ = writeln!(self.out, "{name} {value}");
    }

    /// A counter kept elsewhere as a float (CPU seconds).
    pub fn counter_f64(&mut self, name: &str, help: &str, value: f64) {
        self.header(name, help, "counter");
        let _ = writeln!(self.out, "{name} {}", number(value));
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.header(name, help, "gauge");
        let _ = writeln!(self.out, "{name} {}", number(value));
    }

    /// A gauge with labels, one sample per `(values, value)`.
    pub fn gauge_labelled(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
        samples: &[(Vec<String>, f64)],
    ) {
        self.header(name, help, "gauge");
        for (values, value) in samples {
            let _ = writeln!(
                self.out,
                "{name}{} {}",
                label_set(labels, values, None),
                number(*value)
            );
        }
    }

    pub fn counter_family(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
        family: &Family<Counter>,
    ) {
        self.header(name, help, "counter");
        for (values, counter) in family.snapshot() {
            let _ = writeln!(
                self.out,
                "{name}{} {}",
                label_set(labels, &values, None),
                counter.get()
            );
        }
    }

    pub fn gauge_family(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
        family: &Family<Gauge>,
    ) {
        self.header(name, help, "gauge");
        for (values, gauge) in family.snapshot() {
            let _ = writeln!(
                self.out,
                "{name}{} {}",
                label_set(labels, &values, None),
                gauge.get()
            );
        }
    }

    pub fn histogram(&mut self, name: &str, help: &str, histogram: &Histogram) {
        self.header(name, help, "histogram");
        self.histogram_samples(name, &[], &[], histogram);
    }

    pub fn histogram_family(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
        family: &Family<Histogram>,
    ) {
        self.header(name, help, "histogram");
        for (values, histogram) in family.snapshot() {
            self.histogram_samples(name, labels, &values, &histogram);
        }
    }

    fn histogram_samples(
        &mut self,
        name: &str,
        labels: &[&str],
        values: &[String],
        histogram: &Histogram,
    ) {
        let bounds = &histogram.bounds[..histogram.bounds.len().min(MAX_BUCKETS)];
        let mut cumulative = 0;
        for (i, bound) in bounds.iter().enumerate() {
            cumulative += histogram.buckets[i].load(Ordering::Relaxed);
            let le = number(*bound);
            let _ = writeln!(
                self.out,
                "{name}_bucket{} {cumulative}",
                label_set(labels, values, Some(&le))
            );
        }
        let count = histogram.count();
        let _ = writeln!(
            self.out,
            "{name}_bucket{} {count}",
            label_set(labels, values, Some("+Inf"))
        );
        let sum = histogram.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let plain = label_set(labels, values, None);
        let _ = writeln!(self.out, "{name}_sum{plain} {}", number(sum));
        let _ = writeln!(self.out, "{name}_count{plain} {count}");
    }
}

/// `{a="x",b="y"}` (with `le` last when given), or nothing without labels.
fn label_set(labels: &[&str], values: &[String], le: Option<&str>) -> String {
    let mut pairs: Vec<String> = labels
        .iter()
        .zip(values)
        .map(|(l, v)| format!("{l}=\"{}\"", escape_label(v)))
        .collect();
    if let Some(le) = le {
        pairs.push(format!("le=\"{le}\""));
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value as Prometheus writes it (`1`, `0.5`, `+Inf`, `NaN`).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_with_etcd_buckets() {
        let h = Histogram::new(DISK_BUCKETS);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(20));
        let mut out = Exposition::new();
        out.histogram("x_seconds", "help", &h);
        let text = out.finish();
        assert!(text.contains("# TYPE x_seconds histogram\n"));
        assert!(text.contains("x_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(text.contains("x_seconds_bucket{le=\"0.002\"} 1\n"));
        assert!(text.contains("x_seconds_bucket{le=\"0.004\"} 2\n"));
        assert!(text.contains("x_seconds_bucket{le=\"8.192\"} 2\n"));
        assert!(text.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("x_seconds_sum 20.0035\n"));
        assert!(text.contains("x_seconds_count 3\n"));
    }

    #[test]
    fn families_escape_and_sort_labels() {
        let f: Family<Counter> = Family::new(Counter::new);
        f.with(&["b", "q\"\\\n"]).add(2);
        f.with(&["a", "x"]).inc();
        let mut out = Exposition::new();
        out.counter_family("c_total", "a\nb", &["k", "v"], &f);
        assert_eq!(
            out.finish(),
            "# HELP c_total a\\nb\n# TYPE c_total counter\n\
             c_total{k=\"a\",v=\"x\"} 1\n\
             c_total{k=\"b\",v=\"q\\\"\\\\\\n\"} 2\n"
        );
        f.remove(&["a", "x"]);
        assert_eq!(f.snapshot().len(), 1);
    }

    #[test]
    fn rtt_buckets_print_as_etcd_does() {
        let printed: Vec<String> = RTT_BUCKETS.iter().map(|b| number(*b)).collect();
        assert_eq!(printed[0], "0.0001");
        assert_eq!(printed[15], "3.2768");
        assert_eq!(number(1.0), "1");
        assert_eq!(number(f64::INFINITY), "+Inf");
    }
}
