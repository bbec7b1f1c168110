/**
 * `--model` resolution: a Nunchaku file (local, or by hub id from a fake hub) is imported once
 * into a cache keyed by its content hash; our own files pass through; unknown names are refused.
 */
import assert from "node:assert/strict";
import { resolveModel } from "./_resolve.ts";
import { writeTinyNunchakuFlux } from "../quant/_nunchaku_testing.ts";
import { QuantFile } from "../formats/format.ts";

Deno.test("--model: a Nunchaku file is imported once, keyed by its content", async () => {
  const dir = await Deno.makeTempDir({ prefix: "w4_resolve_" });
  try {
    const src = `${dir}/svdq-int4_r16-tiny.safetensors`, cacheDir = `${dir}/cache/`;
    await writeTinyNunchakuFlux(src, "int4", 11);
    const lines: string[] = [];
    const a = await resolveModel(src, (l) => lines.push(l), { cacheDir });
    assert.match(a, new RegExp(`^${cacheDir}svdq-int4_r16-tiny\\.[0-9a-f]{12}\\.safetensors$`));
    (await QuantFile.open(a)).close();
    assert.ok(lines.some((l) => l.startsWith("importing the Nunchaku checkpoint")));
    const mtime = (await Deno.stat(a)).mtime?.getTime();
    lines.length = 0;
    assert.equal(await resolveModel(src, (l) => lines.push(l), { cacheDir }), a);
    assert.deepEqual(lines, [], "second use: no import");
    assert.equal((await Deno.stat(a)).mtime?.getTime(), mtime);
    // our own file passes through; a changed source gets a new cache entry
    assert.equal(await resolveModel(a, () => {}, { cacheDir }), a);
    await writeTinyNunchakuFlux(src, "int4", 12);
    const b = await resolveModel(src, () => {}, { cacheDir });
    assert.notEqual(b, a);
    await assert.rejects(
      resolveModel(`${dir}/nope`, () => {}, { cacheDir }),
      /not a file, nor a hub id/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--model: a hub id is pulled, then imported", async () => {
  const dir = await Deno.makeTempDir({ prefix: "w4_resolve_" });
  const src = `${dir}/src.safetensors`;
  await writeTinyNunchakuFlux(src, "nvfp4", 5);
  const bytes = await Deno.readFile(src);
  const sha = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  const hex = [...sha].map((b) => b.toString(16).padStart(2, "0")).join("");
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const p = new URL(req.url).pathname;
    if (p === "/api/models/tester/flux-tiny/tree/main") {
      return Response.json([{
        type: "file",
        path: "svdq-fp4_r16-tiny.safetensors",
        size: bytes.length,
        oid: "0",
        lfs: { oid: hex, size: bytes.length },
      }]);
    }
    if (p === "/tester/flux-tiny/resolve/main/svdq-fp4_r16-tiny.safetensors") {
      return new Response(bytes.slice());
    }
    return new Response("no", { status: 404 });
  });
  try {
    const hub = { endpoint: `http://127.0.0.1:${server.addr.port}`, cacheDir: `${dir}/hub` };
    const out = await resolveModel("tester/flux-tiny/svdq-fp4_r16-tiny.safetensors", () => {}, {
      cacheDir: `${dir}/cache/`,
      hub,
    });
    assert.equal(out, `${dir}/cache/svdq-fp4_r16-tiny.${hex.slice(0, 12)}.safetensors`);
    const q = await QuantFile.open(out);
    assert.equal(q.meta.quantConfig.weightFormat, "nvfp4");
    q.close();
  } finally {
    await server.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});
