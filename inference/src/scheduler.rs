//! Admission: at most `max_concurrent` requests generate at once (the places of the batch,
//! [`crate::batch`]); up to `max_queue` more wait in
//! FIFO order; beyond that a request is refused at once (the server answers 503 + Retry-After).
//!
//! A [`Slot`] is the right to generate. It is released when dropped, which happens when the
//! generation thread ends — including when the client disconnected and generation stopped early.
use crate::error::ApiError;
use crate::metrics::Metrics;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Scheduler {
    slots: Arc<Semaphore>,
    max_concurrent: usize,
    max_queue: usize,
    waiting: AtomicUsize,
    metrics: Arc<Metrics>,
}

/// A held generation slot.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
    }
}

/// Decrements the waiting count however the wait ends (granted, or the request future dropped).
struct Waiting<'a>(&'a Scheduler);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
        self.0.metrics.queue_depth.dec();
    }
}

impl Scheduler {
    pub fn new(max_concurrent: usize, max_queue: usize, metrics: Arc<Metrics>) -> Self {
        let max_concurrent = max_concurrent.max(1);
        metrics.batch_size.set(max_concurrent as i64);
        Scheduler {
            slots: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            max_queue,
            waiting: AtomicUsize::new(0),
            metrics,
        }
    }

    /// Waits for a slot, or fails at once when the queue is full.
    pub async fn acquire(&self) -> Result<Slot, ApiError> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(self.slot(permit));
        }
        let queued = self.waiting.fetch_add(1, Ordering::SeqCst);
        self.metrics.queue_depth.inc();
        let guard = Waiting(self);
        if queued >= self.max_queue {
            drop(guard);
            return Err(ApiError::Overloaded { in_flight: self.in_flight(), queued });
        }
        let permit = self.slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        drop(guard);
        Ok(self.slot(permit))
    }

    fn slot(&self, permit: OwnedSemaphorePermit) -> Slot {
        self.metrics.in_flight.inc();
        Slot { _permit: permit, metrics: self.metrics.clone() }
    }

    pub fn in_flight(&self) -> usize {
        self.max_concurrent - self.slots.available_permits()
    }

    /// Places free in the batch now.
    pub fn free(&self) -> usize {
        self.slots.available_permits()
    }

    /// The batch's size.
    pub fn capacity(&self) -> usize {
        self.max_concurrent
    }

    pub fn queued(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn bounded_queue_then_refusal_then_release() {
        let s = Arc::new(Scheduler::new(1, 1, Arc::new(Metrics::new("t"))));
        let first = s.acquire().await.unwrap();
        assert_eq!(s.in_flight(), 1);
        let s2 = s.clone();
        let waiter = tokio::spawn(async move { s2.acquire().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(s.queued(), 1);
        match s.acquire().await {
            Err(ApiError::Overloaded { queued, .. }) => assert_eq!(queued, 1),
            other => panic!("expected Overloaded, got {:?}", other.map(|_| ())),
        }
        assert_eq!(s.queued(), 1, "a refused request must not stay counted");
        drop(first);
        waiter.await.unwrap().unwrap();
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.queued(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_leaves_the_queue() {
        let s = Arc::new(Scheduler::new(1, 4, Arc::new(Metrics::new("t"))));
        let _held = s.acquire().await.unwrap();
        let r = tokio::time::timeout(Duration::from_millis(30), s.acquire()).await;
        assert!(r.is_err());
        assert_eq!(s.queued(), 0);
    }
}
