/**
 * Sealing a float checkpoint: the same tensors and metadata plus a `checksum` entry, computed as
 * for the pre-quantized format (formats/format.ts: FNV-1a 64 over the data region, then the
 * canonical description of the tensor table and every other metadata entry). The runtime verifies
 * it when present (runtime/model_file.ts), so a flipped weight byte or an edited `model_config`
 * is refused instead of generating a different image. A checkpoint without the key (e.g. straight
 * from PyTorch) still loads, unverified.
 *
 * Usage: `deno run --allow-read --allow-write formats/seal.ts <in.safetensors> [out]` (default: in
 * place, atomically).
 *
 * @module
 */
import { Checksum, CHECKSUM_ALGORITHM } from "./checksum.ts";
import { canonicalDescription } from "./format.ts";
import { SafetensorsReader, SafetensorsWriter, type TensorSpec } from "./safetensors.ts";

/**
 * Writes `tensors` (bytes in header order) with `metadata` + a `checksum` entry to `path`
 * atomically (one pass: the header gets a fixed-width placeholder that is patched at the end).
 */
export async function writeSealed(
  path: string,
  metadata: Record<string, string>,
  tensors: { spec: TensorSpec; data: () => Promise<Uint8Array> }[],
): Promise<void> {
  const rest = Object.fromEntries(Object.entries(metadata).filter(([k]) => k !== "checksum"));
  const w = await SafetensorsWriter.create(path, {
    tensors: tensors.map((t) => t.spec),
    metadata: { ...rest, checksum: `${CHECKSUM_ALGORITHM}:${"0".repeat(16)}` },
  });
  try {
    const sum = new Checksum();
    for (const t of tensors) {
      const data = await t.data();
      await w.write(t.spec.name, data);
      sum.update(data);
    }
    const start = w.tensors.length ? w.tensors[0].begin : 0;
    sum.update(new TextEncoder().encode(canonicalDescription(w.tensors, start, rest)));
    await w.patchMetadata("checksum", sum.digest());
    await w.commit();
  } catch (e) {
    await w.abort();
    throw e;
  }
}

/** Rewrites the float checkpoint `input` to `output` (default: in place) with a checksum. */
export async function sealCheckpoint(input: string, output: string = input): Promise<void> {
  const r = await SafetensorsReader.open(input);
  try {
    const list = [...r.tensors.values()].sort((a, b) => a.begin - b.begin);
    await writeSealed(
      output,
      r.metadata,
      list.map((t) => ({
        spec: { name: t.name, dtype: t.dtype, shape: t.shape, byteLength: t.end - t.begin },
        data: () => r.readRaw(t.name),
      })),
    );
  } finally {
    r.close();
  }
}

if (import.meta.main) {
  const [input, output] = Deno.args;
  if (!input) {
    console.error("usage: deno run -RW formats/seal.ts <in.safetensors> [out.safetensors]");
    Deno.exit(2);
  }
  await sealCheckpoint(input, output ?? input);
  console.log(`sealed ${output ?? input}`);
}
