/**
 * The GPU autoencoder against the golden outputs of the upstream BFL reference code
 * (tests/fixtures/ae_tiny*.safetensors, see tests/fixtures/README.md): every decoder
 * intermediate, the decoded image, the encoder's latent and the end-to-end decode of a denoised
 * latent. Bound per tensor: max|Δ| ≤ 1e-5·max|golden| in f32 (the fixture's own float32-vs-float64
 * gap is 1e-5 at worst); f16 storage (weights and activations, f32 accumulation): 5e-3·max|golden|,
 * measured 3.5e-4 (dec.conv_in) to 1.6e-3 (enc.z) on llvmpipe (f16 weights alone cost 5e-4 on
 * dec.out, fixture README).
 * The same weights renamed to the diffusers layout (in this test) must give the same image.
 */
import assert from "node:assert/strict";
import { Autoencoder } from "./autoencoder.ts";
import { fileKeys } from "./autoencoder_keys.ts";
import { decodeTiled, tileStarts } from "./autoencoder_tiles.ts";
import { FormatError } from "../gpu/errors.ts";
import { psnr } from "./metrics.ts";
import { SafetensorsReader, SafetensorsWriter } from "../formats/safetensors.ts";
import { HAS_GPU, NO_GPU_REASON, relL2, relMax, Rng, testGpu } from "../gpu/_testing.ts";

const ignore = !HAS_GPU; // NO_GPU_REASON explains the skip
if (ignore) console.warn(`autoencoder tests skipped: ${NO_GPU_REASON}`);

const AE = new URL("../tests/fixtures/ae_tiny.safetensors", import.meta.url).pathname;
const GOLDEN = new URL("../tests/fixtures/ae_tiny_golden.safetensors", import.meta.url).pathname;

async function golden(): Promise<Map<string, { data: Float32Array; shape: number[] }>> {
  const r = await SafetensorsReader.open(GOLDEN);
  const out = new Map<string, { data: Float32Array; shape: number[] }>();
  try {
    for (const [name, info] of r.tensors) {
      out.set(name, { data: await r.readFloat32(name), shape: [...info.shape] });
    }
  } finally {
    r.close();
  }
  return out;
}

function check(name: string, got: ArrayLike<number>, want: ArrayLike<number>, bound: number) {
  const r = relMax(got, want);
  console.log(`${name}: max|Δ|/max|golden| = ${r.toExponential(2)} (bound ${bound})`);
  assert.ok(r <= bound, `${name}: ${r} > ${bound}`);
  return r;
}

const DEC_MAPS = [
  "dec.conv_in",
  "dec.mid.block_1",
  "dec.mid.attn_1",
  "dec.mid",
  "dec.up.1.blocks",
  "dec.up.1.upsample",
  "dec.up.0.blocks",
  "dec.pre_norm_out",
];

for (const dtype of ["f32", "f16"] as const) {
  const bound = dtype === "f32" ? 1e-5 : 5e-3;
  Deno.test({
    name: `autoencoder ${dtype} matches the BFL golden: decode intermediates, decode, encode, e2e`,
    ignore,
    async fn() {
      const gpu = (await testGpu())!;
      if (dtype === "f16" && !gpu.caps.shaderF16) return; // no f16 path on this device
      const g = await golden();
      const ae = await Autoencoder.load(gpu, AE, { dtype });
      try {
        assert.equal(ae.layout, "ldm");
        assert.equal(ae.config.from, "metadata");
        assert.equal(ae.factor, 2);
        const z = g.get("decode.z")!;
        const { image, maps } = await ae.decodeDetailed(z.data, z.shape as never, DEC_MAPS);
        for (const name of DEC_MAPS) {
          check(`${dtype} ${name}`, maps.get(name)!, g.get(name)!.data, bound);
        }
        check(`${dtype} dec.out`, image, g.get("dec.out")!.data, bound);
        const img = g.get("encode.image")!;
        const lat = await ae.encode(img.data, img.shape as never);
        check(`${dtype} enc.z`, lat, g.get("enc.z")!.data, bound);
        const e2e = g.get("e2e.latent")!;
        check(
          `${dtype} e2e.image`,
          await ae.decode(e2e.data, e2e.shape as never),
          g.get("e2e.image")!.data,
          bound,
        );
      } finally {
        ae.destroy();
      }
    },
  });
}

