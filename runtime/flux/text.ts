/**
 * FLUX's text conditioning from the text encoders (runtime/text/encoders.ts): the T5 tokens and
 * the CLIP pooled vector of each prompt, concatenated for a batch.
 *
 * @module
 */
import type { PromptEmbedding, TextEncoders } from "../text/encoders.ts";
import type { FluxConditioning, FluxTextConditioner } from "./pipeline.ts";

/** Concatenate prompt embeddings into one batch's conditioning. */
export function conditioningOf(embeddings: readonly PromptEmbedding[]): FluxConditioning {
  const t5 = embeddings.reduce((a, e) => a + e.t5.length, 0);
  const pooled = embeddings.reduce((a, e) => a + e.pooled.length, 0);
  const txt = new Float32Array(t5), y = new Float32Array(pooled);
  let i = 0, j = 0;
  for (const e of embeddings) {
    txt.set(e.t5, i);
    y.set(e.pooled, j);
    i += e.t5.length;
    j += e.pooled.length;
  }
  return { txt, y };
}

/**
 * The FLUX text conditioner backed by `text` (CLIP-L + T5-XXL with their tokenizers).
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../../gpu/device.ts";
 * import { TextEncoders } from "../text/encoders.ts";
 * import { textConditioner } from "./text.ts";
 * const gpu = await getGpu();
 * const text = await TextEncoders.fromFluxFolder(gpu, "FLUX.1-schnell", { variant: "schnell" });
 * const { txt, y } = await textConditioner(text).encode(["a red fox"]); // [1, 256, 4096], [1, 768]
 * ```
 */
export function textConditioner(text: TextEncoders): FluxTextConditioner {
  return {
    txtTokens: text.options.t5Length,
    async encode(prompts) {
      const out: PromptEmbedding[] = [];
      for (const p of prompts) out.push(await text.encode(p));
      return conditioningOf(out);
    },
  };
}
