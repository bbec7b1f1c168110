// Handler tests through app.request(...): every route and every bad-input case of the issue,
// with a fake engine (no GPU, no sockets).
import assert from "node:assert/strict";
import { GpuDeviceLostError } from "../gpu/errors.ts";
import { FakeEngine } from "./_fake.ts";
import { createApp } from "./app.ts";

const includes = (s: string, part: string, msg?: string) =>
  assert.ok(s.includes(part), msg ?? `expected ${JSON.stringify(part)} in the text`);
const PNG_SIG = [137, 80, 78, 71, 13, 10, 26, 10];
const quiet = () => {};

function setup(opts: Partial<Parameters<typeof createApp>[0]> = {}, stepMs = 0) {
  const engine = new FakeEngine(stepMs);
  const app = createApp({ engine, log: quiet, ...opts });
  return { engine, app };
}

const post = (body: unknown, headers: Record<string, string> = {}) => ({
  method: "POST",
  headers: { "Content-Type": "application/json", ...headers },
  body: typeof body === "string" ? body : JSON.stringify(body),
});

async function expectError(res: Response, status: number, re: RegExp, field?: string) {
  assert.deepEqual(res.status, status);
  assert.match(res.headers.get("Content-Type") ?? "", /application\/json/);
  const j = await res.json();
  assert.match(j.error, re);
  assert(!String(j.error).includes("    at "), "no stack trace in responses");
  if (field) assert.deepEqual(j.field, field);
}

/** Parse a finished SSE body into events. */
async function events(res: Response): Promise<{ event: string; data: any }[]> {
  const text = await res.text();
  return text.trim().split("\n\n").filter((b) => b).map((b) => {
    const ev = b.match(/^event: (.*)$/m)![1], data = b.match(/^data: (.*)$/m)![1];
    return { event: ev, data: JSON.parse(data) };
  });
}

Deno.test("POST /api/generate returns a PNG with seed, steps, precision and timing headers", async () => {
  const { app } = setup();
  const res = await app.request("/api/generate", post({ prompt: "heart", seed: 7, steps: 3 }));
  assert.deepEqual(res.status, 200);
  assert.deepEqual(res.headers.get("Content-Type"), "image/png");
  assert.deepEqual([...new Uint8Array(await res.arrayBuffer()).subarray(0, 8)], PNG_SIG);
  assert.deepEqual(res.headers.get("X-Seed"), "7");
  assert.deepEqual(res.headers.get("X-Steps"), "3");
  assert.deepEqual(res.headers.get("X-Class"), "1");
  assert.deepEqual(res.headers.get("X-Precision"), "int4");
  assert.deepEqual(res.headers.get("X-Model"), "tiny-int4");
  assert.match(res.headers.get("X-Total-Ms")!, /^\d+$/);
  assert.match(res.headers.get("X-Step-Ms")!, /^[\d.]+$/);
});

Deno.test("POST /api/generate: class number, precision and model id pick the model; random seed", async () => {
  const { app } = setup();
  let res = await app.request(
    "/api/generate",
    post({ class: 2, precision: "float", sampler: "ddim", cfg: 2.5 }),
  );
  assert.deepEqual(res.status, 200);
  assert.deepEqual(res.headers.get("X-Precision"), "float");
  assert.deepEqual(res.headers.get("X-Class"), "2");
  const seed = Number(res.headers.get("X-Seed"));
  assert(Number.isInteger(seed) && seed >= 0 && seed <= 0xffffffff);
  res = await app.request("/api/generate", post({ class: 0, model: "tiny-float" }));
  assert.deepEqual(res.headers.get("X-Model"), "tiny-float");
  // form-encoded bodies are accepted too
  res = await app.request("/api/generate", {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: "prompt=cat&steps=2&seed=5",
  });
  assert.deepEqual(res.status, 200);
  assert.deepEqual(res.headers.get("X-Class"), "2");
});

