/**
 * GPU vs float64 reference for `gemm_w4a4_lowrank` on fresh random inputs (outputs poisoned).
 *
 * Error bounds, per element, with S = Σ|terms| (every group product, low-rank product and the
 * bias, from the reference): the integer group sums are exact, so only f32 rounding of the scale
 * products and of the running sum remains:
 * - f32 output: |err| ≤ 1e-5·S + 1e-7 (≈ (K/G + R + 2)·2⁻²⁴·S with margin);
 * - with GELU: |err| ≤ 2e-5·S + 1e-6 (GELU's slope ≤ 1.13, plus exp's error on the GPU);
 * - f16 output: the f32 bound + 2⁻¹⁰·|y| + 2⁻²⁴ (one rounding to f16, subnormals included; one ulp
 *   since Vulkan leaves the f32 → f16 rounding direction to the driver).
 *
 * @module
 */
import type { Gpu } from "../../gpu/device.ts";
import {
  type ActMode,
  type PackedWeight,
  packF16,
  type QuantAct,
  quantizeAct,
  quantizeWeight,
  roundF16,
  type WeightFormat,
  weightScaleWords,
} from "../../formats/packing.ts";
import { fromActBytes } from "../_wgsl.ts";
import { inRangeAfterSaturation } from "../gemm_f16/_gemm_check.ts";
import {
  freshRng,
  HAS_GPU,
  maxErrors,
  NO_GPU_REASON,
  poison,
  type Rng,
  testGpu,
} from "../../gpu/_testing.ts";
import {
  bufferSizes,
  GemmW4A4Lowrank,
  gemmW4A4Lowrank,
  type GemmW4A4LowrankShape,
  type W4A4Tile,
} from "./gemm_w4a4_lowrank.ts";
import { geluTanh, gemmW4A4LowrankRef } from "./gemm_w4a4_lowrank_ref.ts";

if (!HAS_GPU) console.log(`gemm_w4a4_lowrank GPU tests skipped: ${NO_GPU_REASON}`);

interface Case {
  m: number;
  k: number;
  n: number;
  r: number;
  format: WeightFormat;
  actMode: ActMode;
  dtype: "f16" | "f32";
  bias: boolean;
  gelu: boolean;
  tile?: W4A4Tile;
  channelScale?: boolean;
}

/** "M K N R format/actMode dtype [bias] [gelu] [cs] [tile=WGXxWGY]" (cs: channel_scale) */
const CASES: Case[] = [
  "1 64 8 0 int4/int4 f32",
  "7 192 100 16 int4/int4_unsigned f32 bias gelu",
  "64 1152 384 32 int4/int4 f16 bias",
  "257 192 100 32 nvfp4/nvfp4 f32 bias gelu",
  "33 192 136 32 nvfp4/nvfp4 f32 bias cs", // per-channel scale (imported Nunchaku wcscales)
  "7 128 72 16 int4/int4 f16 cs",
  "7 64 384 0 nvfp4/nvfp4 f16 gelu",
  "257 1152 8 16 int4/int4_unsigned f16 bias",
  "64 192 8 32 nvfp4/nvfp4 f32",
  "1 1152 100 32 nvfp4/nvfp4 f16 bias gelu",
  "257 64 384 16 int4/int4 f32 gelu",
  "64 64 100 0 int4/int4_unsigned f32 bias",
  "7 48 100 16 nvfp4/nvfp4 f32 bias", // K not a multiple of the 64-wide K-step
  "100 192 100 16 int4/int4 f32 bias tile=8x16", // a smaller workgroup tile
].map(parseCase);

function parseCase(text: string): Case {
  const [m, k, n, r, modes, dtype, ...flags] = text.split(" ");
  const [format, actMode] = modes.split("/") as [WeightFormat, ActMode];
  const tile = flags.find((f) => f.startsWith("tile="))?.slice(5).split("x").map(Number);
  return {
    m: +m,
    k: +k,
    n: +n,
    r: +r,
    format,
    actMode,
    dtype: dtype as "f16" | "f32",
    bias: flags.includes("bias"),
    gelu: flags.includes("gelu"),
    channelScale: flags.includes("cs"),
    tile: tile && { wgX: tile[0], wgY: tile[1] },
  };
}

