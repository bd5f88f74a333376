// A server whose model is missing (the second web server of playwright.config.ts): the page says
// so before anything is sent, and a decompose attempt shows the server's reason in place.
import { test, expect } from "@playwright/test";
import { openApp, scenePng, watchErrors } from "./helpers";

const NO_MODEL = `http://127.0.0.1:${Number(process.env.E2E_NO_MODEL_PORT ?? Number(process.env.E2E_PORT ?? 7870) + 1)}`;

test("a missing model is explained, and a decompose error is shown where the button is", async ({ page, request }) => {
  const errors = watchErrors(page);
  const status = await (await request.get(`${NO_MODEL}/api/qwen-image/status`)).json();
  expect(status.status).toBe("unavailable");
  await openApp(page, `${NO_MODEL}/`);
  await expect(page.locator("#model-notice")).toContainText("The decompose model is unavailable.");
  await expect(page.locator("#model-notice")).toContainText(status.reason);
  // The models' state line says it too.
  await expect(page.locator("#model-status-decompose")).toHaveAttribute("data-state", "unavailable");
  await expect(page.locator("#model-status-decompose")).toContainText("Layers model: unavailable");
  // This server runs two engine workers (--devices cpu,cpu); the page lists them.
  expect(status.workers.map((w: { device: string }) => w.device)).toEqual(["cpu", "cpu"]);
  await expect(page.locator("#worker-status")).toHaveText("2 workers (throughput): cpu idle, cpu idle");

  await page.setInputFiles("#image-input", { name: "scene.png", mimeType: "image/png", buffer: scenePng() });
  await page.getByLabel("Prompt").fill("a red box and a sun");
  await page.getByRole("button", { name: "Decompose Image" }).click();
  const alert = page.locator(".run-error");
  await expect(alert).toContainText("Decomposition failed:");
  await expect(alert).toContainText(status.reason);
  await expect(alert).toHaveAttribute("role", "alert");
  // Nothing else changed: no results, and the button is usable again.
  await expect(page.getByText("Your layers appear here")).toBeVisible();
  await expect(page.getByRole("button", { name: "Decompose Image" })).toBeEnabled();
  await page.screenshot({ path: test.info().outputPath("unavailable.png"), fullPage: true });
  // The browser logs the 503 itself; nothing else may fail.
  expect(errors.filter((e) => !e.includes("503"))).toEqual([]);
});