Deno.test("POST /api/generate: each bad field is a 400 naming the field and its range", async () => {
  const { app, engine } = setup();
  const cases: [unknown, string, RegExp][] = [
    [{ prompt: "heart", steps: 0 }, "steps", /steps must be an integer in 1\.\.100/],
    [{ prompt: "heart", steps: 101 }, "steps", /1\.\.100/],
    [{ prompt: "heart", steps: 2.5 }, "steps", /integer/],
    [{ prompt: "heart", steps: "many" }, "steps", /integer/],
    [{ prompt: "heart", seed: -1 }, "seed", /seed must be an integer in 0\.\.4294967295/],
    [{ prompt: "heart", seed: 2 ** 32 }, "seed", /0\.\.4294967295/],
    [{ prompt: "heart", seed: 1.5 }, "seed", /integer/],
    [{ prompt: "x".repeat(201) }, "prompt", /at most 200 characters/],
    [{ prompt: "x".repeat(201), class: 1 }, "prompt", /at most 200/],
    [{ prompt: 42 }, "prompt", /must be a string/],
    [{ prompt: "zebra crossing" }, "prompt", /matches no class/],
    [{}, "prompt", /give prompt .* or class/],
    [{ class: 3 }, "class", /0\.\.2/],
    [{ class: -1 }, "class", /0\.\.2/],
    [{ prompt: "heart", cfg: 0.5 }, "cfg", /cfg must be a number in 1\.\.20/],
    [{ prompt: "heart", cfg: 100 }, "cfg", /1\.\.20/],
    [{ prompt: "heart", precision: "int3" }, "precision", /one of float, int4, nvfp4, w4a16/],
    [{ prompt: "heart", precision: "nvfp4" }, "precision", /nvfp4 is not served: int4, float/],
    [
      { prompt: "heart", precision: "float", model: "tiny-int4" },
      "precision",
      /not served by that model/,
    ],
    [{ prompt: "heart", sampler: "euler" }, "sampler", /one of dpm, ddim, ddpm/],
    [{ prompt: "heart", sampler: "plms" }, "sampler", /one of dpm, ddim, ddpm/],
    [{ prompt: "heart", model: "../../etc/passwd" }, "model", /model id .* not a path/],
    [{ prompt: "heart", model: "/work/main/models/x.safetensors" }, "model", /not a path/],
    [{ prompt: "heart", model: "..\\secret" }, "model", /not a path/],
    [{ prompt: "heart", model: "other-model" }, "model", /one of tiny-int4, tiny-float/],
    [{ prompt: "heart", path: "/etc/passwd" }, "path", /not a known field/],
  ];
  for (const [body, field, re] of cases) {
    const res = await app.request("/api/generate", post(body));
    await expectError(res, 400, re, field);
  }
  assert.deepEqual(engine.started, 0, "no bad request reaches the engine");
});

Deno.test("POST /api/generate: malformed JSON and non-objects are 400; a big body is 413", async () => {
  const { app } = setup({ bodyLimit: 1024 });
  await expectError(
    await app.request("/api/generate", post("{bad json")),
    400,
    /Cannot parse the body/,
  );
  await expectError(await app.request("/api/generate", post("[1,2]")), 400, /JSON object/);
  await expectError(await app.request("/api/generate", post("null")), 400, /JSON object/);
  const big = JSON.stringify({ prompt: "heart", pad: "x".repeat(5000) });
  await expectError(await app.request("/api/generate", post(big)), 413, /over 1024 bytes/);
  // no Content-Length (streamed body): the cap still holds
  const stream = new ReadableStream<Uint8Array>({
    start(c) {
      for (let i = 0; i < 4; i++) c.enqueue(new TextEncoder().encode("x".repeat(400)));
      c.close();
    },
  });
  const req = new Request("http://localhost/api/generate", {
    method: "POST",
    body: stream,
    headers: { "Content-Type": "application/json" },
  });
  await expectError(await app.request(req), 413, /over 1024 bytes/);
});

Deno.test("unknown routes are a 404 JSON", async () => {
  const { app } = setup();
  await expectError(await app.request("/nope"), 404, /Cannot find GET \/nope/);
  await expectError(await app.request("/api/generate"), 404, /Cannot find GET/);
  await expectError(await app.request("/static/client.js"), 404, /deno task build/);
});

Deno.test("GET /api/models, /healthz and /api/openapi.json", async () => {
  const { app } = setup();
  const m = await (await app.request("/api/models")).json();
  assert.deepEqual(m.default, "tiny-int4");
  assert.deepEqual(m.models.map((x: { id: string }) => x.id), ["tiny-int4", "tiny-float"]);
  assert.deepEqual(m.models[0].classes[1], "red heart");
  const h = await app.request("/healthz");
  assert.deepEqual(h.status, 200);
  assert.deepEqual(await h.json(), {
    ready: true,
    device: "fake",
    model: "tiny-int4",
    queue: { running: 0, waiting: 0, limit: 8 },
  });
  const o = await (await app.request("/api/openapi.json")).json();
  assert.deepEqual(o.openapi, "3.1.0");
  assert(o.paths["/api/generate"]);
});

