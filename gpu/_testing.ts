/**
 * Shared helpers for kernel tests and benchmarks: a seeded generator (the seed is printed so a
 * failure can be replayed with `SEED=...`), error metrics, output poisoning and one shared GPU.
 *
 * @module
 */
import { ensureRuntimeDir, Gpu } from "./device.ts";

/** A small, fast, seedable PRNG (mulberry32) with uniform and Gaussian draws. */
export class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Uniform in [lo, hi). */
  uniform(lo = -1, hi = 1): number {
    return lo + (hi - lo) * this.next();
  }
  /** Standard normal (Box–Muller). */
  normal(): number {
    const u = 1 - this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.next());
  }
  /** Integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  /** A Float32Array of standard normals times `scale`. */
  normals(n: number, scale = 1): Float32Array {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = this.normal() * scale;
    return a;
  }
}

/**
 * A fresh seed per run (from `SEED` in the environment when set), printed with the test name so
 * a failing run can be replayed.
 */
export function freshRng(testName: string): Rng {
  const env = Deno.env.get("SEED");
  const seed = env ? Number(env) : (Math.random() * 2 ** 32) >>> 0;
  console.log(`${testName}: SEED=${seed}`);
  return new Rng(seed);
}

/** Relative L2 error ‖a − b‖ / ‖b‖ (b the reference). */
export function relL2(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let n = 0, d = 0;
  for (let i = 0; i < b.length; i++) {
    n += (a[i] - b[i]) ** 2;
    d += b[i] ** 2;
  }
  return Math.sqrt(n / d);
}

/**
 * Largest error relative to the reference's largest magnitude: max|a − b| / max|b| (b the
 * reference). A NaN difference counts as an infinite error; throws when the lengths differ.
 */
export function relMax(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) {
    throw new RangeError(`Cannot compare: length ${a.length}, expected ${b.length}`);
  }
  let d = 0, m = 0;
  for (let i = 0; i < b.length; i++) {
    const e = Math.abs(a[i] - b[i]);
    d = Number.isNaN(e) ? Infinity : Math.max(d, e);
    m = Math.max(m, Math.abs(b[i]));
  }
  return d / m;
}

/** Largest absolute and relative errors of `actual` against `expected`. */
export function maxErrors(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
): { maxAbs: number; maxRel: number; worst: number } {
  let maxAbs = 0, maxRel = 0, worst = -1;
  for (let i = 0; i < expected.length; i++) {
    const d = Math.abs(actual[i] - expected[i]);
    if (!(d <= maxAbs)) { // NaN-propagating: a NaN always becomes the worst
      maxAbs = Number.isNaN(d) ? Infinity : d;
      worst = i;
    }
    const r = d / Math.max(Math.abs(expected[i]), 1e-30);
    if (r > maxRel) maxRel = r;
  }
  return { maxAbs, maxRel, worst };
}

/**
 * Assert `|actual - expected| <= atol + rtol·|expected|` element-wise; the message reports the
 * max abs / rel errors, the worst index and the bound.
 */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  opts: { atol: number; rtol?: number; name: string },
): void {
  if (actual.length !== expected.length) {
    throw new Error(`${opts.name}: length ${actual.length}, expected ${expected.length}`);
  }
  const rtol = opts.rtol ?? 0;
  for (let i = 0; i < expected.length; i++) {
    const d = Math.abs(actual[i] - expected[i]);
    if (!(d <= opts.atol + rtol * Math.abs(expected[i]))) {
      const e = maxErrors(actual, expected);
      throw new Error(
        `${opts.name}: element ${i} is ${actual[i]}, expected ${expected[i]} ` +
          `(max abs err ${e.maxAbs.toExponential(3)}, max rel err ${e.maxRel.toExponential(3)}, ` +
          `bound atol ${opts.atol} + rtol ${rtol})`,
      );
    }
  }
}

/** Bytes of NaN (0xFF…): poison an output buffer so an unwritten element fails its test. */
export function poison(byteLength: number): Uint8Array {
  return new Uint8Array(Math.ceil(byteLength / 4) * 4).fill(0xff);
}

let shared: Promise<Gpu | null> | null = null;

/** One GPU for all tests in a process, or null when no adapter exists. */
export function testGpu(): Promise<Gpu | null> {
  shared ??= Gpu.create().catch((e) => {
    console.warn(`No usable WebGPU adapter: ${(e as Error).message}`);
    return null;
  });
  return shared;
}

/** True when a WebGPU adapter exists (checked once, at module load, for `Deno.test({ignore})`). */
export const HAS_GPU: boolean = await (async () => {
  try {
    ensureRuntimeDir();
    return Boolean(await navigator.gpu?.requestAdapter());
  } catch {
    return false;
  }
})();

/** The reason printed for tests skipped without an adapter. */
export const NO_GPU_REASON =
  "no WebGPU adapter: install mesa-vulkan-drivers (software Vulkan) or a GPU driver";
