//! Sessions, locks and elections (clientv3/concurrency).
