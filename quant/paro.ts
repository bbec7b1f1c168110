/**
 * PAROAttention calibration: from the float model's attention maps to a per-head token order and
 * per (timestep bucket, layer, head) block-sparse masks, stored in the pre-quantized file. Layouts
 * (orders, mask bits, CSR) are defined once in kernels/sparse_attention/layout.ts.
 *
 * **Recording.** {@linkcode AttentionRecorder} receives the fused qkv output of each transformer
 * layer while the float model denoises calibration inputs, computes `softmax(scale·q·kᵀ)` per
 * (batch, head) in float64 and keeps the running sum per (bucket, layer, head): the mean map.
 *
 * **Method** ({@linkcode calibrateParo}). `nt = ⌈T/tile⌉` tiles per side and a budget of
 * `K = min(nt², max(nt, round(density·nt²)))` kept tiles per (layer, head).
 * 1. Order, per (layer, head), shared by all timesteps: from the map averaged over all recorded
 *    samples, for each candidate order permute rows and columns (`perm`), sum the mass of each
 *    `tile × tile` tile (a partial last tile is just its sum) and score the order by the mass of
 *    its K heaviest tiles. The best score wins; a tie (within 1e-9 of the total mass) goes to the
 *    earlier order of TOKEN_ORDERS, so "row" (no reordering) wins unless another order is better.
 * 2. Mask, per (bucket, layer, head) (or one shared set over the mean of all buckets): keep every
 *    query-tile row's heaviest tile (no row is ever empty), every tile of the rows and columns
 *    that overlap the `denseTokens` leading positions, then the heaviest remaining tiles (ties →
 *    lower row-major index) until K tiles are kept. Only when these forced tiles alone exceed K
 *    (many dense tokens) does a head keep more than K. `keptMass` = mass inside kept tiles / total.
 *    A bucket with no recorded sample uses the mean map of all buckets.
 *
 * **Storage** (quant/paro_store.ts `paroTensors` / `readParo`): metadata key `paro` holds JSON
 * `{version: 1, tile, gridH, gridW, denseTokens, layers, heads, tokens, buckets, density,
 * orderNames, keptMass}` (keptMass: the per (bucket, layer, head) fractions rounded to 4
 * decimals, informative only); tensors `paro.order` U8 [layers, heads] (index into orderNames) and
 * `paro.masks` U8 [buckets, layers, heads, ⌈nt²/8⌉].
 *
 * @example
 * ```ts
 * import { AttentionRecorder, calibrateParo, describeParo } from "./paro.ts";
 * const rec = new AttentionRecorder({ layers: 1, heads: 2, tokens: 64, buckets: 1 });
 * const qkv = new Float32Array(64 * 3 * 2 * 8).map(() => Math.random() - 0.5); // B=1, H=2, D=8
 * rec.record(0, 0, qkv, 1, 64, 2, 8);
 * const plan = calibrateParo(rec, { gridH: 8, gridW: 8, tile: 16, density: 0.5 });
 * console.log(describeParo(plan));
 * ```
 *
 * @module
 */
import {
  MASK_TILES,
  maskBytes,
  maskDensity,
  maskSet,
  orderApplies,
  tileCount,
  TOKEN_ORDERS,
  type TokenOrder,
  tokenOrder,
} from "../kernels/sparse_attention/layout.ts";

/** Metadata key of the plan in the pre-quantized file. */
export const PARO_METADATA_KEY = "paro";
/** Version of the stored plan this build writes and reads. */
export const PARO_VERSION = 1;
/** Mask tiles the sparse kernel supports. */
export const PARO_TILES: readonly number[] = MASK_TILES;

/** How {@linkcode calibrateParo} spreads the tile budget (see {@linkcode ParoOptions}.budget). */
export const PARO_BUDGETS = ["head", "mass", "global"] as const;
/** One of {@linkcode PARO_BUDGETS}. */
export type ParoBudget = (typeof PARO_BUDGETS)[number];

/** Whether `v` is a safe integer ≥ `min` (argument and metadata checks). */
export const isInt = (v: unknown, min: number): v is number =>
  Number.isSafeInteger(v) && (v as number) >= min;

