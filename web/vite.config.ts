/// <reference types="vitest/config" />
// The UI is served by SIRA's own app under /ui (sira/http/ui.py), from the package's data: the build writes
// there so that a wheel, and `serve deploy` on a cluster, carry it without Node.
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

export default defineConfig({
  base: "/ui/",
  plugins: [react()],
  build: {
    outDir: "../sira/http/ui",
    emptyOutDir: true,
    assetsDir: "assets",
    sourcemap: false,
    chunkSizeWarningLimit: 1500,
  },
  server: {
    // `npm run dev`: the API on a local `sira serve`
    proxy: { "/v1": "http://127.0.0.1:8000" },
  },
  test: {
    environment: "jsdom",
    globals: true,
    setupFiles: ["./src/test/setup.ts"],
    css: false,
    // One module graph for every test file: Mantine, Recharts and jsdom load once (20 s -> 5 s on 2 cores);
    // Testing Library unmounts after each test (setup.ts), so files do not see one another's DOM.
    isolate: false,
    unstubGlobals: true, // a stubbed fetch never reaches the next file
  },
});
