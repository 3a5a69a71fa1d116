// Presence and typing indicators, as a browser chat app uses them.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway, connect, next, userToken } from "./helpers.mjs";

let gw;
before(async () => {
  gw = await startGateway({
    ROOMCAST_PRESENCE_GRACE: "300ms",
    ROOMCAST_TYPING_TTL: "1s",
    ROOMCAST_TYPING_THROTTLE: "300ms",
  });
});
after(() => gw.stop());

/** Connects `user` with the app's presence listeners attached before connecting. */
async function chatClient(user) {
  const seen = { joins: [], leaves: [], updates: [], typing: [] };
  const socket = await connect(gw.url, { auth: { token: userToken("t1", user) } }, (s) => {
    s.on("presence:join", (p) => seen.joins.push(p));
    s.on("presence:leave", (p) => seen.leaves.push(p));
    s.on("presence:update", (p) => seen.updates.push(p));
    s.on("typing", (t) => seen.typing.push(t));
  });
  return { socket, seen };
}

test("join, list, status and leave in a channel", async () => {
  const bob = await chatClient("bob");
  const ownJoin = next(bob.socket, "presence:join");
  assert.equal((await bob.socket.emitWithAck("join", { channel: "c1" })).ok, true);
  // Members are announced to everyone in the room, themselves included.
  assert.equal((await ownJoin)[0].userId, "bob");
  const alice = await chatClient("alice");
  const aliceJoined = next(bob.socket, "presence:join");
  await alice.socket.emitWithAck("join", { channel: "c1" });
  const [join] = await aliceJoined;
  assert.deepEqual([join.channel, join.userId, join.status], ["c1", "alice", "online"]);

  const list = await bob.socket.emitWithAck("presence:list", { channel: "c1" });
  assert.equal(list.ok, true);
  assert.deepEqual(list.users.map((u) => [u.userId, u.connections, u.status]).sort(), [
    ["alice", 1, "online"],
    ["bob", 1, "online"],
  ]);
  assert.equal(list.total, 2);
  assert.equal(list.next, null);

  const away = next(bob.socket, "presence:update");
  assert.deepEqual(await alice.socket.emitWithAck("presence:update", { status: "away" }), { ok: true, status: "away" });
  assert.deepEqual(await away.then(([u]) => [u.userId, u.status]), ["alice", "away"]);

  const left = next(bob.socket, "presence:leave");
  alice.socket.close(); // the tab closes
  const [leave] = await left;
  assert.deepEqual(leave, { channel: "c1", userId: "alice" });
  bob.socket.close();
});

test("typing indicators: shown to others, stopped explicitly or by the TTL", async () => {
  const bob = await chatClient("bob2");
  const alice = await chatClient("alice2");
  for (const c of [bob, alice]) await c.socket.emitWithAck("join", { channel: "c2" });

  const on = next(bob.socket, "typing");
  assert.deepEqual(await alice.socket.emitWithAck("typing", { channel: "c2", typing: true }), { ok: true });
  assert.deepEqual((await on)[0], { channel: "c2", userId: "alice2", typing: true, ttlMs: 1000 });
  const off = next(bob.socket, "typing");
  await alice.socket.emitWithAck("typing", { channel: "c2", typing: false });
  assert.equal((await off)[0].typing, false);

  // A start right after a stop waits for the throttle interval (300 ms): at most a start and a
  // stop per interval reach the others, whatever the client sends.
  const again = await alice.socket.emitWithAck("typing", { channel: "c2", typing: true });
  assert.deepEqual(again, { ok: true, throttled: true });
  await new Promise((r) => setTimeout(r, 350));

  // Alice starts typing and goes quiet: the server turns the indicator off after the TTL.
  const started = Date.now();
  const shown = next(bob.socket, "typing");
  assert.deepEqual(await alice.socket.emitWithAck("typing", { channel: "c2", typing: true }), { ok: true });
  await shown;
  const expired = await next(bob.socket, "typing");
  assert.equal(expired[0].typing, false);
  assert.ok(Date.now() - started >= 900, "off after the 1 s TTL");
  assert.equal(alice.seen.typing.length, 0, "the typist does not see their own indicator");

  const denied = await bob.socket.emitWithAck("typing", { channel: "c9", typing: true });
  assert.equal(denied.error.code, "forbidden");
  assert.equal((await bob.socket.emitWithAck("typing", { channel: "c2" })).error.code, "invalid_payload");
  bob.socket.close();
  alice.socket.close();
});
