//! etcd's auto-compaction schedule (`--auto-compaction-mode`,
//! `--auto-compaction-retention`; etcd's `etcdserver/api/v3compactor`), as a
//! pure state machine: the driver calls [`AutoCompactor::poll`] with the
//! time, the current revision and whether this member leads, proposes the
//! revision it returns as an ordinary Compact, and reports the outcome with
//! [`AutoCompactor::finished`].
//!
//! Invariants: only the *decision* is local (clock, leadership); what every
//! member applies is the Compact entry in the log. Nothing is proposed
//! while not leading (etcd pauses its compactor on followers), but the
//! periodic mode keeps sampling revisions, as etcd's does. Time is in
//! milliseconds of a monotonic clock.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

/// etcd's revision mode looks every five minutes.
pub const REVISION_CHECK_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// What `--auto-compaction-mode` and `--auto-compaction-retention` say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Keep history newer than this (compaction every min(period, 1 h)).
    Periodic(Duration),
    /// Keep this many revisions behind the current one.
    Revision(i64),
}

/// A flag combination etcd refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionError(pub String);

impl fmt::Display for RetentionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// etcd's `parseCompactionRetention`: a plain integer is hours (periodic)
/// or revisions (revision); otherwise a Go duration (`30m`, `1h30m`,
/// `1.5h`). `None` when auto-compaction is off (retention 0).
pub fn parse_retention(mode: &str, retention: &str) -> Result<Option<Retention>, RetentionError> {
    let retention = retention.trim();
    let parsed = match (mode, retention.parse::<i64>()) {
        ("revision", Ok(n)) if n >= 0 => Retention::Revision(n),
        ("periodic", Ok(h)) if h >= 0 => Retention::Periodic(Duration::from_secs(h as u64 * 3600)),
        ("periodic", _) => Retention::Periodic(parse_go_duration(retention).ok_or_else(|| {
            RetentionError(format!(
                "error parsing CompactionRetention: time: invalid duration {retention:?}"
            ))
        })?),
        ("revision", _) => {
            return Err(RetentionError(format!(
                "error parsing CompactionRetention: {retention:?} is not a number of revisions"
            )))
        }
        (other, _) => {
            return Err(RetentionError(format!(
                "unknown auto-compaction-mode {other:?}"
            )))
        }
    };
    let off = match parsed {
        Retention::Periodic(d) => d.is_zero(),
        Retention::Revision(n) => n == 0,
    };
    Ok((!off).then_some(parsed))
}

/// Go's `time.ParseDuration` for non-negative values: a sequence of
/// decimal numbers with units `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        if number.is_empty() || number == "." {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = tail;
    }
    (total.is_finite() && total < 1e12).then(|| Duration::from_secs_f64(total))
}

/// The schedule. See the module doc for the driver's duties.
#[derive(Debug)]
pub struct AutoCompactor {
    retention: Retention,
    /// When `poll` next looks (ms).
    next_at: u64,
    /// Periodic: revisions sampled every retry interval, oldest first;
    /// `revs[0]` is the revision of one period ago.
    revs: VecDeque<i64>,
    /// Periodic: when the last compaction succeeded (or the start).
    last_success: u64,
    /// Periodic: the period the first time, then min(period, 1 h).
    base_interval: u64,
    /// Revision: the last revision compacted.
    prev: i64,
    /// A proposal in flight: `poll` proposes nothing more until it ends.
    in_flight: bool,
}

impl AutoCompactor {
    pub fn new(retention: Retention, now: u64, rev: i64) -> AutoCompactor {
        let mut c = AutoCompactor {
            retention,
            next_at: now,
            revs: VecDeque::from([rev]),
            last_success: now,
            base_interval: 0,
            prev: 0,
            in_flight: false,
        };
        c.next_at = now + c.interval_ms();
        if let Retention::Periodic(period) = retention {
            c.base_interval = ms(period);
        }
        c
    }

    /// How often `poll` acts: a tenth of min(period, 1 h) (etcd's retry
    /// interval), or five minutes in revision mode.
    pub fn interval(&self) -> Duration {
        match self.retention {
            Retention::Periodic(period) => period.min(Duration::from_secs(3600)) / 10,
            Retention::Revision(_) => REVISION_CHECK_INTERVAL,
        }
    }

