/**
 * Whole-checkpoint quantization: reads a float safetensors checkpoint tensor by tensor, applies
 * the layer policy (W4A4 + low-rank, W4A16, or 16-bit per layer), and streams the result into a
 * self-describing pre-quantized file. Peak host memory stays a small multiple of the largest
 * layer; the output appears atomically (temp file + rename) or not at all.
 *
 * @module
 */
import { inferDitConfig, isPublicDit } from "../runtime/dit_public.ts";
import { FormatError } from "../gpu/errors.ts";
import { assertFinite } from "../runtime/model_check.ts";
import { ModelFile } from "../runtime/model_file.ts";
import type { CalibStats, LayerStats } from "../quant/calib.ts";
import { writeQuantFile } from "../formats/format.ts";
import type { LayerPolicyEntry, QuantConfig, QuantTensor } from "../formats/format.ts";
import {
  type Method,
  type QuantizedLinear,
  quantizeLinear,
  quantizeLinearRanks,
} from "../quant/layer.ts";
import { QuantizePool } from "../quant/pool.ts";
import {
  type Budget,
  BUDGET_FORMATS,
  BUDGET_RANKS,
  type BudgetChoice,
  type BudgetLayer,
  type BudgetPlan,
  planBudget,
} from "../quant/budget.ts";
import type { MatMul } from "../quant/linalg.ts";
import { groupSize, type WeightFormat } from "../formats/packing.ts";
import { DEFAULT_DIT_POLICY, type LayerPolicyRule, policyFor } from "../quant/policy.ts";
import { fromFloat32, SafetensorsReader } from "../formats/safetensors.ts";

/** Methods that replace the policy's W4A4 method for every W4A4 layer. */
export type ModelMethod = Exclude<Method, "float">;

/** The options every whole-model quantizer shares (DiT: {@linkcode quantizeCheckpoint}; FLUX). */
export interface QuantizeCommonOptions {
  /** Method for the policy's W4A4 layers (default "svdquant"). */
  method?: ModelMethod;
  /** 4-bit residual format (default "int4"). */
  format?: WeightFormat;
  /** Low-rank rank R (default 32). */
  rank?: number;
  /** Calibration statistics; layers without statistics use synthetic ones. */
  calib?: CalibStats;
  /** Layer policy rules (each quantizer's default policy after them, or instead of them). */
  policy?: readonly LayerPolicyRule[];
  /** α grid of the smoothing search. */
  alphas?: readonly number[];
  /** Low-rank refinement rounds of the final fit (default 3). */
  rounds?: number;
  /** W4A16 layers: search the activation-aware scaling (quant/awq.ts; default false). */
  awq?: boolean;
  /** Big matrix products (e.g. a GPU GEMM); default CPU. */
  matmul?: MatMul;
  /** Called once per tensor written. */
  onLayer?: (report: LayerReport, index: number, total: number) => void;
}

