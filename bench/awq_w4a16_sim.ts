/**
 * Per-layer gain of W4A16's activation-aware scaling (issue 18; quant/awq.ts) on the bundled
 * model's calibration rows: plain W4A16 (α = 0: clipping search, then GPTQ where it applies, the
 * lower error kept) against the searched α ∈ {0, 0.1, …, 1} that `deno task quantize` now applies
 * (the kernel divides X by the stored `smooth`). Both columns come from `quantizeW4A16Awq`, the
 * quantizer's own code; the table adds what its report does not show: the α = 0 error of every
 * layer next to the kept one. Needs the calibration file `deno task eval` (or a W4A16 build)
 * caches.
 *
 * `--holdout`: α chosen and the weights fitted on the even calibration rows, both results scored on
 * the odd rows (a generalisation check; with half the rows GPTQ applies only where K ≤ S/2).
 *
 * deno run -A bench/awq_w4a16_sim.ts [--layers N] [--holdout]
 */
import { parseArgs } from "node:util";
import { amaxOverBuckets, readCalibStats } from "../quant/calib.ts";
import { floatOutput, relativeError } from "../quant/baselines.ts";
import { type AwqResult, quantizeW4A16Awq } from "../quant/awq.ts";
import { evaluateQuantized, type QuantizedLinear } from "../quant/layer.ts";
import { cpuMatMul } from "../quant/linalg.ts";
import { SafetensorsReader } from "../formats/safetensors.ts";
import { cachedPath, FLOAT_MODEL } from "../cli/_models.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { layers: { type: "string" }, holdout: { type: "boolean" } },
});
const calibPath = await cachedPath(FLOAT_MODEL, "calib.safetensors");
const calib = await readCalibStats(calibPath);
const reader = await SafetensorsReader.open(FLOAT_MODEL);
let names = [...calib.layers.keys()].filter((b) => calib.layers.get(b)!.k % 64 === 0).sort();
if (values.layers) names = names.slice(0, Number(values.layers));
console.log(
  `W4A16 of ${FLOAT_MODEL} on its calibration rows (relative output error${
    values.holdout ? "; fitted on the even rows, scored on the odd ones" : ""
  })`,
);
console.log(
  "| layer | [N, K] rows | W4A16 α = 0 | AWQ kept (α) | change |\n| --- | --- | ---: | ---: | ---: |",
);
let sumPlain = 0, sumAwq = 0;
const t0 = performance.now();
for (const base of names) {
  const stats = calib.layers.get(base)!;
  const [n, k] = reader.tensors.get(`${base}.weight`)!.shape;
  const w = await reader.readFloat32(`${base}.weight`);
  const bias = reader.tensors.has(`${base}.bias`) ? await reader.readFloat32(`${base}.bias`) : null;
  const fit = values.holdout ? rowsOf(stats.samples, stats.s, k, 0) : stats.samples;
  const s = values.holdout ? Math.floor(stats.s / 2) : stats.s;
  const yRef = await floatOutput(w, bias, fit, { m: s, n, k });
  const inp = { w, bias, n, k, x: fit, s, yRef, matmul: cpuMatMul };
  const amax = values.holdout ? rowAmax(fit, s, k) : amaxOverBuckets(stats);
  const plain = await quantizeW4A16Awq(inp, { amax, alphas: [0] });
  const awq = await quantizeW4A16Awq(inp, { amax });
  let [ep, ea] = [plain.relError, awq.relError];
  if (values.holdout) {
    const x = rowsOf(stats.samples, stats.s, k, 1);
    const yHeld = await floatOutput(w, bias, x, { m: s, n, k });
    const score = async (r: AwqResult) => {
      const q: QuantizedLinear = {
        name: base,
        method: "w4a16",
        format: "int4",
        n,
        k,
        r: 0,
        tensors: r.tensors,
        relError: r.relError,
        bytesBefore: 0,
        bytesAfter: 0,
      };
      return relativeError(await evaluateQuantized(q, x, s), yHeld);
    };
    [ep, ea] = [await score(plain), await score(awq)];
  }
  sumPlain += ep;
  sumAwq += ea;
  console.log(
    `| ${base} | [${n}, ${k}] ${s} | ${ep.toFixed(4)} | ${ea.toFixed(4)} (${awq.alpha}) | ${
      (100 * (ea / ep - 1)).toFixed(1)
    }% |`,
  );
}
console.log(
  `mean over ${names.length} linears: α = 0 ${(sumPlain / names.length).toFixed(4)}, AWQ ${
    (sumAwq / names.length).toFixed(4)
  } (${((performance.now() - t0) / 1000).toFixed(0)} s)`,
);
reader.close();

/** Rows `par`, `par + 2`, … of `x` [S, K] (S/2 rows). */
function rowsOf(x: Float32Array, s: number, k: number, par: number): Float32Array {
  const h = Math.floor(s / 2), out = new Float32Array(h * k);
  for (let i = 0; i < h; i++) out.set(x.subarray((2 * i + par) * k, (2 * i + par + 1) * k), i * k);
  return out;
}

/** Per-channel max |x| of `x` [S, K]. */
function rowAmax(x: Float32Array, s: number, k: number): Float32Array {
  const out = new Float32Array(k);
  for (let i = 0; i < s * k; i++) out[i % k] = Math.max(out[i % k], Math.abs(x[i]));
  return out;
}
