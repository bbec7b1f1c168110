/**
 * The attention stage of a DiT: dense flash attention, or sparse + quantized attention
 * (PAROAttention) driven by a calibrated plan — per (layer, head) a token order, per (timestep
 * bucket, layer, head) a block mask (quant/paro.ts, kernels/sparse_attention/).
 *
 * One kernel object serves every layer (the shapes are equal); what differs per layer and bucket
 * are the small plan buffers (permutation and the mask's CSR lists), uploaded once at load.
 *
 * @module
 */
import { FlashAttention } from "../kernels/flash_attention/flash_attention.ts";
import {
  SparseAttention,
  type SparsePv,
  type SparseQk,
  uploadSparsePlan,
} from "../kernels/sparse_attention/sparse_attention.ts";
import { tileCount } from "../kernels/sparse_attention/layout.ts";
import type { ActDtype } from "../kernels/_wgsl.ts";
import { masksFor, type ParoPlan, permFor } from "../quant/paro.ts";
import type { Dispatch, Gpu } from "../gpu/device.ts";

/** Sparse attention as the caller asks for it: a plan and the arithmetic of Q·Kᵀ and P·V. */
export interface SparseAttentionChoice {
  /** Token orders and block masks (from the pre-quantized file or quant/paro.ts). */
  plan: ParoPlan;
  /** Q·Kᵀ in INT8 (default) or in the activation dtype. */
  qk?: SparseQk;
  /** P·V in the activation dtype (default) or INT8. */
  pv?: SparsePv;
}

/** Shape of a model's attention calls. */
export interface AttentionStageShape {
  b: number;
  t: number;
  h: number;
  d: number;
  dtype: ActDtype;
  /** Transformer layers. */
  layers: number;
  /** Latent grid side (T = grid²), to check a plan against. */
  grid: number;
}

interface PlanBuffers {
  perm: GPUBuffer;
  offsets: GPUBuffer;
  indices: GPUBuffer;
}

/** Dense or sparse attention for every layer and timestep bucket of one model. */
export class AttentionStage {
  /** Mask sets (timestep buckets) of the plan; 1 for dense attention. */
  readonly buckets: number;
  /** "dense", or "sparse qk=… pv=… density=…" (for logs). */
  readonly kind: string;
  readonly #dense?: FlashAttention;
  readonly #sparse?: SparseAttention;
  readonly #plans: PlanBuffers[][]; // [bucket][layer]
  readonly #gpu: Gpu;

  private constructor(init: {
    gpu: Gpu;
    buckets: number;
    kind: string;
    dense?: FlashAttention;
    sparse?: SparseAttention;
    plans: PlanBuffers[][];
  }) {
    this.#gpu = init.gpu;
    this.buckets = init.buckets;
    this.kind = init.kind;
    this.#dense = init.dense;
    this.#sparse = init.sparse;
    this.#plans = init.plans;
  }

  /** Build the kernel and upload the plan buffers (sparse), checking the plan fits the model. */
  static async create(
    gpu: Gpu,
    s: AttentionStageShape,
    sparse?: SparseAttentionChoice,
  ): Promise<AttentionStage> {
    if (!sparse) {
      const dense = await FlashAttention.create(gpu, s);
      return new AttentionStage({ gpu, buckets: 1, kind: "dense", dense, plans: [] });
    }
    const { plan } = sparse;
    checkPlan(plan, s);
    const qk = sparse.qk ?? "int8", pv = sparse.pv ?? "f16";
    const op = await SparseAttention.create(gpu, { ...s, tile: plan.tile, qk, pv });
    const nt = tileCount(s.t, plan.tile);
    const plans: PlanBuffers[][] = [];
    let density = 0;
    try {
      for (let bucket = 0; bucket < plan.buckets; bucket++) {
        const row: PlanBuffers[] = [];
        plans.push(row);
        for (let layer = 0; layer < s.layers; layer++) {
          const up = await uploadSparsePlan(
            gpu,
            `attention plan bucket ${bucket} layer ${layer}`,
            permFor(plan, layer),
            masksFor(plan, bucket, layer),
            s.h,
            nt,
          );
          row.push(up);
          density += up.density;
        }
      }
    } catch (e) {
      op.destroy();
      for (const row of plans) for (const p of row) gpu.destroy(p.perm, p.offsets, p.indices);
      throw e;
    }
    density /= plan.buckets * s.layers;
    return new AttentionStage({
      gpu,
      buckets: plan.buckets,
      kind: `sparse qk=${qk} pv=${pv} tile=${plan.tile} density=${density.toFixed(2)}`,
      sparse: op,
      plans,
    });
  }

  /** The dispatches of layer `layer`'s attention during a step of timestep bucket `bucket`. */
  dispatch(layer: number, bucket: number, qkv: GPUBuffer, o: GPUBuffer): Dispatch[] {
    if (this.#dense) return [this.#dense.dispatch({ qkv, o })];
    const p = this.#plans[Math.min(bucket, this.buckets - 1)][layer];
    return this.#sparse!.dispatch({ qkv, o, ...p });
  }

  /** Release the kernel and the plan buffers. */
  destroy(): void {
    this.#dense?.destroy();
    this.#sparse?.destroy();
    for (const row of this.#plans) {
      for (const p of row) this.#gpu.destroy(p.perm, p.offsets, p.indices);
    }
  }
}

/** Refuse a plan calibrated for another model shape, saying what differs. */
function checkPlan(plan: ParoPlan, s: AttentionStageShape): void {
  const want: [string, number, number][] = [
    ["layers", plan.layers, s.layers],
    ["heads", plan.heads, s.h],
    ["tokens", plan.tokens, s.t],
    ["grid height", plan.gridH, s.grid],
    ["grid width", plan.gridW, s.grid],
  ];
  for (const [what, got, need] of want) {
    if (got !== need) {
      throw new RangeError(
        `Cannot use this sparse-attention plan: it was calibrated for ${what} ${got}, the model ` +
          `has ${need}; calibrate it for this model (quant/paro.ts) or use dense attention`,
      );
    }
  }
}
