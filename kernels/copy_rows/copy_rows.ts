/**
 * Launcher of `copy_rows`: copy `n` rows per image from one row-blocked buffer to another at
 * given row offsets, `dst[b·dstRows + dstOffset + t, :] = src[b·srcRows + srcOffset + t, :]`
 * (see copy_rows.wgsl). FLUX joins its text and image streams (txt first) into the joint stream
 * of the single blocks, splits joint attention's output back into the two streams of a double
 * block, and takes the image tokens out for the final layer with it.
 *
 * Buffers (ACT = the shape's dtype, DST = its `dstDtype`, by default ACT; row-major):
 * - `src` ACT [B·srcRows, width]
 * - `dst` DST [B·dstRows, width]: only the copied rows are written. A different DST converts:
 *   FLUX's img_in / txt_in outputs (f16) into its residual streams (f32).
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
import { actBytes, type ActDtype, loadWgsl, withAliasDtype } from "../_wgsl.ts";

const NAME = "copy_rows";
const WG = 256;

/** Shape descriptor of one `copy_rows` launch. */
export interface CopyRowsShape {
  /** Images B. */
  b: number;
  /** Rows copied per image. */
  n: number;
  /** Elements per row (any; a multiple of 4 runs vec4 code). */
  width: number;
  /** Rows per image of `src`, ≥ srcOffset + n. */
  srcRows: number;
  /** First source row within each image. */
  srcOffset: number;
  /** Rows per image of `dst`, ≥ dstOffset + n. */
  dstRows: number;
  /** First destination row within each image. */
  dstOffset: number;
  /** Storage dtype of `src`, and of `dst` unless `dstDtype` says otherwise. */
  dtype: ActDtype;
  /**
   * Storage dtype of `dst`; default `dtype` (a bit-exact copy). f16 → f32 converts exactly,
   * f32 → f16 rounds and saturates at ±65504.
   */
  dstDtype?: ActDtype;
}

/** Buffers of one dispatch, in binding order (binding 0 is the uniform params). */
export interface CopyRowsBuffers {
  /** ACT [B·srcRows, width]. */
  src: GPUBuffer;
  /** DST [B·dstRows, width]. */
  dst: GPUBuffer;
}

/**
 * A compiled `copy_rows` for one shape.
 *
 * @example
 * ```ts ignore
 * import { Gpu } from "../../gpu/device.ts";
 * import { CopyRows } from "./copy_rows.ts";
 * const gpu = await Gpu.create();
 * // put 24 image tokens after 8 text tokens in a joint [2·32, 64] stream
 * const op = await CopyRows.create(gpu, {
 *   b: 2, n: 24, width: 64, srcRows: 24, srcOffset: 0, dstRows: 32, dstOffset: 8, dtype: "f32",
 * });
 * await gpu.runChecked("join img", [op.dispatch({ src: img, dst: joint })]);
 * op.destroy();
 * ```
 */
export class CopyRows {
  /** The validated shape this op was built for. */
  readonly shape: Readonly<CopyRowsShape>;
  readonly #pipeline: GPUComputePipeline;
  readonly #params: GPUBuffer;
  readonly #workgroups: number;

  private constructor(
    shape: CopyRowsShape,
    pipeline: GPUComputePipeline,
    params: GPUBuffer,
    workgroups: number,
  ) {
    this.shape = shape;
    this.#pipeline = pipeline;
    this.#params = params;
    this.#workgroups = workgroups;
  }

