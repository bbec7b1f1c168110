/**
 * `TinyDecoder`: the TAESD family's decoder (taesd, taesdxl, taesd3, taef1 — madebyollin/taesd;
 * not taef2, whose architecture differs)
 * on the GPU, a fast approximate decoder for live previews and `--decoder tiny`. Architecture:
 * `tanh(z/3)·3` clamp, 3×3 conv + ReLU, then stages of Blocks (`relu(conv(relu(conv(relu(conv(x)))))
 * + skip(x))`, skip a bias-free 1×1 conv when widths differ, else identity) separated by nearest
 * 2× upsamples each followed by a bias-free 3×3 conv, and a final 3×3 conv to RGB in [0, 1]
 * (returned as [-1, 1]). It takes the diffusion model's latents as they are (no scale/shift).
 *
 * Key layouts, read from the file rather than assumed: the original `nn.Sequential` indices
 * (`taesd_decoder.safetensors`: `1.weight`, `3.conv.0.weight`, …, `3.skip.weight`, optionally
 * under `decoder.`) and diffusers' `AutoencoderTiny` (`decoder.layers.N.…`, the clamp is not a
 * layer so indices are one lower). The layer list is the file's: parameterised indices in order;
 * the first conv is the input conv (ReLU after), every later bias-free 3×3 conv follows an
 * upsample, the last conv is the output conv. So widths, block counts and latent channels are
 * whatever the file holds.
 *
 * @module
 */
import type { Dispatch, Gpu } from "../gpu/device.ts";
import { FormatError } from "../gpu/errors.ts";
import { SafetensorsReader } from "../formats/safetensors.ts";
import { Conv2d, packConvWeight } from "../kernels/conv2d/conv2d.ts";
import { checkShaderF16 } from "../kernels/_launch.ts";
import { actBytes, type ActDtype, fromActBytes, toActArray } from "../kernels/_wgsl.ts";
import { type Nchw, toNchw, toNhwc } from "./autoencoder.ts";

/** One layer of a tiny decoder, as read from the file (PyTorch weights, float32). */
export type TinyLayer =
  | {
    kind: "conv";
    role: "in" | "up" | "out";
    w: Float32Array;
    bias?: Float32Array;
    cin: number;
    cout: number;
  }
  | {
    kind: "block";
    convs: { w: Float32Array; bias: Float32Array }[]; // three 3×3 convs
    skip?: Float32Array; // 1×1, no bias
    cin: number;
    cout: number;
  };

/** Read the layers of a tiny decoder file. */
export async function readTinyDecoder(
  path: string,
): Promise<{ layers: TinyLayer[]; zChannels: number }> {
  const r = await SafetensorsReader.open(path);
  try {
    const keys = [...r.tensors.keys()];
    const prefix = ["decoder.layers.", "decoder.", ""].find((p) =>
      keys.some((k) =>
        new RegExp(`^${p.replace(/\./g, "\\.")}\\d+\\.(weight|conv\\.0\\.weight)$`).test(k)
      )
    );
    if (prefix === undefined) {
      throw new FormatError(
        path,
        "no TAESD decoder layers (N.weight, N.conv.0.weight, or decoder.layers.N.…): not a tiny " +
          "autoencoder decoder",
      );
    }
    const idx = [
      ...new Set(
        keys.filter((k) => k.startsWith(prefix)).map((k) =>
          Number(k.slice(prefix.length).split(".")[0])
        ),
      ),
    ]
      .filter((i) => Number.isInteger(i)).sort((a, b) => a - b);
    const get = async (name: string) => {
      if (!r.tensors.has(name)) throw new FormatError(path, "the tensor is missing", name);
      return { data: await r.readFloat32(name), shape: [...r.info(name).shape] };
    };
    const layers: TinyLayer[] = [];
    const convIdx = idx.filter((i) => r.tensors.has(`${prefix}${i}.weight`));
    for (const i of idx) {
      const p = `${prefix}${i}.`;
      if (r.tensors.has(`${p}conv.0.weight`)) {
        const convs = [];
        for (const j of [0, 2, 4]) {
          const w = await get(`${p}conv.${j}.weight`);
          convs.push({ w: w.data, bias: (await get(`${p}conv.${j}.bias`)).data, shape: w.shape });
        }
        const skip = r.tensors.has(`${p}skip.weight`)
          ? (await get(`${p}skip.weight`)).data
          : undefined;
        const [cout, cin] = convs[0].shape;
        if (!skip && cin !== cout) {
          throw new FormatError(
            path,
            `block ${i} changes width ${cin} → ${cout} without a skip conv`,
            `${p}skip.weight`,
          );
        }
        layers.push({
          kind: "block",
          convs: convs.map(({ w, bias }) => ({ w, bias })),
          skip,
          cin,
          cout,
        });
      } else if (r.tensors.has(`${p}weight`)) {
        const w = await get(`${p}weight`);
        if (w.shape.length !== 4 || w.shape[2] !== 3 || w.shape[3] !== 3) {
          throw new FormatError(
            path,
            `expected a 3×3 conv weight, got [${w.shape}]: not a taesd/taesdxl/taesd3/taef1 ` +
              "decoder (taef2 has another architecture and is not supported)",
            `${p}weight`,
          );
        }
        const bias = r.tensors.has(`${p}bias`) ? (await get(`${p}bias`)).data : undefined;
        const role = i === convIdx[0] ? "in" : i === convIdx.at(-1) ? "out" : "up";
        if (role === "up" && bias) {
          throw new FormatError(
            path,
            "an inner conv with a bias: not a TAESD decoder layout",
            `${p}bias`,
          );
        }
        layers.push({ kind: "conv", role, w: w.data, bias, cin: w.shape[1], cout: w.shape[0] });
      }
    }
    const first = layers[0];
    if (!first || first.kind !== "conv" || layers.at(-1)!.kind !== "conv" || convIdx.length < 2) {
      throw new FormatError(path, "a TAESD decoder starts and ends with a 3×3 conv");
    }
    return { layers, zChannels: first.cin };
  } finally {
    r.close();
  }
}

