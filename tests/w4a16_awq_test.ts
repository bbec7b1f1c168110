/**
 * W4A16 with activation-aware scaling, end to end: the tiny fixture model is quantized (`awq`)
 * with calibration rows whose adaLN inputs carry planted outlier channels, so its W4A16 layers
 * store `smooth`; the file is opened by the runtime, the layer built by runtime/linears.ts and run on the
 * GPU (GEMV and tiled paths, f32 and f16), and compared with (a) the float64 reference of the
 * stored tensors (kernels/gemm_w4a16 bounds, ../kernels/gemm_f16/_gemm_check.ts) and (b) the
 * quantizer's own CPU simulation of the same weights (quant/layer.ts `evaluateQuantized`, f32:
 * relative difference < 1e-5). Also: a W4A16 file without `smooth` (the committed bundled INT4
 * file, made before the scaling existed) loads and runs as before, and a `smooth` of the wrong
 * shape is refused with a FormatError naming it.
 */
import assert from "node:assert/strict";
import { quantizeCheckpoint } from "../convert/model.ts";
import type { CalibStats } from "../quant/calib.ts";
import { evaluateQuantized, type QuantizedLinear, type TensorEntry } from "../quant/layer.ts";
import { floatOutput, relativeError } from "../quant/baselines.ts";
import { ModelFile } from "../runtime/model_file.ts";
import { createLinear, policySpec } from "../runtime/linears.ts";
import type { StoredTensor } from "../runtime/linear.ts";
import { FormatError } from "../gpu/errors.ts";
import { HAS_GPU, NO_GPU_REASON, poison, Rng, testGpu } from "../gpu/_testing.ts";
import { SafetensorsReader } from "../formats/safetensors.ts";
import type { Int4Weight } from "../formats/packing.ts";
import { actBytes, type ActDtype, fromActBytes, toActArray } from "../kernels/_wgsl.ts";
import { gemmW4A16Ref } from "../kernels/gemm_w4a16/gemm_w4a16_ref.ts";
import { absProducts, checkGemmOutput } from "../kernels/gemm_f16/_gemm_check.ts";
import { decode, type Decoded, encode } from "./_mutate.ts";

const FIXTURE = new URL("./fixtures/tiny_dit.safetensors", import.meta.url).pathname;
const BUNDLED_INT4 = new URL("../models/dit_emoji.int4.safetensors", import.meta.url).pathname;
const LAYER = "blocks.0.adaLN_modulation.1";
const D = 64; // the fixture's hidden size: adaLN is [N = 6·64, K = 64]
const OUTLIERS = new Set([5, 17, 42]);
if (!HAS_GPU) console.warn(`w4a16 AWQ end-to-end tests skipped: ${NO_GPU_REASON}`);

/** Rows of an adaLN input with three outlier channels (×30), seeded. */
function rows(rng: Rng, s: number): Float32Array {
  return Float32Array.from(rng.normals(s * D), (v, i) => v * (OUTLIERS.has(i % D) ? 30 : 1));
}

/** Calibration statistics for the two adaLN layers (the others fall back to synthetic ones). */
function calib(): CalibStats {
  const rng = new Rng(1818);
  const layers = new Map();
  for (const base of ["blocks.0.adaLN_modulation.1", "blocks.1.adaLN_modulation.1"]) {
    const s = 96, samples = rows(rng, s), amax = new Float32Array(D);
    for (let i = 0; i < samples.length; i++) {
      amax[i % D] = Math.max(amax[i % D], Math.abs(samples[i]));
    }
    layers.set(base, { k: D, amax: [amax], samples, s });
  }
  return { buckets: 1, layers };
}

