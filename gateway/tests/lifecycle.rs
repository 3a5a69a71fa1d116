//! Lifecycle events (issue 16, point 4): exactly once per transition cluster-wide — through a
//! SIGKILLed replica's reaping and across reconnects within the grace period — into the Redis
//! Stream sink and signed webhooks that are retried, bounded and counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::{
    redis::{RedisCluster, RedisServer},
    replica::Replica,
    *,
};
use roomcast_publisher::events::{self, Batch, Event};
use serde_json::json;

const HOOK_SECRET: &str = "webhook-secret-for-tests-0123456789abcdef";
const STREAM: &str = "roomcast:{events}";

/// A webhook receiver: records every request, answers 500 to the first `fail_first`, and 503
/// while `down`.
#[derive(Clone, Default)]
struct Receiver {
    /// (signature header, body, answered 2xx) of every request.
    requests: Arc<Mutex<Vec<(String, String, bool)>>>,
    fail_first: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
}

impl Receiver {
    async fn start(fail_first: usize) -> (Receiver, String) {
        let receiver = Receiver::default();
        receiver.fail_first.store(fail_first, Ordering::SeqCst);
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let state = state.clone();
                async move {
                    let signature = headers
                        .get(events::SIGNATURE_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let failing = state.down.load(Ordering::SeqCst)
                        || state
                            .fail_first
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok();
                    state.requests.lock().unwrap().push((signature, body, !failing));
                    if failing { axum::http::StatusCode::INTERNAL_SERVER_ERROR } else { axum::http::StatusCode::OK }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, format!("http://{addr}/hook"))
    }

    /// Every event of every request answered 2xx, checking each request's signature.
    fn delivered(&self) -> Vec<Event> {
        let requests = self.requests.lock().unwrap();
        let now = now();
        let mut out = Vec::new();
        for (signature, body, ok) in requests.iter() {
            events::verify(HOOK_SECRET.as_bytes(), signature, body.as_bytes(), now, events::DEFAULT_TOLERANCE)
                .unwrap_or_else(|e| panic!("bad signature {signature:?}: {e}"));
            if *ok {
                out.extend(serde_json::from_str::<Batch>(body).unwrap().events);
            }
        }
        out
    }

    fn failed(&self) -> usize {
        self.requests.lock().unwrap().iter().filter(|(_, _, ok)| !ok).count()
    }
}

/// The events in the stream sink, oldest first.
fn stream(redis: &RedisServer) -> Vec<Event> {
    redis
        .cli(&["XRANGE", STREAM, "-", "+"])
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Events webhooks have taken but not acknowledged, all groups together.
fn pending(redis: &RedisServer) -> u64 {
    let info = redis.cli(&["XINFO", "GROUPS", STREAM]);
    let lines: Vec<&str> = info.lines().collect();
    lines.windows(2).filter(|w| w[0] == "pending").map(|w| w[1].parse::<u64>().unwrap_or(0)).sum()
}

/// `(type, user or room)` of `events`, in order, for those about `tenant`.
fn summary(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            let what = e.user.clone().or(e.project.clone()).or(e.channel.clone()).unwrap_or_default();
            (e.kind.clone(), what)
        })
        .collect()
}

fn of_kind<'a>(events: &'a [Event], kind: &str, who: &str) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| e.kind == kind && (e.user.as_deref() == Some(who) || e.project.as_deref() == Some(who)))
        .collect()
}

/// Ids delivered more than once.
fn repeated(events: &[Event]) -> Vec<String> {
    let mut seen = BTreeMap::<&str, usize>::new();
    for e in events {
        *seen.entry(&e.id).or_default() += 1;
    }
    seen.into_iter().filter(|(_, n)| *n > 1).map(|(id, _)| id.to_owned()).collect()
}

