/**
 * gate_residual on the GPU against the float64 reference, on fresh random inputs each run (the
 * seed is printed; replay with SEED=...). x is updated in place, so it cannot be poisoned instead:
 * gates and y are drawn with |g·y| ≥ 1/8, over 10× the bound below for |x| ≲ 8, so an element left
 * unwritten fails; and 16 poisoned bytes past the end of x must stay untouched.
 *
 * Error bound, per element, from the same (already rounded) inputs the reference used: the f32
 * result of fma(g, y, x) is off by at most one rounding of the product and one of the sum (the
 * driver may not fuse), so f32: |err| ≤ 2⁻²²·(|x| + |g·y|); f16 adds the rounding of the output
 * to f16: one ulp, 2⁻¹⁰·|x'| (Vulkan leaves the rounding direction to the driver), and 2⁻²⁴ for
 * subnormals.
 *
 * The residual dtype (`res=`, FLUX's f32 residual under f16 activations): x is drawn beyond the
 * f16 range (σ = 1e5) and stored as f32, y large in f16 (|y| to 6e4), so the sums pass ±65504 and
 * must come back exact to the f32 bound (no f16 rounding of the output); f32 with an f16 residual
 * covers the other mixed specialisation (its output rounds to f16).
 *
 * @module
 */
import assert from "node:assert/strict";
import { Gpu } from "../../gpu/device.ts";
import { GpuFeatureError } from "../../gpu/errors.ts";
import { freshRng, HAS_GPU, NO_GPU_REASON, poison, testGpu } from "../../gpu/_testing.ts";
import { actBytes, fromActBytes, toActArray } from "../_wgsl.ts";
import { GateResidual, gateResidual, type GateResidualShape } from "./gate_residual.ts";
import { gateResidualRef } from "./gate_residual_ref.ts";

const ignore = !HAS_GPU; // NO_GPU_REASON explains the skip
if (ignore) console.warn(`gate_residual tests skipped: ${NO_GPU_REASON}`);

const TAIL = 16; // poisoned bytes past the end of x

interface Case extends GateResidualShape {
  /** Workgroups in the grid (forces the grid-stride loop). */
  grid?: number;
}

/** "B T D dtype [mod=W:G] [wg=N] [grid=L]" */
const CASES: Case[] = [
  "1 1 8 f32",
  "2 7 72 f16",
  "1 64 256 f32 mod=6:5",
  "2 64 256 f16 mod=6:5",
  "2 7 1152 f32",
  "1 64 1152 f16",
  "2 1 100 f32",
  "1 7 100 f16 mod=6:5",
  "2 64 72 f32 wg=64",
  "1 7 8 f16 mod=2:1",
  "1 1 1 f32 mod=1:0",
  "2 64 100 f32 grid=3", // scalar: 12 800 elements, 768 invocations
  "2 64 1152 f16 grid=5 wg=128", // vec4: 36 864 vec4, 640 invocations
  "2 7 72 f16 res=f32", // FLUX: f32 residual beyond f16, f16 branch and gate
  "1 7 100 f16 res=f32 mod=3:2", // scalar
  "2 64 1152 f16 res=f32 grid=5",
  "2 7 72 f32 res=f32", // same dtype: the default pipeline
  "1 7 100 f32 res=f16",
].map(parseCase);

function parseCase(text: string): Case {
  const [b, t, d, dtype, ...flags] = text.split(" ");
  const flag = (name: string) =>
    flags.find((f) => f.startsWith(name + "="))?.slice(name.length + 1);
  const [modWidth, gateChunk] = (flag("mod") ?? "6:2").split(":").map(Number);
  const wg = flag("wg");
  const grid = flag("grid");
  return {
    b: Number(b),
    t: Number(t),
    d: Number(d),
    dtype: dtype as "f16" | "f32",
    residualDtype: flag("res") as "f16" | "f32" | undefined,
    modWidth,
    gateChunk,
    workgroupSize: wg ? Number(wg) as 64 : undefined,
    grid: grid ? Number(grid) : undefined,
  };
}

