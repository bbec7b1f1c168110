import assert from "node:assert/strict";
import { quantizeCheckpoint } from "../convert/model.ts";
import { QuantFile } from "../formats/format.ts";
import { FormatError } from "../gpu/errors.ts";

const FIXTURE = new URL("./fixtures/tiny_dit.safetensors", import.meta.url).pathname;

Deno.test("quantize model: the fixture becomes a verified, self-describing file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const out = `${dir}/q.safetensors`;
    const seen: string[] = [];
    const reports = await quantizeCheckpoint(FIXTURE, out, {
      format: "nvfp4",
      rank: 16,
      alphas: [0, 0.5, 1],
      rounds: 1,
      onLayer: (r) => seen.push(r.name),
    });
    assert.equal(seen.length, reports.length);
    const q = await QuantFile.open(out); // verifies the checksum
    try {
      assert.equal(q.meta.quantConfig.weightFormat, "nvfp4");
      assert.equal(q.meta.quantConfig.rank, 16);
      assert.equal(q.meta.family, "dit");
      assert.equal(q.meta.modelConfig.hidden_size, 64);
      // the policy applied: W4A4 + low-rank for attention/MLP, W4A16 for adaLN, 16-bit elsewhere
      assert.deepEqual(q.meta.policy["blocks.0.attn.qkv"], {
        method: "svdquant",
        format: "nvfp4",
        r: 16,
        actMode: "nvfp4",
      });
      assert.equal(q.meta.policy["blocks.1.adaLN_modulation.1"].method, "w4a16");
      assert.equal(q.meta.policy["final_layer.linear"].method, "float");
      const t = q.reader.tensors;
      for (const s of ["qweight", "wscales", "tensor_scale", "smooth", "lora_down", "lora_up"]) {
        assert.ok(t.has(`blocks.0.mlp.fc1.${s}`), `blocks.0.mlp.fc1.${s} is written`);
      }
      assert.deepEqual(t.get("blocks.0.attn.qkv.qweight")!.shape, [192, 8]); // [N, K/8]
      assert.equal(t.get("blocks.0.attn.qkv.qweight")!.dtype, "U32");
      assert.equal(t.get("blocks.0.attn.qkv.wscales")!.dtype, "F8_E4M3");
      assert.ok(t.has("pos_embed") && t.has("y_embedder.embedding_table.weight"));
      assert.ok(!t.has("blocks.0.attn.qkv.weight"), "no float copy of a quantized weight");
      // the quantized layers reproduce their float outputs closely on calibration data
      for (const r of reports.filter((r) => r.method === "svdquant")) {
        assert.ok(r.relError < 0.1, `${r.name}: relative output error ${r.relError}`);
        assert.ok(r.bytesAfter < r.bytesBefore, `${r.name} shrinks`);
      }
    } finally {
      q.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("quantize model: a truncated checkpoint is refused and leaves no output", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const bytes = await Deno.readFile(FIXTURE);
    await Deno.writeFile(`${dir}/bad.safetensors`, bytes.subarray(0, bytes.length - 100));
    await assert.rejects(
      quantizeCheckpoint(`${dir}/bad.safetensors`, `${dir}/out.safetensors`),
      (e: unknown) => e instanceof FormatError && /bad\.safetensors/.test(e.message),
    );
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["bad.safetensors"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
