// Protocol conformance: the Engine.IO v4 and Socket.IO v5 behaviour that the official
// socket.io-protocol test suite (github.com/socketio/socket.io-protocol, test-suite/) checks,
// written here against Roomcast's gateway with raw HTTP requests and WebSocket frames.
//
// Covered: the suite's whole Engine.IO section (handshake, heartbeat, close, upgrade: 16 cases)
// and its Socket.IO cases that need no echo handler or custom namespace (7 cases). Left out, as
// Roomcast has neither: the cases that expect the server to echo `auth` or `message` events back,
// and the `/custom` namespace cases. Where Socket.IO needs a CONNECT, ours carries a token,
// since Roomcast refuses a connection without one.
//
// These guard the patched engine (vendor/PATCHES.md): every patch must keep them green.
// Timing checks only bound from one side where a loaded machine could be late (a ping must not
// come early; a dead session must be gone by a deadline), so they cannot flake on a slow host.
import test, { after, before } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { startGateway, userToken, withTimeout, WAIT_MS } from "./helpers.mjs";

const PING_INTERVAL = 300;
const PING_TIMEOUT = 200;
const MAX_PAYLOAD = 1_000_000;

let gateway;
let url;
let wsUrl;

before(async () => {
  gateway = await startGateway({
    ROOMCAST_PING_INTERVAL: `${PING_INTERVAL}ms`,
    ROOMCAST_PING_TIMEOUT: `${PING_TIMEOUT}ms`,
    ROOMCAST_MAX_PAYLOAD: String(MAX_PAYLOAD),
    ROOMCAST_CONNECT_TIMEOUT: "1s",
  });
  url = `${gateway.url}/socket.io/`;
  wsUrl = url.replace("http", "ws");
});

after(async () => {
  await gateway?.stop();
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * A raw WebSocket whose messages are queued as they arrive (nothing is missed between awaits),
 * text as strings and binary as Buffers. With `pong`, every ping is answered as it arrives (and
 * still queued), as a live client does: a test that is not about the heartbeat then cannot be
 * ended by one on a slow machine.
 */
function open(query, { pong = false } = {}) {
  const ws = new WebSocket(`${wsUrl}?${query}`);
  const queue = [];
  const waiting = [];
  ws.on("message", (data, isBinary) => {
    const message = isBinary ? Buffer.from(data) : data.toString();
    if (pong && message === "2") ws.send("3");
    const waiter = waiting.shift();
    if (waiter) waiter(message);
    else queue.push(message);
  });
  ws.on("error", () => {}); // a refused upgrade: `closed` says so
  const closed = new Promise((resolve) => ws.once("close", resolve));
  const opened = new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("close", () => reject(new Error("closed before opening")));
  });
  opened.catch(() => {});
  return {
    ws,
    opened,
    closed: () => withTimeout(closed, WAIT_MS, "the WebSocket to close"),
    next(what = "a message") {
      if (queue.length) return Promise.resolve(queue.shift());
      return withTimeout(new Promise((resolve) => waiting.push(resolve)), WAIT_MS, what);
    },
    send: (data) => ws.send(data),
    close: () => ws.close(),
  };
}

/** The Engine.IO OPEN packet's fields, from a `0{...}` message. */
function openPacket(message) {
  assert.equal(message[0], "0", `an OPEN packet, got ${message}`);
  return JSON.parse(message.slice(1));
}

async function pollingSession() {
  const res = await fetch(`${url}?EIO=4&transport=polling`);
  assert.equal(res.status, 200);
  return openPacket(await res.text()).sid;
}

const poll = (sid) => fetch(`${url}?EIO=4&transport=polling&sid=${sid}`);
const push = (sid, body) => fetch(`${url}?EIO=4&transport=polling&sid=${sid}`, { method: "POST", body });

/** An Engine.IO WebSocket session, its OPEN packet read. */
async function wsSession() {
  const socket = open("EIO=4&transport=websocket", { pong: true });
  openPacket(await socket.next("the OPEN packet"));
  return socket;
}

