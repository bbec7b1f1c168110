/**
 * Per-layer error of two W4A16 files (e.g. plain and `--awq`) on the inputs of the eval's own
 * sampling trajectory rather than the calibration's: the float model generates as `deno task
 * eval` does (4 seeds, classes 0, 5, 10, 15 mod the class count, seed 1000, 20 DPM-Solver++
 * steps, cfg 4, f32 activations) while a calibration recorder keeps up to 1024 input rows of
 * every linear; each W4A16 layer of both files is then scored on those rows by the quantizer's
 * CPU simulation of its stored tensors (quant/layer.ts `evaluateQuantized`).
 *
 * deno run -A bench/awq_eval_rows.ts PLAIN.safetensors AWQ.safetensors [--model float.safetensors]
 */
import { parseArgs } from "node:util";
import { getGpu } from "../gpu/device.ts";
import { Pipeline } from "../runtime/pipeline.ts";
import { ModelFile } from "../runtime/model_file.ts";
import type { StoredTensor } from "../runtime/linear.ts";
import { CalibRecorder } from "../quant/calib.ts";
import { evaluateQuantized, type QuantizedLinear, type TensorEntry } from "../quant/layer.ts";
import { floatOutput, relativeError } from "../quant/baselines.ts";
import { FLOAT_MODEL } from "../cli/_models.ts";

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: { model: { type: "string" } },
});
if (positionals.length !== 2) throw new TypeError("Cannot measure: give two W4A16 files");
const float = values.model ?? FLOAT_MODEL, seeds = 4;
const pipe = await Pipeline.load(await getGpu(), float, { images: seeds, dtype: "f32" });
const recorder = new CalibRecorder({ buckets: 1, maxSamples: 1024, seed: 7 });
const classes = pipe.model.config.num_classes;
await pipe.generate({
  classes: Array.from({ length: seeds }, (_, i) => (i * 5) % classes),
  seed: 1000,
  steps: 20,
  cfg: 4,
  calibration: { recorder, buckets: 1 },
});
pipe.destroy();
const stats = recorder.stats();
const files = [await ModelFile.open(positionals[0]), await ModelFile.open(positionals[1])];
const source = await ModelFile.open(float);

async function asQuantized(f: ModelFile, base: string, n: number, k: number) {
  const tensors = new Map<string, TensorEntry>();
  for (const [s, t] of await f.linearTensors(base)) {
    const st = t as StoredTensor;
    tensors.set(s, { dtype: st.dtype as TensorEntry["dtype"], shape: st.shape, data: st.data });
  }
  const q: QuantizedLinear = {
    name: base,
    method: "w4a16",
    format: "int4",
    n,
    k,
    r: 0,
    tensors,
    relError: NaN,
    bytesBefore: 0,
    bytesAfter: 0,
  };
  return q;
}

console.log(`W4A16 layer error on the eval trajectory's inputs (${float})`);
console.log(
  "| layer | rows | smooth | plain | AWQ | change |\n| --- | ---: | --- | ---: | ---: | ---: |",
);
const sums = [0, 0];
let count = 0;
for (const base of [...stats.layers.keys()].sort()) {
  if (files.some((f) => f.policyOf(base).method !== "w4a16")) continue;
  const st = stats.layers.get(base)!;
  const w = await source.float(`${base}.weight`);
  const bias = source.has(`${base}.bias`) ? await source.float(`${base}.bias`) : null;
  const k = st.k, n = w.length / k;
  const y = await floatOutput(w, bias, st.samples, { m: st.s, n, k });
  const e = [];
  for (const f of files) {
    e.push(
      relativeError(await evaluateQuantized(await asQuantized(f, base, n, k), st.samples, st.s), y),
    );
  }
  sums[0] += e[0];
  sums[1] += e[1];
  count++;
  console.log(
    `| ${base} | ${st.s} | ${files[1].has(`${base}.smooth`)} | ${e[0].toFixed(4)} | ${
      e[1].toFixed(4)
    } | ${(100 * (e[1] / e[0] - 1)).toFixed(1)}% |`,
  );
}
console.log(
  `mean over ${count}: plain ${(sums[0] / count).toFixed(4)}, AWQ ${(sums[1] / count).toFixed(4)}`,
);
for (const f of [...files, source]) f.close();
