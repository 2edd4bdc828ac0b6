//! The link emulator's schedule: what a WAN link does to each packet.
//!
//! This machine has no netem, so `qed-link` (src/bin/qed-link.rs) relays
//! member-to-member traffic in user space and asks a [`Link`] (one per
//! direction) what happens to each datagram or stream chunk it reads: it is
//! dropped (lost on the wire, or the link's queue is full), or released at a
//! time, possibly twice (duplicated). This module is pure: it takes the time
//! (`now`, since the relay started) and the size, and returns a decision; the
//! relay owns the sockets, the clock and the queue.
//!
//! Invariants:
//! - Deterministic: the same seed and the same sequence of `offer` calls give
//!   the same decisions.
//! - A packet is never released before `now + delay - jitter` (never before
//!   `now + delay` without jitter), nor before its last bit has left at the
//!   rate cap (packets are serialized one after the other at `rate`).
//! - Datagrams keep their order unless chosen for reordering (jitter does not
//!   reorder, as on a real link); a reordered one is held `reorder_gap` more
//!   so later packets overtake it.
//! - Streams (TCP, for etcd's peer traffic) are never reordered, duplicated
//!   nor dropped: a lost segment is retransmitted, so the chunk holding it
//!   (and, in order, everything behind it) arrives a retransmission timeout
//!   later, the timeout doubling for each retransmission lost too.
//! - The queue is bounded: a datagram arriving while `queue_limit` bytes are
//!   waiting is dropped and counted (streams block their reader instead, in
//!   the relay).

use std::fmt;
use std::time::Duration;

/// One direction's character.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkSpec {
    /// One-way delay (half the round trip when both directions are alike).
    pub delay: Duration,
    /// Each packet's delay varies uniformly within `delay ± jitter`.
    pub jitter: Duration,
    /// Share of packets lost (0.0..=1.0); for streams, of 1448-byte segments.
    pub loss: f64,
    /// Share of datagrams held back `reorder_gap` so that later ones overtake.
    pub reorder: f64,
    /// How long a reordered datagram is held beyond its delay.
    pub reorder_gap: Duration,
    /// Share of datagrams delivered twice.
    pub duplicate: f64,
    /// Bandwidth cap in bytes per second; 0: none.
    pub rate: u64,
    /// Bytes that may wait in the link (datagrams beyond are dropped).
    pub queue_limit: usize,
}

impl Default for LinkSpec {
    fn default() -> Self {
        LinkSpec {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            reorder: 0.0,
            reorder_gap: Duration::from_millis(10),
            duplicate: 0.0,
            rate: 0,
            queue_limit: 4 << 20,
        }
    }
}

/// A spec that does not parse, with the reason.
#[derive(Debug, PartialEq)]
pub struct SpecError(pub String);

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SpecError {}

impl LinkSpec {
    /// Applies `key=value,...` on top of `self`: `delay=25ms`, `jitter=2ms`,
    /// `loss=5%` (or `0.05`), `reorder=1%`, `reorder-gap=10ms`, `dup=0.1%`,
    /// `rate=10mbit` (also `kbit`, `gbit`, or bytes/s as a plain number),
    /// `queue=1mb` (also `kb`, or bytes). Times take `us`, `ms` or `s`.
    pub fn parse_onto(&self, text: &str) -> Result<LinkSpec, SpecError> {
        let mut spec = self.clone();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| SpecError(format!("`{part}`: expected key=value")))?;
            let bad = |what: &str| SpecError(format!("`{part}`: {what}"));
            match key.trim() {
                "delay" => spec.delay = parse_time(value).ok_or_else(|| bad("bad time"))?,
                "jitter" => spec.jitter = parse_time(value).ok_or_else(|| bad("bad time"))?,
                "reorder-gap" => {
                    spec.reorder_gap = parse_time(value).ok_or_else(|| bad("bad time"))?
                }
                "loss" => spec.loss = parse_share(value).ok_or_else(|| bad("bad share"))?,
                "reorder" => spec.reorder = parse_share(value).ok_or_else(|| bad("bad share"))?,
                "dup" => spec.duplicate = parse_share(value).ok_or_else(|| bad("bad share"))?,
                "rate" => spec.rate = parse_rate(value).ok_or_else(|| bad("bad rate"))?,
                "queue" => {
                    spec.queue_limit = parse_bytes(value)
                        .and_then(|b| usize::try_from(b).ok())
                        .ok_or_else(|| bad("bad size"))?
                }
                _ => return Err(bad("unknown key")),
            }
        }
        Ok(spec)
    }
}

