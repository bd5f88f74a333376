// Issue 19's workflow fixes, each as a new user meets it in Chromium: the run shows in the
// results area with an ETA that never grows while a step runs, the models' state is on the
// page, fields look disabled while running, small text is readable (≥ 4.5:1), the Edit button
// is there without hovering, an edit shows its progress and drops a stale error, a "Saved …"
// message does not outlive its run, and the automatic layer count reports what it dropped.
import { test, expect, Page } from "@playwright/test";
import * as fs from "node:fs";
import { openApp, readZip, scenePng, watchErrors } from "./helpers";

async function upload(page: Page, prompt = "a red box and a sun over a green field") {
  await page.setInputFiles("#image-input", { name: "scene.png", mimeType: "image/png", buffer: scenePng() });
  await page.getByLabel("Prompt").fill(prompt);
}

async function decompose(page: Page, seed: string) {
  await upload(page);
  await page.getByLabel("Seed").fill(seed);
  await page.getByRole("button", { name: "Decompose Image" }).click();
  await expect(page.locator(".run-done")).toContainText("Split into", { timeout: 90_000 });
}

/** WCAG contrast of an element's text against the first opaque background behind it. */
async function contrast(page: Page, selector: string): Promise<number> {
  return page.locator(selector).first().evaluate((el) => {
    const rgba = (c: string) => (c.match(/[\d.]+/g) ?? []).map(Number);
    const luminance = ([r, g, b]: number[]) => {
      const lin = (v: number) => {
        const s = v / 255;
        return s <= 0.04045 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
      };
      return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
    };
    const fg = rgba(getComputedStyle(el).color);
    let bg: number[] = [0, 0, 0, 0];
    for (let e: Element | null = el; e; e = e.parentElement) {
      const c = rgba(getComputedStyle(e).backgroundColor);
      if ((c[3] ?? 1) >= 1) {
        bg = c;
        break;
      }
    }
    // Text drawn with transparency is blended over the background first.
    const a = fg[3] ?? 1;
    const mixed = [0, 1, 2].map((i) => fg[i] * a + bg[i] * (1 - a));
    const [l1, l2] = [luminance(mixed), luminance(bg)].sort((x, y) => y - x);
    return (l1 + 0.05) / (l2 + 0.05);
  });
}

test("small grey text is readable: at least 4.5:1 against its background", async ({ page }) => {
  const errors = watchErrors(page);
  await openApp(page);
  await expect(page.locator(".optional")).toBeVisible();
  expect(await contrast(page, ".optional")).toBeGreaterThanOrEqual(4.5);
  await decompose(page, "3");
  for (const selector of [".layer-sub", ".timing", ".defaults-note", "#prompt-hint"]) {
    await expect(page.locator(selector).first()).toBeVisible();
    expect(await contrast(page, selector), selector).toBeGreaterThanOrEqual(4.5);
  }
  expect(errors).toEqual([]);
});

test("a small image fills the preview box instead of sitting tiny in it", async ({ page }) => {
  const errors = watchErrors(page);
  await openApp(page);
  await upload(page); // 96×64
  const preview = page.getByRole("img", { name: "Preview of scene.png" });
  await expect(preview).toBeVisible();
  const fit = await preview.evaluate((img: HTMLImageElement) => {
    const box = img.getBoundingClientRect();
    // object-fit: contain draws the picture at this scale inside the element's box.
    const scale = Math.min(box.width / img.naturalWidth, box.height / img.naturalHeight);
    const zone = img.parentElement!.getBoundingClientRect();
    return { drawnWidth: img.naturalWidth * scale, drawnHeight: img.naturalHeight * scale, zone: zone.width };
  });
  // The drawn picture spans the box's width (less its padding), not its natural 96 pixels.
  expect(fit.drawnWidth).toBeGreaterThan(0.9 * (fit.zone - 20));
  expect(fit.drawnHeight).toBeGreaterThan(64 * 2);
  expect(errors).toEqual([]);
});

