import assert from "node:assert/strict";
import { Rng } from "../gpu/_testing.ts";
import { type PartJob, type PartRunner, rowSplit, runPart } from "./split.ts";
import { simdMatMul, simdResidualProduct } from "./linalg_wasm.ts";
import { quantizeWeightClipped } from "./clip.ts";
import { dequantizeWeight, type PackedWeight } from "../formats/packing.ts";
import { syntheticStats } from "./calib.ts";
import { quantizeLinear, type QuantizeLinearOptions } from "./layer.ts";
import { QuantizePool } from "./pool.ts";
import { smoothWeight } from "./baselines.ts";

/**
 * A runner that "sends" each block through structuredClone (as postMessage does: shared buffers
 * stay shared, the rest is copied) and runs it in this thread; `busy` says no worker is idle.
 */
function fakeRunner(size: number, busy = false): PartRunner & { sent: number } {
  const r = {
    size,
    sent: 0,
    tryRun(job: PartJob) {
      if (busy) return null;
      r.sent++;
      return Promise.resolve(runPart(structuredClone(job)));
    },
  };
  return r;
}

const ALL = { minMacs: 0, minWeights: 0 };

function packedEqual(a: PackedWeight, b: PackedWeight, what: string) {
  assert.equal(a.format, b.format, what);
  assert.deepEqual([a.n, a.k], [b.n, b.k], what);
  assert.deepEqual(a.qweight, b.qweight, `${what}: qweight`);
  assert.deepEqual(a.wscales, b.wscales, `${what}: wscales`);
  if (a.format === "nvfp4" && b.format === "nvfp4") {
    assert.equal(a.tensorScale, b.tensorScale, what);
  }
}

Deno.test("split matmul: every shape and transpose is bit-identical to the whole product", async () => {
  const rng = new Rng(3);
  for (const parts of [2, 3]) {
    const idle = fakeRunner(parts);
    for (const runner of [idle, fakeRunner(parts, true)]) {
      const split = rowSplit(runner, { ...ALL, parts });
      for (const [m, k, n] of [[5, 33, 70], [70, 33, 5], [13, 64, 13], [1, 9, 1], [40, 17, 23]]) {
        for (const transB of [false, true]) {
          const a = rng.normals(m * k), b = rng.normals(k * n);
          const want = simdMatMul(a, b, m, k, n, transB);
          // Shared operands (read in place) and private ones (copied per block).
          for (const shared of [false, true]) {
            const [aa, bb] = shared
              ? [split.alloc(m * k), split.alloc(k * n)].map((t, i) =>
                t.fill(0).map((_, j) => [a, b][i][j])
              )
              : [a, b];
            const got = await split.matmul(aa, bb, m, k, n, transB);
            assert.deepEqual(
              Float32Array.from(got),
              want,
              `[${m}, ${k}, ${n}] transB ${transB} shared ${shared} parts ${parts}`,
            );
          }
        }
      }
      // Blocks went to the "worker" unless it was busy (then all ran here, with the same result).
      assert.equal(runner.sent > 0, runner === idle, `parts ${parts}`);
    }
  }
  // Bad shapes throw the whole product's error.
  const split = rowSplit(fakeRunner(2), ALL);
  await assert.rejects(
    async () => await split.matmul(new Float32Array(5), new Float32Array(6), 2, 3, 2, false),
    TypeError,
  );
});

Deno.test("split clip and residual product: bit-identical to the whole weight's", async () => {
  const rng = new Rng(5);
  const n = 37, k = 128, m = 48;
  const w = rng.normals(n * k);
  w[7 * k + 3] = 9; // an outlier row
  const x = rng.normals(m * k);
  for (const runner of [fakeRunner(2), fakeRunner(3), fakeRunner(2, true)]) {
    const split = rowSplit(runner, ALL);
    for (const format of ["int4", "nvfp4"] as const) {
      for (const opts of [{}, { x, m }, { x, m, scaleSearch: true }, { ratios: [1, 0.8] }]) {
        const what = `${format} ${JSON.stringify(Object.keys(opts))} parts ${split.parts}`;
        const want = quantizeWeightClipped(w, n, k, format, opts);
        packedEqual(await split.clip(w, n, k, format, opts), want, what);
        const xa = rng.normals(m * k);
        const y = await split.residualProduct(xa, m, want);
        assert.deepEqual(y, simdMatMul(xa, dequantizeWeight(want), m, k, n, true), what);
        // the fused product (no [N, K] array), both orders of N against m
        for (const rows of [m, 7]) {
          const xr = xa.subarray(0, rows * k);
          assert.deepEqual(
            simdResidualProduct(xr, rows, want),
            simdMatMul(xr, dequantizeWeight(want), rows, k, n, true),
            `${what} fused, ${rows} rows`,
          );
        }
      }
    }
  }
  // A weight the clipping refuses gives the whole call's error.
  const bad = w.slice();
  bad[5] = NaN;
  const split = rowSplit(fakeRunner(2), ALL);
  const whole = (() => {
    try {
      quantizeWeightClipped(bad, n, k, "int4");
    } catch (e) {
      return e as Error;
    }
  })();
  assert.ok(whole instanceof Error);
  await assert.rejects(
    split.clip(bad, n, k, "int4", {}),
    (e: Error) => e.message === whole.message,
  );
});