interface Inputs {
  act: QuantAct;
  weight: PackedWeight;
  loraAct: Float32Array;
  loraUp: Float32Array;
  bias: Float32Array;
  channelScale?: Float32Array;
}

/** Random X (Gaussian with outlier channels and spikes), W, f16-rounded lora_up, bias. */
function makeInputs(rng: Rng, c: Case): Inputs {
  const x = rng.normals(c.m * c.k);
  for (let col = 0; col < c.k; col += 17) { // outlier channels
    for (let row = 0; row < c.m; row++) x[row * c.k + col] *= 10;
  }
  for (let i = 0; i < 3; i++) x[rng.int(0, x.length - 1)] = rng.uniform(-60, 60);
  if (c.actMode === "int4_unsigned") { // post-GELU activations
    for (let i = 0; i < x.length; i++) x[i] = Math.fround(geluTanh(x[i]));
  }
  const w = rng.normals(c.n * c.k, 0.05);
  const loraUp = rng.normals(c.n * c.r, 0.1).map(roundF16);
  return {
    act: quantizeAct(x, c.m, c.k, c.actMode),
    weight: quantizeWeight(w, c.n, c.k, c.format),
    loraAct: rng.normals(c.m * c.r, 2),
    loraUp,
    bias: rng.normals(c.n),
    channelScale: c.channelScale
      ? Float32Array.from({ length: c.n }, () => Math.exp(rng.normal()))
      : undefined,
  };
}

function shapeOf(c: Case, inp: Inputs): GemmW4A4LowrankShape {
  return {
    ...c,
    tensorScale: inp.weight.format === "nvfp4" ? inp.weight.tensorScale : undefined,
  };
}

/** Upload the inputs, run the kernel on a poisoned Y, read Y back as f32. */
async function runGpu(gpu: Gpu, shape: GemmW4A4LowrankShape, inp: Inputs): Promise<Float32Array> {
  const bufs = {
    qact: await gpu.upload("buffer qact", inp.act.qact),
    ascales: await gpu.upload("buffer ascales", inp.act.ascales),
    qweight: await gpu.upload("buffer qweight", inp.weight.qweight),
    wscales: await gpu.upload("buffer wscales", weightScaleWords(inp.weight)),
    lora_act: shape.r > 0 ? await gpu.upload("buffer lora_act", inp.loraAct) : undefined,
    lora_up: shape.r > 0 ? await gpu.upload("buffer lora_up", packF16(inp.loraUp)) : undefined,
    // the bias buffer holds the bias, then the channel scale
    bias: shape.bias || shape.channelScale
      ? await gpu.upload(
        "buffer bias",
        Float32Array.from([
          ...(shape.bias ? inp.bias : []),
          ...(shape.channelScale ? inp.channelScale! : []),
        ]),
      )
      : undefined,
    y: await gpu.upload("buffer y", poison(shape.m * shape.n * (shape.dtype === "f16" ? 2 : 4))),
  };
  try {
    await gemmW4A4Lowrank(gpu, shape, bufs);
    return fromActBytes(await gpu.read(bufs.y), shape.dtype, shape.m * shape.n);
  } finally {
    gpu.destroy(...Object.values(bufs));
  }
}

/** Check `y` against the reference with the bounds of the module doc; returns the max errors. */
function check(name: string, c: Case, y: ArrayLike<number>, ref: Float64Array, abs: Float64Array) {
  let worst = 0, worstIdx = -1;
  for (let i = 0; i < ref.length; i++) {
    let bound = c.gelu ? 2e-5 * abs[i] + 1e-6 : 1e-5 * abs[i] + 1e-7;
    if (c.dtype === "f16") bound += 2 ** -10 * Math.abs(ref[i]) + 2 ** -24;
    const ratio = Math.abs(y[i] - ref[i]) / bound;
    if (!(ratio <= worst)) {
      worst = Number.isNaN(ratio) ? Infinity : ratio;
      worstIdx = i;
    }
  }
  const e = maxErrors(y, ref);
  const msg = `${name}: max abs err ${e.maxAbs.toExponential(2)}, max rel err ` +
    `${e.maxRel.toExponential(2)}, worst err/bound ${worst.toFixed(3)}`;
  if (worst > 1) {
    throw new Error(`${msg} at ${worstIdx}: got ${y[worstIdx]}, expected ${ref[worstIdx]}`);
  }
  console.log(msg);
}

