// The outbox relay over TLS to Postgres: sslmode=require with the server's CA given, refused
// without it (the certificate is always verified), plain with sslmode=disable. A real
// Postgres with a certificate made for the test by openssl.
import { test as nodeTest, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
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
} from "./helpers.mjs";

const openssl = spawnSync("openssl", ["version"]).status === 0;
const skip = postgresMissing() ?? (openssl ? false : "openssl is not installed (scripts/test installs it as root)");
const test = (name, fn) => nodeTest(name, { skip }, fn);

let dir;
let postgres;
let redis;
let gateway;
let db;
let socket;
const seen = [];

/** A CA and a server certificate for 127.0.0.1 signed by it, as PEM files in `dir`. */
function certificates() {
  const ssl = (...args) => execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
  ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=roomcast test CA", "-keyout", "ca.key", "-out", "ca.pem");
  ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr");
  ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
    "-extfile", writeExt(), "-out", "server.crt");
  return { cert: readFileSync(path.join(dir, "server.crt"), "utf8"), key: readFileSync(path.join(dir, "server.key"), "utf8") };
}

function writeExt() {
  const ext = path.join(dir, "san.ext");
  execFileSync("sh", ["-c", `printf 'subjectAltName=IP:127.0.0.1\\n' > '${ext}'`]);
  return ext;
}

before(async () => {
  if (skip) return;
  dir = mkdtempSync(path.join(tmpdir(), "roomcast-tls-"));
  [postgres, redis] = await Promise.all([startPostgres({ tls: certificates() }), startRedis()]);
  gateway = await startGateway({ ROOMCAST_REDIS_URL: redis.url });
  db = new pg.Pool({ connectionString: postgres.url, max: 4 });
  await db.query(readFileSync(OUTBOX_MIGRATION, "utf8"));
  socket = await connect(gateway.url, { auth: { token: userToken("t1", "ada") } });
  socket.on("tls.checked", (data) => seen.push(data));
  assert.equal((await socket.emitWithAck("join", { project: "p1" })).ok, true);
});

after(async () => {
  socket?.close();
  await db?.end();
  await gateway?.stop();
  redis?.stop();
  await postgres?.destroy();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/**
 * Whether the connections of the relay started at `since` (application_name roomcast-relay,
 * opened after it started) use TLS, once it has some.
 */
async function relayUsesTls(since) {
  const { rows } = await db.query(
    `SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
     WHERE a.application_name = 'roomcast-relay' AND a.backend_start >= $1`,
    [since],
  );
  return rows.length ? rows.every((r) => r.ssl) : null;
}

async function withRelay(url, env, check) {
  const since = (await db.query("SELECT now() AS t")).rows[0].t;
  const relay = await startRelay({ ROOMCAST_RELAY_DATABASE_URL: url, ROOMCAST_REDIS_URL: redis.url, ...env });
  try {
    await check(relay, () => relayUsesTls(since));
  } finally {
    await relay.stop();
  }
}

test("sslmode=require with the server's CA: published over TLS", async () => {
  await withRelay(`${postgres.url}?sslmode=require`, { ROOMCAST_RELAY_DATABASE_CA_FILE: path.join(dir, "ca.pem") }, async (relay, usesTls) => {
    await eventually(() => relay.ready(), "the relay ready over TLS");
    assert.equal(await eventually(usesTls, "the relay's sessions"), true);
    await db.query("SELECT roomcast_publish('t1', 'project', 'p1', 'tls.checked', '{\"n\": 1}')");
    await eventually(() => seen.some((d) => d.n === 1), "the event");
  });
});

test("without the CA the certificate is refused, and nothing is read from the outbox", async () => {
  await withRelay(`${postgres.url}?sslmode=require`, {}, async (relay, usesTls) => {
    await eventually(() => relay.logs.some((l) => /certificate|UnknownIssuer/i.test(l)), "a certificate error logged");
    assert.equal(await relay.ready(), false);
    assert.equal(await usesTls(), null, "no session opened");
  });
});

test("sslmode=prefer (the default) against a server offering TLS: verified too, so refused without the CA", async () => {
  await withRelay(postgres.url, {}, async (relay, usesTls) => {
    await eventually(() => relay.logs.some((l) => /certificate|UnknownIssuer/i.test(l)), "a certificate error logged");
    assert.equal(await usesTls(), null, "no plain fallback");
  });
});

test("a certificate for another host is refused even with the CA", async () => {
  // localhost resolves to 127.0.0.1, but the certificate names only the IP address.
  const url = postgres.url.replace("127.0.0.1", "localhost");
  await withRelay(`${url}?sslmode=require`, { ROOMCAST_RELAY_DATABASE_CA_FILE: path.join(dir, "ca.pem") }, async (relay, usesTls) => {
    await eventually(() => relay.logs.some((l) => /certificate|NotValidForName/i.test(l)), "a name mismatch logged");
    assert.equal(await usesTls(), null);
  });
});

test("sslmode=disable: a plain connection", async () => {
  await withRelay(`${postgres.url}?sslmode=disable`, {}, async (relay, usesTls) => {
    await eventually(() => relay.ready(), "the relay ready");
    assert.equal(await eventually(async () => (await usesTls()) === false || null, "a plain session"), true);
    await db.query("SELECT roomcast_publish('t1', 'project', 'p1', 'tls.checked', '{\"n\": 2}')");
    await eventually(() => seen.some((d) => d.n === 2), "the event");
  });
});
