/**
 * Launcher of `layernorm_modulate`: the adaLN-Zero pre-norm of a DiT block,
 * `h[r, :] = LN(x[r, :]) · (1 + mod[b, scale chunk]) + mod[b, shift chunk]` with `b = ⌊r / T⌋`,
 * LN without affine parameters (eps = 1e-6 by default, DiT's), statistics in f32 with a corrected
 * two-pass algorithm that stays accurate for rows with a large common offset (see
 * layernorm_modulate.wgsl).
 *
 * Buffers (ACT = the shape's dtype, RES = its `residualDtype`, by default ACT; row-major):
 * - `x` RES [B·T, D]: the residual stream, B images of T tokens. FLUX keeps it in f32 under f16
 *   activations (ARCHITECTURE.md, "FLUX.1"); `h` then saturates at ±65504.
 * - `mod` [B, modWidth·D]: the adaLN linear's output, D-wide chunks in DiT order (a block:
 *   shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp; the final layer: shift,
 *   scale). `shiftChunk` / `scaleChunk` pick the chunks.
 * - `h` [B·T, D]: the output (a different buffer from `x`).
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

const NAME = "layernorm_modulate";

/** Largest hidden size D (4 vec4 registers per invocation, 256 invocations). */
export const LAYERNORM_MODULATE_MAX_D = 4096;
/** DiT's LayerNorm epsilon. */
export const DIT_LN_EPS = 1e-6;
const SIZES = [64, 128, 256] as const;
const MAX_SLOTS = 4;

/** Shape descriptor of one `layernorm_modulate` launch. */
export interface LayernormModulateShape {
  /** Images B. */
  b: number;
  /** Tokens per image T (row r of x belongs to image ⌊r / T⌋). */
  t: number;
  /** Hidden size D, 1..{@linkcode LAYERNORM_MODULATE_MAX_D} (any; D % 4 == 0 runs vec4 code). */
  d: number;
  /** Storage dtype of mod and h, and of x unless `residualDtype` says otherwise (f16 needs `shader-f16`). */
  dtype: ActDtype;
  /**
   * Storage dtype of the residual `x`; default `dtype`. "f32" with an f16 `dtype` reads a residual
   * stream kept in f32 (values beyond f16's range) and stores `h` saturated to ±65504.
   */
  residualDtype?: ActDtype;
  /** D-wide chunks per image in `mod`: 6 for a DiT block, 2 for the final layer. */
  modWidth: number;
  /** Chunk index of the shift (0 = shift_msa, 3 = shift_mlp; 0 in the final layer). */
  shiftChunk: number;
  /** Chunk index of the scale (1 = scale_msa, 4 = scale_mlp; 1 in the final layer). */
  scaleChunk: number;
  /** LayerNorm epsilon; default {@linkcode DIT_LN_EPS}. */
  eps?: number;
  /** Invocations per workgroup; default the smallest of 64, 128, 256 that holds the row. */
  workgroupSize?: 64 | 128 | 256;
}

/** Buffers of one dispatch, in binding order (binding 0 is the uniform params). */
export interface LayernormModulateBuffers {
  /** RES [B·T, D] input (the residual stream). */
  x: GPUBuffer;
  /** ACT [B, modWidth·D] adaLN modulation (bound as `mod_` in WGSL: `mod` is reserved there). */
  mod: GPUBuffer;
  /** ACT [B·T, D] output. */
  h: GPUBuffer;
}

/**
 * A compiled `layernorm_modulate` for one shape.
 *
 * @example
 * ```ts ignore
 * import { Gpu } from "../../gpu/device.ts";
 * import { LayernormModulate } from "./layernorm_modulate.ts";
 * const gpu = await Gpu.create();
 * const shape = {
 *   b: 2, t: 256, d: 1152, dtype: "f16", modWidth: 6, shiftChunk: 0, scaleChunk: 1,
 * } as const;
 * const op = await LayernormModulate.create(gpu, shape);
 * const x = await gpu.upload("x", new Float16Array(2 * 256 * 1152).map((_, i) => i % 2));
 * const mod = await gpu.upload("mod", new Float16Array(2 * 6 * 1152).fill(0.5));
 * const h = await gpu.createBuffer("h", 2 * 256 * 1152 * 2);
 * await gpu.runChecked("norm1", [op.dispatch({ x, mod, h })]);
 * console.log(new Float16Array(await gpu.read(h)).slice(0, 2)); // ≈ [-1, 2]: ±1 · 1.5 + 0.5
 * op.destroy();
 * gpu.destroy(x, mod, h);
 * ```
 */
