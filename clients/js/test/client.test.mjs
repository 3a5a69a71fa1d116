// @roomcast/client against the real gateway binary, single node (no Redis). Runs the built
// package (dist/), as users get it.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import { API_KEY, connect as connectRaw, eventually, now, startGateway, userToken } from "../../../js-tests/helpers.mjs";
import { connect, RoomcastError, GATEWAY_ERROR_CODES } from "../dist/index.js";
import { eventuallyPolitely } from "./util.mjs";

let gw;
const clients = [];

before(async () => {
  gw = await startGateway({ ROOMCAST_JWT_LEEWAY: "0s", ROOMCAST_PRESENCE_GRACE: "100ms" });
});
after(async () => {
  for (const c of clients) c.close();
  await gw.stop();
});

/** A client of `user` in tenant t1 whose tokens come from `tokens` (a fresh one by default). */
function client(user, options = {}) {
  const errors = [];
  const c = connect(gw.url, {
    getToken: () => userToken("t1", user, { publish: ["c1"] }),
    onError: (e) => errors.push(e),
    ...options,
  });
  c.errors = errors;
  clients.push(c);
  return c;
}

async function publish(room, event, data) {
  const res = await fetch(`${gw.apiUrl}/v1/publish`, {
    method: "POST",
    headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify({ tenant: "t1", ...room, event, data }),
  });
  assert.equal(res.status, 200, await res.text());
}

test("the error codes are the README's table", () => {
  const readme = readFileSync(new URL("../../../README.md", import.meta.url), "utf8");
  const table = readme.slice(readme.indexOf("## Error codes"), readme.indexOf("## Configuration"));
  const codes = [...table.matchAll(/^\| `([a-z_]+)` \|/gm)].map((m) => m[1]);
  assert.deepEqual([...GATEWAY_ERROR_CODES].sort(), codes.sort());
});

test("a joined room gets published events in order, with their meta", async () => {
  const c = client("reader");
  const room = c.join({ channel: "c1" });
  const joined = await room.ready;
  assert.equal(joined.room, "tenant:t1:channel:c1");
  assert.equal(c.state, "connected");
  const got = [];
  room.on("tick", (data, meta) => got.push([data.n, meta.room, typeof meta.offset]));
  for (let n = 0; n < 5; n++) await publish({ channel: "c1" }, "tick", { n });
  await eventually(() => got.length === 5, "five events");
  assert.deepEqual(
    got.map((g) => g[0]),
    [0, 1, 2, 3, 4],
  );
  assert.deepEqual(got[0].slice(1), ["tenant:t1:channel:c1", "number"]);
  room.leave();
});

test("refused joins reject with the gateway's code", async () => {
  const c = client("refused");
  const forbidden = c.join({ channel: "not-granted" });
  await assert.rejects(forbidden.ready, (e) => e instanceof RoomcastError && e.code === "forbidden");
  const invalid = c.join({ project: "bad room!" });
  await assert.rejects(invalid.ready, (e) => e instanceof RoomcastError && e.code === "invalid_room");
  // Reported to onError too, where nobody awaits `ready`.
  assert.deepEqual(
    c.errors.map((e) => e.code),
    ["forbidden", "invalid_room"],
  );
  const project = c.join({ project: "p1" });
  assert.throws(() => project.typing.start(), (e) => e instanceof RoomcastError && e.code === "not_a_channel");
  project.leave();
});

test("handles on one room share one join; the room is left after the last leave", async () => {
  const c = client("sharer");
  const watcher = client("watcher");
  const a = c.join({ project: "p2" });
  const b = c.join({ project: "p2" });
  const watched = watcher.join({ project: "p2" });
  await Promise.all([a.ready, watched.ready]);
  const occupancy = async () => (await watched.occupancy()).connections;
  // The watcher's own join counts too.
  await eventuallyPolitely(async () => (await occupancy()) === 2, "both clients in p2");
  const got = [];
  b.on("x", (data) => got.push(data));
  a.leave();
  a.leave(); // idempotent: does not take b's reference
  await publish({ project: "p2" }, "x", 1);
  await eventually(() => got.length === 1, "the remaining handle still gets events");
  b.leave();
  await eventuallyPolitely(async () => (await occupancy()) === 1, "the room left once the last handle left");
});

