/**
 * Weight-only quantized T5 (convert/text_encoder.ts): the written file's tensors, its loading by
 * T5Encoder (same results as quantizing at load for w8a16, whose rounding is the same), refusals,
 * the CLI, and the measured quality (encoder-output cosine vs the f32 float encoder):
 * - tiny fixture (d 64, 2 layers, 2 × 40 tokens): w8a16 0.99994, w4a16 (RTN at load) 0.980;
 * - random T5 (d 256, 4 heads × 64, d_ff 512, 2 layers, 64 tokens, files written by the
 *   quantizer, f16 activations): w8a16 0.99993, w4a16 (clipped groups) 0.9881, float f16
 *   0.9999999.
 * w8a16 keeps cosine ≥ 0.99 everywhere, w4a16 does not on these random models: w8a16 is the
 * default of `deno task quantize:text`.
 */
import assert from "node:assert/strict";
import { HAS_GPU, NO_GPU_REASON, testGpu } from "../gpu/_testing.ts";
import { SafetensorsReader } from "../formats/safetensors.ts";
import { quantizeTextEncoder } from "./text_encoder.ts";
import { T5Encoder } from "../runtime/text/t5.ts";
import { writeRandomT5 } from "../runtime/text/_random.ts";
import { cosine, fixturePath, readGolden } from "../runtime/text/_golden.ts";

const ignore = !HAS_GPU; // NO_GPU_REASON explains the skip
if (ignore) console.warn(`quantized T5 GPU tests skipped: ${NO_GPU_REASON}`);

const TINY = fixturePath("t5_tiny.safetensors");
const ids = (await readGolden("t5_golden.safetensors")).get("input_ids") as number[];

Deno.test("quantize:text writes qweight/wscales per T5 linear and copies the rest", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const out = `${dir}/t5.w8a16.safetensors`;
    const r = await quantizeTextEncoder(TINY, out, { method: "w8a16" });
    assert.equal(r.layers, 2 * 7);
    assert.ok(r.bytesAfter < r.bytesBefore);
    const f = await SafetensorsReader.open(out);
    try {
      const q = f.info("encoder.block.1.layer.1.DenseReluDense.wo.qweight");
      assert.deepEqual([q.dtype, q.shape], ["I8", [64, 160]]);
      const s = f.info("encoder.block.1.layer.1.DenseReluDense.wo.wscales");
      assert.deepEqual([s.dtype, s.shape], ["F32", [64]]);
      assert.ok(!f.tensors.has("encoder.block.1.layer.1.DenseReluDense.wo.weight"));
      assert.equal(f.info("shared.weight").dtype, "F32");
      assert.deepEqual(JSON.parse(f.metadata.text_quant), { method: "w8a16", group: null });
      assert.equal(JSON.parse(f.metadata.config).d_model, 64);
    } finally {
      f.close();
    }
    // INT4 needs K a multiple of 64: the tiny model's d_ff = 160 is refused, no file left
    await assert.rejects(
      () => quantizeTextEncoder(TINY, `${dir}/t5.w4.safetensors`, { method: "w4a16" }),
      /K=160 is not a multiple of 64/,
    );
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["t5.w8a16.safetensors"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("deno task quantize:text runs end to end", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const cmd = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-read",
        "--allow-write",
        "--allow-env",
        new URL("../cli/quantize_text.ts", import.meta.url).pathname,
        TINY,
        "--out",
        `${dir}/q.safetensors`,
        "--quiet",
      ],
      stdout: "piped",
      stderr: "piped",
    });
    const res = await cmd.output();
    const text = new TextDecoder().decode(res.stdout) + new TextDecoder().decode(res.stderr);
    assert.equal(res.code, 0, text);
    assert.match(text, /14 linears w8a16/);
    const bad = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", new URL("../cli/quantize_text.ts", import.meta.url).pathname, TINY],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(bad.code, 2);
    assert.match(new TextDecoder().decode(bad.stderr), /--out is required/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

async function encodeWith(path: string, b: number, l: number, x: ArrayLike<number>, o: {
  weights?: "float" | "w4a16" | "w8a16";
  dtype: "f16" | "f32";
}) {
  const gpu = (await testGpu())!;
  const t5 = await T5Encoder.create(gpu, path, { batch: b, length: l, ...o });
  try {
    return {
      out: (await t5.encode(x)).lastHiddenState,
      kind: t5.weightKind,
      bytes: t5.weightBytes,
    };
  } finally {
    t5.destroy();
  }
}

Deno.test({
  name: "quantized T5: the w8a16 file loads and equals quantizing at load; cosine vs f32",
  ignore,
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      const file = `${dir}/t5.w8a16.safetensors`;
      await quantizeTextEncoder(TINY, file, { method: "w8a16" });
      const ref = await encodeWith(TINY, 2, 40, ids, { dtype: "f32" });
      const fromFile = await encodeWith(file, 2, 40, ids, { dtype: "f32" });
      const atLoad = await encodeWith(TINY, 2, 40, ids, { dtype: "f32", weights: "w8a16" });
      const w4 = await encodeWith(TINY, 2, 40, ids, { dtype: "f32", weights: "w4a16" });
      assert.equal(fromFile.kind, "w8a16");
      assert.deepEqual(fromFile.out, atLoad.out);
      const c8 = cosine(fromFile.out, ref.out), c4 = cosine(w4.out, ref.out);
      console.log(
        `tiny T5 cosine vs f32: w8a16 ${c8.toFixed(6)} (${atLoad.bytes} B), ` +
          `w4a16 ${c4.toFixed(6)} (${w4.bytes} B), float ${ref.bytes} B`,
      );
      assert.ok(c8 >= 0.999, `w8a16 cosine ${c8}`);
      assert.ok(c4 >= 0.97 && c4 < 0.999, `w4a16 cosine ${c4} (measured 0.980)`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "quantized T5: random d=256 model, w4a16 and w8a16 files vs f32 (cosine)",
  ignore,
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      const cfg = {
        vocabSize: 300,
        dModel: 256,
        dKv: 64,
        numHeads: 4,
        dFf: 512,
        numLayers: 2,
        numBuckets: 32,
        maxDistance: 128,
        eps: 1e-6,
      };
      const src = `${dir}/t5.safetensors`;
      await writeRandomT5(src, cfg, 20240611);
      const x = Array.from({ length: 64 }, (_, i) => (i * 37 + 11) % 300);
      const ref = await encodeWith(src, 1, 64, x, { dtype: "f32" });
      const f16 = await encodeWith(src, 1, 64, x, { dtype: "f16" });
      const res: Record<string, number> = { float_f16: cosine(f16.out, ref.out) };
      for (const method of ["w4a16", "w8a16"] as const) {
        const file = `${dir}/t5.${method}.safetensors`;
        await quantizeTextEncoder(src, file, { method });
        const q = await encodeWith(file, 1, 64, x, { dtype: "f16" });
        assert.equal(q.kind, method);
        res[method] = cosine(q.out, ref.out);
      }
      console.log(`random T5 d=256 cosine vs f32: ${JSON.stringify(res)}`);
      assert.ok(res.float_f16 >= 0.9999);
      assert.ok(res.w8a16 >= 0.999);
      assert.ok(res.w4a16 >= 0.95 && res.w4a16 < 0.99);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
