// The fleet against a real nats-server (JetStream, loopback, temporary store): the front end
// (FleetEngine behind the unchanged app, real sockets) and workers as subprocesses. Semantics
// tests use the fake engine (web/_fake.ts) in the workers so that job times are known and short;
// the last test runs real workers on the tiny model fixture (WebGPU, llvmpipe in CI).
import assert from "node:assert/strict";
import type { NatsConnection } from "@nats-io/transport-node";
import { HAS_GPU } from "../../kernels/_testing.ts";
import { encodePng, toRgbGrid } from "../../runtime/png.ts";
import { createApp } from "../app.ts";
import { PipelineEngine } from "../engine.ts";
import edge, { resetEdge } from "../edge.ts";
import { jetstream } from "@nats-io/jetstream";
import { connectNats, ensureInfra } from "./connect.ts";
import { dec, enc, type JobRecord, jobSubject } from "./protocol.ts";
import { FleetEngine, type FleetStatus } from "./front.ts";
import {
  type FakeWorkerProcess,
  fakeWorkers,
  NatsServer,
  NO_NATS_REASON,
} from "./_nats_testing.ts";

const PNG_SIG = [137, 80, 78, 71, 13, 10, 26, 10];
const HEARTBEAT_MS = 300; // the fake workers' period (web/fleet/_fake_worker.ts)

/** The fake engine's image for a seed and class, as the PNG a worker stores. */
async function fakePng(seed: number, classId: number): Promise<Uint8Array> {
  const image = new Float32Array(3 * 4 * 4).map((_, i) => Math.sin(seed + classId + i));
  const { rgb, width, height } = toRgbGrid(image, 1, 4);
  return await encodePng(rgb, width, height);
}

interface Fleet {
  server: NatsServer;
  workers: FakeWorkerProcess[];
  nc: NatsConnection;
  engine: FleetEngine;
  url: string;
  close(): Promise<void>;
}

async function fleet(
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

async function status(f: Fleet): Promise<FleetStatus> {
  await new Promise((r) => setTimeout(r, 2 * HEARTBEAT_MS)); // a heartbeat after the last job
  await f.engine.refresh();
  return f.engine.status();
}

const sum = (s: FleetStatus, k: "finished" | "cancelled" | "failed") =>
  s.workers.reduce((a, w) => a + w[k], 0);

const postGen = (url: string, body: unknown, headers: Record<string, string> = {}) =>
  fetch(`${url}/api/generate`, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...headers },
    body: JSON.stringify(body),
  });

