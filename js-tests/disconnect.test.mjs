// socket.disconnect() in the middle of an operation, on both transports and across two
// replicas: the socket's rooms, its Redis subscriptions and its presence all go away.
// ROOMCAST_DEBUG_OPERATION_DELAY pauses every operation once under way, so the disconnect
// lands inside it every time (a test hook; never set in production).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { connect, emitPolitely, eventually, startGateway, startRedis, userToken } from "./helpers.mjs";

const ENV = { ROOMCAST_DEBUG_OPERATION_DELAY: "400ms", ROOMCAST_PRESENCE_GRACE: "50ms" };

let redis;
let gateways = [];
before(async () => {
  redis = await startRedis();
  for (let i = 0; i < 2; i++) gateways.push(await startGateway({ ROOMCAST_REDIS_URL: redis.url, ...ENV }));
});
after(async () => {
  for (const g of gateways) await g.stop();
  redis.stop();
});

async function metric(gateway, name) {
  const text = await (await fetch(`${gateway.adminUrl}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(" ")[1]) : 0;
}

const OPS = {
  join: () => ["join", { project: "p2" }],
  leave: () => ["leave", { project: "p1" }],
  refresh: (tenant) => ["auth:refresh", { token: userToken(tenant, "u") }],
  presence: () => ["presence:update", { status: "away" }],
};

async function cycle(url, transport, tenant, op) {
  const socket = await connect(url, { transports: [transport], auth: { token: userToken(tenant, "u") } });
  if (op !== "join") assert.equal((await socket.emitWithAck("join", { project: "p1" })).ok, true);
  const [event, data] = OPS[op](tenant);
  socket.emit(event, data, () => {}); // the ack never comes: the socket is gone
  socket.disconnect();
}

for (const transport of ["polling", "websocket"]) {
  test(`disconnecting mid-operation over ${transport} leaves no room, subscription or presence`, async () => {
    const prefix = `js${transport}`;
    const tenants = [];
    const cycles = [];
    for (const op of Object.keys(OPS)) {
      for (let i = 0; i < 4; i++) {
        const tenant = `${prefix}${tenants.length}`;
        tenants.push(tenant);
        cycles.push(cycle(gateways[0].url, transport, tenant, op));
      }
    }
    await Promise.all(cycles);
    await eventually(
      async () => (await metric(gateways[0], "roomcast_connections")) === 0 && (await metric(gateways[0], "roomcast_local_rooms")) === 0,
      "no connection and no local room left",
    );
    await eventually(() => redis.cli("PUBSUB", "CHANNELS", `*${prefix}*`) === "", "no subscription left in Redis");
    // Presence as the other replica reads it from Redis.
    await Promise.all(
      tenants.map(async (tenant) => {
        const observer = await connect(gateways[1].url, { auth: { token: userToken(tenant, "observer") } });
        try {
          for (const room of [{ project: "p1" }, { project: "p2" }]) {
            await eventually(async () => {
              const ack = await emitPolitely(observer, "presence:list", room);
              assert.equal(ack.ok, true);
              return ack.users.length === 0;
            }, `${tenant} ${JSON.stringify(room)} empty`);
          }
        } finally {
          observer.close();
        }
      }),
    );
  });
}