// Tiled decode: each tile's GroupNorms and mid-block attention see only the tile, so tiles differ
// from the one-pass decode by more than rounding. Measured on this fixture (seeds 1-3, latent
// [2, 4, 16, 20], relative L2 / max|Δ|/max): tiles 16 overlap 8: 0.037-0.043 / 0.046-0.051;
// 16/4: 0.048-0.051 / 0.069-0.086; 12/6: 0.089-0.101; 8/4: 0.183-0.190 / 0.21-0.24; 8 with no
// overlap (hard seams): 0.38-0.40 / 0.62-0.73. The bounds below are those figures plus margin, and
// blending must beat hard seams.
Deno.test({
  name: "autoencoder: tiled decode (forced small tiles, blended seams) vs one pass",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    const ae = await Autoencoder.load(gpu, AE, { dtype: "f32", parts: ["decoder"] });
    try {
      const shape = [2, 4, 16, 20] as const;
      const lat = new Rng(1).normals(2 * 4 * 16 * 20);
      const whole = await ae.decode(lat, shape, { tile: "auto" });
      const err: Record<string, number> = {};
      for (
        const [tile, overlap, bound] of [[16, 8, 0.06], [8, 4, 0.25], [8, 0, 1]]
      ) {
        const tiled = await ae.decode(lat, shape, { tile, overlap });
        const l2 = relL2(tiled, whole);
        err[`${tile}/${overlap}`] = l2;
        console.log(
          `tiles ${tile}, overlap ${overlap}: relative L2 ${l2.toExponential(2)}, ` +
            `max|Δ|/max ${relMax(tiled, whole).toExponential(2)}`,
        );
        assert.ok(l2 < bound, `tile ${tile} overlap ${overlap}: relative L2 ${l2} ≥ ${bound}`);
      }
      assert.ok(err["8/4"] < 0.6 * err["8/0"], "blended seams must beat hard seams");
      // One tile as large as the latent is the one-pass decode exactly.
      check("tile = latent size", await ae.decode(lat, shape, { tile: 20, overlap: 2 }), whole, 0);
      // The automatic choice tiles when an activation would exceed the given budget: the largest
      // map of a 16×16 tile is the upsample's [32, 32, 64] f32 (262,144 bytes), so tiles of 16.
      const budget = await ae.decode(lat, shape, { maxActivationBytes: 32 * 32 * 64 * 4 });
      const r = relL2(budget, whole);
      assert.ok(r > 0 && r < 0.06, `auto tiles under a budget: ${r}`);
    } finally {
      ae.destroy();
    }
  },
});

Deno.test("autoencoder: tile blending reproduces a local decoder exactly", async () => {
  // A decoder with no context (nearest 2× upsample, channel sums): tiles must blend to the
  // one-pass result exactly, whatever the tile grid, so any error above is the model's context.
  const up = (x: Float32Array, [b, c, h, w]: readonly number[]) => {
    const y = new Float32Array(b * 3 * 4 * h * w);
    for (let n = 0; n < b; n++) {
      for (let o = 0; o < 3; o++) {
        for (let i = 0; i < 2 * h; i++) {
          for (let j = 0; j < 2 * w; j++) {
            let s = 0;
            for (let k = 0; k < c; k++) {
              s += (k + o + 1) * x[((n * c + k) * h + (i >> 1)) * w + (j >> 1)];
            }
            y[((n * 3 + o) * 2 * h + i) * 2 * w + j] = s;
          }
        }
      }
    }
    return Promise.resolve(y);
  };
  const lat = new Rng(3).normals(2 * 4 * 11 * 13);
  const shape = [2, 4, 11, 13] as const;
  const whole = await up(lat, shape);
  for (const [tile, overlap] of [[4, 1], [5, 2], [8, 3], [3, 0]]) {
    const tiled = await decodeTiled(lat, shape, {
      tile,
      overlap,
      factor: 2,
      outChannels: 3,
      decodeTile: up,
    });
    assert.ok(
      relMax(tiled, whole) < 1e-6,
      `tile ${tile} overlap ${overlap}: ${relMax(tiled, whole)}`,
    );
  }
  assert.deepEqual(tileStarts(13, 5, 2), [0, 3, 6, 8]);
  assert.deepEqual(tileStarts(4, 5, 2), [0]);
});

