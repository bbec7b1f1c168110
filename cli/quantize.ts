/**
 * `deno task quantize <in.safetensors> --out <out.safetensors> [options]`: float checkpoint →
 * pre-quantized file. Prints a progress line per layer and a closing table; errors are one line
 * (no stack trace) and leave no partial output.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { readCalibStats } from "../quant/calib.ts";
import {
  checkInput,
  type LayerReport,
  type ModelMethod,
  quantizeCheckpoint,
} from "../convert/model.ts";
import { DEFAULT_DIT_POLICY, parsePolicy } from "../quant/policy.ts";
import { type Budget, parseBudget } from "../quant/budget.ts";
import type { WeightFormat } from "../formats/packing.ts";
import { paroTensors } from "../quant/paro_store.ts";
import { SPARSE_ATTENTION_TILES } from "../kernels/sparse_attention/sparse_attention.ts";
import { checkOutputFile, fail, formatBytes, runCli } from "./_cli.ts";
import { calibration, paroPlan } from "./_models.ts";

const USAGE = `Usage: deno task quantize <in.safetensors> --out <out.safetensors> [options]

The input is a DiT checkpoint, or a FLUX.1 transformer: a BFL file (flux1-dev.safetensors), a
diffusers transformer/ folder, or a whole FLUX model folder (its transformer/ is quantized with
the FLUX policy: W4A4 + low-rank attention/MLP, W4A16 modulation, 16-bit elsewhere).

Options:
  --format int4|nvfp4      4-bit residual format (default int4)
  --method M               svdquant|dilate|smooth|rtn|w4a16 for the W4A4 layers (default svdquant)
  --rank R                 low-rank rank (default 32; 0 = none)
  --calib-prompts FILE     FLUX: calibrate with these prompts (one per line) through the float
                           model folder's encoders and transformer (--calib-steps N, default 4;
                           --calib-size PX, default the folder's image size)
  --calib FILE             calibration statistics (safetensors written by the runtime's calibration mode);
                           without it, synthetic heavy-tailed activations stand in
  --calibrate              record them now: run the float model (pixel or latent, e.g. a converted
                           DiT-XL/2) over every class on the GPU; cached under models/.cache/
  --policy FILE            JSON layer rules, tried before the DiT defaults
  --alpha-step S           search alpha on a full grid of this step (default: coarse-to-fine, 0.25
                           then 0.05 around the best; the reference's full grid is 0.05)
  --rounds N               low-rank refinement rounds (default 3)
  --awq                    W4A16 layers: search an activation-aware per-channel scale (AWQ-style,
                           alpha 0..1 by calibration error; stored as <layer>.smooth). Off by
                           default: on the bundled model it lowers layer errors, not image quality
  --workers N              quantize N layers at once in Web Workers, the last layer split
                           across them (default 1; the file is byte-identical; ignored with
                           --gpu and --budget)
  --budget BYTES|Nbits     per-layer format and rank under a budget for the W4A4 layers: BYTES of
                           their tensors, or N bits per weight (e.g. 4.6bits); each layer is measured
                           as int4/nvfp4 × rank 0/16/32/64 and the least total error that fits is kept
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
      "calib-prompts": { type: "string" },
      "calib-steps": { type: "string", default: "4" },
      "calib-size": { type: "string" },
      calibrate: { type: "boolean", default: false },
      policy: { type: "string" },
      "alpha-step": { type: "string" },
      budget: { type: "string" },
      rounds: { type: "string", default: "3" },
      awq: { type: "boolean" },
      workers: { type: "string", default: "1" },
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
  const step = values["alpha-step"] === undefined ? undefined : Number(values["alpha-step"]);
  if (step !== undefined && !(step > 0 && step <= 1)) {
    fail(`--alpha-step must be in (0, 1], got "${values["alpha-step"]}"`);
  }
  let budget: Budget | undefined;
  if (values.budget !== undefined) {
    try {
      budget = parseBudget(values.budget);
    } catch (e) {
      fail((e as Error).message);
    }
  }
  const rounds = Number(values.rounds);
  if (!Number.isInteger(rounds) || rounds < 0 || rounds > 20) {
    fail(`--rounds must be an integer in 0..20, got "${values.rounds}"`);
  }
  const workers = Number(values.workers);
  if (!Number.isInteger(workers) || workers < 1 || workers > 64) {
    fail(`--workers must be an integer in 1..64, got "${values.workers}"`);
  }
  const alphas = step === undefined
    ? undefined
    : Array.from({ length: Math.round(1 / step) + 1 }, (_, i) => Math.min(1, i * step));

  const input = positionals[0];
  if (method === "w8a8") {
    fail(
      "--method w8a8 writes a file this runtime cannot run (it has no W8A8 kernels); it is a " +
        "baseline for the quantizer's error tables (quant/baselines.ts): use another method",
    );
  }
  await checkOutputFile(values.out);
  const { fluxTransformerPath } = await import("../runtime/flux/weights.ts");
  const fluxInput = await fluxTransformerPath(input);
  if (fluxInput) {
    if (values.paro !== undefined) fail("--paro is for DiT models, not FLUX");
    const real = (p: string) => Deno.realPath(p).catch(() => null);
    const [src, dst] = await Promise.all([real(fluxInput), real(values.out)]);
    if (src !== null && src === dst) {
      fail(`Cannot write ${values.out}: it is the input file; give another --out path`);
    }
    return await quantizeFluxCli(fluxInput, values.out, {
      model: input,
      calibPrompts: values["calib-prompts"],
      calibSteps: values["calib-steps"],
      calibSize: values["calib-size"],
      method,
      format,
      rank,
      alphas,
      rounds,
      awq: values.awq,
      gpu: values.gpu,
      quiet: values.quiet,
      calib: values.calib,
      policy: values.policy,
    });
  }
  await checkInput(input, values.out); // before a --paro calibration runs the model
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
  const bar = new Progress(t0, (await Deno.stat(input)).size);
  const reports = await quantizeCheckpoint(input, values.out, {
    method,
    format,
    rank,
    calib,
    policy,
    alphas,
    rounds,
    awq: values.awq,
    matmul,
    workers,
    paro,
    budget,
    onLayer: values.quiet ? undefined : (r, i, n) => console.log(bar.line(r, i, n)),
    onMeasure: values.quiet ? undefined : (l, i, n) =>
      console.log(
        `measuring [${i + 1}/${n}] ${l.name}: ` +
          l.choices.map((c) => `${c.format} r${c.r} ${c.error.toFixed(4)}`).join(", "),
      ),
    onPlan: (p) => {
      console.log(`budget: ${formatBytes(p.bytes)} for the W4A4 layers (${p.how} assignment)`);
      bar.t0 = performance.now(); // the ETA covers the writing pass
    },
  }).finally(closeGpu);
  console.log(table(reports, (performance.now() - t0) / 1000, values.out));
}

/** FLUX: any layout (file, diffusers transformer folder, model folder) via quantizeFlux. */
async function quantizeFluxCli(input: string, out: string, o: {
  model: string;
  calibPrompts?: string;
  calibSteps: string;
  calibSize?: string;
  method: ModelMethod;
  format: WeightFormat;
  rank: number;
  alphas?: number[];
  rounds: number;
  awq?: boolean;
  gpu: boolean;
  quiet: boolean;
  calib?: string;
  policy?: string;
}): Promise<void> {
  const { quantizeFlux } = await import("../convert/flux_model.ts");
  const policy = o.policy ? parsePolicy(await Deno.readTextFile(o.policy), o.policy) : undefined;
  let calib = o.calib ? await readCalibStats(o.calib) : undefined;
  if (o.calibPrompts) {
    if (calib) fail("give --calib FILE or --calib-prompts FILE, not both");
    const prompts = (await Deno.readTextFile(o.calibPrompts)).split("\n").map((l) => l.trim())
      .filter((l) => l && !l.startsWith("#"));
    const steps = Number(o.calibSteps);
    if (!Number.isInteger(steps) || steps < 1 || steps > 50) {
      fail(`--calib-steps must be an integer in 1..50, got "${o.calibSteps}"`);
    }
    const size = o.calibSize === undefined ? undefined : Number(o.calibSize);
    const { calibrateFluxPrompts } = await import("../runtime/flux/calibrate.ts");
    const { getGpu } = await import("../gpu/device.ts");
    console.log(`calibrating with ${prompts.length} prompts through the float model …`);
    calib = await calibrateFluxPrompts(await getGpu(), o.model, prompts, {
      steps,
      size,
      log: o.quiet ? undefined : (l) => console.log(l),
    });
  }
  if (!calib) console.log("note: no --calib file; using synthetic activation statistics");
  let matmul;
  let closeGpu = () => {};
  if (o.gpu) {
    const { gpuMatMul } = await import("../runtime/gpu_matmul.ts");
    const g = await gpuMatMul();
    matmul = g.matmul;
    closeGpu = g.close;
  }
  const t0 = performance.now();
  const reports = await quantizeFlux(input, out, {
    method: o.method,
    format: o.format,
    rank: o.rank,
    calib,
    policy,
    alphas: o.alphas,
    rounds: o.rounds,
    awq: o.awq,
    matmul,
    onLayer: o.quiet ? undefined : (r, i, n) => console.log(progressLine(r, i, n)),
  }).finally(closeGpu);
  console.log(table(reports, (performance.now() - t0) / 1000, out));
}

