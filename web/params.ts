/**
 * The request schema of the generation routes, shared by JSON bodies, query strings (the SSE
 * route) and form posts: each bad field becomes an {@linkcode HttpError} 400 naming the field
 * and its allowed range; a model can only be named by its registry id.
 *
 * @module
 */
import { matchClass } from "../cli/_classes.ts";
import { type SamplerName, SAMPLERS } from "../runtime/pipeline.ts";
import { MODEL_ID, type ModelInfo } from "./engine.ts";

/** An error with an HTTP status; its message is safe to show to the client. */
export class HttpError extends Error {
  /** Always `"HttpError"`. */
  override name = "HttpError";
  /** HTTP status. */
  readonly status: number;
  /** The request field at fault, if any. */
  readonly field?: string;
  /** `status`, message, and the field at fault. */
  constructor(status: number, message: string, field?: string) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

/** Precisions the API knows (a known one may still not be served). */
export const PRECISIONS = ["float", "int4", "nvfp4", "w4a16"] as const;
/** Samplers the API accepts: the pipeline's. */
export { SAMPLERS };
/** Limits of the schema. */
export const LIMITS = {
  steps: [1, 100],
  seed: [0, 0xffffffff],
  cfg: [1, 20],
  prompt: 200,
} as const;
/** Defaults of the schema. */
export const DEFAULTS = { steps: 20, cfg: 4, sampler: "dpm" as SamplerName };

/** Fields the schema accepts. */
const FIELDS = [
  "prompt",
  "class",
  "seed",
  "steps",
  "cfg",
  "precision",
  "sampler",
  "model",
  "preview",
  "key",
];

/** A validated generation request. */
export interface GenerateParams {
  /** The model's registry id. */
  model: ModelInfo;
  /** Class id of that model (0 for a text-to-image model). */
  classId: number;
  /** The prompt of a text-to-image model. */
  prompt?: string;
  /** Seed. */
  seed: number;
  /** Steps. */
  steps: number;
  /** Guidance scale. */
  cfg: number;
  /** Sampler. */
  sampler: SamplerName;
  /** Send previews while denoising (stream route only). */
  preview: boolean;
  /** Idempotency key given as the `key` field (the SSE route, where headers cannot be set). */
  key?: string;
}

/** Idempotency keys: 1 to 128 printable ASCII characters, no spaces. */
export const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,128}$/;

/**
 * Validate an idempotency key (the `Idempotency-Key` header or the `key` field): undefined when
 * absent, else the key or a 400.
 */
export function idempotencyKey(v: unknown, field = "key"): string | undefined {
  if (v === undefined || v === null || v === "") return undefined;
  if (typeof v !== "string" || !IDEMPOTENCY_KEY.test(v)) {
    throw bad(field, "must be 1 to 128 printable ASCII characters without spaces");
  }
  return v;
}

const bad = (field: string, msg: string) =>
  new HttpError(400, `Cannot generate: ${field} ${msg}`, field);

/** Decimal text only: no hex (`0x5`), exponent (`1e1`), `Infinity` or blank. */
const INTEGER_TEXT = /^[+-]?\d+$/;
const DECIMAL_TEXT = /^[+-]?(\d+\.?\d*|\.\d+)$/;

function num(field: string, v: unknown, lo: number, hi: number, integer: boolean): number {
  const text = typeof v === "string" ? v.trim() : "";
  const x = typeof v === "number"
    ? v
    : typeof v === "string" && (integer ? INTEGER_TEXT : DECIMAL_TEXT).test(text)
    ? Number(text)
    : NaN;
  if (!Number.isFinite(x) || (integer && !Number.isInteger(x)) || x < lo || x > hi) {
    throw bad(
      field,
      `must be ${integer ? "an integer" : "a number"} in ${lo}..${hi}, got ${
        JSON.stringify(v)?.slice(0, 40)
      }`,
    );
  }
  return x;
}

function str(field: string, v: unknown): string {
  if (typeof v !== "string") throw bad(field, `must be a string, got ${typeof v}`);
  return v;
}

/**
 * Validate `raw` (a parsed JSON object, or the entries of a query string or form) against the
 * served `models` (the first is the default).
 */