/** Options of {@linkcode quantizeCheckpoint}. */
export interface QuantizeModelOptions extends QuantizeCommonOptions {
  /**
   * 4-bit format of the post-GELU W4A4 layers (`mlp.fc2`) when `format` is nvfp4 and their rule
   * names none. Default "int4": its unsigned shifted activation mode beats NVFP4's signed codes
   * there (bundled model, rank 16: layer error 0.048–0.092 vs 0.062–0.101, every block), and
   * costs fewer bytes than giving NVFP4 more rank (r=32: 0.053 at 1.3× the bytes). The runtime
   * runs any per-layer format; the file's policy records it.
   */
  geluFormat?: WeightFormat;
  /** Layer policy (default {@linkcode DEFAULT_DIT_POLICY}). */
  policy?: readonly LayerPolicyRule[];
  /**
   * Web Workers quantizing linear layers in parallel (quant/pool.ts; default 1 = serial, in this
   * thread). The file is byte-identical either way; peak memory grows to about `workers` layers.
   * The last linear layer is split across this thread and whichever workers are idle
   * (`QuantizePool.quantizeSplit`, quant/split.ts), so a model with fewer layers than workers, or
   * a large final layer, still uses the cores. Ignored with `matmul` (a GPU product stays in this
   * thread) and with `budget`.
   */
  workers?: number;
  /**
   * Byte budget of the W4A4 layers (all their tensors): each such layer is first measured in
   * every 4-bit format at every rank of quant/budget.ts `BUDGET_RANKS`, then quantized with the
   * format and rank of {@linkcode planBudget}'s assignment (recorded per layer in the policy).
   * The policy's `format`/`rank` of a rule and `rank`/`format` here are then ignored for them.
   */
  budget?: Budget;
  /** Called after each W4A4 layer's budget measurement (`budget` only). */
  onMeasure?: (layer: BudgetLayer, index: number, total: number) => void;
  /** Called once with the budget's assignment (`budget` only). */
  onPlan?: (plan: BudgetPlan, layers: BudgetLayer[]) => void;
  /**
   * A sparse-attention plan to store with the weights (quant/paro_store.ts `paroTensors`): its
   * metadata goes under the `paro` key, its tensors after the model's.
   */
  paro?: { metadata: string; tensors: QuantTensor[] };
}

/** What happened to one tensor (a quantized linear, or a copied 16-bit tensor). */
export interface LayerReport {
  /** Layer name (quantized linear) or tensor name (copied tensor). */
  name: string;
  /** Method the layer was quantized with, or `"copy"` for a tensor stored as 16/32-bit. */
  method: Method | "copy";
  /** Stored format: `"int4"`, `"nvfp4"`, `"int8"`, `"f16"`, or a copied tensor's dtype. */
  format: string;
  /** Rank of the stored low-rank branch (0 when none). */
  r: number;
  /** Relative output error on calibration samples (NaN for copied tensors). */
  relError: number;
  /** Bytes of the source tensor(s) in the input checkpoint. */
  bytesBefore: number;
  /** Bytes of the tensor(s) written to the output file. */
  bytesAfter: number;
  /** Wall-clock seconds spent on it (reading, quantizing, writing). */
  seconds: number;
  /** W4A16 layers: the α of the activation-aware scaling kept (quant/awq.ts; 0: none). */
  alpha?: number;
}

/** The report of a quantized linear layer begun at `t0` (`performance.now()`). */
export function linearReport(q: QuantizedLinear, t0: number): LayerReport {
  return {
    name: q.name,
    method: q.method,
    format: q.format,
    r: q.r,
    relError: q.relError,
    bytesBefore: q.bytesBefore,
    bytesAfter: q.bytesAfter,
    seconds: (performance.now() - t0) / 1000,
    alpha: q.method === "w4a16" ? q.alpha : undefined,
  };
}

/** Policy rules with the W4A4 method replaced by `method`. */
function rulesFor(policy: readonly LayerPolicyRule[], method: ModelMethod): LayerPolicyRule[] {
  const w4a4: Method[] = ["svdquant", "dilate", "smooth", "rtn"];
  return policy.map((r) => (w4a4.includes(r.method) ? { ...r, method } : r));
}

/**
 * Quantize the float checkpoint `input` into the pre-quantized file `output`.
 *
 * @example
 * ```ts ignore
 * import { quantizeCheckpoint } from "./model.ts";
 * const reports = await quantizeCheckpoint("tests/fixtures/tiny_dit.safetensors", "/tmp/q.safetensors", {
 *   format: "nvfp4", onLayer: (r, i, n) => console.log(`${i + 1}/${n} ${r.name} ${r.relError}`),
 * });
 * ```
 */
