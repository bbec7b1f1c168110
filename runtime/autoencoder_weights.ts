/**
 * The autoencoder's weights on the GPU: every convolution repacked to the conv2d kernel's
 * `[Cout, KS, KS, Cin]` in the activation dtype with an f32 bias, every GroupNorm's affine in
 * f32, and the mid-block attention's q, k, v fused into one `[3C, C]` 1×1 convolution. Layers
 * are named by their LDM / BFL names (see autoencoder_keys.ts), whatever the file's layout.
 *
 * @module
 */
import type { Gpu } from "../gpu/device.ts";
import { FormatError } from "../gpu/errors.ts";
import type { AeCheckpoint, AeConfig } from "./autoencoder_keys.ts";
import { packConvWeight, quantizeConvWeightInt8 } from "../kernels/conv2d/conv2d.ts";
import { type ActDtype, toActArray } from "../kernels/_wgsl.ts";

/** A convolution's weights on the GPU. */
export interface ConvWeights {
  /** ACT [Cout, KS, KS, Cin]; absent with INT8 weights. */
  w?: GPUBuffer;
  /** INT8 codes [Cout, KS, KS, Cin], four per u32 (INT8 weights). */
  wq?: GPUBuffer;
  /** f32 [Cout] per-output-channel scales (INT8 weights). */
  wscale?: GPUBuffer;
  /** f32 [Cout]. */
  bias: GPUBuffer;
  cin: number;
  cout: number;
  ks: 1 | 3;
}

/** A GroupNorm's affine on the GPU. */
export interface NormWeights {
  /** f32 [C]. */
  gamma: GPUBuffer;
  /** f32 [C]. */
  beta: GPUBuffer;
  c: number;
}

/** Which half of the autoencoder. */
export type AePart = "encoder" | "decoder";

/** The layers of one half, by LDM name: convolutions, norms, and attention blocks (fused qkv). */
export function layerNames(
  config: AeConfig,
  part: AePart,
): { convs: string[]; norms: string[]; attns: string[] } {
  const L = config.chMult.length;
  const convs: string[] = [], norms: string[] = [], attns: string[] = [];
  const resnet = (base: string, shortcut: boolean) => {
    convs.push(`${base}.conv1`, `${base}.conv2`);
    norms.push(`${base}.norm1`, `${base}.norm2`);
    if (shortcut) convs.push(`${base}.nin_shortcut`);
  };
  const p = part;
  convs.push(`${p}.conv_in`, `${p}.conv_out`);
  norms.push(`${p}.norm_out`);
  const top = config.ch * config.chMult[L - 1];
  resnet(`${p}.mid.block_1`, false);
  resnet(`${p}.mid.block_2`, false);
  attns.push(`${p}.mid.attn_1`);
  norms.push(`${p}.mid.attn_1.norm`);
  convs.push(`${p}.mid.attn_1.proj_out`);
  if (part === "decoder") {
    let cin = top;
    for (let i = L - 1; i >= 0; i--) {
      const cout = config.ch * config.chMult[i];
      for (let j = 0; j <= config.numResBlocks; j++) {
        resnet(`decoder.up.${i}.block.${j}`, j === 0 && cin !== cout);
        cin = cout;
      }
      if (i !== 0) convs.push(`decoder.up.${i}.upsample.conv`);
    }
  } else {
    let cin = config.ch;
    for (let i = 0; i < L; i++) {
      const cout = config.ch * config.chMult[i];
      for (let j = 0; j < config.numResBlocks; j++) {
        resnet(`encoder.down.${i}.block.${j}`, j === 0 && cin !== cout);
        cin = cout;
      }
      if (i !== L - 1) convs.push(`encoder.down.${i}.downsample.conv`);
    }
  }
  return { convs, norms, attns };
}

/** The uploaded weights of an autoencoder. */
export class AeWeights {
  /** Convolutions by LDM name (attention blocks: `<block>.qkv` fused, `<block>.proj_out`). */
  readonly convs = new Map<string, ConvWeights>();
  /** GroupNorms by LDM name. */
  readonly norms = new Map<string, NormWeights>();
  readonly #gpu: Gpu;
  readonly #dtype: ActDtype;
  readonly #int8: boolean;

  private constructor(gpu: Gpu, dtype: ActDtype, int8: boolean) {
    this.#gpu = gpu;
    this.#dtype = dtype;
    this.#int8 = int8;
  }

