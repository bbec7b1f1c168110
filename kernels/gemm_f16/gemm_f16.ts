/**
 * Launcher of `gemm_f16`: the 16-bit GEMM `Y[M,N] = X[M,K] · W[N,K]ᵀ + bias[N]` with an optional
 * GELU (tanh form) epilogue, f32 accumulation. It is the baseline every 4-bit kernel is measured
 * against. M > 32 runs a register- and workgroup-tiled GEMM; M ≤ 32 runs a GEMV-style kernel
 * (see gemm_f16.wgsl).
 *
 * @module
 */
import type { Dispatch, Gpu } from "../../gpu/device.ts";
import {
  bindBuffers,
  type BufferRow,
  checkDims,
  checkDtype,
  checkGrid,
  checkShaderF16,
  runOnce,
} from "../_launch.ts";
import { actBytes, type ActDtype, loadWgsl, withActDtype } from "../_wgsl.ts";

const NAME = "gemm_f16";

/** Largest M served by the GEMV kernel; larger M uses the tiled GEMM. */
export const GEMV_MAX_M = 32;
const GEMV_COLS = 32; // output columns per GEMV workgroup (gemm_f16.wgsl GV_ROWS)
const TILE = 128; // BM = BN of the tiled kernel
const BK = 16;

/** Shape descriptor of a 16-bit GEMM. */
export interface GemmF16Shape {
  /** Rows M of X and Y (tokens); M ≤ {@linkcode GEMV_MAX_M} runs the GEMV kernel. */
  m: number;
  /** Reduction dimension K (in-features). */
  k: number;
  /** Columns N of Y (out-features, rows of W). */
  n: number;
  /** Storage dtype of X, W and Y (f16 needs the `shader-f16` feature). */
  dtype: ActDtype;
  /** Add `bias` [N] (f32). */
  bias: boolean;
  /** Apply GELU (tanh form) after the bias. Default false. */
  gelu?: boolean;
}

/** Buffers of one dispatch, in binding order (binding 0 is the uniform params). */
export interface GemmF16Buffers {
  /** ACT [M, K]. */
  x: GPUBuffer;
  /** ACT [N, K]. */
  w: GPUBuffer;
  /** f32 [N] (required when the shape has bias). */
  bias?: GPUBuffer;
  /** ACT [M, N] output. */
  y: GPUBuffer;
}

/** Which kernel runs: by default `"gemv"` for M ≤ {@linkcode GEMV_MAX_M}, else `"tiled"`. */
export type GemmKernel = "gemv" | "tiled";

/**
 * A compiled 16-bit GEMM for one shape.
 *
 * @example
 * ```ts ignore
 * import { Gpu } from "../../gpu/device.ts";
 * import { GemmF16 } from "./gemm_f16.ts";
 * const gpu = await Gpu.create();
 * const shape = { m: 64, k: 256, n: 256, dtype: "f16", bias: true, gelu: true } as const;
 * const op = await GemmF16.create(gpu, shape);
 * const x = await gpu.upload("x", new Float16Array(64 * 256).fill(0.5));
 * const w = await gpu.upload("w", new Float16Array(256 * 256).fill(0.25));
 * const bias = await gpu.upload("bias", new Float32Array(256));
 * const y = await gpu.createBuffer("y", 64 * 256 * 2);
 * await gpu.runChecked("gemm", [op.dispatch({ x, w, bias, y })]);
 * console.log(new Float16Array(await gpu.read(y))[0]); // gelu(256 · 0.125) = 32
 * op.destroy();
 * gpu.destroy(x, w, bias, y);
 * ```
 */
export class GemmF16 {
  /** The validated shape this op was built for. */
  readonly shape: Readonly<GemmF16Shape>;
  readonly #pipeline: GPUComputePipeline;
  readonly #params: GPUBuffer;
  readonly #dummy: GPUBuffer;
  readonly #grid: [number, number];

  private constructor(
    shape: GemmF16Shape,
    pipeline: GPUComputePipeline,
    params: GPUBuffer,
    dummy: GPUBuffer,
    grid: [number, number],
  ) {
    this.shape = shape;
    this.#pipeline = pipeline;
    this.#params = params;
    this.#dummy = dummy;
    this.#grid = grid;
  }

  /**
   * Validate `shape`, build the pipeline and the uniform params. `kernel` forces one of the two
   * kernels (tests, benchmarks); by default M picks it.
   */
  static async create(gpu: Gpu, shape: GemmF16Shape, kernel?: GemmKernel): Promise<GemmF16> {
    checkShape(gpu, shape);
    const src = withActDtype(await loadWgsl(`./${NAME}.wgsl`, import.meta.url), shape.dtype);
    const { pipeline, grid, params, dummy } = await buildGemmKernel(gpu, {
      name: NAME,
      src,
      shape,
      kernel,
      defines: {
        HAS_BIAS: shape.bias ? 1 : 0,
        GELU: shape.gelu ? 1 : 0,
      },
      gemvMaxM: GEMV_MAX_M,
      gemvCols: GEMV_COLS,
    });
    return new GemmF16({ ...shape }, pipeline, params, dummy, grid);
  }

