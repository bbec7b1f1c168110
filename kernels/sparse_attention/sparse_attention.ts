/**
 * Launcher of `sparse_attention` (PAROAttention): block-sparse attention over per-head permuted
 * tokens, with INT8 or float Q·Kᵀ and INT8 or float P·V. The arithmetic is specified by
 * sparse_attention_ref.ts; the token orders, mask bits and CSR by layout.ts.
 *
 * Buffers (ACT = the shape's dtype, row-major; layout of qkv and o as flash_attention's):
 * - `qkv` [B·T, 3·H·D], `o` [B·T, H·D] (each query written to its original token row);
 * - `perm` u32 [H·T]: `perm[h·T + p]` is the token at permuted position p of head h;
 * - `offsets` u32 [H·nt + 1], `indices` u32: per (head, query tile) the key tiles to visit
 *   (nt = ⌈T/tile⌉); {@linkcode uploadSparsePlan} builds and uploads all three.
 *
 * Modes: QK and PV are each `"int8"` or `"f16"`. `"f16"` means *float*: the storage dtype's
 * values (f16 or f32) with f32 arithmetic, as flash_attention. INT8 modes add two prep passes
 * (sparse_attention_prep.wgsl) that quantise the operands once per call, in permuted order,
 * into scratch buffers the op owns.
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
  checkGrid,
} from "../_launch.ts";
import { actBytes, type ActDtype, loadWgsl, withActDtype } from "../_wgsl.ts";
import { checkQkvShape, FLASH_ATTENTION_HEAD_DIMS } from "../flash_attention/flash_attention.ts";
import { MASK_TILES, maskCsr, maskDensity } from "./layout.ts";

const NAME = "sparse_attention";

/** Q·Kᵀ arithmetic: INT8 codes (dot4I8Packed) or float ("f16": the storage dtype's values). */
export type SparseQk = "int8" | "f16";
/** P·V arithmetic: INT8 weights and V codes, or float ("f16": the storage dtype's values). */
export type SparsePv = "int8" | "f16";

const MODES: readonly string[] = ["int8", "f16"];

/** Mask tile sizes supported (tokens per tile = queries per workgroup). */
export const SPARSE_ATTENTION_TILES: readonly number[] = MASK_TILES;

/** Head dims supported: those of flash_attention. */
export const SPARSE_ATTENTION_HEAD_DIMS: readonly number[] = FLASH_ATTENTION_HEAD_DIMS;

/**
 * How the main pass walks a visited tile (see sparse_attention.wgsl): K in sub-tiles of `bkk`
 * keys, V in sub-tiles of `bkv` keys (both powers of two from 4 to the tile), and, for float
 * Q·Kᵀ, the head dim in chunks of `dc` channels (a multiple of 4 dividing D; `dc = D` keeps Q
 * resident). Ignored fields: `dc` for INT8 Q·Kᵀ.
 */
export interface SparseAttentionSubTiles {
  /** Keys per K sub-tile (a power of two from 4 to the tile). */
  bkk: number;
  /** Keys per V sub-tile (a power of two from 4 to the tile). */
  bkv: number;
  /** Head-dim channels per Q/K chunk for float Q·Kᵀ (a multiple of 4 dividing D). */
  dc: number;
}

/** Shape descriptor of one sparse attention call. */
export interface SparseAttentionShape {
  /** Batch B. */
  b: number;
  /** Tokens per batch T (any; the last tile may be partial). */
  t: number;
  /** Heads H. */
  h: number;
  /** Head dim D, one of {@linkcode SPARSE_ATTENTION_HEAD_DIMS}. */
  d: number;
  /** Storage dtype of qkv and o (f16 needs `shader-f16`). */
  dtype: ActDtype;
  /** Tokens per mask tile, one of {@linkcode SPARSE_ATTENTION_TILES}. */
  tile: number;
  /** Q·Kᵀ arithmetic: INT8 codes or float. */
  qk: SparseQk;
  /** P·V arithmetic: INT8 codes or float. */
  pv: SparsePv;
  /** Logit scale; default 1/√D. */
  scale?: number;
  /** Override the sub-tiling (tests, benchmarks); default: the largest that fits the device. */
  sub?: SparseAttentionSubTiles;
}

