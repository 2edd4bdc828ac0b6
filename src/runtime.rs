//! The only file that names the async runtime.
//!
//! Upstream async-std is discontinued in favour of smol, and quinn's next
//! major drops its async-std runtime; keeping every spawn, timer, socket and
//! blocking-pool call behind this module keeps that move a one-file change.
//! Everything else imports these names, never `async_std`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub use async_std::channel;
pub use async_std::net::{TcpListener, TcpStream};
pub use async_std::os::unix::net::{UnixListener, UnixStream};
pub use async_std::sync::Mutex;
pub use async_std::task::JoinHandle;

/// Sets how many threads run spawned tasks (one per core when never
/// called). Call it first thing in `main`, before any task, timer or socket
/// starts the runtime and while no other thread runs; later calls change
/// nothing.
///
/// Why fewer can be faster: the executor wakes a sleeping worker for every
/// task that becomes runnable, so a call that hops between a few tasks (a
/// socket read, a channel, a socket write) pays a futex wake and a context
/// switch per hop when several workers share the tasks. With one worker
/// those hops are plain function calls on one thread (measured on the shim
/// under 16 clients: context switches per put 3.7 -> 0.9, CPU per put
/// 86 -> 50 us).
pub fn set_worker_threads(threads: std::num::NonZeroUsize) {
    // async-std reads its thread count from this variable when it starts.
    std::env::set_var("ASYNC_STD_THREAD_COUNT", threads.to_string());
}

/// Runs a future on the runtime's executor.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    async_std::task::spawn(future)
}

/// Runs a blocking function (file I/O, fsync, CPU-heavy work) off the executor.
pub async fn spawn_blocking<F, T>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    async_std::task::spawn_blocking(f).await
}

/// Drives a future to completion on the current thread (binaries' `main`).
pub fn block_on<F: Future>(future: F) -> F::Output {
    async_std::task::block_on(future)
}

pub async fn sleep(duration: Duration) {
    async_std::task::sleep(duration).await
}

/// The deadline passed before the future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

/// Runs `future`, giving up after `duration`. A future that is ready at
/// its first poll (a read whose bytes are buffered, a write with room)
/// arms no timer: arming one registers it with the reactor, which wakes
/// the reactor thread, and most deadlines on hot paths (a request's
/// frame, a reply's write) are met at once.
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Result<F::Output, TimedOut> {
    let mut future = std::pin::pin!(future);
    if let Some(out) = futures_lite::future::poll_once(future.as_mut()).await {
        return Ok(out);
    }
    async_std::future::timeout(duration, future)
        .await
        .map_err(|_| TimedOut)
}

/// The quinn runtime adapter for this executor: async-std's, with
/// [`LazyTimer`]s.
pub fn quinn_runtime() -> Arc<dyn quinn::Runtime> {
    Arc::new(QuinnRuntime)
}

#[derive(Debug)]
struct QuinnRuntime;

impl quinn::Runtime for QuinnRuntime {
    fn new_timer(&self, at: Instant) -> Pin<Box<dyn quinn::AsyncTimer>> {
        Box::pin(LazyTimer {
            inner: quinn::AsyncStdRuntime.new_timer(at),
            armed: at,
            wanted: at,
        })
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        quinn::AsyncStdRuntime.spawn(future)
    }

    fn wrap_udp_socket(
        &self,
        socket: std::net::UdpSocket,
    ) -> std::io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        quinn::AsyncStdRuntime.wrap_udp_socket(socket)
    }
}

/// A quinn connection's timer that touches the reactor only when its
/// deadline moves earlier. quinn resets its one timer whenever the
/// earliest of its deadlines changes (ACK delay, loss detection, idle,
/// keep-alive: on nearly every packet), and the reactor's timer is
/// re-registered on every reset, each time waking the reactor thread (an
/// eventfd write, a wake-up, a `timerfd_settime`). Here a deadline moved
/// later is only noted: the armed, earlier one fires, `poll` finds the
/// wanted deadline not reached and arms it then. So a busy connection
/// re-arms about once per armed deadline, not once per packet.
///
/// Invariant: `poll` is ready only once `wanted` has passed; while it is
/// pending the inner timer is armed at `armed`, at or before `wanted`. An
/// inner timer that fires is spent (it would never wake anyone again), so
/// `poll` arms it at `wanted` in the same call as it sees it fire.
#[derive(Debug)]
struct LazyTimer {
    inner: Pin<Box<dyn quinn::AsyncTimer>>,
    /// The deadline the inner timer is set to.
    armed: Instant,
    /// The deadline quinn asked for.
    wanted: Instant,
}

