// Publishes benchmark events through @socket.io/redis-emitter, as a backend service using the
// Node stack would. Reads "room seq" lines on stdin (from the load generator) and emits
// `bench` {s: seq, t: publish time in µs} with meta {room} to that room.
//
//   REDIS_URL=redis://127.0.0.1:6379 node publisher.js
"use strict";
const readline = require("node:readline");
const { performance } = require("node:perf_hooks");
const { Emitter } = require("@socket.io/redis-emitter");
const { createClient } = require("redis");

// Wall-clock microseconds, comparable with the generator's SystemTime.
const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000);

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
