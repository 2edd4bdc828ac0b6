//! The node's operator endpoints on `--listen-metrics-urls` (plain HTTP over
//! TCP, as etcd's): `/metrics`, `/health`, `/livez`, `/readyz`, `/version`.
//!
//! Role: answer each path from what the node already keeps (Raft status
//! atomics, the state machine under its read lock, the event counters in
//! [`crate::metrics::SERVER`]); the HTTP itself is [`crate::http1`].
//!
//! Invariants: a probe never writes through Raft; the only wait is one
//! ReadIndex round, bounded by [`READ_CHECK_TIMEOUT`], so a probe of a
//! member without a quorum answers "false" instead of hanging.

use super::node::{alarm_name, Node};
use crate::http1::{self, Request, Response};
use crate::metrics::{Exposition, SERVER};
use crate::runtime;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// The etcd server version qed answers as (the etcd 3.4 it is tested
/// against), and the cluster version (etcd keeps major.minor.0).
pub const ETCD_SERVER_VERSION: &str = "3.4.23";
pub const ETCD_CLUSTER_VERSION: &str = "3.4.0";

/// etcd's `/health` gives its QGET one second.
pub const READ_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Binds each metrics URL (`http://host:port`) and serves it.
pub fn serve(urls: &[String], node: Arc<Node>) -> Result<(), String> {
    for url in urls {
        let addr = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("--listen-metrics-urls {url}: only http:// is served"))?
            .trim_end_matches('/');
        let std_listener = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("--listen-metrics-urls {url}: {e}"))?;
        let listener = runtime::TcpListener::from(std_listener);
        log::info!("serving /metrics and /health on {url}");
        let node = node.clone();
        runtime::spawn(http1::serve(listener, move |req| {
            let node = node.clone();
            async move { respond(&node, req).await }
        }));
    }
    Ok(())
}

/// Answers one request.
pub async fn respond(node: &Node, req: Request) -> Response {
    if req.method != "GET" && req.method != "HEAD" {
        return Response::method_not_allowed();
    }
    match req.path.as_str() {
        "/metrics" => Response::new(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics_text(node),
        ),
        "/health" => {
            let health = check_health(node, &excluded_alarms(&req), serializable(&req)).await;
            if health.healthy {
                SERVER.health_successes.inc();
            } else {
                SERVER.health_failures.inc();
            }
            Response::json(health.status(), health.json())
        }
        "/livez" => Response::text(200, "ok"),
        "/readyz" => readyz(node, &req).await,
        "/version" => Response::json(200, version_json()),
        _ => Response::not_found(),
    }
}

/// `{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}`.
pub fn version_json() -> String {
    format!(
        "{{\"etcdserver\":\"{ETCD_SERVER_VERSION}\",\"etcdcluster\":\"{ETCD_CLUSTER_VERSION}\"}}"
    )
}

/// etcd's `/health` answer (3.5's shape: a reason when unhealthy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub healthy: bool,
    pub reason: String,
}

impl Health {
    pub fn ok() -> Health {
        Health {
            healthy: true,
            reason: String::new(),
        }
    }

    pub fn failed(reason: impl Into<String>) -> Health {
        Health {
            healthy: false,
            reason: reason.into(),
        }
    }

    pub fn status(&self) -> u16 {
        if self.healthy {
            200
        } else {
            503
        }
    }

    pub fn json(&self) -> String {
        serde_json::json!({
            "health": if self.healthy { "true" } else { "false" },
            "reason": self.reason,
        })
        .to_string()
    }
}

/// etcd 3.5's `?serializable=true`: this member's view only (no leader
/// check, no ReadIndex round).
pub fn serializable(req: &Request) -> bool {
    req.params()
        .any(|(k, v)| k == "serializable" && v == "true")
}

/// `?exclude=NOSPACE` (repeatable): alarms that do not make it unhealthy.
pub fn excluded_alarms(req: &Request) -> Vec<String> {
    req.params()
        .filter(|(k, _)| *k == "exclude")
        .map(|(_, v)| v.to_owned())
        .collect()
}

/// etcd's checks in its order: an alarm (not excluded), no leader, a
/// linearizable read that does not complete within a second (the last two
/// skipped for `serializable`).
async fn check_health(node: &Node, excluded: &[String], serializable: bool) -> Health {
    let alarm = node.read_state(|state| {
        state
            .alarms()
            .iter()
            .map(|a| alarm_name(a.alarm))
            .find(|name| !excluded.iter().any(|e| e == name))
    });
    if let Some(name) = alarm {
        return Health::failed(format!("ALARM {name}"));
    }
    if serializable {
        return Health::ok();
    }
    if node.raft_status().leader.load(Ordering::Relaxed) == 0 {
        return Health::failed("RAFT NO LEADER");
    }
    match runtime::timeout(READ_CHECK_TIMEOUT, node.confirm_read()).await {
        Ok(Ok(())) => Health::ok(),
        Ok(Err(e)) => Health::failed(format!("RAFT ERROR {e}")),
        Err(_) => Health::failed("RAFT ERROR context deadline exceeded"),
    }
}

