//! Replicas sharing rooms through a real Redis: exactly-once delivery to the right sockets
//! wherever they are connected, subscriptions that follow membership, and what happens when
//! Redis goes away and comes back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{redis::*, replica::*, *};
use roomcast_publisher::Publisher;
use serde_json::{Value, json};

fn channel(room: &str) -> String {
    format!("roomcast:{{{room}}}")
}

async fn join(c: &Client, payload: Value) {
    let ack = c.request("join", payload.clone()).await;
    assert_eq!(ack["ok"], true, "join {payload}: {ack}");
}

/// Waits for the marker event `done` with `marker`, so everything published before it on the
/// same replica connection has been delivered (Redis delivers a connection's messages in order).
async fn drain(c: &Client, marker: u64) {
    loop {
        let args = c.next("done").await;
        if args[0]["marker"] == marker {
            return;
        }
    }
}

#[tokio::test]
async fn an_sdk_publish_reaches_exactly_the_right_sockets_on_every_replica_once() {
    let redis = RedisServer::start();
    let rs = Replica::ready(3, &redis.url(), &[]).await;
    let publisher = Publisher::connect(&redis.url()).await.unwrap();

    let mut project = Vec::new();
    let mut chan = Vec::new();
    let mut other_tenant = Vec::new();
    for (i, r) in rs.iter().enumerate() {
        let a = r.connect_user("t1", &format!("a{i}")).await;
        join(&a, json!({ "project": "p1" })).await;
        project.push(a);
        let b = r.connect_user("t1", &format!("b{i}")).await;
        join(&b, json!({ "channel": "c1" })).await;
        chan.push(b);
        other_tenant.push(r.connect_user("t2", &format!("a{i}")).await);
    }
    // User a1 also has a second tab, on another replica.
    let a1_tab = rs[2].connect_user("t1", "a1").await;
    eventually(WAIT, "every replica subscribed to p1", || async {
        (numsub(redis.port, &channel("tenant:t1:project:p1")) == 3).then_some(())
    })
    .await;

    let receipt = publisher.project("t1", "p1").emit("task.updated", &json!({ "n": 1 })).await.unwrap();
    assert_eq!(receipt.replicas, 3, "one subscriber per replica");
    publisher.channel("t1", "c1").emit("message:new", &json!({ "text": "hi" })).await.unwrap();
    publisher.user("t1", "a1").emit("notification", &json!({ "to": "a1" })).await.unwrap();
    publisher.tenant("t1").emit("maintenance", &json!({})).await.unwrap();
    publisher.tenant("t1").emit("done", &json!({ "marker": 1 })).await.unwrap();
    publisher.tenant("t2").emit("done", &json!({ "marker": 1 })).await.unwrap();

    let everyone: Vec<&Client> = project.iter().chain(&chan).chain(&other_tenant).chain([&a1_tab]).collect();
    for c in &everyone {
        drain(c, 1).await;
    }
    for (i, a) in project.iter().enumerate() {
        let got = a.events("task.updated");
        assert_eq!(got.len(), 1, "project member on replica {i}: {got:?}");
        assert_eq!(got[0][0], json!({ "n": 1 }));
        let meta = &got[0][1];
        assert_eq!(meta["room"], "tenant:t1:project:p1");
        assert_eq!(meta["id"], json!(receipt.id.clone().unwrap()));
        assert!(meta["ts"].as_u64().unwrap() > 0);
        assert!(a.events("message:new").is_empty());
        assert_eq!(a.events("maintenance").len(), 1);
        assert_eq!(a.events("notification").len(), usize::from(i == 1), "only user a1 gets their notification");
    }
    for b in &chan {
        assert_eq!(b.events("message:new").len(), 1);
        assert!(b.events("task.updated").is_empty() && b.events("notification").is_empty());
        assert_eq!(b.events("maintenance").len(), 1);
    }
    assert_eq!(a1_tab.events("notification").len(), 1, "the user's other tab, on another replica");
    assert!(a1_tab.events("task.updated").is_empty(), "that tab did not join p1");
    for o in &other_tenant {
        for event in ["task.updated", "message:new", "notification", "maintenance"] {
            assert!(o.events(event).is_empty(), "tenant t2 received {event}");
        }
    }
}

