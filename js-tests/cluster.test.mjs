// Two replicas sharing rooms through Redis: a JavaScript app's clients on different replicas
// receive what a backend publishes, through the Rust SDK or the HTTP API.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { API_KEY, PUBLISH_EXAMPLE, connect, eventually, next, startGateway, startRedis, userToken } from "./helpers.mjs";

let redis;
let gateways = [];
let clients = [];
before(async () => {
  redis = await startRedis();
  gateways = [
    await startGateway({ ROOMCAST_REDIS_URL: redis.url }),
    await startGateway({ ROOMCAST_REDIS_URL: redis.url }),
  ];
  clients = [
    await connect(gateways[0].url, { auth: { token: userToken("t1", "ada") } }),
    await connect(gateways[1].url, { auth: { token: userToken("t1", "bob") } }),
  ];
  for (const c of clients) assert.equal((await c.emitWithAck("join", { project: "p1" })).ok, true);
  await eventually(
    () => redis.cli("PUBSUB", "NUMSUB", "roomcast:{tenant:t1:project:p1}").split("\n")[1] === "2",
    "both replicas to subscribe",
  );
});
after(async () => {
  for (const c of clients) c.close();
  for (const g of gateways) await g.stop();
  redis.stop();
});

test("an SDK publish reaches members on both replicas", async () => {
  const received = clients.map((c) => next(c, "task.updated"));
  const out = execFileSync(PUBLISH_EXAMPLE, [redis.url, "project", "t1", "p1", "task.updated", '{"id":42}'], {
    encoding: "utf8",
  });
  const receipt = JSON.parse(out);
  assert.equal(receipt.replicas, 2);
  for (const r of received) {
    const [data, meta] = await r;
    assert.deepEqual(data, { id: 42 });
    assert.deepEqual([meta.room, meta.id], ["tenant:t1:project:p1", receipt.id]);
  }
});

test("an HTTP publish to one replica reaches members on both", async () => {
  const received = clients.map((c) => next(c, "comment.added"));
  const res = await fetch(`${gateways[0].apiUrl}/v1/publish`, {
    method: "POST",
    headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify({ tenant: "t1", project: "p1", event: "comment.added", data: { text: "hi" } }),
  });
  assert.equal(res.status, 200);
  const receipt = await res.json();
  assert.deepEqual([receipt.ok, receipt.replicas], [true, 2]);
  for (const r of received) assert.deepEqual((await r)[0], { text: "hi" });
});

test("a user's typing reaches the channel on the other replica", async () => {
  for (const c of clients) await c.emitWithAck("join", { channel: "c1" });
  await eventually(
    () => redis.cli("PUBSUB", "NUMSUB", "roomcast:{tenant:t1:channel:c1}").split("\n")[1] === "2",
    "channel subscriptions",
  );
  const seen = next(clients[1], "typing");
  assert.deepEqual(await clients[0].emitWithAck("typing", { channel: "c1", typing: true }), { ok: true });
  const [indicator] = await seen;
  assert.deepEqual([indicator.userId, indicator.typing, indicator.channel], ["ada", true, "c1"]);
});
