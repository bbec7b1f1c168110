/**
 * CPU reference of `sparse_attention` (the specification): block-sparse attention over permuted
 * tokens with optional INT8 Q·Kᵀ and INT8 P·V (PAROAttention), plain float64 loops.
 *
 * Per (batch b, head h) and query tile i of the permuted sequence (`perm` and the CSR are
 * layout.ts's), each query at permuted position p (token `perm[h·T + p]`) attends to the keys of
 * the key tiles `indices[offsets[h·nt + i] .. offsets[h·nt + i + 1])`, in that order, with an
 * online softmax in base-2 units (one running-max update per visited tile). A query tile that
 * visits nothing outputs zeros.
 *
 * - QK "f16" (float: the storage dtype's values): s = scale·log2(e)·(q·k).
 * - QK "int8": kmean[c] = mean over the T tokens of k[c]; per query tile qs = scale·log2(e)·q,
 *   sq = max|qs|/127, q8 = clamp(round(qs/sq), ±127); per key tile k̃ = k − kmean,
 *   sk = max|k̃|/127, k8 likewise (a tile of zeros: scale 0, codes 0); s = (Σ q8·k8)·sq·sk.
 * - PV "f16" (float): p = 2^(s − m); acc = α·acc + Σ p·v; l = α·l + Σ p; o = acc/l.
 * - PV "int8": sv[c] = max over the T tokens of |v[c]| / 127, v8 = round(v/sv);
 *   p8 = round(127·2^(s − m)); acc = α·acc + Σ p8·v8; l = α·l + Σ p8; o = sv·acc/l.
 *
 * Rounding is to nearest, ties to even (WGSL `round`), see {@linkcode roundHalfEven}.
 *
 * @module
 */
import type { SparsePv, SparseQk } from "./sparse_attention.ts";

/** Inputs of the reference; `qkv` row-major [B·T, 3·H·D] as in flash_attention. */
export interface SparseAttentionRefInputs {
  b: number;
  t: number;
  h: number;
  d: number;
  /** Tokens per mask tile. */
  tile: number;
  qk: SparseQk;
  pv: SparsePv;
  /** Logit scale; default 1/√D. */
  scale?: number;
  qkv: ArrayLike<number>;
  /** [H·T]: `perm[h·T + p]` is the token at permuted position p of head h. */
  perm: ArrayLike<number>;
  /** [H·nt + 1] CSR row starts (layout.ts `maskCsr`). */
  offsets: ArrayLike<number>;
  /** Key tiles of each row. */
  indices: ArrayLike<number>;
}

/**
 * Round to the nearest integer, ties to even (WGSL `round`).
 *
 * @example
 * ```ts
 * import { roundHalfEven } from "./sparse_attention_ref.ts";
 * console.log([2.5, 3.5, -2.5, 2.6].map(roundHalfEven)); // [2, 4, -2, 3]
 * ```
 */
export function roundHalfEven(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d < 0.5) return f;
  if (d > 0.5) return f + 1;
  return f % 2 === 0 ? f : f + 1;
}

/** `clamp(roundHalfEven(x / s), -127, 127)`, 0 when `s` is 0. */
export function quantize8(x: number, s: number): number {
  return s > 0 ? Math.min(127, Math.max(-127, roundHalfEven(x / s))) : 0;
}

/** INT8 Q and K of every (b, h), by permuted position (rows past T are zero). */
export interface QkQuant {
  /** [B, H, nt·tile, D] codes of scale·log2(e)·q. */
  q8: Int8Array;
  /** [B, H, nt·tile, D] codes of k − kmean. */
  k8: Int8Array;
  /** [B, H, nt] per query tile. */
  sq: Float64Array;
  /** [B, H, nt] per key tile. */
  sk: Float64Array;
  /** [B, H, D]. */
  kmean: Float64Array;
}

/** The INT8 Q and K of the "int8" QK mode (see the module doc). */
export function quantizeQkRef(p: SparseAttentionRefInputs): QkQuant {
  const { b: B, t: T, h: H, d: D, tile, qkv, perm } = p;
  const scale2 = (p.scale ?? 1 / Math.sqrt(D)) * Math.LOG2E;
  const nt = Math.ceil(T / tile), tpad = nt * tile, row = 3 * H * D;
  const out: QkQuant = {
    q8: new Int8Array(B * H * tpad * D),
    k8: new Int8Array(B * H * tpad * D),
    sq: new Float64Array(B * H * nt),
    sk: new Float64Array(B * H * nt),
    kmean: new Float64Array(B * H * D),
  };
  const qs = new Float64Array(tile * D), ks = new Float64Array(tile * D);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const bh = b * H + h;
      for (let t = 0; t < T; t++) {
        for (let c = 0; c < D; c++) {
          out.kmean[bh * D + c] += qkv[(b * T + t) * row + (H + h) * D + c];
        }
      }
      for (let c = 0; c < D; c++) out.kmean[bh * D + c] /= T;
      for (let i = 0; i < nt; i++) {
        let mq = 0, mk = 0;
        qs.fill(0);
        ks.fill(0);
        for (let r = 0; r < tile && i * tile + r < T; r++) {
          const src = (b * T + perm[h * T + i * tile + r]) * row;
          for (let c = 0; c < D; c++) {
            qs[r * D + c] = scale2 * qkv[src + h * D + c];
            ks[r * D + c] = qkv[src + (H + h) * D + c] - out.kmean[bh * D + c];
            mq = Math.max(mq, Math.abs(qs[r * D + c]));
            mk = Math.max(mk, Math.abs(ks[r * D + c]));
          }
        }
        const sq = out.sq[bh * nt + i] = mq / 127;
        const sk = out.sk[bh * nt + i] = mk / 127;
        for (let e = 0; e < tile * D; e++) {
          out.q8[(bh * tpad + i * tile) * D + e] = quantize8(qs[e], sq);
          out.k8[(bh * tpad + i * tile) * D + e] = quantize8(ks[e], sk);
        }
      }
    }
  }
  return out;
}

