/**
 * CPU reference of `flash_attention` (the specification): plain float64 softmax attention over
 * the fused qkv layout, one (batch, head, query) at a time.
 *
 * @module
 */

/** Inputs of {@linkcode flashAttentionRef}: `qkv` row-major [B·T, 3·H·D] (see flash_attention.ts). */
export interface FlashAttentionRefInputs {
  b: number;
  t: number;
  h: number;
  d: number;
  /** Logit scale; default 1/√D. */
  scale?: number;
  qkv: ArrayLike<number>;
  /** Query i sees keys j ≤ i only. */
  causal?: boolean;
  /** [B, T]: keys where it is 0 are skipped. */
  mask?: ArrayLike<number>;
  /** Relative bias: `table` [H, buckets], `bucket` [2T − 1] (index k − q + T − 1). */
  bias?: { buckets: number; table: ArrayLike<number>; bucket: ArrayLike<number> };
}

/**
 * `O[b·T + i, h·D + c] = Σ_j softmax_j(scale · q_i·k_j) · v_j[c]` for each batch b and head h,
 * with q, k, v the head-h slices of the qkv rows of batch b; float64. With the optional terms the
 * logit of (i, j) is `scale·q_i·k_j + table[h, bucket[j − i + T − 1]]`, and keys j > i (causal) or
 * with `mask[b, j] = 0` are left out of the softmax; a row with no key left is zeros.
 *
 * @example
 * ```ts
 * import { flashAttentionRef } from "./flash_attention_ref.ts";
 * // B=1, T=2, H=1, D=1: rows [q, k, v] = [1, 0, 2] and [1, ln 3, 6]
 * const o = flashAttentionRef({ b: 1, t: 2, h: 1, d: 1, scale: 1, qkv: [1, 0, 2, 1, Math.log(3), 6] });
 * console.log(o[0]); // (1·2 + 3·6) / 4 = 5
 * ```
 */
export function flashAttentionRef(p: FlashAttentionRefInputs): Float64Array {
  const { b: B, t: T, h: H, d: D, qkv } = p;
  const scale = p.scale ?? 1 / Math.sqrt(D);
  const row = 3 * H * D;
  const o = new Float64Array(B * T * H * D);
  const s = new Float64Array(T);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < T; i++) {
        const q = (b * T + i) * row + h * D;
        let max = -Infinity;
        const rb = p.bias;
        for (let j = 0; j < T; j++) {
          const k = (b * T + j) * row + H * D + h * D;
          let dot = 0;
          for (let c = 0; c < D; c++) dot += qkv[q + c] * qkv[k + c];
          s[j] = scale * dot;
          if (rb) s[j] += rb.table[h * rb.buckets + rb.bucket[j - i + T - 1]];
          if ((p.causal && j > i) || (p.mask && p.mask[b * T + j] === 0)) s[j] = -Infinity;
          if (s[j] > max) max = s[j];
        }
        if (max === -Infinity) continue; // every key skipped: zeros
        let sum = 0;
        for (let j = 0; j < T; j++) {
          s[j] = Math.exp(s[j] - max);
          sum += s[j];
        }
        const out = (b * T + i) * H * D + h * D;
        for (let j = 0; j < T; j++) {
          const v = (b * T + j) * row + 2 * H * D + h * D;
          for (let c = 0; c < D; c++) o[out + c] += (s[j] / sum) * qkv[v + c];
        }
      }
    }
  }
  return o;
}
