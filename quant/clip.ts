/**
 * Round-to-nearest weight quantization with a per-group clipping search: every group of G
 * weights (along K) independently picks the clip ratio (a factor on its amax before the scale is
 * computed) that minimises its own reconstruction error, or its output error on sample
 * activations. The result is an ordinary {@link PackedWeight} in the canonical layout of
 * formats/packing.ts, built group by group with its per-group primitives (the ones
 * {@link quantizeWeight} is made of), so it is bit-identical to picking per group among
 * whole-matrix `quantizeWeight` candidates, at a fraction of the cost.
 *
 * @module
 */
import {
  encodeE4M3,
  groupAmax,
  groupSize,
  nvfp4TensorScale,
  type PackedWeight,
  packNibblesInto,
  quantizeGroupInto,
  quantizeGroupNvfp4Code,
  quantizeWeight,
  type WeightFormat,
} from "../formats/packing.ts";
import { assembleModule, each4, names4 } from "./wasm.ts";

/** Default clip ratios, tried in this order (ties keep the earlier one, so 1 wins ties). */
export const DEFAULT_CLIP_RATIOS: readonly number[] = [1, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7];

/** Options of {@link quantizeWeightClipped}. */
export interface ClipOptions {
  /** Candidate clip ratios (each finite and > 0). Default {@link DEFAULT_CLIP_RATIOS}. */
  ratios?: readonly number[];
  /** Sample activations `[m, K]`: when given, each group minimises its output error on them. */
  x?: Float32Array;
  /** Rows of `x`. */
  m?: number;
  /** Tensor name for error messages. */
  name?: string;
  /**
   * NVFP4 only: search the scales themselves instead of clip ratios — per group the E4M3 codes
   * from one above the code its amax rounds to down to six below (a superset of the codes the
   * default ratios reach), for each per-tensor f32 scale of {@linkcode NVFP4_TENSOR_FACTORS}
   * times the amax-based one, keeping the tensor scale with the least total objective.
   */
  scaleSearch?: boolean;
  /**
   * NVFP4: the per-tensor scale to use instead of the one from `w`'s amax — for a block of rows
   * of a larger weight (quant/split.ts), whose scale is the whole weight's. Ignored by
   * `scaleSearch` (see {@linkcode nvfp4ScaleSearchRows}).
   */
  tensorScale?: number;
}

/** Factors on the amax-based NVFP4 per-tensor scale tried by the scale search (≥ 1: no group saturates). */
export const NVFP4_TENSOR_FACTORS: readonly number[] = [1, 2 ** (1 / 16)];
/** E4M3 codes tried per group by the NVFP4 scale search: nearest + 1 down to nearest − 6. */
const NVFP4_CODE_OFFSETS: readonly number[] = [1, 0, -1, -2, -3, -4, -5, -6];

/**
 * Quantize a row-major `W [N, K]` to `format`, choosing per group the clip ratio from
 * `opts.ratios` with the least error. The error of group g of row n for a candidate Ŵ is
 * `Σ_k (W[n,k] − Ŵ[n,k])²` over the group, or, when sample activations `x [m, K]` are given,
 * `Σ_s (Σ_{k∈g} x[s,k]·(W[n,k] − Ŵ[n,k]))²` (the group's share of the output error, cross-group
 * terms ignored). Since each group's choice is independent, the total objective is never worse
 * than that of any single ratio in the list.
 *
 * NVFP4 keeps one per-tensor scale for all candidates (it does not depend on the clip ratio).
 * Work is group by group: amax once, then per ratio quantize, dequantize and score the group in
 * scratch, and write the winner's codes and scale straight into the result. Cost: O(N·K) per
 * ratio, plus `N·K·min(m, G/2)` multiply-adds per ratio for the output-error objective (run in
 * WebAssembly SIMD, 8 ratios side by side).
 *
 * @example
 * ```ts
 * import { quantizeWeightClipped } from "./clip.ts";
 * import { dequantizeWeight } from "../formats/packing.ts";
 * const w = Float32Array.from({ length: 8 * 128 }, (_, i) => Math.sin(i) ** 3);
 * const packed = quantizeWeightClipped(w, 8, 128, "int4");
 * const approx = dequantizeWeight(packed);
 * ```
 */
