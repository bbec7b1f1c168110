/**
 * Tokenizers of the text encoders, read from a model's own `tokenizer.json` (Hugging Face
 * tokenizers format: CLIP's byte-level BPE, T5's SentencePiece unigram) with the
 * `@huggingface/tokenizers` npm library (tokenizers.js, pinned in deno.json). No hand-written
 * BPE or unigram code lives here: this module adds only what the FLUX pipelines do around the
 * tokenizer call — truncation that keeps the special tokens, padding to a fixed length, and the
 * attention mask.
 *
 * This is the one module of `runtime/` that imports an npm package; GPU-only code paths
 * (runtime/text/t5.ts, clip.ts, encoders.ts) take token ids and never load it.
 *
 * Semantics (as `tokenizer(texts, padding="max_length", max_length=L, truncation=True)`):
 * - the text is encoded with the special tokens of the tokenizer's post-processor (CLIP:
 *   `<|startoftext|>` … `<|endoftext|>`; T5: … `</s>`);
 * - a sequence longer than L keeps its leading and trailing special tokens and loses the end of
 *   its content (never an error: {@linkcode TokenizedBatch.truncated} says which prompts lost
 *   tokens, so the CLI can warn and the endpoint can set a header);
 * - shorter sequences are padded with the pad id (CLIP in FLUX: `<|endoftext|>`; T5: `<pad>` = 0)
 *   and the attention mask is 1 on tokens, 0 on padding.
 *
 * @module
 */
import { Tokenizer } from "@huggingface/tokenizers";
import { FormatError } from "../../gpu/errors.ts";

/** Options of {@linkcode TextTokenizer.fromJSON} and {@linkcode TextTokenizer.load}. */
export interface TextTokenizerOptions {
  /**
   * Padding id. Default: `padding.pad_id` of tokenizer.json, else the `pad_token` of a
   * `special_tokens_map.json` / `tokenizer_config.json` beside it (when loading a folder), else
   * `<pad>` when the vocabulary has it (T5), else the last special token the post-processor
   * appends (CLIP's `<|endoftext|>`, what FLUX's CLIP tokenizer pads with).
   */
  padId?: number;
  /** A name for messages (default: the file path, or "tokenizer"). */
  name?: string;
}

/** A batch of prompts as the encoders take it. */
export interface TokenizedBatch {
  /** Prompts B. */
  batch: number;
  /** Padded length L. */
  length: number;
  /** Token ids, row-major [B, L]. */
  inputIds: Int32Array;
  /** 1 for a token, 0 for padding, [B, L]. */
  attentionMask: Uint8Array;
  /** Per prompt: true when tokens were cut to fit L. */
  truncated: boolean[];
  /** Per prompt: its length in tokens (special tokens included) before truncation. */
  tokenCounts: number[];
}

interface TokenizerJson {
  padding?: { pad_id?: number } | null;
  added_tokens?: { id: number; content: string }[];
  model?: { vocab?: unknown };
}

/**
 * A tokenizer read from `tokenizer.json`, with FLUX-style truncation and padding.
 *
 * @example
 * ```ts ignore
 * import { TextTokenizer } from "./tokenizer.ts";
 * const t5 = await TextTokenizer.load("FLUX.1-schnell/tokenizer_2");
 * const b = t5.encodeBatch(["a photo of a cat"], 256);
 * console.log(b.inputIds.slice(0, 8), b.truncated[0]); // ids ending in </s> = 1, pad 0
 * ```
 */
export class TextTokenizer {
  /** The name used in messages. */
  readonly name: string;
  /** Id written into padded positions. */
  readonly padId: number;
  /** Special ids the post-processor puts before the content (CLIP: BOS; T5: none). */
  readonly prefix: readonly number[];
  /** Special ids the post-processor puts after the content (CLIP and T5: EOS). */
  readonly suffix: readonly number[];
  #tok: Tokenizer;

  private constructor(
    name: string,
    tok: Tokenizer,
    padId: number,
    prefix: number[],
    suffix: number[],
  ) {
    this.name = name;
    this.#tok = tok;
    this.padId = padId;
    this.prefix = prefix;
    this.suffix = suffix;
  }

