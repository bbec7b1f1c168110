/**
 * `deno task serve [--port N] [--model FILE] [options]`: load the default pre-quantized model,
 * then serve the page and the API with `Deno.serve`. Errors at start-up are one line.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { fail, runCli } from "../cli/_cli.ts";
import { cachedPath, FLOAT_MODEL, modelBaseName, modelFor, PRECISIONS } from "../cli/_models.ts";
import { createApp } from "./app.ts";
import { PipelineEngine, type RegistryEntry } from "./engine.ts";
import { ModelFile } from "../runtime/model_file.ts";
import { hasParoPlan } from "../quant/paro_store.ts";

const USAGE = `Usage: deno task serve [options]

  --port N           port (default: $PORT or 8000)
  --host H           address to listen on (default 0.0.0.0)
  --model FILE       serve this model file only (id: its file name without .safetensors)
  --models FILE      a JSON registry {"id": "path", ...}; the first is the default
  --queue N          requests waiting beyond the running one before 429 (default 8)
  --concurrency N    generations on the GPU at once (default 1)
  --timeout S        time limit of one request in seconds, wait included (default 120)
  --nats URL         serve as the GPU-less front end of a NATS fleet (--nats URL -h: its options)
  -h, --help         this text

Environment: PORT; W4_API_TOKEN (require Authorization: Bearer <token> on /api/*);
W4_CORS (comma-separated allowed origins, * for any).`;

/** The id a file path gets: its base name without .safetensors, made id-safe. */
export function idFor(path: string): string {
  const id = modelBaseName(path).toLowerCase().replace(/[^a-z0-9._-]+/g, "-");
  return id.replace(/^[^a-z0-9]+/, "").slice(0, 64) || "model";
}

/** The default registry: the bundled int4 model (built once if needed), then other built ones. */
export async function defaultRegistry(): Promise<RegistryEntry[]> {
  const int4 = await modelFor("int4", (l) => console.log(l));
  const out: RegistryEntry[] = [{ id: "dit-emoji-int4", path: int4 }];
  const f = await ModelFile.open(int4);
  const sparse = hasParoPlan(f);
  f.close();
  if (sparse) out.push({ id: "dit-emoji-int4-sparse", path: int4, attention: "sparse" });
  for (const p of PRECISIONS) {
    if (p === "int4") continue;
    const candidates = p === "float" ? [FLOAT_MODEL] : [
      new URL(`../models/dit_emoji.${p}.safetensors`, import.meta.url).pathname,
      await cachedPath(FLOAT_MODEL, `${p}.safetensors`),
    ];
    for (const path of candidates) {
      if (await Deno.stat(path).then((s) => s.isFile, () => false)) {
        out.push({ id: `dit-emoji-${p}`, path });
        break;
      }
    }
  }
  return out;
}

async function main(args: string[]): Promise<void> {
  if (args.some((a) => a === "--nats" || a.startsWith("--nats="))) {
    return await (await import("./fleet/serve.ts")).serveFleet(args);
  }
  const { values } = parseArgs({
    args,
    options: {
      port: { type: "string" },
      host: { type: "string", default: "0.0.0.0" },
      model: { type: "string" },
      models: { type: "string" },
      queue: { type: "string", default: "8" },
      concurrency: { type: "string", default: "1" },
      timeout: { type: "string", default: "120" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) return console.log(USAGE);
  const int = (name: string, v: string, lo: number, hi: number) => {
    const x = Number(v);
    if (!Number.isInteger(x) || x < lo || x > hi) {
      fail(`--${name} must be an integer in ${lo}..${hi}, got "${v}"`, USAGE);
    }
    return x;
  };
  const port = int("port", values.port ?? Deno.env.get("PORT") ?? "8000", 0, 65535);
  let registry: RegistryEntry[];
  if (values.model) registry = [{ id: idFor(values.model), path: values.model }];
  else if (values.models) {
    const j = JSON.parse(await Deno.readTextFile(values.models));
    registry = Object.entries(j).map(([id, path]) => ({ id, path: String(path) }));
  } else registry = await defaultRegistry();

  console.log(`loading ${registry[0].path} …`);
  const engine = await PipelineEngine.create(registry);
  const clientJs = await Deno.readTextFile(new URL("./dist/client.js", import.meta.url)).catch(
    () => {
      console.log("no web/dist/client.js: the page works as a plain form (run deno task build)");
      return undefined;
    },
  );
  const cors = Deno.env.get("W4_CORS")?.split(",").map((s) => s.trim()).filter((s) => s);
  const app = createApp({
    engine,
    clientJs,
    token: Deno.env.get("W4_API_TOKEN") || undefined,
    cors,
    queue: {
      limit: int("queue", values.queue, 0, 10000),
      concurrency: int("concurrency", values.concurrency, 1, 64),
      timeoutMs: int("timeout", values.timeout, 1, 86400) * 1000,
    },
  });
  const h = engine.health();
  console.log(
    `models: ${
      engine.models().map((m) => `${m.id} (${m.precision})`).join(", ")
    }; device ${h.device}`,
  );
  Deno.serve({
    port,
    hostname: values.host,
    onListen: ({ hostname, port }) => console.log(`serving on http://${hostname}:${port}/`),
  }, app.fetch);
}

if (import.meta.main) await runCli(() => main(Deno.args));
