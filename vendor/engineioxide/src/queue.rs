//! The socket's outgoing packet queue: a bounded multi-producer, single-consumer queue that
//! allocates as packets arrive.
//!
//! It replaces `tokio::sync::mpsc` for this one use because of memory: tokio's channel allocates
//! its first block of 32 slots when it is created, whatever its capacity, so every socket paid for
//! 32 `PacketBuf` slots (5.4 KB with 168-byte slots) while idle. Here an idle socket holds an
//! empty `VecDeque` (no allocation) or, once it has sent something, a few slots.
//!
//! The API is the subset of tokio's that engineioxide uses, with tokio's semantics where
//! engineioxide depends on them: `try_send` and `try_reserve` fail with `Full` at capacity
//! (reserved places count) and with `Closed` once the receiver closed or is gone; the receiver
//! still drains what was queued before `close` and then gets `None`, as it does once every sender
//! is gone. Two differences, which no caller depends on (the receiver is closed only when the
//! session is, and nothing reads it afterwards): a permit's value is dropped if the receiver
//! closed after the place was taken (tokio still delivers it), and a `try_send` may take a place
//! freed while a `send` waits (tokio gives it to the waiter).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
};

use tokio::sync::{
    Notify,
    mpsc::error::{TryRecvError, TrySendError},
};

/// Queue capacity kept once the queue is empty again: a socket that once had a burst queued
/// (more than [`SHRINK_ABOVE`] slots) gives the memory back, and one that sends a few packets at
/// a time keeps reusing its slots instead of reallocating them at every burst.
const KEPT_CAPACITY: usize = 4;
const SHRINK_ABOVE: usize = 16;

struct State<T> {
    items: VecDeque<T>,
    /// Places taken by permits not yet used.
    reserved: usize,
    /// The receiver closed (or was dropped): nothing more is accepted.
    closed: bool,
    /// Live senders; at 0 the receiver ends once it has drained the queue.
    senders: usize,
    /// The receiver's waker, when it waits for a packet.
    rx_waker: Option<Waker>,
    /// A [`Sender::send`] waits for a place: the next one freed wakes it (`space`). Only then,
    /// so that taking a packet off the queue costs no wake-up bookkeeping.
    space_wanted: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    /// Woken when the receiver closes (for [`Sender::closed`]).
    closed: Notify,
    /// Woken when a place frees up (for [`Sender::send`]).
    space: Notify,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing runs user code under this lock, so a poisoned lock still holds a valid state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A bounded queue of `capacity` items (tokio's `mpsc::channel`).
pub(crate) fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    assert!(capacity > 0, "queue capacity must be above zero");
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            reserved: 0,
            closed: false,
            senders: 1,
            rx_waker: None,
            space_wanted: false,
        }),
        capacity,
        closed: Notify::new(),
        space: Notify::new(),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.lock();
            state.senders -= 1;
            if state.senders > 0 {
                return;
            }
            state.rx_waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("Sender")
            .field("queued", &state.items.len())
            .field("reserved", &state.reserved)
            .field("capacity", &self.shared.capacity)
            .field("closed", &state.closed)
            .finish()
    }
}

/// Pushes `value` and hands back the receiver's waker, to wake outside the lock.
fn push<T>(state: &mut State<T>, value: T) -> Option<Waker> {
    state.items.push_back(value);
    state.rx_waker.take()
}

/// Whether one more value may take a place: `Closed` or `Full` as tokio's `try_send` answers.
fn admit<T>(state: &State<T>, capacity: usize) -> Result<(), TrySendError<()>> {
    if state.closed {
        Err(TrySendError::Closed(()))
    } else if state.items.len() + state.reserved >= capacity {
        Err(TrySendError::Full(()))
    } else {
        Ok(())
    }
}