/** Read an SSE stream event by event. */
function sse(res: Response) {
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

const opts = { ignore: NO_NATS_REASON !== null, sanitizeResources: false, sanitizeOps: false };
// NO_NATS_REASON (set only without nats-server) says why every test here is skipped.

Deno.test({
  ...opts,
  name:
    "fleet: 30 concurrent requests on 3 workers → each its own PNG or a 429; none lost, none run twice",
  fn: async () => {
    const f = await fleet({ workers: 3, stepMs: 15, maxPending: 12 });
    try {
      const results = await Promise.all(Array.from({ length: 30 }, async (_, i) => {
        const res = await postGen(f.url, { class: i % 3, seed: 1000 + i, steps: 4 });
        const body = new Uint8Array(await res.arrayBuffer());
        if (res.status === 200) {
          assert.deepEqual([...body.subarray(0, 8)], PNG_SIG);
          assert.equal(res.headers.get("X-Seed"), String(1000 + i));
          assert.deepEqual(body, await fakePng(1000 + i, i % 3), `request ${i}: its own image`);
        } else {
          assert.equal(res.status, 429, `request ${i}: status ${res.status}`);
          assert.match(res.headers.get("Retry-After") ?? "", /^\d+$/);
        }
        return res.status;
      }));
      const ok = results.filter((s) => s === 200).length;
      assert.ok(ok >= 12, `at least the ${12} the fleet holds complete, got ${ok}`);
      const s = await status(f);
      assert.equal(s.workers.length, 3, JSON.stringify(s.workers));
      assert.equal(sum(s, "finished"), ok, "each accepted job ran exactly once");
      assert.ok(s.workers.filter((w) => w.finished > 0).length >= 2, "the work was shared");
      assert.equal(s.pending, 0, "the stream is empty");
      const h = await (await fetch(`${f.url}/healthz`)).json();
      assert.equal(h.ready, true);
      assert.equal(h.fleet.workers.length, 3);
      const m = await (await fetch(`${f.url}/api/models`)).json();
      assert.deepEqual(m.models.map((x: { id: string }) => x.id), ["tiny-int4", "tiny-float"]);
      assert.deepEqual(m.fleet.queues["tiny-int4"], { waiting: 0, running: 0 });
    } finally {
      await f.close();
    }
  },
});

Deno.test({
  ...opts,
  name:
    "fleet: a worker SIGKILLed mid-job → the job is redelivered elsewhere, the stream shows retry",
  fn: async () => {
    const f = await fleet({ workers: 1, stepMs: 40, ackWaitS: 1 });
    try {
      const res = await fetch(`${f.url}/api/generate/stream?class=1&seed=77&steps=25`);
      const s = sse(res);
      let ev = await s.next();
      while (ev && ev.event !== "step") ev = await s.next();
      assert.ok(ev, "a step arrived from the first worker");
      const [spare] = await fakeWorkers(f.server.url, 1, { stepMs: 40, ackWaitS: 1 }, "spare");
      f.workers.push(spare);
      await f.workers[0].kill("SIGKILL");
      const t0 = performance.now();
      const seen: string[] = [];
      let done: any = null;
      while ((ev = await s.next())) {
        seen.push(ev.event);
        if (ev.event === "retry") assert.equal(ev.data.attempt, 2);
        if (ev.event === "done") done = ev.data;
        if (ev.event === "error") assert.fail(`error event: ${JSON.stringify(ev.data)}`);
      }
      assert.ok(seen.includes("retry"), `a retry event in ${seen.join(",")}`);
      assert.ok(done, "the client got its image");
      const png = Uint8Array.from(atob(done.image.split(",")[1]), (c) => c.charCodeAt(0));
      assert.deepEqual(png, await fakePng(77, 1));
      const recoveryMs = performance.now() - t0;
      assert.ok(recoveryMs < 10_000, `finished ${recoveryMs.toFixed(0)} ms after the kill`);
      const st = await status(f);
      assert.equal(st.workers.find((w) => w.id === "spare1")?.finished, 1);
      assert.equal(st.pending, 0);
    } finally {
      await f.close();
    }
  },
});

Deno.test({
  ...opts,
  name:
    "fleet: restarting nats-server mid-run → front end and workers reconnect, every job finishes",
  fn: async () => {
    const f = await fleet({ workers: 2, stepMs: 30, ackWaitS: 2 });
    try {
      const pending = Array.from({ length: 6 }, async (_, i) => {
        const res = await postGen(f.url, { class: 0, seed: 500 + i, steps: 12 });
        const body = new Uint8Array(await res.arrayBuffer());
        assert.equal(res.status, 200, `request ${i}: ${new TextDecoder().decode(body)}`);
        assert.deepEqual(body, await fakePng(500 + i, 0));
      });
      await new Promise((r) => setTimeout(r, 400)); // all published, two running
      await f.server.restart();
      await Promise.all(pending);
      const s = await status(f);
      assert.equal(s.workers.length, 2, "both workers are back");
      assert.ok(sum(s, "finished") >= 6, "every job finished (a job cut off may run again)");
      assert.equal(s.pending, 0);
    } finally {
      await f.close();
    }
  },
});

Deno.test({
  ...opts,
  name: "fleet: a client that disconnects stops the denoising loop on the worker",
  fn: async () => {
    const f = await fleet({ workers: 1, stepMs: 20 });
    try {
      const res = await fetch(`${f.url}/api/generate/stream?class=0&steps=100`);
      const s = sse(res);
      let ev = await s.next();
      while (ev && ev.event !== "step") ev = await s.next();
      await s.cancel();
      let st = await status(f);
      for (let i = 0; i < 20 && sum(st, "cancelled") < 1; i++) st = await status(f);
      assert.equal(sum(st, "cancelled"), 1, "the worker stopped the loop");
      assert.equal(sum(st, "finished"), 0);
      assert.equal(st.pending, 0, "the job left the stream");
    } finally {
      await f.close();
    }
  },
});

Deno.test({
  ...opts,
  name:
    "fleet: an idempotency key returns the same image once made; another request with it is a 422",
  fn: async () => {
    const f = await fleet({ workers: 2, stepMs: 10 });
    try {
      const key = { "Idempotency-Key": "order-42" };
      // two at once, then one later, no seed given: one job, one image
      const [a, b] = await Promise.all([
        postGen(f.url, { class: 2, steps: 5 }, key),
        postGen(f.url, { class: 2, steps: 5 }, key),
      ]);
      const c = await postGen(f.url, { class: 2, steps: 5 }, key);
      const bytes = await Promise.all([a, b, c].map(async (r) => {
        assert.equal(r.status, 200);
        return new Uint8Array(await r.arrayBuffer());
      }));
      assert.deepEqual(bytes[0], bytes[1]);
      assert.deepEqual(bytes[0], bytes[2]);
      assert.equal(a.headers.get("X-Seed"), c.headers.get("X-Seed"));
      // the key as a field on the SSE route, same caller, same job
      const text = await (await fetch(`${f.url}/api/generate/stream?class=2&steps=5&key=order-42`))
        .text();
      assert.match(text, /event: done/);
      const other = await postGen(f.url, { class: 1, steps: 5 }, key);
      assert.equal(other.status, 422);
      assert.match((await other.json()).error, /Idempotency-Key was used for another request/);
      const bad = await postGen(f.url, { class: 1 }, { "Idempotency-Key": "has space" });
      assert.equal(bad.status, 400);
      await bad.body?.cancel();
      // another caller's identical key is another job
      const mine = await postGen(f.url, { class: 2, steps: 5, seed: 3 }, {
        ...key,
        Authorization: "Bearer someone-else",
      });
      assert.equal(mine.status, 200);
      assert.deepEqual(new Uint8Array(await mine.arrayBuffer()), await fakePng(3, 2));
      const s = await status(f);
      assert.equal(sum(s, "finished"), 2, "one job per (caller, key)");
    } finally {
      await f.close();
    }
  },
});

Deno.test({
  ...opts,
  name:
    "fleet: a worker validates each job again: a forged one fails its record with 400, runs nothing",
  fn: async () => {
    const f = await fleet({ workers: 1, stepMs: 5 });
    try {
      const infra = await ensureInfra(f.nc);
      const id = "f".repeat(32);
      await infra.jobs.create(id, enc({ state: "queued", fp: "", seed: 1, created: Date.now() }));
      const forged = { id, rev: 1, model: "tiny-int4", classId: 0, seed: 1, steps: 5000, cfg: 2 };
      await jetstream(f.nc).publish(jobSubject("tiny-int4"), enc({ ...forged, preview: false }));
      let rec: JobRecord | null = null;
      for (let i = 0; i < 50 && rec?.state !== "failed"; i++) {
        await new Promise((r) => setTimeout(r, 100));
        const e = await infra.jobs.get(id);
        rec = e ? dec<JobRecord>(e.value) : null;
      }
      assert.equal(rec?.state, "failed");
      assert.equal(rec?.status, 400);
      assert.match(rec?.message ?? "", /steps must be an integer in 1\.\.100/);
      const s = await status(f);
      assert.equal(s.workers[0].finished + s.workers[0].failed, 0, "nothing ran");
      assert.equal(s.pending, 0, "the forged job left the stream");
    } finally {
      await f.close();
    }
  },
});

Deno.test({
  ...opts,
  name:
    "fleet: out of deliveries → a clear 503 (failing worker, and a worker killed on the last try)",
  fn: async () => {
    const f = await fleet({ workers: 1, fail: true, maxDeliver: 2 });
    try {
      const res = await postGen(f.url, { class: 0, seed: 1, steps: 3 });
      assert.equal(res.status, 503);
      assert.match((await res.json()).error, /failed on 2 deliveries/);
      const s = await status(f);
      assert.equal(sum(s, "failed"), 2);
      assert.equal(s.pending, 0);
    } finally {
      await f.close();
    }
    const g = await fleet({ workers: 1, stepMs: 50, ackWaitS: 1, maxDeliver: 1 });
    try {
      const res = await fetch(`${g.url}/api/generate/stream?class=0&steps=40`);
      const s = sse(res);
      let ev = await s.next();
      while (ev && ev.event !== "step") ev = await s.next();
      // a live worker keeps pulling: the server looks at the dead job's deliveries then
      g.workers.push(...await fakeWorkers(g.server.url, 1, { ackWaitS: 1, maxDeliver: 1 }, "x"));
      await g.workers[0].kill("SIGKILL");
      while (ev && ev.event !== "error" && ev.event !== "done") ev = await s.next();
      assert.equal(ev?.event, "error");
      assert.equal(ev.data.status, 503);
      assert.match(ev.data.message, /delivered 1 times and no worker finished it/);
      await g.engine.refresh();
      assert.equal(g.engine.status().pending, 0, "the dead job left the stream");
    } finally {
      await g.close();
    }
  },
});

Deno.test({
  ...opts,
  name: "fleet: bounded stream → 429 with Retry-After; one caller cannot take every slot",
  fn: async () => {
    const f = await fleet({ workers: 1, stepMs: 30, maxPending: 4, perCaller: 2 });
    // a second front end on the same stream: the stream's bound holds across front ends
    const nc2 = await connectNats({ servers: [f.server.url] });
    const engine2 = await FleetEngine.create(nc2, {
      maxPending: 4,
      perCaller: 4,
      heartbeatMs: HEARTBEAT_MS,
      log: () => {},
    });
    const app2 = createApp({ engine: engine2, queue: engine2.queueOptions(), log: () => {} });
    try {
      const as = (who: string, n: number, base: number, via = (r: Request) => fetch(r)) =>
        Array.from({ length: n }, (_, i) =>
          via(
            new Request(`${f.url}/api/generate`, {
              method: "POST",
              headers: { "Content-Type": "application/json", Authorization: `Bearer ${who}` },
              body: JSON.stringify({ class: 0, seed: base + i, steps: 10 }),
            }),
          ));
      const greedy = as("greedy", 5, 0);
      await new Promise((r) => setTimeout(r, 100));
      const polite = as("polite", 2, 100);
      const g = await Promise.all(greedy), p = await Promise.all(polite);
      const codes = (rs: Response[]) => rs.map((r) => r.status).sort();
      assert.deepEqual(codes(g), [200, 200, 429, 429, 429], "greedy: 2 (its limit) accepted");
      assert.deepEqual(codes(p), [200, 200], "polite still gets its two");
      const refused = g.find((r) => r.status === 429)!;
      assert.match(refused.headers.get("Retry-After") ?? "", /^[1-9]\d*$/);
      assert.match((await refused.json()).error, /limit per caller/);
      for (const r of [...g, ...p]) if (!r.bodyUsed) await r.body?.cancel();

      // 4 through this front end and 4 through the other: the stream holds 4
      await engine2.waitForWorkers(5000);
      const both = await Promise.all([
        ...as("a", 2, 200),
        ...as("b", 2, 210),
        ...as("c", 2, 220, (r) => Promise.resolve(app2.fetch(new Request(r)))),
        ...as("d", 2, 230, (r) => Promise.resolve(app2.fetch(new Request(r)))),
      ]);
      const st = codes(both);
      assert.ok(st.every((c) => c === 200 || c === 429), st.join(","));
      assert.ok(st.filter((c) => c === 429).length >= 1, `some refused: ${st.join(",")}`);
      assert.ok(st.filter((c) => c === 200).length >= 4, `the held ones done: ${st.join(",")}`);
      const full = both.find((r) => r.status === 429)!;
      assert.match((await full.json()).error, /jobs are pending \(the limit\)/);
      for (const r of both) if (!r.bodyUsed) await r.body?.cancel();
    } finally {
      engine2.close();
      await nc2.close();
      await f.close();
    }
  },
});

Deno.test({
  ...opts,
  name: "fleet: a lone caller may use the queue beyond its share, less the room kept for others",
  fn: async () => {
    const f = await fleet({ workers: 1, stepMs: 20, maxPending: 8, perCaller: 2 });
    try {
      const rs = await Promise.all(
        Array.from({ length: 8 }, (_, i) => postGen(f.url, { class: 0, seed: i, steps: 5 })),
      );
      const codes = rs.map((r) => r.status).sort();
      assert.deepEqual(codes, [200, 200, 200, 200, 200, 200, 429, 429], "8 − 2 kept for others");
      for (const r of rs) await r.body?.cancel();
    } finally {
      await f.close();
    }
  },
});

Deno.test({
  ...opts,
  name: "fleet: the edge entry with W4_NATS set is a front end of the fleet",
  fn: async () => {
    const f = await fleet({ workers: 1, stepMs: 5 });
    const before = Deno.env.get("W4_NATS");
    Deno.env.set("W4_NATS", f.server.url);
    try {
      const res = await edge.fetch(
        new Request("https://edge.example/api/generate", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ class: 1, seed: 4, steps: 2 }),
        }),
      );
      assert.equal(res.status, 200);
      assert.deepEqual(new Uint8Array(await res.arrayBuffer()), await fakePng(4, 1));
      const h = await (await edge.fetch(new Request("https://edge.example/healthz"))).json();
      assert.equal(h.fleet.workers.length, 1);
    } finally {
      await resetEdge();
      if (before === undefined) Deno.env.delete("W4_NATS");
      else Deno.env.set("W4_NATS", before);
      await f.close();
    }
  },
});

