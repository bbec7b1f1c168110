/**
 * Which method quantizes which layer: an ordered list of rules matched against a layer's base
 * name (the checkpoint name without `.weight`/`.bias`, e.g. `blocks.3.attn.qkv`); the first
 * matching rule wins.
 *
 * Pattern syntax: the pattern and the name are split at dots into segments; a pattern segment
 * that is exactly `*` matches **one or more** whole name segments; any other segment must equal
 * the name's segment exactly (no partial wildcards such as `fc*`). The whole name must match.
 * So `blocks.*.attn.qkv` matches `blocks.3.attn.qkv` and `blocks.3.0.attn.qkv`, not
 * `blocks.attn.qkv`; `*` alone matches every name.
 *
 * A policy file is JSON: an array of rules, or `{ "rules": [...] }`, each
 * `{ "pattern": string, "method": Method, "postGelu"?: boolean, "format"?: "int4" | "nvfp4",
 * "rank"?: number }` (format and rank override the run's for the layers the rule matches). A CLI applies a user policy
 * in front of {@linkcode DEFAULT_DIT_POLICY} (`[...user, ...DEFAULT_DIT_POLICY]`) so it only needs
 * the rules it changes.
 *
 * @module
 */
import { FormatError } from "../gpu/errors.ts";
import { type Method, METHODS } from "./layer.ts";
import type { WeightFormat } from "../formats/packing.ts";

/** One rule of a layer policy. */
export interface LayerPolicyRule {
  /** Glob over base names, e.g. `blocks.*.attn.qkv` (see the module docs). */
  pattern: string;
  /** Method for the layers this rule matches. */
  method: Method;
  /** The layer's input follows a GELU (unsigned shifted INT4 activations). */
  postGelu?: boolean;
  /** 4-bit format for this layer (default: the run's format). */
  format?: WeightFormat;
  /** Low-rank rank for this layer (default: the run's rank). */
  rank?: number;
}

/**
 * DiT defaults: attention and MLP linears of the blocks W4A4 + low-rank (the MLP's second linear
 * takes post-GELU input), adaLN modulation of the blocks weight-only INT4, everything else
 * (embedders, final layer including its modulation, norms, pos_embed) 16-bit.
 */
export const DEFAULT_DIT_POLICY: LayerPolicyRule[] = [
  { pattern: "blocks.*.attn.qkv", method: "svdquant" },
  { pattern: "blocks.*.attn.proj", method: "svdquant" },
  { pattern: "blocks.*.mlp.fc1", method: "svdquant" },
  { pattern: "blocks.*.mlp.fc2", method: "svdquant", postGelu: true },
  { pattern: "blocks.*.adaLN_modulation.1", method: "w4a16" },
  { pattern: "*", method: "float" },
];

/** The rule used when no rule matches: keep the layer 16-bit. */
export const FALLBACK_RULE: LayerPolicyRule = { pattern: "*", method: "float" };

/** Whether `name` matches `pattern` (segment glob, see the module docs). */
export function matchPattern(pattern: string, name: string): boolean {
  const p = pattern.split("."), s = name.split(".");
  // reach[j]: pattern prefix matched name prefix of length j (dynamic programming over segments).
  let reach = new Uint8Array(s.length + 1);
  reach[0] = 1;
  for (const seg of p) {
    const next = new Uint8Array(s.length + 1);
    if (seg === "*") {
      let any = 0;
      for (let j = 1; j <= s.length; j++) {
        any |= reach[j - 1];
        next[j] = any;
      }
    } else {
      for (let j = 1; j <= s.length; j++) next[j] = reach[j - 1] && s[j - 1] === seg ? 1 : 0;
    }
    reach = next;
  }
  return reach[s.length] === 1;
}

/**
 * The first rule whose pattern matches `name`, or {@linkcode FALLBACK_RULE} (float) when none.
 *
 * @example
 * ```ts
 * import { DEFAULT_DIT_POLICY, policyFor } from "./policy.ts";
 * policyFor("blocks.7.mlp.fc2", DEFAULT_DIT_POLICY); // { method: "svdquant", postGelu: true, ... }
 * policyFor("final_layer.linear", DEFAULT_DIT_POLICY).method; // "float"
 * ```
 */
export function policyFor(name: string, rules: readonly LayerPolicyRule[]): LayerPolicyRule {
  return rules.find((r) => matchPattern(r.pattern, name)) ?? FALLBACK_RULE;
}

/** Why `pattern` is not a valid pattern, or null. */
function patternProblem(pattern: string): string | null {
  if (pattern === "") return "is empty";
  const segs = pattern.split(".");
  if (segs.some((x) => x === "")) {
    return "has an empty segment (two dots, or a leading/trailing dot)";
  }
  const partial = segs.find((x) => x !== "*" && x.includes("*"));
  if (partial) return `has a partial wildcard "${partial}"; "*" must be a whole segment`;
  return null;
}

/**
 * Parse a policy file's JSON text (`file` names it in errors). Throws `FormatError` naming the
 * file and the rule index for malformed JSON, a missing or invalid pattern, an unknown method,
 * a non-boolean postGelu or an unknown key.
 */
export function parsePolicy(json: string, file: string): LayerPolicyRule[] {
  let doc: unknown;
  try {
    doc = JSON.parse(json);
  } catch (e) {
    throw new FormatError(file, `policy is not valid JSON (${(e as Error).message})`);
  }
  const list = Array.isArray(doc)
    ? doc
    : doc && typeof doc === "object" && Array.isArray((doc as { rules?: unknown }).rules)
    ? (doc as { rules: unknown[] }).rules
    : null;
  if (!list) {
    throw new FormatError(file, 'expected a JSON array of rules or an object {"rules": [...]}');
  }
  return list.map((raw, i) => {
    const bad = (msg: string) => new FormatError(file, `rule ${i}: ${msg}`);
    if (!raw || typeof raw !== "object" || Array.isArray(raw)) {
      throw bad('expected an object {"pattern": ..., "method": ...}');
    }
    const r = raw as Record<string, unknown>;
    for (const key of Object.keys(r)) {
      if (!["pattern", "method", "postGelu", "format", "rank"].includes(key)) {
        throw bad(`unknown key "${key}", expected pattern, method, postGelu, format, rank`);
      }
    }
    if (typeof r.pattern !== "string") throw bad("pattern must be a string");
    const problem = patternProblem(r.pattern);
    if (problem) throw bad(`pattern "${r.pattern}" ${problem}`);
    if (typeof r.method !== "string" || !METHODS.includes(r.method as Method)) {
      throw bad(
        `method ${JSON.stringify(r.method)} is unknown, expected one of ${METHODS.join(", ")}`,
      );
    }
    if (r.postGelu !== undefined && typeof r.postGelu !== "boolean") {
      throw bad("postGelu must be true or false");
    }
    if (r.format !== undefined && r.format !== "int4" && r.format !== "nvfp4") {
      throw bad(`format ${JSON.stringify(r.format)} is unknown, expected int4 or nvfp4`);
    }
    if (
      r.rank !== undefined &&
      !(typeof r.rank === "number" && Number.isInteger(r.rank) && r.rank >= 0 && r.rank <= 256)
    ) {
      throw bad(`rank ${JSON.stringify(r.rank)} must be an integer in 0..256`);
    }
    const rule: LayerPolicyRule = { pattern: r.pattern, method: r.method as Method };
    if (r.postGelu !== undefined) rule.postGelu = r.postGelu as boolean;
    if (r.format !== undefined) rule.format = r.format as WeightFormat;
    if (r.rank !== undefined) rule.rank = r.rank as number;
    return rule;
  });
}
