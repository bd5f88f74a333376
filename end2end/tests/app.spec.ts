import { test, expect, Page } from "@playwright/test";

/** Fails the test on any page error or console error (a broken hydration shows up here). */
function watchErrors(page: Page): string[] {
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(`pageerror: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") errors.push(`console: ${m.text()}`); });
  return errors;
}

test("the page hydrates: the mode toggle changes the DOM", async ({ page }) => {
  const errors = watchErrors(page);
  await page.goto("/");
  await expect(page.getByRole("heading", { name: "Qwen Layers" })).toBeVisible();
  const qwen = page.getByRole("button", { name: "Qwen-Image" });
  const zimage = page.getByRole("button", { name: "Z-Image" });
  await expect(qwen).toHaveAttribute("aria-pressed", "true");
  // Wait for the WASM bundle, then click: only a hydrated page reacts.
  await page.waitForFunction(() => document.body.dataset.hydrated === "true", null, { timeout: 30_000 });
  await zimage.click();
  await expect(zimage).toHaveAttribute("aria-pressed", "true");
  await expect(qwen).toHaveAttribute("aria-pressed", "false");
  await expect(page.getByRole("heading", { name: "Text to image (Z-Image-Turbo)" })).toBeVisible();
  expect(errors).toEqual([]);
});
