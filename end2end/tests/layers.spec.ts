// The whole flow against the real server and the tiny random-weight checkpoint
// (end2end/e2e-config.toml): upload → decompose (progress) → layer panel → visibility and
// reorder change the canvas → opacity → undo → edit → ZIP and PNG export. Random weights make
// the layers look like noise, but every step is real.
import { test, expect, Page, Locator } from "@playwright/test";
import * as fs from "node:fs";
import { canvasHash, canvasPixels, openApp, pngSize, readZip, scenePng, watchErrors } from "./helpers";

async function shot(page: Page, name: string) {
  // From the top, so the sticky header sits where it belongs in a full-page picture.
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: test.info().outputPath(`${name}.png`), fullPage: true });
}

/** Layer names as the panel lists them (top of the stack first). */
async function rowNames(page: Page): Promise<string[]> {
  return page.locator(".layer-list .layer-row .layer-name").allInnerTexts();
}

function row(page: Page, name: string): Locator {
  return page.locator(".layer-row", { has: page.locator(".layer-name", { hasText: new RegExp(`^${name}$`) }) });
}

async function decompose(page: Page, seed: string, prompt = "a red box and a sun over a green field") {
  await page.setInputFiles("#image-input", { name: "scene.png", mimeType: "image/png", buffer: scenePng() });
  await page.getByLabel("Seed").fill(seed);
  await page.getByLabel("Prompt").fill(prompt);
  const run = page.getByRole("button", { name: "Decompose Image" });
  await run.click();
  // Disabled while running (its label says so too).
  await expect(page.getByRole("button", { name: "Decomposing…" })).toBeDisabled();
  await expect(page.locator(".run-done")).toContainText("Split into 2 layers", { timeout: 90_000 });
  await expect(page.locator(".run-done")).toContainText(`seed ${seed}`);
  await expect(run).toBeEnabled();
}

