/**
 * How long quantizing FLUX.1 takes and how much memory it needs: one double block (image and
 * text streams) and one single block at FLUX.1's shapes (hidden 3072, MLP 12288) — or scaled down
 * by `--scale S` (hidden 3072/S) to finish on a slow machine — with random weights and synthetic
 * calibration statistics (256 rows), the FLUX policy (W4A4 + low-rank SVDQuant for attention/MLP,
 * post-GELU for the MLPs' second linears, W4A16 for modulation). Prints seconds and peak resident
 * memory per layer, then projects the full model (19 double + 38 single blocks) from the
 * measured seconds per weight element of each method (every cost of the quantizer — randomized
 * SVD, candidate scoring, clipping search — is linear in N·K at fixed rank and sample count).
 *
 * ```sh
 * deno run -A bench/flux_quantize_bench.ts [--scale 4] [--gpu] [--format int4|nvfp4] [--alpha-step 0.1]
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { syntheticStats } from "../quant/calib.ts";
import { FLUX_POLICY, fluxTensorList } from "../quant/flux_policy.ts";
import { quantizeLinear } from "../quant/layer.ts";
import type { WeightFormat } from "../formats/packing.ts";
import { policyFor } from "../quant/policy.ts";
import { FLUX1_CONFIG } from "../runtime/flux/config.ts";
import { Rng } from "../gpu/_testing.ts";
import { benchMatMul } from "./_matmul.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    gpu: { type: "boolean", default: false },
    format: { type: "string", default: "int4" },
    scale: { type: "string", default: "1" },
    "alpha-step": { type: "string", default: "0.1" },
  },
});
const format = values.format as WeightFormat;
const scale = Number(values.scale);
const step = Number(values["alpha-step"]);
const alphas = Array.from({ length: Math.round(1 / step) + 1 }, (_, i) => Math.min(1, i * step));
const { matmul, where } = await benchMatMul(values.gpu);

/** Peak resident memory so far (Linux VmHWM), else the current RSS. */
function peakRss(): number {
  try {
    const m = Deno.readTextFileSync("/proc/self/status").match(/VmHWM:\s+(\d+) kB/);
    if (m) return Number(m[1]) * 1024;
  } catch { /* not Linux */ }
  return Deno.memoryUsage().rss;
}

const full = { ...FLUX1_CONFIG };
const cfg = { ...full, hidden_size: full.hidden_size / scale, num_heads: full.num_heads / scale };
const { linears } = fluxTensorList({ ...cfg, depth: 1, depth_single_blocks: 1 });
const blockLayers = linears.filter((l) => l.base.includes("_blocks."));
console.log(
  `FLUX quantizer benchmark: svdquant ${format}, R=32, α step ${step} (${alphas.length}), ` +
    `hidden ${cfg.hidden_size} (1/${scale} of FLUX.1), products on ${where}; ` +
    new Date().toISOString(),
);
const rng = new Rng(11);
const perElement = new Map<string, { s: number; elems: number }>();
for (const l of blockLayers) {
  const rule = policyFor(l.base, FLUX_POLICY);
  const method = rule.method === "float" ? "float" : rule.method;
  const w = rng.normals(l.n * l.k, 1 / Math.sqrt(l.k));
  const bias = l.bias ? rng.normals(l.n, 0.02) : null;
  const stats = syntheticStats(new Map([[l.base, l.k]]), {
    samples: 256,
    postGelu: rule.postGelu ? [l.base] : [],
  }).layers.get(l.base)!;
  const t0 = performance.now();
  const q = await quantizeLinear(l.base, w, bias, l.n, l.k, {
    method,
    format,
    r: 32,
    stats,
    postGelu: rule.postGelu,
    alphas,
    matmul,
  });
  const s = (performance.now() - t0) / 1000;
  const acc = perElement.get(method) ?? { s: 0, elems: 0 };
  acc.s += s;
  acc.elems += l.n * l.k;
  perElement.set(method, acc);
  console.log(
    `  ${l.base.padEnd(32)} [N=${l.n}, K=${l.k}] ${method.padEnd(8)} ${
      s.toFixed(1).padStart(7)
    } s` +
      `  rel.err ${q.relError.toFixed(4)}  peak RSS ${(peakRss() / 2 ** 20).toFixed(0)} MiB`,
  );
}
// projection: the real model's element count per method × measured seconds per element
const real = fluxTensorList(full).linears.filter((l) => l.base.includes("_blocks."));
let total = 0;
const parts: string[] = [];
for (const [method, { s, elems }] of perElement) {
  const n = real.filter((l) => {
    const m = policyFor(l.base, FLUX_POLICY).method;
    return m === method;
  }).reduce((a, l) => a + l.n * l.k, 0);
  const t = n * s / elems;
  total += t;
  parts.push(
    `${method} ${(n / 1e9).toFixed(2)} G weights × ${(s / elems * 1e6).toFixed(2)} µs = ${
      (t / 3600).toFixed(1)
    } h`,
  );
}
console.log(
  `projected full FLUX.1 transformer (19 double + 38 single blocks): ${
    (total / 3600).toFixed(1)
  } h` +
    ` (${parts.join("; ")}); peak RSS ${(peakRss() / 2 ** 20).toFixed(0)} MiB`,
);