/// `25ms`, `1.5s`, `500us`.
fn parse_time(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else {
        (text.strip_suffix('s')?, 1.0)
    };
    let seconds = number.trim().parse::<f64>().ok()? * scale;
    (0.0..3600.0)
        .contains(&seconds)
        .then(|| Duration::from_secs_f64(seconds))
}

/// `5%` or `0.05`, within 0..=1.
fn parse_share(text: &str) -> Option<f64> {
    let text = text.trim();
    let share = match text.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().ok()? / 100.0,
        None => text.parse::<f64>().ok()?,
    };
    (0.0..=1.0).contains(&share).then_some(share)
}

/// `10mbit` (bits/s, decimal) or plain bytes/s; the result is bytes/s.
fn parse_rate(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_lowercase();
    for (suffix, bits) in [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)] {
        if let Some(n) = text.strip_suffix(suffix) {
            let bytes = n.trim().parse::<f64>().ok()? * bits / 8.0;
            return (0.0..1e15).contains(&bytes).then_some(bytes as u64);
        }
    }
    text.parse().ok()
}

/// `1mb` (MiB), `64kb` (KiB) or plain bytes.
fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_lowercase();
    for (suffix, scale) in [("mb", 1u64 << 20), ("kb", 1 << 10), ("b", 1)] {
        if let Some(n) = text.strip_suffix(suffix) {
            return n.trim().parse::<u64>().ok()?.checked_mul(scale);
        }
    }
    text.parse().ok()
}

/// Whether the link carries datagrams (UDP) or a byte stream (TCP).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Carriage {
    Datagram,
    /// A lost segment costs `rto` (doubling per lost retransmission).
    Stream {
        rto: Duration,
    },
}

/// The segment size a stream's loss is drawn per.
pub const SEGMENT: usize = 1448;
/// Retransmissions of one segment modelled before it is taken as delivered
/// (at p = 0.3 the chance of more is under 0.1%).
const MAX_RETRANSMISSIONS: u32 = 6;

/// What happens to one offered packet or chunk.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Dropped; the relay sends nothing.
    Dropped(DropReason),
    /// Send at these times (one, or two when duplicated), since the start.
    Release(Vec<Duration>),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DropReason {
    /// Lost on the (emulated) wire.
    Lost,
    /// More than `queue_limit` bytes were waiting.
    QueueFull,
}

/// Counts, for the relay's report.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkStats {
    pub offered: u64,
    pub released: u64,
    pub lost: u64,
    pub queue_full: u64,
    pub reordered: u64,
    pub duplicated: u64,
    /// Stream segments retransmitted (each a timeout of delay).
    pub retransmitted: u64,
}

/// One direction of a link: its spec, its random stream and its queue.
#[derive(Debug)]
pub struct Link {
    spec: LinkSpec,
    carriage: Carriage,
    rng: SplitMix64,
    /// When the rate cap has sent everything offered so far.
    busy_until: Duration,
    /// The latest release time of an in-order packet: later ones are not
    /// released before it (no reordering by jitter; streams stay in order).
    floor: Duration,
    /// Bytes offered and not yet sent.
    queued: usize,
    stats: LinkStats,
}

impl Link {
    pub fn new(spec: LinkSpec, carriage: Carriage, seed: u64) -> Link {
        Link {
            spec,
            carriage,
            rng: SplitMix64(seed),
            busy_until: Duration::ZERO,
            floor: Duration::ZERO,
            queued: 0,
            stats: LinkStats::default(),
        }
    }

    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    pub fn spec(&self) -> &LinkSpec {
        &self.spec
    }