Deno.test("GET / renders the form from the model's classes; the script only when bundled", async () => {
  let { app } = setup();
  let html = await (await app.request("/")).text();
  includes(html, "<!DOCTYPE html>");
  includes(html, '<form id="gen" method="post" action="/"');
  for (const c of ["smiling face", "red heart", "cat face"]) {
    includes(html, `value="${c}"`);
  }
  for (const n of ["steps", "seed", "cfg", "precision", "sampler"]) {
    includes(html, `name="${n}"`);
  }
  assert(!html.includes("<script"));
  ({ app } = setup({ clientJs: "console.log(1)" }));
  html = await (await app.request("/")).text();
  includes(html, '<script type="module" src="/static/client.js">');
  const js = await app.request("/static/client.js");
  assert.deepEqual(js.status, 200);
  assert.match(js.headers.get("Content-Type")!, /javascript/);
});

Deno.test("POST / (a plain form, no JavaScript) returns the page with the image; bad input shows why", async () => {
  const { app } = setup();
  const form = (body: string) => ({
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body,
  });
  let res = await app.request(
    "/",
    form("prompt=red+heart&steps=4&seed=9&cfg=4&precision=int4&sampler=dpm"),
  );
  assert.deepEqual(res.status, 200);
  let html = await res.text();
  assert.match(html, /id="result"[^>]*src="data:image\/png;base64,/);
  includes(html, "red heart · seed 9 · 4 steps · int4");
  res = await app.request("/", form("prompt=heart&steps=500"));
  assert.deepEqual(res.status, 400);
  html = await res.text();
  includes(html, "steps must be an integer in 1..100");
  includes(html, 'value="500"', "the form keeps the values");
  // the server keeps no gallery by default: another visitor does not see this image
  html = await (await app.request("/")).text();
  assert.match(html, /id="gallery" data-scope="browser"><\/div>/);
});

Deno.test("GET /api/generate/stream sends queued, step with previews, done", async () => {
  const { app } = setup({ previewEveryMs: 0 });
  const res = await app.request("/api/generate/stream?prompt=cat&steps=3&seed=4&preview=1");
  assert.deepEqual(res.status, 200);
  assert.deepEqual(res.headers.get("Content-Type"), "text/event-stream");
  const ev = await events(res);
  assert.deepEqual(ev.map((e) => e.event), ["queued", "step", "step", "step", "done"]);
  assert.deepEqual(ev[0].data, { position: 0 });
  assert.deepEqual([ev[1].data.i, ev[1].data.n], [1, 3]);
  assert.match(ev[3].data.preview, /^data:image\/png;base64,/);
  const done = ev[4].data;
  assert.match(done.image, /^data:image\/png;base64,/);
  assert.deepEqual([done.seed, done.steps, done.class, done.precision], [4, 3, 2, "int4"]);
  // no previews unless asked
  const plain = await events(await app.request("/api/generate/stream?class=0&steps=2"));
  assert.deepEqual(plain[1].data.preview, undefined);
});

Deno.test("GET /api/generate/stream: bad params are a 400 JSON before streaming", async () => {
  const { app } = setup();
  await expectError(
    await app.request("/api/generate/stream?prompt=cat&steps=0"),
    400,
    /steps/,
    "steps",
  );
  await expectError(
    await app.request("/api/generate/stream?prompt=cat&model=..%2Fx"),
    400,
    /not a path/,
    "model",
  );
  await expectError(
    await app.request("/api/generate/stream?prompt=cat&seed=abc"),
    400,
    /seed/,
    "seed",
  );
});

Deno.test("a full queue answers 429 with Retry-After (JSON and stream); one job at a time", async () => {
  const { app, engine } = setup({ queue: { concurrency: 1, limit: 1 } }, 20);
  const a = app.request("/api/generate", post({ class: 0, steps: 3 }));
  const b = app.request("/api/generate", post({ class: 1, steps: 3 }));
  await new Promise((r) => setTimeout(r, 5));
  const c = await app.request("/api/generate", post({ class: 2, steps: 3 }));
  await expectError(c, 429, /Cannot queue/);
  assert(Number(c.headers.get("Retry-After")) >= 1);
  const s = await app.request("/api/generate/stream?class=2&steps=3");
  assert.deepEqual(s.status, 429);
  assert.match(s.headers.get("Retry-After")!, /^\d+$/);
  await s.body?.cancel();
  assert.deepEqual((await a).status, 200);
  assert.deepEqual((await b).status, 200);
  assert.deepEqual(engine.maxConcurrent, 1);
});

Deno.test("a request past the time limit is a 504 and its loop stops", async () => {
  const { app, engine } = setup({ queue: { timeoutMs: 60 } }, 20);
  await expectError(
    await app.request("/api/generate", post({ class: 0, steps: 50 })),
    504,
    /time limit/,
  );
  assert.deepEqual(engine.aborted, 1);
  assert.deepEqual(engine.finished, 0);
});

Deno.test("a client that disconnects cancels its generation (stream and POST)", async () => {
  const { app, engine } = setup({}, 10);
  const res = await app.request("/api/generate/stream?class=0&steps=100");
  const reader = res.body!.getReader();
  await reader.read(); // the first event
  await reader.cancel();
  const ac = new AbortController();
  const p = app.request(
    new Request("http://localhost/api/generate", {
      ...post({ class: 1, steps: 100 }),
      signal: ac.signal,
    }),
  );
  setTimeout(() => ac.abort(), 30);
  await Promise.resolve(p).then((r) => r.body?.cancel(), () => {});
  for (let i = 0; i < 100 && engine.aborted < 2; i++) await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(engine.aborted, 2);
  assert.deepEqual(engine.finished, 0);
  assert.deepEqual(app.queue.running, 0);
});

Deno.test("device lost is a 503 and the next request works; unknown errors hide their stack", async () => {
  const { app, engine } = setup();
  engine.failNext = new GpuDeviceLostError("Cannot use the device: lost");
  await expectError(
    await app.request("/api/generate", post({ class: 0, steps: 1 })),
    503,
    /re-initialised/,
  );
  assert.deepEqual((await app.request("/api/generate", post({ class: 0, steps: 1 }))).status, 200);
  engine.failNext = new Error("secret internals at /srv/x.ts:12");
  const res = await app.request("/api/generate", post({ class: 0, steps: 1 }));
  await expectError(res, 500, /^Cannot handle the request: internal error$/);
  engine.failNext = new GpuDeviceLostError("lost");
  const ev = await events(await app.request("/api/generate/stream?class=0&steps=1"));
  assert.deepEqual(ev.at(-1)!.event, "error");
  assert.deepEqual(ev.at(-1)!.data.status, 503);
});

Deno.test("bearer-token auth guards the API and form posts, not the page or /healthz", async () => {
  const { app } = setup({ token: "s3cret" });
  await expectError(
    await app.request("/api/generate", post({ class: 0, steps: 1 })),
    401,
    /Bearer/,
  );
  await expectError(
    await app.request("/api/models", { headers: { Authorization: "Bearer wrong" } }),
    401,
    /Bearer/,
  );
  const ok = await app.request(
    "/api/generate",
    post({ class: 0, steps: 1 }, { Authorization: "Bearer s3cret" }),
  );
  assert.deepEqual(ok.status, 200);
  await ok.body?.cancel();
  assert.deepEqual((await app.request("/healthz")).status, 200);
  assert.deepEqual((await app.request("/")).status, 200);
  const form = await app.request("/", { method: "POST", body: "prompt=cat" });
  assert.deepEqual(form.status, 401);
});

Deno.test("CORS headers only for configured origins", async () => {
  let { app } = setup({ cors: ["https://example.org"] });
  let res = await app.request("/api/models", { headers: { Origin: "https://example.org" } });
  assert.deepEqual(res.headers.get("Access-Control-Allow-Origin"), "https://example.org");
  const pre = await app.request("/api/generate", {
    method: "OPTIONS",
    headers: { Origin: "https://example.org", "Access-Control-Request-Method": "POST" },
  });
  assert(pre.status === 204 || pre.status === 200);
  includes(pre.headers.get("Access-Control-Allow-Methods") ?? "", "POST");
  ({ app } = setup());
  res = await app.request("/api/models", { headers: { Origin: "https://example.org" } });
  assert.deepEqual(res.headers.get("Access-Control-Allow-Origin"), null);
});

Deno.test("the public gallery is opt-in: then the page shows every visitor's recent images", async () => {
  const { app } = setup({ publicGallery: true });
  const res = await app.request("/api/generate", post({ class: 1, steps: 1, seed: 3 }));
  await res.body?.cancel();
  const html = await (await app.request("/")).text();
  assert.match(html, /id="gallery" data-scope="public"><figure><img src="data:image\/png;base64,/);
  includes(html, "red heart · seed 3 · 1 step · int4", "pluralised: 1 step");
});

Deno.test("integer fields are parsed strictly (no 0x5, 1e1, Infinity) in JSON, queries and forms", async () => {
  const { app, engine } = setup();
  for (const v of ["0x5", "1e1", "5.0", "Infinity", "5 steps", "0b101"]) {
    await expectError(
      await app.request("/api/generate", post({ prompt: "heart", steps: v })),
      400,
      /steps must be an integer in 1\.\.100/,
      "steps",
    );
    await expectError(
      await app.request(`/api/generate/stream?class=1&seed=${encodeURIComponent(v)}`),
      400,
      /seed must be an integer/,
      "seed",
    );
  }
  await expectError(
    await app.request("/api/generate", post({ prompt: "heart", cfg: "1e1" })),
    400,
    /cfg must be a number/,
    "cfg",
  );
  assert.equal(engine.started, 0);
  const ok = await app.request(
    "/api/generate",
    post({ prompt: "heart", steps: " 7 ", cfg: "4.5" }),
  );
  assert.equal(ok.headers.get("X-Steps"), "7");
  await ok.body?.cancel();
});

Deno.test("JSON sent as a form (curl -d without Content-Type) is read as JSON", async () => {
  const { app } = setup();
  const res = await app.request("/api/generate", {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: '{"prompt":"red heart","seed":7,"steps":2}',
  });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("X-Seed"), "7");
  await res.body?.cancel();
  // a real form still works, and a body that is neither says what to send
  const form = await app.request("/api/generate", {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: "prompt=heart&steps=2",
  });
  assert.equal(form.status, 200);
  await form.body?.cancel();
  await expectError(
    await app.request("/api/generate", { method: "POST", body: "prompt: heart" }),
    400,
    /Content-Type: application\/json/,
  );
});

Deno.test("a client that closes mid-body gets a 400 and is not logged as an unexpected error", async () => {
  const lines: string[] = [];
  const { app, engine } = setup({ log: (l) => lines.push(l) });
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      c.enqueue(new TextEncoder().encode('{"prompt":'));
    },
    pull(c) {
      c.error(new TypeError("error reading a body from connection"));
    },
  });
  const res = await app.request(
    new Request("http://localhost/api/generate", {
      method: "POST",
      body,
      headers: { "Content-Type": "application/json" },
    }),
  );
  await expectError(res, 400, /closed the connection/);
  assert.deepEqual(lines, [], "nothing logged");
  assert.equal(engine.started, 0);
});

