import { test, expect } from "@playwright/test";
import { openApp, watchErrors } from "./helpers";

// The Z-Image mode on the tiny checkpoint (end2end/e2e-config.toml: 64×48, 2 steps).

test("Z-Image: a prompt becomes an image, and the image decomposes into layers", async ({ page }) => {
  const errors = watchErrors(page);
  await openApp(page);
  await page.getByRole("button", { name: "Z-Image", exact: true }).click();
  await expect(page.getByRole("heading", { name: "Text to image (Z-Image-Turbo)" })).toBeVisible();
  await expect(page.getByText("not available")).toHaveCount(0);
  // The server's defaults fill the form.
  await expect(page.locator("#z-width")).toHaveValue("64");
  await expect(page.locator("#z-height")).toHaveValue("48");
  await expect(page.locator("#z-steps")).toHaveValue("2");
  const generate = page.getByRole("button", { name: "Generate image" });
  await expect(generate).toBeDisabled(); // no prompt yet
  const prompt = "a red box and a sun over a green field";
  await page.locator("#z-prompt").fill(prompt);
  await page.locator("#z-seed").fill("5");
  await page.locator("#z-width").fill("100");
  await expect(page.locator(".z-problem")).toContainText("width must be a multiple of 16");
  await expect(generate).toBeDisabled();
  await page.locator("#z-width").fill("64");
  await expect(generate).toBeEnabled();
  await generate.click();
  const img = page.locator("img.z-image-result");
  await expect(img).toBeVisible({ timeout: 90_000 });
  await expect(page.locator(".z-info")).toContainText("64×48, 2 steps, seed 5");
  const size = await img.evaluate((el: HTMLImageElement) => [el.naturalWidth, el.naturalHeight]);
  expect(size).toEqual([64, 48]);
  await page.screenshot({ path: "test-results/z-image-generated.png" });

  // "Decompose into layers" carries the image and the prompt into the Qwen-Image view.
  await page.getByRole("button", { name: "Decompose into layers" }).click();
  await expect(page.getByRole("button", { name: "Qwen-Image", exact: true })).toHaveAttribute("aria-pressed", "true");
  await expect(page.getByAltText("Preview of z-image-5.png")).toBeVisible();
  await expect(page.getByLabel("Prompt")).toHaveValue(prompt);
  await page.getByRole("button", { name: "Decompose Image" }).click();
  await expect(page.locator(".run-done")).toContainText("Split into 2 layers", { timeout: 90_000 });

  // Back in the Z-Image mode, the generated image is still there.
  await page.getByRole("button", { name: "Z-Image", exact: true }).click();
  await expect(img).toBeVisible();
  expect(errors).toEqual([]);
});

test("Z-Image: progress is shown and Cancel stops a generation", async ({ page }) => {
  const errors = watchErrors(page);
  await openApp(page);
  await page.getByRole("button", { name: "Z-Image", exact: true }).click();
  await page.locator("#z-prompt").fill("a lighthouse");
  await page.locator("#z-steps").fill("200");
  await page.getByRole("button", { name: "Generate image" }).click();
  await expect(page.locator(".z-progress-label")).toContainText("Denoising, step", { timeout: 60_000 });
  await expect(page.getByRole("progressbar")).toBeVisible();
  await page.getByRole("button", { name: "Cancel" }).click();
  await expect(page.locator(".z-progress")).toHaveCount(0, { timeout: 30_000 });
  await expect(page.locator("img.z-image-result")).toHaveCount(0);
  await expect(page.getByRole("button", { name: "Generate image" })).toBeEnabled();
  expect(errors).toEqual([]);
});
