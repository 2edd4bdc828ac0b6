//! Watches, shaped like clientv3's `Watch`: [`Client::watch`] opens a watch
//! stream and returns a [`Watcher`], whose [`Watcher::next`] yields the
//! node's responses in revision order.
//!
//! Invariant: the user sees every matching revision exactly once, across
//! reconnects. The watcher remembers the first revision it has not yet
//! delivered (`next_rev`: one past the last event's revision, or past a
//! progress notification's); when the stream breaks (node restart, lost
//! connection) it opens a new one and re-creates the watch from `next_rev`,
//! swallowing the new `created` response. Fragments of one revision are
//! joined before delivery (as clientv3 does), so a break in the middle of a
//! fragmented revision replays that whole revision, never half of it.
//!
//! Watches share a few long streams ([`super::watch_stream`]); a watch whose
//! consumer falls behind is detached there and re-created from `next_rev`
//! the same way, so a slow consumer costs bounded memory and never stalls
//! the other watches. A watch whose ID the user chose gets a stream of its
//! own, so the ID is exactly the user's.

use super::kv::Span;
use super::watch_stream::Attached;
use super::{Client, ClientError};
use crate::runtime;
use qed_wire::watch::{WatchCreateRequest, WatchFilter, WatchResponse};
use std::time::{Duration, Instant};

/// How long a watcher keeps trying to re-open a broken stream before
/// [`Watcher::next`] reports the failure (the next call tries again).
const RESUME_FOR: Duration = Duration::from_secs(60);

/// Options of [`Client::watch`].
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    span: Span,
    start_revision: i64,
    filters: Vec<WatchFilter>,
    prev_kv: bool,
    progress_notify: bool,
    fragment: bool,
    watch_id: i64,
}

super::kv::span_builders!(WatchOptions);

impl WatchOptions {
    pub fn new() -> Self {
        Self::default()
    }
    /// Replay history from this revision (0: from the next write).
    pub fn with_start_revision(mut self, revision: i64) -> Self {
        self.start_revision = revision;
        self
    }
    /// Leave out put events.
    pub fn with_filter_put(mut self) -> Self {
        self.filters.push(WatchFilter::NoPut);
        self
    }
    /// Leave out delete events.
    pub fn with_filter_delete(mut self) -> Self {
        self.filters.push(WatchFilter::NoDelete);
        self
    }
    /// Each event carries the key's previous value.
    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }
    /// Empty responses now and then while nothing happens, telling how far
    /// the watch has seen.
    pub fn with_progress_notify(mut self) -> Self {
        self.progress_notify = true;
        self
    }
    /// Let the node split huge revisions (joined again before delivery).
    pub fn with_fragment(mut self) -> Self {
        self.fragment = true;
        self
    }
    /// Choose the watch ID instead of letting the node pick.
    pub fn with_watch_id(mut self, id: i64) -> Self {
        self.watch_id = id;
        self
    }

    fn build(&self, key: Vec<u8>) -> WatchCreateRequest {
        let (key, range_end) = self.span.resolve(key);
        WatchCreateRequest {
            key,
            range_end,
            start_revision: self.start_revision,
            progress_notify: self.progress_notify,
            filters: self.filters.clone(),
            prev_kv: self.prev_kv,
            watch_id: self.watch_id,
            fragment: self.fragment,
        }
    }
}

/// One watch: call [`Watcher::next`] until it returns `None`.
pub struct Watcher {
    client: Client,
    request: WatchCreateRequest,
    /// The ID the user chose (the watch then has a stream of its own).
    own_id: Option<i64>,
    feed: Option<Attached>,
    /// First revision not yet delivered.
    next_rev: i64,
    /// Fragments of the revision being received.
    partial: Option<WatchResponse>,
    done: bool,
}

impl Client {
    /// Starts watching `key` (with `options`' range); returns once the node
    /// created the watch. A refused create is an error.
    pub async fn watch(
        &self,
        key: impl Into<Vec<u8>>,
        options: WatchOptions,
    ) -> Result<Watcher, ClientError> {
        let request = options.build(key.into());
        let own_id = (request.watch_id != 0).then_some(request.watch_id);
        let (feed, created) = create(self, &request, own_id).await?;
        let next_rev = if request.start_revision > 0 {
            request.start_revision
        } else {
            created.header.revision.saturating_add(1)
        };
        Ok(Watcher {
            client: self.clone(),
            request,
            own_id,
            feed: Some(feed),
            next_rev,
            partial: None,
            done: false,
        })
    }
}