/**
 * Running mean attention maps of the float model, per (timestep bucket, layer, head). Memory:
 * `buckets·layers·heads·T²` float64 sums, allocated per (bucket, layer) on first record.
 *
 * @example
 * ```ts
 * import { AttentionRecorder } from "./paro.ts";
 * const rec = new AttentionRecorder({ layers: 2, heads: 1, tokens: 4, buckets: 2 });
 * const qkv = new Float32Array(4 * 3 * 1 * 8).fill(0.1); // B=1, T=4, H=1, D=8
 * rec.record(1, 0, qkv, 1, 4, 1, 8);
 * console.log(rec.map(0, 1, 0)[0]); // 0.25: equal logits, uniform attention
 * ```
 */
export class AttentionRecorder {
  /** Transformer layers. */
  readonly layers: number;
  /** Attention heads H. */
  readonly heads: number;
  /** Sequence length T. */
  readonly tokens: number;
  /** Timestep buckets. */
  readonly buckets: number;
  #sums: (Float64Array | undefined)[]; // [bucket·layers + layer] → [H, T, T]
  #counts: Float64Array; // [bucket·layers + layer] samples (batch items) recorded
  #q = new Float64Array(0);
  #k = new Float64Array(0);
  #row: Float64Array;

  /** Every count must be an integer ≥ 1 (RangeError otherwise). */
  constructor(opts: { layers: number; heads: number; tokens: number; buckets: number }) {
    for (const key of ["layers", "heads", "tokens", "buckets"] as const) {
      if (!isInt(opts?.[key], 1)) {
        throw new RangeError(
          `Cannot create AttentionRecorder: ${key} is ${opts?.[key]}, expected an integer >= 1`,
        );
      }
    }
    ({ layers: this.layers, heads: this.heads, tokens: this.tokens, buckets: this.buckets } = opts);
    this.#sums = new Array(this.buckets * this.layers).fill(undefined);
    this.#counts = new Float64Array(this.buckets * this.layers);
    this.#row = new Float64Array(this.tokens);
  }

