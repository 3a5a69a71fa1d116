// Shared helpers: start the real gateway binary, mint tokens, wait for events with deadlines.
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { createServer, connect as tcpConnect } from "node:net";
import { createHmac } from "node:crypto";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { io } from "socket.io-client";
import { createServer as createHttpServer } from "node:http";
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import pg from "pg";

const here = path.dirname(fileURLToPath(import.meta.url));
export const GATEWAY_BIN =
  process.env.ROOMCAST_GATEWAY_BIN ?? path.join(here, "..", "target", "debug", "roomcast-gateway");
export const PUBLISH_EXAMPLE =
  process.env.ROOMCAST_PUBLISH_EXAMPLE ?? path.join(here, "..", "target", "debug", "examples", "publish");
export const SECRET = "js-test-secret-0123456789abcdef-0123456789";
export const API_KEY = "js-test-api-key-0123456789";
export const WAIT_MS = 10_000;

const b64url = (data) => Buffer.from(data).toString("base64url");

/** An HS256 JWT signed with SECRET. */
export function sign(claims, secret = SECRET) {
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

export const now = () => Math.floor(Date.now() / 1000);

/** A token for `user` in `tenant` with projects p1, p2 and channels c1, c2. */
export function userToken(tenant, user, extra = {}) {
  return sign({ sub: user, tenant, projects: ["p1", "p2"], channels: ["c1", "c2"], exp: now() + 3600, ...extra });
}

/**
 * Starts the gateway binary on ephemeral ports and resolves once it logged its addresses.
 * `env` adds ROOMCAST_* settings. The returned object's `stop()` sends SIGTERM and waits.
 */
export async function startGateway(env = {}) {
  const child = spawn(GATEWAY_BIN, [], {
    env: {
      PATH: process.env.PATH,
      ROOMCAST_JWT_SECRET: SECRET,
      ROOMCAST_API_KEY: API_KEY,
      ROOMCAST_LISTEN: "127.0.0.1:0",
      ROOMCAST_ADMIN_LISTEN: "127.0.0.1:0",
      ROOMCAST_API_LISTEN: "127.0.0.1:0",
      ROOMCAST_LOG_FORMAT: "json",
      ROOMCAST_DRAIN_DELAY: "100ms",
      ROOMCAST_SHUTDOWN_TIMEOUT: "3s",
      ...env,
    },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const logs = [];
  const entry = await withTimeout(logged(child, logs, "listening", "gateway"), WAIT_MS, "gateway to listen");
  if (env.ROOMCAST_REDIS_URL) {
    // Readiness does not follow Redis (a replica runs degraded without it); /readyz says how
    // Redis is: wait until it is connected and subscribed.
    const readyz = `http://${entry.admin}/readyz`;
    const redisOk = async () => {
      const res = await fetch(readyz).catch(() => null);
      return res?.status === 200 && (await res.json()).redis === "ok";
    };
    await eventually(redisOk, "gateway to be connected to Redis");
  }
  const gateway = {
    url: `http://${entry.public}`,
    apiUrl: `http://${entry.api}`,
    adminUrl: `http://${entry.admin}`,
    logs,
    child,
    async stop() {
      running.delete(this);
      if (child.exitCode !== null) return;
      child.kill("SIGTERM");
      await withTimeout(once(child, "exit"), WAIT_MS, "gateway to exit");
    },
  };
  running.add(gateway);
  return gateway;
}

/**
 * Collects `child`'s stdout lines into `logs`; resolves with the first JSON log entry whose
 * message is `message`, rejects if the process exits first.
 */
function logged(child, logs, message, what) {
  return new Promise((resolve, reject) => {
    let buffered = "";
    child.stdout.on("data", (chunk) => {
      buffered += chunk;
      let nl;
      while ((nl = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        logs.push(line);
        try {
          const entry = JSON.parse(line);
          if (entry.message === message) resolve(entry);
        } catch {
          // not a log line (e.g. the gateway's --dev banner)
        }
      }
    });
    child.on("exit", (code) => reject(new Error(`${what} exited with ${code} before listening`)));
  });
}

/** Gateways started and not yet stopped: what a transport failure reports on. */
const running = new Set();

export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Resolves with the first emission of `event` (its arguments as an array). */
export function next(socket, event, ms = WAIT_MS) {
  return withTimeout(new Promise((resolve) => socket.once(event, (...args) => resolve(args))), ms, event);
}

/**
 * Connects and resolves once connected; rejects with the connect_error. `setup` runs before the
 * connection starts, as an app attaches its listeners right after io().
 */
export async function connect(url, options = {}, setup = () => {}) {
  const socket = io(url, { reconnection: false, forceNew: true, ...options });
  setup(socket);
  try {
    await withTimeout(
      new Promise((resolve, reject) => {
        socket.once("connect", resolve);
        socket.once("connect_error", reject);
      }),
      WAIT_MS,
      "connect",
    );
  } catch (err) {
    socket.close();
    // A transport failure (not a refusal by the gateway) carries what the transport saw: the
    // HTTP status of a failed poll and why, the WebSocket error. Show it, or the failure is opaque.
    if (err.type === "TransportError") err.message = `${err.message} (${transportSaw(err)}; ${gatewayReport()})`;
    throw err;
  }
  return socket;
}

/** Whether each running gateway is alive, and its latest warnings and errors. */
function gatewayReport() {
  const lines = [...running].map((gw) => {
    const alive = gw.child.exitCode === null ? "running" : `exited with ${gw.child.exitCode}`;
    const worrying = gw.logs.filter((l) => /"level":"(WARN|ERROR)"/.test(l)).slice(-3);
    return `${gw.url} ${alive}${worrying.length ? ": " + worrying.join(" | ") : ""}`;
  });
  return `gateways: ${lines.join("; ") || "none"}`;
}

/** A polling failure: the HTTP status, and the status text or the network error (the XHR's
 * response text is gone by now: engine.io-client aborts the request after reporting it). */
function transportSaw({ description, context }) {
  if (context && "status" in context) {
    const why = context.statusText?.message ?? context.statusText;
    return `HTTP status ${context.status}${why ? `: ${why}` : ""}`;
  }
  return description instanceof Error ? description.message : String(description?.message ?? description);
}

/** The connect_error message (the error code) a connection attempt gets. */
export async function rejection(url, options = {}) {
  try {
    const socket = await connect(url, options);
    socket.close();
  } catch (err) {
    return err.message;
  }
  throw new Error("expected the connection to be refused");
}

/**
 * An HTTP backend on a free loopback port (a test's RPC or proxy endpoint; `close()` it):
 * `handle(body, req, res)` gets each request with its whole body, a Buffer.
 */
export async function startBackend(handle) {
  const server = createHttpServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => handle(Buffer.concat(chunks), req, res));
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return server;
}

/** Answers `res` with `status` and `body` as JSON. */
export function answerJson(res, status, body) {
  res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body));
}

/** A free TCP port on loopback. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * `socket.emitWithAck(event, data)`, waiting as told and trying again while the answer is
 * `rate_limited`, as a well-behaved client does (for checks that poll).
 */
export async function emitPolitely(socket, event, data) {
  for (;;) {
    const ack = await socket.emitWithAck(event, data);
    if (ack?.error?.code !== "rate_limited") return ack;
    await new Promise((r) => setTimeout(r, ack.error.retryAfterMs));
  }
}

/** Polls `check` every 25 ms until it returns a truthy value or `ms` pass. */
export async function eventually(check, what, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/**
 * Starts redis-server on a free port; `stop()` kills it. redis-server cannot bind port 0 and
 * report it, so the port is one that was free a moment ago: if another process took it
 * meanwhile, the server exits (or another server answers) and another port is tried.
 */
export async function startRedis() {
  for (let attempt = 0; attempt < 10; attempt++) {
    const port = await freePort();
    const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
      stdio: "ignore",
    });
    let exited = false;
    child.once("exit", () => (exited = true));
    const cli = (...args) => execFileSync("redis-cli", ["-p", String(port), ...args], { encoding: "utf8" }).trim();
    const ours = await eventually(() => {
      if (exited) return "exited";
      try {
        // This process answering, not another server that took the port.
        return cli("INFO", "server").split(/\r?\n/).includes(`process_id:${child.pid}`) && "ours";
      } catch {
        return false;
      }
    }, "redis-server");
    if (ours !== "ours") continue;
    return {
      url: `redis://127.0.0.1:${port}`,
      cli,
      stop() {
        child.kill("SIGKILL");
      },
      /** Stalls the server (SIGSTOP): connections stay open, nothing is answered. */
      pause() {
        child.kill("SIGSTOP");
      },
      resume() {
        child.kill("SIGCONT");
      },
    };
  }
  throw new Error("redis-server could not bind any of 10 free ports");
}

