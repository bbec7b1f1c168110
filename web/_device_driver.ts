/**
 * Drives Debian's chromium for web/device_browser_test.ts (own process, -A: playwright-core reads
 * /proc at import). Prints one JSON line with what it saw. Usage:
 * deno run -A web/_device_driver.ts <url> <prompt> <seed> <steps> <sampler> <screenshot.png>
 *
 * 1. Chromium with `--enable-unsafe-webgpu` (its SwiftShader adapter, headless): the page offers
 *    "Generate on this device"; a run downloads the model, shows a preview per step on the canvas
 *    and ends with timings; the canvas's pixels and the server's PNG for the same request
 *    (decoded by the browser) are returned for the PSNR; a long run is cancelled; a second page
 *    load generates again from the cache.
 * 2. Chromium without that flag (no adapter), and an insecure origin (no `navigator.gpu`): the
 *    page says why and the server path still generates.
 *
 * @module
 */
import { chromium, type Page } from "playwright-core";

const [url, prompt, seed, steps, sampler, artifact] = Deno.args;
const BASE_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];
const WEBGPU_FLAGS = ["--enable-unsafe-webgpu"];
const TIMEOUT = 240_000;

async function launch(flags: string[]) {
  const profile = await Deno.makeTempDir({ prefix: "w4-chromium-" });
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: [...BASE_FLAGS, ...flags],
  });
  return {
    ctx,
    close: async () => {
      await ctx.close();
      await Deno.remove(profile, { recursive: true }).catch(() => {});
    },
  };
}

/** Records every text of #device-status in `window.__log`. */
async function watchStatus(page: Page): Promise<void> {
  await page.evaluate(() => {
    const w = globalThis as unknown as { __log: string[] };
    w.__log = [];
    const s = document.getElementById("device-status")!;
    new MutationObserver(() => w.__log.push(s.textContent ?? "")).observe(s, {
      childList: true,
      characterData: true,
      subtree: true,
    });
  });
}

async function state(page: Page, states: string[]): Promise<string> {
  await page.waitForFunction(
    (want) => want.includes(document.getElementById("device")?.dataset.state ?? ""),
    states,
    { timeout: TIMEOUT },
  );
  return await page.$eval("#device", (e) => (e as HTMLElement).dataset.state ?? "");
}

async function deviceRun(page: Page, nSteps: string) {
  await page.fill("#prompt", prompt);
  await page.fill("#steps", nSteps);
  await page.fill("#seed", seed);
  await page.selectOption("#sampler", sampler);
  await watchStatus(page);
  await page.click("#go-device");
  const end = await state(page, ["done", "error", "cancelled"]);
  return {
    end,
    status: await page.textContent("#device-status"),
    log: await page.evaluate(() => (globalThis as unknown as { __log: string[] }).__log),
    timings: JSON.parse(
      await page.$eval("#device", (e) => (e as HTMLElement).dataset.timings ?? "null"),
    ),
    timingsText: await page.textContent("#device-timings"),
    caps: JSON.parse(await page.$eval("#device", (e) => (e as HTMLElement).dataset.caps ?? "null")),
  };
}

const out: Record<string, unknown> = {};
const errors: string[] = [];
{
  const b = await launch(WEBGPU_FLAGS);
  try {
    const page = b.ctx.pages()[0] ?? await b.ctx.newPage();
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(url);
    out.ready = await state(page, ["ready", "unsupported", "error"]);
    out.readyText = await page.textContent("#device-status");
    out.serverButton = await page.textContent("#go");
    out.deviceButtonNextToServer = await page.evaluate(() =>
      document.getElementById("go")?.nextElementSibling?.id
    );
    if (out.ready === "ready") {
      out.first = await deviceRun(page, steps);
      // the canvas, and the server's PNG for the same request decoded by the browser
      const pixels = await page.evaluate(async (q) => {
        const c = document.getElementById("device-canvas") as HTMLCanvasElement;
        const device = Array.from(c.getContext("2d")!.getImageData(0, 0, c.width, c.height).data);
        const r = await fetch("/api/generate", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify(q),
        });
        const bmp = await createImageBitmap(await r.blob());
        const o = new OffscreenCanvas(bmp.width, bmp.height);
        const ctx = o.getContext("2d")!;
        ctx.drawImage(bmp, 0, 0);
        const server = Array.from(ctx.getImageData(0, 0, bmp.width, bmp.height).data);
        return { width: c.width, device, server, serverWidth: bmp.width };
      }, { prompt, seed: Number(seed), steps: Number(steps), sampler });
      out.pixels = pixels;
      await page.screenshot({ path: artifact, fullPage: true });
      // cancel a long run once it has made its first step
      await page.fill("#steps", "100");
      await watchStatus(page);
      await page.click("#go-device");
      await page.waitForFunction(
        () =>
          /^step [1-9]/.test(
            document.getElementById("device-status")?.textContent ?? "",
          ),
        undefined,
        { timeout: TIMEOUT },
      );
      await page.click("#cancel-device");
      out.cancel = {
        end: await state(page, ["cancelled", "done", "error"]),
        status: await page.textContent("#device-status"),
      };
      // a second visit: the model comes from the browser's cache
      const page2 = await b.ctx.newPage();
      page2.on("pageerror", (e) => errors.push(String(e)));
      // a marker in the server's request log: the test counts model requests after it
      await (await fetch(new URL("/healthz?mark=second-visit", url))).body?.cancel();
      await page2.goto(url);
      await state(page2, ["ready", "unsupported", "error"]);
      out.second = await deviceRun(page2, "1");
    }
  } finally {
    await b.close();
  }
}
{
  // no adapter (no --enable-unsafe-webgpu); and an insecure origin, where navigator.gpu is absent
  const port = new URL(url).port;
  const b = await launch([`--host-resolver-rules=MAP w4-insecure.test 127.0.0.1`]);
  try {
    const results: Record<string, unknown>[] = [];
    for (const u of [url, `http://w4-insecure.test:${port}/`]) {
      const page = await b.ctx.newPage();
      page.on("pageerror", (e) => errors.push(String(e)));
      await page.goto(u);
      const st = await state(page, ["unsupported", "ready", "error"]);
      const r: Record<string, unknown> = {
        url: u,
        state: st,
        status: await page.textContent("#device-status"),
        deviceButtonHidden: await page.$eval("#go-device", (e) => (e as HTMLElement).hidden),
        hasGpu: await page.evaluate(() => "gpu" in navigator),
      };
      await page.fill("#prompt", prompt);
      await page.fill("#steps", "2");
      await page.fill("#seed", seed);
      await page.click("#go");
      await page.waitForSelector("#result:not([hidden])", { timeout: TIMEOUT });
      r.serverImage = (await page.getAttribute("#result", "src"))?.slice(0, 22);
      results.push(r);
    }
    out.fallback = results;
  } finally {
    await b.close();
  }
}
out.errors = errors;
console.log(JSON.stringify(out));
