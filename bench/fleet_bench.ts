/**
 * The NATS fleet: throughput and p50/p95 latency with 1, 2, 3 workers, the per-job overhead of
 * the queue against the in-process path, and the recovery time after a worker is SIGKILLed.
 * Starts its own nats-server (loopback, temporary store) and its workers as subprocesses; all
 * requests go over HTTP to the front end (the unchanged app over {@linkcode FleetEngine}).
 *
 *   deno task bench:fleet [--jobs N] [--steps N] [--step-ms MS] [--model FILE] [--ack-wait S]
 *
 * Default workers use the fake engine (web/_fake.ts: `--step-ms` per step, no GPU): the figures
 * are then the queue's own cost and scaling. `--model FILE` runs real workers (`deno task worker`)
 * on that model file instead, on this machine's WebGPU adapter.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { createApp } from "../web/app.ts";
import { FakeEngine } from "../web/_fake.ts";
import { type Engine, PipelineEngine } from "../web/engine.ts";
import { idFor } from "../web/main.ts";
import { connectNats } from "../web/fleet/connect.ts";
import { FleetEngine } from "../web/fleet/front.ts";
import { NatsServer, WorkerProcess } from "../web/fleet/_nats_testing.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    jobs: { type: "string", default: "30" },
    steps: { type: "string", default: "10" },
    "step-ms": { type: "string", default: "20" },
    model: { type: "string" },
    "ack-wait": { type: "string", default: "2" },
    small: { type: "boolean", default: false },
  },
});
const jobs = Number(values.jobs), steps = Number(values.steps), stepMs = Number(values["step-ms"]);
const ackWaitS = Number(values["ack-wait"]);
const model = values.model;
const heartbeatMs = model ? 2000 : 300;

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p / 100 * s.length))];
};

/** A worker subprocess: a fake one, or `worker_main.ts` on the model file. */
function spawnWorker(
  url: string,
  id: string,
  ms = stepMs,
): { ready: Promise<void>; kill(): Promise<void> } {
  if (!model) {
    const w = new WorkerProcess(url, id, { stepMs: ms, ackWaitS });
    return { ready: w.ready(), kill: () => w.kill() };
  }
  const p = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("../web/fleet/worker_main.ts", import.meta.url).pathname,
      "--nats",
      url,
      "--model",
      model,
      "--id",
      id,
      "--ack-wait",
      String(ackWaitS),
    ],
    stdout: "null",
    stderr: "null",
  }).spawn();
  return {
    ready: Promise.resolve(),
    kill: async () => {
      p.kill("SIGKILL");
      await p.status;
    },
  };
}

async function request(url: string, i: number, n = steps): Promise<number> {
  const t0 = performance.now();
  const res = await fetch(`${url}/api/generate`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ class: 0, seed: i, steps: n, cfg: 2 }),
  });
  await res.arrayBuffer();
  if (res.status !== 200) throw new Error(`request ${i}: HTTP ${res.status}`);
  return performance.now() - t0;
}

/** All `n` requests at once: wall time and each latency. */
async function burst(url: string, n: number, base: number) {
  const t0 = performance.now();
  const lat = await Promise.all(Array.from({ length: n }, (_, i) => request(url, base + i)));
  return { wallMs: performance.now() - t0, lat };
}

/** One request at a time: mean latency. */
async function serial(url: string, n: number, base: number, s = steps): Promise<number> {
  let sum = 0;
  for (let i = 0; i < n; i++) sum += await request(url, base + i, s);
  return sum / n;
}

function serve(engine: Engine, queue: { concurrency: number; limit: number; timeoutMs: number }) {
  const app = createApp({ engine, queue, log: () => {} });
  const s = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
  return { url: `http://127.0.0.1:${s.addr.port}`, close: () => s.shutdown() };
}

const lines: string[] = [];
const say = (l: string) => {
  console.log(l);
  lines.push(l);
};
say(
  `fleet bench: ${jobs} jobs, ${steps} steps, ` +
    (model ? `model ${model} (real workers)` : `fake engine ${stepMs} ms/step`) +
    `, ack wait ${ackWaitS} s`,
);

// The queue's own cost per job: one request at a time through the same app, in-process vs one
// fleet worker, with a 1-step zero-time fake engine (or the model, for --model) so that nothing
// but the path differs.
const ovSteps = model ? steps : 1;
const local: Engine = model
  ? await PipelineEngine.create([{ id: idFor(model), path: model }])
  : new FakeEngine(0);
