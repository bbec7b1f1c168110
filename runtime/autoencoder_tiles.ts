/**
 * Tiled decoding: a latent too large for one pass (an activation over the adapter's storage
 * binding or buffer limit, or over a memory budget) is decoded as overlapping square tiles of
 * one size (edge tiles are shifted inward, so one built pass serves every tile), and the decoded
 * tiles are blended with weights that ramp linearly across each overlap (1 where a tile has no
 * neighbour), normalised by the sum of weights. Each tile's GroupNorms see only that tile, so a
 * tiled image differs slightly from the untiled one; autoencoder_test.ts measures how much.
 *
 * @module
 */
import type { AeConfig } from "./autoencoder_keys.ts";

/** Tile starts along an axis of `n` latent pixels for tiles of `t` overlapping by ≥ `o`. */
export function tileStarts(n: number, t: number, o: number): number[] {
  if (n <= t) return [0];
  const step = Math.max(1, t - o);
  const starts: number[] = [];
  for (let s = 0;; s += step) {
    if (s + t >= n) {
      starts.push(n - t);
      break;
    }
    starts.push(s);
  }
  return starts;
}

/**
 * Blend weight of pixel `p` of a tile covering pixels `[a, b)` of an axis of `n` pixels: a
 * linear ramp over `ramp` pixels from each edge that has a neighbour, 1 elsewhere; never 0.
 */
export function blendWeight(p: number, a: number, b: number, n: number, ramp: number): number {
  let w = 1;
  if (a > 0) w = Math.min(w, (p - a + 0.5) / ramp);
  if (b < n) w = Math.min(w, (b - p - 0.5) / ramp);
  return w;
}

/** Bytes of the largest single activation of a decode of `[b, z, h, w]` (incl. the fused qkv). */
export function largestActivation(cfg: AeConfig, b: number, h: number, w: number, bytes: number) {
  const L = cfg.chMult.length;
  let max = 0;
  for (let i = 0; i < L; i++) {
    const c = cfg.ch * cfg.chMult[i];
    const s = 2 ** (L - 1 - i); // level i runs at s× the latent size
    max = Math.max(max, b * h * s * w * s * c);
    if (i > 0) max = Math.max(max, b * h * 2 * s * w * 2 * s * c); // its upsample's output
  }
  max = Math.max(max, b * h * w * 3 * cfg.ch * cfg.chMult[L - 1]); // the mid-block's q|k|v
  return max * bytes;
}

/**
 * The largest square latent tile (a multiple of 8, or the whole side when smaller) whose decode
 * keeps every activation within `limit` bytes; 0 when even 8×8 does not fit.
 */
export function autoTile(
  cfg: AeConfig,
  h: number,
  w: number,
  bytes: number,
  limit: number,
): number {
  if (largestActivation(cfg, 1, h, w, bytes) <= limit) return Math.max(h, w);
  for (let t = Math.floor(Math.min(h, w) / 8) * 8; t >= 8; t -= 8) {
    if (largestActivation(cfg, 1, t, t, bytes) <= limit) return t;
  }
  return 0;
}

/**
 * Decode `[b, z, h, w]` by tiles of `tile`×`tile` latent pixels overlapping by `overlap`, with
 * `decodeTile` decoding one `[1, z, th, tw]` latent to `[1, C, th·f, tw·f]`.
 */
export async function decodeTiled(
  latent: Float32Array,
  shape: readonly [number, number, number, number],
  opts: {
    tile: number;
    overlap: number;
    factor: number;
    outChannels: number;
    decodeTile: (
      x: Float32Array,
      shape: readonly [number, number, number, number],
    ) => Promise<Float32Array>;
  },
): Promise<Float32Array> {
  const [b, z, h, w] = shape;
  const { factor: f, outChannels: oc } = opts;
  const th = Math.min(opts.tile, h), tw = Math.min(opts.tile, w);
  const H = h * f, W = w * f;
  const out = new Float32Array(b * oc * H * W);
  const wsum = new Float32Array(H * W);
  const ramp = Math.max(1, opts.overlap * f);
  const ys = tileStarts(h, th, opts.overlap), xs = tileStarts(w, tw, opts.overlap);
  const sub = new Float32Array(z * th * tw);
  for (let n = 0; n < b; n++) {
    wsum.fill(0);
    const img = out.subarray(n * oc * H * W, (n + 1) * oc * H * W);
    for (const y0 of ys) {
      for (const x0 of xs) {
        for (let c = 0; c < z; c++) {
          for (let y = 0; y < th; y++) {
            const src = ((n * z + c) * h + y0 + y) * w + x0;
            sub.set(latent.subarray(src, src + tw), (c * th + y) * tw);
          }
        }
        const tile = await opts.decodeTile(sub, [1, z, th, tw]);
        const [py, px, ph, pw] = [y0 * f, x0 * f, th * f, tw * f];
        for (let y = 0; y < ph; y++) {
          const wy = blendWeight(py + y, py, py + ph, H, ramp);
          for (let x = 0; x < pw; x++) {
            const wt = wy * blendWeight(px + x, px, px + pw, W, ramp);
            const at = (py + y) * W + px + x;
            wsum[at] += wt;
            for (let c = 0; c < oc; c++) img[c * H * W + at] += wt * tile[(c * ph + y) * pw + x];
          }
        }
      }
    }
    for (let c = 0; c < oc; c++) {
      for (let i = 0; i < H * W; i++) img[c * H * W + i] /= wsum[i];
    }
  }
  return out;
}
