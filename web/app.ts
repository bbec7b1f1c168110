/**
 * The web endpoint as a Web-standard Hono app (`Request` → `Response`): the page, the JSON/PNG
 * API, the Server-Sent-Events stream, models and health. The GPU side is an injected
 * {@linkcode Engine}, so handler tests run with a fake one and no GPU.
 *
 * @module
 */
import { Hono } from "hono";
import { cors } from "hono/cors";
import { encodePng, toRgbGrid } from "../runtime/png.ts";
import type { Engine, EngineResult, ModelInfo } from "./engine.ts";
import { toHttp } from "./errors.ts";
import { renderPage, type Shot } from "./page.tsx";
import { type GenerateParams, HttpError, idempotencyKey, parseParams } from "./params.ts";
import { JobQueue, type QueueOptions } from "./queue.ts";
import { OPENAPI } from "./openapi.ts";

/** Options of {@linkcode createApp}. */
export interface AppOptions {
  /** The GPU side. */
  engine: Engine;
  /** The queue, or its options (default: 1 at a time, 8 waiting, 120 s per request). */
  queue?: JobQueue | QueueOptions;
  /** When set, `/api/*` and form posts need `Authorization: Bearer <token>`. */
  token?: string;
  /** Origins allowed by CORS on `/api/*` (`["*"]` for any); none = no CORS headers. */
  cors?: string[];
  /** Largest request body in bytes (default 4096); bigger → 413. */
  bodyLimit?: number;
  /** The bundled client script; absent = the page posts plain forms only. */
  clientJs?: string;
  /** Recent generations kept for the page's gallery (default 12). */
  gallerySize?: number;
  /** Least milliseconds between two previews in the stream (default 200). */
  previewEveryMs?: number;
  /** Where errors are logged (default console.error). */
  log?: (line: string) => void;
}

/** The app plus its queue (for tests and `/healthz`). */
export type App = Hono & { queue: JobQueue };

/**
 * Build the app.
 *
 * @example
 * ```ts ignore
 * import { createApp } from "./app.ts";
 * import { PipelineEngine } from "./engine.ts";
 * const engine = await PipelineEngine.create([{ id: "tiny", path: "tests/fixtures/tiny_dit.safetensors" }]);
 * Deno.serve({ port: 8000 }, createApp({ engine }).fetch);
 * ```
 */
