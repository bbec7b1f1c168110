/**
 * Launcher of `group_norm`: GroupNorm over NHWC activations `[B, HW, C]` (32 groups by default,
 * as every LDM/BFL/diffusers autoencoder uses), statistics in f32 merged with Chan's formula,
 * affine `gamma`/`beta`, and an optional fused SiLU. Three dispatches (stats per pixel chunk,
 * finalize per image, apply), see group_norm.wgsl.
 *
 * @module
 */
import type { Dispatch, Gpu } from "../../gpu/device.ts";
import {
  bindBuffers,
  type BufferRow,
  checkBindingSizes,
  checkDims,
  checkDtype,
  checkGrid,
  checkShaderF16,
} from "../_launch.ts";
import { actBytes, type ActDtype, loadWgsl, withActDtype } from "../_wgsl.ts";

const NAME = "group_norm";
const WG = 256; // group_norm.wgsl WG
const MAX_CHUNKS = 512; // stats workgroups per image, at most
const MIN_CHUNK = 16; // pixels per stats workgroup, at least

/** The group count of the LDM/BFL and diffusers autoencoders. */
export const GROUP_NORM_GROUPS = 32;

/** Shape descriptor of one GroupNorm. */
export interface GroupNormShape {
  /** Batch B. */
  b: number;
  /** Pixels per image HW. */
  hw: number;
  /** Channels C, a multiple of `groups` and of 4, at most 1024. */
  c: number;
  /** Groups G. Default 32. */
  groups?: number;
  /** Added to the variance. Default 1e-6 (the autoencoders' value). */
  eps?: number;
  /** Apply SiLU after the affine. Default false. */
  silu?: boolean;
  /** Storage dtype of x and y (f16 needs the `shader-f16` feature). */
  dtype: ActDtype;
}

/** Buffers of one GroupNorm, in binding order after the op's own scratch. */
export interface GroupNormBuffers {
  /** ACT [B, HW, C]. */
  x: GPUBuffer;
  /** f32 [C]. */
  gamma: GPUBuffer;
  /** f32 [C]. */
  beta: GPUBuffer;
  /** ACT [B, HW, C] output; may not be `x`. */
  y: GPUBuffer;
}

/**
 * A compiled GroupNorm for one shape; it owns a small scratch buffer for the statistics, so one
 * op's dispatches must not run twice in one pass concurrently (they never do: a pass is ordered).
 *
 * @example
 * ```ts ignore
 * import { Gpu } from "../../gpu/device.ts";
 * import { GroupNorm } from "./group_norm.ts";
 * const gpu = await Gpu.create();
 * const op = await GroupNorm.create(gpu, { b: 1, hw: 64, c: 64, silu: true, dtype: "f32" });
 * const x = await gpu.upload("x", new Float32Array(64 * 64).map((_, i) => i % 7));
 * const gamma = await gpu.upload("gamma", new Float32Array(64).fill(1));
 * const beta = await gpu.upload("beta", new Float32Array(64));
 * const y = await gpu.createBuffer("y", 64 * 64 * 4);
 * await gpu.runChecked("group norm", op.dispatches({ x, gamma, beta, y }));
 * op.destroy();
 * gpu.destroy(x, gamma, beta, y);
 * ```
 */
export class GroupNorm {
  /** The validated shape this op was built for. */
  readonly shape: Readonly<GroupNormShape>;
  readonly #pipelines: [GPUComputePipeline, GPUComputePipeline, GPUComputePipeline];
  readonly #params: GPUBuffer;
  readonly #work: GPUBuffer;
  readonly #grids: [number, number][];

  private constructor(
    shape: GroupNormShape,
    pipelines: [GPUComputePipeline, GPUComputePipeline, GPUComputePipeline],
    params: GPUBuffer,
    work: GPUBuffer,
    grids: [number, number][],
  ) {
    this.shape = shape;
    this.#pipelines = pipelines;
    this.#params = params;
    this.#work = work;
    this.#grids = grids;
  }