/** A Socket.IO connection to the main namespace (with a token), its CONNECT answer read. */
async function socketIoConnection() {
  const socket = await wsSession();
  socket.send(`40${JSON.stringify({ token: userToken("t1", "u1") })}`);
  assert.match(await nextNotPing(socket), /^40\{/);
  return socket;
}

/** The next message that is not a ping (pings come on their own schedule). */
async function nextNotPing(socket) {
  for (;;) {
    const message = await socket.next();
    if (message !== "2") return message;
  }
}

function checkOpen(value, upgrades) {
  assert.deepEqual(Object.keys(value).sort(), ["maxPayload", "pingInterval", "pingTimeout", "sid", "upgrades"]);
  assert.equal(typeof value.sid, "string");
  assert.deepEqual(value.upgrades, upgrades);
  assert.equal(value.pingInterval, PING_INTERVAL);
  assert.equal(value.pingTimeout, PING_TIMEOUT);
  assert.equal(value.maxPayload, MAX_PAYLOAD);
}

// ---- Engine.IO: handshake ----

test("engine.io handshake, polling: should successfully open a session", async () => {
  const res = await fetch(`${url}?EIO=4&transport=polling`);
  assert.equal(res.status, 200);
  checkOpen(openPacket(await res.text()), ["websocket"]);
});

test("engine.io handshake, polling: should fail with an invalid 'EIO' query parameter", async () => {
  assert.equal((await fetch(`${url}?transport=polling`)).status, 400);
  assert.equal((await fetch(`${url}?EIO=abc&transport=polling`)).status, 400);
});

test("engine.io handshake, polling: should fail with an invalid 'transport' query parameter", async () => {
  assert.equal((await fetch(`${url}?EIO=4`)).status, 400);
  assert.equal((await fetch(`${url}?EIO=4&transport=abc`)).status, 400);
});

test("engine.io handshake, polling: should fail with an invalid request method", async () => {
  assert.equal((await fetch(`${url}?EIO=4&transport=polling`, { method: "POST" })).status, 400);
  assert.equal((await fetch(`${url}?EIO=4&transport=polling`, { method: "PUT" })).status, 400);
});

test("engine.io handshake, websocket: should successfully open a session", async () => {
  const socket = open("EIO=4&transport=websocket");
  checkOpen(openPacket(await socket.next()), []);
  socket.close();
});

test("engine.io handshake, websocket: should fail with an invalid 'EIO' query parameter", async () => {
  for (const query of ["transport=websocket", "EIO=abc&transport=websocket"]) {
    const socket = open(query);
    await assert.rejects(socket.opened, /closed before opening/);
  }
});

test("engine.io handshake, websocket: should fail with an invalid 'transport' query parameter", async () => {
  for (const query of ["EIO=4", "EIO=4&transport=abc"]) {
    const socket = open(query);
    await assert.rejects(socket.opened, /closed before opening/);
  }
});

// ---- Engine.IO: heartbeat ----

test("engine.io heartbeat, polling: should send ping/pong packets", async () => {
  const sid = await pollingSession();
  for (let i = 0; i < 3; i++) {
    const res = await poll(sid);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "2");
    assert.equal((await push(sid, "3")).status, 200);
  }
});

test("engine.io heartbeat, polling: should close the session upon ping timeout", async () => {
  const sid = await pollingSession();
  await sleep(PING_INTERVAL + PING_TIMEOUT);
  // The suite polls once, right at interval + timeout. A loaded machine may run the heartbeat
  // a little late, so a poll that still gets the (unanswered) ping is followed by another; one
  // that arrives as the session times out gets its close packet `1` (the session is gone).
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const res = await poll(sid);
    if (res.status === 400) break;
    assert.equal(res.status, 200);
    const body = await res.text();
    if (body === "1") break;
    assert.equal(body, "2", "an open session's poll returns only its ping, or its close");
    assert.ok(Date.now() < deadline, "the session outlived its ping timeout");
  }
});

test("engine.io heartbeat, websocket: should send ping/pong packets", async () => {
  const socket = await wsSession();
  for (let i = 0; i < 3; i++) {
    assert.equal(await socket.next("a ping"), "2");
    socket.send("3");
  }
  socket.close();
});

test("engine.io heartbeat, websocket: should close the session upon ping timeout", async () => {
  const socket = open("EIO=4&transport=websocket");
  await socket.closed();
});

test("engine.io heartbeat: the first ping comes after pingInterval, not as the session opens", async () => {
  // The protocol: the server pings every pingInterval. engineioxide used to ping at once, which
  // costs every connection an extra round trip and makes a polling client's first poll return
  // at once. Early is the bug; late only means a loaded machine.
  const socket = open("EIO=4&transport=websocket");
  await socket.next("the OPEN packet");
  const opened = Date.now();
  assert.equal(await socket.next("a ping"), "2");
  const waited = Date.now() - opened;
  assert.ok(waited >= PING_INTERVAL - 50, `first ping ${waited} ms after the OPEN packet`);
  socket.close();

  const sid = await pollingSession();
  const polled = Date.now();
  const res = await poll(sid);
  assert.equal(await res.text(), "2");
  const held = Date.now() - polled;
  assert.ok(held >= PING_INTERVAL - 50, `first poll answered after ${held} ms`);
});

