/**
 * Opening an autoencoder (AutoencoderKL) checkpoint: finding the file, telling its key layout,
 * and its config.
 *
 * Layouts (both hold the same tensors, with PyTorch shapes):
 * - `"ldm"`: the original LDM / BFL names, e.g. `decoder.mid.block_1.norm1.weight`,
 *   `decoder.mid.attn_1.q.weight`, `decoder.up.N.block.M.conv1.weight`,
 *   `decoder.up.N.upsample.conv.weight`, `decoder.norm_out.weight`; FLUX's `ae.safetensors`, SD
 *   1.x/2.x VAEs (`up.0` is the full-resolution level, applied last).
 * - `"diffusers"`: `decoder.mid_block.resnets.0.*`, `decoder.mid_block.attentions.0.{group_norm,
 *   to_q, to_k, to_v, to_out.0}` (old files: `query, key, value, proj_attn`), as linear
 *   `[C, C]` weights, `decoder.up_blocks.K.resnets.M.*` with `conv_shortcut`,
 *   `decoder.up_blocks.K.upsamplers.0.conv`, `decoder.conv_norm_out`; `up_blocks` run in the
 *   opposite order of `up.N` (`up_blocks.K` = `up.(L−1−K)`).
 * Keys may carry a prefix (`first_stage_model.` in a full SD checkpoint, `vae.`); it is found
 * from `decoder.conv_in.weight` / `encoder.conv_in.weight`.
 *
 * The runtime names every tensor by its LDM name ({@linkcode AeCheckpoint.key} maps it).
 *
 * @module
 */
import { FormatError } from "../gpu/errors.ts";
import { SafetensorsReader } from "../formats/safetensors.ts";

/** Key layout of an autoencoder checkpoint. */
export type AeLayout = "ldm" | "diffusers";

/** Latent normalisation of a model family: `latent = scale · (mean − shift)`. */
export interface AePreset {
  /** Latent channels. */
  zChannels: number;
  /** `scale_factor` / `scaling_factor`. */
  scale: number;
  /** `shift_factor` (0 for SD / SDXL). */
  shift: number;
}

/** The presets of the released autoencoders. */
export const AE_PRESETS: Readonly<Record<"sd" | "sdxl" | "sd3" | "flux", AePreset>> = {
  sd: { zChannels: 4, scale: 0.18215, shift: 0 },
  sdxl: { zChannels: 4, scale: 0.13025, shift: 0 },
  sd3: { zChannels: 16, scale: 1.5305, shift: 0.0609 },
  flux: { zChannels: 16, scale: 0.3611, shift: 0.1159 },
};

/** Name of a preset in {@linkcode AE_PRESETS}. */
export type AePresetName = keyof typeof AE_PRESETS;

/** An AutoencoderKL's hyper-parameters (LDM / BFL names in camelCase). */
export interface AeConfig {
  /** Image channels in (encoder). */
  inChannels: number;
  /** Image channels out (decoder). */
  outChannels: number;
  /** Base channels `ch`; level i has `ch · chMult[i]`. */
  ch: number;
  /** Channel multipliers per level, full resolution first. */
  chMult: number[];
  /** ResnetBlocks per encoder level (the decoder has one more). */
  numResBlocks: number;
  /** Latent channels. */
  zChannels: number;
  /** Latent scale. */
  scale: number;
  /** Latent shift. */
  shift: number;
  /** Where the config came from: `config.json`, `metadata`, or `shapes` (+ preset). */
  from: string;
}

/** An open autoencoder checkpoint: its reader, layout, key prefix and config. */
export class AeCheckpoint {
  /** The safetensors file. */
  readonly reader: SafetensorsReader;
  /** Key layout. */
  readonly layout: AeLayout;
  /** Prefix of every autoencoder key (often empty). */
  readonly prefix: string;
  /** The config. */
  readonly config: AeConfig;
  /** Whether the file holds the encoder / the decoder. */
  readonly hasEncoder: boolean;
  /** Whether the file holds the decoder. */
  readonly hasDecoder: boolean;

