//! Responses as the hub queues them: a [`WatchResponse`] whose events are
//! shared, not copied, between the watchers they go to, for one watch or
//! for several that get exactly the same response.
//!
//! One applied event matched by a thousand watchers is one allocation
//! referenced once per queued response; each response only records whether
//! its watches want the previous value. Watches of one stream that are
//! handed the same events at the same time share one [`PendingResponse`]
//! (`head.watch_id`, then `more_ids`), so a revision a thousand watches of
//! a stream match is queued once, not a thousand times. A
//! [`PendingResponse`] serializes to exactly the bytes of the
//! [`WatchResponse`] it stands for (field order is the wire struct's; for
//! its first watch, or [`ForWatch`] for any of them), so the stream writer
//! encodes it without building the owned response first.
//!
//! [`batch`] groups a drained queue for a batched stream (`WatchBatch`
//! messages): responses identical but for their watch IDs (the same shared
//! events, the same header) go as one. Invariants: every watch of every
//! response is in exactly one batch; each watch's responses keep their
//! queue order; a stream-wide response (`watch_id = -1`) is a batch of its
//! own and nothing moves across it; `created` responses keep their order
//! among themselves (etcd's clients match them to their creates first-in,
//! first-out).

use qed_wire::kv::{Event, EventType, KeyValue, ResponseHeader};
use qed_wire::watch::WatchResponse;
use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};
use std::collections::HashMap;
use std::sync::Arc;

use super::{IdSet, WatchId};

/// One event as one watcher gets it.
#[derive(Debug, Clone)]
pub struct SharedEvent {
    pub(super) event: Arc<Event>,
    /// The watcher asked for `prev_kv`.
    pub(super) prev_kv: bool,
}

impl SharedEvent {
    pub(super) fn prev_kv(&self) -> Option<&KeyValue> {
        self.event.prev_kv.as_ref().filter(|_| self.prev_kv)
    }

    pub(super) fn revision(&self) -> i64 {
        self.event.kv.mod_revision
    }

    fn to_event(&self) -> Event {
        Event {
            kind: self.event.kind,
            kv: self.event.kv.clone(),
            prev_kv: self.prev_kv().cloned(),
        }
    }
}

/// A queued response: `head` with its `events` left empty, plus the
/// shared events that go in it; for `head.watch_id` and then for each of
/// `more_ids` (distinct watches of one stream).
#[derive(Debug, Clone, Default)]
pub struct PendingResponse {
    pub head: WatchResponse,
    pub(super) events: Vec<SharedEvent>,
    pub(super) more_ids: Vec<WatchId>,
}

impl PendingResponse {
    pub(super) fn control(head: WatchResponse) -> PendingResponse {
        PendingResponse {
            head,
            events: Vec::new(),
            more_ids: Vec::new(),
        }
    }

    /// The first watch it is for.
    pub fn watch_id(&self) -> i64 {
        self.head.watch_id
    }

    /// Every watch it is for, in order.
    pub fn watch_ids(&self) -> impl Iterator<Item = WatchId> + '_ {
        std::iter::once(self.head.watch_id).chain(self.more_ids.iter().copied())
    }

    /// How many watches it is for.
    pub fn watch_count(&self) -> usize {
        1 + self.more_ids.len()
    }

    /// Takes `id` out of the watches it is for; `false` if it was not one
    /// of them or is the only one (the caller drops the response then).
    pub(super) fn remove_watch(&mut self, id: WatchId) -> bool {
        if self.more_ids.is_empty() {
            return false;
        }
        if self.head.watch_id == id {
            self.head.watch_id = self.more_ids.remove(0);
            return true;
        }
        match self.more_ids.iter().position(|&m| m == id) {
            Some(at) => {
                self.more_ids.remove(at);
                true
            }
            None => false,
        }
    }

    /// The response as watch `id` gets it (one of [`Self::watch_ids`]).
    pub fn for_watch(&self, id: WatchId) -> ForWatch<'_> {
        ForWatch { resp: self, id }
    }

    /// The header the driver stamps (cluster, member, term) before sending.
    pub fn header_mut(&mut self) -> &mut ResponseHeader {
        &mut self.head.header
    }

    /// The owned responses, one per watch in order (copies the events).
    pub fn into_responses(self) -> Vec<WatchResponse> {
        let mut resp = self.head;
        resp.events
            .extend(self.events.iter().map(SharedEvent::to_event));
        let mut out = Vec::with_capacity(1 + self.more_ids.len());
        for &watch_id in &self.more_ids {
            out.push(WatchResponse {
                watch_id,
                ..resp.clone()
            });
        }
        out.insert(0, resp);
        out
    }

    /// `WatchResponse`'s fields in its order, the events from both parts,
    /// `watch_id` as given.
    fn serialize_as<S: Serializer>(&self, watch_id: WatchId, s: S) -> Result<S::Ok, S::Error> {
        let h = &self.head;
        let mut st = s.serialize_struct("WatchResponse", 8)?;
        st.serialize_field("header", &h.header)?;
        st.serialize_field("watch_id", &watch_id)?;
        st.serialize_field("created", &h.created)?;
        st.serialize_field("canceled", &h.canceled)?;
        st.serialize_field("compact_revision", &h.compact_revision)?;
        st.serialize_field("cancel_reason", &h.cancel_reason)?;
        st.serialize_field("fragment", &h.fragment)?;
        st.serialize_field("events", &EventsRef(&h.events, &self.events))?;
        st.end()
    }
}

