import { defineConfig } from "@playwright/test";

// Debian's Chromium (installed by the README's setup); Playwright never downloads a browser here.
const PORT = Number(process.env.E2E_PORT ?? 7870);

export default defineConfig({
  testDir: "./tests",
  timeout: 60_000,
  fullyParallel: false,
  workers: 1,
  reporter: "list",
  use: {
    baseURL: `http://127.0.0.1:${PORT}`,
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
      args: [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
      ],
    },
  },
  projects: [{ name: "chromium", use: { browserName: "chromium" } }],
  webServer: {
    command: `./target/debug/server --port ${PORT} --config ${process.env.E2E_CONFIG ?? "config.toml"}`,
    cwd: "..",
    url: `http://127.0.0.1:${PORT}/api/qwen-image/config`,
    timeout: 60_000,
    reuseExistingServer: false,
    env: { LEPTOS_SITE_ROOT: "target/site", HF_HUB_OFFLINE: "1" },
  },
});
