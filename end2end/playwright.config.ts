import { defineConfig } from "@playwright/test";
import * as os from "node:os";

// Debian's Chromium (installed by the README's setup); Playwright never downloads a browser here.
const PORT = Number(process.env.E2E_PORT ?? 7870);
// A second server whose model is missing: the "unavailable" paths are shown in place.
const NO_MODEL_PORT = Number(process.env.E2E_NO_MODEL_PORT ?? PORT + 1);
// A third server that requires an API token: the page's sign-in.
const TOKEN_PORT = Number(process.env.E2E_TOKEN_PORT ?? PORT + 2);
// Each run keeps its results in a fresh folder (the servers' --data-dir).
const serverEnv = {
  LEPTOS_SITE_ROOT: "target/site",
  HF_HUB_OFFLINE: "1",
  QWEN_LAYERS_DATA_DIR: process.env.E2E_DATA_DIR ?? `${os.tmpdir()}/qwen-layers-e2e-${process.pid}`,
};

export default defineConfig({
  testDir: "./tests",
  timeout: 120_000,
  expect: { timeout: 15_000 },
  fullyParallel: false,
  workers: 1,
  reporter: "list",
  // Screenshots of the main states are written under test-results/ (kept as CI artifacts).
  outputDir: "test-results",
  use: {
    baseURL: `http://127.0.0.1:${PORT}`,
    acceptDownloads: true,
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
      args: [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
      ],
    },
  },
  projects: [{ name: "chromium", use: { browserName: "chromium" } }],
  webServer: [
    {
      // The tiny random-weight checkpoint (end2end/e2e-config.toml): real decompositions in seconds.
      command: `./target/debug/server --port ${PORT} --device cpu --config ${process.env.E2E_CONFIG ?? "end2end/e2e-config.toml"}`,
      cwd: "..",
      url: `http://127.0.0.1:${PORT}/api/qwen-image/config`,
      timeout: 60_000,
      reuseExistingServer: false,
      env: serverEnv,
    },
    {
      // Two CPU workers (as two GPUs would be): the page lists them.
      command: `./target/debug/server --port ${NO_MODEL_PORT} --devices cpu,cpu --qwen-image-model-path end2end/no-such-model --qwen-image-edit-model-path end2end/no-such-model`,
      cwd: "..",
      url: `http://127.0.0.1:${NO_MODEL_PORT}/api/qwen-image/config`,
      timeout: 60_000,
      reuseExistingServer: false,
      env: serverEnv,
    },
    {
      command: `./target/debug/server --port ${TOKEN_PORT} --device cpu --config end2end/e2e-config.toml --api-token e2e-token`,
      cwd: "..",
      // Any answer will do: the API itself wants the token.
      url: `http://127.0.0.1:${TOKEN_PORT}/`,
      timeout: 60_000,
      reuseExistingServer: false,
      env: serverEnv,
    },
  ],
});
