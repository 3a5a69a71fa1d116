// Bundles the console (console/app.tsx with React, socket.io-client and the client library)
// into the one script the gateway embeds: gateway/console/console.js. `scripts/test` builds it
// again and fails if the committed file differs (cargo cannot run npm, so the bundle is
// committed).
//
//   node console/build.mjs            # writes gateway/console/console.js
//   node console/build.mjs --check    # exits 1 if it is not what the sources build
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { build } from "esbuild";

const here = path.dirname(fileURLToPath(import.meta.url));
const out = path.join(here, "..", "..", "..", "gateway", "console", "console.js");

const result = await build({
  entryPoints: [path.join(here, "app.tsx")],
  bundle: true,
  format: "esm",
  jsx: "automatic",
  minify: true,
  target: "es2020",
  legalComments: "none",
  write: false,
  define: { "process.env.NODE_ENV": '"production"' },
  logLevel: "warning",
});
const bundle = result.outputFiles[0].text;

if (process.argv.includes("--check")) {
  let committed = "";
  try {
    committed = readFileSync(out, "utf8");
  } catch {
    // missing: differs
  }
  if (committed !== bundle) {
    console.error(`${path.relative(process.cwd(), out)} is not what clients/js/console builds: run \`npm run build:console\` in clients/js and commit it`);
    process.exit(1);
  }
  console.log(`gateway/console/console.js is up to date (${bundle.length} bytes)`);
} else {
  writeFileSync(out, bundle);
  console.log(`wrote gateway/console/console.js (${bundle.length} bytes)`);
}
