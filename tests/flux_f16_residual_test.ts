/**
 * FLUX's residual streams beyond the f16 range (ARCHITECTURE.md, "FLUX.1", f32 residual): real
 * FLUX.1 weights push the text stream of the double blocks and the joint stream of the single
 * blocks past 65504 (diffusers clips both spots in f16). The tiny fixture is planted to do the
 * same: double block 0's `txt_mlp.2` and single block 0's `linear2_mlp` get a bias of ±BIG in
 * alternating columns (weights ×SCALE), and the gates of those two branches (`txt_mod.lin` chunk
 * 5, `modulation.lin` chunk 2) a bias of +GATE, so the branch outputs stay inside f16 (≈ BIG, the
 * GEMM stores them in the activation dtype) while the residual sums reach ≈ GATE·BIG > 1e5. The
 * f32 forward is finite and its traced streams really exceed 1e5; the f16 forward must be finite
 * and close to it.
 *
 * Bound (f16 vs f32 `out`, max|Δ| / max|out_f32|): the planted streams carry rows dominated by the
 * ±GATE·BIG pattern; f16 rounds the branch outputs (one ulp of BIG = 16) and every GEMM input, the
 * LayerNorm statistics stay in f32 and normalise the rows, so the image tokens see the same f16
 * error as the unplanted model: the existing f16 test's 2e-3 (tests/flux_test.ts) applies.
 *
 * @module
 */
import assert from "node:assert/strict";
import { HAS_GPU, NO_GPU_REASON, relMax, testGpu } from "../gpu/_testing.ts";
import { SafetensorsReader } from "../formats/safetensors.ts";
import type { StoredTensor } from "../runtime/linear.ts";
import { type FluxInputs, FluxTransformer } from "../runtime/flux/transformer.ts";
import { type FluxSource, FluxWeights } from "../runtime/flux/weights.ts";

const ignore = !HAS_GPU; // NO_GPU_REASON explains the skip
if (ignore) console.warn(`FLUX f16 residual test skipped: ${NO_GPU_REASON}`);

const DIR = new URL("./fixtures/flux/", import.meta.url).pathname;
const LOAD = { batch: 2, txtTokens: 8, grid: { h: 4, w: 6 } };
const BIG = 3e4; // planted branch bias: inside f16 (65504)
const SCALE = 100; // planted branch weights
const GATE = 4; // added to the planted gates' bias
const BOUND = 2e-3;

/** The fixture with the two residual-overflowing branches planted (see the module doc). */
function planted(w: FluxWeights): FluxSource {
  const D = w.config.hidden_size;
  const patch = async (name: string): Promise<Float32Array> => {
    const v = await w.float(name);
    if (/^(double_blocks\.0\.txt_mlp\.2|single_blocks\.0\.linear2_mlp)\.weight$/.test(name)) {
      return v.map((x) => x * SCALE);
    }
    if (/^(double_blocks\.0\.txt_mlp\.2|single_blocks\.0\.linear2_mlp)\.bias$/.test(name)) {
      return v.map((x, i) => x * SCALE + (i % 2 ? -BIG : BIG));
    }
    const gate = name === "double_blocks.0.txt_mod.lin.bias"
      ? 5
      : name === "single_blocks.0.modulation.lin.bias"
      ? 2
      : -1;
    if (gate >= 0) return v.map((x, i) => (Math.floor(i / D) === gate ? x + GATE : x));
    return v;
  };
  return {
    path: `${w.path} (planted)`,
    config: w.config,
    policyOf: (base) => w.policyOf(base),
    has: (name) => w.has(name),
    float: patch,
    async linearTensors(base) {
      const out = new Map<string, StoredTensor | Float32Array>();
      out.set("weight", await patch(`${base}.weight`));
      if (w.has(`${base}.bias`)) out.set("bias", await patch(`${base}.bias`));
      return out;
    },
  };
}

async function inputs(): Promise<FluxInputs> {
  const r = await SafetensorsReader.open(`${DIR}flux_tiny_golden.safetensors`);
  try {
    return {
      img: await r.readFloat32("in.img"),
      txt: await r.readFloat32("in.txt"),
      y: await r.readFloat32("in.y"),
      timesteps: await r.readFloat32("in.timesteps"),
      guidance: await r.readFloat32("in.guidance"),
    };
  } finally {
    r.close();
  }
}

const maxAbs = (a: ArrayLike<number>) => Array.from(a).reduce((m, v) => Math.max(m, Math.abs(v)));
const nonFinite = (a: ArrayLike<number>) => Array.from(a).filter((v) => !Number.isFinite(v)).length;

Deno.test({
  name: "FLUX f16 forward stays finite and close to f32 when the residual streams exceed 65504",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    if (!gpu.caps.shaderF16) return; // no f16 path on this device: nothing can overflow
    const inp = await inputs();
    const w = await FluxWeights.open(`${DIR}flux_tiny.safetensors`);
    const src = planted(w);
    let ref: Float32Array, txt32 = 0;
    const f32 = await FluxTransformer.load(gpu, src, { ...LOAD, dtype: "f32" });
    try {
      const trace = await f32.forwardTrace(inp);
      const txt = maxAbs(trace.get("double.0.txt")!), single = maxAbs(trace.get("single.0")!);
      txt32 = txt;
      ref = trace.get("out")!;
      console.log(
        `f32: max|double.0.txt| = ${txt.toExponential(3)}, max|single.0| = ` +
          `${single.toExponential(3)}, max|out| = ${maxAbs(ref).toExponential(3)}`,
      );
      assert.ok(txt > 1e5 && single > 1e5, "the planted streams must exceed 1e5");
      assert.equal(nonFinite(ref), 0, "the f32 forward must stay finite");
      // the f32 image rows after single block 0 exceed the f16 range too (not only the text rows)
      const D = w.config.hidden_size, L = LOAD.txtTokens + LOAD.grid.h * LOAD.grid.w;
      const s0 = trace.get("single.0")!;
      let img = 0;
      for (let r = 0; r < LOAD.batch * L; r++) {
        if (r % L < LOAD.txtTokens) continue;
        img = Math.max(img, maxAbs(s0.subarray(r * D, (r + 1) * D)));
      }
      assert.ok(img > 1e5, `single.0 image rows: max ${img}`);
    } finally {
      f32.destroy();
    }
    const f16 = await FluxTransformer.load(gpu, src, { ...LOAD, dtype: "f16" });
    w.close();
    try {
      const out = await f16.forward(inp);
      const bad = nonFinite(out), e = relMax(out, ref);
      console.log(
        `f16: ${bad} non-finite of ${out.length}, max|Δ|/max|out_f32| = ${e.toExponential(2)}`,
      );
      assert.equal(bad, 0, "the f16 forward must stay finite");
      assert.ok(e <= BOUND, `f16 vs f32: ${e} over ${BOUND}`);
      // the f16 graph carries the stream beyond 65504 (f32 residual), not a clipped copy of it
      const txt = maxAbs((await f16.forwardTrace(inp)).get("double.0.txt")!);
      console.log(`f16: max|double.0.txt| = ${txt.toExponential(3)}`);
      // g·y with g and y rounded to f16 (2⁻¹¹ relative each) dominates: bound 2⁻⁹ (4 of those)
      assert.ok(Math.abs(txt - txt32) <= 2 ** -9 * txt32, `f16 double.0.txt: ${txt} vs ${txt32}`);
    } finally {
      f16.destroy();
    }
  },
});
