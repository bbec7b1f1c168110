/**
 * Launcher of `gemm_w8a16`: weight-only INT8 GEMM `Y = (X·Qᵀ)·diag(s) + bias`, Q int8 [N, K]
 * (four per u32 word, byte j = element 4w+j), one f32 scale per output channel, X and Y in the
 * activation dtype, f32 accumulation (see gemm_w8a16.wgsl). The text encoders' INT8 option:
 * half the bytes of f16 weights.
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

const NAME = "gemm_w8a16";
const TILE = 64;

/** Shape descriptor of a weight-only INT8 GEMM. */
export interface GemmW8A16Shape {
  /** Rows M of X and Y. */
  m: number;
  /** In-features K (a multiple of 4). */
  k: number;
  /** Out-features N. */
  n: number;
  /** Storage dtype of X and Y. */
  dtype: ActDtype;
  /** Add `bias` [N] (f32). */
  bias: boolean;
}

/** Buffers of one dispatch, in binding order (binding 0 is the uniform params). */
export interface GemmW8A16Buffers {
  /** ACT [M, K]. */
  x: GPUBuffer;
  /** int8 [N, K], 4 per u32. */
  qweight: GPUBuffer;
  /** f32 [N]. */
  wscales: GPUBuffer;
  /** f32 [N] (with bias). */
  bias?: GPUBuffer;
  /** ACT [M, N] output. */
  y: GPUBuffer;
}

/**
 * A compiled weight-only INT8 GEMM for one shape.
 *
 * @example
 * ```ts ignore
 * import { Gpu } from "../../gpu/device.ts";
 * import { GemmW8A16 } from "./gemm_w8a16.ts";
 * const gpu = await Gpu.create();
 * const op = await GemmW8A16.create(gpu, { m: 1, k: 4, n: 1, dtype: "f32", bias: false });
 * const x = await gpu.upload("x", new Float32Array([1, 2, 3, 4]));
 * const qweight = await gpu.upload("q", new Int8Array([1, -1, 2, 0]));
 * const wscales = await gpu.upload("s", new Float32Array([0.5]));
 * const y = await gpu.createBuffer("y", 4);
 * await gpu.runChecked("gemm", [op.dispatch({ x, qweight, wscales, y })]);
 * console.log(new Float32Array(await gpu.read(y))[0]); // 0.5 · (1 − 2 + 6) = 2.5
 * op.destroy();
 * gpu.destroy(x, qweight, wscales, y);
 * ```
 */
export class GemmW8A16 {
  /** The shape this op was built for. */
  readonly shape: Readonly<GemmW8A16Shape>;
  readonly #pipeline: GPUComputePipeline;
  readonly #params: GPUBuffer;
  readonly #unused: GPUBuffer;
  readonly #grid: [number, number];

  private constructor(
    shape: GemmW8A16Shape,
    pipeline: GPUComputePipeline,
    params: GPUBuffer,
    unused: GPUBuffer,
    grid: [number, number],
  ) {
    this.shape = shape;
    this.#pipeline = pipeline;
    this.#params = params;
    this.#unused = unused;
    this.#grid = grid;
  }

  /** Validate `shape`, build the pipeline and the uniform params. */
  static async create(gpu: Gpu, shape: GemmW8A16Shape): Promise<GemmW8A16> {
    checkDims(shape, { kernel: NAME, keys: ["m", "k", "n"] });
    checkDtype(NAME, shape.dtype);
    checkShaderF16(gpu, NAME, shape.dtype);
    if (shape.k % 4 !== 0) {
      throw new RangeError(`Cannot build ${NAME}: K=${shape.k} must be a multiple of 4`);
    }
    if (shape.m * shape.k >= 2 ** 32 || shape.n * shape.k >= 2 ** 32) {
      throw new RangeError(`Cannot build ${NAME}: a matrix has 2^32 elements or more`);
    }
    const grid: [number, number] = [Math.ceil(shape.n / TILE), Math.ceil(shape.m / TILE)];
    checkGrid(gpu, grid, {
      kernel: NAME,
      verb: "build",
      dims: `[M=${shape.m}, N=${shape.n}]`,
      fix: "split the layer",
    });
    const src = withActDtype(await loadWgsl(`./${NAME}.wgsl`, import.meta.url), shape.dtype);
    const pipeline = await gpu.pipeline(`${NAME}_${shape.dtype}`, src, {
      HAS_BIAS: shape.bias ? 1 : 0,
      SATURATE: shape.dtype === "f16" ? 1 : 0,
    }, NAME);
    const params = await gpu.uniform(
      `buffer ${NAME} params`,
      new Uint32Array([shape.m, shape.k, shape.n, 0]),
    );
    const unused = await gpu.createBuffer(`buffer ${NAME} unused`, 4);
    return new GemmW8A16({ ...shape }, pipeline, params, unused, grid);
  }

  /** A dispatch computing `y`; sizes are checked against the shape first. */
  dispatch(buffers: GemmW8A16Buffers): Dispatch {
    const bindings = bindBuffers(bufferSizes(this.shape), buffers, {
      kernel: NAME,
      params: this.#params,
      unused: this.#unused,
    });
    return { pipeline: this.#pipeline, bindings, workgroups: this.#grid };
  }

  /** Release the uniform and placeholder buffers. */
  destroy(): void {
    this.#params.destroy();
    this.#unused.destroy();
  }
}

/** One-shot weight-only INT8 GEMM: create, run (checked) and destroy. */
export function gemmW8A16(
  gpu: Gpu,
  shape: GemmW8A16Shape,
  buffers: GemmW8A16Buffers,
): Promise<void> {
  return runOnce(gpu, { kernel: NAME, create: () => GemmW8A16.create(gpu, shape), buffers });
}

/** Required byte sizes of the buffers, in binding order: [name, bytes, description]. */
export function bufferSizes(s: GemmW8A16Shape): BufferRow<keyof GemmW8A16Buffers>[] {
  const e = actBytes(s.dtype);
  return [
    ["x", s.m * s.k * e, `[M=${s.m}, K=${s.k}] ${s.dtype}`],
    ["qweight", s.n * s.k, `[N=${s.n}, K=${s.k}] int8`],
    ["wscales", s.n * 4, `[N=${s.n}] f32`],
    ["bias", s.bias ? s.n * 4 : 0, `[N=${s.n}] f32`],
    ["y", s.m * s.n * e, `[M=${s.m}, N=${s.n}] ${s.dtype}`],
  ];
}
