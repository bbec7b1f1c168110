/**
 * The runtime's arithmetic, simulated on the CPU (or through an injected {@linkcode MatMul}), and
 * the baselines that are not W4A4: weight-only INT4 (W4A16), simulated W8A8 and 16-bit float.
 *
 * The W4A4 simulation mirrors `quantize_act_lowrank` + `gemm_w4a4_lowrank` exactly in its codes
 * and scales (through formats/packing.ts): activation codes from {@linkcode quantizeAct}, weight codes
 * and group factors from {@linkcode weightCodes}/{@linkcode weightGroupScales}, the low-rank
 * factors rounded to f16 as stored, `lora_act` rounded to f32, plus the stored f32 bias. Only the
 * order and precision of the sums differ from the GPU (they are those of the MatMul: f32 products
 * of `code·factor`), a difference far below the quantization error being measured.
 *
 * ### The post-GELU shift, folded into the bias
 * In `int4_unsigned` mode the kernel quantizes `X̂ + c` (X̂ = X/λ, c = {@linkcode GELU_SHIFT}), so
 * the 4-bit GEMM computes `Σ_g s_x·s_w·Σ_k q_x·q_w = (X̂ + c + e)·R̂ᵀ`, with R̂ the dequantized
 * residual (smoothed domain) and e the activation rounding error. Row n therefore carries the
 * extra constant `c·Σ_k R̂[n,k]`, independent of the token; storing
 * `b_eff[n] = b[n] − c·Σ_k R̂[n,k]` cancels it exactly, leaving `(X̂ + e)·R̂ᵀ`, the same product the
 * signed mode computes. The low-rank branch runs on raw X and needs no correction.
 *
 * @module
 */
import type { RowSplit } from "./split.ts";
import { cpuMatMul, type MatMul } from "./linalg.ts";
import { simdResidualProduct } from "./linalg_wasm.ts";
import type { LowRank } from "./svd.ts";
import { quantizeWeightClipped } from "./clip.ts";
import { lowRankQuantize } from "./lowrank.ts";
import { GPTQ_MAX_K, gptqApplies, gptqFactor, gptqInt4 } from "./gptq.ts";
import {
  actCodes,
  actGroupScales,
  type ActMode,
  dequantizeWeight,
  GELU_SHIFT,
  groupSize,
  type PackedWeight,
  quantizeAct,
  quantizeWeight,
  roundHalfEven,
  type WeightFormat,
} from "../formats/packing.ts";

/** Tensor dtypes the quantizer writes. */
export type TensorDtype = "U32" | "F16" | "F32" | "F8_E4M3" | "I8" | "U8";

/** One output tensor: little-endian bytes of exactly `shape × dtype` size. */
export interface TensorEntry {
  /** Safetensors dtype of `data`. */
  dtype: TensorDtype;
  /** Logical shape, e.g. `[N, K/8]` for a U32 `qweight`. */
  shape: number[];
  /** Little-endian bytes. */
  data: Uint8Array;
}

/** A W4A4 (+ low-rank) layer as the runtime evaluates it. */
export interface W4A4Layer {
  n: number;
  k: number;
  /** Residual R̂ in the smoothed domain. */
  residual: PackedWeight;
  /** λ [K] (X̂ = X/λ), or null for none. */
  smooth: Float32Array | null;
  /** Rank R (0: no low-rank branch). */
  r: number;
  /** lora_down [R, K], f16-rounded, already divided by λ (applies to raw X). */
  down: Float32Array;
  /** lora_up [N, R], f16-rounded. */
  up: Float32Array;
  /** Effective f32 bias [N] (post-GELU shift folded in), or null. */
  bias: Float32Array | null;
  actMode: ActMode;
}

/** f16 tensor entry from values (rounded to f16). */
export function f16Tensor(values: ArrayLike<number>, shape: number[]): TensorEntry {
  return { dtype: "F16", shape, data: new Uint8Array(Float16Array.from(values).buffer) };
}

/** f32 tensor entry (copies). */
export function f32Tensor(values: ArrayLike<number>, shape: number[]): TensorEntry {
  return { dtype: "F32", shape, data: new Uint8Array(Float32Array.from(values).buffer) };
}

