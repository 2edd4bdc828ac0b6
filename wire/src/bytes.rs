//! Byte strings: `#[serde(with = "crate::bytes")]` on a `Vec<u8>` field
//! serializes it as one byte string (serde's `bytes`) instead of a sequence
//! of `u8`s.
//!
//! Postcard writes both the same way (a varint length, then the bytes), so
//! this changes no byte on the wire or on disk; it turns serde's per-byte
//! loop into one copy on encode and decode, which matters for values, Raft
//! entries and snapshot blobs (tens of megabytes).

use serde::de::{SeqAccess, Visitor};
use serde::{Deserializer, Serializer};
use std::fmt;

pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(bytes)
}

/// Into a `Vec<u8>` or a `Box<[u8]>` (whatever the field is).
pub fn deserialize<'de, D: Deserializer<'de>, T: From<Vec<u8>>>(d: D) -> Result<T, D::Error> {
    d.deserialize_byte_buf(ByteBuf).map(T::from)
}

struct ByteBuf;

impl<'de> Visitor<'de> for ByteBuf {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    /// Formats that write bytes as a sequence (none of ours; for safety).
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        // The hint comes from the input: cap it.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element()? {
            out.push(b);
        }
        Ok(out)
    }
}

/// The same for a list of byte strings.
pub mod list {
    use serde::de::{SeqAccess, Visitor};
    use serde::ser::SerializeSeq;
    use serde::{Deserializer, Serializer};
    use std::fmt;

    /// One byte string as a seq element.
    struct Item<'a>(&'a [u8]);

    impl serde::Serialize for Item<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    struct Owned(Vec<u8>);

    impl<'de> serde::Deserialize<'de> for Owned {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Owned, D::Error> {
            super::deserialize(d).map(Owned)
        }
    }

    pub fn serialize<S: Serializer>(items: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(items.len()))?;
        for item in items {
            seq.serialize_element(&Item(item))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        d.deserialize_seq(List)
    }

    struct List;

    impl<'de> Visitor<'de> for List {
        type Value = Vec<Vec<u8>>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of byte strings")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Vec<u8>>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
            while let Some(Owned(item)) = seq.next_element()? {
                out.push(item);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct AsSeq {
        value: Vec<u8>,
        keys: Vec<Vec<u8>>,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct AsBytes {
        #[serde(with = "crate::bytes")]
        value: Vec<u8>,
        #[serde(with = "crate::bytes::list")]
        keys: Vec<Vec<u8>>,
    }

    /// Data written before byte strings were encoded as such still reads,
    /// and the other way round: the encoding is the same.
    #[test]
    fn same_bytes_as_a_sequence_of_u8() {
        let value: Vec<u8> = (0..=255).chain(0..300u16).map(|b| b as u8).collect();
        let keys = vec![Vec::new(), b"k".to_vec(), value.clone()];
        let seq = postcard::to_stdvec(&AsSeq {
            value: value.clone(),
            keys: keys.clone(),
        })
        .unwrap();
        let bytes = postcard::to_stdvec(&AsBytes {
            value: value.clone(),
            keys: keys.clone(),
        })
        .unwrap();
        assert_eq!(seq, bytes);
        let back: AsBytes = postcard::from_bytes(&seq).unwrap();
        assert_eq!((back.value, back.keys), (value, keys));
        // A length past the end is an error, not an allocation.
        let mut bad = bytes.clone();
        bad[0] = 0xff;
        bad.truncate(3);
        assert!(postcard::from_bytes::<AsBytes>(&bad).is_err());
    }
}
