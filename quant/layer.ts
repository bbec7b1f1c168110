/**
 * Quantize one linear layer `Y = X·Wᵀ + b` by a named method into the canonical packed tensors of
 * formats/packing.ts, and measure its relative output error on calibration samples by simulating
 * the runtime's arithmetic (quant/baselines.ts).
 *
 * | method     | scaling              | low-rank | weights          | activations            |
 * | ---------- | -------------------- | -------- | ---------------- | ---------------------- |
 * | `svdquant` | smoothing (searched) | rank R   | 4-bit, clipped   | 4-bit per token, group |
 * | `dilate`   | dilation             | rank R   | 4-bit, clipped   | 4-bit                  |
 * | `smooth`   | smoothing (searched) | none     | 4-bit, clipped   | 4-bit                  |
 * | `rtn`      | none                 | none     | 4-bit, RTN       | 4-bit                  |
 * | `w4a16`    | none (AWQ: `awq`)    | none     | INT4 g64 clipped | 16-bit                 |
 * | `w8a8`     | none                 | none     | int8 per channel | int8 per token         |
 * | `float`    | none                 | none     | f16              | 16-bit                 |
 *
 * Tensors (by suffix; `<name>.<suffix>` in the file): W4A4 methods write `qweight` U32 [N, K/8],
 * `wscales` F16 [N, K/64] (int4) or F8_E4M3 [N, K/16] + `tensor_scale` F32 [1] (nvfp4), `smooth`
 * F32 [K] (omitted when λ = 1, i.e. rtn), `lora_down` F16 [R, K] (already divided by λ) and
 * `lora_up` F16 [N, R] (omitted when R = 0), `bias` F32 [N] (when the layer has one or the
 * post-GELU shift is folded in). W4A16: `qweight`, `wscales` F16, `smooth` F32 [K] (when its
 * activation-aware scaling has α > 0, quant/awq.ts), `bias`. W8A8: `qweight` I8
 * [N, K], `wscales` F32 [N], `bias`. Float: `weight` F16 [N, K], `bias`.
 *
 * @module
 */
import { amaxOverBuckets, type LayerStats, syntheticStats } from "./calib.ts";
import { quantizeW4A16Awq } from "./awq.ts";
import { cpuMatMul, type MatMul } from "./linalg.ts";
import {
  type ActMode,
  groupSize,
  type PackedWeight,
  type WeightFormat,
} from "../formats/packing.ts";
import {
  actModeFor,
  type BaselineInput,
  type BaselineResult,
  buildW4A4,
  type BuiltW4A4,
  f16Tensor,
  f32Tensor,
  floatOutput,
  gemmWeightValues,
  LayerScorer,
  quantizeFloat,
  quantizeRowsInt8,
  quantizeW8A8,
  rawTensor,
  simulateW4A4,
  smoothActivations,
  type TensorEntry,
  type W4A4Layer,
} from "./baselines.ts";
import { searchSmoothing } from "./smooth.ts";
import { dilationFactors } from "./dilate.ts";
import type { RowSplit } from "./split.ts";

export type { TensorEntry };

/** Quantization methods, per layer. */
export type Method = "svdquant" | "dilate" | "smooth" | "rtn" | "w4a16" | "w8a8" | "float";

/** Every {@linkcode Method}, for argument parsing. */
export const METHODS: readonly Method[] = [
  "svdquant",
  "dilate",
  "smooth",
  "rtn",
  "w4a16",
  "w8a8",
  "float",
];

/** Rows of the calibration samples the smoothing search scores on by default (a strided subset). */
export const SEARCH_ROWS = 128;

/** A quantized layer: its tensors by suffix, and what it cost. */
export interface QuantizedLinear {
  /** Layer name (prefix of its tensors in the file). */
  name: string;
  /** Method it was quantized with. */
  method: Method;
  /**
   * Stored weight format: the 4-bit format (W4A4 methods; `"int4"` for w4a16), `"int8"` (w8a8)
   * or `"f16"` (float).
   */
  format: WeightFormat | "int8" | "f16";
  /** Out-features N (rows of W). */
  n: number;
  /** In-features K (columns of W). */
  k: number;
  /** Rank of the low-rank branch actually stored (0 when none). */
  r: number;
  /** Activation mode of W4A4 methods. */
  actMode?: ActMode;
  /** Tensors by suffix: qweight, wscales, tensor_scale, smooth, lora_down, lora_up, bias, weight. */
  tensors: Map<string, TensorEntry>;
  /** `||Y_q − Y|| / ||Y||` on the calibration samples (Y = X·Wᵀ + b; NaN without samples). */
  relError: number;
  /** Bytes of the float weight and bias (at `sourceBytes` per element). */
  bytesBefore: number;
  /** Bytes of all tensors written. */
  bytesAfter: number;
  /**
   * The smoothing chosen by the search (svdquant, smooth): λ_c = amaxX_c^α / amaxW_c^β; for
   * w4a16 the activation-aware scaling's α (quant/awq.ts; 0: none, no `smooth` tensor).
   */
  alpha?: number;
  /** Weight exponent β of the chosen smoothing (set with `alpha`). */
  beta?: number;
}