function caseName(c: Case): string {
  return `M=${c.m} K=${c.k} N=${c.n} R=${c.r} ${c.format}/${c.actMode} ${c.dtype}` +
    `${c.bias ? " bias" : ""}${c.gelu ? " gelu" : ""}${c.channelScale ? " cs" : ""}${
      c.tile ? " tile " + JSON.stringify(c.tile) : ""
    }`;
}

Deno.test({
  name: "gemm_w4a4_lowrank matches the float64 reference on random shapes",
  ignore: !HAS_GPU,
  async fn() {
    const gpu = (await testGpu())!;
    const rng = freshRng("gemm_w4a4_lowrank");
    for (const c of CASES) {
      if (c.dtype === "f16" && !gpu.caps.shaderF16) continue;
      const inp = makeInputs(rng, c);
      const y = await runGpu(gpu, shapeOf(c, inp), inp);
      const { y: ref, absSum } = gemmW4A4LowrankRef({
        act: inp.act,
        weight: inp.weight,
        r: c.r,
        loraAct: inp.loraAct,
        loraUp: inp.loraUp,
        bias: c.bias ? inp.bias : undefined,
        gelu: c.gelu,
        channelScale: inp.channelScale,
      });
      check(caseName(c), c, y, ref, absSum);
    }
  },
});

Deno.test({
  name: "gemm_w4a4_lowrank fused epilogue: R=0 result = R=32 result − lora_act·lora_upᵀ",
  ignore: !HAS_GPU,
  async fn() {
    const gpu = (await testGpu())!;
    const rng = freshRng("gemm_w4a4_lowrank epilogue");
    const c: Case = {
      m: 33,
      k: 128,
      n: 72,
      r: 32,
      format: "int4",
      actMode: "int4",
      dtype: "f32",
      bias: true,
      gelu: false,
    };
    const inp = makeInputs(rng, c);
    const y32 = await runGpu(gpu, shapeOf(c, inp), inp);
    const y0 = await runGpu(gpu, { ...shapeOf(c, inp), r: 0 }, inp);
    const { absSum } = gemmW4A4LowrankRef({ ...inp, r: c.r, bias: inp.bias });
    const expected = new Float64Array(c.m * c.n);
    for (let i = 0; i < c.m; i++) {
      for (let j = 0; j < c.n; j++) {
        let lora = 0;
        for (let t = 0; t < c.r; t++) lora += inp.loraAct[i * c.r + t] * inp.loraUp[j * c.r + t];
        expected[i * c.n + j] = y32[i * c.n + j] - lora;
      }
    }
    // Both GPU results carry the f32 bound; their difference at most twice that.
    check("R=0 vs R=32 − lora", { ...c, gelu: false }, y0, expected, absSum.map((s) => 2 * s));
  },
});