export function quantizeWeightClipped(
  w: Float32Array,
  n: number,
  k: number,
  format: WeightFormat,
  opts: ClipOptions = {},
): PackedWeight {
  const name = opts.name ?? "weight";
  const ratios = opts.ratios ?? DEFAULT_CLIP_RATIOS;
  if (ratios.length === 0 || ratios.some((r) => !(r > 0 && r < Infinity))) {
    throw new RangeError(
      `Cannot quantize ${name} with clipping: ratios must be a non-empty list of finite values > 0, got [${ratios}]`,
    );
  }
  const obj = setupObjective(w, n, k, format, opts.x, opts.m, name);
  if (format === "nvfp4" && opts.scaleSearch && k > 0) {
    const ts = nvfp4TensorScale(w);
    if (Number.isFinite(ts) && w.every((v) => Number.isFinite(v))) {
      let best: { p: PackedWeight; total: number } | null = null;
      for (const f of NVFP4_TENSOR_FACTORS) {
        const got = nvfp4ScaleSearch(w, n, obj, Math.fround(ts * f));
        if (!best || got.total < best.total) best = got;
      }
      return best!.p;
    }
  }
  // Anything the fast path cannot take (bad format, K = 0, non-finite weights, an int4 scale past
  // f16) replays the whole-matrix candidates in order, which throw the canonical errors.
  const replay = (): never => {
    for (const clipRatio of ratios) quantizeWeight(w, n, k, format, { clipRatio, name });
    throw new Error(`Cannot quantize ${name} with clipping: the candidates did not reject it`);
  };
  if (k === 0 || (format !== "int4" && format !== "nvfp4")) replay();
  const tensorScale = format === "nvfp4" ? opts.tensorScale ?? nvfp4TensorScale(w) : 1;
  if (!Number.isFinite(tensorScale)) replay();
  const G = obj.G, R = ratios.length, count = n * obj.groups;
  const qweight = new Uint32Array((n * k) >> 3);
  const wscales = format === "int4" ? new Float32Array(count) : new Uint8Array(count);
  const codes = new Int8Array(R * G), scales = new Float64Array(R);
  const scorer = new GroupScorer(obj, R), { d, err, lanes: L } = scorer;
  for (let gi = 0; gi < count; gi++) {
    const base = gi * G;
    const amax = groupAmax(w, base, G);
    if (!(amax < Infinity)) replay();
    for (let r = 0; r < R; r++) {
      const s = quantizeGroupInto(
        w,
        base,
        G,
        format,
        ratios[r],
        tensorScale,
        codes,
        r * G,
        amax,
        d,
        r,
        L,
      );
      if (s === Infinity) replay();
      scales[r] = s;
    }
    scorer.score(gi);
    let best = 0;
    for (let r = 1; r < R; r++) if (err[r] < err[best]) best = r; // ties keep the earlier ratio
    wscales[gi] = scales[best];
    packNibblesInto(codes, best * G, G, qweight, base >> 3);
  }
  return format === "int4"
    ? { format, n, k, qweight, wscales: wscales as Float32Array }
    : { format, n, k, qweight, wscales: wscales as Uint8Array, tensorScale };
}

/**
 * The NVFP4 scale search of {@link quantizeWeightClipped} (`scaleSearch`) on a block of rows of a
 * larger weight, at each of the given per-tensor scales (the whole weight's
 * `fround(nvfp4TensorScale(W) · f)` for f in {@linkcode NVFP4_TENSOR_FACTORS}): per scale the
 * block's packed weight and each group's objective. Summing the blocks' objectives in row order
 * gives exactly the whole weight's total, so a caller that splits the rows picks the same scale
 * and gets bit-identical codes (quant/split.ts).
 */
export function nvfp4ScaleSearchRows(
  w: Float32Array,
  n: number,
  k: number,
  opts: Pick<ClipOptions, "x" | "m" | "name">,
  tensorScales: readonly number[],
): { p: PackedWeight; errors: Float64Array }[] {
  const obj = setupObjective(w, n, k, "nvfp4", opts.x, opts.m, opts.name ?? "weight");
  return tensorScales.map((ts) => {
    const errors = new Float64Array(n * obj.groups);
    return { p: nvfp4ScaleSearch(w, n, obj, ts, errors).p, errors };
  });
}