// ---- Engine.IO: close ----

test("engine.io close, polling: should forcefully close the session", async () => {
  // A poll and a close sent together, on two connections: the poll that is held must be answered
  // with the noop `6`. The suite assumes the poll reaches the server first; on a loaded machine
  // the close can win, and the poll then rightly finds no session (400): that attempt says
  // nothing, so it is made again with a new session.
  for (let attempt = 1; ; attempt++) {
    const sid = await pollingSession();
    const [pollRes, pushRes] = await Promise.all([poll(sid), push(sid, "1")]);
    assert.equal(pushRes.status, 200);
    if (pollRes.status === 400 && attempt < 20) continue;
    assert.equal(pollRes.status, 200);
    assert.equal(await pollRes.text(), "6");
    assert.equal((await poll(sid)).status, 400);
    return;
  }
});

test("engine.io close, websocket: should forcefully close the session", async () => {
  const socket = await wsSession();
  socket.send("1");
  await socket.closed();
});

// ---- Engine.IO: upgrade ----

test("engine.io upgrade: should successfully upgrade from HTTP long-polling to WebSocket", async () => {
  const sid = await pollingSession();
  const socket = open(`EIO=4&transport=websocket&sid=${sid}`);
  await socket.opened;
  socket.send("2probe");
  assert.equal(await socket.next("the probe's answer"), "3probe");
  socket.send("5");
  socket.close();
});

test("engine.io upgrade: should ignore HTTP requests with same sid after upgrade", async () => {
  const sid = await pollingSession();
  const socket = open(`EIO=4&transport=websocket&sid=${sid}`);
  await socket.opened;
  socket.send("2probe");
  assert.equal(await socket.next("the probe's answer"), "3probe");
  socket.send("5");
  // The upgrade completes when the server reads "5"; a poll after that is refused.
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const res = await poll(sid);
    if (res.status === 400) break;
    await res.text();
    assert.ok(Date.now() < deadline, "polling still answered after the upgrade");
  }
  socket.close();
});

test("engine.io upgrade: should ignore WebSocket connection with same sid after upgrade", async () => {
  const sid = await pollingSession();
  const socket = open(`EIO=4&transport=websocket&sid=${sid}`);
  await socket.opened;
  socket.send("2probe");
  assert.equal(await socket.next("the probe's answer"), "3probe");
  socket.send("5");
  const second = open(`EIO=4&transport=websocket&sid=${sid}`);
  await second.closed();
  socket.close();
});

// ---- Socket.IO ----

test("socket.io connect: should allow connection to the main namespace with a payload", async () => {
  const socket = await wsSession();
  socket.send(`40${JSON.stringify({ token: userToken("t1", "u1") })}`);
  const answer = await nextNotPing(socket);
  assert.match(answer, /^40/);
  const handshake = JSON.parse(answer.slice(2));
  assert.equal(typeof handshake.sid, "string");
  socket.close();
});

test("socket.io connect: should disallow connection to an unknown namespace", async () => {
  const socket = await wsSession();
  socket.send("40/random");
  assert.equal(await nextNotPing(socket), '44/random,{"message":"Invalid namespace"}');
  socket.close();
});

test("socket.io connect: should disallow connection with an invalid handshake", async () => {
  const socket = await wsSession();
  socket.send("4abc");
  await socket.closed();
});

test("socket.io connect: should close the connection if no handshake is received", async () => {
  // Pings are answered: what closes it is ROOMCAST_CONNECT_TIMEOUT (1 s here), not the heartbeat.
  const socket = await wsSession();
  const opened = Date.now();
  await socket.closed();
  const lasted = Date.now() - opened;
  assert.ok(lasted >= 950, `closed after ${lasted} ms, before the connect timeout`);
});

test("socket.io disconnect: should disconnect from the main namespace", async () => {
  const socket = await socketIoConnection();
  socket.send("41");
  // The Engine.IO session outlives the namespace: its next packet is the heartbeat.
  assert.equal(await socket.next("a ping"), "2");
  socket.close();
});

for (const [what, packet] of [
  ["unknown packet type", "4abc"],
  ["invalid payload format", "42{}"],
  ["invalid ack id", '42abc["message-with-ack",1,"2",{"3":[false]}]'],
]) {
  test(`socket.io message: should close the connection upon invalid format (${what})`, async () => {
    const socket = await socketIoConnection();
    socket.send(packet);
    await socket.closed();
  });
}