export const RELAY_BIN = process.env.ROOMCAST_RELAY_BIN ?? path.join(here, "..", "target", "debug", "roomcast-relay");
export const OUTBOX_MIGRATION = path.join(here, "..", "relay", "migrations", "0001_roomcast_outbox.sql");

/** Debian's PostgreSQL server programs (newest major), or the PATH's. */
function postgresBin() {
  if (process.env.ROOMCAST_PG_BIN) return process.env.ROOMCAST_PG_BIN;
  try {
    const majors = readdirSync("/usr/lib/postgresql").filter((v) => /^\d+$/.test(v));
    majors.sort((a, b) => Number(b) - Number(a));
    if (majors.length) return path.join("/usr/lib/postgresql", majors[0], "bin");
  } catch {
    // not Debian's layout
  }
  return "";
}

/** Why PostgreSQL tests cannot run here, or null when initdb is installed. */
export function postgresMissing() {
  const bin = postgresBin();
  const found = bin ? existsSync(path.join(bin, "initdb")) : spawnSync("initdb", ["--version"]).status === 0;
  return found ? null : "PostgreSQL's initdb is not installed (Debian: apt-get install postgresql; scripts/test does it as root)";
}

/**
 * Starts a throwaway PostgreSQL server (initdb, then `postgres` on a free port, fsync off) and
 * resolves once it accepts connections. As root its programs run as the `postgres` user
 * (initdb refuses root). `stop()` shuts it down fast and waits; `start()` starts it again on
 * the same port and data; `destroy()` stops it and removes its files. With `tls` ({ cert, key }:
 * PEM text) it also accepts TLS connections with that certificate (plain ones too).
 */
