/**
 * Shared set-up of the fleet tests: a real nats-server, fake workers as subprocesses, the
 * front end (FleetEngine behind the unchanged app) on a loopback port, and small readers.
 *
 * @module
 */
import type { NatsConnection } from "@nats-io/transport-node";
import { encodePng, toRgbGrid } from "../../runtime/png.ts";
import { createApp } from "../app.ts";
import { connectNats } from "./connect.ts";
import { FleetEngine, type FleetStatus } from "./front.ts";
import {
  type FakeWorkerProcess,
  fakeWorkers,
  NatsServer,
  NO_NATS_REASON,
} from "./_nats_testing.ts";

export const PNG_SIG = [137, 80, 78, 71, 13, 10, 26, 10];
export const HEARTBEAT_MS = 300; // the fake workers' period (web/fleet/_fake_worker.ts)

/** The fake engine's image for a seed and class, as the PNG a worker stores. */
export async function fakePng(seed: number, classId: number): Promise<Uint8Array> {
  const image = new Float32Array(3 * 4 * 4).map((_, i) => Math.sin(seed + classId + i));
  const { rgb, width, height } = toRgbGrid(image, 1, 4);
  return await encodePng(rgb, width, height);
}

export interface Fleet {
  server: NatsServer;
  workers: FakeWorkerProcess[];
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
  },
): Promise<Fleet> {
  const server = await NatsServer.start();
  const nc = await connectNats({ servers: [server.url] });
  const engine = await FleetEngine.create(nc, {
    maxPending: o.maxPending ?? 16,
    perCaller: o.perCaller ?? o.maxPending ?? 16,
    heartbeatMs: HEARTBEAT_MS,
    pollMs: 200,
    log: () => {},
  });
  const workers = await fakeWorkers(server.url, o.workers, o);
  await engine.waitForWorkers(10_000);
  const app = createApp({
    engine,
    queue: engine.queueOptions(60_000),
    previewEveryMs: 0,
    log: () => {},
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

export const opts = {
  ignore: NO_NATS_REASON !== null,
  sanitizeResources: false,
  sanitizeOps: false,
};
// NO_NATS_REASON (set only without nats-server) says why every test here is skipped.
