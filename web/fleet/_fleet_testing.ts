/**
 * Shared set-up of the fleet tests: a real nats-server, fake workers as subprocesses, the
 * front end (FleetEngine behind the unchanged app) on a loopback port, and small readers.
 *
 * @module
 */
import type { NatsConnection } from "@nats-io/transport-node";
import { encodePng, toRgbGrid } from "../../runtime/png.ts";
import { createApp } from "../app.ts";
import { PipelineEngine } from "../engine.ts";
import { idFor } from "../main.ts";
import { connectNats } from "./connect.ts";
import { FleetEngine, type FleetStatus } from "./front.ts";
import { NatsServer, NO_NATS_REASON, startWorkers, type WorkerProcess } from "./_nats_testing.ts";

export const PNG_SIG = [137, 80, 78, 71, 13, 10, 26, 10];
export const HEARTBEAT_MS = 300; // the fake workers' period (web/fleet/_fake_worker.ts)

/** The fake engine's image for a seed and class, as the PNG a worker stores. */
export async function fakePng(seed: number, classId: number): Promise<Uint8Array> {
  const image = new Float32Array(3 * 4 * 4).map((_, i) => Math.sin(seed + classId + i));
  const { rgb, width, height } = toRgbGrid(image, 1, 4);
  return await encodePng(rgb, width, height);
}

/** The bundled INT4 model that the real workers of the tests serve, and its id there. */
export const BUNDLED = new URL("../../models/dit_emoji.int4.safetensors", import.meta.url).pathname;
export const BUNDLED_ID = idFor(BUNDLED);

/** A request of the real-model tests (cfg and sampler sent explicitly). */
export interface RealRequest {
  classId: number;
  seed: number;
  steps: number;
}
export const CFG = 4, SAMPLER = "dpm";

/**
 * The in-process engine's PNG for each request on `model` (what `deno task serve` alone returns),
 * keyed by {@linkcode reqKey}.
 */
export async function localPngs(
  model: string,
  reqs: RealRequest[],
): Promise<Map<string, Uint8Array>> {
  const engine = await PipelineEngine.create([{ id: idFor(model), path: model }]);
  const out = new Map<string, Uint8Array>();
  try {
    const size = engine.models()[0].size;
    for (const q of reqs) {
      const r = await engine.generate({
        model: idFor(model),
        classId: q.classId,
        seed: q.seed,
        steps: q.steps,
        cfg: CFG,
        sampler: SAMPLER,
        signal: AbortSignal.timeout(120_000),
      });
      const { rgb, width, height } = toRgbGrid(r.image, 1, size);
      out.set(reqKey(q), await encodePng(rgb, width, height));
    }
  } finally {
    engine.destroy();
  }
  return out;
}

export const reqKey = (q: RealRequest) => `${q.classId}/${q.seed}/${q.steps}`;

/**
 * Decode a PNG as `encodePng` writes it (8-bit RGB, one IDAT or more): its size and pixels;
 * throws on a bad signature, chunk, filter type or data length.
 */
export async function readPng(
  png: Uint8Array,
): Promise<{ width: number; height: number; rgb: Uint8Array }> {
  if (PNG_SIG.some((b, i) => png[i] !== b)) throw new Error("not a PNG: bad signature");
  const v = new DataView(png.buffer, png.byteOffset, png.byteLength);
  let at = 8, width = 0, height = 0, end = false;
  const idat: Uint8Array<ArrayBuffer>[] = [];
  while (at + 12 <= png.length && !end) {
    const len = v.getUint32(at), type = new TextDecoder().decode(png.subarray(at + 4, at + 8));
    const data = png.subarray(at + 8, at + 8 + len);
    if (data.length !== len) throw new Error(`PNG chunk ${type} is cut off`);
    if (type === "IHDR") {
      width = v.getUint32(at + 8);
      height = v.getUint32(at + 12);
      if (data[8] !== 8 || data[9] !== 2) throw new Error("PNG is not 8-bit RGB");
    } else if (type === "IDAT") idat.push(data.slice());
    else if (type === "IEND") end = true;
    at += 12 + len;
  }
  if (!end || width === 0 || idat.length === 0) throw new Error("PNG lacks IHDR, IDAT or IEND");
  const raw = new Uint8Array(
    await new Response(new Blob(idat).stream().pipeThrough(new DecompressionStream("deflate")))
      .arrayBuffer(),
  );
  const row = 1 + width * 3;
  if (raw.length !== height * row) {
    throw new Error(`PNG data: ${raw.length} B, not ${height * row}`);
  }
  const rgb = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    if (raw[y * row] !== 0) throw new Error(`PNG row ${y}: filter ${raw[y * row]} (expected 0)`);
    rgb.set(raw.subarray(y * row + 1, (y + 1) * row), y * width * 3);
  }
  return { width, height, rgb };
}

