/**
 * The inverse of the importer: natural-order layer values → Nunchaku's stored tensors (v0 names,
 * bf16 / E4M3 / int8 / int32 as the upstream converter writes them). Used to build test
 * checkpoints in Nunchaku's layout; `packNunchakuW4A4(readNunchakuW4A4(file))` reproduces the
 * file's bytes (tests against the upstream-packed fixtures).
 *
 * @module
 */
import type { NunchakuW4A16, NunchakuW4A4 } from "./nunchaku.ts";
import {
  adanormNaturalRow,
  awqStoredGroups,
  packAwqCodes,
  packChannelValues,
  packCodes,
  packLoraDown,
  packLoraUp,
  packMicroScales,
} from "./nunchaku_layout.ts";
import { type Dtype, fromFloat32 } from "../formats/safetensors.ts";

/** A stored tensor: dtype, shape and little-endian bytes. */
export interface PackedTensor {
  /** Safetensors dtype. */
  dtype: Dtype;
  /** Shape as the upstream converter writes it. */
  shape: number[];
  /** Bytes. */
  data: Uint8Array;
}

/** bf16 bytes of values that must be bf16 numbers already (RangeError otherwise). */
function bf16(name: string, values: Float32Array): Uint8Array {
  const bytes = fromFloat32("BF16", values);
  const back = new Float32Array(
    new Uint32Array(Uint16Array.from(
      new Uint16Array(bytes.buffer),
    )).map((b) => b << 16).buffer,
  );
  for (let i = 0; i < values.length; i++) {
    if (back[i] !== values[i]) {
      throw new RangeError(
        `Cannot pack ${name}: element ${i} (${values[i]}) is not a bf16 value; round it first`,
      );
    }
  }
  return bytes;
}

/** bf16 words of values in natural order, permuted by `pack`, as bytes. */
function permutedBf16(
  name: string,
  values: Float32Array,
  pack: (v: Uint16Array) => Uint16Array,
): Uint8Array {
  const words = new Uint16Array(bf16(name, values).buffer);
  return new Uint8Array(pack(words).buffer);
}

/**
 * A W4A4 layer's stored tensors by suffix: `qweight` I8 [N, K/2], `wscales` BF16 [K/64, N] (INT4)
 * or F8_E4M3 [K/16, N] (NVFP4) with `wtscale` BF16 [1] (when α ≠ 1) and `wcscales` BF16 [N] (when
 * given), `bias` BF16 [N] (when given), `smooth_orig` and `smooth` BF16 [K] (equal: no smooth
 * fusion), `lora_down` BF16 [K, R], `lora_up` BF16 [N, R]. Float values must be bf16 numbers.
 */
export function packNunchakuW4A4(layer: NunchakuW4A4): Map<string, PackedTensor> {
  const { name, n, k, r } = layer;
  const t = new Map<string, PackedTensor>();
  t.set("qweight", { dtype: "I8", shape: [n, k / 2], data: packCodes(layer.codes, n, k) });
  if (layer.format === "int4") {
    const data = permutedBf16(
      `${name}.wscales`,
      layer.scales!,
      (v) => packChannelValues(v, n, k / 64),
    );
    t.set("wscales", { dtype: "BF16", shape: [k / 64, n], data });
  } else {
    if (layer.wtscale !== 1) {
      t.set("wtscale", {
        dtype: "BF16",
        shape: [1],
        data: bf16(`${name}.wtscale`, Float32Array.of(layer.wtscale)),
      });
    }
    t.set("wscales", {
      dtype: "F8_E4M3",
      shape: [k / 16, n],
      data: packMicroScales(layer.scalesE4m3!, n, k),
    });
    if (layer.wcscales) {
      const data = permutedBf16(
        `${name}.wcscales`,
        layer.wcscales,
        (v) => packChannelValues(v, n, 1),
      );
      t.set("wcscales", { dtype: "BF16", shape: [n], data });
    }
  }
  if (layer.bias) {
    const data = permutedBf16(`${name}.bias`, layer.bias, (v) => packChannelValues(v, n, 1));
    t.set("bias", { dtype: "BF16", shape: [n], data });
  }
  const smooth = permutedBf16(`${name}.smooth`, layer.smooth, (v) => packChannelValues(v, k, 1));
  t.set("smooth_orig", { dtype: "BF16", shape: [k], data: smooth });
  t.set("smooth", { dtype: "BF16", shape: [k], data: smooth.slice() });
  if (r > 0) {
    const down = permutedBf16(`${name}.lora_down`, layer.loraDown, (v) => packLoraDown(v, r, k));
    t.set("lora_down", { dtype: "BF16", shape: [k, r], data: down });
    const up = permutedBf16(`${name}.lora_up`, layer.loraUp, (v) => packLoraUp(v, n, r));
    t.set("lora_up", { dtype: "BF16", shape: [n, r], data: up });
  }
  return t;
}

/**
 * An AWQ adaLN layer's stored tensors: `qweight` I32 [N/4, K/2], `wscales` / `wzeros` BF16
 * [G, N] (G = K/64 padded to a multiple of 16, padding zero), `bias` BF16 [N], rows interleaved
 * by the `splits` chunks and `+1` added to the bias of the scale chunks (1 and splits − 2). The
 * layer's bias plus 1 must be a bf16 number there (the importer subtracts it again exactly).
 */
export function packNunchakuW4A16(layer: NunchakuW4A16, splits: number): Map<string, PackedTensor> {
  const { name, n, k } = layer;
  const g = k / 64, gStored = awqStoredGroups(k), chunk = n / splits;
  const codes = new Uint8Array(n * k);
  const scales = new Float32Array(gStored * n), zeros = new Float32Array(gStored * n);
  const bias = new Float32Array(n);
  for (let s = 0; s < n; s++) {
    const nat = adanormNaturalRow(s, n, splits);
    codes.set(layer.codes.subarray(nat * k, (nat + 1) * k), s * k);
    for (let gi = 0; gi < g; gi++) {
      scales[gi * n + s] = layer.scales[nat * g + gi];
      zeros[gi * n + s] = layer.zeros[nat * g + gi];
    }
    const c = Math.floor(nat / chunk);
    bias[s] = c === 1 || c === splits - 2 ? Math.fround(layer.bias[nat] + 1) : layer.bias[nat];
  }
  return new Map<string, PackedTensor>([
    ["qweight", { dtype: "I32", shape: [n / 4, k / 2], data: packAwqCodes(codes, n, k) }],
    ["wscales", { dtype: "BF16", shape: [gStored, n], data: bf16(`${name}.wscales`, scales) }],
    ["wzeros", { dtype: "BF16", shape: [gStored, n], data: bf16(`${name}.wzeros`, zeros) }],
    ["bias", { dtype: "BF16", shape: [n], data: bf16(`${name}.bias (+1 folded)`, bias) }],
  ]);
}
