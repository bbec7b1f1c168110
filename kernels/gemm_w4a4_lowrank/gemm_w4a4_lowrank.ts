/**
 * Launcher of `gemm_w4a4_lowrank`: the 4-bit GEMM (INT4 or NVFP4 weights × 4-bit activations
 * from `quantize_act_lowrank`) with the low-rank up-projection, bias and optional GELU fused into
 * its epilogue. See gemm_w4a4_lowrank.wgsl for the tiling and ARCHITECTURE.md for the layouts.
 *
 * @module
 */
import type { Dispatch, Gpu } from "../../gpu/device.ts";
import { GpuFeatureError } from "../../gpu/errors.ts";
import { type ActMode, groupSize, type WeightFormat } from "../../formats/packing.ts";
import { bindBuffers, type BufferRow, runOnce } from "../_launch.ts";
import { actBytes, type ActDtype, loadWgsl, withActDtype } from "../_wgsl.ts";

const NAME = "gemm_w4a4_lowrank";

/**
 * Workgroup shape: WG_X × WG_Y invocations, each owning 8 × 8 outputs, so the workgroup tile is
 * BM = 8·WG_Y rows by BN = 8·WG_X columns. Each of WG_X, WG_Y is 8, 16 or 32.
 */
export interface W4A4Tile {
  /** Invocations along x (output columns); BN = 8·wgX. */
  wgX: number;
  /** Invocations along y (output rows); BM = 8·wgY. */
  wgY: number;
}

/** Shape descriptor of a W4A4 GEMM with low-rank epilogue. */
export interface GemmW4A4LowrankShape {
  /** Rows M of the activations and of Y (tokens). */
  m: number;
  /** Reduction dimension K (in-features); a multiple of the format's group size (64 or 16). */
  k: number;
  /** Columns N of Y (out-features, rows of the weight). */
  n: number;
  /** Rank of the low-rank branch; 0 = none (lora buffers may be omitted). */
  r: number;
  /** Weight format. */
  format: WeightFormat;
  /** Activation mode; must match the format (nvfp4 ↔ nvfp4, int4 ↔ int4 | int4_unsigned). */
  actMode: ActMode;
  /** Storage dtype of Y. */
  dtype: ActDtype;
  /** Add `bias` [N]. */
  bias: boolean;
  /** Apply GELU (tanh form) after the bias. */
  gelu: boolean;
  /** NVFP4 per-tensor weight scale (required for nvfp4). */
  tensorScale?: number;
  /** Override the workgroup tile (benchmarks); default 16×16 invocations (128×128 outputs). */
  tile?: W4A4Tile;
  /**
   * Multiply row n's group scales by `channel_scale[n]` (f32 [N]; NVFP4 `wcscales` of imported
   * Nunchaku layers): scales the 4-bit product only. Default false.
   */
  channelScale?: boolean;
}

/** Buffers of one dispatch, in binding order (binding 0 is the uniform params). */
export interface GemmW4A4LowrankBuffers {
  /** u32 [M, K/8] packed activation codes. */
  qact: GPUBuffer;
  /** f32 [M, K/G] activation group scales. */
  ascales: GPUBuffer;
  /** u32 [N, K/8] packed weight codes. */
  qweight: GPUBuffer;
  /** INT4: f16 bits [N, K/64] two per u32; NVFP4: E4M3 codes [N, K/16] four per u32. */
  wscales: GPUBuffer;
  /** f32 [M, R] (required when R > 0). */
  lora_act?: GPUBuffer;
  /** f16 bits [N, R], two per u32 (required when R > 0). */
  lora_up?: GPUBuffer;
  /**
   * f32 per-channel vectors: the bias [N] (when the shape has bias), then the per-channel weight
   * scale [N] (when it has `channelScale`); required when either is set.
   */
  bias?: GPUBuffer;
  /** ACT [M, N] output. */
  y: GPUBuffer;
}

// 128×128 outputs per workgroup: the fastest tile measured on an H100 (M=4096, K=3072).
const DEFAULT_TILE: W4A4Tile = { wgX: 16, wgY: 16 };
const MODE: Record<ActMode, number> = { int4: 0, int4_unsigned: 1, nvfp4: 2 };

