//! Unary calls multiplexed on one Unix-socket connection per endpoint.
//!
//! Role: a node on the same machine is reached over its `unix://` socket,
//! and every unary call of a [`super::Client`] to it shares one
//! connection, as calls to a QUIC endpoint share one QUIC connection. Each
//! call numbers its frame (`qed_wire::UnixRequest`) and waits for the
//! reply with that number; a writer task sends every frame queued since
//! its last write in one write, and a reader task hands each reply to its
//! caller, all that one read brings. Under load, a burst of calls costs a
//! few system calls on either side instead of several per call.
//!
//! Invariants: a call whose frame was queued before the connection died
//! gets [`MuxError::Closed`] (it may have been read and applied); one that
//! found it dead gets [`MuxError::NotSent`], and may go on a new one. A
//! call that gives up (its deadline) leaves nothing behind. A connection
//! idle for [`IDLE_LIMIT`] is retired rather than used (the node closes
//! connections idle 30 s). Dropping the client shuts every connection.

use crate::runtime::{self, channel, UnixStream};
use crate::transport::stream::{FrameReader, RecvHalf};
use futures_lite::io::AsyncWriteExt;
use qed_wire::frame::MAX_SERVER_FRAME;
use qed_wire::{Reply, UnixReply};
use std::collections::HashMap;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A connection with nothing in flight for this long is retired, well
/// inside the node's 30 s limit for an idle connection.
pub const IDLE_LIMIT: Duration = Duration::from_secs(10);

/// Bytes of frames a connection queues unwritten at most (a node that
/// stopped reading holds the writer): beyond it calls are refused, not
/// queued.
pub const MAX_QUEUED: usize = 16 * 1024 * 1024;

/// Why a multiplexed call got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MuxError {
    /// The connection was dead before the call's frame was queued.
    NotSent,
    /// [`MAX_QUEUED`] bytes wait to be written already; nothing was sent.
    Busy,
    /// The connection died after the frame was queued.
    Closed,
}

/// One multiplexed connection; cheap to clone.
#[derive(Clone)]
pub struct UnixMux {
    shared: Arc<Shared>,
}

struct Shared {
    stream: UnixStream,
    /// Frames queued and not yet written.
    out: Mutex<Vec<u8>>,
    /// Wakes the writer (`try_send`: one wake-up covers any number of frames).
    wake: channel::Sender<()>,
    calls: Mutex<Calls>,
    next_id: AtomicU64,
}

struct Calls {
    waiting: HashMap<u64, channel::Sender<Reply>>,
    /// Set once the connection is broken; nothing is queued after.
    dead: bool,
    /// When the last call in flight finished (`None` while calls are).
    idle_since: Option<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl UnixMux {
    /// Connects to the socket at `path` and starts the connection's reader
    /// and writer; `dropped` errors out when the client is dropped.
    pub async fn connect(
        path: &std::path::Path,
        dropped: channel::Receiver<()>,
    ) -> std::io::Result<UnixMux> {
        let stream = UnixStream::connect(path).await?;
        let (wake, woken) = channel::bounded(1);
        let shared = Arc::new(Shared {
            stream: stream.clone(),
            out: Mutex::new(Vec::new()),
            wake,
            calls: Mutex::new(Calls {
                waiting: HashMap::new(),
                dead: false,
                idle_since: Some(Instant::now()),
            }),
            next_id: AtomicU64::new(1),
        });
        runtime::spawn(write_frames(shared.clone(), woken, dropped));
        runtime::spawn(read_replies(shared.clone()));
        Ok(UnixMux { shared })
    }

    /// Alive, and not idle so long that the node may be closing it.
    pub fn usable(&self, now: Instant) -> bool {
        let calls = lock(&self.shared.calls);
        !calls.dead
            && calls
                .idle_since
                .is_none_or(|since| now.duration_since(since) < IDLE_LIMIT)
    }

    /// Shuts the connection (the node answers what it has read, then
    /// closes its side).
    pub fn retire(&self) {
        let _ = self.shared.stream.shutdown(Shutdown::Write);
    }

    /// One unary call: `envelope` is the encoded `ClientRequest` frame.
    pub async fn call(
        &self,
        envelope: &[u8],
        max: usize,
    ) -> Result<Result<Reply, MuxError>, qed_wire::frame::FrameError> {
        let shared = &self.shared;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = qed_wire::UnixRequest::frame_from(id, envelope, max)?;
        let (tx, rx) = channel::bounded(1);
        {
            let mut calls = lock(&shared.calls);
            if calls.dead {
                return Ok(Err(MuxError::NotSent));
            }
            calls.waiting.insert(id, tx);
            calls.idle_since = None;
        }
        // From here on the call is in flight: forgotten when it ends,
        // however it ends (a deadline drops this future).
        let _in_flight = InFlight { shared, id };
        {
            let mut out = lock(&shared.out);
            if !out.is_empty() && out.len() + frame.len() > MAX_QUEUED {
                return Ok(Err(MuxError::Busy));
            }
            out.extend_from_slice(&frame);
        }
        let _ = shared.wake.try_send(());
        Ok(rx.recv().await.map_err(|_| MuxError::Closed))
    }
}

/// A call in flight; forgets it when dropped.
struct InFlight<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut calls = lock(&self.shared.calls);
        calls.waiting.remove(&self.id);
        if calls.waiting.is_empty() {
            calls.idle_since = Some(Instant::now());
        }
    }
}

/// Marks the connection dead and fails every call in flight.
fn kill(shared: &Shared) {
    let mut calls = lock(&shared.calls);
    calls.dead = true;
    calls.waiting.clear();
    drop(calls);
    shared.wake.close();
    let _ = shared.stream.shutdown(Shutdown::Both);
}

/// Writes what callers queued, everything queued in one write, until the
/// connection breaks or the client is dropped.
async fn write_frames(
    shared: Arc<Shared>,
    woken: channel::Receiver<()>,
    dropped: channel::Receiver<()>,
) {
    let mut stream = shared.stream.clone();
    let mut buf = Vec::new();
    loop {
        let woke = futures_lite::future::or(async { woken.recv().await.is_ok() }, async {
            let _ = dropped.recv().await;
            false
        })
        .await;
        if !woke {
            return kill(&shared);
        }
        std::mem::swap(&mut buf, &mut *lock(&shared.out));
        if buf.is_empty() {
            continue;
        }
        if let Err(e) = stream.write_all(&buf).await {
            log::debug!("unix connection broken: {e}");
            return kill(&shared);
        }
        buf.clear();
    }
}

/// Hands each reply to its caller until the connection ends.
async fn read_replies(shared: Arc<Shared>) {
    let mut frames = FrameReader::new(RecvHalf::unix(shared.stream.clone()));
    loop {
        match frames.read::<UnixReply>(MAX_SERVER_FRAME).await {
            Ok(Some(UnixReply { id, reply })) => {
                if let Some(waiter) = lock(&shared.calls).waiting.remove(&id) {
                    let _ = waiter.try_send(reply);
                }
            }
            Ok(None) => break,
            Err(e) => {
                log::debug!("unix connection: {e}");
                break;
            }
        }
    }
    kill(&shared);
}