Deno.test("with a token, the page signs in with a form that sets an HttpOnly cookie", async () => {
  const { app } = setup({ token: "s3cret" });
  let html = await (await app.request("/")).text();
  includes(html, 'id="login"');
  assert.ok(!html.includes('id="gen"'), "no generation form before signing in");
  const login = (token: string) =>
    app.request("/login", {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: `token=${token}`,
    });
  const bad = await login("wrong");
  assert.equal(bad.status, 401);
  includes(await bad.text(), "Cannot sign in: wrong token");
  const ok = await login("s3cret");
  assert.equal(ok.status, 303);
  const cookie = ok.headers.get("Set-Cookie") ?? "";
  assert.match(cookie, /^w4_session=[0-9a-f]{64}; HttpOnly; SameSite=Strict; Path=\//);
  assert.ok(!cookie.includes("s3cret"), "the cookie does not hold the token");
  const jar = { Cookie: cookie.split(";")[0] };
  html = await (await app.request("/", { headers: jar })).text();
  includes(html, 'id="gen"');
  const res = await app.request("/api/generate/stream?class=1&steps=1", { headers: jar });
  assert.equal(res.status, 200);
  assert.ok((await events(res)).some((e) => e.event === "done"));
  const forged = await app.request(
    "/api/generate",
    post({ class: 1 }, { Cookie: "w4_session=00" }),
  );
  await expectError(forged, 401, /sign in/);
  const out = await app.request("/logout", { method: "POST", headers: jar });
  assert.match(out.headers.get("Set-Cookie") ?? "", /Max-Age=0/);
});

Deno.test("a full queue's message says how long to wait, pluralised", async () => {
  const { app } = setup({ queue: { concurrency: 1, limit: 0 } }, 30);
  const a = app.request("/api/generate", post({ class: 0, steps: 3 }));
  await new Promise((r) => setTimeout(r, 5));
  const res = await app.request("/api/generate", post({ class: 1, steps: 3 }));
  await expectError(res, 429, /busy and takes no waiting requests; retry in \d+ seconds?$/);
  const s = Number(res.headers.get("Retry-After"));
  assert.ok(s >= 1);
  await (await a).body?.cancel();
});
