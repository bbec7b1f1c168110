/**
 * Tests of the calibration statistics: the recorder's amax per bucket and reservoir sample, the
 * file round trip and its errors, and the synthetic fallback's shape and tails. CPU only.
 */
import assert from "node:assert/strict";
import { freshRng } from "../gpu/_testing.ts";
import { FormatError } from "../gpu/errors.ts";
import {
  amaxOverBuckets,
  CalibRecorder,
  readCalibStats,
  syntheticStats,
  writeCalibStats,
} from "./calib.ts";
import { SafetensorsWriter } from "../formats/safetensors.ts";

Deno.test("CalibRecorder keeps the per-bucket amax and a reservoir of real rows", () => {
  const rng = freshRng("calib recorder");
  const k = 24, buckets = 3, maxSamples = 10;
  const rec = new CalibRecorder({ buckets, maxSamples, seed: 7 });
  const expect = Array.from({ length: buckets }, () => new Float32Array(k));
  const rows = new Set<string>();
  let total = 0;
  for (let call = 0; call < 12; call++) {
    const m = rng.int(0, 5), b = rng.int(0, buckets - 1);
    const x = rng.normals(m * k, 3);
    for (let i = 0; i < m * k; i++) expect[b][i % k] = Math.max(expect[b][i % k], Math.abs(x[i]));
    for (let i = 0; i < m; i++) rows.add(x.subarray(i * k, (i + 1) * k).join());
    total += m;
    rec.record("a", b, x, m, k);
  }
  const st = rec.stats().layers.get("a")!;
  assert.equal(st.k, k);
  for (let b = 0; b < buckets; b++) assert.deepEqual(st.amax[b], expect[b]);
  assert.equal(st.s, Math.min(total, maxSamples));
  assert.equal(st.samples.length, st.s * k);
  const kept = new Set<string>();
  for (let i = 0; i < st.s; i++) {
    const row = st.samples.subarray(i * k, (i + 1) * k).join();
    assert.ok(rows.has(row), `sample row ${i} is not one of the recorded rows`);
    kept.add(row);
  }
  assert.equal(kept.size, st.s, "a recorded row was kept twice");
  const all = amaxOverBuckets(st);
  for (let c = 0; c < k; c++) assert.equal(all[c], Math.max(...expect.map((a) => a[c])));
});

Deno.test("CalibRecorder: the reservoir is uniform and does not depend on layer order", () => {
  const k = 8, rowsN = 400, maxSamples = 40;
  const x = Float32Array.from({ length: rowsN * k }, (_, i) => Math.floor(i / k)); // row id
  const hits = new Float64Array(rowsN);
  for (let seed = 0; seed < 50; seed++) {
    const a = new CalibRecorder({ buckets: 1, maxSamples, seed });
    const b = new CalibRecorder({ buckets: 1, maxSamples, seed });
    for (let i = 0; i < rowsN; i += 20) {
      a.record("p", 0, x.subarray(i * k, (i + 20) * k), 20, k);
      a.record("q", 0, x.subarray(i * k, (i + 20) * k), 20, k);
      b.record("q", 0, x.subarray(i * k, (i + 20) * k), 20, k);
    }
    b.record("p", 0, x, rowsN, k); // same rows, other interleaving and call sizes
    assert.deepEqual(a.stats().layers.get("p")!.samples, b.stats().layers.get("p")!.samples);
    const s = a.stats().layers.get("p")!;
    for (let i = 0; i < s.s; i++) hits[s.samples[i * k]]++;
  }
  // Each row is kept with probability 40/400 = 0.1: expected 5 of 50 runs per row, so the first
  // and second halves of the stream hold 1000 ± ~30 kept rows each (a bound of 150 is ~5σ).
  const first = hits.slice(0, rowsN / 2).reduce((p, v) => p + v, 0);
  assert.equal(hits.reduce((p, v) => p + v, 0), 50 * maxSamples);
  assert.ok(Math.abs(first - 1000) < 150, `first half kept ${first} rows of 2000, expected ~1000`);
});

Deno.test("CalibRecorder refuses bad arguments", () => {
  const rec = new CalibRecorder({ buckets: 2 });
  assert.throws(() => rec.record("a", 2, new Float32Array(4), 1, 4), RangeError);
  assert.throws(() => rec.record("a", -1, new Float32Array(4), 1, 4), RangeError);
  assert.throws(() => rec.record("a", 0, new Float32Array(5), 1, 4), /expected \[M=1, K=4\]/);
  rec.record("a", 0, new Float32Array(4), 1, 4);
  assert.throws(() => rec.record("a", 0, new Float32Array(8), 1, 8), /K=4/);
  assert.throws(() => new CalibRecorder({ buckets: 0 }), RangeError);
  assert.throws(() => new CalibRecorder({ buckets: 1, maxSamples: -1 }), RangeError);
});

Deno.test("CalibRecorder ignores non-finite values in the amax", () => {
  const rec = new CalibRecorder({ buckets: 1 });
  rec.record("a", 0, Float32Array.from([NaN, -Infinity, 2, 1, 3, -4]), 3, 2);
  assert.deepEqual([...rec.stats().layers.get("a")!.amax[0]], [3, 4]);
});

