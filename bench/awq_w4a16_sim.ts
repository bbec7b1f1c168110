/**
 * CPU simulation (issue 18): activation-aware scaling (AWQ-style) for W4A16 on the bundled model's
 * calibration rows, per layer, against today's W4A16 (clipping search, then GPTQ where it
 * applies, the lower error kept: quant/baselines.ts `quantizeW4A16`).
 *
 * AWQ: `s_k = amax(X_k)^α` (normalised to geometric mean 1), `W' = W·diag(s)` quantized by the same
 * `quantizeW4A16` on the rows `X/s` (so "AWQ then GPTQ" where GPTQ applies), α ∈ {0, 0.1, …, 1}
 * scored by the output error on the calibration rows; α = 0 is today's W4A16. The run-time
 * divisor (X/s in the W4A16 kernel) does not exist yet: this measures whether it is worth it.
 *
 * deno run -A bench/awq_w4a16_sim.ts [--layers N]
 */
import { parseArgs } from "node:util";
import { amaxOverBuckets, readCalibStats } from "../quant/calib.ts";
import { floatOutput, quantizeW4A16 } from "../quant/baselines.ts";
import { cpuMatMul } from "../quant/linalg.ts";
import { SafetensorsReader } from "../formats/safetensors.ts";
import { cachedPath, FLOAT_MODEL } from "../cli/_models.ts";

const { values } = parseArgs({ args: Deno.args, options: { layers: { type: "string" } } });
const calibPath = await cachedPath(FLOAT_MODEL, "calib.safetensors");
const calib = await readCalibStats(calibPath);
const reader = await SafetensorsReader.open(FLOAT_MODEL);
const ALPHAS = Array.from({ length: 11 }, (_, i) => i / 10);
let names = [...calib.layers.keys()].filter((b) => calib.layers.get(b)!.k % 64 === 0).sort();
if (values.layers) names = names.slice(0, Number(values.layers));
console.log(`W4A16 of ${FLOAT_MODEL} on its calibration rows (relative output error)`);
console.log(
  "| layer | [N, K] rows | W4A16 today | AWQ best (α) | change |\n| --- | --- | ---: | ---: | ---: |",
);
let sumToday = 0, sumAwq = 0;
for (const base of names) {
  const stats = calib.layers.get(base)!;
  const [n, k] = reader.tensors.get(`${base}.weight`)!.shape;
  const w = await reader.readFloat32(`${base}.weight`);
  const bias = reader.tensors.has(`${base}.bias`) ? await reader.readFloat32(`${base}.bias`) : null;
  const { samples: x, s } = stats;
  const yRef = await floatOutput(w, bias, x, { m: s, n, k });
  const amax = amaxOverBuckets(stats);
  let today = NaN, best = Infinity, bestAlpha = 0;
  for (const alpha of ALPHAS) {
    const sc = Float64Array.from(amax, (a) => Math.max(a, 1e-5) ** alpha);
    const g = Math.exp(sc.reduce((acc, v) => acc + Math.log(v), 0) / k);
    const ws = Float32Array.from(w, (v, i) => v * sc[i % k] / g);
    const xs = Float32Array.from(x, (v, i) => v / (sc[i % k] / g));
    const { relError } = await quantizeW4A16({
      w: ws,
      bias,
      n,
      k,
      x: xs,
      s,
      yRef,
      matmul: cpuMatMul,
    });
    if (alpha === 0) today = relError;
    if (relError < best) [best, bestAlpha] = [relError, alpha];
  }
  sumToday += today;
  sumAwq += best;
  console.log(
    `| ${base} | [${n}, ${k}] ${s} | ${today.toFixed(4)} | ${best.toFixed(4)} (${bestAlpha}) | ${
      (100 * (best / today - 1)).toFixed(1)
    }% |`,
  );
}
console.log(
  `mean: today ${(sumToday / names.length).toFixed(4)}, AWQ ${(sumAwq / names.length).toFixed(4)}`,
);
reader.close();
