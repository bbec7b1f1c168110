/**
 * Random-weight files for the latent-model tests, written on the fly (nothing committed): a tiny
 * latent DiT in the public facebookresearch/DiT layout with 1000 classes and NO metadata (as a
 * converted public checkpoint), and a small TAESD-shaped tiny decoder.
 *
 * @module
 */
import { fromFloat32, SafetensorsWriter } from "../formats/safetensors.ts";
import { Rng } from "../gpu/_testing.ts";
import { tinyDitTensors } from "./fixtures/make_fixture.ts";

/**
 * The tiny DiT fixture's tensors (hidden 64, depth 2, patch 2, 4 latent channels, 16×16 latent)
 * with a 1001-row class table (ImageNet's 1000 + the null class), written with no metadata.
 */
export async function writePublicLatentDit(
  path: string,
  metadata?: Record<string, string>,
): Promise<void> {
  const rng = new Rng(99);
  const tensors = tinyDitTensors().map((t) =>
    t.name === "y_embedder.embedding_table.weight"
      ? { ...t, shape: [1001, t.shape[1]], values: rng.normals(1001 * t.shape[1], 0.02) }
      : t
  );
  const bytes = tensors.map((t) => fromFloat32(t.dtype, t.values));
  const w = await SafetensorsWriter.create(path, {
    tensors: tensors.map((t, i) => ({
      name: t.name,
      dtype: t.dtype,
      shape: t.shape,
      byteLength: bytes[i].byteLength,
    })),
    metadata,
  });
  for (let i = 0; i < tensors.length; i++) await w.write(tensors[i].name, bytes[i]);
  await w.commit();
}

/**
 * A small TAESD-shaped decoder (taesd.py's Sequential numbering, clamp at 0): conv(z→16)+ReLU,
 * Block(16,16), upsample + conv, Block(16,24) with a skip, upsample + conv, Block(24,24),
 * conv(24→3). Returns the tensors; `writeTensors` writes them.
 */
export function randomTaesd(
  z: number,
  rng: Rng,
): Map<string, { shape: number[]; data: Float32Array }> {
  const t = new Map<string, { shape: number[]; data: Float32Array }>();
  const conv = (name: string, cout: number, cin: number, ks: number, bias: boolean) => {
    t.set(`${name}.weight`, {
      shape: [cout, cin, ks, ks],
      data: rng.normals(cout * cin * ks * ks, 1.4 / Math.sqrt(cin * ks * ks)),
    });
    if (bias) t.set(`${name}.bias`, { shape: [cout], data: rng.normals(cout, 0.1) });
  };
  const block = (i: number, cin: number, cout: number) => {
    conv(`${i}.conv.0`, cout, cin, 3, true);
    conv(`${i}.conv.2`, cout, cout, 3, true);
    conv(`${i}.conv.4`, cout, cout, 3, true);
    if (cin !== cout) conv(`${i}.skip`, cout, cin, 1, false);
  };
  conv("1", 16, z, 3, true); // 0: clamp, 2: ReLU
  block(3, 16, 16);
  conv("5", 16, 16, 3, false); // 4: upsample
  block(6, 16, 24);
  conv("8", 24, 24, 3, false); // 7: upsample
  block(9, 24, 24);
  conv("10", 3, 24, 3, true);
  return t;
}

/** Write F32 tensors under `rename(name)`. */
export async function writeTensors(
  path: string,
  tensors: Map<string, { shape: number[]; data: Float32Array }>,
  rename: (k: string) => string = (k) => k,
): Promise<void> {
  const specs = [...tensors].map(([k, v]) => ({
    name: rename(k),
    dtype: "F32" as const,
    shape: v.shape,
    byteLength: v.data.byteLength,
  }));
  const w = await SafetensorsWriter.create(path, { tensors: specs });
  for (const [k, v] of tensors) await w.write(rename(k), new Uint8Array(v.data.buffer));
  await w.commit();
}
