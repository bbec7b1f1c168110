/**
 * Activation-aware scaling for weight-only INT4 (AWQ's idea): a per-input-channel factor
 * `s_k = amax_k^α` (normalised to geometric mean 1) scales the weight's columns before
 * quantization, `W' = W·diag(s)`, and the runtime divides the activations by it (gemm_w4a16's
 * `smooth`: `Y = (X / s)·Q(W')ᵀ + b`). Channels that carry large activations get finer weight
 * steps at the price of the others'.
 *
 * α is grid-searched over {@linkcode AWQ_ALPHAS}; each candidate is quantized by the unchanged
 * W4A16 path (quant/baselines.ts `quantizeW4A16`: clipping search, then GPTQ where it applies,
 * the lower error kept) on the rows `X / s`, and scored by the layer's relative output error on
 * the calibration rows. α = 0 is the plain W4A16 result, so the kept result is never worse on
 * those rows; the factors are stored (tensor `smooth` F32 [K]) only when α > 0.
 *
 * Opt-in (`deno task quantize --awq`, quant/layer.ts `awq`): on the bundled model it lowers the
 * layer errors (calibration rows and held-out rows) but raises the model's one-step output error
 * and lowers the eval's PSNR (bench/RESULTS.md, "W4A16 activation-aware scaling").
 *
 * @module
 */
import type { BaselineInput, BaselineResult } from "./baselines.ts";
import { f32Tensor, quantizeW4A16, smoothActivations, smoothWeight } from "./baselines.ts";
import { LAMBDA_MAX, LAMBDA_MIN } from "./smooth.ts";

/** The α grid searched: 0, 0.1, …, 1 (α = 0: no scaling, the plain W4A16 result). */
export const AWQ_ALPHAS: readonly number[] = Array.from({ length: 11 }, (_, i) => i / 10);

/**
 * Channels whose amax is below this fraction of the largest are clamped to it (dead or nearly
 * dead channels would otherwise get huge divisors from a tiny power).
 */
export const AMAX_FLOOR = 1e-5;

/**
 * `s_k = max(amax_k, AMAX_FLOOR·max amax)^α`, divided by the geometric mean, then clamped to
 * [LAMBDA_MIN, LAMBDA_MAX] (quant/smooth.ts); f32 [K]. All ones when every amax is zero or
 * non-finite, or α = 0.
 *
 * @example
 * ```ts
 * import { awqFactors } from "./awq.ts";
 * const s = awqFactors(Float32Array.of(1, 4, 16, 64), 1);
 * console.log([...s]); // [0.125, 0.5, 2, 8]: geometric mean 1
 * ```
 */
export function awqFactors(amax: Float32Array, alpha: number): Float32Array {
  const k = amax.length;
  let top = 0;
  for (const a of amax) if (Number.isFinite(a) && a > top) top = a;
  const out = new Float32Array(k).fill(1);
  if (!(top > 0) || alpha === 0) return out;
  const floor = AMAX_FLOOR * top;
  const logs = new Float64Array(k);
  let mean = 0;
  for (let c = 0; c < k; c++) {
    const a = Number.isFinite(amax[c]) ? Math.max(amax[c], floor) : top;
    logs[c] = alpha * Math.log(a);
    mean += logs[c] / k;
  }
  for (let c = 0; c < k; c++) {
    out[c] = Math.min(LAMBDA_MAX, Math.max(LAMBDA_MIN, Math.exp(logs[c] - mean)));
  }
  return out;
}

/** A W4A16 result with its chosen scaling. */
export interface AwqResult extends BaselineResult {
  /** The α kept (0: no scaling, no `smooth` tensor). */
  alpha: number;
}

/**
 * Weight-only INT4 with activation-aware scaling: for each α of `alphas` (default
 * {@linkcode AWQ_ALPHAS}; must include 0 for the never-worse guarantee), quantize `W·diag(s)` on
 * the rows `X / s` with quant/baselines.ts `quantizeW4A16`, keep the lowest output error on the
 * rows. Tensors: those of `quantizeW4A16` plus `smooth` F32 [K] when the kept α > 0. `amax` [K]
 * (default: the rows' per-channel max |x|) sets the factors; without rows (`s = 0`) only α = 0
 * runs. The first α scoring lowest wins ties, so α = 0 is kept unless scaling helps.
 *
 * @example
 * ```ts ignore
 * import { quantizeW4A16Awq } from "./awq.ts";
 * const q = await quantizeW4A16Awq({ w, bias, n, k, x, s, yRef, matmul: cpuMatMul });
 * console.log(q.alpha, q.relError, q.tensors.has("smooth"));
 * ```
 */
export async function quantizeW4A16Awq(
  inp: BaselineInput,
  opts: { amax?: Float32Array; alphas?: readonly number[] } = {},
): Promise<AwqResult> {
  const { w, n, k, x, s } = inp;
  const amax = opts.amax ?? rowAmax(x, s, k);
  if (amax.length !== k) {
    throw new TypeError(
      `Cannot quantize W4A16: amax has ${amax.length} elements, expected [K=${k}]`,
    );
  }
  const alphas = s > 0 ? opts.alphas ?? AWQ_ALPHAS : [0];
  let best: AwqResult | undefined;
  for (const alpha of alphas) {
    const f = awqFactors(amax, alpha);
    const scaled = f.every((v) => v === 1) ? null : f;
    const res = scaled
      ? await quantizeW4A16({
        ...inp,
        w: smoothWeight(w, n, k, scaled),
        x: smoothActivations(x, s, k, scaled),
      })
      : await quantizeW4A16(inp);
    if (scaled) res.tensors.set("smooth", f32Tensor(scaled, [k]));
    if (!best || res.relError < best.relError) best = { ...res, alpha: scaled ? alpha : 0 };
  }
  return best!;
}

/** Per-channel max |x| of `x` [S, K]. */
function rowAmax(x: Float32Array, s: number, k: number): Float32Array {
  const out = new Float32Array(k);
  for (let i = 0; i < s; i++) {
    for (let c = 0; c < k; c++) out[c] = Math.max(out[c], Math.abs(x[i * k + c]));
  }
  return out;
}