/** Options of {@linkcode quantizeLinear}. */
export interface QuantizeLinearOptions {
  /** Quantization method (see the module table). */
  method: Method;
  /** 4-bit format of W4A4 methods (W4A16 is always INT4 g64). */
  format: WeightFormat;
  /** Rank R of the low-rank branch (svdquant, dilate). */
  r: number;
  /** Calibration statistics of this layer's input; default: {@linkcode syntheticStats}. */
  stats?: LayerStats;
  /** The input follows a GELU: INT4 activations use the unsigned shifted mode. */
  postGelu?: boolean;
  /** Matrix product for the large products (e.g. from `gpuMatMul`); default `cpuMatMul`. */
  matmul?: MatMul;
  /** α grid searched in full; default: coarse-to-fine (quant/smooth.ts `searchSmoothing`). */
  alphas?: readonly number[];
  /**
   * A result for the same layer that this one must not be worse than (e.g. the same layer at a
   * lower rank): when the new fit's output error is larger, `floor` is returned instead — so
   * along {@linkcode quantizeLinearRanks} a larger rank never gives a larger layer error.
   */
  floor?: QuantizedLinear;
  /**
   * With a rank R > 0 and no `floor` (svdquant, dilate): also fit the layer at rank 0 and keep
   * whichever scores the lower output error on the calibration rows, so the stored layer is never
   * worse than the rank-0 one (default true; the rank-0 fit needs no SVD, its cost is the
   * smoothing search and the residual's GPTQ).
   */
  rankZeroFloor?: boolean;
  /** Calibration rows the smoothing search scores candidates on (default {@linkcode SEARCH_ROWS}). */
  searchRows?: number;
  /**
   * W4A16: search the activation-aware scaling (quant/awq.ts; stores `smooth` when α > 0).
   * Default false: on the bundled model it lowers the layer errors but raises the model's output
   * error (bench/RESULTS.md, "W4A16 activation-aware scaling").
   */
  awq?: boolean;
  /**
   * GPTQ for the W4A4 residual in the final fit (default true; layers with K ≤ quant/gptq.ts
   * `GPTQ_MAX_K`): each refinement round keeps the lower-scoring of the clipped and the GPTQ
   * residual.
   */
  gptq?: boolean;
  /** NVFP4 residual scale search (default true; quant/clip.ts `scaleSearch`). */
  scaleSearch?: boolean;
  /** lowRankQuantize rounds per search candidate (default 0). */
  searchRounds?: number;
  /** lowRankQuantize rounds of the final fit (default 3). */
  rounds?: number;
  /** Bytes per element of the source checkpoint, for `bytesBefore` (default 4). */
  sourceBytes?: number;
  /**
   * Run this layer's large kernels by blocks of rows on several cores (quant/split.ts, e.g.
   * quant/pool.ts `QuantizePool.quantizeSplit`): the result is bit-identical to the serial one.
   * The products use `split.matmul` unless `matmul` is given.
   */
  split?: RowSplit;
}

function w4a4Tensors(layer: W4A4Layer): Map<string, TensorEntry> {
  const { n, k, r, residual: p } = layer;
  const t = new Map<string, TensorEntry>();
  t.set("qweight", rawTensor(p.qweight, "U32", [n, k / 8]));
  if (p.format === "int4") t.set("wscales", f16Tensor(p.wscales, [n, k / 64]));
  else {
    t.set("wscales", rawTensor(p.wscales, "F8_E4M3", [n, k / 16]));
    t.set("tensor_scale", f32Tensor([p.tensorScale], [1]));
  }
  if (layer.smooth) t.set("smooth", f32Tensor(layer.smooth, [k]));
  if (r > 0) {
    t.set("lora_down", f16Tensor(layer.down, [r, k]));
    t.set("lora_up", f16Tensor(layer.up, [n, r]));
  }
  if (layer.bias) t.set("bias", f32Tensor(layer.bias, [n]));
  return t;
}

