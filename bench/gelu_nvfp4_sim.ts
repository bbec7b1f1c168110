/**
 * CPU simulation (issue 18): post-GELU inputs (`mlp.fc2`) of the bundled model in three
 * activation modes, each layer fitted at rank 16 on its calibration rows —
 *
 * - INT4 unsigned: `X̂ + c` (c = GELU_SHIFT) in unsigned INT4 codes, shift folded into the bias
 *   (what post-GELU layers use today);
 * - NVFP4 signed: the NVFP4 fit with signed E2M1 codes of `X̂`;
 * - NVFP4 shifted: the same NVFP4 layer (weights, λ, low-rank) with its activations quantized as
 *   NVFP4 codes of `X̂ + c ≥ 0` (the shift folded into the bias as INT4 does) — no kernel has this
 *   mode; the fit was searched under signed scoring, so this is a lower bound on its gain.
 *
 * Reads the calibration statistics `deno task eval` caches (models/.cache/*.calib.safetensors).
 *
 * deno run -A bench/gelu_nvfp4_sim.ts [--rank 16]
 */
import { parseArgs } from "node:util";
import { readCalibStats } from "../quant/calib.ts";
import { quantizeLinear } from "../quant/layer.ts";
import { floatOutput, gemmActValues, relativeError, simulateW4A4 } from "../quant/baselines.ts";
import { GELU_SHIFT } from "../formats/packing.ts";
import { SafetensorsReader } from "../formats/safetensors.ts";
import type { PackedWeight } from "../formats/packing.ts";
import { cachedPath, FLOAT_MODEL } from "../cli/_models.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { rank: { type: "string", default: "16" } },
});
const r = Number(values.rank);
const calibPath = await cachedPath(FLOAT_MODEL, "calib.safetensors");
const calib = await readCalibStats(calibPath).catch((e) => {
  throw new Error(
    `Cannot read ${calibPath}: ${e.message}; run \`deno task eval --seeds 1 --steps 2\` once to build it`,
  );
});
const reader = await SafetensorsReader.open(FLOAT_MODEL);
const f16 = (b: Uint8Array) => Float32Array.from(new Float16Array(b.slice().buffer));
const f32 = (b: Uint8Array) => new Float32Array(b.slice().buffer);
console.log(
  `post-GELU layers of ${FLOAT_MODEL}, rank ${r}, calibration rows (relative output error)`,
);
console.log(
  "| layer | INT4 unsigned | NVFP4 signed | NVFP4 shifted |\n| --- | ---: | ---: | ---: |",
);
for (const base of [...calib.layers.keys()].filter((b) => b.endsWith("mlp.fc2")).sort()) {
  const stats = calib.layers.get(base)!;
  const [n, k] = reader.tensors.get(`${base}.weight`)!.shape;
  const w = await reader.readFloat32(`${base}.weight`);
  const bias = await reader.readFloat32(`${base}.bias`);
  const { samples: x, s } = stats;
  const yRef = await floatOutput(w, bias, x, { m: s, n, k });
  const opts = { method: "svdquant", r, stats, rankZeroFloor: false } as const;
  const int4 = await quantizeLinear(base, w, bias, n, k, {
    ...opts,
    format: "int4",
    postGelu: true,
  });
  const fp4 = await quantizeLinear(base, w, bias, n, k, { ...opts, format: "nvfp4" });
  const t = (s: string) => fp4.tensors.get(s)!.data;
  const residual: PackedWeight = {
    format: "nvfp4",
    n,
    k,
    qweight: new Uint32Array(t("qweight").slice().buffer),
    wscales: t("wscales").slice(),
    tensorScale: f32(t("tensor_scale"))[0],
  };
  const smooth = fp4.tensors.has("smooth") ? f32(t("smooth")) : null;
  const rr = fp4.r;
  const layer = {
    n,
    k,
    residual,
    smooth,
    r: rr,
    down: rr > 0 ? f16(t("lora_down")) : new Float32Array(0),
    up: rr > 0 ? f16(t("lora_up")) : new Float32Array(0),
    bias: f32(t("bias")),
    actMode: "nvfp4" as const,
  };
  const signed = relativeError(await simulateW4A4(layer, x, s), yRef);
  // Shifted: codes of X̂ + c, dequantized, minus c (≡ the shift folded into the bias).
  const xs = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) xs[i] = x[i] / (smooth ? smooth[i % k] : 1) + GELU_SHIFT;
  const xa = gemmActValues(xs, s, k, "nvfp4", null);
  let negatives = 0;
  for (let i = 0; i < xa.length; i++) {
    if (xs[i] < 0) negatives++;
    xa[i] -= GELU_SHIFT;
  }
  const shifted = relativeError(await simulateW4A4(layer, x, s, undefined, xa), yRef);
  console.log(
    `| ${base} | ${int4.relError.toFixed(4)} | ${signed.toFixed(4)} (stored ${
      fp4.relError.toFixed(4)
    }) | ${shifted.toFixed(4)} |` + (negatives ? ` (${negatives} shifted inputs < 0)` : ""),
  );
}
reader.close();