/// A queued response as one of its watches gets it: serializes like that
/// watch's `WatchResponse`.
pub struct ForWatch<'a> {
    resp: &'a PendingResponse,
    id: WatchId,
}

impl Serialize for ForWatch<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.resp.serialize_as(self.id, s)
    }
}

/// Serializes like `Event`.
struct EventRef<'a> {
    kind: EventType,
    kv: &'a KeyValue,
    prev_kv: Option<&'a KeyValue>,
}

impl Serialize for EventRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Event", 3)?;
        st.serialize_field("kind", &self.kind)?;
        st.serialize_field("kv", self.kv)?;
        st.serialize_field("prev_kv", &self.prev_kv)?;
        st.end()
    }
}

struct EventsRef<'a>(&'a [Event], &'a [SharedEvent]);

impl Serialize for EventsRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len() + self.1.len()))?;
        for ev in self.0 {
            seq.serialize_element(ev)?;
        }
        for ev in self.1 {
            seq.serialize_element(&EventRef {
                kind: ev.event.kind,
                kv: &ev.event.kv,
                prev_kv: ev.prev_kv(),
            })?;
        }
        seq.end()
    }
}

impl Serialize for PendingResponse {
    /// The response as its first watch gets it.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.serialize_as(self.head.watch_id, s)
    }
}

/// One message of a batched stream: `responses[first]`, for its own
/// (first) watch and then for each of `more` (its other watches, then
/// those of the identical responses joined to it; see [`batch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batched {
    pub first: usize,
    pub more: Vec<i64>,
}

/// What two responses must share to be candidates for one batch.
type BatchKey = (i64, bool, bool, bool, usize, usize);

fn batch_key(r: &PendingResponse) -> BatchKey {
    let first = r
        .events
        .first()
        .map_or(0, |e| Arc::as_ptr(&e.event) as usize);
    (
        r.head.header.revision,
        r.head.created,
        r.head.canceled,
        r.head.fragment,
        r.events.len(),
        first,
    )
}

/// Whether `a` and `b` encode the same but for their watch IDs.
fn same_but_id(a: &PendingResponse, b: &PendingResponse) -> bool {
    let (x, y) = (&a.head, &b.head);
    x.header == y.header
        && x.created == y.created
        && x.canceled == y.canceled
        && x.compact_revision == y.compact_revision
        && x.cancel_reason == y.cancel_reason
        && x.fragment == y.fragment
        && x.events == y.events
        && a.events.len() == b.events.len()
        && a.events
            .iter()
            .zip(&b.events)
            .all(|(e, f)| Arc::ptr_eq(&e.event, &f.event) && e.prev_kv == f.prev_kv)
}

