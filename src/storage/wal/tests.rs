use super::*;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("qed-wal-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn entries(i: u64) -> Vec<u8> {
    format!("entry {i}").into_bytes()
}

/// Appends entries 1..=n (one record each) and syncs.
fn fill(dir: &Path, seg: u64, n: u64) -> Wal {
    let (mut wal, _) = Wal::open(dir, seg).unwrap();
    wal.append(RecordKind::HardState, b"hs", 0).unwrap();
    for i in 1..=n {
        wal.append(RecordKind::Entries, &entries(i), i).unwrap();
    }
    wal.sync().unwrap();
    wal
}

fn entry_payloads(records: &[Record]) -> Vec<Vec<u8>> {
    records
        .iter()
        .filter(|r| r.kind == RecordKind::Entries)
        .map(|r| r.payload.clone())
        .collect()
}

fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

#[test]
fn records_survive_reopen() {
    let d = Dir::new("reopen");
    drop(fill(&d.0, 4096, 10));
    let (_, records) = Wal::open(&d.0, 4096).unwrap();
    assert_eq!(
        entry_payloads(&records),
        (1..=10).map(entries).collect::<Vec<_>>()
    );
    assert_eq!(
        records[0],
        Record {
            kind: RecordKind::HardState,
            payload: b"hs".to_vec()
        }
    );
}

#[test]
fn unsynced_records_are_not_on_disk() {
    let d = Dir::new("unsynced");
    let mut wal = fill(&d.0, 4096, 2);
    wal.append(RecordKind::Entries, b"not synced", 3).unwrap();
    drop(wal);
    let (_, records) = Wal::open(&d.0, 4096).unwrap();
    assert_eq!(entry_payloads(&records).len(), 2);
}

#[test]
fn rotation_repeats_the_hard_state_and_release_frees_covered_segments() {
    let d = Dir::new("rotate");
    let wal = fill(&d.0, 256, 40);
    assert!(wal.segment_count() > 3, "small segments must rotate");
    drop(wal);
    let paths = segment_paths(&d.0);
    // Every segment but the first starts with the repeated hard state,
    // after the batch record.
    for p in &paths[1..] {
        let buf = std::fs::read(p).unwrap();
        assert!(matches!(
            decode_record(&buf),
            Decoded::Record(
                Record {
                    kind: RecordKind::Batch,
                    ..
                },
                BATCH_BYTES
            )
        ));
        match decode_record(&buf[BATCH_BYTES..]) {
            Decoded::Record(r, _) => assert_eq!(r.kind, RecordKind::HardState),
            other => panic!("{}: {other:?}", p.display()),
        }
    }
    let (mut wal, records) = Wal::open(&d.0, 256).unwrap();
    assert_eq!(
        entry_payloads(&records),
        (1..=40).map(entries).collect::<Vec<_>>()
    );
    let before = wal.segment_count();
    assert_eq!(
        wal.release_through(20, before).unwrap(),
        0,
        "--max-wals keeps covered segments"
    );
    let released = wal.release_through(20, 1).unwrap();
    assert!(released > 0 && wal.segment_count() == before - released);
    assert!(
        wal.first_index() <= 21,
        "entries after the snapshot must be kept"
    );
    drop(wal);
    let (_, records) = Wal::open(&d.0, 256).unwrap();
    let kept = entry_payloads(&records);
    assert!(kept.ends_with(&(21..=40).map(entries).collect::<Vec<_>>()));
    assert!(records.iter().any(|r| r.kind == RecordKind::HardState));
}

/// Appends one entry record of `len` payload bytes (never zero) and
/// returns the batch's bytes as `sync` would write them, without writing.
fn unwritten_batch(wal: &mut Wal, index: u64, len: usize) -> Vec<u8> {
    wal.append(RecordKind::Entries, &vec![0x5a; len], index)
        .unwrap();
    let mut batch = Vec::new();
    encode_record(
        RecordKind::Batch,
        &(wal.pending.len() as u64).to_le_bytes(),
        &mut batch,
    );
    batch.extend_from_slice(&wal.pending[BATCH_BYTES..]);
    batch
}

fn write_raw(path: &Path, bytes: &[u8], offset: u64) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

