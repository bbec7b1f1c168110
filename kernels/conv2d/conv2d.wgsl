// conv2d: a 2-D convolution over NHWC activations as an implicit GEMM,
//   Y[M, N] = act(im2col(X)[M, K] · W[N, K]ᵀ + bias[N] (+ residual[M, N])), act = ReLU or none
// with M = B·Ho·Wo output pixels, N = Cout, K = KS·KS·Cin; the column k of im2col is the tap
// (ky, kx) = ((k / Cin) / KS, (k / Cin) % KS) of input channel k % Cin. X, W, residual, Y in ACT
// (f16 with shader-f16, else f32), bias f32, accumulation f32.
//
// Layouts (row-major):
//   x        [B, H, W, Cin]      the stored input (before the optional 2× upsample)
//   w        [Cout, KS, KS, Cin] = [N, K] (PyTorch's [Cout, Cin, kh, kw] repacked by the launcher's
//                                 caller, see conv2d.ts packConvWeight)
//   residual [B, Ho, Wo, Cout]   added in the epilogue when HAS_RESIDUAL
//   y        [B, Ho, Wo, Cout]
//
// Input read (the gather of the implicit GEMM): the logical input is X, or with UPSAMPLE its
// nearest 2× upsample (2H × 2W, pixel (iy, ix) = X[iy/2, ix/2]); output pixel (oy, ox) reads
// logical pixel (oy·STRIDE + ky − pad_t, ox·STRIDE + kx − pad_l), zero outside the logical input
// (so a right/bottom-only pad is pad_t = pad_l = 0 with Ho, Wo one larger). With SILU_IN the
// value is silu(x) before the zero padding applies (silu(0) = 0, so the order does not matter).
//
// Two entry points, chosen by the launcher:
//   conv2d         the tiled implicit GEMM below, for Cout > 8.
//   conv2d_narrow  Cout ≤ 8 (conv_out to RGB, the encoder's moments, quant_conv): one invocation
//                  per output pixel accumulates all its ≤ 8 channels in two vec4, walking its
//                  KS² taps (bounds checked once per tap) and Cin; a 128-wide N tile would
//                  compute 128 columns to keep 3 (43× the work at the decoder's conv_out).
//
// Tiling of conv2d: the gemm_f16 tiled kernel's (see gemm_f16.wgsl): a 16×16 workgroup owns a 128×128
// block of Y, each invocation an 8×8 register tile of named vec4s; K advances 16 at a time with
// the next tile's gather issued into registers before the current tile is multiplied. The output
// pixel of each of an invocation's 8 load rows is decoded once (not per k step); each k step
// decodes its (tap, channel) once for all 8 rows.

alias ACT = f32;

