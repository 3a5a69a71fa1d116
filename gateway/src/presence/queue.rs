//! The queue of presence operations between the handlers and the one task that applies them to
//! the store: bounded per tenant, served round-robin across tenants, with status changes
//! coalesced. One tenant flooding presence therefore delays its own operations only: another
//! tenant's join waits for at most one operation of each busy tenant, not for their backlog.
//!
//! Order is kept where it matters: a user's operations in a room all belong to the room's tenant
//! and stay in that tenant's FIFO. A status change already waiting for the same user and room is
//! updated in place (the latest status wins) instead of queued again.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
};

use tokio::sync::{Notify, oneshot};

use super::Status;

/// One operation on the presence store.
#[derive(Debug)]
pub enum Op {
    /// `count` more connections of `user` in `room`.
    Enter {
        /// The room.
        room: String,
        /// The user.
        user: String,
        /// Connections.
        count: u32,
        /// Their status.
        status: Status,
    },
    /// One connection fewer.
    Exit {
        /// The room.
        room: String,
        /// The user.
        user: String,
    },
    /// The user's latest status in the room (the value is looked up when it is applied).
    Status {
        /// The room.
        room: String,
        /// The user.
        user: String,
        /// Which waiting status change this is: a later entry or exit of the user in the room
        /// starts a new one, so a status set after it is never applied before it.
        seq: u64,
    },
    /// This replica holds nothing in `room` any more.
    Forget {
        /// The room.
        room: String,
    },
    /// This replica's whole share, replayed after the store lost it.
    Reconcile(super::Held),
}

/// What the worker takes next: an operation, with the status to apply for [`Op::Status`].
#[derive(Debug)]
pub struct Next {
    /// The operation.
    pub op: Op,
    /// For [`Op::Status`]: the latest status set while it waited.
    pub status: Option<Status>,
}

/// A tenant's queue is full: its presence changes are coming faster than the store takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

#[derive(Debug, Default)]
struct State {
    /// Per tenant, its operations in order.
    tenants: HashMap<String, VecDeque<Op>>,
    /// Tenants with queued operations, in serving order.
    ring: VecDeque<String>,
    /// The status change waiting for (room, user) that later ones may still update: none once
    /// an entry or exit of the user in the room was queued after it.
    open: HashMap<(String, String), u64>,
    /// The value each waiting status change (by `seq`) will apply.
    values: HashMap<u64, Status>,
    /// The next `seq`.
    next_seq: u64,
    /// Replays of the whole share: served before any tenant.
    system: VecDeque<Op>,
    /// Answered once the queue is empty.
    flushes: Vec<oneshot::Sender<()>>,
    /// Operations waiting, all queues together.
    len: usize,
}

/// The bounded, tenant-fair queue.
#[derive(Debug)]
pub struct FairQueue {
    per_tenant: usize,
    state: Mutex<State>,
    ready: Notify,
}

/// The tenant a canonical room name belongs to (`tenant:{t}` / `tenant:{t}:…`).
fn tenant_of(room: &str) -> &str {
    let rest = room.strip_prefix("tenant:").unwrap_or(room);
    rest.split(':').next().unwrap_or(rest)
}

