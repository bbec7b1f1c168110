/**
 * One layer on several cores: the quantizer's row-separable kernels — the large matrix products,
 * the residual's clipping / scale search, the scoring product with the dequantized residual — cut
 * into blocks of output rows (or columns), block 0 computed in the calling thread and the others
 * on idle workers of a {@link PartRunner} (quant/pool.ts). Every value of a block is computed by
 * the same code, in the same order, as in the whole-matrix call (a product's value depends only on
 * its row of A and column of B; a weight group's clipping only on its group; the NVFP4 scale
 * search's total is re-summed in group order), so a split layer is **bit-identical** to the serial
 * one (quant/split_test.ts, tests/quantize_workers_test.ts).
 *
 * Data: the large operands the search creates (Ŵ, the SVD target, the L = up·down product) are
 * allocated in `SharedArrayBuffer`s ({@linkcode RowSplit.alloc}), so workers read and write their
 * blocks in place; anything else is copied block by block (a worker's block only) and transferred.
 * Peak memory stays about the serial run's plus one block per worker.
 *
 * A block for which no worker is idle at the moment is computed in the calling thread too, so a
 * split never waits for a busy pool (and its result is the same either way).
 *
 * @module
 */
import type { MatMul } from "./linalg.ts";
import type { QuantizedLinear, QuantizeLinearOptions } from "./layer.ts";

/** quant/layer.ts `quantizeLinear`'s arguments, as the split's seams pass a whole fit on. */
export type LinearArgs = [
  name: string,
  w: Float32Array,
  bias: Float32Array | null,
  n: number,
  k: number,
  opts: QuantizeLinearOptions,
];
import { simdMatMul, simdMatMulColumns, simdResidualProduct } from "./linalg_wasm.ts";
import {
  type ClipOptions,
  NVFP4_TENSOR_FACTORS,
  nvfp4ScaleSearchRows,
  quantizeWeightClipped,
} from "./clip.ts";
import { smoothWeight } from "./baselines.ts";
import {
  groupSize,
  nvfp4TensorScale,
  type PackedWeight,
  type WeightFormat,
} from "../formats/packing.ts";

/** One block of work for a worker (or this thread). */
export type PartJob =
  | {
    op: "matmul";
    a: Float32Array;
    b: Float32Array;
    m: number;
    k: number;
    n: number;
    transB: boolean;
    /** Written in place (a shared block) instead of returning a new array. */
    out?: Float32Array;
  }
  | {
    op: "columns";
    a: Float32Array;
    b: Float32Array;
    m: number;
    k: number;
    ldb: number;
    c0: number;
    n: number;
  }
  | { op: "clip"; w: Float32Array; n: number; k: number; format: WeightFormat; opts: ClipOptions }
  | {
    op: "scales";
    w: Float32Array;
    n: number;
    k: number;
    opts: Pick<ClipOptions, "x" | "m">;
    tensorScales: number[];
  }
  | { op: "residual"; xa: Float32Array; m: number; p: PackedWeight }
  | { op: "smooth"; w: Float32Array; k: number; lambda: Float32Array; out: Float32Array }
  | { op: "subtract"; a: Float32Array; b: Float32Array };

/** What a block returns (null: written in place). */
export type PartResult =
  | Float32Array
  | PackedWeight
  | { p: PackedWeight; errors: Float64Array }[]
  | null;

/** Runs a block: in a worker (layer_worker.ts) or in this thread. */
export function runPart(job: PartJob): PartResult {
  switch (job.op) {
    case "matmul": {
      const c = simdMatMul(job.a, job.b, job.m, job.k, job.n, job.transB, job.out);
      return job.out ? null : c;
    }
    case "columns":
      return simdMatMulColumns(job.a, job.b, job.m, job.k, job.ldb, job.c0, job.n);
    case "clip":
      return quantizeWeightClipped(job.w, job.n, job.k, job.format, job.opts);
    case "scales":
      return nvfp4ScaleSearchRows(job.w, job.n, job.k, job.opts, job.tensorScales);
    case "residual":
      return simdResidualProduct(job.xa, job.m, job.p);
    case "smooth":
      smoothWeight(job.w, job.w.length / job.k, job.k, job.lambda, job.out);
      return null;
    case "subtract": {
      const { a, b } = job;
      for (let i = 0; i < b.length; i++) b[i] = a[i] - b[i];
      return null;
    }
  }
}