/** Raw bytes of a typed array as a tensor entry (exactly `byteLength` bytes, copied). */
export function rawTensor(
  a: Uint32Array | Int8Array | Uint8Array,
  dtype: TensorDtype,
  shape: number[],
): TensorEntry {
  return { dtype, shape, data: new Uint8Array(a.buffer, a.byteOffset, a.byteLength).slice() };
}

/** `||a − b|| / ||b||` (Frobenius); 0 when both are zero, Infinity when only b is. */
export function relativeError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < b.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  if (b.length === 0) return NaN;
  return den === 0 ? (num === 0 ? 0 : Infinity) : Math.sqrt(num / den);
}

/** Adds `bias` [N] to every row of `y` [M, N] in place (f32). */
function addBias(y: Float32Array, bias: Float32Array | null, n: number): Float32Array {
  if (!bias) return y;
  for (let i = 0; i < y.length; i++) y[i] = Math.fround(y[i] + bias[i % n]);
  return y;
}

/** The float layer's output `X·Wᵀ + b` [M, N]. */
export async function floatOutput(
  w: Float32Array,
  bias: Float32Array | null,
  x: Float32Array,
  dims: { m: number; n: number; k: number },
  matmul: MatMul = cpuMatMul,
): Promise<Float32Array> {
  const y = Float32Array.from(await matmul(x, w, dims.m, dims.k, dims.n, true));
  return addBias(y, bias, dims.n);
}

/** Values `code · factor` of a packed weight, exactly as the GEMM multiplies them ([N, K]). */
export function gemmWeightValues(p: PackedWeight): Float32Array {
  return dequantizeWeight(p); // the same products, code · factor, in one pass
}

/**
 * `b_eff[n] = b[n] − GELU_SHIFT · Σ_k R̂[n,k]` (sum in f64, stored f32): the bias that cancels the
 * shift the unsigned activation mode adds (see the module docs for the derivation).
 */
export function foldGeluShift(residual: PackedWeight, bias: Float32Array | null): Float32Array {
  const v = gemmWeightValues(residual), n = residual.n, k = residual.k;
  const out = new Float32Array(n);
  for (let row = 0; row < n; row++) {
    let s = 0;
    for (let c = 0; c < k; c++) s += v[row * k + c];
    out[row] = Math.fround((bias ? bias[row] : 0) - GELU_SHIFT * s);
  }
  return out;
}

/**
 * The stored low-rank factors: `down = L2 / λ` (so it applies to raw X) and `up = L1`, each rank
 * component rescaled by a power of two (exact) that balances the magnitudes of its down row and
 * up column, then rounded to f16. Throws `RangeError` when a factor overflows f16.
 */
export function loraFactors(
  lowRank: LowRank,
  lambda: Float32Array | null,
  n: number,
  k: number,
  name = "layer",
): { down: Float32Array; up: Float32Array } {
  const r = lowRank.r;
  const down = new Float32Array(r * k), up = new Float32Array(n * r);
  for (let j = 0; j < r; j++) {
    let maxD = 0, maxU = 0;
    for (let c = 0; c < k; c++) {
      const v = lambda ? Math.fround(lowRank.down[j * k + c] / lambda[c]) : lowRank.down[j * k + c];
      down[j * k + c] = v;
      maxD = Math.max(maxD, Math.abs(v));
    }
    for (let row = 0; row < n; row++) maxU = Math.max(maxU, Math.abs(lowRank.up[row * r + j]));
    const shift = maxD > 0 && maxU > 0 ? Math.round(0.5 * Math.log2(maxU / maxD)) : 0;
    const f = 2 ** shift;
    for (let c = 0; c < k; c++) down[j * k + c] = Math.f16round(down[j * k + c] * f);
    for (let row = 0; row < n; row++) up[row * r + j] = Math.f16round(lowRank.up[row * r + j] / f);
  }
  for (const [t, a] of [["lora_down", down], ["lora_up", up]] as const) {
    const bad = a.findIndex((v) => !Number.isFinite(v));
    if (bad >= 0) {
      throw new RangeError(
        `Cannot store the low-rank branch of ${name}: ${t}[${bad}] overflows f16; check the ` +
          `weight and the smoothing factors`,
      );
    }
  }
  return { down, up };
}