impl LazyTimer {
    fn arm(&mut self, at: Instant) {
        self.armed = at;
        self.inner.as_mut().reset(at);
    }
}

impl quinn::AsyncTimer for LazyTimer {
    fn reset(mut self: Pin<&mut Self>, at: Instant) {
        self.wanted = at;
        if at < self.armed {
            self.arm(at);
        }
    }

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context) -> Poll<()> {
        // Bounded: each turn either returns or arms the inner timer at
        // `wanted`, which is ready only once `wanted` passed.
        for _ in 0..3 {
            if Instant::now() >= self.wanted {
                return Poll::Ready(());
            }
            if self.inner.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // It fired (its earlier deadline passed) and is spent: arm
            // the wanted one.
            let wanted = self.wanted;
            self.arm(wanted);
        }
        // Only if the clock went backwards: ask to be polled again.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `timer` until ready, for at most `limit`; whether it was.
    fn wait(timer: &mut Pin<Box<dyn quinn::AsyncTimer>>, limit: Duration) -> bool {
        let until = futures_lite::future::poll_fn(|cx| timer.as_mut().poll(cx));
        block_on(timeout(limit, until)).is_ok()
    }

    #[test]
    fn a_lazy_timer_fires_at_its_last_deadline_moved_either_way() {
        let rt = quinn_runtime();
        let start = Instant::now();
        // Moved later after being polled (armed early): fires, and not
        // before the later deadline.
        let mut timer = rt.new_timer(start + Duration::from_millis(5));
        let _ = futures_lite::future::block_on(futures_lite::future::poll_once(
            futures_lite::future::poll_fn(|cx| timer.as_mut().poll(cx)),
        ));
        let later = start + Duration::from_millis(60);
        timer.as_mut().reset(later);
        assert!(wait(&mut timer, Duration::from_secs(10)));
        assert!(Instant::now() >= later);
        // Moved earlier: fires at the earlier one, long before the first.
        let mut timer = rt.new_timer(Instant::now() + Duration::from_secs(3600));
        let _ = futures_lite::future::block_on(futures_lite::future::poll_once(
            futures_lite::future::poll_fn(|cx| timer.as_mut().poll(cx)),
        ));
        let sooner = Instant::now() + Duration::from_millis(10);
        timer.as_mut().reset(sooner);
        assert!(wait(&mut timer, Duration::from_secs(10)));
        assert!(Instant::now() >= sooner);
        // Fired, then reset later (as quinn does after every expiry):
        // fires again, however the last expiry was seen.
        for _ in 0..20 {
            let next = Instant::now() + Duration::from_millis(2);
            timer.as_mut().reset(next);
            assert!(wait(&mut timer, Duration::from_secs(10)));
            assert!(Instant::now() >= next);
        }
    }

    #[test]
    fn a_spent_lazy_timer_is_armed_again_by_a_later_reset() {
        let rt = quinn_runtime();
        let mut timer = rt.new_timer(Instant::now() + Duration::from_millis(5));
        assert!(wait(&mut timer, Duration::from_secs(10)));
        // Spend the inner timer: a poll that finds its deadline passed
        // while the wanted one has not (the wanted one moved later).
        let later = Instant::now() + Duration::from_millis(30);
        timer.as_mut().reset(later);
        assert!(wait(&mut timer, Duration::from_secs(10)));
        let again = Instant::now() + Duration::from_millis(30);
        timer.as_mut().reset(again);
        assert!(wait(&mut timer, Duration::from_secs(10)));
        assert!(Instant::now() >= again);
    }
}
