/**
 * Drives Debian's chromium with playwright-core for web/browser_test.ts, in its own process:
 * playwright-core reads /proc at import, which Deno allows only under --allow-all, so the test
 * (run with the project's narrower permissions) spawns this script with -A and checks the JSON
 * it prints. Usage: deno run -A web/_browser_driver.ts <url> <screenshot.png> <prompt> [mode]
 * Modes: `generate` (default: generate, then the server's 400 and 429 messages on the page, the
 * per-browser gallery, the no-JavaScript post), `login:<token>` (the sign-in form) and `status`
 * (generate once, print the status line the page ends with).
 *
 * @module
 */
import { chromium } from "playwright-core";

const [url, artifact, prompt, mode = "generate"] = Deno.args;
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
  if (mode.startsWith("login:")) {
    console.log(JSON.stringify(await signIn(mode.slice(6))));
  } else if (mode === "status") {
    console.log(JSON.stringify(await finalStatus()));
  } else {
    console.log(JSON.stringify(await generate()));
  }
} finally {
  await ctx.close();
  await Deno.remove(profile, { recursive: true }).catch(() => {});
}

/** Generate `prompt` once; the status line and caption the page ends with. */
async function finalStatus() {
  const page = ctx.pages()[0] ?? await ctx.newPage();
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  await page.fill("#prompt", prompt);
  await page.fill("#steps", "2");
  await page.click("#go");
  await page.waitForFunction(
    () => /^(done|Cannot)/.test(document.getElementById("status")!.textContent ?? ""),
    undefined,
    { timeout: 60_000 },
  );
  return {
    status: await page.textContent("#status"),
    caption: await page.textContent("#caption"),
    errors,
  };
}

/** Status, result and caption as the page shows them after an error. */
async function shownError(page: import("playwright-core").Page) {
  await page.waitForSelector("#status.err", { timeout: 60_000 });
  return {
    status: await page.textContent("#status"),
    resultHidden: await page.$eval("#result", (img) => (img as HTMLImageElement).hidden),
    caption: await page.textContent("#caption"),
  };
}

async function generate() {
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
    // every text the status showed, also several set within one task (one callback then)
    new MutationObserver((records) => {
      for (const r of records) {
        if (r.type === "characterData") w.__log.push(r.target.textContent ?? "");
        for (const n of r.addedNodes) w.__log.push(n.textContent ?? "");
      }
    }).observe(status, {
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

  // a misspelled class: the server's 400 with the closest classes; the old image is cleared
  await page.fill("#prompt", "zzqx");
  await page.click("#go");
  const misspelled = await shownError(page);
  // a full queue: the server's 429 with the wait (a long job holds the only slot)
  const blocker = fetch(`${url}api/generate`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ class: 0, steps: 20 }),
  });
  await new Promise((r) => setTimeout(r, 300));
  await page.fill("#prompt", prompt);
  await page.click("#go");
  const busy = await shownError(page);
  await (await blocker).body?.cancel();
  // recent images are this browser's: kept across a reload, not shown to another browser
  await page.reload();
  await page.waitForSelector("#gallery figure");
  const galleryAfterReload = await page.locator("#gallery figure").count();
  const other = await chromium.launch({ executablePath: "/usr/bin/chromium", args: FLAGS });
  const otherPage = await (await other.newContext()).newPage();
  await otherPage.goto(url);
  await otherPage.waitForLoadState("load");
  const galleryOtherBrowser = await otherPage.locator("#gallery figure").count();
  await other.close();

  // without JavaScript the plain form post returns the page with the image
  const p2 = await ctx.newPage();
  await p2.route("**/static/client.js", (r) => r.abort());
  await p2.goto(url);
  await p2.fill("#steps", "2");
  await Promise.all([p2.waitForURL(url), p2.click("#go")]);
  await p2.waitForSelector("#result:not([hidden])");
  result.nojsSrc = await p2.getAttribute("#result", "src");
  return { ...result, misspelled, busy, galleryAfterReload, galleryOtherBrowser };
}

async function signIn(token: string) {
  const page = ctx.pages()[0] ?? await ctx.newPage();
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  const loginShown = await page.isVisible("#login");
  const genBefore = await page.locator("#gen").count();
  await page.fill("#token", "wrong");
  await Promise.all([page.waitForLoadState("load"), page.click("#signin")]);
  const wrong = await page.textContent("#status");
  await page.fill("#token", token);
  await Promise.all([page.waitForURL(url), page.click("#signin")]);
  await page.waitForSelector("#gen");
  const cookie = (await ctx.cookies()).find((c) => c.name === "w4_session");
  await page.fill("#prompt", prompt);
  await page.fill("#steps", "2");
  await page.click("#go");
  await page.waitForSelector("#result:not([hidden])", { timeout: 60_000 });
  return {
    loginShown,
    genBefore,
    wrong,
    cookie: cookie && { httpOnly: cookie.httpOnly, sameSite: cookie.sameSite },
    src: await page.getAttribute("#result", "src"),
    errors,
  };
}