    fn interval_ms(&self) -> u64 {
        ms(self.interval()).max(1)
    }

    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// The revision to compact now, if any.
    pub fn poll(&mut self, now: u64, rev: i64, leading: bool) -> Option<i64> {
        if now < self.next_at {
            return None;
        }
        self.next_at = now + self.interval_ms();
        match self.retention {
            Retention::Periodic(period) => {
                let decision = (leading
                    && !self.in_flight
                    && now.saturating_sub(self.last_success) >= self.base_interval)
                    .then(|| {
                        self.base_interval = ms(period.min(Duration::from_secs(3600)));
                        self.revs[0]
                    });
                // etcd samples every round, paused or not.
                self.revs.push_back(rev);
                let keep = (period.as_millis() / self.interval_ms() as u128) as usize + 1;
                while self.revs.len() > keep {
                    self.revs.pop_front();
                }
                let decision = decision.filter(|r| *r > 0);
                self.in_flight |= decision.is_some();
                decision
            }
            Retention::Revision(keep) => {
                if !leading || self.in_flight {
                    return None;
                }
                let target = rev - keep;
                if target <= 0 || target == self.prev {
                    return None;
                }
                self.in_flight = true;
                Some(target)
            }
        }
    }

    /// The proposal for `rev` ended; `ok` also when the revision was
    /// already compacted (etcd counts `ErrCompacted` as done).
    pub fn finished(&mut self, now: u64, rev: i64, ok: bool) {
        self.in_flight = false;
        if ok {
            self.last_success = now;
            self.prev = rev;
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_parses_as_etcd() {
        let h = Duration::from_secs(3600);
        assert_eq!(
            parse_retention("periodic", "1"),
            Ok(Some(Retention::Periodic(h)))
        );
        assert_eq!(
            parse_retention("periodic", "30m"),
            Ok(Some(Retention::Periodic(h / 2)))
        );
        assert_eq!(
            parse_retention("periodic", "1h30m"),
            Ok(Some(Retention::Periodic(h * 3 / 2)))
        );
        assert_eq!(
            parse_retention("periodic", "1.5s"),
            Ok(Some(Retention::Periodic(Duration::from_millis(1500))))
        );
        assert_eq!(
            parse_retention("revision", "1000"),
            Ok(Some(Retention::Revision(1000)))
        );
        assert_eq!(parse_retention("periodic", "0"), Ok(None));
        assert_eq!(parse_retention("revision", "0"), Ok(None));
        assert!(parse_retention("periodic", "1x").is_err());
        assert!(parse_retention("periodic", "-1h").is_err());
        assert!(parse_retention("revision", "10m").is_err());
        assert!(parse_retention("weekly", "1").is_err());
        assert_eq!(parse_go_duration(""), None);
        assert_eq!(parse_go_duration("h"), None);
        assert_eq!(parse_go_duration("100ms"), Some(Duration::from_millis(100)));
    }

    #[test]
    fn periodic_compacts_the_revision_of_one_period_ago() {
        // Period 10 s: sample every 1 s, first compaction after 10 s.
        let mut c = AutoCompactor::new(Retention::Periodic(Duration::from_secs(10)), 0, 1);
        let mut proposed = Vec::new();
        for second in 1..=25u64 {
            let rev = 1 + second as i64 * 100; // 100 writes a second
            if let Some(r) = c.poll(second * 1000, rev, true) {
                proposed.push((second, r));
                c.finished(second * 1000, r, true);
            }
        }
        // At 10 s the oldest sample is the start (rev 1); every 10 s after
        // that (min(period, 1h)), the revision of ten seconds before.
        assert_eq!(proposed, vec![(10, 1), (20, 901)]);
    }

    #[test]
    fn periodic_retries_after_a_failure_and_waits_while_following() {
        let mut c = AutoCompactor::new(Retention::Periodic(Duration::from_secs(10)), 0, 5);
        for second in 1..10u64 {
            assert_eq!(c.poll(second * 1000, 5 + second as i64, false), None);
        }
        // Not leading at 10 s: nothing; leading at 11 s: the oldest of
        // the eleven samples kept (a period's worth), still the start's.
        assert_eq!(c.poll(10_000, 20, false), None);
        let r = c.poll(11_000, 21, true).expect("leader compacts");
        assert_eq!(r, 5);
        // Nothing more while it is in flight.
        assert_eq!(c.poll(12_000, 22, true), None);
        c.finished(12_500, r, false);
        // Failed: tried again at the next round.
        assert!(c.poll(13_000, 23, true).is_some());
    }

    #[test]
    fn revision_mode_keeps_that_many_revisions() {
        let mut c = AutoCompactor::new(Retention::Revision(100), 0, 1);
        let five_min = ms(REVISION_CHECK_INTERVAL);
        assert_eq!(c.poll(five_min - 1, 500, true), None);
        assert_eq!(c.poll(five_min, 50, true), None); // nothing to compact yet
        assert_eq!(c.poll(2 * five_min, 500, false), None); // follower
        assert_eq!(c.poll(3 * five_min, 500, true), Some(400));
        c.finished(3 * five_min, 400, true);
        // No new writes: the same target is not proposed again.
        assert_eq!(c.poll(4 * five_min, 500, true), None);
        assert_eq!(c.poll(5 * five_min, 700, true), Some(600));
    }
}
