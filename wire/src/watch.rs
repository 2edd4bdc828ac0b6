//! Watch service messages (etcd's `etcdserverpb.Watch`).
//!
//! One long bidirectional stream carries any number of watches: the client
//! sends [`WatchRequest`]s, the node sends [`WatchResponse`]s tagged with the
//! watch they belong to.

use crate::kv::{Event, ResponseHeader};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

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
    pub events: Events,
}

/// A response's events, shared by the copies of one response: a
/// [`WatchBatch`] stands for the same response to many watches, and the
/// copies it expands into hold one list, so cloning a response counts a
/// reference instead of copying every key and value. Encodes exactly as
/// the `Vec<Event>` it holds. Reads as a slice; [`Events::extend`] and
/// owned iteration copy the list only while another response shares it.
#[derive(Clone, Default)]
pub struct Events(Option<Arc<Vec<Event>>>);

impl Events {
    /// Appends `more`, copying the list first if it is shared.
    pub fn extend(&mut self, more: impl IntoIterator<Item = Event>) {
        match &mut self.0 {
            Some(list) => Arc::make_mut(list).extend(more),
            None => {
                let list: Vec<Event> = more.into_iter().collect();
                if !list.is_empty() {
                    self.0 = Some(Arc::new(list));
                }
            }
        }
    }

    /// The events as an owned list (copied only if shared).
    pub fn into_vec(self) -> Vec<Event> {
        match self.0 {
            Some(list) => Arc::try_unwrap(list).unwrap_or_else(|shared| (*shared).clone()),
            None => Vec::new(),
        }
    }
}

impl Deref for Events {
    type Target = [Event];

    fn deref(&self) -> &[Event] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }
}

impl From<Vec<Event>> for Events {
    fn from(list: Vec<Event>) -> Events {
        Events((!list.is_empty()).then(|| Arc::new(list)))
    }
}

impl FromIterator<Event> for Events {
    fn from_iter<I: IntoIterator<Item = Event>>(iter: I) -> Events {
        Events::from(iter.into_iter().collect::<Vec<_>>())
    }
}

impl IntoIterator for Events {
    type Item = Event;
    type IntoIter = std::vec::IntoIter<Event>;

    fn into_iter(self) -> Self::IntoIter {
        self.into_vec().into_iter()
    }
}

impl<'a> IntoIterator for &'a Events {
    type Item = &'a Event;
    type IntoIter = std::slice::Iter<'a, Event>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl PartialEq for Events {
    fn eq(&self, other: &Events) -> bool {
        **self == **other
    }
}

impl Eq for Events {}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Events {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Events {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Events, D::Error> {
        Vec::<Event>::deserialize(d).map(Events::from)
    }
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

    /// The responses it stands for, in order; they share one list of
    /// events.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{EventType, KeyValue};

    fn event(key: &str, rev: i64) -> Event {
        Event {
            kind: EventType::Put,
            kv: KeyValue {
                key: key.into(),
                value: b"v".to_vec(),
                create_revision: 2,
                mod_revision: rev,
                version: 1,
                lease: 0,
            },
            prev_kv: None,
        }
    }

    /// Shared events are a representation, not a format: a response
    /// encodes as it did with a plain list, and decodes back equal.
    #[test]
    fn events_encode_as_the_list_they_hold() {
        for list in [vec![], vec![event("a", 5), event("b", 5)]] {
            let ours = postcard::to_stdvec(&Events::from(list.clone())).unwrap();
            assert_eq!(ours, postcard::to_stdvec(&list).unwrap());
            let back: Events = postcard::from_bytes(&ours).unwrap();
            assert_eq!(back.into_vec(), list);
        }
    }

    #[test]
    fn a_batchs_responses_share_their_events_and_copy_on_change() {
        let batch = WatchBatch {
            response: WatchResponse {
                watch_id: 1,
                events: vec![event("a", 5)].into(),
                ..WatchResponse::default()
            },
            more_ids: vec![2, 3],
        };
        let mut out = batch.into_responses();
        assert_eq!(
            out.iter().map(|r| r.watch_id).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(std::ptr::eq(out[0].events.as_ptr(), out[2].events.as_ptr()));
        out[1].events.extend([event("b", 6)]);
        assert_eq!(out[1].events.len(), 2);
        assert_eq!(out[0].events.len(), 1);
        assert_eq!(out[2].events.to_vec(), vec![event("a", 5)]);
        let mut empty = Events::default();
        empty.extend([]);
        assert!(empty.is_empty());
        empty.extend([event("c", 7)]);
        assert_eq!(empty.into_vec(), vec![event("c", 7)]);
    }
}
