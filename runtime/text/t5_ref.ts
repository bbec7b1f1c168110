/**
 * CPU reference of the T5 v1.1 encoder (the specification of runtime/text/t5.ts): plain float64
 * loops over the checkpoint's own tensors, no fusion, no padding. Slow; for tests on tiny models.
 *
 * @module
 */
import { geluTanhRef } from "../../kernels/ffn_act/ffn_act_ref.ts";
import type { T5Config } from "./t5.ts";
import { relativePositionBucket } from "./t5.ts";

/** Reads one float tensor by name (e.g. `Checkpoint.float`). */
export type TensorGetter = (name: string) => Promise<Float32Array>;

/** `y[m, n] = Σ_k x[m, k]·w[n, k]` (w as stored, [N, K]), float64. */
export function linearRef(x: Float64Array, w: ArrayLike<number>, m: number, k: number, n: number) {
  const y = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let c = 0; c < k; c++) s += x[i * k + c] * w[j * k + c];
      y[i * n + j] = s;
    }
  }
  return y;
}

function rmsNorm(x: Float64Array, w: ArrayLike<number>, m: number, d: number, eps: number) {
  const y = new Float64Array(m * d);
  for (let i = 0; i < m; i++) {
    let q = 0;
    for (let c = 0; c < d; c++) q += x[i * d + c] ** 2;
    const r = 1 / Math.sqrt(q / d + eps);
    for (let c = 0; c < d; c++) y[i * d + c] = x[i * d + c] * r * w[c];
  }
  return y;
}

/**
 * T5 encoder forward over `ids` [B, L] (optional `mask` [B, L], 0 = padding key), float64.
 * Returns the block outputs (residual after each block) and `last_hidden_state`.
 */
export async function t5EncoderRef(
  get: TensorGetter,
  cfg: T5Config,
  p: { b: number; l: number; ids: ArrayLike<number>; mask?: ArrayLike<number> },
): Promise<{ blockOutputs: Float64Array[]; lastHiddenState: Float64Array }> {
  const { b, l } = p, d = cfg.dModel, h = cfg.numHeads, dk = cfg.dKv, m = b * l, inner = h * dk;
  const emb = await get("shared.weight");
  let x = new Float64Array(m * d);
  for (let r = 0; r < m; r++) for (let c = 0; c < d; c++) x[r * d + c] = emb[p.ids[r] * d + c];
  const rel = await get("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight");
  const blockOutputs: Float64Array[] = [];
  for (let i = 0; i < cfg.numLayers; i++) {
    const pre = `encoder.block.${i}.layer`;
    const hN = rmsNorm(x, await get(`${pre}.0.layer_norm.weight`), m, d, cfg.eps);
    const q = linearRef(hN, await get(`${pre}.0.SelfAttention.q.weight`), m, d, inner);
    const k = linearRef(hN, await get(`${pre}.0.SelfAttention.k.weight`), m, d, inner);
    const v = linearRef(hN, await get(`${pre}.0.SelfAttention.v.weight`), m, d, inner);
    const att = new Float64Array(m * inner);
    const s = new Float64Array(l);
    for (let bb = 0; bb < b; bb++) {
      for (let hh = 0; hh < h; hh++) {
        for (let qi = 0; qi < l; qi++) {
          let max = -Infinity;
          for (let kj = 0; kj < l; kj++) {
            let dot = 0;
            for (let c = 0; c < dk; c++) {
              dot += q[(bb * l + qi) * inner + hh * dk + c] *
                k[(bb * l + kj) * inner + hh * dk + c];
            }
            const bucket = relativePositionBucket(kj - qi, cfg.numBuckets, cfg.maxDistance);
            s[kj] = p.mask && p.mask[bb * l + kj] === 0 ? -Infinity : dot + rel[bucket * h + hh];
            max = Math.max(max, s[kj]);
          }
          let sum = 0;
          for (let kj = 0; kj < l; kj++) sum += s[kj] = Math.exp(s[kj] - max);
          for (let kj = 0; kj < l; kj++) {
            for (let c = 0; c < dk; c++) {
              att[(bb * l + qi) * inner + hh * dk + c] += (s[kj] / sum) *
                v[(bb * l + kj) * inner + hh * dk + c];
            }
          }
        }
      }
    }
    const o = linearRef(att, await get(`${pre}.0.SelfAttention.o.weight`), m, inner, d);
    for (let j = 0; j < x.length; j++) x[j] += o[j];
    const h2 = rmsNorm(x, await get(`${pre}.1.layer_norm.weight`), m, d, cfg.eps);
    const a = linearRef(h2, await get(`${pre}.1.DenseReluDense.wi_0.weight`), m, d, cfg.dFf);
    const g = linearRef(h2, await get(`${pre}.1.DenseReluDense.wi_1.weight`), m, d, cfg.dFf);
    for (let j = 0; j < a.length; j++) a[j] = geluTanhRef(a[j]) * g[j];
    const z = linearRef(a, await get(`${pre}.1.DenseReluDense.wo.weight`), m, cfg.dFf, d);
    x = x.map((v, j) => v + z[j]);
    blockOutputs.push(x.slice());
  }
  const lastHiddenState = rmsNorm(x, await get("encoder.final_layer_norm.weight"), m, d, cfg.eps);
  return { blockOutputs, lastHiddenState };
}
