/**
 * FLUX.1's text conditioning in one object: CLIP-L's pooled vector and T5-XXL's token sequence
 * for a prompt, tokenized from the model folders' own `tokenizer.json`, encoded on the GPU, and
 * cached per (models, prompt) for the life of the process (the endpoint serves repeated
 * prompts). `offload()` frees the encoders' GPU memory (`--offload-text`: T5-XXL and the FLUX
 * transformer need not be resident together); the next uncached prompt loads them again.
 *
 * The tokenizer (npm `@huggingface/tokenizers`) is imported dynamically on first use, so
 * importing this module (or mod.ts) loads no npm package; {@linkcode TextEncoders.encodeIds}
 * runs without it.
 *
 * @module
 */
import type { ActDtype } from "../../kernels/_wgsl.ts";
import type { Gpu } from "../../gpu/device.ts";
import { ClipTextEncoder } from "./clip.ts";
import { T5Encoder } from "./t5.ts";
import type { TextTokenizer } from "./tokenizer.ts";
import type { TextWeightFormat } from "./_linears.ts";
import { Serial } from "./_serial.ts";

/** CLIP's token length in every FLUX/SD pipeline (its 77 positions). */
const CLIP_LENGTH = 77;

/**
 * Default T5 weights: INT8 per channel, the smallest format whose encoder-output cosine vs f32
 * stayed ≥ 0.99 in every measurement (INT4 group 64 did not: README, bench/RESULTS.md). Half
 * T5-XXL's 16-bit bytes; "float" is the exact reference path.
 */
export const DEFAULT_T5_WEIGHTS: TextWeightFormat = "w8a16";

/** T5 token lengths of the FLUX.1 pipelines. */
export const FLUX_T5_LENGTH = { schnell: 256, dev: 512 } as const;

/** Where the encoders and tokenizers are, and how to run them. */
export interface TextEncodersOptions {
  /** CLIP text model: `text_encoder/` folder or a `.safetensors` file. */
  clip: string;
  /** CLIP tokenizer: `tokenizer/` folder or its `tokenizer.json`. */
  clipTokenizer: string;
  /** T5 encoder: `text_encoder_2/` folder (sharded or not) or a `.safetensors` file. */
  t5: string;
  /** T5 tokenizer: `tokenizer_2/` folder or its `tokenizer.json`. */
  t5Tokenizer: string;
  /** T5 tokens: 256 (FLUX.1-schnell) or 512 (dev). Default 512. */
  t5Length?: number;
  /** Activation dtype of both encoders. Default f16 where the device has it. */
  dtype?: ActDtype;
  /**
   * T5 linear weights: "float", "w4a16" or "w8a16", quantized at load (a pre-quantized file's
   * format wins). Default {@linkcode DEFAULT_T5_WEIGHTS}.
   */
  t5Weights?: TextWeightFormat;
  /**
   * Free the encoders' GPU memory right after each prompt that loaded them (`--offload-text`):
   * a served FLUX model then holds T5 and CLIP only while encoding a new prompt; cached prompts
   * load nothing. Default false: they stay resident until {@linkcode TextEncoders.offload}.
   */
  offload?: boolean;
}

/** What {@linkcode TextEncoders.encode} returns for one prompt. */
export interface PromptEmbedding {
  /** T5 `last_hidden_state`, f32 [t5Length, d_model] (FLUX's `prompt_embeds`). */
  t5: Float32Array;
  /** CLIP pooled output, f32 [hidden] (FLUX's `pooled_prompt_embeds`). */
  pooled: Float32Array;
  /** T5 d_model (4096 for T5-XXL). */
  t5Dim: number;
  /** T5 tokens per prompt. */
  t5Length: number;
  /** CLIP hidden size (768 for CLIP-L). */
  clipDim: number;
  /** True when the prompt was cut to fit (CLI: warn; endpoint: a response header). */
  truncated: { clip: boolean; t5: boolean };
  /** The prompt's length in tokens before truncation. */
  tokens: { clip: number; t5: number };
}

// Process-wide cache: (models, prompt) → embedding, least recently used dropped first.
const CACHE_LIMIT = 64;
const cache = new Map<string, PromptEmbedding>();