let inproc: number;
{
  const s = serve(local, { concurrency: 1, limit: jobs, timeoutMs: 600_000 });
  await request(s.url, 0, ovSteps); // warm-up
  inproc = await serial(s.url, 20, 1, ovSteps);
  await s.close();
}
if (local instanceof PipelineEngine) local.destroy();

const server = await NatsServer.start();
const nc = await connectNats({ servers: [server.url] });
const engine = await FleetEngine.create(nc, {
  maxPending: Math.max(64, jobs),
  perCaller: Math.max(64, jobs),
  heartbeatMs,
  pollMs: 200,
  log: () => {},
});
const front = serve(engine, engine.queueOptions(600_000));
const workers: { ready: Promise<void>; kill(): Promise<void> }[] = [];
async function join(n: number): Promise<void> {
  for (let i = 0; i < 600 && engine.status().workers.length !== n; i++) {
    await new Promise((r) => setTimeout(r, 100));
    await engine.refresh();
  }
  if (engine.status().workers.length !== n) throw new Error(`expected ${n} workers`);
}
try {
  if (!model) {
    const w = spawnWorker(server.url, "zero", 0);
    await w.ready;
    await join(1);
    await request(front.url, 0, ovSteps);
    const fleet1 = await serial(front.url, 20, 1_000, ovSteps);
    await w.kill();
    await engine.refresh(); // its heartbeat entry expires after 5 periods
    await new Promise((r) => setTimeout(r, 6 * heartbeatMs));
    await join(0).catch(() => {});
    say(
      `queue overhead (1 step, zero-time fake engine, sequential): fleet ${
        fleet1.toFixed(1)
      } ms per job vs in-process ${inproc.toFixed(1)} → ${(fleet1 - inproc).toFixed(1)} ms`,
    );
  }
  say("| workers | jobs | wall s | jobs/s | p50 ms | p95 ms |");
  say("|---|---|---|---|---|---|");
  for (let n = 1; n <= 3; n++) {
    const w = spawnWorker(server.url, `b${n}`);
    workers.push(w);
    await w.ready;
    console.error(`worker ${n} started`);
    await join(n);
    console.error(`worker ${n} joined`);
    await request(front.url, 10_000 * n); // warm-up (a real worker compiles its shaders)
    if (n === 1 && model) {
      const fleet1 = await serial(front.url, 20, 20_000, ovSteps);
      say(
        `queue overhead (${ovSteps} steps, sequential): fleet ${fleet1.toFixed(1)} ms per job ` +
          `vs in-process ${inproc.toFixed(1)} → ${(fleet1 - inproc).toFixed(1)} ms`,
      );
    }
    const b = await burst(front.url, jobs, 100_000 * n);
    say(
      `| ${n} | ${jobs} | ${(b.wallMs / 1000).toFixed(2)} | ${
        (jobs / b.wallMs * 1000).toFixed(2)
      } | ${pct(b.lat, 50).toFixed(0)} | ${pct(b.lat, 95).toFixed(0)} |`,
    );
  }

  // recovery: a long job on one worker, SIGKILL it, time until the client has its image
  const long = steps * 4;
  const res = await fetch(`${front.url}/api/generate/stream?class=0&seed=9&steps=${long}`);
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let text = "", victim = "";
  while (!/event: step/.test(text)) text += (await reader.read()).value ?? "";
  await engine.refresh();
  victim = engine.status().workers.find((w) => w.job)?.id ?? "";
  const v = workers[Number(victim.slice(1)) - 1];
  const tKill = performance.now();
  await v.kill();
  workers.splice(workers.indexOf(v), 1);
  let tRetry = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    text += value;
    if (!tRetry && /event: retry/.test(text)) tRetry = performance.now();
  }
  if (!/event: done/.test(text)) throw new Error("the killed worker's job did not finish");
  const tDone = performance.now();
  say(
    `recovery after SIGKILL of ${victim} mid-job (${long} steps, ack wait ${ackWaitS} s): ` +
      `retry after ${((tRetry - tKill) / 1000).toFixed(2)} s, image after ${
        ((tDone - tKill) / 1000).toFixed(2)
      } s`,
  );
} finally {
  await front.close();
  engine.close();
  await Promise.all(workers.map((w) => w.kill()));
  await nc.close();
  await server.dispose();
}
