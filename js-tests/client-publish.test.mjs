// Client publish (issue 17, point 2) with socket.io-client on two replicas sharing Redis: a
// token's publish claim lets a socket `publish` to a channel; every member on every replica
// gets it once, with offsets and the publisher in the meta, recoverable with `since`;
// `except: "self"` and a backend publish's `except` skip one socket; a third replica with a
// publish proxy (a real HTTP backend here) approves, rewrites and refuses.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { API_KEY, connect, eventually, next, startGateway, startRedis, userToken, answerJson, startBackend } from "./helpers.mjs";

const RPC_SECRET = "js-publish-secret-0123456789abcdef-0123456";

let redis;
let gateways = [];
let proxied;
let proxy;
const proxyCalls = [];
const open = [];

before(async () => {
  proxy = await startBackend((body, req, res) => {
    const call = JSON.parse(body.toString());
    proxyCalls.push(call);
    const answer = {
      "msg.approve": { result: null },
      "msg.rewrite": { result: { data: { text: "***" } } },
      "msg.refuse": { error: { code: "spam", message: "slow down" } },
    }[call.event] ?? { result: null };
    answerJson(res, 200, answer);
  });
  redis = await startRedis();
  const env = { ROOMCAST_REDIS_URL: redis.url, ROOMCAST_PUBLISH_MAX_PAYLOAD: "1024" };
  gateways = [await startGateway(env), await startGateway(env)];
  proxied = await startGateway({
    ...env,
    ROOMCAST_PUBLISH_PROXY_URL: `http://127.0.0.1:${proxy.address().port}/publish`,
    ROOMCAST_RPC_SECRET: RPC_SECRET,
  });
});

after(async () => {
  for (const c of open) c.close();
  await Promise.all([...gateways, proxied].filter(Boolean).map((g) => g.stop()));
  await redis?.stop();
  proxy?.close();
});

async function member(gateway, user, claims = {}) {
  const socket = await connect(gateway.url, { auth: { token: userToken("t1", user, claims) } });
  open.push(socket);
  const got = [];
  socket.onAny((event, data, meta) => got.push({ event, data, meta }));
  return { socket, got };
}

const chat = { channels: ["chat", "other"], publish: ["chat"] };

test("a client publish reaches every member on every replica once, with offsets and its publisher", async () => {
  const ada = await member(gateways[0], "ada", chat);
  const members = [await member(gateways[0], "bob", chat), await member(gateways[1], "cleo", chat)];
  for (const m of [ada, ...members]) assert.equal((await m.socket.emitWithAck("join", { channel: "chat" })).ok, true);
  const ack = await ada.socket.emitWithAck("publish", { channel: "chat", event: "msg", data: { text: "hi" } });
  assert.equal(ack.ok, true, JSON.stringify(ack));
  assert.equal(ack.room, "tenant:t1:channel:chat");
  assert.ok(ack.offset >= 1 && ack.epoch && ack.id, JSON.stringify(ack));
  for (const m of [ada, ...members]) {
    await eventually(() => m.got.some((g) => g.event === "msg"), "the event at each member");
  }
  // A moment for any duplicate to show.
  await new Promise((r) => setTimeout(r, 200));
  for (const m of [ada, ...members]) {
    const got = m.got.filter((g) => g.event === "msg");
    assert.equal(got.length, 1);
    assert.deepEqual(got[0].data, { text: "hi" });
    assert.deepEqual(
      [got[0].meta.room, got[0].meta.id, got[0].meta.offset, got[0].meta.epoch, got[0].meta.from],
      [ack.room, ack.id, ack.offset, ack.epoch, "ada"],
    );
  }
});

test("client publishes are recovered with since, like any other event", async () => {
  const ada = await member(gateways[0], "ada2", chat);
  const dan = await member(gateways[1], "dan", chat);
  const joined = await dan.socket.emitWithAck("join", { channel: "chat" });
  dan.socket.disconnect();
  for (const n of [1, 2]) {
    assert.equal((await ada.socket.emitWithAck("publish", { channel: "chat", event: "missed", data: { n } })).ok, true);
  }
  const back = await member(gateways[0], "dan", chat);
  const rejoined = await back.socket.emitWithAck("join", { channel: "chat", since: { offset: joined.offset, epoch: joined.epoch } });
  assert.equal(rejoined.recovered, true, JSON.stringify(rejoined));
  const missed = back.got.filter((g) => g.event === "missed");
  assert.deepEqual(missed.map((g) => [g.data.n, g.meta.from]), [[1, "ada2"], [2, "ada2"]]);
  // The history read says who published, too.
  const history = await back.socket.emitWithAck("history", { channel: "chat", limit: 2 });
  assert.deepEqual(history.events.map((e) => [e.data.n, e.from]), [[1, "ada2"], [2, "ada2"]]);
});

