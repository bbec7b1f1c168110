import assert from "node:assert/strict";
import { HAS_GPU } from "../gpu/_testing.ts";
import { ModelFile } from "../runtime/model_file.ts";
import {
  buildQuantized,
  CACHE,
  cachedPath,
  firstBuildNotice,
  progressBar,
  sourceTag,
} from "./_models.ts";

Deno.test("models: cached files are named after the float checkpoint's content", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const [a, b, c] = ["a", "b", "c"].map((n) => `${dir}/${n}.safetensors`);
    await Deno.writeFile(a, new Uint8Array([1, 2, 3]));
    await Deno.writeFile(b, new Uint8Array([1, 2, 3]));
    await Deno.writeFile(c, new Uint8Array([1, 2, 4]));
    const [ta, tb, tc] = await Promise.all([a, b, c].map(sourceTag));
    assert.match(ta, /^[0-9a-f]{12}$/);
    assert.equal(ta, tb, "same bytes, same tag");
    assert.notEqual(ta, tc, "a changed checkpoint must not reuse the old cache");
    assert.equal(await cachedPath(a, "nvfp4.safetensors"), `${CACHE}a.${ta}.nvfp4.safetensors`);
    assert.equal(
      await cachedPath(c, "svdquant.int4.safetensors", "eval/"),
      `${CACHE}eval/c.${tc}.svdquant.int4.safetensors`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("models: the first build says so up front: what, how long, where, how to pre-build", () => {
  const [what, ahead] = firstBuildNotice("nvfp4", "/x/models/.cache/m.abc.nvfp4.safetensors");
  assert.match(what, /^first use of --precision nvfp4: building .* once; about 3 min/);
  assert.match(what, /cached in \/x\/models\/\.cache\/m\.abc\.nvfp4\.safetensors$/);
  assert.equal(ahead, "to build it ahead of time: deno task gen --precision nvfp4 --list");
});

Deno.test("models: the build's progress bar shows each stage with the time left", () => {
  let out = "", t = 0;
  const bar = progressBar((s) => out += s, () => t);
  bar("calibrating", 0, 16);
  t = 10_000;
  bar("calibrating", 4, 16);
  assert.match(out, /\rcalibrating +\[######\.{18}\] 4\/16 about 30 s left$/);
  t = 200_000;
  bar("calibrating", 16, 16);
  assert.match(out, /16\/16 done\n$/);
  bar("quantizing", 0, 40);
  t = 206_000;
  bar("quantizing", 1, 40);
  assert.match(out, /\rquantizing +\[#\.{23}\] 1\/40 about 4 min left$/);
});

Deno.test({
  name: "models: building a precision reports calibration and quantizer progress (tiny fixture)",
  ignore: !HAS_GPU, // NO_GPU_REASON: calibration runs the float model
  sanitizeResources: false,
  fn: async () => {
    const float = new URL("../tests/fixtures/tiny_dit.safetensors", import.meta.url).pathname;
    const dir = await Deno.makeTempDir();
    const calib = await cachedPath(float, "calib.safetensors");
    const hadCalib = await Deno.stat(calib).then(() => true, () => false);
    try {
      const seen = new Map<string, [number, number]>();
      await buildQuantized(float, "nvfp4", `${dir}/m.safetensors`, () => {}, {
        rank: 8,
        onProgress: (stage, done, total) => seen.set(stage, [done, total]),
      });
      if (!hadCalib) assert.deepEqual(seen.get("calibrating"), [16, 16]);
      const [done, total] = seen.get("quantizing")!;
      assert.equal(done, total);
      const f = await ModelFile.open(`${dir}/m.safetensors`);
      assert.equal(f.precision, "nvfp4");
      f.close();
    } finally {
      await Deno.remove(dir, { recursive: true });
      if (!hadCalib) await Deno.remove(calib).catch(() => {});
    }
  },
});
