/**
 * Launcher of `gate_residual`: the gated residual add of a DiT block (adaLN-Zero), in place,
 * `x[r, :] += mod[b, gate chunk] · y[r, :]` with `b = ⌊r / T⌋`, computed in f32 (see
 * gate_residual.wgsl).
 *
 * Buffers (ACT = the shape's dtype, RES = its `residualDtype`, by default ACT; row-major):
 * - `x` RES [B·T, D]: the residual stream, read and written (B images of T tokens). FLUX keeps it
 *   in f32 under f16 activations (ARCHITECTURE.md, "FLUX.1").
 * - `y` [B·T, D]: the branch output (attention or MLP projection); a different buffer from `x`.
 * - `mod` [B, modWidth·D]: the adaLN linear's output, D-wide chunks in DiT order (shift_msa,
 *   scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp); `gateChunk` picks the gate (2 or 5).
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

const NAME = "gate_residual";
const SIZES = [64, 128, 256];

/** Shape descriptor of one `gate_residual` launch. */
export interface GateResidualShape {
  /** Images B. */
  b: number;
  /** Tokens per image T (row r of x belongs to image ⌊r / T⌋). */
  t: number;
  /** Hidden size D (any; D % 4 == 0 runs vec4 code). */
  d: number;
  /** Storage dtype of y and mod, and of x unless `residualDtype` says otherwise (f16 needs `shader-f16`). */
  dtype: ActDtype;
  /**
   * Storage dtype of the residual `x`; default `dtype`. "f32" with an f16 `dtype` adds the f16
   * branch output into a residual stream kept in f32 (values beyond f16's range).
   */
  residualDtype?: ActDtype;
  /** D-wide chunks per image in `mod` (6 for a DiT block). */
  modWidth: number;
  /** Chunk index of the gate (2 = gate_msa, 5 = gate_mlp). */
  gateChunk: number;
  /** Invocations per workgroup: 64, 128 or 256 (default 256). */
  workgroupSize?: 64 | 128 | 256;
}

/** Buffers of one dispatch, in binding order (binding 0 is the uniform params). */
export interface GateResidualBuffers {
  /** RES [B·T, D] residual stream, updated in place. */
  x: GPUBuffer;
  /** ACT [B·T, D] branch output. */
  y: GPUBuffer;
  /** ACT [B, modWidth·D] adaLN modulation (bound as `mod_` in WGSL: `mod` is reserved there). */
  mod: GPUBuffer;
}

/**
 * A compiled `gate_residual` for one shape.
 *
 * @example
 * ```ts ignore
 * import { Gpu } from "../../gpu/device.ts";
 * import { GateResidual } from "./gate_residual.ts";
 * const gpu = await Gpu.create();
 * const shape = { b: 2, t: 256, d: 1152, dtype: "f16", modWidth: 6, gateChunk: 2 } as const;
 * const op = await GateResidual.create(gpu, shape);
 * const x = await gpu.upload("x", new Float16Array(2 * 256 * 1152).fill(1));
 * const y = await gpu.upload("y", new Float16Array(2 * 256 * 1152).fill(2));
 * const mod = await gpu.upload("mod", new Float16Array(2 * 6 * 1152).fill(0.25));
 * await gpu.runChecked("gate_msa", [op.dispatch({ x, y, mod })]);
 * console.log(new Float16Array(await gpu.read(x))[0]); // 1 + 0.25 · 2 = 1.5
 * op.destroy();
 * gpu.destroy(x, y, mod);
 * ```
 */
export class GateResidual {
  /** The validated shape this op was built for. */
  readonly shape: Readonly<GateResidualShape>;
  readonly #pipeline: GPUComputePipeline;
  readonly #params: GPUBuffer;
  readonly #workgroups: number;