export async function startPostgres({ tls } = {}) {
  const bin = (name) => (postgresBin() ? path.join(postgresBin(), name) : name);
  const dir = mkdtempSync(path.join(tmpdir(), "roomcast-pg-"));
  // As root, the server's files belong to the postgres user and its programs run as it.
  const owner = process.getuid?.() === 0
    ? {
        uid: Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" })),
        gid: Number(execFileSync("id", ["-g", "postgres"], { encoding: "utf8" })),
      }
    : null;
  let prefix = [];
  if (owner) {
    chownSync(dir, owner.uid, owner.gid);
    prefix = ["setpriv", `--reuid=${owner.uid}`, `--regid=${owner.gid}`, "--clear-groups", "--"];
  }
  const run = (argv) => {
    const [cmd, ...args] = [...prefix, ...argv];
    return spawn(cmd, args, { stdio: ["ignore", "ignore", "pipe"] });
  };
  const data = path.join(dir, "data");
  const init = run([bin("initdb"), "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"]);
  let initErr = "";
  init.stderr.on("data", (c) => (initErr += c));
  const [initCode] = await once(init, "exit");
  if (initCode !== 0) throw new Error(`initdb failed (${initCode}): ${initErr}`);
  const ssl = [];
  if (tls) {
    // The key must belong to the server's user and be private to it.
    for (const [file, text] of [["server.crt", tls.cert], ["server.key", tls.key]]) {
      const target = path.join(data, file);
      writeFileSync(target, text, { mode: 0o600 });
      if (owner) chownSync(target, owner.uid, owner.gid);
    }
    ssl.push("-c", "ssl=on", "-c", "ssl_cert_file=server.crt", "-c", "ssl_key_file=server.key");
  }
  let child;
  let port;
  const server = {
    url: "",
    async start() {
      let log = "";
      child = run([
        bin("postgres"), "-D", data, "-p", String(port), "-k", dir,
        "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
        "-c", "full_page_writes=off", "-c", "max_connections=50", ...ssl,
      ]);
      child.stderr.on("data", (c) => (log += c));
      let exited = false;
      child.once("exit", () => (exited = true));
      const up = await eventually(async () => {
        if (exited) return "exited";
        const c = new pg.Client({ connectionString: server.url });
        try {
          await c.connect();
          await c.end();
          return "up";
        } catch {
          return false;
        }
      }, "postgres to accept connections", 30_000);
      if (up !== "up") throw Object.assign(new Error(`postgres exited: ${log.slice(-2000)}`), { exited: true });
    },
    async stop() {
      if (!child || child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGINT"); // fast shutdown: sessions are ended, transactions rolled back
      await withTimeout(once(child, "exit"), 30_000, "postgres to stop");
    },
    async destroy() {
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  for (let attempt = 0; attempt < 10; attempt++) {
    port = await freePort();
    server.url = `postgres://postgres@127.0.0.1:${port}/postgres`;
    try {
      await server.start();
      return server;
    } catch (e) {
      if (!e.exited) throw e;
      // The port was taken meanwhile: try another.
    }
  }
  throw new Error("postgres could not bind any of 10 free ports");
}

/**
 * Starts roomcast-relay with `env` added to the defaults and resolves once its admin listener
 * is up. `kill(signal)` sends a signal without waiting; `stop()` sends SIGTERM and waits.
 */
export async function startRelay(env = {}) {
  const child = spawn(RELAY_BIN, [], {
    env: {
      PATH: process.env.PATH,
      ROOMCAST_RELAY_ADMIN_LISTEN: "127.0.0.1:0",
      ROOMCAST_LOG_FORMAT: "json",
      ROOMCAST_RELAY_POLL_INTERVAL: "1s",
      ...env,
    },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const logs = [];
  const entry = await withTimeout(logged(child, logs, "roomcast-relay listening", "relay"), WAIT_MS, "relay to listen");
  const adminUrl = `http://${entry.admin}`;
  return {
    adminUrl,
    logs,
    child,
    kill(signal = "SIGKILL") {
      child.kill(signal);
    },
    async exited() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      await withTimeout(once(child, "exit"), WAIT_MS, "relay to exit");
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      await withTimeout(once(child, "exit"), WAIT_MS, "relay to exit");
    },
    /** A metric's value from /metrics (0 when absent). */
    async metric(name) {
      const text = await (await fetch(`${adminUrl}/metrics`)).text();
      const line = text.split("\n").find((l) => l.startsWith(`${name} `));
      return line ? Number(line.split(" ")[1]) : 0;
    },
    async ready() {
      const res = await fetch(`${adminUrl}/readyz`).catch(() => null);
      return res?.status === 200;
    },
  };
}

/** A TCP proxy standing in for the load balancer; `target` can be switched at any time. */
export function tcpProxy(target) {
  const open = new Set();
  const state = { target, down: false };
  const server = createServer((client) => {
    if (state.down) {
      client.destroy();
      return;
    }
    const upstream = tcpConnect(state.target);
    open.add(client);
    client.pipe(upstream).pipe(client);
    const close = () => {
      open.delete(client);
      client.destroy();
      upstream.destroy();
    };
    client.on("error", close).on("close", close);
    upstream.on("error", close).on("close", close);
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () =>
      resolve({
        url: `http://127.0.0.1:${server.address().port}`,
        /** Sends new connections to `next` and drops the current ones, as a replica going away. */
        switchTo(next) {
          state.target = next;
          for (const socket of open) socket.destroy();
        },
        /** The network goes: open connections are cut, new ones refused, until `up()`. */
        down() {
          state.down = true;
          for (const socket of open) socket.destroy();
        },
        up() {
          state.down = false;
        },
        close: () => server.close(),
      }),
    ),
  );
}

/**
 * Publishes events `tick` `{ n }` for n = 0 … total-1 to `target` (`{ tenant, project }`…), 3 ms
 * apart, alternating over the API URLs given (one per replica); resolves when all were accepted.
 */
export async function publishTicks(apiUrls, total, target) {
  for (let n = 0; n < total; n++) {
    const res = await fetch(`${apiUrls[n % apiUrls.length]}/v1/publish`, {
      method: "POST",
      headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
      body: JSON.stringify({ ...target, event: "tick", data: { n } }),
    });
    if (res.status !== 200) throw new Error(`publish ${n}: HTTP ${res.status} ${await res.text()}`);
    await new Promise((r) => setTimeout(r, 3));
  }
}