/// etcd 3.6's `/readyz`: no corruption alarm, a serializable read, a
/// linearizable read; `?verbose` lists each check.
async fn readyz(node: &Node, req: &Request) -> Response {
    let corrupt = node.read_state(|state| {
        state
            .alarms()
            .iter()
            .any(|a| alarm_name(a.alarm) == "CORRUPT")
    });
    let linearizable = match runtime::timeout(READ_CHECK_TIMEOUT, node.confirm_read()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("context deadline exceeded".to_string()),
    };
    let checks = [
        (
            "data_corruption",
            if corrupt {
                Err("alarm activated: CORRUPT".to_string())
            } else {
                Ok(())
            },
        ),
        ("serializable_read", Ok(())),
        ("linearizable_read", linearizable),
    ];
    probe_report(&checks, req.has_param("verbose"), "readyz")
}

/// Kubernetes-style probe text, as etcd 3.6 writes it.
fn probe_report(checks: &[(&str, Result<(), String>)], verbose: bool, what: &str) -> Response {
    let failed = checks.iter().any(|(_, r)| r.is_err());
    let mut lines = String::new();
    for (name, result) in checks {
        match result {
            Ok(()) => lines.push_str(&format!("[+]{name} ok\n")),
            Err(e) => lines.push_str(&format!("[-]{name} failed: {e}\n")),
        }
    }
    if failed {
        Response::text(503, format!("{lines}{what} check failed\n"))
    } else if verbose {
        Response::text(200, format!("{lines}ok\n"))
    } else {
        Response::text(200, "ok")
    }
}

/// The whole exposition: gauges read now, then the event counters, then
/// the process figures.
pub fn metrics_text(node: &Node) -> String {
    let mut out = Exposition::new();
    let raft = node.raft_status();
    let leader = raft.leader.load(Ordering::Relaxed);
    let me = node.identity().member_id;
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    out.gauge(
        "etcd_server_has_leader",
        "Whether or not a leader exists. 1 is existence, 0 is not.",
        flag(leader != 0),
    );
    out.gauge(
        "etcd_server_is_leader",
        "Whether or not this member is a leader. 1 if is, 0 otherwise.",
        flag(leader != 0 && leader == me),
    );
    out.gauge(
        "etcd_server_is_learner",
        "Whether or not this member is a learner. 1 if is, 0 otherwise.",
        flag(node.is_learner()),
    );
    out.gauge(
        "etcd_server_proposals_committed_total",
        "The total number of consensus proposals committed.",
        raft.commit.load(Ordering::Relaxed) as f64,
    );
    out.gauge(
        "etcd_server_proposals_applied_total",
        "The total number of consensus proposals applied.",
        raft.applied.load(Ordering::Relaxed) as f64,
    );
    out.gauge(
        "etcd_server_proposals_pending",
        "The current number of pending proposals to commit.",
        SERVER.proposals_pending.get() as f64,
    );
    let (size, keys) = node.read_state(|state| {
        (
            state.size_bytes(),
            // As etcd's gauge: keys with an index (live, or deleted and not
            // yet compacted away); O(1), unlike counting live keys.
            state.store_view().key_count(),
        )
    });
    let quota = node.quota_bytes();
    out.gauge(
        "etcd_mvcc_db_total_size_in_bytes",
        "Total size of the underlying database physically allocated in bytes.",
        size as f64,
    );
    out.gauge(
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "Total size of the underlying database logically in use in bytes.",
        size as f64,
    );
    out.gauge(
        "etcd_debugging_mvcc_keys_total",
        "Total number of keys.",
        keys as f64,
    );
    out.gauge(
        "etcd_server_quota_backend_bytes",
        "Current backend storage quota size in bytes.",
        quota as f64,
    );
    out.gauge_labelled(
        "etcd_server_version",
        "Which version is running. 1 for 'server_version' label with current version.",
        &["server_version"],
        &[(vec![ETCD_SERVER_VERSION.to_string()], 1.0)],
    );
    out.gauge_labelled(
        "etcd_server_id",
        "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
        &["server_id"],
        &[(vec![format!("{me:x}")], 1.0)],
    );
    let watchers = node.watchers();
    out.gauge(
        "etcd_debugging_mvcc_watcher_total",
        "Total number of watchers.",
        watchers.watcher_count() as f64,
    );
    out.gauge(
        "etcd_debugging_mvcc_slow_watcher_total",
        "Total number of unsynced slow watchers.",
        watchers.unsynced_count() as f64,
    );
    SERVER.write(&mut out);
    out.gauge(
        "qed_raft_term",
        "The Raft term this member is in.",
        raft.term.load(Ordering::Relaxed) as f64,
    );
    out.gauge(
        "qed_raft_queued_steps",
        "Peer messages in the Raft loop's inbox, not yet stepped.",
        raft.queued_steps.load(Ordering::Relaxed) as f64,
    );
    http1::write_process_metrics(&mut out);
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_json_is_etcds() {
        assert_eq!(Health::ok().json(), r#"{"health":"true","reason":""}"#);
        let h = Health::failed("RAFT NO LEADER");
        assert_eq!(h.json(), r#"{"health":"false","reason":"RAFT NO LEADER"}"#);
        assert_eq!(h.status(), 503);
        assert_eq!(
            version_json(),
            r#"{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}"#
        );
    }

    #[test]
    fn readyz_lists_failures() {
        let r = probe_report(&[("a", Ok(())), ("b", Err("x".into()))], false, "readyz");
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "[+]a ok\n[-]b failed: x\nreadyz check failed\n");
        let r = probe_report(&[("a", Ok(()))], true, "readyz");
        assert_eq!(r.body, "[+]a ok\nok\n");
    }
}
