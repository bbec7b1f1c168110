/**
 * Weight dilation (DilateQuant): a per-in-channel scaling `X' = X/s`, `W' = W·diag(s)` like
 * smoothing, chosen so that no out-channel's weight range [min_n, max_n] grows. In-channels that
 * hold some out-channel's max or min keep `s = 1`; every other channel gets the largest factor
 * that keeps each of its weights inside its row's range:
 * `s_k = min over n of (max_n / W[n,k] if W[n,k] > 0, min_n / W[n,k] if W[n,k] < 0)`, so `s ≥ 1`
 * and the activations only shrink. Columns of zeros keep 1; `s` is capped at `maxFactor`
 * (default {@linkcode DILATION_MAX}; a smaller factor still keeps the ranges).
 *
 * Guarantees, in f32: `fround(s_k · W[n,k])` stays within [min_n, max_n] exactly (each `s_k` is
 * rounded down until `s_k·W[n,k]` — exact in f64 — is within the bound, and f32 rounding is
 * monotone); `X/s · (s·W)` equals `X·W` up to the two f32 roundings (relative ≤ 2⁻²³ per product).
 *
 * @module
 */

/** Default cap of a dilation factor. */
export const DILATION_MAX = 1024;

/** The next f32 below a positive f32 value. */
function f32Below(v: number): number {
  const f = new Float32Array([v]);
  const u = new Uint32Array(f.buffer);
  u[0] -= 1;
  return f[0];
}

/**
 * Dilation factors s [K] (f32, ≥ 1) of W [N, K] (row-major). Throws `TypeError` for a wrong
 * length and `RangeError` for a non-finite weight.
 *
 * @example
 * ```ts
 * import { applyDilation, dilationFactors } from "./dilate.ts";
 * const w = Float32Array.from([1, 0.5, -2, 4, 0.25, -1]); // [N=2, K=3]
 * const s = dilationFactors(w, 2, 3); // [1, 2, 1]: column 1 may double (row 0: 1 / 0.5)
 * const wd = applyDilation(w, 2, 3, s); // [1, 1, -2, 4, 0.5, -1]: row ranges unchanged
 * ```
 */
export function dilationFactors(
  w: Float32Array,
  n: number,
  k: number,
  opts: { maxFactor?: number } = {},
): Float32Array {
  if (w.length !== n * k) {
    throw new TypeError(
      `Cannot compute dilation factors: weight has ${w.length} elements, expected [N=${n}, K=${k}]`,
    );
  }
  const cap = opts.maxFactor ?? DILATION_MAX;
  if (!(cap >= 1 && cap < Infinity)) {
    throw new RangeError(`Cannot compute dilation factors: maxFactor is ${cap}, expected >= 1`);
  }
  const rowMax = new Float64Array(n), rowMin = new Float64Array(n);
  for (let row = 0; row < n; row++) {
    let lo = Infinity, hi = -Infinity;
    for (let c = 0; c < k; c++) {
      const v = w[row * k + c];
      if (!Number.isFinite(v)) {
        throw new RangeError(
          `Cannot compute dilation factors: weight[${row}, ${c}] is ${v}; weights must be finite`,
        );
      }
      if (v > hi) hi = v;
      if (v < lo) lo = v;
    }
    rowMax[row] = hi;
    rowMin[row] = lo;
  }
  const s = new Float64Array(k).fill(Infinity);
  const pinned = new Uint8Array(k);
  for (let row = 0; row < n; row++) {
    for (let c = 0; c < k; c++) {
      const v = w[row * k + c];
      if (v === 0) continue;
      if (v === rowMax[row] || v === rowMin[row]) pinned[c] = 1;
      const bound = v > 0 ? rowMax[row] / v : rowMin[row] / v;
      if (bound < s[c]) s[c] = bound;
    }
  }
  const out = new Float32Array(k);
  for (let c = 0; c < k; c++) {
    if (pinned[c] || s[c] === Infinity) {
      out[c] = 1;
      continue;
    }
    let f = Math.fround(Math.min(cap, Math.max(1, s[c])));
    // Round down until every s·W[n,k] (exact in f64: 24 × 24 bits) is inside its row's range.
    for (;;) {
      let ok = true;
      for (let row = 0; row < n && ok; row++) {
        const p = f * w[row * k + c];
        ok = p <= rowMax[row] && p >= rowMin[row];
      }
      if (ok || f <= 1) break;
      f = Math.max(1, f32Below(f));
    }
    out[c] = f;
  }
  return out;
}

/** `W' = W·diag(s)` [N, K] in f32. */
export function applyDilation(
  w: Float32Array,
  n: number,
  k: number,
  s: Float32Array,
): Float32Array {
  if (w.length !== n * k || s.length !== k) {
    throw new TypeError(
      `Cannot apply dilation: weight has ${w.length} elements and s ${s.length}, expected ` +
        `[N=${n}, K=${k}] and [K=${k}]`,
    );
  }
  const out = new Float32Array(n * k);
  for (let i = 0; i < out.length; i++) out[i] = w[i] * s[i % k];
  return out;
}

/** `X' = X / s` [M, K] in f32 (the activation side, what the runtime's `smooth` does). */
export function dilateActivations(
  x: Float32Array,
  m: number,
  k: number,
  s: Float32Array,
): Float32Array {
  if (x.length !== m * k || s.length !== k) {
    throw new TypeError(
      `Cannot apply dilation: x has ${x.length} elements and s ${s.length}, expected ` +
        `[M=${m}, K=${k}] and [K=${k}]`,
    );
  }
  const out = new Float32Array(m * k);
  for (let i = 0; i < out.length; i++) out[i] = x[i] / s[i % k];
  return out;
}
