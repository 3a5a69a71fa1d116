//! The event log on a single node: a bounded buffer in memory, read by each group at its pace.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::Duration,
};

use super::{Batch, EventLog};
use crate::backend::{BoxFuture, BusError};

#[derive(Debug, Default)]
struct Inner {
    /// (sequence number, event JSON), oldest first.
    entries: VecDeque<(u64, String)>,
    /// The next event's sequence number.
    next: u64,
    /// Each group's next sequence number to read.
    groups: HashMap<String, u64>,
}

impl Inner {
    /// Drops what every group has read (everything, with no group: nobody would read it).
    fn release(&mut self) {
        let oldest_needed = self.groups.values().copied().min().unwrap_or(self.next);
        while self.entries.front().is_some_and(|(seq, _)| *seq < oldest_needed) {
            self.entries.pop_front();
        }
    }
}

/// At most `cap` events, the oldest trimmed first (counted by the groups that had not read them).
#[derive(Debug)]
pub struct MemoryLog {
    inner: Mutex<Inner>,
    cap: usize,
}

impl MemoryLog {
    /// A log keeping at most `cap` events.
    pub fn new(cap: usize) -> MemoryLog {
        MemoryLog { inner: Mutex::default(), cap: cap.max(1) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn ready<T: Send + 'static>(value: T) -> BoxFuture<'static, Result<T, BusError>> {
    Box::pin(std::future::ready(Ok(value)))
}

impl EventLog for MemoryLog {
    fn append(&self, events: Vec<String>) -> BoxFuture<'static, Result<(), BusError>> {
        let mut inner = self.lock();
        for event in events {
            let seq = inner.next;
            inner.next += 1;
            inner.entries.push_back((seq, event));
            if inner.entries.len() > self.cap {
                inner.entries.pop_front();
            }
        }
        inner.release();
        ready(())
    }

    fn subscribe(&self, group: &str, from_start: bool) -> BoxFuture<'static, Result<(), BusError>> {
        let mut inner = self.lock();
        let start = if from_start { inner.entries.front().map_or(inner.next, |(seq, _)| *seq) } else { inner.next };
        inner.groups.entry(group.to_owned()).or_insert(start);
        ready(())
    }

    fn read(&self, group: &str, _consumer: &str, count: usize) -> BoxFuture<'static, Result<Batch, BusError>> {
        let mut inner = self.lock();
        let Some(&from) = inner.groups.get(group) else {
            return Box::pin(std::future::ready(Err(BusError::Unavailable(format!("no group {group}")))));
        };
        let oldest = inner.entries.front().map_or(inner.next, |(seq, _)| *seq);
        let dropped = oldest.saturating_sub(from);
        let entries: Vec<(String, String)> = inner
            .entries
            .iter()
            .filter(|(seq, _)| *seq >= from)
            .take(count)
            .map(|(seq, event)| (seq.to_string(), event.clone()))
            .collect();
        let next = entries.last().and_then(|(seq, _)| seq.parse::<u64>().ok()).map_or(from.max(oldest), |s| s + 1);
        inner.groups.insert(group.to_owned(), next);
        inner.release();
        ready(Batch { entries, dropped })
    }

    /// One process, one consumer per group: nothing is ever pending for someone else.
    fn claim(&self, _: &str, _: &str, _: Duration, _: usize) -> BoxFuture<'static, Result<Batch, BusError>> {
        ready(Batch::default())
    }

    /// A batch read is the dispatcher's to keep: trimming the buffer does not take it back.
    fn keep(&self, _: &str, _: &str, ids: Vec<String>) -> BoxFuture<'static, Result<Vec<String>, BusError>> {
        ready(ids)
    }

    fn ack(&self, _: &str, _: Vec<String>) -> BoxFuture<'static, Result<(), BusError>> {
        ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(range: std::ops::Range<u32>) -> Vec<String> {
        range.map(|i| format!("e{i}")).collect()
    }

    #[tokio::test]
    async fn groups_read_at_their_pace_and_count_what_the_cap_took() {
        let log = MemoryLog::new(5);
        log.append(events(0..3)).await.unwrap(); // before any group: not kept for anyone
        log.subscribe("a", false).await.unwrap();
        log.subscribe("b", false).await.unwrap();
        log.append(events(3..6)).await.unwrap();
        let a = log.read("a", "r", 2).await.unwrap();
        assert_eq!(a.entries.iter().map(|(_, e)| e.as_str()).collect::<Vec<_>>(), ["e3", "e4"]);
        assert_eq!(a.dropped, 0);
        log.append(events(6..12)).await.unwrap(); // b is 6 behind with a cap of 5: 1 lost for b
        let b = log.read("b", "r", 100).await.unwrap();
        assert_eq!(b.dropped, 4, "e3..e6 were trimmed before b read them");
        assert_eq!(b.entries.len(), 5);
        let a = log.read("a", "r", 100).await.unwrap();
        assert_eq!(a.dropped, 2, "e5 and e6");
        assert_eq!(a.entries.first().map(|(_, e)| e.as_str()), Some("e7"));
        assert!(log.read("a", "r", 100).await.unwrap().entries.is_empty());
        assert!(log.read("nobody", "r", 1).await.is_err());
        assert!(log.lock().entries.is_empty(), "everything read by every group is released");
    }
}