export function parseParams(raw: unknown, models: ModelInfo[]): GenerateParams {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new HttpError(400, "Cannot generate: the body must be a JSON object");
  }
  const r = raw as Record<string, unknown>;
  for (const k of Object.keys(r)) {
    if (!FIELDS.includes(k)) {
      throw bad(k.slice(0, 40), `is not a known field: use ${FIELDS.join(", ")}`);
    }
  }
  const present = (k: string) => r[k] !== undefined && r[k] !== null && r[k] !== "";

  let model = models[0];
  if (present("model")) {
    const id = str("model", r.model);
    if (!MODEL_ID.test(id)) {
      throw bad(
        "model",
        "must be a model id from /api/models (letters, digits, . _ -), not a path",
      );
    }
    const m = models.find((x) => x.id === id);
    if (!m) throw bad("model", `must be one of ${models.map((x) => x.id).join(", ")}`);
    model = m;
  }
  if (present("precision")) {
    const p = str("precision", r.precision);
    if (!(PRECISIONS as readonly string[]).includes(p)) {
      throw bad("precision", `must be one of ${PRECISIONS.join(", ")}, got ${JSON.stringify(p)}`);
    }
    if (model.precision !== p) {
      const m = present("model") ? undefined : models.find((x) => x.precision === p);
      if (!m) {
        const served = [...new Set(models.map((x) => x.precision))].join(", ");
        throw bad(
          "precision",
          `${p} is not served${present("model") ? " by that model" : ""}: ${served}`,
        );
      }
      model = m;
    }
  }

  let classId = 0;
  let textPrompt: string | undefined;
  if (model.text) {
    if (!present("prompt")) {
      throw new HttpError(400, "Cannot generate: give prompt (a text description)", "prompt");
    }
    textPrompt = str("prompt", r.prompt);
    if (textPrompt.length > LIMITS.prompt) {
      throw bad("prompt", `must be at most ${LIMITS.prompt} characters, got ${textPrompt.length}`);
    }
    if (present("class")) throw bad("class", "is for class-conditional models; give prompt");
  } else if (present("class")) {
    classId = num("class", r.class, 0, model.classes.length - 1, true);
  } else if (present("prompt")) {
    const prompt = str("prompt", r.prompt);
    if (prompt.length > LIMITS.prompt) {
      throw bad("prompt", `must be at most ${LIMITS.prompt} characters, got ${prompt.length}`);
    }
    try {
      classId = matchClass(prompt, model.classes);
    } catch (e) {
      throw bad(
        "prompt",
        `matches no class: ${(e as Error).message.replace(/ \(see --list\)/, "")}`,
      );
    }
  } else {
    throw new HttpError(
      400,
      "Cannot generate: give prompt (a class name) or class (a number)",
      "prompt",
    );
  }
  if (present("prompt") && present("class")) {
    const prompt = str("prompt", r.prompt);
    if (prompt.length > LIMITS.prompt) {
      throw bad("prompt", `must be at most ${LIMITS.prompt} characters, got ${prompt.length}`);
    }
  }

  const seed = present("seed")
    ? num("seed", r.seed, LIMITS.seed[0], LIMITS.seed[1], true)
    : crypto.getRandomValues(new Uint32Array(1))[0];
  const steps = present("steps")
    ? num("steps", r.steps, LIMITS.steps[0], LIMITS.steps[1], true)
    : DEFAULTS.steps;
  const cfg = present("cfg")
    ? num("cfg", r.cfg, LIMITS.cfg[0], LIMITS.cfg[1], false)
    : DEFAULTS.cfg;
  let sampler = DEFAULTS.sampler;
  if (present("sampler")) {
    const s = str("sampler", r.sampler);
    if (!(SAMPLERS as readonly string[]).includes(s)) {
      throw bad(
        "sampler",
        `must be one of ${SAMPLERS.join(", ")}, got ${JSON.stringify(s.slice(0, 40))}`,
      );
    }
    sampler = s as SamplerName;
  }
  const pv = r.preview;
  const preview = pv === true || pv === "1" || pv === "true" || pv === "on";
  const key = idempotencyKey(r.key);
  return {
    model,
    classId,
    prompt: textPrompt,
    seed,
    steps,
    cfg,
    sampler,
    preview,
    ...(key ? { key } : {}),
  };
}