export function createApp(opts: AppOptions): App {
  const engine = opts.engine;
  const queue = opts.queue instanceof JobQueue ? opts.queue : new JobQueue(opts.queue);
  const bodyLimit = opts.bodyLimit ?? 4096;
  const log = opts.log ?? console.error;
  const gallery: Shot[] = [];
  const gallerySize = opts.gallerySize ?? 12;
  const previewEveryMs = opts.previewEveryMs ?? 200;
  const app = new Hono() as App;
  app.queue = queue;

  const fail = (e: unknown) => {
    const f = toHttp(e, log);
    return Response.json(
      f.field ? { error: f.message, field: f.field } : { error: f.message },
      { status: f.status, headers: f.headers },
    );
  };
  app.onError((e) => fail(e));
  app.notFound((c) =>
    c.json({ error: `Cannot find ${c.req.method} ${c.req.path}: see /api/openapi.json` }, 404)
  );

  if (opts.cors?.length) {
    app.use(
      "/api/*",
      cors({
        origin: opts.cors.includes("*") ? "*" : opts.cors,
        allowHeaders: ["Content-Type", "Authorization", "Idempotency-Key"],
        exposeHeaders: [
          "X-Seed",
          "X-Steps",
          "X-Class",
          "X-Model",
          "X-Precision",
          "X-Total-Ms",
          "X-Step-Ms",
          "Retry-After",
        ],
      }),
    );
  }
  if (opts.token) {
    const want = new TextEncoder().encode(`Bearer ${opts.token}`);
    const guard = async (
      c: { req: { header: (n: string) => string | undefined } },
      next: () => Promise<void>,
    ) => {
      const got = new TextEncoder().encode(c.req.header("Authorization") ?? "");
      if (!sameBytes(got, want)) {
        return Response.json({ error: "Cannot authorise: send Authorization: Bearer <token>" }, {
          status: 401,
          headers: { "WWW-Authenticate": "Bearer" },
        });
      }
      await next();
    };
    app.use(
      "/api/*",
      async (c, next) => c.req.method === "OPTIONS" ? await next() : await guard(c, next),
    );
    app.post("/", guard);
  }

  const run = (p: GenerateParams, signal: AbortSignal, hooks: {
    onQueued?: (position: number) => void;
    onStep?: (done: number, total: number, preview: () => Float32Array) => void;
    onRetry?: (attempt: number) => void;
    headers?: Headers;
    /** The client's address (Deno.serve's info), the caller when no Authorization is sent. */
    remote?: string;
  } = {}) => {
    const key = p.key ?? idempotencyKey(hooks.headers?.get("Idempotency-Key"), "Idempotency-Key");
    const caller = hooks.headers?.get("Authorization") ?? hooks.remote;
    return queue.run((s) =>
      engine.generate({
        model: p.model.id,
        classId: p.classId,
        seed: p.seed,
        steps: p.steps,
        cfg: p.cfg,
        sampler: p.sampler,
        signal: s,
        onStep: hooks.onStep,
        ...(key ? { key } : {}),
        ...(caller ? { caller } : {}),
        ...(hooks.onRetry ? { onRetry: hooks.onRetry } : {}),
      }), { signal, onQueued: hooks.onQueued });
  };

  const remember = (shot: Shot) => {
    gallery.unshift(shot);
    gallery.length = Math.min(gallery.length, gallerySize);
  };

  app.get(
    "/",
    (c) =>
      c.html(
        renderPage({
          models: engine.models(),
          gallery,
          script: opts.clientJs ? "/static/client.js" : undefined,
        }),
      ),
  );

  app.post("/", async (c) => {
    const text = await readBody(c.req.raw, bodyLimit);
    const values = Object.fromEntries(new URLSearchParams(text)) as Record<string, string>;
    const page = (status: number, extra: { result?: Shot; error?: string }) =>
      c.html(
        renderPage({
          models: engine.models(),
          gallery,
          values,
          script: opts.clientJs ? "/static/client.js" : undefined,
          ...extra,
        }),
        status as 200,
      );
    try {
      const p = parseParams(values, engine.models());
      const r = await run(p, c.req.raw.signal, {
        headers: c.req.raw.headers,
        remote: remoteOf(c.env),
      });
      const shot = { src: await imageUrl(r, p.model), caption: caption(p, r) };
      remember(shot);
      return page(200, { result: shot });
    } catch (e) {
      const f = toHttp(e, log);
      return page(f.status === 499 ? 400 : f.status, { error: f.message });
    }
  });

  app.get("/static/client.js", (c) => {
    if (!opts.clientJs) {
      throw new HttpError(404, "Cannot find /static/client.js: run deno task build");
    }
    return c.body(opts.clientJs, 200, {
      "Content-Type": "text/javascript; charset=utf-8",
      "Cache-Control": "no-cache",
    });
  });

  app.post("/api/generate", async (c) => {
    const ct = c.req.header("Content-Type") ?? "";
    const text = await readBody(c.req.raw, bodyLimit);
    let raw: unknown;
    if (ct.startsWith("application/x-www-form-urlencoded")) {
      raw = Object.fromEntries(new URLSearchParams(text));
    } else {
      try {
        raw = JSON.parse(text);
      } catch {
        throw new HttpError(
          400,
          "Cannot parse the body: send a JSON object (Content-Type: application/json)",
        );
      }
    }
    const p = parseParams(raw, engine.models());
    const r = await run(p, c.req.raw.signal, {
      headers: c.req.raw.headers,
      remote: remoteOf(c.env),
    });
    const png = r.png ?? await encodePng(...grid(r.image, p.model.size));
    remember({ src: pngDataUrl(png), caption: caption(p, r) });
    return new Response(png as Uint8Array<ArrayBuffer>, {
      headers: { "Content-Type": "image/png", ...resultHeaders(p, r) },
    });
  });

  app.get("/api/generate/stream", (c) => {
    const p = parseParams(Object.fromEntries(new URL(c.req.url).searchParams), engine.models());
    queue.assertRoom(); // a full queue is a plain 429, before the stream starts
    const ac = new AbortController();
    const reqSignal = c.req.raw.signal;
    const gone = () => ac.abort(new DOMException("the client went away", "AbortError"));
    reqSignal.addEventListener("abort", gone, { once: true });
    const enc = new TextEncoder();
    const body = new ReadableStream<Uint8Array>({
      start: (ctrl) => {
        const send = (event: string, data: unknown) => {
          if (ac.signal.aborted) return;
          try {
            ctrl.enqueue(enc.encode(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`));
          } catch {
            gone();
          }
        };
        let last = -Infinity;
        const pending: Promise<void>[] = [];
        (async () => {
          try {
            const r = await run(p, ac.signal, {
              headers: c.req.raw.headers,
              remote: remoteOf(c.env),
              onRetry: (attempt) => send("retry", { attempt }),
              onQueued: (position) => send("queued", { position }),
              onStep: (i, n, preview) => {
                const now = performance.now();
                if (p.preview && (now - last >= previewEveryMs || i === n)) {
                  last = now;
                  const x = preview();
                  pending.push(
                    dataUrl(x, p.model).then((src) => send("step", { i, n, preview: src })),
                  );
                } else send("step", { i, n });
              },
            });
            await Promise.all(pending);
            const src = await imageUrl(r, p.model);
            remember({ src, caption: caption(p, r) });
            send("done", { image: src, ...meta(p, r) });
          } catch (e) {
            const f = toHttp(e, log);
            if (f.status !== 499) send("error", { message: f.message, status: f.status });
          } finally {
            reqSignal.removeEventListener("abort", gone);
            try {
              ctrl.close();
            } catch { /* already closed */ }
          }
        })();
      },
      cancel: gone,
    });
    return new Response(body, {
      headers: {
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
      },
    });
  });

  app.get(
    "/api/models",
    (c) =>
      c.json({
        default: engine.models()[0].id,
        models: engine.models(),
        ...(engine.status ? { fleet: engine.status() } : {}),
      }),
  );
  app.get("/api/openapi.json", (c) => c.json(OPENAPI));
  app.get("/healthz", (c) => {
    const h = engine.health();
    return c.json(
      {
        ready: h.ready,
        device: h.device,
        model: engine.models()[0].id,
        queue: { running: queue.running, waiting: queue.waiting, limit: queue.limit },
        ...(engine.status ? { fleet: engine.status() } : {}),
      },
      h.ready ? 200 : 503,
    );
  });
  return app;
}

function meta(p: GenerateParams, r: EngineResult) {
  return {
    model: p.model.id,
    precision: p.model.precision,
    class: p.classId,
    className: p.model.classes[p.classId],
    seed: r.seed ?? p.seed,
    steps: p.steps,
    cfg: p.cfg,
    sampler: p.sampler,
    totalMs: Math.round(r.totalMs),
    stepMs: Math.round(r.stepMs.reduce((a, b) => a + b, 0) / Math.max(1, r.stepMs.length) * 10) /
      10,
  };
}

function resultHeaders(p: GenerateParams, r: EngineResult): Record<string, string> {
  const m = meta(p, r);
  return {
    "X-Seed": String(m.seed),
    "X-Steps": String(m.steps),
    "X-Class": String(m.class),
    "X-Model": m.model,
    "X-Precision": m.precision,
    "X-Total-Ms": String(m.totalMs),
    "X-Step-Ms": String(m.stepMs),
    "Server-Timing": `generate;dur=${m.totalMs}`,
  };
}

function caption(p: GenerateParams, r: EngineResult): string {
  return `${p.model.classes[p.classId]} · seed ${
    r.seed ?? p.seed
  } · ${p.steps} steps · ${p.model.precision} · ${(r.totalMs / 1000).toFixed(1)} s`;
}

/** The client's IP when the app runs under `Deno.serve` (its handler info is Hono's env). */
function remoteOf(env: unknown): string | undefined {
  const a = (env as { remoteAddr?: { hostname?: unknown } } | undefined)?.remoteAddr;
  return typeof a?.hostname === "string" ? a.hostname : undefined;
}

/** A result's image as a data URL: its PNG when the engine made one (a fleet worker). */
async function imageUrl(r: EngineResult, m: ModelInfo): Promise<string> {
  return r.png ? pngDataUrl(r.png) : await dataUrl(r.image, m);
}

function grid(image: Float32Array, size: number): [Uint8Array, number, number] {
  const { rgb, width, height } = toRgbGrid(image, 1, size);
  return [rgb, width, height];
}

async function dataUrl(image: Float32Array, m: ModelInfo): Promise<string> {
  const { rgb, width, height } = toRgbGrid(image, 1, m.size);
  return pngDataUrl(await encodePng(rgb, width, height));
}

function pngDataUrl(png: Uint8Array): string {
  let s = "";
  for (let i = 0; i < png.length; i += 0x8000) {
    s += String.fromCharCode(...png.subarray(i, i + 0x8000));
  }
  return `data:image/png;base64,${btoa(s)}`;
}

/** Read a request body as text, refusing more than `limit` bytes with a 413. */
async function readBody(req: Request, limit: number): Promise<string> {
  const tooBig = () => new HttpError(413, `Cannot read the body: it is over ${limit} bytes`);
  const len = Number(req.headers.get("Content-Length") ?? "0");
  if (len > limit) throw tooBig();
  if (!req.body) return "";
  const reader = req.body.getReader();
  const parts: Uint8Array[] = [];
  let n = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    n += value.length;
    if (n > limit) {
      await reader.cancel();
      throw tooBig();
    }
    parts.push(value);
  }
  const all = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    all.set(p, o);
    o += p.length;
  }
  return new TextDecoder().decode(all);
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  let d = a.length ^ b.length;
  for (let i = 0; i < b.length; i++) d |= (a[i] ?? 0) ^ b[i];
  return d === 0;
}
