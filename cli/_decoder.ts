/**
 * The image decoder of `deno task gen` for latent models (DiT-XL/2 and other latent DiTs): the
 * full autoencoder (`--vae FILE|FOLDER`, any AutoencoderKL in the LDM/BFL or diffusers layout) or
 * a TAESD-family tiny decoder (`--decoder tiny --vae taesd_decoder.safetensors`).
 *
 * @module
 */
import type { Gpu } from "../gpu/device.ts";
import { Autoencoder } from "../runtime/autoencoder.ts";
import { TinyDecoder } from "../runtime/tiny_autoencoder.ts";

/** A loaded latent → image decoder. */
export interface LatentDecoder {
  /** What it is, for the log line. */
  readonly label: string;
  /** Image pixels per latent pixel. */
  readonly factor: number;
  /** Latent channels it takes. */
  readonly zChannels: number;
  /** [B, C, h, w] latents → [B, 3, h·factor, w·factor] images in about [-1, 1]. */
  decode(
    latent: Float32Array,
    shape: readonly [number, number, number, number],
  ): Promise<Float32Array>;
  /** Release the GPU weights. */
  destroy(): void;
}

/** Load the decoder `kind` ("full" or "tiny") from `path`. */
export async function loadDecoder(gpu: Gpu, path: string, kind: string): Promise<LatentDecoder> {
  if (kind === "tiny") {
    const t = await TinyDecoder.load(gpu, path);
    return {
      label: `tiny decoder ${path}`,
      factor: t.factor,
      zChannels: t.zChannels,
      decode: (x, s) => t.decode(x, s),
      destroy: () => t.destroy(),
    };
  }
  if (kind !== "full") throw new RangeError(`--decoder must be full or tiny, got "${kind}"`);
  const ae = await Autoencoder.load(gpu, path, { parts: ["decoder"] });
  return {
    label: `autoencoder ${path} (${ae.layout} layout, ${ae.dtype})`,
    factor: ae.factor,
    zChannels: ae.config.zChannels,
    decode: (x, s) => ae.decode(x, s),
    destroy: () => ae.destroy(),
  };
}
