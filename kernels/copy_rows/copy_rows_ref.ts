/**
 * CPU reference of `copy_rows` (the specification).
 *
 * @module
 */
import type { CopyRowsShape } from "./copy_rows.ts";

/** f16's largest finite value. */
const F16_MAX = 65504;

/**
 * Copy rows `srcOffset .. + n` of each image of `src` to rows `dstOffset .. + n` of the same
 * image of `dst` (modified in place; other rows untouched). Values are copied as they are; an
 * f32 → f16 copy (`dtype` f32, `dstDtype` f16) clamps them to ±65504 (the f16 rounding itself is
 * left to the caller's comparison).
 *
 * @example
 * ```ts
 * import { copyRowsRef } from "./copy_rows_ref.ts";
 * const dst = new Float64Array(3);
 * copyRowsRef({
 *   b: 1, n: 1, width: 1, srcRows: 2, srcOffset: 1, dstRows: 3, dstOffset: 2, dtype: "f32",
 * }, [5, 7], dst);
 * console.log(dst); // Float64Array [0, 0, 7]
 * ```
 */
export function copyRowsRef(
  s: CopyRowsShape,
  src: ArrayLike<number>,
  dst: Float64Array | Float32Array,
): void {
  const narrow = s.dtype === "f32" && s.dstDtype === "f16";
  for (let b = 0; b < s.b; b++) {
    for (let t = 0; t < s.n; t++) {
      const si = (b * s.srcRows + s.srcOffset + t) * s.width;
      const di = (b * s.dstRows + s.dstOffset + t) * s.width;
      for (let c = 0; c < s.width; c++) {
        dst[di + c] = narrow ? Math.max(-F16_MAX, Math.min(F16_MAX, src[si + c])) : src[si + c];
      }
    }
  }
}
