//! Connection caps (`ROOMCAST_MAX_CONNECTIONS_PER_USER`, `ROOMCAST_MAX_CONNECTIONS_PER_TENANT`):
//! counted cluster-wide, refused with `connect_error` `too_many_connections`, released when a
//! connection ends, reaped with a crashed replica's lease, and restored after Redis lost them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{redis::*, replica::*, *};

async fn try_connect(addr: SocketAddr, tenant: &str, user: &str) -> Result<Client, ConnectFailure> {
    Client::connect(addr, Connect::token(&user_token(tenant, user))).await
}

async fn refused(addr: SocketAddr, tenant: &str, user: &str) -> bool {
    match try_connect(addr, tenant, user).await {
        Err(ConnectFailure::Rejected(code)) => {
            assert_eq!(code, "too_many_connections");
            true
        }
        Err(other) => panic!("expected a connection or too_many_connections, got {other:?}"),
        Ok(_) => false,
    }
}

/// Connects `user` once the caps allow it again (a slot is released asynchronously).
async fn connects_eventually(addr: SocketAddr, tenant: &str, user: &str, within: Duration) -> Client {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match try_connect(addr, tenant, user).await {
            Ok(c) => return c,
            Err(ConnectFailure::Rejected(code)) if code == "too_many_connections" => {}
            Err(other) => panic!("{other:?}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "{user} still refused after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn caps_per_user_and_per_tenant_refuse_with_a_code_and_free_up_when_connections_end() {
    let gw = TestGateway::start_with(|c| {
        c.max_connections_per_user = 2;
        c.max_connections_per_tenant = 3;
    })
    .await;
    let a = gw.connect_user("t1", "u1").await;
    let _b = gw.connect_user("t1", "u1").await;
    assert!(refused(gw.addr, "t1", "u1").await, "a third tab of u1 is over the per-user cap");
    let _c = gw.connect_user("t1", "u2").await;
    assert!(refused(gw.addr, "t1", "u3").await, "a fourth connection of t1 is over the per-tenant cap");
    // Another tenant is not affected by t1 being full.
    let _other = gw.connect_user("t2", "u1").await;
    let rejected =
        sample(&gw.metrics().await, "roomcast_connections_rejected_total", "reason=\"too_many_connections\"");
    assert!(rejected >= 2.0, "{rejected}");

    // A connection that ends frees its slot, for the user and for the tenant.
    a.disconnect();
    let _again = connects_eventually(gw.addr, "t1", "u3", WAIT).await;
    assert!(refused(gw.addr, "t1", "u1").await, "the tenant is full again");
}

#[tokio::test]
async fn caps_count_every_replica_and_a_crashed_replica_s_connections_are_reaped() {
    let redis = RedisServer::start();
    let env = [("ROOMCAST_MAX_CONNECTIONS_PER_USER", "2"), ("ROOMCAST_PRESENCE_LEASE_TTL", "2s")];
    let mut rs = Replica::ready(2, &redis.url(), &env).await;
    let _a = rs[0].connect_user("t1", "u1").await;
    let _b = rs[1].connect_user("t1", "u1").await;
    if !refused(rs[0].addr, "t1", "u1").await {
        for line in rs[0]
            .logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("WARN") || l.contains("caps") || l.contains("lease"))
        {
            eprintln!("{line}");
        }
        panic!("counted across replicas, refused on the first");
    }
    assert!(refused(rs[1].addr, "t1", "u1").await, "and on the second");

    // The replica holding one of them crashes: its connection is reaped with its lease.
    rs[1].kill9();
    let c = connects_eventually(rs[0].addr, "t1", "u1", Duration::from_secs(20)).await;
    assert!(refused(rs[0].addr, "t1", "u1").await, "two again: the reaped one and the new one");

    // Redis loses everything (a restart without persistence): the survivor restores its count
    // (a and c) from what it holds when it finds its lease gone.
    redis.cli(&["FLUSHALL"]);
    eventually(Duration::from_secs(20), "the count restored after FLUSHALL", || async {
        (redis.cli(&["HGET", "roomcast:{tenant:t1}:connections", "u|u1"]).trim() == "2").then_some(())
    })
    .await;
    assert!(refused(rs[0].addr, "t1", "u1").await, "and enforced again");
    assert_eq!(redis.cli(&["HGET", "roomcast:{tenant:t1}:connections", "*"]).trim(), "2");
    drop(c);
}

#[tokio::test]
async fn while_redis_is_away_connections_are_admitted_and_counted_once_it_is_back() {
    let mut redis = RedisServer::start();
    let env = [("ROOMCAST_MAX_CONNECTIONS_PER_USER", "1"), ("ROOMCAST_PRESENCE_LEASE_TTL", "2s")];
    let rs = Replica::ready(1, &redis.url(), &env).await;
    let _first = rs[0].connect_user("t1", "u1").await;
    assert!(refused(rs[0].addr, "t1", "u1").await);

    redis.stop();
    // Degraded mode: the cap cannot be checked, connections still work.
    let _second = rs[0].connect_user("t1", "u1").await;
    assert!(rs[0].metric("roomcast_connection_caps_unchecked_total", "").await >= 1.0);

    redis.start_again();
    eventually(Duration::from_secs(20), "both connections counted once Redis is back", || async {
        (redis.cli(&["HGET", "roomcast:{tenant:t1}:connections", "u|u1"]).trim() == "2").then_some(())
    })
    .await;
    assert!(refused(rs[0].addr, "t1", "u1").await);
}
