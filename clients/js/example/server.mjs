// Serves the example app (example/app.tsx, bundled with esbuild on start) and the token
// endpoint a real backend would have: `GET /token?user=ada` answers a token for that user,
// signed with the gateway's HMAC secret.
//
//   ROOMCAST_JWT_SECRET=… node example/server.mjs   # then open http://127.0.0.1:8090/?user=ada
//
// The app connects to `?gateway=` (default: this origin). A gateway with ROOMCAST_CORS_ORIGINS
// set must list this server's origin.
import { createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { build } from "esbuild";

const here = path.dirname(fileURLToPath(import.meta.url));

/** Bundles the app (React, socket.io-client and the client included) into one ES module. */
export async function bundle() {
  const result = await build({
    entryPoints: [path.join(here, "app.tsx")],
    bundle: true,
    format: "esm",
    jsx: "automatic",
    minify: true,
    write: false,
    define: { "process.env.NODE_ENV": '"production"' },
    logLevel: "silent",
  });
  return result.outputFiles[0].text;
}

const b64url = (data) => Buffer.from(data).toString("base64url");

/** An HS256 token for `user` in `tenant`, granting every channel (and publishing to it). */
function token(secret, tenant, user) {
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const claims = { sub: user, tenant, channels: ["*"], publish: ["*"], exp: Math.floor(Date.now() / 1000) + 3600 };
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/** Starts the example's server on `port` (0: any); resolves with its URL and `close()`. */
export async function startExample({ secret, tenant = "demo", port = 0 }) {
  const app = await bundle();
  const index = readFileSync(path.join(here, "index.html"));
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://localhost");
    if (url.pathname === "/") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(index);
    } else if (url.pathname === "/app.js") {
      res.writeHead(200, { "content-type": "text/javascript; charset=utf-8" }).end(app);
    } else if (url.pathname === "/token") {
      const user = url.searchParams.get("user") ?? "";
      if (!/^[A-Za-z0-9_.@|+=-]{1,128}$/.test(user)) {
        res.writeHead(400).end("user: 1-128 of A-Z a-z 0-9 _ - . @ | + =");
        return;
      }
      res.writeHead(200, { "content-type": "text/plain" }).end(token(secret, tenant, user));
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((resolve) => server.listen(port, "127.0.0.1", resolve));
  return { url: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((r) => server.close(r)) };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const secret = process.env.ROOMCAST_JWT_SECRET;
  if (!secret) {
    console.error("set ROOMCAST_JWT_SECRET to the gateway's secret");
    process.exit(2);
  }
  const example = await startExample({ secret, tenant: process.env.TENANT ?? "demo", port: Number(process.env.PORT ?? 8090) });
  console.log(`example app: ${example.url}/?user=ada (and ?user=bob in another window)`);
}