/**
 * Output [M, N] of a W4A4 layer on raw inputs `x` [M, K], as the runtime computes it:
 * `Σ_g s_x·s_w·Σ q_x·q_w + (X·downᵀ)·upᵀ + b_eff`.
 *
 * @example
 * ```ts
 * import { buildW4A4, floatOutput, relativeError, simulateW4A4 } from "./baselines.ts";
 * const n = 16, k = 64, m = 4;
 * const w = Float32Array.from({ length: n * k }, (_, i) => Math.sin(i) * 0.1);
 * const x = Float32Array.from({ length: m * k }, (_, i) => Math.cos(i * 0.7));
 * const layer = await buildW4A4(w, n, k, {
 *   lambda: null, r: 4, format: "int4", actMode: "int4", bias: null,
 * });
 * const y = await simulateW4A4(layer, x, m);
 * const err = relativeError(y, await floatOutput(w, null, x, { m, n, k })); // ≈ 0.1
 * ```
 */
export async function simulateW4A4(
  layer: W4A4Layer,
  x: Float32Array,
  m: number,
  matmul: MatMul = cpuMatMul,
  xa: Float32Array = gemmActValues(x, m, layer.k, layer.actMode, layer.smooth),
  split?: RowSplit,
): Promise<Float32Array> {
  const { n, k, r } = layer;
  const y = Float32Array.from(
    split ? await split.residualProduct(xa, m, layer.residual) : matmul === cpuMatMul // the same product, dequantizing into the GEMM's operand memory
      ? simdResidualProduct(xa, m, layer.residual)
      : await matmul(xa, gemmWeightValues(layer.residual), m, k, n, true),
  );
  if (r > 0) {
    const act = Float32Array.from(await matmul(x, layer.down, m, k, r, true)); // lora_act, f32
    const lo = await matmul(act, layer.up, m, r, n, true);
    for (let i = 0; i < y.length; i++) y[i] = Math.fround(y[i] + lo[i]);
  }
  return addBias(y, layer.bias, n);
}

/** What a baseline returns: its tensors (by suffix), format and measured error. */
export interface BaselineResult {
  format: "int4" | "int8" | "f16";
  tensors: Map<string, TensorEntry>;
  relError: number;
}

/** Inputs of the baselines: the layer, its sample rows and their float outputs. */
export interface BaselineInput {
  w: Float32Array;
  bias: Float32Array | null;
  n: number;
  k: number;
  /** Sample inputs [S, K] for the error (and W4A16's clipping search). */
  x: Float32Array;
  s: number;
  /** `X·Wᵀ + b` on the samples. */
  yRef: Float32Array;
  matmul: MatMul;
}

function biasTensor(tensors: Map<string, TensorEntry>, bias: Float32Array | null, n: number) {
  if (bias) tensors.set("bias", f32Tensor(bias, [n]));
}

/**
 * Weight-only INT4 (g64, f16 scales): the per-group clipping search scored on the sample outputs,
 * and GPTQ's activation-aware rounding (quant/gptq.ts), whichever has the lower output error on
 * the samples; activations stay 16-bit. Tensors: qweight U32 [N, K/8], wscales F16 [N, K/64], bias.
 * The error uses f32 products of the dequantized weight (activation rounding to f16 is not
 * simulated).
 */
export async function quantizeW4A16(inp: BaselineInput): Promise<BaselineResult> {
  const { w, n, k, x, s } = inp;
  let p = quantizeWeightClipped(w, n, k, "int4", s > 0 ? { x, m: s } : {});
  if (p.format !== "int4") throw new TypeError("Cannot quantize W4A16: expected an int4 weight");
  const error = async (q: PackedWeight) =>
    relativeError(
      await floatOutput(gemmWeightValues(q), inp.bias, x, { m: s, n, k }, inp.matmul),
      inp.yRef,
    );
  let relError = await error(p);
  if (s > 0 && gptqApplies(s, k)) {
    // GPTQ's activation-aware rounding; kept when it scores lower (it nearly always does: on
    // the bundled model's held-out calibration rows it cuts the layer error by 20–75%).
    const g = await gptqInt4(w, n, k, x, s);
    const e = await error(g);
    if (e < relError) [p, relError] = [g, e];
  }
  const tensors = new Map<string, TensorEntry>();
  tensors.set("qweight", rawTensor(p.qweight, "U32", [n, k / 8]));
  tensors.set("wscales", f16Tensor(p.wscales, [n, k / 64]));
  biasTensor(tensors, inp.bias, n);
  return { format: "int4", tensors, relError };
}