/** Drop every cached prompt embedding (tests, or to bound memory differently). */
export function clearPromptCache(): void {
  cache.clear();
}

/**
 * A one-line warning when `e`'s prompt was truncated (for a CLI's stderr or a response header),
 * else null.
 *
 * @example
 * ```ts ignore
 * const w = truncationWarning(await text.encode(prompt));
 * if (w) console.warn(w); // endpoint: headers.set("X-Prompt-Truncated", w)
 * ```
 */
export function truncationWarning(e: PromptEmbedding): string | null {
  const parts: string[] = [];
  if (e.truncated.clip) parts.push(`CLIP kept 77 of ${e.tokens.clip} tokens`);
  if (e.truncated.t5) parts.push(`T5 kept ${e.t5Length} of ${e.tokens.t5} tokens`);
  return parts.length ? `prompt truncated: ${parts.join("; ")}` : null;
}

/** Load a `tokenizer.json` (or a folder holding one) with the npm tokenizer, imported lazily. */
export async function loadTokenizer(path: string): Promise<TextTokenizer> {
  const { TextTokenizer } = await import("./tokenizer.ts");
  return await TextTokenizer.load(path);
}

/**
 * CLIP + T5 for FLUX.1, with tokenizers and the prompt cache.
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../../gpu/device.ts";
 * import { TextEncoders } from "./encoders.ts";
 * const gpu = await getGpu();
 * const text = await TextEncoders.fromFluxFolder(gpu, "FLUX.1-schnell", { variant: "schnell" });
 * const e = await text.encode("a red fox under a golden tree");
 * console.log(e.t5.length / e.t5Dim, e.pooled.length, e.truncated); // 256 768 {clip:false,t5:false}
 * text.offload(); // free the GPU memory before the transformer loads (--offload-text)
 * ```
 */
export class TextEncoders {
  /** The options in use. */
  readonly options:
    & Readonly<Required<Omit<TextEncodersOptions, "dtype" | "offload">>>
    & { dtype?: ActDtype; offload?: boolean };
  #gpu: Gpu;
  #clipTok: TextTokenizer;
  #t5Tok: TextTokenizer;
  #clip: ClipTextEncoder | null = null;
  #t5: T5Encoder | null = null;
  #key: string;
  #serial = new Serial();
  #loads = 0;

  private constructor(
    gpu: Gpu,
    options: TextEncoders["options"],
    clipTok: TextTokenizer,
    t5Tok: TextTokenizer,
  ) {
    this.#gpu = gpu;
    this.options = options;
    this.#clipTok = clipTok;
    this.#t5Tok = t5Tok;
    const { offload: _, ...models } = options; // offloading changes no embedding
    this.#key = JSON.stringify(models);
  }

  /** Read the tokenizers; the encoders load onto the GPU on the first uncached prompt. */
  static async create(gpu: Gpu, opts: TextEncodersOptions): Promise<TextEncoders> {
    const options = {
      ...opts,
      t5Length: opts.t5Length ?? FLUX_T5_LENGTH.dev,
      t5Weights: opts.t5Weights ?? DEFAULT_T5_WEIGHTS,
    };
    if (!Number.isInteger(options.t5Length) || options.t5Length < 2) {
      throw new RangeError(`Cannot build the text encoders: t5Length ${options.t5Length} < 2`);
    }
    const [clipTok, t5Tok] = await Promise.all([
      loadTokenizer(options.clipTokenizer),
      loadTokenizer(options.t5Tokenizer),
    ]);
    return new TextEncoders(gpu, options, clipTok, t5Tok);
  }

  /**
   * The encoders of a diffusers FLUX.1 folder (as `black-forest-labs/FLUX.1-schnell` ships):
   * `text_encoder/`, `tokenizer/` (CLIP-L), `text_encoder_2/`, `tokenizer_2/` (T5-XXL); T5 length
   * 256 for schnell, 512 for dev.
   */
  static fromFluxFolder(
    gpu: Gpu,
    folder: string,
    opts: {
      variant: "schnell" | "dev";
      dtype?: ActDtype;
      t5Weights?: TextWeightFormat;
      offload?: boolean;
    },
  ): Promise<TextEncoders> {
    return TextEncoders.create(gpu, {
      clip: `${folder}/text_encoder`,
      clipTokenizer: `${folder}/tokenizer`,
      t5: `${folder}/text_encoder_2`,
      t5Tokenizer: `${folder}/tokenizer_2`,
      t5Length: FLUX_T5_LENGTH[opts.variant],
      dtype: opts.dtype,
      t5Weights: opts.t5Weights,
      offload: opts.offload,
    });
  }

