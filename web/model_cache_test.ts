// The browser-side model cache, run in Deno (which has the same Cache API): the first fetch
// downloads with Range requests and reports progress, the second reads the cache with no model
// request, a new ETag downloads again; a corrupted copy is refused by its checksum when opened
// from a Blob (the page then forgets it).
import assert from "node:assert/strict";
import { FakeEngine } from "./_fake.ts";
import { createApp } from "./app.ts";
import { fetchModel, forgetModel } from "./model_cache.ts";
import { ModelFiles } from "./model_files.ts";
import { ModelFile } from "../runtime/model_file.ts";
import { BlobSource, BytesSource } from "../gpu/source.ts";

const INT4 = new URL("../models/dit_emoji.int4.safetensors", import.meta.url).pathname;

Deno.test({
  name: "model cache: download with progress, then from the cache, again on a new ETag",
  ignore: typeof caches === "undefined", // a runtime without the Cache API
  sanitizeResources: false,
  fn: async () => {
    const engine = new FakeEngine();
    const files = await ModelFiles.create([{ id: "tiny-int4", path: INT4 }], engine.models());
    const app = createApp({ engine, modelFiles: { files } });
    const seen: string[] = [];
    const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
      if (new URL(req.url).pathname.startsWith("/models/")) {
        seen.push(`${req.method} ${req.headers.get("Range") ?? ""}`);
      }
      return app.fetch(req);
    });
    const url = `http://127.0.0.1:${server.addr.port}/models/tiny-int4`;
    try {
      const etag = (await files.list())[0].etag;
      const bytes = await Deno.readFile(INT4);
      const progress: number[] = [];
      const a = await fetchModel(url, etag, { onProgress: (d) => progress.push(d) });
      assert.equal(a.cached, false);
      assert.equal(a.stored, true);
      assert.deepEqual(new Uint8Array(await a.blob.arrayBuffer()), bytes);
      assert.deepEqual(progress, [0, 1 << 20, 2 << 20, 3 << 20, bytes.length]);
      assert.deepEqual(seen, [
        "HEAD ",
        ...[0, 1, 2, 3].map((i) =>
          `GET bytes=${i << 20}-${Math.min((i + 1) << 20, bytes.length) - 1}`
        ),
      ]);
      seen.length = 0;
      const b = await fetchModel(url, etag);
      assert.equal(b.cached, true);
      assert.deepEqual(seen, [], "no model request for a cached copy");
      assert.deepEqual(new Uint8Array(await b.blob.arrayBuffer()), bytes);
      // the server's ETag differs from the cached one's: the file is fetched again, and a file
      // whose ETag is not what /models said is refused
      await assert.rejects(fetchModel(url, '"other"'), /the file changed on the server/);
      await forgetModel(url);
      const c = await fetchModel(url, etag);
      assert.equal(c.cached, false);
    } finally {
      await forgetModel(url);
      await server.shutdown();
    }
  },
});

Deno.test("model cache: a corrupted copy is refused by its checksum when opened from a Blob", async () => {
  const bytes = await Deno.readFile(INT4);
  const ok = await ModelFile.open(new BlobSource(new Blob([bytes]), "blob:good"));
  assert.equal(ok.precision, "int4");
  ok.close();
  const bad = bytes.slice();
  bad[bad.length - 100] ^= 0x10;
  await assert.rejects(
    ModelFile.open(new BlobSource(new Blob([bad]), "blob:bad")),
    (e: Error) => e.name === "FormatError" && /checksum mismatch/.test(e.message),
  );
  await assert.rejects(
    ModelFile.open(new BytesSource(bytes.subarray(0, 5000), "cut")),
    /FormatError|truncated|beyond the end/,
  );
});
