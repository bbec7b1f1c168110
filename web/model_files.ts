/**
 * Serving the registry's model files to browsers that generate on their own GPU:
 * `GET /models` lists them (id, size, ETag, checksum, what the adapter needs, the model's
 * classes), `GET|HEAD /models/<id>` streams one file with `Range` (one range per request; 416 for
 * a bad or unsatisfiable one), `ETag`, `If-Range` and `If-None-Match`. Only registry ids are
 * served, never a path. `/static/device.js` is the on-device generator's bundle.
 *
 * @module
 */
import type { Hono } from "hono";
import { ModelFile } from "../runtime/model_file.ts";
import { type DeviceRequirements, requirementsOf } from "../runtime/requirements.ts";
import type { ModelInfo, RegistryEntry } from "./engine.ts";
import { MODEL_ID } from "./engine.ts";

/** One servable model file, as `GET /models` lists it. */
export interface ModelFileInfo {
  /** Registry id. */
  id: string;
  /** Where to fetch it: `/models/<id>`. */
  url: string;
  /** Size in bytes. */
  bytes: number;
  /** The file's `checksum` metadata (`fnv1a64:…`), "" for a float file without one. */
  checksum: string;
  /** Its current ETag. */
  etag: string;
  /** The model as `/api/models` describes it (precision, classes, size…). */
  info: ModelInfo;
  /** What a WebGPU adapter needs to run it (checked before any download). */
  requirements: DeviceRequirements;
}

interface Entry {
  path: string;
  checksum: string;
  info: ModelInfo;
  requirements: DeviceRequirements;
}

/** The registry's files, opened once (validated, checksum verified) to read what they need. */
export class ModelFiles {
  #entries = new Map<string, Entry>();

  private constructor() {}

  /**
   * Read each entry's header (the first entry per path and id; sparse-attention entries are
   * left out: the page generates with dense attention).
   */
  static async create(registry: RegistryEntry[], infos: ModelInfo[]): Promise<ModelFiles> {
    const files = new ModelFiles();
    for (const e of registry) {
      if ((e.attention ?? "dense") !== "dense" || files.#entries.has(e.id)) continue;
      if (!MODEL_ID.test(e.id)) throw new RangeError(`Cannot serve model "${e.id}": bad id`);
      const info = infos.find((i) => i.id === e.id);
      if (!info) throw new RangeError(`Cannot serve model "${e.id}": it has no model info`);
      const f = await ModelFile.open(e.path);
      try {
        files.#entries.set(e.id, {
          path: e.path,
          checksum: f.reader.metadata.checksum ?? "",
          info,
          requirements: requirementsOf(f),
        });
      } finally {
        f.close();
      }
    }
    return files;
  }

  /** The files, with sizes and ETags as they are on disk now. */
  async list(): Promise<ModelFileInfo[]> {
    const out: ModelFileInfo[] = [];
    for (const [id, e] of this.#entries) {
      const st = await Deno.stat(e.path);
      out.push({
        id,
        url: `/models/${id}`,
        bytes: st.size,
        checksum: e.checksum,
        etag: etagOf(e.checksum, st),
        info: e.info,
        requirements: e.requirements,
      });
    }
    return out;
  }

  /** The path and ETag of `id`, or undefined for an id not served. */
  async file(id: string): Promise<{ path: string; size: number; etag: string } | undefined> {
    const e = MODEL_ID.test(id) ? this.#entries.get(id) : undefined;
    if (!e) return undefined;
    const st = await Deno.stat(e.path);
    return { path: e.path, size: st.size, etag: etagOf(e.checksum, st) };
  }
}

/** A strong ETag: the checksum's digits, size and modification time (a replaced file changes). */
function etagOf(checksum: string, st: Deno.FileInfo): string {
  const sum = checksum.replace(/^[a-z0-9]+:/, "");
  return `"${sum ? sum + "-" : ""}${st.size.toString(16)}-${
    (st.mtime?.getTime() ?? 0).toString(16)
  }"`;
}

/**
 * Parse a `Range` header against `size`: the one range `[start, end]` (inclusive), or "bad"
 * (malformed, several ranges, or none satisfiable).
 */
