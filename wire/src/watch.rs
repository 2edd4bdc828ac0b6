//! Watch service messages (etcd's `etcdserverpb.Watch`).
//!
//! One long bidirectional stream carries any number of watches: the client
//! sends [`WatchRequest`]s, the node sends [`WatchResponse`]s tagged with the
//! watch they belong to.

use crate::kv::{Event, ResponseHeader};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchRequest {
    Create(WatchCreateRequest),
    Cancel {
        watch_id: i64,
    },
    /// Ask for a progress notification on every watch of this stream.
    Progress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchFilter {
    NoPut,
    NoDelete,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchCreateRequest {
    #[serde(with = "crate::bytes")]
    pub key: Vec<u8>,
    #[serde(with = "crate::bytes")]
    pub range_end: Vec<u8>,
    /// Replay history from here; 0 watches from the next revision.
    pub start_revision: i64,
    pub progress_notify: bool,
    pub filters: Vec<WatchFilter>,
    pub prev_kv: bool,
    /// Client-chosen ID; 0 lets the node choose.
    pub watch_id: i64,
    /// Split revisions too large for one response across several.
    pub fragment: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchResponse {
    pub header: ResponseHeader,
    pub watch_id: i64,
    pub created: bool,
    pub canceled: bool,
    /// Set when the watch's start revision was compacted away.
    pub compact_revision: i64,
    pub cancel_reason: String,
    /// More fragments of the same revision follow.
    pub fragment: bool,
    pub events: Vec<Event>,
}

/// A message on a `Call::WatchBatched` stream: `response` for its own
/// `watch_id`, then the same response (only the ID differs) for each of
/// `more_ids`, in this order. A watch appears in one batch at most once
/// between two of its own responses, so each watch's responses keep the
/// node's order; responses of different watches may be reordered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchBatch {
    pub response: WatchResponse,
    pub more_ids: Vec<i64>,
}

impl WatchBatch {
    /// Every watch the batch is for, in order.
    pub fn watch_ids(&self) -> impl Iterator<Item = i64> + '_ {
        std::iter::once(self.response.watch_id).chain(self.more_ids.iter().copied())
    }

    /// The responses it stands for, in order.
    pub fn into_responses(self) -> Vec<WatchResponse> {
        let WatchBatch { response, more_ids } = self;
        let copies: Vec<WatchResponse> = more_ids
            .iter()
            .map(|&watch_id| WatchResponse {
                watch_id,
                ..response.clone()
            })
            .collect();
        let mut out = Vec::with_capacity(1 + copies.len());
        out.push(response);
        out.extend(copies);
        out
    }
}
