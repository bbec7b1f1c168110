/**
 * Launcher of `add_norm`: the residual step of a pre-norm transformer block in one pass per row,
 * `x_out = x + y` (f32 residual) then `h = RMSNorm(x_out)·w` (T5) or `LayerNorm(x_out)·w + b`
 * (CLIP), `h` in the activation dtype of the next GEMM (see add_norm.wgsl).
 *
 * Buffers (row-major): `x` f32 [rows, D]; `y` [rows, D] in `yDtype` (with `addY`); `weight` f32
 * [D]; `bias` f32 [D] (LayerNorm); `xOut` f32 [rows, D] (with `addY`); `h` [rows, D] in `dtype`.
 *
 * @module
 */
import type { Dispatch, Gpu } from "../../gpu/device.ts";
import {
  bindBuffers,
  type BufferRow,
  checkDims,
  checkDistinct,
  checkDtype,
  checkShaderF16,
  runOnce,
} from "../_launch.ts";
import { actBytes, type ActDtype, loadWgsl } from "../_wgsl.ts";

const NAME = "add_norm";
const WG = 256;

/** Shape descriptor of one `add_norm`. */
export interface AddNormShape {
  /** Rows (tokens, B·T). */
  rows: number;
  /** Row length D. */
  d: number;
  /** dtype of the output `h` (f16 needs `shader-f16`). */
  dtype: ActDtype;
  /** Add `y` to `x` first and write the sum to `xOut`. Default false. */
  addY?: boolean;
  /** dtype of `y`. Default: `dtype`. */
  yDtype?: ActDtype;
  /** "rms" (T5: no mean, no bias) or "layer" (CLIP: mean, bias). */
  norm: "rms" | "layer";
  /** Epsilon inside the square root. */
  eps: number;
}

/** Buffers of one dispatch, in binding order (binding 0 is the uniform params). */
export interface AddNormBuffers {
  /** f32 [rows, D] residual in. */
  x: GPUBuffer;
  /** [rows, D] in `yDtype` (with `addY`). */
  y?: GPUBuffer;
  /** f32 [D]. */
  weight: GPUBuffer;
  /** f32 [D] (LayerNorm). */
  bias?: GPUBuffer;
  /** f32 [rows, D] residual out (with `addY`). */
  xOut?: GPUBuffer;
  /** [rows, D] in `dtype`. */
  h: GPUBuffer;
}

/**
 * A compiled `add_norm` for one shape.
 *
 * @example
 * ```ts ignore
 * import { Gpu } from "../../gpu/device.ts";
 * import { AddNorm } from "./add_norm.ts";
 * const gpu = await Gpu.create();
 * const op = await AddNorm.create(gpu, { rows: 2, d: 4, dtype: "f32", norm: "rms", eps: 1e-6 });
 * const x = await gpu.upload("x", new Float32Array([1, 1, 1, 1, 2, 2, 2, 2]));
 * const weight = await gpu.upload("w", new Float32Array([1, 2, 3, 4]));
 * const h = await gpu.createBuffer("h", 32);
 * await gpu.runChecked("norm", [op.dispatch({ x, weight, h })]);
 * console.log(new Float32Array(await gpu.read(h))); // ≈ [1, 2, 3, 4, 1, 2, 3, 4]
 * op.destroy();
 * gpu.destroy(x, weight, h);
 * ```
 */
export class AddNorm {
  /** The shape this op was built for. */
  readonly shape: Readonly<AddNormShape>;
  readonly #pipeline: GPUComputePipeline;
  readonly #params: GPUBuffer;
  readonly #unused: [GPUBuffer, GPUBuffer]; // placeholders: read-only bindings, xOut
  readonly #grid: [number, number];

  private constructor(
    shape: AddNormShape,
    pipeline: GPUComputePipeline,
    params: GPUBuffer,
    unused: [GPUBuffer, GPUBuffer],
    grid: [number, number],
  ) {
    this.shape = shape;
    this.#pipeline = pipeline;
    this.#params = params;
    this.#unused = unused;
    this.#grid = grid;
  }

