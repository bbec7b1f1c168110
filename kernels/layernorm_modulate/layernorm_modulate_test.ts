/**
 * layernorm_modulate on the GPU against the float64 reference, on fresh random inputs each run
 * (the seed is printed; replay with SEED=...). The output buffer is poisoned with NaN first and
 * 16 poisoned bytes past its end must stay untouched. Some cases add a large common offset to
 * every row (|offset| up to 1000 in f32, 300 in f16, spread 1): the one-pass formula
 * E[x²] − E[x]² in f32 would lose ~1e-1 of the variance there and fail the bound.
 *
 * The residual dtype (`res=`, FLUX's f32 residual under f16 activations): x is drawn beyond the
 * f16 range (offsets to 1e5, spreads to 3e4) and stored as f32; with `sat` the modulation is drawn
 * large (σ = 2e4) so that many outputs pass ±65504, which an f16 h must store as ±65504 (the
 * reference clamps them too); f32 with an f16 residual covers the other mixed specialisation.
 *
 * Error bound, per element, from the same (already rounded) inputs the reference used, with
 * n = the reference's normalized value, s and sh its scale and shift, u = 2⁻²⁴ and
 * row scale S = |1 + s|·(|n| + 1) + |sh|:
 * - f32: |err| ≤ 1e-5·S. The sums run over ≤ 16 values per invocation and a tree of ≤ 8 levels,
 *   so the mean, Σ(x − m) and Σ(x − m)² carry relative errors ≤ 24u ≈ 1.4e-6 of Σ|x − m| and
 *   Σ(x − m)²; the output never subtracts the rounded mean (see the shader), so n is off by
 *   ≲ 3e-6·(|n| + 1), whatever the offset; the modulation adds a few u·S. Measured: ~1e-7·S.
 * - f16: the inputs are exact in f32, so the same 1e-5·S, plus the rounding of the output to
 *   f16: one ulp, 2⁻¹⁰·|h| (Vulkan leaves the f32 → f16 rounding direction to the driver), and
 *   2⁻²⁴ for subnormals.
 *
 * @module
 */
import assert from "node:assert/strict";
import { Gpu } from "../../gpu/device.ts";
import { GpuFeatureError } from "../../gpu/errors.ts";
import { freshRng, HAS_GPU, NO_GPU_REASON, poison, testGpu } from "../../gpu/_testing.ts";
import { actBytes, fromActBytes, toActArray } from "../_wgsl.ts";
import {
  LayernormModulate,
  layernormModulate,
  type LayernormModulateShape,
} from "./layernorm_modulate.ts";
import { layernormModulateRef } from "./layernorm_modulate_ref.ts";

const ignore = !HAS_GPU; // NO_GPU_REASON explains the skip
if (ignore) console.warn(`layernorm_modulate tests skipped: ${NO_GPU_REASON}`);

const TOL = 1e-5;
const TAIL = 16; // poisoned bytes past the end of h

interface Case extends LayernormModulateShape {
  /** Largest |common offset| of a row. */
  offset: number;
  /** Every row is one small integer (zero variance: h must equal the shift exactly). */
  constant: boolean;
  /** Workgroups per grid dimension (forces the 2-D row grid). */
  grid?: number;
  /** Spread of a row around its offset (default: 1 with an offset, else random around 1). */
  spread?: number;
  /** Modulation drawn with σ = 2e4 (outputs past f16's range). */
  sat: boolean;
}

/** "B T D dtype [res=R] [off=O] [spread=S] [mod=W:S:C] [eps=E] [wg=N] [grid=L] [const] [sat]" */
const CASES: Case[] = [
  "1 1 8 f32",
  "2 7 1 f32 mod=2:0:1", // D=1: zero variance, h = shift
  "2 7 72 f16 off=300",
  "1 64 256 f32 off=1000",
  "2 64 256 f16 mod=6:3:4",
  "2 7 1152 f32 mod=6:3:4",
  "1 7 1152 f16 off=300",
  "2 1 100 f32 off=1000 mod=2:0:1",
  "1 64 100 f16",
  "2 64 72 f32 mod=2:0:1",
  "1 7 8 f16 off=300 mod=2:0:1",
  "2 1 1152 f16 off=300 mod=6:3:4",
  "1 7 4096 f16 off=300", // largest D, vec4: 4 slots of 256
  "1 1 4095 f32 off=1000", // largest scalar D: 4 slots of 4·256
  "2 7 1150 f32 wg=256 eps=0.01", // scalar, 2 slots of 4·256 (the default would be 3 of 4·128)
  "2 7 72 f32 wg=256 grid=4", // 2-D grid: 4×4 workgroups for 14 rows
  "1 64 100 f16 grid=10", // 10×7 workgroups for 64 rows,
  "2 7 1152 f32 const",
  "1 7 100 f16 const",
  "2 7 72 f16 res=f32 off=100000", // FLUX: an f32 residual beyond f16, f16 h
  "1 64 256 f16 res=f32 spread=30000 mod=6:3:4",
  "2 7 100 f16 res=f32 spread=30000 sat", // scalar; h past ±65504 saturates
  "1 7 1152 f16 res=f32 off=1000 sat",
  "2 7 72 f32 res=f32 spread=30000", // same dtype: the default pipeline
  "1 7 100 f32 res=f16 off=300",
].map(parseCase);