Deno.test("split smoothing and subtraction: bit-identical, shared or not", async () => {
  const rng = new Rng(9);
  const n = 29, k = 64;
  const w = rng.normals(n * k), lambda = rng.normals(k).map((v) => Math.abs(v) + 0.1);
  const want = smoothWeight(w, n, k, lambda);
  for (const runner of [fakeRunner(2), fakeRunner(3), fakeRunner(2, true)]) {
    const split = rowSplit(runner, ALL);
    const ws = split.shared(w);
    assert.equal(split.shared(ws), ws, "an array already shared is not copied again");
    for (const input of [w, ws]) {
      assert.deepEqual(Float32Array.from(await split.smoothWeight(input, n, k, lambda)), want);
    }
    const b = split.shared(rng.normals(n * k)), a = split.shared(want);
    const diff = a.map((v, i) => v - b[i]);
    await split.subtract(a, b);
    assert.deepEqual(Float32Array.from(b), diff);
  }
});

Deno.test("split layer: quantizeLinear with a pool of 2 is byte-identical to the serial call", async () => {
  const rng = new Rng(11);
  const pool = new QuantizePool(2);
  try {
    const n = 96, k = 128;
    const w = rng.normals(n * k, 0.1);
    for (let row = 0; row < n; row++) w[row * k + 17] *= 20; // an outlier input channel
    const bias = rng.normals(n, 0.02);
    for (const format of ["int4", "nvfp4"] as const) {
      for (const postGelu of [false, true]) {
        const stats = syntheticStats(new Map([["fc", k]]), {
          samples: 64,
          postGelu: postGelu ? ["fc"] : [],
        }).layers.get("fc")!;
        const opts: QuantizeLinearOptions = {
          method: "svdquant",
          format,
          r: 8,
          stats,
          postGelu,
          rounds: 1,
          searchRows: 32,
        };
        const serial = await quantizeLinear("fc", w, bias, n, k, opts);
        // Count the blocks that went to a worker (the pool's own runner, observed).
        let sent = 0;
        const counting: PartRunner = {
          size: pool.size,
          tryRun: (job, transfer) => {
            const started = pool.tryRun(job, transfer);
            if (started) sent++;
            return started;
          },
        };
        // …and the whole layers started beside it (its rank-0 floor, on the second worker).
        let aside = 0;
        const withAside: PartRunner = {
          ...counting,
          tryLayer: (...args) => {
            const started = pool.tryLayer(...args);
            if (started) aside++;
            return started;
          },
        };
        const split = format === "int4"
          ? await pool.quantizeSplit("fc", w, bias, n, k, opts, ALL)
          : await quantizeLinear("fc", w, bias, n, k, {
            ...opts,
            split: rowSplit(postGelu ? withAside : counting, ALL),
          });
        if (format === "nvfp4") {
          assert.ok(sent > 10, `${sent} blocks ran on a worker`);
          assert.equal(aside, postGelu ? 1 : 0, "the rank-0 floor ran on a worker beside the fit");
        }
        const what = `${format} postGelu ${postGelu}`;
        assert.equal(split.relError, serial.relError, what);
        assert.equal(split.alpha, serial.alpha, what);
        assert.deepEqual([...split.tensors.keys()], [...serial.tensors.keys()], what);
        for (const [key, t] of serial.tensors) {
          assert.deepEqual(split.tensors.get(key)!.data, t.data, `${what}: ${key}`);
        }
      }
    }
    // Whole layers refuse a split (it cannot be sent to a worker).
    const split = rowSplit(pool);
    await assert.rejects(
      pool.quantize("fc", w, bias, n, k, { method: "rtn", format: "int4", r: 0, split }),
      TypeError,
    );
  } finally {
    pool.close();
  }
});
