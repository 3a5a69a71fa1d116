//! Operating the gateway: health and readiness, metrics, origin policy, graceful shutdown, and
//! the real binary's startup errors, signals and logs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let gw = TestGateway::start().await;
    assert_eq!(gw.admin_get("/healthz").await.0, 200);
    let (status, body) = gw.admin_get("/readyz").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ready"}"#));
    assert_eq!(gw.admin_get("/nope").await.0, 404);

    let c = gw.connect_user("t1", "u1").await;
    c.request("join", json!({ "project": "p1" })).await;
    let _ = Client::connect(gw.addr, Connect::default()).await;
    let scrape = gw.metrics().await;
    for name in [
        "roomcast_build_info",
        "roomcast_connections",
        "roomcast_connections_accepted_total",
        "roomcast_connections_rejected_total",
        "roomcast_room_joins_total",
        "roomcast_client_events_total",
        "roomcast_local_rooms",
    ] {
        assert!(scrape.contains(&format!("# TYPE {name} ")), "{name} missing from\n{scrape}");
    }
    assert!(sample(&scrape, "roomcast_connections", "") >= 1.0);
    assert!(scrape.contains(r#"roomcast_build_info{version=""#));
    // Labels stay bounded: no socket, user or room ids anywhere in the scrape.
    assert!(!scrape.contains(&c.sid) && !scrape.contains("u1") && !scrape.contains("tenant:t1"), "{scrape}");
}

#[tokio::test]
async fn shutdown_unreadies_refuses_new_sockets_then_moves_clients_elsewhere() {
    let mut gw = TestGateway::start_with(|c| c.drain_delay = Duration::from_millis(1500)).await;
    let client = gw.connect_user("t1", "u1").await;
    let begun = Instant::now();
    gw.begin_shutdown();

    eventually(WAIT, "readyz to fail", || async { (gw.admin_get("/readyz").await.0 == 503).then_some(()) }).await;
    let (_, body) = gw.admin_get("/readyz").await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["reason"], "draining");
    match Client::connect(gw.addr, Connect::token(&user_token("t1", "u2"))).await {
        Err(ConnectFailure::Http(503)) => {}
        other => panic!("a new connection during drain should get 503, got {:?}", other.map(|c| c.sid)),
    }
    // Still served during the drain delay.
    assert_eq!(client.request("join", json!({ "project": "p1" })).await["ok"], true);

    let reason = client.next("roomcast:disconnect").await;
    assert!(begun.elapsed() >= Duration::from_millis(1500), "told to move before the drain delay");
    assert_eq!(reason[0]["code"], "server_shutdown");
    assert_eq!(reason[0]["reconnect"], true);
    assert!(client.closed().await);
    // The transport was closed without a Socket.IO disconnect: socket.io-client reconnects.
    assert!(!client.got_server_disconnect());
    gw.stopped_within(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_origin_allow_list_is_enforced_for_websockets_and_cors() {
    let gw = TestGateway::start_with(|c| c.cors_origins = vec!["https://app.example".into()]).await;
    let t = user_token("t1", "u1");
    let with_origin = |origin: &str| Connect { headers: vec![("origin", origin.to_owned())], ..Connect::token(&t) };
    Client::connect(gw.addr, with_origin("https://app.example")).await.expect("listed origin");
    assert_eq!(
        Client::connect(gw.addr, with_origin("https://evil.example")).await.err(),
        Some(ConnectFailure::Http(403))
    );
    // Non-browser clients send no Origin and are not affected.
    Client::connect(gw.addr, Connect::token(&t)).await.expect("no origin");

    let (status, _) = http(
        gw.addr,
        "OPTIONS",
        "/socket.io/?EIO=4&transport=polling",
        &[("Origin", "https://app.example"), ("Access-Control-Request-Method", "GET")],
        "",
    )
    .await;
    assert_eq!(status, 200, "CORS preflight for a listed origin");
}

fn gateway_bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_roomcast-gateway"));
    for (key, _) in std::env::vars() {
        if key.starts_with("ROOMCAST_") {
            cmd.env_remove(key);
        }
    }
    // The internal API port's default (3001) may be taken on a shared machine.
    cmd.env("ROOMCAST_API_LISTEN", "127.0.0.1:0");
    // `--dev` keeps its secret in the user's cache folder; never touch the real one.
    cmd.env("XDG_CACHE_HOME", std::env::temp_dir().join(format!("roomcast-tests-{}", std::process::id())));
    cmd
}

/// Runs the binary to completion, killing it if it outlives `WAIT` (a startup error must be quick).
fn run_to_exit(cmd: &mut Command) -> std::process::Output {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let out = child.wait_with_output().unwrap();
        let _ = done_tx.send(());
        out
    });
    if done_rx.recv_timeout(WAIT).is_err() {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        panic!("the gateway kept running instead of refusing its configuration");
    }
    waiter.join().unwrap()
}

