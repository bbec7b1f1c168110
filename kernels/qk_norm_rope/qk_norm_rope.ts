/**
 * Launcher of `qk_norm_rope`: writes one part (text or image tokens, or the whole joint sequence)
 * of FLUX's joint qkv buffer, applying the QK RMSNorm and the rotary embedding on the way (see
 * qk_norm_rope.wgsl). It replaces a separate normalisation pass and a separate RoPE pass: the
 * assembling copy that joint attention needs anyway does both.
 *
 * Buffers (ACT = the shape's dtype, row-major):
 * - `src` [B·n, srcStride]: a qkv GEMM output (q | k | v, each [H, D] head-major, from column 0).
 * - `qscale`, `kscale` f32 [D]: the RMSNorm scales of q and k.
 * - `rope` f32 [L, D/2, 2]: (cos, sin) of each rotation pair at each joint position.
 * - `qkv` [B·L, 3·H·D]: the joint buffer; rows `b·L + rowOffset .. + n` of each image are written.
 *
 * @module
 */
import type { Dispatch, Gpu } from "../../gpu/device.ts";
import {
  bindBuffers,
  type BufferRow,
  checkBindingSizes,
  checkDims,
  checkDistinct,
  checkDtype,
  checkShaderF16,
  runOnce,
} from "../_launch.ts";
import { actBytes, type ActDtype, loadWgsl, withActDtype } from "../_wgsl.ts";

const NAME = "qk_norm_rope";

/** FLUX's RMSNorm epsilon. */
export const FLUX_RMS_EPS = 1e-6;
/** Largest head dim (D/2 = 256 invocations per workgroup). */
export const QK_NORM_ROPE_MAX_D = 512;

/** Shape descriptor of one `qk_norm_rope` launch. */
export interface QkNormRopeShape {
  /** Images B. */
  b: number;
  /** Source tokens per image n (this part's). */
  n: number;
  /** Joint tokens per image L (rows per image of `qkv`), ≥ rowOffset + n. */
  l: number;
  /** Joint position of the part's first token (0 for text, the text length for image tokens). */
  rowOffset: number;
  /** Heads H. */
  h: number;
  /** Head dim D (even, ≤ {@linkcode QK_NORM_ROPE_MAX_D}). */
  d: number;
  /** Elements per source row (3·H·D, or more when q, k, v are a slice of a wider output). */
  srcStride: number;
  /** Storage dtype of src and qkv. */
  dtype: ActDtype;
  /** RMSNorm epsilon; default {@linkcode FLUX_RMS_EPS}. */
  eps?: number;
}

/** Buffers of one dispatch, in binding order (binding 0 is the uniform params). */
export interface QkNormRopeBuffers {
  /** ACT [B·n, srcStride] source rows. */
  src: GPUBuffer;
  /** f32 [D] RMSNorm scale of q. */
  qscale: GPUBuffer;
  /** f32 [D] RMSNorm scale of k. */
  kscale: GPUBuffer;
  /** f32 [L, D/2, 2] rotation (cos, sin) per joint position and pair. */
  rope: GPUBuffer;
  /** ACT [B·L, 3·H·D] joint qkv (written rows only). */
  qkv: GPUBuffer;
}

/**
 * A compiled `qk_norm_rope` for one shape.
 *
 * @example
 * ```ts ignore
 * import { Gpu } from "../../gpu/device.ts";
 * import { QkNormRope } from "./qk_norm_rope.ts";
 * const gpu = await Gpu.create();
 * // image tokens of a double block: 24 tokens after 8 text tokens, 2 heads of 32
 * const shape = { b: 1, n: 24, l: 32, rowOffset: 8, h: 2, d: 32, srcStride: 192, dtype: "f32" } as const;
 * const op = await QkNormRope.create(gpu, shape);
 * await gpu.runChecked("img qkv", [op.dispatch({ src, qscale, kscale, rope, qkv })]);
 * op.destroy();
 * ```
 */
export class QkNormRope {
  /** The validated shape this op was built for. */
  readonly shape: Readonly<QkNormRopeShape>;
  readonly #pipeline: GPUComputePipeline;
  readonly #params: GPUBuffer;
  readonly #grid: [number, number, number];

  private constructor(
    shape: QkNormRopeShape,
    pipeline: GPUComputePipeline,
    params: GPUBuffer,
    grid: [number, number, number],
  ) {
    this.shape = shape;
    this.#pipeline = pipeline;
    this.#params = params;
    this.#grid = grid;
  }

