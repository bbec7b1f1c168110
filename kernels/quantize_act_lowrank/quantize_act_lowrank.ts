/**
 * Launcher of `quantize_act_lowrank`: one pass over the activations X [M, K] writes the low-rank
 * down-projection `lora_act = X · lora_downᵀ` (f32 [M, R], un-smoothed X) and the per-token,
 * per-group 4-bit quantization of `X / smooth` (`qact` u32 [M, K/8], `ascales` f32 [M, K/G]),
 * exactly as {@linkcode quantizeAct} in formats/packing.ts specifies. See
 * quantize_act_lowrank.wgsl for the work split and ARCHITECTURE.md for the layouts.
 *
 * @module
 */
import type { Dispatch, Gpu } from "../../gpu/device.ts";
import { GpuFeatureError } from "../../gpu/errors.ts";
import { type ActConvention, type ActMode, groupSize } from "../../formats/packing.ts";
import { bindBuffers, type BufferRow, runOnce } from "../_launch.ts";
import { actBytes, type ActDtype, loadWgsl, withActDtype } from "../_wgsl.ts";

const NAME = "quantize_act_lowrank";
/** Largest supported rank R of the low-rank branch. */
export const MAX_RANK = 64;
const MODE: Record<ActMode, number> = { int4: 0, int4_unsigned: 1, nvfp4: 2 };

/** Shape descriptor of one `quantize_act_lowrank` launch. */
export interface QuantizeActLowrankShape {
  /** Tokens (rows of X). */
  m: number;
  /** In-features; a multiple of the mode's group size G (64 for int4 modes, 16 for nvfp4). */
  k: number;
  /** Rank of the low-rank branch, 0..64; 0 = no `lora_down` / `lora_act`. */
  r: number;
  /** Activation quantization mode. */
  mode: ActMode;
  /** Storage dtype of X. */
  dtype: ActDtype;
  /** Divide X by the per-channel factors `smooth` [K] before quantizing. */
  smooth: boolean;
  /**
   * Rounding convention (default `"w4"`); `"nunchaku"` reproduces Nunchaku's kernels for
   * imported checkpoints ({@linkcode quantizeAct} in formats/packing.ts defines both).
   */
  convention?: ActConvention;
  /**
   * Rows per workgroup (4, 8 or 16); default 8 from M = 2048 on, else 4. More rows per
   * workgroup re-read `lora_down` less often but leave fewer workgroups in flight.
   */
  rowsPerWorkgroup?: 4 | 8 | 16;
}

/** Buffers of one dispatch, in binding order (binding 0 is the uniform params). */
export interface QuantizeActLowrankBuffers {
  /** ACT [M, K] activations. */
  x: GPUBuffer;
  /** f32 [K] smoothing factors λ (required when the shape has `smooth`). */
  smooth?: GPUBuffer;
  /** f16 bits [R, K], two per u32 (required when R > 0). */
  lora_down?: GPUBuffer;
  /** u32 [M, K/8] output: 4-bit codes, nibble j of word w = element 8w+j. */
  qact: GPUBuffer;
  /** f32 [M, K/G] output: per-token, per-group scales. */
  ascales: GPUBuffer;
  /** f32 [M, R] output (required when R > 0). */
  lora_act?: GPUBuffer;
}

type BufferName = keyof QuantizeActLowrankBuffers;

/**
 * A compiled `quantize_act_lowrank` for one shape.
 *
 * @example
 * ```ts ignore
 * import { Gpu } from "../../gpu/device.ts";
 * import { QuantizeActLowrank } from "./quantize_act_lowrank.ts";
 * const gpu = await Gpu.create();
 * const op = await QuantizeActLowrank.create(gpu, {
 *   m: 64, k: 256, r: 32, mode: "int4", dtype: "f16", smooth: true,
 * });
 * // x, smooth, lora_down, qact, ascales, lora_act: GPUBuffers of the sizes in bufferSizes()
 * gpu.run([op.dispatch({ x, smooth, lora_down, qact, ascales, lora_act })]);
 * op.destroy();
 * ```
 */
