/**
 * The index transforms of Nunchaku's on-disk SVDQuant layout (packed for NVIDIA MMA fragments),
 * in both directions: unpack a stored tensor into the natural row-major order, or pack natural
 * values into the stored order. Only the permutations live here; what the values mean (INT4 or
 * E2M1 codes, bf16 or E4M3 scales) and our canonical layout are formats/packing.ts's business, and
 * the checkpoint-level conversion is quant/nunchaku.ts's.
 *
 * The formulas (checked element by element against the upstream packer's output in
 * `tests/fixtures/nunchaku/`), with N out-features, K in-features, R rank:
 *
 * - codes, [N, K] nibbles in N·K/8 little-endian u32 words: code (n, k) is nibble k % 8 of word
 *   `((((((n/128)·(K/64) + k/64)·8 + (n%128)/16)·8 + n%8)·4 + (k%32)/8)·2 + (n%16)/8)·2 + (k%64)/32`;
 * - per-channel values (INT4 group scales [N, G'], bias and smoothing vectors with G' = 1):
 *   `(((((n/128)·G' + g)·8 + (n%128)/16)·4 + (n%8)/2)·2 + (n%16)/8)·2 + n%2`;
 * - NVFP4 E4M3 group-16 scales [N, K/16]:
 *   `(((((n/128)·(K/64) + g/4)·8 + n%8)·4 + (n%32)/8)·4 + (n%128)/32)·4 + g%4`;
 * - low-rank factors in 16×16 tiles: `lora_down` [R, K] tiled by (k/16, r/16), `lora_up` [N, R]
 *   by (n/16, r/16); inside a tile, row u and column v of the logical matrix go to offset
 *   `((((u%8)·4 + (v%8)/2)·2 + u/8)·2 + v/8)·2 + v%2` (u, v taken modulo 16).
 *
 * @module
 */

/** N and K of the 4-bit codes must be multiples of this (one MMA tile of the packer). */
export const NUNCHAKU_TILE_N = 128;
/** K of the 4-bit codes must be a multiple of this (64 per MMA step, two steps unrolled). */
export const NUNCHAKU_TILE_K = 128;
/** Rank and the low-rank factors' other dimension must be multiples of this. */
export const NUNCHAKU_LOWRANK_TILE = 16;

/** Flat u32 word index of code (n, k) in the stored [N, K] codes; the nibble is k % 8. */
export function codeWordIndex(n: number, k: number, kDim: number): number {
  return (((((((n >> 7) * (kDim >> 6) + (k >> 6)) * 8 + ((n & 127) >> 4)) * 8 + (n & 7)) * 4 +
        ((k & 31) >> 3)) * 2 + ((n & 15) >> 3)) * 2) + ((k & 63) >> 5);
}

/** Flat index of per-channel value (n, g) of a [N, groups] tensor (groups = 1 for vectors). */
export function channelValueIndex(n: number, g: number, groups: number): number {
  return ((((((n >> 7) * groups + g) * 8 + ((n & 127) >> 4)) * 4 + ((n & 7) >> 1)) * 2 +
    ((n & 15) >> 3)) * 2) + (n & 1);
}

/** Flat index of NVFP4 group scale (n, g), g < K/16, of the stored E4M3 scales. */
export function microScaleIndex(n: number, g: number, kDim: number): number {
  return ((((((n >> 7) * (kDim >> 6) + (g >> 2)) * 8 + (n & 7)) * 4 + ((n & 31) >> 3)) * 4 +
    ((n & 127) >> 5)) * 4) + (g & 3);
}

/**
 * Flat index of element (u, v) of a low-rank factor in 16×16 tiles; `tile` is the tile number.
 * `lora_down` (u = rank r, v = channel k): tile = (k/16)·(R/16) + r/16; `lora_up` (u = channel n,
 * v = rank r): tile = (n/16)·(R/16) + r/16.
 */
function tileOffset(u: number, v: number): number {
  const uu = u & 15, vv = v & 15;
  return (((((uu & 7) * 4 + ((vv & 7) >> 1)) * 2 + (uu >> 3)) * 2 + (vv >> 3)) * 2) + (vv & 1);
}

/** Flat stored index of `lora_down` element (r, k) of L_down [R, K]. */
export function loraDownIndex(r: number, k: number, rank: number): number {
  return 256 * ((k >> 4) * (rank >> 4) + (r >> 4)) + tileOffset(r, k);
}

/** Flat stored index of `lora_up` element (n, r) of L_up [N, R]. */
export function loraUpIndex(n: number, r: number, rank: number): number {
  return 256 * ((n >> 4) * (rank >> 4) + (r >> 4)) + tileOffset(n, r);
}