#[test]
fn torn_tail_is_truncated_and_appends_continue() {
    let d = Dir::new("torn");
    let mut wal = fill(&d.0, 8192, 5);
    let offset = wal.offset;
    // A batch that spans sectors, of which only the first landed, as a
    // power cut mid-write leaves it.
    let batch = unwritten_batch(&mut wal, 6, 1500);
    drop(wal);
    let path = segment_paths(&d.0).pop().unwrap();
    let landed = SECTOR - offset as usize % SECTOR;
    write_raw(&path, &batch[..landed], offset);

    let (mut wal, records) = Wal::open(&d.0, 8192).unwrap();
    assert_eq!(entry_payloads(&records).len(), 5);
    wal.append(RecordKind::Entries, &entries(6), 6).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, records) = Wal::open(&d.0, 8192).unwrap();
    assert_eq!(
        entry_payloads(&records),
        (1..=6).map(entries).collect::<Vec<_>>()
    );
}

/// Out-of-order writeback: a later sector of the last (unsynced) batch
/// landed, an earlier one did not. Torn, not corrupt: nothing in that batch
/// was acknowledged. (Before batches were known, this stopped recovery as
/// "zeroed record header before valid records".)
#[test]
fn a_hole_in_the_last_batch_with_valid_records_after_it_is_torn() {
    let d = Dir::new("hole");
    let mut wal = fill(&d.0, 16384, 5);
    let offset = wal.offset;
    for i in 6..=12 {
        wal.append(RecordKind::Entries, &vec![i as u8; 300], i)
            .unwrap();
    }
    let mut batch = Vec::new();
    encode_record(
        RecordKind::Batch,
        &(wal.pending.len() as u64).to_le_bytes(),
        &mut batch,
    );
    batch.extend_from_slice(&wal.pending[BATCH_BYTES..]);
    drop(wal);
    // Everything landed but the second sector of the batch.
    let hole = (offset as usize / SECTOR + 1) * SECTOR;
    let mut landed = batch.clone();
    let rel = hole - offset as usize;
    landed[rel..rel + SECTOR].fill(0);
    let path = segment_paths(&d.0).pop().unwrap();
    write_raw(&path, &landed, offset);

    let (mut wal, records) = Wal::open(&d.0, 16384).unwrap();
    let kept = entry_payloads(&records);
    assert!(kept.len() >= 5 && kept.len() < 12, "{}", kept.len());
    assert_eq!(kept[..5], (1..=5).map(entries).collect::<Vec<_>>()[..]);
    // The rest of the torn batch is gone for good: appends continue and a
    // reopen sees them, not the leftovers.
    wal.append(RecordKind::Entries, b"after", 13).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, records) = Wal::open(&d.0, 16384).unwrap();
    let again = entry_payloads(&records);
    assert_eq!(again.len(), kept.len() + 1);
    assert_eq!(again.last().unwrap(), b"after");
}

/// Bit rot in the last record, after it was synced: no later write exists,
/// yet it is damage, not a torn tail, because the record is whole (no
/// sector of it is missing). Before the rule it was silently dropped.
#[test]
fn bit_rot_in_the_last_synced_record_stops_recovery() {
    let d = Dir::new("rot");
    let mut wal = fill(&d.0, 8192, 5);
    let last = wal.offset as usize;
    wal.append(RecordKind::Entries, &[7u8; 700], 6).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let path = segment_paths(&d.0).pop().unwrap();
    let mut buf = std::fs::read(&path).unwrap();
    // The entry record follows the batch record of its own batch.
    let record = last + BATCH_BYTES;
    buf[record + 400] ^= 0x04;
    std::fs::write(&path, &buf).unwrap();
    match Wal::open(&d.0, 8192) {
        Err(StorageError::Corrupt {
            path: p, offset, ..
        }) => assert_eq!((p, offset), (path.clone(), record as u64)),
        Err(e) => panic!("wrong error: {e}"),
        Ok((_, records)) => panic!(
            "a synced record was dropped: {} entries recovered",
            entry_payloads(&records).len()
        ),
    }
    assert_eq!(std::fs::read(&path).unwrap(), buf, "nothing was modified");
}

