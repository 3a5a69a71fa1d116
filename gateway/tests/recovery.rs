//! No lost events: a publisher sends numbered events at a steady rate while clients hop between
//! replicas, a replica is killed, and replicas' subscriber connections are killed. Every client
//! must receive every number exactly once, in order. And when history cannot cover a gap, the
//! client is told (`recovered: false`) rather than given a partial replay.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{redis::*, replica::*, *};
use roomcast_publisher::{Publisher, wire::HistoryPolicy};
use serde_json::{Value, json};

const P1: fn() -> Value = || json!({ "project": "p1" });

/// A client that follows room p1 like an app using the README's recovery snippet: it keeps the
/// last offset and epoch it saw and rejoins with them after every reconnect.
struct Follower {
    name: String,
    client: Client,
    /// The numbers received, in arrival order.
    received: Vec<u64>,
    position: Option<(u64, String)>,
    /// `recovered` of every rejoin.
    recoveries: Vec<bool>,
}

impl Follower {
    async fn start(name: &str, addr: SocketAddr) -> Follower {
        let client = connect_as(name, addr).await;
        let mut f =
            Follower { name: name.to_owned(), client, received: Vec::new(), position: None, recoveries: Vec::new() };
        f.join().await;
        f
    }

    async fn join(&mut self) {
        let mut payload = P1();
        if let Some((offset, epoch)) = &self.position {
            payload["since"] = json!({ "offset": offset, "epoch": epoch });
        }
        let ack = self.client.request("join", payload).await;
        assert_eq!(ack["ok"], true, "{}: {ack}", self.name);
        if let Some(recovered) = ack["recovered"].as_bool() {
            self.recoveries.push(recovered);
        }
        // Replayed events were sent before the ack: take them first.
        self.take();
        self.advance(ack["offset"].as_u64().unwrap(), ack["epoch"].as_str().unwrap());
    }

    fn advance(&mut self, offset: u64, epoch: &str) {
        let newer = match &self.position {
            Some((o, e)) => e != epoch || offset > *o,
            None => true,
        };
        if newer {
            self.position = Some((offset, epoch.to_owned()));
        }
    }

    /// Takes every `tick` received so far.
    fn take(&mut self) {
        for args in self.client.events("tick") {
            self.received.push(args[0]["n"].as_u64().unwrap());
            self.advance(args[1]["offset"].as_u64().unwrap(), args[1]["epoch"].as_str().unwrap());
        }
        self.client.clear_events("tick");
    }

    /// Closes the connection (a network drop or a tab reload) and reconnects to `addr`.
    async fn hop(&mut self, addr: SocketAddr) {
        self.client.close();
        self.client.closed().await;
        self.take();
        self.client = connect_as(&self.name, addr).await;
        self.join().await;
    }

    /// The connection died under it (its replica was killed): reconnect to `addr`.
    async fn reconnect_after_crash(&mut self, addr: SocketAddr) {
        assert!(self.client.closed().await, "{}: the connection should have dropped", self.name);
        self.take();
        self.client = connect_as(&self.name, addr).await;
        self.join().await;
    }

    /// Waits until `count` numbers arrived (or the deadline passed) and checks them.
    async fn finish(&mut self, count: u64) -> Outcome {
        let deadline = Instant::now() + WAIT;
        loop {
            self.take();
            if self.received.len() as u64 >= count || Instant::now() > deadline {
                break;
            }
            let _ = self.client.next_within("tick", Duration::from_millis(200)).await.map(|args| {
                self.received.push(args[0]["n"].as_u64().unwrap());
                self.advance(args[1]["offset"].as_u64().unwrap(), args[1]["epoch"].as_str().unwrap());
            });
        }
        Outcome::of(&self.received, count)
    }
}

async fn connect_as(name: &str, addr: SocketAddr) -> Client {
    Client::connect(addr, Connect::token(&user_token("t1", name))).await.expect("connects")
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    delivered: u64,
    duplicated: u64,
    lost: u64,
    in_order: bool,
}

impl Outcome {
    fn of(received: &[u64], published: u64) -> Outcome {
        let mut seen = std::collections::HashSet::new();
        let duplicated = received.iter().filter(|n| !seen.insert(**n)).count() as u64;
        let lost = (0..published).filter(|n| !seen.contains(n)).count() as u64;
        Outcome {
            delivered: received.len() as u64,
            duplicated,
            lost,
            in_order: received.windows(2).all(|w| w[0] < w[1]),
        }
    }
}

