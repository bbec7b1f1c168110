// The fleet with REAL workers: `web/fleet/worker_main.ts` (`deno task worker`) as subprocesses on
// the bundled INT4 model (WebGPU; llvmpipe in CI), a real nats-server, the front end behind the
// unchanged app on a loopback port. Each image must be byte-identical to the in-process engine's
// for the same request (computed once here). The fake-engine versions of these tests (fleet_test.ts,
// fleet_failure_test.ts) pin the queue's semantics with known job times.
import assert from "node:assert/strict";
import { HAS_GPU } from "../../gpu/_testing.ts";
import { NO_NATS_REASON } from "./_nats_testing.ts";
import {
  BUNDLED,
  BUNDLED_ID,
  CFG,
  fleet,
  localPngs,
  readPng,
  type RealRequest,
  reqKey,
  restAfterKill,
  SAMPLER,
  sse,
  status,
  sum,
} from "./_fleet_testing.ts";

const opts = {
  ignore: NO_NATS_REASON !== null || !HAS_GPU, // needs nats-server and a WebGPU adapter
  sanitizeResources: false,
  sanitizeOps: false,
};

Deno.test({
  ...opts,
  name:
    "fleet, real workers: 30 concurrent requests on 3 → each the in-process PNG or a 429; none lost, none run twice",
  fn: async () => {
    // three distinct requests, ten times each: the expected images cost three generations
    const kinds: RealRequest[] = [0, 1, 2].map((k) => ({ classId: k * 5, seed: 40 + k, steps: 4 }));
    const want = await localPngs(BUNDLED, kinds);
    const [a, b, c] = kinds.map((q) => want.get(reqKey(q))!);
    assert.ok(a.length > 0 && b.length > 0 && c.length > 0);
    assert.notDeepEqual(a, b, "distinct requests give distinct images (a mix-up would show)");
    assert.notDeepEqual(b, c);
    assert.notDeepEqual(a, c);
    const f = await fleet({ workers: 3, model: BUNDLED, ackWaitS: 20, maxPending: 12 });
    try {
      assert.equal(f.engine.status().workers.length, 3, "three workers advertise");
      const results = await Promise.all(Array.from({ length: 30 }, async (_, i) => {
        const q = kinds[i % 3];
        const res = await fetch(`${f.url}/api/generate`, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({
            model: BUNDLED_ID,
            class: q.classId,
            seed: q.seed,
            steps: q.steps,
            cfg: CFG,
            sampler: SAMPLER,
          }),
        });
        const body = new Uint8Array(await res.arrayBuffer());
        if (res.status === 200) {
          const img = await readPng(body);
          assert.deepEqual([img.width, img.height], [32, 32], `request ${i}: a 32×32 image`);
          assert.equal(res.headers.get("X-Seed"), String(q.seed));
          assert.deepEqual(body, want.get(reqKey(q)), `request ${i}: the in-process image`);
        } else {
          assert.equal(
            res.status,
            429,
            `request ${i}: ${res.status} ${new TextDecoder().decode(body)}`,
          );
          assert.match(res.headers.get("Retry-After") ?? "", /^\d+$/);
        }
        return res.status;
      }));
      const ok = results.filter((s) => s === 200).length;
      assert.equal(ok + results.filter((s) => s === 429).length, 30, "each got a PNG or a 429");
      assert.ok(ok >= 12, `at least the 12 the fleet holds complete, got ${ok}`);
      const s = await status(f);
      assert.equal(s.workers.length, 3, JSON.stringify(s.workers));
      assert.equal(sum(s, "finished"), ok, "each accepted job ran exactly once (none lost)");
      assert.equal(sum(s, "failed") + sum(s, "cancelled"), 0);
      assert.ok(s.workers.filter((w) => w.finished > 0).length >= 2, "the work was shared");
      assert.equal(s.pending, 0, "the stream is empty");
    } finally {
      await f.close();
    }
  },
});

Deno.test({
  ...opts,
  name:
    "fleet, real workers: one SIGKILLed while denoising → the job completes on the other, same image, retry in the stream",
  fn: async () => {
    const q: RealRequest = { classId: 1, seed: 77, steps: 6 };
    const want = (await localPngs(BUNDLED, [q])).get(reqKey(q))!;
    const f = await fleet({ workers: 2, model: BUNDLED, ackWaitS: 3 });
    try {
      assert.equal(f.engine.status().workers.length, 2, "two workers advertise");
      const res = await fetch(
        `${f.url}/api/generate/stream?model=${BUNDLED_ID}&class=${q.classId}&seed=${q.seed}` +
          `&steps=${q.steps}&cfg=${CFG}&sampler=${SAMPLER}`,
      );
      assert.equal(res.status, 200);
      const s = sse(res);
      let ev = await s.next();
      while (ev && ev.event !== "step") ev = await s.next();
      assert.ok(ev, "a step arrived from the first worker");
      assert.ok(
        ev.data.i < ev.data.n,
        `step ${ev.data.i} of ${ev.data.n}: the job is being denoised`,
      );
      await f.engine.refresh();
      const busy = f.engine.status().workers.filter((w) => w.job !== null);
      assert.equal(busy.length, 1, `one worker has the job: ${JSON.stringify(busy)}`);
      const victim = f.workers.find((w) => w.id === busy[0].id)!;
      const other = f.workers.find((w) => w !== victim)!;
      await victim.kill("SIGKILL");
      const t0 = performance.now();
      const { seen, png } = await restAfterKill(s);
      assert.ok(seen.includes("retry"), `a retry event in ${seen.join(",")}`);
      assert.ok(
        seen.indexOf("retry") < seen.lastIndexOf("step"),
        `steps after the retry: ${seen.join(",")}`,
      );
      assert.ok(png, "the client got its image");
      assert.deepEqual(png, want, "the other worker's image is the in-process one");
      const recoveryMs = performance.now() - t0;
      assert.ok(recoveryMs < 30_000, `finished ${recoveryMs.toFixed(0)} ms after the kill`);
      const st = await status(f);
      assert.equal(st.workers.find((w) => w.id === other.id)?.finished, 1, "the other made it");
      assert.equal(sum(st, "finished"), 1, "made once after the kill");
      assert.equal(st.pending, 0);
    } finally {
      await f.close();
    }
  },
});
