/**
 * The FLUX transformer's weights, whatever the file layout, under one set of canonical names
 * (BFL's: `img_in`, `double_blocks.N.img_attn.qkv`, `single_blocks.N.linear1`, …).
 *
 * Layouts read:
 * - **BFL** (`flux1-dev.safetensors` as released, and our float fixture): canonical already.
 * - **diffusers** `FluxTransformer2DModel` (`transformer/` with `config.json` and one or several
 *   `*.safetensors` shards): renamed by {@linkcode DIFFUSERS_NAMES}; q, k, v of a block are
 *   concatenated into one qkv; `norm_out.linear` (scale, then shift) has its halves swapped into
 *   BFL's final-layer order (shift, then scale).
 * - **ours** (a pre-quantized file of this project, family `flux`): canonical names, linear layers
 *   stored per the file's layer policy.
 *
 * The graph runs the single block's fused linears as four layers (the split the W4A4 policy
 * needs: GELU applies to the MLP part only, and the MLP's second linear has post-GELU inputs):
 * {@linkcode singleBlockLayers}. A float file gives them as slices of `linear1` / `linear2`; a
 * pre-quantized file stores them under those names.
 *
 * @module
 */
import { FormatError } from "../../gpu/errors.ts";
import type { StoredTensor } from "../linear.ts";
import { ModelFile } from "../model_file.ts";
import type { LayerPolicyEntry } from "../../formats/format.ts";
import { SafetensorsReader } from "../../formats/safetensors.ts";
import {
  type FluxConfig,
  fluxConfigFromBfl,
  fluxConfigFromDiffusers,
  fluxConfigFromShapes,
  isDiffusersConfig,
  mlpWidth,
} from "./config.ts";

/** Key layout of a FLUX transformer file. */
export type FluxLayout = "bfl" | "diffusers" | "ours";

/**
 * The four layers the graph runs for `single_blocks.N.linear1` / `linear2`, as canonical names
 * (a pre-quantized file stores them under these names):
 * - `linear1_qkv`: rows 0 .. 3D of linear1 (q | k | v), with their bias;
 * - `linear1_mlp`: rows 3D .. 3D+mlp of linear1 (GELU follows), with their bias;
 * - `linear2_attn`: columns 0 .. D of linear2 (input: the attention output), no bias;
 * - `linear2_mlp`: columns D .. D+mlp of linear2 (input: the GELU output), with linear2's bias.
 */
export function singleBlockLayers(i: number): {
  qkv: string;
  mlpIn: string;
  attnOut: string;
  mlpOut: string;
} {
  const b = `single_blocks.${i}`;
  return {
    qkv: `${b}.linear1_qkv`,
    mlpIn: `${b}.linear1_mlp`,
    attnOut: `${b}.linear2_attn`,
    mlpOut: `${b}.linear2_mlp`,
  };
}

/**
 * Canonical (BFL) name prefix → diffusers name prefix, for the tensors that map one to one
 * (`N` is the block index). qkv projections (concatenations of to_q/to_k/to_v) and the single
 * block's linear1/linear2 are composed in {@linkcode FluxWeights}.
 */
export const DIFFUSERS_NAMES: readonly [bfl: string, diffusers: string][] = [
  ["img_in", "x_embedder"],
  ["txt_in", "context_embedder"],
  ["time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"],
  ["time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"],
  ["guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"],
  ["guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"],
  ["vector_in.in_layer", "time_text_embed.text_embedder.linear_1"],
  ["vector_in.out_layer", "time_text_embed.text_embedder.linear_2"],
  ["double_blocks.N.img_mod.lin", "transformer_blocks.N.norm1.linear"],
  ["double_blocks.N.txt_mod.lin", "transformer_blocks.N.norm1_context.linear"],
  ["double_blocks.N.img_attn.norm.query_norm.scale", "transformer_blocks.N.attn.norm_q.weight"],
  ["double_blocks.N.img_attn.norm.key_norm.scale", "transformer_blocks.N.attn.norm_k.weight"],
  [
    "double_blocks.N.txt_attn.norm.query_norm.scale",
    "transformer_blocks.N.attn.norm_added_q.weight",
  ],
  ["double_blocks.N.txt_attn.norm.key_norm.scale", "transformer_blocks.N.attn.norm_added_k.weight"],
  ["double_blocks.N.img_attn.proj", "transformer_blocks.N.attn.to_out.0"],
  ["double_blocks.N.txt_attn.proj", "transformer_blocks.N.attn.to_add_out"],
  ["double_blocks.N.img_mlp.0", "transformer_blocks.N.ff.net.0.proj"],
  ["double_blocks.N.img_mlp.2", "transformer_blocks.N.ff.net.2"],
  ["double_blocks.N.txt_mlp.0", "transformer_blocks.N.ff_context.net.0.proj"],
  ["double_blocks.N.txt_mlp.2", "transformer_blocks.N.ff_context.net.2"],
  ["single_blocks.N.modulation.lin", "single_transformer_blocks.N.norm.linear"],
  ["single_blocks.N.norm.query_norm.scale", "single_transformer_blocks.N.attn.norm_q.weight"],
  ["single_blocks.N.norm.key_norm.scale", "single_transformer_blocks.N.attn.norm_k.weight"],
  ["single_blocks.N.linear1_mlp", "single_transformer_blocks.N.proj_mlp"],
  ["final_layer.adaLN_modulation.1", "norm_out.linear"],
  ["final_layer.linear", "proj_out"],
];

