//! The only file that names the async runtime.
//!
//! Upstream async-std is discontinued in favour of smol, and quinn's next
//! major drops its async-std runtime; keeping every spawn, timer, socket and
//! blocking-pool call behind this module keeps that move a one-file change.
//! Everything else imports these names, never `async_std`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

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

/// Runs `future`, giving up after `duration`.
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Result<F::Output, TimedOut> {
    async_std::future::timeout(duration, future)
        .await
        .map_err(|_| TimedOut)
}

/// The quinn runtime adapter for this executor.
pub fn quinn_runtime() -> Arc<dyn quinn::Runtime> {
    Arc::new(quinn::AsyncStdRuntime)
}
