//! Pure MVCC key space (lands with the foundation issue).