struct Params {
  b: u32,
  h: u32, // stored input height
  w: u32, // stored input width
  cin: u32,
  ho: u32,
  wo: u32,
  n: u32, // Cout
  k: u32, // KS·KS·Cin
  m: u32, // B·Ho·Wo
  pad_t: u32,
  pad_l: u32,
  pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<ACT>;
@group(0) @binding(2) var<storage, read> w: array<ACT>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> residual: array<ACT>;
@group(0) @binding(5) var<storage, read_write> y: array<ACT>;
// INT8 weights (W_INT8): codes [N, K] four per u32 (element i in byte i & 3 of word i >> 2, two's
// complement), and one f32 scale per output channel: W[n, k] = wq[n, k] · wscale[n].
@group(0) @binding(6) var<storage, read> wq: array<u32>;
@group(0) @binding(7) var<storage, read> wscale: array<f32>;

override KS: u32 = 3; // kernel size, 1 or 3
override STRIDE: u32 = 1; // 1 or 2
override UPSAMPLE: bool = false; // nearest 2× upsample on the input read
override SILU_IN: bool = false; // silu on the input read
override HAS_BIAS: bool = false;
override HAS_RESIDUAL: bool = false;
override W_INT8: bool = false; // weights from wq/wscale instead of w
override RELU: bool = false; // max(0, ·) after bias and residual (TAESD blocks)

const BM = 128u; // output pixels (M) per workgroup
const BN = 128u; // output channels (N) per workgroup
const BK = 16u; // K per tile
override PAD: u32 = 4; // floats of padding per workgroup-memory row: 4 (conflict-free) or 0
override SX: u32 = (BM + PAD) / 4u;
override S_LEN: u32 = BK * SX;

var<workgroup> xs: array<vec4<f32>, S_LEN>; // [BK][BM + PAD], k-major
var<workgroup> ws: array<vec4<f32>, S_LEN>; // [BK][BN + PAD], k-major

const OUTSIDE = -1048576; // an origin row for pixels past M: every tap falls outside

fn silu(v: f32) -> f32 {
  return v / (1.0 + exp(-v));
}

// Logical input size (after the optional upsample).
fn hl() -> i32 {
  return i32(select(params.h, 2u * params.h, UPSAMPLE));
}

fn wl() -> i32 {
  return i32(select(params.w, 2u * params.w, UPSAMPLE));
}

// The gather: X at logical pixel (iy, ix) of the image whose first pixel is `pix0`, channel ci;
// 0 outside the logical input or when !kin (k past K). The index is clamped, the value masked.
fn ldx(pix0: u32, iy: i32, ix: i32, ci: u32, kin: bool) -> f32 {
  let inside = kin && iy >= 0 && ix >= 0 && iy < hl() && ix < wl();
  var sy = u32(clamp(iy, 0, hl() - 1));
  var sx = u32(clamp(ix, 0, wl() - 1));
  if (UPSAMPLE) {
    sy = sy >> 1u;
    sx = sx >> 1u;
  }
  var v = f32(x[(pix0 + sy * params.w + sx) * params.cin + ci]);
  if (SILU_IN) {
    v = silu(v);
  }
  return select(0.0, v, inside);
}

fn ldw(row: u32, kc: u32, kin: bool) -> f32 {
  let i = min(row, params.n - 1u) * params.k + kc;
  var v: f32;
  if (W_INT8) {
    v = f32(extractBits(i32(wq[i >> 2u]), (i & 3u) * 8u, 8u)); // the scale is applied per column
  } else {
    v = f32(w[i]);
  }
  return select(0.0, v, kin && row < params.n);
}

// Output pixel m → (first input pixel of its image, top row, left column of its window).
struct Origin {
  pix0: u32,
  iy: i32,
  ix: i32,
}

fn origin(m: u32) -> Origin {
  if (m >= params.m) {
    return Origin(0u, OUTSIDE, OUTSIDE);
  }
  let hw = params.ho * params.wo;
  let b = m / hw;
  let r = m - b * hw;
  let oy = r / params.wo;
  let ox = r - oy * params.wo;
  return Origin(
    b * params.h * params.w,
    i32(oy * STRIDE) - i32(params.pad_t),
    i32(ox * STRIDE) - i32(params.pad_l),
  );
}

fn epilogue(v: f32, row: u32, col: u32) -> f32 {
  var r = v;
  if (W_INT8) {
    r *= wscale[col];
  }
  if (HAS_BIAS) {
    r += bias[col];
  }
  if (HAS_RESIDUAL) {
    r += f32(residual[row * params.n + col]);
  }
  if (RELU) {
    r = max(r, 0.0);
  }
  return r;
}

fn store4(row: u32, col: u32, v: vec4<f32>) {
  if (row >= params.m) {
    return;
  }
  let base = row * params.n;
  for (var j = 0u; j < 4u; j++) {
    let c = col + j;
    if (c < params.n) {
      y[base + c] = ACT(epilogue(v[j], row, c));
    }
  }
}

// acc[2i + h] += a_i · b_h for the 8×8 outer product of rows (a0, a1) and columns (b0, b1).
fn mac(
  acc: ptr<function, array<vec4<f32>, 16>>,
  a0: vec4<f32>,
  a1: vec4<f32>,
  b0: vec4<f32>,
  b1: vec4<f32>,
) {
  (*acc)[0] = fma(vec4(a0.x), b0, (*acc)[0]);
  (*acc)[1] = fma(vec4(a0.x), b1, (*acc)[1]);
  (*acc)[2] = fma(vec4(a0.y), b0, (*acc)[2]);
  (*acc)[3] = fma(vec4(a0.y), b1, (*acc)[3]);
  (*acc)[4] = fma(vec4(a0.z), b0, (*acc)[4]);
  (*acc)[5] = fma(vec4(a0.z), b1, (*acc)[5]);
  (*acc)[6] = fma(vec4(a0.w), b0, (*acc)[6]);
  (*acc)[7] = fma(vec4(a0.w), b1, (*acc)[7]);
  (*acc)[8] = fma(vec4(a1.x), b0, (*acc)[8]);
  (*acc)[9] = fma(vec4(a1.x), b1, (*acc)[9]);
  (*acc)[10] = fma(vec4(a1.y), b0, (*acc)[10]);
  (*acc)[11] = fma(vec4(a1.y), b1, (*acc)[11]);
  (*acc)[12] = fma(vec4(a1.z), b0, (*acc)[12]);
  (*acc)[13] = fma(vec4(a1.z), b1, (*acc)[13]);
  (*acc)[14] = fma(vec4(a1.w), b0, (*acc)[14]);
  (*acc)[15] = fma(vec4(a1.w), b1, (*acc)[15]);
}

fn step(acc: ptr<function, array<vec4<f32>, 16>>, k: u32, tx: u32, ty: u32) {
  let xo = k * SX + ty;
  let wo = k * SX + tx;
  mac(acc, xs[xo], xs[xo + 16u], ws[wo], ws[wo + 16u]);
}

@compute @workgroup_size(16, 16)
fn conv2d(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let K = params.k;
  let tx = lid.x;
  let ty = lid.y;
  let tid = ty * 16u + tx;
  let m0 = wid.y * BM;
  let n0 = wid.x * BN;
  let rl = tid & 3u;
  let kk = (tid >> 2u) & 15u;
  let r0 = (tid >> 6u) * 4u + rl; // load rows r0 + 16i, i < 8
  let xr = m0 + r0;
  let wr = n0 + r0;
  let so = kk * SX + (r0 >> 2u);
  // The 8 load rows' output pixels, decoded once.
  let o0 = origin(xr);
  let o1 = origin(xr + 16u);
  let o2 = origin(xr + 32u);
  let o3 = origin(xr + 48u);
  let o4 = origin(xr + 64u);
  let o5 = origin(xr + 80u);
  let o6 = origin(xr + 96u);
  let o7 = origin(xr + 112u);
  var pxa = vec4<f32>(0.0);
  var pxb = vec4<f32>(0.0);
  var pwa = vec4<f32>(0.0);
  var pwb = vec4<f32>(0.0);
  var acc: array<vec4<f32>, 16>;
  for (var i = 0u; i < 16u; i++) {
    acc[i] = vec4<f32>(0.0);
  }

  let tiles = (K + BK - 1u) / BK;
  for (var t = 0u; t <= tiles; t++) {
    if (t > 0u) {
      workgroupBarrier();
      xs[so][rl] = pxa.x;
      xs[so + 4u][rl] = pxa.y;
      xs[so + 8u][rl] = pxa.z;
      xs[so + 12u][rl] = pxa.w;
      xs[so + 16u][rl] = pxb.x;
      xs[so + 20u][rl] = pxb.y;
      xs[so + 24u][rl] = pxb.z;
      xs[so + 28u][rl] = pxb.w;
      ws[so][rl] = pwa.x;
      ws[so + 4u][rl] = pwa.y;
      ws[so + 8u][rl] = pwa.z;
      ws[so + 12u][rl] = pwa.w;
      ws[so + 16u][rl] = pwb.x;
      ws[so + 20u][rl] = pwb.y;
      ws[so + 24u][rl] = pwb.z;
      ws[so + 28u][rl] = pwb.w;
      workgroupBarrier();
    }
    if (t < tiles) {
      let kg = t * BK + kk;
      let kin = kg < K;
      let kc = min(kg, K - 1u);
      let tap = kc / params.cin;
      let ci = kc - tap * params.cin;
      let ky = i32(tap / KS);
      let kx = i32(tap % KS);
      pxa = vec4(
        ldx(o0.pix0, o0.iy + ky, o0.ix + kx, ci, kin),
        ldx(o1.pix0, o1.iy + ky, o1.ix + kx, ci, kin),
        ldx(o2.pix0, o2.iy + ky, o2.ix + kx, ci, kin),
        ldx(o3.pix0, o3.iy + ky, o3.ix + kx, ci, kin),
      );
      pxb = vec4(
        ldx(o4.pix0, o4.iy + ky, o4.ix + kx, ci, kin),
        ldx(o5.pix0, o5.iy + ky, o5.ix + kx, ci, kin),
        ldx(o6.pix0, o6.iy + ky, o6.ix + kx, ci, kin),
        ldx(o7.pix0, o7.iy + ky, o7.ix + kx, ci, kin),
      );
      pwa = vec4(ldw(wr, kc, kin), ldw(wr + 16u, kc, kin), ldw(wr + 32u, kc, kin), ldw(wr + 48u, kc, kin));
      pwb = vec4(ldw(wr + 64u, kc, kin), ldw(wr + 80u, kc, kin), ldw(wr + 96u, kc, kin), ldw(wr + 112u, kc, kin));
    }
    if (t > 0u) {
      for (var k = 0u; k < BK; k += 4u) {
        step(&acc, k, tx, ty);
        step(&acc, k + 1u, tx, ty);
        step(&acc, k + 2u, tx, ty);
        step(&acc, k + 3u, tx, ty);
      }
    }
  }

  let ra = m0 + ty * 4u;
  let rb = ra + BM / 2u;
  let ca = n0 + tx * 4u;
  let cb = ca + BN / 2u;
  store4(ra, ca, acc[0]);
  store4(ra, cb, acc[1]);
  store4(ra + 1u, ca, acc[2]);
  store4(ra + 1u, cb, acc[3]);
  store4(ra + 2u, ca, acc[4]);
  store4(ra + 2u, cb, acc[5]);
  store4(ra + 3u, ca, acc[6]);
  store4(ra + 3u, cb, acc[7]);
  store4(rb, ca, acc[8]);
  store4(rb, cb, acc[9]);
  store4(rb + 1u, ca, acc[10]);
  store4(rb + 1u, cb, acc[11]);
  store4(rb + 2u, ca, acc[12]);
  store4(rb + 2u, cb, acc[13]);
  store4(rb + 3u, ca, acc[14]);
  store4(rb + 3u, cb, acc[15]);
}

// ---- narrow Cout (≤ 8) ----

const NARROW_WG = 64u;

// Y row m, columns c..c+3 (those < N).
fn store_narrow(m: u32, c: u32, v: vec4<f32>) {
  for (var j = 0u; j < 4u; j++) {
    if (c + j < params.n) {
      y[m * params.n + c + j] = ACT(epilogue(v[j], m, c + j));
    }
  }
}

@compute @workgroup_size(NARROW_WG)
fn conv2d_narrow(
  @builtin(local_invocation_index) lid: u32,
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
) {
  let m = (wid.y * nwg.x + wid.x) * NARROW_WG + lid;
  if (m >= params.m) {
    return;
  }
  let o = origin(m);
  var a0 = vec4<f32>(0.0); // channels 0..3
  var a1 = vec4<f32>(0.0); // channels 4..7
  let cin = params.cin;
  for (var tap = 0u; tap < KS * KS; tap++) {
    let iy = o.iy + i32(tap / KS);
    let ix = o.ix + i32(tap % KS);
    if (iy < 0 || ix < 0 || iy >= hl() || ix >= wl()) {
      continue;
    }
    var sy = u32(iy);
    var sx = u32(ix);
    if (UPSAMPLE) {
      sy = sy >> 1u;
      sx = sx >> 1u;
    }
    let base = (o.pix0 + sy * params.w + sx) * cin;
    let k0 = tap * cin;
    for (var ci = 0u; ci < cin; ci++) {
      var v = f32(x[base + ci]);
      if (SILU_IN) {
        v = silu(v);
      }
      let kc = k0 + ci;
      a0 = fma(vec4(v), vec4(ldw(0u, kc, true), ldw(1u, kc, true), ldw(2u, kc, true), ldw(3u, kc, true)), a0);
      a1 = fma(vec4(v), vec4(ldw(4u, kc, true), ldw(5u, kc, true), ldw(6u, kc, true), ldw(7u, kc, true)), a1);
    }
  }
  store_narrow(m, 0u, a0);
  store_narrow(m, 4u, a1);
}
