// GET /models and GET|HEAD /models/<id>: registry ids only, Range (206 / 416), ETag, If-Range,
// If-None-Match, the sign-in check; and an HttpRangeSource reading the served file through a real
// server gives the same model (checksum verified) as the local file.
import assert from "node:assert/strict";
import { FakeEngine } from "./_fake.ts";
import { createApp } from "./app.ts";
import { ModelFiles, parseRange } from "./model_files.ts";
import { ModelFile } from "../runtime/model_file.ts";
import { HttpRangeSource } from "../gpu/source.ts";

const INT4 = new URL("../models/dit_emoji.int4.safetensors", import.meta.url).pathname;
const SIZE = Deno.statSync(INT4).size;

async function setup(token?: string) {
  const engine = new FakeEngine();
  const registry = [{ id: "tiny-int4", path: INT4 }, {
    id: "tiny-float",
    path: INT4,
    attention: "sparse" as const,
  }];
  const files = await ModelFiles.create(registry, engine.models());
  return createApp({ engine, token, modelFiles: { files, deviceJs: "export {};" } });
}

Deno.test("model files: /models lists ids, sizes, ETags and requirements (sparse entries left out)", async () => {
  const app = await setup();
  const r = await app.request("/models");
  assert.equal(r.status, 200);
  const { models } = await r.json();
  assert.equal(models.length, 1);
  const m = models[0];
  assert.equal(m.id, "tiny-int4");
  assert.equal(m.url, "/models/tiny-int4");
  assert.equal(m.bytes, SIZE);
  assert.match(m.checksum, /^fnv1a64:[0-9a-f]{16}$/);
  assert.match(m.etag, /^"[0-9a-f]{16}-[0-9a-f]+-[0-9a-f]+"$/);
  assert.deepEqual(m.requirements.wgslLanguageFeatures, ["packed_4x8_integer_dot_product"]);
  assert.deepEqual(m.info.classes, ["smiling face", "red heart", "cat face"]);
  assert.equal((await app.request("/static/device.js")).status, 200);
});

Deno.test("model files: whole file, ranges, 416, ETag conditions, ids only", async () => {
  const app = await setup();
  const bytes = await Deno.readFile(INT4);
  const whole = await app.request("/models/tiny-int4");
  assert.equal(whole.status, 200);
  assert.equal(whole.headers.get("Accept-Ranges"), "bytes");
  assert.equal(whole.headers.get("Content-Length"), String(SIZE));
  const etag = whole.headers.get("ETag")!;
  assert.deepEqual(new Uint8Array(await whole.arrayBuffer()), bytes);

  const part = await app.request("/models/tiny-int4", { headers: { Range: "bytes=100-1123" } });
  assert.equal(part.status, 206);
  assert.equal(part.headers.get("Content-Range"), `bytes 100-1123/${SIZE}`);
  assert.deepEqual(new Uint8Array(await part.arrayBuffer()), bytes.subarray(100, 1124));
  const tail = await app.request("/models/tiny-int4", { headers: { Range: "bytes=-10" } });
  assert.deepEqual(new Uint8Array(await tail.arrayBuffer()), bytes.subarray(SIZE - 10));
  const open = await app.request("/models/tiny-int4", { headers: { Range: `bytes=${SIZE - 3}-` } });
  assert.equal(open.headers.get("Content-Range"), `bytes ${SIZE - 3}-${SIZE - 1}/${SIZE}`);
  await open.body?.cancel();

  for (const bad of [`bytes=${SIZE}-`, "bytes=5-2", "bytes=0-1,4-5", "lines=0-1", "bytes=-0"]) {
    const r = await app.request("/models/tiny-int4", { headers: { Range: bad } });
    assert.equal(r.status, 416, bad);
    assert.equal(r.headers.get("Content-Range"), `bytes */${SIZE}`);
    assert.match((await r.json()).error, /^Cannot serve range/);
  }
  // If-Range with an old ETag: the whole (new) file, 200
  const stale = await app.request("/models/tiny-int4", {
    headers: { Range: "bytes=0-9", "If-Range": '"old"' },
  });
  assert.equal(stale.status, 200);
  await stale.body?.cancel();
  const same = await app.request("/models/tiny-int4", { headers: { "If-None-Match": etag } });
  assert.equal(same.status, 304);

  for (const id of ["nope", "..%2Fmodels%2Fdit_emoji.int4.safetensors", "tiny-float"]) {
    const r = await app.request(`/models/${id}`);
    assert.equal(r.status, 404, id);
    await r.body?.cancel();
  }
  assert.deepEqual([parseRange("bytes=0-", 4), parseRange("bytes=2-99", 4)], [[0, 3], [2, 3]]);
});

Deno.test("model files: need the sign-in when the server has a token", async () => {
  const app = await setup("s3cret");
  assert.equal((await app.request("/models")).status, 401);
  assert.equal((await app.request("/models/tiny-int4")).status, 401);
  const ok = await app.request("/models/tiny-int4", {
    method: "HEAD",
    headers: { Authorization: "Bearer s3cret" },
  });
  assert.equal(ok.status, 200);
});

Deno.test({
  name: "model files: an HttpRangeSource over a real server opens the model (checksum verified)",
  sanitizeResources: false,
  fn: async () => {
    const app = await setup();
    const seen: string[] = [];
    const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
      seen.push(`${req.method} ${req.headers.get("Range") ?? ""}`);
      return app.fetch(req);
    });
    try {
      const url = `http://127.0.0.1:${server.addr.port}/models/tiny-int4`;
      const src = await HttpRangeSource.open(url);
      assert.equal(src.size, SIZE);
      const f = await ModelFile.open(src);
      const local = await ModelFile.open(INT4);
      assert.deepEqual(f.config, local.config);
      assert.equal(f.precision, "int4");
      local.close();
      f.close();
      assert.equal(seen[0], "HEAD ");
      assert.ok(seen.slice(1).every((s) => s.startsWith("GET bytes=")), seen.join("; "));
      await assert.rejects(src.read(0, 4), /closed/);
    } finally {
      await server.shutdown();
    }
  },
});