    /// Bytes waiting in the link.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// A packet (or stream chunk) of `len` bytes arrives at `now`.
    pub fn offer(&mut self, now: Duration, len: usize) -> Decision {
        self.stats.offered += 1;
        let datagram = self.carriage == Carriage::Datagram;
        if datagram && self.queued.saturating_add(len) > self.spec.queue_limit {
            self.stats.queue_full += 1;
            return Decision::Dropped(DropReason::QueueFull);
        }
        if datagram && self.chance(self.spec.loss) {
            self.stats.lost += 1;
            return Decision::Dropped(DropReason::Lost);
        }
        // Serialization at the rate cap, one packet after the other.
        let start = self.busy_until.max(now);
        let departed = match self.spec.rate {
            0 => start,
            rate => start + Duration::from_secs_f64(len as f64 / rate as f64),
        };
        self.busy_until = departed;
        let mut at = departed + self.spec.delay;
        if !self.spec.jitter.is_zero() {
            let j = self.spec.jitter.as_secs_f64() * (2.0 * self.unit() - 1.0);
            let shifted = at.as_secs_f64() + j;
            at = Duration::from_secs_f64(shifted.max(departed.as_secs_f64()));
        }
        if let Carriage::Stream { rto } = self.carriage {
            // Each segment of the chunk may be lost, and each retransmission.
            let segments = len.div_ceil(SEGMENT).max(1);
            // Segments are retransmitted side by side: the chunk waits for
            // the slowest.
            let mut penalty = Duration::ZERO;
            for _ in 0..segments {
                let (mut waited, mut timeout) = (Duration::ZERO, rto);
                for _ in 0..MAX_RETRANSMISSIONS {
                    if !self.chance(self.spec.loss) {
                        break;
                    }
                    self.stats.retransmitted += 1;
                    waited += timeout;
                    timeout *= 2;
                }
                penalty = penalty.max(waited);
            }
            at += penalty;
        }
        let reordered = datagram && self.chance(self.spec.reorder);
        if reordered {
            self.stats.reordered += 1;
            at += self.spec.reorder_gap;
        } else {
            at = at.max(self.floor);
            self.floor = at;
        }
        let mut times = vec![at];
        if datagram && self.chance(self.spec.duplicate) {
            self.stats.duplicated += 1;
            times.push(at);
        }
        self.queued += len * times.len();
        Decision::Release(times)
    }

    /// The relay sent (or gave up on) one copy of a `len`-byte packet.
    pub fn sent(&mut self, len: usize) {
        self.queued = self.queued.saturating_sub(len);
        self.stats.released += 1;
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.rng.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// splitmix64: small, seedable, and good enough for drawing losses.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn spec(text: &str) -> LinkSpec {
        LinkSpec::default().parse_onto(text).unwrap()
    }

    fn times(d: Decision) -> Vec<Duration> {
        match d {
            Decision::Release(t) => t,
            Decision::Dropped(why) => panic!("dropped: {why:?}"),
        }
    }

    #[test]
    fn specs_parse_and_refuse() {
        let s =
            spec("delay=25ms, jitter=500us,loss=5%,reorder=0.01,dup=0.1%,rate=8mbit,queue=64kb");
        assert_eq!(s.delay, ms(25));
        assert_eq!(s.jitter, Duration::from_micros(500));
        assert!((s.loss - 0.05).abs() < 1e-12);
        assert!((s.reorder - 0.01).abs() < 1e-12);
        assert!((s.duplicate - 0.001).abs() < 1e-12);
        assert_eq!(s.rate, 1_000_000);
        assert_eq!(s.queue_limit, 64 << 10);
        assert_eq!(spec("delay=1.5s").delay, Duration::from_millis(1500));
        for bad in [
            "delay=5",
            "loss=150%",
            "loss=-1",
            "bogus=1",
            "delay",
            "queue=1tb",
            "delay=nans",
        ] {
            assert!(LinkSpec::default().parse_onto(bad).is_err(), "{bad}");
        }
        // Layered: a direction's spec overrides the common one.
        let common = spec("delay=25ms,loss=5%");
        let back = common.parse_onto("loss=0").unwrap();
        assert_eq!((back.delay, back.loss), (ms(25), 0.0));
    }

    #[test]
    fn a_packet_is_released_no_earlier_than_its_delay() {
        let mut link = Link::new(spec("delay=25ms"), Carriage::Datagram, 1);
        for i in 0..100u64 {
            let now = Duration::from_micros(i * 137);
            assert_eq!(times(link.offer(now, 1200)), vec![now + ms(25)]);
        }
        // With jitter: within delay ± jitter, and never out of order.
        let mut link = Link::new(spec("delay=25ms,jitter=5ms"), Carriage::Datagram, 2);
        let mut last = Duration::ZERO;
        let mut spread = (Duration::MAX, Duration::ZERO);
        for i in 0..1000u64 {
            let now = Duration::from_micros(i * 100);
            let at = times(link.offer(now, 100))[0];
            assert!(at >= now + ms(20), "{at:?} before {:?}", now + ms(20));
            assert!(at >= last, "jitter reordered");
            last = at;
            let delay = at - now;
            spread = (spread.0.min(delay), spread.1.max(delay));
        }
        assert!(spread.1 > ms(29), "jitter not applied: {spread:?}");
    }