/// Groups `responses` (one drained queue, oldest first) into the messages
/// of a batched stream, in sending order. A run of responses ends where a
/// watch comes up a second time or a stream-wide response comes; within a
/// run a response joins the first earlier identical one (a `created` one
/// only the run's newest batch).
pub fn batch(responses: &[PendingResponse]) -> Vec<Batched> {
    const STREAM_WIDE: i64 = -1;
    let mut out: Vec<Batched> = Vec::new();
    let mut in_run = IdSet::default();
    let mut run: HashMap<BatchKey, Vec<usize>> = HashMap::new();
    'next: for (i, r) in responses.iter().enumerate() {
        let id = r.watch_id();
        if id == STREAM_WIDE || r.watch_ids().any(|id| in_run.contains(&id)) {
            in_run.clear();
            run.clear();
            if id == STREAM_WIDE {
                out.push(Batched {
                    first: i,
                    more: r.more_ids.clone(),
                });
                continue;
            }
        }
        in_run.extend(r.watch_ids());
        let key = batch_key(r);
        if let Some(candidates) = run.get(&key) {
            for &b in candidates {
                if r.head.created && b + 1 != out.len() {
                    continue;
                }
                if same_but_id(&responses[out[b].first], r) {
                    out[b].more.extend(r.watch_ids());
                    continue 'next;
                }
            }
        }
        run.entry(key).or_default().push(out.len());
        out.push(Batched {
            first: i,
            more: r.more_ids.clone(),
        });
    }
    out
}

/// Serializes like `WatchBatch { response, more_ids }`.
pub struct BatchRef<'a> {
    pub response: &'a PendingResponse,
    pub more_ids: &'a [i64],
}

