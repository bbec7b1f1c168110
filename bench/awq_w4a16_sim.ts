/**
 * Per-layer gain of W4A16's activation-aware scaling (issue 18; quant/awq.ts) on the bundled
 * model's calibration rows: plain W4A16 (α = 0: clipping search, then GPTQ where it applies, the
 * lower error kept) against the searched α ∈ {0, 0.1, …, 1} that `deno task quantize` now applies
 * (the kernel divides X by the stored `smooth`). Both columns come from `quantizeW4A16Awq`, the
 * quantizer's own code; the table adds what its report does not show: the α = 0 error of every
 * layer next to the kept one. Needs the calibration file `deno task eval` (or a W4A16 build)
 * caches.
 *
 * deno run -A bench/awq_w4a16_sim.ts [--layers N]
 */
import { parseArgs } from "node:util";
import { amaxOverBuckets, readCalibStats } from "../quant/calib.ts";
import { floatOutput } from "../quant/baselines.ts";
import { quantizeW4A16Awq } from "../quant/awq.ts";
import { cpuMatMul } from "../quant/linalg.ts";
import { SafetensorsReader } from "../formats/safetensors.ts";
import { cachedPath, FLOAT_MODEL } from "../cli/_models.ts";

const { values } = parseArgs({ args: Deno.args, options: { layers: { type: "string" } } });
const calibPath = await cachedPath(FLOAT_MODEL, "calib.safetensors");
const calib = await readCalibStats(calibPath);
const reader = await SafetensorsReader.open(FLOAT_MODEL);
let names = [...calib.layers.keys()].filter((b) => calib.layers.get(b)!.k % 64 === 0).sort();
if (values.layers) names = names.slice(0, Number(values.layers));
console.log(`W4A16 of ${FLOAT_MODEL} on its calibration rows (relative output error)`);
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
  const { samples: x, s } = stats;
  const yRef = await floatOutput(w, bias, x, { m: s, n, k });
  const inp = { w, bias, n, k, x, s, yRef, matmul: cpuMatMul };
  const amax = amaxOverBuckets(stats);
  const plain = await quantizeW4A16Awq(inp, { amax, alphas: [0] });
  const awq = await quantizeW4A16Awq(inp, { amax });
  sumPlain += plain.relError;
  sumAwq += awq.relError;
  console.log(
    `| ${base} | [${n}, ${k}] ${s} | ${plain.relError.toFixed(4)} | ${
      awq.relError.toFixed(4)
    } (${awq.alpha}) | ${(100 * (awq.relError / plain.relError - 1)).toFixed(1)}% |`,
  );
}
console.log(
  `mean over ${names.length} linears: α = 0 ${(sumPlain / names.length).toFixed(4)}, AWQ ${
    (sumAwq / names.length).toFixed(4)
  } (${((performance.now() - t0) / 1000).toFixed(0)} s)`,
);
reader.close();