  /** Build from a parsed `tokenizer.json`; `padToken` is a pad token name found beside it. */
  static fromJSON(
    json: unknown,
    options: TextTokenizerOptions & { padToken?: string } = {},
  ): TextTokenizer {
    const name = options.name ?? "tokenizer";
    if (typeof json !== "object" || json === null || !("model" in json)) {
      throw new FormatError(name, "not a tokenizer.json: the JSON object has no `model`");
    }
    let tok: Tokenizer;
    try {
      tok = new Tokenizer(json, {});
    } catch (e) {
      throw new FormatError(name, `the tokenizer library refused it: ${(e as Error).message}`);
    }
    // The post-processor's fixed special tokens, found by encoding a probe both ways.
    const probe = "a";
    const plain = tok.encode(probe, { add_special_tokens: false }).ids;
    const full = tok.encode(probe).ids;
    const at = indexOfRun(full, plain);
    if (at < 0) {
      throw new FormatError(name, "its post-processor does not keep the text's tokens in order");
    }
    const prefix = full.slice(0, at), suffix = full.slice(at + plain.length);
    const j = json as TokenizerJson;
    const idOf = (token: string): number | undefined => {
      const added = j.added_tokens?.find((t) => t.content === token);
      if (added) return added.id;
      const enc = tok.encode(token, { add_special_tokens: false }).ids;
      return enc.length === 1 ? enc[0] : undefined;
    };
    let padId = options.padId ?? j.padding?.pad_id ??
      (options.padToken !== undefined ? idOf(options.padToken) : undefined);
    if (padId === undefined && j.added_tokens?.some((t) => t.content === "<pad>")) {
      padId = idOf("<pad>");
    }
    padId ??= suffix.at(-1);
    if (padId === undefined || !Number.isInteger(padId) || padId < 0) {
      throw new FormatError(
        name,
        "cannot tell its padding id (no padding.pad_id, no <pad>, no end token); pass padId",
      );
    }
    return new TextTokenizer(name, tok, padId, prefix, suffix);
  }

  /**
   * Read `path`: a `tokenizer.json` file, or a folder holding one (as FLUX's `tokenizer/` and
   * `tokenizer_2/`), whose `special_tokens_map.json` or `tokenizer_config.json` may name the pad
   * token.
   */
  static async load(path: string, options: TextTokenizerOptions = {}): Promise<TextTokenizer> {
    let file = path;
    let padToken: string | undefined;
    if ((await Deno.stat(path)).isDirectory) {
      file = `${path}/tokenizer.json`;
      for (const side of ["special_tokens_map.json", "tokenizer_config.json"]) {
        const j = await readJsonIfExists(`${path}/${side}`);
        const p = j?.pad_token;
        const token = typeof p === "string" ? p : (p as { content?: string })?.content;
        if (typeof token === "string") {
          padToken = token;
          break;
        }
      }
    }
    let json: unknown;
    try {
      json = JSON.parse(await Deno.readTextFile(file));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new FormatError(file, "there is no tokenizer.json here; point at the model's file");
      }
      throw new FormatError(file, `it is not JSON: ${(e as Error).message}`);
    }
    return TextTokenizer.fromJSON(json, { ...options, name: options.name ?? file, padToken });
  }

  /** Token ids of `text` with the special tokens, no truncation or padding. */
  encode(text: string): number[] {
    return this.#tok.encode(text).ids;
  }

  /** Token strings of `text` (special tokens included). */
  tokens(text: string): string[] {
    return this.#tok.encode(text).tokens;
  }

  /** Text of `ids` (special tokens skipped). */
  decode(ids: ArrayLike<number>): string {
    return this.#tok.decode(Array.from(ids), { skip_special_tokens: true });
  }

  /**
   * Encode `texts` to exactly `length` tokens each: truncated keeping the special tokens, padded
   * with {@linkcode TextTokenizer.padId}. Never throws for long prompts; see `truncated`.
   */
  encodeBatch(texts: readonly string[], length: number): TokenizedBatch {
    const specials = this.prefix.length + this.suffix.length;
    if (!Number.isInteger(length) || length <= specials) {
      throw new RangeError(
        `Cannot tokenize with ${this.name}: length ${length} must be an integer above the ` +
          `${specials} special tokens`,
      );
    }
    const b = texts.length;
    const inputIds = new Int32Array(b * length).fill(this.padId);
    const attentionMask = new Uint8Array(b * length);
    const truncated: boolean[] = [];
    const tokenCounts: number[] = [];
    texts.forEach((text, i) => {
      let ids = this.encode(text);
      tokenCounts.push(ids.length);
      truncated.push(ids.length > length);
      if (ids.length > length) {
        const content = this.#tok.encode(text, { add_special_tokens: false }).ids;
        ids = [...this.prefix, ...content.slice(0, length - specials), ...this.suffix];
      }
      inputIds.set(ids, i * length);
      attentionMask.fill(1, i * length, i * length + ids.length);
    });
    return { batch: b, length, inputIds, attentionMask, truncated, tokenCounts };
  }
}

function indexOfRun(haystack: number[], needle: number[]): number {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

async function readJsonIfExists(path: string): Promise<Record<string, unknown> | undefined> {
  try {
    return JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw new FormatError(path, `it is not JSON: ${(e as Error).message}`);
  }
}

/** Token lengths FLUX pipelines pad T5 to: 256 for FLUX.1-schnell, 512 for FLUX.1-dev. */
export const T5_MAX_LENGTH = { schnell: 256, dev: 512 } as const;

/** CLIP's context length (77 positions, `<|startoftext|>` and `<|endoftext|>` included). */
export const CLIP_MAX_LENGTH = 77;