  /**
   * `qkv`: f32 [B·T, 3·H·D] (fused qkv output: q | k | v, head h at h·D, as in
   * kernels/flash_attention) of layer `layer` during a step of timestep bucket `bucket`; `scale`
   * defaults to 1/√D. Adds softmax(scale·q·kᵀ) of every (batch item, head) to the running sums.
   * RangeError for an argument out of range or a non-finite q/k; TypeError for a wrong length.
   */
  record(
    layer: number,
    bucket: number,
    qkv: Float32Array,
    b: number,
    t: number,
    h: number,
    d: number,
    scale: number = 1 / Math.sqrt(d),
  ): void {
    const what = `Cannot record attention of layer ${layer}`;
    this.#check(layer, bucket, false, what);
    if (!isInt(b, 0)) throw new RangeError(`${what}: batch B is ${b}, expected an integer >= 0`);
    if (t !== this.tokens) {
      throw new RangeError(`${what}: T is ${t}, but the recorder was created for ${this.tokens}`);
    }
    if (h !== this.heads) {
      throw new RangeError(`${what}: H is ${h}, but the recorder was created for ${this.heads}`);
    }
    if (!isInt(d, 1)) throw new RangeError(`${what}: head dim D is ${d}, expected >= 1`);
    if (!Number.isFinite(scale)) throw new RangeError(`${what}: scale is ${scale}, not finite`);
    const row = 3 * h * d;
    if (!(qkv instanceof Float32Array) || qkv.length !== b * t * row) {
      throw new TypeError(
        `${what}: qkv must be a Float32Array of [B·T=${b * t}, 3·H·D=${row}] = ${
          b * t * row
        } elements, got ${qkv?.length}`,
      );
    }
    for (let r = 0; r < b * t; r++) {
      for (let c = r * row, end = c + 2 * h * d; c < end; c++) {
        if (!Number.isFinite(qkv[c])) {
          throw new RangeError(`${what}: q or k holds ${qkv[c]} at row ${r}; nothing recorded`);
        }
      }
    }
    if (this.#q.length < t * d) {
      [this.#q, this.#k] = [new Float64Array(t * d), new Float64Array(t * d)];
    }
    const slot = bucket * this.layers + layer, T2 = t * t;
    const sums = this.#sums[slot] ??= new Float64Array(h * T2);
    const q = this.#q, k = this.#k, s = this.#row;
    for (let bi = 0; bi < b; bi++) {
      for (let hh = 0; hh < h; hh++) {
        for (let i = 0; i < t; i++) {
          const src = (bi * t + i) * row + hh * d;
          for (let c = 0; c < d; c++) {
            q[i * d + c] = qkv[src + c];
            k[i * d + c] = qkv[src + h * d + c];
          }
        }
        for (let i = 0; i < t; i++) {
          const qo = i * d;
          let max = -Infinity;
          let j = 0;
          for (; j + 4 <= t; j += 4) { // four keys per pass: each q element is loaded once
            const k0 = j * d, k1 = k0 + d, k2 = k1 + d, k3 = k2 + d;
            let d0 = 0, d1 = 0, d2 = 0, d3 = 0;
            for (let c = 0; c < d; c++) {
              const x = q[qo + c];
              d0 += x * k[k0 + c];
              d1 += x * k[k1 + c];
              d2 += x * k[k2 + c];
              d3 += x * k[k3 + c];
            }
            s[j] = scale * d0, s[j + 1] = scale * d1, s[j + 2] = scale * d2, s[j + 3] = scale * d3;
          }
          for (; j < t; j++) {
            let dot = 0;
            for (let c = 0, ko = j * d; c < d; c++) dot += q[qo + c] * k[ko + c];
            s[j] = scale * dot;
          }
          for (j = 0; j < t; j++) if (s[j] > max) max = s[j];
          let sum = 0;
          for (let j = 0; j < t; j++) sum += s[j] = Math.exp(s[j] - max);
          const inv = 1 / sum, out = hh * T2 + i * t;
          for (let j = 0; j < t; j++) sums[out + j] += s[j] * inv;
        }
      }
    }
    this.#counts[slot] += b;
  }

  /** Samples (batch items) recorded for (bucket, layer); bucket -1 = all buckets. */
  count(bucket: number, layer: number): number {
    this.#check(layer, bucket, true, "Cannot count attention samples");
    if (bucket >= 0) return this.#counts[bucket * this.layers + layer];
    let n = 0;
    for (let s = 0; s < this.buckets; s++) n += this.#counts[s * this.layers + layer];
    return n;
  }

  /**
   * Mean map [T·T] (row = query, col = key) of (bucket, layer, head); bucket -1 = the mean over
   * every sample of every bucket. All zeros when nothing was recorded there.
   */
  map(bucket: number, layer: number, head: number): Float64Array {
    this.#check(layer, bucket, true, "Cannot read an attention map");
    if (!isInt(head, 0) || head >= this.heads) {
      throw new RangeError(
        `Cannot read an attention map: head is ${head}, expected 0..${this.heads - 1}`,
      );
    }
    const T2 = this.tokens * this.tokens, out = new Float64Array(T2);
    const n = this.count(bucket, layer);
    if (n === 0) return out;
    for (let s = bucket < 0 ? 0 : bucket; s <= (bucket < 0 ? this.buckets - 1 : bucket); s++) {
      const sums = this.#sums[s * this.layers + layer];
      if (!sums) continue;
      for (let i = 0, o = head * T2; i < T2; i++) out[i] += sums[o + i];
    }
    for (let i = 0; i < T2; i++) out[i] /= n;
    return out;
  }

  #check(layer: number, bucket: number, allowAll: boolean, what: string): void {
    if (!isInt(layer, 0) || layer >= this.layers) {
      throw new RangeError(`${what}: layer is ${layer}, expected 0..${this.layers - 1}`);
    }
    if (!(isInt(bucket, allowAll ? -1 : 0) && bucket < this.buckets)) {
      throw new RangeError(
        `${what}: bucket is ${bucket}, expected ${allowAll ? "-1 (all) or " : ""}0..${
          this.buckets - 1
        }`,
      );
    }
  }
}

