//! A minimal `log` backend for the binaries: one line per record on stderr,
//! as text (`2026-01-02T03:04:05.678Z I | n1 | message`, so operators can
//! grep levels the way they grep etcd's capnslog lines) or as etcd's zap
//! JSON (`{"level":"info","ts":"...","caller":"server/peer.rs:42",
//! "msg":"...","name":"n1"}`, `--log-format json` or `--logger zap`).
//! The member name, when given, is on every line.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// From `--log-format` (json, text) and etcd's `--logger` (zap means
    /// JSON unless `--log-format` says otherwise; capnslog means text).
    pub fn from_flags(format: Option<&str>, logger: Option<&str>) -> Result<LogFormat, String> {
        match (format, logger) {
            (Some("json"), _) => Ok(LogFormat::Json),
            (Some("text"), _) => Ok(LogFormat::Text),
            (Some(other), _) => Err(format!("unknown log format {other:?} (json, text)")),
            (None, Some("zap")) => Ok(LogFormat::Json),
            (None, Some("capnslog") | None) => Ok(LogFormat::Text),
            (None, Some(other)) => Err(format!("unknown logger {other:?} (zap, capnslog)")),
        }
    }
}

struct StderrLog {
    format: LogFormat,
    /// The member (or process) name put on every line.
    name: String,
}

static LOGGER: OnceLock<StderrLog> = OnceLock::new();

impl Log for StderrLog {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) || !record.target().starts_with("qed") {
            return;
        }
        let line = match self.format {
            LogFormat::Text => text_line(&utc_now(), &self.name, record),
            LogFormat::Json => json_line(&utc_now(), &self.name, record),
        };
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }

    fn flush(&self) {}
}

fn text_line(ts: &str, name: &str, record: &Record) -> String {
    let level = match record.level() {
        Level::Error => 'E',
        Level::Warn => 'W',
        Level::Info => 'I',
        Level::Debug => 'D',
        Level::Trace => 'T',
    };
    if name.is_empty() {
        format!("{ts} {level} | {}", record.args())
    } else {
        format!("{ts} {level} | {name} | {}", record.args())
    }
}

/// zap's production encoder as etcd configures it: level, ts (ISO 8601),
/// caller (file:line), msg, then fields.
fn json_line(ts: &str, name: &str, record: &Record) -> String {
    let level = match record.level() {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug | Level::Trace => "debug",
    };
    let caller = match (record.file(), record.line()) {
        (Some(file), Some(line)) => format!("{}:{line}", file.trim_start_matches("src/")),
        _ => record.target().to_string(),
    };
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    let mut line = format!(
        "{{\"level\":\"{level}\",\"ts\":{},\"caller\":{},\"msg\":{}",
        quote(ts),
        quote(&caller),
        quote(&record.args().to_string())
    );
    if !name.is_empty() {
        line.push_str(&format!(",\"name\":{}", quote(name)));
    }
    line.push('}');
    line
}

/// Installs the text logger without a name (tools, tests).
pub fn init(level: &str) -> Result<(), String> {
    init_with(level, LogFormat::Text, "")
}

/// Installs the logger; `level` is etcd's `--log-level` word, `name` goes
/// on every line.
pub fn init_with(level: &str, format: LogFormat, name: &str) -> Result<(), String> {
    let filter = match level {
        "debug" => LevelFilter::Debug,
        "info" => LevelFilter::Info,
        "warn" => LevelFilter::Warn,
        "error" | "panic" | "fatal" => LevelFilter::Error,
        other => {
            return Err(format!(
                "unknown log level {other:?} (debug, info, warn, error)"
            ))
        }
    };
    let logger = LOGGER.get_or_init(|| StderrLog {
        format,
        name: name.to_string(),
    });
    log::set_logger(logger).map_err(|e| e.to_string())?;
    log::set_max_level(filter);
    Ok(())
}

/// RFC 3339 UTC time from the system clock, without a date crate.
fn utc_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_are_zaps_shape() {
        let args = format_args!("took \"long\"");
        let record = Record::builder()
            .args(args)
            .level(Level::Warn)
            .target("qed::server")
            .file(Some("src/server/raft_loop.rs"))
            .line(Some(7))
            .build();
        let line = json_line("2026-01-02T03:04:05.678Z", "n1", &record);
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["level"], "warn");
        assert_eq!(v["ts"], "2026-01-02T03:04:05.678Z");
        assert_eq!(v["caller"], "server/raft_loop.rs:7");
        assert_eq!(v["msg"], "took \"long\"");
        assert_eq!(v["name"], "n1");
        assert!(line.starts_with("{\"level\":"));
        assert_eq!(text_line("T", "n1", &record), "T W | n1 | took \"long\"");
    }

    #[test]
    fn formats_from_flags() {
        assert_eq!(LogFormat::from_flags(None, None), Ok(LogFormat::Text));
        assert_eq!(
            LogFormat::from_flags(None, Some("zap")),
            Ok(LogFormat::Json)
        );
        assert_eq!(
            LogFormat::from_flags(Some("text"), Some("zap")),
            Ok(LogFormat::Text)
        );
        assert!(LogFormat::from_flags(Some("xml"), None).is_err());
        assert!(LogFormat::from_flags(None, Some("glog")).is_err());
    }
}