Deno.test({
  name: "gemm_w4a4_lowrank rejects bad shapes and buffers before GPU work",
  ignore: !HAS_GPU,
  async fn() {
    const gpu = (await testGpu())!;
    const base: GemmW4A4LowrankShape = {
      m: 4,
      k: 64,
      n: 8,
      r: 16,
      format: "int4",
      actMode: "int4",
      dtype: "f32",
      bias: true,
      gelu: false,
    };
    const rejects = async (
      s: Partial<GemmW4A4LowrankShape>,
      type: ErrorConstructor,
      re: RegExp,
    ) => {
      let err: unknown = null;
      try {
        await GemmW4A4Lowrank.create(gpu, { ...base, ...s });
      } catch (e) {
        err = e;
      }
      if (!(err instanceof type) || !re.test((err as Error).message)) {
        throw new Error(`shape ${JSON.stringify(s)}: expected ${type.name} ${re}, got ${err}`);
      }
    };
    await rejects({ actMode: "nvfp4" }, TypeError, /activation mode "nvfp4" does not match int4/);
    await rejects(
      { format: "nvfp4", actMode: "int4_unsigned", tensorScale: 1 },
      TypeError,
      /match/,
    );
    await rejects({ k: 96 }, RangeError, /K=96 is not a multiple of the int4 group size 64/);
    await rejects({ format: "nvfp4", actMode: "nvfp4", k: 40, tensorScale: 1 }, RangeError, /16/);
    await rejects({ format: "nvfp4", actMode: "nvfp4" }, RangeError, /tensorScale/);
    await rejects({ m: 0 }, RangeError, /M is 0/);
    await rejects({ tile: { wgX: 12, wgY: 16 } }, RangeError, /tile/);

    const op = await GemmW4A4Lowrank.create(gpu, base);
    const sizes = Object.fromEntries(bufferSizes(base).map(([name, bytes]) => [name, bytes]));
    const made: GPUBuffer[] = [];
    const buf = async (bytes: number) => {
      const b = await gpu.createBuffer("buffer bad-shape test", bytes);
      made.push(b);
      return b;
    };
    try {
      const good = {
        qact: await buf(sizes.qact),
        ascales: await buf(sizes.ascales),
        qweight: await buf(sizes.qweight),
        wscales: await buf(sizes.wscales),
        lora_act: await buf(sizes.lora_act),
        lora_up: await buf(sizes.lora_up),
        bias: await buf(sizes.bias),
        y: await buf(sizes.y),
      };
      op.dispatch(good); // the right sizes pass
      const small = await buf(sizes.qweight - 4);
      const expectThrow = (f: () => unknown, re: RegExp) => {
        try {
          f();
        } catch (e) {
          if (e instanceof TypeError && re.test(e.message)) return;
          throw new Error(`expected TypeError ${re}, got ${e}`);
        }
        throw new Error(`expected TypeError ${re}, nothing thrown`);
      };
      expectThrow(
        () => op.dispatch({ ...good, qweight: small }),
        /qweight has 252 bytes, expected \[N=8, K=64\] 4-bit codes as u32 \[N, K\/8\] = 256 bytes/,
      );
      expectThrow(() => op.dispatch({ ...good, lora_act: undefined }), /lora_act is missing/);
      expectThrow(() => op.dispatch({ ...good, bias: undefined }), /bias is missing/);
      const smallY = await buf(sizes.y - 4);
      expectThrow(
        () => op.dispatch({ ...good, y: smallY }),
        /y has 124 bytes, expected \[M=4, N=8\] f32/,
      );
    } finally {
      op.destroy();
      gpu.destroy(...made);
    }
  },
});

Deno.test({
  name: "gemm_w4a4_lowrank f16 output saturates at ±65504 (no inf), other outputs unchanged",
  ignore: !HAS_GPU,
  async fn() {
    const gpu = (await testGpu())!;
    if (!gpu.caps.shaderF16) return; // the f16 output needs shader-f16 (feature test elsewhere)
    const rng = freshRng("gemm_w4a4_lowrank saturate");
    for (const text of ["64 192 100 16 int4/int4 f16 bias", "7 64 72 16 nvfp4/nvfp4 f16 bias"]) {
      const c = parseCase(text);
      const inp = makeInputs(rng, c);
      // every fifth column's bias far beyond f16's range (FLUX's residual branches can get there)
      for (let j = 0; j < c.n; j += 5) inp.bias[j] = j % 10 === 0 ? 1e5 : -1e5;
      const y = await runGpu(gpu, shapeOf(c, inp), inp);
      const { y: ref, absSum } = gemmW4A4LowrankRef({
        act: inp.act,
        weight: inp.weight,
        r: c.r,
        loraAct: inp.loraAct,
        loraUp: inp.loraUp,
        bias: inp.bias,
        gelu: false,
        channelScale: inp.channelScale,
      });
      const keep = inRangeAfterSaturation(text, y, ref);
      const [got, refIn, absIn] = [y, ref, absSum].map((v) => Float64Array.from(keep, (i) => v[i]));
      check(`${text} (in-range outputs)`, c, got, refIn, absIn);
    }
  },
});