/** Buffers of one call, in binding order (binding 0 is the uniform params). */
export interface SparseAttentionBuffers {
  /** ACT [B·T, 3·H·D]: q | k | v, each head-major. */
  qkv: GPUBuffer;
  /** ACT [B·T, H·D] output. */
  o: GPUBuffer;
  /** u32 [H·T] token order per head. */
  perm: GPUBuffer;
  /** u32 [H·nt + 1] CSR row starts. */
  offsets: GPUBuffer;
  /** u32 key tiles, at least 4 bytes. */
  indices: GPUBuffer;
}

/**
 * Bytes of workgroup memory of the main pass (the sum in sparse_attention.wgsl's header). With
 * the smallest sub-tiles it is at most 10.2 KiB for tile ≤ 32 and 28.8 KiB for tile 64 at every
 * supported D and mode, within the WebGPU minimum (16 KiB) and llvmpipe's 32 KiB respectively.
 *
 * @example
 * ```ts
 * import { workgroupBytes } from "./sparse_attention.ts";
 * const s = { d: 128, tile: 64, qk: "int8", pv: "f16" } as const;
 * console.log(workgroupBytes(s, { bkk: 32, bkv: 8, dc: 128 })); // 28960 (fits 32 KiB)
 * ```
 */
export function workgroupBytes(
  s: Pick<SparseAttentionShape, "d" | "tile" | "qk" | "pv">,
  sub: SparseAttentionSubTiles,
): number {
  const { d, tile } = s;
  const q = s.qk === "int8" ? d * tile : 4 * sub.dc * tile;
  const k = s.qk === "int8" ? d * sub.bkk : 4 * sub.dc * sub.bkk;
  const v = s.pv === "int8" ? sub.bkv * d : 4 * sub.bkv * d;
  const pp = s.pv === "int8" ? tile * tile : 16;
  return q + Math.max(k, v) + 4 * tile * tile + pp + 4 * tile + 16;
}

function splits(tile: number): number[] {
  const out = [];
  for (let n = tile; n >= 4; n /= 2) out.push(n);
  return out;
}

function chunks(d: number): number[] {
  const out = [];
  for (let c = d; c >= 4; c -= 4) if (d % c === 0) out.push(c);
  return out;
}

/**
 * The default sub-tiling on this device, or null when none fits: the largest Q chunk (float
 * Q·Kᵀ), then the largest V sub-tile, then the largest K sub-tile within the workgroup memory
 * limit. Chosen by reasoning, not yet measured on a GPU.
 */
export function defaultSubTiles(
  gpu: Gpu,
  s: Pick<SparseAttentionShape, "d" | "tile" | "qk" | "pv">,
): SparseAttentionSubTiles | null {
  const limit = gpu.caps.maxComputeWorkgroupStorageSize;
  const fits = (sub: SparseAttentionSubTiles) => workgroupBytes(s, sub) <= limit;
  for (const dc of s.qk === "int8" ? [s.d] : chunks(s.d)) {
    if (!fits({ dc, bkk: 4, bkv: 4 })) continue;
    const bkv = splits(s.tile).find((bkv) => fits({ dc, bkk: 4, bkv }))!;
    const bkk = splits(s.tile).find((bkk) => fits({ dc, bkk, bkv }))!;
    return { bkk, bkv, dc };
  }
  return null;
}

/** Where the prep writes what (see sparse_attention_prep.wgsl): sizes and offsets. */
interface Scratch {
  nt: number;
  nchunk: number;
  chunk: number;
  /** u32 words of the Q codes (the K codes follow). */
  kbase: number;
  skbase: number;
  svbase: number;
  psbase: number;
  pmbase: number;
  qk8Bytes: number;
  v8Bytes: number;
  scalesBytes: number;
}