/** Write the fixture's tensors under their diffusers names (linear attention weights). */
async function writeDiffusers(path: string, oldAttn: boolean): Promise<void> {
  const r = await SafetensorsReader.open(AE);
  const cfg = JSON.parse(r.metadata.model_config);
  const levels = cfg.ch_mult.length;
  try {
    const tensors = [];
    for (const [name, info] of r.tensors) {
      const keys = fileKeys(name, "diffusers", levels);
      let key = keys[oldAttn && keys.length > 1 ? 1 : 0];
      if (key === name && /\.mid\./.test(name)) throw new Error(`not renamed: ${name}`);
      const attnLinear = /mid_block\.attentions\.0\.(to_|query|key|value|proj_attn)/.test(key) &&
        key.endsWith(".weight");
      const shape = attnLinear ? info.shape.slice(0, 2) : [...info.shape];
      key = `vae.${key}`; // a prefix, as in some bundled checkpoints
      tensors.push({
        name: key,
        src: name,
        dtype: info.dtype,
        shape,
        byteLength: info.end - info.begin,
      });
    }
    // No metadata: the config comes from config.json beside the file.
    const w = await SafetensorsWriter.create(path, { tensors });
    for (const t of tensors) await w.write(t.name, await r.readRaw(t.src));
    await w.commit();
  } finally {
    r.close();
  }
}

/**
 * Write a copy of the fixture {@linkcode AE} to `path`, changed: tensors `keep` rejects dropped,
 * each tensor's bytes passed through `edit`, the F32 tensors `extra` appended, and the metadata
 * replaced by `metadata` (default the fixture's).
 */
async function writeAeVariant(path: string, opts: {
  keep?: (name: string) => boolean;
  edit?: (name: string, raw: Uint8Array) => Uint8Array;
  extra?: [name: string, shape: number[], values: Float32Array][];
  metadata?: Record<string, string>;
}): Promise<void> {
  const r = await SafetensorsReader.open(AE);
  const keep = [...r.tensors.values()].filter((t) => opts.keep?.(t.name) ?? true);
  const extra = opts.extra ?? [];
  const w = await SafetensorsWriter.create(path, {
    tensors: [
      ...keep.map((t) => ({
        name: t.name,
        dtype: t.dtype,
        shape: [...t.shape],
        byteLength: t.end - t.begin,
      })),
      ...extra.map(([name, shape, v]) => ({
        name,
        dtype: "F32" as const,
        shape,
        byteLength: v.byteLength,
      })),
    ],
    metadata: opts.metadata ?? r.metadata,
  });
  for (const t of keep) {
    const raw = await r.readRaw(t.name);
    await w.write(t.name, opts.edit ? opts.edit(t.name, raw) : raw);
  }
  for (const [name, , v] of extra) await w.write(name, new Uint8Array(v.buffer));
  await w.commit();
  r.close();
}