export async function quantizeCheckpoint(
  input: string,
  output: string,
  opts: QuantizeModelOptions = {},
): Promise<LayerReport[]> {
  const method = opts.method ?? "svdquant";
  const format = opts.format ?? "int4";
  const rank = opts.rank ?? 32;
  if (!Number.isInteger(rank) || rank < 0 || rank > 256) {
    throw new RangeError(`Cannot quantize with rank ${rank}: use an integer in 0..256`);
  }
  const rules = rulesFor(opts.policy ?? DEFAULT_DIT_POLICY, method);
  await checkInput(input, output);
  const workers = opts.workers ?? 1;
  if (!Number.isInteger(workers) || workers < 1) {
    throw new RangeError(`Cannot quantize with ${workers} workers: use an integer ≥ 1`);
  }
  const reader = await SafetensorsReader.open(input);
  const pool = workers > 1 && !opts.matmul && opts.budget === undefined
    ? new QuantizePool(workers)
    : null;
  try {
    const family = reader.metadata.family ?? "dit";
    let modelConfig: Record<string, unknown> = {};
    if (reader.metadata.model_config) {
      try {
        modelConfig = JSON.parse(reader.metadata.model_config);
      } catch {
        throw new FormatError(input, "metadata model_config is not JSON");
      }
    } else if (isPublicDit(reader.tensors)) {
      modelConfig = inferDitConfig(input, reader.tensors); // a converted public DiT checkpoint
    }
    const names = [...reader.tensors.keys()];
    const reports: LayerReport[] = [];
    const report = (r: LayerReport, i: number) => {
      reports.push(r);
      opts.onLayer?.(r, i, names.length);
    };
    const isLinear = (name: string): boolean => {
      const info = reader.tensors.get(name);
      return Boolean(
        info && name.endsWith(".weight") && info.shape.length === 2 &&
          !name.includes("embedding"),
      );
    };
    const policy: Record<string, LayerPolicyEntry> = {};
    const sourceBytes = (name: string) => {
      const d = reader.tensors.get(name)!.dtype;
      return d === "F32" ? 4 : d === "F64" ? 8 : 2;
    };

    const w4a4Methods: Method[] = ["svdquant", "dilate", "smooth", "rtn"];
    // Budget: measure every W4A4 layer in each format and rank, then plan.
    const planned = new Map<string, BudgetChoice>();
    if (opts.budget !== undefined) {
      const todo = names.filter((name) =>
        isLinear(name) && w4a4Methods.includes(policyFor(name.slice(0, -7), rules).method)
      );
      const layers: BudgetLayer[] = [];
      for (const name of todo) {
        const base = name.slice(0, -7), rule = policyFor(base, rules);
        const [n, k] = reader.tensors.get(name)!.shape;
        const w = await reader.readFloat32(name);
        const biasName = base + ".bias";
        const bias = reader.tensors.has(biasName) ? await reader.readFloat32(biasName) : null;
        const choices: BudgetChoice[] = [];
        for (const f of BUDGET_FORMATS) {
          if (k % groupSize(f) !== 0) continue;
          const ranks = rule.method === "svdquant" || rule.method === "dilate"
            ? BUDGET_RANKS.filter((r) => r <= Math.min(n, k))
            : [0];
          const qs = await quantizeLinearRanks(base, w, bias, n, k, ranks, {
            method: rule.method,
            format: f,
            stats: statsFor(opts.calib, base, k),
            postGelu: rule.postGelu,
            matmul: opts.matmul,
            alphas: opts.alphas,
            rounds: opts.rounds,
          });
          qs.forEach((q, i) =>
            choices.push({ format: f, r: ranks[i], bytes: q.bytesAfter, error: q.relError })
          );
        }
        const layer = { name: base, choices };
        layers.push(layer);
        opts.onMeasure?.(layer, layers.length - 1, todo.length);
      }
      const weights = todo.reduce((a, name) => {
        const [n, k] = reader.tensors.get(name)!.shape;
        return a + n * k;
      }, 0);
      const budget = opts.budget;
      const plan = planBudget(
        layers,
        "bytes" in budget ? budget.bytes : Math.floor(budget.bits * weights / 8),
      );
      opts.onPlan?.(plan, layers);
      layers.forEach((l, i) => planned.set(l.name, l.choices[plan.pick[i]]));
    }

    // One linear layer, read and quantized (on a worker when there is a pool).
    const quantizeOne = async (name: string, split = false): Promise<QuantizedLinear> => {
      const info = reader.tensors.get(name)!;
      const base = name.slice(0, -7);
      const rule = policyFor(base, rules);
      const [n, k] = info.shape;
      const w = await readFinite(reader, name);
      const biasName = base + ".bias";
      const bias = reader.tensors.has(biasName) ? await readFinite(reader, biasName) : null;
      const layerMethod = rule.method;
      const w4a4 = w4a4Methods.includes(layerMethod);
      const plan = planned.get(base);
      const layerFormat = plan?.format ?? rule.format ??
        (rule.postGelu ? opts.geluFormat ?? (format === "nvfp4" ? "int4" : format) : format);
      if (w4a4 && k % groupSize(layerFormat) !== 0) {
        throw new FormatError(
          input,
          `in-features K=${k} is not a multiple of the ${layerFormat} group size ` +
            `${groupSize(layerFormat)}; keep this layer 16-bit with a policy rule`,
          name,
        );
      }
      const layerOpts = {
        method: layerMethod,
        format: layerFormat,
        stats: statsFor(opts.calib, base, k),
        postGelu: rule.postGelu,
        matmul: opts.matmul,
        alphas: opts.alphas,
        rounds: opts.rounds,
        awq: opts.awq,
        sourceBytes: sourceBytes(name),
      };
      // A planned choice is reproduced exactly: the same ladder of ranks up to it.
      return plan
        ? (await quantizeLinearRanks(
          base,
          w,
          bias,
          n,
          k,
          layerMethod === "svdquant" || layerMethod === "dilate"
            ? BUDGET_RANKS.filter((r) => r <= plan.r)
            : [0],
          layerOpts,
        )).at(-1)!
        : pool
        ? (split ? pool.quantizeSplit.bind(pool) : pool.quantize.bind(pool))(base, w, bias, n, k, {
          ...layerOpts,
          r: rule.rank ?? rank,
        })
        : quantizeLinear(base, w, bias, n, k, { ...layerOpts, r: rule.rank ?? rank });
    };
    // With a pool, up to `workers` linear layers are in flight ahead of the one being written; the
    // file is still written in name order, so it is byte-identical to the serial run.
    const linearNames = names.filter((name) => isLinear(name));
    const ahead = new Map<string, Promise<QuantizedLinear>>();
    let nextAhead = 0;
    const quantized = (name: string): Promise<QuantizedLinear> => {
      if (!pool) return quantizeOne(name);
      while (nextAhead < linearNames.length && ahead.size < pool.size) {
        const next = linearNames[nextAhead++];
        // The last layer runs here, split across the workers as they become idle.
        const p = quantizeOne(next, nextAhead === linearNames.length);
        p.catch(() => {}); // surfaced when awaited below, in order
        ahead.set(next, p);
      }
      const p = ahead.get(name)!;
      ahead.delete(name);
      return p;
    };

    const tensors = async function* (): AsyncGenerator<QuantTensor> {
      for (let i = 0; i < names.length; i++) {
        const name = names[i];
        const info = reader.tensors.get(name)!;
        const t0 = performance.now();
        if (name.endsWith(".bias") && isLinear(name.slice(0, -5) + ".weight")) continue;
        const base = name.endsWith(".weight") ? name.slice(0, -7) : name;
        if (isLinear(name)) {
          const q: QuantizedLinear = await quantized(name);
          policy[base] = { method: q.method, format: q.format, r: q.r, actMode: q.actMode };
          for (const [suffix, t] of q.tensors) {
            checkOutput(input, `${base}.${suffix}`, t.dtype, t.data);
            yield { name: `${base}.${suffix}`, dtype: t.dtype, shape: t.shape, data: t.data };
          }
          report(linearReport(q, t0), i);
        } else {
          const copy = await copyTensor(reader, name);
          checkOutput(input, name, copy.dtype, copy.data);
          yield copy;
          report({
            name,
            method: "copy",
            format: copy.dtype,
            r: 0,
            relError: NaN,
            bytesBefore: info.end - info.begin,
            bytesAfter: copy.data.byteLength,
            seconds: (performance.now() - t0) / 1000,
          }, i);
        }
      }
      for (const t of opts.paro?.tensors ?? []) yield t;
    };

    const quantConfig: QuantConfig = {
      method,
      weightFormat: format,
      groupSize: groupSize(format),
      rank,
      actFormat: method === "w4a16" ? "f16" : method === "w8a8" ? "int8" : format,
      scaling: method === "dilate" ? "dilate" : method === "rtn" ? "none" : "smooth",
    };
    // `policy` is filled while the tensors stream; writeQuantFile encodes the metadata after the
    // last tensor on this (async iterable) path.
    const extra = opts.paro ? { paro: opts.paro.metadata } : undefined;
    await writeQuantFile(output, { quantConfig, modelConfig, family, policy, extra }, tensors());
    return reports;
  } finally {
    pool?.close();
    reader.close();
  }
}