/// Publishes `count` numbered events to p1, one every `every`; returns the number published.
fn publish_steadily(publisher: Publisher, count: u64, every: Duration) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        for n in 0..count {
            tick.tick().await;
            publisher.project("t1", "p1").emit("tick", &json!({ "n": n })).await.expect("published");
        }
        count
    })
}

fn report(scenario: &str, published: u64, followers: &[(String, Outcome)]) {
    for (name, o) in followers {
        eprintln!(
            "{scenario}: {name}: published {published} delivered {} duplicated {} lost {} in order {}",
            o.delivered, o.duplicated, o.lost, o.in_order
        );
    }
}

fn assert_exactly_once(published: u64, followers: &[(String, Outcome)]) {
    for (name, o) in followers {
        assert_eq!(o, &Outcome { delivered: published, duplicated: 0, lost: 0, in_order: true }, "{name}");
    }
}

#[tokio::test]
async fn clients_hopping_between_replicas_lose_nothing() {
    let redis = RedisServer::start();
    let rs = Replica::ready(3, &redis.url(), &[]).await;
    let publisher = Publisher::connect(&redis.url()).await.unwrap();
    let mut followers = vec![
        Follower::start("hopper-a", rs[0].addr).await,
        Follower::start("hopper-b", rs[1].addr).await,
        Follower::start("steady", rs[2].addr).await,
    ];
    let count = 400;
    let publishing = publish_steadily(publisher, count, Duration::from_millis(4));
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await; // let some events flow, then hop
        let (a, b) = followers.split_at_mut(1);
        a[0].hop(rs[(round + 1) % 3].addr).await;
        b[0].hop(rs[(round + 2) % 3].addr).await;
    }
    let published = publishing.await.unwrap();
    let mut outcomes = Vec::new();
    for f in &mut followers {
        outcomes.push((f.name.clone(), f.finish(published).await));
        if f.name != "steady" {
            assert!(f.recoveries.iter().all(|r| *r), "{}: every rejoin recovered: {:?}", f.name, f.recoveries);
        }
    }
    report("(a) clients reconnect to another replica", published, &outcomes);
    assert_exactly_once(published, &outcomes);
}

#[tokio::test]
async fn clients_of_a_killed_replica_recover_everything_elsewhere() {
    let redis = RedisServer::start();
    let mut rs = Replica::ready(2, &redis.url(), &[]).await;
    let publisher = Publisher::connect(&redis.url()).await.unwrap();
    let mut victims =
        vec![Follower::start("victim-1", rs[0].addr).await, Follower::start("victim-2", rs[0].addr).await];
    let mut survivor = Follower::start("survivor", rs[1].addr).await;
    let count = 300;
    let publishing = publish_steadily(publisher, count, Duration::from_millis(4));
    tokio::time::sleep(Duration::from_millis(400)).await;
    rs[0].kill9();
    for v in &mut victims {
        v.reconnect_after_crash(rs[1].addr).await;
    }
    let published = publishing.await.unwrap();
    let mut outcomes = Vec::new();
    for f in victims.iter_mut().chain(std::iter::once(&mut survivor)) {
        outcomes.push((f.name.clone(), f.finish(published).await));
    }
    report("(b) replica killed, clients reconnect elsewhere", published, &outcomes);
    for v in &victims {
        assert_eq!(v.recoveries, vec![true], "{}", v.name);
    }
    assert_exactly_once(published, &outcomes);
}

#[tokio::test]
async fn a_killed_subscriber_connection_is_caught_up_from_history() {
    let redis = RedisServer::start();
    let rs = Replica::ready(2, &redis.url(), &[]).await;
    // History holds every event of the run: what is checked is that a replica catches up from
    // it, not how fast it resubscribes. With the default 100 events (400 ms of this run), a
    // resubscription slower than that on a loaded machine is a gap beyond history, reported as
    // such (`a_gap_larger_than_history_is_reported_not_papered_over`): that made this test flaky.
    let history = HistoryPolicy { size: 1000, ttl: Duration::from_secs(300) };
    let publisher = Publisher::connect(&redis.url()).await.unwrap().with_history(history);
    let mut followers = vec![Follower::start("on-0", rs[0].addr).await, Follower::start("on-1", rs[1].addr).await];
    let count = 400;
    let publishing = publish_steadily(publisher, count, Duration::from_millis(4));
    let kills = Arc::new(Mutex::new(0));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Every replica's subscriber connection, as a network blip or failover would.
        let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        *kills.lock().unwrap() += killed.parse::<u32>().unwrap_or(0);
    }
    let published = publishing.await.unwrap();
    let mut outcomes = Vec::new();
    for f in &mut followers {
        outcomes.push((f.name.clone(), f.finish(published).await));
        assert!(f.recoveries.is_empty(), "the clients never reconnected");
    }
    report("(c) CLIENT KILL of the subscriber connections", published, &outcomes);
    assert!(*kills.lock().unwrap() >= 2, "subscriber connections were killed");
    for r in &rs {
        assert!(r.metric("roomcast_catch_ups_total", "").await >= 1.0, "the replica caught up from history");
    }
    assert_exactly_once(published, &outcomes);
}

