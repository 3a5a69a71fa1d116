// The subscribe proxy (issue 17, point 4) with socket.io-client on two replicas and a real HTTP
// backend: a join the token does not grant is allowed or refused by the backend, an allowed
// room delivers like any other, and a backend that is down refuses the join.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { API_KEY, connect, freePort, next, startGateway, startRedis, userToken, answerJson, startBackend } from "./helpers.mjs";

const RPC_SECRET = "js-subscribe-secret-0123456789abcdef-0123";

let redis;
let gateways = [];
let backend;
const asks = [];
const open = [];

before(async () => {
  backend = await startBackend((body, req, res) => {
    const call = JSON.parse(body.toString());
    asks.push(call);
    const allowed = call.identity.user === "ada" && call.room === "tenant:t1:channel:vip";
    const answer = allowed ? { result: null } : { error: { code: "not_invited", message: "ask the host" } };
    answerJson(res, 200, answer);
  });
  redis = await startRedis();
  const env = {
    ROOMCAST_REDIS_URL: redis.url,
    ROOMCAST_SUBSCRIBE_PROXY_URL: `http://127.0.0.1:${backend.address().port}/subscribe`,
    ROOMCAST_RPC_SECRET: RPC_SECRET,
  };
  gateways = [await startGateway(env), await startGateway(env)];
});

after(async () => {
  for (const c of open) c.close();
  await Promise.all(gateways.map((g) => g.stop()));
  await redis?.stop();
  backend?.close();
});

async function connected(gateway, token) {
  const socket = await connect(gateway.url, { auth: { token } });
  open.push(socket);
  return socket;
}

test("the backend allows a join the token does not grant; the room then delivers on every replica", async () => {
  const ada = await connected(gateways[0], userToken("t1", "ada"));
  const joined = await ada.emitWithAck("join", { channel: "vip" });
  assert.equal(joined.ok, true, JSON.stringify(joined));
  const ask = asks.find((a) => a.identity.user === "ada");
  assert.deepEqual([ask.type, ask.room, ask.socket], ["subscribe", "tenant:t1:channel:vip", ada.id]);
  // Granted rooms are not asked about.
  const before = asks.length;
  assert.equal((await ada.emitWithAck("join", { channel: "c1" })).ok, true);
  assert.equal(asks.length, before);
  const got = next(ada, "vip.news");
  const res = await fetch(`${gateways[1].apiUrl}/v1/publish`, {
    method: "POST",
    headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify({ tenant: "t1", channel: "vip", event: "vip.news", data: 1 }),
  });
  assert.equal(res.status, 200);
  assert.equal((await got)[0], 1);
});

test("the backend refuses a join: forbidden with its error; a backend that is down refuses too", async () => {
  const bob = await connected(gateways[1], userToken("t1", "bob"));
  const refused = await bob.emitWithAck("join", { channel: "vip" });
  assert.equal(refused.error?.code, "forbidden");
  assert.deepEqual(refused.error.backend, { code: "not_invited", message: "ask the host" });
  const closed = await freePort();
  const down = await startGateway({
    ROOMCAST_SUBSCRIBE_PROXY_URL: `http://127.0.0.1:${closed}/subscribe`,
    ROOMCAST_RPC_SECRET: RPC_SECRET,
  });
  gateways.push(down);
  const cleo = await connected(down, userToken("t1", "cleo"));
  assert.equal((await cleo.emitWithAck("join", { channel: "vip" })).error?.code, "rpc_unavailable");
  assert.equal((await cleo.emitWithAck("join", { channel: "c1" })).ok, true, "granted rooms need no backend");
});
