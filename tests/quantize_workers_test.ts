import assert from "node:assert/strict";
import { quantizeCheckpoint } from "../convert/model.ts";
import { QuantizePool } from "../quant/pool.ts";
import { quantizeLinear } from "../quant/layer.ts";

const FIXTURE = new URL("./fixtures/tiny_dit.safetensors", import.meta.url).pathname;

Deno.test("quantize workers: the file is byte-identical to the serial run", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const opts = { format: "int4" as const, rank: 16, alphas: [0, 0.5, 1], rounds: 1 };
    const serial = await quantizeCheckpoint(FIXTURE, `${dir}/a.safetensors`, opts);
    const parallel = await quantizeCheckpoint(FIXTURE, `${dir}/b.safetensors`, {
      ...opts,
      workers: 2,
    });
    const a = await Deno.readFile(`${dir}/a.safetensors`);
    const b = await Deno.readFile(`${dir}/b.safetensors`);
    assert.ok(a.length > 0);
    assert.equal(b.length, a.length);
    assert.ok(a.every((v, i) => v === b[i]), "the two files differ");
    assert.deepEqual(
      parallel.map((r) => [r.name, r.method, r.format, r.r, r.relError, r.bytesAfter]),
      serial.map((r) => [r.name, r.method, r.format, r.r, r.relError, r.bytesAfter]),
    );
    assert.ok(serial.some((r) => r.method === "svdquant"), "the fixture has W4A4 layers");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("quantize workers: a layer's result and errors match the serial call", async () => {
  const pool = new QuantizePool(2);
  try {
    const n = 16, k = 128;
    const w = new Float32Array(n * k).map((_, i) => Math.sin(i * 0.37) ** 3);
    const opts = { method: "svdquant" as const, format: "int4" as const, r: 4, rounds: 1 };
    const [p, s] = await Promise.all([
      pool.quantize("fc", w, null, n, k, opts),
      quantizeLinear("fc", w, null, n, k, opts),
    ]);
    assert.equal(p.relError, s.relError);
    assert.deepEqual([...p.tensors.keys()], [...s.tensors.keys()]);
    for (const [key, t] of s.tensors) assert.deepEqual(p.tensors.get(key)!.data, t.data, key);
    // the weight passed in is still usable by the caller (copied, not transferred)
    assert.equal(w.length, n * k);
    // a rejected layer rejects with the same error type and message as the serial call
    const bad = { ...opts, r: -1 };
    const serialErr = await quantizeLinear("fc", w, null, n, k, bad).then(() => null, (e) => e);
    assert.ok(serialErr instanceof Error, "the serial call rejects r = -1");
    await assert.rejects(pool.quantize("fc", w, null, n, k, bad), (e: Error) => {
      assert.equal(e.constructor, serialErr.constructor);
      assert.equal(e.message, serialErr.message);
      return true;
    });
    await assert.rejects(
      pool.quantize("fc", w, null, n, k, { ...opts, matmul: () => new Float32Array(0) }),
      TypeError,
    );
  } finally {
    pool.close();
  }
});