/** The tensors of `base` in the quantizer's form, from the opened file. */
async function asQuantized(f: ModelFile, base: string, n: number, k: number) {
  const tensors = await f.linearTensors(base);
  const q: QuantizedLinear = {
    name: base,
    method: "w4a16",
    format: "int4",
    n,
    k,
    r: 0,
    tensors: new Map(
      [...tensors].map(([s, t]) => {
        const st = t as StoredTensor;
        return [s, { dtype: st.dtype as TensorEntry["dtype"], shape: st.shape, data: st.data }];
      }),
    ),
    relError: NaN,
    bytesBefore: 0,
    bytesAfter: 0,
  };
  return { tensors, q };
}

/** Runs the runtime's linear for `base` of `f` on `x` [M, K]; returns Y [M, N]. */
async function runLinear(
  f: ModelFile,
  base: string,
  m: number,
  dtype: ActDtype,
  x: Float32Array,
  n: number,
  k: number,
): Promise<Float32Array> {
  const gpu = (await testGpu())!;
  const op = await createLinear(gpu, {
    name: base,
    m,
    n,
    k,
    dtype,
    ...policySpec(f.policyOf(base)),
  }, await f.linearTensors(base));
  const xb = await gpu.upload("buffer test x", toActArray(x, dtype));
  const yb = await gpu.upload("buffer test y", poison(m * n * actBytes(dtype)));
  try {
    assert.equal(op.kind, "w4a16");
    await gpu.runChecked(`run ${base}`, op.dispatch(xb, yb));
    return Float32Array.from(fromActBytes(await gpu.read(yb), dtype, m * n));
  } finally {
    op.destroy();
    gpu.destroy(xb, yb);
  }
}

/** GPU output vs the float64 reference of the stored tensors, with the kernel tests' bound. */
function checkAgainstRef(
  label: string,
  got: Float32Array,
  tensors: Map<string, StoredTensor | Float32Array>,
  x: Float32Array,
  m: number,
  n: number,
  k: number,
  dtype: ActDtype,
) {
  const st = (s: string) => tensors.get(s) as StoredTensor | undefined;
  const f32 = (t: StoredTensor) => new Float32Array(t.data.slice().buffer);
  const weight: Int4Weight = {
    format: "int4",
    n,
    k,
    qweight: new Uint32Array(st("qweight")!.data.slice().buffer),
    wscales: Float32Array.from(new Float16Array(st("wscales")!.data.slice().buffer)),
  };
  const bias = f32(st("bias")!);
  const smooth = st("smooth") ? f32(st("smooth")!) : undefined;
  const xs = toActArray(x, dtype);
  const ref = gemmW4A16Ref({ m, x: xs, weight, bias, smooth });
  const xd = smooth ? Float64Array.from(xs, (v, i) => v / smooth[i % k]) : xs;
  const w = Float32Array.from(
    { length: n * k },
    (_, i) => {
      const word = weight.qweight[i >> 3], q = ((word >>> (4 * (i & 7))) & 15) << 28 >> 28;
      return q * weight.wscales[Math.floor(i / 64)];
    },
  );
  checkGemmOutput(label, got, ref, absProducts(m, k, n, xd, w, bias), dtype === "f16");
}

