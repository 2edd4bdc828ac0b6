//! The QUIC client SDK.
