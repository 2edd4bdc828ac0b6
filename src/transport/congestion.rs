//! The peer links' congestion controller: quinn's BBR with a floor under
//! its window.
//!
//! quinn's BBR (v1) enters recovery on any round with a loss and leaves it
//! only after a round without one, and in recovery its window is what is
//! in flight less what was lost, never below 4 packets. Under random loss
//! (20-30% of peer packets) every round has a loss, so the window sits at
//! 4 packets, and those are often lost packets not yet declared lost: the
//! connection may send nothing new, the tail is recovered only by loss
//! probes, and each probe that is lost (or whose ACK is) doubles the wait
//! for the next. Appends then waited for seconds while heartbeats, on
//! their own connection, kept flowing (measured: an append answered after
//! 5.5 s while the data link sent 26 packets).
//!
//! [`Floored`] keeps BBR's window but never lets it drop under a floor
//! (`PEER_WINDOW_FLOOR`), so new packets keep leaving past the lost ones,
//! their ACKs declare the holes lost after a round trip (packet and time
//! thresholds) and the holes are resent at once. The floor is small
//! against what Raft itself bounds (`max_inflight_bytes`) and against any
//! link members replicate over; above it BBR decides as before, so a
//! link that is really congested still slows down to the floor.
//!
//! Invariant: `window() >= floor` at all times; everything else is BBR's.

use quinn::congestion::{BbrConfig, Controller, ControllerFactory, ControllerMetrics};
use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

/// The least a peer connection may have in flight: about 45 full-size
/// packets. At 30% loss a round trip usually loses a few of them, and the
/// rest carry ACK-eliciting data past the holes.
pub const PEER_WINDOW_FLOOR: u64 = 64 * 1024;

/// Builds [`Floored`] BBR controllers.
#[derive(Debug, Clone)]
pub struct FlooredBbrConfig {
    pub bbr: Arc<BbrConfig>,
    pub floor: u64,
}

impl ControllerFactory for FlooredBbrConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Floored {
            inner: self.bbr.clone().build(now, current_mtu),
            floor: self.floor,
        })
    }
}

/// A controller whose window never drops under `floor`.
pub struct Floored {
    inner: Box<dyn Controller>,
    floor: u64,
}

impl Controller for Floored {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &quinn_proto::RttEstimator,
    ) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window().max(self.floor)
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut metrics = self.inner.metrics();
        metrics.congestion_window = self.window();
        metrics
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Floored {
            inner: self.inner.clone_box(),
            floor: self.floor,
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window().max(self.floor)
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for a loss-driven controller: halves its window on
    /// every loss, down to 4 packets; grows by what is acked.
    #[derive(Clone)]
    struct Halving(u64);

    impl Controller for Halving {
        fn on_end_acks(&mut self, _: Instant, in_flight: u64, _: bool, _: Option<u64>) {
            self.0 += in_flight;
        }
        fn on_congestion_event(&mut self, _: Instant, _: Instant, _: bool, _: u64) {
            self.0 = (self.0 / 2).max(4 * 1200);
        }
        fn on_mtu_update(&mut self, _: u16) {}
        fn window(&self) -> u64 {
            self.0
        }
        fn clone_box(&self) -> Box<dyn Controller> {
            Box::new(self.clone())
        }
        fn initial_window(&self) -> u64 {
            12_000
        }
        fn into_any(self: Box<Self>) -> Box<dyn Any> {
            self
        }
    }

    /// Losses in every round take the inner window to 4 packets; the
    /// floored one stays at its floor, and follows the inner one above it.
    #[test]
    fn losses_never_shrink_the_window_under_the_floor() {
        let t0 = Instant::now();
        let mut c = Floored {
            inner: Box::new(Halving(12_000)),
            floor: PEER_WINDOW_FLOOR,
        };
        assert_eq!(c.initial_window(), PEER_WINDOW_FLOOR);
        for _ in 0..20 {
            c.on_congestion_event(t0, t0, false, 3600);
            assert_eq!(c.window(), PEER_WINDOW_FLOOR);
        }
        assert_eq!(c.inner.window(), 4 * 1200);
        c.on_end_acks(t0, 10 * PEER_WINDOW_FLOOR, false, None);
        assert_eq!(c.window(), 4 * 1200 + 10 * PEER_WINDOW_FLOOR);
        assert_eq!(c.clone_box().window(), c.window());
        assert_eq!(c.metrics().congestion_window, c.window());
        // The factory wraps quinn's BBR with the same floor.
        let bbr = Arc::new(FlooredBbrConfig {
            bbr: Arc::new(BbrConfig::default()),
            floor: u64::MAX / 2,
        })
        .build(t0, 1200);
        assert_eq!(bbr.window(), u64::MAX / 2);
    }
}
