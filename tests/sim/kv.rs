//! The replicated state machine of the simulation: a tiny KV map applied
//! from committed entries, with commands deduplicated by op id (a network
//! may duplicate a forwarded proposal; a real server dedups the same way by
//! request id).

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    Put {
        key: u8,
        val: u64,
    },
    Cas {
        key: u8,
        expect: Option<u64>,
        new: u64,
    },
    /// Liveness marker: changes nothing.
    Nop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmdResult {
    Done,
    Swapped(bool),
    Duplicate,
}

pub fn encode(op_id: u64, cmd: Cmd) -> Vec<u8> {
    let mut b = Vec::with_capacity(27);
    b.extend_from_slice(&op_id.to_le_bytes());
    match cmd {
        Cmd::Put { key, val } => {
            b.push(0);
            b.push(key);
            b.extend_from_slice(&val.to_le_bytes());
        }
        Cmd::Cas { key, expect, new } => {
            b.push(1);
            b.push(key);
            b.extend_from_slice(&new.to_le_bytes());
            b.push(expect.is_some() as u8);
            b.extend_from_slice(&expect.unwrap_or(0).to_le_bytes());
        }
        Cmd::Nop => b.push(2),
    }
    b
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

pub fn decode(b: &[u8]) -> Option<(u64, Cmd)> {
    let id = u64_at(b, 0)?;
    let cmd = match *b.get(8)? {
        0 => Cmd::Put {
            key: *b.get(9)?,
            val: u64_at(b, 10)?,
        },
        1 => Cmd::Cas {
            key: *b.get(9)?,
            new: u64_at(b, 10)?,
            expect: if *b.get(18)? == 1 {
                Some(u64_at(b, 19)?)
            } else {
                None
            },
        },
        2 => Cmd::Nop,
        _ => return None,
    };
    Some((id, cmd))
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kv {
    pub map: BTreeMap<u8, u64>,
    pub applied_ops: BTreeSet<u64>,
}

impl Kv {
    pub fn apply(&mut self, op_id: u64, cmd: Cmd) -> CmdResult {
        if !self.applied_ops.insert(op_id) {
            return CmdResult::Duplicate;
        }
        match cmd {
            Cmd::Put { key, val } => {
                self.map.insert(key, val);
                CmdResult::Done
            }
            Cmd::Cas { key, expect, new } => {
                let ok = self.map.get(&key).copied() == expect;
                if ok {
                    self.map.insert(key, new);
                }
                CmdResult::Swapped(ok)
            }
            Cmd::Nop => CmdResult::Done,
        }
    }

    /// A cheap fingerprint of the state (values and how many ops applied).
    pub fn digest(&self) -> u64 {
        let mut h = self.applied_ops.len() as u64;
        for (k, v) in &self.map {
            h = (h ^ (*k as u64)).wrapping_mul(0x100_0000_01b3);
            h = (h ^ v).wrapping_mul(0x100_0000_01b3);
        }
        h
    }

    pub fn serialize(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(self.map.len() as u64).to_le_bytes());
        for (k, v) in &self.map {
            b.push(*k);
            b.extend_from_slice(&v.to_le_bytes());
        }
        for id in &self.applied_ops {
            b.extend_from_slice(&id.to_le_bytes());
        }
        b
    }

    pub fn deserialize(b: &[u8]) -> Option<Kv> {
        if b.is_empty() {
            return Some(Kv::default());
        }
        let n = u64_at(b, 0)? as usize;
        let mut kv = Kv::default();
        let mut at = 8;
        for _ in 0..n {
            let k = *b.get(at)?;
            kv.map.insert(k, u64_at(b, at + 1)?);
            at += 9;
        }
        while at < b.len() {
            kv.applied_ops.insert(u64_at(b, at)?);
            at += 8;
        }
        Some(kv)
    }
}