/** One pass of the NVFP4 scale search at a fixed per-tensor scale: the weight and its objective. */
function nvfp4ScaleSearch(
  w: Float32Array,
  n: number,
  obj: Objective,
  tensorScale: number,
  errors?: Float64Array,
): { p: PackedWeight; total: number } {
  const G = obj.G, k = obj.k, R = NVFP4_CODE_OFFSETS.length, count = n * obj.groups;
  const qweight = new Uint32Array((n * k) >> 3), wscales = new Uint8Array(count);
  const codes = new Uint8Array(R * G), scales = new Int32Array(R);
  const scorer = new GroupScorer(obj, R), { d, err, lanes: L } = scorer;
  let total = 0;
  for (let gi = 0; gi < count; gi++) {
    const base = gi * G;
    const c0 = encodeE4M3(groupAmax(w, base, G) / 6 / tensorScale);
    for (let r = 0; r < R; r++) {
      const code = Math.max(0, Math.min(126, c0 + NVFP4_CODE_OFFSETS[r]));
      scales[r] = quantizeGroupNvfp4Code(w, base, G, code, tensorScale, codes, r * G, d, r, L);
    }
    scorer.score(gi);
    let best = 1; // the nearest code wins ties
    for (let r = 0; r < R; r++) if (err[r] < err[best]) best = r;
    total += err[best];
    if (errors) errors[gi] = err[best];
    wscales[gi] = scales[best];
    packNibblesInto(codes, best * G, G, qweight, base >> 3);
  }
  return { p: { format: "nvfp4", n, k, qweight, wscales, tensorScale }, total };
}

/**
 * The objective of {@link quantizeWeightClipped} per group: for an approximation `approx` of
 * `w` (both `[N, K]`), a `[N, K/G]` array of squared weight errors, or of squared output errors
 * on `x [m, K]` when given. Summing it gives the whole matrix's objective.
 */
export function groupErrors(
  w: Float32Array,
  approx: Float32Array,
  n: number,
  k: number,
  format: WeightFormat,
  x?: Float32Array,
  m?: number,
): Float64Array {
  const obj = setupObjective(w, n, k, format, x, m, "weight");
  if (approx.length !== w.length) {
    throw new TypeError(
      `Cannot compute group errors: approx has ${approx.length} elements, expected [N=${n}, ` +
        `K=${k}] = ${n * k}`,
    );
  }
  const G = obj.G, out = new Float64Array(n * obj.groups);
  const scorer = new GroupScorer(obj, 1), { d, err, lanes: L } = scorer;
  for (let gi = 0; gi < out.length; gi++) {
    for (let t = 0; t < G; t++) d[t * L] = w[gi * G + t] - approx[gi * G + t];
    scorer.score(gi);
    out[gi] = err[0];
  }
  return out;
}

/** Validated arguments of the objective, with the per-group Gram matrices when they pay. */
interface Objective {
  G: number;
  groups: number;
  k: number;
  x?: Float32Array;
  m: number;
  /** `[K/G, G, G]` upper triangles of `X_gᵀX_g` (used when `2m > G`). */
  gram?: Float64Array;
}

function setupObjective(
  w: Float32Array,
  n: number,
  k: number,
  format: WeightFormat,
  x: Float32Array | undefined,
  m: number | undefined,
  name: string,
): Objective {
  const op = `Cannot quantize ${name} with clipping`;
  if (!Number.isInteger(n) || !Number.isInteger(k) || n < 0 || k < 0) {
    throw new RangeError(`${op}: N and K must be non-negative integers, got N=${n}, K=${k}`);
  }
  if (w.length !== n * k) {
    throw new TypeError(
      `${op}: ${name} has ${w.length} elements, expected [N=${n}, K=${k}] = ${n * k}`,
    );
  }
  const G = groupSize(format);
  if (k % G !== 0) {
    throw new RangeError(`${op}: K=${k} is not a multiple of the ${format} group size ${G}`);
  }
  const groups = k / G;
  if (x === undefined) return { G, groups, k, m: 0 };
  if (m === undefined || !Number.isInteger(m) || m < 1 || x.length !== m * k) {
    throw new TypeError(
      `${op}: sample activations x have ${x.length} elements, expected [m=${m}, K=${k}] with m >= 1`,
    );
  }
  if (2 * m <= G) return { G, groups, k, x, m }; // direct: cost m per weight
  // Gram: H_g = X_gᵀX_g per group, e = dᵀ H_g d (symmetric half), cost G/2 per weight.
  const gram = new Float64Array(groups * G * G);
  for (let s = 0; s < m; s++) {
    for (let g = 0; g < groups; g++) addOuter(gram, g * G * G, x, s * k + g * G, G);
  }
  return { G, groups, k, x, m, gram };
}