  /** True while the encoders hold GPU memory. */
  get resident(): boolean {
    return this.#clip !== null || this.#t5 !== null;
  }

  /** How many times the encoders were loaded onto the GPU (1 unless offloaded in between). */
  get loads(): number {
    return this.#loads;
  }

  /**
   * Embeddings of `prompt`, from the process cache when this (models, prompt) was seen.
   * Concurrent calls run one after another (they share the encoders' buffers).
   */
  encode(prompt: string): Promise<PromptEmbedding> {
    return this.#serial.run(() => this.#encodePrompt(prompt));
  }

  async #encodePrompt(prompt: string): Promise<PromptEmbedding> {
    const key = `${this.#key}\u0000${prompt}`;
    const hit = cache.get(key);
    if (hit) {
      cache.delete(key); // re-insert: most recently used last
      cache.set(key, hit);
      return hit;
    }
    const c = this.#clipTok.encodeBatch([prompt], CLIP_LENGTH);
    const t = this.#t5Tok.encodeBatch([prompt], this.options.t5Length);
    let e;
    try {
      e = await this.#encodeIds(c.inputIds, t.inputIds);
    } finally {
      if (this.options.offload) this.offload(); // inside the serial run: no encode is pending
    }
    const out: PromptEmbedding = {
      ...e,
      truncated: { clip: c.truncated[0], t5: t.truncated[0] },
      tokens: { clip: c.tokenCounts[0], t5: t.tokenCounts[0] },
    };
    cache.set(key, out);
    while (cache.size > CACHE_LIMIT) cache.delete(cache.keys().next().value!);
    return out;
  }

  /**
   * Embeddings of already tokenized ids (CLIP [77], T5 [t5Length]), e.g. from
   * {@linkcode TextTokenizer.encodeBatch}; no tokenizer is loaded and nothing is cached.
   */
  encodeIds(
    clipIds: ArrayLike<number>,
    t5Ids: ArrayLike<number>,
  ): Promise<Omit<PromptEmbedding, "truncated" | "tokens">> {
    return this.#serial.run(() => this.#encodeIds(clipIds, t5Ids));
  }

  async #encodeIds(
    clipIds: ArrayLike<number>,
    t5Ids: ArrayLike<number>,
  ): Promise<Omit<PromptEmbedding, "truncated" | "tokens">> {
    const { clip, t5 } = await this.#load();
    const pooled = (await clip.encode(clipIds)).pooled;
    const hidden = (await t5.encode(t5Ids)).lastHiddenState;
    return {
      t5: hidden,
      pooled,
      t5Dim: t5.config.dModel,
      t5Length: t5.length,
      clipDim: clip.config.hidden,
    };
  }

  /**
   * Free the encoders' GPU memory (the tokenizers and the prompt cache stay). Call it when no
   * `encode` is pending (e.g. after awaiting the prompt's embedding).
   */
  offload(): void {
    this.#clip?.destroy();
    this.#t5?.destroy();
    this.#clip = null;
    this.#t5 = null;
  }

  /** Same as {@linkcode TextEncoders.offload}; the object stays usable (it reloads on demand). */
  destroy(): void {
    this.offload();
  }

  async #load(): Promise<{ clip: ClipTextEncoder; t5: T5Encoder }> {
    const o = this.options;
    if (!this.#clip || !this.#t5) this.#loads++;
    this.#clip ??= await ClipTextEncoder.create(this.#gpu, o.clip, {
      dtype: o.dtype,
      length: CLIP_LENGTH,
    });
    this.#t5 ??= await T5Encoder.create(this.#gpu, o.t5, {
      length: o.t5Length,
      dtype: o.dtype,
      weights: o.t5Weights,
    });
    return { clip: this.#clip, t5: this.#t5 };
  }
}