#[tokio::test]
async fn user_offline_comes_once_from_the_reaper_and_not_for_a_reconnect_within_grace() {
    let redis = RedisServer::start();
    let (receiver, url) = Receiver::start(0).await;
    let env = [
        ("ROOMCAST_PRESENCE_GRACE", "1s"),
        ("ROOMCAST_PRESENCE_LEASE_TTL", "2s"),
        ("ROOMCAST_EVENTS_STREAM", "true"),
        ("ROOMCAST_WEBHOOK_URL", url.as_str()),
        ("ROOMCAST_WEBHOOK_SECRET", HOOK_SECRET),
        ("ROOMCAST_WEBHOOK_BATCH_WAIT", "20ms"),
    ];
    let mut rs = Replica::ready(2, &redis.url(), &env).await;
    let tab = rs[0].connect_user("t1", "ada").await;
    assert_eq!(tab.request("join", json!({ "project": "p1" })).await["ok"], true);
    eventually(WAIT, "ada online and in p1", || async { (stream(&redis).len() == 3).then_some(()) }).await;
    let mut joined = summary(&stream(&redis));
    joined.sort();
    assert_eq!(
        joined,
        [
            ("member.joined".into(), "ada".into()),
            ("room.occupied".into(), "p1".into()),
            ("user.online".into(), "ada".into())
        ]
    );

    // The tab reconnects to the other replica within the grace period: nothing happened.
    tab.close();
    let back = rs[1].connect_user("t1", "ada").await;
    assert_eq!(back.request("join", json!({ "project": "p1" })).await["ok"], true);
    // The first replica's grace ended: only the second replica's connection counts now.
    eventually(WAIT, "the old tab's grace over", || async {
        (redis.cli(&["HGET", "roomcast:{tenant:t1:user:ada}:presence", "ada"]) == "1"
            && redis.cli(&["HGET", "roomcast:{tenant:t1:project:p1}:presence", "ada"]) == "1")
            .then_some(())
    })
    .await;
    assert_eq!(stream(&redis).len(), 3, "a reconnect within the grace period is no transition");

    // The replica holding ada's only tab dies: its reaper says she left, once. (Killed with no
    // webhook batch in flight: one it had sent but not acknowledged would come again, which is
    // at-least-once delivery, not what this test is about.)
    eventually(WAIT, "the webhook caught up", || async {
        (receiver.delivered().len() == 3 && pending(&redis) == 0).then_some(())
    })
    .await;
    rs[1].kill9();
    eventually(WAIT, "ada reaped", || async {
        let events = stream(&redis);
        (of_kind(&events, "user.offline", "ada").len() == 1 && of_kind(&events, "member.left", "ada").len() == 1)
            .then_some(())
    })
    .await;
    // The reaping is complete (the dead replica's rooms are gone), and nothing else came.
    eventually(WAIT, "reaping finished", || async {
        (redis.cli(&["ZCARD", "roomcast:replicas"]) == "1").then_some(())
    })
    .await;
    let events = stream(&redis);
    // The reaper goes through the dead replica's rooms in no particular order.
    let mut reaped = summary(&events[3..]);
    reaped.sort();
    assert_eq!(
        reaped,
        [
            ("member.left".into(), "ada".into()),
            ("room.vacated".into(), "p1".into()),
            ("user.offline".into(), "ada".into()),
        ],
        "{events:?}"
    );
    assert!(events.iter().all(|e| e.tenant.as_deref() == Some("t1") && e.ts > 0));
    assert_eq!(
        redis.cli(&["EXISTS", "roomcast:{tenant:t1:user:ada}:outbox", "roomcast:{tenant:t1:project:p1}:outbox"]),
        "0",
        "every outbox forwarded"
    );
    // The webhook got each of them exactly once, signed.
    eventually(WAIT, "the webhook has every event", || async {
        (receiver.delivered().len() >= events.len()).then_some(())
    })
    .await;
    let delivered = receiver.delivered();
    assert!(repeated(&delivered).is_empty(), "{delivered:?}");
    let ids = |events: &[Event]| events.iter().map(|e| e.id.clone()).collect::<BTreeSet<_>>();
    assert_eq!(ids(&delivered), ids(&events));
}