/** Symmetric int8 codes and f32 scales per row of a [rows, K] matrix (scale = amax/127). */
export function quantizeRowsInt8(
  a: Float32Array,
  rows: number,
  k: number,
): { q: Int8Array; scale: Float32Array } {
  const q = new Int8Array(rows * k), scale = new Float32Array(rows);
  for (let i = 0; i < rows; i++) {
    let amax = 0;
    for (let c = 0; c < k; c++) amax = Math.max(amax, Math.abs(a[i * k + c]));
    const sc = Math.fround(amax / 127);
    scale[i] = sc;
    if (sc === 0) continue;
    for (let c = 0; c < k; c++) {
      const v = roundHalfEven(Math.fround(a[i * k + c] / sc));
      q[i * k + c] = Math.max(-127, Math.min(127, v));
    }
  }
  return { q, scale };
}

/**
 * Simulated W8A8: int8 weights with one f32 scale per out-channel, activations int8 per token
 * (absmax/127). Tensors: qweight I8 [N, K], wscales F32 [N], bias. (No kernel runs it yet; it is
 * a baseline for the error table.)
 */
export async function quantizeW8A8(inp: BaselineInput): Promise<BaselineResult> {
  const { w, n, k, x, s } = inp;
  const qw = quantizeRowsInt8(w, n, k), qx = quantizeRowsInt8(x, s, k);
  const wv = new Float32Array(n * k), xv = new Float32Array(s * k);
  for (let i = 0; i < wv.length; i++) wv[i] = qw.q[i] * qw.scale[(i / k) | 0];
  for (let i = 0; i < xv.length; i++) xv[i] = qx.q[i] * qx.scale[(i / k) | 0];
  const tensors = new Map<string, TensorEntry>();
  tensors.set("qweight", rawTensor(qw.q, "I8", [n, k]));
  tensors.set("wscales", f32Tensor(qw.scale, [n]));
  biasTensor(tensors, inp.bias, n);
  const y = await floatOutput(wv, inp.bias, xv, { m: s, n, k }, inp.matmul);
  return { format: "int8", tensors, relError: relativeError(y, inp.yRef) };
}

/** 16-bit float: weight F16 [N, K] and bias F32 [N]. */
export async function quantizeFloat(inp: BaselineInput): Promise<BaselineResult> {
  const { w, n, k, x, s } = inp;
  const w16 = Float32Array.from(w, (v) => Math.f16round(v));
  const bad = w16.findIndex((v) => !Number.isFinite(v));
  if (bad >= 0) {
    throw new RangeError(`Cannot store weight as f16: element ${bad} (${w[bad]}) overflows f16`);
  }
  const tensors = new Map<string, TensorEntry>();
  tensors.set("weight", f16Tensor(w16, [n, k]));
  biasTensor(tensors, inp.bias, n);
  const y = await floatOutput(w16, inp.bias, x, { m: s, n, k }, inp.matmul);
  return { format: "f16", tensors, relError: relativeError(y, inp.yRef) };
}

/** `Ŵ = W·diag(λ)` [N, K] in f32 (each element `fround(w·λ_k)`). */
export function smoothWeight(
  w: Float32Array,
  n: number,
  k: number,
  lambda: Float32Array,
  out: Float32Array = new Float32Array(n * k),
) {
  for (let i = 0; i < out.length; i++) out[i] = w[i] * lambda[i % k];
  return out;
}

/** `X̂ = X / λ` [M, K] in f32, as the activation kernel divides. */
export function smoothActivations(x: Float32Array, m: number, k: number, lambda: Float32Array) {
  const out = new Float32Array(m * k);
  for (let i = 0; i < out.length; i++) out[i] = x[i] / lambda[i % k];
  return out;
}

