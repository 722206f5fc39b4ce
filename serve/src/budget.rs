//! The server-wide budget of request-body bytes in memory (`--max-inflight-bytes`).
//!
//! Each request reserves its declared Content-Length before reading a byte (or, without
//! one, each chunk before it is buffered) and holds the reservation until its response
//! is built; a request that does not fit gets 503 with `Retry-After` at once, before its
//! body is read. So many concurrent uploads cannot together hold more than the budget,
//! whatever each one's size limit allows.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::error::ServeError;

/// Bytes of request bodies the server holds at once.
#[derive(Debug)]
pub struct ByteBudget {
    limit: usize,
    used: AtomicUsize,
}

impl ByteBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes reserved now.
    /// The budget in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// An empty reservation, grown as bytes arrive.
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: Arc::clone(self),
            bytes: 0,
        }
    }

    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }
}

/// Bytes one request holds of the budget; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<ByteBudget>,
    bytes: usize,
}

impl Reservation {
    /// Holds at least `total` bytes: 503 (`busy`) when the budget cannot give them.
    pub fn grow_to(&mut self, total: usize) -> Result<(), ServeError> {
        if total <= self.bytes {
            return Ok(());
        }
        if !self.budget.take(total - self.bytes) {
            return Err(ServeError::Busy {
                limit: self.budget.limit,
            });
        }
        self.bytes = total;
        Ok(())
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Gives every byte back (the reservation can grow again).
    pub fn release(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
        self.bytes = 0;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_the_limit_and_return_it() {
        let budget = ByteBudget::new(100);
        let mut a = budget.reservation();
        a.grow_to(60).unwrap();
        let mut b = budget.reservation();
        assert!(matches!(
            b.grow_to(41),
            Err(ServeError::Busy { limit: 100 })
        ));
        b.grow_to(40).unwrap();
        assert_eq!(budget.used(), 100);
        a.grow_to(50).unwrap(); // never shrinks
        assert_eq!(a.bytes(), 60);
        drop(a);
        assert_eq!(budget.used(), 40);
        b.grow_to(100).unwrap();
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
