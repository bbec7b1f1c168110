/**
 * Quantizing a FLUX transformer: reads any layout runtime/flux/weights.ts opens (BFL single file,
 * diffusers folder, sharded) tensor by tensor under canonical names, applies the FLUX layer policy
 * (quant/flux_policy.ts) and streams a self-describing pre-quantized file (family `flux`,
 * `model_config` = BFL's FluxParams). One layer's float weight is in memory at a time.
 *
 * @module
 */
import { FormatError } from "../gpu/errors.ts";
import { FluxWeights } from "../runtime/flux/weights.ts";
import {
  type LayerPolicyEntry,
  type QuantConfig,
  type QuantTensor,
  writeQuantFile,
} from "../formats/format.ts";
import { quantizeLinear } from "../quant/layer.ts";
import { type LayerReport, linearReport, type QuantizeCommonOptions } from "./model.ts";
import { groupSize } from "../formats/packing.ts";
import { FLUX_POLICY, fluxTensorList } from "../quant/flux_policy.ts";
import { type LayerPolicyRule, policyFor } from "../quant/policy.ts";
import { fromFloat32 } from "../formats/safetensors.ts";

/** Options of {@linkcode quantizeFlux}. */
export interface QuantizeFluxOptions extends QuantizeCommonOptions {
  /** Rules tried before {@linkcode FLUX_POLICY}. */
  policy?: readonly LayerPolicyRule[];
}

/**
 * Quantize the FLUX transformer at `input` (file or diffusers `transformer/` folder) into
 * `output`.
 *
 * @example
 * ```ts ignore
 * import { quantizeFlux } from "./flux_model.ts";
 * await quantizeFlux("flux1-dev.safetensors", "flux1-dev.int4.safetensors", { format: "int4" });
 * ```
 */
export async function quantizeFlux(
  input: string,
  output: string,
  opts: QuantizeFluxOptions = {},
): Promise<LayerReport[]> {
  const method = opts.method ?? "svdquant", format = opts.format ?? "int4";
  const rank = opts.rank ?? 32;
  if (!Number.isInteger(rank) || rank < 0 || rank > 256) {
    throw new RangeError(`Cannot quantize with rank ${rank}: use an integer in 0..256`);
  }
  const w4a4 = ["svdquant", "dilate", "smooth", "rtn"];
  const rules = [...(opts.policy ?? []), ...FLUX_POLICY].map((r) =>
    w4a4.includes(r.method) ? { ...r, method } : r
  );
  const w = await FluxWeights.open(input);
  try {
    if (w.precision !== "float") {
      throw new FormatError(input, `the transformer is already quantized (${w.precision})`);
    }
    const { linears, others } = fluxTensorList(w.config);
    const total = linears.length + others.length;
    const reports: LayerReport[] = [];
    const policy: Record<string, LayerPolicyEntry> = {};
    let index = 0;
    const report = (r: LayerReport) => {
      reports.push(r);
      opts.onLayer?.(r, index++, total);
    };
    const tensors = async function* (): AsyncGenerator<QuantTensor> {
      for (const l of linears) {
        const t0 = performance.now();
        const rule = policyFor(l.base, rules);
        const weight = await w.float(`${l.base}.weight`);
        const bias = l.bias && w.has(`${l.base}.bias`) ? await w.float(`${l.base}.bias`) : null;
        if (weight.length !== l.n * l.k) {
          throw new FormatError(input, `expected [${l.n}, ${l.k}]`, `${l.base}.weight`);
        }
        const layerMethod = w4a4.includes(rule.method) && l.k % groupSize(format) !== 0
          ? "float" // too narrow for the 4-bit groups (only tiny models): keep it 16-bit
          : rule.method;
        const stats = opts.calib?.layers.get(l.base);
        const q = await quantizeLinear(l.base, weight, bias, l.n, l.k, {
          method: layerMethod,
          format,
          r: rank,
          stats: stats && stats.k === l.k ? stats : undefined,
          postGelu: rule.postGelu,
          matmul: opts.matmul,
          alphas: opts.alphas,
          rounds: opts.rounds,
          awq: opts.awq,
          sourceBytes: 2,
        });
        policy[l.base] = { method: q.method, format: q.format, r: q.r, actMode: q.actMode };
        for (const [suffix, t] of q.tensors) {
          yield { name: `${l.base}.${suffix}`, dtype: t.dtype, shape: t.shape, data: t.data };
        }
        report(linearReport(q, t0));
      }
      for (const o of others) {
        const t0 = performance.now();
        const v = await w.float(o.name);
        yield { name: o.name, dtype: "F32", shape: o.shape, data: fromFloat32("F32", v) };
        report({
          name: o.name,
          method: "copy",
          format: "F32",
          r: 0,
          relError: NaN,
          bytesBefore: v.length * 2,
          bytesAfter: v.length * 4,
          seconds: (performance.now() - t0) / 1000,
        });
      }
    };
    const quantConfig: QuantConfig = {
      method,
      weightFormat: format,
      groupSize: groupSize(format),
      rank,
      actFormat: method === "w4a16" ? "f16" : method === "w8a8" ? "int8" : format,
      scaling: method === "dilate" ? "dilate" : method === "rtn" ? "none" : "smooth",
    };
    await writeQuantFile(output, {
      quantConfig,
      modelConfig: { ...w.config } as unknown as Record<string, unknown>,
      family: "flux",
      policy,
    }, tensors());
    return reports;
  } finally {
    w.close();
  }
}
