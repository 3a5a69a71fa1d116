//! The in-memory bus: a hub delivering publishes to the gateways of this process whose rooms
//! have members. One gateway on its own hub is the single node; several gateways on one hub
//! ([`crate::LocalCluster`]) behave as replicas sharing Redis would, without Redis.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, Weak},
};

use crate::envelope::Envelope;
use tokio::sync::{mpsc, oneshot};

use roomcast_publisher::wire::Revocation;

use super::{BoxFuture, Bus, BusError, ControlReceipt, Inbound, Published, RevocationList, RoomPage};
use crate::history::memory::MemoryHistory;

/// Publish calls waiting for the delivery task; a publisher beyond that waits its turn.
const QUEUE: usize = 1024;

/// One publish call: its envelopes with the nodes each reached, and where to answer.
struct Batch {
    envelopes: Vec<(Envelope, Vec<usize>)>,
    dedupe: Option<std::time::Duration>,
    done: oneshot::Sender<Vec<Published>>,
}

/// One gateway on the hub.
#[derive(Default)]
struct Node {
    /// Rooms with members on this node; the only rooms a publish is delivered to here.
    subscribed: HashSet<String>,
    /// Where this node's deliveries go, once it receives. Weak: the gateway owns its delivery,
    /// and a gateway that is gone just stops receiving.
    inbound: Option<Weak<dyn Inbound>>,
}

/// The revocations recorded on a hub: each with when it may be forgotten (ms), and a version
/// bumped on every change.
#[derive(Default)]
struct RevocationStore {
    entries: HashMap<Revocation, u64>,
    version: u64,
}

/// The nodes of one in-memory bus and the history they share.
pub struct Hub {
    nodes: Mutex<Vec<Node>>,
    /// Recorded revocations.
    revocations: Mutex<RevocationStore>,
    /// Rooms with members, and when they were last recorded (ms), in name order.
    rooms: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Each node's last status and when it reported it (ms).
    statuses: Mutex<std::collections::BTreeMap<String, (serde_json::Value, u64)>>,
    /// To the delivery task, which owns the order of appends and deliveries.
    queue: mpsc::Sender<Batch>,
    /// Taken by the first node that starts receiving, which spawns the delivery task.
    receiver: Mutex<Option<mpsc::Receiver<Batch>>>,
    history: Option<Arc<MemoryHistory>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("history", &self.history).finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub with no nodes, keeping events in `history` (if any).
    pub fn new(history: Option<Arc<MemoryHistory>>) -> Arc<Hub> {
        let (tx, rx) = mpsc::channel(QUEUE);
        Arc::new(Hub {
            nodes: Mutex::new(Vec::new()),
            revocations: Mutex::default(),
            rooms: Mutex::default(),
            statuses: Mutex::default(),
            queue: tx,
            receiver: Mutex::new(Some(rx)),
            history,
        })
    }

    /// A new node: its bus, and its receiving side to start with [`MemoryDelivery::run`].
    pub fn node(self: &Arc<Self>) -> (MemoryBus, MemoryDelivery) {
        let node = {
            let mut nodes = self.lock();
            nodes.push(Node::default());
            nodes.len() - 1
        };
        (MemoryBus { hub: self.clone(), node }, MemoryDelivery { hub: self.clone(), node })
    }

    /// Nodes subscribed to `room`.
    pub fn subscribers(&self, room: &str) -> usize {
        self.lock().iter().filter(|n| n.subscribed.contains(room)).count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Node>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends each published event to history and delivers it to the nodes it reached, one
    /// publish at a time, so a room's events are delivered in offset order everywhere even when
    /// published concurrently. Ends when every handle on the hub is gone.
    async fn deliver(self: Arc<Self>, mut queue: mpsc::Receiver<Batch>) {
        let hub = Arc::downgrade(&self);
        drop(self);
        while let Some(Batch { envelopes, dedupe, done }) = queue.recv().await {
            let Some(hub) = hub.upgrade() else { break };
            let mut published = Vec::with_capacity(envelopes.len());
            for (mut envelope, reached) in envelopes {
                let replicas = reached.len() as u64;
                let mut receipt = Published { replicas, offset: None, epoch: None, duplicate: false };
                if let (Envelope::Event(event), Some(history)) = (&mut envelope, &hub.history) {
                    if let Some(first) = history.append(event, replicas, dedupe) {
                        // Published before within the window: the first receipt, nothing sent.
                        published.push(first);
                        continue;
                    }
                    receipt.offset = event.offset;
                    receipt.epoch = event.epoch.clone();
                }
                let inbounds: Vec<_> = {
                    let nodes = hub.lock();
                    reached.iter().filter_map(|&n| nodes[n].inbound.as_ref().and_then(Weak::upgrade)).collect()
                };
                for inbound in inbounds {
                    inbound.deliver(&envelope).await;
                }
                published.push(receipt);
            }
            // The publisher may have stopped waiting (its request was cancelled).
            let _ = done.send(published);
        }
    }
}

/// One node's handle on an in-memory [`Hub`].
#[derive(Debug)]
pub struct MemoryBus {
    hub: Arc<Hub>,
    node: usize,
}

/// A node's receiving side, started with [`MemoryDelivery::run`].
#[derive(Debug)]
pub struct MemoryDelivery {
    hub: Arc<Hub>,
    node: usize,
}

impl MemoryBus {
    /// The bus of a single node: a hub of its own, keeping events in `history` (if any);
    /// publishes are delivered once the returned side runs.
    #[cfg(test)]
    pub fn new(history: Option<Arc<MemoryHistory>>) -> (Self, MemoryDelivery) {
        Hub::new(history).node()
    }

