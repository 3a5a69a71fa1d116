//! Heartbeats of every v4 session of an engine, driven by one task and one timer wheel.
//!
//! The protocol's heartbeat (ping every `ping_interval`; a session whose pong has not come
//! `ping_timeout` after its ping is closed) used to be a task per socket with its own timers and
//! a pong channel: ~1.3 KB of task and future per idle connection, and as many timers. Here each
//! socket has one entry in a [`DelayQueue`] (its next ping, or the deadline of its pong), a pong
//! flag and the entry's key, and one task wakes when the earliest entry is due.
//!
//! Timing is the protocol's and the old task's: the first ping one interval after the session
//! opened, then one every interval (fixed rate: measured from the ping, not from the pong), and a
//! session whose pong has not come `ping_timeout` after its ping is closed. (One difference:
//! with a timeout longer than the interval, a pong that comes after the interval is over is
//! looked at when the timeout is, so the next ping waits until then; the old task sent it as
//! soon as the pong came. Both stay within the client's own deadline, interval + timeout.)
//! Pings are paused while the session upgrades. A pong counts for the ping before it: the flag is cleared when a ping is sent, so pongs sent
//! ahead (or twice) cannot stand in for a later one that never comes.

use std::{
    future::poll_fn,
    sync::{Arc, Mutex, MutexGuard, OnceLock, Weak, atomic::Ordering},
    task::{Poll, Waker},
    time::Duration,
};

use engineioxide_core::Packet;
use smallvec::smallvec;
use tokio::time::Instant;
use tokio_util::time::DelayQueue;

use crate::socket::{DisconnectReason, Socket};

/// The longest interval or timeout the queue is asked to wait (see [`Heartbeats::new`]).
const MAX_DELAY: Duration = Duration::from_secs(365 * 24 * 3600);

/// How soon a ping that came due during an upgrade is tried again: waiting a whole interval
/// would leave the client without a ping for two intervals, past its own deadline
/// (interval + timeout), and it would close the connection.
const UPGRADE_RETRY: Duration = Duration::from_secs(1);

/// What an entry of the queue is due for.
enum Due {
    /// Send the next ping.
    Ping,
    /// Check whether the ping sent at `sent` was answered; `last` once `ping_timeout` is over.
    Pong { sent: Instant, last: bool },
}

struct Beat<D: Default + Send + Sync + 'static> {
    socket: Weak<Socket<D>>,
    due: Due,
}

pub(crate) struct Heartbeats<D: Default + Send + Sync + 'static> {
    queue: Mutex<DelayQueue<Beat<D>>>,
    interval: Duration,
    timeout: Duration,
    driver: OnceLock<()>,
    /// The driver's waker while it waits, so that dropping the engine ends it.
    driver_waker: Mutex<Option<Waker>>,
}

impl<D: Default + Send + Sync + 'static> Drop for Heartbeats<D> {
    fn drop(&mut self) {
        if let Some(waker) = self.driver_waker.get_mut().ok().and_then(Option::take) {
            waker.wake();
        }
    }
}