  /**
   * Validate `shape`, build the pipeline and the uniform params. `gridLimit` lowers the
   * workgroups per grid dimension below the device's (tests of the 2-D row grid).
   */
  static async create(gpu: Gpu, shape: QkNormRopeShape, gridLimit?: number): Promise<QkNormRope> {
    checkShape(gpu, shape);
    const rows = shape.b * shape.n;
    const max = Math.min(gridLimit ?? Infinity, gpu.caps.maxComputeWorkgroupsPerDimension);
    const gx = Math.min(rows, max);
    const gy = Math.ceil(rows / gx);
    if (gy > max || shape.h > gpu.caps.maxComputeWorkgroupsPerDimension) {
      throw new RangeError(
        `Cannot build ${NAME}: B·n=${rows} rows × H=${shape.h} heads need more workgroups ` +
          `than ${max}×${max}×${max}; split the batch`,
      );
    }
    let wg = 4;
    while (wg < shape.d / 2) wg *= 2;
    const src = withActDtype(await loadWgsl(`./${NAME}.wgsl`, import.meta.url), shape.dtype);
    const pipeline = await gpu.pipeline(`${NAME}_${shape.dtype}`, src, { WG: wg }, NAME);
    const words = new Uint32Array(12);
    words.set([rows, shape.n, shape.l, shape.rowOffset, shape.h, shape.d, shape.srcStride, gx]);
    new Float32Array(words.buffer)[8] = shape.eps ?? FLUX_RMS_EPS;
    const params = await gpu.uniform(`buffer ${NAME} params`, words);
    return new QkNormRope({ ...shape }, pipeline, params, [gx, gy, shape.h]);
  }

  /** A dispatch writing the part's rows of `qkv`; buffer sizes are checked first. */
  dispatch(buffers: QkNormRopeBuffers): Dispatch {
    const bindings = bindBuffers(bufferSizes(this.shape), buffers, {
      kernel: NAME,
      params: this.#params,
    });
    checkDistinct(buffers, { kernel: NAME, pairs: [["qkv", "src"]] });
    return { pipeline: this.#pipeline, bindings, workgroups: this.#grid };
  }

  /** Release the uniform buffer. */
  destroy(): void {
    this.#params.destroy();
  }
}

/** One-shot `qk_norm_rope`: create, run (checked) and destroy. */
export function qkNormRope(
  gpu: Gpu,
  shape: QkNormRopeShape,
  buffers: QkNormRopeBuffers,
): Promise<void> {
  return runOnce(gpu, { kernel: NAME, create: () => QkNormRope.create(gpu, shape), buffers });
}

/** Required byte sizes of the buffers, in binding order: [name, bytes, description]. */
export function bufferSizes(s: QkNormRopeShape): BufferRow<keyof QkNormRopeBuffers>[] {
  const e = actBytes(s.dtype), hd = s.h * s.d;
  return [
    ["src", s.b * s.n * s.srcStride * e, `[B·n=${s.b * s.n}, ${s.srcStride}] ${s.dtype}`],
    ["qscale", s.d * 4, `[D=${s.d}] f32`],
    ["kscale", s.d * 4, `[D=${s.d}] f32`],
    ["rope", s.l * s.d * 4, `[L=${s.l}, D/2=${s.d / 2}, 2] f32`],
    ["qkv", s.b * s.l * 3 * hd * e, `[B·L=${s.b * s.l}, 3·H·D=${3 * hd}] ${s.dtype}`],
  ];
}

function checkShape(gpu: Gpu, s: QkNormRopeShape): void {
  checkDims(s, { kernel: NAME, keys: ["b", "n", "l", "h", "d", "srcStride"] });
  if (s.d % 2 !== 0 || s.d > QK_NORM_ROPE_MAX_D) {
    throw new RangeError(
      `Cannot build ${NAME}: D=${s.d} must be even and at most ${QK_NORM_ROPE_MAX_D}`,
    );
  }
  if (!Number.isInteger(s.rowOffset) || s.rowOffset < 0 || s.rowOffset + s.n > s.l) {
    throw new RangeError(
      `Cannot build ${NAME}: rowOffset=${s.rowOffset} + n=${s.n} must fit in L=${s.l}`,
    );
  }
  if (s.srcStride < 3 * s.h * s.d) {
    throw new RangeError(
      `Cannot build ${NAME}: srcStride=${s.srcStride} is less than 3·H·D=${3 * s.h * s.d}`,
    );
  }
  if (s.eps !== undefined && !(Number.isFinite(s.eps) && s.eps > 0)) {
    throw new RangeError(`Cannot build ${NAME}: eps=${s.eps} must be a finite positive number`);
  }
  checkDtype(NAME, s.dtype);
  checkBindingSizes(gpu, bufferSizes(s), {
    kernel: NAME,
    elementBytes: actBytes(s.dtype),
    maxLog2: 32,
  });
  checkShaderF16(gpu, NAME, s.dtype);
}
