/**
 * `Autoencoder`: an AutoencoderKL (FLUX.1's `ae.safetensors`, SD / SDXL / SD3 VAEs, in the LDM /
 * BFL or the diffusers key layout) decoding latents to images and encoding images to latents on
 * the GPU. The latent normalisation (scale, shift) is applied inside, so `decode` takes what a
 * diffusion model produces and `encode` returns what it consumes.
 *
 * @module
 */
import type { Gpu } from "../gpu/device.ts";
import {
  AeCheckpoint,
  type AeConfig,
  type AeLayout,
  type AePresetName,
} from "./autoencoder_keys.ts";
import { type AePart, AeWeights } from "./autoencoder_weights.ts";
import { AeGraph } from "./autoencoder_graph.ts";
import { autoTile, decodeTiled, largestActivation } from "./autoencoder_tiles.ts";
import { type ActDtype, fromActBytes, toActArray } from "../kernels/_wgsl.ts";
import { checkShaderF16 } from "../kernels/_launch.ts";

export type { AeConfig, AeLayout, AePresetName };

/** Options of {@linkcode Autoencoder.load}. */
export interface AutoencoderOptions {
  /** Activation and weight storage: "f16" (default where the device has `shader-f16`) or "f32". */
  dtype?: ActDtype;
  /**
   * Latent normalisation preset when the file does not say (`sd` 0.18215, `sdxl` 0.13025, `sd3`
   * 1.5305 / 0.0609, `flux` 0.3611 / 0.1159); it also overrides what the file says.
   */
  preset?: AePresetName;
  /** Which halves to load: default both that the file has. */
  parts?: AePart[];
  /**
   * Weight storage of the 3×3 convolutions: "act" (default: the activation dtype) or "int8"
   * (per-output-channel symmetric INT8, dequantized in the conv kernel; about half the bytes of
   * f16). Quality on the fixture: see README.
   */
  weights?: "act" | "int8";
  /**
   * What an f16 decode whose activations overflow (non-finite output; the original SDXL VAE does,
   * diffusers upcasts every VAE for this) does: `"upcast"` (default) loads the same file in f32
   * once, decodes again there and keeps using f32 (the f16 weights are freed), after one call of
   * `onWarning`; `"error"` throws a RangeError saying so.
   */
  overflow?: "upcast" | "error";
  /** Called once when an f16 overflow switches decoding to f32 (default `console.warn`). */
  onWarning?: (message: string) => void;
}

/** Options of {@linkcode Autoencoder.decode}. */
export interface DecodeOptions {
  /**
   * Latent tile side: `"auto"` (default) decodes in one pass when every activation fits the
   * adapter's binding and buffer limits (and `maxActivationBytes`), else in the largest square
   * tiles that fit; a number forces tiles of that side.
   */
  tile?: number | "auto";
  /** Latent pixels shared by neighbouring tiles (default a quarter of the tile, at least 1). */
  overlap?: number;
  /** Largest activation allowed in one pass, in bytes (default: the adapter's limits). */
  maxActivationBytes?: number;
}

/** An f16 pass whose activations overflowed (a RangeError, as before; `decode` may upcast). */
class F16OverflowError extends RangeError {
  override name = "RangeError";
}

/** `[B, C, H, W]`. */
export type Nchw = readonly [b: number, c: number, h: number, w: number];

/**
 * An autoencoder on the GPU.
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../gpu/device.ts";
 * import { Autoencoder } from "./autoencoder.ts";
 * const gpu = await getGpu();
 * const ae = await Autoencoder.load(gpu, "ae.safetensors"); // FLUX.1: 16 channels
 * const latent = new Float32Array(1 * 16 * 128 * 128); // [B, C, h, w] from the transformer
 * const image = await ae.decode(latent, [1, 16, 128, 128]); // [1, 3, 1024, 1024], ≈ [-1, 1]
 * ae.destroy();
 * ```
 */
