//! What a client write looks like inside a Raft log entry.
//!
//! Entries are replicated between members, so their payload is wire format
//! like everything else that crosses a socket. An entry with empty data is
//! the leader's no-op and carries no command.
//!
//! Layout: the postcard encoding of `(id, request)`, then, in every entry
//! written since auth exists, the postcard encoding of an [`AuthHeader`]
//! (etcd's `RequestHeader`: who proposed it, checked against which auth
//! revision). Entries written before carry no header and decode with
//! `auth: None`; they are applied as they were then (no auth call applies
//! from them), so replaying an old log gives the state it gave then.
//!
//! Invariant: no plaintext password is ever in an entry. `UserAdd` and
//! `UserChangePassword` carry the bcrypt hash in their `password` field
//! (hashed by the member that received the call), and `Authenticate`
//! carries an empty password (the receiving member checked it).

use crate::call::Request;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Chosen by the proposing member to match the applied result to the
    /// waiting caller; unique per member across restarts.
    pub id: u64,
    pub request: Request,
    /// `None` only in entries written before auth existed.
    pub auth: Option<AuthHeader>,
}

/// Who proposed a command, as etcd's `RequestHeader` says it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthHeader {
    /// The authenticated user; empty for a caller without credentials.
    pub user: String,
    /// The auth revision the proposing member checked the call against; a
    /// change to users, roles or permissions applied in between refuses
    /// the command at apply time (etcd's `ErrAuthOldRevision`).
    pub revision: u64,
    /// Proposed by the cluster itself (a lease expiry, an alarm): permitted
    /// everything, as etcd runs its own revokes `WithRoot`.
    pub system: bool,
    /// `Authenticate` only: the token issued is `"{token_prefix}.{index}"`.
    pub token_prefix: String,
}

impl AuthHeader {
    /// For the cluster's own proposals.
    pub fn system() -> Self {
        AuthHeader {
            system: true,
            ..Default::default()
        }
    }
}

#[derive(Serialize)]
struct Head<'a> {
    id: u64,
    request: &'a Request,
}

#[derive(Deserialize)]
struct OwnedHead {
    id: u64,
    request: Request,
}

impl Command {
    /// The entry's bytes, allocated at their exact size.
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        let head = Head {
            id: self.id,
            request: &self.request,
        };
        let len = crate::frame::encoded_len(&head)?
            + match &self.auth {
                Some(auth) => crate::frame::encoded_len(auth)?,
                None => 0,
            };
        let bytes = postcard::to_extend(&head, Vec::with_capacity(len))?;
        match &self.auth {
            Some(auth) => postcard::to_extend(auth, bytes),
            None => Ok(bytes),
        }
    }

    /// Reads an entry's bytes; trailing bytes after the header are refused.
    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        let (head, rest) = postcard::take_from_bytes::<OwnedHead>(bytes)?;
        let auth = if rest.is_empty() {
            None
        } else {
            let (auth, rest) = postcard::take_from_bytes::<AuthHeader>(rest)?;
            if !rest.is_empty() {
                return Err(postcard::Error::DeserializeBadEncoding);
            }
            Some(auth)
        };
        Ok(Command {
            id: head.id,
            request: head.request,
            auth,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::PutRequest;

    fn put() -> Request {
        Request::Put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })
    }

    #[test]
    fn round_trips_with_and_without_a_header() {
        for auth in [
            None,
            Some(AuthHeader::system()),
            Some(AuthHeader {
                user: "alice".into(),
                revision: 7,
                system: false,
                token_prefix: "abc".into(),
            }),
        ] {
            let cmd = Command {
                id: 42,
                request: put(),
                auth,
            };
            let bytes = cmd.encode().unwrap();
            assert_eq!(bytes.len(), bytes.capacity());
            assert_eq!(Command::decode(&bytes).unwrap(), cmd);
        }
    }

    /// Entries written before auth were the plain `(id, request)` struct.
    #[test]
    fn entries_from_before_auth_decode_without_a_header() {
        #[derive(Serialize)]
        struct Old {
            id: u64,
            request: Request,
        }
        let bytes = postcard::to_allocvec(&Old {
            id: 9,
            request: put(),
        })
        .unwrap();
        let cmd = Command::decode(&bytes).unwrap();
        assert_eq!((cmd.id, cmd.auth), (9, None));
    }

    /// Cheap in-tree fuzzing (`make fuzz` runs the real thing): random and
    /// mutated bytes never panic, and what decodes re-encodes the same.
    #[test]
    fn random_bytes_never_panic() {
        let valid = Command {
            id: 3,
            request: put(),
            auth: Some(AuthHeader::system()),
        }
        .encode()
        .unwrap();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for round in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut bytes = valid.clone();
            let len = (x % 64) as usize;
            if round % 2 == 0 {
                bytes = x.to_le_bytes().iter().cycle().take(len).copied().collect();
            } else if !bytes.is_empty() {
                let at = (x as usize >> 8) % bytes.len();
                bytes[at] ^= (x >> 32) as u8 | 1;
                bytes.truncate(len.max(at + 1).min(bytes.len()));
            }
            if let Ok(cmd) = Command::decode(&bytes) {
                assert_eq!(Command::decode(&cmd.encode().unwrap()).unwrap(), cmd);
            }
        }
    }

    #[test]
    fn trailing_garbage_is_refused() {
        let mut bytes = Command {
            id: 1,
            request: put(),
            auth: Some(AuthHeader::system()),
        }
        .encode()
        .unwrap();
        bytes.push(0);
        assert!(Command::decode(&bytes).is_err());
    }
}