/** INT8 V of the "int8" PV mode. */
export interface VQuant {
  /** [B·T, H·D] codes, by token (like v in qkv). */
  v8: Int8Array;
  /** [B, H, D] per-channel scales. */
  sv: Float64Array;
}

/** The INT8 V of the "int8" PV mode (see the module doc). */
export function quantizeVRef(p: SparseAttentionRefInputs): VQuant {
  const { b: B, t: T, h: H, d: D, qkv } = p;
  const row = 3 * H * D;
  const v8 = new Int8Array(B * T * H * D), sv = new Float64Array(B * H * D);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let c = 0; c < D; c++) {
        let m = 0;
        for (let t = 0; t < T; t++) {
          m = Math.max(m, Math.abs(qkv[(b * T + t) * row + (2 * H + h) * D + c]));
        }
        const s = sv[(b * H + h) * D + c] = m / 127;
        for (let t = 0; t < T; t++) {
          v8[(b * T + t) * H * D + h * D + c] = quantize8(
            qkv[(b * T + t) * row + (2 * H + h) * D + c],
            s,
          );
        }
      }
    }
  }
  return { v8, sv };
}

/**
 * `o` [B·T, H·D] of block-sparse attention as specified in the module doc; float64.
 *
 * @example
 * ```ts
 * import { sparseAttentionRef } from "./sparse_attention_ref.ts";
 * // B=1, T=2, H=1, D=1, tiles of 1 token: query tile 0 sees key tile 1 only, tile 1 nothing
 * const o = sparseAttentionRef({
 *   b: 1, t: 2, h: 1, d: 1, tile: 1, qk: "f16", pv: "f16", scale: 1,
 *   qkv: [1, 0, 2, 1, 0, 6], perm: [0, 1], offsets: [0, 1, 1], indices: [1],
 * });
 * console.log([...o]); // [6, 0]
 * ```
 */
export function sparseAttentionRef(p: SparseAttentionRefInputs): Float64Array {
  const { b: B, t: T, h: H, d: D, tile, qkv, perm, offsets, indices } = p;
  const scale2 = (p.scale ?? 1 / Math.sqrt(D)) * Math.LOG2E;
  const nt = Math.ceil(T / tile), tpad = nt * tile, row = 3 * H * D;
  const qq = p.qk === "int8" ? quantizeQkRef(p) : null;
  const vq = p.pv === "int8" ? quantizeVRef(p) : null;
  const o = new Float64Array(B * T * H * D);
  const s = new Float64Array(tile), acc = new Float64Array(D);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const bh = b * H + h;
      for (let qp = 0; qp < T; qp++) {
        const i = Math.floor(qp / tile), qtok = perm[h * T + qp];
        let m = -Infinity, l = 0;
        acc.fill(0);
        for (let n = offsets[h * nt + i]; n < offsets[h * nt + i + 1]; n++) {
          const j = indices[n], nk = Math.min(tile, T - j * tile);
          for (let e = 0; e < nk; e++) {
            const kp = j * tile + e;
            let dot = 0;
            if (qq) {
              for (let c = 0; c < D; c++) {
                dot += qq.q8[(bh * tpad + qp) * D + c] * qq.k8[(bh * tpad + kp) * D + c];
              }
              s[e] = dot * qq.sq[bh * nt + i] * qq.sk[bh * nt + j];
            } else {
              const ktok = perm[h * T + kp];
              for (let c = 0; c < D; c++) {
                dot += qkv[(b * T + qtok) * row + h * D + c] *
                  qkv[(b * T + ktok) * row + (H + h) * D + c];
              }
              s[e] = scale2 * dot;
            }
          }
          let mNew = m;
          for (let e = 0; e < nk; e++) mNew = Math.max(mNew, s[e]);
          const alpha = m === -Infinity ? 0 : 2 ** (m - mNew);
          l *= alpha;
          for (let c = 0; c < D; c++) acc[c] *= alpha;
          for (let e = 0; e < nk; e++) {
            const ktok = perm[h * T + j * tile + e];
            const w = vq ? roundHalfEven(127 * 2 ** (s[e] - mNew)) : 2 ** (s[e] - mNew);
            l += w;
            for (let c = 0; c < D; c++) {
              acc[c] += w *
                (vq
                  ? vq.v8[(b * T + ktok) * H * D + h * D + c]
                  : qkv[(b * T + ktok) * row + (2 * H + h) * D + c]);
            }
          }
          m = mNew;
        }
        const out = (b * T + qtok) * H * D + h * D;
        for (let c = 0; c < D; c++) {
          o[out + c] = l > 0 ? (vq ? vq.sv[bh * D + c] : 1) * acc[c] / l : 0;
        }
      }
    }
  }
  return o;
}
