// Publishes benchmark events through @socket.io/redis-emitter, as a backend service using the
// Node stack would. Reads "room seq" lines on stdin (from the load generator) and emits
// `bench` {s: seq, t: publish time in µs on CLOCK_MONOTONIC} with meta {room} to that room.
//
//   REDIS_URL=redis://127.0.0.1:6379 node publisher.js
"use strict";
const readline = require("node:readline");
const { Emitter } = require("@socket.io/redis-emitter");
const { createClient } = require("redis");

// CLOCK_MONOTONIC microseconds (libuv's hrtime), the clock the generator reads: the wall clock
// can step while this process runs, and `performance.timeOrigin` would not follow.
const nowUs = () => Number(process.hrtime.bigint() / 1000n);

async function main() {
  const client = createClient({ url: process.env.REDIS_URL });
  await client.connect();
  const emitter = new Emitter(client);
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    const space = line.indexOf(" ");
    if (space < 0) continue;
    const room = line.slice(0, space);
    const seq = Number(line.slice(space + 1));
    emitter.to(room).emit("bench", { s: seq, t: nowUs() }, { room });
  }
  await client.quit();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