  /**
   * Validate `shape`, build the pipeline and the uniform params. `gridLimit` lowers the number
   * of workgroups (tests of the grid-stride loop).
   */
  static async create(gpu: Gpu, shape: CopyRowsShape, gridLimit?: number): Promise<CopyRows> {
    checkShape(gpu, shape);
    const vec = shape.width % 4 === 0 ? 4 : 1;
    const count = (shape.b * shape.n * shape.width) / vec;
    const max = Math.min(gridLimit ?? Infinity, gpu.caps.maxComputeWorkgroupsPerDimension);
    const workgroups = Math.min(Math.ceil(count / WG), max);
    const dst = shape.dstDtype ?? shape.dtype;
    const src = withAliasDtype(
      await loadWgsl(`./${NAME}.wgsl`, import.meta.url),
      shape.dtype,
      "DST",
      dst,
    );
    const entry = vec === 4 ? NAME : `${NAME}_any`;
    const pipeline = dst === shape.dtype
      ? await gpu.pipeline(`${entry}_${shape.dtype}`, src, { WG }, entry)
      : await gpu.pipeline(
        `${entry}_${shape.dtype}_to_${dst}`,
        src,
        { WG, SATURATE: dst === "f16" ? 1 : 0 },
        entry,
      );
    const params = await gpu.uniform(
      `buffer ${NAME} params`,
      new Uint32Array([
        count,
        shape.n,
        shape.width / vec,
        shape.srcRows,
        shape.srcOffset,
        shape.dstRows,
        shape.dstOffset,
        workgroups * WG,
      ]),
    );
    return new CopyRows({ ...shape }, pipeline, params, workgroups);
  }

  /** A dispatch copying the rows; buffer sizes are checked first. */
  dispatch(buffers: CopyRowsBuffers): Dispatch {
    const bindings = bindBuffers(bufferSizes(this.shape), buffers, {
      kernel: NAME,
      params: this.#params,
    });
    checkDistinct(buffers, { kernel: NAME, pairs: [["dst", "src"]] });
    return { pipeline: this.#pipeline, bindings, workgroups: [this.#workgroups] };
  }

  /** Release the uniform buffer. */
  destroy(): void {
    this.#params.destroy();
  }
}

/** One-shot `copy_rows`: create, run (checked) and destroy. */
export function copyRows(gpu: Gpu, shape: CopyRowsShape, buffers: CopyRowsBuffers): Promise<void> {
  return runOnce(gpu, { kernel: NAME, create: () => CopyRows.create(gpu, shape), buffers });
}

/** Required byte sizes of the buffers, in binding order: [name, bytes, description]. */
export function bufferSizes(s: CopyRowsShape): BufferRow<keyof CopyRowsBuffers>[] {
  const e = actBytes(s.dtype), dt = s.dstDtype ?? s.dtype, de = actBytes(dt);
  return [
    ["src", s.b * s.srcRows * s.width * e, `[B·srcRows=${s.b * s.srcRows}, ${s.width}] ${s.dtype}`],
    ["dst", s.b * s.dstRows * s.width * de, `[B·dstRows=${s.b * s.dstRows}, ${s.width}] ${dt}`],
  ];
}

function checkShape(gpu: Gpu, s: CopyRowsShape): void {
  checkDims(s, { kernel: NAME, keys: ["b", "n", "width", "srcRows", "dstRows"] });
  for (const [off, rows] of [["srcOffset", "srcRows"], ["dstOffset", "dstRows"]] as const) {
    if (!Number.isInteger(s[off]) || s[off] < 0 || s[off] + s.n > s[rows]) {
      throw new RangeError(
        `Cannot build ${NAME}: ${off}=${s[off]} + n=${s.n} must fit in ${rows}=${s[rows]}`,
      );
    }
  }
  checkDtype(NAME, s.dtype);
  const dst = s.dstDtype ?? s.dtype;
  if (dst !== "f16" && dst !== "f32") {
    throw new TypeError(`Cannot build ${NAME}: dstDtype "${dst}" must be "f16" or "f32"`);
  }
  checkBindingSizes(gpu, bufferSizes(s), {
    kernel: NAME,
    elementBytes: Math.min(actBytes(s.dtype), actBytes(dst)),
    maxLog2: 32,
  });
  checkShaderF16(gpu, NAME, s.dtype);
  checkShaderF16(gpu, NAME, dst);
}