/** Diffusers q, k, v names of a canonical qkv layer (undefined when it is not one). */
function diffusersQkv(base: string): string[] | undefined {
  let m = base.match(/^double_blocks\.(\d+)\.(img|txt)_attn\.qkv$/);
  if (m) {
    const a = `transformer_blocks.${m[1]}.attn`;
    return m[2] === "img"
      ? [`${a}.to_q`, `${a}.to_k`, `${a}.to_v`]
      : [`${a}.add_q_proj`, `${a}.add_k_proj`, `${a}.add_v_proj`];
  }
  m = base.match(/^single_blocks\.(\d+)\.linear1_qkv$/);
  if (m) {
    const a = `single_transformer_blocks.${m[1]}.attn`;
    return [`${a}.to_q`, `${a}.to_k`, `${a}.to_v`];
  }
  return undefined;
}

/** The diffusers name of a one-to-one canonical tensor name, or undefined. */
export function toDiffusersName(name: string): string | undefined {
  const m = name.match(/^(double_blocks|single_blocks)\.(\d+)\.(.*)$/);
  const generic = m ? `${m[1]}.N.${m[3]}` : name;
  for (const [bfl, dif] of DIFFUSERS_NAMES) {
    if (generic === bfl || generic.startsWith(bfl + ".")) {
      const rest = generic.slice(bfl.length);
      return (m ? dif.replace(".N.", `.${m[2]}.`) : dif) + rest;
    }
  }
  return undefined;
}

/**
 * What the FLUX graph reads, by canonical names: {@linkcode FluxWeights} is the one backed by
 * files; a benchmark supplies random weights through the same interface.
 */
export interface FluxSource {
  /** Where the weights come from, for messages. */
  readonly path: string;
  /** Model hyper-parameters. */
  readonly config: FluxConfig;
  /** The policy entry of a canonical linear layer. */
  policyOf(base: string): LayerPolicyEntry;
  /** Whether a canonical tensor exists. */
  has(name: string): boolean;
  /** A canonical float tensor as f32 values. */
  float(name: string): Promise<Float32Array>;
  /** A linear layer's tensors as `createLinear` takes them. */
  linearTensors(base: string): Promise<Map<string, StoredTensor | Float32Array>>;
}

/** An open FLUX transformer (any layout), read by canonical names. */
export class FluxWeights implements FluxSource {
  /** File or folder it was opened from. */
  readonly path: string;
  /** Key layout of the file(s). */
  readonly layout: FluxLayout;
  /** Model hyper-parameters. */
  readonly config: FluxConfig;
  /** "float", or the pre-quantized file's weight format ("int4", "nvfp4", "w4a16"). */
  readonly precision: string;
  #readers: Map<string, SafetensorsReader>; // tensor name → reader holding it
  #all: SafetensorsReader[];
  #quant?: ModelFile;

  private constructor(init: {
    path: string;
    layout: FluxLayout;
    config: FluxConfig;
    precision: string;
    readers: SafetensorsReader[];
    quant?: ModelFile;
  }) {
    this.path = init.path;
    this.layout = init.layout;
    this.config = init.config;
    this.precision = init.precision;
    this.#all = init.readers;
    this.#quant = init.quant;
    this.#readers = new Map();
    for (const r of init.readers) for (const name of r.tensors.keys()) this.#readers.set(name, r);
  }