test("decompose, then toggle, reorder, fade, undo and export the layers", async ({ page }) => {
  const errors = watchErrors(page);
  await openApp(page);
  await decompose(page, "7");
  await shot(page, "01-decomposed");

  // The panel: the model's composite, clearly labelled, then Layer 2 (top) and Layer 1 (bottom).
  await expect(page.getByTestId("composite-row")).toContainText("Composite (all layers)");
  expect(await rowNames(page)).toEqual(["Layer 2", "Layer 1"]);
  await expect(row(page, "Layer 1")).toContainText("Position 1 of 2");
  await expect(row(page, "Layer 2").getByRole("button", { name: "Move Layer 2 up" })).toBeDisabled();
  await expect(row(page, "Layer 1").getByRole("button", { name: "Move Layer 1 down" })).toBeDisabled();

  // The canvas composites both layers (in WASM) and reports the time it took.
  const first = await canvasPixels(page);
  expect(first.w).toBeGreaterThan(0);
  expect(first.h).toBeGreaterThan(0);
  await expect(page.locator("#compose-time")).toContainText(`Composited 2 layers (${first.w}×${first.h}) in`);
  const both = await canvasHash(page);

  // Visibility: hiding the top layer changes the canvas; showing it again restores it exactly.
  const eye2 = page.getByRole("button", { name: "Visible: Layer 2" });
  await expect(eye2).toHaveAttribute("aria-pressed", "true");
  await eye2.focus();
  await page.keyboard.press("Space");
  await expect(eye2).toHaveAttribute("aria-pressed", "false");
  const onlyBottom = await canvasHash(page);
  expect(onlyBottom).not.toEqual(both);
  await expect(page.locator("#compose-time")).toContainText("Composited 1 layer ");
  // Hiding both leaves a fully transparent canvas (the checkerboard shows through).
  await page.getByRole("button", { name: "Visible: Layer 1" }).click();
  const empty = await canvasPixels(page);
  expect(empty.data.every((v, i) => i % 4 !== 3 || v === 0)).toBe(true);
  await page.getByRole("button", { name: "Visible: Layer 1" }).click();
  await eye2.click();
  expect(await canvasHash(page)).toEqual(both);
  await shot(page, "02-visibility");

  // Keyboard reorder: "Move Layer 2 down" puts it at the bottom; focus stays usable.
  await row(page, "Layer 2").getByRole("button", { name: "Move Layer 2 down" }).focus();
  await page.keyboard.press("Enter");
  expect(await rowNames(page)).toEqual(["Layer 1", "Layer 2"]);
  await expect(page.locator("#announcer")).toHaveText("Layer 2 moved to position 1 of 2.");
  const swapped = await canvasHash(page);
  expect(swapped).not.toEqual(both);
  await expect(page.locator(":focus")).toHaveAttribute("id", "layer-2-up");
  // Alt+↑ on the focused row moves it back up.
  await page.keyboard.press("Alt+ArrowUp");
  expect(await rowNames(page)).toEqual(["Layer 2", "Layer 1"]);
  expect(await canvasHash(page)).toEqual(both);

  // Drag and drop: Layer 1 dragged onto Layer 2 takes the top.
  await row(page, "Layer 1").locator(".layer-main").dragTo(row(page, "Layer 2"));
  expect(await rowNames(page)).toEqual(["Layer 1", "Layer 2"]);
  expect(await canvasHash(page)).toEqual(swapped);
  await shot(page, "03-reordered");

  // Undo (button and Ctrl+Z) and redo walk the history.
  await page.getByRole("button", { name: "Undo", exact: true }).click();
  expect(await rowNames(page)).toEqual(["Layer 2", "Layer 1"]);
  await page.getByRole("button", { name: "Redo", exact: true }).click();
  expect(await rowNames(page)).toEqual(["Layer 1", "Layer 2"]);
  await page.locator("body").click({ position: { x: 2, y: 2 } });
  await page.keyboard.press("Control+z");
  expect(await rowNames(page)).toEqual(["Layer 2", "Layer 1"]);
  await page.keyboard.press("Control+Shift+z");
  expect(await rowNames(page)).toEqual(["Layer 1", "Layer 2"]);

  // Opacity: the top layer (now Layer 1) at 40 %.
  const opacity = page.getByRole("slider", { name: "Opacity of Layer 1" });
  await opacity.fill("40");
  await expect(row(page, "Layer 1").locator(".opacity-value")).toHaveText("40 %");
  expect(await canvasHash(page)).not.toEqual(swapped);
  // Hide Layer 2 (bottom) so the manifest records a hidden layer.
  await page.getByRole("button", { name: "Visible: Layer 2" }).click();

  // The model's own composite can be shown for comparison.
  await page.getByRole("button", { name: "Model composite" }).click();
  await expect(page.getByRole("img", { name: "The model's composite" })).toBeVisible();
  await page.getByRole("button", { name: "Layers", exact: true }).click();

  // Export: the ZIP holds the layers in stack order, the flattened composite and the manifest.
  const [zipDownload] = await Promise.all([
    page.waitForEvent("download"),
    page.getByRole("button", { name: "Download ZIP" }).click(),
  ]);
  expect(zipDownload.suggestedFilename()).toBe("qwen-layers-seed-7.zip");
  const zip = fs.readFileSync(await zipDownload.path());
  const entries = readZip(zip);
  expect(entries.map((e) => e.name)).toEqual(["composite.png", "01_layer-2.png", "02_layer-1.png", "manifest.json"]);
  for (const e of entries.filter((e) => e.name.endsWith(".png"))) {
    expect(pngSize(e.data)).toEqual([first.w, first.h]);
  }
  const manifest = JSON.parse(entries.find((e) => e.name === "manifest.json")!.data.toString("utf8"));
  expect(manifest.layer_order).toBe("bottom-to-top");
  expect([manifest.width, manifest.height]).toEqual([first.w, first.h]);
  expect(manifest.layers).toEqual([
    { name: "Layer 2", file: "01_layer-2.png", position: 1, visible: false, opacity: 1 },
    { name: "Layer 1", file: "02_layer-1.png", position: 2, visible: true, opacity: 0.4 },
  ]);
  expect(manifest.run).toMatchObject({
    seed: 7,
    prompt: "a red box and a sun over a green field",
    layer_num: 2,
    steps: 2,
    cfg_scale: 4,
  });
  expect(manifest.run.resolution).toBe(640);
  await expect(page.locator(".export-done")).toContainText("Saved qwen-layers-seed-7.zip");

  // The layered formats, built in the browser (WASM) from the same stack: Layer 2 (hidden) at
  // the bottom, Layer 1 at 40 % on top.
  const download = async (label: string) => {
    const [d] = await Promise.all([
      page.waitForEvent("download"),
      page.getByRole("button", { name: `Download ${label}`, exact: true }).click(),
    ]);
    return { name: d.suggestedFilename(), bytes: fs.readFileSync(await d.path()) };
  };
  const psd = await download("PSD");
  expect(psd.name).toBe("qwen-layers-seed-7.psd");
  expect(psd.bytes.subarray(0, 4).toString("latin1")).toBe("8BPS");
  expect([psd.bytes.readUInt32BE(18), psd.bytes.readUInt32BE(14)]).toEqual([first.w, first.h]);
  await expect(page.locator(".export-done")).toContainText("Saved qwen-layers-seed-7.psd: 2 layers");
  const ora = await download("ORA");
  expect(ora.name).toBe("qwen-layers-seed-7.ora");
  const oraEntries = readZip(ora.bytes);
  expect(oraEntries[0]).toMatchObject({ name: "mimetype", method: 0 });
  expect(oraEntries[0].data.toString("latin1")).toBe("image/openraster");
  const stack = oraEntries.find((e) => e.name === "stack.xml")!.data.toString("utf8");
  const oraLayers = [...stack.matchAll(/<layer name="([^"]*)"[^>]* opacity="([^"]*)" visibility="([^"]*)"/g)].map(
    (m) => [m[1], Number(m[2]), m[3]],
  );
  expect(oraLayers).toEqual([
    ["Layer 1", 0.4, "visible"],
    ["Layer 2", 1, "hidden"],
  ]);
  const pptx = await download("PPTX");
  expect(pptx.name).toBe("qwen-layers-seed-7.pptx");
  const slide = readZip(pptx.bytes).find((e) => e.name === "ppt/slides/slide1.xml")!.data.toString("utf8");
  const pictures = [...slide.matchAll(/<p:pic><p:nvPicPr><p:cNvPr id="\d+" name="([^"]*)"[^>]*?( hidden="1")?\/>/g)];
  expect(pictures.map((m) => [m[1], !!m[2]])).toEqual([
    ["Layer 2", true],
    ["Layer 1", false],
  ]);
  const flat = await download("flattened PNG");
  expect(flat.name).toBe("composite-flattened.png");
  expect(pngSize(flat.bytes)).toEqual([first.w, first.h]);

  // Single-layer PNG download.
  const [pngDownload] = await Promise.all([
    page.waitForEvent("download"),
    page.getByRole("button", { name: "Download Layer 1 as PNG" }).click(),
  ]);
  expect(pngDownload.suggestedFilename()).toBe("layer-1.png");
  expect(pngSize(fs.readFileSync(await pngDownload.path()))).toEqual([first.w, first.h]);
  await shot(page, "04-exported");

  // A narrow window: one column, nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  expect(overflow).toBeLessThanOrEqual(0);
  await shot(page, "05-narrow");
  expect(errors).toEqual([]);
});

