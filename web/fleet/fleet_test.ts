// The fleet's semantics against a real nats-server (JetStream, loopback, temporary store): the
// front end (FleetEngine behind the unchanged app, real sockets) and workers as subprocesses over
// the fake engine (web/_fake.ts) so that job times are known and short. Failures (kills, server
// restart, cancellation, max deliveries): fleet_failure_test.ts; real workers on the bundled
// model (30 concurrent requests, a SIGKILL mid-job): fleet_real_test.ts.
import assert from "node:assert/strict";
import { jetstream } from "@nats-io/jetstream";
import { createApp } from "../app.ts";
import edge, { resetEdge } from "../edge.ts";
import { connectNats, ensureInfra } from "./connect.ts";
import { FleetEngine } from "./front.ts";
import { dec, enc, type JobRecord, jobSubject } from "./protocol.ts";
import {
  fakePng,
  fleet,
  HEARTBEAT_MS,
  opts,
  PNG_SIG,
  postGen,
  status,
  sum,
} from "./_fleet_testing.ts";
// opts.ignore is set only without nats-server (NO_NATS_REASON in _nats_testing.ts says why).

Deno.test({
  ...opts,
  name:
    "fleet (fake engine): 30 concurrent requests on 3 workers → each its own PNG or a 429; none lost, none run twice",
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
