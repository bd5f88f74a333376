// "Split this layer" and followable edits against the real server and the tiny checkpoints:
// a layer decomposed again becomes a group (collapse/expand, hide as one, move as one, undo the
// split), the export keeps the group (manifest.json's tree), and an edit shows its phase, step
// and ETA with a Cancel that stops it.
import { test, expect, Page, Locator } from "@playwright/test";
import * as fs from "node:fs";
import { canvasHash, canvasPixels, openApp, readZip, scenePng, watchErrors } from "./helpers";

async function rowNames(page: Page): Promise<string[]> {
  return page.locator(".layer-list .layer-row .layer-name").allInnerTexts();
}

function row(page: Page, name: string): Locator {
  return page.locator(".layer-row", { has: page.locator(".layer-name", { hasText: new RegExp(`^${name.replace(".", "\\.")}$`) }) });
}

/** The largest difference of one byte between two canvases' straight RGBA. */
function maxDiff(a: { data: number[] }, b: { data: number[] }): number {
  expect(a.data.length).toBe(b.data.length);
  let max = 0;
  for (let i = 0; i < a.data.length; i++) max = Math.max(max, Math.abs(a.data[i] - b.data[i]));
  return max;
}

async function decompose(page: Page, seed: string) {
  await page.setInputFiles("#image-input", { name: "scene.png", mimeType: "image/png", buffer: scenePng() });
  await page.getByLabel("Seed").fill(seed);
  await page.getByLabel("Prompt").fill("a red box and a sun over a green field");
  await page.getByRole("button", { name: "Decompose Image" }).click();
  await expect(page.locator(".run-done")).toContainText("Split into 2 layers", { timeout: 90_000 });
}