/** Whether `v` is a positive multiple of `m`. */
function multipleOf(v: number, m: number): boolean {
  return Number.isSafeInteger(v) && v > 0 && v % m === 0;
}

function checkDims(what: string, dims: [string, number, number][]): void {
  for (const [name, v, m] of dims) {
    if (!multipleOf(v, m)) {
      throw new RangeError(
        `Cannot ${what}: ${name}=${v} is not a positive multiple of ${m} (Nunchaku's tile)`,
      );
    }
  }
}

function checkLength(what: string, have: number, need: number, shape: string): void {
  if (have !== need) {
    throw new TypeError(`Cannot ${what}: it has ${have} elements, expected ${shape} = ${need}`);
  }
}

/**
 * Stored 4-bit codes (the N·K/2 bytes of `qweight`) → natural [N, K] codes 0..15 (INT4 two's
 * complement nibbles or E2M1 codes, as stored).
 */
export function unpackCodes(bytes: Uint8Array, n: number, k: number): Uint8Array {
  checkDims("unpack Nunchaku codes", [["N", n, NUNCHAKU_TILE_N], ["K", k, NUNCHAKU_TILE_K]]);
  checkLength("unpack Nunchaku codes", bytes.length, (n * k) / 2, `[N=${n}, K/2=${k / 2}] bytes`);
  const out = new Uint8Array(n * k);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < k; j += 8) {
      const w = 4 * codeWordIndex(i, j, k);
      for (let t = 0; t < 8; t += 2) {
        const b = bytes[w + (t >> 1)];
        out[i * k + j + t] = b & 15;
        out[i * k + j + t + 1] = b >> 4;
      }
    }
  }
  return out;
}

/** The bytes as little-endian u32 words (copied when not 4-byte aligned). */
function u32View(bytes: Uint8Array): Uint32Array {
  const b = bytes.byteOffset % 4 === 0 ? bytes : bytes.slice();
  return new Uint32Array(b.buffer, b.byteOffset, b.length >> 2);
}

/**
 * Stored 4-bit codes → our packed words [N, K/8] (formats/packing.ts nibble order) directly: each
 * stored word holds 8 consecutive k of one row with element k0 + j in nibble j, which is exactly
 * one of our words, so this is a permutation of whole words (the importer's fast path).
 */
export function codesToWords(bytes: Uint8Array, n: number, k: number): Uint32Array {
  checkDims("convert Nunchaku codes", [["N", n, NUNCHAKU_TILE_N], ["K", k, NUNCHAKU_TILE_K]]);
  checkLength("convert Nunchaku codes", bytes.length, (n * k) / 2, `[N=${n}, K/2=${k / 2}] bytes`);
  const src = u32View(bytes), out = new Uint32Array((n * k) >> 3), wpr = k >> 3;
  for (let i = 0; i < n; i++) {
    for (let w = 0; w < wpr; w++) out[i * wpr + w] = src[codeWordIndex(i, w << 3, k)];
  }
  return out;
}

/** Natural [N, K] codes (low 4 bits kept) → the stored bytes of `qweight` (inverse of unpack). */
export function packCodes(codes: ArrayLike<number>, n: number, k: number): Uint8Array {
  checkDims("pack Nunchaku codes", [["N", n, NUNCHAKU_TILE_N], ["K", k, NUNCHAKU_TILE_K]]);
  checkLength("pack Nunchaku codes", codes.length, n * k, `[N=${n}, K=${k}]`);
  const out = new Uint8Array((n * k) / 2);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < k; j += 8) {
      const w = 4 * codeWordIndex(i, j, k);
      for (let t = 0; t < 8; t += 2) {
        out[w + (t >> 1)] = (codes[i * k + j + t] & 15) | ((codes[i * k + j + t + 1] & 15) << 4);
      }
    }
  }
  return out;
}

/** A typed array that {@linkcode gather} and {@linkcode scatter} can create and index. */
type Elements = Uint8Array | Uint16Array | Float32Array;

function sameKind<T extends Elements>(like: T, length: number): T {
  return new (like.constructor as new (n: number) => T)(length);
}

/** out[i] = stored[index(i)] for i over the natural order (length = stored.length). */
function gather<T extends Elements>(stored: T, index: (i: number) => number): T {
  const out = sameKind(stored, stored.length);
  for (let i = 0; i < out.length; i++) out[i] = stored[index(i)];
  return out;
}