    /// Whether `room` is subscribed on this node.
    #[cfg(test)]
    pub fn is_subscribed(&self, room: &str) -> bool {
        self.hub.lock()[self.node].subscribed.contains(room)
    }

    /// Number of subscribed rooms.
    #[cfg(test)]
    pub fn subscription_count(&self) -> usize {
        self.hub.lock()[self.node].subscribed.len()
    }

    fn subscribed<T>(&self, f: impl FnOnce(&mut HashSet<String>) -> T) -> T {
        f(&mut self.hub.lock()[self.node].subscribed)
    }
}

impl MemoryDelivery {
    /// Delivers this node's publishes to `inbound` from now on (it is held weakly: the caller
    /// keeps it alive). The first node to run starts the hub's delivery task.
    pub fn run(self, inbound: Arc<dyn Inbound>) {
        self.hub.lock()[self.node].inbound = Some(Arc::downgrade(&inbound));
        let receiver = self.hub.receiver.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(receiver) = receiver {
            tokio::spawn(self.hub.clone().deliver(receiver));
        }
    }
}

impl Bus for MemoryBus {
    fn subscribe(&self, room: &str) -> BoxFuture<'static, Result<(), BusError>> {
        self.subscribed(|rooms| rooms.insert(room.to_owned()));
        Box::pin(async { Ok(()) })
    }

