//! The etcd v3 gRPC shim.
