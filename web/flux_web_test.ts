/**
 * The web endpoint serving a FLUX model: a text-to-image model takes a free-text prompt (class
 * fields refused), the page shows a prompt box, and the real engine serves the tiny FLUX folder
 * end to end (`POST /api/generate` → PNG; previews while denoising).
 *
 * @module
 */
import assert from "node:assert/strict";
import { HAS_GPU, NO_GPU_REASON } from "../gpu/_testing.ts";
import { FakeEngine } from "./_fake.ts";
import { createApp } from "./app.ts";
import { buildClient } from "./build.ts";
import { type EngineRequest, type EngineResult, type ModelInfo, PipelineEngine } from "./engine.ts";
import { renderPage } from "./page.tsx";
import { parseParams } from "./params.ts";

const CHROMIUM = "/usr/bin/chromium";
const HAS_CHROMIUM = (() => {
  try {
    return Deno.statSync(CHROMIUM).isFile;
  } catch {
    return false;
  }
})();

const FLUX_INFO: ModelInfo = {
  id: "flux-tiny",
  precision: "float",
  attention: "dense",
  classes: [],
  size: 64,
  channels: 3,
  text: true,
};

Deno.test("web: a text-to-image model takes a free-text prompt and refuses classes", () => {
  const p = parseParams({ prompt: "a red apple on a table", steps: "2", seed: "5" }, [FLUX_INFO]);
  assert.equal(p.prompt, "a red apple on a table");
  assert.equal(p.steps, 2);
  assert.throws(() => parseParams({ steps: 2 }, [FLUX_INFO]), {
    name: "HttpError",
    message: /give prompt \(a text description\)/,
  });
  assert.throws(() => parseParams({ prompt: "x", class: 1 }, [FLUX_INFO]), {
    name: "HttpError",
    message: /class is for class-conditional models/,
  });
  assert.throws(() => parseParams({ prompt: "x".repeat(201) }, [FLUX_INFO]), {
    name: "HttpError",
    message: /prompt must be at most 200 characters/,
  });
});

Deno.test("web: the page shows a prompt box for a FLUX model", () => {
  const html = renderPage({ models: [FLUX_INFO], gallery: [] });
  assert.match(html, /FLUX\.1 text-to-image model on WebGPU \(flux-tiny, float\)/);
  assert.match(html, /<label for="prompt">Prompt<\/label>/);
  assert.match(html, /value="a red apple"/);
  assert.doesNotMatch(html, /list="classes"/);
});

Deno.test({
  name: "web: the engine serves the tiny FLUX folder: prompt → PNG, previews while denoising",
  ignore: !HAS_GPU, // NO_GPU_REASON explains the skip
  async fn() {
    if (!HAS_GPU) console.warn(NO_GPU_REASON);
    const engine = await PipelineEngine.create([
      {
        id: "flux-tiny",
        path: new URL("../tests/fixtures/flux_tiny_model", import.meta.url).pathname,
      },
    ]);
    try {
      const m = engine.models()[0];
      assert.equal(m.text, true);
      assert.equal(m.size, 64);
      const previews: number[] = [];
      const r = await engine.generate({
        model: "flux-tiny",
        classId: 0,
        prompt: "a red apple",
        seed: 1,
        steps: 2,
        cfg: 3.5,
        sampler: "dpm",
        signal: new AbortController().signal,
        onStep: async (done, _total, preview) => {
          const img = await preview();
          assert.equal(img.length, 3 * 64 * 64);
          previews.push(done);
        },
      });
      assert.deepEqual(previews, [1, 2]);
      assert.equal(r.image.length, 3 * 64 * 64);
      assert.ok(r.image.every(Number.isFinite));
      const app = createApp({ engine, log: () => {} });
      const res = await app.request("/api/generate", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ prompt: "a red apple", steps: 2, seed: 3 }),
      });
      assert.equal(res.status, 200, await res.clone().text());
      assert.equal(res.headers.get("Content-Type"), "image/png");
      const png = new Uint8Array(await res.arrayBuffer());
      assert.equal(new DataView(png.buffer).getUint32(16), 64);
    } finally {
      engine.destroy();
    }
  },
});