impl<T> Sender<T> {
    /// Queues `value` if there is a free place.
    pub(crate) fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        self.push(value, false)
    }

    /// [`Sender::try_send`]; with `want_space`, a `Full` answer also asks for a wake-up on
    /// `space` when a place frees up (in the same critical section, so none is missed).
    fn push(&self, value: T, want_space: bool) -> Result<(), TrySendError<T>> {
        let waker = {
            let mut state = self.shared.lock();
            match admit(&state, self.shared.capacity) {
                Ok(()) => push(&mut state, value),
                Err(TrySendError::Closed(())) => return Err(TrySendError::Closed(value)),
                Err(TrySendError::Full(())) => {
                    state.space_wanted |= want_space;
                    return Err(TrySendError::Full(value));
                }
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Queues `value`, waiting for a free place; `Err(value)` once the receiver closed.
    pub(crate) async fn send(&self, mut value: T) -> Result<(), T> {
        loop {
            let space = self.shared.space.notified();
            tokio::pin!(space);
            // Registered before trying, so a place freed in between is not missed.
            space.as_mut().enable();
            match self.push(value, true) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(v)) => return Err(v),
                Err(TrySendError::Full(v)) => value = v,
            }
            tokio::select! {
                _ = space => {}
                _ = self.closed() => {}
            }
        }
    }

    /// Takes a place for one value, to be used by [`Permit::send`].
    pub(crate) fn try_reserve(&self) -> Result<Permit<'_, T>, TrySendError<()>> {
        let mut state = self.shared.lock();
        admit(&state, self.shared.capacity)?;
        state.reserved += 1;
        Ok(Permit {
            shared: &self.shared,
            used: false,
        })
    }

    /// Free places (reserved ones are taken).
    pub(crate) fn capacity(&self) -> usize {
        let state = self.shared.lock();
        self.shared.capacity - state.items.len() - state.reserved
    }

    pub(crate) fn max_capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Whether the receiver closed or is gone.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// Resolves once the receiver closed or is gone.
    pub(crate) async fn closed(&self) {
        loop {
            let closed = self.shared.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.is_closed() {
                return;
            }
            closed.await;
        }
    }
}

/// A place taken in the queue ([`Sender::try_reserve`]); dropped unused, it frees the place.
pub(crate) struct Permit<'a, T> {
    shared: &'a Shared<T>,
    used: bool,
}

impl<T> Permit<'_, T> {
    /// Queues `value` in the reserved place (dropped if the receiver closed meanwhile).
    pub(crate) fn send(mut self, value: T) {
        self.used = true;
        let waker = {
            let mut state = self.shared.lock();
            state.reserved -= 1;
            if state.closed {
                return;
            }
            push(&mut state, value)
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Drop for Permit<'_, T> {
    fn drop(&mut self) {
        if !self.used {
            let mut state = self.shared.lock();
            state.reserved -= 1;
            if std::mem::take(&mut state.space_wanted) {
                drop(state);
                self.shared.space.notify_waiters();
            }
        }
    }
}

impl<T> std::fmt::Debug for Permit<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").finish()
    }
}

pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("Receiver")
            .field("queued", &state.items.len())
            .field("closed", &state.closed)
            .finish()
    }
}

impl<T> Receiver<T> {
    /// Takes the next value (waking a waiting [`Sender::send`]), or says why there is none. With
    /// `cx`, an empty queue keeps its waker, under the same lock a push takes it from.
    fn next(&mut self, cx: Option<&mut Context<'_>>) -> Result<T, TryRecvError> {
        let mut state = self.shared.lock();
        if let Some(value) = state.items.pop_front() {
            if state.items.is_empty() && state.items.capacity() > SHRINK_ABOVE {
                state.items.shrink_to(KEPT_CAPACITY);
            }
            let wake_sender = std::mem::take(&mut state.space_wanted);
            drop(state);
            if wake_sender {
                self.shared.space.notify_waiters();
            }
            return Ok(value);
        }
        if state.closed || state.senders == 0 {
            return Err(TryRecvError::Disconnected);
        }
        if let Some(cx) = cx {
            match &mut state.rx_waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
        }
        Err(TryRecvError::Empty)
    }