  /** Validate `shape`, build the three pipelines, the uniform params and the scratch. */
  static async create(gpu: Gpu, shape: GroupNormShape): Promise<GroupNorm> {
    checkShape(gpu, shape);
    const { b, hw, c, dtype } = shape;
    const groups = shape.groups ?? GROUP_NORM_GROUPS;
    const chunk = Math.max(MIN_CHUNK, Math.ceil(hw / MAX_CHUNKS));
    const chunks = Math.ceil(hw / chunk);
    const vec4s = (b * hw * c) / 4;
    const nx = Math.min(Math.ceil(vec4s / WG), gpu.caps.maxComputeWorkgroupsPerDimension);
    const ny = Math.ceil(Math.ceil(vec4s / WG) / nx);
    const grids: [number, number][] = [[chunks, b], [groups, b], [nx, ny]];
    checkGrid(gpu, [b, ny], {
      kernel: NAME,
      verb: "build",
      dims: `[B=${b}, HW=${hw}, C=${c}]`,
      fix: "split the batch or tile the image",
    });
    const src = withActDtype(await loadWgsl(`./${NAME}.wgsl`, import.meta.url), dtype);
    const partLen = Math.floor(WG / Math.min(c, WG)) * c;
    const pipelines = await Promise.all([
      gpu.pipeline(`${NAME}_stats_${dtype}`, src, { PART_LEN: partLen }, `${NAME}_stats`),
      gpu.pipeline(`${NAME}_finalize_${dtype}`, src, {}, `${NAME}_finalize`),
      gpu.pipeline(`${NAME}_apply_${dtype}`, src, { SILU: shape.silu ? 1 : 0 }, `${NAME}_apply`),
    ]) as [GPUComputePipeline, GPUComputePipeline, GPUComputePipeline];
    const words = new Uint32Array(12);
    words.set([b, hw, c, groups, chunk, chunks]);
    new Float32Array(words.buffer, 24, 1)[0] = shape.eps ?? 1e-6;
    words[7] = nx;
    words[8] = b * chunks * groups;
    const params = await gpu.uniform(`buffer ${NAME} params`, words);
    const work = await gpu.createBuffer(
      `buffer ${NAME} work`,
      (b * chunks * groups + b * groups) * 16,
    );
    return new GroupNorm({ ...shape }, pipelines, params, work, grids);
  }

  /** The three dispatches computing y, in order; buffer sizes are checked first. */
  dispatches(buffers: GroupNormBuffers): Dispatch[] {
    if (buffers.x === buffers.y) {
      throw new TypeError(
        `Cannot run ${NAME}: x and y are the same buffer; pass a separate output buffer`,
      );
    }
    const [, x, gamma, beta, y] = bindBuffers(bufferSizes(this.shape), buffers, {
      kernel: NAME,
      params: this.#params,
    });
    const p = this.#params, w = this.#work;
    const [stats, finalize, apply] = this.#pipelines;
    return [
      { pipeline: stats, bindings: [p, w, x], workgroups: this.#grids[0] },
      { pipeline: finalize, bindings: [p, w], workgroups: this.#grids[1] },
      { pipeline: apply, bindings: [p, w, x, gamma, beta, y], workgroups: this.#grids[2] },
    ];
  }

  /** Release the uniform and scratch buffers. */
  destroy(): void {
    this.#params.destroy();
    this.#work.destroy();
  }
}

/**
 * One-shot GroupNorm: create, run (checked) and destroy.
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../../gpu/device.ts";
 * import { groupNorm } from "./group_norm.ts";
 * const gpu = await getGpu();
 * // x, y: [2, 100, 64] f32; gamma, beta: [64] f32 GPUBuffers
 * await groupNorm(gpu, { b: 2, hw: 100, c: 64, dtype: "f32" }, { x, gamma, beta, y });
 * ```
 */
export async function groupNorm(
  gpu: Gpu,
  shape: GroupNormShape,
  buffers: GroupNormBuffers,
): Promise<void> {
  const op = await GroupNorm.create(gpu, shape);
  try {
    await gpu.runChecked(`run ${NAME}`, op.dispatches(buffers));
  } finally {
    op.destroy();
  }
}

/** Required bytes of each buffer: [name, bytes, description]. */
export function bufferSizes(s: GroupNormShape): BufferRow<keyof GroupNormBuffers>[] {
  const e = actBytes(s.dtype);
  const act = `[B=${s.b}, HW=${s.hw}, C=${s.c}] ${s.dtype}`;
  return [
    ["x", s.b * s.hw * s.c * e, act],
    ["gamma", s.c * 4, `[C=${s.c}] f32`],
    ["beta", s.c * 4, `[C=${s.c}] f32`],
    ["y", s.b * s.hw * s.c * e, act],
  ];
}

function checkShape(gpu: Gpu, s: GroupNormShape): void {
  checkDims(s, { kernel: NAME, keys: ["b", "hw", "c"] });
  const g = s.groups ?? GROUP_NORM_GROUPS;
  if (!Number.isInteger(g) || g < 1 || g > 64 || s.c % g !== 0) {
    throw new RangeError(
      `Cannot build ${NAME}: groups=${g} must be an integer in 1..64 dividing C=${s.c}`,
    );
  }
  if (s.c % 4 !== 0 || s.c > 1024) {
    throw new RangeError(`Cannot build ${NAME}: C=${s.c} must be a multiple of 4, at most 1024`);
  }
  if (s.eps !== undefined && !(Number.isFinite(s.eps) && s.eps >= 0)) {
    throw new RangeError(`Cannot build ${NAME}: eps=${s.eps} must be a finite number ≥ 0`);
  }
  checkDtype(NAME, s.dtype);
  checkBindingSizes(gpu, bufferSizes(s), {
    kernel: NAME,
    elementBytes: actBytes(s.dtype),
    maxLog2: 32,
  });
  checkShaderF16(gpu, NAME, s.dtype);
}
