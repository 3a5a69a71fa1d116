// Proxy-only mode of the connect proxy (issue 17, point 3) for apps without JWTs, with
// socket.io-client on two replicas and a real HTTP backend: the backend gets the client's
// opaque session token or its Cookie header and answers who it is (tenant, user, rooms it may
// join); refusals, refreshes and bad answers are coded.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { connect, rejection, startGateway, startRedis, answerJson, startBackend } from "./helpers.mjs";

const RPC_SECRET = "js-proxy-only-secret-0123456789abcdef-01";

let redis;
let gateways = [];
let backend;
const calls = [];
const open = [];

// The app's own sessions: opaque tokens and cookies, no JWT anywhere.
const sessions = {
  "sess-ada": { tenant: "t1", user: "ada", channels: ["c1"], rooms: [{ channel: "news" }] },
  "session=bob": { tenant: "t1", user: "bob", channels: ["*"], publish: ["c1"] },
  "sess-broken": { tenant: "bad tenant!", user: "x" },
  "sess-expired": { tenant: "t1", user: "old", exp: 1000 },
  "sess-nulls": { tenant: "t1", user: "nul", projects: null, channels: null, publish: null, exp: null },
};

before(async () => {
  backend = await startBackend((body, req, res) => {
    const call = JSON.parse(body.toString());
    calls.push(call);
    const session = sessions[call.data.token] ?? sessions[call.data.cookie];
    const answer = session ? { result: session } : { error: { code: "no_session", message: "log in first" } };
    answerJson(res, 200, answer);
  });
  redis = await startRedis();
  const env = {
    ROOMCAST_REDIS_URL: redis.url,
    ROOMCAST_CONNECT_PROXY_URL: `http://127.0.0.1:${backend.address().port}/connect`,
    ROOMCAST_CONNECT_PROXY_MODE: "proxy_only",
    ROOMCAST_RPC_SECRET: RPC_SECRET,
    ROOMCAST_CORS_ORIGINS: "https://app.example.com",
  };
  gateways = [await startGateway(env), await startGateway(env)];
});

after(async () => {
  for (const c of open) c.close();
  await Promise.all(gateways.map((g) => g.stop()));
  await redis?.stop();
  backend?.close();
});

test("an opaque session token connects as the user the backend names, with its grants and rooms", async () => {
  let joined;
  const ada = await connect(gateways[0].url, { auth: { token: "sess-ada" } }, (s) => {
    joined = new Promise((resolve) => s.once("roomcast:joined", resolve));
  });
  open.push(ada);
  assert.equal((await joined).room, "tenant:t1:channel:news");
  assert.equal((await ada.emitWithAck("join", { channel: "c1" })).ok, true);
  assert.equal((await ada.emitWithAck("join", { channel: "c2" })).error?.code, "forbidden");
  const call = calls.find((c) => c.data.token === "sess-ada");
  assert.deepEqual([call.type, call.identity, call.data.cookie], ["connect", undefined, null]);
  // A refresh asks again with the new token, which must name the same user.
  assert.equal((await ada.emitWithAck("auth:refresh", { token: "sess-ada" })).ok, true);
  assert.equal((await ada.emitWithAck("auth:refresh", { token: "session=bob" })).error?.code, "forbidden");
  assert.ok(calls.some((c) => c.type === "refresh"));
});

test("a Cookie header alone connects (websocket and polling), and grants client publish", async () => {
  for (const transports of [["websocket"], ["polling"]]) {
    const bob = await connect(gateways[1].url, { transports, extraHeaders: { cookie: "session=bob" } });
    open.push(bob);
    const ack = await bob.emitWithAck("publish", { channel: "c1", event: "hello", data: 1 });
    assert.equal(ack.ok, true, JSON.stringify(ack));
  }
});

test("unknown sessions, no credentials and bad answers are refused with codes", async () => {
  assert.equal(await rejection(gateways[0].url, { auth: { token: "sess-nobody" } }), "forbidden");
  assert.equal(await rejection(gateways[0].url, {}), "token_missing");
  assert.equal(await rejection(gateways[1].url, { auth: { token: "sess-broken" } }), "rpc_unavailable");
  assert.equal(await rejection(gateways[1].url, { auth: { token: "sess-expired" } }), "rpc_unavailable");
  // Fields written as null are absent (no grants), not an error.
  const nul = await connect(gateways[0].url, { auth: { token: "sess-nulls" } });
  open.push(nul);
  assert.equal((await nul.emitWithAck("join", { channel: "c1" })).error?.code, "forbidden");
  // Another site's page cannot use the visitor's cookie: its Origin is not the app's.
  const evil = await rejection(gateways[0].url, {
    transports: ["websocket"],
    extraHeaders: { cookie: "session=bob", origin: "https://evil.example" },
  });
  assert.notEqual(evil, undefined);
  const app = await connect(gateways[0].url, {
    transports: ["websocket"],
    extraHeaders: { cookie: "session=bob", origin: "https://app.example.com" },
  });
  open.push(app);
});
