/**
 * The Nunchaku layer reader against the upstream-packed fixtures (tests/fixtures/nunchaku/): the
 * unpacked values are the truth exactly, the canonical tensors dequantize to the truth's `w_deq`
 * bit for bit, the CPU mirror of the activation quantizer with the "nunchaku" convention gives
 * the fixture's activation codes and scales exactly, and the float64 layer reference on the
 * imported tensors gives `y_ref` to f32 rounding. Bad files are refused naming the tensor.
 */
import assert from "node:assert/strict";
import { SafetensorsReader } from "../formats/safetensors.ts";
import {
  canonicalW4A4,
  type NunchakuW4A16,
  parseNunchakuQuantConfig,
  readNunchakuW4A16,
  readNunchakuW4A4,
} from "./nunchaku.ts";
import { packNunchakuW4A16, packNunchakuW4A4 } from "./nunchaku_pack.ts";
import {
  actCodes,
  dequantizeWeight,
  packNibbles,
  quantizeAct,
  roundBf16,
} from "../formats/packing.ts";
import { freshRng } from "../gpu/_testing.ts";
import { DIR, FIXTURE_PREFIX, loadFixture, M, packedOf } from "./_nunchaku_testing.ts";
import { gemmW4A4LowrankRef } from "../kernels/gemm_w4a4_lowrank/gemm_w4a4_lowrank_ref.ts";
import { loraActRef } from "../kernels/quantize_act_lowrank/quantize_act_lowrank_ref.ts";
import { FormatError } from "../gpu/errors.ts";
import { SafetensorsWriter } from "../formats/safetensors.ts";

for (const p of ["int4", "nvfp4"] as const) {
  Deno.test(`nunchaku import ${p}: every value of the layer is the truth exactly`, async () => {
    const { layer, cfg, truth, raw } = await loadFixture(p);
    assert.equal(cfg.precision, p);
    assert.deepEqual([layer.n, layer.k, layer.r], [256, 128, 32]);
    const codes = new Int8Array(raw.get("codes")!.slice().buffer);
    for (let i = 0; i < codes.length; i++) {
      const got = p === "int4" ? (layer.codes[i] << 28) >> 28 : layer.codes[i];
      if (got !== codes[i]) assert.fail(`code ${i}: ${got} ≠ ${codes[i]}`);
    }
    if (p === "int4") assert.deepEqual(layer.scales, truth.get("scales"));
    else {
      assert.deepEqual(layer.scalesE4m3, raw.get("scales_e4m3"));
      assert.equal(layer.wtscale, truth.get("wtscale")![0]);
      assert.equal(layer.wcscales, undefined);
    }
    assert.deepEqual(layer.loraDown, truth.get("lora_down"));
    assert.deepEqual(layer.loraUp, truth.get("lora_up"));
    assert.deepEqual(layer.smooth, truth.get("smooth"));
    assert.deepEqual(layer.bias, truth.get("bias"));
  });

  Deno.test(`nunchaku import ${p}: canonical tensors dequantize to w_deq bit for bit`, async () => {
    const { layer, truth } = await loadFixture(p);
    const canon = canonicalW4A4(layer);
    assert.equal(canon.inexact, 0);
    const w = dequantizeWeight(packedOf(layer));
    const want = truth.get("w_deq")!;
    for (let i = 0; i < w.length; i++) {
      if (w[i] !== want[i]) assert.fail(`w_deq[${i}] is ${w[i]}, expected ${want[i]}`);
    }
    const down = canon.tensors.get("lora_down")!;
    assert.deepEqual([down.dtype, down.shape], ["F16", [32, 128]]);
    assert.deepEqual(Float32Array.from(new Float16Array(down.data.slice().buffer)), layer.loraDown);
  });

  Deno.test(`nunchaku import ${p}: Nunchaku's activation rounding and y_ref reproduced`, async () => {
    const { layer, truth, raw } = await loadFixture(p);
    const x = truth.get("x")!;
    const act = quantizeAct(x, M, layer.k, p, layer.smooth, "nunchaku");
    assert.deepEqual(act.ascales, truth.get("act_scales"));
    const want = new Int8Array(raw.get("act_codes")!.slice().buffer);
    const got = actCodes(act); // nvfp4: 2·e2m1
    for (let i = 0; i < want.length; i++) {
      const w = p === "int4"
        ? want[i]
        : [0, 1, 2, 3, 4, 6, 8, 12][want[i] & 7] * (want[i] & 8 ? -1 : 1);
      if (got[i] !== w) assert.fail(`activation code ${i}: ${got[i]} ≠ ${w}`);
    }
    const loraAct = loraActRef(x, layer.loraDown, M, layer.k, layer.r);
    const { y } = gemmW4A4LowrankRef({
      act,
      weight: packedOf(layer),
      r: layer.r,
      loraAct,
      loraUp: layer.loraUp,
      bias: layer.bias,
    });
    const yref = truth.get("y_ref")!;
    for (let i = 0; i < y.length; i++) {
      // y_ref is the f64 result rounded to f32: one f32 rounding apart
      const bound = 2 ** -24 * Math.abs(yref[i]) + 1e-12;
      if (!(Math.abs(y[i] - yref[i]) <= 2 * bound)) {
        assert.fail(`y[${i}] is ${y[i]}, y_ref ${yref[i]}`);
      }
    }
  });
}

