/**
 * Launcher of `flash_attention`: DiT self-attention `O = softmax(Q·Kᵀ·scale)·V` per (batch, head)
 * with an online softmax in f32, so the T×T matrix never exists in memory (see
 * flash_attention.wgsl for the tiling).
 *
 * Buffers (ACT = the shape's dtype, row-major):
 * - `qkv` [B·T, 3·H·D]: the fused qkv projection output as it comes out of the GEMM. For token row
 *   `b·T + t`, head `h` has q at columns `h·D .. h·D+D-1`, k at `H·D + h·D ..` and v at
 *   `2·H·D + h·D ..`, i.e. Q, K, V are each [B, T, H, D] slices of it.
 * - `o` [B·T, H·D]: head `h` at columns `h·D ..`, ready for the proj GEMM.
 *
 * Optional logit terms for the text encoders (each a shape option, compiled in only when asked):
 * `relativeBias` (T5: `biasTable` f32 [H, NB] and `biasBucket` u32 [2T−1], the bucket of offset
 * key − query + T − 1; the bias is added after the scale), `causal` (CLIP: query i sees keys
 * j ≤ i) and `keyMask` (`keyMask` u32 [B, T], 0 = padding key, skipped). A skipped key has
 * probability exactly 0; a query whose keys are all skipped outputs zeros.
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

const NAME = "flash_attention";

/**
 * Head dims the kernel is built for (DiT-XL uses 72 = 1152/16; the autoencoders' single-head
 * mid-block attention uses D = channels, 256 or 512 in released VAEs).
 */
export const FLASH_ATTENTION_HEAD_DIMS: readonly number[] = [32, 64, 72, 128, 256, 512];

/**
 * Workgroup tile: `bq` queries per workgroup (a multiple of 4), keys walked `bk` at a time (a
 * multiple of 4). The workgroup has (bq/4)·(D/8) invocations.
 */
export interface FlashAttentionTile {
  /** Queries per workgroup (a multiple of 4). */
  bq: number;
  /** Keys per step of the walk over K/V (a multiple of 4). */
  bk: number;
}

/** Shape descriptor of one attention call. */
export interface FlashAttentionShape {
  /** Batch B. */
  b: number;
  /** Tokens per batch T (any, not a multiple of the tile). */
  t: number;
  /** Heads H. */
  h: number;
  /** Head dim D, one of {@linkcode FLASH_ATTENTION_HEAD_DIMS}. */
  d: number;
  /** Storage dtype of qkv and o (f16 needs the `shader-f16` feature). */
  dtype: ActDtype;
  /** Logit scale; default 1/√D. */
  scale?: number;
  /** Override the tile (tests, benchmarks); default: the first of the D's list that fits. */
  tile?: FlashAttentionTile;
  /** Query i attends to keys j ≤ i only (CLIP). Default false. */
  causal?: boolean;
  /** Bind `keyMask` [B, T] u32: keys where it is 0 are skipped (padding). Default false. */
  keyMask?: boolean;
  /**
   * Add a relative position bias (T5): bind `biasTable` f32 [H, buckets] and `biasBucket` u32
   * [2T − 1] (entry `k − q + T − 1` is the bucket of key k for query q). Default: none.
   */
  relativeBias?: { buckets: number };
}

/** Buffers of one dispatch, in binding order (binding 0 is the uniform params). */
export interface FlashAttentionBuffers {
  /** ACT [B·T, 3·H·D]: q | k | v, each head-major. */
  qkv: GPUBuffer;
  /** ACT [B·T, H·D] output. */
  o: GPUBuffer;
  /** f32 [H, buckets] relative-bias table (with `relativeBias`). */
  biasTable?: GPUBuffer;
  /** u32 [2T − 1] bucket of each key − query offset (with `relativeBias`). */
  biasBucket?: GPUBuffer;
  /** u32 [B, T], 0 = skip the key (with `keyMask`). */
  keyMask?: GPUBuffer;
}

// Tiles per D, preferred first: the first fits 48 KiB of workgroup memory (an H100 under
// Vulkan), the next ones less (llvmpipe 32 KiB, the WebGPU minimum 16 KiB). Chosen by reasoning,
// not yet measured on a GPU (the benchmark's --tiles compares them). bk = D/2 gives each
// invocation one 4×4 logit tile; D=32 has two, D=128 (bk=32 to fit) leaves half of the
// invocations idle during Q·Kᵀ.
const TILES: Record<number, [number, number][]> = {
  32: [[64, 32], [32, 32], [16, 16]],
  64: [[64, 32], [32, 32], [16, 32]],
  72: [[64, 36], [32, 36], [16, 36], [16, 16]],
  128: [[32, 32], [16, 32], [8, 16]],
  // Autoencoder mid-block attention (one head, D = channels): Q and the K/V tile dominate the
  // workgroup memory, so the tiles are narrow; the smallest needs 24.7 KiB (D=512) and 16.7 KiB
  // (D=256), over the 16 KiB WebGPU minimum but within llvmpipe's 32 KiB.
  256: [[16, 16], [16, 8], [8, 8]],
  512: [[8, 8], [8, 4]],
};

