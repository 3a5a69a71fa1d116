// The README's recovery snippet, used by a client that a load balancer moves from one replica to
// another while events are published: every event arrives exactly once, in order.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { io } from "socket.io-client";
import { joinWithRecovery } from "./recovery-snippet.mjs";
import { eventually, publishTicks, startGateway, startRedis, tcpProxy as proxy, userToken } from "./helpers.mjs";

let redis;
let gateways = [];

before(async () => {
  redis = await startRedis();
  gateways = [
    await startGateway({ ROOMCAST_REDIS_URL: redis.url }),
    await startGateway({ ROOMCAST_REDIS_URL: redis.url }),
  ];
});
after(async () => {
  for (const g of gateways) await g.stop();
  redis.stop();
});

test("the README shows the snippet this test runs", () => {
  const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
  const snippet = readFileSync(new URL("./recovery-snippet.mjs", import.meta.url), "utf8");
  assert.ok(readme.includes(snippet.trim()), "README.md must contain js-tests/recovery-snippet.mjs verbatim");
});

test("a client moved between replicas receives every event exactly once", async () => {
  const hostPort = (url) => ({ host: "127.0.0.1", port: Number(new URL(url).port) });
  const lb = await proxy(hostPort(gateways[0].url));
  const socket = io(lb.url, {
    auth: { token: userToken("t1", "mover") },
    transports: ["websocket"],
    reconnectionDelay: 50,
    reconnectionDelayMax: 200,
  });
  // Closed whatever happens: a socket left reconnecting would keep node (and the suite) running.
  try {
    const received = [];
    const resyncs = [];
    joinWithRecovery(socket, [{ project: "p1" }], {
      onEvent: (event, data) => event === "tick" && received.push(data.n),
      onResync: (room) => resyncs.push(room),
    });
    await eventually(() => socket.connected, "connected");
    await eventually(
      () => redis.cli("PUBSUB", "NUMSUB", "roomcast:{tenant:t1:project:p1}").split("\n")[1] === "1",
      "joined",
    );

    const total = 300;
    const publishing = publishTicks(
      gateways.map((g) => g.apiUrl),
      total,
      { tenant: "t1", project: "p1" },
    );
    // Moved to the other replica twice while events keep coming.
    for (const [next, after] of [[1, 60], [0, 180]]) {
      await eventually(() => received.length > after, `${after} events before moving`);
      lb.switchTo(hostPort(gateways[next].url));
    }
    await publishing;
    await eventually(() => received.length >= total, `all ${total} events (got ${received.length})`);
    assert.deepEqual(received, [...Array(total).keys()], "every number once, in order");
    assert.deepEqual(resyncs, []);
  } finally {
    socket.close();
    lb.close();
  }
});