/** Copy of the int4 fixture layer with `edit` applied to its tensor table and metadata. */
async function editedCopy(
  edit: (t: Map<string, { dtype: string; shape: number[]; data: Uint8Array }>) => void,
  metadata?: Record<string, string>,
): Promise<string> {
  const r = await SafetensorsReader.open(`${DIR}int4_layer.safetensors`);
  const t = new Map<string, { dtype: string; shape: number[]; data: Uint8Array }>();
  for (const [name, info] of r.tensors) {
    t.set(name, { dtype: info.dtype, shape: info.shape, data: await r.readRaw(name) });
  }
  const meta = metadata ?? r.metadata;
  r.close();
  edit(t);
  const path = await Deno.makeTempFile({ suffix: ".safetensors" });
  const specs = [...t].map(([name, v]) => ({
    name,
    dtype: v.dtype as "BF16",
    shape: v.shape,
    byteLength: v.data.byteLength,
  }));
  const w = await SafetensorsWriter.create(path, { tensors: specs, metadata: meta });
  for (const [name, v] of t) await w.write(name, v.data);
  await w.commit();
  return path;
}

async function readError(path: string, prefix = FIXTURE_PREFIX.int4): Promise<FormatError> {
  const r = await SafetensorsReader.open(path);
  try {
    const cfg = parseNunchakuQuantConfig(path, r.metadata.quantization_config);
    await readNunchakuW4A4(r, prefix, cfg.precision);
  } catch (e) {
    return e as FormatError;
  } finally {
    r.close();
    await Deno.remove(path);
  }
  throw new Error("expected a FormatError");
}

