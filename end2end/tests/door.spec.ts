// The web app's door: a phone-sized photo (over 8 MB) uploads and decomposes through the
// server functions, the finished run stays on the server and reopens after a reload, and a
// server with an API token asks for it once and keeps it in an HttpOnly cookie.
import { test, expect } from "@playwright/test";
import * as crypto from "node:crypto";
import { makePng, openApp, watchErrors } from "./helpers";

const PORT = Number(process.env.E2E_PORT ?? 7870);
const TOKEN_PORT = Number(process.env.E2E_TOKEN_PORT ?? PORT + 2);

/** Random noise does not compress: 1800×1600 opaque RGBA is an ~8.7 MB PNG. */
function bigPhoto(): Buffer {
  const [w, h] = [1800, 1600];
  const noise = crypto.randomBytes(w * h * 3);
  return makePng(w, h, (x, y) => {
    const i = (y * w + x) * 3;
    return [noise[i], noise[i + 1], noise[i + 2], 255];
  });
}

test("a photo over 8 MB decomposes, and the run reopens after a reload", async ({ page }) => {
  const errors = watchErrors(page);
  const photo = bigPhoto();
  expect(photo.length).toBeGreaterThan(8_000_000);
  await openApp(page);
  await page.setInputFiles("#image-input", { name: "photo.png", mimeType: "image/png", buffer: photo });
  await page.getByLabel("Seed").fill("11");
  await page.getByLabel("Prompt").fill("noise from a phone");
  await page.getByRole("button", { name: "Decompose Image" }).click();
  await expect(page.locator(".run-done")).toContainText("Split into 2 layers", { timeout: 90_000 });

  // The result is kept on the server for this browser: listed after a reload, and it opens.
  await openApp(page);
  const recent = page.locator(".recent-runs");
  await expect(recent).toContainText("Recent runs (1)");
  await recent.locator("summary").click();
  await expect(recent.locator(".open-run")).toContainText("seed 11 · noise from a phone");
  await recent.locator(".open-run").click();
  await expect(page.locator(".run-done")).toContainText("Split into 2 layers");
  await expect(page.locator(".run-done")).toContainText("seed 11");
  expect(await page.locator(".layer-list .layer-row").count()).toBe(2);
  expect(errors).toEqual([]);
});

test("a server with an API token asks for it once and then works", async ({ page }) => {
  const base = `http://127.0.0.1:${TOKEN_PORT}`;
  await page.goto(base + "/");
  const form = page.locator(".token-form");
  await expect(form).toBeVisible();
  await form.getByLabel("API token").fill("wrong");
  await form.getByRole("button", { name: "Sign in" }).click();
  await expect(page.locator("body")).toContainText("wrong API token");

  await page.goto(base + "/");
  await page.locator(".token-form").getByLabel("API token").fill("e2e-token");
  await page.locator(".token-form").getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(base + "/");
  await expect(page.locator("main.workspace")).toHaveAttribute("data-ready", "true");
  await expect(page.locator(".token-form")).toHaveCount(0);
  // The cookie is not readable by scripts on the page.
  expect(await page.evaluate(() => document.cookie)).not.toContain("qwen_layers_token");
  const cookies = await page.context().cookies(base);
  const token = cookies.find((c) => c.name === "qwen_layers_token");
  expect(token?.httpOnly).toBe(true);
  expect(token?.sameSite).toBe("Strict");
});
