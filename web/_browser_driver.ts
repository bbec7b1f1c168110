/**
 * Drives Debian's chromium with playwright-core for web/browser_test.ts, in its own process:
 * playwright-core reads /proc at import, which Deno allows only under --allow-all, so the test
 * (run with the project's narrower permissions) spawns this script with -A and checks the JSON
 * it prints. Usage: deno run -A web/_browser_driver.ts <url> <screenshot.png> <prompt>
 *
 * @module
 */
import { chromium } from "playwright-core";

const [url, artifact, prompt] = Deno.args;
const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];
const profile = await Deno.makeTempDir({ prefix: "w4-chromium-" });
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: FLAGS,
});
try {
  const page = ctx.pages()[0] ?? await ctx.newPage();
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  const title = await page.title();
  // record every status text the script shows
  await page.evaluate(() => {
    const w = globalThis as unknown as { __log: string[] };
    w.__log = [];
    const status = document.getElementById("status")!;
    new MutationObserver(() => w.__log.push(status.textContent ?? "")).observe(status, {
      childList: true,
      characterData: true,
      subtree: true,
    });
  });
  await page.fill("#prompt", prompt);
  await page.fill("#steps", "4");
  await page.fill("#seed", "5");
  await page.click("#go");
  await page.waitForSelector("#result:not([hidden])", { timeout: 60_000 });
  const result = {
    title,
    src: await page.getAttribute("#result", "src"),
    log: await page.evaluate(() => (globalThis as unknown as { __log: string[] }).__log),
    caption: await page.textContent("#caption"),
    naturalWidth: await page.$eval("#result", (img) => (img as HTMLImageElement).naturalWidth),
    gallery: await page.locator("#gallery figure").count(),
    errors,
    nojsSrc: null as string | null,
  };
  await page.screenshot({ path: artifact, fullPage: true });

  // without JavaScript the plain form post returns the page with the image
  const p2 = await ctx.newPage();
  await p2.route("**/static/client.js", (r) => r.abort());
  await p2.goto(url);
  await p2.fill("#steps", "2");
  await Promise.all([p2.waitForURL(url), p2.click("#go")]);
  await p2.waitForSelector("#result:not([hidden])");
  result.nojsSrc = await p2.getAttribute("#result", "src");
  console.log(JSON.stringify(result));
} finally {
  await ctx.close();
  await Deno.remove(profile, { recursive: true }).catch(() => {});
}
