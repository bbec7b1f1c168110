// gemm_w4a16: Y[M,N] = (X[M,K] / smooth[K]) · Wᵀ + bias[N] (the division only with SMOOTH), then
// optionally GELU (tanh form), where W[n,k] = q[n,k] · s[n, k/64] is INT4 (ARCHITECTURE.md:
// qweight u32 [N, K/8], nibble j of word w
// = element 8w+j, two's complement; wscales f16 bits, two per u32). X and Y in ACT, bias f32,
// accumulation f32. K is a multiple of 64, so every row of X and of qweight is 16-byte aligned.
//
// Nibble decode without integer→float conversions: with p = word ^ 0x88888888 (offset binary,
// nibble value q + 8), the float whose bits are 0x4B000000 | (p & (0xF << 4j)) is exactly
// 2²³ + (q + 8)·16^j, so one AND/OR and one subtraction give q·16^j exactly. The 16^-j goes into
// X (GEMV) or into the scale (tiled), both exact powers of two.
//
// Two entry points, chosen by the launcher:
//   gemm_w4a16        tiled GEMM for M > 32 (devices where the W4A4 path is slow): the 128×128×16
//                     tiling of gemm_f16, W decoded once per tile into workgroup memory as f32
//                     (decode cost amortised over 128 rows of X). H100, M=4096, K=N=3072:
//                     29.5 TFLOP/s, the speed of gemm_f16 (compute-bound on f32 FMAs).
//   gemm_w4a16_gemv   small M (adaLN: M = 1..2): each invocation loads 16 bytes (32 weights) per
//                     row per step, GV_KT invocations cover consecutive 16-byte chunks of a row,
//                     and the X values loaded for one step serve 4 weight rows. H100, M=1,
//                     K=3072, N=18432: 22 µs (gemm_f16's GEMV: 56 µs).

alias ACT = f32;