export class Autoencoder {
  /** The config (from config.json, the metadata, or the tensor shapes). */
  readonly config: Readonly<AeConfig>;
  /** The file's key layout. */
  readonly layout: AeLayout;
  /** Activation and weight dtype (f32 once an f16 overflow made it upcast, see `overflow`). */
  get dtype(): ActDtype {
    return this.#upcast?.dtype ?? this.#dtype;
  }
  readonly #dtype: ActDtype;
  /** Image pixels per latent pixel along each side (2^(levels − 1); 8 for every released VAE). */
  readonly factor: number;
  /** The halves loaded. */
  readonly parts: readonly AePart[];
  readonly #gpu: Gpu;
  readonly #weights: AeWeights;
  readonly #graphs = new Map<string, AeGraph>();
  readonly #source: string;
  readonly #opts: AutoencoderOptions;
  /** The f32 twin that decodes after an f16 overflow (see `overflow`). */
  #upcast: Autoencoder | null = null;

  private constructor(
    gpu: Gpu,
    ckpt: AeCheckpoint,
    weights: AeWeights,
    dtype: ActDtype,
    parts: AePart[],
    source: string,
    opts: AutoencoderOptions,
  ) {
    this.#gpu = gpu;
    this.#source = source;
    this.#opts = opts;
    this.config = ckpt.config;
    this.layout = ckpt.layout;
    this.#weights = weights;
    this.#dtype = dtype;
    this.parts = parts;
    this.factor = 2 ** (ckpt.config.chMult.length - 1);
  }

  /**
   * Open `source` (a `.safetensors` file or a diffusers folder, see autoencoder_keys.ts), read
   * the config, and upload the weights. A missing tensor is a `FormatError` naming it.
   */
  static async load(gpu: Gpu, source: string, opts: AutoencoderOptions = {}): Promise<Autoencoder> {
    const dtype = opts.dtype ?? (gpu.caps.shaderF16 ? "f16" : "f32");
    checkShaderF16(gpu, "autoencoder", dtype);
    const ckpt = await AeCheckpoint.open(source, opts.preset);
    try {
      const have: AePart[] = [];
      if (ckpt.hasDecoder) have.push("decoder");
      if (ckpt.hasEncoder) have.push("encoder");
      const parts = opts.parts ?? have;
      for (const p of parts) {
        if (!have.includes(p)) {
          throw new TypeError(`Cannot load the ${p} of ${source}: the file has no ${p} tensors`);
        }
      }
      const weights = await AeWeights.load(gpu, ckpt, parts, dtype, opts.weights ?? "act");
      return new Autoencoder(gpu, ckpt, weights, dtype, parts, source, opts);
    } finally {
      ckpt.close();
    }
  }

  /**
   * Decode latents `[B, zChannels, h, w]` (as the diffusion model produces them: scaled and
   * shifted) to images `[B, outChannels, h·factor, w·factor]`, about [-1, 1] (not clamped).
   */
  async decode(latent: Float32Array, shape: Nchw, opts: DecodeOptions = {}): Promise<Float32Array> {
    if (this.#upcast) return await this.#upcast.decode(latent, shape, opts);
    try {
      return await this.#decode(latent, shape, opts);
    } catch (e) {
      if (!(e instanceof F16OverflowError) || (this.#opts.overflow ?? "upcast") === "error") {
        throw e;
      }
      // the work that made the latents is not lost: decode them again in f32
      (this.#opts.onWarning ?? console.warn)(
        `The autoencoder's f16 activations overflowed (${e.message.split(";")[0]}); ` +
          "decoding in f32 from now on (about twice the activation memory)",
      );
      const twin = await Autoencoder.load(this.#gpu, this.#source, {
        ...this.#opts,
        dtype: "f32",
        parts: [...this.parts],
      });
      this.#release();
      this.#upcast = twin;
      return await twin.decode(latent, shape, opts);
    }
  }

  async #decode(latent: Float32Array, shape: Nchw, opts: DecodeOptions): Promise<Float32Array> {
    this.#check("decoder", latent, shape, this.config.zChannels);
    const [, , h, w] = shape;
    const bytes = this.dtype === "f16" ? 2 : 4;
    const caps = this.#gpu.caps;
    const limit = Math.min(
      caps.maxStorageBufferBindingSize,
      caps.maxBufferSize,
      opts.maxActivationBytes ?? Infinity,
    );
    let tile = opts.tile ?? "auto";
    if (tile === "auto") {
      if (largestActivation(this.config, shape[0], h, w, bytes) <= limit) {
        return (await this.decodeDetailed(latent, shape)).image;
      }
      tile = autoTile(this.config, h, w, bytes, limit);
      if (tile === 0) {
        throw new RangeError(
          `Cannot decode [${shape}]: even an 8×8 latent tile needs activations over ${limit} ` +
            "bytes; raise maxActivationBytes or use a device with larger buffers",
        );
      }
    }
    if (!Number.isInteger(tile) || tile < 1) {
      throw new RangeError(`Cannot decode: tile=${tile} must be a positive integer or "auto"`);
    }
    const overlap = opts.overlap ?? Math.max(1, Math.round(tile / 4));
    if (!Number.isInteger(overlap) || overlap < 0 || overlap >= tile) {
      throw new RangeError(
        `Cannot decode: overlap=${overlap} must be an integer in 0..${tile - 1}`,
      );
    }
    return await decodeTiled(latent, shape, {
      tile,
      overlap,
      factor: this.factor,
      outChannels: this.config.outChannels,
      decodeTile: async (x, s) => (await this.decodeDetailed(x, s)).image,
    });
  }

