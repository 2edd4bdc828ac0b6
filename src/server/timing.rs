//! `--heartbeat-interval auto` and `--election-timeout auto`: Raft's timing
//! derived from the measured peer links, so an operator need not tune it
//! per link (etcd's tuning guide: a heartbeat about one round trip, an
//! election timeout of at least ten).
//!
//! Pure: the Raft loop passes in what it measured (the worst smoothed RTT
//! to any member, the share of peer packets lost) and applies what comes
//! back: the tick period (one heartbeat) and the core's election timeout in
//! ticks. Invariants: a derived timing stays within the bounds below and
//! keeps at least [`MIN_ELECTION_TICKS`] heartbeats per election timeout; a
//! fixed flag is never overridden. Timing is local to a member and changes
//! nothing it applies (the log decides that, not clocks).

use std::time::Duration;

/// A timing flag: a fixed value, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Fixed(Duration),
    Auto,
}

/// Parses a flag value: `auto`, or milliseconds.
pub fn parse(text: &str) -> Result<Setting, String> {
    if text.eq_ignore_ascii_case("auto") {
        return Ok(Setting::Auto);
    }
    match text.parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Setting::Fixed(Duration::from_millis(ms))),
        _ => Err(format!(
            "{text:?}: give milliseconds (a positive integer) or auto"
        )),
    }
}

/// Heartbeats per election timeout at the least: a lost heartbeat or two is
/// not an election.
pub const MIN_ELECTION_TICKS: u32 = 5;
/// An automatic heartbeat interval stays within these (etcd's default is
/// the floor).
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
pub const MAX_HEARTBEAT: Duration = Duration::from_millis(500);
/// An automatic election timeout stays within these (etcd refuses more
/// than 50 s).
pub const MIN_ELECTION: Duration = Duration::from_millis(1000);
pub const MAX_ELECTION: Duration = Duration::from_secs(50);
/// Heartbeats per election timeout on a clean link (etcd's ratio).
const BASE_ELECTION_TICKS: u32 = 10;
/// How unlikely it should be that every heartbeat of one election timeout
/// is lost, at the measured loss (heartbeats are lost independently).
const ALL_LOST: f64 = 1e-6;
/// Loss above this is measured as this (a link losing more is not one
/// Raft can be tuned for).
const MAX_LOSS: f64 = 0.5;

/// One member's timing: a heartbeat (one tick of the Raft core) and the
/// election timeout in ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub heartbeat: Duration,
    pub election_ticks: u32,
}

impl Timing {
    pub fn election_timeout(&self) -> Duration {
        self.heartbeat * self.election_ticks
    }
}

/// The two flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimingFlags {
    pub heartbeat: Setting,
    pub election: Setting,
}

impl TimingFlags {
    pub fn is_auto(&self) -> bool {
        self.heartbeat == Setting::Auto || self.election == Setting::Auto
    }

    /// Checks fixed values against each other (auto ones always fit).
    pub fn check(&self) -> Result<(), String> {
        if let (Setting::Fixed(h), Setting::Fixed(e)) = (self.heartbeat, self.election) {
            if e < h * MIN_ELECTION_TICKS {
                return Err(format!(
                    "--election-timeout ({} ms) must be at least {MIN_ELECTION_TICKS} times \
                     --heartbeat-interval ({} ms)",
                    e.as_millis(),
                    h.as_millis()
                ));
            }
        }
        Ok(())
    }

    /// The timing before anything was measured: as for a clean link with a
    /// small RTT (etcd's defaults where a flag is auto).
    pub fn initial(&self) -> Timing {
        self.derive(Duration::ZERO, 0.0)
    }