/** Options of {@linkcode calibrateParo}. */
export interface ParoOptions {
  /** Latent token grid height (T = denseTokens + gridH·gridW). */
  gridH: number;
  /** Latent token grid width. */
  gridW: number;
  /** Leading class/text tokens: unpermuted, their tile rows and columns dense (default 0). */
  denseTokens?: number;
  /** Mask tile: 8, 16, 32 or 64. */
  tile: number;
  /** Target fraction of tiles kept per (layer, head), 0 < density ≤ 1. */
  density: number;
  /** One mask set per timestep bucket (default true) or one shared set. */
  perTimestep?: boolean;
  /** Candidate orders (default: every TOKEN_ORDER that applies); ["row"] = no reordering. */
  orders?: readonly TokenOrder[];
  /**
   * How the tile budget is spread. "head" (default): exactly K tiles per (layer, head).
   * The others keep the same total as `density` on every head but share it across all layers and
   * heads of a mask set: "mass" keeps, in every head, the fewest heaviest tiles that hold a common
   * fraction τ of its mass, with τ as high as the budget allows (spread-out heads get more
   * tiles); "global" keeps the heaviest tiles by fraction of their head's mass (concentrated heads
   * get more). Each keeps every row's heaviest tile first.
   */
  budget?: ParoBudget;
}

/** A calibrated PAROAttention plan (what the runtime and the sparse kernel consume). */
export interface ParoPlan {
  /** Mask tile (tokens per side). */
  tile: number;
  /** Latent grid height. */
  gridH: number;
  /** Latent grid width. */
  gridW: number;
  /** Leading unpermuted tokens (their tile rows and columns are dense). */
  denseTokens: number;
  /** Transformer layers. */
  layers: number;
  /** Attention heads. */
  heads: number;
  /** Sequence length T = denseTokens + gridH·gridW. */
  tokens: number;
  /** Mask sets: the recorder's bucket count, or 1 when shared. */
  buckets: number;
  /** The target density. */
  density: number;
  /** [layers·heads] index into TOKEN_ORDERS. */
  orders: Uint8Array;
  /** [buckets·layers·heads·maskBytes(nt)] (layout.ts bit order). */
  masks: Uint8Array;
  /** [buckets·layers·heads] fraction of attention mass inside kept tiles (NaN when unknown). */
  keptMass: Float32Array;
}

/** Tiles per side and the kept-tile budget K of a plan's shape (see the module doc). */
export function paroBudget(
  tokens: number,
  tile: number,
  density: number,
): { nt: number; k: number } {
  const nt = tileCount(tokens, tile), nt2 = nt * nt;
  return { nt, k: Math.min(nt2, Math.max(nt, Math.round(density * nt2))) };
}

/** tm[i·nt + j] = mass of the map in query tile i, key tile j, for tile indices `tileOf[token]`. */
function tileMass(m: Float64Array, t: number, tileOf: Uint32Array, nt: number, tm: Float64Array) {
  tm.fill(0);
  for (let r = 0; r < t; r++) {
    const base = tileOf[r] * nt, o = r * t;
    for (let c = 0; c < t; c++) tm[base + tileOf[c]] += m[o + c];
  }
}

function topKSum(tm: Float64Array, k: number): number {
  const sorted = tm.slice().sort();
  let s = 0;
  for (let i = sorted.length - k; i < sorted.length; i++) s += sorted[i];
  return s;
}

/** The tiles every mask keeps: each row's heaviest, and those of the dense tokens' rows/columns. */
function forcedTiles(tm: Float64Array, nt: number, denseTiles: number): Uint8Array {
  const keep = new Uint8Array(nt * nt);
  for (let i = 0; i < nt; i++) {
    let best = i * nt;
    for (let j = 0; j < nt; j++) {
      if (i < denseTiles || j < denseTiles) keep[i * nt + j] = 1;
      if (tm[i * nt + j] > tm[best]) best = i * nt + j;
    }
    keep[best] = 1;
  }
  return keep;
}

/**
 * Choose the tiles of `tms.length` heads sharing a budget of `budget` tiles (module doc, step 2):
 * the forced tiles, then the heaviest remaining by fraction of their head's mass, ties → lower
 * head, then lower row-major index. Writes each head's mask at `offsets[n]` of `bits` and returns
 * the kept fraction of each head's mass.
 */