test("a layer edit replaces the layer with before/after and undo", async ({ page, request }) => {
  // A real edit on the CPU: minutes when the machine is busy.
  test.setTimeout(300_000);
  const errors = watchErrors(page);
  await openApp(page);
  // An empty prompt: the server captions the image (random weights: the words are noise) and
  // the page shows the caption it used.
  await expect(page.getByRole("radiogroup", { name: "Language of the automatic caption" })).toBeVisible();
  await decompose(page, "11", "");
  await expect(page.locator(".run-caption")).toContainText("Automatic caption:");
  // "Use as prompt" copies it into the prompt, to refine and run again.
  await page.getByRole("button", { name: "Use as prompt" }).click();
  await expect(page.getByLabel("Prompt")).not.toHaveValue("");
  const before = await canvasHash(page);

  // The Edit button (always shown) opens an instruction box.
  const edit = page.getByRole("button", { name: "Edit Layer 2" });
  await expect(edit).toBeVisible();
  await edit.click();
  await expect(edit).toHaveAttribute("aria-expanded", "true");
  const instruction = page.getByLabel("Edit instruction");
  await expect(instruction).toBeFocused();
  // An empty instruction is refused before anything is sent.
  await page.getByRole("button", { name: "Apply edit" }).click();
  await expect(row(page, "Layer 2").getByRole("alert")).toContainText("Describe the change first");
  await instruction.fill("make it blue");

  // The browser tests' server has the tiny Edit-2509 checkpoint: the edit runs for real.
  const editStatus = await (await request.get("/api/qwen-image/edit-status")).json();
  expect(["idle", "ready"]).toContain(editStatus.status);
  await page.getByRole("button", { name: "Apply edit" }).click();
  // The edited layer replaces the old one, with before/after and undo.
  await expect(row(page, "Layer 2").locator(".badge")).toHaveText("edited", { timeout: 240_000 });
  const edited = await canvasHash(page);
  expect(edited).not.toEqual(before);
  const beforeAfter = page.getByRole("button", { name: "Show Layer 2 before the edit" });
  await beforeAfter.click();
  await expect(beforeAfter).toHaveAttribute("aria-pressed", "true");
  expect(await canvasHash(page)).toEqual(before);
  await beforeAfter.click();
  expect(await canvasHash(page)).toEqual(edited);
  await shot(page, "06-edited");
  await page.getByRole("button", { name: "Undo the edit of Layer 2" }).click();
  await expect(row(page, "Layer 2").locator(".badge")).toHaveCount(0);
  expect(await canvasHash(page)).toEqual(before);
  expect(errors).toEqual([]);
});