/** Options of {@linkcode TinyDecoder.load}. */
export interface TinyDecoderOptions {
  /** Storage dtype (default f16 where the device has `shader-f16`). */
  dtype?: ActDtype;
}

type PlanStep = { conv: GpuConv; role: string } | { block: GpuConv[]; skip?: GpuConv };

interface GpuConv {
  w: GPUBuffer;
  bias?: GPUBuffer;
  cin: number;
  cout: number;
  ks: 1 | 3;
}

/**
 * A TAESD-family decoder on the GPU.
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../gpu/device.ts";
 * import { TinyDecoder } from "./tiny_autoencoder.ts";
 * const tiny = await TinyDecoder.load(await getGpu(), "taef1_decoder.safetensors");
 * const preview = await tiny.decode(new Float32Array(16 * 64 * 64), [1, 16, 64, 64]); // [1,3,512,512]
 * tiny.destroy();
 * ```
 */
export class TinyDecoder {
  /** Latent channels (the first conv's input). */
  readonly zChannels: number;
  /** Image pixels per latent pixel along each side (2^upsamples). */
  readonly factor: number;
  /** Storage dtype. */
  readonly dtype: ActDtype;
  readonly #gpu: Gpu;
  readonly #plan: PlanStep[];
  #graph?: {
    key: string;
    dispatches: Dispatch[];
    ops: Conv2d[];
    bufs: GPUBuffer[];
    input: GPUBuffer;
    output: GPUBuffer;
    shape: [number, number, number, number];
  };

  private constructor(gpu: Gpu, dtype: ActDtype, zChannels: number, plan: PlanStep[]) {
    this.#gpu = gpu;
    this.dtype = dtype;
    this.zChannels = zChannels;
    this.#plan = plan;
    this.factor = 2 ** plan.filter((p) => "conv" in p && p.role === "up").length;
  }

  /** Read `path` (see the module doc for the layouts) and upload its weights. */
  static async load(gpu: Gpu, path: string, opts: TinyDecoderOptions = {}): Promise<TinyDecoder> {
    const dtype = opts.dtype ?? (gpu.caps.shaderF16 ? "f16" : "f32");
    checkShaderF16(gpu, "tiny decoder", dtype);
    const { layers, zChannels } = await readTinyDecoder(path);
    const all: GPUBuffer[] = [];
    const up = async (
      w: Float32Array,
      cout: number,
      cin: number,
      ks: 1 | 3,
      bias?: Float32Array,
    ) => {
      const c: GpuConv = {
        w: await gpu.upload(
          "buffer tiny decoder weight",
          toActArray(packConvWeight(w, cout, cin, ks), dtype),
        ),
        bias: bias ? await gpu.upload("buffer tiny decoder bias", bias) : undefined,
        cin,
        cout,
        ks,
      };
      all.push(c.w, ...(c.bias ? [c.bias] : []));
      return c;
    };
    const plan: PlanStep[] = [];
    try {
      for (const l of layers) {
        if (l.kind === "conv") {
          plan.push({ conv: await up(l.w, l.cout, l.cin, 3, l.bias), role: l.role });
        } else {
          const block = [
            await up(l.convs[0].w, l.cout, l.cin, 3, l.convs[0].bias),
            await up(l.convs[1].w, l.cout, l.cout, 3, l.convs[1].bias),
            await up(l.convs[2].w, l.cout, l.cout, 3, l.convs[2].bias),
          ];
          plan.push({ block, skip: l.skip ? await up(l.skip, l.cout, l.cin, 1) : undefined });
        }
      }
    } catch (e) {
      gpu.destroy(...all);
      throw e;
    }
    const t = new TinyDecoder(gpu, dtype, zChannels, plan);
    t.#weights = all;
    return t;
  }

  #weights: GPUBuffer[] = [];

  /**
   * Decode latents `[B, zChannels, h, w]` (the diffusion model's, unnormalised) to images
   * `[B, 3, h·factor, w·factor]` in [-1, 1].
   */
  async decode(latent: Float32Array, shape: Nchw): Promise<Float32Array> {
    const [b, c, h, w] = shape;
    if (
      c !== this.zChannels || !shape.every((d) => Number.isInteger(d) && d > 0) ||
      latent.length !== b * c * h * w
    ) {
      throw new TypeError(
        `Cannot decode with the tiny decoder: got ${latent.length} values as [${shape}], expected ` +
          `[B, C=${this.zChannels}, H, W] with B·C·H·W values`,
      );
    }
    const g = await this.#build(b, h, w);
    const z = toNhwc(latent.map((v) => Math.tanh(v / 3) * 3), shape);
    this.#gpu.write(g.input, toActArray(z, this.dtype));
    await this.#gpu.scoped("run tiny decoder", async () => {
      for (let i = 0; i < g.dispatches.length; i += 32) {
        this.#gpu.run(g.dispatches.slice(i, i + 32));
      }
      await this.#gpu.device.queue.onSubmittedWorkDone();
    });
    const [ob, oh, ow, oc] = g.shape;
    const n = ob * oh * ow * oc;
    const out = toNchw(
      fromActBytes(await this.#gpu.read(g.output, n * actBytes(this.dtype)), this.dtype, n),
      g.shape,
    );
    for (let i = 0; i < out.length; i++) out[i] = 2 * out[i] - 1;
    return out;
  }

  /** Release the weights and the built pass. */
  destroy(): void {
    this.#dropGraph();
    this.#gpu.destroy(...this.#weights);
    this.#weights = [];
  }

  #dropGraph(): void {
    if (!this.#graph) return;
    for (const op of this.#graph.ops) op.destroy();
    this.#gpu.destroy(...this.#graph.bufs);
    this.#graph = undefined;
  }

  async #build(b: number, h: number, w: number) {
    const key = `${b}×${h}×${w}`;
    if (this.#graph?.key === key) return this.#graph;
    this.#dropGraph();
    const gpu = this.#gpu, dtype = this.dtype;
    const ops: Conv2d[] = [], bufs: GPUBuffer[] = [], dispatches: Dispatch[] = [];
    const free: GPUBuffer[] = [];
    const take = async (bytes: number) => {
      const i = free.findIndex((f) => f.size >= bytes);
      if (i >= 0) return free.splice(i, 1)[0];
      const buf = await gpu.createBuffer("buffer tiny decoder activation", bytes);
      bufs.push(buf);
      return buf;
    };
    type T = { buf: GPUBuffer; h: number; w: number; c: number };
    const conv = async (
      x: T,
      l: GpuConv,
      o: { relu?: boolean; upsample?: boolean; residual?: T } = {},
    ) => {
      const op = await Conv2d.create(gpu, {
        b,
        h: x.h,
        w: x.w,
        cin: l.cin,
        cout: l.cout,
        kernel: l.ks,
        bias: l.bias !== undefined,
        upsample: o.upsample,
        residual: o.residual !== undefined,
        relu: o.relu,
        dtype,
      });
      ops.push(op);
      const { ho, wo } = op.geometry;
      const y = {
        buf: await take(b * ho * wo * l.cout * actBytes(dtype)),
        h: ho,
        w: wo,
        c: l.cout,
      };
      dispatches.push(
        op.dispatch({ x: x.buf, w: l.w, bias: l.bias, residual: o.residual?.buf, y: y.buf }),
      );
      return y;
    };
    try {
      const input = {
        buf: await take(b * h * w * this.zChannels * actBytes(dtype)),
        h,
        w,
        c: this.zChannels,
      };
      let x: T = input;
      for (const p of this.#plan) {
        let y: T;
        if ("conv" in p) {
          y = await conv(x, p.conv, { relu: p.role === "in", upsample: p.role === "up" });
        } else {
          const h1 = await conv(x, p.block[0], { relu: true });
          const h2 = await conv(h1, p.block[1], { relu: true });
          free.push(h1.buf);
          const skip = p.skip ? await conv(x, p.skip) : x;
          y = await conv(h2, p.block[2], { residual: skip, relu: true });
          free.push(h2.buf);
          if (skip !== x) free.push(skip.buf);
        }
        if (x !== input) free.push(x.buf);
        x = y;
      }
      this.#graph = {
        key,
        dispatches,
        ops,
        bufs,
        input: input.buf,
        output: x.buf,
        shape: [b, x.h, x.w, x.c],
      };
      return this.#graph;
    } catch (e) {
      for (const op of ops) op.destroy();
      gpu.destroy(...bufs);
      throw e;
    }
  }
}