test("a rejoin after a disconnect replays what was missed, each event once", async () => {
  const c = client("rejoiner");
  const room = c.join({ channel: "c2" });
  await room.ready;
  const got = [];
  const resyncs = [];
  room.on("n", (data) => got.push(data));
  room.onResync((r) => resyncs.push(r));
  await publish({ channel: "c2" }, "n", 0);
  await eventually(() => got.length === 1, "first event");

  c.socket.disconnect();
  await eventually(() => c.state === "closed", "the client to see the disconnect");
  for (let n = 1; n <= 3; n++) await publish({ channel: "c2" }, "n", n);
  c.socket.connect();
  await eventually(() => got.length === 4, "the missed events");
  await publish({ channel: "c2" }, "n", 4);
  await eventually(() => got.length === 5, "a live event after the replay");
  assert.deepEqual(got, [0, 1, 2, 3, 4]);
  assert.deepEqual(resyncs, []);
});

test("a rejoin that history cannot cover is one resync callback", async () => {
  const small = await startGateway({ ROOMCAST_HISTORY_SIZE: "2" });
  try {
    const c = connect(small.url, { getToken: () => userToken("t1", "resynced") });
    clients.push(c);
    const room = c.join({ channel: "c1" });
    await room.ready;
    const got = [];
    const resyncs = [];
    room.on("n", (data) => got.push(data));
    room.onResync((r) => resyncs.push(r.reason));
    const pub = (n) =>
      fetch(`${small.apiUrl}/v1/publish`, {
        method: "POST",
        headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
        body: JSON.stringify({ tenant: "t1", channel: "c1", event: "n", data: n }),
      });
    await pub(0);
    await eventually(() => got.length === 1, "first event");
    c.socket.disconnect();
    for (let n = 1; n <= 5; n++) await pub(n);
    c.socket.connect();
    await eventually(() => resyncs.length === 1, "the resync");
    assert.deepEqual(resyncs, ["not_recovered"]);
    await pub(6);
    await eventually(() => got.includes(6), "live events after the resync");
    c.close();
  } finally {
    await small.stop();
  }
});

test("a token about to expire is refreshed and the connection outlives it", async () => {
  const notice = await startGateway({ ROOMCAST_JWT_LEEWAY: "0s", ROOMCAST_AUTH_EXPIRING_NOTICE: "60s" });
  try {
    let calls = 0;
    const c = connect(notice.url, {
      // The first token lives 2 s: less than the notice, so auth:expiring comes at once.
      getToken: () => userToken("t1", "refresher", { exp: now() + (calls++ === 0 ? 2 : 3600) }),
    });
    clients.push(c);
    const room = c.join({ project: "p1" });
    await room.ready;
    const id = c.socket.id;
    // A plain socket with a token as short, never refreshed: its disconnect shows that the
    // first token's exp has passed.
    const control = await connectRaw(notice.url, { auth: { token: userToken("t1", "control", { exp: now() + 2 }) } });
    await eventually(() => calls === 2, "a second token for the refresh");
    await eventually(() => !control.connected, "the control socket to be disconnected at exp", 15_000);
    assert.equal(c.state, "connected");
    assert.equal(c.socket.id, id, "the same connection");
    assert.equal((await room.occupancy()).connections, 1);
    control.close();
    c.close();
  } finally {
    await notice.stop();
  }
});

test("an expired token at connect is replaced by a fresh one", async () => {
  let calls = 0;
  const errors = [];
  const c = connect(gw.url, {
    getToken: () => userToken("t1", "late", { exp: now() + (calls++ === 0 ? -10 : 3600) }),
    onError: (e) => errors.push(e.code),
  });
  clients.push(c);
  await eventually(() => c.state === "connected", "connected with the second token");
  assert.deepEqual(errors, ["token_expired"]);
  assert.equal(calls, 2);
});

test("a token the gateway keeps refusing ends in connect_failed, not a loop", async () => {
  const errors = [];
  const c = connect(gw.url, {
    getToken: () => "not-a-token",
    onError: (e) => errors.push(e.code),
    retry: { firstDelayMs: 20, maxDelayMs: 100, maxTokenRefusals: 4 },
  });
  clients.push(c);
  await eventually(() => c.state === "closed", "the client to give up");
  assert.deepEqual(errors, ["token_invalid", "token_invalid", "token_invalid", "connect_failed"]);
  // Nothing reconnects by itself: socket.io-client is inactive, and no retry is scheduled.
  assert.equal(c.socket.active, false);
  assert.equal(c.retryTimer, undefined);
});