  private constructor(
    reader: SafetensorsReader,
    layout: AeLayout,
    prefix: string,
    config: AeConfig,
  ) {
    this.reader = reader;
    this.layout = layout;
    this.prefix = prefix;
    this.config = config;
    this.hasEncoder = this.has("encoder.conv_in.weight");
    this.hasDecoder = this.has("decoder.conv_in.weight");
  }

  /**
   * Open `source`: a `.safetensors` file, or a diffusers folder (`config.json` +
   * `diffusion_pytorch_model.safetensors`, or a pipeline folder with a `vae/` subfolder).
   * The config comes from the diffusers `config.json` (beside the file), else the metadata's
   * `model_config` (BFL `AutoEncoderParams` names), else the tensor shapes with `preset` (by
   * default `flux` for 16 latent channels, `sd` for 4).
   */
  static async open(source: string, preset?: AePresetName): Promise<AeCheckpoint> {
    const { file, configJson } = await locate(source);
    const reader = await SafetensorsReader.open(file);
    try {
      const prefix = findPrefix(reader);
      const names = [...reader.tensors.keys()].map((k) => k.slice(prefix.length));
      const layout: AeLayout = names.some((k) => /^(de|en)coder\.mid_block\./.test(k))
        ? "diffusers"
        : "ldm";
      const config = configJson
        ? fromDiffusersConfig(file, configJson, preset)
        : fromMetadata(reader, preset) ?? fromShapes(reader, prefix, layout, names, preset);
      return new AeCheckpoint(reader, layout, prefix, config);
    } catch (e) {
      reader.close();
      throw e;
    }
  }

  /** The file key of the LDM-named tensor `name`, or undefined when the file lacks it. */
  key(name: string): string | undefined {
    for (const k of fileKeys(name, this.layout, this.config.chMult.length)) {
      if (this.reader.tensors.has(this.prefix + k)) return this.prefix + k;
    }
    return undefined;
  }

  /** Whether the LDM-named tensor exists. */
  has(name: string): boolean {
    return this.key(name) !== undefined;
  }

  /**
   * The LDM-named tensor's values (f32) and PyTorch shape; a `FormatError` naming it (and the
   * layout) when missing.
   */
  async tensor(name: string): Promise<{ data: Float32Array; shape: number[] }> {
    const key = this.key(name);
    if (!key) {
      throw new FormatError(
        this.reader.path,
        `the ${this.layout}-layout autoencoder has no such tensor (looked for ` +
          `${fileKeys(name, this.layout, this.config.chMult.length).join(" / ")}` +
          `${this.prefix ? ` under "${this.prefix}"` : ""})`,
        name,
      );
    }
    return { data: await this.reader.readFloat32(key), shape: [...this.reader.info(key).shape] };
  }

  /** Close the file. */
  close(): void {
    this.reader.close();
  }
}

/** The candidate file keys of an LDM name in `layout` (several for the old diffusers names). */
export function fileKeys(name: string, layout: AeLayout, levels: number): string[] {
  if (layout === "ldm") return [name];
  const k = name
    .replace(
      /^(en|de)coder\.mid\.block_(\d)\./,
      (_, p, j) => `${p}coder.mid_block.resnets.${j - 1}.`,
    )
    .replace(
      /^decoder\.up\.(\d+)\.block\.(\d+)\./,
      (_, i, j) => `decoder.up_blocks.${levels - 1 - Number(i)}.resnets.${j}.`,
    )
    .replace(
      /^decoder\.up\.(\d+)\.upsample\./,
      (_, i) => `decoder.up_blocks.${levels - 1 - Number(i)}.upsamplers.0.`,
    )
    .replace(/^encoder\.down\.(\d+)\.block\.(\d+)\./, "encoder.down_blocks.$1.resnets.$2.")
    .replace(/^encoder\.down\.(\d+)\.downsample\./, "encoder.down_blocks.$1.downsamplers.0.")
    .replace(/\.nin_shortcut\./, ".conv_shortcut.")
    .replace(/^(en|de)coder\.norm_out\./, "$1coder.conv_norm_out.");
  const attn = /^(en|de)coder\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)$/.exec(k);
  if (attn) {
    const base = `${attn[1]}coder.mid_block.attentions.0.`;
    const names: Record<string, string[]> = {
      norm: ["group_norm"],
      q: ["to_q", "query"],
      k: ["to_k", "key"],
      v: ["to_v", "value"],
      proj_out: ["to_out.0", "proj_attn"],
    };
    return names[attn[2]].map((n) => `${base}${n}.${attn[3]}`);
  }
  return [k];
}