  /**
   * Open a FLUX transformer: a safetensors file (BFL layout, or a pre-quantized file of ours), a
   * diffusers `transformer/` folder (`config.json` + `*.safetensors` shards), or a model folder
   * holding one. `config`
   * (diffusers or BFL names) overrides what the files say.
   */
  static async open(path: string, config?: Record<string, unknown>): Promise<FluxWeights> {
    const stat = await Deno.stat(path).catch(() => null);
    if (!stat) {
      throw new FormatError(path, "the FLUX transformer file or folder does not exist");
    }
    let files: string[];
    let json = config;
    if (stat.isDirectory && await Deno.stat(`${path}/transformer`).catch(() => null)) {
      return await FluxWeights.open(`${path}/transformer`, config); // a whole model folder
    }
    if (stat.isDirectory) {
      files = [];
      for await (const e of Deno.readDir(path)) {
        if (e.isFile && e.name.endsWith(".safetensors")) files.push(`${path}/${e.name}`);
      }
      files.sort();
      if (files.length === 0) {
        throw new FormatError(path, "the transformer folder has no .safetensors file");
      }
      if (!json) {
        const text = await Deno.readTextFile(`${path}/config.json`).catch(() => undefined);
        if (text) json = JSON.parse(text);
      }
    } else {
      files = [path];
    }
    const readers: SafetensorsReader[] = [];
    try {
      for (const f of files) readers.push(await SafetensorsReader.open(f));
      const meta = readers[0].metadata;
      if (meta.format !== undefined) {
        for (const r of readers) r.close();
        readers.length = 0;
        const q = await ModelFile.open(files[0]);
        if (q.family !== "flux") {
          q.close();
          throw new FormatError(path, `the model family is "${q.family}", expected "flux"`);
        }
        const cfg = fluxConfigFromBfl(q.config, path);
        return new FluxWeights({
          path,
          layout: "ours",
          config: cfg,
          precision: q.precision,
          readers: [q.reader],
          quant: q,
        });
      }
      const names = new Set(readers.flatMap((r) => [...r.tensors.keys()]));
      const layout: FluxLayout = names.has("img_in.weight")
        ? "bfl"
        : names.has("x_embedder.weight")
        ? "diffusers"
        : (() => {
          throw new FormatError(
            path,
            "neither img_in.weight (BFL layout) nor x_embedder.weight (diffusers layout) is " +
              "present: not a FLUX transformer",
          );
        })();
      if (!json && meta.model_config) json = JSON.parse(meta.model_config);
      let cfg: FluxConfig;
      if (json) {
        cfg = isDiffusersConfig(json)
          ? fluxConfigFromDiffusers(json, path)
          : fluxConfigFromBfl(json, path);
      } else if (layout === "bfl") {
        const shapes = new Map<string, number[]>();
        for (const r of readers) for (const [n, t] of r.tensors) shapes.set(n, t.shape);
        cfg = fluxConfigFromShapes(shapes, path);
      } else {
        throw new FormatError(path, "a diffusers-layout transformer needs its config.json");
      }
      return new FluxWeights({ path, layout, config: cfg, precision: "float", readers });
    } catch (e) {
      for (const r of readers) r.close();
      throw e;
    }
  }

  /** The policy entry of a canonical linear layer (float files: float). */
  policyOf(base: string): LayerPolicyEntry {
    return this.#quant?.policyOf(base) ?? { method: "float", format: "f16", r: 0 };
  }

