/**
 * The bundled default model, end to end: the committed INT4 SVDQuant file generates images close
 * to the float model's (same seeds), and SVDQuant beats plain W4A4 round-to-nearest when both are
 * quantized here from the same calibration.
 */
import assert from "node:assert/strict";
import { HAS_GPU, NO_GPU_REASON, testGpu } from "../gpu/_testing.ts";
import { CalibRecorder } from "../quant/calib.ts";
import { quantizeCheckpoint } from "../convert/model.ts";
import { psnr } from "../runtime/metrics.ts";
import { Pipeline } from "../runtime/pipeline.ts";
import { FLOAT_MODEL } from "../cli/_models.ts";

const INT4_MODEL = FLOAT_MODEL.replace(/\.safetensors$/, ".int4.safetensors");
const present = await Deno.stat(FLOAT_MODEL).then(() => true, () => false);
const ignore = !HAS_GPU || !present;
if (!HAS_GPU) console.warn(`bundled model tests skipped: ${NO_GPU_REASON}`);
if (!present) console.warn(`bundled model tests skipped: ${FLOAT_MODEL} is not in this checkout`);

const CLASSES = [0, 13], SEED = 3, STEPS = 10, CFG = 4;

/**
 * The images of CLASSES.length classes in one batched call (image i: noise stream i of SEED),
 * and how attention ran.
 */
async function generate(path: string, attention: "dense" | "sparse" = "dense") {
  const pipe = await Pipeline.load((await testGpu())!, path, {
    images: CLASSES.length,
    attention,
  });
  try {
    const { images } = await pipe.generate({
      classes: CLASSES,
      seed: SEED,
      steps: STEPS,
      cfg: CFG,
    });
    const per = images.length / CLASSES.length;
    const split = CLASSES.map((_, i) => images.slice(i * per, (i + 1) * per));
    return { images: split, attention: pipe.model.attention };
  } finally {
    pipe.destroy();
  }
}

async function images(path: string): Promise<Float32Array[]> {
  return (await generate(path)).images;
}

const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;

Deno.test({
  name: "bundled model: INT4 SVDQuant images stay close to float; SVDQuant beats RTN W4A4",
  ignore,
  fn: async () => {
    const float = await images(FLOAT_MODEL);
    const int4 = await images(INT4_MODEL);
    const committed = mean(int4.map((im, i) => psnr(im, float[i])));

    // SVDQuant vs RTN from one small calibration run (1 class, few steps: quick, same for both)
    const dir = await Deno.makeTempDir();
    try {
      const recorder = new CalibRecorder({ buckets: 2, maxSamples: 128, seed: 1 });
      const pipe = await Pipeline.load((await testGpu())!, FLOAT_MODEL, { dtype: "f32" });
      try {
        await pipe.generate({
          classes: [0],
          seed: 99,
          steps: 4,
          cfg: CFG,
          calibration: { recorder, buckets: 2 },
        });
      } finally {
        pipe.destroy();
      }
      const calib = recorder.stats();
      const psnrOf = async (method: "svdquant" | "rtn") => {
        const path = `${dir}/${method}.safetensors`;
        await quantizeCheckpoint(FLOAT_MODEL, path, { method, calib, alphas: [0.5], rounds: 1 });
        const ims = await images(path);
        return mean(ims.map((im, i) => psnr(im, float[i])));
      };
      const svd = await psnrOf("svdquant"), rtn = await psnrOf("rtn");
      console.log(
        `PSNR vs float (${CLASSES.length} images, ${STEPS} steps): committed INT4 ${
          committed.toFixed(2)
        } dB, ` +
          `quick SVDQuant ${svd.toFixed(2)} dB, RTN W4A4 ${rtn.toFixed(2)} dB`,
      );
      // Bars, measured first (llvmpipe, 2026-11-23, 2400-step model: committed INT4 26.07 dB,
      // quick SVDQuant 27.96 dB, RTN 20.81 dB; 6400-step model: 25.63, 26.69, 19.42 dB; 10,000:
      // 24.50, 25.58, 18.96 dB; 14,000: 24.55, 22.49, 17.85 dB), then stated with headroom:
      // ≥ 22 dB, and SVDQuant ≥ 3 dB over RTN.
      assert.ok(committed >= 22, `committed INT4 PSNR ${committed.toFixed(2)} dB < 22 dB`);
      assert.ok(svd > rtn + 3, `SVDQuant ${svd.toFixed(2)} dB vs RTN ${rtn.toFixed(2)} dB`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "bundled model: the committed INT4 file's sparse-attention plan runs and stays close",
  ignore,
  fn: async () => {
    const dense = await generate(INT4_MODEL), sparse = await generate(INT4_MODEL, "sparse");
    assert.match(sparse.attention, /^sparse qk=int8 pv=f16 tile=8 density=0\.50/);
    const p = mean(sparse.images.map((im, i) => psnr(im, dense.images[i])));
    console.log(`PSNR of sparse (INT8 Q·Kᵀ, 50% of tiles) vs dense attention: ${p.toFixed(2)} dB`);
    // Bar: measured 20.54 dB (llvmpipe, 2026-11-23; 19.52 dB on the 14,000-step model), stated
    // with headroom: ≥ 18 dB. The issue's
    // goal (≥ 30 dB at 50% density) is not met on this 64-token model: its attention is spread
    // over the whole 8×8 grid (the kept half of the tiles holds ~73% of the mass; README table).
    assert.ok(p >= 18, `sparse vs dense PSNR ${p.toFixed(2)} dB`);
  },
});