async function locate(source: string): Promise<{ file: string; configJson?: string }> {
  let stat: Deno.FileInfo;
  try {
    stat = await Deno.stat(source);
  } catch {
    throw new FormatError(
      source,
      "no such file or folder (give an autoencoder .safetensors file or a diffusers vae folder)",
    );
  }
  if (stat.isDirectory) {
    for (const dir of [source, `${source}/vae`]) {
      const file = `${dir}/diffusion_pytorch_model.safetensors`;
      if (await exists(file)) return { file, configJson: await readConfig(`${dir}/config.json`) };
    }
    const st = [];
    for await (const e of Deno.readDir(source)) {
      if (e.name.endsWith(".safetensors")) st.push(e.name);
    }
    if (st.length === 1) return locate(`${source}/${st[0]}`);
    throw new FormatError(
      source,
      "the folder has no diffusion_pytorch_model.safetensors (nor vae/ with one) and " +
        `${st.length} other .safetensors files; give the autoencoder file itself`,
    );
  }
  const dir = source.includes("/") ? source.slice(0, source.lastIndexOf("/")) : ".";
  return { file: source, configJson: await readConfig(`${dir}/config.json`) };
}

async function exists(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

/** A config.json's text when it is an AutoencoderKL's (other models' configs are ignored). */
async function readConfig(path: string): Promise<string | undefined> {
  if (!(await exists(path))) return undefined;
  const text = await Deno.readTextFile(path);
  try {
    const c = JSON.parse(text);
    return c && typeof c === "object" && "latent_channels" in c && "block_out_channels" in c
      ? text
      : undefined;
  } catch {
    throw new FormatError(path, "config.json is not JSON");
  }
}

function num(file: string, c: Record<string, unknown>, key: string, fallback?: number): number {
  const v = c[key] ?? fallback;
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw new FormatError(file, `the autoencoder config lacks a numeric "${key}"`);
  }
  return v;
}

function fromDiffusersConfig(file: string, text: string, preset?: AePresetName): AeConfig {
  const c = JSON.parse(text) as Record<string, unknown>;
  const blocks = c.block_out_channels;
  if (!Array.isArray(blocks) || !blocks.every((b) => Number.isInteger(b) && b > 0)) {
    throw new FormatError(file, 'config.json lacks "block_out_channels" (a list of integers)');
  }
  const z = num(file, c, "latent_channels");
  const p = preset ? AE_PRESETS[preset] : undefined;
  const ch = blocks[0] as number;
  return {
    inChannels: num(file, c, "in_channels", 3),
    outChannels: num(file, c, "out_channels", 3),
    ch,
    chMult: blocks.map((b) => (b as number) / ch),
    numResBlocks: num(file, c, "layers_per_block", 2),
    zChannels: z,
    scale: p?.scale ?? num(file, c, "scaling_factor", defaultPreset(z).scale),
    shift: p?.shift ?? (typeof c.shift_factor === "number" ? c.shift_factor : 0),
    from: "config.json",
  };
}