export function parseRange(header: string, size: number): [number, number] | "bad" {
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === "" && m[2] === "")) return "bad";
  let start: number, end: number;
  if (m[1] === "") {
    const n = Number(m[2]); // suffix: the last n bytes
    if (n === 0 || size === 0) return "bad";
    start = Math.max(0, size - n);
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === "" ? size - 1 : Math.min(Number(m[2]), size - 1);
    if (m[2] !== "" && Number(m[2]) < start) return "bad";
  }
  if (!Number.isSafeInteger(start) || start >= size) return "bad";
  return [start, end];
}

/** A stream of `length` bytes of `path` from `start`, read in 256 KiB pieces; closes the file. */
async function fileStream(path: string, start: number, length: number) {
  const file = await Deno.open(path, { read: true });
  await file.seek(start, Deno.SeekMode.Start);
  let left = length;
  return new ReadableStream<Uint8Array>({
    async pull(ctrl) {
      if (left <= 0) {
        file.close();
        ctrl.close();
        return;
      }
      const buf = new Uint8Array(Math.min(left, 256 << 10));
      const n = await file.read(buf);
      if (n === null) {
        file.close();
        ctrl.error(new Error(`Cannot read ${path}: it ended early`));
        return;
      }
      left -= n;
      ctrl.enqueue(buf.subarray(0, n));
    },
    cancel() {
      file.close();
    },
  });
}

/** Options of {@linkcode mountModelFiles}. */
export interface ModelRoutes {
  /** The servable files. */
  files: ModelFiles;
  /** The on-device generator's bundle (web/dist/device.js); absent: no `/static/device.js`. */
  deviceJs?: string;
}

/**
 * Add `GET /models`, `GET|HEAD /models/<id>` and `GET /static/device.js` to `app`. `allowed`
 * says whether a request may read the files (the app's sign-in check); a refusal is a 401.
 */
export function mountModelFiles(
  app: Hono,
  routes: ModelRoutes,
  allowed: (header: (name: string) => string | undefined) => Promise<boolean>,
): void {
  const refuse = () =>
    Response.json(
      { error: "Cannot authorise: send Authorization: Bearer <token>, or sign in on the page" },
      { status: 401, headers: { "WWW-Authenticate": "Bearer" } },
    );
  app.get("/models", async (c) => {
    if (!(await allowed((n) => c.req.header(n)))) return refuse();
    return c.json({ models: await routes.files.list() }, 200, { "Cache-Control": "no-cache" });
  });
  app.on(["GET", "HEAD"], "/models/:id", async (c) => {
    if (!(await allowed((n) => c.req.header(n)))) return refuse();
    const id = c.req.param("id");
    const f = await routes.files.file(id);
    if (!f) {
      return c.json({ error: `Cannot find model file "${id}": see GET /models` }, 404);
    }
    const base: Record<string, string> = {
      "Accept-Ranges": "bytes",
      ETag: f.etag,
      "Content-Type": "application/octet-stream",
      "Cache-Control": "no-cache",
    };
    const inm = c.req.header("If-None-Match");
    if (inm && inm.split(",").some((t) => t.trim() === f.etag || t.trim() === "*")) {
      return new Response(null, { status: 304, headers: base });
    }
    const range = c.req.header("Range");
    const ifRange = c.req.header("If-Range");
    const head = c.req.method === "HEAD";
    if (range && (!ifRange || ifRange === f.etag)) {
      const r = parseRange(range, f.size);
      if (r === "bad") {
        return new Response(
          JSON.stringify({
            error: `Cannot serve range "${range}": the file has ${f.size} bytes; ask one ` +
              "range bytes=START-END within it",
          }),
          {
            status: 416,
            headers: {
              ...base,
              "Content-Type": "application/json",
              "Content-Range": `bytes */${f.size}`,
            },
          },
        );
      }
      const [start, end] = r;
      const length = end - start + 1;
      return new Response(head ? null : await fileStream(f.path, start, length), {
        status: 206,
        headers: {
          ...base,
          "Content-Length": String(length),
          "Content-Range": `bytes ${start}-${end}/${f.size}`,
        },
      });
    }
    return new Response(head ? null : await fileStream(f.path, 0, f.size), {
      headers: { ...base, "Content-Length": String(f.size) },
    });
  });
  app.get("/static/device.js", (c) => {
    if (!routes.deviceJs) {
      return c.json({ error: "Cannot find /static/device.js: run deno task build" }, 404);
    }
    return c.body(routes.deviceJs, 200, {
      "Content-Type": "text/javascript; charset=utf-8",
      "Cache-Control": "no-cache",
    });
  });
}