Deno.test({
  name: "fleet: real workers (tiny model fixture, WebGPU) → PNGs, same seed → same bytes on either",
  ignore: NO_NATS_REASON !== null || !HAS_GPU, // needs nats-server and a WebGPU adapter
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const server = await NatsServer.start();
    const nc = await connectNats({ servers: [server.url] });
    const procs: Deno.ChildProcess[] = [];
    const engine = await FleetEngine.create(nc, {
      maxPending: 8,
      perCaller: 8,
      pollMs: 200,
      log: () => {},
    });
    try {
      const fixture = new URL("../../tests/fixtures/tiny_dit.safetensors", import.meta.url)
        .pathname;
      for (const id of ["gpu1", "gpu2"]) {
        procs.push(
          new Deno.Command(Deno.execPath(), {
            args: [
              "run",
              "-A",
              new URL("./worker_main.ts", import.meta.url).pathname,
              "--nats",
              server.url,
              "--model",
              fixture,
              "--id",
              id,
            ],
            stdout: "null",
            stderr: "null",
          }).spawn(),
        );
      }
      await engine.waitForWorkers(60_000);
      for (let i = 0; i < 100 && engine.status().workers.length < 2; i++) {
        await new Promise((r) => setTimeout(r, 300));
        await engine.refresh();
      }
      assert.equal(engine.status().workers.length, 2, "both workers advertise");
      const gen = async (k: string) => {
        const r = await engine.generate({
          model: "tiny_dit",
          classId: 3,
          seed: 11,
          steps: 2,
          cfg: 2,
          sampler: "dpm",
          signal: AbortSignal.timeout(60_000),
          key: k,
        });
        return r.png!;
      };
      const pngs = await Promise.all(["a", "b", "c", "d"].map(gen));
      // the in-process path on the same request
      const local = await PipelineEngine.create([{ id: "tiny_dit", path: fixture }]);
      const r = await local.generate({
        model: "tiny_dit",
        classId: 3,
        seed: 11,
        steps: 2,
        cfg: 2,
        sampler: "dpm",
        signal: AbortSignal.timeout(60_000),
      });
      local.destroy();
      const { rgb, width, height } = toRgbGrid(r.image, 1, 16);
      const want = await encodePng(rgb, width, height);
      for (const p of pngs) {
        assert.deepEqual([...p.subarray(0, 8)], PNG_SIG);
        assert.deepEqual(p, pngs[0], "same image, whichever worker");
        assert.deepEqual(p, want, "the fleet's image is the in-process one, whichever worker");
      }
      await new Promise((r) => setTimeout(r, 2500));
      await engine.refresh();
      const s = engine.status();
      assert.equal(sum(s, "finished"), 4);
    } finally {
      engine.close();
      for (const p of procs) {
        p.kill("SIGKILL");
        await p.status;
      }
      await nc.close();
      await server.dispose();
    }
  },
});
