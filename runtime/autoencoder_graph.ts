/**
 * The autoencoder's forward passes as a list of GPU dispatches, built once per input size: the
 * LDM / BFL Encoder and Decoder (ResnetBlocks, the single-head mid-block attention, the fused
 * 2× upsample, the Downsample's right/bottom pad) over NHWC activations, from the kernels
 * conv2d, group_norm and flash_attention. Activation buffers come from a pool and go back to it
 * as soon as their last reader is encoded, so a decode holds a few maps at a time, not all.
 *
 * @module
 */
import type { Dispatch, Gpu } from "../gpu/device.ts";
import { Conv2d, type Conv2dPad } from "../kernels/conv2d/conv2d.ts";
import { GroupNorm } from "../kernels/group_norm/group_norm.ts";
import { FlashAttention } from "../kernels/flash_attention/flash_attention.ts";
import { actBytes, type ActDtype } from "../kernels/_wgsl.ts";
import type { AeConfig } from "./autoencoder_keys.ts";
import type { AePart, AeWeights } from "./autoencoder_weights.ts";

/** An NHWC activation on the GPU. */
export interface AeTensor {
  buf: GPUBuffer;
  b: number;
  h: number;
  w: number;
  c: number;
}

/** Buffers handed out by size and returned when their tensor is dead. */
class Pool {
  readonly #gpu: Gpu;
  readonly #free: GPUBuffer[] = [];
  readonly #all: GPUBuffer[] = [];
  readonly #pinned = new Set<GPUBuffer>();

  constructor(gpu: Gpu) {
    this.#gpu = gpu;
  }

