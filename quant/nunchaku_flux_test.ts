/**
 * Whole-checkpoint import of Nunchaku FLUX files: a tiny random FLUX model written in Nunchaku's
 * layout by our packer imports into our self-describing file with every layer exactly the
 * canonical conversion of its values, BFL names, the policy (convention "nunchaku", unsigned
 * post-GELU INT4 activations, W4A16 "uint4" adaLN) and the model config; bad files are refused
 * with a FormatError naming the tensor and leave no output behind.
 */
import assert from "node:assert/strict";
import { QuantFile } from "../formats/format.ts";
import { canonicalW4A16, canonicalW4A4 } from "./nunchaku.ts";
import { importNunchakuFlux } from "./nunchaku_flux.ts";
import { TINY_FLUX_CONFIG, writeTinyNunchakuFlux } from "./_nunchaku_testing.ts";
import { FormatError } from "../gpu/errors.ts";
import { fromFloat32 } from "../formats/safetensors.ts";

async function tmpDir(): Promise<string> {
  return await Deno.makeTempDir({ prefix: "w4_nunchaku_" });
}

for (const precision of ["int4", "nvfp4"] as const) {
  Deno.test(`nunchaku flux import ${precision}: every tensor, the policy and the config`, async () => {
    const dir = await tmpDir();
    try {
      const src = `${dir}/svdq-${precision}_r16-tiny.safetensors`, dst = `${dir}/ours.safetensors`;
      const truth = await writeTinyNunchakuFlux(src, precision, 7);
      const report = await importNunchakuFlux(src, dst);
      assert.deepEqual(report.counts, { w4a4: 12, w4a16: 3, copied: 22 });
      // bf16 → f16 loses bits only below 2⁻¹⁷ (f16 subnormals: absolute error ≤ 2⁻²⁵); the
      // random low-rank factors have a few such values
      const inexact = [...truth.w4a4.values()].reduce((a, l) => a + canonicalW4A4(l).inexact, 0) +
        [...truth.w4a16.values()].reduce((a, l) => a + canonicalW4A16(l).inexact, 0);
      assert.equal(report.inexact, inexact);
      assert.ok(inexact < 50, `${inexact} values lose bits`);
      const q = await QuantFile.open(dst); // verifies the checksum
      try {
        assert.equal(q.meta.family, "flux");
        assert.equal(q.meta.quantConfig.weightFormat, precision);
        assert.deepEqual(q.meta.modelConfig, {
          in_channels: 64,
          out_channels: 64,
          vec_in_dim: 32,
          context_in_dim: 64,
          hidden_size: 128,
          mlp_ratio: 4,
          num_heads: 2,
          depth: 1,
          depth_single_blocks: 1,
          axes_dim: [16, 24, 24],
          theta: 10000,
          qkv_bias: true,
          guidance_embed: false,
        });
        const unsigned = precision === "int4" ? "int4_unsigned" : "nvfp4";
        assert.deepEqual(q.meta.policy["double_blocks.0.img_mlp.2"], {
          method: "svdquant",
          format: precision,
          r: 16,
          actMode: unsigned,
          convention: "nunchaku",
        });
        assert.equal(q.meta.policy["single_blocks.0.linear2_mlp"].actMode, unsigned);
        assert.equal(q.meta.policy["single_blocks.0.linear1_qkv"].actMode, precision);
        assert.deepEqual(q.meta.policy["single_blocks.0.modulation.lin"], {
          method: "w4a16",
          format: "uint4",
          r: 0,
        });
        const check = async (
          base: string,
          tensors: Map<string, { dtype: string; shape: number[]; data: Uint8Array }>,
        ) => {
          for (const [suffix, t] of tensors) {
            const name = `${base}.${suffix}`;
            const info = q.reader.tensors.get(name);
            assert.ok(info, `${name} is missing`);
            assert.deepEqual([info.dtype, info.shape], [t.dtype, t.shape], name);
            assert.deepEqual(await q.reader.readRaw(name), t.data, name);
          }
        };
        for (const [base, l] of truth.w4a4) await check(base, canonicalW4A4(l).tensors);
        for (const [base, l] of truth.w4a16) await check(base, canonicalW4A16(l).tensors);
        assert.equal(q.reader.tensors.has("single_blocks.0.linear2_attn.bias"), false);
        assert.equal(
          q.reader.tensors.has("double_blocks.0.img_attn.qkv.channel_scale"),
          precision === "nvfp4",
        );
        // 16-bit tensors: renamed, bf16 as stored; the final modulation's halves swapped
        const bf = (v: Float32Array) => fromFloat32("BF16", v);
        assert.deepEqual(
          await q.reader.readRaw("img_in.weight"),
          bf(truth.float.get("x_embedder.weight")!),
        );
        assert.deepEqual(
          await q.reader.readRaw("single_blocks.0.norm.key_norm.scale"),
          bf(truth.float.get("single_transformer_blocks.0.norm_k.weight")!),
        );
        const mod = truth.float.get("norm_out.linear.bias")!;
        const swapped = Float32Array.from([...mod.subarray(128), ...mod.subarray(0, 128)]);
        assert.deepEqual(
          await q.reader.readRaw("final_layer.adaLN_modulation.1.bias"),
          bf(swapped),
        );
        const source = JSON.parse(q.reader.metadata.source);
        assert.equal(source.format, "nunchaku");
        assert.equal(source.model_class, "NunchakuFluxTransformer2dModel");
      } finally {
        q.close();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("nunchaku flux import refuses bad files and writes nothing", async () => {
  const dir = await tmpDir();
  try {
    const dst = `${dir}/ours.safetensors`;
    const cases: [
      string,
      (t: Map<string, unknown>, m: Record<string, string>) => void,
      RegExp,
      string | undefined,
    ][] = [
      [
        "missing lora_up",
        (t) => t.delete("transformer_blocks.0.mlp_fc2.lora_up"),
        /missing/,
        "transformer_blocks.0.mlp_fc2.lora_up",
      ],
      [
        "missing layer",
        (t) => {
          for (const k of [...t.keys()]) {
            if (k.startsWith("single_transformer_blocks.0.out_proj.")) t.delete(k);
          }
        },
        /missing \(expected a quantized layer\)/,
        "single_transformer_blocks.0.out_proj.qweight",
      ],
      [
        "unknown tensor",
        (t) =>
          t.set("transformer_blocks.0.extra.weight", {
            dtype: "BF16",
            shape: [1],
            data: new Uint8Array(2),
          }),
        /not part of the Nunchaku FLUX layout/,
        "transformer_blocks.0.extra.weight",
      ],
      ["no config", (_, m) => delete m.config, /no metadata "config".*--config/, undefined],
      [
        "other model",
        (_, m) => m.model_class = "NunchakuSanaTransformer2DModel",
        /model_class "NunchakuSanaTransformer2DModel" is not supported/,
        undefined,
      ],
      [
        "not nunchaku",
        (_, m) => delete m.quantization_config,
        /not a Nunchaku checkpoint/,
        undefined,
      ],
    ];
    for (const [what, edit, msg, tensor] of cases) {
      const src = `${dir}/bad.safetensors`;
      await writeTinyNunchakuFlux(src, "int4", 3, edit as never);
      await assert.rejects(importNunchakuFlux(src, dst), (e) => {
        assert.ok(e instanceof FormatError, `${what}: ${e}`);
        assert.match(e.message, msg, what);
        assert.equal(e.tensor, tensor, what);
        return true;
      });
      const left = [...Deno.readDirSync(dir)].map((e) => e.name);
      assert.deepEqual(left, ["bad.safetensors"], `${what}: no partial output`);
    }
    // a config passed by the caller stands in for the missing metadata
    const src = `${dir}/bad.safetensors`;
    await writeTinyNunchakuFlux(src, "int4", 3, (_, m) => delete m.config);
    await importNunchakuFlux(src, dst, { config: TINY_FLUX_CONFIG });
    (await QuantFile.open(dst)).close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