function selectTiles(
  tms: Float64Array[],
  nt: number,
  budget: number,
  denseTiles: number,
  bits: Uint8Array,
  offsets: number[],
  mode: ParoBudget,
): number[] {
  const totals = tms.map((tm) => tm.reduce((a, v) => a + v, 0));
  const keeps = tms.map((tm) => forcedTiles(tm, nt, denseTiles));
  let kept = keeps.reduce((a, keep) => a + keep.reduce((b, v) => b + v, 0), 0);
  const rest: [number, number, number][] = []; // [fraction, head, tile]
  tms.forEach((tm, n) => {
    for (let i = 0; i < nt * nt; i++) {
      if (!keeps[n][i]) rest.push([totals[n] > 0 ? tm[i] / totals[n] : 0, n, i]);
    }
  });
  rest.sort((a, b) => b[0] - a[0] || a[1] - b[1] || a[2] - b[2]);
  if (mode === "mass" && tms.length > 1) {
    // per head, its free tiles heaviest first and the fraction reached after each
    const per = tms.map((_, n) => {
      let f = keeps[n].reduce((a, v, i) => a + (v ? tms[n][i] : 0), 0) / (totals[n] || 1);
      const order = rest.filter((x) => x[1] === n);
      return { order, reach: order.map((x) => (f += x[0])) };
    });
    const need = (tau: number) =>
      per.reduce(
        (a, p) =>
          a + Math.min(p.order.length, p.reach.findIndex((v) => v >= tau) + 1 || p.order.length),
        0,
      );
    // the largest common τ whose tiles fit the budget (bisection; need(τ) grows with τ)
    let lo = 0, hi = 1;
    for (let it = 0; it < 50; it++) {
      const mid = (lo + hi) / 2;
      if (kept + need(mid) <= budget) lo = mid;
      else hi = mid;
    }
    per.forEach((p, n) => {
      const c = p.reach.findIndex((v) => v >= lo) + 1 || p.order.length;
      for (let r = 0; r < Math.min(c, p.order.length); r++) keeps[n][p.order[r][2]] = 1;
      kept += Math.min(c, p.order.length);
    });
  }
  for (let r = 0; r < rest.length && kept < budget; r++) {
    if (!keeps[rest[r][1]][rest[r][2]]) {
      keeps[rest[r][1]][rest[r][2]] = 1;
      kept++;
    }
  }
  return tms.map((tm, n) => {
    let mass = 0;
    for (let i = 0; i < nt * nt; i++) {
      if (keeps[n][i]) {
        mass += tm[i];
        maskSet(bits, nt, Math.floor(i / nt), i % nt, offsets[n]);
      }
    }
    return totals[n] > 0 ? mass / totals[n] : 0;
  });
}

/**
 * Calibrate token orders and block masks from recorded maps (method: module doc). Throws a
 * RangeError for options that do not fit the recorder or when a layer has no recorded sample.
 *
 * @example
 * ```ts
 * import { AttentionRecorder, calibrateParo } from "./paro.ts";
 * const rec = new AttentionRecorder({ layers: 1, heads: 1, tokens: 16, buckets: 1 });
 * rec.record(0, 0, new Float32Array(16 * 3 * 4).map(() => Math.random()), 1, 16, 1, 4);
 * const plan = calibrateParo(rec, { gridH: 4, gridW: 4, tile: 8, density: 0.5 });
 * console.log(plan.masks.length, plan.keptMass[0] >= 0.5); // 1 true
 * ```
 */