test("the models' state is shown, and a run shows in the results area with a sane ETA", async ({ page }) => {
  const errors = watchErrors(page);
  await openApp(page);
  // Before anything ran, each model says where it stands (this server may have run jobs already).
  await expect(page.locator("#model-status-decompose")).toHaveAttribute("data-state", /^(idle|ready)$/);
  await expect(page.locator("#model-status-decompose")).toContainText(/Layers model: (idle|ready)/);
  await expect(page.locator("#model-status-edit")).toHaveAttribute("data-state", /^(idle|ready)$/);

  await upload(page);
  await page.getByLabel("Steps").fill("60");
  const steps = page.getByLabel("Steps");
  const idleLook = await steps.evaluate((e) => [getComputedStyle(e).cursor, getComputedStyle(e).borderTopStyle]);
  expect(idleLook).toEqual(["text", "solid"]);
  await page.getByRole("button", { name: "Decompose Image" }).click();

  // The progress is in the results area, where "Choose an image…" was.
  const results = page.getByRole("region", { name: "Results" });
  await expect(results.getByRole("progressbar")).toBeVisible();
  await expect(results.getByText("Decomposing your image")).toBeVisible();
  await expect(page.getByText("Your layers appear here")).toBeHidden();
  // The fields are visibly disabled while they cannot be changed.
  await expect(steps).toBeDisabled();
  expect(await steps.evaluate((e) => [getComputedStyle(e).cursor, getComputedStyle(e).borderTopStyle])).toEqual([
    "not-allowed",
    "dashed",
  ]);

  // The ETA, sampled while denoising: within one step it only goes down.
  await expect(results.locator(".progress-detail")).toContainText(/Step \d+ \/ 60 .* left/, { timeout: 60_000 });
  const samples: { step: number; eta: number }[] = [];
  for (let i = 0; i < 25; i++) {
    const text = await results.locator(".progress-detail").innerText();
    const step = text.match(/Step (\d+) \/ 60/);
    const eta = text.match(/about (?:(\d+) min )?([\d.]+) s left/);
    if (step && eta) samples.push({ step: Number(step[1]), eta: Number(eta[1] ?? 0) * 60 + Number(eta[2]) });
    await page.waitForTimeout(120);
  }
  expect(samples.length).toBeGreaterThan(0);
  for (let i = 1; i < samples.length; i++) {
    if (samples[i].step === samples[i - 1].step) {
      expect(samples[i].eta, JSON.stringify(samples)).toBeLessThanOrEqual(samples[i - 1].eta);
    }
  }
  await expect(page.locator("#model-status-decompose")).toHaveAttribute("data-state", /^(loading|ready)$/);

  // Cancel sits with the progress.
  await results.getByRole("button", { name: "Cancel" }).click();
  await expect(page.locator(".run-cancelled")).toHaveText("Cancelled.", { timeout: 60_000 });
  await expect(results.getByRole("progressbar")).toHaveCount(0);
  await expect(page.getByText("Your layers appear here")).toBeVisible();
  await expect(page.locator("#model-status-decompose")).toHaveAttribute("data-state", "ready");
  await expect(page.locator("#model-status-decompose")).toContainText("Layers model: ready");
  expect(await steps.evaluate((e) => getComputedStyle(e).borderTopStyle)).toBe("solid");
  expect(errors).toEqual([]);
});