impl FairQueue {
    /// At most `per_tenant` operations waiting per tenant (exits excepted, see [`FairQueue::push`]).
    pub fn new(per_tenant: usize) -> Self {
        FairQueue { per_tenant, state: Mutex::new(State::default()), ready: Notify::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `room`'s tenant can queue more (an entry, a status change).
    pub fn has_room(&self, room: &str) -> bool {
        self.lock().tenants.get(tenant_of(room)).is_none_or(|q| q.len() < self.per_tenant)
    }

    /// Queues `op`. Only status changes are refused when the tenant's queue is full: exits and
    /// forgets must never be lost (that would leave presence behind), and entries come from
    /// joins, which check [`FairQueue::has_room`] before they change anything (so the bound is
    /// exceeded by at most the joins already under way). A status change for a user and room
    /// that already has one waiting replaces its value and takes no new place.
    pub fn push(&self, op: Op, status: Option<Status>) -> Result<(), Full> {
        let mut state = self.lock();
        let State { tenants, ring, open, values, system, next_seq, .. } = &mut *state;
        let room = match &op {
            Op::Reconcile(_) => {
                // The replay is a snapshot of this replica's whole share, taken after every
                // operation queued so far was recorded locally: it supersedes them (applied
                // after it, they would count twice).
                tenants.clear();
                ring.clear();
                open.clear();
                values.clear();
                system.push_back(op);
                state.len = state.system.len();
                crate::metrics::presence_queue(state.len);
                drop(state);
                self.ready.notify_one();
                return Ok(());
            }
            Op::Enter { room, .. } | Op::Exit { room, .. } | Op::Status { room, .. } | Op::Forget { room } => room,
        };
        let tenant = tenant_of(room).to_owned();
        let queued = tenants.get(&tenant).map_or(0, VecDeque::len);
        let mut op = op;
        match (&mut op, status) {
            (Op::Status { room, user, seq }, Some(status)) => {
                let key = (room.clone(), user.clone());
                if let Some(waiting) = open.get(&key) {
                    values.insert(*waiting, status);
                    return Ok(());
                }
                if queued >= self.per_tenant {
                    return Err(Full);
                }
                *next_seq += 1;
                *seq = *next_seq;
                open.insert(key, *seq);
                values.insert(*seq, status);
            }
            // An entry or exit closes the waiting status change for the user in the room (it
            // keeps its value): a status set after it is applied after it.
            (Op::Enter { room, user, .. } | Op::Exit { room, user }, _) => {
                open.remove(&(room.clone(), user.clone()));
            }
            _ => {}
        }
        let queue = tenants.entry(tenant.clone()).or_default();
        if queue.is_empty() {
            ring.push_back(tenant);
        }
        queue.push_back(op);
        state.len += 1;
        crate::metrics::presence_queue(state.len);
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// Answers `done` once every operation queued before it has been taken and applied.
    pub fn flush(&self, done: oneshot::Sender<()>) {
        self.lock().flushes.push(done);
        self.ready.notify_one();
    }

    /// The next operation: replays first, then one per tenant in turn. Waits while empty.
    pub async fn next(&self) -> Next {
        loop {
            let notified = self.ready.notified();
            if let Some(next) = self.try_next() {
                return next;
            }
            notified.await;
        }
    }

    fn try_next(&self) -> Option<Next> {
        let mut state = self.lock();
        if !state.system.is_empty() || !state.ring.is_empty() {
            state.len = state.len.saturating_sub(1);
            crate::metrics::presence_queue(state.len);
        }
        if let Some(op) = state.system.pop_front() {
            return Some(Next { op, status: None });
        }
        let State { tenants, ring, open, values, flushes, .. } = &mut *state;
        let Some(tenant) = ring.pop_front() else {
            // Empty: everything queued before a flush was applied (the worker applies one
            // operation before asking for the next).
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
            return None;
        };
        let queue = tenants.get_mut(&tenant)?;
        let op = queue.pop_front()?;
        if queue.is_empty() {
            tenants.remove(&tenant);
        } else {
            ring.push_back(tenant);
        }
        let status = match &op {
            Op::Status { room, user, seq } => {
                let key = (room.clone(), user.clone());
                if open.get(&key) == Some(seq) {
                    open.remove(&key);
                }
                values.remove(seq)
            }
            _ => None,
        };
        Some(Next { op, status })
    }

    /// Operations waiting, all tenants together.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enter(room: &str, user: &str) -> Op {
        Op::Enter { room: room.into(), user: user.into(), count: 1, status: Status::Online }
    }

    fn name(next: &Next) -> String {
        match &next.op {
            Op::Enter { room, user, .. } => format!("enter {room} {user}"),
            Op::Exit { room, user } => format!("exit {room} {user}"),
            Op::Status { room, user, .. } => format!("status {room} {user} {:?}", next.status),
            Op::Forget { room } => format!("forget {room}"),
            Op::Reconcile(_) => "reconcile".into(),
        }
    }

    #[tokio::test]
    async fn a_flooding_tenant_delays_only_itself() {
        let q = FairQueue::new(10_000);
        for i in 0..5_000 {
            q.push(enter("tenant:noisy:channel:c", &format!("u{i}")), None).unwrap();
        }
        q.push(enter("tenant:calm:project:p", "ada"), None).unwrap();
        // The calm tenant's join is served second, not 5,001st.
        assert_eq!(name(&q.next().await), "enter tenant:noisy:channel:c u0");
        assert_eq!(name(&q.next().await), "enter tenant:calm:project:p ada");
        assert_eq!(name(&q.next().await), "enter tenant:noisy:channel:c u1");
    }

    #[tokio::test]
    async fn status_changes_coalesce_and_keep_their_place_after_the_entry() {
        let q = FairQueue::new(10);
        let room = "tenant:t:channel:c";
        q.push(enter(room, "ada"), None).unwrap();
        for status in [Status::Away, Status::Online, Status::Away] {
            q.push(Op::Status { room: room.into(), user: "ada".into(), seq: 0 }, Some(status)).unwrap();
        }
        q.push(Op::Exit { room: room.into(), user: "ada".into() }, None).unwrap();
        assert_eq!(q.len(), 3, "three status changes took one place");
        assert_eq!(name(&q.next().await), "enter tenant:t:channel:c ada");
        assert_eq!(name(&q.next().await), "status tenant:t:channel:c ada Some(Away)");
        assert_eq!(name(&q.next().await), "exit tenant:t:channel:c ada");
    }

    /// A status set after the user left and came back must not be applied before the leave.
    #[tokio::test]
    async fn a_status_after_an_exit_and_entry_is_applied_after_them() {
        let q = FairQueue::new(10);
        let room = "tenant:t:channel:c";
        let status = |s| q.push(Op::Status { room: room.into(), user: "ada".into(), seq: 0 }, Some(s));
        status(Status::Away).unwrap();
        q.push(Op::Exit { room: room.into(), user: "ada".into() }, None).unwrap();
        q.push(enter(room, "ada"), None).unwrap();
        status(Status::Away).unwrap();
        let order: Vec<String> =
            [q.next().await, q.next().await, q.next().await, q.next().await].iter().map(name).collect();
        assert_eq!(
            order,
            [
                "status tenant:t:channel:c ada Some(Away)",
                "exit tenant:t:channel:c ada",
                "enter tenant:t:channel:c ada",
                "status tenant:t:channel:c ada Some(Away)"
            ]
        );
    }

    /// A replay of the whole share supersedes what was queued before it.
    #[tokio::test]
    async fn a_reconcile_replaces_the_operations_queued_before_it() {
        let q = FairQueue::new(10);
        q.push(enter("tenant:t:channel:c", "ada"), None).unwrap();
        q.push(Op::Reconcile(Vec::new()), None).unwrap();
        q.push(enter("tenant:t:channel:c", "bob"), None).unwrap();
        assert_eq!(name(&q.next().await), "reconcile");
        assert_eq!(name(&q.next().await), "enter tenant:t:channel:c bob");
        assert_eq!(q.len(), 0);
    }

    #[tokio::test]
    async fn a_full_tenant_says_so_and_refuses_status_changes_but_never_exits() {
        let q = FairQueue::new(2);
        let room = "tenant:t:channel:c";
        q.push(enter(room, "a"), None).unwrap();
        q.push(enter(room, "b"), None).unwrap();
        assert!(!q.has_room(room), "joins check this before they change anything");
        assert!(q.has_room("tenant:other:channel:c"), "per tenant");
        assert_eq!(q.push(Op::Status { room: room.into(), user: "a".into(), seq: 0 }, Some(Status::Away)), Err(Full));
        q.push(Op::Exit { room: room.into(), user: "a".into() }, None).unwrap();
        q.push(Op::Forget { room: room.into() }, None).unwrap();
        q.push(enter("tenant:other:channel:c", "z"), None).unwrap();
        assert_eq!(q.len(), 5);
    }

    #[tokio::test]
    async fn a_flush_is_answered_once_everything_before_it_was_taken() {
        let q = FairQueue::new(10);
        q.push(enter("tenant:t:channel:c", "a"), None).unwrap();
        let (done, mut answered) = oneshot::channel();
        q.flush(done);
        let _ = q.next().await;
        assert!(answered.try_recv().is_err(), "taken, maybe not applied yet");
        assert!(tokio::time::timeout(std::time::Duration::from_millis(50), q.next()).await.is_err());
        assert!(answered.try_recv().is_ok());
    }
}
