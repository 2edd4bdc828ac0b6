//! TEMPORARY stand-in for the MVCC engine (branch `mvcc` replaces this file):
//! just enough of its API for the server to build and be smoke-tested.
use qed_wire::kv::*;
#[derive(Clone, Default)]
pub struct Store {
    rev: i64,
    kvs: std::collections::BTreeMap<Vec<u8>, KeyValue>,
}
pub struct HashKv {
    pub hash: u32,
    pub compact_revision: i64,
    pub revision: i64,
}
#[derive(Debug)]
pub enum MvccError {
    X,
}
impl From<MvccError> for qed_wire::Error {
    fn from(_: MvccError) -> Self {
        qed_wire::Error::EmptyKey
    }
}
impl Store {
    pub fn new() -> Store {
        Store {
            rev: 1,
            ..Default::default()
        }
    }
    pub fn revision(&self) -> i64 {
        self.rev
    }
    pub fn compact_revision(&self) -> i64 {
        0
    }
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        let kvs: Vec<_> = self.kvs.get(&req.key).cloned().into_iter().collect();
        Ok(RangeResponse {
            count: kvs.len() as i64,
            kvs,
            ..Default::default()
        })
    }
    pub fn put(
        &mut self,
        req: &PutRequest,
        _l: &dyn Fn(i64) -> bool,
    ) -> Result<(PutResponse, Vec<Event>), MvccError> {
        self.rev += 1;
        self.kvs.insert(
            req.key.clone(),
            KeyValue {
                key: req.key.clone(),
                value: req.value.clone(),
                mod_revision: self.rev,
                create_revision: self.rev,
                version: 1,
                lease: 0,
            },
        );
        Ok((PutResponse::default(), vec![]))
    }
    pub fn delete_range(
        &mut self,
        _req: &DeleteRangeRequest,
    ) -> Result<(DeleteRangeResponse, Vec<Event>), MvccError> {
        Err(MvccError::X)
    }
    pub fn txn(
        &mut self,
        _req: &TxnRequest,
        _l: &dyn Fn(i64) -> bool,
    ) -> Result<(TxnResponse, Vec<Event>), MvccError> {
        Err(MvccError::X)
    }
    pub fn compact(&mut self, _revision: i64) -> Result<(), MvccError> {
        Err(MvccError::X)
    }
    pub fn hash_kv(&self, _revision: i64) -> Result<HashKv, MvccError> {
        Err(MvccError::X)
    }
    pub fn size_bytes(&self) -> u64 {
        0
    }
}
