/**
 * Autoencoder decode time with random weights, end to end as `Autoencoder.decode` runs it (latent
 * upload, the GPU pass, readback, NCHW conversions): the SD-VAE (DiT-XL/2's, 4 latent channels)
 * at 256² and 512², the FLUX.1 autoencoder (16 channels) at 512² and 1024², and the TAESD-shaped
 * tiny decoder (64 channels) at 1024². With `--small`, a small autoencoder that finishes on a
 * software adapter. The random weights are written to a temporary safetensors file (F16) first.
 *
 * ```sh
 * deno task bench:ae [--small] [--reps 3] [--f32]
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { getGpu, type Gpu } from "../gpu/device.ts";
import { Autoencoder } from "../runtime/autoencoder.ts";
import { AE_PRESETS, type AeConfig } from "../runtime/autoencoder_keys.ts";
import { layerNames } from "../runtime/autoencoder_weights.ts";
import { TinyDecoder } from "../runtime/tiny_autoencoder.ts";
import { fromFloat32, SafetensorsWriter } from "../formats/safetensors.ts";
import type { ActDtype } from "../kernels/_wgsl.ts";
import { runCli } from "../cli/_cli.ts";

/** The SD / SDXL VAE's shape (also DiT-XL/2's decoder). */
export const SD_VAE: Omit<AeConfig, "from"> = {
  inChannels: 3,
  outChannels: 3,
  ch: 128,
  chMult: [1, 2, 4, 4],
  numResBlocks: 2,
  ...AE_PRESETS.sd,
};

/** The FLUX.1 autoencoder's shape. */
export const FLUX_AE: Omit<AeConfig, "from"> = { ...SD_VAE, ...AE_PRESETS.flux };

/** A small autoencoder for software adapters. */
export const SMALL_AE: Omit<AeConfig, "from"> = { ...SD_VAE, ch: 32, chMult: [1, 2] };

function fill(n: number, std: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) { // xorshift, uniform with the given std
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    a[i] = ((s >>> 0) / 4294967296 - 0.5) * std * 3.4641;
  }
  return a;
}

/** Write a random decoder of `cfg` (LDM layout, F16, metadata config) to `path`. */
export async function writeRandomAe(path: string, cfg: Omit<AeConfig, "from">): Promise<void> {
  const { convs, norms, attns } = layerNames({ ...cfg, from: "" }, "decoder");
  const L = cfg.chMult.length, top = cfg.ch * cfg.chMult[L - 1];
  const shapes = new Map<string, number[]>();
  // Channel counts follow the decoder walk of autoencoder_weights.ts.
  const conv = (n: string, cout: number, cin: number, ks: number) => {
    shapes.set(`${n}.weight`, [cout, cin, ks, ks]);
    shapes.set(`${n}.bias`, [cout]);
  };
  const norm = (n: string, c: number) => {
    shapes.set(`${n}.weight`, [c]);
    shapes.set(`${n}.bias`, [c]);
  };
  const resnet = (b: string, cin: number, cout: number) => {
    norm(`${b}.norm1`, cin);
    conv(`${b}.conv1`, cout, cin, 3);
    norm(`${b}.norm2`, cout);
    conv(`${b}.conv2`, cout, cout, 3);
    if (cin !== cout) conv(`${b}.nin_shortcut`, cout, cin, 1);
  };
  conv("decoder.conv_in", top, cfg.zChannels, 3);
  resnet("decoder.mid.block_1", top, top);
  resnet("decoder.mid.block_2", top, top);
  norm("decoder.mid.attn_1.norm", top);
  for (const p of ["q", "k", "v", "proj_out"]) conv(`decoder.mid.attn_1.${p}`, top, top, 1);
  let cin = top;
  for (let i = L - 1; i >= 0; i--) {
    const cout = cfg.ch * cfg.chMult[i];
    for (let j = 0; j <= cfg.numResBlocks; j++) {
      resnet(`decoder.up.${i}.block.${j}`, cin, cout);
      cin = cout;
    }
    if (i !== 0) conv(`decoder.up.${i}.upsample.conv`, cout, cout, 3);
  }
  norm("decoder.norm_out", cfg.ch);
  conv("decoder.conv_out", cfg.outChannels, cfg.ch, 3);
  const expected = convs.length + norms.length + 3 * attns.length;
  if (shapes.size / 2 !== expected) {
    throw new Error(`random autoencoder: ${shapes.size / 2} layers, the loader wants ${expected}`);
  }
  const names = [...shapes.keys()];
  const w = await SafetensorsWriter.create(path, {
    tensors: names.map((name) => ({
      name,
      dtype: "F16" as const,
      shape: shapes.get(name)!,
      byteLength: 2 * shapes.get(name)!.reduce((a, b) => a * b, 1),
    })),
    metadata: {
      model_config: JSON.stringify({
        in_channels: cfg.inChannels,
        out_ch: cfg.outChannels,
        ch: cfg.ch,
        ch_mult: cfg.chMult,
        num_res_blocks: cfg.numResBlocks,
        z_channels: cfg.zChannels,
        scale_factor: cfg.scale,
        shift_factor: cfg.shift,
      }),
    },
  });
  let seed = 1;
  for (const name of names) {
    const s = shapes.get(name)!;
    const n = s.reduce((a, b) => a * b, 1);
    const isNormW = s.length === 1 && /norm.*\.weight$/.test(name);
    const v = s.length === 1
      ? (isNormW ? fill(n, 0.1, seed++).map((x) => 1 + x) : fill(n, 0.05, seed++))
      : fill(n, 1 / Math.sqrt(n / s[0]), seed++);
    await w.write(name, fromFloat32("F16", v));
  }
  await w.commit();
}