function parseCase(text: string): Case {
  const [b, t, d, dtype, ...flags] = text.split(" ");
  const flag = (name: string) =>
    flags.find((f) => f.startsWith(name + "="))?.slice(name.length + 1);
  const [modWidth, shiftChunk, scaleChunk] = (flag("mod") ?? "6:0:1").split(":").map(Number);
  const wg = flag("wg");
  const grid = flag("grid");
  const eps = flag("eps");
  return {
    b: Number(b),
    t: Number(t),
    d: Number(d),
    dtype: dtype as "f16" | "f32",
    residualDtype: flag("res") as "f16" | "f32" | undefined,
    modWidth,
    shiftChunk,
    scaleChunk,
    eps: eps ? Number(eps) : undefined,
    workgroupSize: wg ? Number(wg) as 64 : undefined,
    offset: Number(flag("off") ?? 0),
    constant: flags.includes("const"),
    grid: grid ? Number(grid) : undefined,
    spread: flag("spread") ? Number(flag("spread")) : undefined,
    sat: flags.includes("sat"),
  };
}

function caseName(c: Case): string {
  return `layernorm_modulate B=${c.b} T=${c.t} D=${c.d} ${c.dtype}` +
    `${c.residualDtype ? ` residual ${c.residualDtype}` : ""} mod=${c.modWidth}:` +
    `${c.shiftChunk}:${c.scaleChunk}${c.offset ? ` offset=${c.offset}` : ""}` +
    `${c.spread ? ` spread=${c.spread}` : ""}${c.sat ? " saturating" : ""}` +
    `${c.eps ? ` eps=${c.eps}` : ""}${c.workgroupSize ? ` wg=${c.workgroupSize}` : ""}` +
    `${c.grid ? ` grid≤${c.grid}` : ""}${c.constant ? " constant rows" : ""}`;
}

/** Random inputs rounded to the storage dtype (the values the reference sees). */
function inputs(name: string, c: Case) {
  const rng = freshRng(name);
  const rows = c.b * c.t;
  const x = new Float32Array(rows * c.d);
  for (let r = 0; r < rows; r++) {
    const sign = rng.next() < 0.5 ? -1 : 1;
    const offset = c.offset ? sign * c.offset * rng.uniform(0.5, 1) : rng.normal();
    const spread = c.spread ?? (c.offset ? 1 : Math.exp(rng.uniform(-1, 1)));
    const level = rng.int(-8, 8);
    for (let i = 0; i < c.d; i++) {
      x[r * c.d + i] = c.constant ? level : offset + spread * rng.normal();
    }
  }
  // large draws stay inside f16 (|mod| ≤ 6e4): an infinite scale would leave nothing to check
  const mod = rng.normals(c.b * c.modWidth * c.d, c.sat ? 2e4 : 0.5)
    .map((v) => Math.max(-6e4, Math.min(6e4, v)));
  return { x: toActArray(x, c.residualDtype ?? c.dtype), mod: toActArray(mod, c.dtype) };
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
      const { x, mod } = inputs(name, c);
      const hBytes = c.b * c.t * c.d * actBytes(c.dtype);
      const bx = await gpu.upload("buffer test x", x);
      const bm = await gpu.upload("buffer test mod", mod);
      const bh = await gpu.upload("buffer test h", poison(hBytes + TAIL));
      const op = await LayernormModulate.create(gpu, c, c.grid);
      try {
        await gpu.runChecked(`run ${name}`, [op.dispatch({ x: bx, mod: bm, h: bh })]);
        const bytes = await gpu.read(bh);
        const got = fromActBytes(bytes, c.dtype, c.b * c.t * c.d);
        const tail = new Uint8Array(bytes, bytes.byteLength - TAIL);
        assert.ok(tail.every((v) => v === 0xff), `${name}: wrote past the end of h`);
        const saturate = c.dtype === "f16" && c.residualDtype === "f32";
        const ref = layernormModulateRef({ ...c, x, mod, saturate });
        if (c.sat) {
          const n = ref.h.filter((v) => Math.abs(v) === 65504).length;
          assert.ok(n > 0, `${name}: no output reached ±65504`);
          console.log(`${name}: ${n} of ${ref.h.length} outputs saturated`);
        }
        checkOutput(name, c, got, ref.h, ref.n, mod);
      } finally {
        op.destroy();
        gpu.destroy(bx, bm, bh);
      }
    },
  });
}

