/**
 * CPU reference of `conv2d` (the specification): float64 loops over NHWC activations and a
 * PyTorch-layout weight `[Cout, Cin, KS, KS]`, with the optional nearest 2× upsample and SiLU on
 * the input, zero padding, bias and residual.
 *
 * @module
 */
import { conv2dGeometry, type Conv2dShape } from "./conv2d.ts";

/** Inputs of {@linkcode conv2dRef}: x [B, H, W, Cin], weight [Cout, Cin, KS, KS] (PyTorch order). */
export interface Conv2dRefInputs extends Omit<Conv2dShape, "dtype" | "bias" | "residual"> {
  x: ArrayLike<number>;
  /** [Cout, Cin, KS, KS] (PyTorch order). */
  weight: ArrayLike<number>;
  bias?: ArrayLike<number>;
  /** [B, Ho, Wo, Cout]. */
  residual?: ArrayLike<number>;
}

/**
 * `y[b, oy, ox, o] = Σ_{c, ky, kx} weight[o, c, ky, kx] · in[b, oy·s + ky − top, ox·s + kx − left, c]
 * + bias[o] + residual[b, oy, ox, o]` (then ReLU when asked), where `in` is x (or its nearest 2× upsample), through SiLU
 * when asked, and 0 outside; float64, NHWC output.
 *
 * @example
 * ```ts
 * import { conv2dRef } from "./conv2d_ref.ts";
 * const y = conv2dRef({ b: 1, h: 1, w: 1, cin: 1, cout: 1, kernel: 1, x: [2], weight: [3], bias: [1] });
 * console.log(y[0]); // 7
 * ```
 */
export function conv2dRef(p: Conv2dRefInputs): Float64Array {
  const { b, h, w, cin, cout, kernel: ks, x } = p;
  const { ho, wo, pad } = conv2dGeometry({ ...p, bias: false, residual: false, dtype: "f32" });
  const up = p.upsample ? 2 : 1;
  const st = p.stride ?? 1;
  const silu = (v: number) => v / (1 + Math.exp(-v));
  const y = new Float64Array(b * ho * wo * cout);
  for (let n = 0; n < b; n++) {
    for (let oy = 0; oy < ho; oy++) {
      for (let ox = 0; ox < wo; ox++) {
        const at = ((n * ho + oy) * wo + ox) * cout;
        for (let o = 0; o < cout; o++) {
          let s = p.bias ? p.bias[o] : 0;
          for (let ky = 0; ky < ks; ky++) {
            const iy = oy * st + ky - pad[0];
            if (iy < 0 || iy >= h * up) continue;
            for (let kx = 0; kx < ks; kx++) {
              const ix = ox * st + kx - pad[2];
              if (ix < 0 || ix >= w * up) continue;
              const src = ((n * h + Math.floor(iy / up)) * w + Math.floor(ix / up)) * cin;
              for (let c = 0; c < cin; c++) {
                const v = p.siluIn ? silu(x[src + c]) : x[src + c];
                s += p.weight[((o * cin + c) * ks + ky) * ks + kx] * v;
              }
            }
          }
          if (p.residual) s += p.residual[at + o];
          y[at + o] = p.relu ? Math.max(s, 0) : s;
        }
      }
    }
  }
  return y;
}

/**
 * Per-output Σ|w·in| + |bias| + |residual| of the same convolution (the scale of its f32
 * rounding error), float64.
 */
export function conv2dAbsRef(p: Conv2dRefInputs): Float64Array {
  const abs = (a: ArrayLike<number> | undefined) => a && Array.from(a, Math.abs);
  const silu = (v: number) => v / (1 + Math.exp(-v));
  const x = p.siluIn ? Array.from(p.x, (v) => Math.abs(silu(v))) : abs(p.x)!;
  return conv2dRef({
    ...p,
    siluIn: false,
    relu: false,
    x,
    weight: abs(p.weight)!,
    bias: abs(p.bias),
    residual: abs(p.residual),
  });
}