  /**
   * Read and upload the layers of `parts` from `ckpt` (plus quant_conv / post_quant_conv);
   * `weights: "int8"` stores every 3×3 conv with per-output-channel INT8 codes (1×1 convs and the
   * attention stay in the activation dtype).
   */
  static async load(
    gpu: Gpu,
    ckpt: AeCheckpoint,
    parts: AePart[],
    dtype: ActDtype,
    weights: "act" | "int8" = "act",
  ): Promise<AeWeights> {
    const wts = new AeWeights(gpu, dtype, weights === "int8");
    try {
      for (const part of parts) {
        const { convs, norms, attns } = layerNames(ckpt.config, part);
        for (const n of convs) await wts.#conv(ckpt, n, [n]);
        for (const n of norms) await wts.#norm(ckpt, n);
        for (const a of attns) await wts.#conv(ckpt, `${a}.qkv`, [`${a}.q`, `${a}.k`, `${a}.v`]);
        const extra = part === "decoder" ? "post_quant_conv" : "quant_conv";
        if (ckpt.has(`${extra}.weight`)) await wts.#conv(ckpt, extra, [extra]);
      }
    } catch (e) {
      wts.destroy();
      throw e;
    }
    return wts;
  }

  /** The convolution `name`; a TypeError when it was not loaded (a bug, not a file problem). */
  conv(name: string): ConvWeights {
    const c = this.convs.get(name);
    if (!c) throw new TypeError(`Cannot find autoencoder layer ${name}: it was not loaded`);
    return c;
  }

  /** The GroupNorm `name`. */
  norm(name: string): NormWeights {
    const n = this.norms.get(name);
    if (!n) throw new TypeError(`Cannot find autoencoder layer ${name}: it was not loaded`);
    return n;
  }

  /** Free every buffer. */
  destroy(): void {
    const bufs: GPUBuffer[] = [];
    for (const c of this.convs.values()) bufs.push(c.w!, c.wq!, c.wscale!, c.bias);
    for (const n of this.norms.values()) bufs.push(n.gamma, n.beta);
    this.#gpu.destroy(...bufs);
    this.convs.clear();
    this.norms.clear();
  }

  // Convolution `name` made of the output rows of `parts` stacked (one part: a plain conv).
  async #conv(ckpt: AeCheckpoint, name: string, parts: string[]): Promise<void> {
    const ws: Float32Array[] = [], bs: Float32Array[] = [];
    let cin = 0, ks = 0, cout = 0;
    for (const p of parts) {
      const { data, shape } = await ckpt.tensor(`${p}.weight`);
      // A 1×1 conv may be stored as a linear [Cout, Cin] (diffusers attention).
      const s = shape.length === 2 ? [...shape, 1, 1] : shape;
      if (s.length !== 4 || s[2] !== s[3] || (s[2] !== 1 && s[2] !== 3)) {
        throw new FormatError(
          ckpt.reader.path,
          `expected a conv weight [Cout, Cin, 3, 3] or [Cout, Cin, 1, 1] (or a linear [Cout, Cin]), got [${shape}]`,
          ckpt.key(`${p}.weight`),
        );
      }
      if (cin && (s[1] !== cin || s[2] !== ks)) {
        throw new FormatError(
          ckpt.reader.path,
          `its shape [${shape}] differs from ${parts[0]}'s`,
          ckpt.key(`${p}.weight`),
        );
      }
      [cin, ks] = [s[1], s[2]];
      cout += s[0];
      ws.push(packConvWeight(data, s[0], cin, ks));
      const b = (await ckpt.tensor(`${p}.bias`)).data; // every AutoencoderKL conv has a bias
      if (b.length !== s[0]) {
        throw new FormatError(
          ckpt.reader.path,
          `bias has ${b.length} values, expected ${s[0]}`,
          ckpt.key(`${p}.bias`),
        );
      }
      bs.push(b);
    }
    const w = concat(ws), bias = concat(bs);
    const g = this.#gpu;
    const bb = await g.upload(`buffer autoencoder ${name}.bias`, bias);
    if (this.#int8 && ks === 3) {
      const { codes, scales } = quantizeConvWeightInt8(w, cout);
      this.convs.set(name, {
        wq: await g.upload(`buffer autoencoder ${name}.weight int8`, codes),
        wscale: await g.upload(`buffer autoencoder ${name}.weight scales`, scales),
        bias: bb,
        cin,
        cout,
        ks: 3,
      });
      return;
    }
    const wb = await g.upload(`buffer autoencoder ${name}.weight`, toActArray(w, this.#dtype));
    this.convs.set(name, { w: wb, bias: bb, cin, cout, ks: ks as 1 | 3 });
  }

  async #norm(ckpt: AeCheckpoint, name: string): Promise<void> {
    const gamma = (await ckpt.tensor(`${name}.weight`)).data;
    const beta = (await ckpt.tensor(`${name}.bias`)).data;
    if (gamma.length !== beta.length) {
      throw new FormatError(
        ckpt.reader.path,
        `weight has ${gamma.length} values, bias ${beta.length}`,
        ckpt.key(`${name}.weight`),
      );
    }
    const g = this.#gpu;
    this.norms.set(name, {
      gamma: await g.upload(`buffer autoencoder ${name}.weight`, gamma),
      beta: await g.upload(`buffer autoencoder ${name}.bias`, beta),
      c: gamma.length,
    });
  }
}

function concat(parts: Float32Array[]): Float32Array {
  if (parts.length === 1) return parts[0];
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}
