//! The shim's operator endpoints on its gRPC port, as etcd serves them on
//! 2379: `/health`, `/livez`, `/readyz`, `/version` and `/metrics`, over
//! HTTP/1.1 (the listener tells it from the HTTP/2 preface) and over h2.
//!
//! Role: answer from the cluster through the [`Backend`] (an alarm list,
//! a Status for the leader, a linearizable read) and from this process's
//! own figures (`grpc_server_*`, `process_*`). The node's Raft and disk
//! metrics are on its `--listen-metrics-urls`.
//!
//! Invariant: a probe makes at most three backend calls, each bounded by
//! [`CHECK_TIMEOUT`]; none writes.

use super::backend::Backend;
use super::status::{Code, Status};
use crate::http1::{self, Request, Response};
use crate::metrics::{Exposition, GRPC};
use crate::runtime;
use crate::server::node::alarm_name;
use crate::server::probes::{excluded_alarms, serializable, version_json, Health};
use crate::wire::{self, kv::RangeRequest, maintenance::AlarmRequest};
use std::time::Duration;

/// etcd's `/health` gives its read one second.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Answers one probe request.
pub async fn respond<B: Backend>(backend: &B, req: Request) -> Response {
    if req.method != "GET" && req.method != "HEAD" {
        return Response::method_not_allowed();
    }
    match req.path.as_str() {
        "/metrics" => {
            let mut out = Exposition::new();
            GRPC.write(&mut out);
            http1::write_process_metrics(&mut out);
            Response::new(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                out.finish(),
            )
        }
        "/health" => {
            let health = check_health(backend, &excluded_alarms(&req), serializable(&req)).await;
            Response::json(health.status(), health.json())
        }
        "/livez" => Response::text(200, "ok"),
        "/readyz" => {
            let serializable = read(backend, true).await;
            let linearizable = read(backend, false).await;
            let mut lines = String::new();
            for (name, result) in [
                ("serializable_read", &serializable),
                ("linearizable_read", &linearizable),
            ] {
                match result {
                    Ok(()) => lines.push_str(&format!("[+]{name} ok\n")),
                    Err(e) => lines.push_str(&format!("[-]{name} failed: {e}\n")),
                }
            }
            if serializable.is_err() || linearizable.is_err() {
                Response::text(503, format!("{lines}readyz check failed\n"))
            } else if req.has_param("verbose") {
                Response::text(200, format!("{lines}ok\n"))
            } else {
                Response::text(200, "ok")
            }
        }
        "/version" => Response::json(200, version_json()),
        _ => Response::not_found(),
    }
}

/// etcd's checks in its order: an alarm, no leader, a linearizable read
/// (`serializable`: a serializable read instead, no leader check).
async fn check_health<B: Backend>(backend: &B, excluded: &[String], serializable: bool) -> Health {
    let alarms = call(
        backend,
        wire::Request::Alarm(AlarmRequest {
            ..Default::default()
        }),
    )
    .await;
    // With auth on, listing alarms needs the root role: a probe without
    // credentials goes on to the checks it can make.
    if let Ok(wire::Response::Alarm(list)) = &alarms {
        if let Some(name) = list
            .alarms
            .iter()
            .map(|a| alarm_name(a.alarm))
            .find(|name| !excluded.iter().any(|e| e == name))
        {
            return Health::failed(format!("ALARM {name}"));
        }
    }
    if serializable {
        return match read(backend, true).await {
            Ok(()) => Health::ok(),
            Err(e) => Health::failed(format!("RAFT ERROR {e}")),
        };
    }
    match call(backend, wire::Request::Status(Default::default())).await {
        Ok(wire::Response::Status(status)) if status.leader == 0 => {
            return Health::failed("RAFT NO LEADER")
        }
        Ok(_) => {}
        Err(status) => return Health::failed(format!("RAFT ERROR {}", status.message)),
    }
    match read(backend, false).await {
        Ok(()) => Health::ok(),
        Err(e) => Health::failed(format!("RAFT ERROR {e}")),
    }
}

/// A one-key read of `health`; a permission error still proves the read
/// path works (etcd counts it as healthy).
async fn read<B: Backend>(backend: &B, serializable: bool) -> Result<(), String> {
    let request = wire::Request::Range(RangeRequest {
        key: b"health".to_vec(),
        serializable,
        ..Default::default()
    });
    match call(backend, request).await {
        Ok(_) => Ok(()),
        Err(status) if matches!(status.code, Code::PermissionDenied) => Ok(()),
        Err(status) if status.message.contains("permission denied") => Ok(()),
        Err(status) => Err(status.message),
    }
}

async fn call<B: Backend>(backend: &B, request: wire::Request) -> Result<wire::Response, Status> {
    match runtime::timeout(CHECK_TIMEOUT, backend.unary(None, request)).await {
        Ok(result) => result,
        Err(_) => Err(Status::new(
            Code::DeadlineExceeded,
            "context deadline exceeded",
        )),
    }
}
