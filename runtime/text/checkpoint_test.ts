import assert from "node:assert/strict";
import { Checkpoint } from "./checkpoint.ts";
import { compactTable } from "./_linears.ts";
import { FormatError } from "../../gpu/errors.ts";
import { shardCheckpoint as shard } from "./_golden.ts";

const T5 = new URL("../../tests/fixtures/text/t5_tiny.safetensors", import.meta.url).pathname;

Deno.test("checkpoint: a sharded folder reads the same tensors as the single file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const names = await shard(T5, dir);
    await Deno.copyFile(
      new URL("../../tests/fixtures/text/t5_config.json", import.meta.url),
      `${dir}/config.json`,
    );
    const one = await Checkpoint.open(T5);
    const two = await Checkpoint.open(dir);
    const idx = await Checkpoint.open(`${dir}/model.safetensors.index.json`);
    try {
      assert.deepEqual(two.names().sort(), names.slice().sort());
      assert.equal(one.config.d_model, 64); // from the metadata `config`
      assert.equal(two.config.d_model, 64); // from config.json
      for (const name of names) {
        assert.deepEqual(two.meta(name), one.meta(name));
        assert.deepEqual(await two.float(name), await one.float(name), name);
        assert.deepEqual(await idx.raw(name), await one.raw(name), name);
      }
      await assert.rejects(() => two.float("nope"), FormatError);
    } finally {
      one.close();
      two.close();
      idx.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("checkpoint: a bad index or folder is a FormatError that says what is wrong", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await shard(T5, dir);
    const idxPath = `${dir}/model.safetensors.index.json`;
    const idx = JSON.parse(await Deno.readTextFile(idxPath));
    const first = Object.keys(idx.weight_map)[0];
    // the index points a tensor at the shard that lacks it
    idx.weight_map[first] = idx.weight_map[first].includes("00001")
      ? "model-00002-of-00002.safetensors"
      : "model-00001-of-00002.safetensors";
    await Deno.writeTextFile(idxPath, JSON.stringify(idx));
    await assert.rejects(() => Checkpoint.open(dir), (e) => {
      return e instanceof FormatError && /index says this shard holds it/.test(e.message);
    });
    await Deno.writeTextFile(idxPath, JSON.stringify({ weight_map: { a: "../x.safetensors" } }));
    await assert.rejects(() => Checkpoint.open(dir), /bad shard/);
    await Deno.remove(idxPath);
    await assert.rejects(() => Checkpoint.open(dir), /no model.safetensors/);
    await assert.rejects(() => Checkpoint.open(`${dir}/missing`), /no such file or folder/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("compactTable keeps a table in f16 only when every value is exact in f16", () => {
  const exact = compactTable(Float32Array.of(0.5, -1.25, 65504, 0));
  assert.ok(exact instanceof Float16Array);
  assert.deepEqual(Array.from(exact), [0.5, -1.25, 65504, 0]);
  const inexact = Float32Array.of(0.5, 0.1);
  assert.equal(compactTable(inexact), inexact);
});
