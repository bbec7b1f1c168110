/**
 * Launcher of `gemm_w4a16`: `Y[M,N] = X[M,K] · Wᵀ + bias[N]` (optional GELU, tanh form) with an
 * INT4 weight (group 64 along K, f16 scales) dequantised in registers, X and Y in ACT, f32
 * accumulation; optionally X divided by per-channel factors `smooth` [K] (AWQ-style scaling).
 * Used for the adaLN modulation layers (M = 1..2: a GEMV kernel) and, for large M, on devices
 * where the W4A4 integer-dot path is emulated (a tiled kernel).
 * See gemm_w4a16.wgsl and ARCHITECTURE.md for the layouts.
 *
 * @module
 */
import type { Dispatch, Gpu } from "../../gpu/device.ts";
import { GROUP_SIZE_INT4 } from "../../formats/packing.ts";
import {
  bindBuffers,
  type BufferRow,
  checkDims,
  checkDtype,
  checkShaderF16,
  runOnce,
} from "../_launch.ts";
import { actBytes, type ActDtype, loadWgsl, withActDtype } from "../_wgsl.ts";
import { buildGemmKernel, type GemmKernel } from "../gemm_f16/gemm_f16.ts";

const NAME = "gemm_w4a16";

/** Largest M served by the GEMV kernel; larger M uses the tiled GEMM. */
export const GEMV_MAX_M = 32;
const GEMV_KT = 32; // invocations per weight row in the GEMV (gemm_w4a16.wgsl GV_KT)
const GEMV_COLS = (4 * 256) / GEMV_KT; // output columns per GEMV workgroup (GV_ROWS)

export type { GemmKernel };

/** Shape descriptor of a W4A16 GEMM. */
export interface GemmW4A16Shape {
  /** Rows M of X and Y (tokens); M ≤ {@linkcode GEMV_MAX_M} runs the GEMV kernel. */
  m: number;
  /** In-features; a multiple of 64 (the INT4 group size). */
  k: number;
  /** Columns N of Y (out-features, rows of the weight). */
  n: number;
  /** Storage dtype of X and Y (f16 needs the `shader-f16` feature). */
  dtype: ActDtype;
  /** Add `bias` [N] (f32). */
  bias: boolean;
  /** Apply GELU (tanh form) after the bias. Default false. */
  gelu?: boolean;
  /**
   * Unsigned codes 0..15 with per-group zero points: `W = q·s + z` (AWQ; `wzeros` required).
   * Default false: two's complement codes, `W = q·s`.
   */
  zeroPoint?: boolean;
  /**
   * Divide X by the per-input-channel factors `smooth` [K] (f32, as the W4A4 kernels' smoothing)
   * before the product: `Y = (X / smooth) · Wᵀ + bias` (activation-aware scaling, quant/awq.ts).
   * Default false: a pipeline constant, so layers without it run the unchanged kernel.
   */
  smooth?: boolean;
}

/** Buffers of one dispatch, in binding order (binding 0 is the uniform params). */
export interface GemmW4A16Buffers {
  /** ACT [M, K]. */
  x: GPUBuffer;
  /** u32 [N, K/8] packed INT4 codes (formats/packing.ts `Int4Weight.qweight`). */
  qweight: GPUBuffer;
  /** f16 bits [N, K/64], two per u32 (formats/packing.ts `weightScaleWords`). */
  wscales: GPUBuffer;
  /** f32 [N] (required when the shape has bias). */
  bias?: GPUBuffer;
  /** ACT [M, N] output. */
  y: GPUBuffer;
  /** f16 bits [N, K/64], two per u32: zero points z (required when the shape has zeroPoint). */
  wzeros?: GPUBuffer;
  /** f32 [K] divisors of X (required when the shape has smooth). */
  smooth?: GPUBuffer;
}

/**
 * A compiled W4A16 GEMM for one shape.
 *
 * @example
 * ```ts ignore
 * import { Gpu } from "../../gpu/device.ts";
 * import { quantizeWeight, weightScaleWords } from "../../formats/packing.ts";
 * import { GemmW4A16 } from "./gemm_w4a16.ts";
 * const gpu = await Gpu.create();
 * const [m, k, n] = [1, 3072, 18432]; // adaLN modulation of a 3072-wide DiT block
 * const p = quantizeWeight(new Float32Array(n * k).fill(0.01), n, k, "int4");
 * const op = await GemmW4A16.create(gpu, { m, k, n, dtype: "f16", bias: true });
 * const x = await gpu.upload("x", new Float16Array(m * k).fill(1));
 * const qweight = await gpu.upload("qweight", p.qweight);
 * const wscales = await gpu.upload("wscales", weightScaleWords(p));
 * const bias = await gpu.upload("bias", new Float32Array(n));
 * const y = await gpu.createBuffer("y", m * n * 2);
 * await gpu.runChecked("adaLN", [op.dispatch({ x, qweight, wscales, bias, y })]);
 * console.log(new Float16Array(await gpu.read(y))[0]); // ≈ 3072 · 0.01 = 30.72
 * op.destroy();
 * gpu.destroy(x, qweight, wscales, bias, y);
 * ```
 */
