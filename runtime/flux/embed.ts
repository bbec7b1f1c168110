/**
 * The host-side parts of a FLUX forward pass, in float64: the sinusoidal timestep/guidance
 * embeddings and the small MLP embedders (O(D²) per image), the RoPE table, the position ids, and
 * the 2×2 latent packing.
 *
 * The embeddings are built in double on purpose: FLUX forms (1000·t)·freq with arguments up to
 * 1000·guidance, where float32 rounding alone moves cos/sin by ~1e-4, and WGSL's cos/sin are only
 * specified on [-π, π]. The table of RoPE rotations is built in double too and rounded once.
 *
 * @module
 */
import { silu } from "../../gpu/activations.ts";
import type { FluxConfig } from "./config.ts";

/** Width of FLUX's sinusoidal embedding. */
export const FLUX_TIME_EMBED_DIM = 256;
/** FLUX multiplies t ∈ [0, 1] (and the guidance value) by this before the embedding. */
export const FLUX_TIME_FACTOR = 1000;

/**
 * `[cos(a_k) | sin(a_k)]`, a_k = factor·t·exp(−ln(10000)·k/half), k < half = dim/2, in float64
 * (BFL's `timestep_embedding`).
 *
 * @example
 * ```ts
 * import { timestepEmbedding } from "./embed.ts";
 * console.log(timestepEmbedding(0, 4)); // Float64Array [1, 1, 0, 0]
 * ```
 */
export function timestepEmbedding(
  t: number,
  dim = FLUX_TIME_EMBED_DIM,
  factor = FLUX_TIME_FACTOR,
): Float64Array {
  const half = dim / 2, out = new Float64Array(dim);
  for (let k = 0; k < half; k++) {
    const a = factor * t * Math.exp(-Math.log(10000) * k / half);
    out[k] = Math.cos(a);
    out[half + k] = Math.sin(a);
  }
  return out;
}

/** A linear layer's float weights: W [N, K] row-major and bias [N]. */
export interface HostLinear {
  weight: Float32Array;
  bias?: Float32Array;
  n: number;
  k: number;
}

/** `x·Wᵀ + b` in float64. */
export function hostLinear(l: HostLinear, x: ArrayLike<number>): Float64Array {
  const out = new Float64Array(l.n);
  for (let n = 0; n < l.n; n++) {
    let s = l.bias ? l.bias[n] : 0;
    const row = n * l.k;
    for (let k = 0; k < l.k; k++) s += l.weight[row + k] * x[k];
    out[n] = s;
  }
  return out;
}

/** BFL's `MLPEmbedder`: out_layer(silu(in_layer(x))), float64. */
export function mlpEmbed(inLayer: HostLinear, outLayer: HostLinear, x: ArrayLike<number>) {
  return hostLinear(outLayer, hostLinear(inLayer, x).map(silu));
}

/**
 * The RoPE rotations for position ids [L, 3] (one image): f32 [L, D/2, 2] = (cos, sin) of pair
 * i's angle. The pairs are the axes in order; pair k of an axis of width d turns by
 * `pos · θ^(−2k/d)`, pos = the id on that axis. (BFL's `EmbedND` stores the same angles as 2×2
 * matrices.)
 *
 * @example
 * ```ts
 * import { ropeTable } from "./embed.ts";
 * const t = ropeTable([0, 0, 1], [2, 2, 2], 10000); // one token at column 1
 * console.log(Array.from(t.slice(4))); // ≈ [0.5403, 0.8415]: axis 2 turns by 1 rad
 * ```
 */
export function ropeTable(
  ids: ArrayLike<number>,
  axes: readonly number[],
  theta: number,
): Float32Array {
  const L = ids.length / axes.length, pairs = axes.reduce((a, b) => a + b, 0) / 2;
  const out = new Float32Array(L * pairs * 2);
  for (let l = 0; l < L; l++) {
    let p = 0;
    axes.forEach((d, a) => {
      const pos = ids[l * axes.length + a];
      for (let k = 0; k < d / 2; k++, p++) {
        const angle = pos * Math.pow(theta, -2 * k / d);
        out[(l * pairs + p) * 2] = Math.cos(angle);
        out[(l * pairs + p) * 2 + 1] = Math.sin(angle);
      }
    });
  }
  return out;
}

/**
 * Position ids of one image's joint sequence, [txt + h·w, 3]: text tokens all zero, image token
 * (row, col) = [0, row, col], row-major (BFL's `prepare`).
 */
export function jointIds(txtTokens: number, h: number, w: number): Float64Array {
  const ids = new Float64Array((txtTokens + h * w) * 3);
  for (let r = 0; r < h; r++) {
    for (let c = 0; c < w; c++) {
      const i = (txtTokens + r * w + c) * 3;
      ids[i + 1] = r;
      ids[i + 2] = c;
    }
  }
  return ids;
}

