//! Round trips through the writer and reader, and damaged files: the
//! reader must answer every byte string with data or a clear error, never a
//! panic, a hang or an allocation bigger than the file.

use super::*;
use std::collections::BTreeMap;

use crate::test_rng::Rng;

type Buckets = BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>>;

fn write(buckets: &Buckets) -> Vec<u8> {
    let mut db = DbWriter::default();
    for (name, entries) in buckets {
        let mut b = db.bucket(name).unwrap();
        for (k, v) in entries {
            b.put(k, v).unwrap();
        }
        b.finish().unwrap();
    }
    db.finish().unwrap()
}

fn read_all(bytes: &[u8]) -> Result<Buckets, ReadError> {
    let db = Db::open(bytes)?;
    let mut names = Vec::new();
    db.for_each(db.root(), &mut |name, entry| {
        if let Entry::Bucket(b) = entry {
            names.push((name.to_vec(), b));
        }
        Ok(())
    })?;
    let mut out = Buckets::new();
    for (name, b) in names {
        let mut entries = BTreeMap::new();
        db.for_each(b, &mut |k, e| {
            if let Entry::Value(v) = e {
                entries.insert(k.to_vec(), v.to_vec());
            }
            Ok(())
        })?;
        out.insert(name, entries);
    }
    Ok(out)
}

fn sample(rng: &mut Rng, keys: usize) -> Buckets {
    let mut buckets = Buckets::new();
    buckets.insert(b"empty".to_vec(), BTreeMap::new());
    let mut small = BTreeMap::new();
    small.insert(b"a".to_vec(), b"1".to_vec());
    buckets.insert(b"small".to_vec(), small);
    let mut big = BTreeMap::new();
    for i in 0..keys {
        let len = match rng.below(100) {
            0 => 5000 + rng.below(20000) as usize, // overflow pages
            _ => rng.below(200) as usize,
        };
        big.insert(format!("key{i:08}").into_bytes(), rng.bytes(len));
    }
    // A key big enough for branch pages with overflow.
    big.insert(vec![b'z'; 9000], b"large key".to_vec());
    buckets.insert(b"key".to_vec(), big);
    buckets
}

#[test]
fn round_trip_small_and_large_buckets() {
    let mut rng = Rng(7);
    for keys in [0, 1, 100, 5000] {
        let buckets = sample(&mut rng, keys);
        let bytes = write(&buckets);
        assert_eq!(bytes.len() % DEFAULT_PAGE_SIZE, 0);
        assert_eq!(read_all(&bytes).unwrap(), buckets, "{keys} keys");
    }
}

#[test]
fn many_keys_make_a_three_level_tree() {
    let mut buckets = Buckets::new();
    let entries: BTreeMap<_, _> = (0..200_000u32)
        .map(|i| (i.to_be_bytes().to_vec(), Vec::new()))
        .collect();
    buckets.insert(b"k".to_vec(), entries);
    let bytes = write(&buckets);
    assert_eq!(read_all(&bytes).unwrap(), buckets);
}

#[test]
fn writer_refuses_unsorted_and_bad_keys() {
    let mut db = DbWriter::default();
    let mut b = db.bucket(b"b").unwrap();
    b.put(b"b", b"").unwrap();
    assert!(matches!(b.put(b"a", b""), Err(WriteError::Unsorted { .. })));
    assert!(matches!(b.put(b"b", b""), Err(WriteError::Unsorted { .. })));
    assert!(matches!(b.put(b"", b""), Err(WriteError::BadKey { .. })));
    b.finish().unwrap();
    assert!(matches!(
        db.bucket(b"b"),
        Err(WriteError::DuplicateBucket(_))
    ));
}

#[test]
fn meta_fallback_to_the_second_copy() {
    let buckets = sample(&mut Rng(3), 50);
    let mut bytes = write(&buckets);
    bytes[PAGE_HEADER + 20] ^= 1; // meta 0's root: checksum now wrong
    assert_eq!(read_all(&bytes).unwrap(), buckets);
    bytes[DEFAULT_PAGE_SIZE + PAGE_HEADER + 20] ^= 1;
    assert!(matches!(read_all(&bytes), Err(ReadError::NotBbolt(_))));
}

#[test]
fn damaged_files_give_errors_not_panics() {
    let mut rng = Rng(11);
    let good = write(&sample(&mut rng, 300));
    // Whole-file garbage and short files.
    for len in [0, 1, 15, 80, 4096, 8192, 12288, 20000] {
        let junk = rng.bytes(len);
        assert!(read_all(&junk).is_err());
        assert!(read_all(&good[..len.min(good.len())]).is_err() || len >= good.len());
    }
    // Truncations at every page boundary.
    for pages in 0..good.len() / DEFAULT_PAGE_SIZE {
        let _ = read_all(&good[..pages * DEFAULT_PAGE_SIZE]);
    }
    // Random byte damage, with the metas re-checksummed half the time so
    // the damage gets past them into the tree.
    for round in 0..3000 {
        let mut bytes = good.clone();
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(bytes.len() as u64) as usize;
            bytes[at] = rng.next_u64() as u8;
        }
        if round % 2 == 0 {
            for meta in 0..2 {
                let m = meta * DEFAULT_PAGE_SIZE + PAGE_HEADER;
                let sum = fnv64a(&bytes[m..m + META_SUMMED]);
                bytes[m + META_SUMMED..m + META_LEN].copy_from_slice(&sum.to_le_bytes());
            }
        }
        if let Err(e) = read_all(&bytes) {
            let text = e.to_string();
            assert!(
                text.starts_with("bbolt page ") || text.starts_with("not a bbolt database: "),
                "{text}"
            );
        }
    }
}

#[test]
fn cycles_and_shared_pages_are_refused() {
    let mut buckets = Buckets::new();
    let entries: BTreeMap<_, _> = (0..2000u32)
        .map(|i| (i.to_be_bytes().to_vec(), vec![1; 20]))
        .collect();
    buckets.insert(b"k".to_vec(), entries);
    let mut bytes = write(&buckets);
    let db = Db::open(&bytes).unwrap();
    let mut bucket = None;
    db.for_each(db.root(), &mut |_, e| {
        if let Entry::Bucket(BucketRef::Paged(p)) = e {
            bucket = Some(p);
        }
        Ok(())
    })
    .unwrap();
    let root = bucket.unwrap() as usize;
    // Point the branch root's second child at its first child.
    let page = root * DEFAULT_PAGE_SIZE;
    assert_eq!(bytes[page + 8], BRANCH_PAGE as u8);
    let first_child: [u8; 8] = bytes[page + PAGE_HEADER + 8..page + PAGE_HEADER + 16]
        .try_into()
        .unwrap();
    bytes[page + PAGE_HEADER + ELEMENT + 8..page + PAGE_HEADER + ELEMENT + 16]
        .copy_from_slice(&first_child);
    let err = read_all(&bytes).unwrap_err();
    assert!(err.to_string().contains("referenced twice"), "{err}");
    // And at itself.
    bytes[page + PAGE_HEADER + 8..page + PAGE_HEADER + 16]
        .copy_from_slice(&(root as u64).to_le_bytes());
    assert!(read_all(&bytes).is_err());
}

#[test]
fn entry_count_reads_page_headers_only() {
    let buckets = sample(&mut Rng(5), 3000);
    let bytes = write(&buckets);
    let db = Db::open(&bytes).unwrap();
    for (name, entries) in &buckets {
        let b = db.bucket(db.root(), name).unwrap().unwrap();
        assert_eq!(db.entry_count(b).unwrap(), entries.len());
    }
}
