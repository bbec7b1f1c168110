/**
 * On-device generation timings in a real browser: serves the page with the bundled INT4 model's
 * file (no server-side generation), opens it in Chromium with WebGPU, and generates on the
 * browser's adapter: first visit (download + checksum + upload + pipeline creation + steps), a
 * second run on the loaded model (steady-state ms per step), and a second visit (from the Cache
 * API). Prints one line per figure.
 *
 * Usage: deno run -A bench/browser_bench.ts [--steps N] [--small] [--flags "..."]
 * `--small`: 2 steps (for the software adapter); `--flags`: Chromium flags replacing the default
 * `--enable-unsafe-webgpu` (on a GPU machine e.g. `--enable-unsafe-webgpu --use-angle=vulkan
 * --enable-features=Vulkan`). Needs /usr/bin/chromium (or CHROMIUM=path).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { chromium, type Page } from "playwright-core";
import { createApp } from "../web/app.ts";
import { buildClient } from "../web/build.ts";
import { buildDevice } from "../web/build_device.ts";
import type { Engine, ModelInfo } from "../web/engine.ts";
import { ModelFiles } from "../web/model_files.ts";
import { ModelFile } from "../runtime/model_file.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    steps: { type: "string" },
    small: { type: "boolean", default: false },
    flags: { type: "string", default: "--enable-unsafe-webgpu" },
  },
});
const steps = Number(values.steps ?? (values.small ? 2 : 4));
const INT4 = new URL("../models/dit_emoji.int4.safetensors", import.meta.url).pathname;

// the page's model info from the file's header; this bench never generates on the server
const f = await ModelFile.open(INT4);
const c = f.config as Record<string, unknown>;
const info: ModelInfo = {
  id: "dit-emoji-int4",
  precision: f.precision,
  attention: "dense",
  classes: c.class_names as string[],
  size: c.input_size as number,
  channels: c.in_channels as number,
};
f.close();
const engine: Engine = {
  models: () => [info],
  health: () => ({ ready: true, device: "none (browser bench)" }),
  generate: () => Promise.reject(new RangeError("Cannot generate on the server in this bench")),
};
const registry = [{ id: info.id, path: INT4 }];
const app = createApp({
  engine,
  clientJs: await buildClient(null),
  modelFiles: {
    files: await ModelFiles.create(registry, [info]),
    deviceJs: await buildDevice(null),
  },
});
const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
const url = `http://127.0.0.1:${server.addr.port}/`;

const profile = await Deno.makeTempDir({ prefix: "w4-bench-chromium-" });
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: Deno.env.get("CHROMIUM") ?? "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", ...values.flags!.split(/\s+/).filter((s) => s)],
});

async function run(page: Page, n: number) {
  await page.fill("#prompt", info.classes[1]);
  await page.fill("#steps", String(n));
  await page.fill("#seed", "1");
  await page.click("#go-device");
  await page.waitForFunction(
    () => ["done", "error"].includes(document.getElementById("device")?.dataset.state ?? ""),
    undefined,
    { timeout: 600_000 },
  );
  const state = await page.$eval("#device", (e) => (e as HTMLElement).dataset.state);
  if (state !== "done") {
    throw new Error(`the run failed: ${await page.textContent("#device-status")}`);
  }
  return JSON.parse(await page.$eval("#device", (e) => (e as HTMLElement).dataset.timings!));
}

async function open() {
  const page = await ctx.newPage();
  await page.goto(url);
  await page.waitForFunction(
    () => document.getElementById("device")?.dataset.state !== undefined,
    undefined,
    { timeout: 60_000 },
  );
  const state = await page.$eval("#device", (e) => (e as HTMLElement).dataset.state);
  if (state !== "ready") {
    throw new Error(`the page cannot generate here: ${await page.textContent("#device-status")}`);
  }
  return page;
}

const mean = (x: number[]) => x.reduce((a, b) => a + b, 0) / x.length;
try {
  const page = await open();
  const first = await run(page, steps);
  const again = await run(page, steps);
  const page2 = await open();
  const cached = await run(page2, 1);
  console.log(`adapter: ${first.adapter} (${first.dtype} activations)`);
  console.log(
    `first visit: model fetch ${first.fetchMs} ms (downloaded: ${!first.cached}), ` +
      `load ${first.loadMs} ms (of which device + self-test ${first.deviceMs} ms; the rest checksum + ` +
      `upload + pipelines), steps ${first.stepMs.join(", ")} ms`,
  );
  const layers = first.layerMs as number[];
  console.log(
    `first visit, per layer: until the first layer ${layers[0]} ms (file validation + ` +
      `checksum + that layer), then ${layers.slice(1).join(", ")} ms`,
  );
  console.log(
    `loaded model, ${steps} steps: ${mean(again.stepMs).toFixed(0)} ms/step ` +
      `(${again.stepMs.join(", ")}), total ${again.totalMs} ms`,
  );
  console.log(
    `second visit: model fetch ${cached.fetchMs} ms (from cache: ${cached.cached}), ` +
      `load ${cached.loadMs} ms`,
  );
} finally {
  await ctx.close();
  await server.shutdown();
  await Deno.remove(profile, { recursive: true }).catch(() => {});
}
