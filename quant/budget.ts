/**
 * Per-layer format and rank under a byte budget (MixDQ's idea, `--budget`): every W4A4 layer is
 * quantized with each 4-bit format at each rank of {@linkcode BUDGET_RANKS}; each choice costs
 * its stored bytes and leaves its relative output error on the calibration samples. The
 * assignment minimises the total squared relative error `Σ_layer err²` (each layer's output
 * noise power, normalised by its signal) subject to `Σ bytes ≤ budget`.
 *
 * The solver is the greedy of the multiple-choice knapsack on each layer's lower convex hull of
 * (bytes, err²): start from every layer's cheapest choice, repeatedly take the upgrade with the
 * largest error decrease per byte that still fits, then fill what is left with any single
 * upgrade that fits and lowers the error most. Its result is compared with every uniform
 * assignment (the same format and rank for all layers) that fits, and the better one is kept, so
 * it is never worse than a uniform policy of at most the same bytes.
 *
 * @module
 */
import type { WeightFormat } from "../formats/packing.ts";

/** Ranks tried per layer by the budget search. */
export const BUDGET_RANKS: readonly number[] = [0, 16, 32, 64];
/** Formats tried per layer by the budget search. */
export const BUDGET_FORMATS: readonly WeightFormat[] = ["int4", "nvfp4"];

/** One way to store a layer. */
export interface BudgetChoice {
  /** 4-bit format of the layer. */
  format: WeightFormat;
  /** Rank asked for (the stored rank may be smaller: see quant/layer.ts `floor`). */
  r: number;
  /** Bytes of its tensors. */
  bytes: number;
  /** Relative output error on the calibration samples. */
  error: number;
}

/** A layer and its choices. */
export interface BudgetLayer {
  /** Layer base name. */
  name: string;
  /** The measured ways to store it. */
  choices: BudgetChoice[];
}

/** The assignment: `pick[i]` indexes `layers[i].choices`. */
export interface BudgetPlan {
  /** Index into each layer's choices. */
  pick: number[];
  /** Total bytes of the picks. */
  bytes: number;
  /** `Σ err²` of the picks. */
  cost: number;
  /** "greedy", or the uniform assignment that was better, e.g. "uniform int4 r=32". */
  how: string;
}

/** A budget: bytes of the W4A4 layers' tensors, or bits per weight over their weights. */
export type Budget = { bytes: number } | { bits: number };

/**
 * A budget from a CLI value: a plain integer is bytes; a number followed by `bits` (e.g.
 * `4.5bits`) is bits per weight (bytes = bits · weights / 8 over the W4A4 layers' weights).
 * Throws `RangeError` for anything else.
 */
export function parseBudget(text: string): Budget {
  const t = text.trim();
  const bits = /^(\d+(?:\.\d+)?)\s*bits?$/i.exec(t);
  if (bits && Number(bits[1]) > 0) return { bits: Number(bits[1]) };
  if (/^\d+$/.test(t) && Number(t) > 0) return { bytes: Number(t) };
  throw new RangeError(
    `Cannot read the budget "${text}": give bytes (e.g. 3000000) or bits per weight (e.g. 4.5bits)`,
  );
}

function costOf(layers: readonly BudgetLayer[], pick: readonly number[]) {
  let bytes = 0, cost = 0;
  pick.forEach((c, i) => {
    bytes += layers[i].choices[c].bytes;
    cost += layers[i].choices[c].error ** 2;
  });
  return { bytes, cost };
}

