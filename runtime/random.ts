/**
 * Seeded Gaussian noise that is bit-identical on every platform and JavaScript engine.
 *
 * The specification, so that another implementation (a WGSL kernel, Python) can reproduce it:
 *
 * 1. Bits: Philox4x32-10 (Salmon et al., SC'11) with key `(seed, stream)`. Element `n` of the
 *    noise sequence belongs to block `b = floor(n / 4)`, whose counter is
 *    `(b mod 2³², floor(b / 2³²), 0, 0)`; the block's four output words are `w0..w3`.
 * 2. Uniforms: a word `w` maps to `u = (w + 0.5) / 2³²`, exactly, in float64 (never 0 or 1).
 * 3. Box–Muller in float64: `r = √(−2 ln u(w0))`, `θ = 2π u(w1)`, lanes
 *    `n mod 4 = 0, 1` are `r cos θ, r sin θ`; lanes 2, 3 use `w2, w3` the same way.
 * 4. The float64 value is rounded to float32 (round to nearest, ties to even).
 *
 * ECMAScript defines `+ − × /` exactly (IEEE 754 binary64, round to nearest) but leaves
 * `Math.log`, `Math.cos`, `Math.sin` and `Math.sqrt` "implementation-approximated", so step 3
 * uses its own `ln`, `sqrt` and `sincos` built from those four operations only, with a fixed
 * operation order: the results do not depend on the engine, the CPU or the OS. They are
 * accurate to a few float64 ulps, far below float32 resolution. The angle reduction is exact
 * because `θ` is a whole number of 2⁻³² turns. `|z|` never exceeds √(2 ln 2³³) ≈ 6.76.
 *
 * @module
 */

/** Philox4x32 round multipliers and Weyl key increments (Random123's constants). */
const PHILOX_M0 = 0xd2511f53;
const PHILOX_M1 = 0xcd9e8d57;
const PHILOX_W0 = 0x9e3779b9;
const PHILOX_W1 = 0xbb67ae85;
/** Philox4x32-10: ten rounds, the variant that Random123, cuRAND and PyTorch use. */
export const PHILOX_ROUNDS = 10;

const TWO_POW_32 = 4294967296;
const MAX_U32 = TWO_POW_32 - 1;

/** High 32 bits of the 64-bit product of two u32 values, exactly (16-bit halves, float64). */
function mulhi32(a: number, b: number): number {
  const ah = a >>> 16, al = a & 0xffff, bh = b >>> 16, bl = b & 0xffff;
  const mid = ah * bl + al * bh; // < 2³³, exact
  const low = al * bl + (mid % 65536) * 65536; // < 2³³, exact
  return (ah * bh + Math.floor(mid / 65536) + Math.floor(low / TWO_POW_32)) >>> 0;
}

/**
 * One Philox4x32-10 block: four u32 words from a 128-bit counter and a 64-bit key. Writes into
 * `out` (default: a new array) and returns it.
 *
 * @example
 * ```ts
 * import { philox4x32 } from "./random.ts";
 * const w = philox4x32([0, 0, 0, 0], [0, 0]);
 * console.log(w[0].toString(16)); // "6627e8d5", Random123's known answer
 * ```
 */