#[test]
fn bad_configuration_stops_startup_with_one_line_naming_the_option() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    /// Arguments, environment, and what the error line must mention.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&[], &[], "ROOMCAST_JWT_SECRET"),
        (&[], &[("ROOMCAST_JWT_PUBLIC_KEY_FILE", "/nonexistent/key.pem")], "ROOMCAST_JWT_PUBLIC_KEY_FILE"),
        (&[], &[("ROOMCAST_JWT_SECRET", SECRET), ("ROOMCAST_JWKS_FILE", "/x.json")], "conflicting options"),
        (&[], &[("ROOMCAST_JWT_SECRET", "short")], "ROOMCAST_JWT_SECRET"),
        (&["--dev"], &[("ROOMCAST_LISTEN", &taken), ("ROOMCAST_ADMIN_LISTEN", "127.0.0.1:0")], "ROOMCAST_LISTEN"),
        (
            &["--dev"],
            &[("ROOMCAST_API_LISTEN", &taken), ("ROOMCAST_ADMIN_LISTEN", "127.0.0.1:0")],
            "ROOMCAST_API_LISTEN",
        ),
        (&["--dev"], &[("ROOMCAST_CORS_ORIGINS", "app.example")], "ROOMCAST_CORS_ORIGINS"),
    ];
    for (args, env, expected) in cases {
        let out = run_to_exit(gateway_bin().args(*args).envs(env.iter().copied()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(expected), "{expected} not named in: {stderr}");
        assert!(!stderr.contains(SECRET), "secret printed: {stderr}");
    }
    // Values that do not parse, from a flag or from the environment: the same one line.
    let cases: &[Case] = &[
        (&["--dev", "--drain-delay", "soon"], &[], "ROOMCAST_DRAIN_DELAY: invalid value \"soon\""),
        (&["--dev", "--listen", "nope"], &[], "ROOMCAST_LISTEN: invalid value \"nope\""),
        (&["--dev"], &[("ROOMCAST_ADMIN_LISTEN", "localhost")], "ROOMCAST_ADMIN_LISTEN"),
        (&["--dev"], &[("ROOMCAST_LOG_FORMAT", "xml")], "ROOMCAST_LOG_FORMAT: invalid value \"xml\": expected one of"),
        (&["--dev"], &[("ROOMCAST_REDIS_BUFFER", "-3")], "ROOMCAST_REDIS_BUFFER"),
    ];
    for (args, env, expected) in cases {
        let out = run_to_exit(gateway_bin().args(*args).envs(env.iter().copied()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert_eq!(stderr.trim().lines().collect::<Vec<_>>().len(), 1, "one line: {stderr}");
        assert!(stderr.starts_with("roomcast-gateway: invalid configuration: "), "{stderr}");
        assert!(stderr.contains(expected), "{expected} not in: {stderr}");
    }
    // Unknown flags stay clap's (it suggests the right spelling).
    let out = run_to_exit(gateway_bin().arg("--lsten"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
}

/// Starts `--dev` with `env`; returns the process, its public address and its banner.
fn dev_gateway(cache: &std::path::Path, env: &[(&str, &str)]) -> (std::process::Child, std::net::SocketAddr, String) {
    let mut child = gateway_bin()
        .arg("--dev")
        .env("XDG_CACHE_HOME", cache)
        .env("ROOMCAST_LISTEN", "127.0.0.1:0")
        .env("ROOMCAST_ADMIN_LISTEN", "127.0.0.1:0")
        .env("ROOMCAST_LOG_FORMAT", "json")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut addr, mut banner) = (None, String::new());
    while addr.is_none() || !banner.contains("transport=polling") {
        let line = rx.recv_timeout(WAIT).expect("the --dev banner");
        match serde_json::from_str::<Value>(&line) {
            Ok(v) if v["message"] == "listening" => addr = v["public"].as_str().and_then(|a| a.parse().ok()),
            Ok(_) => {}
            Err(_) => {
                banner.push_str(&line);
                banner.push('\n');
            }
        }
    }
    (child, addr.unwrap(), banner)
}

/// The banner's token for `user` (its line reads `  user  <token>`).
fn banner_token(banner: &str, user: &str) -> String {
    let prefix = format!("  {user}  ");
    banner
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {user} token in {banner}"))
        .to_owned()
}

#[tokio::test]
async fn dev_mode_prints_two_users_and_keeps_its_secret_for_print_token() {
    let cache = tempfile::tempdir().unwrap();
    let (mut child, addr, banner) = dev_gateway(cache.path(), &[]);
    let secret_file = cache.path().join("roomcast").join("dev-secret");
    assert!(banner.contains(&secret_file.display().to_string()), "the banner names the secret file: {banner}");
    assert!(banner.contains("generated for this run"), "the generated API key is said to be: {banner}");
    assert!(banner.contains("client.mjs"), "the ES module snippet says how to run it: {banner}");
    let (ada, bob) = (banner_token(&banner, "ada"), banner_token(&banner, "bob"));
    // The console, with a token generated for this run, one click away.
    let link = banner.lines().find_map(|l| l.trim().strip_prefix("Console     http://localhost:")).expect(&banner);
    let (port, token) = link.split_once("/console#token=").expect(link);
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], port.parse::<u16>().unwrap()));
    let auth = format!("Bearer {token}");
    let (status, body) = http(admin, "GET", "/console/api/session", &[("Authorization", auth.as_str())], "").await;
    assert_eq!(status, 200, "the linked token opens the console: {body}");
    // A token minted by another process for the running --dev gateway.
    let out =
        run_to_exit(gateway_bin().env("XDG_CACHE_HOME", cache.path()).args(["--dev", "--print-token", "demo/carol"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let carol = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let mut clients = Vec::new();
    for token in [&ada, &bob, &carol] {
        let c = Client::connect(addr, Connect::token(token)).await.expect("the token works on the running gateway");
        assert_eq!(c.request("join", json!({ "channel": "general" })).await["ok"], true);
        clients.push(c);
    }
    // ada sees bob typing: the reason there are two users.
    clients[1].request("typing", json!({ "channel": "general", "typing": true })).await;
    assert_eq!(clients[0].next("typing").await[0]["userId"], "bob");
    let _ = child.kill();
    let _ = child.wait();
    // The next --dev run signs with the same secret: yesterday's tokens still work.
    let (mut again, addr, _) = dev_gateway(cache.path(), &[]);
    assert!(Client::connect(addr, Connect::token(&carol)).await.is_ok());
    let _ = again.kill();
    let _ = again.wait();
}

#[tokio::test]
async fn dev_mode_says_which_configured_keys_it_uses() {
    let cache = tempfile::tempdir().unwrap();
    let (mut child, addr, banner) = dev_gateway(
        cache.path(),
        &[
            ("ROOMCAST_JWT_SECRET", SECRET),
            ("ROOMCAST_API_KEY", "configured-key-0123456789"),
            ("ROOMCAST_CONSOLE_TOKENS", "configured-console-token-0123456789abcdef"),
        ],
    );
    assert!(banner.contains("sign in with a token of ROOMCAST_CONSOLE_TOKENS"), "{banner}");
    assert!(!banner.contains("configured-console-token"), "the configured console token is not printed: {banner}");
    assert!(banner.contains("signed with ROOMCAST_JWT_SECRET"), "{banner}");
    assert!(!banner.contains("generated"), "nothing was generated: {banner}");
    assert!(banner.contains("Bearer $ROOMCAST_API_KEY"), "{banner}");
    assert!(!banner.contains("configured-key-0123456789"), "the configured key is not printed: {banner}");
    assert!(!cache.path().join("roomcast").exists(), "no --dev secret written when a secret is configured");
    assert!(Client::connect(addr, Connect::token(&banner_token(&banner, "ada"))).await.is_ok());
    let _ = child.kill();
    let _ = child.wait();
}

/// The real binary: logs its addresses, serves, exits cleanly on SIGTERM, and never logs a token.
#[tokio::test]
async fn the_binary_drains_on_sigterm_and_never_logs_tokens() {
    let mut child = gateway_bin()
        .env("ROOMCAST_JWT_SECRET", SECRET)
        .env("ROOMCAST_LISTEN", "127.0.0.1:0")
        .env("ROOMCAST_ADMIN_LISTEN", "127.0.0.1:0")
        .env("ROOMCAST_LOG_FORMAT", "json")
        .env("ROOMCAST_LOG", "trace")
        .env("ROOMCAST_DRAIN_DELAY", "300ms")
        .env("ROOMCAST_SHUTDOWN_TIMEOUT", "5s")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut log = Vec::new();
    let public: std::net::SocketAddr = loop {
        let line = lines_rx.recv_timeout(WAIT).expect("a listening line");
        log.push(line.clone());
        let v: Value = serde_json::from_str(&line).expect("JSON logs");
        if v["message"] == "listening" {
            break v["public"].as_str().unwrap().parse().unwrap();
        }
    };

    let good = user_token("t1", "u1");
    let client = Client::connect(public, Connect::token(&good)).await.unwrap();
    client.request("join", json!({ "project": "p1" })).await;
    client.request("auth:refresh", json!({ "token": good })).await;
    let mut forged = claims("t1", "u1");
    forged["sub"] = json!("someone-else");
    let bad = jsonwebtoken::encode(
        &Default::default(),
        &forged,
        &jsonwebtoken::EncodingKey::from_secret(b"wrong-secret-wrong-secret-wrong-s"),
    )
    .unwrap();
    let _ = Client::connect(public, Connect::token(&bad)).await;
    let _ = Client::connect(public, Connect { query: Some(format!("token={bad}")), ..Default::default() }).await;

    let stopped = Instant::now();
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    assert_eq!(client.next("roomcast:disconnect").await[0]["code"], "server_shutdown");
    let exit = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    assert!(stopped.elapsed() < Duration::from_secs(5), "exited within the shutdown timeout");

    while let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(1)) {
        log.push(line);
    }
    let log = log.join("\n");
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(
        log.contains(r#""tenant":"t1""#) && log.contains(r#""user":"u1""#),
        "connection spans carry tenant and user"
    );
    for secret in [good.as_str(), bad.as_str(), SECRET] {
        // The signature part alone is the most telling fragment of a token.
        let fragment = secret.rsplit('.').next().unwrap();
        let leaks: Vec<&str> = log.lines().filter(|l| l.contains(fragment)).collect();
        assert!(leaks.is_empty(), "a token or secret appeared in the logs: {leaks:#?}");
    }
}

/// HTTP long-polling, the transport socket.io-client starts with: the handshake GET, the
/// CONNECT POST and the next GET must all reach the same Engine.IO session.
#[tokio::test]
async fn long_polling_sessions_work_across_requests() {
    let gw = TestGateway::start().await;
    let (status, open) = http(gw.addr, "GET", "/socket.io/?EIO=4&transport=polling", &[], "").await;
    assert_eq!(status, 200, "{open}");
    let open: Value = serde_json::from_str(open.trim_start_matches('0')).unwrap();
    let sid = open["sid"].as_str().unwrap();
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let connect = format!("40{}", json!({ "token": user_token("t1", "u1") }));
    let (status, body) = http(gw.addr, "POST", &path, &[("Content-Type", "text/plain;charset=UTF-8")], &connect).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    // engineioxide queues its first ping as the session starts, so a poll may return that ping
    // alone before the CONNECT ack is queued: keep polling, as socket.io-client does.
    let mut replies = Vec::new();
    for _ in 0..3 {
        let (status, body) = http(gw.addr, "GET", &path, &[], "").await;
        assert_eq!(status, 200);
        // Polling payloads carry several Engine.IO packets separated by the record separator.
        let acked = body.split('\u{1e}').any(|p| p.starts_with("40{\"sid\":"));
        replies.push(body);
        if acked {
            return;
        }
    }
    panic!("expected a CONNECT ack, got {replies:?}");
}

#[tokio::test]
async fn print_token_mints_a_token_the_gateway_accepts() {
    let out = run_to_exit(gateway_bin().env("ROOMCAST_JWT_SECRET", SECRET).args(["--print-token", "acme/ada"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap();
    let gw = TestGateway::start().await;
    let c = Client::connect(gw.addr, Connect::token(token.trim())).await.expect("the printed token connects");
    assert_eq!(c.request("join", json!({ "channel": "anything" })).await["room"], "tenant:acme:channel:anything");

    for (args, env, expected) in [
        (&["--print-token", "no-slash"][..], ("ROOMCAST_JWT_SECRET", SECRET), "TENANT/USER"),
        (&["--print-token", "a:b/c"][..], ("ROOMCAST_JWT_SECRET", SECRET), "not a valid"),
        (
            &["--print-token", "a/b"][..],
            ("ROOMCAST_JWKS_FILE", concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwks.json")),
            "HMAC",
        ),
    ] {
        let out = run_to_exit(gateway_bin().env(env.0, env.1).args(args));
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains(expected), "{args:?}");
    }
}

/// A fresh replica exposes every counter and gauge at 0, so dashboards and alerts show 0
/// instead of "no data". The names are read from `metrics.rs`, so a new metric is covered.
#[tokio::test]
async fn a_fresh_replica_exposes_every_counter_and_gauge_at_zero() {
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/metrics.rs")).unwrap();
    let names: Vec<&str> = source
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const ")?.split_once("= \"")?.1.strip_suffix("\";"))
        .filter(|name| !name.ends_with("_seconds")) // histograms appear with their first sample
        .filter(|name| *name != "roomcast_redis_connected") // only with Redis
        .filter(|name| !name.starts_with("roomcast_jwks_")) // only with a JWKS URL
        .collect();
    assert!(names.len() > 20, "metric names found: {names:?}");
    let r = common::replica::Replica::spawn(None, &[]).await;
    let scrape = r.metrics().await;
    let missing: Vec<&&str> = names
        .iter()
        .filter(|name| {
            !scrape.lines().any(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
        })
        .collect();
    assert!(missing.is_empty(), "not exposed before first use: {missing:?}\n{scrape}");
    assert!(scrape.contains("roomcast_connections 0\n"), "{scrape}");
    assert!(scrape.contains(r#"roomcast_disconnects_total{reason="token_expired"} 0"#), "{scrape}");
    // Issue 15: the process and runtime figures, read at each scrape.
    assert!(!scrape.contains("roomcast_redis_connected"), "single node: no Redis link to report");
    assert!(
        sample(&scrape, "process_open_fds", "") > 0.0 && sample(&scrape, "process_resident_memory_bytes", "") > 0.0
    );
    assert!(sample(&scrape, "process_max_fds", "") >= sample(&scrape, "process_open_fds", ""));
    assert!(sample(&scrape, "roomcast_tokio_workers", "") >= 1.0 && sample(&scrape, "process_threads", "") >= 1.0);
    // The scrape itself was timed, and shows in the next one.
    let scrape = r.metrics().await;
    let admin = r#"listener="admin",route="/metrics",status="2xx""#;
    assert!(sample(&scrape, "roomcast_http_request_duration_seconds_count", admin) >= 1.0, "{scrape}");
}

/// Issue 14: WebSocket upgrades with a 400 KB `Authorization` header (and no valid token)
/// pinned the header for the session's life (+67 MB for 200 of them). Handshakes are now
/// refused above `ROOMCAST_MAX_HEADER_BYTES` before any session exists.
#[tokio::test]
async fn an_oversized_handshake_is_refused_with_431_before_any_session_exists() {
    let gw = TestGateway::start().await;
    let path = "/socket.io/?EIO=4&transport=polling";
    // Over the limit: the coded answer.
    let over = format!("Bearer {}", "x".repeat(20 * 1024));
    let (status, body) = http(gw.addr, "GET", path, &[("Authorization", &over)], "").await;
    assert_eq!(status, 431, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "headers_too_large");
    // Far over it: the connection's first head is refused before hyper reads it (the server
    // stops reading there), with the same coded answer.
    let huge = format!("Bearer {}", "x".repeat(300 * 1024));
    let (status, body) = http(gw.addr, "GET", path, &[("Authorization", &huge)], "").await;
    assert_eq!(status, 431, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "headers_too_large");
    assert!(sample(&gw.metrics().await, "roomcast_connections_rejected_total", r#"reason="headers_too_large""#) >= 2.0);
    // A browser-sized handshake is fine (an Engine.IO session opens; the token is checked at
    // the Socket.IO connect that follows).
    let cookie = "a".repeat(8 * 1024);
    let (status, body) = http(gw.addr, "GET", path, &[("Cookie", &cookie)], "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"sid\""), "{body}");
}

/// The first request head of a connection is read by the gateway before hyper (to refuse
/// oversized ones cheaply): however it arrives, what follows it, and what the peer does midway
/// must reach hyper as before.
#[tokio::test]
async fn a_first_request_head_arriving_in_pieces_or_with_more_behind_it_is_served() {
    let gw = TestGateway::start_with(|c| {
        c.api_key = vec![roomcast_gateway::config::Secret::from(replica::API_KEY.to_owned())]
    })
    .await;
    let read_all = |mut stream: TcpStream| async move {
        let mut raw = Vec::new();
        tokio::time::timeout(common::WAIT, stream.read_to_end(&mut raw)).await.expect("answered in time").unwrap();
        String::from_utf8_lossy(&raw).into_owned()
    };
    // One byte at a time, the blank line split over three writes.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    for byte in b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" {
        stream.write_all(&[*byte]).await.unwrap();
        stream.flush().await.unwrap();
    }
    let raw = read_all(stream).await;
    assert!(raw.starts_with("HTTP/1.1 200") && raw.contains("\"sid\""), "{raw}");
    // Two requests in one write (keep-alive pipelining): both answered, in order.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\nGET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let raw = read_all(stream).await;
    let (first, second) = raw.split_once("HTTP/1.1 200").expect("the second request answered");
    assert!(first.starts_with("HTTP/1.1 404"), "{raw}");
    assert!(second.contains("\"sid\""), "{raw}");
    // A head with its body in the same write: the body reaches the handler (a publish is
    // accepted, a broken one refused for what it says).
    for (body, answer) in [(r#"{"tenant":"t1","event":"e"}"#, "HTTP/1.1 200"), ("{not json", "HTTP/1.1 400")] {
        let request = format!(
            "POST /v1/publish HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            replica::API_KEY,
            body.len()
        );
        let mut stream = TcpStream::connect(gw.api).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let raw = read_all(stream).await;
        assert!(raw.starts_with(answer), "{body}: {raw}");
    }
    // Peers that close before a head is complete, or send nothing: nothing is answered and the
    // gateway goes on serving.
    for partial in [&b""[..], b"GET / HTTP/1.1\r\nHost: x\r\n"] {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        stream.write_all(partial).await.unwrap();
        stream.shutdown().await.unwrap();
        assert_eq!(read_all(stream).await, "");
    }
    // A keep-alive request after the first is bounded by hyper's buffer and the guard: its 431
    // is coded too.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let big = "x".repeat(20 * 1024);
    stream
        .write_all(format!("GET /nope HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nCookie: {big}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let raw = read_all(stream).await;
    assert!(raw.contains("HTTP/1.1 431") && raw.contains("headers_too_large"), "{raw}");
}