Deno.test({
  name: "web: a prompt longer than CLIP's 77 tokens: X-Prompt-Truncated, SSE done field, page note",
  ignore: !HAS_GPU, // NO_GPU_REASON explains the skip
  async fn() {
    const engine = await PipelineEngine.create([
      {
        id: "flux-tiny",
        path: new URL("../tests/fixtures/flux_tiny_model", import.meta.url).pathname,
        offloadText: true,
      },
    ]);
    // 134 CLIP tokens with the tiny tokenizer (200 characters, the API's limit); T5 keeps 512
    const long = "a red apple on a wooden table beside a window, soft morning light, ".repeat(3)
      .slice(0, 200);
    try {
      const app = createApp({ engine, log: () => {} });
      const post = (prompt: string) =>
        app.request("/api/generate", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ prompt, steps: 1, seed: 3 }),
        });
      const res = await post(long);
      assert.equal(res.status, 200, await res.clone().text());
      assert.equal(res.headers.get("X-Prompt-Truncated"), "clip");
      assert.equal(
        res.headers.get("X-Prompt-Warning"),
        "prompt truncated: CLIP kept 77 of 134 tokens",
      );
      await res.body?.cancel();
      const short = await post("a red apple");
      assert.equal(short.status, 200);
      assert.equal(short.headers.get("X-Prompt-Truncated"), null);
      await short.body?.cancel();

      const q = new URLSearchParams({ prompt: long, steps: "1", seed: "3" });
      const sse = await (await app.request(`/api/generate/stream?${q}`)).text();
      const done = sse.split("\n\n").find((e) => e.startsWith("event: done"));
      assert.ok(done, sse.slice(0, 500));
      const d = JSON.parse(done.slice(done.indexOf("data: ") + 6));
      assert.deepEqual(d.truncated, {
        parts: ["clip"],
        warning: "prompt truncated: CLIP kept 77 of 134 tokens",
      });

      const form = await app.request("/", {
        method: "POST",
        headers: { "Content-Type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({ prompt: long, steps: "1", seed: "3" }).toString(),
      });
      const html = await form.text();
      assert.equal(form.status, 200, html.slice(0, 500));
      assert.match(
        html,
        /<p id="status" class(="")? role="status">prompt truncated: CLIP kept 77 of 134 tokens<\/p>/,
      );
    } finally {
      engine.destroy();
    }
  },
});

Deno.test({
  name: "web (chromium): the page shows the truncation warning beside the result",
  ignore: !HAS_CHROMIUM, // CHROMIUM is absent: apt-get install -y chromium (.ci/run does)
  sanitizeResources: false,
  async fn() {
    // the page's script is under test: an engine that reports a truncated prompt suffices
    class Truncating extends FakeEngine {
      override async generate(req: EngineRequest): Promise<EngineResult> {
        const r = await super.generate(req);
        return {
          ...r,
          truncated: { parts: ["clip"], warning: "prompt truncated: CLIP kept 77 of 134 tokens" },
        };
      }
    }
    const engine = new Truncating(1);
    const app = createApp({ engine, clientJs: await buildClient(null), log: () => {} });
    const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
    try {
      const out = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          new URL("./_browser_driver.ts", import.meta.url).pathname,
          `http://127.0.0.1:${server.addr.port}/`,
          "",
          engine.models()[0].classes[1],
          "status",
        ],
        stdout: "piped",
        stderr: "piped",
        env: { NO_COLOR: "1" },
      }).output();
      const stderr = new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 0, `the driver failed:\n${stderr.slice(-3000)}`);
      const r = JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").at(-1)!);
      assert.match(
        r.status,
        /^done in [\d.]+ s \(prompt truncated: CLIP kept 77 of 134 tokens\)$/,
      );
      assert.deepEqual(r.errors, []);
    } finally {
      await server.shutdown();
    }
  },
});
