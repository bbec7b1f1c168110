// A real-browser test: Debian's chromium, driven by playwright-core, against the server on
// loopback: open the page, generate, see the progress events arrive and the final image render;
// the screenshot is saved as out/web_browser_test.png. Then the server's own messages on the page
// (a 400 naming the closest classes, a 429 with the wait) with the old image cleared, the
// per-browser recent gallery, the no-JavaScript form post, and the sign-in form of a server with
// a token (an HttpOnly cookie, then generating works).
// playwright-core runs in a child process (web/_browser_driver.ts, deno run -A): it reads /proc
// at import, which Deno allows only under --allow-all, more than the test command grants.
import assert from "node:assert/strict";
import { HAS_GPU } from "../gpu/_testing.ts";
import { FakeEngine } from "./_fake.ts";
import { createApp } from "./app.ts";
import { buildClient } from "./build.ts";
import { type Engine, PipelineEngine } from "./engine.ts";

const CHROMIUM = "/usr/bin/chromium";
const HAS_CHROMIUM = (() => {
  try {
    return Deno.statSync(CHROMIUM).isFile;
  } catch {
    return false;
  }
})();
/** Why the test is skipped where it is. */
const NO_CHROMIUM_REASON =
  `${CHROMIUM} is absent: install it with apt-get install -y chromium (.ci/run does)`;
if (!HAS_CHROMIUM) console.warn(`skipping the browser test: ${NO_CHROMIUM_REASON}`);

const FIXTURE = new URL("../tests/fixtures/tiny_dit.safetensors", import.meta.url).pathname;
// the tiny DiT makes 4-channel latents: the tiny autoencoder turns them into pixels
const AE = new URL("../tests/fixtures/ae_tiny.safetensors", import.meta.url).pathname;
const DRIVER = new URL("./_browser_driver.ts", import.meta.url).pathname;
const ARTIFACT = new URL("../out/web_browser_test.png", import.meta.url).pathname;

Deno.test({
  name: "browser: the page generates with live progress and renders the image (chromium)",
  ignore: !HAS_CHROMIUM,
  sanitizeResources: false,
  fn: async () => {
    // the real pipeline on the tiny fixture where WebGPU works; a fake engine otherwise
    const engine: Engine & { destroy?: () => void } = HAS_GPU
      ? await PipelineEngine.create([{ id: "tiny", path: FIXTURE, vae: AE }])
      : new FakeEngine(50);
    const app = createApp({
      engine,
      clientJs: await buildClient(null),
      previewEveryMs: 0,
      queue: { concurrency: 1, limit: 0 }, // a second request meets a full queue
    });
    const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
    const url = `http://127.0.0.1:${server.addr.port}/`;
    const prompt = engine.models()[0].classes[1];
    try {
      await Deno.mkdir(ARTIFACT.slice(0, ARTIFACT.lastIndexOf("/")), { recursive: true });
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", DRIVER, url, ARTIFACT, prompt],
        stdout: "piped",
        stderr: "piped",
        env: { NO_COLOR: "1" },
      }).output();
      const stdout = new TextDecoder().decode(out.stdout);
      const stderr = new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 0, `the driver failed:\n${stderr.slice(-3000)}`);
      const r = JSON.parse(stdout.trim().split("\n").at(-1)!);
      assert.equal(r.title, "w4 diffusion");
      assert.match(r.src ?? "", /^data:image\/png;base64,/);
      for (let i = 1; i <= 4; i++) assert.ok(r.log.includes(`step ${i}/4`), `step ${i}: ${r.log}`);
      assert.match(r.log.at(-1) ?? "", /^done in/);
      assert.match(r.caption ?? "", new RegExp(`^${prompt} · seed 5 · 4 steps`));
      assert.equal(r.naturalWidth, engine.models()[0].size, "the PNG decoded in the browser");
      assert.equal(r.gallery, 1, "the result joined the gallery");
      assert.deepEqual(r.errors, []);
      assert.match(r.misspelled.status, /^Cannot generate: prompt matches no class: .*closest: "/);
      assert.equal(r.misspelled.resultHidden, true, "the old image is cleared");
      assert.equal(r.misspelled.caption, "");
      assert.match(r.busy.status, /^Cannot queue the generation: .*retry in \d+ seconds?/);
      assert.equal(r.galleryAfterReload, 1, "this browser keeps its recent images");
      assert.equal(r.galleryOtherBrowser, 0, "another browser does not see them");
      assert.match(r.nojsSrc ?? "", /^data:image\/png;base64,/, "the plain form post works");
      assert.ok(Deno.statSync(ARTIFACT).size > 0, "screenshot saved");
    } finally {
      await server.shutdown();
      engine.destroy?.();
    }
  },
});

Deno.test({
  name: "browser: with W4_API_TOKEN the page signs in with a form, then generates (chromium)",
  ignore: !HAS_CHROMIUM,
  sanitizeResources: false,
  fn: async () => {
    const engine = new FakeEngine(10);
    const app = createApp({ engine, clientJs: await buildClient(null), token: "s3cret" });
    const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
    const url = `http://127.0.0.1:${server.addr.port}/`;
    try {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", DRIVER, url, ARTIFACT, engine.models()[0].classes[1], "login:s3cret"],
        stdout: "piped",
        stderr: "piped",
        env: { NO_COLOR: "1" },
      }).output();
      const stderr = new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 0, `the driver failed:\n${stderr.slice(-3000)}`);
      const r = JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").at(-1)!);
      assert.equal(r.loginShown, true);
      assert.equal(r.genBefore, 0, "no generation form before signing in");
      assert.equal(r.wrong, "Cannot sign in: wrong token");
      assert.deepEqual(r.cookie, { httpOnly: true, sameSite: "Strict" });
      assert.match(r.src ?? "", /^data:image\/png;base64,/, "a signed-in page generates");
      assert.deepEqual(r.errors, []);
    } finally {
      await server.shutdown();
    }
  },
});
