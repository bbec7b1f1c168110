/**
 * Test helpers: the Nunchaku fixture layers (tests/fixtures/nunchaku/) as the importer reads them,
 * with their truth tensors.
 *
 * @module
 */
import { SafetensorsReader, toFloat32 } from "./safetensors.ts";
import {
  canonicalW4A4,
  type NunchakuW4A4,
  parseNunchakuQuantConfig,
  readNunchakuW4A4,
} from "./nunchaku.ts";
import { type PackedWeight, unpackF16 } from "./packing.ts";

/** Folder of the fixture files. */
export const DIR: string = new URL("../tests/fixtures/nunchaku/", import.meta.url).pathname;
/** Rows of the fixtures' input x. */
export const M = 6;
/** Layer prefix of each fixture file. */
export const FIXTURE_PREFIX = {
  int4: "transformer_blocks.0.mlp_fc1",
  nvfp4: "transformer_blocks.0.qkv_proj",
} as const;

/** The fixture layer `p` read by the importer, and the truth file's tensors as f32 / raw. */
export async function loadFixture(p: "int4" | "nvfp4") {
  const r = await SafetensorsReader.open(`${DIR}${p}_layer.safetensors`);
  let layer: NunchakuW4A4, cfg;
  try {
    cfg = parseNunchakuQuantConfig(r.path, r.metadata.quantization_config);
    layer = await readNunchakuW4A4(r, FIXTURE_PREFIX[p], cfg.precision);
  } finally {
    r.close();
  }
  const t = await SafetensorsReader.open(`${DIR}${p}_truth.safetensors`);
  const truth = new Map<string, Float32Array>(), raw = new Map<string, Uint8Array>();
  try {
    for (const [name, info] of t.tensors) {
      raw.set(name, await t.readRaw(name));
      if (["F32", "BF16"].includes(info.dtype)) {
        truth.set(name, toFloat32(info.dtype, raw.get(name)!));
      }
    }
  } finally {
    t.close();
  }
  return { layer, cfg, truth, raw };
}

/** Our packed weight of a canonical layer, for the packing.ts helpers and references. */
export function packedOf(layer: NunchakuW4A4): PackedWeight {
  const c = canonicalW4A4(layer).tensors;
  const qweight = new Uint32Array(c.get("qweight")!.data.slice().buffer);
  const ws = c.get("wscales")!.data;
  if (layer.format === "int4") {
    const wscales = unpackF16(new Uint32Array(ws.slice().buffer), layer.n * layer.k / 64);
    return { format: "int4", n: layer.n, k: layer.k, qweight, wscales };
  }
  const ts = new Float32Array(c.get("tensor_scale")!.data.slice().buffer)[0];
  return { format: "nvfp4", n: layer.n, k: layer.k, qweight, wscales: ws, tensorScale: ts };
}