function scratch(s: SparseAttentionShape): Scratch {
  const nt = Math.ceil(s.t / s.tile);
  const bh = s.b * s.h;
  const chunk = 256 * Math.ceil(s.t / (256 * 64)); // at most 64 stats chunks per (b, h)
  const nchunk = Math.ceil(s.t / chunk);
  const ntot = Math.ceil((bh * nt) / 4) * 4;
  const svbase = 2 * ntot, psbase = svbase + bh * s.d, pmbase = psbase + bh * nchunk * s.d;
  const kbase = (bh * nt * s.tile * s.d) / 4;
  const anyInt8 = s.qk === "int8" || s.pv === "int8";
  return {
    nt,
    nchunk,
    chunk,
    kbase,
    skbase: ntot,
    svbase,
    psbase,
    pmbase,
    qk8Bytes: s.qk === "int8" ? 8 * kbase : 16,
    v8Bytes: s.pv === "int8" ? 4 * kbase : 16,
    scalesBytes: anyInt8 ? 4 * (pmbase + bh * nchunk * s.d) : 16,
  };
}

/**
 * A compiled sparse attention for one shape, owning its scratch buffers (INT8 Q/K/V codes and
 * their scales) and uniform params.
 *
 * @example
 * ```ts ignore
 * import { Gpu } from "../../gpu/device.ts";
 * import { denseMasks, tokenOrder } from "./layout.ts";
 * import { SparseAttention, uploadSparsePlan } from "./sparse_attention.ts";
 * const gpu = await Gpu.create();
 * const shape = { b: 1, t: 64, h: 2, d: 64, dtype: "f32", tile: 16, qk: "int8", pv: "f16" } as const;
 * const perm = new Uint32Array([...tokenOrder("col", 8, 8), ...tokenOrder("block4", 8, 8)]);
 * const plan = await uploadSparsePlan(gpu, "example", perm, denseMasks(2, 4), 2, 4);
 * const op = await SparseAttention.create(gpu, shape);
 * const qkv = await gpu.upload("qkv", new Float32Array(64 * 3 * 2 * 64).fill(0.5));
 * const o = await gpu.createBuffer("o", 64 * 2 * 64 * 4);
 * await gpu.runChecked("attention", op.dispatch({ qkv, o, ...plan }));
 * console.log(new Float32Array(await gpu.read(o))[0]); // 0.5 (the mean of equal values)
 * op.destroy();
 * gpu.destroy(qkv, o, plan.perm, plan.offsets, plan.indices);
 * ```
 */
export class SparseAttention {
  /** The shape this op was compiled for. */
  readonly shape: Readonly<SparseAttentionShape>;
  /** Tiles per side nt = ⌈T/tile⌉. */
  readonly tiles: number;
  /** The sub-tiling in use. */
  readonly sub: Readonly<SparseAttentionSubTiles>;
  readonly #pipelines: GPUComputePipeline[]; // [main, stats, prep] (int8 modes) or [main]
  readonly #params: GPUBuffer;
  readonly #scratch: Scratch;
  readonly #qk8: GPUBuffer;
  readonly #v8: GPUBuffer;
  readonly #scales: GPUBuffer;