test("split a layer into a group, fold, hide, move and undo it, and export the group", async ({ page }) => {
  const errors = watchErrors(page);
  await openApp(page);
  await decompose(page, "11");
  expect(await rowNames(page)).toEqual(["Layer 2", "Layer 1"]);
  const before = await canvasHash(page);

  // "Split" on Layer 1 offers a layer count, runs a job (progress) and replaces the layer by a group.
  const split = page.getByRole("button", { name: "Split Layer 1 into layers" });
  await split.click();
  await expect(split).toHaveAttribute("aria-expanded", "true");
  await page.getByLabel("Split into").selectOption("3");
  await page.getByRole("button", { name: "Split layer", exact: true }).click();
  await expect(page.getByRole("button", { name: "Splitting…" })).toBeDisabled();
  const group = page.locator(".group-row");
  await expect(group).toHaveCount(1, { timeout: 90_000 });
  await expect(group.locator(".layer-name")).toHaveText("Layer 1");
  await expect(group).toContainText("Split into 3 layers");
  expect(await rowNames(page)).toEqual(["Layer 2", "Layer 1.3", "Layer 1.2", "Layer 1.1"]);
  await expect(row(page, "Layer 1.1")).toHaveClass(/in-group/);
  // A part cannot be split again in the page, and stays inside its group.
  await expect(page.getByRole("button", { name: "Split Layer 1.2 into layers" })).toHaveCount(0);
  await expect(row(page, "Layer 1.3").getByRole("button", { name: "Move Layer 1.3 up" })).toBeDisabled();
  await expect(page.locator("#compose-time")).toContainText("Composited 4 layers");
  const splitCanvas = await canvasHash(page);
  const splitPixels = await canvasPixels(page);
  // The caches for a change to a part (the pointer on its row): folding must not redraw the
  // canvas from them (a blend of caches may round a byte differently from the full draw).
  await row(page, "Layer 1.2").hover();

  // Collapse / expand: the parts' rows fold away, the canvas is unchanged.
  await page.mouse.move(0, 0);
  const caret = page.getByRole("button", { name: "Collapse Layer 1" });
  await expect(caret).toHaveAttribute("aria-expanded", "true");
  await caret.focus();
  await page.keyboard.press("Enter");
  expect(await rowNames(page)).toEqual(["Layer 2"]);
  // The canvas still composites all four layers (folding is a view of the panel only), and its
  // pixels are those of the draw after the split.
  await expect(page.locator("#compose-time")).toContainText("Composited 4 layers");
  expect(maxDiff(await canvasPixels(page), splitPixels), "folded").toBeLessThanOrEqual(1);
  expect(await canvasHash(page)).toEqual(splitCanvas);
  await page.getByRole("button", { name: "Expand Layer 1" }).click();
  expect(await rowNames(page)).toEqual(["Layer 2", "Layer 1.3", "Layer 1.2", "Layer 1.1"]);
  expect(maxDiff(await canvasPixels(page), splitPixels), "expanded").toBeLessThanOrEqual(1);
  const shown = await canvasHash(page);
  expect(shown).toEqual(splitCanvas);

  // Hiding the group hides all its layers: the canvas changes, and comes back when shown.
  const eye = page.getByRole("button", { name: "Visible: Layer 1 (group)", exact: true });
  await eye.click();
  await expect(eye).toHaveAttribute("aria-pressed", "false");
  await expect(group).toHaveClass(/hidden-layer/);
  await expect.poll(() => canvasHash(page)).not.toEqual(shown);
  await expect(page.locator("#compose-time")).toContainText("Composited 1 layer ");
  await eye.click();
  await expect(page.locator("#compose-time")).toContainText("Composited 4 layers");
  // Shown again: the same canvas as before it was hidden (three layers at once are composited
  // again, never blended from caches).
  expect(await canvasHash(page)).toEqual(splitCanvas);
  expect(splitCanvas).not.toEqual(before);

  // The group moves as one, past Layer 2.
  await page.getByRole("button", { name: "Move Layer 1 up", exact: true }).click();
  expect(await rowNames(page)).toEqual(["Layer 1.3", "Layer 1.2", "Layer 1.1", "Layer 2"]);
  await page.getByRole("button", { name: "Move Layer 1 down", exact: true }).click();
  expect(await rowNames(page)).toEqual(["Layer 2", "Layer 1.3", "Layer 1.2", "Layer 1.1"]);

  // Export: the ZIP's manifest keeps the group as a node of its tree.
  const [zipDownload] = await Promise.all([
    page.waitForEvent("download"),
    page.getByRole("button", { name: "Download ZIP" }).click(),
  ]);
  const entries = readZip(fs.readFileSync(await zipDownload.path()));
  const manifest = JSON.parse(entries.find((e) => e.name === "manifest.json")!.data.toString("utf8"));
  expect(manifest.layers.map((l: { name: string }) => l.name)).toEqual(["Layer 1.1", "Layer 1.2", "Layer 1.3", "Layer 2"]);
  expect(manifest.tree).toEqual([
    { group: "Layer 1", visible: true, opacity: 1, children: [{ layer: 1 }, { layer: 2 }, { layer: 3 }] },
    { layer: 4 },
  ]);
  // The PSD has the group as a folder: its name in the layer records, around the three parts.
  const [psdDownload] = await Promise.all([
    page.waitForEvent("download"),
    page.getByRole("button", { name: "Download PSD", exact: true }).click(),
  ]);
  const psd = fs.readFileSync(await psdDownload.path());
  expect(psd.subarray(0, 4).toString("latin1")).toBe("8BPS");
  expect(psd.includes(Buffer.from("lsct", "latin1"))).toBe(true);

  // Undo the split: the original layer is back, and the canvas with it.
  await page.getByRole("button", { name: "Undo the split of Layer 1" }).click();
  await expect(page.locator(".group-row")).toHaveCount(0);
  expect(await rowNames(page)).toEqual(["Layer 2", "Layer 1"]);
  await expect.poll(() => canvasHash(page)).toEqual(before);
  // …and the stack's Undo brings the group back.
  await page.getByRole("button", { name: "Undo", exact: true }).click();
  await expect(page.locator(".group-row")).toHaveCount(1);
  expect(errors).toEqual([]);
});

/** Each pixel premultiplied (as both canvases store it): colour × alpha / 255, and alpha. */
function premultiplied(p: { data: number[] }): number[] {
  return p.data.map((v, i) => (i % 4 === 3 ? v : (v * p.data[i - (i % 4) + 3]) / 255));
}

