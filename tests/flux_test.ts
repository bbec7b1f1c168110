/**
 * The FLUX transformer on the GPU against the upstream reference's goldens
 * (tests/fixtures/flux/, from black-forest-labs/flux; README there), with the bounds the
 * fixture's README states: f32 within 1e-4 of max|golden| on `out` and every `mid.*` tensor, 5e-4
 * absolute on the sinusoidal embeddings; and, since our embeddings are built in double, within
 * 1e-5 of the float64 run (`ref64.*`). Also: the RoPE table, the 4-step denoise loop with its
 * timestep list, 2×2 packing, the diffusers layout (the same weights renamed by the documented
 * mapping give the same output) and f16 with a measured bound.
 *
 * @module
 */
import assert from "node:assert/strict";
import { HAS_GPU, maxErrors, NO_GPU_REASON, relMax, testGpu } from "../gpu/_testing.ts";
import { SafetensorsReader } from "../formats/safetensors.ts";
import { jointIds, packLatents, ropeTable, unpackLatents } from "../runtime/flux/embed.ts";
import { type FluxInputs, FluxTransformer } from "../runtime/flux/transformer.ts";
import { FluxWeights } from "../runtime/flux/weights.ts";
import { bflToDiffusers } from "./fixtures/flux_convert.ts";
import { flowEuler, fluxShift } from "../runtime/schedulers.ts";

const ignore = !HAS_GPU; // NO_GPU_REASON explains the skip
if (ignore) console.warn(`FLUX GPU tests skipped: ${NO_GPU_REASON}`);

const DIR = new URL("./fixtures/flux/", import.meta.url).pathname;
const MODEL = `${DIR}flux_tiny.safetensors`;

async function golden(): Promise<Map<string, Float32Array>> {
  const r = await SafetensorsReader.open(`${DIR}flux_tiny_golden.safetensors`);
  const out = new Map<string, Float32Array>();
  for (const name of r.tensors.keys()) out.set(name, await r.readFloat32(name));
  r.close();
  return out;
}

function inputs(g: Map<string, Float32Array>): FluxInputs {
  return {
    img: g.get("in.img")!,
    txt: g.get("in.txt")!,
    y: g.get("in.y")!,
    timesteps: g.get("in.timesteps")!,
    guidance: g.get("in.guidance")!,
  };
}

const LOAD = { batch: 2, txtTokens: 8, grid: { h: 4, w: 6 } };

Deno.test("FLUX config is read from the fixture's metadata", async () => {
  const w = await FluxWeights.open(MODEL);
  try {
    assert.equal(w.layout, "bfl");
    assert.deepEqual(
      { ...w.config },
      {
        in_channels: 16,
        out_channels: 16,
        vec_in_dim: 32,
        context_in_dim: 48,
        hidden_size: 64,
        mlp_ratio: 4,
        num_heads: 2,
        depth: 2,
        depth_single_blocks: 2,
        axes_dim: [4, 14, 14],
        theta: 10000,
        qkv_bias: true,
        guidance_embed: true,
      },
    );
  } finally {
    w.close();
  }
});

Deno.test("FLUX RoPE table equals the reference's mid.pe", async () => {
  const g = await golden();
  const pe = g.get("mid.pe")!; // [2, 1, 32, 16, 2, 2]
  const table = ropeTable(jointIds(8, 4, 6), [4, 14, 14], 10000); // [32, 16, 2]
  let err = 0;
  for (let b = 0; b < 2; b++) {
    for (let i = 0; i < 32 * 16; i++) {
      const m = (b * 32 * 16 + i) * 4;
      err = Math.max(
        err,
        Math.abs(table[2 * i] - pe[m]), // cos
        Math.abs(table[2 * i + 1] - pe[m + 2]), // sin
        Math.abs(-table[2 * i + 1] - pe[m + 1]),
        Math.abs(table[2 * i] - pe[m + 3]),
      );
    }
  }
  console.log(`RoPE table vs mid.pe: max abs ${err.toExponential(2)}`);
  assert.ok(err <= 2e-7, `RoPE table differs from mid.pe by ${err}`);
});

Deno.test("FLUX packing and the timestep schedule match the reference", async () => {
  const g = await golden();
  const packed = packLatents(g.get("in.latent")!, 2, 4, 8, 12);
  assert.deepEqual(packed, g.get("in.img"));
  assert.deepEqual(unpackLatents(g.get("denoise.final")!, 2, 4, 8, 12), g.get("denoise.unpacked"));
  assert.deepEqual(packLatents(g.get("denoise.noise")!, 2, 4, 8, 12), g.get("denoise.img"));
  const sigmas = flowEuler({ steps: 4, shift: fluxShift(24) }).sigmas;
  const want = g.get("denoise.timesteps")!;
  // the reference evaluates the shift in float32 arithmetic, ours in double: within one f32 ulp
  for (let i = 0; i < 5; i++) {
    const d = Math.abs(sigmas[i] - want[i]);
    assert.ok(
      d <= 2 ** -23 * Math.max(want[i], 2 ** -10),
      `timestep ${i}: ${sigmas[i]} vs ${want[i]}`,
    );
  }
  // schnell: unshifted
  assert.deepEqual(flowEuler({ steps: 4 }).sigmas, [1, 0.75, 0.5, 0.25, 0]);
});

