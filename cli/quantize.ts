/**
 * `deno task quantize <in.safetensors> --out <out.safetensors> [options]`: float checkpoint →
 * pre-quantized file. Prints a progress line per layer and a closing table; errors are one line
 * (no stack trace) and leave no partial output.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { readCalibStats } from "../quant/calib.ts";
import { type LayerReport, type ModelMethod, quantizeCheckpoint } from "../quant/model.ts";
import { DEFAULT_DIT_POLICY, parsePolicy } from "../quant/policy.ts";
import type { WeightFormat } from "../quant/packing.ts";
import { paroTensors } from "../quant/paro_store.ts";
import { SPARSE_ATTENTION_TILES } from "../kernels/sparse_attention/sparse_attention.ts";
import { fail, formatBytes, runCli } from "./_cli.ts";
import { calibration, paroPlan } from "./_models.ts";

const USAGE = `Usage: deno task quantize <in.safetensors> --out <out.safetensors> [options]

Options:
  --format int4|nvfp4      4-bit residual format (default int4)
  --method M               svdquant|dilate|smooth|rtn|w4a16|w8a8 for the W4A4 layers (default svdquant)
  --rank R                 low-rank rank (default 32; 0 = none)
  --calib FILE             calibration statistics (safetensors written by the runtime's calibration mode);
                           without it, synthetic heavy-tailed activations stand in
  --calibrate              record them now: run the float model (pixel or latent, e.g. a converted
                           DiT-XL/2) over every class on the GPU; cached under models/.cache/
  --policy FILE            JSON layer rules, tried before the DiT defaults
  --alpha-step S           smoothing search grid step for alpha (default 0.1; the reference uses 0.05)
  --rounds N               low-rank refinement rounds (default 3)
  --gpu                    run the big matrix products on the GPU (WebGPU)
  --paro DENSITY           also calibrate sparse attention (PAROAttention): run the float model on
                           the GPU, record its attention maps, choose per layer and head a token order
                           and a block mask keeping DENSITY (0..1] of the tiles; stored in the file
                           (use it with: deno task gen --attention sparse)
  --paro-tile N            mask tile: 8, 16, 32 or 64 (default: the largest with ≥ 8 tiles per side)
  --paro-shared            one mask for all timesteps (default: one per timestep bucket)
  --quiet                  no per-layer lines
  -h, --help               this text`;

const METHODS: ModelMethod[] = ["svdquant", "dilate", "smooth", "rtn", "w4a16", "w8a8"];

async function main(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      out: { type: "string", short: "o" },
      format: { type: "string", default: "int4" },
      method: { type: "string", default: "svdquant" },
      rank: { type: "string", default: "32" },
      calib: { type: "string" },
      calibrate: { type: "boolean", default: false },
      policy: { type: "string" },
      "alpha-step": { type: "string", default: "0.1" },
      rounds: { type: "string", default: "3" },
      gpu: { type: "boolean", default: false },
      paro: { type: "string" },
      "paro-tile": { type: "string" },
      "paro-shared": { type: "boolean", default: false },
      quiet: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  if (positionals.length !== 1) {
    fail(`expected one input checkpoint, got ${positionals.length}`, USAGE);
  }
  if (!values.out) fail("--out is required", USAGE);
  const format = values.format as WeightFormat;
  if (format !== "int4" && format !== "nvfp4") {
    fail(`--format must be int4 or nvfp4, got "${format}"`);
  }
  const method = values.method as ModelMethod;
  if (!METHODS.includes(method)) {
    fail(`--method must be one of ${METHODS.join(", ")}, got "${method}"`);
  }
  const rank = Number(values.rank);
  if (!Number.isInteger(rank) || rank < 0 || rank > 256) {
    fail(`--rank must be an integer in 0..256, got "${values.rank}"`);
  }
  const step = Number(values["alpha-step"]);
  if (!(step > 0 && step <= 1)) {
    fail(`--alpha-step must be in (0, 1], got "${values["alpha-step"]}"`);
  }
  const rounds = Number(values.rounds);
  if (!Number.isInteger(rounds) || rounds < 0 || rounds > 20) {
    fail(`--rounds must be an integer in 0..20, got "${values.rounds}"`);
  }
  const alphas = Array.from({ length: Math.round(1 / step) + 1 }, (_, i) => Math.min(1, i * step));

  const input = positionals[0];
  let paro;
  if (values.paro !== undefined) {
    const density = Number(values.paro);
    if (!(density > 0 && density <= 1)) fail(`--paro must be in (0, 1], got "${values.paro}"`);
    const tile = values["paro-tile"] === undefined ? undefined : Number(values["paro-tile"]);
    if (tile !== undefined && !SPARSE_ATTENTION_TILES.includes(tile)) {
      fail(`--paro-tile must be one of ${SPARSE_ATTENTION_TILES.join(", ")}`);
    }
    const plan = await paroPlan(
      input,
      { density, tile, perTimestep: !values["paro-shared"] },
      (line) => console.log(line),
    );
    paro = paroTensors(plan);
  } else if (values["paro-tile"] !== undefined || values["paro-shared"]) {
    fail("--paro-tile and --paro-shared need --paro DENSITY");
  }
  const policy = values.policy
    ? [...parsePolicy(await Deno.readTextFile(values.policy), values.policy), ...DEFAULT_DIT_POLICY]
    : undefined;
  if (values.calib && values.calibrate) fail("give --calib FILE or --calibrate, not both");
  const calib = values.calibrate
    ? await calibration(input, (line) => console.log(line))
    : values.calib
    ? await readCalibStats(values.calib)
    : undefined;
  let matmul;
  let closeGpu = () => {};
  if (values.gpu) {
    const { gpuMatMul } = await import("../runtime/gpu_matmul.ts");
    const g = await gpuMatMul();
    matmul = g.matmul;
    closeGpu = g.close;
  }
  if (!calib) console.log("note: no --calib file; using synthetic activation statistics");

  const t0 = performance.now();
  const reports = await quantizeCheckpoint(input, values.out, {
    method,
    format,
    rank,
    calib,
    policy,
    alphas,
    rounds,
    matmul,
    paro,
    onLayer: values.quiet ? undefined : (r, i, n) => console.log(progressLine(r, i, n)),
  }).finally(closeGpu);
  console.log(table(reports, (performance.now() - t0) / 1000, values.out));
}

function progressLine(r: LayerReport, i: number, n: number): string {
  const idx = `[${String(i + 1).padStart(String(n).length)}/${n}]`;
  const what = r.method === "copy"
    ? `copy ${r.format}`
    : `${r.method} ${r.format}${r.r ? ` r=${r.r}` : ""}`;
  const err = Number.isNaN(r.relError) ? "" : ` err ${r.relError.toFixed(4)}`;
  return `${idx} ${r.name} ${what}${err} ${formatBytes(r.bytesBefore)} → ${
    formatBytes(r.bytesAfter)
  } (${r.seconds.toFixed(1)} s)`;
}

function table(reports: LayerReport[], seconds: number, out: string): string {
  const rows = reports.filter((r) => r.method !== "copy");
  const w = Math.max(5, ...rows.map((r) => r.name.length));
  const lines = [
    "",
    `${"layer".padEnd(w)}  ${"method".padEnd(9)} ${"format".padEnd(6)} ${"rel.err".padStart(8)} ${
      "before".padStart(10)
    } ${"after".padStart(10)}`,
  ];
  for (const r of rows) {
    const err = Number.isNaN(r.relError) ? "–" : r.relError.toFixed(4);
    lines.push(
      `${r.name.padEnd(w)}  ${r.method.padEnd(9)} ${r.format.padEnd(6)} ${err.padStart(8)} ` +
        `${formatBytes(r.bytesBefore).padStart(10)} ${formatBytes(r.bytesAfter).padStart(10)}`,
    );
  }
  const sum = (f: (r: LayerReport) => number) => reports.reduce((a, r) => a + f(r), 0);
  const before = sum((r) => r.bytesBefore), after = sum((r) => r.bytesAfter);
  const errs = rows.filter((r) => r.method !== "float").map((r) => r.relError)
    .filter((e) => !Number.isNaN(e));
  const meanErr = errs.length ? errs.reduce((a, b) => a + b, 0) / errs.length : NaN;
  lines.push(
    `${"total".padEnd(w)}  ${String(rows.length + " layers").padEnd(16)} ${
      (Number.isNaN(meanErr) ? "–" : meanErr.toFixed(4)).padStart(8)
    } ` +
      `${formatBytes(before).padStart(10)} ${formatBytes(after).padStart(10)}`,
    `(all tensors: ${formatBytes(before)} → ${formatBytes(after)}, ${
      (after / before).toFixed(3)
    }×; ` +
      `rel.err: mean over the 4-bit and 8-bit layers; ${seconds.toFixed(1)} s) wrote ${out}`,
  );
  return lines.join("\n");
}

if (import.meta.main) await runCli(() => main(Deno.args));