test("the WebGL2 path draws a group's visibility and opacity as the WASM path does", async ({ page }) => {
  // Two decompositions and two splits on the CPU.
  test.setTimeout(360_000);
  const errors = watchErrors(page);
  const states: Record<string, number[][]> = {};
  for (const compositor of ["wasm", "webgl2"]) {
    await openApp(page, `/?compositor=${compositor}`);
    await decompose(page, "13");
    const canvas = page.locator("#composite-canvas");
    await expect(canvas).toHaveAttribute("data-compositor", compositor === "wasm" ? "WASM" : "WebGL2");
    // Layer 2 at 60 % before the split: its group keeps that opacity for the parts.
    await page.getByRole("slider", { name: "Opacity of Layer 2", exact: true }).fill("60");
    await page.getByRole("button", { name: "Split Layer 2 into layers" }).click();
    await page.getByLabel("Split into").selectOption("3");
    await page.getByRole("button", { name: "Split layer", exact: true }).click();
    await expect(page.locator(".group-row")).toHaveCount(1, { timeout: 90_000 });
    await expect(page.locator("#compose-time")).toContainText("Composited 4 layers");
    // Does `act`, waits for the canvas to be drawn again, and returns its pixels.
    const after = async (act: () => Promise<void>, layers: string) => {
      const at = await canvas.getAttribute("data-drawn-at");
      await act();
      await expect(canvas).not.toHaveAttribute("data-drawn-at", at!);
      await expect(page.locator("#compose-time")).toContainText(`Composited ${layers} (`);
      return premultiplied(await canvasPixels(page));
    };
    const eye = page.getByRole("button", { name: "Visible: Layer 2 (group)", exact: true });
    const partEye = page.getByRole("button", { name: "Visible: Layer 2.3", exact: true });
    const list: number[][] = [premultiplied(await canvasPixels(page))];
    // A part's opacity (with its row's caches made), the group hidden, a part hidden inside
    // the hidden group, the group shown again without that part, the part shown.
    await row(page, "Layer 2.2").hover();
    const partOpacity = page.getByRole("slider", { name: "Opacity of Layer 2.2", exact: true });
    list.push(await after(() => partOpacity.fill("30"), "4 layers"));
    list.push(await after(() => eye.click(), "1 layer"));
    list.push(await after(() => partEye.click(), "1 layer"));
    list.push(await after(() => eye.click(), "3 layers"));
    list.push(await after(() => partEye.click(), "4 layers"));
    states[compositor] = list;
  }
  // Both canvases store 8-bit premultiplied pixels and the read back un-premultiplies them, so
  // compositors within 1/255 of each other read back up to about 2/255 apart (premultiplied);
  // a group's visibility or opacity left out would be tens of steps.
  const diff = (a: number[], b: number[]) => {
    expect(a.length).toBe(b.length);
    let max = 0;
    for (let j = 0; j < a.length; j++) max = Math.max(max, Math.abs(a[j] - b[j]));
    return max;
  };
  const diffs = states.wasm.map((a, i) => diff(a, states.webgl2[i]));
  console.log(`WebGL2 vs WASM, premultiplied, per state: ${diffs.map((d) => d.toFixed(2)).join(", ")}`);
  for (const [i, d] of diffs.entries()) expect(d, `state ${i}`).toBeLessThanOrEqual(3);
  // Every change drew something else (hiding the part inside the hidden group excepted).
  for (const i of [1, 2, 4, 5]) expect(diff(states.wasm[i], states.wasm[i - 1]), `state ${i}`).toBeGreaterThan(10);
  expect(diff(states.wasm[3], states.wasm[2])).toBe(0);
  expect(errors).toEqual([]);
});

test("an edit shows its progress and ETA, and Cancel stops it", async ({ page }) => {
  const errors = watchErrors(page);
  await openApp(page);
  await decompose(page, "12");
  const before = await canvasHash(page);
  // A long edit: the page's Steps apply to edits too.
  await page.getByLabel("Steps").fill("200");
  await page.getByRole("button", { name: "Edit Layer 2" }).click();
  await page.getByLabel("Edit instruction").fill("make it blue");
  await page.getByRole("button", { name: "Apply edit" }).click();
  const box = row(page, "Layer 2").locator(".edit-box");
  const progress = box.locator(".progress");
  await expect(progress.locator(".progress-phase")).toHaveText("Denoising", { timeout: 60_000 });
  await expect(progress.locator(".progress-detail")).toContainText("/ 200");
  await expect(progress.locator(".progress-detail")).toContainText("left");
  const cancel = box.getByRole("button", { name: "Cancel the edit" });
  await cancel.click();
  await expect(box.getByRole("status").filter({ hasText: "Edit cancelled." })).toBeVisible({ timeout: 30_000 });
  await expect(box.getByRole("button", { name: "Apply edit" })).toBeEnabled();
  await expect(row(page, "Layer 2").locator(".badge")).toHaveCount(0);
  expect(await canvasHash(page)).toEqual(before);
  expect(errors).toEqual([]);
});
