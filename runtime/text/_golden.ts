/**
 * Test helpers: read the text-encoder goldens (tests/fixtures/text/*_golden.safetensors) and
 * compare encoder outputs against them.
 *
 * @module
 */
import assert from "node:assert/strict";
import { SafetensorsReader, SafetensorsWriter } from "../../formats/safetensors.ts";

/** Fixture folder URL. */
export const TEXT_FIXTURES = new URL("../../tests/fixtures/text/", import.meta.url);

/** Path of fixture `name`. */
export function fixturePath(name: string): string {
  return new URL(name, TEXT_FIXTURES).pathname;
}

/** Every tensor of a golden file: floats as Float32Array, I64 as number[]. */
export async function readGolden(
  name: string,
): Promise<Map<string, Float32Array | number[]>> {
  const r = await SafetensorsReader.open(fixturePath(name));
  try {
    const out = new Map<string, Float32Array | number[]>();
    for (const [key, info] of r.tensors) {
      if (info.dtype === "I64") {
        const raw = await r.readRaw(key);
        out.set(key, Array.from(new BigInt64Array(raw.slice().buffer), Number));
      } else out.set(key, await r.readFloat32(key));
    }
    return out;
  } finally {
    r.close();
  }
}

/**
 * For each `[key, got]` of `checks`: log `<label> <key>: max abs err …, scaled …` against
 * `want(key)`, and assert the scaled error ({@linkcode scaledError}) is at most `bound`.
 */
export function assertScaledErrors(
  label: string,
  checks: readonly (readonly [string, ArrayLike<number>])[],
  want: (key: string) => ArrayLike<number>,
  bound: number,
): void {
  for (const [key, got] of checks) {
    const e = scaledError(got, want(key));
    console.log(
      `${label} ${key}: max abs err ${e.abs.toExponential(3)}, scaled ${e.rel.toExponential(3)}`,
    );
    assert.ok(e.rel <= bound, `${label} ${key}: scaled error ${e.rel} > ${bound}`);
  }
}

/** Largest |a − b| over max |b| (error relative to the tensor's scale) and the max abs error. */
export function scaledError(a: ArrayLike<number>, b: ArrayLike<number>): {
  rel: number;
  abs: number;
} {
  if (a.length !== b.length) throw new Error(`length ${a.length} ≠ ${b.length}`);
  let abs = 0, scale = 0;
  for (let i = 0; i < b.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    abs = Number.isNaN(d) || d > abs ? (Number.isNaN(d) ? Infinity : d) : abs;
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return { rel: abs / scale, abs };
}

/** Cosine similarity of two vectors (float64). */
export function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let ab = 0, aa = 0, bb = 0;
  for (let i = 0; i < a.length; i++) {
    ab += a[i] * b[i];
    aa += a[i] * a[i];
    bb += b[i] * b[i];
  }
  return ab / Math.sqrt(aa * bb);
}

/** Split `src` into two shards + index in `dir`, the way transformers writes them. */
export async function shardCheckpoint(src: string, dir: string): Promise<string[]> {
  const r = await SafetensorsReader.open(src);
  try {
    const names = [...r.tensors.keys()];
    const parts = [names.slice(0, names.length >> 1), names.slice(names.length >> 1)];
    const files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
    const weightMap: Record<string, string> = {};
    for (let i = 0; i < 2; i++) {
      const tensors = parts[i].map((name) => {
        const t = r.info(name);
        return { name, dtype: t.dtype, shape: t.shape, byteLength: t.end - t.begin };
      });
      const w = await SafetensorsWriter.create(`${dir}/${files[i]}`, {
        tensors,
        metadata: { format: "pt" },
      });
      for (const name of parts[i]) {
        await w.write(name, await r.readRaw(name));
        weightMap[name] = files[i];
      }
      await w.commit();
    }
    await Deno.writeTextFile(
      `${dir}/model.safetensors.index.json`,
      JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }),
    );
    return names;
  } finally {
    r.close();
  }
}