/** Check every element against the bound in the module doc; log the largest error / S. */
function checkOutput(
  name: string,
  c: Case,
  got: Float32Array,
  ref: Float64Array,
  n: Float64Array,
  mod: ArrayLike<number>,
): void {
  const f16 = c.dtype === "f16";
  let worst = 0, used = 0;
  for (let r = 0; r < c.b * c.t; r++) {
    const img = Math.floor(r / c.t) * c.modWidth * c.d;
    for (let i = 0; i < c.d; i++) {
      const k = r * c.d + i;
      const scale = mod[img + c.scaleChunk * c.d + i];
      const shift = mod[img + c.shiftChunk * c.d + i];
      const s = Math.abs(1 + scale) * (Math.abs(n[k]) + 1) + Math.abs(shift);
      const err = Math.abs(got[k] - ref[k]);
      const bound = c.constant ? 0 : TOL * s + (f16 ? 2 ** -10 * Math.abs(ref[k]) + 2 ** -24 : 0);
      if (!(err <= bound)) {
        throw new Error(
          `${name}: h[${r}, ${i}] is ${got[k]}, expected ${ref[k]} (error ${err.toExponential(3)}` +
            `, bound ${bound.toExponential(3)})`,
        );
      }
      worst = Math.max(worst, err / s);
      if (bound > 0) used = Math.max(used, err / bound);
    }
  }
  console.log(
    `${name}: max |err| / S = ${worst.toExponential(2)}, max |err| / bound = ${used.toFixed(3)}`,
  );
}

Deno.test({
  name: "layernorm_modulate rejects bad shapes and buffers before any GPU work",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    const shape: LayernormModulateShape = {
      b: 2,
      t: 7,
      d: 72,
      dtype: "f32",
      modWidth: 6,
      shiftChunk: 0,
      scaleChunk: 1,
    };
    const bad: [Partial<LayernormModulateShape>, string, RegExp][] = [
      [{ d: 0 }, "RangeError", /D=0 must be a positive integer/],
      [{ t: 1.5 }, "RangeError", /T=1.5/],
      [{ d: 4097 }, "RangeError", /D=4097 exceeds 4096/],
      [{ scaleChunk: 6 }, "RangeError", /scaleChunk=6 must be a chunk index of mod, 0..5/],
      [{ modWidth: 2, shiftChunk: 3 }, "RangeError", /shiftChunk=3/],
      [{ eps: 0 }, "RangeError", /eps=0/],
      [{ dtype: "bf16" as "f16" }, "TypeError", /dtype "bf16"/],
      [{ d: 4096, workgroupSize: 128 }, "RangeError", /workgroupSize=128 .* 256 or more/],
    ];
    for (const [patch, errName, message] of bad) {
      await assert.rejects(() => LayernormModulate.create(gpu, { ...shape, ...patch }), {
        name: errName,
        message,
      });
    }
    const x = await gpu.createBuffer("buffer test x", 14 * 72 * 4 - 4);
    const mod = await gpu.createBuffer("buffer test mod", 2 * 6 * 72 * 4);
    const h = await gpu.createBuffer("buffer test h", 14 * 72 * 4);
    const small = await gpu.createBuffer("buffer test small", 2 * 6 * 72 * 4 - 4);
    const op = await LayernormModulate.create(gpu, shape);
    try {
      assert.throws(() => op.dispatch({ x, mod, h }), {
        name: "TypeError",
        message: "Cannot run layernorm_modulate: x has 4028 bytes, expected [B·T=14, D=72] f32 " +
          "= 4032 bytes or more",
      });
      assert.throws(() => op.dispatch({ x: h, mod: small, h }), {
        name: "TypeError",
        message: /mod has 3452 bytes, expected \[B=2, 6·D=432\] f32 = 3456 bytes/,
      });
      assert.throws(() => op.dispatch({ x: h, mod } as never), {
        name: "TypeError",
        message: /h is missing, expected \[B·T=14, D=72\] f32/,
      });
      assert.throws(() => op.dispatch({ x: h, mod, h }), {
        name: "TypeError",
        message: /h and x are the same buffer/,
      });
      await assert.rejects(() => layernormModulate(gpu, { ...shape, t: 8 }, { x: h, mod, h }), {
        name: "TypeError",
        message: /x has 4032 bytes, expected \[B·T=16, D=72\] f32 = 4608 bytes/,
      });
    } finally {
      op.destroy();
      gpu.destroy(x, mod, h, small);
    }
  },
});

Deno.test({
  name: "layernorm_modulate refuses f16 on a device without shader-f16",
  ignore,
  async fn() {
    const gpu = await Gpu.create({ disableF16: true, selfTest: false });
    try {
      const shape = { b: 1, t: 1, d: 8, modWidth: 2, shiftChunk: 0, scaleChunk: 1 };
      await assert.rejects(
        () => LayernormModulate.create(gpu, { ...shape, dtype: "f16" }),
        (e) => e instanceof GpuFeatureError && /shader-f16/.test(e.message),
      );
    } finally {
      gpu.close();
    }
  },
});