export class QuantizeActLowrank {
  /** The validated shape this op was built for. */
  readonly shape: Readonly<QuantizeActLowrankShape>;
  readonly #pipeline: GPUComputePipeline;
  readonly #params: GPUBuffer;
  readonly #dummyIn: GPUBuffer;
  readonly #dummyOut: GPUBuffer;
  readonly #grid: [number, number];

  private constructor(
    shape: QuantizeActLowrankShape,
    pipeline: GPUComputePipeline,
    buffers: [GPUBuffer, GPUBuffer, GPUBuffer],
    grid: [number, number],
  ) {
    this.shape = shape;
    this.#pipeline = pipeline;
    [this.#params, this.#dummyIn, this.#dummyOut] = buffers;
    this.#grid = grid;
  }

  /** Validate `shape`, build the pipeline and the uniform params. */
  static async create(gpu: Gpu, shape: QuantizeActLowrankShape): Promise<QuantizeActLowrank> {
    const rows = checkShape(gpu, shape);
    const quads = rows / 4, ql = Math.min(quads, 2);
    const blocks = Math.ceil(shape.m / rows);
    const gx = Math.min(blocks, gpu.caps.maxComputeWorkgroupsPerDimension);
    const grid: [number, number] = [gx, Math.ceil(blocks / gx)];
    if (grid[1] > gpu.caps.maxComputeWorkgroupsPerDimension) {
      throw new RangeError(
        `Cannot create ${NAME}: M=${shape.m} needs ${blocks} workgroups, more than this ` +
          "adapter's grid allows; split the tokens",
      );
    }
    const src = withActDtype(await loadWgsl(`./${NAME}.wgsl`, import.meta.url), shape.dtype);
    const pipeline = await gpu.pipeline(`${NAME}_${shape.dtype}`, src, {
      MODE: MODE[shape.mode],
      SMOOTH: shape.smooth ? 1 : 0,
      NUNCHAKU: shape.convention === "nunchaku" ? 1 : 0,
      QUADS: quads,
      QL: ql,
      RPW: Math.ceil(shape.r / (32 / ql)),
    }, NAME);
    const params = await gpu.uniform(
      `buffer ${NAME} params`,
      new Uint32Array([shape.m, shape.k, shape.r, gx]),
    );
    // smooth is read as vec4<f32>: an unused binding needs at least 16 bytes
    const dummyIn = await gpu.createBuffer(`buffer ${NAME} unused input`, 16);
    const dummyOut = await gpu.createBuffer(`buffer ${NAME} unused output`, 16);
    return new QuantizeActLowrank(
      { ...shape, rowsPerWorkgroup: rows },
      pipeline,
      [params, dummyIn, dummyOut],
      grid,
    );
  }

  /** A dispatch of the kernel; every buffer's size is checked against the shape first. */
  dispatch(buffers: QuantizeActLowrankBuffers): Dispatch {
    const bindings = bindBuffers(bufferSizes(this.shape), buffers, {
      kernel: NAME,
      params: this.#params,
      unused: (name) => name === "lora_act" ? this.#dummyOut : this.#dummyIn,
    });
    return { pipeline: this.#pipeline, bindings, workgroups: this.#grid };
  }

  /** Release the uniform and placeholder buffers. */
  destroy(): void {
    this.#params.destroy();
    this.#dummyIn.destroy();
    this.#dummyOut.destroy();
  }
}

/**
 * One-shot `quantize_act_lowrank`: create, run (checked) and destroy.
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../../gpu/device.ts";
 * import { quantizeActLowrank } from "./quantize_act_lowrank.ts";
 * const gpu = await getGpu();
 * await quantizeActLowrank(gpu, {
 *   m: 7, k: 64, r: 0, mode: "nvfp4", dtype: "f32", smooth: false,
 * }, { x, qact, ascales });
 * ```
 */
export function quantizeActLowrank(
  gpu: Gpu,
  shape: QuantizeActLowrankShape,
  buffers: QuantizeActLowrankBuffers,
): Promise<void> {
  return runOnce(gpu, {
    kernel: NAME,
    create: () => QuantizeActLowrank.create(gpu, shape),
    buffers,
  });
}

/**
 * Required bytes of each storage binding, in binding order (0 = unused: a placeholder is bound),
 * with a description of the expected tensor.
 */
export function bufferSizes(s: QuantizeActLowrankShape): BufferRow<BufferName>[] {
  const { m, k, r } = s;
  const g = groupSize(s.mode);
  return [
    ["x", m * k * actBytes(s.dtype), `[M=${m}, K=${k}] ${s.dtype}`],
    ["smooth", s.smooth ? k * 4 : 0, `[K=${k}] f32`],
    ["lora_down", r > 0 ? r * k * 2 : 0, `[R=${r}, K=${k}] f16, 2 per u32`],
    ["qact", (m * k) / 2, `[M=${m}, K=${k}] 4-bit codes as u32 [M, K/8]`],
    ["ascales", (m * k / g) * 4, `[M=${m}, K/G=${k / g}] f32`],
    ["lora_act", r > 0 ? m * r * 4 : 0, `[M=${m}, R=${r}] f32`],
  ];
}

function checkShape(gpu: Gpu, s: QuantizeActLowrankShape): 4 | 8 | 16 {
  for (const d of ["m", "k", "r"] as const) {
    const v = s[d], min = d === "r" ? 0 : 1;
    if (!Number.isSafeInteger(v) || v < min) {
      throw new RangeError(
        `Cannot create ${NAME}: ${d.toUpperCase()} is ${v}, expected an integer ≥ ${min}`,
      );
    }
  }
  if (!(s.mode in MODE)) {
    throw new TypeError(
      `Cannot create ${NAME}: mode "${s.mode}", expected "int4", "int4_unsigned" or "nvfp4"`,
    );
  }
  const g = groupSize(s.mode);
  if (s.k % g !== 0) {
    throw new RangeError(
      `Cannot create ${NAME}: K=${s.k} is not a multiple of the ${s.mode} group size G=${g}`,
    );
  }
  if (s.r > MAX_RANK) {
    throw new RangeError(
      `Cannot create ${NAME}: R=${s.r} exceeds the supported rank ${MAX_RANK}; split lora_down ` +
        "along R",
    );
  }
  if (s.dtype !== "f32" && s.dtype !== "f16") {
    throw new TypeError(`Cannot create ${NAME}: dtype "${s.dtype}", expected "f16" or "f32"`);
  }
  if (s.dtype === "f16" && !gpu.caps.shaderF16) {
    throw new GpuFeatureError(
      `Cannot create ${NAME} with f16 activations: the device lacks shader-f16; use dtype "f32"`,
    );
  }
  if (s.convention !== undefined && s.convention !== "w4" && s.convention !== "nunchaku") {
    throw new TypeError(
      `Cannot create ${NAME}: convention "${s.convention}", expected "w4" or "nunchaku"`,
    );
  }
  if (typeof s.smooth !== "boolean") {
    throw new TypeError(`Cannot create ${NAME}: smooth is ${s.smooth}, expected true or false`);
  }
  // measured on an H100 (M=1024 and 4096, K=3072, R=32): 4 rows best up to M≈2048, then 8
  const rows = s.rowsPerWorkgroup ?? (s.m >= 2048 ? 8 : 4);
  if (rows !== 4 && rows !== 8 && rows !== 16) {
    throw new RangeError(
      `Cannot create ${NAME}: rowsPerWorkgroup is ${rows}, expected 4, 8 or 16`,
    );
  }
  return rows;
}
