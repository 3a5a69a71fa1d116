// Connecting with a JWT, as a JavaScript app does.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway, connect, rejection, userToken, sign, now, next } from "./helpers.mjs";

let gw;
before(async () => {
  gw = await startGateway({ ROOMCAST_JWT_LEEWAY: "0s" });
});
after(() => gw.stop());

test("the token can come from auth, an Authorization header or the query string", async () => {
  const token = userToken("t1", "u1");
  (await connect(gw.url, { auth: { token } })).close();
  (await connect(gw.url, { extraHeaders: { Authorization: `Bearer ${token}` } })).close();
  (await connect(gw.url, { query: { token } })).close();
  // Long-polling only, as behind a proxy that blocks WebSocket.
  (await connect(gw.url, { auth: { token }, transports: ["polling"] })).close();
  (await connect(gw.url, { auth: { token }, transports: ["websocket"] })).close();
});

test("each rejection has a stable code in connect_error", async () => {
  assert.equal(await rejection(gw.url), "token_missing");
  assert.equal(await rejection(gw.url, { auth: { token: "nope" } }), "token_invalid");
  const forged = sign({ sub: "u1", tenant: "t1", exp: now() + 60 }, "not-the-secret-not-the-secret-not-the");
  assert.equal(await rejection(gw.url, { auth: { token: forged } }), "token_invalid");
  assert.equal(await rejection(gw.url, { auth: { token: userToken("t1", "u1", { exp: now() - 5 }) } }), "token_expired");
  assert.equal(await rejection(gw.url, { auth: { token: sign({ sub: "u1", exp: now() + 60 }) } }), "forbidden");
});

test("a socket is warned before expiry, can refresh, and is disconnected at expiry without refresh", async () => {
  let warned;
  const refreshed = await connect(gw.url, { auth: { token: userToken("t1", "u1", { exp: now() + 2 }) } }, (s) => {
    warned = next(s, "auth:expiring");
  });
  const expiring = await connect(gw.url, { auth: { token: userToken("t1", "u2", { exp: now() + 2 }) } });

  // The token lives less than the notice period, so the warning comes right after connect.
  const [warning] = await warned;
  assert.equal(typeof warning.expiresInMs, "number");
  const ack = await refreshed.emitWithAck("auth:refresh", { token: userToken("t1", "u1", { exp: now() + 3600 }) });
  assert.equal(ack.ok, true);

  const bye = next(expiring, "roomcast:disconnect");
  const [reason] = await next(expiring, "disconnect");
  assert.equal(reason, "io server disconnect", "a server disconnect: socket.io-client will not reconnect on its own");
  const [info] = await bye;
  assert.deepEqual([info.code, info.reconnect], ["token_expired", false]);

  // The refreshed socket outlives its first token.
  assert.equal((await refreshed.emitWithAck("join", { project: "p1" })).ok, true);
  assert.equal(refreshed.connected, true);
  refreshed.close();
});

test("a refresh for another user is refused", async () => {
  const socket = await connect(gw.url, { auth: { token: userToken("t1", "u1") } });
  const ack = await socket.emitWithAck("auth:refresh", { token: userToken("t1", "someone-else") });
  assert.deepEqual([ack.ok, ack.error.code], [false, "forbidden"]);
  const bad = await socket.emitWithAck("auth:refresh", { token: 42 });
  assert.equal(bad.error.code, "invalid_payload");
  socket.close();
});