  /**
   * {@linkcode decode}, also returning the intermediate maps named in `capture` (NCHW f32, named
   * as the golden fixture: `dec.conv_in`, `dec.mid.block_1`, `dec.mid.attn_1`, `dec.mid`,
   * `dec.up.N.blocks`, `dec.up.N.upsample`, `dec.pre_norm_out`).
   */
  async decodeDetailed(
    latent: Float32Array,
    shape: Nchw,
    capture: readonly string[] = [],
  ): Promise<{ image: Float32Array; maps: Map<string, Float32Array> }> {
    if (this.#upcast) return await this.#upcast.decodeDetailed(latent, shape, capture);
    const { zChannels: z, scale, shift } = this.config;
    this.#check("decoder", latent, shape, z);
    const [b, , h, w] = shape;
    const unscaled = new Float32Array(latent.length);
    for (let i = 0; i < latent.length; i++) unscaled[i] = latent[i] / scale + shift;
    const { out, maps } = await this.#run("decoder", unscaled, [b, z, h, w], capture);
    this.#checkFinite("decode", out);
    return { image: out, maps };
  }

  /**
   * Encode images `[B, inChannels, H, W]` in [-1, 1] (H, W multiples of `factor`) to latents
   * `[B, zChannels, H/factor, W/factor]`: the posterior mean, normalised as the diffusion model
   * expects (`scale · (mean − shift)`); no sampling.
   */
  async encode(image: Float32Array, shape: Nchw): Promise<Float32Array> {
    if (this.#upcast) return await this.#upcast.encode(image, shape);
    const { zChannels: z, scale, shift, inChannels } = this.config;
    this.#check("encoder", image, shape, inChannels);
    const [b, , hh, ww] = shape;
    if (hh % this.factor || ww % this.factor) {
      throw new RangeError(
        `Cannot encode: image ${hh}×${ww} is not a multiple of ${this.factor} on each side; ` +
          "crop or pad it",
      );
    }
    const { out } = await this.#run("encoder", image, [b, inChannels, hh, ww], []);
    this.#checkFinite("encode", out);
    const h = hh / this.factor, w = ww / this.factor;
    const lat = new Float32Array(b * z * h * w);
    for (let n = 0; n < b; n++) {
      for (let c = 0; c < z; c++) {
        for (let i = 0; i < h * w; i++) {
          // the moments are mean ++ logvar along channels: the mean is the first z
          lat[(n * z + c) * h * w + i] = scale * (out[(n * 2 * z + c) * h * w + i] - shift);
        }
      }
    }
    return lat;
  }

  /** Release the weights and every built pass. */
  destroy(): void {
    this.#release();
    this.#upcast?.destroy();
  }

  #release(): void {
    for (const g of this.#graphs.values()) g.destroy();
    this.#graphs.clear();
    this.#weights.destroy();
  }

  // A non-finite output is an activation overflow (f16 tops out at 65504; the original SDXL VAE
  // is known to exceed it) or a broken input: say which and what to do, never return NaN pixels.
  #checkFinite(verb: string, out: Float32Array): void {
    const bad = out.findIndex((v) => !Number.isFinite(v));
    if (bad < 0) return;
    if (this.dtype === "f16") {
      throw new F16OverflowError(
        `Cannot ${verb}: the output has non-finite values (first at ${bad}); the activations ` +
          'overflowed f16: load the autoencoder with dtype "f32" (or an fp16-fixed VAE)',
      );
    }
    throw new RangeError(
      `Cannot ${verb}: the output has non-finite values (first at ${bad}); check the input ` +
        "for NaN or infinite values",
    );
  }

  #check(part: AePart, data: Float32Array, shape: Nchw, c: number): void {
    const verb = part === "decoder" ? "decode" : "encode";
    if (!this.parts.includes(part)) {
      throw new TypeError(`Cannot ${verb}: this autoencoder was loaded without its ${part}`);
    }
    if (
      shape.length !== 4 || !shape.every((d) => Number.isInteger(d) && d > 0) || shape[1] !== c
    ) {
      throw new TypeError(
        `Cannot ${verb}: shape [${shape}] must be [B, C=${c}, H, W] with positive integers`,
      );
    }
    if (data.length !== shape[0] * shape[1] * shape[2] * shape[3]) {
      throw new TypeError(
        `Cannot ${verb}: the input has ${data.length} values, expected [${shape}]`,
      );
    }
  }