test("typing: throttled, stopped when idle, and seen by the others", async () => {
  const typist = client("typist", { typing: { throttleMs: 2_000, idleMs: 300 } });
  const other = client("other");
  const mine = typist.join({ channel: "c1" });
  const theirs = other.join({ channel: "c1" });
  await Promise.all([mine.ready, theirs.ready]);
  const sent = [];
  typist.socket.onAnyOutgoing((event, data) => event === "typing" && sent.push(data.typing));
  const seen = [];
  theirs.typing.subscribe((users) => seen.push([...users]));

  for (let i = 0; i < 10; i++) mine.typing.start();
  await eventually(() => seen.some((u) => u.includes("typist")), "the other user to see the indicator");
  // Ten keystrokes, one indicator; then the idle stop.
  await eventually(() => sent.length === 2, "the idle stop");
  assert.deepEqual(sent, [true, false]);
  await eventually(() => theirs.typing.users.length === 0, "the indicator to go away");
  assert.deepEqual(seen.at(-1), []);
});

test("presence: a live list with each user's connection count and status", async () => {
  const viewer = client("viewer");
  const room = viewer.join({ project: "p1" });
  await room.ready;
  let users = [];
  room.presence.subscribe((u) => (users = u));
  const byId = () => Object.fromEntries(users.map((u) => [u.userId, [u.connections, u.status]]));
  await eventually(() => byId().viewer, "the viewer's own entry");

  const tab1 = client("ada");
  const tab2 = client("ada");
  await tab1.join({ project: "p1" }).ready;
  await tab2.join({ project: "p1" }).ready;
  // Her second tab raises no event: the list read after her join (or a refresh) counts it.
  await eventuallyPolitely(async () => {
    if (byId().ada?.[0] !== 2) await room.presence.refresh();
    return byId().ada?.[0] === 2;
  }, "ada with two connections");
  await tab1.setStatus("away");
  await eventually(() => byId().ada?.[1] === "away", "ada away");
  tab1.close();
  tab2.close();
  await eventually(() => !byId().ada, "ada gone once both tabs closed");
  assert.deepEqual(Object.keys(byId()), ["viewer"]);
});

test("client publish and RPC errors come back typed", async () => {
  const c = client("publisher");
  const room = c.join({ channel: "c1" });
  await room.ready;
  const got = [];
  room.on("said", (data, meta) => got.push([data.text, meta.from]));
  const receipt = await room.publish("said", { text: "hi" });
  assert.equal(receipt.room, "tenant:t1:channel:c1");
  await eventually(() => got.length === 1, "the published event");
  assert.deepEqual(got[0], ["hi", "publisher"]);
  await assert.rejects(c.join({ project: "p1" }).publish("x", 1), (e) => e.code === "not_a_channel");
  // No RPC backend configured: the gateway does not answer unknown events with an RPC.
  await assert.rejects(c.rpc("order:create", {}), (e) => e instanceof RoomcastError && e.code === "unknown_event");
});

test("a room a backend took the user out of is reported once and not rejoined", async () => {
  const c = client("removed");
  const room = c.join({ project: "p2" });
  await room.ready;
  let removed = 0;
  room.onRemoved(() => removed++);
  const joins = [];
  c.socket.onAnyOutgoing((event, data) => event === "join" && joins.push(data));
  const res = await fetch(`${gw.apiUrl}/v1/leave`, {
    method: "POST",
    headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify({ tenant: "t1", user: "removed", room: { project: "p2" } }),
  });
  assert.equal(res.status, 200, await res.text());
  await eventually(() => removed === 1, "the removal");
  // A reconnect rejoins the client's other rooms, not this one.
  const other = c.join({ project: "p1" });
  await other.ready;
  const before = joins.length;
  c.socket.disconnect();
  c.socket.connect();
  // Rejoins are sent together, on connect: had p2 been rejoined, it would be here with p1.
  await eventually(() => joins.length > before, "the other room rejoined");
  assert.deepEqual(
    joins.slice(before).map((j) => j.project),
    ["p1"],
  );
  assert.deepEqual(c.errors, []);
});

test("close: a call in flight fails with closed at once, later ones too, and joins refuse", async () => {
  const c = client("closer");
  await c.join({ project: "p1" }).ready;
  const inFlight = c.request("presence:list", { project: "p1" });
  c.close();
  assert.equal(c.state, "closed");
  await assert.rejects(inFlight, (e) => e instanceof RoomcastError && e.code === "closed");
  await assert.rejects(c.rpc("anything"), (e) => e.code === "closed");
  await assert.rejects(c.join({ project: "p2" }).ready, (e) => e.code === "closed");
  assert.equal(c.socket.active, false, "socket.io-client is not reconnecting");
});