test("a running decomposition shows its progress and can be cancelled", async ({ page }) => {
  const errors = watchErrors(page);
  await openApp(page);
  await page.setInputFiles("#image-input", { name: "scene.png", mimeType: "image/png", buffer: scenePng() });
  // Many steps, so there is time to watch and cancel.
  await page.getByLabel("Steps").fill("60");
  await page.getByLabel("Prompt").fill("a red box and a sun over a green field");
  await page.getByRole("button", { name: "Decompose Image" }).click();
  const bar = page.getByRole("progressbar");
  await expect(page.locator(".progress-detail")).toContainText(/Step \d+ \/ 60/, { timeout: 60_000 });
  await expect(page.locator(".progress-detail")).toContainText("left");
  await expect(bar).toHaveAttribute("aria-valuenow", /\d+/);
  await expect(page.locator(".progress-phase")).toContainText("Denoising");
  // The parameters are locked while running.
  await expect(page.getByLabel("Steps")).toBeDisabled();
  await shot(page, "07-progress");
  await page.getByRole("button", { name: "Cancel" }).click();
  await expect(page.locator(".run-cancelled")).toHaveText("Cancelled.", { timeout: 60_000 });
  await expect(page.getByRole("button", { name: "Decompose Image" })).toBeEnabled();
  await expect(page.getByRole("button", { name: "Cancel" })).toHaveCount(0);
  expect(errors).toEqual([]);
});