function validate(
  name: string,
  w: Float32Array,
  bias: Float32Array | null,
  n: number,
  k: number,
  opts: QuantizeLinearOptions,
) {
  if (!(Number.isSafeInteger(n) && n >= 1 && Number.isSafeInteger(k) && k >= 1)) {
    throw new RangeError(`Cannot quantize ${name}: shape [N=${n}, K=${k}] is invalid`);
  }
  if (w.length !== n * k) {
    throw new TypeError(
      `Cannot quantize ${name}: ${name}.weight has ${w.length} elements, expected [N=${n}, K=${k}]`,
    );
  }
  if (bias && bias.length !== n) {
    throw new TypeError(
      `Cannot quantize ${name}: ${name}.bias has ${bias.length} elements, expected [N=${n}]`,
    );
  }
  const { method } = opts;
  if (!METHODS.includes(method)) {
    throw new RangeError(
      `Cannot quantize ${name}: unknown method "${method}", use one of ${METHODS.join(", ")}`,
    );
  }
  if (opts.format !== "int4" && opts.format !== "nvfp4") {
    throw new RangeError(
      `Cannot quantize ${name}: unknown format "${opts.format}", use int4 or nvfp4`,
    );
  }
  const G = method === "w4a16"
    ? 64
    : method === "w8a8" || method === "float"
    ? 1
    : groupSize(opts.format);
  if (k % G !== 0) {
    throw new RangeError(
      `Cannot quantize ${name} with ${method}: K=${k} is not a multiple of the group size ${G}; ` +
        `use method float for this layer`,
    );
  }
  const usesRank = method === "svdquant" || method === "dilate";
  if (usesRank && !(Number.isSafeInteger(opts.r) && opts.r >= 0 && opts.r <= Math.min(n, k))) {
    throw new RangeError(
      `Cannot quantize ${name}: rank ${opts.r} must be an integer in [0, min(N, K) = ${
        Math.min(n, k)
      }]`,
    );
  }
  const bad = w.findIndex((v) => !Number.isFinite(v));
  if (bad >= 0) {
    throw new RangeError(
      `Cannot quantize ${name}: weight element ${bad} is ${w[bad]}; weights must be finite`,
    );
  }
  if (opts.stats && (opts.stats.k !== k || opts.stats.samples.length !== opts.stats.s * k)) {
    throw new TypeError(
      `Cannot quantize ${name}: its statistics have K=${opts.stats.k} and ${opts.stats.samples.length} ` +
        `sample values, expected K=${k} and [S=${opts.stats.s}, K=${k}]`,
    );
  }
}

/**
 * Quantize the linear layer `name` (W [N, K] row-major, optional bias [N]) with `opts.method`.
 * Without `opts.stats`, synthetic heavy-tailed statistics (seeded by the name) stand in.
 *
 * @example
 * ```ts ignore
 * import { quantizeLinear } from "./layer.ts";
 * const q = await quantizeLinear("blocks.0.attn.qkv", w, b, 3456, 1152, {
 *   method: "svdquant", format: "int4", r: 32, stats,
 * });
 * for (const [suffix, t] of q.tensors) console.log(`${q.name}.${suffix}`, t.dtype, t.shape);
 * console.log(q.relError, q.bytesBefore, q.bytesAfter);
 * ```
 */
