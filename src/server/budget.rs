//! Bytes in flight from clients: what a connection, and the node as a
//! whole, may hold of requests that are arriving or being served.
//!
//! Every byte of a request body is charged as it arrives (the body is
//! allocated as it arrives too, never from the declared length), and the
//! charge is held until the call is answered. A connection first spends its
//! own small share ([`CONN_SHARE`]), which nobody else can take, so a client
//! sending ordinary requests always gets through however many others stall;
//! beyond it, it borrows from the node's pool ([`NODE_POOL`]), up to
//! [`CONN_CAP`] in all. A charge that does not fit is refused at once (the
//! call gets etcd's `too many requests`): nothing ever waits for budget, so
//! stalled senders cannot deadlock the ones that would free it.
//!
//! With QUIC's connection receive window (unread bytes quinn buffers) this
//! bounds request memory to `connections × (window + CONN_SHARE) +
//! NODE_POOL`.
//!
//! Invariant: every charge is released exactly once ([`Charge`] drops it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes a connection may hold without touching the node's pool: a few
/// ordinary requests.
pub const CONN_SHARE: u64 = 256 * 1024;
/// Bytes one connection may hold in all: two of the largest requests.
pub const CONN_CAP: u64 = 2 * qed_wire::frame::MAX_CLIENT_FRAME as u64;
/// Bytes all connections together may borrow beyond their shares.
pub const NODE_POOL: u64 = 64 * 1024 * 1024;

/// Takes `n` from `used` if that keeps it at most `limit`.
fn take(used: &AtomicU64, n: u64, limit: u64) -> bool {
    used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
        u.checked_add(n).filter(|total| *total <= limit)
    })
    .is_ok()
}

/// The node's pool, shared by its connections.
#[derive(Debug)]
pub struct NodeBudget {
    used: AtomicU64,
    limit: u64,
}

impl NodeBudget {
    pub fn new(limit: u64) -> Arc<NodeBudget> {
        Arc::new(NodeBudget {
            used: AtomicU64::new(0),
            limit,
        })
    }

    /// Bytes borrowed from the pool now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

/// One connection's budget.
#[derive(Debug)]
pub struct ConnBudget {
    node: Arc<NodeBudget>,
    /// Bytes of this connection's share in use.
    own: AtomicU64,
    /// Bytes in use in all (share and borrowed).
    total: AtomicU64,
    share: u64,
    cap: u64,
}

impl ConnBudget {
    pub fn new(node: Arc<NodeBudget>) -> Arc<ConnBudget> {
        Self::with_limits(node, CONN_SHARE, CONN_CAP)
    }

    pub fn with_limits(node: Arc<NodeBudget>, share: u64, cap: u64) -> Arc<ConnBudget> {
        Arc::new(ConnBudget {
            node,
            own: AtomicU64::new(0),
            total: AtomicU64::new(0),
            share,
            cap,
        })
    }

    /// An empty charge against this connection, to grow as bytes arrive.
    pub fn charge(self: &Arc<Self>) -> Charge {
        Charge {
            conn: self.clone(),
            own: 0,
            borrowed: 0,
        }
    }
}

/// Bytes held by one call; released when dropped.
#[derive(Debug)]
pub struct Charge {
    conn: Arc<ConnBudget>,
    own: u64,
    borrowed: u64,
}

impl Charge {
    /// Adds `n` bytes: from the connection's share if it has room, else
    /// borrowed from the node's pool. `false` (and nothing charged) when
    /// neither fits or the connection is at its cap.
    pub fn add(&mut self, n: u64) -> bool {
        let conn = &*self.conn;
        if !take(&conn.total, n, conn.cap) {
            return false;
        }
        if take(&conn.own, n, conn.share) {
            self.own += n;
            return true;
        }
        if take(&conn.node.used, n, conn.node.limit) {
            self.borrowed += n;
            return true;
        }
        conn.total.fetch_sub(n, Ordering::AcqRel);
        false
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        let conn = &*self.conn;
        conn.own.fetch_sub(self.own, Ordering::AcqRel);
        conn.node.used.fetch_sub(self.borrowed, Ordering::AcqRel);
        conn.total
            .fetch_sub(self.own + self.borrowed, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_kept_and_the_pool_is_bounded() {
        let node = NodeBudget::new(100);
        let a = ConnBudget::with_limits(node.clone(), 10, 80);
        let b = ConnBudget::with_limits(node.clone(), 10, 80);
        let mut big = a.charge();
        assert!(big.add(10), "the share");
        assert!(big.add(70), "borrowed");
        assert!(!big.add(1), "a connection stops at its cap");
        assert_eq!(node.used(), 70);
        let mut other = b.charge();
        assert!(other.add(10), "b's share is b's alone");
        assert!(other.add(30), "what is left of the pool");
        assert!(!other.add(1), "the pool is spent");
        assert_eq!(node.used(), 100);
        drop(big);
        assert_eq!(node.used(), 30);
        let mut again = a.charge();
        assert!(
            again.add(10) && again.add(70),
            "a's share and cap are free again"
        );
        drop((again, other));
        assert_eq!(node.used(), 0);
        assert_eq!(a.total.load(Ordering::Acquire), 0);
        assert_eq!(b.own.load(Ordering::Acquire), 0);
    }
}
