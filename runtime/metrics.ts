/**
 * Image quality metrics against a reference image: PSNR and SSIM (Gaussian window 11, σ 1.5,
 * constants K1 = 0.01, K2 = 0.03, averaged over channels), on images in [-1, 1] laid out
 * [C, S, S] (values are clamped to [-1, 1] and mapped to [0, 1] first, as a PNG would store
 * them).
 *
 * @module
 */

function unit(v: number): number {
  return (Math.max(-1, Math.min(1, v)) + 1) / 2;
}

/** Peak signal-to-noise ratio in dB (Infinity for identical images). */
export function psnr(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) throw new TypeError("Cannot compare images of different sizes");
  let mse = 0;
  for (let i = 0; i < a.length; i++) mse += (unit(a[i]) - unit(b[i])) ** 2;
  mse /= a.length;
  return mse === 0 ? Infinity : 10 * Math.log10(1 / mse);
}

const WINDOW = (() => {
  const w = new Float64Array(11);
  let s = 0;
  for (let i = 0; i < 11; i++) s += w[i] = Math.exp(-((i - 5) ** 2) / (2 * 1.5 * 1.5));
  return w.map((v) => v / s);
})();

/** Separable Gaussian blur of one S×S plane, with the window clipped and renormalised at edges. */
function blur(p: Float64Array, s: number): Float64Array {
  const tmp = new Float64Array(s * s), out = new Float64Array(s * s);
  for (const [src, dst, horizontal] of [[p, tmp, true], [tmp, out, false]] as const) {
    for (let y = 0; y < s; y++) {
      for (let x = 0; x < s; x++) {
        let acc = 0, wsum = 0;
        for (let k = -5; k <= 5; k++) {
          const xx = horizontal ? x + k : x, yy = horizontal ? y : y + k;
          if (xx < 0 || yy < 0 || xx >= s || yy >= s) continue;
          acc += WINDOW[k + 5] * src[yy * s + xx];
          wsum += WINDOW[k + 5];
        }
        dst[y * s + x] = acc / wsum;
      }
    }
  }
  return out;
}

/** Structural similarity of two [C, S, S] images (1 for identical images). */
export function ssim(a: Float32Array, b: Float32Array, channels: number): number {
  if (a.length !== b.length) throw new TypeError("Cannot compare images of different sizes");
  const s = Math.round(Math.sqrt(a.length / channels));
  if (s * s * channels !== a.length) throw new TypeError("Cannot compare: images must be square");
  const c1 = 0.01 ** 2, c2 = 0.03 ** 2, n = s * s;
  let total = 0;
  for (let c = 0; c < channels; c++) {
    const x = new Float64Array(n), y = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      x[i] = unit(a[c * n + i]);
      y[i] = unit(b[c * n + i]);
    }
    const mx = blur(x, s), my = blur(y, s);
    const xx = blur(x.map((v) => v * v), s), yy = blur(y.map((v) => v * v), s);
    const xy = blur(x.map((v, i) => v * y[i]), s);
    let sum = 0;
    for (let i = 0; i < n; i++) {
      const vx = xx[i] - mx[i] ** 2, vy = yy[i] - my[i] ** 2, cov = xy[i] - mx[i] * my[i];
      sum += ((2 * mx[i] * my[i] + c1) * (2 * cov + c2)) /
        ((mx[i] ** 2 + my[i] ** 2 + c1) * (vx + vy + c2));
    }
    total += sum / n;
  }
  return total / channels;
}
