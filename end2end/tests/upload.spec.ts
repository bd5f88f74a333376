// Upload: click (file input), drag and drop, paste; the preview and size; bad files rejected in
// the browser with a message; parameter defaults from the server's config.
import { test, expect, Page } from "@playwright/test";
import { openApp, pngChunk, scenePng, watchErrors } from "./helpers";

/** Delivers a file to the page the way a drop or a paste does (a real DataTransfer). */
async function deliver(page: Page, how: "drop" | "paste", name: string, type: string, bytes: Buffer) {
  await page.evaluate(
    ({ how, name, type, b64 }) => {
      const data = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const dt = new DataTransfer();
      dt.items.add(new File([data], name, { type }));
      if (how === "drop") {
        const zone = document.querySelector(".upload-drop")!;
        zone.dispatchEvent(new DragEvent("dragover", { dataTransfer: dt, bubbles: true, cancelable: true }));
        zone.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
      } else {
        document.body.dispatchEvent(new ClipboardEvent("paste", { clipboardData: dt, bubbles: true, cancelable: true }));
      }
    },
    { how, name, type, b64: bytes.toString("base64") },
  );
}

test("parameters start from the server's configuration", async ({ page }) => {
  const errors = watchErrors(page);
  await openApp(page);
  // end2end/e2e-config.toml: 2 layers, 2 steps, CFG 4, 640.
  await expect(page.getByLabel("Layers")).toHaveValue("2");
  await expect(page.getByLabel("Steps")).toHaveValue("2");
  await expect(page.getByLabel("CFG scale")).toHaveValue("4");
  await expect(page.getByLabel("640 px")).toBeChecked();
  await expect(page.getByLabel("Seed")).toHaveValue("");
  await expect(page.getByText("Describe the whole scene, not the layers.")).toBeVisible();
  // Randomise fills a seed; out-of-range values are flagged and block the run.
  await page.getByRole("button", { name: "Randomise" }).click();
  await expect(page.getByLabel("Seed")).toHaveValue(/^\d+$/);
  await page.getByLabel("Layers").fill("11");
  await expect(page.getByText("Layers must be a whole number from 2 to 10.")).toBeVisible();
  await expect(page.getByLabel("Layers")).toHaveAttribute("aria-invalid", "true");
  await page.getByLabel("Layers").fill("3");
  await expect(page.getByLabel("Layers")).toHaveAttribute("aria-invalid", "false");
  // Without an image the button says why it is disabled.
  await expect(page.getByRole("button", { name: "Decompose Image" })).toBeDisabled();
  await expect(page.getByText("Choose an image first.")).toBeVisible();
  expect(errors).toEqual([]);
});

test("upload by click, drop and paste shows a preview and the size", async ({ page }) => {
  const errors = watchErrors(page);
  await openApp(page);
  const info = page.locator("#upload-info");

  await page.setInputFiles("#image-input", { name: "scene.png", mimeType: "image/png", buffer: scenePng(96, 64) });
  await expect(info).toContainText("scene.png — 96×64 px, PNG");
  await expect(page.getByAltText("Preview of scene.png")).toBeVisible();
  await expect(page.getByRole("button", { name: "Decompose Image" })).toBeEnabled();

  await deliver(page, "drop", "dropped.png", "image/png", scenePng(40, 30));
  await expect(info).toContainText("dropped.png — 40×30 px, PNG");
  await expect(page.getByAltText("Preview of dropped.png")).toBeVisible();

  await deliver(page, "paste", "pasted.png", "image/png", scenePng(20, 50));
  await expect(info).toContainText("pasted.png — 20×50 px, PNG");
  await page.screenshot({ path: test.info().outputPath("upload-preview.png"), fullPage: true });
  expect(errors).toEqual([]);
});

test("bad files are rejected in the browser with a message", async ({ page }) => {
  const errors = watchErrors(page);
  await openApp(page);
  const requests: string[] = [];
  page.on("request", (r) => { if (r.url().includes("decompose")) requests.push(r.url()); });

  await page.setInputFiles("#image-input", { name: "notes.txt", mimeType: "text/plain", buffer: Buffer.from("hello") });
  const alert = page.locator(".upload [role=alert]");
  await expect(alert).toHaveText("“notes.txt” is not an image; please use a PNG, JPEG or WebP file.");
  await expect(page.getByRole("button", { name: "Decompose Image" })).toBeDisabled();

  const gif = Buffer.from("R0lGODlhAQABAAAAACw=", "base64");
  await deliver(page, "drop", "anim.gif", "image/gif", gif);
  await expect(alert).toContainText("“anim.gif” is a GIF image");

  // A PNG header with broken data: the header passes, the full decode (the server's decoder,
  // run in the browser) refuses it.
  const good = scenePng(8, 8);
  const idat = Buffer.from("garbage, not zlib data");
  const broken = Buffer.concat([good.subarray(0, 33), pngChunk("IDAT", idat), good.subarray(good.length - 12)]);
  await page.setInputFiles("#image-input", { name: "broken.png", mimeType: "image/png", buffer: broken });
  await expect(alert).toContainText("“broken.png” could not be decoded as a PNG image (");
  await page.screenshot({ path: test.info().outputPath("upload-error.png"), fullPage: true });

  // A good file clears the message.
  await page.setInputFiles("#image-input", { name: "scene.png", mimeType: "image/png", buffer: scenePng() });
  await expect(alert).toHaveCount(0);
  expect(requests).toEqual([]);
  // The broken image logs the browser's own decode error; nothing else may fail.
  expect(errors.filter((e) => !e.includes("broken.png") && !e.includes("data:image/png"))).toEqual([]);
});

test("the inputs can be used with the keyboard alone, in reading order", async ({ page }) => {
  const errors = watchErrors(page);
  await openApp(page);
  await page.getByRole("button", { name: "Z-Image" }).focus();
  // (The caption language is offered while the prompt is empty.)
  const order = ["image-input", "prompt", "caption-en", "layers", "steps", "cfg", "auto-layers", "res-640", "seed"];
  for (const id of order) {
    await page.keyboard.press("Tab");
    await expect(page.locator(":focus")).toHaveAttribute("id", id);
  }
  // The focused file input shows a focus ring on the drop zone (its label).
  await page.locator("#image-input").focus();
  await expect(page.locator(".upload-drop")).toHaveCSS("border-top-color", "rgb(124, 156, 255)");
  // Resolution is a radio group: arrow keys switch it.
  await page.locator("#res-640").focus();
  await page.keyboard.press("ArrowRight");
  await expect(page.getByLabel("1024 px")).toBeChecked();
  // Enter on "Randomise" fills the seed.
  await page.getByRole("button", { name: "Randomise" }).focus();
  await page.keyboard.press("Enter");
  await expect(page.getByLabel("Seed")).toHaveValue(/^\d+$/);
  expect(errors).toEqual([]);
});
