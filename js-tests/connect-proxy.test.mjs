// The connect proxy (issue 17, point 3) with socket.io-client on two replicas sharing Redis and
// a real HTTP backend: it refuses (connect_error "forbidden"), admits with extra rooms and an
// earlier expiry, is asked again at auth:refresh, answers are cached per token so a reconnect
// storm of 1,000 clients costs one call per token, and a backend that is down refuses
// (fail closed) or admits on the token alone (fail open).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { API_KEY, connect, eventually, freePort, next, now, rejection, startGateway, startRedis, userToken, answerJson, startBackend } from "./helpers.mjs";

const RPC_SECRET = "js-connect-secret-0123456789abcdef-012345";

let redis;
let gateways = [];
let backend;
const calls = []; // every ask: { type, user }
const banned = new Set(["mallory"]);
const open = [];

before(async () => {
  backend = await startBackend((body, req, res) => {
    const call = JSON.parse(body.toString());
    calls.push({ type: call.type, user: call.identity.user });
    let answer;
    if (banned.has(call.identity.user)) answer = { error: { code: "banned", message: "not welcome" } };
    else if (call.identity.user === "ada") answer = { result: { rooms: [{ channel: "lobby" }] } };
    else if (call.identity.user === "brief") answer = { result: { exp: now() + 3 } };
    else if (call.identity.user === "stale") answer = { result: { exp: now() - 10 } };
    else answer = { result: null };
    answerJson(res, 200, answer);
  });
  redis = await startRedis();
  const env = {
    ROOMCAST_REDIS_URL: redis.url,
    ROOMCAST_CONNECT_PROXY_URL: `http://127.0.0.1:${backend.address().port}/connect`,
    ROOMCAST_RPC_SECRET: RPC_SECRET,
    ROOMCAST_AUTH_EXPIRING_NOTICE: "1s",
    // The storm below puts up to 1,000 asks of one tenant in flight at once (default bound: 256
    // per replica, beyond which connects are refused with rate_limited and clients retry).
    ROOMCAST_RPC_TENANT_CONCURRENCY: "1000",
  };
  gateways = [await startGateway(env), await startGateway(env)];
});

after(async () => {
  for (const c of open) c.close();
  await Promise.all(gateways.map((g) => g.stop()));
  await redis?.stop();
  backend?.close();
});

async function connected(gateway, token, setup) {
  const socket = await connect(gateway.url, { auth: { token } }, setup);
  open.push(socket);
  return socket;
}

const asked = (user) => calls.filter((c) => c.user === user).length;

test("the backend refuses a user: connect_error forbidden, on either replica", async () => {
  for (const gateway of gateways) {
    const err = await rejection(gateway.url, { auth: { token: userToken("t1", "mallory") } });
    assert.equal(err, "forbidden");
  }
});

test("the backend admits with an extra room: the socket is in it without joining, told with roomcast:joined", async () => {
  let joined;
  const ada = await connected(gateways[0], userToken("t1", "ada"), (s) => {
    joined = next(s, "roomcast:joined");
  });
  const [notice] = await joined;
  assert.equal(notice.room, "tenant:t1:channel:lobby");
  const got = next(ada, "welcome");
  const res = await fetch(`${gateways[1].apiUrl}/v1/publish`, {
    method: "POST",
    headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify({ tenant: "t1", channel: "lobby", event: "welcome", data: { hi: true } }),
  });
  assert.equal(res.status, 200);
  assert.deepEqual((await got)[0], { hi: true });
});

test("an earlier expiry from the backend ends the socket then; auth:refresh asks the backend again", async () => {
  const brief = await connected(gateways[1], userToken("t1", "brief"));
  const [notice] = await next(brief, "roomcast:disconnect", 10_000);
  assert.equal(notice.code, "token_expired");
  // An expiry already past refuses the connection.
  assert.equal(await rejection(gateways[0].url, { auth: { token: userToken("t1", "stale") } }), "token_expired");
  // A refresh is asked too, never from the cache: banned since it connected, its refresh with
  // the very token it connected with is refused.
  const token = userToken("t1", "carl");
  const carl = await connected(gateways[0], token);
  banned.add("carl");
  const refused = await carl.emitWithAck("auth:refresh", { token });
  assert.equal(refused.error?.code, "forbidden", JSON.stringify(refused));
  assert.ok(calls.some((c) => c.user === "carl" && c.type === "refresh"));
  banned.delete("carl");
});

test("a reconnect storm of 1,000 clients costs the backend one call per token", async () => {
  const tokens = Array.from({ length: 1000 }, (_, i) => userToken("t2", `storm${i}`));
  const before = calls.length;
  const connectAll = () =>
    Promise.all(tokens.map((token, i) => connect(gateways[i % 2].url, { auth: { token }, transports: ["websocket"] })));
  let sockets = await connectAll();
  const first = calls.length - before;
  for (const s of sockets) s.close();
  sockets = await connectAll(); // the storm: everyone back at once, on the same replicas
  const total = calls.length - before;
  for (const s of sockets) s.close();
  console.log(`# connect proxy: 1,000 clients, connected twice: ${first} backend calls the first time, ${total - first} the second`);
  // Each replica asks once per token it saw (its own cache).
  assert.ok(first <= 1000, `${first} calls for 1,000 tokens`);
  assert.equal(total - first, 0, "the reconnects were answered from the cache");
  // 50 tabs of one new token at once, over both replicas: asks in flight are shared.
  const shared = userToken("t2", "tabs");
  const tabs = await Promise.all(
    Array.from({ length: 50 }, (_, i) => connect(gateways[i % 2].url, { auth: { token: shared }, transports: ["websocket"] })),
  );
  for (const s of tabs) s.close();
  assert.ok(asked("tabs") >= 1 && asked("tabs") <= 2, `${asked("tabs")} calls for 50 tabs of one token on 2 replicas`);
});

test("a backend that is down refuses connections (fail closed), or admits them on the token (fail open)", async () => {
  const closed = await freePort();
  const base = { ROOMCAST_CONNECT_PROXY_URL: `http://127.0.0.1:${closed}/connect`, ROOMCAST_RPC_SECRET: RPC_SECRET };
  const failClosed = await startGateway(base);
  const failOpen = await startGateway({ ...base, ROOMCAST_CONNECT_PROXY_FAILURE: "open" });
  gateways.push(failClosed, failOpen);
  const err = await rejection(failClosed.url, { auth: { token: userToken("t1", "dora") } });
  assert.equal(err, "rpc_unavailable");
  const dora = await connected(failOpen, userToken("t1", "dora"));
  assert.equal((await dora.emitWithAck("join", { channel: "c1" })).ok, true);
});
