/**
 * A small PNG encoder (8-bit RGB, no filtering) on Web-standard `CompressionStream`, so it runs
 * in Deno, browsers and edge runtimes alike.
 *
 * @module
 */

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(bytes: Uint8Array, crc = 0xffffffff): number {
  for (let i = 0; i < bytes.length; i++) crc = CRC_TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return crc;
}

function chunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  view.setUint32(8 + data.length, (crc32(out.subarray(4, 8 + data.length)) ^ 0xffffffff) >>> 0);
  return out;
}

async function zlib(data: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([data as Uint8Array<ArrayBuffer>]).stream()
    .pipeThrough(new CompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/**
 * Encode `rgb` (row-major, 3 bytes per pixel) as a PNG file.
 *
 * @example
 * ```ts
 * import { encodePng } from "./png.ts";
 * const png = await encodePng(new Uint8Array(2 * 2 * 3).fill(255), 2, 2);
 * console.log(png.length > 0);
 * ```
 */
export async function encodePng(
  rgb: Uint8Array,
  width: number,
  height: number,
): Promise<Uint8Array> {
  if (rgb.length !== width * height * 3) {
    throw new TypeError(
      `Cannot encode PNG: ${rgb.length} bytes, expected ${width}×${height}×3 = ${
        width * height * 3
      }`,
    );
  }
  const raw = new Uint8Array(height * (1 + width * 3));
  for (let y = 0; y < height; y++) {
    raw.set(rgb.subarray(y * width * 3, (y + 1) * width * 3), y * (1 + width * 3) + 1);
  }
  const ihdr = new Uint8Array(13);
  const v = new DataView(ihdr.buffer);
  v.setUint32(0, width);
  v.setUint32(4, height);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8-bit, truecolour, deflate, no filter, no interlace
  const parts = [
    new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]),
    chunk("IHDR", ihdr),
    chunk("IDAT", await zlib(raw)),
    chunk("IEND", new Uint8Array(0)),
  ];
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/**
 * Images in [-1, 1] ([N, 3, S, S] f32) → RGB bytes of one image, or of a grid of `cols` columns
 * with a 2-pixel white gutter.
 */
export function toRgbGrid(
  images: Float32Array,
  n: number,
  size: number,
  cols = n,
  scale = 1,
): { rgb: Uint8Array; width: number; height: number } {
  const rows = Math.ceil(n / cols), gap = n > 1 ? 2 : 0, cell = size * scale;
  const width = cols * cell + (cols - 1) * gap, height = rows * cell + (rows - 1) * gap;
  const rgb = new Uint8Array(width * height * 3).fill(255);
  for (let i = 0; i < n; i++) {
    const ox = (i % cols) * (cell + gap), oy = Math.floor(i / cols) * (cell + gap);
    for (let y = 0; y < cell; y++) {
      for (let x = 0; x < cell; x++) {
        const sy = Math.floor(y / scale), sx = Math.floor(x / scale);
        for (let c = 0; c < 3; c++) {
          const v = images[((i * 3 + c) * size + sy) * size + sx];
          rgb[((oy + y) * width + ox + x) * 3 + c] = Math.max(
            0,
            Math.min(255, Math.round((v + 1) * 127.5)),
          );
        }
      }
    }
  }
  return { rgb, width, height };
}