  // Run `part` on NCHW `x`; returns the NCHW output and captured maps.
  async #run(
    part: AePart,
    x: Float32Array,
    shape: Nchw,
    capture: readonly string[],
  ): Promise<{ out: Float32Array; maps: Map<string, Float32Array> }> {
    const [b, , h, w] = shape;
    const key = `${part} ${b}×${h}×${w} ${capture.join(",")}`;
    let g = this.#graphs.get(key);
    if (!g) {
      for (const [k, old] of this.#graphs) { // one size per part is kept
        if (k.startsWith(part)) {
          old.destroy();
          this.#graphs.delete(k);
        }
      }
      g = await AeGraph.build(this.#gpu, {
        part,
        config: this.config,
        weights: this.#weights,
        dtype: this.dtype,
        b,
        h,
        w,
        capture,
      });
      this.#graphs.set(key, g);
    }
    this.#gpu.write(g.input.buf, toActArray(toNhwc(x, shape), this.dtype));
    await g.run(part === "decoder" ? "run autoencoder decoder" : "run autoencoder encoder");
    const read = async (t: typeof g.output) => {
      const n = t.b * t.h * t.w * t.c;
      const bytes = await this.#gpu.read(t.buf, n * (this.dtype === "f16" ? 2 : 4));
      return toNchw(fromActBytes(bytes, this.dtype, n), [t.b, t.h, t.w, t.c]);
    };
    const maps = new Map<string, Float32Array>();
    for (const [name, t] of g.captured) maps.set(name, await read(t));
    return { out: await read(g.output), maps };
  }
}

/** NCHW → NHWC. */
export function toNhwc(x: ArrayLike<number>, [b, c, h, w]: Nchw): Float32Array {
  const y = new Float32Array(b * c * h * w);
  for (let n = 0; n < b; n++) {
    for (let ch = 0; ch < c; ch++) {
      for (let i = 0; i < h * w; i++) y[(n * h * w + i) * c + ch] = x[(n * c + ch) * h * w + i];
    }
  }
  return y;
}

/** NHWC `[b, h, w, c]` → NCHW. */
export function toNchw(
  x: ArrayLike<number>,
  [b, h, w, c]: readonly [number, number, number, number],
): Float32Array {
  const y = new Float32Array(b * c * h * w);
  for (let n = 0; n < b; n++) {
    for (let ch = 0; ch < c; ch++) {
      for (let i = 0; i < h * w; i++) y[(n * c + ch) * h * w + i] = x[(n * h * w + i) * c + ch];
    }
  }
  return y;
}