/** The non-shared buffers of a block's result (transferred back, not copied). */
export function resultBuffers(r: PartResult): ArrayBuffer[] {
  const out = new Set<ArrayBuffer>();
  const add = (a: ArrayBufferView) => {
    if (a.buffer instanceof ArrayBuffer) out.add(a.buffer);
  };
  if (r instanceof Float32Array) add(r);
  else if (Array.isArray(r)) {
    for (const e of r) [e.errors, e.p.qweight, e.p.wscales].forEach(add);
  } else if (r) [r.qweight, r.wscales].forEach(add);
  return [...out];
}

/** Where blocks other than the first go: an idle worker now, or `null` (then this thread). */
export interface PartRunner {
  /** Workers the runner has. */
  readonly size: number;
  /** Starts `job` on an idle worker (the buffers in `transfer` move there), or returns null. */
  tryRun(job: PartJob, transfer: ArrayBuffer[]): Promise<PartResult> | null;
  /**
   * Starts a whole layer (quant/layer.ts `quantizeLinear`, serial) on an idle worker while at
   * least one other worker stays for blocks, or returns null (absent: never).
   */
  tryLayer?(...args: LinearArgs): Promise<QuantizedLinear> | null;
}

/**
 * The seams a split layer goes through (quant/layer.ts `split`): each gives bit-identical results
 * to its serial counterpart. Made by {@linkcode rowSplit}; quant/pool.ts `quantizeSplit` passes one.
 *
 * @example
 * ```ts ignore
 * import { QuantizePool } from "./pool.ts";
 * const pool = new QuantizePool(2);
 * try {
 *   // One large layer on both cores; the same tensors as quantizeLinear(...) with the same options.
 *   const q = await pool.quantizeSplit("mlp.fc1", w, bias, 12288, 3072, {
 *     method: "svdquant", format: "int4", r: 32, stats,
 *   });
 * } finally {
 *   pool.close();
 * }
 * ```
 */
export interface RowSplit {
  /** Blocks per kernel call (this thread + workers). */
  readonly parts: number;
  /** The product of quant/linalg.ts `cpuMatMul`, by blocks of rows or columns. */
  readonly matmul: MatMul;
  /** quant/clip.ts `quantizeWeightClipped`, by blocks of rows. */
  clip(
    w: Float32Array,
    n: number,
    k: number,
    format: WeightFormat,
    opts: ClipOptions,
  ): Promise<PackedWeight>;
  /** `xa [m, K] · deq(p)ᵀ` ([m, N]), dequantizing by blocks of rows in the workers. */
  residualProduct(xa: Float32Array, m: number, p: PackedWeight): Promise<Float32Array>;
  /** A zeroed `Float32Array` over a `SharedArrayBuffer` (workers use it without a copy). */
  alloc(length: number): Float32Array;
  /** `w` in shared memory (itself when it already is; else a copy). */
  shared(w: Float32Array): Float32Array;
  /** quant/baselines.ts `smoothWeight` (`Ŵ = W·diag(λ)`) into a new shared array, by rows. */
  smoothWeight(w: Float32Array, n: number, k: number, lambda: Float32Array): Promise<Float32Array>;
  /** `b[i] = a[i] − b[i]` in place, by blocks (both shared for the workers to take part). */
  subtract(a: Float32Array, b: Float32Array): Promise<void>;
  /**
   * A whole fit of the same layer (e.g. its rank-0 floor) on an idle worker beside this one, or
   * null when none is free (then the caller runs it itself; the result is the same).
   */
  aside(...args: LinearArgs): Promise<QuantizedLinear> | null;
}