test("a client's chosen id is its own: it cannot make a backend's publish with that id a duplicate", async () => {
  const ada = await member(gateways[0], "ada4", chat);
  const watcher = await member(gateways[1], "kim", chat);
  await watcher.socket.emitWithAck("join", { channel: "chat" });
  const first = await ada.socket.emitWithAck("publish", { channel: "chat", event: "squat", data: 1, id: "order-42" });
  const again = await ada.socket.emitWithAck("publish", { channel: "chat", event: "squat", data: 1, id: "order-42" });
  assert.equal(first.ok, true, JSON.stringify(first));
  assert.deepEqual([again.id, again.duplicate], [first.id, true], "the client's own retry is deduplicated");
  assert.notEqual(first.id, "order-42");
  const res = await fetch(`${gateways[0].apiUrl}/v1/publish`, {
    method: "POST",
    headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify({ tenant: "t1", channel: "chat", event: "order", data: 2, id: "order-42" }),
  });
  const receipt = await res.json();
  assert.deepEqual([res.status, receipt.duplicate], [200, undefined], JSON.stringify(receipt));
  await eventually(() => watcher.got.some((g) => g.event === "order"), "the backend's event");
});

test('except: "self" skips the publishing socket only; a backend publish can skip a socket by id', async () => {
  const tab1 = await member(gateways[0], "eve", chat);
  const tab2 = await member(gateways[1], "eve", chat);
  const other = await member(gateways[0], "fay", chat);
  for (const m of [tab1, tab2, other]) await m.socket.emitWithAck("join", { channel: "chat" });
  const ack = await tab1.socket.emitWithAck("publish", { channel: "chat", event: "mine", data: 1, except: "self" });
  assert.equal(ack.ok, true, JSON.stringify(ack));
  await eventually(() => tab2.got.some((g) => g.event === "mine") && other.got.some((g) => g.event === "mine"), "the others");
  // The backend skips fay's socket, as the socket.io emitter's except does.
  const res = await fetch(`${gateways[1].apiUrl}/v1/publish`, {
    method: "POST",
    headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify({ tenant: "t1", channel: "chat", event: "fromBackend", data: 2, except: other.socket.id }),
  });
  assert.equal(res.status, 200, await res.clone().text());
  await eventually(() => tab1.got.some((g) => g.event === "fromBackend") && tab2.got.some((g) => g.event === "fromBackend"), "the others");
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(tab1.got.filter((g) => g.event === "mine").length, 0, "the publishing socket was skipped");
  assert.equal(other.got.filter((g) => g.event === "fromBackend").length, 0, "the excluded socket was skipped");
});

test("a publish the token does not grant is forbidden, bad ones are coded, and nothing is delivered", async () => {
  const ada = await member(gateways[0], "ada3", chat);
  const noClaim = await member(gateways[0], "gus", { channels: ["chat"] });
  const watcher = await member(gateways[1], "hal", chat);
  await watcher.socket.emitWithAck("join", { channel: "other" });
  await watcher.socket.emitWithAck("join", { channel: "chat" });
  const cases = [
    [ada, { channel: "other", event: "x" }, "forbidden"],
    [noClaim, { channel: "chat", event: "x" }, "forbidden"],
    [ada, { channel: "chat", event: "roomcast:disconnect" }, "invalid_event"],
    [ada, { channel: "chat", event: "typing" }, "invalid_event"],
    [ada, { channel: "bad room!", event: "x" }, "invalid_room"],
    [ada, { channel: "chat" }, "invalid_payload"],
    [ada, { channel: "chat", event: "x", except: "everyone" }, "invalid_payload"],
    [ada, { channel: "chat", event: "x", data: "y".repeat(2_000) }, "payload_too_large"],
  ];
  for (const [who, payload, code] of cases) {
    const ack = await who.socket.emitWithAck("publish", payload);
    assert.equal(ack.error?.code, code, `${JSON.stringify(payload).slice(0, 80)}: ${JSON.stringify(ack).slice(0, 200)}`);
  }
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(watcher.got.filter((g) => ["x", "roomcast:disconnect"].includes(g.event)), []);
});

test("the publish proxy approves, rewrites and refuses before anything is published", async () => {
  const ada = await member(proxied, "ivy", chat);
  const watcher = await member(gateways[0], "jon", chat);
  await watcher.socket.emitWithAck("join", { channel: "chat" });
  const approve = await ada.socket.emitWithAck("publish", { channel: "chat", event: "msg.approve", data: { text: "ok" } });
  assert.equal(approve.ok, true, JSON.stringify(approve));
  const rewrite = await ada.socket.emitWithAck("publish", { channel: "chat", event: "msg.rewrite", data: { text: "rude" } });
  assert.equal(rewrite.ok, true, JSON.stringify(rewrite));
  const refuse = await ada.socket.emitWithAck("publish", { channel: "chat", event: "msg.refuse", data: {} });
  assert.deepEqual(refuse.error, {
    code: "rpc_rejected",
    message: "slow down",
    backend: { code: "spam", message: "slow down" },
  });
  await eventually(() => watcher.got.some((g) => g.event === "msg.rewrite"), "the rewritten event");
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(watcher.got.find((g) => g.event === "msg.approve").data, { text: "ok" });
  assert.deepEqual(watcher.got.find((g) => g.event === "msg.rewrite").data, { text: "***" });
  assert.equal(watcher.got.filter((g) => g.event === "msg.refuse").length, 0);
  const call = proxyCalls.find((c) => c.event === "msg.rewrite");
  assert.deepEqual([call.type, call.channel, call.identity, call.data], ["publish", "chat", { tenant: "t1", user: "ivy" }, { text: "rude" }]);
});