Deno.test("calibration statistics: write → read round trip is bit-exact", async () => {
  const rng = freshRng("calib file");
  const rec = new CalibRecorder({ buckets: 4, maxSamples: 5, seed: 1 });
  rec.record("blocks.0.attn.qkv", 1, rng.normals(7 * 64, 2), 7, 64);
  rec.record("blocks.0.mlp.fc2", 3, rng.normals(3 * 32), 3, 32);
  const stats = rec.stats();
  stats.layers.set("never.seen", {
    k: 16,
    amax: Array.from({ length: 4 }, () => new Float32Array(16)),
    samples: new Float32Array(0),
    s: 0,
  });
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/calib.safetensors`;
    await writeCalibStats(path, stats);
    const back = await readCalibStats(path);
    assert.equal(back.buckets, 4);
    assert.deepEqual([...back.layers.keys()].sort(), [...stats.layers.keys()].sort());
    for (const [name, st] of stats.layers) {
      const b = back.layers.get(name)!;
      assert.equal(b.k, st.k);
      assert.equal(b.s, st.s);
      assert.deepEqual(b.samples, st.samples);
      assert.deepEqual(b.amax, st.amax);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

async function writeRaw(
  path: string,
  tensors: { name: string; shape: number[] }[],
  metadata: Record<string, string>,
) {
  const w = await SafetensorsWriter.create(path, {
    tensors: tensors.map((t) => ({
      name: t.name,
      dtype: "F32" as const,
      shape: t.shape,
      byteLength: 4 * t.shape.reduce((a, b) => a * b, 1),
    })),
    metadata,
  });
  for (const t of tensors) {
    await w.write(t.name, new Uint8Array(4 * t.shape.reduce((a, b) => a * b, 1)));
  }
  await w.commit();
}

Deno.test("readCalibStats refuses files that are not statistics, naming file and tensor", async () => {
  const dir = await Deno.makeTempDir();
  const meta = { calib_format: "1", buckets: "2" };
  const cases: [string, { name: string; shape: number[] }[], Record<string, string>, RegExp][] = [
    [
      "nometa",
      [{ name: "a.amax", shape: [2, 4] }, { name: "a.samples", shape: [1, 4] }],
      {},
      /calib_format/,
    ],
    ["nosamples", [{ name: "a.amax", shape: [2, 4] }], meta, /a\.samples/],
    [
      "noamax",
      [{ name: "a.samples", shape: [1, 4] }],
      meta,
      /tensor a\.samples.*no matching \.amax/,
    ],
    [
      "badT",
      [{ name: "a.amax", shape: [3, 4] }, { name: "a.samples", shape: [1, 4] }],
      meta,
      /T=2/,
    ],
    [
      "badK",
      [{ name: "a.amax", shape: [2, 4] }, { name: "a.samples", shape: [1, 5] }],
      meta,
      /same K/,
    ],
    ["other", [{ name: "a.weight", shape: [2, 4] }], meta, /tensor a\.weight/],
  ];
  try {
    for (const [label, tensors, metadata, re] of cases) {
      const path = `${dir}/${label}.safetensors`;
      await writeRaw(path, tensors, metadata);
      await assert.rejects(() => readCalibStats(path), (e: Error) => {
        assert.ok(e instanceof FormatError, `${label}: ${e}`);
        assert.match(e.message, new RegExp(`${label}\\.safetensors`));
        assert.match(e.message, re, label);
        return true;
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("syntheticStats: heavy tails, planted outlier channels, GELU rows, deterministic", () => {
  const layers = new Map([["x", 256], ["y", 64]]);
  const a = syntheticStats(layers, { samples: 200, buckets: 3, seed: 5, postGelu: ["y"] });
  const b = syntheticStats(layers, { samples: 200, buckets: 3, seed: 5, postGelu: ["y"] });
  assert.deepEqual(a.layers.get("x")!.samples, b.layers.get("x")!.samples);
  assert.equal(a.buckets, 3);
  const x = a.layers.get("x")!;
  assert.equal(x.samples.length, 200 * 256);
  // Outliers: the largest channel amax is ≥ 10× the median channel amax.
  const amax = [...amaxOverBuckets(x)].sort((p, q) => p - q);
  assert.ok(amax[255] > 10 * amax[128], `max ${amax[255]} vs median ${amax[128]}`);
  // Heavy tails: excess kurtosis of a normal channel's values is clearly positive (t(3)).
  let m2 = 0, m4 = 0, cnt = 0;
  for (let c = 0; c < 256; c++) {
    let v2 = 0;
    for (let i = 0; i < 200; i++) v2 += x.samples[i * 256 + c] ** 2;
    const sd = Math.sqrt(v2 / 200);
    for (let i = 0; i < 200; i++) {
      const z = x.samples[i * 256 + c] / sd;
      m2 += z * z;
      m4 += z ** 4;
      cnt++;
    }
  }
  const kurt = (m4 / cnt) / (m2 / cnt) ** 2;
  assert.ok(kurt > 4, `kurtosis ${kurt}, expected > 4 (a normal has 3)`);
  const y = a.layers.get("y")!;
  assert.ok(y.samples.every((v) => v >= -0.1701), "post-GELU rows must be >= GELU's minimum");
  assert.ok(y.amax.every((arr) => arr.length === 64));
  assert.throws(() => syntheticStats(new Map([["z", 0]])), RangeError);
});
