/**
 * CPU reference of the TAESD-family decoder (the specification of runtime/tiny_autoencoder.ts):
 * float64, NHWC, every convolution through the conv2d reference.
 *
 * @module
 */
import { conv2dRef } from "../kernels/conv2d/conv2d_ref.ts";
import type { TinyLayer } from "./tiny_autoencoder.ts";
import type { Nchw } from "./autoencoder.ts";

/**
 * Decode `latent` [B, C, h, w] with `layers` (as `readTinyDecoder` returns them): clamp
 * `tanh(z/3)·3`, the layers, then `2·x − 1`; NCHW float64 out.
 *
 * @example
 * ```ts ignore
 * import { readTinyDecoder } from "./tiny_autoencoder.ts";
 * import { tinyDecoderRef } from "./tiny_autoencoder_ref.ts";
 * const { layers } = await readTinyDecoder("taesd_decoder.safetensors");
 * const img = tinyDecoderRef(layers, new Float32Array(4 * 8 * 8), [1, 4, 8, 8]); // [1, 3, 64, 64]
 * ```
 */
export function tinyDecoderRef(
  layers: TinyLayer[],
  latent: ArrayLike<number>,
  shape: Nchw,
): Float64Array {
  const [b, c, h, w] = shape;
  let x: Float64Array = new Float64Array(b * h * w * c);
  for (let n = 0; n < b; n++) {
    for (let ch = 0; ch < c; ch++) {
      for (let i = 0; i < h * w; i++) {
        x[(n * h * w + i) * c + ch] = Math.tanh(latent[(n * c + ch) * h * w + i] / 3) * 3;
      }
    }
  }
  let hh = h, ww = w, cc = c;
  for (const l of layers) {
    const base = { b, h: hh, w: ww, kernel: 3 as const };
    if (l.kind === "conv") {
      const up = l.role === "up";
      x = conv2dRef({
        ...base,
        cin: l.cin,
        cout: l.cout,
        x,
        weight: l.w,
        bias: l.bias,
        upsample: up,
        relu: l.role === "in",
      });
      if (up) [hh, ww] = [2 * hh, 2 * ww];
    } else {
      const [c0, c1, c2] = l.convs;
      const o = { ...base, cout: l.cout };
      const h1 = conv2dRef({ ...o, cin: l.cin, x, weight: c0.w, bias: c0.bias, relu: true });
      const h2 = conv2dRef({ ...o, cin: l.cout, x: h1, weight: c1.w, bias: c1.bias, relu: true });
      const skip = l.skip ? conv2dRef({ ...o, kernel: 1, cin: l.cin, x, weight: l.skip }) : x;
      x = conv2dRef({
        ...o,
        cin: l.cout,
        x: h2,
        weight: c2.w,
        bias: c2.bias,
        residual: skip,
        relu: true,
      });
    }
    cc = l.cout;
  }
  const out = new Float64Array(b * cc * hh * ww);
  for (let n = 0; n < b; n++) {
    for (let ch = 0; ch < cc; ch++) {
      for (let i = 0; i < hh * ww; i++) {
        out[(n * cc + ch) * hh * ww + i] = 2 * x[(n * hh * ww + i) * cc + ch] - 1;
      }
    }
  }
  return out;
}