Deno.test({
  name: "autoencoder: the diffusers layout (renamed weights, config.json) decodes the same image",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    const dir = await Deno.makeTempDir();
    try {
      const g = await golden();
      const z = g.get("decode.z")!;
      for (const oldAttn of [false, true]) {
        await writeDiffusers(`${dir}/diffusion_pytorch_model.safetensors`, oldAttn);
        await Deno.writeTextFile(
          `${dir}/config.json`,
          JSON.stringify({
            _class_name: "AutoencoderKL",
            in_channels: 3,
            out_channels: 3,
            block_out_channels: [32, 64],
            layers_per_block: 1,
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.3611,
            shift_factor: 0.1159,
          }),
        );
        const ae = await Autoencoder.load(gpu, dir, { dtype: "f32" });
        try {
          assert.equal(ae.layout, "diffusers");
          assert.equal(ae.config.from, "config.json");
          check(
            `diffusers${oldAttn ? " (old attention names)" : ""} dec.out`,
            await ae.decode(z.data, z.shape as never),
            g.get("dec.out")!.data,
            1e-5,
          );
        } finally {
          ae.destroy();
        }
        // Without config.json: inferred from the shapes; scale/shift from the preset.
        await Deno.remove(`${dir}/config.json`);
        const ae2 = await Autoencoder.load(gpu, `${dir}/diffusion_pytorch_model.safetensors`, {
          dtype: "f32",
          preset: "flux",
          parts: ["decoder"],
        });
        try {
          assert.match(ae2.config.from, /shapes/);
          assert.deepEqual([ae2.config.ch, ...ae2.config.chMult, ae2.config.numResBlocks], [
            32,
            1,
            2,
            1,
          ]);
          check(
            "diffusers, config from shapes, dec.out",
            await ae2.decode(z.data, z.shape as never),
            g.get("dec.out")!.data,
            1e-5,
          );
          await assert.rejects(() => ae2.encode(new Float32Array(3 * 8 * 8), [1, 3, 8, 8]), {
            name: "TypeError",
            message: /loaded without its encoder/,
          });
        } finally {
          ae2.destroy();
        }
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "autoencoder: clear errors for a missing tensor, a non-autoencoder file, bad shapes",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    const dir = await Deno.makeTempDir();
    try {
      // Drop one tensor: a FormatError names it.
      await writeAeVariant(`${dir}/ae.safetensors`, {
        keep: (name) => name !== "decoder.up.1.block.0.conv2.bias",
      });
      await assert.rejects(
        () => Autoencoder.load(gpu, `${dir}/ae.safetensors`, { dtype: "f32" }),
        (e) => e instanceof FormatError && /decoder\.up\.1\.block\.0\.conv2\.bias/.test(e.message),
      );
      await assert.rejects(
        () =>
          Autoencoder.load(
            gpu,
            new URL("../tests/fixtures/tiny_dit.safetensors", import.meta.url).pathname,
          ),
        (e) => e instanceof FormatError && /not an AutoencoderKL checkpoint/.test(e.message),
      );
      const ae = await Autoencoder.load(gpu, AE, { dtype: "f32", parts: ["decoder"] });
      try {
        await assert.rejects(() => ae.decode(new Float32Array(10), [1, 4, 2, 2]), {
          name: "TypeError",
          message: /has 10 values, expected \[1,4,2,2\]/,
        });
        await assert.rejects(() => ae.decode(new Float32Array(16), [1, 16, 1, 1]), {
          name: "TypeError",
          message: /must be \[B, C=4, H, W\]/,
        });
      } finally {
        ae.destroy();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "autoencoder: quant_conv / post_quant_conv (SD VAEs) are applied where LDM applies them",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    const dir = await Deno.makeTempDir();
    try {
      // The fixture plus quant_conv = 2·I + b (8 ch) and post_quant_conv = 2·I (4 ch), 1×1.
      const eye = (c: number, k: number) => {
        const w = new Float32Array(c * c);
        for (let i = 0; i < c; i++) w[i * c + i] = k;
        return w;
      };
      const qb = Float32Array.from({ length: 8 }, (_, i) => 0.1 * (i - 3));
      const extra: [string, number[], Float32Array][] = [
        ["quant_conv.weight", [8, 8, 1, 1], eye(8, 2)],
        ["quant_conv.bias", [8], qb],
        ["post_quant_conv.weight", [4, 4, 1, 1], eye(4, 2)],
        ["post_quant_conv.bias", [4], new Float32Array(4)],
      ];
      await writeAeVariant(`${dir}/sd_like.safetensors`, { extra });
      const g = await golden();
      const plain = await Autoencoder.load(gpu, AE, { dtype: "f32" });
      const sd = await Autoencoder.load(gpu, `${dir}/sd_like.safetensors`, { dtype: "f32" });
      try {
        const { scale: s, shift: t } = sd.config;
        // decode: post_quant_conv doubles z/s + t, so decoding z equals plain-decoding z'.
        const z = g.get("decode.z")!;
        const z2 = z.data.map((v) => s * (2 * (v / s + t) - t));
        check(
          "post_quant_conv",
          await sd.decode(z.data, z.shape as never),
          await plain.decode(z2, z.shape as never),
          1e-6,
        );
        // encode: the mean becomes 2·mean + b.
        const img = g.get("encode.image")!;
        const a = await plain.encode(img.data, img.shape as never);
        const hw = a.length / 4;
        const want = a.map((v, i) => s * (2 * (v / s + t) + qb[Math.floor(i / hw)] - t));
        check("quant_conv", await sd.encode(img.data, img.shape as never), want, 1e-6);
      } finally {
        plain.destroy();
        sd.destroy();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

// INT8 weights (per-output-channel, 3×3 convs): measured on llvmpipe, decoding e2e.latent, PSNR of
// the INT8-weight image vs the same dtype's 16/32-bit-weight image 49.5 dB (f16 and f32 alike),
// vs the golden 49.5 dB (the f16-weight decode itself is 71.8 dB from the golden).
Deno.test({
  name: "autoencoder: INT8 decoder weights keep the decoded image (PSNR vs f16 weights ≥ 40 dB)",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    const dtype = gpu.caps.shaderF16 ? "f16" : "f32";
    const g = await golden();
    const lat = g.get("e2e.latent")!;
    const a = await Autoencoder.load(gpu, AE, { dtype, parts: ["decoder"] });
    const b = await Autoencoder.load(gpu, AE, { dtype, parts: ["decoder"], weights: "int8" });
    try {
      const ia = await a.decode(lat.data, lat.shape as never);
      const ib = await b.decode(lat.data, lat.shape as never);
      const p = psnr(ib, ia);
      console.log(
        `${dtype} activations: INT8 weights vs ${dtype} weights ${p.toFixed(1)} dB, vs golden ` +
          `${psnr(ib, g.get("e2e.image")!.data).toFixed(1)} dB`,
      );
      assert.ok(p >= 40, `PSNR ${p}`);
    } finally {
      a.destroy();
      b.destroy();
    }
  },
});

Deno.test({
  name:
    "autoencoder: an LDM-layout file without metadata (as FLUX's ae.safetensors) gets its config from the shapes",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    const dir = await Deno.makeTempDir();
    try {
      await writeAeVariant(`${dir}/ae.safetensors`, { metadata: { format: "pt" } });
      const plain = await Autoencoder.load(gpu, `${dir}/ae.safetensors`, {
        dtype: "f32",
        parts: ["decoder"],
      });
      try {
        // 4 latent channels: the SD preset unless told otherwise.
        assert.equal(plain.config.from, "shapes (preset sd)");
        assert.deepEqual([plain.config.scale, plain.config.shift], [0.18215, 0]);
        assert.deepEqual(
          [plain.config.ch, plain.config.chMult, plain.config.numResBlocks, plain.config.zChannels],
          [32, [1, 2], 1, 4],
        );
      } finally {
        plain.destroy();
      }
      const ae = await Autoencoder.load(gpu, `${dir}/ae.safetensors`, {
        dtype: "f32",
        preset: "flux",
      });
      try {
        const g = await golden();
        const z = g.get("decode.z")!;
        check(
          "ldm, config from shapes, dec.out",
          await ae.decode(z.data, z.shape as never),
          g.get("dec.out")!.data,
          1e-5,
        );
        const img = g.get("encode.image")!;
        check(
          "ldm, config from shapes, enc.z",
          await ae.encode(img.data, img.shape as never),
          g.get("enc.z")!.data,
          1e-5,
        );
      } finally {
        ae.destroy();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "autoencoder: an f16 activation overflow decodes again in f32 (or, asked, is a clear error)",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    if (!gpu.caps.shaderF16) return; // no f16 path on this device
    const dir = await Deno.makeTempDir();
    try {
      // The fixture with conv_in's weights ×1e5: its output (|x| ~ 1e5) exceeds f16's 65504.
      await writeAeVariant(`${dir}/ae.safetensors`, {
        edit: (name, raw) =>
          name === "decoder.conv_in.weight"
            ? new Uint8Array(new Float32Array(raw.slice().buffer).map((x) => x * 1e5).buffer)
            : raw,
      });
      const g = await golden();
      const z = g.get("decode.z")!;
      const strict = await Autoencoder.load(gpu, `${dir}/ae.safetensors`, {
        dtype: "f16",
        parts: ["decoder"],
        overflow: "error",
      });
      try {
        await assert.rejects(() => strict.decode(z.data, z.shape as never), {
          name: "RangeError",
          message: /overflowed f16: load the autoencoder with dtype "f32"/,
        });
      } finally {
        strict.destroy();
      }
      const ae32 = await Autoencoder.load(gpu, `${dir}/ae.safetensors`, {
        dtype: "f32",
        parts: ["decoder"],
      });
      let want: Float32Array;
      try {
        want = await ae32.decode(z.data, z.shape as never);
        assert.ok(want.every(Number.isFinite));
      } finally {
        ae32.destroy();
      }
      // the default: the latents are decoded again in f32 (same result as an f32 load), once warned
      const warnings: string[] = [];
      const ae = await Autoencoder.load(gpu, `${dir}/ae.safetensors`, {
        dtype: "f16",
        parts: ["decoder"],
        onWarning: (m) => warnings.push(m),
      });
      try {
        assert.deepEqual(await ae.decode(z.data, z.shape as never), want);
        assert.equal(ae.dtype, "f32");
        assert.deepEqual(await ae.decode(z.data, z.shape as never), want);
        assert.equal(warnings.length, 1, warnings.join("\n"));
        assert.match(warnings[0], /f16 activations overflowed .*decoding in f32 from now on/);
      } finally {
        ae.destroy();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