/// A hole in a batch that a later batch follows was synced before that
/// batch was written: damage, wherever it is.
#[test]
fn a_hole_before_a_later_batch_is_damage() {
    let d = Dir::new("hole-synced");
    let mut wal = fill(&d.0, 16384, 1);
    for i in 2..=6 {
        wal.append(RecordKind::Entries, &vec![i as u8; 300], i)
            .unwrap();
    }
    wal.sync().unwrap();
    wal.append(RecordKind::Entries, b"later", 7).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let path = segment_paths(&d.0).pop().unwrap();
    let mut buf = std::fs::read(&path).unwrap();
    buf[SECTOR..2 * SECTOR].fill(0);
    std::fs::write(&path, &buf).unwrap();
    match Wal::open(&d.0, 16384) {
        Err(StorageError::Corrupt { path: p, .. }) => assert_eq!(p, path),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a hole in synced data must stop recovery"),
    }
}

#[test]
fn flipped_bit_before_valid_records_is_reported_with_file_and_offset() {
    let d = Dir::new("flip");
    drop(fill(&d.0, 4096, 5));
    let path = segment_paths(&d.0).pop().unwrap();
    let mut buf = std::fs::read(&path).unwrap();
    // Batch record (24 bytes), hard state (16), then the first entry.
    buf[44] ^= 0x10;
    std::fs::write(&path, &buf).unwrap();
    match Wal::open(&d.0, 4096) {
        Err(StorageError::Corrupt {
            path: p, offset, ..
        }) => {
            assert_eq!(p, path);
            assert_eq!(offset, 40);
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("damage must stop recovery"),
    }
    // Nothing was modified by the failed open.
    assert_eq!(std::fs::read(&path).unwrap(), buf);
}

#[test]
fn damage_in_an_older_segment_is_never_taken_for_a_torn_tail() {
    let d = Dir::new("older");
    drop(fill(&d.0, 256, 30));
    let first = segment_paths(&d.0).remove(0);
    let mut buf = std::fs::read(&first).unwrap();
    let last_record = buf.iter().rposition(|b| *b != 0).unwrap();
    buf[last_record] ^= 0x01;
    std::fs::write(&first, &buf).unwrap();
    assert!(matches!(
        Wal::open(&d.0, 256),
        Err(StorageError::Corrupt { .. })
    ));
}

#[test]
fn a_missing_middle_segment_stops_recovery() {
    let d = Dir::new("missing");
    drop(fill(&d.0, 256, 30));
    let paths = segment_paths(&d.0);
    std::fs::remove_file(&paths[1]).unwrap();
    match Wal::open(&d.0, 256) {
        Err(StorageError::MissingSegment { expected_seq, .. }) => assert_eq!(expected_seq, 1),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a gap must stop recovery"),
    }
}

#[test]
fn oversized_records_are_refused() {
    let d = Dir::new("big");
    let (mut wal, _) = Wal::open(&d.0, 256).unwrap();
    assert!(matches!(
        wal.append(RecordKind::Entries, &[0u8; 300], 1),
        Err(StorageError::RecordTooLarge { .. })
    ));
}

#[test]
fn decoding_arbitrary_bytes_never_panics() {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut buf = [0u8; 64];
    for round in 0..20_000 {
        for b in buf.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let len = (round % 64) as usize;
        let _ = decode_record(&buf[..len]);
    }
    let mut rec = Vec::new();
    encode_record(RecordKind::Snapshot, b"payload", &mut rec);
    for cut in 0..rec.len() {
        assert!(!matches!(decode_record(&rec[..cut]), Decoded::Record(..)) || cut >= 8 + 8);
    }
}

/// A rotation created the next segment, then the power failed before its
/// head (the repeated hard state) was synced. Reopened, the WAL must write
/// that head again, or releasing the older segments loses the hard state.
/// (Found by the power-cut test.)
#[test]
fn an_empty_newest_segment_gets_its_head_again() {
    let d = Dir::new("head");
    drop(fill(&d.0, 256, 30));
    let paths = segment_paths(&d.0);
    let name = paths[paths.len() - 1]
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    let (seq, _) = parse_segment_name(name).unwrap();
    std::fs::write(d.0.join(segment_name(seq + 1, 31)), [0u8; 256]).unwrap();
    let (mut wal, _) = Wal::open(&d.0, 256).unwrap();
    wal.sync().unwrap();
    wal.release_through(30, 1).unwrap();
    assert_eq!(wal.segment_count(), 1);
    drop(wal);
    let (_, records) = Wal::open(&d.0, 256).unwrap();
    assert!(
        records
            .iter()
            .any(|r| r.kind == RecordKind::HardState && r.payload == b"hs"),
        "the hard state went with the released segments: {records:?}"
    );
}