/** Mean and min ms of `reps` decodes of a `[1, z, h, w]` latent after one warm-up. */
export async function timeDecode(
  decode: (x: Float32Array, s: [number, number, number, number]) => Promise<Float32Array>,
  z: number,
  h: number,
  w: number,
  reps: number,
): Promise<{ ms: number; minMs: number }> {
  const x = fill(z * h * w, 1, 7);
  await decode(x, [1, z, h, w]);
  const t: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await decode(x, [1, z, h, w]);
    t.push(performance.now() - t0);
  }
  return { ms: t.reduce((a, b) => a + b, 0) / reps, minMs: Math.min(...t) };
}

/**
 * Decode time of a random autoencoder of `cfg` at each latent side in `sides` (square), printed
 * and returned.
 */
export async function benchAutoencoder(
  gpu: Gpu,
  opts: {
    label: string;
    config: Omit<AeConfig, "from">;
    sides: number[];
    dtype: ActDtype;
    reps: number;
  },
): Promise<{ side: number; ms: number; minMs: number }[]> {
  const dir = await Deno.makeTempDir();
  const out: { side: number; ms: number; minMs: number }[] = [];
  try {
    await writeRandomAe(`${dir}/ae.safetensors`, opts.config);
    const ae = await Autoencoder.load(gpu, `${dir}/ae.safetensors`, { dtype: opts.dtype });
    try {
      for (const side of opts.sides) {
        const t = await timeDecode(
          (x, s) => ae.decode(x, s),
          opts.config.zChannels,
          side,
          side,
          opts.reps,
        );
        const px = side * ae.factor;
        console.log(
          `${opts.label} decode ${px}×${px} (latent ${opts.config.zChannels}×${side}×${side}, ` +
            `${opts.dtype}): ${t.ms.toFixed(1)} ms (min ${t.minMs.toFixed(1)})`,
        );
        out.push({ side, ...t });
      }
    } finally {
      ae.destroy();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  return out;
}

async function benchTiny(gpu: Gpu, side: number, z: number, dtype: ActDtype, reps: number) {
  const dir = await Deno.makeTempDir();
  try {
    // TAESD: conv(z→64)+ReLU, 3 × (3 blocks, upsample, conv), block, conv(64→3).
    const shapes = new Map<string, number[]>();
    const conv = (n: string, cout: number, cin: number, bias: boolean) => {
      shapes.set(`${n}.weight`, [cout, cin, 3, 3]);
      if (bias) shapes.set(`${n}.bias`, [cout]);
    };
    let i = 1;
    conv(`${i++}`, 64, z, true);
    i++; // ReLU
    for (let stage = 0; stage < 4; stage++) {
      for (let b = 0; b < (stage < 3 ? 3 : 1); b++, i++) {
        for (const j of [0, 2, 4]) conv(`${i}.conv.${j}`, 64, 64, true);
      }
      if (stage < 3) {
        i++; // upsample
        conv(`${i++}`, 64, 64, false);
      }
    }
    conv(`${i}`, 3, 64, true);
    const names = [...shapes.keys()];
    const w = await SafetensorsWriter.create(`${dir}/taesd.safetensors`, {
      tensors: names.map((name) => ({
        name,
        dtype: "F16" as const,
        shape: shapes.get(name)!,
        byteLength: 2 * shapes.get(name)!.reduce((a, b) => a * b, 1),
      })),
    });
    for (const [k, name] of names.entries()) {
      const s = shapes.get(name)!;
      const n = s.reduce((a, b) => a * b, 1);
      await w.write(
        name,
        fromFloat32("F16", fill(n, s.length === 1 ? 0.05 : 1 / Math.sqrt(n / s[0]), k + 1)),
      );
    }
    await w.commit();
    const tiny = await TinyDecoder.load(gpu, `${dir}/taesd.safetensors`, { dtype });
    try {
      const t = await timeDecode((x, s) => tiny.decode(x, s), z, side, side, reps);
      const px = side * tiny.factor;
      console.log(
        `tiny decoder (TAESD shape) decode ${px}×${px} (latent ${z}×${side}×${side}, ${dtype}): ` +
          `${t.ms.toFixed(1)} ms (min ${t.minMs.toFixed(1)})`,
      );
    } finally {
      tiny.destroy();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      small: { type: "boolean", default: false },
      reps: { type: "string", default: "3" },
      f32: { type: "boolean", default: false },
    },
  });
  const gpu = await getGpu();
  const dtype: ActDtype = gpu.caps.shaderF16 && !values.f32 ? "f16" : "f32";
  const reps = Math.max(1, Number(values.reps) | 0);
  console.log(`autoencoder decode on ${gpu.caps.adapter}; ${new Date().toISOString()}`);
  if (values.small) {
    await benchAutoencoder(gpu, {
      label: "small AE",
      config: SMALL_AE,
      sides: [16, 32],
      dtype,
      reps,
    });
    await benchTiny(gpu, 8, 4, dtype, reps);
    return;
  }
  await benchAutoencoder(gpu, { label: "SD-VAE", config: SD_VAE, sides: [32, 64], dtype, reps });
  await benchAutoencoder(gpu, { label: "FLUX AE", config: FLUX_AE, sides: [64, 128], dtype, reps });
  await benchTiny(gpu, 128, 16, dtype, reps);
}

if (import.meta.main) await runCli(main);