impl<D: Default + Send + Sync + 'static> Heartbeats<D> {
    pub(crate) fn new(interval: Duration, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(DelayQueue::new()),
            // `DelayQueue` panics on deadlines more than ~2.2 years ahead, and a panic would end
            // the driver, so every session's heartbeat; a year is as good as never.
            interval: interval.min(MAX_DELAY),
            timeout: timeout.min(MAX_DELAY),
            driver: OnceLock::new(),
            driver_waker: Mutex::new(None),
        })
    }

    fn lock(&self) -> MutexGuard<'_, DelayQueue<Beat<D>>> {
        // Nothing that can panic runs under this lock but the queue's own code.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts `socket`'s heartbeat: its first ping one interval from now.
    pub(crate) fn start(self: &Arc<Self>, socket: &Arc<Socket<D>>) {
        self.driver.get_or_init(|| {
            tokio::spawn(drive(Arc::downgrade(self)));
        });
        let mut queue = self.lock();
        // Closed before its heartbeat started (the handshake is awaited in between): nothing
        // to schedule. `close_session` cancels before it calls `stop`, which takes this lock.
        if socket.cancellation_token.is_cancelled() {
            return;
        }
        schedule(
            &mut queue,
            socket,
            Due::Ping,
            Instant::now() + self.interval,
        );
    }

    /// Stops `socket`'s heartbeat (its session is closed): its entry leaves the queue now, not
    /// when it would have come due.
    pub(crate) fn stop(&self, socket: &Socket<D>) {
        let mut queue = self.lock();
        let key = socket
            .heartbeat_key
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(key) = key {
            queue.try_remove(&key);
        }
    }

    /// Handles one entry that came due, under the queue's lock. Sockets to close go to `closing`
    /// (closing re-enters [`Heartbeats::stop`], so it happens after the lock is released), and
    /// every socket it touched to `handled`.
    fn due(
        &self,
        queue: &mut DelayQueue<Beat<D>>,
        beat: Beat<D>,
        closing: &mut Vec<Arc<Socket<D>>>,
        handled: &mut Vec<Arc<Socket<D>>>,
    ) {
        let Some(socket) = beat.socket.upgrade() else {
            return;
        };
        // Dropped after the lock is released: if this were the last reference, the socket's
        // drop (its data, the engine's close function) must not run under it.
        handled.push(socket.clone());
        // The entry is gone from the queue: so is its key.
        *socket
            .heartbeat_key
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        if socket.cancellation_token.is_cancelled() {
            return;
        }
        let now = Instant::now();
        match beat.due {
            Due::Ping if socket.is_upgrading() => {
                schedule(
                    queue,
                    &socket,
                    Due::Ping,
                    now + self.interval.min(UPGRADE_RETRY),
                );
            }
            Due::Ping => {
                socket.pong.store(false, Ordering::Relaxed);
                #[cfg(feature = "tracing")]
                tracing::trace!(sid = ?socket.id, "emitting ping");
                // A control packet, outside the byte budget; a buffer full by count means the
                // client is not reading: a heartbeat failure, as before.
                if socket
                    .internal_tx
                    .try_send(smallvec![Packet::Ping])
                    .is_err()
                {
                    closing.push(socket);
                    return;
                }
                // First look when the next ping is due or the timeout is over, whichever comes
                // first: with a timeout longer than the interval, an answered ping is followed by
                // the next one on time.
                let (check, last) = if self.interval < self.timeout {
                    (now + self.interval, false)
                } else {
                    (now + self.timeout, true)
                };
                schedule(queue, &socket, Due::Pong { sent: now, last }, check);
            }
            Due::Pong { sent, last } => {
                if socket.pong.load(Ordering::Relaxed) {
                    schedule(queue, &socket, Due::Ping, (sent + self.interval).max(now));
                } else if last {
                    #[cfg(feature = "tracing")]
                    tracing::debug!(sid = ?socket.id, "heartbeat timeout");
                    closing.push(socket);
                } else {
                    let check = sent + self.timeout;
                    schedule(queue, &socket, Due::Pong { sent, last: true }, check);
                }
            }
        }
    }
}

fn schedule<D: Default + Send + Sync + 'static>(
    queue: &mut DelayQueue<Beat<D>>,
    socket: &Arc<Socket<D>>,
    due: Due,
    at: Instant,
) {
    let key = queue.insert_at(
        Beat {
            socket: Arc::downgrade(socket),
            due,
        },
        at,
    );
    *socket
        .heartbeat_key
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(key);
}

/// The task: waits for the earliest entry, handles what is due, closes the sessions that failed.
/// It holds its [`Heartbeats`] only while it handles entries, and ends once the engine (and so
/// its [`Heartbeats`]) is gone.
async fn drive<D: Default + Send + Sync + 'static>(heartbeats: Weak<Heartbeats<D>>) {
    let mut closing = Vec::new();
    let mut handled_sockets = Vec::new();
    loop {
        let alive = poll_fn(|cx| {
            let Some(this) = heartbeats.upgrade() else {
                return Poll::Ready(false);
            };
            let mut queue = this.lock();
            // An empty queue answers `Ready(None)` with our waker kept: an insert wakes us.
            while let Poll::Ready(Some(expired)) = queue.poll_expired(cx) {
                this.due(
                    &mut queue,
                    expired.into_inner(),
                    &mut closing,
                    &mut handled_sockets,
                );
                // In batches: other tasks run between them, whatever is due at once.
                if closing.len() >= 64 || handled_sockets.len() >= 1024 {
                    break;
                }
            }
            drop(queue);
            // Sockets to close or to drop outside the lock (the ones to close were handled too).
            // Entries of sockets already gone need nothing more; the queue has our waker.
            if !handled_sockets.is_empty() {
                return Poll::Ready(true);
            }
            *this.driver_waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        handled_sockets.clear();
        if !alive {
            return;
        }
        for socket in closing.drain(..) {
            socket.close(DisconnectReason::HeartbeatTimeout);
        }
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_longest_delay_fits_the_queue() {
        // `DelayQueue::insert_at` panics past ~2.2 years; a panic would end every heartbeat.
        let mut queue = DelayQueue::new();
        queue.insert_at((), Instant::now() + MAX_DELAY + MAX_DELAY);
        let heartbeats = Heartbeats::<()>::new(Duration::MAX, Duration::MAX);
        assert_eq!(heartbeats.interval, MAX_DELAY);
        assert_eq!(heartbeats.timeout, MAX_DELAY);
    }

    #[test]
    fn an_entry_is_small() {
        // What a socket pays in the queue instead of a task (~1.3 KB).
        assert!(std::mem::size_of::<Beat<()>>() <= 32);
    }
}