export function philox4x32(
  counter: ArrayLike<number>,
  key: ArrayLike<number>,
  out: Uint32Array = new Uint32Array(4),
): Uint32Array {
  let c0 = counter[0] >>> 0, c1 = counter[1] >>> 0, c2 = counter[2] >>> 0, c3 = counter[3] >>> 0;
  let k0 = key[0] >>> 0, k1 = key[1] >>> 0;
  for (let round = 0; round < PHILOX_ROUNDS; round++) {
    if (round > 0) {
      k0 = (k0 + PHILOX_W0) >>> 0;
      k1 = (k1 + PHILOX_W1) >>> 0;
    }
    const hi0 = mulhi32(PHILOX_M0, c0), lo0 = Math.imul(PHILOX_M0, c0) >>> 0;
    const hi1 = mulhi32(PHILOX_M1, c2), lo1 = Math.imul(PHILOX_M1, c2) >>> 0;
    c0 = (hi1 ^ c1 ^ k0) >>> 0;
    c1 = lo1;
    c2 = (hi0 ^ c3 ^ k1) >>> 0;
    c3 = lo0;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
  return out;
}

// ---- Deterministic float64 elementary functions (only + − × / and comparisons) ----

/** 1/(2k+1), k = 0..10: the series of atanh. */
const ATANH_COEFS = Array.from({ length: 11 }, (_, k) => 1 / (2 * k + 1));
/** (−1)^k / (2k+1)! and (−1)^k / (2k)!, k = 0..9: the Taylor series of sin and cos. */
const SIN_COEFS: number[] = [];
const COS_COEFS: number[] = [];
{
  let f = 1;
  for (let n = 1; n <= 20; n++) {
    f = f / n;
    if (n % 2 === 1) SIN_COEFS.push(((n - 1) / 2) % 2 === 0 ? f : -f);
    else COS_COEFS.push((n / 2) % 2 === 0 ? f : -f);
  }
  COS_COEFS.unshift(1);
  COS_COEFS.pop();
}
const SQRT_HALF = 0.7071067811865476;
/** π/2 divided by 2³⁰: one step of a 30-bit quadrant fraction, in radians. */
const QUARTER_TURN_STEP = Math.PI / 2 / 1073741824;

/** ln(u) for 0 < u < 1: u = m·2^e with m ∈ [√½, √2), ln m = 2 atanh((m−1)/(m+1)). */
function lnUnit(u: number): number {
  let m = u, e = 0;
  while (m < SQRT_HALF) {
    m *= 2;
    e--;
  }
  const s = (m - 1) / (m + 1), s2 = s * s;
  let p = ATANH_COEFS[10];
  for (let k = 9; k >= 0; k--) p = p * s2 + ATANH_COEFS[k];
  return e * Math.LN2 + 2 * s * p;
}

/** √t for t > 0: scaled by powers of 4 into [¼, 1), then four Newton steps from a line (±4 %). */
function sqrtPos(t: number): number {
  let m = t, scale = 1;
  while (m >= 1) {
    m *= 0.25;
    scale *= 2;
  }
  while (m < 0.25) {
    m *= 4;
    scale *= 0.5;
  }
  let y = 0.354 + 0.667 * m;
  for (let i = 0; i < 4; i++) y = 0.5 * (y + m / y);
  return y * scale;
}

/** sin and cos of φ ∈ [0, π/4] by Taylor series (terms to φ¹⁹ and φ¹⁸). */
function sinCosSmall(phi: number, out: Float64Array): void {
  const p2 = phi * phi;
  let s = SIN_COEFS[9], c = COS_COEFS[9];
  for (let k = 8; k >= 0; k--) {
    s = s * p2 + SIN_COEFS[k];
    c = c * p2 + COS_COEFS[k];
  }
  out[0] = s * phi;
  out[1] = c;
}

/** cos and sin of θ = 2π (w + 0.5) / 2³², written to out[0], out[1]; the reduction is exact. */
function cosSinTurn(w: number, out: Float64Array): void {
  const quadrant = w >>> 30;
  const r = (w & 0x3fffffff) + 0.5; // angle within the quadrant, in 2⁻³² turns: (0, 2³⁰)
  let c: number, s: number;
  if (r <= 536870912) {
    sinCosSmall(r * QUARTER_TURN_STEP, out);
    s = out[0];
    c = out[1];
  } else {
    sinCosSmall((1073741824 - r) * QUARTER_TURN_STEP, out); // π/2 − angle, exact
    c = out[0];
    s = out[1];
  }
  switch (quadrant) {
    case 0:
      out[0] = c, out[1] = s;
      break;
    case 1:
      out[0] = -s, out[1] = c;
      break;
    case 2:
      out[0] = -c, out[1] = -s;
      break;
    default:
      out[0] = s, out[1] = -c;
  }
}

function checkU32(what: string, name: string, v: number): void {
  if (!Number.isInteger(v) || v < 0 || v > MAX_U32) {
    throw new RangeError(
      `Cannot ${what}: ${name} must be an integer in [0, 2^32 - 1], got ${v}`,
    );
  }
}

/**
 * A seekable stream of standard normal float32 values, a pure function of
 * `(seed, stream, position)`: drawing 3 then 5 values gives the same 8 values as drawing 8.
 */
export class GaussianNoise {
  /** The Philox key's first word, an integer in [0, 2³² − 1]. */
  readonly seed: number;
  /** The Philox key's second word, an integer in [0, 2³² − 1]: independent sequences per seed. */
  readonly stream: number;
  /** Index of the next value in the sequence. */
  position = 0;
  #key: Uint32Array;
  #ctr = new Uint32Array(4);
  #words = new Uint32Array(4);
  #cs = new Float64Array(2);
  #z = new Float32Array(4);

  constructor(seed: number, stream = 0) {
    checkU32("create Gaussian noise", "seed", seed);
    checkU32("create Gaussian noise", "stream", stream);
    this.seed = seed;
    this.stream = stream;
    this.#key = new Uint32Array([seed, stream]);
  }

  /** The four values of block `b`, rounded to float32, into `z`. */
  #block(b: number, z: Float32Array): void {
    const w = this.#words, cs = this.#cs;
    this.#ctr[0] = b % TWO_POW_32;
    this.#ctr[1] = Math.floor(b / TWO_POW_32);
    philox4x32(this.#ctr, this.#key, w);
    for (let pair = 0; pair < 2; pair++) {
      const r = sqrtPos(-2 * lnUnit((w[2 * pair] + 0.5) / TWO_POW_32));
      cosSinTurn(w[2 * pair + 1], cs);
      z[2 * pair] = r * cs[0];
      z[2 * pair + 1] = r * cs[1];
    }
  }

  /** Fill `out` with the next `out.length` values and advance; returns `out`. */
  fill(out: Float32Array): Float32Array {
    const start = this.position;
    if (start + out.length > Number.MAX_SAFE_INTEGER) {
      throw new RangeError(`Cannot draw Gaussian noise: position ${start} is past 2^53`);
    }
    const z = this.#z;
    let block = -1;
    for (let i = 0; i < out.length; i++) {
      const n = start + i, b = Math.floor(n / 4);
      if (b !== block) {
        block = b;
        this.#block(b, z);
      }
      out[i] = z[n - 4 * b];
    }
    this.position = start + out.length;
    return out;
  }

  /** The next `count` values as a new array. */
  next(count: number): Float32Array {
    if (!Number.isInteger(count) || count < 0) {
      throw new RangeError(
        `Cannot draw Gaussian noise: count must be a non-negative integer, got ${count}`,
      );
    }
    return this.fill(new Float32Array(count));
  }
}

/**
 * `count` standard normal float32 values for `seed` (and `stream`, default 0), identical on
 * every platform. Seeds and streams are integers in [0, 2³² − 1]; anything else is a
 * `RangeError`. Different streams of one seed are independent sequences (use one per image of
 * a batch, or per purpose).
 *
 * @example
 * ```ts
 * import { gaussianNoise } from "./random.ts";
 * const latents = gaussianNoise(42, 4 * 32 * 32); // the initial noise of a 4×32×32 latent
 * console.log(latents.length); // 4096
 * ```
 */
export function gaussianNoise(seed: number, count: number, stream = 0): Float32Array {
  return new GaussianNoise(seed, stream).next(count);
}