struct Params {
  m: u32,
  k: u32,
  n: u32,
  pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<ACT>>; // [M, K/4]
@group(0) @binding(2) var<storage, read> qweight: array<vec4<u32>>; // [N, K/32]
@group(0) @binding(3) var<storage, read> wscales: array<u32>; // f16 pairs, [N, K/64] flat
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<ACT>;
// Zero points (AWQ, the adaLN of imported Nunchaku checkpoints): with ZERO_POINT the codes are
// unsigned (0..15) and W[n,k] = q·s + z[n, k/64] (f16 pairs like wscales). Decoding the unsigned
// nibble without the sign flip gives q − 8, so W = (q − 8)·s + o with o = 8·s + z (exact in f32:
// s and z are 16-bit values within a few binades of each other).
@group(0) @binding(6) var<storage, read> wzeros: array<u32>;
// Activation-aware scaling (AWQ-style, quant/awq.ts): with SMOOTH every X value is divided by its
// channel's factor, x[m, k] / smooth[k] (f32, the layout and arithmetic of quantize_act_lowrank's
// W4A4 smoothing), before it meets the weight, which was quantized as W·diag(smooth). A division,
// not a product with a stored reciprocal, so the kernel computes exactly what the quantizer
// simulated (quant/baselines.ts smoothActivations); it is one divide per X value loaded, next to
// 128 (tiled) or 4 (GEMV) multiply-adds per value and the memory-bound weight stream.
// `smooth` is a reserved word in naga's WGSL.
@group(0) @binding(7) var<storage, read> smooth_: array<vec4<f32>>; // [K/4]

override HAS_BIAS: bool = false;
override GELU: bool = false;
override ZERO_POINT: bool = false;
override SMOOTH: bool = false;
// f16 output: a value beyond ±65504 is stored as ±65504 (WGSL leaves an out-of-range f32 → f16
// conversion undefined; most drivers give ±inf). NaN stays NaN (the comparison is false).
override SATURATE: bool = false;
const F16_MAX: f32 = 65504.0;

fn to_act(v: f32) -> ACT {
  return ACT(select(v, sign(v) * F16_MAX, SATURATE && abs(v) > F16_MAX));
}
// XOR that turns a packed word into offset binary: two's complement codes flip bit 3 of each
// nibble; unsigned (zero-point) codes already are offset binary of q − 8.
override FLIP: u32 = select(0x88888888u, 0u, ZERO_POINT);

const MAGIC = 0x4B000000u; // f32 bits of 2²³
// 2²³ + 8·16^j for j = 0..3
const OFFSET = vec4<f32>(8388616.0, 8388736.0, 8390656.0, 8421376.0);
const MASKS = vec4<u32>(0xFu, 0xF0u, 0xF00u, 0xF000u);
const INV16 = vec4<f32>(1.0, 0.0625, 0.00390625, 0.000244140625); // 16^-j

// Nibbles 0..3 of an offset-binary word p as q_j · 16^j (exact).
fn dec4(p: u32) -> vec4<f32> {
  return bitcast<vec4<f32>>((vec4(p) & MASKS) | vec4(MAGIC)) - OFFSET;
}

// Group scale s[n, g] from the f16 pairs.
fn scale(n: u32, g: u32) -> f32 {
  let i = n * (params.k / 64u) + g;
  return unpack2x16float(wscales[i >> 1u])[i & 1u];
}

// Offset o = 8·s + z of group (n, g) (0 without zero points).
fn zero_offset(n: u32, g: u32) -> f32 {
  if (!ZERO_POINT) {
    return 0.0;
  }
  let i = n * (params.k / 64u) + g;
  return 8.0 * scale(n, g) + unpack2x16float(wzeros[i >> 1u])[i & 1u];
}

fn gelu(v: f32) -> f32 {
  // 0.5·v·(1 + tanh(u)) = v · sigmoid(2u): no tanh overflow, exact limits at ±∞.
  let u = 0.7978845608028654 * (v + 0.044715 * v * v * v);
  return v / (1.0 + exp(-2.0 * u));
}

fn epilogue(v: f32, col: u32) -> f32 {
  var r = v;
  if (HAS_BIAS) {
    r += bias[col];
  }
  if (GELU) {
    r = gelu(r);
  }
  return r;
}

// ---- tiled GEMM ----

const BM = 128u;
const BN = 128u;
const BK = 16u;
override PAD: u32 = 4; // floats of padding per workgroup-memory row: 4 (fewer conflicts) or 0
override SX: u32 = (BM + PAD) / 4u; // vec4 stride of one k row (BM = BN)
override S_LEN: u32 = BK * SX;

var<workgroup> xs: array<vec4<f32>, S_LEN>; // [BK][BM + PAD], k-major
var<workgroup> ws: array<vec4<f32>, S_LEN>; // [BK][BN + PAD], k-major, dequantised

fn store4(row: u32, col: u32, v: vec4<f32>) {
  if (row >= params.m) {
    return;
  }
  let base = row * params.n;
  for (var j = 0u; j < 4u; j++) {
    let c = col + j;
    if (c < params.n) {
      y[base + c] = to_act(epilogue(v[j], c));
    }
  }
}

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

// X[row, 4q..4q+3] / smooth (SMOOTH), zero for rows past M.
fn ldx(row: u32, q: u32) -> vec4<f32> {
  var v = vec4<f32>(x[min(row, params.m - 1u) * (params.k / 4u) + q]);
  if (SMOOTH) {
    v = v / smooth_[q];
  }
  return select(vec4<f32>(), v, row < params.m);
}

@compute @workgroup_size(16, 16)
fn gemm_w4a16(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let K = params.k;
  let N = params.n;
  let tx = lid.x;
  let ty = lid.y;
  let tid = ty * 16u + tx;
  let m0 = wid.y * BM;
  let n0 = wid.x * BN;
  // X: invocation loads k-quad xq of rows xr and xr + 64 (vec4 loads). A subgroup of 32 covers
  // 16 rows × 2 quads, so its transposing stores hit bank 16·xq + row: all distinct (PAD = 4).
  let xq = (tid >> 4u) & 3u;
  let xr = (tid & 15u) | ((tid >> 6u) << 4u);
  let xso = 4u * xq * SX + (xr >> 2u);
  let xc = xr & 3u;
  // W: invocation loads word wh (k = 8wh..8wh+7 of the tile) of row wr.
  let wr = (tid & 15u) | ((tid >> 5u) << 4u);
  let wh = (tid >> 4u) & 1u;
  let wso = 8u * wh * SX + (wr >> 2u);
  let wc = wr & 3u;
  let wrow = min(n0 + wr, N - 1u);
  let wok = n0 + wr < N;

  var pxa: vec4<f32>; // X[m0 + xr, 4xq..4xq+3] of the tile
  var pxb: vec4<f32>; // X[m0 + xr + 64, ...]
  var pwa: vec4<f32>; // W[n0 + wr, 8wh..8wh+3], dequantised
  var pwb: vec4<f32>; // W[n0 + wr, 8wh+4..8wh+7]
  var acc: array<vec4<f32>, 16>;

  let tiles = K / BK;
  for (var t = 0u; t <= tiles; t++) {
    if (t > 0u) {
      workgroupBarrier();
      xs[xso][xc] = pxa.x;
      xs[xso + SX][xc] = pxa.y;
      xs[xso + 2u * SX][xc] = pxa.z;
      xs[xso + 3u * SX][xc] = pxa.w;
      xs[xso + 16u][xc] = pxb.x;
      xs[xso + SX + 16u][xc] = pxb.y;
      xs[xso + 2u * SX + 16u][xc] = pxb.z;
      xs[xso + 3u * SX + 16u][xc] = pxb.w;
      ws[wso][wc] = pwa.x;
      ws[wso + SX][wc] = pwa.y;
      ws[wso + 2u * SX][wc] = pwa.z;
      ws[wso + 3u * SX][wc] = pwa.w;
      ws[wso + 4u * SX][wc] = pwb.x;
      ws[wso + 5u * SX][wc] = pwb.y;
      ws[wso + 6u * SX][wc] = pwb.z;
      ws[wso + 7u * SX][wc] = pwb.w;
      workgroupBarrier();
    }
    if (t < tiles) {
      let q = t * (BK / 4u) + xq;
      pxa = ldx(m0 + xr, q);
      pxb = ldx(m0 + xr + 64u, q);
      let wi = wrow * (K / 8u) + t * (BK / 8u) + wh; // u32 index of the word
      let p = qweight[wi >> 2u][wi & 3u] ^ FLIP;
      let s = select(0.0, scale(wrow, t * BK / 64u), wok) * INV16;
      let o = vec4(select(0.0, zero_offset(wrow, t * BK / 64u), wok));
      pwa = fma(dec4(p), s, o);
      pwb = fma(dec4(p >> 16u), s, o);
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

// ---- small-M GEMV ----

override GV_KT: u32 = 32; // invocations along K per weight row: 8, 16 or 32 (16 bytes each)
override GV_RG: u32 = 256u / GV_KT; // row groups per workgroup
override GV_ROWS: u32 = 4u * GV_RG; // output columns per workgroup: 4 rows per invocation

var<workgroup> red: array<f32, 1024>; // [GV_KT][GV_ROWS] partial sums

// Σ over the 32 weights of one 16-byte chunk q with the prescaled X values x0..x7
// (x_i holds k = 4i..4i+3 of the chunk, times 16^-(k mod 4)).
fn dot32(
  q: vec4<u32>,
  x0: vec4<f32>,
  x1: vec4<f32>,
  x2: vec4<f32>,
  x3: vec4<f32>,
  x4: vec4<f32>,
  x5: vec4<f32>,
  x6: vec4<f32>,
  x7: vec4<f32>,
) -> f32 {
  let p = q ^ vec4(FLIP);
  var s = x0 * dec4(p.x);
  s = fma(x1, dec4(p.x >> 16u), s);
  s = fma(x2, dec4(p.y), s);
  s = fma(x3, dec4(p.y >> 16u), s);
  s = fma(x4, dec4(p.z), s);
  s = fma(x5, dec4(p.z >> 16u), s);
  s = fma(x6, dec4(p.w), s);
  s = fma(x7, dec4(p.w >> 16u), s);
  return (s.x + s.y) + (s.z + s.w);
}

// X quad i (k-quad q of its row) / smooth (SMOOTH), times 16^-(k mod 4).
fn ldxs(i: u32, q: u32) -> vec4<f32> {
  var v = vec4<f32>(x[i]);
  if (SMOOTH) {
    v = v / smooth_[q];
  }
  return v * INV16;
}

// Workgroup (m, b) computes Y[m, ROWS·b ..][:ROWS]. Invocation (row group g, lane l) sums the
// 32-weight chunks c = l, l + KT, ... of rows n = ROWS·b + g + RG·r, r < 4.
@compute @workgroup_size(256)
fn gemm_w4a16_gemv(
  @builtin(local_invocation_index) tid: u32,
  @builtin(workgroup_id) wid: vec3u,
) {
  let K = params.k;
  let N = params.n;
  let m = wid.x;
  let lane = tid % GV_KT;
  let g = tid / GV_KT;
  let nb = wid.y * GV_ROWS + g;
  let n0 = min(nb, N - 1u);
  let n1 = min(nb + GV_RG, N - 1u);
  let n2 = min(nb + 2u * GV_RG, N - 1u);
  let n3 = min(nb + 3u * GV_RG, N - 1u);
  let chunks = K / 32u;
  let xrow = m * (K / 4u);
  var acc = vec4<f32>();
  for (var c = lane; c < chunks; c += GV_KT) {
    let q0 = qweight[n0 * chunks + c];
    let q1 = qweight[n1 * chunks + c];
    let q2 = qweight[n2 * chunks + c];
    let q3 = qweight[n3 * chunks + c];
    let kq = c * 8u;
    let xb = xrow + kq;
    let x0 = ldxs(xb, kq);
    let x1 = ldxs(xb + 1u, kq + 1u);
    let x2 = ldxs(xb + 2u, kq + 2u);
    let x3 = ldxs(xb + 3u, kq + 3u);
    let x4 = ldxs(xb + 4u, kq + 4u);
    let x5 = ldxs(xb + 5u, kq + 5u);
    let x6 = ldxs(xb + 6u, kq + 6u);
    let x7 = ldxs(xb + 7u, kq + 7u);
    let gi = c >> 1u;
    let d = vec4(
      dot32(q0, x0, x1, x2, x3, x4, x5, x6, x7),
      dot32(q1, x0, x1, x2, x3, x4, x5, x6, x7),
      dot32(q2, x0, x1, x2, x3, x4, x5, x6, x7),
      dot32(q3, x0, x1, x2, x3, x4, x5, x6, x7),
    );
    let s = vec4(scale(n0, gi), scale(n1, gi), scale(n2, gi), scale(n3, gi));
    acc = fma(d, s, acc);
    if (ZERO_POINT) {
      // Σ of the chunk's 32 raw x values (x_i holds them times 16^-(k mod 4))
      let xs4 = ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7));
      let xsum = dot(xs4, vec4<f32>(1.0, 16.0, 256.0, 4096.0));
      let o = vec4(zero_offset(n0, gi), zero_offset(n1, gi), zero_offset(n2, gi),
        zero_offset(n3, gi));
      acc = fma(o, vec4(xsum), acc);
    }
  }
  red[lane * GV_ROWS + g] = acc.x;
  red[lane * GV_ROWS + g + GV_RG] = acc.y;
  red[lane * GV_ROWS + g + 2u * GV_RG] = acc.z;
  red[lane * GV_ROWS + g + 3u * GV_RG] = acc.w;
  workgroupBarrier();
  if (tid < GV_ROWS) {
    var sum = 0.0;
    for (var l = 0u; l < GV_KT; l++) {
      sum += red[l * GV_ROWS + tid];
    }
    let n = wid.y * GV_ROWS + tid;
    if (n < N) {
      y[m * N + n] = to_act(epilogue(sum, n));
    }
  }
}
