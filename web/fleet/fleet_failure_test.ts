// The fleet under failures, against a real nats-server: a worker SIGKILLed mid-job, the server
// restarted mid-run, a client that disconnects, jobs out of deliveries (fake-engine workers as
// subprocesses, so job times are known). Real workers on the bundled model: fleet_real_test.ts.
import assert from "node:assert/strict";
import { startWorkers } from "./_nats_testing.ts";
import {
  fakePng,
  fleet,
  opts,
  postGen,
  restAfterKill,
  sse,
  status,
  sum,
} from "./_fleet_testing.ts";
// opts.ignore is set only without nats-server (NO_NATS_REASON in _nats_testing.ts says why).

Deno.test({
  ...opts,
  name:
    "fleet (fake engine): a worker SIGKILLed mid-job → redelivered elsewhere, the stream shows retry",
  fn: async () => {
    const f = await fleet({ workers: 1, stepMs: 40, ackWaitS: 1 });
    try {
      const res = await fetch(`${f.url}/api/generate/stream?class=1&seed=77&steps=25`);
      const s = sse(res);
      let ev = await s.next();
      while (ev && ev.event !== "step") ev = await s.next();
      assert.ok(ev, "a step arrived from the first worker");
      // killed first, then the spare started: a slow start (a loaded machine) cannot let the
      // first worker finish the job before the kill
      await f.workers[0].kill("SIGKILL");
      const t0 = performance.now();
      const [spare] = await startWorkers(f.server.url, 1, { stepMs: 40, ackWaitS: 1 }, "spare");
      f.workers.push(spare);
      const { seen, png } = await restAfterKill(s);
      assert.ok(seen.includes("retry"), `a retry event in ${seen.join(",")}`);
      assert.ok(png, "the client got its image");
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
      // the heartbeats that carry the counters may lag the results by a few periods after the
      // restart: read until they show every job (bounded)
      let s = await status(f);
      for (let i = 0; i < 10 && (s.workers.length < 2 || sum(s, "finished") < 6); i++) {
        s = await status(f);
      }
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
      // killed first (so the job cannot finish there while the next worker starts); a live worker
      // keeps pulling: the server looks at the dead job's deliveries then
      await g.workers[0].kill("SIGKILL");
      g.workers.push(...await startWorkers(g.server.url, 1, { ackWaitS: 1, maxDeliver: 1 }, "x"));
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