function fromMetadata(reader: SafetensorsReader, preset?: AePresetName): AeConfig | undefined {
  const text = reader.metadata.model_config;
  if (!text) return undefined;
  let c: Record<string, unknown>;
  try {
    c = JSON.parse(text);
  } catch {
    throw new FormatError(reader.path, "metadata model_config is not JSON");
  }
  if (!c || typeof c !== "object" || !Array.isArray(c.ch_mult)) return undefined;
  const f = reader.path;
  const z = num(f, c, "z_channels");
  const p = preset ? AE_PRESETS[preset] : undefined;
  return {
    inChannels: num(f, c, "in_channels", 3),
    outChannels: num(f, c, "out_ch", 3),
    ch: num(f, c, "ch"),
    chMult: (c.ch_mult as unknown[]).map(Number),
    numResBlocks: num(f, c, "num_res_blocks"),
    zChannels: z,
    scale: p?.scale ?? num(f, c, "scale_factor", defaultPreset(z).scale),
    shift: p?.shift ?? num(f, c, "shift_factor", 0),
    from: "metadata",
  };
}

function defaultPreset(z: number): AePreset {
  return z === 16 ? AE_PRESETS.flux : AE_PRESETS.sd;
}

function fromShapes(
  reader: SafetensorsReader,
  prefix: string,
  layout: AeLayout,
  names: string[],
  preset?: AePresetName,
): AeConfig {
  const f = reader.path;
  const shape = (n: string) => {
    const info = reader.tensors.get(prefix + n);
    if (!info) {
      throw new FormatError(
        f,
        "cannot infer the autoencoder config from the tensor shapes: the tensor is missing " +
          "(give a diffusers config.json beside the file)",
        prefix + n,
      );
    }
    return info.shape;
  };
  // Levels and resnets per level, from the decoder (or the encoder when it is alone).
  const dec = names.some((n) => n.startsWith("decoder."));
  const lv = dec
    ? (layout === "ldm"
      ? /^decoder\.up\.(\d+)\.block\.(\d+)\./
      : /^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\./)
    : (layout === "ldm"
      ? /^encoder\.down\.(\d+)\.block\.(\d+)\./
      : /^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\./);
  let levels = 0, blocks = 0;
  for (const n of names) {
    const m = lv.exec(n);
    if (m) {
      levels = Math.max(levels, Number(m[1]) + 1);
      blocks = Math.max(blocks, Number(m[2]) + 1);
    }
  }
  if (levels === 0) {
    throw new FormatError(
      f,
      "no decoder or encoder levels found (decoder.up.N / up_blocks.N / encoder.down.N): not an " +
        "AutoencoderKL checkpoint",
    );
  }
  const chans: number[] = [];
  for (let i = 0; i < levels; i++) {
    const n = dec
      ? (layout === "ldm"
        ? `decoder.up.${i}.block.0.conv2.weight`
        : `decoder.up_blocks.${levels - 1 - i}.resnets.0.conv2.weight`)
      : (layout === "ldm"
        ? `encoder.down.${i}.block.0.conv2.weight`
        : `encoder.down_blocks.${i}.resnets.0.conv2.weight`);
    chans.push(shape(n)[0]);
  }
  const ch = chans[0];
  const z = dec ? shape("decoder.conv_in.weight")[1] : shape("encoder.conv_out.weight")[0] / 2;
  const p = preset ? AE_PRESETS[preset] : defaultPreset(z);
  return {
    inChannels: names.includes("encoder.conv_in.weight") ? shape("encoder.conv_in.weight")[1] : 3,
    outChannels: dec ? shape("decoder.conv_out.weight")[0] : 3,
    ch,
    chMult: chans.map((c) => c / ch),
    numResBlocks: dec ? blocks - 1 : blocks,
    zChannels: z,
    scale: p.scale,
    shift: p.shift,
    from: `shapes (preset ${preset ?? (z === 16 ? "flux" : "sd")})`,
  };
}

function findPrefix(reader: SafetensorsReader): string {
  for (const k of reader.tensors.keys()) {
    const m = /^(.*?)(decoder|encoder)\.conv_in\.weight$/.exec(k);
    if (m) return m[1];
  }
  throw new FormatError(
    reader.path,
    "no decoder.conv_in.weight or encoder.conv_in.weight (under any prefix): not an " +
      "AutoencoderKL checkpoint",
  );
}