export function calibrateParo(rec: AttentionRecorder, opts: ParoOptions): ParoPlan {
  const what = "Cannot calibrate PAROAttention";
  const { gridH, gridW, denseTokens = 0, tile, density, perTimestep = true } = opts;
  if (!isInt(gridH, 1) || !isInt(gridW, 1) || !isInt(denseTokens, 0)) {
    throw new RangeError(
      `${what}: grid ${gridH}×${gridW} with ${denseTokens} dense tokens is not a grid of ` +
        "positive integers",
    );
  }
  if (denseTokens + gridH * gridW !== rec.tokens) {
    throw new RangeError(
      `${what}: denseTokens ${denseTokens} + grid ${gridH}×${gridW} = ${
        denseTokens + gridH * gridW
      } tokens, but the maps have T = ${rec.tokens}`,
    );
  }
  if (!PARO_TILES.includes(tile)) {
    throw new RangeError(`${what}: tile is ${tile}, expected one of ${PARO_TILES.join(", ")}`);
  }
  if (!(density > 0 && density <= 1)) {
    throw new RangeError(`${what}: density is ${density}, expected 0 < density <= 1`);
  }
  const mode = opts.budget ?? "head", global = mode !== "head";
  if (!PARO_BUDGETS.includes(mode)) {
    throw new RangeError(
      `${what}: budget is "${mode}", expected one of ${PARO_BUDGETS.join(", ")}`,
    );
  }
  const asked = opts.orders ?? TOKEN_ORDERS.filter((o) => orderApplies(o, gridH, gridW));
  for (const o of asked) {
    if (!TOKEN_ORDERS.includes(o) || !orderApplies(o, gridH, gridW)) {
      throw new RangeError(
        `${what}: order "${o}" is unknown or does not apply to a ${gridH}×${gridW} grid`,
      );
    }
  }
  const candidates = TOKEN_ORDERS.map((o, i) => ({ o, i })).filter(({ o }) => asked.includes(o));
  if (candidates.length === 0) throw new RangeError(`${what}: orders is empty`);
  const { layers, heads, tokens: T } = rec;
  const { nt, k } = paroBudget(T, tile, density);
  const mb = maskBytes(nt), denseTiles = Math.ceil(denseTokens / tile);
  const tileOf = candidates.map(({ o }) => {
    const perm = tokenOrder(o, gridH, gridW, denseTokens), out = new Uint32Array(T);
    for (let p = 0; p < T; p++) out[perm[p]] = Math.floor(p / tile);
    return out;
  });
  const buckets = perTimestep ? rec.buckets : 1;
  const orders = new Uint8Array(layers * heads), chosen = new Uint8Array(layers * heads);
  const masks = new Uint8Array(buckets * layers * heads * mb);
  const keptMass = new Float32Array(buckets * layers * heads);
  const tm = new Float64Array(nt * nt);
  for (let l = 0; l < layers; l++) {
    if (rec.count(-1, l) === 0) {
      throw new RangeError(
        `${what}: layer ${l} has no recorded attention; record every layer of the float model`,
      );
    }
    for (let h = 0; h < heads; h++) {
      const m = rec.map(-1, l, h);
      let best = 0, bestScore = -Infinity;
      for (let c = 0; c < candidates.length; c++) {
        tileMass(m, T, tileOf[c], nt, tm);
        const score = topKSum(tm, k);
        if (score - bestScore > 1e-9 * T) [best, bestScore] = [c, score];
      }
      chosen[l * heads + h] = best;
      orders[l * heads + h] = candidates[best].i;
    }
  }
  for (let s = 0; s < buckets; s++) {
    // one selection per mask set (global) or per (layer, head)
    const group: { tm: Float64Array; idx: number }[] = [];
    const flush = () => {
      const fr = selectTiles(
        group.map((g) => g.tm),
        nt,
        k * group.length,
        denseTiles,
        masks,
        group.map((g) => g.idx * mb),
        mode,
      );
      group.forEach((g, n) => (keptMass[g.idx] = fr[n]));
      group.length = 0;
    };
    for (let l = 0; l < layers; l++) {
      const own = perTimestep && rec.count(s, l) > 0;
      for (let h = 0; h < heads; h++) {
        const idx = (s * layers + l) * heads + h, tmh = new Float64Array(nt * nt);
        tileMass(rec.map(own ? s : -1, l, h), T, tileOf[chosen[l * heads + h]], nt, tmh);
        group.push({ tm: tmh, idx });
        if (!global) flush();
      }
    }
    if (global) flush();
  }
  const shape = { tile, gridH, gridW, denseTokens, layers, heads, tokens: T, buckets, density };
  return { ...shape, orders, masks, keptMass };
}

function checkLayer(plan: ParoPlan, layer: number, what: string): void {
  if (!isInt(layer, 0) || layer >= plan.layers) {
    throw new RangeError(`${what}: layer is ${layer}, expected 0..${plan.layers - 1}`);
  }
}

/**
 * The kernel's perm buffer of `layer`: [heads·T], head h's token order at h·T.
 *
 * @example
 * ```ts ignore
 * const perm = permFor(plan, 0); // perm[h·T + p] = token at permuted position p of head h
 * ```
 */
