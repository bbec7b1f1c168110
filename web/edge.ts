/**
 * The edge entry: `export default { fetch }`, for hosts that import a module and call its
 * `fetch` (Deno Deploy, `deno serve`, other edge runtimes).
 *
 * - With `W4_GPU_WORKER=https://gpu-host:8000` set, every request is forwarded (streamed both
 *   ways) to that worker, a `deno task serve` on a machine with a GPU: the edge host needs none.
 * - With `W4_NATS=nats://host:4222` set, this host is a GPU-less front end of a NATS fleet
 *   (`deno task worker` on the GPU hosts; see web/fleet/): options `W4_NATS_CREDS` (a .creds
 *   file), `W4_NATS_TOKEN`, `W4_NATS_PASSWORD` with `W4_NATS_USER`, `W4_QUEUE` (jobs pending
 *   before 429, default 64).
 * - Otherwise the model named by `W4_MODEL` (a file path, default the bundled int4 model) is
 *   loaded on the first request on this host's own WebGPU adapter.
 *
 * `W4_API_TOKEN` and `W4_CORS` work as for `deno task serve`.
 *
 * @example
 * ```sh
 * deno serve --allow-read --allow-env --allow-net web/edge.ts
 * ```
 *
 * @module
 */
import { modelFor } from "../cli/_models.ts";
import { type App, createApp } from "./app.ts";
import { PipelineEngine } from "./engine.ts";
import { idFor } from "./main.ts";

let app: Promise<App> | null = null;
let release: (() => Promise<void>) | null = null;

async function fleet(servers: string): Promise<App> {
  const { connectNats, natsOptionsFrom } = await import("./fleet/connect.ts");
  const { FleetEngine } = await import("./fleet/front.ts");
  const env = (k: string) => Deno.env.get(k) || undefined;
  const nc = await connectNats(
    natsOptionsFrom(
      { nats: servers, "nats-creds": env("W4_NATS_CREDS"), "nats-user": env("W4_NATS_USER") },
      "w4-edge",
    ),
  );
  const engine = await FleetEngine.create(nc, { maxPending: Number(env("W4_QUEUE") ?? 64) });
  release = async () => {
    engine.close();
    await nc.close();
  };
  await engine.waitForWorkers(30_000);
  const clientJs = await Deno.readTextFile(new URL("./dist/client.js", import.meta.url)).catch(
    () => undefined,
  );
  return createApp({
    engine,
    clientJs,
    queue: engine.queueOptions(),
    token: env("W4_API_TOKEN"),
    cors: env("W4_CORS")?.split(",").map((s) => s.trim()).filter((s) => s),
  });
}

/** Drop the app made on the first request (and its NATS connection): the next one makes anew. */
export async function resetEdge(): Promise<void> {
  const r = release;
  app = null;
  release = null;
  await r?.();
}

async function local(): Promise<App> {
  const path = Deno.env.get("W4_MODEL") ?? await modelFor("int4", console.log);
  const engine = await PipelineEngine.create([{ id: idFor(path), path }]);
  const clientJs = await Deno.readTextFile(new URL("./dist/client.js", import.meta.url)).catch(
    () => undefined,
  );
  return createApp({
    engine,
    clientJs,
    token: Deno.env.get("W4_API_TOKEN") || undefined,
    cors: Deno.env.get("W4_CORS")?.split(",").map((s) => s.trim()).filter((s) => s),
  });
}

/** Forward `req` to the GPU worker at `base`, keeping method, headers, body and signal. */
export function forward(req: Request, base: string): Promise<Response> {
  const u = new URL(req.url), target = new URL(u.pathname + u.search, base);
  return fetch(new Request(target, req));
}

export default {
  /** Handle one request. */
  async fetch(req: Request): Promise<Response> {
    const worker = Deno.env.get("W4_GPU_WORKER");
    if (worker) return await forward(req, worker);
    const nats = Deno.env.get("W4_NATS");
    app ??= nats ? fleet(nats) : local();
    try {
      return await (await app).fetch(req);
    } catch (e) {
      await resetEdge(); // a failed start is retried on the next request
      console.error(`error: ${(e as Error).message}`);
      return Response.json({ error: "Cannot start the model on this host: see the server log" }, {
        status: 503,
      });
    }
  },
};
