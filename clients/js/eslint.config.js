import js from "@eslint/js";
import tseslint from "typescript-eslint";

/** What Node scripts (the tests, the example's server) use without importing. */
const node = {
  process: "readonly",
  console: "readonly",
  Buffer: "readonly",
  setTimeout: "readonly",
  clearTimeout: "readonly",
  URL: "readonly",
  URLSearchParams: "readonly",
  fetch: "readonly",
};

export default tseslint.config(
  { ignores: ["dist/", "node_modules/", "test-results/"] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ["example/**/*.mjs", "test/**/*.mjs", "console/**/*.mjs"],
    // jsdom's window, document and navigator: installed on globalThis by the React tests.
    languageOptions: { globals: { ...node, window: "readonly", document: "readonly", navigator: "readonly" } },
  },
);