export function permFor(plan: ParoPlan, layer: number): Uint32Array {
  checkLayer(plan, layer, "Cannot build the token permutation");
  const T = plan.tokens, out = new Uint32Array(plan.heads * T);
  for (let h = 0; h < plan.heads; h++) {
    const order = TOKEN_ORDERS[plan.orders[layer * plan.heads + h]];
    out.set(tokenOrder(order, plan.gridH, plan.gridW, plan.denseTokens), h * T);
  }
  return out;
}

/**
 * The masks of (bucket, layer): [heads·maskBytes(nt)] (a copy). `bucket` is clamped to the plan's
 * mask sets (any bucket → 0 when plan.buckets = 1).
 *
 * @example
 * ```ts ignore
 * const bits = masksFor(plan, bucketOfStep(plan, step, steps), layer);
 * ```
 */
export function masksFor(plan: ParoPlan, bucket: number, layer: number): Uint8Array {
  checkLayer(plan, layer, "Cannot select masks");
  if (!Number.isSafeInteger(bucket)) {
    throw new RangeError(`Cannot select masks: bucket is ${bucket}, expected an integer`);
  }
  const s = Math.min(Math.max(bucket, 0), plan.buckets - 1);
  const n = plan.heads * maskBytes(tileCount(plan.tokens, plan.tile));
  const at = (s * plan.layers + layer) * n;
  return plan.masks.slice(at, at + n);
}

/**
 * The mask set of denoising step `step` of `total`: min(buckets−1, ⌊step·buckets/total⌋), the
 * mapping the runtime's calibration uses (0 when the plan has one set). `plan` may also be the
 * bucket count itself.
 *
 * @example
 * ```ts
 * import { bucketOfStep } from "./paro.ts";
 * console.log(bucketOfStep({ buckets: 4 }, 5, 8), bucketOfStep(4, 7, 8)); // 2 3
 * ```
 */
export function bucketOfStep(
  plan: { buckets: number } | number,
  step: number,
  total: number,
): number {
  const buckets = typeof plan === "number" ? plan : plan.buckets;
  if (!isInt(total, 1) || !isInt(step, 0) || !isInt(buckets, 1)) {
    throw new RangeError(
      `Cannot map step ${step} of ${total} to one of ${buckets} buckets: expected integers, ` +
        "step >= 0, total >= 1, buckets >= 1",
    );
  }
  return Math.min(buckets - 1, Math.floor((step * buckets) / total));
}

/**
 * A short multi-line report: shape, target vs achieved density, histogram of chosen orders, mean
 * kept mass per layer.
 *
 * @example
 * ```ts ignore
 * console.log(describeParo(plan));
 * ```
 */
export function describeParo(plan: ParoPlan): string {
  const { nt, k } = paroBudget(plan.tokens, plan.tile, plan.density);
  const n = plan.buckets * plan.layers * plan.heads;
  const hist = TOKEN_ORDERS.map((o, i) => [o, plan.orders.filter((v) => v === i).length] as const)
    .filter(([, c]) => c > 0).map(([o, c]) => `${o} ${c}`).join(", ");
  const perLayer: string[] = [];
  for (let l = 0; l < plan.layers; l++) {
    let s = 0;
    for (let b = 0; b < plan.buckets; b++) {
      for (let h = 0; h < plan.heads; h++) {
        s += plan.keptMass[(b * plan.layers + l) * plan.heads + h];
      }
    }
    perLayer.push(`${l}: ${(s / (plan.buckets * plan.heads)).toFixed(3)}`);
  }
  return [
    `PAROAttention plan: ${plan.layers} layers × ${plan.heads} heads, T = ${plan.tokens} ` +
    `(${plan.denseTokens} dense + ${plan.gridH}×${plan.gridW} grid), tile ${plan.tile} → ` +
    `${nt}×${nt} tiles, ${plan.buckets} mask set${plan.buckets > 1 ? "s" : ""}`,
    `density: target ${plan.density}, achieved ${
      maskDensity(plan.masks, n, nt).toFixed(3)
    } (budget ${k} tiles per head)`,
    `orders: ${hist}`,
    `kept mass per layer: ${perLayer.join(", ")}`,
  ].join("\n");
}