/** Options of {@linkcode buildW4A4}. */
export interface BuildW4A4Options {
  /** λ [K], or null for no scaling. */
  lambda: Float32Array | null;
  r: number;
  format: WeightFormat;
  actMode: ActMode;
  /** Refinement rounds of the low-rank branch (lowRankQuantize's `rounds`). */
  rounds?: number;
  /** Plain round-to-nearest residual (the RTN baseline): no clipping search, no low-rank. */
  rtn?: boolean;
  /** The float bias [N] (the post-GELU shift is folded into a copy). */
  bias: Float32Array | null;
  /** Raw sample inputs [S, K] guiding the clipping search by output error (optional). */
  x?: Float32Array;
  s?: number;
  /**
   * Score every low-rank candidate by the simulated layer output error on these samples (the
   * runtime's arithmetic, quantized activations included) against `yRef = X·Wᵀ + b`, and keep
   * the best; without it candidates are scored by weight (or weight-output) error.
   */
  scoreOn?: LayerScorer;
  /** NVFP4: search the residual's scales (quantizeWeightClipped `scaleSearch`). */
  scaleSearch?: boolean;
  /** Clip ratios of the residual's clipping search (default quant/clip.ts DEFAULT_CLIP_RATIOS). */
  clipRatios?: readonly number[];
  /**
   * Also quantize each candidate's residual by GPTQ on the smoothed samples `x/λ` (needs `x` and
   * `scoreOn`; skipped for K > quant/gptq.ts `GPTQ_MAX_K`), keeping whichever scores lower.
   */
  gptq?: boolean;
  /** Warm start of the first SVD (topRSvd `start`) and its power iterations. */
  svd?: { start?: Float32Array; iters?: number };
  matmul?: MatMul;
  /** Run the large kernels by blocks of rows on several cores (quant/split.ts; bit-identical). */
  split?: RowSplit;
  name?: string;
}

/** A built W4A4 layer with its score and the SVD basis for warm starts. */
export interface BuiltW4A4 extends W4A4Layer {
  /** Simulated relative output error (`scoreOn`), NaN without it. */
  error: number;
  /** Right basis of the last SVD (`[l, K]` in the smoothed domain), absent for R = 0. */
  basis?: Float32Array;
}

/**
 * The simulated output error of candidate W4A4 layers on fixed samples: the activation side
 * (quantized, dequantized GEMM operand) is computed once per (λ, mode) and reused for every
 * candidate, so scoring a candidate costs one S×K×N product plus the low-rank branch.
 */
export class LayerScorer {
  readonly x: Float32Array;
  readonly s: number;
  readonly yRef: Float32Array;
  readonly matmul: MatMul;
  readonly split?: RowSplit;
  #xa = new Map<string, { lambda: Float32Array | null; xa: Float32Array }[]>();

  /**
   * `x` [S, K] raw samples, `yRef` [S, N] the float output with bias; `split` runs the residual
   * product by blocks of rows on several cores (quant/split.ts, bit-identical).
   */
  constructor(
    x: Float32Array,
    s: number,
    yRef: Float32Array,
    matmul: MatMul = cpuMatMul,
    split?: RowSplit,
  ) {
    this.x = x;
    this.s = s;
    this.yRef = yRef;
    this.matmul = matmul;
    this.split = split;
  }

  /** Dequantized activation operand for (λ, mode), cached for the last few λ. */
  activations(k: number, mode: ActMode, lambda: Float32Array | null): Float32Array {
    const list = this.#xa.get(mode) ?? [];
    const hit = list.find((e) => e.lambda === lambda);
    if (hit) return hit.xa;
    const xa = gemmActValues(this.x, this.s, k, mode, lambda);
    list.unshift({ lambda, xa });
    if (list.length > 2) list.pop();
    this.#xa.set(mode, list);
    return xa;
  }

  /** Relative output error of `layer` on the samples. */
  async error(layer: W4A4Layer): Promise<number> {
    const xa = this.activations(layer.k, layer.actMode, layer.smooth);
    return relativeError(
      await simulateW4A4(layer, this.x, this.s, this.matmul, xa, this.split),
      this.yRef,
    );
  }
}