  /** Whether a canonical tensor exists (composed tensors count when all their parts do). */
  has(name: string): boolean {
    if (this.layout !== "diffusers") return this.#readers.has(name) || this.#sliced(name) !== null;
    const dif = toDiffusersName(name);
    if (dif) return this.#readers.has(dif);
    const m = name.match(/^(.*)\.(weight|bias)$/);
    const parts = m && diffusersQkv(m[1]);
    return Boolean(parts?.every((p) => this.#readers.has(`${p}.${m![2]}`))) ||
      this.#sliced(name) !== null;
  }

  /** A canonical float tensor as f32 values; FormatError naming it when missing. */
  async float(name: string): Promise<Float32Array> {
    const direct = this.layout === "diffusers" ? toDiffusersName(name) : name;
    if (direct && this.#readers.has(direct)) {
      const v = await this.#raw(direct);
      return name.startsWith("final_layer.adaLN_modulation.1.") && this.layout === "diffusers"
        ? swapHalves(v)
        : v;
    }
    const m = name.match(/^(.*)\.(weight|bias)$/);
    if (m && this.layout === "diffusers") {
      const parts = diffusersQkv(m[1]);
      if (parts) return concat(await Promise.all(parts.map((p) => this.#raw(`${p}.${m[2]}`))));
    }
    const slice = this.#sliced(name);
    if (slice) return await slice();
    throw new FormatError(this.path, "the tensor is missing", name);
  }

  /**
   * The tensors of a canonical linear layer as `createLinear` takes them: float layers give
   * `weight` (f32) and `bias` when present; quantized layers every stored suffix.
   */
  async linearTensors(base: string): Promise<Map<string, StoredTensor | Float32Array>> {
    if (this.#quant && this.policyOf(base).method !== "float") {
      return await this.#quant.linearTensors(base);
    }
    const out = new Map<string, StoredTensor | Float32Array>();
    out.set("weight", await this.float(`${base}.weight`));
    if (this.has(`${base}.bias`)) out.set("bias", await this.float(`${base}.bias`));
    return out;
  }

  /** Close every file. */
  close(): void {
    if (this.#quant) this.#quant.close();
    else for (const r of this.#all) r.close();
  }

  async #raw(name: string): Promise<Float32Array> {
    const r = this.#readers.get(name);
    if (!r) throw new FormatError(this.path, "the tensor is missing", name);
    return await r.readFloat32(name);
  }

  /** A reader of a single-block sub-layer tensor sliced from linear1 / linear2, or null. */
  #sliced(name: string): (() => Promise<Float32Array>) | null {
    const m = name.match(
      /^single_blocks\.(\d+)\.(linear1_qkv|linear1_mlp|linear2_attn|linear2_mlp)\.(weight|bias)$/,
    );
    if (!m || this.layout === "ours") return null;
    const [, i, part, kind] = m;
    const D = this.config.hidden_size, mlp = mlpWidth(this.config);
    const dif = this.layout === "diffusers";
    const l1 = `single_blocks.${i}.linear1.${kind}`;
    const l2 = dif
      ? `single_transformer_blocks.${i}.proj_out.${kind}`
      : `single_blocks.${i}.linear2.${kind}`;
    if (part === "linear1_qkv" || part === "linear1_mlp") {
      if (dif) return null; // diffusers keeps them apart: to_q/k/v and proj_mlp
      if (!this.#readers.has(l1)) return null;
      const [r0, r1] = part === "linear1_qkv" ? [0, 3 * D] : [3 * D, 3 * D + mlp];
      const cols = kind === "weight" ? D : 1;
      return async () => (await this.#raw(l1)).slice(r0 * cols, r1 * cols);
    }
    if (!this.#readers.has(l2)) return null;
    if (kind === "bias") {
      return part === "linear2_mlp" ? () => this.#raw(l2) : null;
    }
    const [c0, c1] = part === "linear2_attn" ? [0, D] : [D, D + mlp];
    return async () => {
      const w = await this.#raw(l2), k = D + mlp, out = new Float32Array(D * (c1 - c0));
      for (let n = 0; n < D; n++) out.set(w.subarray(n * k + c0, n * k + c1), n * (c1 - c0));
      return out;
    };
  }
}

function concat(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((s, p) => s + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Rows [a; b] → [b; a] (a weight [2D, K] or a bias [2D]). */
function swapHalves(v: Float32Array): Float32Array {
  const h = v.length / 2, out = new Float32Array(v.length);
  out.set(v.subarray(h), 0);
  out.set(v.subarray(0, h), h);
  return out;
}

/**
 * Where the FLUX transformer of `input` is, or null when `input` is not FLUX: a model folder
 * (`model_index.json` / `transformer/`) gives its `transformer/`; a folder with `config.json`
 * and shards, or a safetensors file whose metadata says `family: flux` or whose keys are FLUX's
 * (`img_in.weight`, `x_embedder.weight` with `transformer_blocks.0.attn.add_q_proj.weight`),
 * is itself.
 */
export async function fluxTransformerPath(input: string): Promise<string | null> {
  const stat = await Deno.stat(input).catch(() => null);
  if (!stat) return null;
  if (stat.isDirectory) {
    const has = async (p: string) => Boolean(await Deno.stat(`${input}/${p}`).catch(() => null));
    if (await has("transformer")) return await fluxTransformerPath(`${input}/transformer`);
    const text = await Deno.readTextFile(`${input}/config.json`).catch(() => "");
    return text.includes("FluxTransformer2DModel") ? input : null;
  }
  let r: SafetensorsReader;
  try {
    r = await SafetensorsReader.open(input);
  } catch {
    return null;
  }
  try {
    const t = r.tensors;
    const flux = r.metadata.family === "flux" || t.has("img_in.weight") ||
      (t.has("x_embedder.weight") && t.has("transformer_blocks.0.attn.add_q_proj.weight"));
    return flux ? input : null;
  } finally {
    r.close();
  }
}