/** Bytes of workgroup memory of a tile: qt + kv + pt + rs, all f32. */
export function tileWorkgroupBytes(d: number, tile: FlashAttentionTile): number {
  return 4 * (d * tile.bq + tile.bk * d + tile.bk * tile.bq + tile.bq);
}

function tileFits(gpu: Gpu, d: number, t: FlashAttentionTile): boolean {
  const c = gpu.caps;
  return tileWorkgroupBytes(d, t) <= c.maxComputeWorkgroupStorageSize &&
    (t.bq / 4) * (d / 8) <=
      Math.min(c.maxComputeInvocationsPerWorkgroup, c.maxComputeWorkgroupSizeX);
}

/**
 * The built-in tiles for head dim `d` that fit this device, preferred first (the first is the
 * default); benchmarks try the others.
 */
export function candidateTiles(gpu: Gpu, d: number): FlashAttentionTile[] {
  return (TILES[d] ?? []).map(([bq, bk]) => ({ bq, bk })).filter((t) => tileFits(gpu, d, t));
}

/**
 * A compiled attention kernel for one shape.
 *
 * @example
 * ```ts ignore
 * import { Gpu } from "../../gpu/device.ts";
 * import { FlashAttention } from "./flash_attention.ts";
 * const gpu = await Gpu.create();
 * const shape = { b: 2, t: 256, h: 16, d: 72, dtype: "f16" } as const;
 * const op = await FlashAttention.create(gpu, shape);
 * // qkv: the [B·T, 3·H·D] output of the qkv GEMM; o: [B·T, H·D] for the proj GEMM
 * const qkv = await gpu.upload("qkv", new Float16Array(2 * 256 * 3 * 16 * 72).fill(0.5));
 * const o = await gpu.createBuffer("o", 2 * 256 * 16 * 72 * 2);
 * await gpu.runChecked("attention", [op.dispatch({ qkv, o })]);
 * console.log(new Float16Array(await gpu.read(o))[0]); // 0.5 (the mean of equal values)
 * op.destroy();
 * gpu.destroy(qkv, o);
 * ```
 */
export class FlashAttention {
  /** The shape this kernel was compiled for. */
  readonly shape: Readonly<FlashAttentionShape>;
  /** The tile in use. */
  readonly tile: Readonly<FlashAttentionTile>;
  readonly #pipeline: GPUComputePipeline;
  readonly #params: GPUBuffer;
  readonly #grid: [number, number, number];
  readonly #unused: GPUBuffer; // bound where an optional term is off

  private constructor(
    shape: FlashAttentionShape,
    tile: FlashAttentionTile,
    pipeline: GPUComputePipeline,
    params: GPUBuffer,
    grid: [number, number, number],
    unused: GPUBuffer,
  ) {
    this.shape = shape;
    this.tile = tile;
    this.#pipeline = pipeline;
    this.#params = params;
    this.#grid = grid;
    this.#unused = unused;
  }

  /** Validate `shape`, pick the tile, build the pipeline and the uniform params. */
  static async create(gpu: Gpu, shape: FlashAttentionShape): Promise<FlashAttention> {
    const tile = checkShape(gpu, shape);
    const { b, t, h, d, dtype } = shape;
    const grid: [number, number, number] = [Math.ceil(t / tile.bq), h, b];
    checkGrid(gpu, grid, {
      kernel: NAME,
      verb: "build",
      dims: `[B=${b}, T=${t}, H=${h}]`,
      fix: "split the batch",
    });
    const src = withActDtype(await loadWgsl(`./${NAME}.wgsl`, import.meta.url), dtype);
    const constants: Record<string, number> = { D: d, BQ: tile.bq, BK: tile.bk };
    if (shape.causal) constants.CAUSAL = 1;
    if (shape.keyMask) constants.KEY_MASK = 1;
    if (shape.relativeBias) {
      constants.REL_BIAS = 1;
      constants.NB = shape.relativeBias.buckets;
    }
    const pipeline = await gpu.pipeline(`${NAME}_${dtype}`, src, constants, NAME);
    const scale = shape.scale ?? 1 / Math.sqrt(d);
    const words = new Uint32Array(4);
    words[0] = t;
    words[1] = h;
    new Float32Array(words.buffer, 8, 1)[0] = scale * Math.LOG2E;
    const params = await gpu.uniform(`buffer ${NAME} params`, words);
    const unused = await gpu.createBuffer(`buffer ${NAME} unused`, 4);
    return new FlashAttention({ ...shape }, tile, pipeline, params, grid, unused);
  }