#[tokio::test]
async fn a_gap_larger_than_history_is_reported_not_papered_over() {
    let redis = RedisServer::start();
    let rs = Replica::ready(1, &redis.url(), &[]).await;
    let history = HistoryPolicy { size: 100, ttl: Duration::from_secs(300) };
    let publisher = Publisher::connect(&redis.url()).await.unwrap().with_history(history);
    let f = Follower::start("away", rs[0].addr).await;
    let (offset, epoch) = f.position.clone().unwrap();
    f.client.close();
    let mut batch = publisher.batch();
    for n in 0..150 {
        batch.emit(&publisher.project("t1", "p1"), "tick", &json!({ "n": n })).unwrap();
    }
    batch.send().await.unwrap();
    let c = connect_as("away", rs[0].addr).await;
    let ack = c.request("join", json!({ "project": "p1", "since": { "offset": offset, "epoch": epoch } })).await;
    assert_eq!(ack["recovered"], false, "150 missed, 100 kept: {ack}");
    assert_eq!(ack["offset"], offset + 150, "the client is told where the room stands");
    assert!(c.next_within("tick", Duration::from_millis(300)).await.is_none(), "no partial replay");
    assert_eq!(rs[0].metric("roomcast_recoveries_total", "result=\"not_recovered\"").await, 1.0);
    // Within history it recovers.
    let ack = c.request("leave", P1()).await;
    assert_eq!(ack["ok"], true);
    let ack = c.request("join", json!({ "project": "p1", "since": { "offset": offset + 60, "epoch": epoch } })).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    let got: Vec<u64> = c.events("tick").iter().map(|args| args[0]["n"].as_u64().unwrap()).collect();
    assert_eq!(got, (60..150).collect::<Vec<u64>>(), "the 90 missed events, in order, before the ack");
}

#[tokio::test]
async fn a_redis_restart_without_persistence_changes_the_epoch() {
    let mut redis = RedisServer::start();
    let rs = Replica::ready(1, &redis.url(), &[]).await;
    let f = Follower::start("before", rs[0].addr).await;
    let publisher = Publisher::connect(&redis.url()).await.unwrap();
    publisher.project("t1", "p1").emit("tick", &json!({ "n": 0 })).await.unwrap();
    f.client.next("tick").await;
    let since = json!({ "offset": 1, "epoch": f.position.clone().unwrap().1 });
    redis.stop();
    redis.start_again();
    eventually(WAIT, "ready", || async { rs[0].redis_ok().await.then_some(()) }).await;
    let publisher = Publisher::connect(&redis.url()).await.unwrap();
    let receipt = publisher.project("t1", "p1").emit("tick", &json!({ "n": 1 })).await.unwrap();
    assert_eq!(receipt.offset, Some(1), "offsets restart with the history");
    assert_ne!(receipt.epoch.as_deref(), Some(since["epoch"].as_str().unwrap()), "a new epoch");
    let c = connect_as("after", rs[0].addr).await;
    let ack = c.request("join", json!({ "project": "p1", "since": since })).await;
    assert_eq!(ack["recovered"], false, "{ack}");
    assert_eq!(ack["epoch"], json!(receipt.epoch.unwrap()));
}

/// `POST /v1/publish` of `body` on the in-process gateway `gw` (which accepts [`API_KEY`]).
async fn publish_http(gw: &TestGateway, body: &Value) -> (u16, String) {
    let auth = format!("Bearer {API_KEY}");
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    http(gw.api, "POST", "/v1/publish", &headers, &body.to_string()).await
}