    /// The next value; `None` once closed (or every sender is gone) and drained.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        match self.next(Some(cx)) {
            Ok(value) => Poll::Ready(Some(value)),
            Err(TryRecvError::Disconnected) => Poll::Ready(None),
            Err(TryRecvError::Empty) => Poll::Pending,
        }
    }

    #[cfg(any(test, feature = "__test_harness"))]
    pub(crate) async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    #[cfg(test)]
    pub(crate) fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.next(None)
    }

    /// Refuses further values; what is queued can still be received.
    pub(crate) fn close(&mut self) {
        self.shared.lock().closed = true;
        self.shared.closed.notify_waiters();
        self.shared.space.notify_waiters();
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.close();
        // Dropped with the receiver, as tokio's channel does: nothing can read them any more.
        let items = std::mem::take(&mut self.shared.lock().items);
        drop(items);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allocates_nothing_until_used_and_gives_bursts_back() {
        let (tx, mut rx) = channel::<u64>(1024);
        assert_eq!(rx.shared.lock().items.capacity(), 0);
        for i in 0..100 {
            tx.try_send(i).unwrap();
        }
        assert!(rx.shared.lock().items.capacity() >= 100);
        for i in 0..100 {
            assert_eq!(rx.try_recv().unwrap(), i);
        }
        assert!(rx.shared.lock().items.capacity() <= KEPT_CAPACITY);
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    }

    #[test]
    fn bounded_with_reserved_places_counted() {
        let (tx, mut rx) = channel::<u8>(2);
        let permit = tx.try_reserve().unwrap();
        tx.try_send(1).unwrap();
        assert!(matches!(tx.try_send(2), Err(TrySendError::Full(2))));
        assert!(matches!(tx.try_reserve(), Err(TrySendError::Full(()))));
        assert_eq!(tx.capacity(), 0);
        assert_eq!(tx.max_capacity(), 2);
        permit.send(3);
        assert_eq!(rx.try_recv().unwrap(), 1);
        assert_eq!(rx.try_recv().unwrap(), 3);
        // An unused permit frees its place.
        drop(tx.try_reserve().unwrap());
        assert_eq!(tx.capacity(), 2);
    }

    #[test]
    fn close_refuses_new_values_but_drains_queued_ones() {
        let (tx, mut rx) = channel::<u8>(4);
        tx.try_send(1).unwrap();
        let permit = tx.try_reserve().unwrap();
        rx.close();
        assert!(tx.is_closed());
        assert!(matches!(tx.try_send(2), Err(TrySendError::Closed(2))));
        assert!(matches!(tx.try_reserve(), Err(TrySendError::Closed(()))));
        permit.send(5); // dropped: the receiver closed after the place was taken
        assert_eq!(rx.try_recv().unwrap(), 1);
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Disconnected)));
    }

    #[tokio::test]
    async fn recv_wakes_on_send_and_ends_when_senders_are_gone() {
        let (tx, mut rx) = channel::<u8>(4);
        let tx2 = tx.clone();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(v) = rx.recv().await {
                got.push(v);
            }
            got
        });
        tokio::task::yield_now().await;
        tx.try_send(1).unwrap();
        tx2.try_send(2).unwrap();
        drop(tx);
        drop(tx2);
        let got = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, vec![1, 2]);
    }

    #[tokio::test]
    async fn send_waits_for_a_place_and_closed_resolves() {
        let (tx, mut rx) = channel::<u8>(1);
        tx.try_send(1).unwrap();
        let tx = Arc::new(tx);
        let sender = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.send(2).await })
        };
        tokio::task::yield_now().await;
        assert!(!sender.is_finished());
        assert_eq!(rx.recv().await, Some(1));
        tokio::time::timeout(Duration::from_secs(5), sender)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(rx.recv().await, Some(2));

        let closed = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.closed().await })
        };
        tokio::task::yield_now().await;
        assert!(!closed.is_finished());
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), closed)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(tx.send(3).await, Err(3));
    }
}