    /// The timing for links with smoothed round-trip time `rtt` (the worst
    /// member's) losing a share `loss` of their packets.
    pub fn derive(&self, rtt: Duration, loss: f64) -> Timing {
        let heartbeat = match (self.heartbeat, self.election) {
            (Setting::Fixed(h), _) => h,
            (Setting::Auto, Setting::Fixed(e)) => {
                // Within the fixed timeout, at least MIN_ELECTION_TICKS beats.
                auto_heartbeat(rtt)
                    .min(e / MIN_ELECTION_TICKS)
                    .max(Duration::from_millis(1))
            }
            (Setting::Auto, Setting::Auto) => auto_heartbeat(rtt),
        };
        let election_ticks = match self.election {
            // As etcd: the timeout divided by the heartbeat, rounded down.
            Setting::Fixed(e) => {
                u32::try_from(e.as_micros() / heartbeat.as_micros().max(1)).unwrap_or(u32::MAX)
            }
            Setting::Auto => {
                let ticks = BASE_ELECTION_TICKS
                    .max(ticks_for_loss(loss))
                    .max(ticks_in(rtt * BASE_ELECTION_TICKS, heartbeat));
                let floor = ticks_in(MIN_ELECTION, heartbeat);
                let ceiling = ticks_in(MAX_ELECTION, heartbeat).max(MIN_ELECTION_TICKS);
                ticks.max(floor).min(ceiling)
            }
        };
        Timing {
            heartbeat,
            election_ticks: election_ticks.max(MIN_ELECTION_TICKS),
        }
    }
}

/// One round trip, rounded up to 10 ms, within the bounds.
fn auto_heartbeat(rtt: Duration) -> Duration {
    let ms = u64::try_from(rtt.as_millis()).unwrap_or(u64::MAX);
    let rounded = ms.div_ceil(10).saturating_mul(10);
    Duration::from_millis(rounded).clamp(MIN_HEARTBEAT, MAX_HEARTBEAT)
}

/// Heartbeats needed so that losing all of them is [`ALL_LOST`]-unlikely.
fn ticks_for_loss(loss: f64) -> u32 {
    let loss = if loss.is_finite() { loss } else { MAX_LOSS };
    if loss <= 0.0 {
        return 0;
    }
    let ticks = (ALL_LOST.ln() / loss.min(MAX_LOSS).ln()).ceil();
    // At most 20 for MAX_LOSS; the cast cannot overflow.
    ticks as u32
}

/// Whole heartbeats in `span` (rounded up).
fn ticks_in(span: Duration, heartbeat: Duration) -> u32 {
    let h = heartbeat.as_micros().max(1);
    u32::try_from(span.as_micros().div_ceil(h)).unwrap_or(u32::MAX)
}

/// Whether `new` differs enough from `current` to be applied: the
/// heartbeat by a quarter or the election timeout by 15%, so that
/// RTT noise does not retime Raft every few seconds.
pub fn worth_changing(current: Timing, new: Timing) -> bool {
    let differs = |a: Duration, b: Duration, share: f64| {
        let (a, b) = (a.as_secs_f64(), b.as_secs_f64());
        (a - b).abs() > share * a.max(b)
    };
    differs(current.heartbeat, new.heartbeat, 0.25)
        || differs(current.election_timeout(), new.election_timeout(), 0.15)
}

/// Weight of the newest look in the smoothed link figures: one look is
/// 5 s of traffic, and loss shares between looks swing by a third at 30%
/// loss, so a single look must not retime Raft.
const SMOOTHING: f64 = 0.5;
/// Looks in a row that must ask for a shorter timing before it is applied
/// (a longer one is applied at once: too short a timeout risks elections,
/// too long one only a slower failover).
const SHORTER_AFTER: u32 = 3;

/// `auto` timing across looks at the links: smoothed figures, the timing
/// in force, and how many looks in a row asked for a shorter one.
#[derive(Debug, Clone)]
pub struct AutoTiming {
    flags: TimingFlags,
    current: Timing,
    rtt_secs: f64,
    loss: f64,
    shorter_looks: u32,
}

