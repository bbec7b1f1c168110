/**
 * The one definition of the sparse-attention layouts (PAROAttention), shared by the quantizer's
 * calibration (quant/paro.ts), the pre-quantized file, the runtime and the kernel:
 *
 * - **Token order.** Per (layer, head) the image tokens of a `gridH × gridW` latent grid (token
 *   index `y·gridW + x`) are visited in one of {@link TOKEN_ORDERS}; `perm[p]` is the token at
 *   permuted position `p`. `denseTokens` leading tokens (class/text tokens of models that put them
 *   in the sequence) keep their place: `perm[p] = p` for `p < denseTokens`, and the grid's tokens
 *   follow, shifted by `denseTokens`.
 * - **Block mask.** Over the permuted sequence cut into tiles of `tile` tokens (`nt = ⌈T/tile⌉`
 *   per side), bit `(i, j)` says whether query tile `i` visits key tile `j`. Bits are row-major
 *   (`i·nt + j`), least significant bit first, `⌈nt²/8⌉` bytes per head.
 * - **CSR.** What the kernel reads: per (head, query tile) the list of key tiles to visit,
 *   `indices[offsets[h·nt + i] .. offsets[h·nt + i + 1])`, ascending.
 *
 * A query tile whose row is empty visits nothing and its outputs are **zero** (specified, tested;
 * the calibration never produces such rows, see quant/paro.ts).
 *
 * @example
 * ```ts
 * import { maskCsr, maskSet, tokenOrder } from "./layout.ts";
 * console.log([...tokenOrder("col", 2, 2)]); // [0, 2, 1, 3]
 * const nt = 2, bits = new Uint8Array(1);
 * maskSet(bits, nt, 0, 0);
 * maskSet(bits, nt, 1, 1);
 * console.log(maskCsr(bits, 1, nt)); // { offsets: [0, 1, 2], indices: [0, 1] }
 * ```
 *
 * @module
 */

/** Mask tile sizes (tokens per side) the sparse kernel is built for. */
export const MASK_TILES: readonly number[] = [8, 16, 32, 64];

/** Token orders the calibration chooses from (per layer and head). */
export const TOKEN_ORDERS = ["row", "col", "block2", "block4", "block8"] as const;

/** One of {@link TOKEN_ORDERS}. */
export type TokenOrder = (typeof TOKEN_ORDERS)[number];

/** Side of the block of a block-local order (0 for row/col). */
export function orderBlock(order: TokenOrder): number {
  return order.startsWith("block") ? Number(order.slice(5)) : 0;
}

/**
 * Whether `order` is a distinct order of a `gridH × gridW` grid: block orders need the block to
 * divide both sides and to be smaller than the grid (a block as large as the grid is `row`).
 */
export function orderApplies(order: TokenOrder, gridH: number, gridW: number): boolean {
  const n = orderBlock(order);
  if (n === 0) return order === "row" || gridH > 1 && gridW > 1;
  return gridH % n === 0 && gridW % n === 0 && (n < gridH || n < gridW);
}

/**
 * `perm[p]` = the token at permuted position `p`, for `denseTokens` leading tokens followed by a
 * `gridH × gridW` grid (row-major token numbering). Throws a RangeError for an order that does
 * not apply to the grid (see {@link orderApplies}).
 */
export function tokenOrder(
  order: TokenOrder,
  gridH: number,
  gridW: number,
  denseTokens = 0,
): Uint32Array {
  if (!TOKEN_ORDERS.includes(order)) {
    throw new RangeError(`Unknown token order "${order}"; use one of ${TOKEN_ORDERS.join(", ")}`);
  }
  if (!orderApplies(order, gridH, gridW)) {
    throw new RangeError(`Token order "${order}" does not apply to a ${gridH}×${gridW} grid`);
  }
  const n = gridH * gridW;
  const perm = new Uint32Array(denseTokens + n);
  for (let p = 0; p < denseTokens; p++) perm[p] = p;
  const b = orderBlock(order);
  let p = denseTokens;
  if (order === "row") {
    for (let t = 0; t < n; t++) perm[p++] = denseTokens + t;
  } else if (order === "col") {
    for (let x = 0; x < gridW; x++) {
      for (let y = 0; y < gridH; y++) perm[p++] = denseTokens + y * gridW + x;
    }
  } else {
    for (let by = 0; by < gridH; by += b) {
      for (let bx = 0; bx < gridW; bx += b) {
        for (let y = by; y < by + b; y++) {
          for (let x = bx; x < bx + b; x++) perm[p++] = denseTokens + y * gridW + x;
        }
      }
    }
  }
  return perm;
}

/** `inv[perm[p]] = p`. */
export function invertPerm(perm: ArrayLike<number>): Uint32Array {
  const inv = new Uint32Array(perm.length);
  for (let p = 0; p < perm.length; p++) inv[perm[p]] = p;
  return inv;
}

/** Tiles per side for `tokens` tokens: ⌈tokens/tile⌉. */
export function tileCount(tokens: number, tile: number): number {
  return Math.ceil(tokens / tile);
}

/** Bytes of one head's mask: ⌈nt²/8⌉. */
export function maskBytes(nt: number): number {
  return Math.ceil((nt * nt) / 8);
}

/** Bit (i, j) of the mask that starts at byte `offset` of `bits`. */
export function maskGet(bits: Uint8Array, nt: number, i: number, j: number, offset = 0): boolean {
  const k = i * nt + j;
  return ((bits[offset + (k >> 3)] >> (k & 7)) & 1) === 1;
}

/** Set bit (i, j) of the mask that starts at byte `offset` of `bits`. */
export function maskSet(bits: Uint8Array, nt: number, i: number, j: number, offset = 0): void {
  const k = i * nt + j;
  bits[offset + (k >> 3)] |= 1 << (k & 7);
}

/** All-ones masks of `heads` heads (dense attention through the sparse kernel). */
export function denseMasks(heads: number, nt: number): Uint8Array {
  const bits = new Uint8Array(heads * maskBytes(nt));
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < nt; i++) {
      for (let j = 0; j < nt; j++) maskSet(bits, nt, i, j, h * maskBytes(nt));
    }
  }
  return bits;
}

/** Fraction of set tiles over `heads` masks. */
export function maskDensity(bits: Uint8Array, heads: number, nt: number): number {
  let on = 0;
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < nt; i++) {
      for (let j = 0; j < nt; j++) if (maskGet(bits, nt, i, j, h * maskBytes(nt))) on++;
    }
  }
  return on / (heads * nt * nt);
}

/** Per (head, query tile) key-tile lists of `heads` masks (see the module doc). */
export interface MaskCsr {
  /** [heads·nt + 1] start of each row in `indices`. */
  offsets: Uint32Array;
  /** Key tiles, ascending within a row. */
  indices: Uint32Array;
}

/** The CSR form of `heads` consecutive masks. */
export function maskCsr(bits: Uint8Array, heads: number, nt: number): MaskCsr {
  if (bits.length < heads * maskBytes(nt)) {
    throw new RangeError(
      `Mask has ${bits.length} bytes; ${heads} heads of ${nt}×${nt} tiles need ${
        heads * maskBytes(nt)
      }`,
    );
  }
  const offsets = new Uint32Array(heads * nt + 1);
  const idx: number[] = [];
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < nt; i++) {
      offsets[h * nt + i] = idx.length;
      for (let j = 0; j < nt; j++) if (maskGet(bits, nt, i, j, h * maskBytes(nt))) idx.push(j);
    }
  }
  offsets[heads * nt] = idx.length;
  return { offsets, indices: Uint32Array.from(idx) };
}