/** Indices of the lower convex hull of (bytes, err²), by increasing bytes. */
function hull(choices: readonly BudgetChoice[]): number[] {
  const order = choices.map((_, i) => i).sort((a, b) =>
    choices[a].bytes - choices[b].bytes || choices[a].error - choices[b].error
  );
  const pts: number[] = [];
  for (const i of order) {
    const e = choices[i].error ** 2;
    if (pts.length && e >= choices[pts.at(-1)!].error ** 2) continue; // dominated
    while (pts.length >= 2) {
      const a = choices[pts.at(-2)!], b = choices[pts.at(-1)!];
      const s1 = (b.error ** 2 - a.error ** 2) / (b.bytes - a.bytes || 1e-9);
      const s2 = (e - b.error ** 2) / (choices[i].bytes - b.bytes || 1e-9);
      if (s2 <= s1) pts.pop(); // b lies above the segment a → i
      else break;
    }
    pts.push(i);
  }
  return pts;
}

/**
 * The assignment of least `Σ err²` within `budget` bytes (see the module docs). Throws
 * `RangeError` when even the cheapest choice of every layer exceeds the budget.
 *
 * @example
 * ```ts
 * import { planBudget } from "./budget.ts";
 * const plan = planBudget([
 *   { name: "a", choices: [{ format: "int4", r: 0, bytes: 100, error: 0.2 }, { format: "int4", r: 16, bytes: 150, error: 0.05 }] },
 *   { name: "b", choices: [{ format: "int4", r: 0, bytes: 100, error: 0.1 }, { format: "int4", r: 16, bytes: 150, error: 0.09 }] },
 * ], 250); // upgrades "a" only: pick = [1, 0]
 * ```
 */
export function planBudget(layers: readonly BudgetLayer[], budget: number): BudgetPlan {
  const hulls = layers.map((l) => hull(l.choices));
  const at = hulls.map(() => 0);
  const pick = hulls.map((h) => h[0]);
  let { bytes } = costOf(layers, pick);
  if (bytes > budget) {
    throw new RangeError(
      `Cannot meet the budget of ${budget} bytes: the smallest choice of every layer takes ` +
        `${bytes} bytes; raise the budget`,
    );
  }
  for (;;) {
    let best = -1, bestSlope = 0;
    for (let i = 0; i < layers.length; i++) {
      if (at[i] + 1 >= hulls[i].length) continue;
      const a = layers[i].choices[hulls[i][at[i]]], b = layers[i].choices[hulls[i][at[i] + 1]];
      const extra = b.bytes - a.bytes;
      if (bytes + extra > budget) continue;
      const slope = (a.error ** 2 - b.error ** 2) / Math.max(extra, 1e-9);
      if (slope > bestSlope) [best, bestSlope] = [i, slope];
    }
    if (best < 0) break;
    const extra = layers[best].choices[hulls[best][at[best] + 1]].bytes -
      layers[best].choices[pick[best]].bytes;
    at[best]++;
    pick[best] = hulls[best][at[best]];
    bytes += extra;
  }
  // Fill: any single change that fits and lowers the cost most, until none does.
  for (;;) {
    let gain = 0, li = -1, ci = -1;
    for (let i = 0; i < layers.length; i++) {
      const cur = layers[i].choices[pick[i]];
      layers[i].choices.forEach((c, j) => {
        const g = cur.error ** 2 - c.error ** 2;
        if (g > gain && bytes - cur.bytes + c.bytes <= budget) [gain, li, ci] = [g, i, j];
      });
    }
    if (li < 0) break;
    bytes += layers[li].choices[ci].bytes - layers[li].choices[pick[li]].bytes;
    pick[li] = ci;
  }
  let plan: BudgetPlan = { pick, ...costOf(layers, pick), how: "greedy" };
  // Never worse than a uniform assignment that fits.
  const keys = new Set(layers.flatMap((l) => l.choices.map((c) => `${c.format}/${c.r}`)));
  for (const key of keys) {
    const uni = layers.map((l) => l.choices.findIndex((c) => `${c.format}/${c.r}` === key));
    if (uni.some((c) => c < 0)) continue;
    const u = costOf(layers, uni);
    if (u.bytes <= budget && u.cost < plan.cost) {
      const [f, r] = key.split("/");
      plan = { pick: uni, ...u, how: `uniform ${f} r=${r}` };
    }
  }
  return plan;
}