#[tokio::test]
async fn single_node_history_recovers_too() {
    let gw =
        TestGateway::start_with(|c| c.api_key = vec![roomcast_gateway::config::Secret::from(API_KEY.to_owned())]).await;
    let c = gw.connect_user("t1", "u").await;
    let ack = c.request("join", P1()).await;
    let (offset, epoch) = (ack["offset"].as_u64().unwrap(), ack["epoch"].as_str().unwrap().to_owned());
    c.close();
    let body = json!(
        (0..5)
            .map(|n| json!({ "tenant": "t1", "project": "p1", "event": "tick", "data": { "n": n } }))
            .collect::<Vec<_>>()
    );
    let (status, receipts) = publish_http(&gw, &body).await;
    assert_eq!(status, 200, "{receipts}");
    let receipts: Value = serde_json::from_str(&receipts).unwrap();
    assert_eq!(receipts["receipts"][4]["offset"], offset + 5);
    let c = gw.connect_user("t1", "u").await;
    let ack = c.request("join", json!({ "project": "p1", "since": { "offset": offset, "epoch": epoch } })).await;
    assert_eq!((ack["recovered"].clone(), ack["offset"].clone()), (json!(true), json!(offset + 5)));
    let got: Vec<u64> = c.events("tick").iter().map(|args| args[0]["n"].as_u64().unwrap()).collect();
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
    let bad = c.request("join", json!({ "channel": "c1", "since": { "offset": -1, "epoch": "x" } })).await;
    assert_eq!(bad["error"]["code"], "invalid_payload");
}

/// Joining a room the socket is already in answers like a first join: the position, and a
/// replay when `since` asks for one; the socket is still counted once.
#[tokio::test]
async fn joining_again_answers_like_a_first_join() {
    let gw =
        TestGateway::start_with(|c| c.api_key = vec![roomcast_gateway::config::Secret::from(API_KEY.to_owned())]).await;
    let c = gw.connect_user("t1", "u").await;
    let first = c.request("join", P1()).await;
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    for n in 0..3 {
        let body = json!({ "tenant": "t1", "project": "p1", "event": "tick", "data": { "n": n } });
        assert_eq!(publish_http(&gw, &body).await.0, 200);
    }
    let last = first["offset"].as_u64().unwrap() + 3;
    for _ in 0..3 {
        c.next("tick").await;
    }
    let again = c.request("join", P1()).await;
    assert_eq!(
        (again["ok"].clone(), again["offset"].clone(), again["epoch"].clone()),
        (json!(true), json!(last), json!(epoch))
    );
    assert!(again.get("recovered").is_none(), "no since, no recovery: {again}");
    let replay = c.request("join", json!({ "project": "p1", "since": { "offset": last - 2, "epoch": epoch } })).await;
    assert_eq!((replay["recovered"].clone(), replay["offset"].clone()), (json!(true), json!(last)), "{replay}");
    let got: Vec<u64> = c.events("tick").iter().map(|args| args[0]["n"].as_u64().unwrap()).collect();
    assert_eq!(got, vec![1, 2], "the two events after since, replayed before the ack");
    // One leave takes it out: the re-joins did not count it twice.
    assert_eq!(c.request("leave", P1()).await["ok"], true);
    let body = json!({ "tenant": "t1", "project": "p1", "event": "after", "data": {} });
    let (_, receipt) = publish_http(&gw, &body).await;
    assert_eq!(serde_json::from_str::<Value>(&receipt).unwrap()["replicas"], 0, "nobody left in p1");
}

