import { defineConfig } from "tsup";

// One build, two entry points (the client and its React bindings), each as an ES module, a
// CommonJS module and type declarations for both.
export default defineConfig({
  entry: { index: "src/index.ts", react: "src/react.tsx" },
  format: ["esm", "cjs"],
  dts: true,
  sourcemap: true,
  clean: true,
  target: "es2022",
  external: ["react", "socket.io-client"],
});
