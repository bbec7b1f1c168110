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
import { plural } from "../cli/plural.ts";
import { type ModelRoutes, mountModelFiles } from "./model_files.ts";

/** Options of {@linkcode createApp}. */
export interface AppOptions {
  /** The GPU side. */
  engine: Engine;
  /** The queue, or its options (default: 1 at a time, 8 waiting, 120 s per request). */
  queue?: JobQueue | QueueOptions;
  /**
   * When set, `/api/*` and form posts need `Authorization: Bearer <token>` or the session cookie
   * that the page's sign-in form (`POST /login`) sets (HttpOnly, SameSite=Strict).
   */
  token?: string;
  /** Origins allowed by CORS on `/api/*` (`["*"]` for any); none = no CORS headers. */
  cors?: string[];
  /** Largest request body in bytes (default 4096); bigger → 413. */
  bodyLimit?: number;
  /** The bundled client script; absent = the page posts plain forms only. */
  clientJs?: string;
  /** Recent generations kept for the page's gallery (default 12). */
  gallerySize?: number;
  /**
   * Show every visitor's recent generations to every visitor (default false: each browser keeps
   * its own recent images, client-side, and the server keeps none).
   */
  publicGallery?: boolean;
  /** Least milliseconds between two previews in the stream (default 200). */
  previewEveryMs?: number;
  /** Where errors are logged (default console.error). */
  log?: (line: string) => void;
  /**
   * Model files for on-device generation (`GET /models`, `/models/<id>` with Range and ETag,
   * `/static/device.js`; web/model_files.ts); absent: the page generates on the server only.
   */
  modelFiles?: ModelRoutes;
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
  const session = opts.token ? sessionValue(opts.token) : undefined;
  const signedIn = async (header: (n: string) => string | undefined) => {
    if (!opts.token) return true;
    const want = new TextEncoder().encode(`Bearer ${opts.token}`);
    if (sameBytes(new TextEncoder().encode(header("Authorization") ?? ""), want)) return true;
    const cookie = /(?:^|;\s*)w4_session=([0-9a-f]+)/.exec(header("Cookie") ?? "")?.[1] ?? "";
    return sameBytes(new TextEncoder().encode(cookie), new TextEncoder().encode(await session!));
  };
  if (opts.token) {
    const guard = async (
      c: { req: { header: (n: string) => string | undefined } },
      next: () => Promise<void>,
    ) => {
      if (!(await signedIn((n) => c.req.header(n)))) {
        return Response.json({
          error: "Cannot authorise: send Authorization: Bearer <token>, or sign in on the page",
        }, {
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
    app.post("/login", async (c) => {
      const form = new URLSearchParams(await readBody(c.req.raw, bodyLimit));
      const given = new TextEncoder().encode(form.get("token") ?? "");
      if (!sameBytes(given, new TextEncoder().encode(opts.token!))) {
        return c.html(
          renderPage({
            models: engine.models(),
            gallery: [],
            login: true,
            error: "Cannot sign in: wrong token",
          }),
          401,
        );
      }
      const secure = new URL(c.req.url).protocol === "https:" ? "; Secure" : "";
      return new Response(null, {
        status: 303,
        headers: {
          Location: "/",
          "Set-Cookie": `w4_session=${await session}; HttpOnly; SameSite=Strict; Path=/${secure}`,
        },
      });
    });
    app.post("/logout", () =>
      new Response(null, {
        status: 303,
        headers: {
          Location: "/",
          "Set-Cookie": "w4_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        },
      }));
  }

  const run = (p: GenerateParams, signal: AbortSignal, hooks: {
    onQueued?: (position: number) => void;
    onStep?: (
      done: number,
      total: number,
      preview: () => Float32Array | Promise<Float32Array>,
    ) => void;
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
        prompt: p.prompt,
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
    if (!opts.publicGallery) return;
    gallery.unshift(shot);
    gallery.length = Math.min(gallery.length, gallerySize);
  };

  if (opts.modelFiles) mountModelFiles(app, opts.modelFiles, signedIn);

  app.get("/", async (c) =>
    c.html(
      renderPage({
        deviceScript: opts.modelFiles?.deviceJs ? "/static/device.js" : undefined,
        models: engine.models(),
        gallery,
        login: !(await signedIn((n) => c.req.header(n))),
        publicGallery: opts.publicGallery,
        script: opts.clientJs ? "/static/client.js" : undefined,
      }),
    ));

  app.post("/", async (c) => {
    const text = await readBody(c.req.raw, bodyLimit);
    const values = Object.fromEntries(new URLSearchParams(text)) as Record<string, string>;
    const page = (status: number, extra: { result?: Shot; error?: string; notice?: string }) =>
      c.html(
        renderPage({
          models: engine.models(),
          gallery,
          values,
          publicGallery: opts.publicGallery,
          script: opts.clientJs ? "/static/client.js" : undefined,
          deviceScript: opts.modelFiles?.deviceJs ? "/static/device.js" : undefined,
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
      return page(200, { result: shot, notice: r.truncated?.warning });
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
    // `curl -d '{...}'` sends JSON labelled as a form: a body that parses as a JSON object is JSON
    if (ct.startsWith("application/x-www-form-urlencoded") && !isJsonObject(text)) {
      raw = Object.fromEntries(new URLSearchParams(text));
    } else {
      try {
        raw = JSON.parse(text);
      } catch {
        throw new HttpError(
          400,
          "Cannot parse the body: send a JSON object with Content-Type: application/json " +
            "(or a form with Content-Type: application/x-www-form-urlencoded)",
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
                    Promise.resolve(x).then((v) => dataUrl(v, p.model)).then((src) =>
                      send("step", { i, n, preview: src })
                    ),
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
    className: p.prompt ?? p.model.classes[p.classId],
    seed: r.seed ?? p.seed,
    steps: p.steps,
    cfg: p.cfg,
    sampler: p.sampler,
    totalMs: Math.round(r.totalMs),
    stepMs: Math.round(r.stepMs.reduce((a, b) => a + b, 0) / Math.max(1, r.stepMs.length) * 10) /
      10,
    // text-to-image: which encoders cut the prompt, and the warning to show
    ...(r.truncated ? { truncated: r.truncated } : {}),
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
    // e.g. "clip" or "clip,t5": the prompt was cut to those encoders' token limits
    ...(r.truncated
      ? {
        "X-Prompt-Truncated": r.truncated.parts.join(","),
        "X-Prompt-Warning": r.truncated.warning,
      }
      : {}),
  };
}

function caption(p: GenerateParams, r: EngineResult): string {
  return `${p.prompt ?? p.model.classes[p.classId]} · seed ${r.seed ?? p.seed} · ${
    plural(p.steps, "step")
  } · ${p.model.precision} · ${(r.totalMs / 1000).toFixed(1)} s`;
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
    let chunk: ReadableStreamReadResult<Uint8Array>;
    try {
      chunk = await reader.read();
    } catch {
      // the client closed the connection mid-body: an answer nobody reads, not a server error
      throw new HttpError(400, "Cannot read the body: the client closed the connection first");
    }
    const { done, value } = chunk;
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

function isJsonObject(text: string): boolean {
  if (!/^\s*\{/.test(text)) return false;
  try {
    const v = JSON.parse(text);
    return typeof v === "object" && v !== null && !Array.isArray(v);
  } catch {
    return false;
  }
}

/** The session cookie's value for `token`: a digest, so the cookie does not hold the token. */
async function sessionValue(token: string): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(`w4-session:${token}`));
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  let d = a.length ^ b.length;
  for (let i = 0; i < b.length; i++) d |= (a[i] ?? 0) ^ b[i];
  return d === 0;
}