export interface Fleet {
  server: NatsServer;
  workers: WorkerProcess[];
  nc: NatsConnection;
  engine: FleetEngine;
  url: string;
  close(): Promise<void>;
}

export async function fleet(
  o: {
    workers: number;
    stepMs?: number;
    ackWaitS?: number;
    maxDeliver?: number;
    fail?: boolean;
    maxPending?: number;
    perCaller?: number;
    /** Real workers (web/fleet/worker_main.ts) on this model file instead of fake ones. */
    model?: string;
  },
): Promise<Fleet> {
  const server = await NatsServer.start();
  const nc = await connectNats({ servers: [server.url] });
  const engine = await FleetEngine.create(nc, {
    maxPending: o.maxPending ?? 16,
    perCaller: o.perCaller ?? o.maxPending ?? 16,
    heartbeatMs: HEARTBEAT_MS,
    pollMs: 200,
    // a request that found the queue unreachable shows in the test output, where CI keeps it
    log: (l: string) => /unreachable/.test(l) && console.error(l),
  });
  let workers: WorkerProcess[];
  try {
    workers = await startWorkers(server.url, o.workers, o, "w", o.model);
    await engine.waitForWorkers(10_000);
    for (let i = 0; i < 50 && engine.status().workers.length < o.workers; i++) {
      await new Promise((r) => setTimeout(r, 100));
      await engine.refresh();
    }
  } catch (e) {
    engine.close();
    await nc.close();
    await server.dispose();
    throw e;
  }
  const app = createApp({
    engine,
    queue: engine.queueOptions(60_000),
    previewEveryMs: 0,
    // an unexpected failure (a 500) shows in the test output, where CI keeps it
    log: (l: string) => /^(unexpected )?error/.test(l) && console.error(`app: ${l}`),
  });
  const http = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
  const f: Fleet = {
    server,
    workers,
    nc,
    engine,
    url: `http://127.0.0.1:${http.addr.port}`,
    async close() {
      await http.shutdown();
      engine.close();
      await Promise.all(f.workers.map((w) => w.kill()));
      await nc.close();
      await server.dispose();
    },
  };
  return f;
}

export async function status(f: Fleet): Promise<FleetStatus> {
  await new Promise((r) => setTimeout(r, 2 * HEARTBEAT_MS)); // a heartbeat after the last job
  await f.engine.refresh();
  return f.engine.status();
}

export const sum = (s: FleetStatus, k: "finished" | "cancelled" | "failed") =>
  s.workers.reduce((a, w) => a + w[k], 0);

export const postGen = (url: string, body: unknown, headers: Record<string, string> = {}) =>
  fetch(`${url}/api/generate`, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...headers },
    body: JSON.stringify(body),
  });

/** Read an SSE stream event by event. */
export function sse(res: Response) {
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  return {
    async next(): Promise<{ event: string; data: any } | null> {
      for (;;) {
        const at = buf.indexOf("\n\n");
        if (at >= 0) {
          const block = buf.slice(0, at);
          buf = buf.slice(at + 2);
          return {
            event: block.match(/^event: (.*)$/m)![1],
            data: JSON.parse(block.match(/^data: (.*)$/m)![1]),
          };
        }
        const { value, done } = await reader.read();
        if (done) return null;
        buf += value;
      }
    },
    cancel: () => reader.cancel(),
  };
}

/**
 * The rest of a stream whose worker was just killed: the events' names, and the image of its
 * `done` event (null if none). Throws on an `error` event or a `retry` that is not the second
 * attempt.
 */
export async function restAfterKill(
  s: ReturnType<typeof sse>,
): Promise<{ seen: string[]; png: Uint8Array | null }> {
  const seen: string[] = [];
  let png: Uint8Array | null = null;
  for (let ev = await s.next(); ev; ev = await s.next()) {
    seen.push(ev.event);
    if (ev.event === "retry" && ev.data.attempt !== 2) {
      throw new Error(`retry event with attempt ${ev.data.attempt}, expected 2`);
    }
    if (ev.event === "error") throw new Error(`error event: ${JSON.stringify(ev.data)}`);
    if (ev.event === "done") {
      png = Uint8Array.from(atob(ev.data.image.split(",")[1]), (c) => c.charCodeAt(0));
    }
  }
  return { seen, png };
}

export const opts = {
  ignore: NO_NATS_REASON !== null,
  sanitizeResources: false,
  sanitizeOps: false,
};
// NO_NATS_REASON (set only without nats-server) says why every test here is skipped.