/** Upper triangle of `H += xᵀx` for the G values of x at xo (a function, so V8 optimizes it). */
function addOuter(gram: Float64Array, ho: number, x: Float32Array, xo: number, G: number) {
  for (let a = 0; a < G; a++) {
    const xa = x[xo + a];
    if (xa === 0) continue;
    for (let b = a; b < G; b++) gram[ho + a * G + b] += xa * x[xo + b];
  }
}

/**
 * Objectives of `R` candidates of one group at once. `d [G, lanes]` holds candidate r's
 * differences `w − ŵ` in lane r (lanes = R rounded up to 8; unused lanes stay 0); `score(gi)`
 * writes their objectives to `err[r]`. Each candidate's arithmetic, operation order included, is
 * that of the one-candidate loops `Σ_t d_t²` (no x), `Σ_s (Σ_t x_s,t·d_t)²` (direct) and
 * `Σ_a d_a·(H_aa·d_a + 2·Σ_{b>a} H_ab·d_b)` skipping d_a = 0 (Gram), so results do not depend on
 * R or on the lanes. The kernels run in WebAssembly, 8 lanes as 4 f64x2 vectors (no FMA, so the
 * roundings are those of the scalar loops), two rows of H or two samples of x at a time:
 * independent chains that share each load.
 */
class GroupScorer {
  readonly lanes: number;
  readonly d: Float64Array;
  readonly err: Float64Array;
  #obj: Objective;
  #kernels: Kernels;
  #ePtr: number;
  #dataPtr: number;

