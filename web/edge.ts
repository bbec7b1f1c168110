/**
 * The edge entry: `export default { fetch }`, for hosts that import a module and call its
 * `fetch` (Deno Deploy, `deno serve`, other edge runtimes).
 *
 * - With `W4_GPU_WORKER=https://gpu-host:8000` set, every request is forwarded (streamed both
 *   ways) to that worker, a `deno task serve` on a machine with a GPU: the edge host needs none.
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
    app ??= local();
    try {
      return await (await app).fetch(req);
    } catch (e) {
      app = null; // a failed start is retried on the next request
      console.error(`error: ${(e as Error).message}`);
      return Response.json({ error: "Cannot start the model on this host: see the server log" }, {
        status: 503,
      });
    }
  },
};