/**
 * A compiled W4A4 GEMM for one shape.
 *
 * @example
 * ```ts ignore
 * import { Gpu } from "../../gpu/device.ts";
 * import { GemmW4A4Lowrank } from "./gemm_w4a4_lowrank.ts";
 * const gpu = await Gpu.create();
 * const op = await GemmW4A4Lowrank.create(gpu, {
 *   m: 64, k: 256, n: 256, r: 32, format: "int4", actMode: "int4", dtype: "f32",
 *   bias: true, gelu: false,
 * });
 * // qact, ascales, qweight, wscales, lora_act, lora_up, bias, y: GPUBuffers of the right sizes
 * gpu.run([op.dispatch({ qact, ascales, qweight, wscales, lora_act, lora_up, bias, y })]);
 * op.destroy();
 * ```
 */
export class GemmW4A4Lowrank {
  /** The validated shape this op was built for. */
  readonly shape: Readonly<GemmW4A4LowrankShape>;
  readonly #pipeline: GPUComputePipeline;
  readonly #params: GPUBuffer;
  readonly #dummy: GPUBuffer;
  readonly #grid: [number, number];

  private constructor(
    shape: GemmW4A4LowrankShape,
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

  /** Validate `shape`, build the pipeline and the uniform params. */
  static async create(gpu: Gpu, shape: GemmW4A4LowrankShape): Promise<GemmW4A4Lowrank> {
    const tile = checkShape(gpu, shape);
    const src = withActDtype(await loadWgsl(`./${NAME}.wgsl`, import.meta.url), shape.dtype);
    const pipeline = await gpu.pipeline(`${NAME}_${shape.dtype}`, src, {
      MODE: MODE[shape.actMode],
      GELU: shape.gelu ? 1 : 0,
      SATURATE: shape.dtype === "f16" ? 1 : 0,
      CHANNEL_SCALE: shape.channelScale ? 1 : 0,
      WG_X: tile.wgX,
      WG_Y: tile.wgY,
    }, NAME);
    const p = new DataView(new ArrayBuffer(32));
    p.setUint32(0, shape.m, true);
    p.setUint32(4, shape.k, true);
    p.setUint32(8, shape.n, true);
    p.setUint32(12, shape.r, true);
    p.setFloat32(16, shape.format === "nvfp4" ? shape.tensorScale! : 1, true);
    p.setUint32(20, shape.bias ? 1 : 0, true);
    const params = await gpu.uniform(`buffer ${NAME} params`, p);
    const dummy = await gpu.createBuffer(`buffer ${NAME} unused binding`, 16);
    const grid: [number, number] = [
      Math.ceil(shape.n / (8 * tile.wgX)),
      Math.ceil(shape.m / (8 * tile.wgY)),
    ];
    return new GemmW4A4Lowrank({ ...shape, tile }, pipeline, params, dummy, grid);
  }

  /** A dispatch computing Y; every buffer's size is checked against the shape first. */
  dispatch(buffers: GemmW4A4LowrankBuffers): Dispatch {
    const bindings = bindBuffers(bufferSizes(this.shape), buffers, {
      kernel: NAME,
      params: this.#params,
      // an unused binding takes the caller's buffer when one is given
      unused: (_name, given) => given ?? this.#dummy,
    });
    return { pipeline: this.#pipeline, bindings, workgroups: this.#grid };
  }

  /** Release the uniform buffer and the placeholder binding. */
  destroy(): void {
    this.#params.destroy();
    this.#dummy.destroy();
  }
}

/**
 * One-shot W4A4 GEMM: create, run (checked) and destroy.
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../../gpu/device.ts";
 * import { gemmW4A4Lowrank } from "./gemm_w4a4_lowrank.ts";
 * const gpu = await getGpu();
 * await gemmW4A4Lowrank(gpu, {
 *   m: 7, k: 64, n: 8, r: 0, format: "nvfp4", actMode: "nvfp4", dtype: "f32",
 *   bias: false, gelu: true, tensorScale: 0.01,
 * }, { qact, ascales, qweight, wscales, y });
 * ```
 */
export function gemmW4A4Lowrank(
  gpu: Gpu,
  shape: GemmW4A4LowrankShape,
  buffers: GemmW4A4LowrankBuffers,
): Promise<void> {
  return runOnce(gpu, { kernel: NAME, create: () => GemmW4A4Lowrank.create(gpu, shape), buffers });
}

type BufferName = keyof GemmW4A4LowrankBuffers;

/** Required bytes of each storage binding, in binding order (0 = unused, dummy bound). */
export function bufferSizes(s: GemmW4A4LowrankShape): BufferRow<BufferName>[] {
  const { m, k, n, r } = s;
  const g = groupSize(s.format);
  const dims = `[M=${m}, K=${k}]`;
  const wscaleBytes = s.format === "int4"
    ? 4 * Math.ceil((n * k) / g / 2)
    : 4 * Math.ceil((n * k) / g / 4);
  return [
    ["qact", m * k / 2, `${dims} 4-bit codes as u32 [M, K/8]`],
    ["ascales", (m * k / g) * 4, `[M=${m}, K/G=${k / g}] f32`],
    ["qweight", n * k / 2, `[N=${n}, K=${k}] 4-bit codes as u32 [N, K/8]`],
    [
      "wscales",
      wscaleBytes,
      `[N=${n}, K/G=${k / g}] ${s.format === "int4" ? "f16, 2 per u32" : "E4M3, 4 per u32"}`,
    ],
    ["lora_act", r > 0 ? m * r * 4 : 0, `[M=${m}, R=${r}] f32`],
    ["lora_up", r > 0 ? 4 * Math.ceil((n * r) / 2) : 0, `[N=${n}, R=${r}] f16, 2 per u32`],
    [
      "bias",
      ((s.bias ? 1 : 0) + (s.channelScale ? 1 : 0)) * n * 4,
      `[${s.bias ? "bias " : ""}${s.channelScale ? "channel scale " : ""}× N=${n}] f32`,
    ],
    ["y", m * n * actBytes(s.dtype), `[M=${m}, N=${n}] ${s.dtype}`],
  ];
}

function checkShape(gpu: Gpu, s: GemmW4A4LowrankShape): W4A4Tile {
  for (const d of ["m", "k", "n", "r"] as const) {
    const v = s[d];
    if (!Number.isInteger(v) || v < (d === "r" ? 0 : 1)) {
      throw new RangeError(
        `Cannot create ${NAME}: ${d.toUpperCase()} is ${v}, expected an integer ≥ ${
          d === "r" ? 0 : 1
        }`,
      );
    }
  }
  if (s.format !== "int4" && s.format !== "nvfp4") {
    throw new TypeError(`Cannot create ${NAME}: format "${s.format}", expected "int4" or "nvfp4"`);
  }
  const okMode = s.format === "nvfp4"
    ? s.actMode === "nvfp4"
    : s.actMode === "int4" || s.actMode === "int4_unsigned";
  if (!okMode) {
    throw new TypeError(
      `Cannot create ${NAME}: activation mode "${s.actMode}" does not match ${s.format} weights; ` +
        `use ${s.format === "nvfp4" ? '"nvfp4"' : '"int4" or "int4_unsigned"'}`,
    );
  }
  const g = groupSize(s.format);
  if (s.k % g !== 0) {
    throw new RangeError(
      `Cannot create ${NAME}: K=${s.k} is not a multiple of the ${s.format} group size ${g}`,
    );
  }
  if (s.format === "nvfp4" && !(Number.isFinite(s.tensorScale) && s.tensorScale! > 0)) {
    throw new RangeError(
      `Cannot create ${NAME}: nvfp4 needs a finite tensorScale > 0, got ${s.tensorScale}`,
    );
  }
  if (s.dtype !== "f32" && s.dtype !== "f16") {
    throw new TypeError(`Cannot create ${NAME}: dtype "${s.dtype}", expected "f16" or "f32"`);
  }
  if (s.dtype === "f16" && !gpu.caps.shaderF16) {
    throw new GpuFeatureError(
      `Cannot create ${NAME} with f16 output: the device lacks shader-f16; use dtype "f32"`,
    );
  }
  const t = s.tile ?? DEFAULT_TILE;
  const sizes = [8, 16, 32];
  const bm = 8 * t.wgY, bn = 8 * t.wgX;
  if (
    !sizes.includes(t.wgX) || !sizes.includes(t.wgY) ||
    t.wgX * t.wgY > gpu.caps.maxComputeInvocationsPerWorkgroup ||
    (bm + bn) * 100 + 1024 > gpu.caps.maxComputeWorkgroupStorageSize
  ) {
    throw new RangeError(
      `Cannot create ${NAME}: tile ${JSON.stringify(t)} is unsupported; wgX and wgY must be ` +
        "8, 16 or 32 within the device's workgroup limits",
    );
  }
  return t;
}