#[tokio::test]
async fn history_is_capped_by_size_and_by_age() {
    let redis = RedisServer::start();
    let stream = "roomcast:{tenant:t1:project:p1}:history";
    let sized = Publisher::connect(&redis.url())
        .await
        .unwrap()
        .with_history(HistoryPolicy { size: 100, ttl: Duration::from_secs(300) });
    let mut batch = sized.batch();
    for n in 0..150 {
        batch.emit(&sized.project("t1", "p1"), "tick", &json!({ "n": n })).unwrap();
    }
    batch.send().await.unwrap();
    assert_eq!(redis.cli(&["XLEN", stream]), "100");
    assert!(redis.cli(&["XRANGE", stream, "-", "+", "COUNT", "1"]).starts_with("51-0"), "the oldest 50 were trimmed");

    // Age: with a 1 s TTL, entries older than a second go as new ones arrive.
    let aged = Publisher::connect(&redis.url())
        .await
        .unwrap()
        .with_history(HistoryPolicy { size: 100, ttl: Duration::from_secs(1) });
    let room = aged.project("t1", "aged");
    for n in 0..3 {
        room.emit("tick", &json!({ "n": n })).await.unwrap();
    }
    let stream = "roomcast:{tenant:t1:project:aged}:history";
    let started = Instant::now();
    let head = eventually(Duration::from_secs(10), "the first three to age out", || async {
        room.emit("tick", &json!({ "n": "keepalive" })).await.unwrap();
        let head = redis.cli(&["XRANGE", stream, "-", "+", "COUNT", "1"]);
        let offset: u64 = head.lines().next()?.split('-').next()?.parse().ok()?;
        (offset > 3).then_some(offset)
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(900), "not before they were a second old");
    assert!(head > 3);
}

/// `rounds` of two sockets joining together on a replica where the room has no other member
/// (so each round subscribes anew and seeds a new sequence), while a publisher sends to the
/// room as fast as it can. After each join ack at offset `o`, that client must receive
/// `o + 1, o + 2, …` exactly once and in order. Returns (joins, joins that lost or duplicated
/// an event).
async fn join_under_flat_out_publishing(redis_url: &str, rounds: u32) -> (u32, u32) {
    const AFTER_ACK: u64 = 30;
    // The joiners join and leave as fast as they can: beyond any client's budget.
    let rs = Replica::ready(2, redis_url, &[("ROOMCAST_RATE_ROOMS", "100000/s:100000")]).await;
    let publisher = Publisher::connect(redis_url).await.unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flat_out = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                publisher.project("t1", "p1").emit("tick", &json!({ "n": n })).await.expect("published");
                n += 1;
            }
            n
        }
    });
    // Two sockets join together each round: a new room's sequence is seeded from both reads.
    let joiners = [connect_as("joiner-a", rs[1].addr).await, connect_as("joiner-b", rs[1].addr).await];
    let mut failed = 0;
    for round in 0..rounds {
        let acks: Vec<_> = joiners.iter().map(|j| j.send_request("join", P1())).collect();
        let outcomes = futures_util::future::join_all(joiners.iter().zip(acks).map(|(joiner, ack)| async move {
            let ack = tokio::time::timeout(WAIT, ack).await.expect("join ack").unwrap().remove(0);
            assert_eq!(ack["ok"], true, "{ack}");
            let at = ack["offset"].as_u64().expect("history is on: the ack has an offset");
            let mut offsets = Vec::new();
            let deadline = Instant::now() + WAIT;
            while offsets.last().is_none_or(|o| *o < at + AFTER_ACK) && Instant::now() < deadline {
                if let Some(args) = joiner.next_within("tick", Duration::from_millis(200)).await {
                    offsets.push(args[1]["offset"].as_u64().unwrap());
                }
            }
            // Events sent before the ack (offsets up to `at`) were logged first and taken too.
            let after: Vec<u64> = offsets.into_iter().filter(|o| *o > at).collect();
            let want: Vec<u64> = (at + 1..=at + AFTER_ACK).collect();
            (after.get(..want.len()) == Some(&want[..])).then_some(()).ok_or((at, after))
        }))
        .await;
        for (at, after) in outcomes.into_iter().filter_map(Result::err) {
            failed += 1;
            eprintln!("round {round}: ack at {at}, then received {:?}", &after[..after.len().min(8)]);
        }
        for joiner in &joiners {
            assert_eq!(joiner.request("leave", P1()).await["ok"], true);
            joiner.clear_events("tick");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let published = flat_out.await.unwrap();
    let joins = rounds * joiners.len() as u32;
    eprintln!("join stress: {joins} joins, {failed} lost or duplicated an event after the ack ({published} published)");
    (joins, failed)
}

#[tokio::test]
async fn joining_while_a_publisher_runs_flat_out_misses_nothing_after_the_ack() {
    let redis = RedisServer::start();
    let (_, failed) = join_under_flat_out_publishing(&redis.url(), stress_rounds(200)).await;
    assert_eq!(failed, 0, "every join receives every event after its ack exactly once");
}

/// The same on Redis Cluster, where rooms use sharded pub/sub (`SSUBSCRIBE` is confirmed by
/// its own reply, not by a `PING`).
#[tokio::test]
async fn joining_on_redis_cluster_while_a_publisher_runs_flat_out_misses_nothing_after_the_ack() {
    let cluster = RedisCluster::start();
    let (_, failed) = join_under_flat_out_publishing(&cluster.url(), stress_rounds(50)).await;
    assert_eq!(failed, 0, "every join receives every event after its ack exactly once");
}

/// Rounds of the join stress tests: `ROOMCAST_JOIN_STRESS_ROUNDS`, else `default`. (Before
/// subscriptions were confirmed and sequences seeded, ~1% of joins lost the event right after
/// the ack on a loaded 2-core machine: 10 of 1,000.)
fn stress_rounds(default: u32) -> u32 {
    std::env::var("ROOMCAST_JOIN_STRESS_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(default)
}
