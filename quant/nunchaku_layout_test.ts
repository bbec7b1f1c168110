/**
 * The index transforms of quant/nunchaku_layout.ts against layers packed by the upstream
 * converter (tests/fixtures/nunchaku/, README there): unpacking recovers the truth bit for bit,
 * packing the truth reproduces the stored bytes, and the AWQ / adaLN transforms round-trip.
 */
import assert from "node:assert/strict";
import { SafetensorsReader } from "../formats/safetensors.ts";
import { packNibbles } from "../formats/packing.ts";
import {
  adanormNaturalRow,
  awqToWords,
  codesToWords,
  packAwqCodes,
  packChannelValues,
  packCodes,
  packLoraDown,
  packLoraUp,
  packMicroScales,
  unpackAwqCodes,
  unpackChannelValues,
  unpackCodes,
  unpackLoraDown,
  unpackLoraUp,
  unpackMicroScales,
} from "./nunchaku_layout.ts";
import { freshRng } from "../gpu/_testing.ts";

const DIR = new URL("../tests/fixtures/nunchaku/", import.meta.url).pathname;
const N = 256, K = 128, R = 32;

/** Every tensor of a fixture file as raw bytes. */
export async function readAll(path: string): Promise<Map<string, Uint8Array>> {
  const r = await SafetensorsReader.open(path);
  try {
    const out = new Map<string, Uint8Array>();
    for (const name of r.tensors.keys()) out.set(name, await r.readRaw(name));
    return out;
  } finally {
    r.close();
  }
}

const u16 = (b: Uint8Array) => new Uint16Array(b.slice().buffer);
/** bf16 bits of f32 values that are bf16 numbers (exactly: the low half must be zero). */
function bf16Bits(f32bytes: Uint8Array): Uint16Array {
  const w = new Uint32Array(f32bytes.slice().buffer);
  return Uint16Array.from(w, (v) => {
    assert.equal(v & 0xffff, 0, "truth value is not a bf16 number");
    return v >>> 16;
  });
}

for (const p of ["int4", "nvfp4"] as const) {
  const prefix = p === "int4" ? "transformer_blocks.0.mlp_fc1" : "transformer_blocks.0.qkv_proj";
  Deno.test(`nunchaku layout ${p}: codes unpack to the truth and pack back to the bytes`, async () => {
    const layer = await readAll(`${DIR}${p}_layer.safetensors`);
    const truth = await readAll(`${DIR}${p}_truth.safetensors`);
    const stored = layer.get(`${prefix}.qweight`)!;
    const codes = unpackCodes(stored, N, K);
    const want = new Int8Array(truth.get("codes")!.buffer.slice(0));
    for (let i = 0; i < N * K; i++) {
      const got = p === "int4" ? (codes[i] << 28) >> 28 : codes[i];
      if (got !== want[i]) {
        assert.fail(`code ${i} (n ${(i / K) | 0}, k ${i % K}): ${got} ≠ ${want[i]}`);
      }
    }
    assert.deepEqual(packCodes(want, N, K), stored);
    // the fast path: straight to our packed words
    assert.deepEqual(codesToWords(stored, N, K), packNibbles(codes, N, K));
  });

  Deno.test(`nunchaku layout ${p}: bias, smooth and low-rank factors are exact`, async () => {
    const layer = await readAll(`${DIR}${p}_layer.safetensors`);
    const truth = await readAll(`${DIR}${p}_truth.safetensors`);
    const bias = u16(layer.get(`${prefix}.bias`)!);
    assert.deepEqual(unpackChannelValues(bias, N, 1), bf16Bits(truth.get("bias")!));
    assert.deepEqual(packChannelValues(bf16Bits(truth.get("bias")!), N, 1), bias);
    const smooth = u16(layer.get(`${prefix}.smooth`)!);
    assert.deepEqual(unpackChannelValues(smooth, K, 1), bf16Bits(truth.get("smooth")!));
    assert.deepEqual(u16(layer.get(`${prefix}.smooth_orig`)!), smooth);
    const down = u16(layer.get(`${prefix}.lora_down`)!);
    assert.deepEqual(unpackLoraDown(down, R, K), u16(truth.get("lora_down")!));
    assert.deepEqual(packLoraDown(u16(truth.get("lora_down")!), R, K), down);
    const up = u16(layer.get(`${prefix}.lora_up`)!);
    assert.deepEqual(unpackLoraUp(up, N, R), u16(truth.get("lora_up")!));
    assert.deepEqual(packLoraUp(u16(truth.get("lora_up")!), N, R), up);
  });
}

Deno.test("nunchaku layout int4: bf16 group scales unpack to the truth and pack back", async () => {
  const layer = await readAll(`${DIR}int4_layer.safetensors`);
  const truth = await readAll(`${DIR}int4_truth.safetensors`);
  const stored = u16(layer.get("transformer_blocks.0.mlp_fc1.wscales")!);
  const want = bf16Bits(truth.get("scales")!);
  assert.deepEqual(unpackChannelValues(stored, N, K / 64), want);
  assert.deepEqual(packChannelValues(want, N, K / 64), stored);
});

Deno.test("nunchaku layout nvfp4: E4M3 group scales unpack to the truth and pack back", async () => {
  const layer = await readAll(`${DIR}nvfp4_layer.safetensors`);
  const truth = await readAll(`${DIR}nvfp4_truth.safetensors`);
  const stored = layer.get("transformer_blocks.0.qkv_proj.wscales")!;
  const want = truth.get("scales_e4m3")!;
  assert.deepEqual(unpackMicroScales(stored, N, K), want);
  assert.deepEqual(packMicroScales(want, N, K), stored);
});

Deno.test("nunchaku layout: AWQ codes round-trip and follow TinyChat's interleave", () => {
  const rng = freshRng("nunchaku layout awq");
  const n = 12, k = 128;
  const codes = Uint8Array.from({ length: n * k }, () => rng.int(0, 15));
  const bytes = packAwqCodes(codes, n, k);
  assert.deepEqual(unpackAwqCodes(bytes, n, k), codes);
  assert.deepEqual(awqToWords(bytes, n, k), packNibbles(codes, n, k));
  // TinyChat: int16 word t of row group n/4 holds k = 8·a + t%8 (+32 per half) of row n%4,
  // nibble a. Word 17 = row 1 (16..31), half 0, j = 1: nibbles a = 0..3 are k = 1, 9, 17, 25.
  const w17 = bytes[34] | (bytes[35] << 8);
  for (let a = 0; a < 4; a++) assert.equal((w17 >> (4 * a)) & 15, codes[1 * k + 8 * a + 1]);
});

Deno.test("nunchaku layout: adaLN rows interleaved by chunk", () => {
  // 6 chunks of 2 rows: stored order is (j=0: chunks 0..5), (j=1: chunks 0..5)
  const order = Array.from({ length: 12 }, (_, i) => adanormNaturalRow(i, 12, 6));
  assert.deepEqual(order, [0, 2, 4, 6, 8, 10, 1, 3, 5, 7, 9, 11]);
});

Deno.test("nunchaku layout: shapes that are not tile multiples are refused", () => {
  assert.throws(() => unpackCodes(new Uint8Array(64 * 128 / 2), 64, 128), /N=64.*128/);
  assert.throws(() => unpackLoraDown(new Uint16Array(24 * 128), 24, 128), /R=24.*16/);
  assert.throws(() => unpackCodes(new Uint8Array(10), 128, 128), /expected/);
});
