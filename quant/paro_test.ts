/**
 * Tests of the PAROAttention calibration: the recorder's mean maps, the order choice on attention
 * with a known 2-D structure, the masks' budget and forced tiles, the step → bucket mapping and
 * the stored plan's round trip and its errors. CPU only.
 */
import assert from "node:assert/strict";
import { freshRng, type Rng } from "../gpu/_testing.ts";
import {
  maskBytes,
  maskGet,
  tileCount,
  TOKEN_ORDERS,
  type TokenOrder,
  tokenOrder,
} from "../kernels/sparse_attention/layout.ts";
import { FormatError } from "../gpu/errors.ts";
import { encodeMeta, QuantFile } from "../formats/format.ts";
import {
  AttentionRecorder,
  bucketOfStep,
  calibrateParo,
  describeParo,
  masksFor,
  type ParoPlan,
  permFor,
} from "./paro.ts";
import { paroTensors, readParo, readParoFrom } from "./paro_store.ts";
import { SafetensorsWriter } from "../formats/safetensors.ts";

/** Direct float64 softmax(scale·q·kᵀ) of (batch bi, head hh) of a fused qkv. */
function softmaxRef(
  qkv: Float32Array,
  s: { bi: number; hh: number; t: number; h: number; d: number; scale: number },
): Float64Array {
  const { bi, hh, t, h, d, scale } = s, row = 3 * h * d, p = new Float64Array(t * t);
  for (let i = 0; i < t; i++) {
    const logits = Array.from({ length: t }, (_, j) => {
      let dot = 0;
      for (let c = 0; c < d; c++) {
        dot += qkv[(bi * t + i) * row + hh * d + c] * qkv[(bi * t + j) * row + (h + hh) * d + c];
      }
      return scale * dot;
    });
    const max = Math.max(...logits), e = logits.map((v) => Math.exp(v - max));
    const sum = e.reduce((a, v) => a + v, 0);
    e.forEach((v, j) => p[i * t + j] = v / sum);
  }
  return p;
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

Deno.test("AttentionRecorder: mean of softmax maps per bucket, -1 = mean of all samples", () => {
  const rng = freshRng("paro recorder");
  const t = 6, h = 2, d = 3, scale = 0.7;
  const rec = new AttentionRecorder({ layers: 2, heads: h, tokens: t, buckets: 2 });
  const calls = [{ b: 2, bucket: 0 }, { b: 1, bucket: 0 }, { b: 3, bucket: 1 }];
  const expect = [0, 1].map(() => [0, 1].map(() => new Float64Array(t * t)));
  const all = [0, 1].map(() => new Float64Array(t * t));
  for (const { b, bucket } of calls) {
    const qkv = rng.normals(b * t * 3 * h * d, 1.5);
    rec.record(1, bucket, qkv, b, t, h, d, scale);
    for (let bi = 0; bi < b; bi++) {
      for (let hh = 0; hh < h; hh++) {
        const p = softmaxRef(qkv, { bi, hh, t, h, d, scale });
        p.forEach((v, i) => (expect[bucket][hh][i] += v, all[hh][i] += v));
      }
    }
  }
  assert.equal(rec.count(0, 1), 3);
  assert.equal(rec.count(1, 1), 3);
  assert.equal(rec.count(-1, 1), 6);
  assert.equal(rec.count(-1, 0), 0);
  for (let hh = 0; hh < h; hh++) {
    for (const bucket of [0, 1]) {
      const m = rec.map(bucket, 1, hh);
      assert.ok(maxDiff(m, expect[bucket][hh].map((v) => v / 3)) < 1e-12);
      for (let i = 0; i < t; i++) {
        const rowSum = m.subarray(i * t, (i + 1) * t).reduce((a, v) => a + v, 0);
        assert.ok(Math.abs(rowSum - 1) < 1e-12, `row ${i} sums to ${rowSum}`);
      }
    }
    assert.ok(maxDiff(rec.map(-1, 1, hh), all[hh].map((v) => v / 6)) < 1e-12);
  }
  assert.deepEqual(rec.map(0, 0, 0), new Float64Array(t * t), "unrecorded maps are zero");
  // default scale 1/√D
  const one = new AttentionRecorder({ layers: 1, heads: 1, tokens: 4, buckets: 1 });
  const qkv = rng.normals(4 * 3 * 5);
  one.record(0, 0, qkv, 1, 4, 1, 5);
  const ref = softmaxRef(qkv, { bi: 0, hh: 0, t: 4, h: 1, d: 5, scale: 1 / Math.sqrt(5) });
  assert.ok(maxDiff(one.map(0, 0, 0), ref) < 1e-12);
});

Deno.test("AttentionRecorder refuses bad arguments and records nothing then", () => {
  assert.throws(() => new AttentionRecorder({ layers: 0, heads: 1, tokens: 4, buckets: 1 }), {
    name: "RangeError",
    message: /layers is 0/,
  });
  assert.throws(() => new AttentionRecorder({ layers: 1, heads: 1, tokens: 4.5, buckets: 1 }), {
    name: "RangeError",
  });
  const rec = new AttentionRecorder({ layers: 2, heads: 2, tokens: 4, buckets: 3 });
  const ok = new Float32Array(4 * 3 * 2 * 2);
  const bad: [string, () => void, string, RegExp][] = [
    ["layer", () => rec.record(2, 0, ok, 1, 4, 2, 2), "RangeError", /layer is 2/],
    ["bucket", () => rec.record(0, 3, ok, 1, 4, 2, 2), "RangeError", /bucket is 3/],
    ["bucket -1", () => rec.record(0, -1, ok, 1, 4, 2, 2), "RangeError", /bucket is -1/],
    ["T", () => rec.record(0, 0, ok, 1, 8, 2, 1), "RangeError", /T is 8/],
    ["H", () => rec.record(0, 0, ok, 1, 4, 1, 4), "RangeError", /H is 1/],
    ["D", () => rec.record(0, 0, ok, 1, 4, 2, 0), "RangeError", /D is 0/],
    ["B", () => rec.record(0, 0, ok, -1, 4, 2, 2), "RangeError", /B is -1/],
    ["scale", () => rec.record(0, 0, ok, 1, 4, 2, 2, NaN), "RangeError", /scale/],
    ["length", () => rec.record(0, 0, ok, 2, 4, 2, 2), "TypeError", /got 48/],
    ["NaN q", () => rec.record(0, 0, ok.with(3, NaN), 1, 4, 2, 2), "RangeError", /NaN/],
    ["map head", () => rec.map(0, 0, 2), "RangeError", /head is 2/],
    ["map bucket", () => rec.map(-2, 0, 0), "RangeError", /bucket is -2/],
  ];
  for (const [what, f, name, message] of bad) assert.throws(f, { name, message }, what);
  assert.equal(rec.count(-1, 0), 0);
  rec.record(0, 0, ok.with(2 * 2 * 2, NaN), 1, 4, 2, 2); // a NaN in v is not looked at
});

Deno.test("AttentionRecorder: T=256, H=16, D=72, B=2 in one call (timing printed)", () => {
  const rng = freshRng("paro recorder speed");
  const t = 256, h = 16, d = 72, b = 2;
  const rec = new AttentionRecorder({ layers: 1, heads: h, tokens: t, buckets: 1 });
  const qkv = rng.normals(b * t * 3 * h * d);
  rec.record(0, 0, qkv, b, t, h, d); // warm-up
  const t0 = performance.now();
  rec.record(0, 0, qkv, b, t, h, d);
  const ms = performance.now() - t0;
  const gflop = (2 * b * h * t * t * d) / 1e9;
  console.log(
    `record T=${t} H=${h} D=${d} B=${b}: ${ms.toFixed(0)} ms, ` +
      `${(gflop / (ms / 1e3)).toFixed(2)} GFLOP/s on QKᵀ`,
  );
  assert.equal(rec.count(0, 0), 2 * b);
});

/**
 * qkv [B·T, 3·H·D] whose head `hh` attends (almost) only among tokens of the same group
 * `group(y, x)` of a gridH × gridW grid: q = k = one-hot(group)·√strength, logits = strength.
 */
function groupQkv(
  opt: { gridH: number; gridW: number; h: number; d: number; rng: Rng },
  groups: ((y: number, x: number) => number)[],
): Float32Array {
  const { gridH, gridW, h, d, rng } = opt, t = gridH * gridW, row = 3 * h * d;
  const qkv = rng.normals(t * row, 0.01);
  for (let hh = 0; hh < h; hh++) {
    for (let y = 0; y < gridH; y++) {
      for (let x = 0; x < gridW; x++) {
        const g = groups[hh](y, x), tok = y * gridW + x;
        qkv[tok * row + hh * d + g] = qkv[tok * row + (h + hh) * d + g] = Math.sqrt(30);
      }
    }
  }
  return qkv;
}

const block4 = (y: number, x: number) => (y >> 2) * 2 + (x >> 2); // 4×4 blocks of an 8×8 grid
const column = (_y: number, x: number) => x;

function calibrateGroups(
  group: (y: number, x: number) => number,
  opts: { tile: number; density: number; orders?: TokenOrder[] },
): ParoPlan {
  const rng = freshRng("paro groups");
  const rec = new AttentionRecorder({ layers: 1, heads: 1, tokens: 64, buckets: 1 });
  const qkv = groupQkv({ gridH: 8, gridW: 8, h: 1, d: 8, rng }, [group]);
  rec.record(0, 0, qkv, 1, 64, 1, 8, 1);
  return calibrateParo(rec, { gridH: 8, gridW: 8, ...opts });
}

Deno.test("calibrateParo picks block4 for 4×4-block attention and col for column attention", () => {
  for (
    const [name, group, tile, density, want] of [
      ["4×4 blocks", block4, 16, 0.25, "block4"],
      ["columns", column, 8, 0.125, "col"],
    ] as const
  ) {
    const plan = calibrateGroups(group, { tile, density });
    assert.equal(TOKEN_ORDERS[plan.orders[0]], want, name);
    assert.ok(plan.keptMass[0] > 0.999, `${name}: kept ${plan.keptMass[0]}`);
    const rowOnly = calibrateGroups(group, { tile, density, orders: ["row"] });
    assert.equal(rowOnly.orders[0], 0);
    assert.ok(rowOnly.keptMass[0] < 0.6, `${name}: row order kept ${rowOnly.keptMass[0]}`);
    console.log(
      `${name} at density ${density}, tile ${tile}: ${want} keeps ` +
        `${plan.keptMass[0].toFixed(4)} of the mass, row order ${rowOnly.keptMass[0].toFixed(4)}`,
    );
  }
  // equal scores: the earlier order wins (uniform attention scores every order the same)
  const rec = new AttentionRecorder({ layers: 1, heads: 1, tokens: 64, buckets: 1 });
  rec.record(0, 0, new Float32Array(64 * 3 * 4), 1, 64, 1, 4);
  assert.equal(calibrateParo(rec, { gridH: 8, gridW: 8, tile: 8, density: 0.3 }).orders[0], 0);
  const plan = calibrateParo(rec, { gridH: 8, gridW: 8, tile: 8, density: 0.3, orders: ["col"] });
  assert.equal(TOKEN_ORDERS[plan.orders[0]], "col");
});

/** A recorder over `buckets` buckets filled with random peaky attention. */
function randomRecorder(
  rng: Rng,
  s: { layers: number; heads: number; t: number; buckets: number },
) {
  const rec = new AttentionRecorder({ ...s, tokens: s.t });
  for (let l = 0; l < s.layers; l++) {
    for (let b = 0; b < s.buckets; b++) {
      rec.record(l, b, rng.normals(2 * s.t * 3 * s.heads * 8, 1.6), 2, s.t, s.heads, 8);
    }
  }
  return rec;
}

/** Checks every mask of `plan` against the maps of `rec`; returns the kept counts. */
function checkMasks(plan: ParoPlan, rec: AttentionRecorder): number[] {
  const { tokens: T, tile, heads, layers, denseTokens } = plan;
  const nt = tileCount(T, tile), mb = maskBytes(nt), dense = Math.ceil(denseTokens / tile);
  const counts: number[] = [];
  for (let s = 0; s < plan.buckets; s++) {
    for (let l = 0; l < layers; l++) {
      const perm = permFor(plan, l), bits = masksFor(plan, s, l);
      for (let h = 0; h < heads; h++) {
        const m = rec.map(plan.buckets === 1 ? -1 : s, l, h);
        const tm = new Float64Array(nt * nt);
        for (let p = 0; p < T; p++) {
          for (let q = 0; q < T; q++) {
            tm[Math.floor(p / tile) * nt + Math.floor(q / tile)] +=
              m[perm[h * T + p] * T + perm[h * T + q]];
          }
        }
        let count = 0, kept = 0, minFree = Infinity, maxDropped = 0;
        for (let i = 0; i < nt; i++) {
          const rowMax = Math.max(...tm.subarray(i * nt, (i + 1) * nt));
          let rowOn = 0;
          for (let j = 0; j < nt; j++) {
            const on = maskGet(bits, nt, i, j, h * mb), v = tm[i * nt + j];
            if (i < dense || j < dense) assert.ok(on, `dense tile (${i}, ${j}) is off`);
            if (on) {
              rowOn++;
              kept += v;
              if (i >= dense && j >= dense && v < rowMax) minFree = Math.min(minFree, v);
            } else maxDropped = Math.max(maxDropped, v);
          }
          assert.ok(rowOn > 0, `bucket ${s} layer ${l} head ${h}: row ${i} is empty`);
          count += rowOn;
        }
        assert.ok(maxDropped <= minFree + 1e-12, "a dropped tile outweighs a freely kept one");
        const idx = (s * layers + l) * heads + h;
        assert.ok(Math.abs(kept / T - plan.keptMass[idx]) < 1e-6, "keptMass disagrees");
        counts.push(count);
      }
    }
  }
  return counts;
}

Deno.test("calibrateParo masks: exact budget, no empty row, dense tokens, shared vs per bucket", () => {
  const rng = freshRng("paro masks");
  // 6×8 grid, tile 8 → nt = 6, K = round(0.3·36) = 11
  const rec = randomRecorder(rng, { layers: 2, heads: 3, t: 48, buckets: 3 });
  const plan = calibrateParo(rec, { gridH: 6, gridW: 8, tile: 8, density: 0.3 });
  assert.equal(plan.buckets, 3);
  assert.equal(plan.masks.length, 3 * 2 * 3 * maskBytes(6));
  assert.deepEqual(new Set(checkMasks(plan, rec)), new Set([11]));
  assert.notDeepEqual(masksFor(plan, 0, 1), masksFor(plan, 2, 1), "bucket maps differ");
  assert.deepEqual(masksFor(plan, 7, 1), masksFor(plan, 2, 1), "bucket clamped");
  const shared = calibrateParo(rec, {
    gridH: 6,
    gridW: 8,
    tile: 8,
    density: 0.3,
    perTimestep: false,
  });
  assert.equal(shared.buckets, 1);
  assert.deepEqual(shared.orders, plan.orders, "orders do not depend on perTimestep");
  assert.deepEqual(new Set(checkMasks(shared, rec)), new Set([11]));
  assert.deepEqual(masksFor(shared, 2, 0), masksFor(shared, 0, 0));
  // density 1 keeps everything, a tiny density still keeps one tile per row
  const full = calibrateParo(rec, { gridH: 6, gridW: 8, tile: 8, density: 1 });
  assert.ok(full.keptMass.every((v) => Math.abs(v - 1) < 1e-6));
  const tiny = calibrateParo(rec, { gridH: 6, gridW: 8, tile: 8, density: 0.001 });
  assert.deepEqual(new Set(checkMasks(tiny, rec)), new Set([6]));

  // 3 dense tokens + 6×8 grid: T = 51, nt = 7 (last tile partial), K = round(0.5·49) = 25
  const recD = randomRecorder(rng, { layers: 1, heads: 2, t: 51, buckets: 2 });
  const dense = calibrateParo(recD, {
    gridH: 6,
    gridW: 8,
    denseTokens: 3,
    tile: 8,
    density: 0.5,
  });
  assert.deepEqual(new Set(checkMasks(dense, recD)), new Set([25]));
  for (let h = 0; h < 2; h++) {
    assert.deepEqual([...permFor(dense, 0).subarray(h * 51, h * 51 + 3)], [0, 1, 2]);
  }
  // forced tiles beyond the budget: 20 dense tokens → 3 dense tile rows and columns of 7
  const recF = randomRecorder(rng, { layers: 1, heads: 2, t: 68, buckets: 1 });
  const forced = calibrateParo(recF, {
    gridH: 6,
    gridW: 8,
    denseTokens: 20,
    tile: 8,
    density: 0.1,
  });
  // nt = 9: 81 − 6·6 = 45 forced tiles plus up to 6 row maxima, more than K = 9
  for (const c of checkMasks(forced, recF)) assert.ok(c >= 45 && c <= 51, `kept ${c}`);
  console.log(describeParo(plan));
});

Deno.test("calibrateParo global budget: same total, shared across heads, more mass kept", () => {
  const rng = freshRng("paro global budget");
  const rec = randomRecorder(rng, { layers: 2, heads: 3, t: 48, buckets: 2 });
  const base = { gridH: 6, gridW: 8, tile: 8, density: 0.3 } as const;
  const perHead = calibrateParo(rec, { ...base });
  const global = calibrateParo(rec, { ...base, budget: "global" });
  const mass = calibrateParo(rec, { ...base, budget: "mass" });
  for (const plan of [global, mass]) {
    const counts = checkMasks(plan, rec); // no empty row, kept mass recomputed
    for (let s = 0; s < 2; s++) {
      const set = counts.slice(s * 6, (s + 1) * 6);
      assert.equal(set.reduce((a, b) => a + b, 0), 6 * 11, "the total budget of the mask set");
      assert.ok(set.every((c) => c >= 6), "at least one tile per row");
    }
    assert.deepEqual(plan.orders, perHead.orders, "orders do not depend on the budget");
  }
  const sum = (v: Float32Array) => v.reduce((a, b) => a + b, 0);
  const min = (v: Float32Array) => Math.min(...v);
  assert.ok(sum(global.keptMass) >= sum(perHead.keptMass) - 1e-6, "greedy over all heads");
  assert.ok(min(mass.keptMass) >= min(perHead.keptMass) - 1e-6, "the worst head gains");
  assert.throws(
    () => calibrateParo(rec, { ...base, budget: "layer" as "head" }),
    /budget is "layer"/,
  );
});

Deno.test("calibrateParo, permFor, masksFor, bucketOfStep refuse bad arguments", () => {
  const rng = freshRng("paro bad options");
  const rec = randomRecorder(rng, { layers: 1, heads: 1, t: 16, buckets: 1 });
  const base = { gridH: 4, gridW: 4, tile: 8, density: 0.5 };
  const bad: [string, object, RegExp][] = [
    ["grid", { gridH: 4, gridW: 5 }, /20 tokens/],
    ["tile", { tile: 12 }, /tile is 12/],
    ["density 0", { density: 0 }, /density is 0/],
    ["density > 1", { density: 1.5 }, /density is 1.5/],
    ["order", { orders: ["block8"] }, /block8/],
    ["no order", { orders: [] }, /orders is empty/],
  ];
  for (const [what, o, message] of bad) {
    assert.throws(
      () => calibrateParo(rec, { ...base, ...o }),
      { name: "RangeError", message },
      what,
    );
  }
  const empty = new AttentionRecorder({ layers: 2, heads: 1, tokens: 16, buckets: 1 });
  empty.record(0, 0, new Float32Array(16 * 3 * 2), 1, 16, 1, 2);
  assert.throws(() => calibrateParo(empty, base), { name: "RangeError", message: /layer 1/ });
  const plan = calibrateParo(rec, base);
  assert.deepEqual(permFor(plan, 0), tokenOrder(TOKEN_ORDERS[plan.orders[0]], 4, 4));
  assert.throws(() => permFor(plan, 1), RangeError);
  assert.throws(() => masksFor(plan, 0.5, 0), RangeError);
  const p4 = { buckets: 4 };
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7].map((s) => bucketOfStep(p4, s, 8)), [
    0,
    0,
    1,
    1,
    2,
    2,
    3,
    3,
  ]);
  assert.deepEqual([0, 1, 2].map((s) => bucketOfStep(p4, s, 3)), [0, 1, 2]);
  assert.deepEqual([0, 1, 2].map((s) => bucketOfStep({ buckets: 1 }, s, 3)), [0, 0, 0]);
  assert.throws(() => bucketOfStep(p4, -1, 8), RangeError);
  assert.throws(() => bucketOfStep(p4, 0, 0), RangeError);
  assert.equal(bucketOfStep(4, 7, 8), 3);
  assert.throws(() => bucketOfStep(0, 0, 8), RangeError);
});

