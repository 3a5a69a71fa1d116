// What `npm pack` would publish: both module formats and the types of both entry points.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";

test("the package tarball holds ESM, CommonJS and types for the client and the React bindings", () => {
  const [pack] = JSON.parse(execFileSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], { encoding: "utf8" }));
  const files = new Set(pack.files.map((f) => f.path));
  for (const entry of ["index", "react"]) {
    for (const ext of [".js", ".cjs", ".d.ts", ".d.cts"]) assert.ok(files.has(`dist/${entry}${ext}`), `dist/${entry}${ext} missing`);
  }
  assert.ok(files.has("package.json") && files.has("README.md"));
  assert.ok(![...files].some((f) => f.startsWith("src/") || f.startsWith("test/")), "sources or tests in the tarball");
});

test("CommonJS consumers get the same API", () => {
  const require = createRequire(import.meta.url);
  const cjs = require("../dist/index.cjs");
  assert.equal(typeof cjs.connect, "function");
  assert.equal(typeof cjs.RoomcastError, "function");
  const react = require("../dist/react.cjs");
  assert.equal(typeof react.useRoom, "function");
});