export async function quantizeLinear(
  name: string,
  w: Float32Array,
  bias: Float32Array | null,
  n: number,
  k: number,
  opts: QuantizeLinearOptions,
): Promise<QuantizedLinear> {
  validate(name, w, bias, n, k, opts);
  // Split across cores: the weight in shared memory, once, so the workers read their rows in place.
  if (opts.split) w = opts.split.shared(w);
  const { method, format } = opts;
  const postGelu = opts.postGelu ?? false;
  const matmul = opts.matmul ?? opts.split?.matmul ?? cpuMatMul;
  // The blocked residual product only where the products are the CPU's (a custom matmul keeps them).
  const split = opts.split, scoreSplit = opts.matmul ? undefined : split;
  const stats = opts.stats ??
    syntheticStats(new Map([[name, k]]), { postGelu: postGelu ? [name] : [] }).layers.get(name)!;
  const { samples: x, s } = stats;
  const yRef = await floatOutput(w, bias, x, { m: s, n, k }, matmul);
  const sourceBytes = opts.sourceBytes ?? 4;
  const base = { name, method, n, k, bytesBefore: (n * k + (bias ? n : 0)) * sourceBytes };
  const finish = (q: Omit<QuantizedLinear, "bytesAfter">): QuantizedLinear => {
    let bytes = 0;
    for (const t of q.tensors.values()) bytes += t.data.byteLength;
    return { ...q, bytesAfter: bytes };
  };

  if (method === "w4a16" || method === "w8a8" || method === "float") {
    // W4A16: activation-aware scaling searched (quant/awq.ts), α = 0 being plain W4A16
    const amax = stats.amax.length ? amaxOverBuckets(stats) : undefined;
    const f = method === "w4a16"
      ? (i: BaselineInput) => quantizeW4A16Awq(i, { amax, alphas: opts.awq ? undefined : [0] })
      : method === "w8a8"
      ? quantizeW8A8
      : quantizeFloat;
    const res: BaselineResult & { alpha?: number } = await f({ w, bias, n, k, x, s, yRef, matmul });
    return finish({
      ...base,
      format: res.format,
      r: 0,
      tensors: res.tensors,
      relError: res.relError,
      alpha: opts.awq ? res.alpha : undefined, // reported only when searched
    });
  }

  const actMode = actModeFor(format, postGelu);
  const r = method === "svdquant" || method === "dilate" ? opts.r : 0;
  // Rank that never hurts for a plain run: the rank-0 fit is the floor unless one was given.
  let floor = opts.floor;
  let floorAside: Promise<QuantizedLinear> | null = null;
  if (!floor && r > 0 && (opts.rankZeroFloor ?? true)) {
    const floorOpts = { ...opts, r: 0, rankZeroFloor: false };
    // Split across cores: the rank-0 fit runs whole on an idle worker beside this fit when one is
    // free (it fills the second core while this thread runs the stages that are not split).
    floorAside = opts.split && !opts.matmul
      ? opts.split.aside(name, w, bias, n, k, { ...floorOpts, split: undefined })
      : null;
    floorAside?.catch(() => {}); // surfaced when awaited below
    if (!floorAside) floor = await quantizeLinear(name, w, bias, n, k, floorOpts);
  }
  const scorer = new LayerScorer(x, s, yRef, matmul, scoreSplit);
  // The smoothing search scores its candidates on a strided subset of the rows (the final fit
  // and the reported error use them all).
  const rows = Math.min(s, opts.searchRows ?? SEARCH_ROWS);
  let searchScorer = scorer;
  if (rows < s) {
    const xs = new Float32Array(rows * k), ys = new Float32Array(rows * n);
    for (let i = 0; i < rows; i++) {
      const src = Math.floor(i * s / rows);
      xs.set(x.subarray(src * k, src * k + k), i * k);
      ys.set(yRef.subarray(src * n, src * n + n), i * n);
    }
    searchScorer = new LayerScorer(xs, rows, ys, matmul, scoreSplit);
  }
  const scaleSearch = opts.scaleSearch ?? true;
  let best: BuiltW4A4;
  let alpha: number | undefined, beta: number | undefined;
  if (method === "svdquant" || method === "smooth") {
    const found = await searchSmoothing(w, n, k, stats, {
      r,
      format,
      alphas: opts.alphas,
      rounds: opts.searchRounds ?? 0,
      postGelu,
      actMode,
      bias,
      scorer: searchScorer,
      matmul,
      split,
      name,
    });
    ({ alpha, beta } = found);
    const candidate = found.layer &&
      { ...found.layer, error: rows < s ? await scorer.error(found.layer) : found.layer.error };
    const final = await buildW4A4(w, n, k, {
      lambda: found.lambda,
      r,
      format,
      actMode,
      rounds: opts.rounds ?? 3,
      bias,
      x,
      s,
      scoreOn: scorer,
      scaleSearch,
      gptq: opts.gptq ?? true,
      svd: found.layer?.basis ? { start: found.layer.basis, iters: 1 } : {},
      matmul,
      split,
      name,
    });
    // Keep the best layer tried: the refined fit, or the search's candidate if it scored lower.
    best = candidate && !(final.error <= candidate.error) ? candidate : final;
  } else {
    best = await buildW4A4(w, n, k, {
      lambda: method === "dilate" ? dilationFactors(w, n, k) : null,
      r,
      format,
      actMode,
      rounds: opts.rounds ?? 3,
      rtn: method === "rtn",
      bias,
      x,
      s,
      scoreOn: scorer,
      scaleSearch: method === "rtn" ? false : scaleSearch,
      gptq: method === "rtn" ? false : opts.gptq ?? true,
      matmul,
      split,
      name,
    });
  }
  const q = finish({
    ...base,
    format,
    r: best.r,
    actMode,
    tensors: w4a4Tensors(best),
    relError: best.error,
    ...(alpha !== undefined ? { alpha, beta } : {}),
  });
  if (floorAside) floor = await floorAside;
  return floor && floor.relError < q.relError ? floor : q;
}