function storedPlan(): ParoPlan {
  const rng = freshRng("paro storage");
  const rec = randomRecorder(rng, { layers: 2, heads: 3, t: 3 + 48, buckets: 2 });
  return calibrateParo(rec, { gridH: 6, gridW: 8, denseTokens: 3, tile: 8, density: 0.4 });
}

function assertSamePlan(a: ParoPlan, b: ParoPlan): void {
  assert.deepEqual({ ...a, keptMass: 0 }, { ...b, keptMass: 0 });
  assert.ok(maxDiff(a.keptMass, b.keptMass) <= 5e-5);
}

Deno.test("paroTensors → readParo round trip; every corruption is a FormatError", () => {
  const plan = storedPlan();
  const { metadata, tensors } = paroTensors(plan);
  const [order, masks] = tensors;
  assert.deepEqual(tensors.map((t) => [t.name, t.dtype, t.shape]), [
    ["paro.order", "U8", [2, 3]],
    ["paro.masks", "U8", [2, 2, 3, maskBytes(7)]],
  ]);
  assertSamePlan(readParo(metadata, order.data, masks.data), plan);
  // orders stored under other names' indices are mapped back by name
  const names = [...TOKEN_ORDERS].reverse();
  const remapped = order.data.map((i) => names.indexOf(TOKEN_ORDERS[i]));
  const meta2 = JSON.stringify({ ...JSON.parse(metadata), orderNames: names });
  assertSamePlan(readParo(meta2, remapped, masks.data), plan);
  const noKept = readParo(
    JSON.stringify({ ...JSON.parse(metadata), keptMass: undefined }),
    order.data,
    masks.data,
  );
  assert.ok(noKept.keptMass.every(Number.isNaN));

  const edit = (patch: object) => JSON.stringify({ ...JSON.parse(metadata), ...patch });
  const emptyRow = masks.data.slice();
  emptyRow[maskBytes(7) * 5] &= 0x80; // mask 5's row 0 (bits 0..6)
  const cases: [string, string, Uint8Array, Uint8Array, RegExp][] = [
    ["not JSON", "{", order.data, masks.data, /not JSON/],
    ["version", edit({ version: 2 }), order.data, masks.data, /version 2/],
    ["tile", edit({ tile: 12 }), order.data, masks.data, /tile is 12/],
    ["tokens", edit({ tokens: 50 }), order.data, masks.data, /tokens 50/],
    ["density", edit({ density: 0 }), order.data, masks.data, /density/],
    ["layers", edit({ layers: 0 }), order.data, masks.data, /layers/],
    ["order size", metadata, order.data.subarray(1), masks.data, /paro.order.*5 bytes/],
    ["mask size", metadata, order.data, masks.data.subarray(1), /paro.masks.*bytes/],
    ["order index", metadata, order.data.with(4, 9), masks.data, /layer 1 head 1: order index 9/],
    ["order for grid", metadata, order.data.with(0, 4), masks.data, /"block8"/],
    ["empty row", metadata, order.data, emptyRow, /layer 1 head 2: query-tile row 0 is empty/],
    ["padding", metadata, order.data, masks.data.with(6, 0xff), /padding/],
    ["keptMass", edit({ keptMass: [1] }), order.data, masks.data, /keptMass/],
  ];
  for (const [what, meta, o, m, message] of cases) {
    assert.throws(() => readParo(meta, o, m, "x.safetensors"), (e) => {
      assert.ok(e instanceof FormatError, `${what}: ${e}`);
      assert.match(e.message, message, what);
      assert.match(e.message, /^Cannot read x.safetensors/);
      return true;
    });
  }
  assert.throws(() => paroTensors({ ...plan, orders: plan.orders.subarray(1) }), TypeError);
});

