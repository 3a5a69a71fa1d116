// The control API as an app's socket.io-client sees it (issue 16), on two replicas sharing
// Redis: a backend disconnects a user, then revokes a token and every token of a user.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  API_KEY,
  connect,
  emitPolitely,
  eventually,
  next,
  now,
  rejection,
  startGateway,
  startRedis,
  userToken,
} from "./helpers.mjs";

let redis;
let gateways = [];
const open = [];
before(async () => {
  redis = await startRedis();
  gateways = [
    await startGateway({ ROOMCAST_REDIS_URL: redis.url }),
    await startGateway({ ROOMCAST_REDIS_URL: redis.url }),
  ];
});
after(async () => {
  for (const c of open) c.close();
  for (const g of gateways) await g.stop();
  redis.stop();
});

async function call(path, body) {
  const res = await fetch(`${gateways[1].apiUrl}${path}`, {
    method: "POST",
    headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  return [res.status, await res.json()];
}

async function connected(gateway, token) {
  const socket = await connect(gateway.url, { auth: { token } });
  open.push(socket);
  return socket;
}

const subscribers = (room) => redis.cli("PUBSUB", "NUMSUB", `roomcast:{${room}}`).split("\n")[1];

/** Resolves with the roomcast:disconnect notice and the client's disconnect reason. */
function kicked(socket) {
  return Promise.all([next(socket, "roomcast:disconnect"), next(socket, "disconnect")]).then(([[notice], [why]]) => [
    notice,
    why,
  ]);
}

test("a backend disconnects a user's sockets on both replicas", async () => {
  const sockets = [await connected(gateways[0], userToken("t1", "ada")), await connected(gateways[1], userToken("t1", "ada"))];
  const bob = await connected(gateways[0], userToken("t1", "bob"));
  await eventually(() => subscribers("tenant:t1:user:ada") === "2", "both replicas to hold ada's room");
  const notices = sockets.map(kicked);
  const [status, receipt] = await call("/v1/disconnect", { tenant: "t1", user: "ada", reason: "removed", reconnect: true });
  assert.equal(status, 200, JSON.stringify(receipt));
  assert.deepEqual([receipt.sockets, receipt.replicas, receipt.of, receipt.complete], [2, 2, 2, true]);
  for (const n of notices) {
    const [notice, why] = await n;
    assert.deepEqual(notice, {
      code: "disconnected",
      reason: "removed",
      message: "disconnected by the application",
      reconnect: true,
    });
    assert.equal(why, "io server disconnect", "socket.io-client does not reconnect by itself");
  }
  assert.equal(bob.connected, true);
});

test("a revoked token is disconnected, then refused at connect and at refresh on both replicas", async () => {
  const revoked = userToken("t1", "carol", { jti: "carol-1", iat: now() - 60 });
  const kept = userToken("t1", "carol", { jti: "carol-2", iat: now() - 60 });
  const holder = await connected(gateways[0], revoked);
  const other = await connected(gateways[1], kept);
  await eventually(() => subscribers("tenant:t1") === "2", "both replicas to hold the tenant's room");
  const notice = kicked(holder);
  const [status, receipt] = await call("/v1/revoke", { tenant: "t1", jti: "carol-1" });
  assert.equal(status, 200, JSON.stringify(receipt));
  assert.deepEqual([receipt.sockets, receipt.complete], [1, true]);
  const [body, why] = await notice;
  assert.equal(body.code, "token_revoked");
  assert.equal(body.reconnect, false);
  assert.equal(why, "io server disconnect");
  for (const g of gateways) assert.equal(await rejection(g.url, { auth: { token: revoked } }), "token_revoked");
  const refresh = await other.emitWithAck("auth:refresh", { token: revoked });
  assert.equal(refresh.error.code, "token_revoked");
  assert.equal(other.connected, true, "the socket with another token stays");

  // Sign carol out everywhere: the other token goes too; one minted afterwards works.
  const gone = kicked(other);
  const [everywhere] = await call("/v1/revoke", { tenant: "t1", user: "carol" });
  assert.equal(everywhere, 200);
  assert.equal((await gone)[0].code, "token_revoked");
  // At once on the replica that held carol's socket; within a second on the other.
  assert.equal(await rejection(gateways[1].url, { auth: { token: kept } }), "token_revoked");
  await eventually(
    async () => (await rejection(gateways[0].url, { auth: { token: kept } }).catch(() => null)) === "token_revoked",
    "the other replica to refuse it",
  );
  await connected(gateways[0], userToken("t1", "carol", { jti: "carol-3", iat: now() + 1 }));
});

test("a backend removes a user from a project on both replicas within a second, and adds them to another", async () => {
  const sockets = [await connected(gateways[0], userToken("t1", "dan")), await connected(gateways[1], userToken("t1", "dan"))];
  for (const s of sockets) assert.equal((await s.emitWithAck("join", { project: "p1" })).ok, true);
  await eventually(() => subscribers("tenant:t1:user:dan") === "2", "both replicas to hold dan's room");
  const started = Date.now();
  const left = sockets.map((s) => next(s, "roomcast:left"));
  const [status, receipt] = await call("/v1/leave", { tenant: "t1", user: "dan", room: { project: "p1" } });
  assert.equal(status, 200, JSON.stringify(receipt));
  assert.deepEqual([receipt.sockets, receipt.complete], [2, true]);
  for (const l of left) assert.deepEqual((await l)[0], { room: "tenant:t1:project:p1" });
  const elapsed = Date.now() - started;
  console.log(`dan's sockets on two replicas left the project ${elapsed} ms after the request`);
  assert.ok(elapsed < 1000, `within a second (${elapsed} ms)`);
  const again = await sockets[0].emitWithAck("join", { project: "p1" });
  assert.equal(again.error.code, "forbidden");

  const joined = sockets.map((s) => next(s, "roomcast:joined"));
  const [ok] = await call("/v1/join", { tenant: "t1", user: "dan", room: { channel: "war-room" } });
  assert.equal(ok, 200);
  for (const j of joined) assert.equal((await j)[0].room, "tenant:t1:channel:war-room");
  await eventually(() => subscribers("tenant:t1:channel:war-room") === "2", "both replicas to subscribe");
  const received = sockets.map((s) => next(s, "alert"));
  const res = await fetch(`${gateways[0].apiUrl}/v1/publish`, {
    method: "POST",
    headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify({ tenant: "t1", channel: "war-room", event: "alert", data: { level: 2 } }),
  });
  assert.equal(res.status, 200);
  for (const r of received) assert.deepEqual((await r)[0], { level: 2 });
});

test("room:occupancy counts connections and distinct users across both replicas", async () => {
  const tabs = [
    await connected(gateways[0], userToken("t1", "erin")),
    await connected(gateways[1], userToken("t1", "erin")),
    await connected(gateways[1], userToken("t1", "fay")),
  ];
  for (const t of tabs) assert.equal((await t.emitWithAck("join", { channel: "c2" })).ok, true);
  assert.equal((await tabs[1].emitWithAck("room:occupancy", { channel: "nope" })).error.code, "forbidden");
  // Polled within the socket's read budget (it waits when told to).
  const ask = () => emitPolitely(tabs[0], "room:occupancy", { channel: "c2" });
  await eventually(async () => {
    const ack = await ask();
    return ack.ok && ack.connections === 3 && ack.users === 2;
  }, "3 connections of 2 users");
  const res = await fetch(`${gateways[1].apiUrl}/v1/occupancy?tenant=t1&channel=c2`, {
    headers: { Authorization: `Bearer ${API_KEY}` },
  });
  assert.deepEqual(await res.json(), { ok: true, room: "tenant:t1:channel:c2", connections: 3, users: 2 });
});

test("the history ack returns a joined room's latest events, on either replica", async () => {
  const reader = await connected(gateways[1], userToken("t1", "gus"));
  assert.equal((await reader.emitWithAck("join", { project: "p2" })).ok, true);
  for (const n of [1, 2, 3]) {
    const res = await fetch(`${gateways[0].apiUrl}/v1/publish`, {
      method: "POST",
      headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
      body: JSON.stringify({ tenant: "t1", project: "p2", event: "note", data: { n } }),
    });
    assert.equal(res.status, 200);
  }
  const ack = await reader.emitWithAck("history", { project: "p2", limit: 2 });
  assert.equal(ack.ok, true, JSON.stringify(ack));
  assert.deepEqual(
    ack.events.map((e) => [e.offset, e.data.n]),
    [
      [2, 2],
      [3, 3],
    ],
  );
  assert.equal(ack.more, true);
  assert.equal((await reader.emitWithAck("history", { project: "p1" })).error.code, "forbidden", "not joined");
});
