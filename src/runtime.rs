//! The only file that names the async runtime.
//!
//! Upstream async-std is discontinued in favour of smol, and quinn's next
//! major drops its async-std runtime; keeping every spawn, timer, socket and
//! blocking-pool call behind this module keeps the move a one-file change.