/// Attaches the watch to a stream and waits for the node's `created`.
async fn create(
    client: &Client,
    request: &WatchCreateRequest,
    own_id: Option<i64>,
) -> Result<(Attached, WatchResponse), ClientError> {
    let mut feed = Attached::new(client, request.clone(), own_id).await?;
    let timeout = client.request_timeout();
    let created: WatchResponse = runtime::timeout(timeout, feed.queue.recv())
        .await
        .map_err(|_| ClientError::Timeout)?
        .ok_or(ClientError::Closed)?;
    if !created.created {
        return Err(ClientError::Protocol(
            "the first watch response is not `created`".into(),
        ));
    }
    if created.canceled {
        feed.ended();
        let error = if created.cancel_reason.contains("duplicate watch ID") {
            qed_wire::Error::WatchIdExists
        } else {
            qed_wire::Error::InvalidArgument(created.cancel_reason.clone())
        };
        return Err(ClientError::Server(error));
    }
    Ok((feed, created))
}

impl Watcher {
    /// The watch's ID on its current stream (a watch re-created after a
    /// reconnect or a slow spell gets a new one unless the user chose it).
    pub fn id(&self) -> i64 {
        self.feed.as_ref().map_or(self.request.watch_id, |f| f.id)
    }

    /// The first revision this watcher has not delivered yet.
    pub fn next_revision(&self) -> i64 {
        self.next_rev
    }

    /// The next response: events (one or more whole revisions), a progress
    /// notification, or the final `canceled` one (compacted, or after
    /// [`Watcher::cancel`]). `None` after the final one. A broken stream
    /// (or a watch detached because its consumer fell behind) is resumed
    /// transparently; an error means resuming failed for a while (calling
    /// again tries again).
    ///
    /// Cancel-safe: dropping the future (a timeout, a `select`) loses
    /// nothing; a response is taken off the watch's queue only when it is
    /// returned, and an interrupted resume is started again by the next call.
    pub async fn next(&mut self) -> Option<Result<WatchResponse, ClientError>> {
        loop {
            if self.done {
                return None;
            }
            let feed = match self.feed.as_mut() {
                Some(feed) => feed,
                None => {
                    if let Err(e) = self.resume().await {
                        return Some(Err(e));
                    }
                    continue;
                }
            };
            match feed.queue.recv().await {
                Some(resp) => {
                    if let Some(resp) = self.absorb(resp) {
                        return Some(Ok(resp));
                    }
                }
                // Detached or the stream broke: re-create from `next_rev`.
                None => {
                    self.feed = None;
                    self.partial = None;
                }
            }
        }
    }

    /// Updates the resume point; `None` for responses the user does not
    /// see (a resume's `created`, a fragment still incomplete).
    fn absorb(&mut self, resp: WatchResponse) -> Option<WatchResponse> {
        if resp.created && !resp.canceled {
            return None;
        }
        if resp.canceled {
            self.done = true;
            if let Some(mut feed) = self.feed.take() {
                feed.ended();
            }
            return Some(resp);
        }
        if resp.fragment {
            match self.partial.as_mut() {
                Some(p) => p.events.extend(resp.events),
                None => self.partial = Some(resp),
            }
            return None;
        }
        let resp = match self.partial.take() {
            Some(mut p) => {
                p.events.extend(resp.events);
                p.header = resp.header;
                p.fragment = false;
                p
            }
            None => resp,
        };
        match resp.events.last() {
            Some(last) => self.next_rev = last.kv.mod_revision.saturating_add(1),
            // A progress notification: everything up to its revision has
            // been delivered.
            None => self.next_rev = self.next_rev.max(resp.header.revision.saturating_add(1)),
        }
        Some(resp)
    }

    /// Re-creates the watch from `next_rev`, retrying with back-off for up
    /// to [`RESUME_FOR`].
    async fn resume(&mut self) -> Result<(), ClientError> {
        let mut request = self.request.clone();
        request.start_revision = self.next_rev;
        let deadline = Instant::now() + RESUME_FOR;
        let mut pause = Duration::from_millis(50);
        loop {
            match create(&self.client, &request, self.own_id).await {
                Ok((feed, _)) => {
                    self.feed = Some(feed);
                    return Ok(());
                }
                // A refusal will not change by retrying.
                Err(e @ ClientError::Server(_)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => {
                    runtime::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Asks the node for a progress notification (delivered by `next`).
    /// As with clientv3, every watch sharing this watch's stream gets one.
    pub async fn request_progress(&mut self) -> Result<(), ClientError> {
        match self.feed.as_ref() {
            Some(feed) => feed.request_progress().await,
            None => Err(ClientError::Closed),
        }
    }

    /// Cancels the watch: events already on their way are dropped and
    /// `next` returns `None` afterwards.
    pub async fn cancel(&mut self) -> Result<(), ClientError> {
        self.done = true;
        let Some(mut feed) = self.feed.take() else {
            return Ok(());
        };
        feed.cancel().await?;
        let timeout = self.client.request_timeout();
        let wait = async {
            while let Some(resp) = feed.queue.recv().await {
                if resp.canceled {
                    return;
                }
            }
        };
        runtime::timeout(timeout, wait)
            .await
            .map_err(|_| ClientError::Timeout)
    }
}