/**
 * The 2×2 patchify map of {@linkcode packLatents}: calls `f(t, l)` for every element, `t` its
 * index in the tokens [B, h·w, 4C] and `l` its index in the latents [B, C, 2h, 2w].
 */
function forEachPatchElement(
  b: number,
  c: number,
  height: number,
  width: number,
  f: (t: number, l: number) => void,
): void {
  const h = height / 2, w = width / 2;
  for (let bi = 0; bi < b; bi++) {
    for (let r = 0; r < h; r++) {
      for (let q = 0; q < w; q++) {
        const tok = ((bi * h + r) * w + q) * 4 * c;
        for (let ch = 0; ch < c; ch++) {
          for (let i = 0; i < 2; i++) {
            for (let j = 0; j < 2; j++) {
              f(tok + ch * 4 + i * 2 + j, ((bi * c + ch) * height + 2 * r + i) * width + 2 * q + j);
            }
          }
        }
      }
    }
  }
}

/**
 * Pack latents [B, C, 2h, 2w] into tokens [B, h·w, 4C]: `b c (h ph) (w pw) -> b (h w) (c ph pw)`.
 *
 * @example
 * ```ts
 * import { packLatents, unpackLatents } from "./embed.ts";
 * const z = Float32Array.from({ length: 16 }, (_, i) => i); // [1, 1, 4, 4]
 * const tokens = packLatents(z, 1, 1, 4, 4); // [1, 4, 4]
 * console.log(Array.from(tokens.slice(0, 4))); // [0, 1, 4, 5]
 * console.log(unpackLatents(tokens, 1, 1, 4, 4).every((v, i) => v === z[i])); // true
 * ```
 */
export function packLatents(
  z: ArrayLike<number>,
  b: number,
  c: number,
  height: number,
  width: number,
): Float32Array {
  const out = new Float32Array(b * c * height * width);
  forEachPatchElement(b, c, height, width, (t, l) => out[t] = z[l]);
  return out;
}

/** Inverse of {@linkcode packLatents}: tokens [B, h·w, 4C] → latents [B, C, 2h, 2w]. */
export function unpackLatents(
  tokens: ArrayLike<number>,
  b: number,
  c: number,
  height: number,
  width: number,
): Float32Array {
  const out = new Float32Array(b * c * height * width);
  forEachPatchElement(b, c, height, width, (t, l) => out[l] = tokens[t]);
  return out;
}

/** The embedder weights a forward needs on the host. */
export interface FluxHostWeights {
  timeIn: [HostLinear, HostLinear];
  vectorIn: [HostLinear, HostLinear];
  guidanceIn?: [HostLinear, HostLinear];
}

/** Intermediates of {@linkcode fluxVec}, per image. */
export interface FluxVec {
  /** Sinusoidal embedding of t [256]. */
  timeEmb: Float64Array;
  /** time_in output [D]. */
  timeIn: Float64Array;
  /** Sinusoidal embedding of the guidance value [256] (dev models). */
  guidanceEmb?: Float64Array;
  /** guidance_in output [D] (dev models). */
  guidanceIn?: Float64Array;
  /** vector_in output [D]. */
  vectorIn: Float64Array;
  /** time_in + guidance_in + vector_in. */
  vec: Float64Array;
}

/**
 * The conditioning vector of one image: `time_in(emb(t)) + guidance_in(emb(g)) + vector_in(y)`
 * in float64 (guidance only when the model has the embedding).
 */
export function fluxVec(
  w: FluxHostWeights,
  cfg: FluxConfig,
  t: number,
  y: ArrayLike<number>,
  guidance?: number,
): FluxVec {
  const timeEmb = timestepEmbedding(t);
  const timeIn = mlpEmbed(w.timeIn[0], w.timeIn[1], timeEmb);
  const vectorIn = mlpEmbed(w.vectorIn[0], w.vectorIn[1], y);
  const vec = new Float64Array(cfg.hidden_size);
  for (let i = 0; i < vec.length; i++) vec[i] = timeIn[i] + vectorIn[i];
  const out: FluxVec = { timeEmb, timeIn, vectorIn, vec };
  if (cfg.guidance_embed && w.guidanceIn) {
    if (guidance === undefined) {
      throw new TypeError("Cannot run FLUX: this model has a guidance embedding; pass guidance");
    }
    out.guidanceEmb = timestepEmbedding(guidance);
    out.guidanceIn = mlpEmbed(w.guidanceIn[0], w.guidanceIn[1], out.guidanceEmb);
    for (let i = 0; i < vec.length; i++) vec[i] += out.guidanceIn[i];
  }
  return out;
}
