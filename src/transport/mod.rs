//! QUIC endpoints and TLS.
