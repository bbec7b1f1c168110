// The seeded mutation corpus (tests/_mutate.ts) over the tiny fixture and the bundled model files:
// for every corruption, loading gives a typed one-line error or the very same model (config,
// policy, attention plan and every tensor's bytes, which is all the graph's output depends on);
// never a model that loads but differs. Every re-sealed contradiction (NaN/Inf weights, a config
// or policy that contradicts the tensors) is refused with an error naming the key or tensor. And
// whatever `quantize` writes from the fixture's corpus loads; the rest it refuses, leaving no file.
// Runs on the CPU only (no GPU); bounded to well under a minute. SEED=<n> replays another corpus.
import assert from "node:assert/strict";
import { checksumOf } from "../formats/checksum.ts";
import { quantizeCheckpoint } from "../convert/model.ts";
import { readParoFrom } from "../quant/paro_store.ts";
import { ditConfig } from "../runtime/dit.ts";
import { FormatError } from "../gpu/errors.ts";
import { ModelFile } from "../runtime/model_file.ts";
import { contradictions, corruptions, type Mutant } from "./_mutate.ts";

const SEED = Number(Deno.env.get("SEED") ?? 19);
const here = (p: string) => new URL(p, import.meta.url).pathname;
const FILES = [
  { path: here("./fixtures/tiny_dit.safetensors"), count: 14 },
  { path: here("../models/dit_emoji.int4.safetensors"), count: 10 },
  { path: here("../models/dit_emoji.safetensors"), count: 6 },
];

/** Everything the graph's output depends on, as one digest; throws what loading throws. */
async function loadDigest(path: string): Promise<string> {
  const f = await ModelFile.open(path);
  try {
    const parts: unknown[] = [f.family, f.precision, ditConfig(f), f.policy];
    const plan = await readParoFrom(f);
    parts.push(plan ? f.reader.metadata.paro : null);
    for (const name of [...f.reader.tensors.keys()].sort()) {
      const t = await f.stored(name);
      if (["F32", "F16", "BF16"].includes(t.dtype) && !name.startsWith("paro.")) {
        await f.float(name);
      }
      parts.push([name, t.dtype, t.shape, checksumOf(t.data)]);
    }
    return checksumOf(new TextEncoder().encode(JSON.stringify(parts)));
  } finally {
    f.close();
  }
}

function assertTypedOneLine(e: unknown, m: Mutant): asserts e is Error {
  assert.ok(
    e instanceof FormatError || e instanceof RangeError,
    `${m.what}: not a typed error: ${e instanceof Error ? e.stack : e}`,
  );
  assert.ok(!e.message.includes("\n"), `${m.what}: the message is not one line: ${e.message}`);
  assert.match(e.message, /^Cannot /, `${m.what}: ${e.message}`);
}

for (const { path, count } of FILES) {
  const name = path.slice(path.lastIndexOf("/") + 1);
  Deno.test(`mutation corpus: ${name}: refused with a typed error or loaded unchanged`, async () => {
    const bytes = await Deno.readFile(path);
    const want = await loadDigest(path);
    const dir = await Deno.makeTempDir({ prefix: "w4-mutants-" });
    let refused = 0, same = 0;
    const reasons = new Map<string, number>();
    try {
      const file = `${dir}/m.safetensors`;
      const corpus = corruptions(bytes, SEED, count);
      assert.ok(corpus.length > 60, `${corpus.length} mutants`);
      for (const m of corpus) {
        await Deno.writeFile(file, m.bytes);
        let got: string;
        try {
          got = await loadDigest(file);
        } catch (e) {
          assertTypedOneLine(e, m);
          const why = e.message.replace(/^Cannot read [^:]*: /, "").slice(0, 24);
          reasons.set(why, (reasons.get(why) ?? 0) + 1);
          refused++;
          continue;
        }
        assert.equal(got, want, `${m.what}: accepted but different`);
        same++;
      }
      for (const m of contradictions(bytes)) {
        if (m.what.startsWith("policy") && !name.includes("int4")) continue;
        await Deno.writeFile(file, m.bytes);
        await assert.rejects(loadDigest(file), (e: unknown) => {
          assertTypedOneLine(e, m);
          assert.match(e.message, m.expect, `${m.what}: ${e.message}`);
          return true;
        }, `${m.what}: accepted`);
        refused++;
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
    console.log(`${name}: ${refused} refused, ${same} loaded unchanged (seed ${SEED})`);
    assert.ok(refused > 0 && reasons.size > 8, `refusals: ${[...reasons.keys()].join(" | ")}`);
  });
}

Deno.test("mutation corpus: what quantize writes from the fixture's corpus loads, or it refused", async () => {
  const src = FILES[0].path;
  const bytes = await Deno.readFile(src);
  const dir = await Deno.makeTempDir({ prefix: "w4-quant-mutants-" });
  let written = 0, refused = 0;
  try {
    const input = `${dir}/m.safetensors`, out = `${dir}/q.safetensors`;
    const corpus = [...corruptions(bytes, SEED + 1, 6), ...contradictions(bytes)];
    for (const m of corpus) {
      await Deno.writeFile(input, m.bytes);
      try {
        await quantizeCheckpoint(input, out, {
          method: "svdquant",
          rank: 8,
          alphas: [0.5],
          rounds: 1,
        });
      } catch (e) {
        assertTypedOneLine(e, m);
        const left = [...Deno.readDirSync(dir)].map((x) => x.name).sort();
        assert.deepEqual(left, ["m.safetensors"], `${m.what}: a refusal left files behind`);
        refused++;
        continue;
      }
      await loadDigest(out).catch((e) => {
        throw new Error(`${m.what}: quantize wrote a file that does not load: ${e.message}`);
      });
      await Deno.remove(out);
      written++;
    }
    // the unmutated fixture quantizes and loads; quantizing it onto itself is refused
    await quantizeCheckpoint(src, out, { method: "rtn" });
    await loadDigest(out);
    await Deno.copyFile(src, input);
    await assert.rejects(
      quantizeCheckpoint(input, input, { method: "rtn" }),
      (e: unknown) => e instanceof RangeError && /is the input file/.test(e.message),
    );
    assert.deepEqual(await Deno.readFile(input), bytes, "the input is untouched");
    // a quantized file as input: refused, saying so
    await assert.rejects(
      quantizeCheckpoint(out, `${dir}/again.safetensors`),
      (e: unknown) => e instanceof FormatError && /already quantized/.test(e.message),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  console.log(`quantize over the corpus: ${written} written (all load), ${refused} refused`);
  assert.ok(refused > 50);
});