Deno.test("readParoFrom reads the plan of a pre-quantized file, undefined without one", async () => {
  const plan = storedPlan();
  const { metadata, tensors } = paroTensors(plan);
  const dir = await Deno.makeTempDir({ prefix: "paro_test_" });
  const write = async (path: string, meta: Record<string, string>, ts = tensors) => {
    const w = await SafetensorsWriter.create(path, {
      tensors: ts.map((t) => ({ ...t, byteLength: t.data.byteLength })),
      metadata: {
        ...encodeMeta({
          quantConfig: {
            method: "svdquant",
            weightFormat: "int4",
            groupSize: 64,
            rank: 0,
            actFormat: "int4",
            scaling: "none",
          },
          modelConfig: {},
          family: "dit",
          policy: {},
        }),
        checksum: `fnv1a64:${"0".repeat(16)}`,
        ...meta,
      },
    });
    for (const t of ts) await w.write(t.name, t.data);
    await w.commit();
    return await QuantFile.open(path, { verify: false });
  };
  try {
    const withPlan = await write(`${dir}/a.safetensors`, { paro: metadata });
    assertSamePlan((await readParoFrom(withPlan))!, plan);
    withPlan.close();
    const without = await write(`${dir}/b.safetensors`, {});
    assert.equal(await readParoFrom(without), undefined);
    without.close();
    const lacking = await write(`${dir}/c.safetensors`, { paro: metadata }, tensors.slice(0, 1));
    await assert.rejects(() => readParoFrom(lacking), {
      name: "FormatError",
      message: /paro.masks/,
    });
    lacking.close();
    const reshaped = [tensors[0], { ...tensors[1], shape: [2 * 2 * 3, maskBytes(7)] }];
    const badShape = await write(`${dir}/d.safetensors`, { paro: metadata }, reshaped);
    await assert.rejects(() => readParoFrom(badShape), { name: "FormatError", message: /shape/ });
    badShape.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