#[tokio::test]
async fn each_replica_receives_only_the_rooms_it_has_members_in() {
    let redis = RedisServer::start();
    let rs = Replica::ready(3, &redis.url(), &[]).await;
    let publisher = Publisher::connect(&redis.url()).await.unwrap();
    // Replica 0 hosts project p1, replica 1 project p2, replica 2 only plain connections.
    let p1 = rs[0].connect_user("t1", "u0").await;
    join(&p1, json!({ "project": "p1" })).await;
    let p2 = rs[1].connect_user("t1", "u1").await;
    join(&p2, json!({ "project": "p2" })).await;
    let _idle = rs[2].connect_user("t1", "u2").await;
    eventually(WAIT, "subscriptions", || async {
        (numsub(redis.port, &channel("tenant:t1:project:p1")) == 1
            && numsub(redis.port, &channel("tenant:t1:project:p2")) == 1)
            .then_some(())
    })
    .await;

    let before = [
        rs[0].metric("roomcast_bus_messages_received_total", "").await,
        rs[1].metric("roomcast_bus_messages_received_total", "").await,
        rs[2].metric("roomcast_bus_messages_received_total", "").await,
    ];
    let (n1, n2) = (300u64, 100u64);
    let mut batch = publisher.batch();
    for i in 0..n1 {
        batch.emit(&publisher.project("t1", "p1"), "tick", &json!({ "i": i })).unwrap();
    }
    for i in 0..n2 {
        batch.emit(&publisher.project("t1", "p2"), "tick", &json!({ "i": i })).unwrap();
    }
    let receipts = batch.send().await.unwrap();
    assert!(receipts.iter().all(|r| r.replicas == 1), "each room has exactly one subscribed replica");
    for (client, n) in [(&p1, n1), (&p2, n2)] {
        for i in 0..n {
            assert_eq!(client.next("tick").await[0]["i"], i, "in order, exactly once");
        }
    }
    let mut received = Vec::new();
    for (r, before) in rs.iter().zip(before) {
        received.push(r.metric("roomcast_bus_messages_received_total", "").await - before);
    }
    eprintln!("published p1={n1} p2={n2}; received per replica: {received:?}");
    assert_eq!(received, vec![n1 as f64, n2 as f64, 0.0]);
}

#[tokio::test]
async fn subscriptions_follow_membership_across_replicas() {
    let redis = RedisServer::start();
    let rs = Replica::ready(2, &redis.url(), &[]).await;
    let ch = channel("tenant:t1:project:p1");
    let subscribers = |n: u64| {
        let (port, ch) = (redis.port, ch.clone());
        async move {
            eventually(WAIT, &format!("{n} subscribers"), || async { (numsub(port, &ch) == n).then_some(()) }).await
        }
    };
    subscribers(0).await;
    let a = rs[0].connect_user("t1", "a").await;
    join(&a, json!({ "project": "p1" })).await;
    subscribers(1).await;
    let a2 = rs[0].connect_user("t1", "a2").await;
    join(&a2, json!({ "project": "p1" })).await;
    let b = rs[1].connect_user("t1", "b").await;
    join(&b, json!({ "project": "p1" })).await;
    subscribers(2).await;
    assert!(c_leave(&a).await);
    subscribers(2).await; // a2 is still a member on replica 0
    a2.close();
    subscribers(1).await;
    b.disconnect();
    subscribers(0).await;
    // The user and tenant rooms follow the same rule.
    let user_channel = channel("tenant:t1:user:b");
    assert_eq!(numsub(redis.port, &user_channel), 0);
    let _b_again = rs[1].connect_user("t1", "b").await;
    eventually(WAIT, "user room subscribed", || async { (numsub(redis.port, &user_channel) == 1).then_some(()) }).await;
}

async fn c_leave(c: &Client) -> bool {
    c.request("leave", json!({ "project": "p1" })).await["ok"] == true
}

#[tokio::test]
async fn an_http_publish_is_delivered_once_on_the_replica_that_took_it() {
    let redis = RedisServer::start();
    let rs = Replica::ready(2, &redis.url(), &[]).await;
    let here = rs[0].connect_user("t1", "here").await;
    let there = rs[1].connect_user("t1", "there").await;
    for c in [&here, &there] {
        join(c, json!({ "channel": "c1" })).await;
    }
    eventually(WAIT, "subscriptions", || async {
        (numsub(redis.port, &channel("tenant:t1:channel:c1")) == 2).then_some(())
    })
    .await;
    let (status, receipt) =
        rs[0].publish(&json!({ "tenant": "t1", "channel": "c1", "event": "message:new", "data": { "n": 1 } })).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!((receipt["ok"].clone(), receipt["replicas"].clone()), (json!(true), json!(2)));
    let (status, _) = rs[0]
        .publish(&json!([
            { "tenant": "t1", "channel": "c1", "event": "message:new", "data": { "n": 2 } },
            { "tenant": "t1", "event": "done", "data": { "marker": 1 } }
        ]))
        .await;
    assert_eq!(status, 200);
    for c in [&here, &there] {
        drain(c, 1).await;
        let got: Vec<Value> = c.events("message:new").into_iter().map(|args| args[0]["n"].clone()).collect();
        assert_eq!(got, vec![json!(1), json!(2)], "each event exactly once, in order");
    }
}