  async take(bytes: number): Promise<GPUBuffer> {
    let best = -1;
    for (let i = 0; i < this.#free.length; i++) {
      const s = this.#free[i].size;
      if (s >= bytes && (best < 0 || s < this.#free[best].size)) best = i;
    }
    if (best >= 0) return this.#free.splice(best, 1)[0];
    const buf = await this.#gpu.createBuffer("buffer autoencoder activation", bytes);
    this.#all.push(buf);
    return buf;
  }

  give(buf: GPUBuffer): void {
    if (!this.#pinned.has(buf) && !this.#free.includes(buf)) this.#free.push(buf);
  }

  pin(buf: GPUBuffer): void {
    this.#pinned.add(buf);
  }

  destroy(): void {
    this.#gpu.destroy(...this.#all);
  }
}

/** A built forward pass for one input size: run it, read its output (and captured maps). */
export class AeGraph {
  /** The input tensor (write NHWC ACT data to its buffer before {@linkcode run}). */
  readonly input: AeTensor;
  /** The output tensor. */
  readonly output: AeTensor;
  /** Intermediate maps kept for inspection, by golden name (e.g. `dec.mid`). */
  readonly captured: Map<string, AeTensor>;
  readonly #gpu: Gpu;
  readonly #dispatches: Dispatch[];
  readonly #ops: { destroy(): void }[];
  readonly #pool: Pool;

  private constructor(
    gpu: Gpu,
    b: Builder,
    input: AeTensor,
    output: AeTensor,
  ) {
    this.#gpu = gpu;
    this.#dispatches = b.dispatches;
    this.#ops = b.ops;
    this.#pool = b.pool;
    this.input = input;
    this.output = output;
    this.captured = b.captured;
  }

  /**
   * Build the `part` pass of an autoencoder for an NHWC input `[b, h, w, c]` (the latent for the
   * decoder, the image for the encoder). `capture` names intermediate maps to keep.
   */
  static async build(
    gpu: Gpu,
    opts: {
      part: AePart;
      config: AeConfig;
      weights: AeWeights;
      dtype: ActDtype;
      b: number;
      h: number;
      w: number;
      capture?: readonly string[];
    },
  ): Promise<AeGraph> {
    const bl = new Builder(gpu, opts.weights, opts.dtype, new Set(opts.capture ?? []));
    try {
      const c = opts.part === "decoder" ? opts.config.zChannels : opts.config.inChannels;
      const input = await bl.tensor(opts.b, opts.h, opts.w, c);
      bl.pool.pin(input.buf);
      const out = opts.part === "decoder"
        ? await decoder(bl, opts.config, input)
        : await encoder(bl, opts.config, input);
      bl.pool.pin(out.buf);
      return new AeGraph(gpu, bl, input, out);
    } catch (e) {
      bl.destroy();
      throw e;
    }
  }

  /** Encode and submit the whole pass (in pieces of 32 dispatches), checked. */
  run(step: string): Promise<void> {
    return this.#gpu.scoped(step, async () => {
      for (let i = 0; i < this.#dispatches.length; i += 32) {
        this.#gpu.run(this.#dispatches.slice(i, i + 32), step);
      }
      await this.#gpu.device.queue.onSubmittedWorkDone();
    });
  }

  /** Release the ops and every activation buffer. */
  destroy(): void {
    for (const op of this.#ops) op.destroy();
    this.#pool.destroy();
  }
}

class Builder {
  readonly dispatches: Dispatch[] = [];
  readonly ops: { destroy(): void }[] = [];
  readonly captured = new Map<string, AeTensor>();
  readonly pool: Pool;
  readonly gpu: Gpu;
  readonly wts: AeWeights;
  readonly dtype: ActDtype;
  readonly #want: Set<string>;

  constructor(gpu: Gpu, wts: AeWeights, dtype: ActDtype, want: Set<string>) {
    this.gpu = gpu;
    this.wts = wts;
    this.dtype = dtype;
    this.pool = new Pool(gpu);
    this.#want = want;
  }

  async tensor(b: number, h: number, w: number, c: number): Promise<AeTensor> {
    return { buf: await this.pool.take(b * h * w * c * actBytes(this.dtype)), b, h, w, c };
  }

  release(...ts: AeTensor[]): void {
    for (const t of ts) this.pool.give(t.buf);
  }

  capture(name: string, t: AeTensor): void {
    if (!this.#want.has(name)) return;
    this.pool.pin(t.buf);
    this.captured.set(name, t);
  }

  async conv(
    x: AeTensor,
    name: string,
    o: { stride?: 1 | 2; pad?: Conv2dPad; upsample?: boolean; residual?: AeTensor } = {},
  ): Promise<AeTensor> {
    const l = this.wts.conv(name);
    const op = await Conv2d.create(this.gpu, {
      b: x.b,
      h: x.h,
      w: x.w,
      cin: x.c,
      cout: l.cout,
      kernel: l.ks,
      stride: o.stride,
      pad: o.pad,
      upsample: o.upsample,
      bias: true,
      residual: o.residual !== undefined,
      weights: l.wq ? "int8" : "act",
      dtype: this.dtype,
    });
    this.ops.push(op);
    const y = await this.tensor(x.b, op.geometry.ho, op.geometry.wo, l.cout);
    this.dispatches.push(op.dispatch({
      x: x.buf,
      w: l.w,
      wq: l.wq,
      wscale: l.wscale,
      bias: l.bias,
      residual: o.residual?.buf,
      y: y.buf,
    }));
    return y;
  }

  async norm(x: AeTensor, name: string, silu: boolean): Promise<AeTensor> {
    const l = this.wts.norm(name);
    const op = await GroupNorm.create(this.gpu, {
      b: x.b,
      hw: x.h * x.w,
      c: x.c,
      silu,
      dtype: this.dtype,
    });
    this.ops.push(op);
    const y = await this.tensor(x.b, x.h, x.w, x.c);
    this.dispatches.push(...op.dispatches({ x: x.buf, gamma: l.gamma, beta: l.beta, y: y.buf }));
    return y;
  }

  /** ResnetBlock: x + conv2(silu(norm2(conv1(silu(norm1(x)))))), x through nin_shortcut if any. */
  async resnet(x: AeTensor, name: string): Promise<AeTensor> {
    const h1 = await this.norm(x, `${name}.norm1`, true);
    const h2 = await this.conv(h1, `${name}.conv1`);
    this.release(h1);
    const h3 = await this.norm(h2, `${name}.norm2`, true);
    this.release(h2);
    const skip = this.wts.convs.has(`${name}.nin_shortcut`)
      ? await this.conv(x, `${name}.nin_shortcut`)
      : x;
    const y = await this.conv(h3, `${name}.conv2`, { residual: skip });
    this.release(h3, skip, x);
    return y;
  }

  /** AttnBlock: x + proj_out(attention(q, k, v of norm(x))), one head of D = C. */
  async attn(x: AeTensor, name: string): Promise<AeTensor> {
    const h = await this.norm(x, `${name}.norm`, false);
    const qkv = await this.conv(h, `${name}.qkv`);
    this.release(h);
    const op = await FlashAttention.create(this.gpu, {
      b: x.b,
      t: x.h * x.w,
      h: 1,
      d: x.c,
      dtype: this.dtype,
    });
    this.ops.push(op);
    const o = await this.tensor(x.b, x.h, x.w, x.c);
    this.dispatches.push(op.dispatch({ qkv: qkv.buf, o: o.buf }));
    this.release(qkv);
    const y = await this.conv(o, `${name}.proj_out`, { residual: x });
    this.release(o, x);
    return y;
  }

  destroy(): void {
    for (const op of this.ops) op.destroy();
    this.pool.destroy();
  }
}

async function mid(bl: Builder, part: AePart, x: AeTensor, tag: string): Promise<AeTensor> {
  x = await bl.resnet(x, `${part}.mid.block_1`);
  bl.capture(`${tag}.mid.block_1`, x);
  x = await bl.attn(x, `${part}.mid.attn_1`);
  bl.capture(`${tag}.mid.attn_1`, x);
  x = await bl.resnet(x, `${part}.mid.block_2`);
  bl.capture(`${tag}.mid`, x);
  return x;
}

async function decoder(bl: Builder, cfg: AeConfig, z: AeTensor): Promise<AeTensor> {
  let x = z;
  if (bl.wts.convs.has("post_quant_conv")) x = await bl.conv(x, "post_quant_conv");
  const xin = await bl.conv(x, "decoder.conv_in");
  if (x !== z) bl.release(x);
  bl.capture("dec.conv_in", xin);
  x = await mid(bl, "decoder", xin, "dec");
  for (let i = cfg.chMult.length - 1; i >= 0; i--) {
    for (let j = 0; j <= cfg.numResBlocks; j++) {
      x = await bl.resnet(x, `decoder.up.${i}.block.${j}`);
    }
    bl.capture(`dec.up.${i}.blocks`, x);
    if (i !== 0) {
      const u = await bl.conv(x, `decoder.up.${i}.upsample.conv`, { upsample: true });
      bl.release(x);
      x = u;
      bl.capture(`dec.up.${i}.upsample`, x);
    }
  }
  bl.capture("dec.pre_norm_out", x);
  const h = await bl.norm(x, "decoder.norm_out", true);
  bl.release(x);
  const out = await bl.conv(h, "decoder.conv_out");
  bl.release(h);
  return out;
}

async function encoder(bl: Builder, cfg: AeConfig, img: AeTensor): Promise<AeTensor> {
  let x = await bl.conv(img, "encoder.conv_in");
  const L = cfg.chMult.length;
  for (let i = 0; i < L; i++) {
    for (let j = 0; j < cfg.numResBlocks; j++) {
      x = await bl.resnet(x, `encoder.down.${i}.block.${j}`);
    }
    if (i !== L - 1) {
      const d = await bl.conv(x, `encoder.down.${i}.downsample.conv`, {
        stride: 2,
        pad: [0, 1, 0, 1],
      });
      bl.release(x);
      x = d;
    }
  }
  x = await mid(bl, "encoder", x, "enc");
  const h = await bl.norm(x, "encoder.norm_out", true);
  bl.release(x);
  let out = await bl.conv(h, "encoder.conv_out");
  bl.release(h);
  bl.capture("enc.moments", out);
  if (bl.wts.convs.has("quant_conv")) {
    const q = await bl.conv(out, "quant_conv");
    bl.release(out);
    out = q;
  }
  return out;
}
