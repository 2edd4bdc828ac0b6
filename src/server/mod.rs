//! The node: drives the state machine and serves clients.