test("a join whose connection drops before the answer is joined after the reconnect", async () => {
  const c = client("dropped", { io: { reconnectionDelay: 50, reconnectionDelayMax: 100 } });
  await eventually(() => c.state === "connected", "connected");
  const joins = [];
  const states = [];
  c.socket.onAnyOutgoing((event) => event === "join" && joins.push(event));
  c.onStateChange((state) => states.push(state));
  const room = c.join({ project: "p1" });
  // The join is on the wire; the transport goes before its ack can come back.
  c.socket.io.engine.close();
  const joined = await room.ready;
  assert.equal(joined.room, "tenant:t1:project:p1");
  assert.deepEqual(states, ["reconnecting", "connected"]);
  assert.equal(joins.length, 2, "joined again on the new connection");
  assert.deepEqual(c.errors, []);
});

test("getToken failing is reported and retried", async () => {
  let calls = 0;
  const errors = [];
  const c = connect(gw.url, {
    getToken: () => {
      if (calls++ < 2) throw new Error("token service down");
      return userToken("t1", "patient");
    },
    onError: (e) => errors.push(e.code),
    retry: { firstDelayMs: 20, maxDelayMs: 50 },
  });
  clients.push(c);
  await eventually(() => c.state === "connected", "connected once getToken works");
  assert.deepEqual(errors, ["get_token_failed", "get_token_failed"]);
});

test("a listener that throws does not keep the others from the event", async () => {
  const c = client("thrower");
  const room = c.join({ channel: "c2" });
  await room.ready;
  const got = [];
  room.on("boom", () => {
    throw new Error("application bug");
  });
  room.on("boom", (data) => got.push(data));
  await publish({ channel: "c2" }, "boom", 1);
  await eventually(() => got.length === 1, "the second listener");
  assert.deepEqual(
    c.errors.map((e) => e.code),
    ["listener_failed"],
  );
});

test("disconnected by a backend for good: closed until reconnect(), which rejoins", async () => {
  const c = client("kicked");
  const room = c.join({ project: "p2" });
  await room.ready;
  const res = await fetch(`${gw.apiUrl}/v1/disconnect`, {
    method: "POST",
    headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify({ tenant: "t1", user: "kicked", reason: "removed", reconnect: false }),
  });
  assert.equal(res.status, 200, await res.text());
  await eventually(() => c.state === "closed", "closed");
  assert.deepEqual(
    c.errors.map((e) => e.code),
    ["disconnected"],
  );
  let rejoined = 0;
  room.onJoin(() => rejoined++);
  c.reconnect();
  const got = [];
  room.on("back", (data) => got.push(data));
  await eventually(() => c.state === "connected", "connected again");
  await eventually(() => rejoined === 1, "p2 rejoined");
  await publish({ project: "p2" }, "back", 1);
  await eventually(() => got.length === 1, "events again");
});

test("a revoked token: the client reconnects with a fresh one and its rooms", async () => {
  let n = 0;
  const errors = [];
  const c = connect(gw.url, {
    getToken: () => userToken("t1", "revoked", { jti: `session-${++n}` }),
    onError: (e) => errors.push(e.code),
    retry: { firstDelayMs: 20, maxDelayMs: 100 },
  });
  clients.push(c);
  const room = c.join({ channel: "c2" });
  await room.ready;
  let rejoined = 0;
  room.onJoin(() => rejoined++);
  const res = await fetch(`${gw.apiUrl}/v1/revoke`, {
    method: "POST",
    headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify({ tenant: "t1", jti: "session-1" }),
  });
  assert.equal(res.status, 200, await res.text());
  await eventually(() => rejoined === 1 && c.state === "connected", "reconnected and rejoined");
  assert.deepEqual(errors, ["token_revoked"]);
  assert.equal(n, 2);
});

test("leave then join in one tick keeps the room; a leave that stands is sent, and a later join too", async () => {
  const c = client("toggler");
  const sent = [];
  c.socket.onAnyOutgoing((event) => (event === "join" || event === "leave") && sent.push(event));
  const first = c.join({ project: "p1" });
  await first.ready;
  first.leave();
  const second = c.join({ project: "p1" });
  // A round trip: a leave deferred to the next tick would have gone out by its answer.
  await c.request("presence:list", { project: "p1" });
  assert.deepEqual(sent, ["join"], "no leave and join for a handle taken back at once");
  second.leave();
  await eventually(() => sent.length === 2, "the leave");
  const third = c.join({ project: "p1" });
  await third.ready;
  assert.deepEqual(sent, ["join", "leave", "join"]);
});