function statsFor(calib: CalibStats | undefined, base: string, k: number): LayerStats | undefined {
  const s = calib?.layers.get(base);
  if (!s) return undefined;
  if (s.k !== k) {
    throw new RangeError(
      `Cannot use the calibration statistics of ${base}: they have K=${s.k}, the layer has K=${k}`,
    );
  }
  return s;
}

/** A non-quantized tensor: 1-D tensors stay f32, larger float tensors become f16. */
async function copyTensor(reader: SafetensorsReader, name: string): Promise<QuantTensor> {
  const info = reader.tensors.get(name)!;
  if (!["F32", "F16", "BF16", "F64"].includes(info.dtype)) {
    return { name, dtype: info.dtype, shape: info.shape, data: await reader.readRaw(name) };
  }
  const v = await readFinite(reader, name);
  // values beyond the f16 range stay f32 rather than becoming ±Inf
  const big = v.some((x) => Math.abs(x) > 65504);
  const dtype = info.shape.length <= 1 || big ? "F32" : "F16";
  return { name, dtype, shape: info.shape, data: fromFloat32(dtype, v) };
}

/**
 * {@linkcode quantizeCheckpoint}'s first step, callable on its own (the CLI runs it before a
 * sparse-attention calibration): refuses an input that cannot give a loadable file, before any
 * work: a file that is already
 * quantized, one whose checksum (when it has one) does not match, one whose `model_config`
 * contradicts itself or its tensors (runtime/model_check.ts), and an output path that is the
 * input itself.
 */