#[tokio::test]
async fn a_receiver_failing_three_times_gets_every_event_once_by_id() {
    let redis = RedisServer::start();
    let (receiver, url) = Receiver::start(3).await;
    let env = [
        ("ROOMCAST_PRESENCE_GRACE", "100ms"),
        ("ROOMCAST_WEBHOOK_URL", url.as_str()),
        ("ROOMCAST_WEBHOOK_SECRET", HOOK_SECRET),
        ("ROOMCAST_WEBHOOK_BATCH_SIZE", "4"),
        ("ROOMCAST_WEBHOOK_BATCH_WAIT", "20ms"),
        ("ROOMCAST_WEBHOOK_RETRY_MAX", "1s"),
    ];
    let rs = Replica::ready(2, &redis.url(), &env).await;
    let mut clients = Vec::new();
    for (i, user) in ["u1", "u2", "u3", "u4", "u5", "u6"].iter().enumerate() {
        let c = rs[i % 2].connect_user("t1", user).await;
        assert_eq!(c.request("join", json!({ "channel": "c1" })).await["ok"], true);
        clients.push(c);
    }
    for c in clients.drain(..3) {
        c.close();
    }
    // 6 online + occupied + 6 joined, then 3 left and offline: 19 events.
    eventually(WAIT, "19 events recorded", || async { (stream(&redis).len() == 19).then_some(()) }).await;
    let recorded = stream(&redis);
    eventually(WAIT, "every event delivered", || async {
        let ids: BTreeSet<String> = receiver.delivered().into_iter().map(|e| e.id).collect();
        (ids.len() == recorded.len()).then_some(())
    })
    .await;
    let delivered = receiver.delivered();
    assert!(repeated(&delivered).is_empty(), "each event once by id: {delivered:?}");
    let delivered_ids: BTreeSet<_> = delivered.iter().map(|e| &e.id).collect();
    assert_eq!(delivered_ids, recorded.iter().map(|e| &e.id).collect());
    assert_eq!(receiver.failed(), 3);
    let mut failed = 0.0;
    for r in &rs {
        failed += r.metric("roomcast_webhook_requests_total", r#"result="failed""#).await;
        assert_eq!(r.metric("roomcast_webhook_dropped_total", "").await, 0.0);
    }
    assert_eq!(failed, 3.0);
    assert!(delivered.iter().all(|e| e.kind.contains('.') && e.tenant.as_deref() == Some("t1")));
}

#[tokio::test]
async fn a_receiver_down_longer_than_the_buffer_loses_only_what_is_counted() {
    let redis = RedisServer::start();
    let (receiver, url) = Receiver::start(0).await;
    receiver.down.store(true, Ordering::SeqCst);
    let env = [
        ("ROOMCAST_EVENTS", "user.online"),
        ("ROOMCAST_EVENTS_BUFFER", "10"),
        ("ROOMCAST_WEBHOOK_URL", url.as_str()),
        ("ROOMCAST_WEBHOOK_SECRET", HOOK_SECRET),
        ("ROOMCAST_WEBHOOK_BATCH_SIZE", "3"),
        ("ROOMCAST_WEBHOOK_BATCH_WAIT", "20ms"),
        ("ROOMCAST_WEBHOOK_RETRY_MAX", "300ms"),
    ];
    let rs = Replica::ready(2, &redis.url(), &env).await;
    let mut clients = Vec::new();
    for i in 0..30 {
        clients.push(rs[i % 2].connect_user("t1", &format!("u{i}")).await);
    }
    eventually(WAIT, "30 events appended", || async {
        (redis.cli(&["GET", "roomcast:{events}:seq"]) == "30").then_some(())
    })
    .await;
    assert_eq!(redis.cli(&["XLEN", STREAM]), "10", "the stream is capped");
    receiver.down.store(false, Ordering::SeqCst);
    let dropped = || async {
        let mut sum = 0.0;
        for r in &rs {
            sum += r.metric("roomcast_webhook_dropped_total", "").await;
        }
        sum as usize
    };
    let (delivered, lost) = eventually(WAIT, "every event delivered or counted", || async {
        let delivered: BTreeSet<String> = receiver.delivered().into_iter().map(|e| e.id).collect();
        let lost = dropped().await;
        (delivered.len() + lost == 30).then_some((delivered.len(), lost))
    })
    .await;
    assert!(lost >= 30 - 10 - 2 * 3, "at most the stream and one batch per replica survive: lost {lost}");
    assert!(repeated(&receiver.delivered()).is_empty());
    // What the stream still holds was never trimmed: none of it may be counted as lost.
    let kept: BTreeSet<String> = stream(&redis).into_iter().map(|e| e.id).collect();
    let got: BTreeSet<String> = receiver.delivered().into_iter().map(|e| e.id).collect();
    assert_eq!(kept.len(), 10);
    assert!(kept.is_subset(&got), "kept {kept:?}, delivered {got:?}");
    assert!(delivered >= 10);
    assert!(receiver.failed() > 0);
}

/// A replica that died after its script recorded events and before it forwarded them: its
/// reaper forwards what it left in the room's outbox.
#[tokio::test]
async fn a_dead_replicas_unforwarded_events_are_forwarded_by_its_reaper() {
    let redis = RedisServer::start();
    let env = [("ROOMCAST_EVENTS_STREAM", "true"), ("ROOMCAST_PRESENCE_LEASE_TTL", "1s")];
    let _rs = Replica::ready(1, &redis.url(), &env).await;
    let left = r#"{"id":"dead-1","type":"member.left","ts":1,"tenant":"t1","project":"p9","user":"zoe"}"#;
    let other = r#"{"id":"live-1","type":"member.left","ts":1,"tenant":"t1","project":"p9","user":"yan"}"#;
    let outbox = "roomcast:{tenant:t1:project:p9}:outbox";
    redis.cli(&["RPUSH", outbox, &format!("deadbeef\n{left}")]);
    redis.cli(&["RPUSH", outbox, &format!("someone-alive\n{other}")]);
    redis.cli(&["SADD", "roomcast:replica:{deadbeef}:rooms", "tenant:t1:project:p9"]);
    redis.cli(&["ZADD", "roomcast:replicas", "1", "deadbeef"]);
    eventually(WAIT, "the dead replica's event forwarded", || async {
        (stream(&redis).iter().any(|e| e.id == "dead-1")).then_some(())
    })
    .await;
    assert_eq!(redis.cli(&["LRANGE", outbox, "0", "-1"]), format!("someone-alive\n{other}"), "only its own");
    assert_eq!(stream(&redis).len(), 1);
}

/// A single node: the memory log feeds the webhook, with the events a replica emits itself.
#[tokio::test]
async fn a_single_node_sends_every_event_type() {
    let (receiver, url) = Receiver::start(0).await;
    let gw = TestGateway::start_with(|c| {
        c.presence_grace = Duration::from_millis(100);
        c.webhook_url = vec![url.clone()];
        c.webhook_secret = Some(HOOK_SECRET.to_owned().into());
        c.webhook_batch_wait = Duration::from_millis(20);
    })
    .await;
    let c = gw.connect_user("t1", "ada").await;
    assert_eq!(c.request("join", json!({ "channel": "c1" })).await["ok"], true);
    let refused = c.request("auth:refresh", json!({ "token": "not-a-token" })).await;
    assert_eq!(code(&refused), "token_invalid");
    let _ = Client::connect(gw.addr, Connect::token("nope")).await;
    c.close();
    let expected = [
        ("user.online", "ada"),
        ("room.occupied", "c1"),
        ("member.joined", "ada"),
        ("token.refresh_failed", "ada"),
        ("connection.refused", ""),
        ("member.left", "ada"),
        ("room.vacated", "c1"),
        ("user.offline", "ada"),
    ];
    let delivered = eventually(WAIT, "every type delivered", || async {
        let delivered = receiver.delivered();
        (delivered.len() >= expected.len()).then_some(delivered)
    })
    .await;
    let got: BTreeSet<(String, String)> = summary(&delivered).into_iter().collect();
    let want: BTreeSet<(String, String)> = expected.iter().map(|(k, w)| ((*k).to_owned(), (*w).to_owned())).collect();
    assert_eq!(got, want, "{delivered:?}");
    assert_eq!(delivered.len(), expected.len());
    let refresh = delivered.iter().find(|e| e.kind == "token.refresh_failed").unwrap();
    assert_eq!(refresh.code.as_deref(), Some("token_invalid"));
    let refused = delivered.iter().find(|e| e.kind == "connection.refused").unwrap();
    assert_eq!(
        (refused.code.as_deref(), refused.tenant.as_deref(), refused.user.as_deref()),
        (Some("token_invalid"), None, None)
    );
}

/// The README's Node and Python verification snippets accept what the gateway signs, and refuse
/// a changed body, another secret and an old timestamp.
#[test]
fn the_readmes_verification_snippets_agree_with_the_signer() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let block = |start: &str| {
        let at = readme.find(start).unwrap_or_else(|| panic!("README has {start:?}"));
        let code = &readme[at..];
        let code = &code[code.find('\n').unwrap() + 1..];
        code[..code.find("```").unwrap()].to_owned()
    };
    let node = block("```js\nimport { createHmac");
    let python = block("```python\nimport hashlib, hmac");
    let body = r#"{"events":[{"id":"a-1","type":"user.online","ts":1,"tenant":"t1","user":"ada"}]}"#;
    let header = events::sign(HOOK_SECRET.as_bytes(), now(), body.as_bytes());
    let old = events::sign(HOOK_SECRET.as_bytes(), now() - 600, body.as_bytes());
    // Each line: secret, header, body → the snippet's answer.
    let cases = [
        (HOOK_SECRET, header.as_str(), body, "true"),
        (HOOK_SECRET, header.as_str(), "{\"events\":[]}", "false"),
        ("another-secret-0123456789abcdef0123", header.as_str(), body, "false"),
        (HOOK_SECRET, old.as_str(), body, "false"),
        (HOOK_SECRET, "garbage", body, "false"),
    ];
    for (secret, header, body, want) in cases {
        let js = format!(
            "{node}\nconsole.log(String(verifyRoomcast({}, {}, Buffer.from({}))));",
            json!(secret),
            json!(header),
            json!(body)
        );
        let out = std::process::Command::new("node").args(["--input-type=module", "-e", &js]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want, "node: {}", String::from_utf8_lossy(&out.stderr));
        let py = format!(
            "{python}\nprint(str(verify_roomcast({}.encode(), {}, {}.encode())).lower())",
            json!(secret),
            json!(header),
            json!(body)
        );
        let out = std::process::Command::new("python3").args(["-c", &py]).output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            want,
            "python: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Redis runs an exit whose reply the replica never gets (Redis hung past the command
/// timeout): the event the script recorded is still forwarded, once.
#[tokio::test]
async fn an_exit_whose_reply_was_lost_still_yields_its_event_once() {
    let redis = RedisServer::start();
    let env = [
        ("ROOMCAST_EVENTS_STREAM", "true"),
        ("ROOMCAST_EVENTS", "user.online,user.offline"),
        ("ROOMCAST_PRESENCE_GRACE", "100ms"),
        ("ROOMCAST_PRESENCE_LEASE_TTL", "30s"),
        ("ROOMCAST_REDIS_COMMAND_TIMEOUT", "300ms"),
    ];
    let rs = Replica::ready(1, &redis.url(), &env).await;
    let ada = rs[0].connect_user("t1", "ada").await;
    eventually(WAIT, "ada online", || async { (stream(&redis).len() == 1).then_some(()) }).await;
    redis.pause();
    ada.close();
    eventually(WAIT, "the exit timed out", || async {
        (rs[0].metric("roomcast_presence_errors_total", "").await >= 1.0).then_some(())
    })
    .await;
    redis.resume();
    eventually(WAIT, "ada offline", || async {
        (of_kind(&stream(&redis), "user.offline", "ada").len() == 1).then_some(())
    })
    .await;
    eventually(WAIT, "her presence and outbox gone", || async {
        (redis.cli(&["EXISTS", "roomcast:{tenant:t1:user:ada}:presence", "roomcast:{tenant:t1:user:ada}:outbox"])
            == "0")
            .then_some(())
    })
    .await;
    assert_eq!(summary(&stream(&redis)), [("user.online".into(), "ada".into()), ("user.offline".into(), "ada".into())]);
}

/// A replica stopping gracefully removes its users' presence itself, after the grace period:
/// their leaving events come once, without waiting for a lease to expire, and the lease goes.
#[tokio::test]
async fn a_graceful_stop_sends_its_users_leaving_events_once_and_releases_its_lease() {
    let redis = RedisServer::start();
    let env = [
        ("ROOMCAST_EVENTS_STREAM", "true"),
        ("ROOMCAST_PRESENCE_GRACE", "200ms"),
        // Renewed every second, so that renewals run during the stop; the events must be
        // there when it has exited, long before this lease could expire and be reaped.
        ("ROOMCAST_PRESENCE_LEASE_TTL", "3s"),
    ];
    let mut rs = Replica::ready(2, &redis.url(), &env).await;
    let ada = rs[0].connect_user("t1", "ada").await;
    assert_eq!(ada.request("join", json!({ "channel": "c1" })).await["ok"], true);
    let _bob = rs[1].connect_user("t1", "bob").await;
    eventually(WAIT, "both online", || async { (stream(&redis).len() == 4).then_some(()) }).await;
    assert!(rs[0].terminate(Duration::from_secs(10)).await, "a clean exit");
    let events = stream(&redis);
    let mut left = summary(&events[4..]);
    left.sort();
    assert_eq!(
        left,
        [
            ("member.left".into(), "ada".into()),
            ("room.vacated".into(), "c1".into()),
            ("user.offline".into(), "ada".into())
        ],
        "{events:?}"
    );
    assert_eq!(redis.cli(&["ZCARD", "roomcast:replicas"]), "1", "its lease released");
    assert_eq!(of_kind(&events, "user.offline", "bob").len(), 0);
}

/// On a Redis Cluster every script's keys are in one slot (the room's outbox with its presence,
/// the stream with its sequence): the same events, the reaper's included.
#[tokio::test]
async fn lifecycle_events_work_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let (receiver, url) = Receiver::start(0).await;
    let env = [
        ("ROOMCAST_PRESENCE_GRACE", "200ms"),
        ("ROOMCAST_PRESENCE_LEASE_TTL", "2s"),
        ("ROOMCAST_EVENTS_STREAM", "true"),
        ("ROOMCAST_WEBHOOK_URL", url.as_str()),
        ("ROOMCAST_WEBHOOK_SECRET", HOOK_SECRET),
        ("ROOMCAST_WEBHOOK_BATCH_WAIT", "20ms"),
        // A batch the killed replica had taken is claimed by the other after 2 × (20ms + 500ms
        // + 2s) + 1s.
        ("ROOMCAST_WEBHOOK_RETRY_MAX", "500ms"),
        ("ROOMCAST_WEBHOOK_TIMEOUT", "2s"),
    ];
    let mut rs = Vec::new();
    for _ in 0..2 {
        let r = Replica::spawn(Some(&cluster.url()), &env).await;
        eventually(WAIT, "ready", || async { r.redis_ok().await.then_some(()) }).await;
        rs.push(r);
    }
    let ada = rs[0].connect_user("t1", "ada").await;
    assert_eq!(ada.request("join", json!({ "channel": "c1" })).await["ok"], true);
    let bob = rs[1].connect_user("t1", "bob").await;
    assert_eq!(bob.request("join", json!({ "channel": "c1" })).await["ok"], true);
    // Presence reaches Redis after the ack: killed before, bob would never have been there.
    eventually(WAIT, "bob in c1", || async {
        (of_kind(&receiver.delivered(), "member.joined", "bob").len() == 1).then_some(())
    })
    .await;
    ada.close();
    rs[1].kill9(); // bob's replica: reaped by rs[0]
    let want: BTreeSet<(String, String)> = [
        ("user.online", "ada"),
        ("room.occupied", "c1"),
        ("member.joined", "ada"),
        ("user.online", "bob"),
        ("member.joined", "bob"),
        ("member.left", "ada"),
        ("user.offline", "ada"),
        ("member.left", "bob"),
        ("room.vacated", "c1"),
        ("user.offline", "bob"),
    ]
    .iter()
    .map(|(k, w)| ((*k).to_owned(), (*w).to_owned()))
    .collect();
    // At least once: a batch the killed replica had sent but not acknowledged comes again, with
    // the same ids. By id, each event exactly once.
    let distinct = |events: Vec<Event>| {
        let mut seen = BTreeSet::new();
        events.into_iter().filter(|e| seen.insert(e.id.clone())).collect::<Vec<_>>()
    };
    let delivered = eventually(3 * WAIT, "every event delivered", || async {
        let delivered = distinct(receiver.delivered());
        (delivered.len() >= want.len()).then_some(delivered)
    })
    .await;
    assert_eq!(summary(&delivered).into_iter().collect::<BTreeSet<_>>(), want, "{delivered:?}");
    assert_eq!(delivered.len(), want.len(), "one id per transition: {delivered:?}");
    let node = &cluster.nodes[cluster.owner_of(STREAM)];
    assert_eq!(node.cli(&["XLEN", STREAM]), want.len().to_string(), "the stream sink has them too");
}