/** out[index(i)] = natural[i] (inverse of {@linkcode gather}). */
function scatter<T extends Elements>(natural: T, index: (i: number) => number): T {
  const out = sameKind(natural, natural.length);
  for (let i = 0; i < natural.length; i++) out[index(i)] = natural[i];
  return out;
}

/**
 * Stored per-channel values (16-bit words or f32) → natural [N, groups] order; `groups` = 1 for
 * bias and smoothing vectors, K/64 for INT4 group scales. N must be a multiple of 128.
 */
export function unpackChannelValues<T extends Elements>(stored: T, n: number, groups: number): T {
  checkDims("unpack Nunchaku per-channel values", [["N", n, NUNCHAKU_TILE_N], ["G", groups, 1]]);
  checkLength("unpack Nunchaku per-channel values", stored.length, n * groups, `[N, G]`);
  return gather(stored, (i) => channelValueIndex((i / groups) | 0, i % groups, groups));
}

/** Natural [N, groups] values → stored order (inverse of {@linkcode unpackChannelValues}). */
export function packChannelValues<T extends Elements>(natural: T, n: number, groups: number): T {
  checkDims("pack Nunchaku per-channel values", [["N", n, NUNCHAKU_TILE_N], ["G", groups, 1]]);
  checkLength("pack Nunchaku per-channel values", natural.length, n * groups, `[N, G]`);
  return scatter(natural, (i) => channelValueIndex((i / groups) | 0, i % groups, groups));
}

/** Stored NVFP4 E4M3 scale bytes → natural [N, K/16] codes. */
export function unpackMicroScales(stored: Uint8Array, n: number, k: number): Uint8Array {
  checkDims("unpack Nunchaku FP8 scales", [["N", n, NUNCHAKU_TILE_N], ["K", k, 64]]);
  checkLength("unpack Nunchaku FP8 scales", stored.length, (n * k) / 16, `[N, K/16]`);
  const g = k / 16;
  return gather(stored, (i) => microScaleIndex((i / g) | 0, i % g, k));
}

/** Natural [N, K/16] E4M3 codes → stored bytes (inverse of {@linkcode unpackMicroScales}). */
export function packMicroScales(natural: Uint8Array, n: number, k: number): Uint8Array {
  checkDims("pack Nunchaku FP8 scales", [["N", n, NUNCHAKU_TILE_N], ["K", k, 64]]);
  checkLength("pack Nunchaku FP8 scales", natural.length, (n * k) / 16, `[N, K/16]`);
  const g = k / 16;
  return scatter(natural, (i) => microScaleIndex((i / g) | 0, i % g, k));
}

/** Stored `lora_down` ([K, R] nominal) → natural L_down [R, K]. */
export function unpackLoraDown<T extends Elements>(stored: T, r: number, k: number): T {
  const T16 = NUNCHAKU_LOWRANK_TILE;
  checkDims("unpack Nunchaku lora_down", [["R", r, T16], ["K", k, T16]]);
  checkLength("unpack Nunchaku lora_down", stored.length, r * k, `[K=${k}, R=${r}]`);
  return gather(stored, (i) => loraDownIndex((i / k) | 0, i % k, r));
}

/** Natural L_down [R, K] → stored order (inverse of {@linkcode unpackLoraDown}). */
export function packLoraDown<T extends Elements>(natural: T, r: number, k: number): T {
  const T16 = NUNCHAKU_LOWRANK_TILE;
  checkDims("pack Nunchaku lora_down", [["R", r, T16], ["K", k, T16]]);
  checkLength("pack Nunchaku lora_down", natural.length, r * k, `[R=${r}, K=${k}]`);
  return scatter(natural, (i) => loraDownIndex((i / k) | 0, i % k, r));
}

/** Stored `lora_up` ([N, R]) → natural L_up [N, R]. */
export function unpackLoraUp<T extends Elements>(stored: T, n: number, r: number): T {
  const T16 = NUNCHAKU_LOWRANK_TILE;
  checkDims("unpack Nunchaku lora_up", [["N", n, T16], ["R", r, T16]]);
  checkLength("unpack Nunchaku lora_up", stored.length, n * r, `[N=${n}, R=${r}]`);
  return gather(stored, (i) => loraUpIndex((i / r) | 0, i % r, r));
}

/** Natural L_up [N, R] → stored order (inverse of {@linkcode unpackLoraUp}). */
export function packLoraUp<T extends Elements>(natural: T, n: number, r: number): T {
  const T16 = NUNCHAKU_LOWRANK_TILE;
  checkDims("pack Nunchaku lora_up", [["N", n, T16], ["R", r, T16]]);
  checkLength("pack Nunchaku lora_up", natural.length, n * r, `[N=${n}, R=${r}]`);
  return scatter(natural, (i) => loraUpIndex((i / r) | 0, i % r, r));
}