/** Products smaller than this many multiply-adds stay whole (a block's overhead would dominate). */
export const SPLIT_MIN_MACS = 1 << 24;
/** Weights smaller than this many elements are clipped whole. */
export const SPLIT_MIN_WEIGHTS = 1 << 20;

/** `[start, end)` of `parts` near-equal blocks of `total`, starts multiples of `align`. */
function blocks(total: number, parts: number, align: number): [number, number][] {
  const out: [number, number][] = [];
  let start = 0;
  for (let i = 0; i < parts && start < total; i++) {
    const end = i === parts - 1
      ? total
      : Math.min(total, Math.ceil((total * (i + 1)) / parts / align) * align);
    if (end > start) out.push([start, end]);
    start = end;
  }
  return out;
}

function isShared(a: ArrayBufferView): boolean {
  return typeof SharedArrayBuffer !== "undefined" && a.buffer instanceof SharedArrayBuffer;
}

/** Options of {@linkcode rowSplit}. */
export interface RowSplitOptions {
  /** Blocks per kernel call (default: the runner's workers; the first runs in this thread). */
  parts?: number;
  /** Products with fewer multiply-adds stay whole (default {@linkcode SPLIT_MIN_MACS}). */
  minMacs?: number;
  /** Weights with fewer elements are clipped whole (default {@linkcode SPLIT_MIN_WEIGHTS}). */
  minWeights?: number;
  /** Let `aside` start whole fits on idle workers (default true). */
  aside?: boolean;
}