Deno.test("nunchaku import refuses bad layers with a FormatError naming the tensor", async () => {
  const p = FIXTURE_PREFIX.int4;
  let e = await readError(await editedCopy((t) => t.delete(`${p}.lora_up`)));
  assert.ok(e instanceof FormatError && e.tensor === `${p}.lora_up`, e.message);
  assert.match(e.message, /missing \(expected \[256, 32\] BF16/);
  e = await readError(await editedCopy((t) => t.delete(`${p}.wscales`)));
  assert.equal(e.tensor, `${p}.wscales`);
  e = await readError(
    await editedCopy((t) => {
      // N = 192: not a multiple of the 128-row tile
      t.set(`${p}.qweight`, { dtype: "I8", shape: [192, 64], data: new Uint8Array(192 * 64) });
    }),
  );
  assert.equal(e.tensor, `${p}.qweight`);
  assert.match(e.message, /N=192 is not a positive multiple of 128/);
  e = await readError(
    await editedCopy((t) => {
      const d = t.get(`${p}.lora_down`)!;
      t.set(`${p}.lora_down`, { ...d, shape: [128, 24], data: d.data.subarray(0, 128 * 24 * 2) });
    }),
  );
  assert.match(e.message, /R=24 is not a positive multiple of 16/);
  e = await readError(
    await editedCopy((t) => {
      const s = t.get(`${p}.wscales`)!;
      t.set(`${p}.wscales`, { ...s, dtype: "F8_E4M3", shape: [4, 256], data: s.data });
    }),
  );
  assert.match(e.message, /\[4, 256\] F8_E4M3, expected \[2, 256\] BF16/);
});

Deno.test("nunchaku import refuses files that are not Nunchaku or use an unknown config", async () => {
  let e = await readError(await editedCopy(() => {}, { format: "pt" }));
  assert.match(e.message, /not a Nunchaku checkpoint.*quantization_config/);
  const cfg = JSON.stringify({ method: "svdquant", weight: { dtype: "int8", group_size: 64 } });
  e = await readError(await editedCopy(() => {}, { quantization_config: cfg }));
  assert.match(e.message, /unknown quantization_config .*"int4".*"fp4_e2m1_all"/);
});

Deno.test("nunchaku packer: packing the imported fixture layers reproduces the stored bytes", async () => {
  for (const p of ["int4", "nvfp4"] as const) {
    const { layer } = await loadFixture(p);
    const stored = await SafetensorsReader.open(`${DIR}${p}_layer.safetensors`);
    try {
      const packed = packNunchakuW4A4(layer);
      const names = [...stored.tensors.keys()].map((n) => n.slice(FIXTURE_PREFIX[p].length + 1));
      assert.deepEqual([...packed.keys()].sort(), names.sort());
      for (const [suffix, t] of packed) {
        const info = stored.tensors.get(`${FIXTURE_PREFIX[p]}.${suffix}`)!;
        assert.deepEqual([t.dtype, t.shape], [info.dtype, info.shape], suffix);
        assert.deepEqual(t.data, await stored.readRaw(info.name), `${p} ${suffix} bytes`);
      }
    } finally {
      stored.close();
    }
  }
});

Deno.test("nunchaku packer: AWQ adaLN layers round-trip through pack and import", async () => {
  const rng = freshRng("nunchaku awq round trip");
  const n = 6 * 128, k = 128, g = k / 64;
  const b16 = (v: number) => roundBf16(v);
  const layer: NunchakuW4A16 = {
    name: "transformer_blocks.0.norm1.linear",
    n,
    k,
    codes: Uint8Array.from({ length: n * k }, () => rng.int(0, 15)),
    scales: Float32Array.from({ length: n * g }, () => b16(0.01 + 0.01 * rng.next())),
    zeros: new Float32Array(n * g),
    // a bias whose "+1" is exact in bf16 where it is folded
    bias: Float32Array.from({ length: n }, () => b16(1 + 0.1 * rng.normal()) - 1),
  };
  layer.zeros = layer.scales.map((s) => b16(-7 * s));
  const packed = packNunchakuW4A16(layer, 6);
  const path = await Deno.makeTempFile({ suffix: ".safetensors" });
  try {
    const w = await SafetensorsWriter.create(path, {
      tensors: [...packed].map(([s, t]) => ({
        name: `${layer.name}.${s}`,
        dtype: t.dtype,
        shape: t.shape,
        byteLength: t.data.byteLength,
      })),
    });
    for (const [s, t] of packed) await w.write(`${layer.name}.${s}`, t.data);
    await w.commit();
    const r = await SafetensorsReader.open(path);
    try {
      const got = await readNunchakuW4A16(r, layer.name, 6);
      for (const key of ["name", "n", "k", "codes", "scales", "zeros", "bias"] as const) {
        assert.deepEqual(got[key], layer[key], key);
      }
      assert.deepEqual(got.words, packNibbles(layer.codes, n, k));
    } finally {
      r.close();
    }
  } finally {
    await Deno.remove(path);
  }
});