function caseName(c: Case): string {
  return `gate_residual B=${c.b} T=${c.t} D=${c.d} ${c.dtype}` +
    `${c.residualDtype ? ` residual ${c.residualDtype}` : ""} mod=${c.modWidth}:${c.gateChunk}` +
    `${c.workgroupSize ? ` wg=${c.workgroupSize}` : ""}` +
    `${c.grid ? ` grid=${c.grid}` : ""}`;
}

/** Random inputs rounded to the storage dtype (the values the reference sees). */
function inputs(name: string, c: Case) {
  const rng = freshRng(name);
  const rows = c.b * c.t;
  const awayFromZero = (n: number, lo: number, hi: number) =>
    Float32Array.from({ length: n }, () => (rng.next() < 0.5 ? -1 : 1) * rng.uniform(lo, hi));
  const big = c.residualDtype === "f32" && c.dtype === "f16"; // sums beyond f16
  const x = rng.normals(rows * c.d, big ? 1e5 : 2);
  const y = big ? awayFromZero(rows * c.d, 1e4, 6e4) : awayFromZero(rows * c.d, 0.5, 3);
  const mod = awayFromZero(c.b * c.modWidth * c.d, 0.25, 1.5);
  return {
    x: toActArray(x, c.residualDtype ?? c.dtype),
    y: toActArray(y, c.dtype),
    mod: toActArray(mod, c.dtype),
  };
}

for (const c of CASES) {
  const name = caseName(c);
  Deno.test({
    name,
    ignore,
    async fn() {
      const gpu = (await testGpu())!;
      const f16 = c.dtype === "f16" || c.residualDtype === "f16";
      if (f16 && !gpu.caps.shaderF16) return; // covered by the feature test
      const { x, y, mod } = inputs(name, c);
      const res = c.residualDtype ?? c.dtype;
      const xBytes = c.b * c.t * c.d * actBytes(res);
      const init = poison(xBytes + TAIL);
      init.set(new Uint8Array(x.buffer, 0, xBytes));
      const bx = await gpu.upload("buffer test x", init);
      const by = await gpu.upload("buffer test y", y);
      const bm = await gpu.upload("buffer test mod", mod);
      const op = await GateResidual.create(gpu, c, c.grid);
      try {
        await gpu.runChecked(`run ${name}`, [op.dispatch({ x: bx, y: by, mod: bm })]);
        const bytes = await gpu.read(bx);
        const got = fromActBytes(bytes, res, c.b * c.t * c.d);
        const tail = new Uint8Array(bytes, bytes.byteLength - TAIL);
        assert.ok(tail.every((v) => v === 0xff), `${name}: wrote past the end of x`);
        const ref = gateResidualRef({ ...c, x, y, mod });
        checkOutput(name, c, got, ref, x, y, mod);
      } finally {
        op.destroy();
        gpu.destroy(bx, by, bm);
      }
    },
  });
}

/** Check every element against the bound in the module doc; log the largest error / bound. */
function checkOutput(
  name: string,
  c: Case,
  got: Float32Array,
  ref: Float64Array,
  x: ArrayLike<number>,
  y: ArrayLike<number>,
  mod: ArrayLike<number>,
): void {
  const f16 = (c.residualDtype ?? c.dtype) === "f16"; // the output's rounding
  let worst = 0, rel = 0, top = 0;
  for (let r = 0; r < c.b * c.t; r++) {
    const gate = Math.floor(r / c.t) * c.modWidth * c.d + c.gateChunk * c.d;
    for (let i = 0; i < c.d; i++) {
      const k = r * c.d + i;
      const s = Math.abs(x[k]) + Math.abs(mod[gate + i] * y[k]);
      const err = Math.abs(got[k] - ref[k]);
      const bound = 2 ** -22 * s + (f16 ? 2 ** -10 * Math.abs(ref[k]) + 2 ** -24 : 0);
      if (!(err <= bound)) {
        throw new Error(
          `${name}: x[${r}, ${i}] is ${got[k]}, expected ${ref[k]} (error ${err.toExponential(3)}` +
            `, bound ${bound.toExponential(3)})`,
        );
      }
      worst = Math.max(worst, err / bound);
      rel = Math.max(rel, err / s);
      top = Math.max(top, Math.abs(got[k]));
    }
  }
  console.log(
    `${name}: max |err| / (|x| + |g·y|) = ${rel.toExponential(2)}, max |err| / bound = ` +
      `${worst.toFixed(3)}, max |x'| = ${top.toExponential(2)}`,
  );
  if (c.residualDtype === "f32" && c.dtype === "f16") {
    assert.ok(top > 65504, `${name}: the sums must pass the f16 range (max ${top})`);
  }
}

