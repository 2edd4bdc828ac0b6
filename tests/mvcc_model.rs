//! Model-based test of `qed::mvcc::Store`: seeded random operation sequences
//! run against the store and against a naive reference that keeps every
//! change in one `Vec` and answers every question by scanning it. After each
//! operation the two must agree on the response (or error), the events, the
//! revision, and a random read at a random (possibly historical or invalid)
//! revision; every so often on watch replay too, and the store must survive
//! a snapshot round trip unchanged (which also recomputes `size_bytes` from
//! scratch and so checks the incremental accounting).
//!
//! A failing seed reproduces exactly: run with `MVCC_MODEL_SEED=<n>`.

use std::collections::BTreeMap;

use qed::mvcc::{KeySpaceImage, MvccError, Store};
use qed::wire::kv::*;

/// xorshift64*: small, seedable, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const KEYS: &[&str] = &["a", "a1", "a2", "b", "c", "c1", "d", "e"];

fn lease_exists(id: i64) -> bool {
    id % 2 == 1
}

struct RefPath {
    succeeded: bool,
    nested: Vec<RefPath>,
}

/// One change as the reference remembers it: the event it produced.
#[derive(Clone)]
struct RefChange {
    main: i64,
    event: Event,
}

struct Reference {
    changes: Vec<RefChange>,
    current: i64,
    compacted: i64,
}

impl Reference {
    fn new() -> Self {
        Reference {
            changes: Vec::new(),
            current: 1,
            compacted: -1,
        }
    }

    /// Every key's value as of `rev`, replaying from the beginning.
    fn state_at(&self, rev: i64) -> BTreeMap<Vec<u8>, KeyValue> {
        let mut state = BTreeMap::new();
        for c in self.changes.iter().take_while(|c| c.main <= rev) {
            match c.event.kind {
                EventType::Put => {
                    state.insert(c.event.kv.key.clone(), c.event.kv.clone());
                }
                EventType::Delete => {
                    state.remove(&c.event.kv.key);
                }
            }
        }
        state
    }

    fn in_range(start: &[u8], end: &[u8], key: &[u8]) -> bool {
        match end {
            [] => key == start,
            [0] => key >= start,
            end => key >= start && key < end,
        }
    }

    fn range(&self, req: &RangeRequest, read_rev: i64) -> Result<RangeResponse, MvccError> {
        let mut rev = req.revision;
        if rev > read_rev {
            return Err(MvccError::FutureRev);
        }
        if rev <= 0 {
            rev = read_rev;
        }
        if rev < self.compacted {
            return Err(MvccError::Compacted);
        }
        let all: Vec<KeyValue> = self
            .state_at(rev)
            .into_values()
            .filter(|kv| Self::in_range(&req.key, &req.range_end, &kv.key))
            .collect();
        let count = all.len() as i64;
        let mut kvs = if req.count_only { Vec::new() } else { all };
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        // etcd quirk: without an explicit order (even when a non-key target
        // will sort ascending) it fetches just limit + 1 keys, then sorts.
        if req.sort_order == SortOrder::None && !filtered && req.limit > 0 {
            kvs.truncate(req.limit as usize + 1);
        }
        kvs.retain(|kv| {
            (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
        });
        let key_of = |kv: &KeyValue| -> (Vec<u8>, i64) {
            match req.sort_target {
                SortTarget::Key => (kv.key.clone(), 0),
                SortTarget::Version => (Vec::new(), kv.version),
                SortTarget::Create => (Vec::new(), kv.create_revision),
                SortTarget::Mod => (Vec::new(), kv.mod_revision),
                SortTarget::Value => (kv.value.clone(), 0),
            }
        };
        match (req.sort_order, req.sort_target) {
            (SortOrder::None, SortTarget::Key) => {}
            (SortOrder::Descend, _) => kvs.sort_by_key(|kv| std::cmp::Reverse(key_of(kv))),
            _ => kvs.sort_by_key(key_of),
        }
        let mut more = false;
        if req.limit > 0 && kvs.len() > req.limit as usize {
            kvs.truncate(req.limit as usize);
            more = true;
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(RangeResponse {
            header: header(read_rev),
            kvs,
            more,
            count,
        })
    }

    fn latest(&self, key: &[u8]) -> Option<KeyValue> {
        self.state_at(i64::MAX).remove(key)
    }

    /// Applies a put at (main, sub) without checks; returns the event.
    fn write_put(&mut self, main: i64, key: &[u8], value: Vec<u8>, lease: i64) -> Event {
        let prev = self.latest(key);
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: prev.as_ref().map_or(main, |p| p.create_revision),
            mod_revision: main,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value,
            lease,
        };
        let event = Event {
            kind: EventType::Put,
            kv,
            prev_kv: prev,
        };
        self.changes.push(RefChange {
            main,
            event: event.clone(),
        });
        event
    }

    fn write_delete(&mut self, main: i64, start: &[u8], end: &[u8]) -> Vec<Event> {
        let live: Vec<KeyValue> = self
            .state_at(i64::MAX)
            .into_values()
            .filter(|kv| Self::in_range(start, end, &kv.key))
            .collect();
        let mut events = Vec::new();
        for prev in live {
            let event = Event {
                kind: EventType::Delete,
                kv: KeyValue {
                    key: prev.key.clone(),
                    mod_revision: main,
                    ..Default::default()
                },
                prev_kv: Some(prev),
            };
            self.changes.push(RefChange {
                main,
                event: event.clone(),
            });
            events.push(event);
        }
        events
    }

    fn put(&mut self, req: &PutRequest) -> Result<(PutResponse, Vec<Event>), MvccError> {
        if req.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        if req.ignore_value && !req.value.is_empty() {
            return Err(MvccError::ValueProvided);
        }
        if req.ignore_lease && req.lease != 0 {
            return Err(MvccError::LeaseProvided);
        }
        if req.lease != 0 && !lease_exists(req.lease) {
            return Err(MvccError::LeaseNotFound);
        }
        let prev = self.latest(&req.key);
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(MvccError::KeyNotFound);
        }
        let main = self.current + 1;
        let (resp, event) = self.put_unchecked(main, req, prev);
        self.current = main;
        Ok((resp, vec![event]))
    }