  constructor(obj: Objective, r: number) {
    const { G, k, x, gram } = this.#obj = obj, L = this.lanes = Math.ceil(r / LANES) * LANES;
    // wasm memory: d [G, L] f64 | err [L] f64 | gram [K/G, G, G] f64 or x [m + 1, K] f32 (the
    // last row zero)
    this.#ePtr = G * L * 8;
    this.#dataPtr = this.#ePtr + L * 8;
    const data = gram ? gram.byteLength : x ? x.byteLength + k * 4 : 0;
    const memory = new WebAssembly.Memory({ initial: Math.ceil((this.#dataPtr + data) / 65536) });
    this.#kernels = kernels(memory);
    this.d = new Float64Array(memory.buffer, 0, G * L);
    this.err = new Float64Array(memory.buffer, this.#ePtr, L);
    if (gram) new Float64Array(memory.buffer, this.#dataPtr, gram.length).set(gram);
    else if (x) new Float32Array(memory.buffer, this.#dataPtr, x.length).set(x);
  }

  /** Objectives of group `gi` (row-major group index) for the candidates in `d`, into `err`. */
  score(gi: number): void {
    const { G, groups, k, x, m, gram } = this.#obj, L = this.lanes, g = gi % groups;
    for (let r0 = 0; r0 < L; r0 += LANES) {
      if (x === undefined) this.#kernels.squares(r0 * 8, this.#ePtr + r0 * 8, G, L * 8);
      else if (gram) {
        this.#kernels.gram(this.#dataPtr + g * G * G * 8, r0 * 8, this.#ePtr + r0 * 8, G, L * 8);
      } else {
        const x0 = this.#dataPtr + g * G * 4;
        this.#kernels.direct(x0, k * 4, m, r0 * 8, this.#ePtr + r0 * 8, G, L * 8);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// WebAssembly kernels of the objective, assembled here from a WAT subset (no build step). All
// work on LANES = 8 lanes as 4 f64x2 vectors; pointers are byte offsets into the imported memory
// "e"."m"; d rows are `rowBytes` apart.

/** Lanes per kernel call. */
const LANES = 8;

interface Kernels {
  /** `err[0..8) = Σ_t d_t²` per lane. */
  squares(d: number, e: number, G: number, rowBytes: number): void;
  /** `err[0..8) = dᵀ H d` per lane; h → H_g [G, G] (upper triangle), d → lane 0 of row 0. */
  gram(h: number, d: number, e: number, G: number, rowBytes: number): void;
  /** `err[0..8) = Σ_s (x_s · d)²` per lane; x → x[0, g·G] (f32), rows xStride bytes apart. */
  direct(
    x: number,
    xStride: number,
    m: number,
    d: number,
    e: number,
    G: number,
    rowBytes: number,
  ): void;
}

let kernelModule: WebAssembly.Module | undefined;

function kernels(memory: WebAssembly.Memory): Kernels {
  kernelModule ??= assembleModule([
    { name: "squares", ...SQUARES },
    { name: "gram", ...GRAM },
    { name: "direct", ...DIRECT },
  ]);
  return new WebAssembly.Instance(kernelModule, { e: { m: memory } }).exports as unknown as Kernels;
}

/** `$v_j = 0`. */
const zero4 = (v: string) => each4((j) => `v128.zero  local.set ${v}${j}`);
/** `$v_j = the 4 vectors at ptr`. */
const load4 = (ptr: string, v: string) =>
  each4((j) => `local.get ${ptr}  v128.load offset=${16 * j}  local.set ${v}${j}`);
/** `$acc_j += $a · $b_j` ($a one local, or four when `aj`). */
const mac4 = (acc: string, a: string, b: string, aj = false) =>
  each4((j) =>
    `local.get ${acc}${j}  local.get ${a}${aj ? j : ""}  local.get ${b}${j}
    f64x2.mul  f64x2.add  local.set ${acc}${j}`
  );
/** `$a_j += $ha · d_j` and `$b_j += $hb · d_j`, d_j loaded once from ptr (one temporary). */
const macPair = (ptr: string, a: string, ha: string, b: string, hb: string) =>
  each4((j) => `
    local.get ${ptr}  v128.load offset=${16 * j}  local.set $dv0
    local.get ${a}${j}  local.get ${ha}  local.get $dv0  f64x2.mul  f64x2.add  local.set ${a}${j}
    local.get ${b}${j}  local.get ${hb}  local.get $dv0  f64x2.mul  f64x2.add  local.set ${b}${j}`);
/** `$s_j += d·(H_aa·d + 2·acc)` where `d != 0`; d at ptr, H_aa splat in `$haa`. */
const diag4 = (ptr: string, acc: string) =>
  load4(ptr, "$dv") + each4((j) => `
    local.get $s${j}
    local.get $dv${j}
    local.get $haa  local.get $dv${j}  f64x2.mul  local.get ${acc}${j}  local.get ${acc}${j}
    f64x2.add  f64x2.add  f64x2.mul  f64x2.add
    local.get $s${j}
    local.get $dv${j}  v128.zero  f64x2.ne
    v128.bitselect  local.set $s${j}`);

/**
 * `err[0..8) = dᵀ H d` per lane (upper triangle of H, doubled off the diagonal), rows a and a+1
 * at once (G is even): their sums are independent chains sharing each load of d[b].
 */
const GRAM = {
  params: ["$h", "$d", "$err", "$G", "$row"],
  i32: ["$a", "$hRow", "$pH", "$pHEnd", "$pD", "$pA", "$pA1", "$gBytes"],
  v128: ["$h1", "$h2", "$haa", ...["$acc", "$accB", "$s", "$dv"].flatMap(names4)],
  body: `
  local.get $d  local.set $pA
  local.get $G  i32.const 3  i32.shl  local.set $gBytes
  block loop
    local.get $a  local.get $G  i32.ge_u  br_if 1
    ${zero4("$acc")}
    ${zero4("$accB")}
    local.get $h  local.get $a  local.get $gBytes  i32.mul  i32.add  local.set $hRow
    local.get $pA  local.get $row  i32.add  local.set $pA1
    local.get $hRow  local.get $a  i32.const 3  i32.shl  i32.add  local.set $pH
    ;; row a: b = a + 1
    local.get $pH  f64.load offset=8  f64x2.splat  local.set $h1
    ${load4("$pA1", "$dv")}
    ${mac4("$acc", "$h1", "$dv")}
    ;; rows a and a+1: b = a+2 .. G-1
    local.get $pH  i32.const 16  i32.add  local.set $pH
    local.get $hRow  local.get $gBytes  i32.add  local.set $pHEnd
    local.get $pA1  local.get $row  i32.add  local.set $pD
    block loop
      local.get $pH  local.get $pHEnd  i32.ge_u  br_if 1
      local.get $pH  f64.load  f64x2.splat  local.set $h1
      local.get $pH  local.get $gBytes  i32.add  f64.load  f64x2.splat  local.set $h2
      ${macPair("$pD", "$acc", "$h1", "$accB", "$h2")}
      local.get $pH  i32.const 8  i32.add  local.set $pH
      local.get $pD  local.get $row  i32.add  local.set $pD
      br 0
    end end
    ;; the diagonal terms, row a then row a+1
    local.get $hRow  local.get $a  i32.const 3  i32.shl  i32.add
    f64.load  f64x2.splat  local.set $haa
    ${diag4("$pA", "$acc")}
    local.get $hRow  local.get $gBytes  i32.add  local.get $a  i32.const 3  i32.shl  i32.add
    f64.load offset=8  f64x2.splat  local.set $haa
    ${diag4("$pA1", "$accB")}
    local.get $a  i32.const 2  i32.add  local.set $a
    local.get $pA1  local.get $row  i32.add  local.set $pA
    br 0
  end end
  ${each4((j) => `local.get $err  local.get $s${j}  v128.store offset=${16 * j}`)}`,
};

/**
 * `err[0..8) = Σ_s (x_s · d)²` per lane, samples s and s+1 at once: independent chains sharing
 * each load of d (for odd m the last pair reads the zero row past x, and drops it).
 */
const DIRECT = {
  params: ["$x", "$xStride", "$m", "$d", "$err", "$G", "$row"],
  i32: ["$smp", "$px", "$pxEnd", "$pD"],
  v128: ["$x1", "$x2", ...["$y", "$z", "$s", "$dv"].flatMap(names4)],
  body: `
  block loop
    local.get $smp  local.get $m  i32.ge_u  br_if 1
    ${zero4("$y")}
    ${zero4("$z")}
    local.get $x  local.get $smp  local.get $xStride  i32.mul  i32.add  local.tee $px
    local.get $G  i32.const 2  i32.shl  i32.add  local.set $pxEnd
    local.get $d  local.set $pD
    block loop
      local.get $px  local.get $pxEnd  i32.ge_u  br_if 1
      local.get $px  f32.load  f64.promote_f32  f64x2.splat  local.set $x1
      local.get $px  local.get $xStride  i32.add
      f32.load  f64.promote_f32  f64x2.splat  local.set $x2
      ${macPair("$pD", "$y", "$x1", "$z", "$x2")}
      local.get $px  i32.const 4  i32.add  local.set $px
      local.get $pD  local.get $row  i32.add  local.set $pD
      br 0
    end end
    ${mac4("$s", "$y", "$y", true)}
    local.get $smp  i32.const 1  i32.add  local.get $m  i32.lt_u
    if
      ${mac4("$s", "$z", "$z", true)}
    end
    local.get $smp  i32.const 2  i32.add  local.set $smp
    br 0
  end end
  ${each4((j) => `local.get $err  local.get $s${j}  v128.store offset=${16 * j}`)}`,
};

/** `err[0..8) = Σ_t d_t²` per lane, in order of t. */
const SQUARES = {
  params: ["$d", "$err", "$G", "$row"],
  i32: ["$t"],
  v128: ["$s", "$dv"].flatMap(names4),
  body: `
  block loop
    local.get $t  local.get $G  i32.ge_u  br_if 1
    ${load4("$d", "$dv")}
    ${mac4("$s", "$dv", "$dv", true)}
    local.get $d  local.get $row  i32.add  local.set $d
    local.get $t  i32.const 1  i32.add  local.set $t
    br 0
  end end
  ${each4((j) => `local.get $err  local.get $s${j}  v128.store offset=${16 * j}`)}`,
};
