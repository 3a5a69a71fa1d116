// The Node reference stack: one socket.io 4 process with @socket.io/redis-adapter, speaking the
// same shapes as Roomcast so the same load generator drives both (auth.token HS256 JWT with
// `sub` and `tenant`; `join` {channel} acked {ok, room}; `typing` {channel, typing} relayed to
// the channel's other members as {channel, userId, typing}).
//
// Configured fairly: WebSocket transport only, no per-message compression, no client bundle
// served, NODE_ENV=production (set by the runner), default ping settings as Roomcast's.
//
//   PORT=4000 REDIS_URL=redis://127.0.0.1:6379 JWT_SECRET=... node server.js
"use strict";
const crypto = require("node:crypto");
const { createServer } = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const port = Number(process.env.PORT || 4000);
const host = process.env.HOST || "127.0.0.1";
const secret = process.env.JWT_SECRET;
if (!secret) {
  console.error("JWT_SECRET is required");
  process.exit(2);
}

function b64url(buf) {
  return buf.toString("base64").replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
}

// HS256 verification with node:crypto (what a production app would do with `jsonwebtoken`).
function verify(token) {
  const parts = typeof token === "string" ? token.split(".") : [];
  if (parts.length !== 3) throw new Error("token_invalid");
  const expected = b64url(crypto.createHmac("sha256", secret).update(`${parts[0]}.${parts[1]}`).digest());
  const given = Buffer.from(parts[2]);
  if (given.length !== expected.length || !crypto.timingSafeEqual(given, Buffer.from(expected))) {
    throw new Error("token_invalid");
  }
  const claims = JSON.parse(Buffer.from(parts[1], "base64url").toString());
  if (typeof claims.exp !== "number" || claims.exp * 1000 < Date.now()) throw new Error("token_expired");
  if (!claims.sub || !claims.tenant) throw new Error("token_invalid");
  return claims;
}

async function main() {
  const pub = createClient({ url: process.env.REDIS_URL });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);

  const httpServer = createServer();
  const io = new Server(httpServer, {
    transports: ["websocket"],
    perMessageDeflate: false,
    httpCompression: false,
    serveClient: false,
    pingInterval: 25000,
    pingTimeout: 20000,
    adapter: createAdapter(pub, sub),
  });

  io.use((socket, next) => {
    try {
      const claims = verify(socket.handshake.auth && socket.handshake.auth.token);
      socket.data.user = String(claims.sub);
      socket.data.tenant = String(claims.tenant);
      next();
    } catch (e) {
      next(new Error(e.message));
    }
  });

  io.on("connection", (socket) => {
    const { tenant, user } = socket.data;
    socket.join([`tenant:${tenant}`, `tenant:${tenant}:user:${user}`]);

    socket.on("join", (payload, ack) => {
      if (typeof ack !== "function") return;
      const channel = payload && payload.channel;
      if (typeof channel !== "string" || channel.length === 0 || channel.length > 128) {
        return ack({ ok: false, error: { code: "invalid_room" } });
      }
      const room = `tenant:${tenant}:channel:${channel}`;
      socket.join(room);
      ack({ ok: true, room });
    });

    socket.on("typing", (payload, ack) => {
      const channel = payload && payload.channel;
      const room = `tenant:${tenant}:channel:${channel}`;
      if (typeof channel !== "string" || !socket.rooms.has(room)) {
        if (typeof ack === "function") ack({ ok: false, error: { code: "forbidden" } });
        return;
      }
      socket.to(room).emit("typing", { channel, userId: user, typing: payload.typing === true });
      if (typeof ack === "function") ack({ ok: true });
    });
  });

  httpServer.listen(port, host, () => console.log(`node peer listening on ${host}:${port} (pid ${process.pid})`));
  const stop = () => io.close(() => process.exit(0));
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