// ---------------------------------------------------------------------------------------------
// AWQ W4A16 (the adaLN linears): TinyChat packing

/**
 * Flat int16 index and nibble of AWQ code (n, k) in the stored `qweight` (int32 [N/4, K/2]
 * nominal, read as N·K/4 little-endian 16-bit words): rows in groups of 4, per 64-column block
 * the 16 words of row n%4 follow each other; word `((k%64)/32)·8 + k%8` of that run holds
 * nibble `(k%32)/8`.
 */
export function awqCodeIndex(n: number, k: number, kDim: number): [number, number] {
  const word = (((n >> 2) * (kDim >> 6) + (k >> 6)) * 4 + (n & 3)) * 16 + ((k & 63) >> 5) * 8 +
    (k & 7);
  return [word, (k & 31) >> 3];
}

/** Stored AWQ codes (N·K/2 bytes) → natural [N, K] unsigned codes 0..15. */
export function unpackAwqCodes(bytes: Uint8Array, n: number, k: number): Uint8Array {
  checkDims("unpack AWQ codes", [["N", n, 4], ["K", k, 64]]);
  checkLength("unpack AWQ codes", bytes.length, (n * k) / 2, `[N/4, K/2] int32 as bytes`);
  const out = new Uint8Array(n * k);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < k; j++) {
      const [w, nib] = awqCodeIndex(i, j, k);
      const b = bytes[2 * w + (nib >> 1)];
      out[i * k + j] = nib & 1 ? b >> 4 : b & 15;
    }
  }
  return out;
}

/**
 * Stored AWQ codes → our packed words [N, K/8] (unsigned codes, our nibble order; rows in stored
 * order). Our word (n, k0 = 64b + 32h + 8a) takes nibble a of the 8 int16 words `h·8 + j` of
 * row n's run in block b.
 */
export function awqToWords(bytes: Uint8Array, n: number, k: number): Uint32Array {
  checkDims("convert AWQ codes", [["N", n, 4], ["K", k, 64]]);
  checkLength("convert AWQ codes", bytes.length, (n * k) / 2, `[N/4, K/2] int32 as bytes`);
  const b16 = bytes.byteOffset % 2 === 0 ? bytes : bytes.slice();
  const src = new Uint16Array(b16.buffer, b16.byteOffset, b16.length >> 1);
  const out = new Uint32Array((n * k) >> 3), wpr = k >> 3, blocks = k >> 6;
  for (let i = 0; i < n; i++) {
    for (let b = 0; b < blocks; b++) {
      const run = (((i >> 2) * blocks + b) * 4 + (i & 3)) * 16;
      for (let h = 0; h < 2; h++) {
        for (let a = 0; a < 4; a++) {
          let word = 0;
          for (let j = 0; j < 8; j++) word |= ((src[run + h * 8 + j] >>> (4 * a)) & 15) << (4 * j);
          out[i * wpr + b * 8 + h * 4 + a] = word >>> 0;
        }
      }
    }
  }
  return out;
}

/** Natural [N, K] AWQ codes 0..15 → stored bytes (inverse of {@linkcode unpackAwqCodes}). */
export function packAwqCodes(codes: ArrayLike<number>, n: number, k: number): Uint8Array {
  checkDims("pack AWQ codes", [["N", n, 4], ["K", k, 64]]);
  checkLength("pack AWQ codes", codes.length, n * k, `[N=${n}, K=${k}]`);
  const out = new Uint8Array((n * k) / 2);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < k; j++) {
      const [w, nib] = awqCodeIndex(i, j, k);
      out[2 * w + (nib >> 1)] |= (codes[i * k + j] & 15) << (nib & 1 ? 4 : 0);
    }
  }
  return out;
}

/**
 * Groups AWQ pads its `[G, N]` scales and zeros to: K/64 rounded up to a multiple of 16 (TinyChat
 * packs 8 groups per int32 and wants an even number of packs at group size 64).
 */
export function awqStoredGroups(k: number): number {
  return Math.ceil(k / 64 / 16) * 16;
}

/**
 * Row order of an adaLN linear with `splits` chunks (6 for a double block's `norm1.linear`, 3
 * for a single block's `norm.linear`): stored row `j·splits + s` is natural row `s·(N/splits)+j`.
 */
export function adanormNaturalRow(stored: number, n: number, splits: number): number {
  return (stored % splits) * (n / splits) + Math.floor(stored / splits);
}