#[tokio::test]
async fn when_redis_restarts_replicas_stay_ready_report_it_keep_local_delivery_and_resume() {
    let mut redis = RedisServer::start();
    let rs = Replica::ready(2, &redis.url(), &[]).await;
    let a = rs[0].connect_user("t1", "a").await;
    let a_peer = rs[0].connect_user("t1", "a-peer").await;
    let b = rs[1].connect_user("t1", "b").await;
    for c in [&a, &a_peer, &b] {
        join(c, json!({ "channel": "c1" })).await;
    }
    let ch = channel("tenant:t1:channel:c1");
    eventually(WAIT, "subscriptions", || async { (numsub(redis.port, &ch) == 2).then_some(()) }).await;
    assert_eq!(rs[0].publish(&json!({ "tenant": "t1", "channel": "c1", "event": "before" })).await.0, 200);
    for c in [&a, &a_peer, &b] {
        c.next("before").await;
    }

    let t0 = Instant::now();
    redis.stop();
    eprintln!("t+{:?}: redis-server killed", t0.elapsed());
    // Issue 15: Redis is shared by every replica, so readiness does not follow it (one blip
    // would empty the Service); /readyz, the metrics and the publish answers report it.
    for (i, r) in rs.iter().enumerate() {
        let body = eventually(WAIT, "Redis reported down", || async {
            let (status, body) = r.readyz().await;
            assert_eq!(status, 200, "readiness does not follow Redis: {body}");
            (!body.contains(r#""redis":"ok""#)).then_some(body)
        })
        .await;
        eprintln!("t+{:?}: replica {i} /readyz 200 {body}", t0.elapsed());
        assert!(body.contains(r#""redis":"redis_"#), "{body}");
        let m = r.metrics().await;
        assert_eq!(sample(&m, "roomcast_redis_connected", "client=\"subscriber\""), 0.0, "{m}");
        assert_eq!(sample(&m, "roomcast_ready", ""), 1.0);
    }
    let (status, body) = rs[0].publish(&json!({ "tenant": "t1", "channel": "c1", "event": "lost?" })).await;
    assert_eq!((status, body["error"]["code"].clone()), (503, json!("unavailable")), "an HTTP publish fails loudly");
    eprintln!("t+{:?}: HTTP publish answered 503 unavailable", t0.elapsed());
    let ack = a.request("typing", json!({ "channel": "c1", "typing": true })).await;
    assert_eq!(ack["error"]["code"], "unavailable", "a client publish gets an error ack: {ack}");
    let local = a_peer.next("typing").await;
    assert_eq!(local[0]["userId"], "a", "local-only delivery keeps working");
    assert!(b.next_within("typing", Duration::from_millis(300)).await.is_none());
    eprintln!("t+{:?}: typing acked `unavailable`, delivered to the local peer only", t0.elapsed());
    // Degraded mode: new sockets still connect, and their typing reaches local members.
    let started = Instant::now();
    let late = rs[0].connect_user("t1", "late").await;
    eprintln!("t+{:?}: a new socket connected in {:?} with Redis down", t0.elapsed(), started.elapsed());
    let ack = late.request("join", json!({ "channel": "c1" })).await;
    eprintln!("t+{:?}: its join answered {ack}", t0.elapsed());
    assert_eq!(ack["ok"], true, "a room this replica already holds can be joined: {ack}");
    // A replica that starts while Redis is down is ready too (and says why it is degraded);
    // with ROOMCAST_READY_REQUIRES_REDIS it is not.
    let fresh = Replica::spawn(Some(&redis.url()), &[]).await;
    let strict = Replica::spawn(Some(&redis.url()), &[("ROOMCAST_READY_REQUIRES_REDIS", "true")]).await;
    let (status, body) = fresh.readyz().await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""redis":"redis_disconnected""#), "{body}");
    fresh.connect_user("t1", "fresh").await;
    let (status, body) = strict.readyz().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(r#""reason":"redis_disconnected""#), "{body}");

    redis.start_again();
    eprintln!("t+{:?}: redis-server started again (empty: no persistence)", t0.elapsed());
    eventually(WAIT, "the strict replica ready", || async { strict.redis_ok().await.then_some(()) }).await;
    for (i, r) in rs.iter().enumerate() {
        eventually(WAIT, "readyz to recover", || async { r.redis_ok().await.then_some(()) }).await;
        eprintln!("t+{:?}: replica {i} ready again", t0.elapsed());
    }
    assert_eq!(numsub(redis.port, &ch), 2, "both replicas resubscribed by themselves");
    assert_eq!(rs[1].publish(&json!({ "tenant": "t1", "channel": "c1", "event": "after" })).await.0, 200);
    for c in [&a, &a_peer, &b, &late] {
        c.next("after").await;
    }
    eprintln!("t+{:?}: delivery resumed on both replicas", t0.elapsed());
    for r in &rs {
        let m = r.metrics().await;
        assert!(sample(&m, "roomcast_redis_reconnects_total", "client=\"subscriber\"") >= 1.0, "reconnect counted");
        assert!(sample(&m, "roomcast_redis_errors_total", "op=\"connection\"") >= 1.0, "errors counted");
    }
}

#[tokio::test]
async fn malformed_and_forbidden_envelopes_from_publishers_are_dropped_and_counted() {
    let redis = RedisServer::start();
    let rs = Replica::ready(1, &redis.url(), &[]).await;
    let c = rs[0].connect_user("t1", "u").await;
    let ch = channel("tenant:t1");
    eventually(WAIT, "subscription", || async { (numsub(redis.port, &ch) == 1).then_some(()) }).await;
    let envelope = |event: &str, room: &str, data: &str| {
        format!(r#"{{"type":"event","v":1,"id":"x","room":"{room}","event":"{event}","data":{data},"ts":1}}"#)
    };
    let big = format!("\"{}\"", "x".repeat(70_000));
    for bad in [
        "not json".to_owned(),
        r#"{"type":"event"}"#.to_owned(),
        envelope("disconnect", "tenant:t1", "{}"),
        envelope("auth:expiring", "tenant:t1", "{}"),
        envelope("ok", "tenant:t2", "{}"),
        envelope("ok", "tenant:t1", &big),
        r#"{"type":"event","v":9,"id":"x","room":"tenant:t1","event":"ok","data":{},"ts":1}"#.to_owned(),
        r#"{"type":"typing","v":1,"room":"tenant:t1","user":"x","typing":true,"ts":1}"#.to_owned(),
    ] {
        redis.cli(&["PUBLISH", &ch, &bad]);
    }
    redis.cli(&["PUBLISH", &ch, &envelope("good", "tenant:t1", r#"{"fine":true}"#)]);
    assert_eq!(c.next("good").await[0], json!({ "fine": true }));
    assert!(c.events("disconnect").is_empty() && c.events("auth:expiring").is_empty() && c.events("ok").is_empty());
    assert!(!c.got_server_disconnect());
    let m = rs[0].metrics().await;
    let rejected: f64 = ["malformed", "event_name", "room", "too_large", "version", "typing"]
        .iter()
        .map(|r| sample(&m, "roomcast_bus_messages_rejected_total", &format!("reason=\"{r}\"")))
        .sum();
    assert_eq!(rejected, 8.0, "{m}");
}

/// PROTOCOL.md is the contract for publishers in other languages: its redis-cli example, run
/// as written, must be delivered.
#[tokio::test]
async fn the_redis_cli_example_in_protocol_md_is_delivered() {
    let redis = RedisServer::start();
    let rs = Replica::ready(1, &redis.url(), &[]).await;
    let mut all = claims("acme", "u");
    all["projects"] = json!(["p1"]);
    let c = Client::connect(rs[0].addr, Connect::token(&token(&all))).await.unwrap();
    let joined = c.request("join", json!({ "project": "p1" })).await;
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../publisher-sdk/PROTOCOL.md")).unwrap();
    let line = doc.lines().find(|l| l.starts_with("redis-cli PUBLISH ")).expect("a redis-cli example");
    // redis-cli PUBLISH '<channel>' '<envelope>'
    let args: Vec<&str> = line.split('\'').filter(|p| !p.trim().is_empty()).skip(1).collect();
    assert_eq!(args.len(), 2, "{line}");
    assert_eq!(redis.cli(&["PUBLISH", args[0], args[1]]), "1", "one replica subscribed");
    let got = c.next("task.updated").await;
    assert_eq!(got[0], json!({ "id": 42, "done": true }));
    assert_eq!(
        got[1],
        json!({ "room": "tenant:acme:project:p1", "id": "evt-1", "ts": 1763800000000u64 }),
        "live only: no offset"
    );

    // The history example, run from the repository root as written.
    let line = doc.lines().find(|l| l.starts_with("redis-cli --eval ")).expect("a redis-cli --eval example");
    let mut words = vec![];
    for (i, part) in line.split('\'').enumerate() {
        if i % 2 == 1 {
            words.push(part.to_owned());
        } else {
            words.extend(part.split_whitespace().map(str::to_owned));
        }
    }
    let out = std::process::Command::new("redis-cli")
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(["-p", &redis.port.to_string()])
        .args(&words[1..])
        .output()
        .unwrap();
    let reply = String::from_utf8_lossy(&out.stdout);
    assert_eq!(reply.lines().next(), Some("1"), "one replica subscribed: {reply}");
    let got = c.next("task.updated").await;
    assert_eq!(got[0], json!({ "id": 43 }));
    // The join gave the room its epoch; the script's new-epoch argument is for rooms without one.
    assert_eq!(
        (got[1]["offset"].clone(), got[1]["epoch"].clone()),
        (json!(1), joined["epoch"].clone()),
        "{:?}",
        got[1]
    );
}

#[tokio::test]
async fn an_sdk_typing_indicator_reaches_the_channel_but_not_the_typists_own_sockets() {
    let redis = RedisServer::start();
    let rs = Replica::ready(2, &redis.url(), &[]).await;
    let publisher = Publisher::connect(&redis.url()).await.unwrap();
    let watcher = rs[0].connect_user("t1", "watcher").await;
    let watcher2 = rs[1].connect_user("t1", "watcher2").await;
    let typist = rs[1].connect_user("t1", "ada").await;
    for c in [&watcher, &watcher2, &typist] {
        join(c, json!({ "channel": "c1" })).await;
    }
    eventually(WAIT, "subscriptions", || async {
        (numsub(redis.port, &channel("tenant:t1:channel:c1")) == 2).then_some(())
    })
    .await;
    let receipt = publisher.typing("t1", "c1", "ada", true).await.unwrap();
    assert_eq!((receipt.id, receipt.replicas), (None, 2));
    for w in [&watcher, &watcher2] {
        let got = w.next("typing").await;
        assert_eq!(got[0], json!({ "channel": "c1", "userId": "ada", "typing": true, "ttlMs": 6000 }));
    }
    publisher.channel("t1", "c1").emit("done", &json!({ "marker": 1 })).await.unwrap();
    drain(&typist, 1).await;
    assert!(typist.events("typing").is_empty(), "the typing user's own socket is skipped");
    // A bot (an id with no connection at all) can type too.
    publisher.typing("t1", "c1", "assistant-bot", true).await.unwrap();
    assert_eq!(typist.next("typing").await[0]["userId"], "assistant-bot");
}

#[tokio::test]
async fn the_sdk_refuses_bad_input_before_it_reaches_redis() {
    use roomcast_publisher::{PublishError, wire::EventNameError};
    let redis = RedisServer::start();
    let publisher = Publisher::connect(&redis.url()).await.unwrap().with_max_payload(1024);
    let err = publisher.project("t1", "bad:id").emit("x", &json!({})).await.unwrap_err();
    assert!(matches!(err, PublishError::InvalidId(_)), "{err}");
    let err = publisher.tenant("t1").emit("presence:join", &json!({})).await.unwrap_err();
    assert!(matches!(err, PublishError::InvalidEvent(EventNameError::Reserved(_))), "{err}");
    let err = publisher.tenant("t1").emit("big", &"x".repeat(2000)).await.unwrap_err();
    assert!(matches!(err, PublishError::PayloadTooLarge { size: 2002, max: 1024 }), "{err}");
    let err = publisher.typing("t1", "c1", "not valid", true).await.unwrap_err();
    assert!(matches!(err, PublishError::InvalidId(_)), "{err}");
    let mut batch = publisher.batch();
    assert!(batch.emit(&publisher.tenant("t1"), "connect", &json!({})).is_err());
    assert!(batch.is_empty(), "a refused publish is not queued");
    assert_eq!(redis.cli(&["PUBSUB", "NUMSUB", "roomcast:{tenant:t1}"]).lines().nth(1), Some("0"));
    // A Redis failure is a typed error too.
    let mut redis = redis;
    redis.stop();
    let err = publisher.tenant("t1").emit("x", &json!({})).await.unwrap_err();
    assert!(matches!(err, PublishError::Redis(_)), "{err}");
}

#[tokio::test]
async fn a_redis_cluster_uses_sharded_pubsub_and_survives_a_master_restart() {
    let mut cluster = RedisCluster::start();
    let url = cluster.url();
    let rs = Replica::ready(2, &url, &[]).await;
    let publisher = Publisher::connect(&url).await.unwrap();
    let a = rs[0].connect_user("t1", "a").await;
    let b = rs[1].connect_user("t1", "b").await;
    for c in [&a, &b] {
        join(c, json!({ "project": "p1" })).await;
    }
    let ch = channel("tenant:t1:project:p1");
    let owner = cluster.owner_of(&ch);
    let owner_port = cluster.nodes[owner].port;
    eventually(WAIT, "shard subscriptions", || async { (shardnumsub(owner_port, &ch) == 2).then_some(()) }).await;
    assert_eq!(numsub(owner_port, &ch), 0, "sharded pub/sub, not classic SUBSCRIBE");

    let receipt = publisher.project("t1", "p1").emit("task.updated", &json!({ "n": 1 })).await.unwrap();
    assert_eq!(receipt.replicas, 2);
    for c in [&a, &b] {
        assert_eq!(c.next("task.updated").await[0]["n"], 1);
    }
    let (status, _) =
        rs[1].publish(&json!({ "tenant": "t1", "project": "p1", "event": "task.updated", "data": { "n": 2 } })).await;
    assert_eq!(status, 200);
    for c in [&a, &b] {
        assert_eq!(c.next("task.updated").await[0]["n"], 2);
    }

    let t0 = Instant::now();
    cluster.restart(owner);
    eprintln!("t+{:?}: master {owner} (owner of the room's slot) restarted, cluster healthy", t0.elapsed());
    eventually(WAIT, "shard subscriptions restored", || async { (shardnumsub(owner_port, &ch) == 2).then_some(()) })
        .await;
    eprintln!("t+{:?}: both replicas re-subscribed the shard channel", t0.elapsed());
    for r in &rs {
        eventually(WAIT, "ready", || async { r.redis_ok().await.then_some(()) }).await;
    }
    let receipt = eventually(WAIT, "publish after restart", || async {
        publisher.project("t1", "p1").emit("task.updated", &json!({ "n": 3 })).await.ok()
    })
    .await;
    assert_eq!(receipt.replicas, 2);
    for c in [&a, &b] {
        assert_eq!(c.next("task.updated").await[0]["n"], 3);
    }
    eprintln!("t+{:?}: delivery resumed", t0.elapsed());
}

/// A replica whose pub/sub reader falls behind its buffer loses messages: that must show in
/// `roomcast_bus_lagged_messages_total`, never pass silently.
#[tokio::test]
async fn a_lagging_pubsub_reader_is_counted() {
    use std::io::Write;
    let redis = RedisServer::start();
    let r = Replica::spawn(Some(&redis.url()), &[("ROOMCAST_REDIS_BUFFER", "64")]).await;
    let _member = r.connect_user("t1", "u").await;
    let ch = channel("tenant:t1");
    eventually(WAIT, "subscription", || async { (numsub(redis.port, &ch) == 1).then_some(()) }).await;
    let envelope = json!({ "type": "event", "v": 1, "id": "x", "room": "tenant:t1", "event": "e", "data": { "pad": "y".repeat(100) }, "ts": 1 }).to_string();
    let command = format!("*3\r\n$7\r\nPUBLISH\r\n${}\r\n{ch}\r\n${}\r\n{envelope}\r\n", ch.len(), envelope.len());
    let mut pipe = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "--pipe"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    pipe.stdin.take().unwrap().write_all(command.repeat(30_000).as_bytes()).unwrap();
    assert!(pipe.wait().unwrap().success());
    let lagged = eventually(WAIT, "lag to be counted", || async {
        let n = r.metric("roomcast_bus_lagged_messages_total", "").await;
        (n > 0.0).then_some(n)
    })
    .await;
    eprintln!("30000 published in a burst, buffer 64: {lagged} counted as lost by the lagging reader");
}

/// A replica starting next to a healthy Redis has nothing to warn about: its first presence
/// renewal runs before the connection is up, which is not a failure.
#[tokio::test]
async fn a_clean_start_logs_no_warning() {
    let redis = RedisServer::start();
    let r = Replica::spawn(Some(&redis.url()), &[]).await;
    eventually(WAIT, "replica ready", || async { r.redis_ok().await.then_some(()) }).await;
    // Past a few lease renewals and sweeps.
    let c = r.connect_user("t1", "u").await;
    join(&c, json!({ "project": "p1" })).await;
    let warnings: Vec<String> = r
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["level"] == "WARN" || v["level"] == "ERROR"))
        .cloned()
        .collect();
    assert!(warnings.is_empty(), "{warnings:#?}");
}

/// A replica started before its Redis (a pod scheduled first) connects once Redis is up
/// (fred's default gave up after a failed first connection), and Redis coming up a moment
/// late is the connection being set up, not a presence failure worth a warning.
#[tokio::test]
async fn a_replica_started_before_its_redis_connects_later_without_a_presence_warning() {
    let mut redis = RedisServer::start();
    redis.stop();
    let r = Replica::spawn(Some(&redis.url()), &[]).await;
    let lease_lines = || -> Vec<Value> {
        r.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"].as_str().is_some_and(|m| m.starts_with("presence lease")))
            .collect()
    };
    // The first renewal ran and failed while Redis was down.
    eventually(WAIT, "a failed presence renewal", || async { (!lease_lines().is_empty()).then_some(()) }).await;
    redis.start_again();
    eventually(WAIT, "replica ready", || async { r.redis_ok().await.then_some(()) }).await;
    let warned: Vec<Value> = lease_lines().into_iter().filter(|v| v["level"] == "WARN").collect();
    assert!(warned.is_empty(), "{warned:#?}");
}

/// Issue 14: with Redis stopped (SIGSTOP) `/readyz` stayed 200, and `POST /v1/publish` answered
/// 503 "not published" for events that were all delivered once Redis resumed. Now a hung Redis
/// is reported down within about a command timeout, an answer of 503 means the event was
/// certainly not published, and one that may have been gets 504 `timeout`.
#[tokio::test]
async fn a_hung_redis_is_reported_down_and_publish_answers_never_claim_more_than_is_known() {
    let redis = RedisServer::start();
    let rs = Replica::ready(1, &redis.url(), &[("ROOMCAST_REDIS_COMMAND_TIMEOUT", "500ms")]).await;
    let member = rs[0].connect_user("t1", "ada").await;
    join(&member, json!({ "project": "p1" })).await;
    let publish = |n: u64| {
        let replica = &rs[0];
        async move { replica.publish(&json!({ "tenant": "t1", "project": "p1", "event": "n", "data": n })).await }
    };

    redis.pause();
    let (mut not_published, mut unknown) = (Vec::new(), Vec::new());
    let mut n = 0;
    let hung = Instant::now();
    while rs[0].redis_ok().await {
        assert!(hung.elapsed() < Duration::from_secs(8), "/readyz still 200 {:?} after Redis hung", hung.elapsed());
        n += 1;
        let (status, body) = publish(n).await;
        let message = body["error"]["message"].as_str().unwrap_or_default().to_owned();
        match status {
            503 => not_published.push(n),
            504 => unknown.push(n),
            other => panic!("publish {n} during the hang answered {other}: {body}"),
        }
        assert!(!message.contains("ERR") && !message.contains("NOSCRIPT"), "Redis internals leak: {message}");
    }
    eprintln!(
        "down after {:?}: {} unknown (504), {} not published (503)",
        hung.elapsed(),
        unknown.len(),
        not_published.len()
    );
    // Known down: refused at once, and certainly not published.
    for _ in 0..5 {
        n += 1;
        let (status, body) = publish(n).await;
        assert_eq!((status, body["error"]["code"].as_str()), (503, Some("unavailable")), "{body}");
        not_published.push(n);
    }

    redis.resume();
    eventually(WAIT, "ready again", || async { rs[0].redis_ok().await.then_some(()) }).await;
    let marker = n + 1;
    eventually(WAIT, "a publish after the resume", || async { (publish(marker).await.0 == 200).then_some(()) }).await;
    let mut got = Vec::new();
    loop {
        let value = member.next("n").await[0].as_u64().unwrap();
        if value == marker {
            break;
        }
        got.push(value);
    }
    let lies: Vec<_> = got.iter().filter(|v| not_published.contains(v)).collect();
    assert!(lies.is_empty(), "answered 503 but delivered: {lies:?} (delivered {got:?})");
}

/// Issue 14: every join's history read created a `…:meta` key living 7 days, so joining many
/// channel names filled Redis. What a read creates now lives as long as history; a publish is
/// what makes a room's position last.
#[tokio::test]
async fn a_join_creates_nothing_in_redis_that_outlives_history() {
    let redis = RedisServer::start();
    let env = [("ROOMCAST_HISTORY_TTL", "30s"), ("ROOMCAST_PRESENCE_GRACE", "100ms")];
    let rs = Replica::ready(1, &redis.url(), &env).await;
    let mut any_channel = claims("t1", "ada");
    any_channel["channels"] = json!(["*"]);
    let c = Client::connect(rs[0].addr, Connect::token(&token(&any_channel))).await.unwrap();
    for i in 0..20 {
        join(&c, json!({ "channel": format!("browse-{i}") })).await;
        assert_eq!(c.request("leave", json!({ "channel": format!("browse-{i}") })).await["ok"], true);
    }
    // Once the presence grace is over, what is left of those rooms is their position, with
    // the history's TTL.
    let keys = eventually(WAIT, "only the rooms' meta keys left", || async {
        let keys = redis.cli(&["KEYS", "roomcast:{tenant:t1:channel:*"]);
        let keys: Vec<String> = keys.lines().map(str::to_owned).collect();
        keys.iter().all(|k| k.ends_with(":meta")).then_some(keys)
    })
    .await;
    assert_eq!(keys.len(), 20, "{keys:?}");
    for key in &keys {
        let ttl: i64 = redis.cli(&["PTTL", key]).parse().unwrap();
        assert!((1..=30_000).contains(&ttl), "{key} lives {ttl} ms, not the history's 30 s");
    }
    let (status, _) = rs[0].publish(&json!({ "tenant": "t1", "channel": "browse-0", "event": "e", "data": 1 })).await;
    assert_eq!(status, 200);
    let ttl: i64 = redis.cli(&["PTTL", "roomcast:{tenant:t1:channel:browse-0}:meta"]).parse().unwrap();
    assert!(ttl > 24 * 3600 * 1000, "a published room keeps its position for days: {ttl} ms");
}

/// Issue 14: a publisher that retries (after a 504, or a lost answer) with the same event id
/// gets the event delivered once, whichever replica takes the retry, and the first receipt.
#[tokio::test]
async fn a_publish_retried_with_the_same_id_is_delivered_once() {
    let redis = RedisServer::start();
    let rs = Replica::ready(2, &redis.url(), &[]).await;
    let member = rs[1].connect_user("t1", "ada").await;
    join(&member, json!({ "project": "p1" })).await;
    let body = |id: &str, n: u64| json!({ "tenant": "t1", "project": "p1", "event": "n", "data": n, "id": id });
    let (status, first) = rs[0].publish(&body("order-42-shipped", 1)).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["id"], "order-42-shipped");
    assert!(first.get("duplicate").is_none());
    let (status, retry) = rs[1].publish(&body("order-42-shipped", 1)).await;
    assert_eq!(status, 200, "{retry}");
    assert_eq!((retry["duplicate"].clone(), retry["offset"].clone()), (json!(true), first["offset"].clone()));
    // The SDK's idempotent emit shares the same ids.
    let publisher = Publisher::connect(&redis.url()).await.unwrap();
    let sdk = publisher.project("t1", "p1").emit_with_id("n", &json!(1), "order-42-shipped").await.unwrap();
    assert!(sdk.duplicate && sdk.offset == first["offset"].as_u64(), "{sdk:?}");
    let fresh = publisher.project("t1", "p1").emit_with_id("n", &json!(2), "order-43-shipped").await.unwrap();
    assert!(!fresh.duplicate && fresh.offset == Some(first["offset"].as_u64().unwrap() + 1), "{fresh:?}");
    let again = publisher.project("t1", "p1").emit_with_id("n", &json!(2), "order-43-shipped").await.unwrap();
    assert!(again.duplicate, "{again:?}");
    // A batch with ids (what the outbox relay sends), retried: only what is new is published,
    // and the receipts say which were duplicates.
    let target = publisher.project("t1", "p1");
    let mut batch = publisher.batch();
    batch.emit_with_id(&target, "n", &json!(2), "order-43-shipped").unwrap();
    batch.emit_with_id(&target, "n", &json!(3), "order-44-shipped").unwrap();
    let receipts = batch.send().await.unwrap();
    assert_eq!(receipts.iter().map(|r| r.duplicate).collect::<Vec<_>>(), [true, false], "{receipts:?}");
    assert_eq!(receipts[1].id.as_deref(), Some("order-44-shipped"));
    let mut batch = publisher.batch();
    assert!(batch.emit_with_id(&target, "n", &json!(4), "not an id").is_err(), "ids are checked as they are added");
    let (status, _) = rs[0].publish(&json!({ "tenant": "t1", "project": "p1", "event": "done", "data": 0 })).await;
    assert_eq!(status, 200);
    member.next("done").await;
    let got: Vec<Value> = member.events("n").into_iter().map(|args| args[0].clone()).collect();
    assert_eq!(got, [json!(1), json!(2), json!(3)], "each id once");
    // An id outside the id grammar is refused, as a room id would be.
    let (status, refused) = rs[0].publish(&body("not an id", 3)).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (400, Some("invalid_payload")), "{refused}");
}
