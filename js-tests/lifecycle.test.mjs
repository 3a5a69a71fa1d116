// Lifecycle events (issue 16) as a backend receives them while apps use socket.io-client, on
// two replicas sharing Redis: signed webhook batches, each transition once, nothing for a
// reconnect to the other replica within the grace period. The signature is checked with the
// README's own verification snippet.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { connect, emitPolitely, eventually, rejection, startGateway, startRedis, userToken } from "./helpers.mjs";

const HOOK_SECRET = "js-webhook-secret-0123456789abcdef-0123";

// The README's verifier, as a user would paste it.
const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
const block = readme.split("```js\nimport { createHmac, timingSafeEqual }")[1].split("```")[0];
const snippet = block.slice(block.indexOf("\n") + 1); // without the rest of its import line
const verifyRoomcast = new Function("createHmac", "timingSafeEqual", "Buffer", `${snippet}\nreturn verifyRoomcast;`)(
  createHmac,
  timingSafeEqual,
  Buffer,
);

let redis;
let gateways = [];
let receiver;
const received = []; // events of requests answered 200
const badSignatures = [];
const open = [];

before(async () => {
  receiver = createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      if (!verifyRoomcast(HOOK_SECRET, req.headers["roomcast-signature"] ?? "", body)) {
        badSignatures.push(req.headers["roomcast-signature"]);
        res.writeHead(401).end();
        return;
      }
      received.push(...JSON.parse(body.toString()).events);
      res.writeHead(200).end();
    });
  });
  await new Promise((resolve) => receiver.listen(0, "127.0.0.1", resolve));
  redis = await startRedis();
  const env = {
    ROOMCAST_REDIS_URL: redis.url,
    ROOMCAST_PRESENCE_GRACE: "500ms",
    ROOMCAST_EVENTS_STREAM: "true",
    ROOMCAST_WEBHOOK_URL: `http://127.0.0.1:${receiver.address().port}/hook`,
    ROOMCAST_WEBHOOK_SECRET: HOOK_SECRET,
    ROOMCAST_WEBHOOK_BATCH_WAIT: "20ms",
  };
  gateways = [await startGateway(env), await startGateway(env)];
});

after(async () => {
  for (const c of open) c.close();
  for (const g of gateways) await g.stop();
  redis.stop();
  receiver.close();
});

async function connected(gateway, token) {
  const socket = await connect(gateway.url, { auth: { token } });
  open.push(socket);
  return socket;
}

const about = (user) => received.filter((e) => e.user === user || (!e.user && e.project === "p1"));
const kinds = (events) => events.map((e) => e.type).sort();
const stream = () => redis.cli("XRANGE", "roomcast:{events}", "-", "+").split("\n").filter((l) => l.startsWith("{"));

test("a user's comings and goings reach the webhook once each, signed", async () => {
  const tab = await connected(gateways[0], userToken("t1", "ada"));
  assert.equal((await emitPolitely(tab, "join", { project: "p1" })).ok, true);
  await eventually(() => about("ada").length === 3, "ada online and in p1");
  assert.deepEqual(kinds(about("ada")), ["member.joined", "room.occupied", "user.online"]);
  const joined = about("ada").find((e) => e.type === "member.joined");
  assert.deepEqual([joined.tenant, joined.user, joined.project], ["t1", "ada", "p1"]);

  // The page reloads onto the other replica within the grace period: no transition.
  tab.close();
  const back = await connected(gateways[1], userToken("t1", "ada"));
  assert.equal((await emitPolitely(back, "join", { project: "p1" })).ok, true);
  await eventually(
    () => redis.cli("HGET", "roomcast:{tenant:t1:user:ada}:presence", "ada") === "1",
    "the first tab's grace to end",
  );
  assert.equal(about("ada").length, 3, JSON.stringify(received));

  // She leaves for good: after the grace period, each leaving event once.
  back.close();
  await eventually(() => about("ada").length === 6, "ada gone");
  assert.deepEqual(kinds(about("ada").slice(3)), ["member.left", "room.vacated", "user.offline"]);
  // Nothing more comes: her presence is gone everywhere, and the stream holds the same six.
  await eventually(
    () => redis.cli("EXISTS", "roomcast:{tenant:t1:user:ada}:presence", "roomcast:{tenant:t1:project:p1}:presence") === "0",
    "her presence gone",
  );
  const recorded = stream().map((l) => JSON.parse(l)).filter((e) => e.user === "ada" || e.project === "p1");
  assert.equal(recorded.length, 6);
  const ids = new Set(about("ada").map((e) => e.id));
  assert.equal(ids.size, 6, "each event once by id");
  assert.deepEqual(new Set(recorded.map((e) => e.id)), ids);
  assert.deepEqual(badSignatures, []);
});

test("refused refreshes and connections are reported with their code only", async () => {
  const bob = await connected(gateways[0], userToken("t1", "bob"));
  const ack = await emitPolitely(bob, "auth:refresh", { token: userToken("t1", "someone-else") });
  assert.equal(ack.error.code, "forbidden");
  assert.equal(await rejection(gateways[1].url, { auth: { token: "not-a-token" } }), "token_invalid");
  await eventually(
    () => received.some((e) => e.type === "token.refresh_failed") && received.some((e) => e.type === "connection.refused"),
    "both reported",
  );
  const failed = received.find((e) => e.type === "token.refresh_failed");
  assert.deepEqual([failed.tenant, failed.user, failed.code], ["t1", "bob", "forbidden"]);
  const refused = received.find((e) => e.type === "connection.refused");
  assert.equal(refused.code, "token_invalid");
  assert.equal(refused.user, undefined);
  assert.equal(refused.tenant, undefined);
});

test("the last tab's replica is SIGKILLed: one user.offline, from the survivors' reaper", async () => {
  // A replica of its own with a short lease, so that its death is noticed quickly.
  const doomed = await startGateway({
    ROOMCAST_REDIS_URL: redis.url,
    ROOMCAST_PRESENCE_GRACE: "500ms",
    ROOMCAST_PRESENCE_LEASE_TTL: "2s",
    ROOMCAST_EVENTS_STREAM: "true",
    ROOMCAST_WEBHOOK_URL: `http://127.0.0.1:${receiver.address().port}/hook`,
    ROOMCAST_WEBHOOK_SECRET: HOOK_SECRET,
  });
  const tab = await connect(doomed.url, { auth: { token: userToken("t1", "zoe") }, reconnection: false });
  open.push(tab);
  await eventually(() => received.some((e) => e.type === "user.online" && e.user === "zoe"), "zoe online");
  doomed.child.kill("SIGKILL");
  await eventually(() => received.some((e) => e.type === "user.offline" && e.user === "zoe"), "zoe reaped", 15_000);
  // The reaping is complete once the dead replica's lease is gone; nothing more about her came.
  await eventually(() => redis.cli("ZCARD", "roomcast:replicas") === "2", "the dead replica's lease removed");
  const hers = received.filter((e) => e.user === "zoe");
  assert.deepEqual(kinds(hers), ["user.offline", "user.online"]);
  const inStream = stream().map((l) => JSON.parse(l)).filter((e) => e.user === "zoe");
  assert.equal(inStream.length, 2);
  assert.deepEqual(badSignatures, []);
});
