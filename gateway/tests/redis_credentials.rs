//! Redis credentials from mounted files (issue 15): the URL from `ROOMCAST_REDIS_URL_FILE`, the
//! password from `ROOMCAST_REDIS_PASSWORD_FILE` (a Bitnami/Valkey chart's `redis-password`), and
//! the CA bundle of a `rediss://` server from `ROOMCAST_REDIS_CA_FILE`. Real `redis-server`
//! processes (one with `requirepass`, one with TLS and certificates made by `openssl`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
};

use common::{replica::Replica, *};
use serde_json::json;

/// A `redis-server` with `args`, killed on drop.
struct Server {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts redis-server with `args(port)` and waits until `redis-cli` with `cli_args` gets PONG.
async fn server(args: impl Fn(u16) -> Vec<String>, cli_args: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .args(args(port))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed");
    let cli_args: Vec<String> = cli_args.iter().map(|s| s.to_string()).collect();
    eventually(WAIT, "redis-server to answer", || {
        let cli_args = cli_args.clone();
        async move {
            let out = Command::new("redis-cli").args(["-p", &port.to_string()]).args(&cli_args).arg("PING").output();
            out.ok().filter(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG").map(|_| ())
        }
    })
    .await;
    Server { port, child, _dir: dir }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

async fn redis_status(r: &Replica) -> String {
    let (_, body) = r.readyz().await;
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["redis"].as_str().unwrap_or_default().to_owned()
}

/// A replica refused by Redis (or by its TLS check): connection errors are counted, it keeps
/// saying Redis is disconnected, and it stays up (degraded).
async fn refused(r: &Replica) {
    eventually(WAIT, "a counted connection error", || async {
        (r.metric("roomcast_redis_errors_total", "op=\"connection\"").await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(redis_status(r).await, "redis_disconnected");
    assert_eq!(r.readyz().await.0, 200);
}

#[tokio::test]
async fn the_url_and_the_password_come_from_files() {
    let redis = server(
        |port| vec!["--port".into(), port.to_string(), "--requirepass".into(), "s3cret-pw".into()],
        &["-a", "s3cret-pw", "--no-auth-warning"],
    )
    .await;
    let files = tempfile::tempdir().unwrap();
    // As a Kubernetes secret mounts them: with a trailing newline.
    let url = write(files.path(), "redis-url", &format!("redis://127.0.0.1:{}\n", redis.port));
    let password = write(files.path(), "redis-password", "s3cret-pw\n");
    let wrong = write(files.path(), "wrong-password", "not-it\n");

    let r =
        Replica::spawn(None, &[("ROOMCAST_REDIS_URL_FILE", &url), ("ROOMCAST_REDIS_PASSWORD_FILE", &password)]).await;
    eventually(WAIT, "connected with the password file", || async { r.redis_ok().await.then_some(()) }).await;
    let member = r.connect_user("t1", "ada").await;
    assert_eq!(member.request("join", json!({ "project": "p1" })).await["ok"], true);
    let (status, body) = r.publish(&json!({ "tenant": "t1", "project": "p1", "event": "e", "data": 1 })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(member.next("e").await[0], 1);

    let wrong_password =
        Replica::spawn(None, &[("ROOMCAST_REDIS_URL_FILE", &url), ("ROOMCAST_REDIS_PASSWORD_FILE", &wrong)]).await;
    refused(&wrong_password).await;
    let logs = wrong_password.logs.lock().unwrap().join("\n");
    assert!(!logs.contains("not-it") && !logs.contains("s3cret-pw"), "a password in the logs:\n{logs}");
}

#[tokio::test]
async fn bad_credential_files_stop_startup_naming_the_option() {
    let files = tempfile::tempdir().unwrap();
    let empty = write(files.path(), "empty", "\n");
    let not_pem = write(files.path(), "ca.crt", "not a certificate");
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("ROOMCAST_REDIS_URL_FILE", "/nonexistent/redis-url")], "ROOMCAST_REDIS_URL_FILE"),
        (&[("ROOMCAST_REDIS_URL_FILE", &empty)], "ROOMCAST_REDIS_URL_FILE"),
        (&[("ROOMCAST_REDIS_URL", "redis://127.0.0.1:1"), ("ROOMCAST_REDIS_URL_FILE", &empty)], "conflicting"),
        (
            &[("ROOMCAST_REDIS_URL", "redis://127.0.0.1:1"), ("ROOMCAST_REDIS_PASSWORD_FILE", "/nonexistent")],
            "ROOMCAST_REDIS_PASSWORD_FILE",
        ),
        (&[("ROOMCAST_REDIS_PASSWORD_FILE", &empty)], "set only with a Redis URL"),
        (&[("ROOMCAST_REDIS_URL", "redis://127.0.0.1:1"), ("ROOMCAST_REDIS_PASSWORD_FILE", &empty)], "is empty"),
        (&[("ROOMCAST_REDIS_URL_FILE", &not_pem)], "ROOMCAST_REDIS_URL_FILE: not a Redis URL"),
        (
            &[("ROOMCAST_REDIS_URL", "rediss://127.0.0.1:1"), ("ROOMCAST_REDIS_CA_FILE", &not_pem)],
            "ROOMCAST_REDIS_CA_FILE",
        ),
        (&[("ROOMCAST_REDIS_URL", "redis://127.0.0.1:1"), ("ROOMCAST_REDIS_CA_FILE", &not_pem)], "rediss://"),
    ];
    for (env, expected) in cases {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_roomcast-gateway"));
        for (key, _) in std::env::vars() {
            if key.starts_with("ROOMCAST_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("ROOMCAST_JWT_SECRET", SECRET).env("ROOMCAST_LISTEN", "127.0.0.1:0");
        cmd.env("ROOMCAST_API_LISTEN", "127.0.0.1:0").env("ROOMCAST_ADMIN_LISTEN", "127.0.0.1:0");
        let out = cmd.envs(env.iter().copied()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {stderr}");
        assert!(stderr.contains(expected), "{env:?}: {stderr}");
    }
}

/// `openssl` makes a CA and a server certificate for 127.0.0.1 signed by it, in `dir`.
fn certificates(dir: &Path, ca: &str) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl is installed");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let subject = format!("/CN={ca}");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &format!("{ca}.key"),
        "-out",
        &format!("{ca}.crt"),
        "-days",
        "1",
        "-subj",
        &subject,
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        &format!("{ca}.crt"),
        "-CAkey",
        &format!("{ca}.key"),
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "1",
        "-extfile",
        "ext",
    ]);
}

#[tokio::test]
async fn a_tls_redis_is_trusted_through_the_ca_file_and_only_through_it() {
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path(), "roomcast-test-ca");
    // Another CA, which did not sign the server's certificate.
    let other = tempfile::tempdir().unwrap();
    certificates(other.path(), "some-other-ca");
    let dir = certs.path().to_string_lossy().into_owned();
    let ca = format!("{dir}/roomcast-test-ca.crt");
    let redis = server(
        |port| {
            vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                format!("{dir}/server.crt"),
                "--tls-key-file".into(),
                format!("{dir}/server.key"),
                "--tls-ca-cert-file".into(),
                ca.clone(),
                "--tls-auth-clients".into(),
                "no".into(),
            ]
        },
        &["--tls", "--cacert", &ca],
    )
    .await;
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let trusted = Replica::spawn(Some(&url), &[("ROOMCAST_REDIS_CA_FILE", &ca)]).await;
    eventually(WAIT, "connected over TLS", || async { trusted.redis_ok().await.then_some(()) }).await;
    let member = trusted.connect_user("t1", "ada").await;
    assert_eq!(member.request("join", json!({ "channel": "c1" })).await["ok"], true);
    let (status, body) = trusted.publish(&json!({ "tenant": "t1", "channel": "c1", "event": "e", "data": 1 })).await;
    assert_eq!(status, 200, "{body}");
    member.next("e").await;

    let other_ca = other.path().join("some-other-ca.crt").to_string_lossy().into_owned();
    let untrusted = Replica::spawn(Some(&url), &[("ROOMCAST_REDIS_CA_FILE", &other_ca)]).await;
    // And without a CA file: the system's store does not know the test CA either.
    let system = Replica::spawn(Some(&url), &[]).await;
    refused(&untrusted).await;
    refused(&system).await;
}