export async function checkInput(input: string, output: string): Promise<void> {
  const real = (p: string) => Deno.realPath(p).catch(() => null);
  const [a, b] = await Promise.all([real(input), real(output)]);
  if (a !== null && a === b) {
    throw new RangeError(
      `Cannot write ${output}: it is the input file; give another --out path`,
    );
  }
  const f = await ModelFile.open(input);
  const precision = f.precision;
  f.close();
  if (precision !== "float") {
    throw new FormatError(
      input,
      `it is already quantized (${precision}); quantize the float checkpoint it was made from`,
    );
  }
}

async function readFinite(reader: SafetensorsReader, name: string): Promise<Float32Array> {
  const v = await reader.readFloat32(name);
  for (let i = 0; i < v.length; i++) {
    if (!Number.isFinite(v[i])) {
      throw new FormatError(
        reader.path,
        `element ${i} is not finite (NaN or ±Inf); the checkpoint is corrupt: export it again`,
        name,
      );
    }
  }
  return v;
}

/** A tensor about to be written must load again: no NaN/±Inf (e.g. scales beyond f16). */
function checkOutput(input: string, name: string, dtype: string, data: Uint8Array): void {
  try {
    assertFinite(input, name, dtype, data);
  } catch {
    throw new FormatError(
      input,
      "quantizing it gives values beyond the stored format's range (NaN/±Inf); the weights are " +
        "out of range for a 4-bit/16-bit file: keep the layer 16-bit with a --policy rule",
      name,
    );
  }
}