impl AutoTiming {
    /// Starts from `current` (what the member runs with).
    pub fn new(flags: TimingFlags, current: Timing) -> AutoTiming {
        AutoTiming {
            flags,
            current,
            rtt_secs: 0.0,
            loss: 0.0,
            shorter_looks: 0,
        }
    }

    pub fn current(&self) -> Timing {
        self.current
    }

    /// The smoothed figures the last decision was made on: RTT, loss.
    pub fn figures(&self) -> (Duration, f64) {
        (Duration::from_secs_f64(self.rtt_secs), self.loss)
    }

    /// One look at the links (the worst RTT, the share of packets lost
    /// since the last look): the new timing, when it should change.
    pub fn observe(&mut self, rtt: Duration, loss: f64) -> Option<Timing> {
        let loss = if loss.is_finite() {
            loss.clamp(0.0, 1.0)
        } else {
            MAX_LOSS
        };
        self.rtt_secs = SMOOTHING * rtt.as_secs_f64() + (1.0 - SMOOTHING) * self.rtt_secs;
        self.loss = SMOOTHING * loss + (1.0 - SMOOTHING) * self.loss;
        let (rtt, loss) = self.figures();
        let new = self.flags.derive(rtt, loss);
        if !worth_changing(self.current, new) {
            self.shorter_looks = 0;
            return None;
        }
        let longer = new.heartbeat > self.current.heartbeat
            || new.election_timeout() > self.current.election_timeout();
        if !longer {
            self.shorter_looks += 1;
            if self.shorter_looks < SHORTER_AFTER {
                return None;
            }
        }
        self.shorter_looks = 0;
        self.current = new;
        Some(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn auto() -> TimingFlags {
        TimingFlags {
            heartbeat: Setting::Auto,
            election: Setting::Auto,
        }
    }

    #[test]
    fn flags_parse() {
        assert_eq!(parse("auto"), Ok(Setting::Auto));
        assert_eq!(parse("AUTO"), Ok(Setting::Auto));
        assert_eq!(parse("250"), Ok(Setting::Fixed(MS(250))));
        assert!(parse("0").is_err());
        assert!(parse("-1").is_err());
        assert!(parse("1s").is_err());
    }

    #[test]
    fn fixed_flags_are_checked_and_kept() {
        let fixed = TimingFlags {
            heartbeat: Setting::Fixed(MS(100)),
            election: Setting::Fixed(MS(1000)),
        };
        assert!(!fixed.is_auto());
        assert_eq!(fixed.check(), Ok(()));
        let t = fixed.derive(MS(300), 0.3);
        assert_eq!((t.heartbeat, t.election_ticks), (MS(100), 10));
        let bad = TimingFlags {
            heartbeat: Setting::Fixed(MS(300)),
            election: Setting::Fixed(MS(1000)),
        };
        assert!(bad.check().is_err());
    }

    #[test]
    fn auto_starts_at_etcds_defaults() {
        let t = auto().initial();
        assert_eq!((t.heartbeat, t.election_ticks), (MS(100), 10));
    }

    #[test]
    fn auto_follows_rtt_within_bounds() {
        // Loopback: the floor.
        let t = auto().derive(MS(1), 0.0);
        assert_eq!((t.heartbeat, t.election_timeout()), (MS(100), MS(1000)));
        // A 200 ms WAN: one RTT per heartbeat, ten per election.
        let t = auto().derive(MS(195), 0.0);
        assert_eq!((t.heartbeat, t.election_timeout()), (MS(200), MS(2000)));
        // A satellite hop: the heartbeat is capped, the timeout still
        // covers ten round trips.
        let t = auto().derive(MS(900), 0.0);
        assert_eq!(t.heartbeat, MAX_HEARTBEAT);
        assert!(t.election_timeout() >= MS(9000));
        // Absurd: the election timeout is capped.
        let t = auto().derive(Duration::from_secs(3600), 0.0);
        assert!(t.election_timeout() <= MAX_ELECTION);
        assert!(t.election_ticks >= MIN_ELECTION_TICKS);
    }

    #[test]
    fn auto_adds_heartbeats_under_loss() {
        let clean = auto().derive(MS(1), 0.0).election_ticks;
        let at_20 = auto().derive(MS(1), 0.2).election_ticks;
        let at_30 = auto().derive(MS(1), 0.3).election_ticks;
        let at_90 = auto().derive(MS(1), 0.9).election_ticks;
        assert_eq!(clean, 10);
        assert_eq!(at_20, 10); // 0.2^9 < 1e-6
        assert_eq!(at_30, 12); // 0.3^12 < 1e-6 <= 0.3^11
        assert_eq!(at_90, 20); // capped at MAX_LOSS
        assert_eq!(auto().derive(MS(1), f64::NAN).election_ticks, 20);
    }

    #[test]
    fn one_auto_flag_respects_the_fixed_one() {
        let auto_heartbeat = TimingFlags {
            heartbeat: Setting::Auto,
            election: Setting::Fixed(MS(1000)),
        };
        let t = auto_heartbeat.derive(MS(400), 0.0);
        assert_eq!(t.heartbeat, MS(200)); // 5 beats in the fixed 1 s
        assert_eq!(t.election_timeout(), MS(1000));
        let auto_election = TimingFlags {
            heartbeat: Setting::Fixed(MS(50)),
            election: Setting::Auto,
        };
        let t = auto_election.derive(MS(150), 0.0);
        assert_eq!(t.heartbeat, MS(50));
        assert_eq!(t.election_timeout(), MS(1500));
    }

    #[test]
    fn looks_are_smoothed_and_shortening_waits() {
        let flags = auto();
        let mut t = AutoTiming::new(flags, flags.initial());
        // 30% loss, looks swinging between 23% and 36%: the timeout
        // settles at 12-13 heartbeats and does not flap.
        let mut applied = Vec::new();
        for (i, loss) in [0.3, 0.36, 0.23, 0.31, 0.36, 0.23, 0.3, 0.29, 0.35, 0.24]
            .into_iter()
            .enumerate()
        {
            if let Some(new) = t.observe(MS(2), loss) {
                applied.push((i, new.election_ticks));
            }
        }
        assert!(applied.len() <= 2, "flapped: {applied:?}");
        assert!(
            (11..=13).contains(&t.current().election_ticks),
            "{:?}",
            t.current()
        );
        // One RTT spike moves the estimate only halfway.
        let mut spiky = AutoTiming::new(flags, flags.initial());
        let after_spike = spiky.observe(MS(240), 0.0);
        assert!(
            after_spike.is_none_or(|n| n.heartbeat <= MS(120)),
            "{after_spike:?}"
        );
        // Longer at once, shorter only after SHORTER_AFTER looks in a row.
        let mut wan = AutoTiming::new(flags, flags.initial());
        let mut longer_at = None;
        for i in 0..10 {
            if wan.observe(MS(300), 0.0).is_some() && longer_at.is_none() {
                longer_at = Some(i);
            }
        }
        assert_eq!(longer_at, Some(0));
        // Converged within the 25% that is not worth a change.
        assert!(wan.current().heartbeat >= MS(240), "{:?}", wan.current());
        let mut shorter_at = None;
        for i in 0..20 {
            if wan.observe(MS(1), 0.0).is_some() {
                shorter_at = Some(i);
                break;
            }
        }
        let at = shorter_at.expect("shortens on a clean fast link");
        assert!(
            at + 1 >= SHORTER_AFTER as usize,
            "shortened after {} looks",
            at + 1
        );
    }

    #[test]
    fn small_changes_are_not_applied() {
        let a = auto().derive(MS(200), 0.0);
        assert!(!worth_changing(a, auto().derive(MS(210), 0.0)));
        assert!(worth_changing(a, auto().derive(MS(300), 0.0)));
        let clean = auto().derive(MS(1), 0.0);
        assert!(worth_changing(clean, auto().derive(MS(1), 0.3)));
    }
}