Deno.test({
  name: "FLUX f32 forward matches the reference: embeddings, every block, output",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    const g = await golden();
    const w = await FluxWeights.open(MODEL);
    const model = await FluxTransformer.load(gpu, w, { ...LOAD, dtype: "f32" });
    w.close();
    try {
      // host embeddings in double
      for (let b = 0; b < 2; b++) {
        const c = model.conditioning(
          g.get("in.timesteps")![b],
          g.get("in.y")!.subarray(b * 32, b * 32 + 32),
          g.get("in.guidance")![b],
        );
        const part = (name: string, n: number) => g.get(name)!.subarray(b * n, (b + 1) * n);
        assert.ok(maxErrors(c.timeEmb, part("mid.time_emb", 256)).maxAbs <= 5e-4, "time_emb");
        assert.ok(
          maxErrors(c.guidanceEmb!, part("mid.guidance_emb", 256)).maxAbs <= 5e-4,
          "guidance_emb",
        );
        assert.ok(
          maxErrors(c.timeEmb, part("ref64.mid.time_emb", 256)).maxAbs <= 1e-7,
          "time_emb vs ref64",
        );
        assert.ok(
          maxErrors(c.guidanceEmb!, part("ref64.mid.guidance_emb", 256)).maxAbs <= 1e-7,
          "guidance_emb vs ref64",
        );
        for (
          const [mine, name] of [[c.timeIn, "mid.time_in"], [c.guidanceIn!, "mid.guidance_in"], [
            c.vectorIn,
            "mid.vector_in",
          ], [c.vec, "mid.vec"]] as const
        ) {
          const e = relMax(mine, part(name, 64));
          assert.ok(e <= 1e-4, `${name}: ${e}`);
        }
        const e64 = relMax(c.vec, part("ref64.mid.vec", 64));
        assert.ok(e64 <= 1e-6, `vec vs ref64: ${e64}`);
      }
      const trace = await model.forwardTrace(inputs(g));
      const pairs: [string, string][] = [
        ["img_in", "mid.img_in"],
        ["txt_in", "mid.txt_in"],
        ["double.0.img", "mid.double.0.img"],
        ["double.0.txt", "mid.double.0.txt"],
        ["double.1.img", "mid.double.1.img"],
        ["double.1.txt", "mid.double.1.txt"],
        ["single.0", "mid.single.0"],
        ["single.1", "mid.single.1"],
        ["final_in", "mid.final_in"],
        ["out", "out"],
      ];
      for (const [mine, theirs] of pairs) {
        const e = relMax(trace.get(mine)!, g.get(theirs)!);
        console.log(`${theirs}: max|Δ|/max|golden| = ${e.toExponential(2)}`);
        assert.ok(e <= 1e-4, `${theirs}: ${e} over 1e-4`);
      }
      const e64 = relMax(trace.get("out")!, g.get("ref64.out")!);
      console.log(`out vs ref64.out: ${e64.toExponential(2)}`);
      assert.ok(e64 <= 1e-5, `out vs ref64.out: ${e64}`);
      // forward() agrees with the traced run
      assert.deepEqual(await model.forward(inputs(g)), trace.get("out"));
    } finally {
      model.destroy();
    }
  },
});

Deno.test({
  name: "FLUX 4-step denoise loop matches the reference",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    const g = await golden();
    const w = await FluxWeights.open(MODEL);
    const model = await FluxTransformer.load(gpu, w, { ...LOAD, dtype: "f32" });
    w.close();
    try {
      const sampler = flowEuler({ steps: 4, shift: fluxShift(24) });
      let img = g.get("denoise.img")!;
      for (let i = 0; i < 4; i++) {
        const t = Math.fround(sampler.sigmas[i]);
        const pred = await model.forward({
          img,
          txt: g.get("in.txt")!,
          y: g.get("in.y")!,
          timesteps: [t, t],
          guidance: [3.5, 3.5],
        });
        const e = relMax(pred, g.get(`denoise.pred.${i}`)!);
        console.log(`denoise.pred.${i}: ${e.toExponential(2)}`);
        assert.ok(e <= 1e-4, `denoise.pred.${i}: ${e}`);
        img = sampler.step(i, img, pred);
      }
      const e = relMax(img, g.get("denoise.final")!);
      const e64 = relMax(img, g.get("ref64.denoise.final")!);
      console.log(`denoise.final: ${e.toExponential(2)}, vs ref64: ${e64.toExponential(2)}`);
      assert.ok(e <= 1e-4 && e64 <= 1e-5, `denoise.final ${e}, vs ref64 ${e64}`);
    } finally {
      model.destroy();
    }
  },
});

Deno.test({
  name: "FLUX in the diffusers layout (renamed, sharded) gives the same output",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    const g = await golden();
    const dir = await Deno.makeTempDir({ prefix: "flux_diffusers_" });
    try {
      await bflToDiffusers(MODEL, dir);
      const w = await FluxWeights.open(dir);
      assert.equal(w.layout, "diffusers");
      const model = await FluxTransformer.load(gpu, w, { ...LOAD, dtype: "f32" });
      w.close();
      const ref = await FluxWeights.open(MODEL);
      const bfl = await FluxTransformer.load(gpu, ref, { ...LOAD, dtype: "f32" });
      ref.close();
      try {
        const a = await model.forward(inputs(g)), b = await bfl.forward(inputs(g));
        assert.deepEqual(a, b);
      } finally {
        model.destroy();
        bfl.destroy();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "FLUX f16 forward stays within its measured bound",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    if (!gpu.caps.shaderF16) return; // f32 covers devices without shader-f16
    const g = await golden();
    const w = await FluxWeights.open(MODEL);
    const model = await FluxTransformer.load(gpu, w, { ...LOAD, dtype: "f16" });
    w.close();
    try {
      const e = relMax(await model.forward(inputs(g)), g.get("out")!);
      console.log(`f16 out: max|Δ|/max|golden| = ${e.toExponential(2)}`);
      // f16 weights alone give 5.2e-4 (fixture README); f16 activations and accumulation
      // between the kernels add the rest. Bound: 4× the f16-weights figure.
      assert.ok(e <= 2e-3, `f16 out: ${e}`);
    } finally {
      model.destroy();
    }
  },
});