/** A {@link RowSplit} over `runner`'s idle workers. */
export function rowSplit(runner: PartRunner, opts: RowSplitOptions = {}): RowSplit {
  const parts = opts.parts ?? runner.size;
  const minMacs = opts.minMacs ?? SPLIT_MIN_MACS, minWeights = opts.minWeights ?? SPLIT_MIN_WEIGHTS;
  const asideOn = opts.aside ?? true;
  if (!Number.isInteger(parts) || parts < 1) {
    throw new RangeError(`Cannot split a layer into ${parts} parts: use an integer ≥ 1`);
  }
  /**
   * Runs `make(i, remote)` for each block: block 0 here, the others on an idle worker when there is
   * one (`remote` true: the job's non-shared arrays must be copies it may transfer), else here.
   */
  const run = async (count: number, make: (i: number, remote: boolean) => PartJob) => {
    const results: (PartResult | Promise<PartResult>)[] = new Array(count);
    const local: number[] = [0];
    for (let i = 1; i < count; i++) {
      const job = make(i, true);
      const started = runner.tryRun(job, transferable(job));
      if (started) results[i] = started;
      else local.push(i);
    }
    for (const i of local) results[i] = runPart(make(i, false));
    return await Promise.all(results);
  };
  /** `a` as a block's operand: a view when local or shared, else a copy to transfer. */
  const operand = (a: Float32Array, remote: boolean) => remote && !isShared(a) ? a.slice() : a;
  const alloc = (length: number) => new Float32Array(new SharedArrayBuffer(length * 4));

  const matmul: MatMul = async (a, b, m, k, n, transB) => {
    const valid = [m, k, n].every((v) => Number.isInteger(v) && v >= 0) &&
      a.length === m * k && b.length === k * n;
    // Small products, and bad shapes (the whole call throws the canonical error), stay whole.
    if (parts === 1 || !valid || m * n * k < minMacs) {
      return simdMatMul(a, b, m, k, n, transB);
    }
    if (m > n) {
      // Blocks of rows of A, written in place into a shared result.
      const out = alloc(m * n), rows = blocks(m, parts, 4);
      await run(rows.length, (i, remote) => {
        const [r0, r1] = rows[i];
        return {
          op: "matmul",
          a: operand(a.subarray(r0 * k, r1 * k), remote),
          b: operand(b, remote),
          m: r1 - r0,
          k,
          n,
          transB,
          out: out.subarray(r0 * n, r1 * n),
        };
      });
      return out;
    }
    // Blocks of columns of the result (rows of Bᵀ, or a column block of B read in place).
    const cols = blocks(n, parts, 8);
    const got = await run(cols.length, (i, remote) => {
      const [c0, c1] = cols[i];
      if (transB) {
        return {
          op: "matmul",
          a: operand(a, remote),
          b: operand(b.subarray(c0 * k, c1 * k), remote),
          m,
          k,
          n: c1 - c0,
          transB: true,
        };
      }
      if (remote && !isShared(b)) {
        const block = new Float32Array(k * (c1 - c0));
        for (let p = 0; p < k; p++) block.set(b.subarray(p * n + c0, p * n + c1), p * (c1 - c0));
        return { op: "matmul", a: a.slice(), b: block, m, k, n: c1 - c0, transB: false };
      }
      return { op: "columns", a: operand(a, remote), b, m, k, ldb: n, c0, n: c1 - c0 };
    }) as Float32Array[];
    const out = new Float32Array(m * n);
    cols.forEach(([c0, c1], i) => {
      const w = c1 - c0, part = got[i];
      for (let r = 0; r < m; r++) out.set(part.subarray(r * w, r * w + w), r * n + c0);
    });
    return out;
  };

  const clip = async (
    w: Float32Array,
    n: number,
    k: number,
    format: WeightFormat,
    opts: ClipOptions,
  ): Promise<PackedWeight> => {
    const whole = () => quantizeWeightClipped(w, n, k, format, opts);
    if (parts === 1 || n * k < minWeights) return whole();
    if (format !== "int4" && format !== "nvfp4") return whole();
    const G = groupSize(format);
    const { x, m } = opts;
    const xOk = x === undefined || (m !== undefined && Number.isInteger(m) && m >= 1 &&
      x.length === m * k);
    if (
      !(Number.isInteger(n) && Number.isInteger(k) && w.length === n * k && k > 0 &&
        k % G === 0 && xOk)
    ) return whole(); // throws the canonical error
    const rows = blocks(n, parts, 1);
    const clipX = (remote: boolean) => x && { x: operand(x, remote), m };
    const merge = (ps: PackedWeight[]): PackedWeight => {
      const qweight = new Uint32Array((n * k) >> 3);
      const wscales = format === "int4" ? new Float32Array(n * k / G) : new Uint8Array(n * k / G);
      ps.forEach((p, i) => {
        qweight.set(p.qweight, (rows[i][0] * k) >> 3);
        wscales.set(p.wscales, rows[i][0] * k / G);
      });
      return format === "int4" ? { format, n, k, qweight, wscales: wscales as Float32Array } : {
        format,
        n,
        k,
        qweight,
        wscales: wscales as Uint8Array,
        tensorScale: (ps[0] as { tensorScale: number }).tensorScale,
      };
    };
    try {
      if (format === "nvfp4" && opts.scaleSearch) {
        const ts = nvfp4TensorScale(w);
        if (Number.isFinite(ts) && w.every((v) => Number.isFinite(v))) {
          const tensorScales = NVFP4_TENSOR_FACTORS.map((f) => Math.fround(ts * f));
          const got = await run(rows.length, (i, remote) => {
            const [r0, r1] = rows[i];
            return {
              op: "scales",
              w: operand(w.subarray(r0 * k, r1 * k), remote),
              n: r1 - r0,
              k,
              opts: { ...clipX(remote) },
              tensorScales,
            };
          }) as { p: PackedWeight; errors: Float64Array }[][];
          // The serial search's total, summed in the same (group) order; the first scale wins ties.
          let best = -1, bestTotal = Infinity;
          tensorScales.forEach((_, f) => {
            let total = 0;
            for (const part of got) for (const e of part[f].errors) total += e;
            if (best < 0 || total < bestTotal) [best, bestTotal] = [f, total];
          });
          return merge(got.map((part) => part[best].p));
        }
      }
      const tensorScale = format === "nvfp4" ? nvfp4TensorScale(w) : undefined;
      if (tensorScale !== undefined && !Number.isFinite(tensorScale)) return whole();
      const got = await run(rows.length, (i, remote) => {
        const [r0, r1] = rows[i];
        return {
          op: "clip",
          w: operand(w.subarray(r0 * k, r1 * k), remote),
          n: r1 - r0,
          k,
          format,
          opts: { ratios: opts.ratios, ...clipX(remote), scaleSearch: false, tensorScale },
        };
      }) as PackedWeight[];
      return merge(got);
    } catch {
      return whole(); // a block refused its rows: the whole call throws the canonical error
    }
  };

  const residualProduct = async (
    xa: Float32Array,
    m: number,
    p: PackedWeight,
  ): Promise<Float32Array> => {
    const { n, k } = p, G = groupSize(p.format);
    if (parts === 1 || m * n * k < minMacs) {
      return simdResidualProduct(xa, m, p);
    }
    const rows = blocks(n, parts, 1);
    const got = await run(rows.length, (i, remote) => {
      const [r0, r1] = rows[i];
      const slice = <T extends Uint32Array | Uint8Array | Float32Array>(t: T, per: number) =>
        (remote ? t.slice(r0 * per, r1 * per) : t.subarray(r0 * per, r1 * per)) as T;
      const block = {
        ...p,
        n: r1 - r0,
        qweight: slice(p.qweight, k >> 3),
        wscales: slice(p.wscales, k / G),
      } as PackedWeight;
      return { op: "residual", xa: operand(xa, remote), m, p: block };
    }) as Float32Array[];
    const out = new Float32Array(m * n);
    rows.forEach(([r0, r1], i) => {
      const w = r1 - r0, part = got[i];
      for (let r = 0; r < m; r++) out.set(part.subarray(r * w, r * w + w), r * n + r0);
    });
    return out;
  };

  const shared = (w: Float32Array) => {
    if (isShared(w)) return w;
    const out = alloc(w.length);
    out.set(w);
    return out;
  };

  const smooth = async (w: Float32Array, n: number, k: number, lambda: Float32Array) => {
    const out = alloc(n * k);
    if (parts === 1 || n * k < minWeights || !isShared(w) || w.length !== n * k) {
      return smoothWeight(w, n, k, lambda, out);
    }
    const rows = blocks(n, parts, 1);
    await run(rows.length, (i, remote) => {
      const [r0, r1] = rows[i];
      return {
        op: "smooth",
        w: w.subarray(r0 * k, r1 * k),
        k,
        lambda: operand(lambda, remote),
        out: out.subarray(r0 * k, r1 * k),
      };
    });
    return out;
  };

  const subtract = async (a: Float32Array, b: Float32Array) => {
    if (
      parts === 1 || b.length < minWeights || !isShared(a) || !isShared(b) || a.length !== b.length
    ) {
      for (let i = 0; i < b.length; i++) b[i] = a[i] - b[i];
      return;
    }
    const ranges = blocks(b.length, parts, 1024);
    await run(ranges.length, (i) => {
      const [s0, s1] = ranges[i];
      return { op: "subtract", a: a.subarray(s0, s1), b: b.subarray(s0, s1) };
    });
  };

  const aside = (...args: LinearArgs) =>
    parts > 1 && asideOn && runner.tryLayer ? runner.tryLayer(...args) : null;

  return {
    parts,
    aside,
    matmul,
    clip,
    residualProduct,
    alloc,
    shared,
    smoothWeight: smooth,
    subtract,
  };
}

/** The non-shared buffers a job carries (its private copies, moved to the worker). */
function transferable(job: PartJob): ArrayBuffer[] {
  const out = new Set<ArrayBuffer>();
  const add = (a: ArrayBufferView | undefined) => {
    if (
      a && a.buffer instanceof ArrayBuffer && a.byteOffset === 0 &&
      a.byteLength === a.buffer.byteLength
    ) {
      out.add(a.buffer);
    }
  };
  switch (job.op) {
    case "matmul":
    case "columns":
      add(job.a);
      add(job.b);
      break;
    case "clip":
    case "scales":
      add(job.w);
      add(job.opts.x);
      break;
    case "residual":
      add(job.xa);
      add(job.p.qweight);
      add(job.p.wscales);
      break;
  }
  return [...out];
}
