//! A deadline queue: one task sleeps until the earliest deadline instead of one timer per item.
//!
//! Token expiry (and, later, presence grace periods and typing TTLs) need a timer per socket
//! or per user. A `tokio::time::sleep` per item costs a task and a timer-wheel entry each;
//! one ordered set and one consumer task keep the per-item cost at one small set entry.

use std::{collections::BTreeSet, sync::Mutex};

use tokio::{sync::Notify, time::Instant};

/// Items ordered by deadline, consumed by one task calling [`DeadlineQueue::next_due`].
#[derive(Debug)]
pub struct DeadlineQueue<T> {
    /// A std mutex: it is never held across an await and the critical sections are tiny.
    items: Mutex<BTreeSet<(Instant, T)>>,
    /// Wakes the consumer when a new earliest deadline is inserted.
    wake: Notify,
}

impl<T: Ord + Clone> Default for DeadlineQueue<T> {
    fn default() -> Self {
        DeadlineQueue { items: Mutex::new(BTreeSet::new()), wake: Notify::new() }
    }
}

impl<T: Ord + Clone> DeadlineQueue<T> {
    /// Schedules `item` at `at`.
    pub fn insert(&self, at: Instant, item: T) {
        let mut items = self.lock();
        let earliest = items.first().map(|(t, _)| *t);
        items.insert((at, item));
        drop(items);
        if earliest.is_none_or(|e| at < e) {
            self.wake.notify_one();
        }
    }

    /// Unschedules `item` at `at`; `false` if it was not scheduled (already due or never was).
    pub fn remove(&self, at: Instant, item: &T) -> bool {
        self.lock().remove(&(at, item.clone()))
    }

    /// Whether nothing is scheduled.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Waits until at least one item is due, then removes and returns every due item in
    /// deadline order. Meant for a single consumer.
    pub async fn next_due(&self) -> Vec<T> {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            // Register before looking, so an insert between the look and the wait still wakes us.
            notified.as_mut().enable();
            let next = {
                let mut items = self.lock();
                let now = Instant::now();
                let mut due = Vec::new();
                while items.first().is_some_and(|(t, _)| *t <= now) {
                    if let Some((_, item)) = items.pop_first() {
                        due.push(item);
                    }
                }
                if !due.is_empty() {
                    return due;
                }
                items.first().map(|(t, _)| *t)
            };
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = &mut notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<(Instant, T)>> {
        // A panic while holding this lock cannot leave the set half-updated (BTreeSet ops are
        // atomic from our point of view), so a poisoned lock is still usable.
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn items_come_out_in_deadline_order_and_removed_ones_never() {
        let q = DeadlineQueue::default();
        let now = Instant::now();
        q.insert(now + Duration::from_secs(3), "c");
        q.insert(now + Duration::from_secs(1), "a");
        q.insert(now + Duration::from_secs(2), "b");
        assert!(q.remove(now + Duration::from_secs(2), &"b"));
        assert_eq!(q.next_due().await, vec!["a"]);
        assert_eq!(Instant::now() - now, Duration::from_secs(1));
        assert_eq!(q.next_due().await, vec!["c"]);
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_insert_wakes_a_waiting_consumer() {
        let q = std::sync::Arc::new(DeadlineQueue::default());
        let now = Instant::now();
        q.insert(now + Duration::from_secs(60), 2);
        let consumer = tokio::spawn({
            let q = q.clone();
            async move { q.next_due().await }
        });
        tokio::task::yield_now().await;
        q.insert(now + Duration::from_secs(5), 1);
        assert_eq!(consumer.await.unwrap(), vec![1]);
        assert_eq!(Instant::now() - now, Duration::from_secs(5));
    }
}
