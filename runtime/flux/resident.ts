/**
 * A FLUX.1 model kept resident for serving (the web endpoint): text encoders, transformer and
 * autoencoder all on the GPU, one image per call at a fixed square size. With `offloadText`
 * (`deno task serve --offload-text`) the text encoders hold GPU memory only while encoding a
 * prompt the process has not seen (cached prompts load nothing), so T5-XXL and the transformer
 * need not be resident together. (`deno task gen` loads the parts one after another instead.)
 *
 * @module
 */
import { Autoencoder } from "../autoencoder.ts";
import { AeCheckpoint } from "../autoencoder_keys.ts";
import type { Gpu } from "../../gpu/device.ts";
import {
  FLUX_T5_LENGTH,
  type PromptEmbedding,
  TextEncoders,
  truncationWarning,
} from "../text/encoders.ts";
import { fluxDefaultSize, resolveFluxModel } from "./model_folder.ts";
import { FluxPipeline, type FluxRequest, type FluxResult } from "./pipeline.ts";
import { conditioningOf, textConditioner } from "./text.ts";
import { FluxWeights } from "./weights.ts";

/** What a FLUX folder is, read without loading it. */
export interface FluxModelInfo {
  /** "dev" (guidance embedding) or "schnell". */
  variant: "dev" | "schnell";
  /** "float", or the pre-quantized transformer's format. */
  precision: string;
  /** Pixels per latent pixel of its autoencoder. */
  factor: number;
  /** Latent channels of its autoencoder. */
  zChannels: number;
  /** Default square image side in pixels (fluxDefaultSize's width). */
  size: number;
}

/** Read what `path` (a FLUX folder or transformer file) is; throws FormatError when it is not. */
export async function fluxModelInfo(path: string, transformer?: string): Promise<FluxModelInfo> {
  const parts = await resolveFluxModel(path, { transformer });
  const w = await FluxWeights.open(parts.transformer);
  const ck = await AeCheckpoint.open(parts.vae);
  try {
    const factor = 2 ** (ck.config.chMult.length - 1);
    return {
      variant: w.config.guidance_embed ? "dev" : "schnell",
      precision: w.precision,
      factor,
      zChannels: ck.config.zChannels,
      size: (await fluxDefaultSize(parts.root, factor))[1],
    };
  } finally {
    ck.close();
    w.close();
  }
}

/** Options of {@linkcode ResidentFlux.load}. */
export interface ResidentFluxOptions {
  /** Free the text encoders' GPU memory after each new prompt's encoding (default false). */
  offloadText?: boolean;
}

/** What {@linkcode ResidentFlux.generate} returns: the images and what the prompts lost. */
export interface ResidentFluxResult extends FluxResult {
  /** Encoders that cut a prompt to their limit ("clip", "t5"); empty when nothing was cut. */
  truncated: ("clip" | "t5")[];
  /** The truncation warning of each cut prompt ({@linkcode truncationWarning}), for display. */
  warnings: string[];
}

/** A FLUX model resident on the GPU. */
export class ResidentFlux {
  /** The pipeline (text conditioner and decoder attached). */
  readonly pipe: FluxPipeline;
  /** dev or schnell. */
  readonly variant: "dev" | "schnell";
  #text: TextEncoders;
  #ae: Autoencoder;

  private constructor(
    pipe: FluxPipeline,
    variant: "dev" | "schnell",
    text: TextEncoders,
    ae: Autoencoder,
  ) {
    this.pipe = pipe;
    this.variant = variant;
    this.#text = text;
    this.#ae = ae;
  }

  /** The text encoders (`resident`, `loads`: whether and how often they hold GPU memory). */
  get text(): TextEncoders {
    return this.#text;
  }

  /** Load every part of the FLUX model at `path` for `size`×`size` images. */
  static async load(
    gpu: Gpu,
    path: string,
    size: number,
    opts: ResidentFluxOptions = {},
  ): Promise<ResidentFlux> {
    const parts = await resolveFluxModel(path);
    const w = await FluxWeights.open(parts.transformer);
    const variant = w.config.guidance_embed ? "dev" : "schnell";
    let text: TextEncoders | undefined, ae: Autoencoder | undefined;
    try {
      text = await TextEncoders.create(gpu, {
        clip: parts.clip,
        clipTokenizer: parts.clipTokenizer,
        t5: parts.t5,
        t5Tokenizer: parts.t5Tokenizer,
        t5Length: FLUX_T5_LENGTH[variant],
        offload: opts.offloadText ?? false,
      });
      ae = await Autoencoder.load(gpu, parts.vae, { parts: ["decoder"] });
      const pipe = await FluxPipeline.load(
        gpu,
        { transformer: w, text: textConditioner(text), decoder: ae },
        { width: size, height: size, txtTokens: FLUX_T5_LENGTH[variant] },
      );
      return new ResidentFlux(pipe, variant, text, ae);
    } catch (e) {
      text?.destroy();
      ae?.destroy();
      throw e;
    } finally {
      w.close();
    }
  }

  /**
   * Generate (prompts → decoded images). The prompts are encoded here (then, with `offloadText`,
   * the encoders are already freed) so the result can say which were truncated.
   */
  async generate(req: FluxRequest): Promise<ResidentFluxResult> {
    if (!req.prompts) return { ...await this.pipe.generate(req), truncated: [], warnings: [] };
    if (req.prompts.length !== this.pipe.images) {
      throw new RangeError(
        `Cannot generate: ${req.prompts.length} prompts given, the pipeline makes ` +
          `${this.pipe.images} images per call`,
      );
    }
    const embeddings: PromptEmbedding[] = [];
    for (const p of req.prompts) embeddings.push(await this.#text.encode(p));
    const r = await this.pipe.generate({
      ...req,
      prompts: undefined,
      conditioning: conditioningOf(embeddings),
    });
    const cut = (k: "clip" | "t5") => embeddings.some((e) => e.truncated[k]);
    return {
      ...r,
      truncated: (["clip", "t5"] as const).filter(cut),
      warnings: embeddings.map(truncationWarning).filter((w): w is string => w !== null),
    };
  }

  /** Release every part. */
  destroy(): void {
    this.pipe.destroy();
    this.#text.destroy();
    this.#ae.destroy();
  }
}

/**
 * A quick preview image from latents [1, C, h, w]: the first three channels, squashed into
 * [-1, 1] and upsampled to `size`×`size` (no decoder run; shows the composition forming).
 */
export function latentPreview(
  latent: Float32Array,
  c: number,
  h: number,
  w: number,
  size: number,
): Float32Array {
  const out = new Float32Array(3 * size * size);
  for (let ch = 0; ch < 3; ch++) {
    const src = Math.min(ch, c - 1);
    for (let y = 0; y < size; y++) {
      const sy = Math.min(h - 1, Math.floor((y * h) / size));
      for (let x = 0; x < size; x++) {
        const sx = Math.min(w - 1, Math.floor((x * w) / size));
        out[(ch * size + y) * size + x] = Math.tanh(latent[(src * h + sy) * w + sx]);
      }
    }
  }
  return out;
}