/** Progress bar: share of the input's bytes done, ETA from the rate so far, running error. */
class Progress {
  #done = 0;
  #errs: number[] = [];
  constructor(public t0: number, readonly total: number) {}

  line(r: LayerReport, i: number, n: number): string {
    this.#done += r.bytesBefore;
    if (r.method !== "copy" && r.method !== "float" && !Number.isNaN(r.relError)) {
      this.#errs.push(r.relError);
    }
    const f = Math.min(1, this.#done / this.total), width = 16, full = Math.round(f * width);
    const s = (performance.now() - this.t0) / 1000, eta = f > 0 ? s * (1 - f) / f : NaN;
    const mmss = (t: number) =>
      Number.isFinite(t)
        ? `${Math.floor(t / 60)}:${String(Math.round(t % 60)).padStart(2, "0")}`
        : "–";
    const mean = this.#errs.length
      ? (this.#errs.reduce((a, b) => a + b, 0) / this.#errs.length).toFixed(4)
      : "–";
    return `${"█".repeat(full)}${"░".repeat(width - full)} ${(100 * f).toFixed(0).padStart(3)}% ` +
      `ETA ${mmss(eta)} mean err ${mean} ${progressLine(r, i, n)}`;
  }
}

function progressLine(r: LayerReport, i: number, n: number): string {
  const idx = `[${String(i + 1).padStart(String(n).length)}/${n}]`;
  const what = r.method === "copy"
    ? `copy ${r.format}`
    : `${methodCell(r)} ${r.format}${r.r ? ` r=${r.r}` : ""}`;
  const err = Number.isNaN(r.relError) ? "" : ` err ${r.relError.toFixed(4)}`;
  return `${idx} ${r.name} ${what}${err} ${formatBytes(r.bytesBefore)} → ${
    formatBytes(r.bytesAfter)
  } (${r.seconds.toFixed(1)} s)`;
}

/** The method column: W4A16 layers with their activation-aware scaling's α (`w4a16 α0.2`). */
function methodCell(r: LayerReport): string {
  return r.alpha === undefined ? r.method : `${r.method} α${r.alpha}`;
}

function table(reports: LayerReport[], seconds: number, out: string): string {
  const rows = reports.filter((r) => r.method !== "copy");
  const w = Math.max(5, ...rows.map((r) => r.name.length));
  const lines = [
    "",
    `${"layer".padEnd(w)}  ${"method".padEnd(13)} ${"format".padEnd(6)} ${"rank".padStart(4)} ${
      "rel.err".padStart(8)
    } ${"before".padStart(10)} ${"after".padStart(10)}`,
  ];
  for (const r of rows) {
    const err = Number.isNaN(r.relError) ? "–" : r.relError.toFixed(4);
    lines.push(
      `${r.name.padEnd(w)}  ${methodCell(r).padEnd(13)} ${r.format.padEnd(6)} ${
        String(r.r).padStart(4)
      } ${err.padStart(8)} ` +
        `${formatBytes(r.bytesBefore).padStart(10)} ${formatBytes(r.bytesAfter).padStart(10)}`,
    );
  }
  const sum = (f: (r: LayerReport) => number) => reports.reduce((a, r) => a + f(r), 0);
  const before = sum((r) => r.bytesBefore), after = sum((r) => r.bytesAfter);
  const errs = rows.filter((r) => r.method !== "float").map((r) => r.relError)
    .filter((e) => !Number.isNaN(e));
  const meanErr = errs.length ? errs.reduce((a, b) => a + b, 0) / errs.length : NaN;
  lines.push(
    `${"total".padEnd(w)}  ${String(rows.length + " layers").padEnd(25)} ${
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