    fn put_unchecked(
        &mut self,
        main: i64,
        req: &PutRequest,
        prev: Option<KeyValue>,
    ) -> (PutResponse, Event) {
        let value = match (&prev, req.ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => req.value.clone(),
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => req.lease,
        };
        let event = self.write_put(main, &req.key, value, lease);
        let resp = PutResponse {
            header: header(main),
            prev_kv: if req.prev_kv { prev } else { None },
        };
        (resp, event)
    }

    fn delete(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> Result<(DeleteRangeResponse, Vec<Event>), MvccError> {
        if req.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        let main = self.current + 1;
        let events = self.write_delete(main, &req.key, &req.range_end);
        if !events.is_empty() {
            self.current = main;
        }
        Ok((delete_response(req, &events, self.current), events))
    }

    fn compare(&self, c: &Compare) -> bool {
        let state = self.state_at(self.current);
        let kvs: Vec<&KeyValue> = state
            .values()
            .filter(|kv| Self::in_range(&c.key, &c.range_end, &kv.key))
            .collect();
        let test = |kv: &KeyValue| {
            let ord = match &c.target {
                CompareTarget::Version(v) => kv.version.cmp(v),
                CompareTarget::Create(v) => kv.create_revision.cmp(v),
                CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
                CompareTarget::Lease(v) => kv.lease.cmp(v),
                CompareTarget::Value(v) => kv.value.cmp(v),
            };
            match c.result {
                CompareResult::Equal => ord.is_eq(),
                CompareResult::NotEqual => ord.is_ne(),
                CompareResult::Greater => ord.is_gt(),
                CompareResult::Less => ord.is_lt(),
            }
        };
        if kvs.is_empty() {
            return !matches!(c.target, CompareTarget::Value(_)) && test(&KeyValue::default());
        }
        kvs.into_iter().all(test)
    }

    /// The generator never writes one key twice along a path, so the
    /// reference skips etcd's overlap check (unit tests cover it).
    fn txn(&mut self, req: &TxnRequest) -> Result<(TxnResponse, Vec<Event>), MvccError> {
        Self::check_api(req)?;
        // Every compare, nested ones too, sees the state before the txn.
        let path = self.path(req);
        self.check_path(req, &path, &mut |model, op| match op {
            RequestOp::Put(p) => {
                if (p.ignore_value || p.ignore_lease) && model.latest(&p.key).is_none() {
                    return Err(MvccError::KeyNotFound);
                }
                if p.lease != 0 && !lease_exists(p.lease) {
                    return Err(MvccError::LeaseNotFound);
                }
                Ok(())
            }
            _ => Ok(()),
        })?;
        self.check_path(req, &path, &mut |model, op| match op {
            RequestOp::Range(r) if r.revision > model.current => Err(MvccError::FutureRev),
            RequestOp::Range(r) if r.revision != 0 && r.revision < model.compacted => {
                Err(MvccError::Compacted)
            }
            _ => Ok(()),
        })?;
        let main = self.current + 1;
        let mut events = Vec::new();
        let mut resp = self.exec(req, &path, main, &mut events)?;
        if !events.is_empty() {
            self.current = main;
        }
        resp.header = header(self.current);
        Ok((resp, events))
    }

    fn check_api(req: &TxnRequest) -> Result<(), MvccError> {
        for op in req.success.iter().chain(&req.failure) {
            match op {
                RequestOp::Put(p) if p.ignore_value && !p.value.is_empty() => {
                    return Err(MvccError::ValueProvided)
                }
                RequestOp::Put(p) if p.ignore_lease && p.lease != 0 => {
                    return Err(MvccError::LeaseProvided)
                }
                RequestOp::Txn(t) => Self::check_api(t)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn path(&self, req: &TxnRequest) -> RefPath {
        let succeeded = req.compare.iter().all(|c| self.compare(c));
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        RefPath {
            succeeded,
            nested: ops
                .iter()
                .filter_map(|op| match op {
                    RequestOp::Txn(t) => Some(self.path(t)),
                    _ => None,
                })
                .collect(),
        }
    }

    fn check_path(
        &self,
        req: &TxnRequest,
        path: &RefPath,
        check: &mut dyn FnMut(&Reference, &RequestOp) -> Result<(), MvccError>,
    ) -> Result<(), MvccError> {
        let ops = if path.succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut nested = path.nested.iter();
        for op in ops {
            match op {
                RequestOp::Txn(t) => self.check_path(t, nested.next().unwrap(), check)?,
                other => check(self, other)?,
            }
        }
        Ok(())
    }

    fn exec(
        &mut self,
        req: &TxnRequest,
        path: &RefPath,
        main: i64,
        events: &mut Vec<Event>,
    ) -> Result<TxnResponse, MvccError> {
        let ops = if path.succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut nested = path.nested.iter();
        let mut responses = Vec::new();
        for op in ops {
            let read_rev = if events.is_empty() { main - 1 } else { main };
            responses.push(match op {
                RequestOp::Range(r) => ResponseOp::Range(self.range(r, read_rev)?),
                RequestOp::Put(p) => {
                    let prev = self.latest(&p.key);
                    let (resp, event) = self.put_unchecked(main, p, prev);
                    events.push(event);
                    ResponseOp::Put(resp)
                }
                RequestOp::DeleteRange(d) => {
                    let deleted = self.write_delete(main, &d.key, &d.range_end);
                    events.extend(deleted.iter().cloned());
                    let rev = if events.is_empty() { main - 1 } else { main };
                    ResponseOp::DeleteRange(delete_response(d, &deleted, rev))
                }
                RequestOp::Txn(t) => {
                    ResponseOp::Txn(self.exec(t, nested.next().unwrap(), main, events)?)
                }
            });
        }
        // Nested txn responses keep an empty header, as in etcd.
        Ok(TxnResponse {
            header: ResponseHeader::default(),
            succeeded: path.succeeded,
            responses,
        })
    }

    fn compact(&mut self, rev: i64) -> Result<(), MvccError> {
        if rev <= self.compacted {
            return Err(MvccError::Compacted);
        }
        if rev > self.current {
            return Err(MvccError::FutureRev);
        }
        self.compacted = rev;
        Ok(())
    }

    /// Replay from a start strictly above the compaction point (exactly at
    /// it, what compaction kept is the store's business; unit tests cover
    /// it).
    fn events_since(&self, start: i64, key: &[u8], end: &[u8], max: usize) -> Vec<Event> {
        let mut out: Vec<Event> = Vec::new();
        for c in self.changes.iter().filter(|c| c.main >= start) {
            if !Self::in_range(key, end, &c.event.kv.key) {
                continue;
            }
            if max > 0 && out.len() >= max && out.last().map(|e| e.kv.mod_revision) != Some(c.main)
            {
                break;
            }
            out.push(c.event.clone());
        }
        out
    }
}

fn header(revision: i64) -> ResponseHeader {
    ResponseHeader {
        revision,
        ..Default::default()
    }
}

fn delete_response(req: &DeleteRangeRequest, events: &[Event], rev: i64) -> DeleteRangeResponse {
    DeleteRangeResponse {
        header: header(rev),
        deleted: events.len() as i64,
        prev_kvs: if req.prev_kv {
            events.iter().filter_map(|e| e.prev_kv.clone()).collect()
        } else {
            Vec::new()
        },
    }
}

fn key(rng: &mut Rng) -> Vec<u8> {
    rng.pick(KEYS).as_bytes().to_vec()
}

fn range_end(rng: &mut Rng) -> Vec<u8> {
    match rng.below(4) {
        0 | 1 => Vec::new(),
        2 => vec![0],
        _ => key(rng),
    }
}

fn revision(rng: &mut Rng, store: &Store) -> i64 {
    match rng.below(4) {
        0 => 0,
        1 => store.revision(),
        _ => rng.below(store.revision() as u64 + 2) as i64,
    }
}

fn gen_range(rng: &mut Rng, store: &Store) -> RangeRequest {
    let mut r = RangeRequest {
        key: key(rng),
        range_end: range_end(rng),
        revision: revision(rng, store),
        limit: if rng.chance(30) {
            rng.below(4) as i64
        } else {
            0
        },
        ..Default::default()
    };
    if rng.chance(30) {
        r.sort_order = *rng.pick(&[SortOrder::None, SortOrder::Ascend, SortOrder::Descend]);
        r.sort_target = *rng.pick(&[
            SortTarget::Key,
            SortTarget::Version,
            SortTarget::Create,
            SortTarget::Mod,
            SortTarget::Value,
        ]);
    }
    if rng.chance(15) {
        let top = store.revision() as u64 + 1;
        r.min_mod_revision = rng.below(top) as i64;
        r.max_mod_revision = rng.below(top) as i64;
        r.min_create_revision = rng.below(top) as i64;
        r.max_create_revision = rng.below(top) as i64;
    }
    r.count_only = rng.chance(10);
    r.keys_only = rng.chance(10);
    r
}

fn gen_put(rng: &mut Rng, k: Vec<u8>) -> PutRequest {
    let mut p = PutRequest {
        key: k,
        value: format!("v{}", rng.below(5)).into_bytes(),
        prev_kv: rng.chance(50),
        ..Default::default()
    };
    if rng.chance(30) {
        p.lease = rng.below(4) as i64;
    }
    if rng.chance(10) {
        p.ignore_value = true;
        if rng.chance(80) {
            p.value.clear();
        }
    }
    if rng.chance(10) {
        p.ignore_lease = true;
        if rng.chance(80) {
            p.lease = 0;
        }
    }
    if rng.chance(2) {
        p.key.clear();
    }
    p
}

fn gen_compare(rng: &mut Rng) -> Compare {
    let n = rng.below(6) as i64;
    Compare {
        result: *rng.pick(&[
            CompareResult::Equal,
            CompareResult::NotEqual,
            CompareResult::Greater,
            CompareResult::Less,
        ]),
        target: match rng.below(5) {
            0 => CompareTarget::Version(n),
            1 => CompareTarget::Create(n),
            2 => CompareTarget::Mod(n),
            3 => CompareTarget::Lease(n % 3),
            _ => CompareTarget::Value(format!("v{n}").into_bytes()),
        },
        key: key(rng),
        range_end: if rng.chance(20) {
            range_end(rng)
        } else {
            Vec::new()
        },
    }
}

/// A branch writing each key at most once along any path: writes take keys
/// from `pool` (shared with nested txns); deletes are single-key so they
/// cannot overlap. Nested txns go at most `depth` deep.
fn gen_branch(rng: &mut Rng, store: &Store, pool: &mut Vec<&str>, depth: u32) -> Vec<RequestOp> {
    let mut ops = Vec::new();
    for _ in 0..rng.below(5) {
        match rng.below(if depth > 0 { 4 } else { 3 }) {
            0 => ops.push(RequestOp::Range(gen_range(rng, store))),
            3 => ops.push(RequestOp::Txn(gen_txn(rng, store, pool, depth - 1))),
            kind => {
                if pool.is_empty() {
                    break;
                }
                let k = pool.swap_remove(rng.below(pool.len() as u64) as usize);
                let k = k.as_bytes().to_vec();
                if kind == 1 {
                    let mut p = gen_put(rng, k.clone());
                    // Keep keys non-empty here: an empty key fails the
                    // whole txn, which plain puts already cover.
                    p.key = k;
                    ops.push(RequestOp::Put(p));
                } else {
                    ops.push(RequestOp::DeleteRange(DeleteRangeRequest {
                        key: k,
                        range_end: Vec::new(),
                        prev_kv: rng.chance(50),
                    }));
                }
            }
        }
    }
    ops
}

fn gen_txn(rng: &mut Rng, store: &Store, pool: &mut Vec<&str>, depth: u32) -> TxnRequest {
    let compare = (0..rng.below(3)).map(|_| gen_compare(rng)).collect();
    // Then and else never both run, but they share the parent's pool so
    // neither collides with the parent's writes.
    let mut else_pool = pool.clone();
    let success = gen_branch(rng, store, pool, depth);
    let failure = gen_branch(rng, store, &mut else_pool, depth);
    pool.retain(|k| else_pool.contains(k));
    TxnRequest {
        compare,
        success,
        failure,
    }
}

fn run(seed: u64, steps: usize) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut store = Store::new();
    let mut model = Reference::new();
    for step in 0..steps {
        let ctx = format!("seed {seed} step {step}");
        match rng.below(100) {
            0..=34 => {
                let k = key(&mut rng);
                let req = gen_put(&mut rng, k);
                assert_eq!(
                    store.put(&req, &lease_exists),
                    model.put(&req),
                    "{ctx}: {req:?}"
                );
            }
            35..=49 => {
                let req = DeleteRangeRequest {
                    key: key(&mut rng),
                    range_end: range_end(&mut rng),
                    prev_kv: rng.chance(50),
                };
                assert_eq!(
                    store.delete_range(&req),
                    model.delete(&req),
                    "{ctx}: {req:?}"
                );
            }
            50..=74 => {
                let req = gen_txn(&mut rng, &store, &mut KEYS.to_vec(), 2);
                assert_eq!(
                    store.txn(&req, &lease_exists),
                    model.txn(&req),
                    "{ctx}: {req:?}"
                );
            }
            75..=79 => {
                let rev = if rng.chance(80) {
                    let lo = store.compact_revision() as u64;
                    lo as i64 + 1 + rng.below(store.revision() as u64 - lo) as i64
                } else {
                    revision(&mut rng, &store)
                };
                assert_eq!(
                    store.compact(rev),
                    model.compact(rev),
                    "{ctx}: compact {rev}"
                );
            }
            80..=89 => {
                let start = model.compacted.max(0) + 1 + rng.below(6) as i64;
                let (k, end) = (key(&mut rng), range_end(&mut rng));
                let max = rng.below(4) as usize;
                assert_eq!(
                    store.events_since(start, &k, &end, max),
                    Ok(model.events_since(start, &k, &end, max)),
                    "{ctx}: events since {start}"
                );
                if model.compacted > 0 {
                    assert_eq!(
                        store.events_since(model.compacted - 1, &k, &end, max),
                        Err(MvccError::Compacted)
                    );
                }
            }
            _ => {
                let bytes = store.to_bytes().expect("encode");
                let restored = Store::from_bytes(&bytes).expect("decode");
                assert_eq!(restored.size_bytes(), store.size_bytes(), "{ctx}: size");
                assert_eq!(restored.hash_kv(0), store.hash_kv(0), "{ctx}: hash");
                store = restored;
            }
        }
        assert_eq!(store.revision(), model.current, "{ctx}: revision");
        assert_eq!(store.compact_revision(), model.compacted.max(0), "{ctx}");
        // The running length a snapshot states is the encoding's.
        assert_eq!(
            store.encoded_len().ok(),
            store.to_bytes().ok().map(|b| b.len()),
            "{ctx}: encoded length"
        );
        let req = gen_range(&mut rng, &store);
        assert_eq!(
            store.range(&req),
            model.range(&req, model.current),
            "{ctx}: {req:?}"
        );
        // And everything, now and at the compaction point.
        let mut all = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        };
        assert_eq!(store.range(&all), model.range(&all, model.current), "{ctx}");
        all.revision = model.compacted.max(1);
        assert_eq!(store.range(&all), model.range(&all, model.current), "{ctx}");
    }
}

#[test]
fn store_matches_reference_model() {
    if let Some(seed) = std::env::var("MVCC_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        run(seed, 3000);
        return;
    }
    for seed in 1..=6 {
        run(seed, 1000);
    }
}
