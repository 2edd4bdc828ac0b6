//! A minimal `log` backend for the binaries: one line per record on stderr,
//! `2026-01-02T03:04:05.678Z I | message`, so operators can grep levels the
//! way they grep etcd's logs. No dependency beyond `log`.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

struct StderrLog;

impl Log for StderrLog {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) || !record.target().starts_with("qed") {
            return;
        }
        let level = match record.level() {
            Level::Error => 'E',
            Level::Warn => 'W',
            Level::Info => 'I',
            Level::Debug => 'D',
            Level::Trace => 'T',
        };
        let _ = writeln!(
            std::io::stderr().lock(),
            "{} {level} | {}",
            utc_now(),
            record.args()
        );
    }

    fn flush(&self) {}
}

/// Installs the logger; `level` is etcd's `--log-level` word.
pub fn init(level: &str) -> Result<(), String> {
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
    log::set_logger(&StderrLog).map_err(|e| e.to_string())?;
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