impl Serialize for BatchRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("WatchBatch", 2)?;
        st.serialize_field("response", self.response)?;
        st.serialize_field("more_ids", self.more_ids)?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: format!("v{rev}").into_bytes(),
            create_revision: 2,
            mod_revision: rev,
            version: rev - 1,
            lease: 7,
        }
    }

    /// The stream writer sends a pending response as is: it must be the
    /// same bytes as the owned response a client decodes.
    #[test]
    fn encodes_exactly_as_the_owned_response() {
        let event = Arc::new(Event {
            kind: EventType::Put,
            kv: kv("a", 5),
            prev_kv: Some(kv("a", 4)),
        });
        for prev_kv in [false, true] {
            let pending = PendingResponse {
                head: WatchResponse {
                    header: ResponseHeader {
                        cluster_id: 1,
                        member_id: 2,
                        revision: 5,
                        raft_term: 3,
                    },
                    watch_id: 9,
                    fragment: true,
                    cancel_reason: "x".into(),
                    ..WatchResponse::default()
                },
                events: vec![
                    SharedEvent {
                        event: event.clone(),
                        prev_kv,
                    };
                    2
                ],
                more_ids: vec![4, 7],
            };
            let owned = pending.clone().into_responses();
            assert_eq!(owned.len(), 3);
            for (i, id) in [9, 4, 7].into_iter().enumerate() {
                let ours = postcard::to_stdvec(&pending.for_watch(id)).unwrap();
                assert_eq!(owned[i].watch_id, id);
                assert_eq!(owned[i].events.len(), 2);
                assert_eq!(owned[i].events[0].prev_kv.is_some(), prev_kv);
                assert_eq!(ours, postcard::to_stdvec(&owned[i]).unwrap());
                let back: WatchResponse = postcard::from_bytes(&ours).unwrap();
                assert_eq!(back, owned[i]);
            }
            let first = postcard::to_stdvec(&pending).unwrap();
            assert_eq!(first, postcard::to_stdvec(&owned[0]).unwrap());
        }
    }

    fn events_resp(id: i64, rev: i64, event: &Arc<Event>) -> PendingResponse {
        PendingResponse {
            head: WatchResponse {
                header: ResponseHeader {
                    revision: rev,
                    ..ResponseHeader::default()
                },
                watch_id: id,
                ..WatchResponse::default()
            },
            events: vec![SharedEvent {
                event: event.clone(),
                prev_kv: false,
            }],
            more_ids: Vec::new(),
        }
    }

    fn control(id: i64, rev: i64, created: bool) -> PendingResponse {
        PendingResponse::control(WatchResponse {
            header: ResponseHeader {
                revision: rev,
                ..ResponseHeader::default()
            },
            watch_id: id,
            created,
            ..WatchResponse::default()
        })
    }

    /// What the client gets back from the batches: (watch, revision,
    /// created, event count) per response, in sending order.
    fn unbatched(queue: &[PendingResponse]) -> Vec<(i64, i64, bool, usize)> {
        batch(queue)
            .iter()
            .flat_map(|b| {
                let r = &queue[b.first];
                let ids = std::iter::once(r.watch_id()).chain(b.more.iter().copied());
                ids.map(|id| (id, r.head.header.revision, r.head.created, r.events.len()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn identical_responses_of_many_watches_go_as_one_batch() {
        let e5 = Arc::new(Event {
            kind: EventType::Put,
            kv: kv("a", 5),
            prev_kv: None,
        });
        let queue: Vec<_> = (0..4).map(|id| events_resp(id, 5, &e5)).collect();
        let batches = batch(&queue);
        assert_eq!(
            batches,
            vec![Batched {
                first: 0,
                more: vec![1, 2, 3]
            }]
        );
        // The message is exactly the owned WatchBatch.
        let bytes = postcard::to_stdvec(&BatchRef {
            response: &queue[0],
            more_ids: &batches[0].more,
        })
        .unwrap();
        let back: qed_wire::watch::WatchBatch = postcard::from_bytes(&bytes).unwrap();
        let responses = back.into_responses();
        let owned: Vec<WatchResponse> = queue
            .into_iter()
            .flat_map(PendingResponse::into_responses)
            .collect();
        assert_eq!(responses, owned);
    }

    /// A response queued for several watches is one batch for all of
    /// them, and joins (or is joined by) identical ones like any other.
    #[test]
    fn responses_for_several_watches_batch_like_the_single_ones() {
        let e5 = Arc::new(Event {
            kind: EventType::Put,
            kv: kv("a", 5),
            prev_kv: None,
        });
        let shared = |ids: &[i64]| {
            let mut r = events_resp(ids[0], 5, &e5);
            r.more_ids = ids[1..].to_vec();
            r
        };
        let queue = vec![
            shared(&[1, 2, 3]),
            shared(&[4]),
            shared(&[5, 1]),
            shared(&[6]),
        ];
        assert_eq!(
            batch(&queue),
            vec![
                Batched {
                    first: 0,
                    more: vec![2, 3, 4]
                },
                // Watch 1 again: a new run.
                Batched {
                    first: 2,
                    more: vec![1, 6]
                },
            ]
        );
        assert_eq!(
            unbatched(&queue).iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 1, 6]
        );
        // A watch leaves a shared response; the last one left drops it.
        let mut r = shared(&[1, 2, 3]);
        assert!(r.remove_watch(1));
        assert_eq!(r.watch_ids().collect::<Vec<_>>(), vec![2, 3]);
        assert!(!r.remove_watch(7));
        assert!(r.remove_watch(3));
        assert!(!r.remove_watch(2));
        assert_eq!(r.watch_count(), 1);
    }

    #[test]
    fn batching_keeps_each_watchs_order_and_stream_wide_responses_in_place() {
        let e = |rev| {
            Arc::new(Event {
                kind: EventType::Put,
                kv: kv("a", rev),
                prev_kv: None,
            })
        };
        let (e5, e6) = (e(5), e(6));
        // A copy of e5's event is another allocation: not batched with it.
        let e5_copy = Arc::new((*e5).clone());
        let queue = vec![
            events_resp(1, 5, &e5),
            control(3, 5, true),
            events_resp(2, 5, &e5),
            events_resp(4, 5, &e5_copy),
            control(5, 5, true),
            // Watch 1 again: a new run, so it stays after its first.
            events_resp(1, 6, &e6),
            events_resp(3, 5, &e5),
            control(-1, 6, false),
            events_resp(2, 6, &e6),
            events_resp(3, 6, &e6),
        ];
        assert_eq!(
            unbatched(&queue),
            vec![
                (1, 5, false, 1),
                (2, 5, false, 1),
                (3, 5, true, 0),
                (4, 5, false, 1),
                // Not joined to watch 3's `created`: watch 4's is between.
                (5, 5, true, 0),
                (1, 6, false, 1),
                (3, 5, false, 1),
                (-1, 6, false, 0),
                (2, 6, false, 1),
                (3, 6, false, 1),
            ]
        );
        // Every response once; per watch, the queue's order.
        for id in [-1, 1, 2, 3, 4, 5] {
            let want: Vec<_> = queue
                .iter()
                .filter(|r| r.watch_id() == id)
                .map(|r| (r.head.header.revision, r.head.created))
                .collect();
            let got: Vec<_> = unbatched(&queue)
                .into_iter()
                .filter(|r| r.0 == id)
                .map(|r| (r.1, r.2))
                .collect();
            assert_eq!(got, want, "watch {id}");
        }
    }
}