  private constructor(
    shape: GateResidualShape,
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
   * of workgroups below the device's per-dimension limit (tests of the grid-stride loop).
   */
  static async create(
    gpu: Gpu,
    shape: GateResidualShape,
    gridLimit?: number,
  ): Promise<GateResidual> {
    checkShape(gpu, shape);
    const { b, t, d, dtype } = shape;
    const vec = d % 4 === 0 ? 4 : 1;
    const wg = shape.workgroupSize ?? 256;
    const count = (b * t * d) / vec;
    const max = Math.min(gridLimit ?? Infinity, gpu.caps.maxComputeWorkgroupsPerDimension);
    const workgroups = Math.min(Math.ceil(count / wg), max);
    const res = shape.residualDtype ?? dtype;
    const src = withAliasDtype(
      await loadWgsl(`./${NAME}.wgsl`, import.meta.url),
      dtype,
      "RES",
      res,
    );
    const entry = vec === 4 ? NAME : `${NAME}_any`;
    const key = `${entry}_${dtype}${res !== dtype ? `_res_${res}` : ""}`;
    const pipeline = await gpu.pipeline(key, src, { WG: wg }, entry);
    const words = new Uint32Array([
      count,
      t,
      d / vec,
      (shape.modWidth * d) / vec,
      (shape.gateChunk * d) / vec,
      workgroups * wg,
      0,
      0,
    ]);
    const params = await gpu.uniform(`buffer ${NAME} params`, words);
    return new GateResidual({ ...shape }, pipeline, params, workgroups);
  }

  /** A dispatch updating `x`; every buffer's size is checked against the shape first. */
  dispatch(buffers: GateResidualBuffers): Dispatch {
    const bindings = bindBuffers(bufferSizes(this.shape), buffers, {
      kernel: NAME,
      params: this.#params,
    });
    checkDistinct(buffers, { kernel: NAME, pairs: [["y", "x"], ["mod", "x"]] });
    return { pipeline: this.#pipeline, bindings, workgroups: [this.#workgroups] };
  }

  /** Release the uniform buffer. */
  destroy(): void {
    this.#params.destroy();
  }
}

/**
 * One-shot `gate_residual`: create, run (checked) and destroy.
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../../gpu/device.ts";
 * import { gateResidual } from "./gate_residual.ts";
 * const gpu = await getGpu();
 * // x, y: [2·64, 256] f32; mod: [2, 6·256] f32 GPUBuffers; x += gate_mlp · y
 * await gateResidual(gpu, { b: 2, t: 64, d: 256, dtype: "f32", modWidth: 6, gateChunk: 5 }, {
 *   x,
 *   y,
 *   mod,
 * });
 * ```
 */
export function gateResidual(
  gpu: Gpu,
  shape: GateResidualShape,
  buffers: GateResidualBuffers,
): Promise<void> {
  return runOnce(gpu, { kernel: NAME, create: () => GateResidual.create(gpu, shape), buffers });
}

/** Required byte sizes of the buffers, in binding order: [name, bytes, description]. */
export function bufferSizes(
  s: GateResidualShape,
): BufferRow<keyof GateResidualBuffers>[] {
  const rows = s.b * s.t;
  const e = actBytes(s.dtype), res = s.residualDtype ?? s.dtype;
  const act = `[B·T=${rows}, D=${s.d}] ${s.dtype}`;
  return [
    ["x", rows * s.d * actBytes(res), `[B·T=${rows}, D=${s.d}] ${res}`],
    ["y", rows * s.d * e, act],
    [
      "mod",
      s.b * s.modWidth * s.d * e,
      `[B=${s.b}, ${s.modWidth}·D=${s.modWidth * s.d}] ${s.dtype}`,
    ],
  ];
}

/** Validate the shape before any GPU work. */
function checkShape(gpu: Gpu, s: GateResidualShape): void {
  checkDims(s, { kernel: NAME, keys: ["b", "t", "d", "modWidth"] });
  if (!Number.isInteger(s.gateChunk) || s.gateChunk < 0 || s.gateChunk >= s.modWidth) {
    throw new RangeError(
      `Cannot build ${NAME}: gateChunk=${s.gateChunk} must be a chunk index of mod, ` +
        `0..${s.modWidth - 1}`,
    );
  }
  if (s.workgroupSize !== undefined && !SIZES.includes(s.workgroupSize)) {
    throw new RangeError(
      `Cannot build ${NAME}: workgroupSize=${s.workgroupSize} must be 64, 128 or 256`,
    );
  }
  checkDtype(NAME, s.dtype);
  const res = s.residualDtype ?? s.dtype;
  if (res !== "f16" && res !== "f32") {
    throw new TypeError(`Cannot build ${NAME}: residualDtype "${res}" must be "f16" or "f32"`);
  }
  // below 2^31 elements, so the grid-stride index i + stride never wraps a u32
  checkBindingSizes(gpu, bufferSizes(s), {
    kernel: NAME,
    elementBytes: Math.min(actBytes(s.dtype), actBytes(res)),
    maxLog2: 31,
  });
  checkShaderF16(gpu, NAME, s.dtype);
  checkShaderF16(gpu, NAME, res);
}