  private constructor(
    shape: SparseAttentionShape,
    sub: SparseAttentionSubTiles,
    pipelines: GPUComputePipeline[],
    params: GPUBuffer,
    buffers: [GPUBuffer, GPUBuffer, GPUBuffer],
  ) {
    this.shape = shape;
    this.sub = sub;
    this.#scratch = scratch(shape);
    this.tiles = this.#scratch.nt;
    this.#pipelines = pipelines;
    this.#params = params;
    [this.#qk8, this.#v8, this.#scales] = buffers;
  }

  /** Validate `shape`, pick the sub-tiling, build the pipelines, params and scratch buffers. */
  static async create(gpu: Gpu, shape: SparseAttentionShape): Promise<SparseAttention> {
    const sub = checkShape(gpu, shape);
    const { b, t, h, d, tile, dtype } = shape;
    const sc = scratch(shape);
    for (const grid of [[sc.nt, h, b], [sc.nchunk, h, b]]) {
      checkGrid(gpu, grid, {
        kernel: NAME,
        verb: "build",
        dims: `[B=${b}, T=${t}, H=${h}, tile=${tile}]`,
        fix: "split the batch or use a larger tile",
      });
    }
    checkBindingSizes(gpu, [
      ["qk8", sc.qk8Bytes, `[2, B·H=${b * h}, T=${sc.nt * tile}, D=${d}] int8`],
      ["v8", sc.v8Bytes, `[B·H=${b * h}, T=${sc.nt * tile}, D=${d}] int8`],
      ["scales", sc.scalesBytes, "f32"],
    ], { kernel: NAME, elementBytes: 4, maxLog2: 32 });
    const qkInt8 = shape.qk === "int8" ? 1 : 0, pvInt8 = shape.pv === "int8" ? 1 : 0;
    const main = withActDtype(await loadWgsl(`./${NAME}.wgsl`, import.meta.url), dtype);
    const kPart = qkInt8 ? d * sub.bkk : 4 * sub.dc * sub.bkk;
    const vPart = pvInt8 ? sub.bkv * d : 4 * sub.bkv * d;
    const constants = {
      D: d,
      TILE: tile,
      BKK: sub.bkk,
      BKV: sub.bkv,
      DC: sub.dc,
      QK_INT8: qkInt8,
      PV_INT8: pvInt8,
      Q_LEN: (qkInt8 ? d * tile : 4 * sub.dc * tile) / 16,
      KV_LEN: Math.max(kPart, vPart) / 16,
      PP_LEN: pvInt8 ? (tile * tile) / 16 : 1,
    };
    const pipelines = [await gpu.pipeline(`${NAME}_${dtype}`, main, constants, NAME)];
    if (qkInt8 || pvInt8) {
      const prep = withActDtype(await loadWgsl(`./${NAME}_prep.wgsl`, import.meta.url), dtype);
      const c = { D: d, TILE: tile, QK_INT8: qkInt8, PV_INT8: pvInt8 };
      for (const entry of ["stats", "prep"]) {
        pipelines.push(
          await gpu.pipeline(`${NAME}_${entry}_${dtype}`, prep, c, `${NAME}_${entry}`),
        );
      }
    }
    const words = new Uint32Array([
      t,
      h,
      sc.nt,
      0,
      sc.skbase,
      sc.svbase,
      sc.psbase,
      sc.pmbase,
      sc.kbase,
      sc.nchunk,
      sc.chunk,
      0,
    ]);
    new Float32Array(words.buffer, 12, 1)[0] = (shape.scale ?? 1 / Math.sqrt(d)) * Math.LOG2E;
    const params = await gpu.uniform(`buffer ${NAME} params`, words);
    const bufs: GPUBuffer[] = [];
    try {
      for (const [name, bytes] of [["qk8", sc.qk8Bytes], ["v8", sc.v8Bytes]] as const) {
        bufs.push(await gpu.createBuffer(`buffer ${NAME} ${name}`, bytes));
      }
      bufs.push(await gpu.createBuffer(`buffer ${NAME} scales`, sc.scalesBytes));
    } catch (e) {
      gpu.destroy(params, ...bufs);
      throw e;
    }
    const owned = bufs as [GPUBuffer, GPUBuffer, GPUBuffer];
    return new SparseAttention({ ...shape, sub: { ...sub } }, sub, pipelines, params, owned);
  }

  /**
   * The dispatches of one call, in order: the two prep passes (INT8 modes only), then the main
   * pass. Every buffer's size is checked against the shape first.
   */
  dispatch(buffers: SparseAttentionBuffers): Dispatch[] {
    checkDistinct(buffers, {
      kernel: NAME,
      pairs: [["o", "qkv"], ["o", "perm"], ["o", "offsets"], ["o", "indices"]],
    });
    const bound = bindBuffers(bufferSizes(this.shape), buffers, {
      kernel: NAME,
      params: this.#params,
    });
    const { b, h } = this.shape;
    const [params, qkv, , perm] = bound;
    const [main, stats, prep] = this.#pipelines;
    const grid: [number, number, number] = [this.tiles, h, b];
    const out: Dispatch[] = [];
    if (stats) {
      out.push({
        pipeline: stats,
        bindings: [params, qkv, this.#scales],
        workgroups: [this.#scratch.nchunk, h, b],
      });
      out.push({
        pipeline: prep,
        bindings: [params, qkv, this.#scales, perm, this.#qk8, this.#v8],
        workgroups: grid,
      });
    }
    out.push({
      pipeline: main,
      bindings: [...bound, this.#qk8, this.#v8, this.#scales],
      workgroups: grid,
    });
    return out;
  }

  /** Release the uniform and scratch buffers. */
  destroy(): void {
    for (const b of [this.#params, this.#qk8, this.#v8, this.#scales]) b.destroy();
  }
}

/**
 * One-shot sparse attention: create, run (checked) and destroy.
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../../gpu/device.ts";
 * import { sparseAttention } from "./sparse_attention.ts";
 * const gpu = await getGpu();
 * // qkv, o as for flashAttention; perm, offsets, indices from uploadSparsePlan
 * const shape = { b: 1, t: 64, h: 2, d: 64, dtype: "f16", tile: 16, qk: "int8", pv: "int8" } as const;
 * await sparseAttention(gpu, shape, { qkv, o, perm, offsets, indices });
 * ```
 */
export async function sparseAttention(
  gpu: Gpu,
  shape: SparseAttentionShape,
  buffers: SparseAttentionBuffers,
): Promise<void> {
  const op = await SparseAttention.create(gpu, shape);
  try {
    await gpu.runChecked(`run ${NAME}`, op.dispatch(buffers));
  } finally {
    op.destroy();
  }
}

/**
 * Check `perm` (a permutation of 0..T−1 per head), build the CSR of `heads` masks of nt×nt tiles
 * (layout.ts `maskCsr`) and upload perm, offsets and indices (indices padded to one word when
 * every row is empty). The caller destroys the buffers.
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../../gpu/device.ts";
 * import { denseMasks, tileCount, tokenOrder } from "./layout.ts";
 * import { uploadSparsePlan } from "./sparse_attention.ts";
 * const gpu = await getGpu();
 * const nt = tileCount(64, 16);
 * const plan = await uploadSparsePlan(gpu, "layer0", tokenOrder("col", 8, 8), denseMasks(1, nt), 1, nt);
 * console.log(plan.density); // 1
 * gpu.destroy(plan.perm, plan.offsets, plan.indices);
 * ```
 */
export async function uploadSparsePlan(
  gpu: Gpu,
  name: string,
  perm: Uint32Array,
  masks: Uint8Array,
  heads: number,
  nt: number,
): Promise<{ perm: GPUBuffer; offsets: GPUBuffer; indices: GPUBuffer; density: number }> {
  if (!Number.isInteger(heads) || heads < 1 || !Number.isInteger(nt) || nt < 1) {
    throw new RangeError(
      `Cannot upload sparse plan ${name}: heads=${heads} and nt=${nt} must be positive integers`,
    );
  }
  const t = perm.length / heads;
  if (!Number.isInteger(t) || !SPARSE_ATTENTION_TILES.some((n) => Math.ceil(t / n) === nt)) {
    throw new RangeError(
      `Cannot upload sparse plan ${name}: perm has ${perm.length} entries, not heads=${heads} ` +
        `× T tokens with T cut into nt=${nt} tiles of ${SPARSE_ATTENTION_TILES.join(", ")} tokens`,
    );
  }
  const seen = new Uint8Array(t);
  for (let h = 0; h < heads; h++) {
    seen.fill(0);
    for (let p = 0; p < t; p++) {
      const tok = perm[h * t + p];
      if (tok >= t || seen[tok]) {
        throw new RangeError(
          `Cannot upload sparse plan ${name}: perm of head ${h} is not a permutation of ` +
            `0..${t - 1} (position ${p} holds ${tok})`,
        );
      }
      seen[tok] = 1;
    }
  }
  const csr = maskCsr(masks, heads, nt);
  const indices = csr.indices.length ? csr.indices : new Uint32Array(1);
  const bufs: GPUBuffer[] = [];
  try {
    bufs.push(await gpu.upload(`buffer ${name} perm`, perm));
    bufs.push(await gpu.upload(`buffer ${name} offsets`, csr.offsets));
    bufs.push(await gpu.upload(`buffer ${name} indices`, indices));
  } catch (e) {
    gpu.destroy(...bufs);
    throw e;
  }
  const [p, offsets, idx] = bufs;
  return { perm: p, offsets, indices: idx, density: maskDensity(masks, heads, nt) };
}

/** Required byte sizes of the caller's buffers: [name, bytes, description]. */
export function bufferSizes(
  s: SparseAttentionShape,
): BufferRow<keyof SparseAttentionBuffers>[] {
  const rows = s.b * s.t;
  const e = actBytes(s.dtype);
  const nt = Math.ceil(s.t / s.tile);
  return [
    ["qkv", rows * 3 * s.h * s.d * e, `[B·T=${rows}, 3·H·D=${3 * s.h * s.d}] ${s.dtype}`],
    ["o", rows * s.h * s.d * e, `[B·T=${rows}, H·D=${s.h * s.d}] ${s.dtype}`],
    ["perm", 4 * s.h * s.t, `[H·T=${s.h * s.t}] u32`],
    ["offsets", 4 * (s.h * nt + 1), `[H·nt+1=${s.h * nt + 1}] u32`],
    ["indices", 4, "[≥ 1] u32"],
  ];
}

/** Validate the shape (before any GPU work) and return the sub-tiling to use. */
function checkShape(gpu: Gpu, s: SparseAttentionShape): SparseAttentionSubTiles {
  checkQkvShape(gpu, NAME, s);
  checkDims(s, { kernel: NAME, keys: ["tile"] });
  if (!SPARSE_ATTENTION_TILES.includes(s.tile)) {
    throw new RangeError(
      `Cannot build ${NAME}: tile=${s.tile} is unsupported; use one of ` +
        SPARSE_ATTENTION_TILES.join(", "),
    );
  }
  for (const key of ["qk", "pv"] as const) {
    if (!MODES.includes(s[key])) {
      throw new RangeError(
        `Cannot build ${NAME}: ${key}="${s[key]}" is unsupported; use "int8" or "f16" (float)`,
      );
    }
  }
  const c = gpu.caps;
  const nt = (s.tile / 4) * (s.d / 8);
  if (nt > Math.min(c.maxComputeInvocationsPerWorkgroup, c.maxComputeWorkgroupSizeX)) {
    throw new RangeError(
      `Cannot build ${NAME}: tile=${s.tile} at D=${s.d} needs ${nt} invocations per ` +
        "workgroup, over this device's limit; use a smaller tile",
    );
  }
  const modes = `(qk ${s.qk}, pv ${s.pv})`;
  if (s.sub) {
    const { bkk, bkv, dc } = s.sub;
    const dcOk = s.qk === "int8" || chunks(s.d).includes(dc);
    if (!splits(s.tile).includes(bkk) || !splits(s.tile).includes(bkv) || !dcOk) {
      throw new RangeError(
        `Cannot build ${NAME}: sub-tiles ${JSON.stringify(s.sub)} are unsupported at ` +
          `tile=${s.tile}, D=${s.d}; bkk and bkv must be powers of two from 4 to the tile, dc a ` +
          "multiple of 4 dividing D",
      );
    }
    const sub = s.qk === "int8" ? { bkk, bkv, dc: s.d } : { bkk, bkv, dc };
    if (workgroupBytes(s, sub) > c.maxComputeWorkgroupStorageSize) {
      throw new RangeError(
        `Cannot build ${NAME}: sub-tiles ${JSON.stringify(s.sub)} at tile=${s.tile}, D=${s.d} ` +
          `${modes} need ${workgroupBytes(s, sub)} bytes of workgroup memory, over this ` +
          `device's ${c.maxComputeWorkgroupStorageSize}; use smaller sub-tiles`,
      );
    }
    return sub;
  }
  const sub = defaultSubTiles(gpu, s);
  if (sub) return sub;
  const least = workgroupBytes(s, { bkk: 4, bkv: 4, dc: 4 });
  throw new RangeError(
    `Cannot build ${NAME}: tile=${s.tile} at D=${s.d} ${modes} needs at least ${least} bytes ` +
      `of workgroup memory, this device allows ${c.maxComputeWorkgroupStorageSize}; use a ` +
      "smaller tile",
  );
}