Deno.test({
  name: "W4A16 AWQ end to end: quantized file with smooth → runtime GPU linear = CPU simulation",
  ignore: !HAS_GPU, // NO_GPU_REASON
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      const out = `${dir}/q.safetensors`;
      const reports = await quantizeCheckpoint(FIXTURE, out, {
        method: "rtn",
        format: "int4",
        rank: 0,
        calib: calib(),
        awq: true,
      });
      const rep = reports.find((r) => r.name === LAYER)!;
      assert.equal(rep.method, "w4a16");
      assert.ok(rep.alpha! > 0, `the planted outliers choose α > 0 (got ${rep.alpha})`);
      const f = await ModelFile.open(out); // validates the file, smooth included
      try {
        assert.ok(f.has(`${LAYER}.smooth`));
        const n = 6 * D, k = D;
        const { tensors, q } = await asQuantized(f, LAYER, n, k);
        const src = await SafetensorsReader.open(FIXTURE);
        const wFloat = await src.readFloat32(`${LAYER}.weight`);
        const bFloat = await src.readFloat32(`${LAYER}.bias`);
        src.close();
        const rng = new Rng(7);
        for (const [m, dtype] of [[2, "f32"], [40, "f32"], [2, "f16"], [40, "f16"]] as const) {
          const x = Float32Array.from(toActArray(rows(rng, m), dtype));
          const label = `${LAYER} M=${m} ${dtype}`;
          const got = await runLinear(f, LAYER, m, dtype, x, n, k);
          checkAgainstRef(label, got, tensors, x, m, n, k, dtype);
          if (dtype === "f32") {
            // the quantizer's simulation of the stored tensors (its relError's arithmetic)
            const sim = await evaluateQuantized(q, x, m);
            const d = relativeError(got, sim);
            assert.ok(d < 1e-5, `${label}: GPU vs quantizer simulation ${d}`);
            // and close to the float layer (held-out rows of the calibration distribution)
            const yFloat = await floatOutput(wFloat, bFloat, x, { m, n, k });
            const e = relativeError(got, yFloat);
            console.log(`${label}: vs float ${e.toFixed(4)} (calibration error ${rep.relError})`);
            assert.ok(e < 0.1, `${label}: relative error vs the float layer ${e}`);
          }
        }
      } finally {
        f.close();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "W4A16 without smooth (the bundled INT4 file, made before AWQ) loads and runs as before",
  ignore: !HAS_GPU, // NO_GPU_REASON
  async fn() {
    const f = await ModelFile.open(BUNDLED_INT4);
    try {
      const base = "blocks.0.adaLN_modulation.1";
      assert.equal(f.policyOf(base).method, "w4a16");
      assert.ok(!f.has(`${base}.smooth`));
      const k = Number(f.config.hidden_size), n = 6 * k;
      const { tensors } = await asQuantized(f, base, n, k);
      const x = new Rng(3).normals(2 * k);
      const got = await runLinear(f, base, 2, "f32", x, n, k);
      checkAgainstRef(`${base} (no smooth)`, got, tensors, x, 2, n, k, "f32");
    } finally {
      f.close();
    }
  },
});

Deno.test("W4A16 smooth of the wrong shape or dtype: FormatError naming the tensor", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const out = `${dir}/q.safetensors`;
    await quantizeCheckpoint(FIXTURE, out, {
      method: "rtn",
      format: "int4",
      rank: 0,
      calib: calib(),
      awq: true,
    });
    const good = decode(await Deno.readFile(out));
    const name = `${LAYER}.smooth`;
    assert.ok(good.tensors.some((t) => t.name === name));
    const bad = (change: (t: Decoded["tensors"][number]) => Decoded["tensors"][number]) =>
      encode(
        { ...good, tensors: good.tensors.map((t) => (t.name === name ? change(t) : t)) },
        true,
      );
    const cases: [string, Uint8Array, RegExp][] = [
      [
        "shape",
        bad((t) => ({ ...t, shape: [D / 2, 2] })),
        /shape \[32, 2\] contradicts model_config, which needs \[64\]/,
      ],
      [
        "dtype",
        bad((t) => ({ ...t, dtype: "F16", data: t.data.subarray(0, 2 * D) })),
        /dtype F16, expected F32/,
      ],
    ];
    for (const [what, bytes, message] of cases) {
      const path = `${dir}/bad_${what}.safetensors`;
      await Deno.writeFile(path, bytes);
      await assert.rejects(
        () => ModelFile.open(path),
        (e: unknown) =>
          e instanceof FormatError && message.test(e.message) && e.message.includes(name),
        what,
      );
    }
    // the same file with the layer's smooth removed still opens (the tensor is optional)
    const without = `${dir}/without.safetensors`;
    await Deno.writeFile(
      without,
      encode({ ...good, tensors: good.tensors.filter((t) => t.name !== name) }, true),
    );
    (await ModelFile.open(without)).close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
