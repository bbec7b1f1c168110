/** Tests of the layer policy: the segment glob, the DiT defaults and policy-file errors. */
import assert from "node:assert/strict";
import { FormatError } from "../gpu/errors.ts";
import { DEFAULT_DIT_POLICY, matchPattern, parsePolicy, policyFor } from "./policy.ts";

Deno.test("matchPattern: `*` is one or more whole dotted segments, anchored", () => {
  const yes: [string, string][] = [
    ["blocks.*.attn.qkv", "blocks.3.attn.qkv"],
    ["blocks.*.attn.qkv", "blocks.3.0.attn.qkv"],
    ["*", "pos_embed"],
    ["*", "a.b.c"],
    ["*.qkv", "blocks.1.attn.qkv"],
    ["blocks.*", "blocks.0.mlp.fc1"],
    ["a.*.b.*.c", "a.1.b.2.3.c"],
    ["x_embedder.proj", "x_embedder.proj"],
  ];
  const no: [string, string][] = [
    ["blocks.*.attn.qkv", "blocks.attn.qkv"], // `*` needs at least one segment
    ["blocks.*.attn.qkv", "blocks.3.attn.qkv.extra"], // anchored at the end
    ["blocks.*.attn.qkv", "xblocks.3.attn.qkv"], // whole segments only
    ["blocks.*", "blocks"],
    ["*.qkv", "qkv"],
    ["blocks.1.attn", "blocks.10.attn"],
    ["mlp.fc*", "mlp.fc1"], // no partial wildcards: `fc*` is a literal segment
  ];
  for (const [p, s] of yes) assert.ok(matchPattern(p, s), `${p} should match ${s}`);
  for (const [p, s] of no) assert.ok(!matchPattern(p, s), `${p} should not match ${s}`);
});

Deno.test("DEFAULT_DIT_POLICY maps the DiT layer names", () => {
  const expect: [string, string, boolean?][] = [
    ["blocks.0.attn.qkv", "svdquant"],
    ["blocks.27.attn.proj", "svdquant"],
    ["blocks.5.mlp.fc1", "svdquant"],
    ["blocks.5.mlp.fc2", "svdquant", true],
    ["blocks.12.adaLN_modulation.1", "w4a16"],
    ["final_layer.adaLN_modulation.1", "float"],
    ["final_layer.linear", "float"],
    ["x_embedder.proj", "float"],
    ["t_embedder.mlp.0", "float"],
    ["t_embedder.mlp.2", "float"],
    ["y_embedder.embedding_table", "float"],
    ["pos_embed", "float"],
  ];
  for (const [name, method, gelu] of expect) {
    const rule = policyFor(name, DEFAULT_DIT_POLICY);
    assert.equal(rule.method, method, name);
    assert.equal(rule.postGelu ?? false, gelu ?? false, name);
  }
  // First match wins; no match falls back to float.
  const rules = parsePolicy('[{"pattern": "blocks.0.*", "method": "rtn"}]', "p.json");
  assert.equal(policyFor("blocks.0.attn.qkv", [...rules, ...DEFAULT_DIT_POLICY]).method, "rtn");
  assert.equal(
    policyFor("blocks.1.attn.qkv", [...rules, ...DEFAULT_DIT_POLICY]).method,
    "svdquant",
  );
  assert.equal(policyFor("blocks.1.attn.qkv", rules).method, "float");
});

Deno.test("parsePolicy accepts an array or {rules}", () => {
  const text = '{"rules": [{"pattern": "blocks.*.mlp.fc2", "method": "smooth", "postGelu": true}]}';
  assert.deepEqual(parsePolicy(text, "p.json"), [
    { pattern: "blocks.*.mlp.fc2", method: "smooth", postGelu: true },
  ]);
  assert.deepEqual(parsePolicy('[{"pattern": "*", "method": "w8a8"}]', "p.json"), [
    { pattern: "*", method: "w8a8" },
  ]);
  assert.deepEqual(parsePolicy("[]", "p.json"), []);
  assert.deepEqual(
    parsePolicy('[{"pattern": "*.fc2", "method": "svdquant", "format": "int4", "rank": 32}]', "p"),
    [{ pattern: "*.fc2", method: "svdquant", format: "int4", rank: 32 }],
  );
});

Deno.test("parsePolicy: FormatError naming the file and the rule index", () => {
  const cases: [string, RegExp][] = [
    ["{not json", /not valid JSON/],
    ['{"x": 1}', /array of rules/],
    ['[{"pattern": "a", "method": "svdquant"}, 3]', /rule 1: expected an object/],
    ['[{"method": "svdquant"}]', /rule 0: pattern must be a string/],
    ['[{"pattern": "", "method": "svdquant"}]', /rule 0: pattern "" is empty/],
    ['[{"pattern": "a..b", "method": "svdquant"}]', /rule 0: .*empty segment/],
    ['[{"pattern": "mlp.fc*", "method": "svdquant"}]', /rule 0: .*partial wildcard "fc\*"/],
    ['[{"pattern": "a", "method": "int3"}]', /rule 0: method "int3" is unknown/],
    ['[{"pattern": "a", "method": "rtn", "postGelu": "yes"}]', /rule 0: postGelu must be/],
    [
      '[{"pattern": "a", "method": "rtn"}, {"pattern": "b", "method": "rtn", "bits": 4}]',
      /rule 1: unknown key "bits"/,
    ],
    ['[{"pattern": "a", "method": "rtn", "format": "fp8"}]', /rule 0: format "fp8" is unknown/],
    ['[{"pattern": "a", "method": "rtn", "rank": 4.5}]', /rule 0: rank 4.5 must be an integer/],
  ];
  for (const [text, re] of cases) {
    assert.throws(() => parsePolicy(text, "my_policy.json"), (e: Error) => {
      assert.ok(e instanceof FormatError, text);
      assert.match(e.message, /my_policy\.json/);
      assert.match(e.message, re);
      return true;
    });
  }
});
