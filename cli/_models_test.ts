import assert from "node:assert/strict";
import { CACHE, cachedPath, sourceTag } from "./_models.ts";

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