  /** A dispatch computing Y; every buffer's size is checked against the shape first. */
  dispatch(buffers: GemmF16Buffers): Dispatch {
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
 * One-shot 16-bit GEMM: create, run (checked) and destroy.
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../../gpu/device.ts";
 * import { gemmF16 } from "./gemm_f16.ts";
 * const gpu = await getGpu();
 * // x: [7, 66] f32, w: [100, 66] f32, y: [7, 100] f32 GPUBuffers
 * await gemmF16(gpu, { m: 7, k: 66, n: 100, dtype: "f32", bias: false }, { x, w, y });
 * ```
 */
export function gemmF16(
  gpu: Gpu,
  shape: GemmF16Shape,
  buffers: GemmF16Buffers,
): Promise<void> {
  return runOnce(gpu, { kernel: NAME, create: () => GemmF16.create(gpu, shape), buffers });
}

/** Required bytes of each storage binding, in binding order (0 = unused: a placeholder is bound). */
export function bufferSizes(s: GemmF16Shape): BufferRow<keyof GemmF16Buffers>[] {
  const { m, k, n, dtype } = s;
  const b = actBytes(dtype);
  return [
    ["x", m * k * b, `[M=${m}, K=${k}] ${dtype}`],
    ["w", n * k * b, `[N=${n}, K=${k}] ${dtype}`],
    ["bias", s.bias ? n * 4 : 0, `[N=${n}] f32`],
    ["y", m * n * b, `[M=${m}, N=${n}] ${dtype}`],
  ];
}

/** What {@linkcode buildGemmKernel} built for one GEMM shape. */
export interface GemmBuild {
  /** The kernel chosen (or forced). */
  which: GemmKernel;
  /** Its pipeline. */
  pipeline: GPUComputePipeline;
  /** Its workgroup grid, checked against the device. */
  grid: [number, number];
  /** The uniform params `[M, K, N, 0]`. */
  params: GPUBuffer;
  /** A 16-byte placeholder bound where the shape has no bias. */
  dummy: GPUBuffer;
}

/**
 * The pipeline, grid and buffers of a GEMM launcher with a GEMV and a tiled kernel (gemm_f16,
 * gemm_w4a16): `kernel` (by default `"gemv"` for M ≤ `gemvMaxM`, else `"tiled"`) picks the entry
 * point `<name>_gemv` (defines + `gemvDefines`, grid [M, ⌈N / gemvCols⌉]) or `<name>` (defines +
 * `PAD` from {@linkcode tilePad}, grid [⌈N / 128⌉, ⌈M / 128⌉]); the grid is checked against the
 * device (`Cannot run <name>: …; split the GEMM`), then the params and placeholder are created.
 * The shape must already be validated.
 */
export async function buildGemmKernel(gpu: Gpu, opts: {
  name: string;
  src: string;
  shape: { m: number; k: number; n: number; dtype: ActDtype };
  kernel?: GemmKernel;
  defines: Record<string, number>;
  gemvDefines?: Record<string, number>;
  gemvMaxM: number;
  gemvCols: number;
}): Promise<GemmBuild> {
  const { name, src, shape: { m, k, n, dtype } } = opts;
  // an f16 output saturates at ±65504 (each shader built here declares the override)
  const base = { ...opts.defines, SATURATE: dtype === "f16" ? 1 : 0 };
  const which = opts.kernel ?? (m <= opts.gemvMaxM ? "gemv" : "tiled");
  let pipeline: GPUComputePipeline;
  let grid: [number, number];
  if (which === "gemv") {
    const defines = { ...base, ...opts.gemvDefines };
    pipeline = await gpu.pipeline(`${name}_gemv_${dtype}`, src, defines, `${name}_gemv`);
    grid = [m, Math.ceil(n / opts.gemvCols)];
  } else {
    const pad = tilePad(gpu, name);
    pipeline = await gpu.pipeline(`${name}_${dtype}`, src, { ...base, PAD: pad }, name);
    grid = [Math.ceil(n / TILE), Math.ceil(m / TILE)];
  }
  checkGrid(gpu, grid, {
    kernel: name,
    verb: "run",
    dims: `[M=${m}, N=${n}]`,
    fix: "split the GEMM",
  });
  const params = await gpu.uniform(`buffer ${name} params`, new Uint32Array([m, k, n, 0]));
  const dummy = await gpu.createBuffer(`buffer ${name} unused bias`, 16);
  return { which, pipeline, grid, params, dummy };
}

/**
 * Padding of the tiled kernels' workgroup-memory rows: 4 floats (conflict-free transposing
 * stores, 16 896 bytes) where the device allows it, else 0 (16 384 bytes, the WebGPU minimum).
 */
export function tilePad(gpu: Gpu, name: string): number {
  const bytes = (pad: number) => 2 * BK * (TILE + pad) * 4;
  const limit = gpu.caps.maxComputeWorkgroupStorageSize;
  if (bytes(4) <= limit) return 4;
  if (bytes(0) <= limit) return 0;
  throw new RangeError(
    `Cannot build ${name}: its ${TILE}×${TILE} tile needs ${bytes(0)} bytes of workgroup ` +
      `memory, this device allows ${limit}`,
  );
}

function checkShape(gpu: Gpu, s: GemmF16Shape): void {
  checkDims(s, { kernel: NAME, keys: ["m", "k", "n"] });
  if (s.m * s.k >= 2 ** 32 || s.n * s.k >= 2 ** 32 || s.m * s.n >= 2 ** 32) {
    throw new RangeError(
      `Cannot build ${NAME}: [M=${s.m}, K=${s.k}, N=${s.n}] has a matrix of 2^32 elements or ` +
        "more (u32 indices); split the GEMM",
    );
  }
  checkDtype(NAME, s.dtype);
  checkShaderF16(gpu, NAME, s.dtype);
}