Deno.test({
  name: "gate_residual rejects bad shapes and buffers before any GPU work",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    const shape: GateResidualShape = { b: 2, t: 7, d: 72, dtype: "f32", modWidth: 6, gateChunk: 2 };
    const bad: [Partial<GateResidualShape>, string, RegExp][] = [
      [{ d: 0 }, "RangeError", /D=0 must be a positive integer/],
      [{ b: -1 }, "RangeError", /B=-1/],
      [{ modWidth: 0 }, "RangeError", /modWidth=0/],
      [{ gateChunk: 6 }, "RangeError", /gateChunk=6 must be a chunk index of mod, 0..5/],
      [{ workgroupSize: 100 as 64 }, "RangeError", /workgroupSize=100/],
      [{ dtype: "bf16" as "f16" }, "TypeError", /dtype "bf16"/],
      [{ t: 2 ** 30 }, "RangeError", /x \[B·T=2147483648, D=72\] f32 has .* bytes, over/],
    ];
    for (const [patch, errName, message] of bad) {
      await assert.rejects(() => GateResidual.create(gpu, { ...shape, ...patch }), {
        name: errName,
        message,
      });
    }
    const x = await gpu.createBuffer("buffer test x", 14 * 72 * 4);
    const y = await gpu.createBuffer("buffer test y", 14 * 72 * 4 - 4);
    const mod = await gpu.createBuffer("buffer test mod", 2 * 6 * 72 * 4);
    const small = await gpu.createBuffer("buffer test small", 2 * 6 * 72 * 4 - 4);
    const op = await GateResidual.create(gpu, shape);
    try {
      assert.throws(() => op.dispatch({ x, y, mod }), {
        name: "TypeError",
        message: "Cannot run gate_residual: y has 4028 bytes, expected [B·T=14, D=72] f32 " +
          "= 4032 bytes or more",
      });
      assert.throws(() => op.dispatch({ x: y, y: x, mod }), {
        name: "TypeError",
        message: /x has 4028 bytes/,
      });
      assert.throws(() => op.dispatch({ x, y: x, mod: small }), {
        name: "TypeError",
        message: /mod has 3452 bytes, expected \[B=2, 6·D=432\] f32 = 3456 bytes/,
      });
      assert.throws(() => op.dispatch({ x, y: x } as never), {
        name: "TypeError",
        message: /mod is missing/,
      });
      assert.throws(() => op.dispatch({ x, y: x, mod }), {
        name: "TypeError",
        message: /y and x are the same buffer/,
      });
      await assert.rejects(() => gateResidual(gpu, { ...shape, t: 8 }, { x, y: x, mod }), {
        name: "TypeError",
        message: /x has 4032 bytes, expected \[B·T=16, D=72\] f32 = 4608 bytes/,
      });
    } finally {
      op.destroy();
      gpu.destroy(x, y, mod, small);
    }
  },
});

Deno.test({
  name: "gate_residual refuses f16 on a device without shader-f16",
  ignore,
  async fn() {
    const gpu = await Gpu.create({ disableF16: true, selfTest: false });
    try {
      await assert.rejects(
        () =>
          GateResidual.create(gpu, { b: 1, t: 1, d: 8, dtype: "f16", modWidth: 6, gateChunk: 2 }),
        (e) => e instanceof GpuFeatureError && /shader-f16/.test(e.message),
      );
    } finally {
      gpu.close();
    }
  },
});
