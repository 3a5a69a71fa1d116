// Transactional publishing: rows an application commits to the Postgres outbox reach
// socket.io clients exactly once and in order per room, through roomcast-relay, whatever
// crashes or restarts in between. Real Postgres (initdb on a free port), Redis, gateway, relay.
import { test as nodeTest, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import pg from "pg";
import {
  OUTBOX_MIGRATION,
  connect,
  eventually,
  postgresMissing,
  startGateway,
  startPostgres,
  startRedis,
  startRelay,
  userToken,
  WAIT_MS,
} from "./helpers.mjs";

// Without PostgreSQL every case is skipped, saying why (scripts/test installs it as root).
const skip = postgresMissing() ?? false;
const test = (name, fn) => nodeTest(name, { skip }, fn);

let postgres;
let redis;
let gateway;
let db;
const relays = new Set();

before(async () => {
  if (skip) return;
  [postgres, redis] = await Promise.all([startPostgres(), startRedis()]);
  gateway = await startGateway({ ROOMCAST_REDIS_URL: redis.url });
  db = new pg.Pool({ connectionString: postgres.url, max: 8 });
  db.on("error", () => {}); // idle clients see the server restart test's shutdown
  await db.query(readFileSync(OUTBOX_MIGRATION, "utf8"));
  // Applying it again changes nothing.
  await db.query(readFileSync(OUTBOX_MIGRATION, "utf8"));
});

after(async () => {
  for (const r of relays) await r.stop().catch(() => r.kill());
  await db?.end();
  await gateway?.stop();
  redis?.stop();
  await postgres?.destroy();
});

async function relay(env = {}) {
  const r = await startRelay({ ROOMCAST_RELAY_DATABASE_URL: postgres.url, ROOMCAST_REDIS_URL: redis.url, ...env });
  relays.add(r);
  return r;
}

async function stopRelay(r) {
  await r.stop();
  relays.delete(r);
}

/** A client of `user` in tenant t1, joined to `rooms` (e.g. { project: "p1" }), recording events. */
async function member(user, rooms, events) {
  const socket = await connect(gateway.url, { auth: { token: userToken("t1", user, { channels: ["*"] }) } });
  const seen = [];
  socket.onAny((event, data, meta) => {
    if (events.includes(event)) seen.push({ event, data, meta });
  });
  for (const room of rooms) assert.equal((await socket.emitWithAck("join", room)).ok, true, JSON.stringify(room));
  return { socket, seen };
}

/** Publishes one event per element of `datas` in one transaction; returns the event ids. */
async function publishAll(kind, id, event, datas) {
  const c = await db.connect();
  try {
    await c.query("BEGIN");
    const ids = [];
    for (const d of datas) {
      const { rows } = await c.query("SELECT roomcast_publish('t1', $1, $2, $3, $4) AS id", [kind, id, event, JSON.stringify(d)]);
      ids.push(rows[0].id);
    }
    await c.query("COMMIT");
    return ids;
  } finally {
    c.release();
  }
}

const pending = async () => Number((await db.query("SELECT count(*) FROM roomcast_outbox WHERE processed_at IS NULL")).rows[0].count);

/**
 * A gate for tests only: the relay's DELETE (which marks published rows) waits while the gate is
 * closed (the test holds an advisory lock), so the relay has published its batch and sits inside
 * its transaction, not yet committed. `waited()` resolves once the relay waits at it; `open()`
 * lets it through; `remove()` opens it and drops it.
 */
async function deleteGate() {
  await db.query(`CREATE FUNCTION test_gate() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NULL; END $$`);
  await db.query("CREATE TRIGGER test_gate BEFORE DELETE ON roomcast_outbox FOR EACH STATEMENT EXECUTE FUNCTION test_gate()");
  const holder = await db.connect();
  await holder.query("SELECT pg_advisory_lock(4242)");
  let closed = true;
  const open = async () => {
    if (closed) await holder.query("SELECT pg_advisory_unlock(4242)");
    closed = false;
  };
  return {
    waited: () =>
      eventually(
        async () => (await db.query("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")).rows[0].count === "1",
        "the relay to wait at the gate, its batch in flight",
      ),
    open,
    async remove() {
      await open();
      holder.release();
      await db.query("DROP TRIGGER test_gate ON roomcast_outbox; DROP FUNCTION test_gate()");
    },
  };
}

/** Asserts `seen` holds `event` with data.n = 0..count-1 each once, in order, for `room`. */
function assertOnceInOrder(seen, room, count, what) {
  const ns = seen.filter((e) => e.meta.room === room).map((e) => e.data.n);
  const ids = seen.filter((e) => e.meta.room === room).map((e) => e.meta.id);
  assert.equal(new Set(ids).size, ids.length, `${what}: an event id was delivered twice`);
  assert.deepEqual(ns, [...Array(count).keys()], `${what}: each row once, in order`);
}

test("committed rows reach clients once, in id order, with the row's key as event id", async () => {
  const r = await relay();
  const { socket, seen } = await member("ada", [{ project: "p1" }], ["task.updated"]);
  try {
    const ids = [];
    for (let t = 0; t < 10; t++) {
      ids.push(...(await publishAll("project", "p1", "task.updated", [...Array(20).keys()].map((i) => ({ n: t * 20 + i })))));
    }
    await eventually(() => seen.length >= 200, "200 events");
    assertOnceInOrder(seen, "tenant:t1:project:p1", 200, "one relay");
    assert.deepEqual(seen.map((e) => e.meta.id), ids, "meta.id is what roomcast_publish returned");
    // Each event is in the room's history: a client that joins with `since` can recover it.
    assert.equal(typeof seen[0].meta.offset, "number");
    // Published rows are deleted (ROOMCAST_RELAY_RETENTION=0).
    await eventually(async () => (await db.query("SELECT count(*) FROM roomcast_outbox")).rows[0].count === "0", "rows deleted");
    // A publish retried after a Redis timeout would count as a duplicate; every row counts once.
    assert.equal((await r.metric("roomcast_relay_published_total")) + (await r.metric("roomcast_relay_duplicates_total")) >= 200, true);
    assert.equal(await r.ready(), true);
  } finally {
    socket.close();
    await stopRelay(r);
  }
});

test("a rolled-back transaction delivers nothing; an app's own idempotency key is delivered once", async () => {
  const r = await relay();
  const { socket, seen } = await member("bob", [{ channel: "c9" }], ["note", "done"]);
  try {
    const c = await db.connect();
    try {
      await c.query("BEGIN");
      await c.query("SELECT roomcast_publish('t1', 'channel', 'c9', 'note', '{\"rolled\": true}')");
      await c.query("ROLLBACK");
    } finally {
      c.release();
    }
    await db.query("SELECT roomcast_publish('t1', 'channel', 'c9', 'note', '{\"n\": 1}', 'order-42-shipped')");
    await db.query("SELECT roomcast_publish('t1', 'channel', 'c9', 'note', '{\"n\": 2}', 'order-42-shipped')");
    await db.query("SELECT roomcast_publish('t1', 'channel', 'c9', 'done', '{}')");
    await eventually(() => seen.some((e) => e.event === "done"), "the last row");
    const notes = seen.filter((e) => e.event === "note");
    assert.deepEqual(notes.map((e) => e.data), [{ n: 1 }], "nothing rolled back; the repeated key once");
    assert.equal(notes[0].meta.id, "order-42-shipped");
    assert.ok((await r.metric("roomcast_relay_duplicates_total")) >= 1);
  } finally {
    socket.close();
    await stopRelay(r);
  }
});

test("bad rows: refused in the application's transaction, or moved aside without blocking their room", async () => {
  for (const [args, constraint] of [
    [["t1", "team", "x", "e", "{}"], "roomcast_outbox_kind"],
    [["t1", "project", "a:b", "e", "{}"], "roomcast_outbox_kind"],
    [["bad tenant", "tenant", null, "e", "{}"], "roomcast_outbox_tenant"],
    [["t1", "tenant", null, "presence:join", "{}"], "roomcast_outbox_event"],
    [["t1", "tenant", null, "", "{}"], "roomcast_outbox_event"],
    [["t1", "tenant", null, "e", "{}", "has space"], "roomcast_outbox_key"],
  ]) {
    const params = args.map((_, i) => `$${i + 1}`).join(", ");
    await assert.rejects(db.query(`SELECT roomcast_publish(${params})`, args), (e) => e.constraint === constraint, `${args}`);
  }
  await assert.rejects(db.query("SELECT roomcast_publish('t1', 'tenant', null, 'e', 'not json')"), /invalid input syntax for type json/);
  // Written directly, around roomcast_publish: the same checks (a NULL id would make no room).
  for (const [kind, id, event] of [["project", null, "e"], ["tenant", "x", "e"], ["channel", "c1", "a\u0085b"]]) {
    await assert.rejects(
      db.query("INSERT INTO roomcast_outbox (tenant, kind, target_id, event, data) VALUES ('t1', $1, $2, $3, '{}')", [kind, id, event]),
      (e) => e.code === "23514",
      `${kind} ${id} ${event}`,
    );
  }

  const r = await relay({ ROOMCAST_PUBLISH_MAX_PAYLOAD: "100" });
  const { socket, seen } = await member("cy", [{ project: "p2" }], ["big", "small"]);
  try {
    await publishAll("project", "p2", "big", [{ text: "x".repeat(200) }]);
    await publishAll("project", "p2", "small", [{ n: 1 }]);
    await eventually(() => seen.some((e) => e.event === "small"), "the row after the failed one");
    assert.deepEqual(seen.map((e) => e.event), ["small"]);
    // Events go out before the batch commits: wait for the commit that marks the row.
    const marked = async () => (await db.query("SELECT event, error FROM roomcast_outbox_failed")).rows;
    const rows = await eventually(async () => ((await marked()).length ? marked() : null), "the big row moved aside");
    assert.equal(rows.length, 1);
    assert.equal(rows[0].event, "big");
    assert.match(rows[0].error, /payload_too_large/);
    // Counted once the batch's commit returned, which may be just after the row shows.
    await eventually(async () => (await r.metric("roomcast_relay_failed_total")) === 1, "the failed row counted");
    await db.query("DELETE FROM roomcast_outbox_failed");

    // A row written around the checks (here: with them dropped) whose room is NULL is marked
    // failed, not left to block the outbox; the room's next rows go on.
    const constraint = (await db.query(
      "SELECT pg_get_constraintdef(oid) AS def FROM pg_constraint WHERE conname = 'roomcast_outbox_kind'",
    )).rows[0].def;
    await db.query("ALTER TABLE roomcast_outbox DROP CONSTRAINT roomcast_outbox_kind");
    try {
      await db.query("INSERT INTO roomcast_outbox (tenant, kind, target_id, event, data) VALUES ('t1', 'project', NULL, 'small', '{\"n\": 0}')");
    } finally {
      await db.query(`ALTER TABLE roomcast_outbox ADD CONSTRAINT roomcast_outbox_kind ${constraint} NOT VALID`);
    }
    await publishAll("project", "p2", "small", [{ n: 2 }]);
    await eventually(() => seen.filter((e) => e.event === "small").length >= 2, "the row after the NULL-room one");
    const failed = await eventually(async () => ((await marked()).length ? marked() : null), "the NULL-room row moved aside");
    assert.equal(failed.length, 1);
    assert.match(failed[0].error, /needs a target_id/);
    await db.query("DELETE FROM roomcast_outbox_failed");
    await db.query("ALTER TABLE roomcast_outbox VALIDATE CONSTRAINT roomcast_outbox_kind");
  } finally {
    socket.close();
    await stopRelay(r);
  }
});

test("a claim past ROOMCAST_RELAY_BATCH_BYTES publishes the rest in the next batches, in order", async () => {
  const r = await relay({ ROOMCAST_PUBLISH_MAX_PAYLOAD: "200", ROOMCAST_RELAY_BATCH_BYTES: "200", ROOMCAST_LOG: "roomcast_relay=debug" });
  const { socket, seen } = await member("ian", [{ channel: "b1" }], ["chunk"]);
  try {
    // ~30 bytes each: a claim of all 60 rows publishes 7 at a time.
    await publishAll("channel", "b1", "chunk", [...Array(60).keys()].map((n) => ({ n, pad: "xxxxxxxxxx" })));
    await eventually(() => seen.length >= 60, "60 events");
    assertOnceInOrder(seen, "tenant:t1:channel:b1", 60, "in small batches");
    // It did take several batches: the debug log of each says what waited for the next.
    const batches = r.logs.map((l) => JSON.parse(l)).filter((e) => e.message === "batch");
    assert.ok(batches.some((b) => b.deferred > 0), `a batch left rows for the next: ${JSON.stringify(batches)}`);
  } finally {
    socket.close();
    await stopRelay(r);
  }
});

test("ROOMCAST_RELAY_RETENTION keeps published rows marked, then deletes them; failed rows stay aside", async () => {
  const r = await relay({ ROOMCAST_RELAY_RETENTION: "2s", ROOMCAST_PUBLISH_MAX_PAYLOAD: "100" });
  const { socket, seen } = await member("jo", [{ channel: "kept" }], ["kept"]);
  try {
    const ids = await publishAll("channel", "kept", "kept", [{ n: 0 }, { n: 1 }, { pad: "y".repeat(200) }]);
    await eventually(() => seen.length >= 2, "the two rows that fit");
    const rows = async () =>
      (await db.query("SELECT idempotency_key, processed_at FROM roomcast_outbox WHERE idempotency_key = ANY($1) ORDER BY id", [ids])).rows;
    const failed = async () => (await db.query("SELECT idempotency_key, error FROM roomcast_outbox_failed")).rows;
    await eventually(async () => (await rows()).length === 2 && (await rows()).every((row) => row.processed_at !== null), "two rows marked");
    assert.deepEqual((await rows()).map((row) => row.idempotency_key), ids.slice(0, 2), "published rows are kept, marked");
    await eventually(async () => (await rows()).length === 0, "the published rows deleted after the retention", 20_000);
    const [stays] = await failed();
    assert.equal(stays.idempotency_key, ids[2], "the failed row stays, aside");
    assert.match(stays.error, /payload_too_large/);
    await db.query("DELETE FROM roomcast_outbox_failed");
  } finally {
    socket.close();
    await stopRelay(r);
  }
});

test("with the NOTIFY trigger disabled the relay polls, and applying the migration again keeps it disabled", async () => {
  await db.query("ALTER TABLE roomcast_outbox DISABLE TRIGGER roomcast_outbox_notify");
  const r = await relay({ ROOMCAST_RELAY_POLL_INTERVAL: "50ms" });
  const { socket, seen } = await member("kim", [{ channel: "poll" }], ["polled"]);
  try {
    await db.query(readFileSync(OUTBOX_MIGRATION, "utf8"));
    const state = await db.query("SELECT tgenabled FROM pg_trigger WHERE tgname = 'roomcast_outbox_notify'");
    assert.equal(state.rows[0].tgenabled, "D");
    await publishAll("channel", "poll", "polled", [{ n: 0 }, { n: 1 }, { n: 2 }]);
    await eventually(() => seen.length >= 3, "polled rows");
    assertOnceInOrder(seen, "tenant:t1:channel:poll", 3, "polling");
  } finally {
    await db.query("ALTER TABLE roomcast_outbox ENABLE TRIGGER roomcast_outbox_notify");
    socket.close();
    await stopRelay(r);
  }
});

test("a relay killed after publishing, before its commit: the next relay delivers nothing twice", async () => {
  const { socket, seen } = await member("dee", [{ project: "p1" }], ["step"]);
  const gate = await deleteGate();
  let first;
  try {
    await publishAll("project", "p1", "step", [...Array(50).keys()].map((n) => ({ n })));
    first = await relay();
    await eventually(() => seen.length >= 50, "the batch published");
    await gate.waited();
    first.kill("SIGKILL");
    await first.exited();
  } finally {
    if (first) {
      first.kill("SIGKILL");
      relays.delete(first);
    }
    await gate.remove();
  }
  // The killed relay's backend notices the closed connection after the gate opens and rolls
  // its transaction back: the rows are queued again.
  await eventually(
    async () => (await db.query("SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction' OR wait_event_type = 'Lock' OR wait_event = 'advisory'")).rows[0].count === "0",
    "the killed relay's transaction to end",
  );
  assert.equal(await pending(), 50, "the killed relay's transaction was rolled back: its rows are still queued");
  const second = await relay();
  try {
    await eventually(async () => (await pending()) === 0, "the second relay to take the rows");
    assert.equal(await second.metric("roomcast_relay_duplicates_total"), 50, "republished, deduplicated");
    await publishAll("project", "p1", "step", [{ n: 50 }]);
    await eventually(() => seen.length >= 51, "the next row");
    assertOnceInOrder(seen, "tenant:t1:project:p1", 51, "after the crash");
  } finally {
    socket.close();
    await stopRelay(second);
  }
});

test("SIGTERM lets the batch in flight finish: it is marked, and nothing is published again", async () => {
  const { socket, seen } = await member("lee", [{ project: "p2" }], ["term"]);
  const gate = await deleteGate();
  let r;
  try {
    await publishAll("project", "p2", "term", [...Array(10).keys()].map((n) => ({ n })));
    r = await relay();
    await eventually(() => seen.length >= 10, "the batch published");
    await gate.waited();
    r.kill("SIGTERM");
    await gate.open();
    await r.exited();
    relays.delete(r);
    assert.equal(r.child.exitCode, 0, "a clean exit");
    assert.equal(await pending(), 0, "the batch in flight was committed before the exit");
  } finally {
    if (r) r.kill("SIGKILL");
    await gate.remove();
    socket.close();
  }
  assertOnceInOrder(seen, "tenant:t1:project:p2", 10, "after SIGTERM");
});

test("relays SIGKILLed at random points while rows keep coming: no loss, no duplicates, order kept", async () => {
  const rooms = ["k1", "k2", "k3"];
  const { socket, seen } = await member("eve", rooms.map((channel) => ({ channel })), ["tick"]);
  try {
    let stopWriting = false;
    const counters = Object.fromEntries(rooms.map((r) => [r, 0]));
    const writer = (async () => {
      while (!stopWriting) {
        const room = rooms[Math.floor(Math.random() * rooms.length)];
        const n = counters[room];
        counters[room] += 5;
        await publishAll("channel", room, "tick", [0, 1, 2, 3, 4].map((i) => ({ n: n + i })));
      }
    })();
    for (let i = 0; i < 6; i++) {
      const r = await relay({ ROOMCAST_RELAY_BATCH_SIZE: "7" });
      await new Promise((res) => setTimeout(res, 50 + Math.random() * 250));
      r.kill("SIGKILL");
      await r.exited();
      relays.delete(r);
    }
    stopWriting = true;
    await writer;
    const last = await relay();
    try {
      await eventually(async () => (await pending()) === 0, "every row published", 30_000);
      const total = Object.values(counters).reduce((a, b) => a + b, 0);
      await eventually(() => seen.length >= total, `${total} events`);
      for (const room of rooms) assertOnceInOrder(seen, `tenant:t1:channel:${room}`, counters[room], room);
    } finally {
      await stopRelay(last);
    }
  } finally {
    socket.close();
  }
});

test("two relays at once: each row once, rooms in order", async () => {
  const rooms = ["r1", "r2", "r3", "r4"];
  const { socket, seen } = await member("fay", rooms.map((channel) => ({ channel })), ["tick"]);
  const pair = [await relay({ ROOMCAST_RELAY_BATCH_SIZE: "10" }), await relay({ ROOMCAST_RELAY_BATCH_SIZE: "10" })];
  try {
    // One writer per room, four at once: a room's rows commit in id order.
    const counters = Object.fromEntries(rooms.map((r) => [r, 0]));
    const writers = rooms.map(async (room) => {
      for (let i = 0; i < 25; i++) {
        const n = counters[room];
        counters[room] += 4;
        await publishAll("channel", room, "tick", [0, 1, 2, 3].map((k) => ({ n: n + k })));
      }
    });
    await Promise.all(writers);
    await eventually(() => seen.length >= 400, "400 events");
    await eventually(async () => (await pending()) === 0, "the outbox drained");
    for (const room of rooms) assertOnceInOrder(seen, `tenant:t1:channel:${room}`, counters[room], room);
    const published = (await pair[0].metric("roomcast_relay_published_total")) + (await pair[1].metric("roomcast_relay_published_total"));
    const dups = (await pair[0].metric("roomcast_relay_duplicates_total")) + (await pair[1].metric("roomcast_relay_duplicates_total"));
    assert.equal(published, 400, `each row published by one relay (duplicates ${dups}) ${await (await fetch(pair[0].adminUrl + "/metrics")).text()}`);
  } finally {
    socket.close();
    for (const r of pair) await stopRelay(r);
  }
});

test("Redis stalled past the publish timeout: the retried batch is delivered once", async () => {
  const r = await relay({ ROOMCAST_REDIS_COMMAND_TIMEOUT: "300ms" });
  const { socket, seen } = await member("gus", [{ project: "p2" }], ["stall"]);
  try {
    await publishAll("project", "p2", "stall", [{ n: 0 }]);
    await eventually(() => seen.length >= 1, "the first row");
    // Writes (the publish script) wait 1.5 s; reads (the script's SCRIPT LOAD check, PING) do
    // not. The relay's publish times out with its outcome unknown, is retried with backoff, and
    // the publishes Redis then applies late are the ones the retry finds as duplicates.
    redis.cli("CLIENT", "PAUSE", "1500", "WRITE");
    await publishAll("project", "p2", "stall", [...Array(20).keys()].map((n) => ({ n: n + 1 })));
    await eventually(async () => !(await r.ready()), "readiness to see Redis down");
    await eventually(() => seen.length >= 21, "21 events");
    await eventually(async () => (await pending()) === 0, "the outbox drained");
    await publishAll("project", "p2", "stall", [{ n: 21 }]);
    await eventually(() => seen.length >= 22, "the next row");
    assertOnceInOrder(seen, "tenant:t1:project:p2", 22, "after the stall");
    assert.ok((await r.metric("roomcast_relay_duplicates_total")) >= 1, "the timed-out publish was applied late and deduplicated");
    assert.ok((await r.metric('roomcast_relay_errors_total{stage="redis"}')) >= 1);
    await eventually(() => r.ready(), "ready again");
  } finally {
    socket.close();
    await stopRelay(r);
  }
});

test("Postgres restarted: the relay reconnects and goes on", async () => {
  const r = await relay();
  const { socket, seen } = await member("hal", [{ project: "p1" }], ["restart"]);
  try {
    await publishAll("project", "p1", "restart", [{ n: 0 }]);
    await eventually(() => seen.length >= 1, "the first row");
    await postgres.stop();
    await eventually(async () => !(await r.ready()), "readiness to see Postgres down");
    await postgres.start();
    await publishAll("project", "p1", "restart", [{ n: 1 }, { n: 2 }]);
    await eventually(() => seen.length >= 3, "rows after the restart", WAIT_MS * 2);
    assertOnceInOrder(seen, "tenant:t1:project:p1", 3, "across the restart");
    await eventually(() => r.ready(), "ready again");
    assert.ok((await r.metric('roomcast_relay_errors_total{stage="postgres"}')) >= 1);
  } finally {
    socket.close();
    await stopRelay(r);
  }
});
