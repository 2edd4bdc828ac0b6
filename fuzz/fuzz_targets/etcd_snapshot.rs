//! What `qed snapshot restore` and `status` decode from an operator's file:
//! a bbolt database with etcd's layout. Any bytes give a store or an error,
//! never a panic; whatever imports exports again and imports the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qed::bbolt::{Db, Entry};

fuzz_target!(|data: &[u8]| {
    // The page walker alone, over every bucket and nested bucket it finds.
    if let Ok(db) = Db::open(data) {
        let mut buckets = Vec::new();
        let _ = db.for_each(db.root(), &mut |_, e| {
            if let Entry::Bucket(b) = e {
                buckets.push(b);
            }
            Ok(())
        });
        for b in buckets {
            let _ = db.for_each(b, &mut |_, _| Ok(()));
        }
    }
    // The etcd layer on top.
    if let Ok(imported) = qed::etcd_db::import(data) {
        let store = imported.histories.clone().into_store();
        let bytes = qed::etcd_db::export(&store, &imported.leases, &imported.auth, 1)
            .expect("an imported store exports");
        let again = qed::etcd_db::import(&bytes).expect("an export imports");
        let again_store = again.histories.clone().into_store();
        assert_eq!(again_store.revision(), store.revision());
        assert_eq!(again_store.compact_revision(), store.compact_revision());
        assert_eq!(again.leases, imported.leases);
        assert_eq!(again.auth, imported.auth);
        assert_eq!(again.counts.keys, imported.counts.keys);
        assert_eq!(again.counts.revisions, imported.counts.revisions);
    }
});