export class LayernormModulate {
  /** The validated shape this op was built for. */
  readonly shape: Readonly<LayernormModulateShape>;
  /** Invocations per workgroup in use. */
  readonly workgroupSize: number;
  readonly #pipeline: GPUComputePipeline;
  readonly #params: GPUBuffer;
  readonly #grid: [number, number];

  private constructor(
    shape: LayernormModulateShape,
    workgroupSize: number,
    pipeline: GPUComputePipeline,
    params: GPUBuffer,
    grid: [number, number],
  ) {
    this.shape = shape;
    this.workgroupSize = workgroupSize;
    this.#pipeline = pipeline;
    this.#params = params;
    this.#grid = grid;
  }

  /**
   * Validate `shape`, build the pipeline and the uniform params. `gridLimit` lowers the
   * workgroups per grid dimension below the device's (tests of the 2-D row grid).
   */
  static async create(
    gpu: Gpu,
    shape: LayernormModulateShape,
    gridLimit?: number,
  ): Promise<LayernormModulate> {
    checkShape(gpu, shape);
    const { b, t, d, dtype } = shape;
    const vec4 = d % 4 === 0;
    const units = vec4 ? d / 4 : d; // per workgroup slot: WG vec4 or 4·WG scalars
    const perSlot = (wg: number) => (vec4 ? wg : 4 * wg);
    const wg = shape.workgroupSize ??
      SIZES.find((s) => Math.ceil(units / perSlot(s)) <= MAX_SLOTS)!;
    const slots = Math.ceil(units / perSlot(wg));
    if (!(SIZES as readonly number[]).includes(wg) || slots > MAX_SLOTS) {
      throw new RangeError(
        `Cannot build ${NAME}: workgroupSize=${wg} must be 64, 128 or 256 and hold the row ` +
          `(D=${d} needs ${Math.ceil(units / (MAX_SLOTS * perSlot(1)))} or more invocations)`,
      );
    }
    const rows = b * t;
    const max = Math.min(gridLimit ?? Infinity, gpu.caps.maxComputeWorkgroupsPerDimension);
    const gx = Math.min(rows, max);
    const gy = Math.ceil(rows / gx);
    if (gy > max) {
      throw new RangeError(
        `Cannot build ${NAME}: B·T=${rows} rows need more than ${max}×${max} workgroups; ` +
          "split the batch",
      );
    }
    const res = shape.residualDtype ?? dtype;
    const src = withAliasDtype(
      await loadWgsl(`./${NAME}.wgsl`, import.meta.url),
      dtype,
      "RES",
      res,
    );
    const entry = vec4 ? NAME : `${NAME}_any`;
    // an f32 residual under f16 activations: h saturates (the default pipeline is unchanged)
    const mixed = res !== dtype;
    const pipeline = await gpu.pipeline(
      `${entry}_${dtype}${mixed ? `_res_${res}` : ""}`,
      src,
      { WG: wg, SLOTS: slots, ...(mixed ? { SATURATE: dtype === "f16" ? 1 : 0 } : {}) },
      entry,
    );
    const words = new Uint32Array([
      rows,
      t,
      d,
      shape.modWidth * d,
      shape.shiftChunk * d,
      shape.scaleChunk * d,
      gx,
      0,
    ]);
    new Float32Array(words.buffer)[7] = shape.eps ?? DIT_LN_EPS;
    const params = await gpu.uniform(`buffer ${NAME} params`, words);
    return new LayernormModulate({ ...shape }, wg, pipeline, params, [gx, gy]);
  }

