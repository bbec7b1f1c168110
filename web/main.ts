/**
 * `deno task serve [--port N] [--model FILE] [options]`: bind the port first (a port in use is
 * one line before any model loads), answer 503 while the default pre-quantized model loads, then
 * serve the page and the API behind the slow-client guard (web/guard.ts). Errors at start-up are
 * one line.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { fail, intOption, runCli } from "../cli/_cli.ts";
import { resolveModel } from "../cli/_resolve.ts";
import { cachedPath, FLOAT_MODEL, modelBaseName, modelFor, PRECISIONS } from "../cli/_models.ts";
import { createApp } from "./app.ts";
import { PipelineEngine, type RegistryEntry } from "./engine.ts";
import { ModelFile } from "../runtime/model_file.ts";
import { hasParoPlan } from "../quant/paro_store.ts";
import { serveGuarded } from "./guard.ts";
import { ModelFiles } from "./model_files.ts";

const USAGE = `Usage: deno task serve [options]

  --port N           port (default: $PORT or 8000)
  --host H           address to listen on (default 127.0.0.1; 0.0.0.0 for every interface,
                     which warns when W4_API_TOKEN is not set)
  --model FILE|ID    serve this model file only (id: its file name without .safetensors); a
                     Nunchaku svdq-* checkpoint is imported once, a hub id <owner>/<name>/<file>
                     downloaded first (deno task pull)
  --models FILE      a JSON registry {"id": "path" or {"path", "vae", "preview"}, ...}; the first
                     is the default
  --vae PATH         with --model, for a latent model: its autoencoder (file or diffusers folder)
  --preview FILE     with --vae: a TAESD-family decoder for the live previews (default the vae)
  --offload-text     FLUX: free the text encoders' GPU memory after each new prompt's encoding
                     (reloaded for the next new prompt; repeated prompts come from the cache):
                     T5-XXL and the transformer are then never resident together. Without it
                     the encoders stay on the GPU, and new prompts skip the reload
  --queue N          requests waiting beyond the running one before 429 (default 8)
  --concurrency N    generations on the GPU at once (default 1)
  --timeout S        time limit of one request in seconds, wait included (default 120)
  --header-timeout S time to receive a request's headers (default 10)
  --body-timeout S   time to receive a request's body after its headers (default 30)
  --per-client N     concurrent connections per client address (default 16)
  --public-gallery   show every visitor's recent images to all (default: each browser its own)
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
      host: { type: "string", default: "127.0.0.1" },
      model: { type: "string" },
      models: { type: "string" },
      vae: { type: "string" },
      preview: { type: "string" },
      queue: { type: "string", default: "8" },
      concurrency: { type: "string", default: "1" },
      timeout: { type: "string", default: "120" },
      "header-timeout": { type: "string", default: "10" },
      "body-timeout": { type: "string", default: "30" },
      "per-client": { type: "string", default: "16" },
      "public-gallery": { type: "boolean", default: false },
      "offload-text": { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) return console.log(USAGE);
  const int = (name: string, v: string, lo: number, hi: number) =>
    intOption(name, v, lo, hi, USAGE);
  const port = int("port", values.port ?? Deno.env.get("PORT") ?? "8000", 0, 65535);
  const queue = {
    limit: int("queue", values.queue, 0, 10000),
    concurrency: int("concurrency", values.concurrency, 1, 64),
    timeoutMs: int("timeout", values.timeout, 1, 86400) * 1000,
  };
  const guard = {
    headerTimeoutMs: int("header-timeout", values["header-timeout"], 1, 3600) * 1000,
    bodyTimeoutMs: int("body-timeout", values["body-timeout"], 1, 3600) * 1000,
    perAddress: int("per-client", values["per-client"], 1, 10000),
    idleTimeoutMs: queue.timeoutMs + 10_000, // no request is silent longer than its time limit
  };
  const token = Deno.env.get("W4_API_TOKEN") || undefined;
  const models = values.models ? await readRegistry(values.models) : undefined;

  // bind before loading anything: a port in use is one line, and clients get 503 while loading
  let handler: (req: Request) => Response | Promise<Response> = () =>
    Response.json({ error: "Cannot generate yet: the model is loading; retry shortly" }, {
      status: 503,
      headers: { "Retry-After": "5" },
    });
  try {
    serveGuarded({
      hostname: values.host,
      port,
      ...guard,
      onListen: ({ hostname, port }) => console.log(`listening on http://${hostname}:${port}/`),
    }, (req) => handler(req));
  } catch (e) {
    if (e instanceof Deno.errors.AddrInUse) {
      throw new RangeError(
        `Cannot listen on ${values.host}:${port}: the port is in use; stop the other server ` +
          "or pass --port N",
      );
    }
    if (e instanceof Deno.errors.AddrNotAvailable || e instanceof Deno.errors.PermissionDenied) {
      throw new RangeError(`Cannot listen on ${values.host}:${port}: ${(e as Error).message}`);
    }
    throw e;
  }
  if (!isLoopback(values.host) && !token) {
    console.warn(
      `warning: serving on ${values.host} without W4_API_TOKEN: anyone who can reach this ` +
        "machine can use its GPU; set W4_API_TOKEN=<secret> to require a token",
    );
  }

  let registry: RegistryEntry[];
  if (values.model) {
    const path = await resolveModel(values.model, (l) => console.log(l)); // file, Nunchaku, hub id
    registry = [{ id: idFor(values.model), path, vae: values.vae, preview: values.preview }];
  } else if (models) registry = models;
  else registry = await defaultRegistry();
  if (values["offload-text"]) registry = registry.map((e) => ({ ...e, offloadText: true }));

  console.log(`loading ${registry[0].path} …`);
  const engine = await PipelineEngine.create(registry);
  const clientJs = await Deno.readTextFile(new URL("./dist/client.js", import.meta.url)).catch(
    () => {
      console.log("no web/dist/client.js: the page works as a plain form (run deno task build)");
      return undefined;
    },
  );
  // on-device generation: the registry's files at /models/<id>, the generator at /static/device.js
  const deviceJs = await Deno.readTextFile(new URL("./dist/device.js", import.meta.url)).catch(
    () => undefined,
  );
  const modelFiles = { files: await ModelFiles.create(registry, engine.models()), deviceJs };
  const cors = Deno.env.get("W4_CORS")?.split(",").map((s) => s.trim()).filter((s) => s);
  const app = createApp({
    engine,
    clientJs,
    token,
    cors,
    queue,
    publicGallery: values["public-gallery"],
    modelFiles,
  });
  const h = engine.health();
  console.log(
    `models: ${
      engine.models().map((m) => `${m.id} (${m.precision})`).join(", ")
    }; device ${h.device}`,
  );
  handler = app.fetch;
  console.log(`serving on http://${values.host}:${port}/`);
}

/** `--models FILE`: a JSON object `{"id": "path", …}` with at least one entry (UsageError else). */
async function readRegistry(file: string): Promise<RegistryEntry[]> {
  let j: unknown;
  try {
    j = JSON.parse(await Deno.readTextFile(file));
  } catch (e) {
    if (e instanceof SyntaxError) {
      fail(`--models ${file} is not JSON (${e.message}); write {"id": "model.safetensors", …}`);
    }
    throw e;
  }
  if (typeof j !== "object" || j === null || Array.isArray(j)) {
    fail(`--models ${file} must be a JSON object {"id": "model.safetensors", …}`);
  }
  const entries = Object.entries(j as Record<string, unknown>);
  if (entries.length === 0) {
    fail(`--models ${file} lists no model: write {"id": "model.safetensors", …}`);
  }
  const str = (v: unknown) => typeof v === "string" && v !== "";
  return entries.map(([id, v]) => {
    if (str(v)) return { id, path: v as string };
    const e = v as Record<string, unknown> | null;
    if (typeof e !== "object" || e === null || Array.isArray(e) || !str(e.path)) {
      fail(
        `--models ${file}: the path of "${id}" must be a non-empty string (or an object ` +
          `{"path": …, "vae"?: …, "preview"?: …})`,
      );
    }
    for (const k of ["vae", "preview"] as const) {
      if (e[k] !== undefined && !str(e[k])) {
        fail(`--models ${file}: the ${k} of "${id}" must be a non-empty string`);
      }
    }
    return {
      id,
      path: e.path as string,
      vae: e.vae as string | undefined,
      preview: e.preview as string | undefined,
    };
  });
}

function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\./.test(host);
}

if (import.meta.main) await runCli(() => main(Deno.args));
