// Client RPC (issue 17, point 1) as apps use it with socket.io-client: `socket.emitWithAck`
// of an app event on two replicas sharing Redis, answered by a real HTTP backend written here
// that checks every request's signature. Round trip, the backend slow (rpc_timeout at the
// deadline, the socket still usable), down (rpc_unavailable, through a route), refusing with
// its own code (passed through), a flood from one socket (rate_limited, another socket's RPCs
// not delayed), fire-and-forget events, and Roomcast's own names never forwarded.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac, timingSafeEqual } from "node:crypto";
import { connect, eventually, freePort, startGateway, startRedis, userToken, answerJson, startBackend } from "./helpers.mjs";

const RPC_SECRET = "js-rpc-secret-0123456789abcdef-0123456789";
const TIMEOUT_MS = 700;

let redis;
let gateways = [];
let backend;
const requests = []; // every request body the backend got, verified
const badSignatures = [];
const open = [];
const hanging = [];
let env;

function verified(header, body) {
  const parts = Object.fromEntries(header.split(",").map((p) => p.split("=")));
  const expected = createHmac("sha256", RPC_SECRET).update(`${parts.t}.`).update(body).digest();
  const given = Buffer.from(parts.v1 ?? "", "hex");
  return given.length === expected.length && timingSafeEqual(given, expected);
}

before(async () => {
  backend = await startBackend((body, req, res) => {
    if (!verified(req.headers["roomcast-signature"] ?? "", body)) {
      badSignatures.push(req.headers["roomcast-signature"]);
      return answerJson(res, 401, { error: { code: "bad_signature" } });
    }
    const call = JSON.parse(body.toString());
    requests.push(call);
    switch (call.event) {
      case "message:send":
        return answerJson(res, 200, { result: { saved: call.data, by: call.identity, socket: call.socket } });
      case "message:slow":
        return setTimeout(() => answerJson(res, 200, { result: "late" }), 3 * TIMEOUT_MS);
      case "message:hold":
        return setTimeout(() => answerJson(res, 200, { result: "held" }), 300);
      case "message:forbidden":
        return answerJson(res, 403, { error: { code: "not_a_member", message: "join the project first", data: { project: "p1" } } });
      case "message:hang":
        hanging.push(res); // answered when the test ends
        return;
      case "message:broken":
        return answerJson(res, 500, { whatever: true });
      default:
        return answerJson(res, 200, { result: null });
    }
  });
  redis = await startRedis();
  const closed = await freePort(); // nothing listens there
  env = {
    ROOMCAST_REDIS_URL: redis.url,
    ROOMCAST_RPC_URL: `http://127.0.0.1:${backend.address().port}/rpc`,
    ROOMCAST_RPC_ROUTES: `down:=http://127.0.0.1:${closed}/rpc`,
    ROOMCAST_RPC_SECRET: RPC_SECRET,
    ROOMCAST_RPC_TIMEOUT: `${TIMEOUT_MS}ms`,
    ROOMCAST_RPC_SOCKET_CONCURRENCY: "2",
    ROOMCAST_RPC_CLAIMS: "role,big,missing",
  };
  gateways = [await startGateway(env), await startGateway(env)];
});

after(async () => {
  for (const c of open) c.close();
  for (const res of hanging) res.destroy();
  await Promise.all(gateways.map((g) => g.stop()));
  await redis?.stop();
  backend?.close();
});

async function connected(gateway, token) {
  const socket = await connect(gateway.url, { auth: { token } });
  open.push(socket);
  return socket;
}

test("an RPC round trip on each replica: the backend's result is the ack, with the verified identity", async () => {
  for (const [i, gateway] of gateways.entries()) {
    // The claims ROOMCAST_RPC_CLAIMS names go along, within 4 KiB: `big` does not fit.
    const socket = await connected(gateway, userToken("t1", `ada${i}`, { role: "admin", big: "x".repeat(5000) }));
    const ack = await socket.emitWithAck("message:send", { text: "hi", n: i });
    assert.deepEqual(ack, {
      ok: true,
      result: {
        saved: { text: "hi", n: i },
        by: { tenant: "t1", user: `ada${i}`, claims: { role: "admin" } },
        socket: socket.id,
      },
    });
    const call = requests.findLast((r) => r.event === "message:send" && r.data.n === i);
    assert.equal(call.type, "rpc");
    assert.ok(call.deadline - call.ts === TIMEOUT_MS, JSON.stringify(call));
    assert.ok(call.replica && call.id.startsWith(call.replica), JSON.stringify(call));
  }
  // No argument at all: the backend gets `data: null`.
  const socket = await connected(gateways[0], userToken("t1", "noargs"));
  assert.deepEqual(await socket.emitWithAck("message:ping"), { ok: true, result: null });
  assert.equal(requests.findLast((r) => r.event === "message:ping").data, null);
  assert.deepEqual(badSignatures, []);
});