  /** Validate `shape`, build the pipeline and the uniform params. */
  static async create(gpu: Gpu, shape: AddNormShape): Promise<AddNorm> {
    checkDims(shape, { kernel: NAME, keys: ["rows", "d"] });
    checkDtype(NAME, shape.dtype);
    const yDtype = shape.yDtype ?? shape.dtype;
    checkDtype(NAME, yDtype);
    checkShaderF16(gpu, NAME, shape.dtype);
    if (shape.addY) checkShaderF16(gpu, NAME, yDtype);
    if (shape.norm !== "rms" && shape.norm !== "layer") {
      throw new TypeError(`Cannot build ${NAME}: norm "${shape.norm}" must be "rms" or "layer"`);
    }
    if (!(Number.isFinite(shape.eps) && shape.eps >= 0)) {
      throw new RangeError(`Cannot build ${NAME}: eps=${shape.eps} must be finite and ≥ 0`);
    }
    if (shape.rows * shape.d >= 2 ** 32) {
      throw new RangeError(`Cannot build ${NAME}: rows·D ≥ 2^32 (u32 indices); split the batch`);
    }
    const max = gpu.caps.maxComputeWorkgroupsPerDimension;
    const gx = Math.min(shape.rows, max);
    const gy = Math.ceil(shape.rows / gx);
    if (gy > max) {
      throw new RangeError(`Cannot build ${NAME}: ${shape.rows} rows need too many workgroups`);
    }
    const src = specialise(
      await loadWgsl(`./${NAME}.wgsl`, import.meta.url),
      shape.dtype,
      shape.addY ? yDtype : "f32",
    );
    const constants = {
      WG,
      HAS_Y: shape.addY ? 1 : 0,
      LAYER_NORM: shape.norm === "layer" ? 1 : 0,
    };
    const pipeline = await gpu.pipeline(
      `${NAME}_${shape.dtype}_${shape.addY ? yDtype : "f32"}`,
      src,
      constants,
      NAME,
    );
    const words = new Uint32Array([shape.rows, shape.d, gx, 0]);
    new Float32Array(words.buffer)[3] = shape.eps;
    const params = await gpu.uniform(`buffer ${NAME} params`, words);
    const unused: [GPUBuffer, GPUBuffer] = [
      await gpu.createBuffer(`buffer ${NAME} unused`, 4),
      await gpu.createBuffer(`buffer ${NAME} unused xOut`, 4),
    ];
    return new AddNorm({ ...shape, yDtype }, pipeline, params, unused, [gx, gy]);
  }

  /** A dispatch computing `h` (and `xOut`); sizes are checked against the shape first. */
  dispatch(buffers: AddNormBuffers): Dispatch {
    const bindings = bindBuffers(bufferSizes(this.shape), buffers, {
      kernel: NAME,
      params: this.#params,
      unused: (name) => this.#unused[name === "xOut" ? 1 : 0],
    });
    checkDistinct(buffers, {
      kernel: NAME,
      pairs: this.shape.addY
        ? [["h", "x"], ["h", "y"], ["xOut", "x"], ["xOut", "y"], ["xOut", "h"]]
        : [["h", "x"]],
    });
    return { pipeline: this.#pipeline, bindings, workgroups: this.#grid };
  }

  /** Release the uniform and placeholder buffers. */
  destroy(): void {
    this.#params.destroy();
    for (const b of this.#unused) b.destroy();
  }
}

/** One-shot `add_norm`: create, run (checked) and destroy. */
export function addNorm(gpu: Gpu, shape: AddNormShape, buffers: AddNormBuffers): Promise<void> {
  return runOnce(gpu, { kernel: NAME, create: () => AddNorm.create(gpu, shape), buffers });
}

/** Required byte sizes of the buffers, in binding order: [name, bytes, description]. */
export function bufferSizes(s: AddNormShape): BufferRow<keyof AddNormBuffers>[] {
  const n = s.rows * s.d;
  const shape = `[rows=${s.rows}, D=${s.d}]`;
  const yDtype = s.yDtype ?? s.dtype;
  return [
    ["x", n * 4, `${shape} f32`],
    ["y", s.addY ? n * actBytes(yDtype) : 0, `${shape} ${yDtype}`],
    ["weight", s.d * 4, `[D=${s.d}] f32`],
    ["bias", s.norm === "layer" ? s.d * 4 : 0, `[D=${s.d}] f32`],
    ["xOut", s.addY ? n * 4 : 0, `${shape} f32`],
    ["h", n * actBytes(s.dtype), `${shape} ${s.dtype}`],
  ];
}

/** The shader with `ACT` (h) and `YT` (y) set; `enable f16;` on top when either is f16. */
function specialise(src: string, act: ActDtype, yt: ActDtype): string {
  const out = src.replace(/^alias ACT = f32;$/m, `alias ACT = ${act};`)
    .replace(/^alias YT = f32;$/m, `alias YT = ${yt};`);
  return act === "f16" || yt === "f16" ? "enable f16;\n" + out : out;
}