    fn unsubscribe(&self, room: &str) -> BoxFuture<'static, Result<(), BusError>> {
        self.subscribed(|rooms| rooms.remove(room));
        Box::pin(async { Ok(()) })
    }

    fn publish(
        &self,
        envelopes: Vec<Envelope>,
        dedupe: Option<std::time::Duration>,
    ) -> BoxFuture<'static, Result<Vec<Result<Published, BusError>>, BusError>> {
        // Who is subscribed is decided when the call is made, as Redis decides at PUBLISH.
        let envelopes: Vec<(Envelope, Vec<usize>)> = {
            let nodes = self.hub.lock();
            envelopes
                .into_iter()
                .map(|e| {
                    let reached = (0..nodes.len()).filter(|&n| nodes[n].subscribed.contains(e.room())).collect();
                    (e, reached)
                })
                .collect()
        };
        let queue = self.hub.queue.clone();
        Box::pin(async move {
            let stopped = || BusError::Unavailable("the delivery task stopped".into());
            let (done, receipts) = oneshot::channel();
            queue.send(Batch { envelopes, dedupe, done }).await.map_err(|_| stopped())?;
            receipts.await.map(|all| all.into_iter().map(Ok).collect()).map_err(|_| stopped())
        })
    }

    fn control(
        &self,
        control: roomcast_publisher::wire::ControlEnvelope,
        _wait: std::time::Duration,
    ) -> BoxFuture<'static, Result<ControlReceipt, BusError>> {
        // Straight to the nodes subscribed now, as Redis decides at PUBLISH; every node answers.
        let inbounds: Vec<_> = {
            let nodes = self.hub.lock();
            nodes
                .iter()
                .filter(|n| n.subscribed.contains(&control.room))
                .filter_map(|n| n.inbound.as_ref().and_then(Weak::upgrade))
                .collect()
        };
        Box::pin(async move {
            let envelope = Envelope::Control(control);
            let mut receipt = ControlReceipt { of: inbounds.len() as u64, ..Default::default() };
            for inbound in inbounds {
                if let Some(ack) = inbound.deliver(&envelope).await {
                    receipt.replicas += 1;
                    receipt.sockets += ack.sockets;
                }
            }
            Ok(receipt)
        })
    }

    fn record_revocation(
        &self,
        revocation: &Revocation,
        until_ms: u64,
        now_ms: u64,
        per_tenant: u64,
    ) -> BoxFuture<'static, Result<bool, BusError>> {
        let mut list = self.hub.revocations.lock().unwrap_or_else(|e| e.into_inner());
        // As the Redis script does.
        list.entries.retain(|_, until| *until > now_ms);
        let recorded = match list.entries.get_mut(revocation) {
            Some(held) => {
                *held = (*held).max(until_ms);
                true
            }
            None => {
                let held = list.entries.keys().filter(|r| r.tenant == revocation.tenant).count() as u64;
                held < per_tenant && list.entries.insert(revocation.clone(), until_ms).is_none()
            }
        };
        if recorded {
            list.version += 1;
        }
        Box::pin(async move { Ok(recorded) })
    }

    fn revocations(
        &self,
        known: Option<String>,
        now_ms: u64,
    ) -> BoxFuture<'static, Result<Option<RevocationList>, BusError>> {
        let list = self.hub.revocations.lock().unwrap_or_else(|e| e.into_inner());
        let version = list.version.to_string();
        let read = (known.as_ref() != Some(&version)).then(|| {
            let current =
                list.entries.iter().filter(|(_, until)| **until > now_ms).map(|(r, u)| (r.clone(), *u)).collect();
            (version, current)
        });
        Box::pin(async move { Ok(read) })
    }

    fn index_rooms(&self, rooms: Vec<String>, now_ms: u64, prune: bool) -> BoxFuture<'static, Result<(), BusError>> {
        let mut index = self.hub.rooms.lock().unwrap_or_else(|e| e.into_inner());
        for room in rooms {
            index.insert(room, now_ms);
        }
        if prune {
            let ttl = super::ROOM_INDEX_TTL.as_millis() as u64;
            index.retain(|_, seen| *seen + ttl > now_ms);
        }
        Box::pin(async { Ok(()) })
    }

    fn indexed_rooms(
        &self,
        tenant: &str,
        prefix: &str,
        cursor: &str,
        count: u64,
        now_ms: u64,
    ) -> BoxFuture<'static, Result<Option<RoomPage>, BusError>> {
        let index = self.hub.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let ttl = super::ROOM_INDEX_TTL.as_millis() as u64;
        let tenant_prefix = format!("tenant:{tenant}:");
        if !cursor.is_empty() && !cursor.starts_with(&tenant_prefix) {
            return Box::pin(async { Ok(None) });
        }
        // The cursor is the last room returned: pages follow the name order, and the rooms
        // with the prefix are contiguous in it, so only they are visited.
        let from = if cursor.is_empty() || cursor < prefix {
            std::ops::Bound::Included(prefix.to_owned())
        } else {
            std::ops::Bound::Excluded(cursor.to_owned())
        };
        let mut page = Vec::new();
        let mut more = false;
        for (room, seen) in index.range::<String, _>((from, std::ops::Bound::Unbounded)) {
            if !room.starts_with(prefix) {
                break;
            }
            if !(room.starts_with(&tenant_prefix) && *seen + ttl > now_ms) {
                continue;
            }
            if page.len() as u64 >= count.max(1) {
                more = true;
                break;
            }
            page.push(room.clone());
        }
        let next = if more { page.last().cloned().unwrap_or_default() } else { String::new() };
        Box::pin(async move { Ok(Some((next, page))) })
    }

    fn report_status(
        &self,
        node: &str,
        status: serde_json::Value,
        now_ms: u64,
    ) -> BoxFuture<'static, Result<(), BusError>> {
        let mut statuses = self.hub.statuses.lock().unwrap_or_else(|e| e.into_inner());
        let ttl = super::STATUS_TTL.as_millis() as u64;
        statuses.retain(|_, (_, at)| *at + ttl > now_ms);
        statuses.insert(node.to_owned(), (status, now_ms));
        Box::pin(async { Ok(()) })
    }

    fn statuses(&self, now_ms: u64) -> BoxFuture<'static, Result<Vec<(String, serde_json::Value)>, BusError>> {
        let statuses = self.hub.statuses.lock().unwrap_or_else(|e| e.into_inner());
        let ttl = super::STATUS_TTL.as_millis() as u64;
        let listed = statuses
            .iter()
            .filter(|(_, (_, at))| *at + ttl > now_ms)
            .map(|(n, (s, _))| (n.clone(), s.clone()))
            .collect();
        Box::pin(async move { Ok(listed) })
    }

    fn unavailable(&self) -> Option<&'static str> {
        None
    }
}