test("a slow backend gives rpc_timeout at the deadline, and the socket goes on working", async () => {
  const socket = await connected(gateways[0], userToken("t1", "slowpoke"));
  const started = Date.now();
  const ack = await socket.emitWithAck("message:slow", {});
  const took = Date.now() - started;
  assert.equal(ack.ok, false);
  assert.equal(ack.error.code, "rpc_timeout");
  assert.ok(took >= TIMEOUT_MS - 50 && took < TIMEOUT_MS + 1500, `answered after ${took} ms`);
  assert.equal((await socket.emitWithAck("message:send", { after: "timeout" })).ok, true);
  assert.equal((await socket.emitWithAck("join", { project: "p1" })).ok, true);
});

test("a backend that is down, or fails, gives rpc_unavailable; its refusal is passed through", async () => {
  const socket = await connected(gateways[1], userToken("t1", "bea"));
  const down = await socket.emitWithAck("down:anything", { x: 1 });
  assert.equal(down.ok, false);
  assert.equal(down.error.code, "rpc_unavailable");
  assert.doesNotMatch(down.error.message, /127\.0\.0\.1|http/, "no backend address leaks to the client");
  const broken = await socket.emitWithAck("message:broken", {});
  assert.equal(broken.error.code, "rpc_unavailable");
  const refused = await socket.emitWithAck("message:forbidden", {});
  assert.deepEqual(refused, {
    ok: false,
    error: {
      code: "rpc_rejected",
      message: "join the project first",
      backend: { code: "not_a_member", message: "join the project first", data: { project: "p1" } },
    },
  });
});

test("a flood of RPCs from one socket is refused with rate_limited without delaying another socket's", async () => {
  const flooder = await connected(gateways[0], userToken("t2", "flood"));
  const other = await connected(gateways[0], userToken("t2", "calm"));
  const flood = Array.from({ length: 30 }, (_, n) => flooder.emitWithAck("message:hold", { n }));
  const started = Date.now();
  const calm = await other.emitWithAck("message:send", { calm: true });
  const calmTook = Date.now() - started;
  assert.equal(calm.ok, true);
  // The held calls take 300 ms; the other socket's call waited for none of them.
  assert.ok(calmTook < 250, `the other socket's RPC took ${calmTook} ms`);
  const acks = await Promise.all(flood);
  const held = acks.filter((a) => a.ok).length;
  const limited = acks.filter((a) => !a.ok && a.error.code === "rate_limited");
  assert.equal(held, 2, JSON.stringify(acks)); // ROOMCAST_RPC_SOCKET_CONCURRENCY
  assert.equal(limited.length, 28, JSON.stringify(acks));
  assert.ok(limited.every((a) => a.error.retryAfterMs > 0));
  // Once they are answered, the socket may call again.
  assert.equal((await flooder.emitWithAck("message:hold", { again: true })).ok, true);
});

test("an event without an ack callback is forwarded once, fire-and-forget; Roomcast's own names never are", async () => {
  const socket = await connected(gateways[1], userToken("t1", "cleo"));
  socket.emit("analytics:click", { button: "buy" });
  await eventually(() => requests.some((r) => r.event === "analytics:click"), "the event at the backend");
  const forwarded = requests.filter((r) => r.event === "analytics:click");
  assert.equal(forwarded.length, 1);
  assert.equal(forwarded[0].type, "event");
  assert.equal(forwarded[0].deadline, undefined);
  assert.deepEqual(forwarded[0].identity, { tenant: "t1", user: "cleo", claims: {} });
  const before = requests.length;
  const own = await socket.emitWithAck("roomcast:anything", {});
  assert.equal(own.error.code, "unknown_event");
  assert.equal((await socket.emitWithAck("join", { channel: "c1" })).ok, true);
  assert.equal(requests.length, before, "nothing of Roomcast's own was forwarded");
});

test("a socket that disconnects gives its RPCs' places back at once: reconnecting does not get around the bounds", async () => {
  // A replica where only the tenant's bound can refuse, and calls would wait 30 s.
  const gateway = await startGateway({ ...env, ROOMCAST_RPC_TIMEOUT: "30s", ROOMCAST_RPC_TENANT_CONCURRENCY: "2" });
  gateways.push(gateway);
  const hanger = await connected(gateway, userToken("t3", "hanger"));
  const other = await connected(gateway, userToken("t3", "other"));
  const calls = [hanger.emitWithAck("message:hang", {}), hanger.emitWithAck("message:hang", {})];
  await eventually(() => hanging.length >= 2, "both calls at the backend");
  const refused = await other.emitWithAck("message:send", {});
  assert.equal(refused.error?.code, "rate_limited", JSON.stringify(refused));
  hanger.disconnect();
  calls.forEach((c) => c.catch(() => {})); // never answered: the socket is gone
  const started = Date.now();
  await eventually(async () => (await other.emitWithAck("message:send", {})).ok === true, "the tenant's places back");
  assert.ok(Date.now() - started < 10_000, "freed by the disconnect, not by the 30 s deadline");
});