    #[test]
    fn loss_share_is_within_bounds_and_seeded() {
        let run = |seed| {
            let mut link = Link::new(spec("loss=10%"), Carriage::Datagram, seed);
            let decisions: Vec<Decision> = (0..10_000).map(|i| link.offer(ms(i), 100)).collect();
            (decisions, link.stats())
        };
        let (a, stats) = run(7);
        assert!((900..=1100).contains(&stats.lost), "lost {}", stats.lost);
        assert_eq!(stats.offered, 10_000);
        // The same seed decides the same; another seed differently.
        assert_eq!(a, run(7).0);
        assert_ne!(a, run(8).0);
        let (_, none) = {
            let mut link = Link::new(spec("loss=0"), Carriage::Datagram, 7);
            for i in 0..1000 {
                times(link.offer(ms(i), 100));
            }
            ((), link.stats())
        };
        assert_eq!(none.lost, 0);
    }

    #[test]
    fn the_rate_cap_is_respected() {
        // 1 MB/s: 1000 packets of 1000 bytes offered at once take 1 s.
        let mut link = Link::new(spec("rate=8mbit,queue=2mb"), Carriage::Datagram, 3);
        let mut last = Duration::ZERO;
        for i in 1..=1000u32 {
            let at = times(link.offer(Duration::ZERO, 1000))[0];
            assert!(at >= ms(1) * i, "packet {i} at {at:?}");
            last = at;
        }
        assert!(last <= ms(1001), "{last:?}");
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let mut link = Link::new(spec("rate=1000,queue=10kb"), Carriage::Datagram, 4);
        let mut sent = 0;
        for _ in 0..20 {
            if matches!(link.offer(Duration::ZERO, 1024), Decision::Release(_)) {
                sent += 1;
            }
        }
        assert_eq!(sent, 10);
        assert_eq!(link.stats().queue_full, 10);
        assert_eq!(link.queued(), 10 << 10);
        // Sending frees room.
        link.sent(1024);
        assert!(matches!(
            link.offer(Duration::ZERO, 1024),
            Decision::Release(_)
        ));
    }

    #[test]
    fn reordering_and_duplication_happen_at_their_shares() {
        let mut link = Link::new(
            spec("delay=10ms,reorder=20%,reorder-gap=5ms,dup=10%"),
            Carriage::Datagram,
            5,
        );
        let mut releases = Vec::new();
        for i in 0..5000u64 {
            let now = Duration::from_micros(i * 100);
            for at in times(link.offer(now, 100)) {
                assert!(at >= now + ms(10));
                releases.push((at, i));
            }
        }
        let s = link.stats();
        assert!((800..=1200).contains(&s.reordered), "{s:?}");
        assert!((400..=600).contains(&s.duplicated), "{s:?}");
        releases.sort();
        let overtaken = releases.windows(2).filter(|w| w[0].1 > w[1].1).count();
        assert!(
            overtaken > 500,
            "reordered packets were not overtaken: {overtaken}"
        );
    }

    #[test]
    fn a_stream_is_never_dropped_nor_reordered_and_loss_costs_a_timeout() {
        let rto = ms(200);
        let mut link = Link::new(
            spec("delay=25ms,loss=10%,reorder=50%,dup=50%"),
            Carriage::Stream { rto },
            6,
        );
        let mut last = Duration::ZERO;
        let mut late = 0;
        for i in 0..2000u64 {
            let now = ms(i);
            let t = times(link.offer(now, 1000));
            assert_eq!(t.len(), 1, "a stream chunk was duplicated");
            assert!(t[0] >= last, "a stream chunk was reordered");
            assert!(t[0] >= now + ms(25));
            late += u64::from(t[0] >= now + ms(225));
            last = t[0];
        }
        let s = link.stats();
        assert_eq!((s.lost, s.reordered, s.duplicated), (0, 0, 0));
        assert!((150..=260).contains(&s.retransmitted), "{s:?}");
        assert!(late >= s.retransmitted / 2, "{late} late, {s:?}");
    }
}
