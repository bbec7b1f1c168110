/**
 * Storage of a sparse-attention plan (quant/paro.ts) in the pre-quantized file: metadata key
 * `paro` holds JSON `{version: 1, tile, gridH, gridW, denseTokens, layers, heads, tokens, buckets,
 * density, orderNames, keptMass}` (keptMass: the per (bucket, layer, head) fractions rounded to 4
 * decimals, informative only); tensors `paro.order` U8 [layers, heads] (index into orderNames)
 * and `paro.masks` U8 [buckets, layers, heads, ⌈nt²/8⌉]. Reading validates everything and throws
 * a FormatError naming what is wrong.
 *
 * @module
 */
import { FormatError } from "../gpu/errors.ts";
import {
  maskBytes,
  maskGet,
  orderApplies,
  tileCount,
  TOKEN_ORDERS,
} from "../kernels/sparse_attention/layout.ts";
import type { QuantFile } from "../formats/format.ts";
import { isInt, PARO_METADATA_KEY, PARO_TILES, PARO_VERSION, type ParoPlan } from "./paro.ts";

/** A U8 tensor of the stored plan. */
export interface ParoTensor {
  /** Tensor name: "paro.order" or "paro.masks". */
  name: string;
  /** Element type (bytes). */
  dtype: "U8";
  /** Dimensions: [layers, heads] for the orders, [buckets, layers, heads, ⌈nt²/8⌉] for the masks. */
  shape: number[];
  /** The bytes, row-major. */
  data: Uint8Array;
}

/**
 * The plan as file content: the `paro` metadata value and tensors `paro.order`, `paro.masks`.
 *
 * @example
 * ```ts ignore
 * const { metadata, tensors } = paroTensors(plan);
 * const back = readParo(metadata, tensors[0].data, tensors[1].data);
 * ```
 */
export function paroTensors(plan: ParoPlan): { metadata: string; tensors: ParoTensor[] } {
  const { tile, layers, heads, tokens, buckets } = plan;
  const mb = maskBytes(tileCount(tokens, tile));
  const { gridH, gridW, denseTokens, density } = plan;
  const keptMass = [...plan.keptMass].map((v) =>
    Number.isFinite(v) ? Math.round(v * 1e4) / 1e4 : null
  );
  const shape = { tile, gridH, gridW, denseTokens, layers, heads, tokens, buckets, density };
  const fields = { version: PARO_VERSION, ...shape, orderNames: TOKEN_ORDERS, keptMass };
  // a plan that would not load is refused here, not at run time
  parsePlan(
    fields,
    plan.orders,
    plan.masks,
    (msg, tensor) =>
      new TypeError(`Cannot store the PAROAttention plan: ${tensor ? `${tensor}: ` : ""}${msg}`),
  );
  const metadata = JSON.stringify(fields);
  return {
    metadata,
    tensors: [
      { name: "paro.order", dtype: "U8", shape: [layers, heads], data: plan.orders.slice() },
      {
        name: "paro.masks",
        dtype: "U8",
        shape: [buckets, layers, heads, mb],
        data: plan.masks.slice(),
      },
    ],
  };
}

/**
 * The plan stored by {@linkcode paroTensors}. Checks the version, every field, the tensors'
 * sizes, that every order index names an order that applies to the grid and that no mask row is
 * empty (nor a padding bit set); throws {@linkcode FormatError} naming `file` and what is wrong.
 *
 * @example
 * ```ts ignore
 * const plan = readParo(metadata, orderBytes, maskBytes, "model.safetensors");
 * ```
 */
export function readParo(
  metadata: string,
  order: Uint8Array,
  masks: Uint8Array,
  file = "paro metadata",
): ParoPlan {
  const bad = (msg: string, tensor?: string) =>
    new FormatError(file, `${msg}; re-quantize the model`, tensor);
  let m: unknown;
  try {
    m = JSON.parse(metadata);
  } catch {
    throw bad(`metadata ${PARO_METADATA_KEY} is not JSON`);
  }
  if (typeof m !== "object" || m === null) {
    throw bad(`metadata ${PARO_METADATA_KEY} is not a JSON object`);
  }
  return parsePlan(m as Record<string, unknown>, order, masks, bad);
}