export class GemmW4A16 {
  /** The validated shape this op was built for. */
  readonly shape: Readonly<GemmW4A16Shape>;
  /** The kernel this shape runs. */
  readonly kernel: GemmKernel;
  readonly #pipeline: GPUComputePipeline;
  readonly #params: GPUBuffer;
  readonly #dummy: GPUBuffer;
  readonly #grid: [number, number];

  private constructor(
    shape: GemmW4A16Shape,
    kernel: GemmKernel,
    pipeline: GPUComputePipeline,
    params: GPUBuffer,
    dummy: GPUBuffer,
    grid: [number, number],
  ) {
    this.shape = shape;
    this.kernel = kernel;
    this.#pipeline = pipeline;
    this.#params = params;
    this.#dummy = dummy;
    this.#grid = grid;
  }

  /**
   * Validate `shape`, build the pipeline and the uniform params. `kernel` forces one of the two
   * kernels (tests, benchmarks); by default M picks it.
   */
  static async create(gpu: Gpu, shape: GemmW4A16Shape, kernel?: GemmKernel): Promise<GemmW4A16> {
    checkShape(gpu, shape);
    const src = withActDtype(await loadWgsl(`./${NAME}.wgsl`, import.meta.url), shape.dtype);
    const { which, pipeline, grid, params, dummy } = await buildGemmKernel(gpu, {
      name: NAME,
      src,
      shape,
      kernel,
      defines: {
        HAS_BIAS: shape.bias ? 1 : 0,
        GELU: shape.gelu ? 1 : 0,
        ZERO_POINT: shape.zeroPoint ? 1 : 0,
        SMOOTH: shape.smooth ? 1 : 0,
      },
      gemvDefines: { GV_KT: GEMV_KT },
      gemvMaxM: GEMV_MAX_M,
      gemvCols: GEMV_COLS,
    });
    return new GemmW4A16({ ...shape }, which, pipeline, params, dummy, grid);
  }

  /** A dispatch computing Y; every buffer's size is checked against the shape first. */
  dispatch(buffers: GemmW4A16Buffers): Dispatch {
    const bindings = bindBuffers(bufferSizes(this.shape), buffers, {
      kernel: NAME,
      params: this.#params,
      unused: this.#dummy,
    });
    return { pipeline: this.#pipeline, bindings, workgroups: this.#grid };
  }

  /** Release the uniform buffer. */
  destroy(): void {
    this.#params.destroy();
    this.#dummy.destroy();
  }
}

/**
 * One-shot W4A16 GEMM: create, run (checked) and destroy.
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../../gpu/device.ts";
 * import { gemmW4A16 } from "./gemm_w4a16.ts";
 * const gpu = await getGpu();
 * // x: [2, 3072] f16, qweight: [18432, 384] u32, wscales: f16 pairs, y: [2, 18432] f16
 * await gemmW4A16(gpu, { m: 2, k: 3072, n: 18432, dtype: "f16", bias: false }, {
 *   x, qweight, wscales, y,
 * });
 * ```
 */
export function gemmW4A16(
  gpu: Gpu,
  shape: GemmW4A16Shape,
  buffers: GemmW4A16Buffers,
): Promise<void> {
  return runOnce(gpu, { kernel: NAME, create: () => GemmW4A16.create(gpu, shape), buffers });
}

/** Required bytes of each storage binding, in binding order (0 = unused: a placeholder is bound). */
export function bufferSizes(s: GemmW4A16Shape): BufferRow<keyof GemmW4A16Buffers>[] {
  const { m, k, n, dtype } = s;
  const b = actBytes(dtype);
  const groups = (n * k) / GROUP_SIZE_INT4;
  return [
    ["x", m * k * b, `[M=${m}, K=${k}] ${dtype}`],
    ["qweight", (n * k) / 2, `[N=${n}, K/8=${k / 8}] u32`],
    ["wscales", Math.ceil(groups / 2) * 4, `[N=${n}, K/64=${k / 64}] f16 (2 per u32)`],
    ["bias", s.bias ? n * 4 : 0, `[N=${n}] f32`],
    ["y", m * n * b, `[M=${m}, N=${n}] ${dtype}`],
    [
      "wzeros",
      s.zeroPoint ? Math.ceil(groups / 2) * 4 : 0,
      `[N=${n}, K/64=${k / 64}] f16 (2 per u32)`,
    ],
    // read as vec4<f32>: the 16-byte placeholder serves an unused binding
    ["smooth", s.smooth ? k * 4 : 0, `[K=${k}] f32`],
  ];
}

function checkShape(gpu: Gpu, s: GemmW4A16Shape): void {
  checkDims(s, { kernel: NAME, keys: ["m", "k", "n"] });
  if (s.k % GROUP_SIZE_INT4 !== 0) {
    throw new RangeError(
      `Cannot build ${NAME}: K=${s.k} must be a multiple of the INT4 group size ` +
        `${GROUP_SIZE_INT4}; pad the in-features with zero weights`,
    );
  }
  if (s.m * s.k >= 2 ** 32 || s.n * s.k / 8 >= 2 ** 32 || s.m * s.n >= 2 ** 32) {
    throw new RangeError(
      `Cannot build ${NAME}: [M=${s.m}, K=${s.k}, N=${s.n}] has a matrix of 2^32 elements or ` +
        "more (u32 indices); split the GEMM",
    );
  }
  checkDtype(NAME, s.dtype);
  checkShaderF16(gpu, NAME, s.dtype);
}