  /** A dispatch computing `o`; both buffers' sizes are checked against the shape first. */
  dispatch(buffers: FlashAttentionBuffers): Dispatch {
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

/**
 * One-shot attention: create, run (checked) and destroy.
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../../gpu/device.ts";
 * import { flashAttention } from "./flash_attention.ts";
 * const gpu = await getGpu();
 * // qkv: [2·64, 3·4·32] f32, o: [2·64, 4·32] f32 GPUBuffers
 * await flashAttention(gpu, { b: 2, t: 64, h: 4, d: 32, dtype: "f32" }, { qkv, o });
 * ```
 */
export function flashAttention(
  gpu: Gpu,
  shape: FlashAttentionShape,
  buffers: FlashAttentionBuffers,
): Promise<void> {
  return runOnce(gpu, { kernel: NAME, create: () => FlashAttention.create(gpu, shape), buffers });
}

/** Required byte sizes of the buffers: [name, bytes, description]. */
export function bufferSizes(
  s: FlashAttentionShape,
): BufferRow<keyof FlashAttentionBuffers>[] {
  const rows = s.b * s.t;
  const e = actBytes(s.dtype);
  const nb = s.relativeBias?.buckets ?? 0;
  return [
    ["qkv", rows * 3 * s.h * s.d * e, `[B·T=${rows}, 3·H·D=${3 * s.h * s.d}] ${s.dtype}`],
    ["o", rows * s.h * s.d * e, `[B·T=${rows}, H·D=${s.h * s.d}] ${s.dtype}`],
    ["biasTable", s.h * nb * 4, `[H=${s.h}, buckets=${nb}] f32`],
    ["biasBucket", nb ? (2 * s.t - 1) * 4 : 0, `[2T−1=${2 * s.t - 1}] u32`],
    ["keyMask", s.keyMask ? rows * 4 : 0, `[B=${s.b}, T=${s.t}] u32`],
  ];
}

/**
 * The checks every attention kernel over the fused qkv layout makes (flash and sparse): positive
 * integer dims, a supported head dim, u32-indexable qkv, dtype, scale, and shader-f16 for f16.
 */
export function checkQkvShape(
  gpu: Gpu,
  kernel: string,
  s: Pick<FlashAttentionShape, "b" | "t" | "h" | "d" | "dtype" | "scale">,
): void {
  checkDims(s, { kernel, keys: ["b", "t", "h", "d"] });
  if (!FLASH_ATTENTION_HEAD_DIMS.includes(s.d)) {
    throw new RangeError(
      `Cannot build ${kernel}: head dim D=${s.d} is unsupported; use one of ` +
        FLASH_ATTENTION_HEAD_DIMS.join(", "),
    );
  }
  if (s.b * s.t * 3 * s.h * s.d >= 2 ** 32) {
    throw new RangeError(
      `Cannot build ${kernel}: qkv [B·T=${s.b * s.t}, 3·H·D=${3 * s.h * s.d}] has 2^32 elements ` +
        "or more (u32 indices); split the batch",
    );
  }
  checkDtype(kernel, s.dtype);
  if (s.scale !== undefined && !(Number.isFinite(s.scale) && s.scale > 0)) {
    throw new RangeError(
      `Cannot build ${kernel}: scale=${s.scale} must be a finite positive number`,
    );
  }
  checkShaderF16(gpu, kernel, s.dtype);
}

/** Validate the shape (before any GPU work) and return the tile to use. */
function checkShape(gpu: Gpu, s: FlashAttentionShape): FlashAttentionTile {
  checkQkvShape(gpu, NAME, s);
  const nb = s.relativeBias?.buckets;
  if (nb !== undefined && !(Number.isInteger(nb) && nb >= 1 && nb <= 4096)) {
    throw new RangeError(
      `Cannot build ${NAME}: relativeBias.buckets=${nb} must be an integer from 1 to 4096`,
    );
  }
  const fits = (t: FlashAttentionTile) => tileFits(gpu, s.d, t);
  if (s.tile) {
    const { bq, bk } = s.tile;
    const ok = (v: number) => Number.isInteger(v) && v >= 4 && v <= 256 && v % 4 === 0;
    if (!ok(bq) || !ok(bk)) {
      throw new RangeError(
        `Cannot build ${NAME}: tile ${JSON.stringify(s.tile)} is unsupported; bq and bk must ` +
          "be multiples of 4 from 4 to 256",
      );
    }
    if (!fits(s.tile)) {
      throw new RangeError(
        `Cannot build ${NAME}: tile ${JSON.stringify(s.tile)} at D=${s.d} needs ` +
          `${tileWorkgroupBytes(s.d, s.tile)} bytes of workgroup memory and ` +
          `${(bq / 4) * (s.d / 8)} invocations, over this device's limits; use a smaller tile`,
      );
    }
    return { bq, bk };
  }
  const tiles = candidateTiles(gpu, s.d);
  if (tiles.length) return tiles[0];
  const [bq, bk] = TILES[s.d].at(-1)!;
  throw new RangeError(
    `Cannot build ${NAME}: D=${s.d} needs at least ${tileWorkgroupBytes(s.d, { bq, bk })} ` +
      `bytes of workgroup memory, this device allows ${gpu.caps.maxComputeWorkgroupStorageSize}`,
  );
}