/**
 * {@linkcode quantizeLinear} at each rank of `ranks` (ascending), each fit floored by the
 * previous result: entry i is the best over everything tried at ranks ≤ ranks[i], so the layer
 * error never grows with the rank (an entry may store a smaller rank than asked for).
 */
export async function quantizeLinearRanks(
  name: string,
  w: Float32Array,
  bias: Float32Array | null,
  n: number,
  k: number,
  ranks: readonly number[],
  opts: Omit<QuantizeLinearOptions, "r" | "floor">,
): Promise<QuantizedLinear[]> {
  const sorted = [...ranks].sort((a, b) => a - b);
  if (sorted.join() !== ranks.join()) {
    throw new RangeError(
      `Cannot quantize ${name} at ranks [${ranks}]: list them in ascending order`,
    );
  }
  const out: QuantizedLinear[] = [];
  for (const r of ranks) {
    out.push(await quantizeLinear(name, w, bias, n, k, { ...opts, r, floor: out.at(-1) }));
  }
  return out;
}

function tensorOf(q: QuantizedLinear, suffix: string): TensorEntry {
  const t = q.tensors.get(suffix);
  if (!t) throw new TypeError(`Cannot evaluate ${q.name}: tensor ${q.name}.${suffix} is missing`);
  return t;
}

function bytesAs<T>(t: TensorEntry, make: (b: ArrayBuffer) => T): T {
  return make(t.data.slice().buffer);
}

function f16Values(t: TensorEntry): Float32Array {
  return bytesAs(t, (b) => Float32Array.from(new Float16Array(b)));
}

function f32Values(t: TensorEntry): Float32Array {
  return bytesAs(t, (b) => new Float32Array(b));
}

/**
 * Output [M, N] of a quantized layer on raw inputs `x` [M, K], computed **from its stored
 * tensors** with the runtime's arithmetic (the same simulation that produced `relError`); use it
 * to score a layer on held-out inputs, or to check that the tensors say what was measured.
 */
export async function evaluateQuantized(
  q: QuantizedLinear,
  x: Float32Array,
  m: number,
  matmul: MatMul = cpuMatMul,
): Promise<Float32Array> {
  const { n, k } = q;
  if (x.length !== m * k) {
    throw new TypeError(
      `Cannot evaluate ${q.name}: x has ${x.length} elements, expected [M=${m}, K=${k}]`,
    );
  }
  const bias = q.tensors.has("bias") ? f32Values(tensorOf(q, "bias")) : null;
  if (q.method === "float") {
    return await floatOutput(f16Values(tensorOf(q, "weight")), bias, x, { m, n, k }, matmul);
  }
  if (q.method === "w8a8") {
    const qw = new Int8Array(tensorOf(q, "qweight").data.slice().buffer);
    const sw = f32Values(tensorOf(q, "wscales"));
    const qx = quantizeRowsInt8(x, m, k);
    const wv = Float32Array.from(qw, (v, i) => v * sw[(i / k) | 0]);
    const xv = Float32Array.from(qx.q, (v, i) => v * qx.scale[(i / k) | 0]);
    return await floatOutput(wv, bias, xv, { m, n, k }, matmul);
  }
  const qweight = bytesAs(tensorOf(q, "qweight"), (b) => new Uint32Array(b));
  const residual: PackedWeight = q.format === "nvfp4"
    ? {
      format: "nvfp4",
      n,
      k,
      qweight,
      wscales: tensorOf(q, "wscales").data.slice(),
      tensorScale: f32Values(tensorOf(q, "tensor_scale"))[0],
    }
    : { format: "int4", n, k, qweight, wscales: f16Values(tensorOf(q, "wscales")) };
  if (q.method === "w4a16") {
    const sm = q.tensors.has("smooth") ? f32Values(tensorOf(q, "smooth")) : null;
    const xs = sm ? smoothActivations(x, m, k, sm) : x;
    return await floatOutput(gemmWeightValues(residual), bias, xs, { m, n, k }, matmul);
  }
  const layer: W4A4Layer = {
    n,
    k,
    residual,
    smooth: q.tensors.has("smooth") ? f32Values(tensorOf(q, "smooth")) : null,
    r: q.r,
    down: q.r > 0 ? f16Values(tensorOf(q, "lora_down")) : new Float32Array(0),
    up: q.r > 0 ? f16Values(tensorOf(q, "lora_up")) : new Float32Array(0),
    bias,
    actMode: q.actMode ?? actModeFor(q.format as WeightFormat, false),
  };
  return await simulateW4A4(layer, x, m, matmul);
}
