// @roomcast/client on a 2-replica cluster with Redis, behind a TCP "load balancer" that moves the
// client to the other replica while events are published: every event arrives once, in order.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";

import { eventually, publishTicks, startGateway, startRedis, tcpProxy, userToken } from "../../../js-tests/helpers.mjs";
import { connect } from "../dist/index.js";
import { eventuallyPolitely } from "./util.mjs";

let redis;
let gateways = [];

before(async () => {
  redis = await startRedis();
  gateways = [await startGateway({ ROOMCAST_REDIS_URL: redis.url }), await startGateway({ ROOMCAST_REDIS_URL: redis.url })];
});
after(async () => {
  for (const g of gateways) await g.stop();
  redis.stop();
});

const hostPort = (url) => ({ host: "127.0.0.1", port: Number(new URL(url).port) });

test("a client moved between replicas loses nothing and gets nothing twice", async () => {
  const lb = await tcpProxy(hostPort(gateways[0].url));
  const states = [];
  const client = connect(lb.url, {
    getToken: () => userToken("t1", "mover"),
    io: { reconnectionDelay: 50, reconnectionDelayMax: 200 },
  });
  client.onStateChange((s) => states.push(s));
  try {
    const room = client.join({ project: "p1" });
    const presence = client.join({ channel: "c1" });
    await Promise.all([room.ready, presence.ready]);
    const got = [];
    const resyncs = [];
    room.on("tick", (data) => got.push(data.n));
    room.onResync((r) => resyncs.push(r));

    const total = 300;
    const publishing = publishTicks(
      gateways.map((g) => g.apiUrl),
      total,
      { tenant: "t1", project: "p1" },
    );
    await eventually(() => got.length >= 50, "events before the move");
    lb.switchTo(hostPort(gateways[1].url));
    await eventually(() => states.includes("reconnecting"), "the client to notice the move");
    await publishing;
    await eventually(() => got.length >= total, "every event", 20_000);
    assert.deepEqual(
      got,
      Array.from({ length: total }, (_, n) => n),
    );
    assert.deepEqual(resyncs, []);
    assert.equal(client.state, "connected");
    // Both rooms were rejoined on the other replica, and the dropped connection is gone.
    await eventuallyPolitely(async () => (await presence.occupancy()).connections === 1, "one connection in c1");
  } finally {
    client.close();
    lb.close();
  }
});
