// Joining and leaving rooms, as a JavaScript app does.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway, connect, userToken } from "./helpers.mjs";

let gw;
let socket;
before(async () => {
  gw = await startGateway({ ROOMCAST_MAX_ROOMS_PER_SOCKET: "2" });
  socket = await connect(gw.url, { auth: { token: userToken("t1", "u1") } });
});
after(async () => {
  socket.close();
  await gw.stop();
});

test("rooms the token grants can be joined and left", async () => {
  const joined = await socket.emitWithAck("join", { project: "p1" });
  assert.deepEqual([joined.ok, joined.room, joined.offset, typeof joined.epoch], [true, "tenant:t1:project:p1", 0, "string"]);
  assert.deepEqual(await socket.emitWithAck("leave", { project: "p1" }), { ok: true, room: "tenant:t1:project:p1" });
  assert.equal((await socket.emitWithAck("join", { channel: "c1" })).room, "tenant:t1:channel:c1");
  await socket.emitWithAck("leave", { channel: "c1" });
});

test("other rooms are refused with a code", async () => {
  const denied = await socket.emitWithAck("join", { project: "p9" });
  assert.equal(denied.ok, false);
  assert.equal(denied.error.code, "forbidden");
  assert.equal(typeof denied.error.message, "string");
  assert.equal((await socket.emitWithAck("join", { channel: "bad:id" })).error.code, "invalid_room");
});

test("the per-socket room cap answers too_many_rooms", async () => {
  await socket.emitWithAck("join", { project: "p1" });
  await socket.emitWithAck("join", { project: "p2" });
  assert.equal((await socket.emitWithAck("join", { channel: "c1" })).error.code, "too_many_rooms");
  await socket.emitWithAck("leave", { project: "p1" });
  await socket.emitWithAck("leave", { project: "p2" });
});

test("bad payloads get invalid_payload, unknown events unknown_event", async () => {
  for (const bad of ["p1", 7, null, [], {}, { project: 1 }, { project: "p1", channel: "c1" }]) {
    const ack = await socket.emitWithAck("join", bad);
    assert.equal(ack.error?.code, "invalid_payload", JSON.stringify(bad));
  }
  assert.equal((await socket.emitWithAck("join")).error.code, "invalid_payload");
  assert.equal((await socket.emitWithAck("no-such-event", {})).error.code, "unknown_event");
  assert.equal(socket.connected, true);
});