/** Checks and decodes a stored plan's fields and tensors; `fail` makes the error to throw. */
function parsePlan(
  m: Record<string, unknown>,
  order: Uint8Array,
  masks: Uint8Array,
  bad: (msg: string, tensor?: string) => Error,
): ParoPlan {
  if (m.version !== PARO_VERSION) {
    throw bad(`paro version ${JSON.stringify(m.version)} is not supported (reads ${PARO_VERSION})`);
  }
  for (const f of ["gridH", "gridW", "layers", "heads", "tokens", "buckets"]) {
    if (!isInt(m[f], 1)) {
      throw bad(`paro.${f} is ${JSON.stringify(m[f])}, expected an integer >= 1`);
    }
  }
  if (!isInt(m.denseTokens, 0)) throw bad(`paro.denseTokens is ${m.denseTokens}, expected >= 0`);
  const tile = m.tile as number, density = m.density as number;
  if (!PARO_TILES.includes(tile)) throw bad(`paro.tile is ${tile}, expected ${PARO_TILES}`);
  if (!(typeof density === "number" && density > 0 && density <= 1)) {
    throw bad(`paro.density is ${density}, expected 0 < density <= 1`);
  }
  const { gridH, gridW, layers, heads, tokens, buckets, denseTokens } = m as Record<string, number>;
  if (tokens !== denseTokens + gridH * gridW) {
    throw bad(`paro.tokens ${tokens} is not denseTokens ${denseTokens} + ${gridH}×${gridW}`);
  }
  const names = m.orderNames;
  if (!Array.isArray(names) || names.length > 256) throw bad("paro.orderNames is not a list");
  const remap = names.map((n) => TOKEN_ORDERS.indexOf(n));
  const nt = tileCount(tokens, tile), mb = maskBytes(nt), lh = layers * heads;
  if (!(order instanceof Uint8Array) || order.length !== lh) {
    throw bad(
      `has ${order?.length} bytes, expected [layers=${layers}, heads=${heads}]`,
      "paro.order",
    );
  }
  const orders = new Uint8Array(lh);
  for (let i = 0; i < lh; i++) {
    const name = names[order[i]], idx = remap[order[i]];
    if (order[i] >= names.length || idx < 0 || !orderApplies(TOKEN_ORDERS[idx], gridH, gridW)) {
      throw bad(
        `layer ${Math.floor(i / heads)} head ${i % heads}: order index ${order[i]} (${
          JSON.stringify(name)
        }) is not an order of a ${gridH}×${gridW} grid`,
        "paro.order",
      );
    }
    orders[i] = idx;
  }
  if (!(masks instanceof Uint8Array) || masks.length !== buckets * lh * mb) {
    throw bad(
      `has ${masks?.length} bytes, expected [buckets=${buckets}, layers=${layers}, ` +
        `heads=${heads}, ${mb}] = ${buckets * lh * mb}`,
      "paro.masks",
    );
  }
  for (let x = 0; x < buckets * lh; x++) {
    for (let i = 0; i < nt; i++) {
      let any = false;
      for (let j = 0; j < nt && !any; j++) any = maskGet(masks, nt, i, j, x * mb);
      if (!any) {
        const where = `bucket ${Math.floor(x / lh)} layer ${Math.floor(x / heads) % layers} ` +
          `head ${x % heads}`;
        throw bad(`${where}: query-tile row ${i} is empty`, "paro.masks");
      }
    }
    if (nt * nt < mb * 8 && masks[x * mb + mb - 1] >> ((nt * nt) & 7)) {
      throw bad(`mask ${x} sets padding bits past ${nt}×${nt}`, "paro.masks");
    }
  }
  const km = m.keptMass;
  const keptMass = new Float32Array(buckets * lh).fill(NaN);
  if (km !== undefined) {
    if (!Array.isArray(km) || km.length !== keptMass.length) {
      throw bad(`paro.keptMass is not a list of ${keptMass.length} numbers`);
    }
    km.forEach((v, i) => keptMass[i] = typeof v === "number" ? v : NaN);
  }
  const shape = { tile, gridH, gridW, denseTokens, layers, heads, tokens, buckets, density };
  return { ...shape, orders, masks: masks.slice(), keptMass };
}

/** Whether a model file carries a sparse-attention plan (its `paro` metadata). */
export function hasParoPlan(file: Pick<QuantFile, "reader">): boolean {
  return file.reader.metadata[PARO_METADATA_KEY] !== undefined;
}

/**
 * The plan stored in an open pre-quantized file, or undefined when it has no `paro` metadata.
 * Throws {@linkcode FormatError} when the metadata is present but the plan or its tensors are not
 * valid.
 *
 * @example
 * ```ts ignore
 * const q = await QuantFile.open("model.safetensors");
 * const plan = await readParoFrom(q); // undefined: dense attention
 * ```
 */
export async function readParoFrom(
  file: Pick<QuantFile, "path" | "reader">,
): Promise<ParoPlan | undefined> {
  if (!hasParoPlan(file)) return undefined;
  const meta = file.reader.metadata[PARO_METADATA_KEY];
  const bytes: Uint8Array[] = [];
  for (const name of ["paro.order", "paro.masks"]) {
    const info = file.reader.tensors.get(name);
    if (!info) throw new FormatError(file.path, "the paro plan lacks this tensor", name);
    if (info.dtype !== "U8") {
      throw new FormatError(file.path, `dtype is ${info.dtype}, expected U8`, name);
    }
    bytes.push(await file.reader.readRaw(name));
  }
  const plan = readParo(meta, bytes[0], bytes[1], file.path);
  const mb = maskBytes(tileCount(plan.tokens, plan.tile));
  const want: [string, number[]][] = [
    ["paro.order", [plan.layers, plan.heads]],
    ["paro.masks", [plan.buckets, plan.layers, plan.heads, mb]],
  ];
  for (const [name, shape] of want) {
    const got = file.reader.tensors.get(name)!.shape;
    if (got.join() !== shape.join()) {
      throw new FormatError(file.path, `shape is [${got}], expected [${shape}]`, name);
    }
  }
  return plan;
}
