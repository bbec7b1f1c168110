// Loopback tests: the bounded load test (fake engine, real sockets) and the real pipeline
// behind the app on the tiny random-weight fixture (GPU: llvmpipe in CI).
import assert from "node:assert/strict";
import { HAS_GPU, NO_GPU_REASON } from "../gpu/_testing.ts";
import { FakeEngine } from "./_fake.ts";
import { createApp } from "./app.ts";
import { PipelineEngine } from "./engine.ts";
import edge from "./edge.ts";

const FIXTURE = new URL("../tests/fixtures/tiny_dit.safetensors", import.meta.url).pathname;
// the tiny DiT makes 4-channel latents: the tiny autoencoder turns them into pixels
const AE = new URL("../tests/fixtures/ae_tiny.safetensors", import.meta.url).pathname;
const PNG_SIG = [137, 80, 78, 71, 13, 10, 26, 10];

function listen(handler: (req: Request) => Response | Promise<Response>) {
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, handler);
  return { server, url: `http://127.0.0.1:${server.addr.port}` };
}

Deno.test("load: 50 concurrent requests, queue limit 8 → each a PNG or a 429, no 5xx, memory steady", async () => {
  const engine = new FakeEngine(4);
  const app = createApp({ engine, queue: { concurrency: 1, limit: 8 }, log: () => {} });
  const { server, url } = listen(app.fetch);
  try {
    const round = async () => {
      const results = await Promise.all(Array.from({ length: 50 }, async (_, i) => {
        const res = await fetch(`${url}/api/generate`, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ class: i % 3, seed: i, steps: 4 }),
        });
        const body = new Uint8Array(await res.arrayBuffer());
        if (res.status === 200) {
          assert.deepEqual([...body.subarray(0, 8)], PNG_SIG);
          assert.equal(res.headers.get("Content-Type"), "image/png");
        } else {
          assert.equal(res.status, 429, `request ${i}: status ${res.status}`);
          assert.match(res.headers.get("Retry-After") ?? "", /^\d+$/);
        }
        return res.status;
      }));
      const ok = results.filter((s) => s === 200).length;
      assert.equal(ok + results.filter((s) => s === 429).length, 50, "only 200 or 429");
      assert.ok(ok >= 9, `at least the running one and the 8 queued complete, got ${ok}`);
      return ok;
    };
    await round(); // warm-up
    const before = Deno.memoryUsage().rss;
    for (let r = 0; r < 3; r++) await round();
    const grown = (Deno.memoryUsage().rss - before) / 2 ** 20;
    assert.ok(grown < 64, `server memory grew ${grown.toFixed(1)} MiB over 150 requests`);
    assert.equal(app.queue.running, 0);
    assert.equal(app.queue.waiting, 0);
    assert.equal(engine.maxConcurrent, 1, "one generation on the GPU at a time");
    const h = await (await fetch(`${url}/healthz`)).json();
    assert.deepEqual(h.queue, { running: 0, waiting: 0, limit: 8 });
  } finally {
    await server.shutdown();
  }
});

Deno.test("a dropped connection on loopback stops the generation", async () => {
  const engine = new FakeEngine(10);
  const app = createApp({ engine, log: () => {} });
  const { server, url } = listen(app.fetch);
  try {
    const res = await fetch(`${url}/api/generate/stream?class=0&steps=100`);
    const reader = res.body!.getReader();
    await reader.read();
    await reader.cancel();
    for (let i = 0; i < 200 && engine.aborted < 1; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(engine.aborted, 1);
    assert.equal(engine.finished, 0);
  } finally {
    await server.shutdown();
  }
});

Deno.test("edge entry: with W4_GPU_WORKER set it forwards requests (and streams) to the worker", async () => {
  const app = createApp({ engine: new FakeEngine(), log: () => {} });
  const { server, url } = listen(app.fetch);
  const before = Deno.env.get("W4_GPU_WORKER");
  Deno.env.set("W4_GPU_WORKER", url);
  try {
    const res = await edge.fetch(
      new Request("https://edge.example/api/generate", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ class: 1, seed: 3, steps: 2 }),
      }),
    );
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("X-Seed"), "3");
    assert.deepEqual([...new Uint8Array(await res.arrayBuffer()).subarray(0, 8)], PNG_SIG);
    const s = await edge.fetch(
      new Request("https://edge.example/api/generate/stream?class=0&steps=1"),
    );
    assert.match(await s.text(), /event: done/);
    const bad = await edge.fetch(new Request("https://edge.example/api/generate/stream?steps=0"));
    assert.equal(bad.status, 400);
    await bad.body?.cancel();
  } finally {
    if (before === undefined) Deno.env.delete("W4_GPU_WORKER");
    else Deno.env.set("W4_GPU_WORKER", before);
    await server.shutdown();
  }
});

// NO_GPU_REASON says why these are skipped when no WebGPU adapter is present.
Deno.test({
  name: "the real pipeline on the tiny fixture: PNG over loopback, same seed → same bytes, stream",
  ignore: !HAS_GPU,
  sanitizeResources: false,
  fn: async () => {
    const engine = await PipelineEngine.create([{ id: "tiny", path: FIXTURE, vae: AE }]);
    const app = createApp({ engine, previewEveryMs: 0, log: () => {} });
    const { server, url } = listen(app.fetch);
    try {
      const m = await (await fetch(`${url}/api/models`)).json();
      assert.equal(m.models[0].size, 32); // 16×16 latents, decoded 2× by the tiny autoencoder
      assert.equal(m.models[0].classes[3], "class 3");
      const gen = async () => {
        const res = await fetch(`${url}/api/generate`, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ prompt: "class 3", seed: 11, steps: 2, cfg: 2 }),
        });
        assert.equal(res.status, 200, await res.clone().text());
        assert.equal(res.headers.get("X-Class"), "3");
        return new Uint8Array(await res.arrayBuffer());
      };
      const a = await gen(), b = await gen();
      assert.deepEqual([...a.subarray(0, 8)], PNG_SIG);
      assert.deepEqual(a, b, "same request, same image");
      const text =
        await (await fetch(`${url}/api/generate/stream?class=1&steps=2&seed=3&preview=1`))
          .text();
      const names = [...text.matchAll(/^event: (\w+)$/gm)].map((x) => x[1]);
      assert.deepEqual(names, ["queued", "step", "step", "done"]);
      assert.match(text, /"preview":"data:image\/png;base64,/);
      assert.equal((await (await fetch(`${url}/healthz`)).json()).ready, true);
    } finally {
      await server.shutdown();
      engine.destroy();
    }
  },
});
void NO_GPU_REASON;
