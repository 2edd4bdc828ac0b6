//! Sans-IO Raft core (lands with the Raft issue).