  /** A dispatch computing `h`; every buffer's size is checked against the shape first. */
  dispatch(buffers: LayernormModulateBuffers): Dispatch {
    const bindings = bindBuffers(bufferSizes(this.shape), buffers, {
      kernel: NAME,
      params: this.#params,
    });
    checkDistinct(buffers, { kernel: NAME, pairs: [["h", "x"], ["h", "mod"]] });
    return { pipeline: this.#pipeline, bindings, workgroups: this.#grid };
  }

  /** Release the uniform buffer. */
  destroy(): void {
    this.#params.destroy();
  }
}

/**
 * One-shot `layernorm_modulate`: create, run (checked) and destroy.
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../../gpu/device.ts";
 * import { layernormModulate } from "./layernorm_modulate.ts";
 * const gpu = await getGpu();
 * // x, h: [2·64, 256] f32; mod: [2, 2·256] f32 (final layer: shift, scale) GPUBuffers
 * const shape = { b: 2, t: 64, d: 256, dtype: "f32", modWidth: 2, shiftChunk: 0, scaleChunk: 1 };
 * await layernormModulate(gpu, shape, { x, mod, h });
 * ```
 */
export function layernormModulate(
  gpu: Gpu,
  shape: LayernormModulateShape,
  buffers: LayernormModulateBuffers,
): Promise<void> {
  return runOnce(gpu, {
    kernel: NAME,
    create: () => LayernormModulate.create(gpu, shape),
    buffers,
  });
}

/** Required byte sizes of the buffers, in binding order: [name, bytes, description]. */
export function bufferSizes(
  s: LayernormModulateShape,
): BufferRow<keyof LayernormModulateBuffers>[] {
  const rows = s.b * s.t;
  const e = actBytes(s.dtype), res = s.residualDtype ?? s.dtype;
  const act = `[B·T=${rows}, D=${s.d}] ${s.dtype}`;
  return [
    ["x", rows * s.d * actBytes(res), `[B·T=${rows}, D=${s.d}] ${res}`],
    [
      "mod",
      s.b * s.modWidth * s.d * e,
      `[B=${s.b}, ${s.modWidth}·D=${s.modWidth * s.d}] ${s.dtype}`,
    ],
    ["h", rows * s.d * e, act],
  ];
}

/** Validate the shape before any GPU work. */
function checkShape(gpu: Gpu, s: LayernormModulateShape): void {
  checkDims(s, { kernel: NAME, keys: ["b", "t", "d", "modWidth"] });
  if (s.d > LAYERNORM_MODULATE_MAX_D) {
    throw new RangeError(
      `Cannot build ${NAME}: D=${s.d} exceeds ${LAYERNORM_MODULATE_MAX_D}, the largest row ` +
        "one workgroup holds",
    );
  }
  for (const key of ["shiftChunk", "scaleChunk"] as const) {
    const v = s[key];
    if (!Number.isInteger(v) || v < 0 || v >= s.modWidth) {
      throw new RangeError(
        `Cannot build ${NAME}: ${key}=${v} must be a chunk index of mod, 0..${s.modWidth - 1}`,
      );
    }
  }
  if (s.eps !== undefined && !(Number.isFinite(s.eps) && s.eps > 0)) {
    throw new RangeError(`Cannot build ${NAME}: eps=${s.eps} must be a finite positive number`);
  }
  checkDtype(NAME, s.dtype);
  const res = s.residualDtype ?? s.dtype;
  if (res !== "f16" && res !== "f32") {
    throw new TypeError(`Cannot build ${NAME}: residualDtype "${res}" must be "f16" or "f32"`);
  }
  checkBindingSizes(gpu, bufferSizes(s), {
    kernel: NAME,
    elementBytes: Math.min(actBytes(s.dtype), actBytes(res)),
    maxLog2: 32,
  });
  checkShaderF16(gpu, NAME, s.dtype);
  checkShaderF16(gpu, NAME, res);
}
