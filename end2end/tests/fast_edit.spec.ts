// "Fast edit" (issue 20): the edit box offers the server's fast-edit-8 preset (end2end/e2e-config.toml:
// the tiny Lightning-layout LoRA fixture, the shipped scheduler file, no CFG); an edit with it on
// runs with the preset, and /status says which adapters are merged.
import { test, expect } from "@playwright/test";
import { openApp, scenePng, watchErrors } from "./helpers";

test("the fast edit switch runs the edit with the preset", async ({ page, request }) => {
  const errors = watchErrors(page);
  const config = await (await request.get("/api/qwen-image/config")).json();
  const preset = config.adapters.presets.find((p: { name: string }) => p.name === "fast-edit-8");
  expect(preset.available).toBe(true);

  await openApp(page);
  await page.setInputFiles("#image-input", { name: "scene.png", mimeType: "image/png", buffer: scenePng() });
  await page.getByLabel("Seed").fill("5");
  await page.getByLabel("Prompt").fill("a red box and a sun over a green field");
  await page.getByRole("button", { name: "Decompose Image" }).click();
  await expect(page.locator(".run-done")).toContainText("Split into 2 layers", { timeout: 90_000 });

  await page.getByRole("button", { name: "Edit Layer 2" }).click();
  const fast = page.getByTestId("fast-edit");
  await expect(fast).toBeVisible();
  await expect(fast).toBeEnabled();
  await expect(fast).not.toBeChecked();
  await expect(page.locator("label.check", { has: fast })).toContainText(preset.label);
  await fast.check();
  await page.getByLabel("Edit instruction").fill("make it blue");
  await page.getByRole("button", { name: "Apply edit" }).click();
  const layer2 = page.locator(".layer-row", { has: page.locator(".layer-name", { hasText: /^Layer 2$/ }) });
  await expect(layer2.locator(".badge")).toHaveText("edited", { timeout: 90_000 });

  // The worker merged the preset's LoRA for this edit.
  const status = await (await request.get("/api/qwen-image/status")).json();
  expect(status.lora.edit_preset).toBe("fast-edit-8");
  expect(status.lora.edit.map((l: { path: string }) => l.path).join()).toContain("lightning.safetensors");
  expect(errors).toEqual([]);
});