test("Edit is visible without hovering, shows its progress, and a changed instruction drops the old error", async ({
  page,
}) => {
  const errors = watchErrors(page);
  await openApp(page);
  await decompose(page, "5");
  // The pointer is nowhere near the rows.
  await page.mouse.move(1, 1);
  const edit = page.getByRole("button", { name: "Edit Layer 2" });
  await expect(edit).toBeVisible();
  expect(await edit.evaluate((e) => getComputedStyle(e).opacity)).toBe("1");

  await edit.click();
  const box = page.getByRole("form", { name: "Edit this layer" });
  const instruction = page.getByLabel("Edit instruction");
  await box.getByRole("button", { name: "Apply edit" }).click();
  await expect(box.getByRole("alert")).toContainText("Describe the change first");
  await instruction.fill("make it blue");
  await expect(box.getByRole("alert")).toHaveCount(0);

  // The request that starts the edit job is held until its progress has been seen, then fails
  // (the network drops it): the real edit's speed does not matter here (layers.spec.ts runs one
  // to the end; split.spec.ts follows an edit job's steps and cancels it).
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  await page.route("**/api/app/start_edit", async (route) => {
    await held;
    await route.abort();
  });
  await box.getByRole("button", { name: "Apply edit" }).click();
  await expect(box.getByRole("progressbar")).toBeVisible();
  await expect(box.locator(".progress-phase")).toContainText(/edit/i);
  await expect(box.locator(".progress-detail")).toContainText(/[12]\.\d s elapsed/, { timeout: 5_000 });
  await expect(instruction).toBeDisabled();
  release();
  await expect(box.getByRole("alert")).toContainText("Edit failed");
  await expect(box.getByRole("progressbar")).toHaveCount(0);
  // Fixing the instruction clears the message about the old one.
  await instruction.fill("make it green");
  await expect(box.getByRole("alert")).toHaveCount(0);
  // Only the dropped request itself is logged.
  expect(errors.filter((e) => !e.includes("Failed to load resource"))).toEqual([]);
});

test("a 'Saved …' message belongs to its run: a new run clears it", async ({ page }) => {
  const errors = watchErrors(page);
  await openApp(page);
  await decompose(page, "8");
  const [flat] = await Promise.all([
    page.waitForEvent("download"),
    page.getByRole("button", { name: "Download flattened PNG", exact: true }).click(),
  ]);
  expect(flat.suggestedFilename()).toBe("composite-flattened.png");
  await expect(page.locator(".export-done")).toHaveText(/^Saved composite-flattened\.png/);
  await page.getByLabel("Seed").fill("9");
  await page.getByRole("button", { name: "Decompose Image" }).click();
  await expect(page.locator(".export-done")).toHaveCount(0);
  await expect(page.locator(".run-done")).toContainText("seed 9", { timeout: 90_000 });
  await expect(page.locator(".export-done")).toHaveCount(0);
  expect(errors).toEqual([]);
});

test("the automatic layer count keeps what shows and says what it dropped", async ({ page }) => {
  // Six layers through the VAE on a CPU take a while.
  test.setTimeout(360_000);
  const errors = watchErrors(page);
  await openApp(page);
  await upload(page);
  await page.getByLabel("Seed").fill("4");
  await page.getByLabel("Choose the layer count automatically").check();
  // The count is the server's to choose now.
  await expect(page.getByLabel("Layers", { exact: true })).toBeDisabled();
  await page.getByRole("button", { name: "Decompose Image" }).click();
  await expect(page.locator(".run-done")).toContainText("Split into", { timeout: 300_000 });
  const report = await page.locator(".auto-report").innerText();
  const m = report.match(/^Automatic count: kept (\d+) of 6 layers/);
  expect(m, report).not.toBeNull();
  const kept = Number(m![1]);
  await expect(page.locator(".layer-list .layer-row")).toHaveCount(kept);
  await expect(page.locator(".run-done")).toContainText(`Split into ${kept} layers`);

  // The export's manifest carries the same report.
  const [zip] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: "Download ZIP" }).click()]);
  const entries = readZip(fs.readFileSync(await zip.path()));
  const manifest = JSON.parse(entries.find((e) => e.name === "manifest.json")!.data.toString("utf8"));
  expect(manifest.run.auto_layers.produced).toBe(6);
  expect(manifest.run.auto_layers.kept.length).toBe(kept);
  expect(manifest.layers.length).toBe(kept);
  for (const d of manifest.run.auto_layers.dropped) {
    expect(["empty", "covered", "duplicate"]).toContain(d.reason);
    expect(report).toContain(`layer ${d.layer} (${d.reason})`);
  }
  expect(errors).toEqual([]);
});