/** `code · factor` [M, K] of the 4-bit activation operand, as the GEMM multiplies it. */
export function gemmActValues(
  x: Float32Array,
  m: number,
  k: number,
  mode: ActMode,
  smooth: Float32Array | null,
): Float32Array {
  const qa = quantizeAct(x, m, k, mode, smooth ?? undefined);
  const codes = actCodes(qa), scales = actGroupScales(qa), G = groupSize(mode);
  const xa = new Float32Array(codes.length);
  for (let i = 0; i < xa.length; i++) xa[i] = codes[i] * scales[(i / G) | 0];
  return xa;
}

/** The runtime layer from a low-rank split and residual (stored f16 factors, folded bias). */
export function assembleW4A4(
  lowRank: LowRank,
  residual: PackedWeight,
  lambda: Float32Array | null,
  actMode: ActMode,
  bias: Float32Array | null,
  name?: string,
): W4A4Layer {
  const { n, k } = residual;
  const { down, up } = loraFactors(lowRank, lambda, n, k, name);
  const b = actMode === "int4_unsigned"
    ? foldGeluShift(residual, bias)
    : bias && Float32Array.from(bias);
  return { n, k, residual, smooth: lambda, r: lowRank.r, down, up, bias: b, actMode };
}

/**
 * Assembles a W4A4 layer: `Ŵ = W·diag(λ)`, the low-rank branch and the clipped residual from
 * lowRankQuantize (on the smoothed samples X/λ), the stored f16 low-rank factors and, in
 * `int4_unsigned` mode, the bias with the GELU shift folded in. With `scoreOn`, the candidate
 * kept is the one with the least simulated output error.
 */
export async function buildW4A4(
  w: Float32Array,
  n: number,
  k: number,
  opts: BuildW4A4Options,
): Promise<BuiltW4A4> {
  const { lambda, format, actMode } = opts;
  const wHat = !lambda
    ? w
    : opts.split
    ? await opts.split.smoothWeight(w, n, k, lambda)
    : smoothWeight(w, n, k, lambda);
  const scorer = opts.scoreOn;
  if (opts.rtn) {
    const residual = quantizeWeight(wHat, n, k, format, { name: opts.name });
    const lowRank = { r: 0, up: new Float32Array(0), down: new Float32Array(0) };
    const layer = assembleW4A4(lowRank, residual, lambda, actMode, opts.bias, opts.name);
    return { ...layer, error: scorer ? await scorer.error(layer) : NaN };
  }
  const s = opts.s ?? 0;
  const xHat = opts.x && s > 0
    ? (lambda ? smoothActivations(opts.x, s, k, lambda) : opts.x)
    : undefined;
  let kept: W4A4Layer | null = null;
  const res = await lowRankQuantize(wHat, n, k, {
    r: opts.r,
    format,
    rounds: opts.rounds,
    ...(xHat ? { x: xHat, m: s } : {}),
    matmul: opts.matmul ?? cpuMatMul,
    name: opts.name,
    svd: opts.svd,
    split: opts.split,
    scaleSearch: opts.scaleSearch,
    clipRatios: opts.clipRatios,
    ...(opts.gptq && xHat && scorer && k <= GPTQ_MAX_K && gptqApplies(s, k)
      ? { gptq: gptqFactor(xHat, s, k) }
      : {}),
    ...(scorer
      ? {
        score: async (lowRank: LowRank, residual: PackedWeight) => {
          const layer = assembleW4A4(lowRank, residual, lambda, actMode, opts.bias, opts.name);
          const e = await scorer.error(layer);
          if (kept === null || e < (kept as BuiltW4A4).error) {
            kept = { ...layer, error: e } as BuiltW4A4;
          }
          return e;
        },
      }
      : {}),
  });
  if (kept) return { ...(kept as BuiltW4A4), basis: res.basis };
  const layer = assembleW4A4(res.lowRank, res.residual, lambda, actMode, opts.bias, opts.name);
  return { ...layer, error: NaN, basis: res.basis };
}

/** The activation mode of a W4A4 layer: NVFP4, or INT4 (unsigned after a GELU). */
export function actModeFor(format: WeightFormat, postGelu: boolean): ActMode {
  return format === "nvfp4" ? "nvfp4" : postGelu ? "int4_unsigned" : "int4";
}
