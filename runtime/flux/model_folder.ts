/**
 * Finding the parts of a FLUX.1 model on disk. Accepted:
 * - a **diffusers folder** as users download it (`model_index.json`, `transformer/`,
 *   `text_encoder/` (CLIP-L), `text_encoder_2/` (T5-XXL), `tokenizer/`, `tokenizer_2/`, `vae/`);
 * - a **BFL folder**: the transformer as one file at the top (`flux1-dev.safetensors`) and the
 *   autoencoder as `ae.safetensors`, with the encoder and tokenizer folders as above (the
 *   black-forest-labs repositories ship both layouts side by side; the diffusers parts win);
 * - a **pre-quantized transformer** (our format): `transformer` given explicitly (or `path`
 *   itself is such a file), the other parts from `parts` (default: the file's folder).
 * A missing part is named in the error, with what was looked for.
 *
 * @module
 */
import { FormatError } from "../../gpu/errors.ts";
import { SafetensorsReader } from "../../formats/safetensors.ts";

/** Where each part of a FLUX model is. */
export interface FluxModelParts {
  /** The folder the parts were found in. */
  root: string;
  /** Transformer: a file or a diffusers `transformer/` folder. */
  transformer: string;
  /** CLIP-L text encoder folder or file. */
  clip: string;
  /** CLIP tokenizer folder or `tokenizer.json`. */
  clipTokenizer: string;
  /** T5-XXL encoder folder or file. */
  t5: string;
  /** T5 tokenizer folder or `tokenizer.json`. */
  t5Tokenizer: string;
  /** Autoencoder: a diffusers `vae/` folder or BFL's `ae.safetensors`. */
  vae: string;
}

/** Which parts a caller needs (default all). */
export type FluxPart = keyof Omit<FluxModelParts, "root">;

const exists = async (p: string) => Boolean(await Deno.stat(p).catch(() => null));
const isDir = async (p: string) => (await Deno.stat(p).catch(() => null))?.isDirectory ?? false;

/** Whether `file` is a FLUX transformer in BFL layout or our pre-quantized FLUX format. */
async function isTransformerFile(file: string): Promise<boolean> {
  let r: SafetensorsReader;
  try {
    r = await SafetensorsReader.open(file);
  } catch {
    return false;
  }
  try {
    return r.metadata.family === "flux" || r.tensors.has("img_in.weight");
  } finally {
    r.close();
  }
}

/**
 * Resolve the parts of the FLUX model at `path` (folder, or a transformer file whose folder
 * holds the rest). `opts.transformer` overrides the transformer (e.g. a pre-quantized file
 * beside a float folder); `opts.need` lists the parts that must exist (default all).
 */
export async function resolveFluxModel(
  path: string,
  opts: { transformer?: string; need?: readonly FluxPart[] } = {},
): Promise<FluxModelParts> {
  if (!await exists(path)) {
    throw new FormatError(path, "the model folder or file does not exist");
  }
  let root = path, transformer = opts.transformer;
  if (!await isDir(path)) {
    if (!opts.transformer && !await isTransformerFile(path)) {
      throw new FormatError(path, "this file is not a FLUX.1 transformer (no img_in.weight)");
    }
    transformer ??= path;
    root = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) || "/" : ".";
  }
  if (!transformer) {
    if (await isDir(`${root}/transformer`)) transformer = `${root}/transformer`;
    else {
      const tops: string[] = [];
      for await (const e of Deno.readDir(root)) {
        if (e.isFile && e.name.endsWith(".safetensors") && e.name !== "ae.safetensors") {
          tops.push(`${root}/${e.name}`);
        }
      }
      tops.sort();
      for (const f of tops) {
        if (await isTransformerFile(f)) {
          transformer = f;
          break;
        }
      }
    }
  }
  const vae = await isDir(`${root}/vae`)
    ? `${root}/vae`
    : await exists(`${root}/ae.safetensors`)
    ? `${root}/ae.safetensors`
    : "";
  const parts: FluxModelParts = {
    root,
    transformer: transformer ?? "",
    clip: `${root}/text_encoder`,
    clipTokenizer: `${root}/tokenizer`,
    t5: `${root}/text_encoder_2`,
    t5Tokenizer: `${root}/tokenizer_2`,
    vae,
  };
  const what: Record<FluxPart, string> = {
    transformer: "the transformer (transformer/ folder, a BFL flux1-*.safetensors file at the " +
      "top, or --transformer FILE)",
    clip: "the CLIP text encoder (text_encoder/)",
    clipTokenizer: "the CLIP tokenizer (tokenizer/)",
    t5: "the T5 text encoder (text_encoder_2/)",
    t5Tokenizer: "the T5 tokenizer (tokenizer_2/)",
    vae: "the autoencoder (vae/ folder or ae.safetensors)",
  };
  const need = opts.need ?? (Object.keys(what) as FluxPart[]);
  const missing: string[] = [];
  for (const p of need) if (!parts[p] || !await exists(parts[p])) missing.push(what[p]);
  if (missing.length) {
    throw new FormatError(
      root,
      `this FLUX model lacks ${missing.join("; ")}. Download the whole model folder (e.g. ` +
        "huggingface.co/black-forest-labs/FLUX.1-schnell) or point --model at a folder with " +
        "these parts",
    );
  }
  return parts;
}

/**
 * Default image size [height, width] of a FLUX folder: diffusers' FLUX default of 128 latent
 * pixels per side (1024² for FLUX.1's factor-8 autoencoder), unless the folder's model_index.json
 * says `"_default_size": [height, width]` (keys starting with `_` are ignored by diffusers; the
 * tiny test model uses it to stay small).
 */
export async function fluxDefaultSize(root: string, factor: number): Promise<[number, number]> {
  const text = await Deno.readTextFile(`${root}/model_index.json`).catch(() => "");
  let size: unknown;
  try {
    size = text ? JSON.parse(text)._default_size : undefined;
  } catch {
    throw new FormatError(`${root}/model_index.json`, "the file is not JSON");
  }
  if (Array.isArray(size) && size.length === 2 && size.every((v) => Number.isInteger(v))) {
    return [size[0], size[1]];
  }
  return [128 * factor, 128 * factor];
}
