// gemm_f16: Y[M,N] = X[M,K] · W[N,K]ᵀ + bias[N], then optionally GELU (tanh form).
// X, W, Y in ACT (f16 with shader-f16, else f32), bias f32, accumulation f32.
//
// Two entry points, chosen by the launcher:
//   gemm_f16        tiled GEMM for M > 32. A workgroup of 16×16 invocations owns a 128×128 block
//                   of Y; each invocation owns an 8×8 register tile (rows ty·4+0..3 and
//                   64+ty·4+0..3, columns likewise), so one k step reads two vec4 of X and two
//                   vec4 of W from workgroup memory for 64 FMAs (16 FMAs per 16-byte read).
//                   Per 128×128×16 tile: 8 KiB of ACT in, 262 144 FMAs. K advances BK = 16 at a
//                   time; the next tile's global loads are issued into registers before the
//                   current tile is multiplied. Global loads are scalar but coalesced (8
//                   consecutive k of 4 rows per 32 invocations), so any K works; they are stored
//                   transposed (k-major) into workgroup memory, rows padded by PAD = 4 floats so
//                   those stores hit 32 distinct banks. Measured on an H100 (Vulkan, f16,
//                   M=4096, K=N=3072): 29.7 TFLOP/s, 44% of the 67 TFLOP/s f32 FMA peak.
//   gemm_f16_gemv   small M (≤ 32, e.g. adaLN): one workgroup per (row m, 32 columns); the 32
//                   invocations of a lane set split K of one weight row, so each weight load
//                   instruction reads 32 consecutive elements; 4 rows per lane set share the X
//                   loads; partial sums are reduced through workgroup memory. Memory-bound on
//                   W: 2.0 TB/s on an H100 at M=1, K=3072, N=18432.

alias ACT = f32;

struct Params {
  m: u32,
  k: u32,
  n: u32,
  pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<ACT>;
@group(0) @binding(2) var<storage, read> w: array<ACT>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<ACT>;

override HAS_BIAS: bool = false;
override GELU: bool = false;
// f16 output: a value beyond ±65504 is stored as ±65504 (WGSL leaves an out-of-range f32 → f16
// conversion undefined; most drivers give ±inf). NaN stays NaN (the comparison is false).
override SATURATE: bool = false;
const F16_MAX: f32 = 65504.0;

fn to_act(v: f32) -> ACT {
  return ACT(select(v, sign(v) * F16_MAX, SATURATE && abs(v) > F16_MAX));
}

// ---- tiled GEMM ----

// The tile is fixed (128×128×16, 16×16 invocations of 8×8 outputs): generic per-invocation
// tiles need register arrays indexed in loops, which the Vulkan path spilled to local memory
// (measured 2× slower on an H100), so the loads and the multiply below are written out.
const BM = 128u; // rows of X (M) per workgroup
const BN = 128u; // rows of W (N) per workgroup
const BK = 16u; // K per tile
override PAD: u32 = 4; // floats of padding per workgroup-memory row: 4 (conflict-free) or 0
override SX: u32 = (BM + PAD) / 4u; // vec4 stride of one k row of xs / ws (BM = BN)
override S_LEN: u32 = BK * SX;

var<workgroup> xs: array<vec4<f32>, S_LEN>; // [BK][BM + PAD], k-major
var<workgroup> ws: array<vec4<f32>, S_LEN>; // [BK][BN + PAD], k-major

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

// Store up to 4 consecutive outputs of one row (columns col..col+3), guarded against M and N.
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

// X[row, kc] as f32, 0 outside the matrix (the index is clamped, the value masked).
fn ldx(row: u32, kc: u32, kin: bool) -> f32 {
  let v = f32(x[min(row, params.m - 1u) * params.k + kc]);
  return select(0.0, v, kin && row < params.m);
}

fn ldw(row: u32, kc: u32, kin: bool) -> f32 {
  let v = f32(w[min(row, params.n - 1u) * params.k + kc]);
  return select(0.0, v, kin && row < params.n);
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

// One k step: rows ty·4.. and 64+ty·4.. of the X tile, columns tx·4.. and 64+tx·4.. of W.
fn step(acc: ptr<function, array<vec4<f32>, 16>>, k: u32, tx: u32, ty: u32) {
  let xo = k * SX + ty;
  let wo = k * SX + tx;
  mac(acc, xs[xo], xs[xo + 16u], ws[wo], ws[wo + 16u]);
}

@compute @workgroup_size(16, 16)
fn gemm_f16(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let K = params.k;
  let tx = lid.x;
  let ty = lid.y;
  let tid = ty * 16u + tx;
  let m0 = wid.y * BM;
  let n0 = wid.x * BN;
  // Load mapping: 32 invocations read 4 consecutive rows × 8 consecutive k (coalesced), and
  // their transposing stores hit 32 distinct banks when PAD = 4: bank = 4·kk + row mod 32.
  let rl = tid & 3u;
  let kk = (tid >> 2u) & 15u;
  let r0 = (tid >> 6u) * 4u + rl; // rows r0 + 16i, i < 8
  let xr = m0 + r0;
  let wr = n0 + r0;
  let so = kk * SX + (r0 >> 2u); // vec4 slot of row r0 at k = kk; row r0 + 16i is 4i further
  var pxa: vec4<f32>; // prefetched X[xr + 16i, kk], i < 4
  var pxb: vec4<f32>; // i = 4..7
  var pwa: vec4<f32>;
  var pwb: vec4<f32>;
  var acc: array<vec4<f32>, 16>; // acc[2i + h]: row i of the 8×8 tile, columns 4h..4h+3

  let tiles = (K + BK - 1u) / BK;
  for (var t = 0u; t <= tiles; t++) {
    // Stage: the registers of tile t-1 go to workgroup memory (t ≥ 1), tile t is fetched
    // (t < tiles) while tile t-1 is multiplied.
    if (t > 0u) {
      workgroupBarrier(); // everyone is done reading tile t-2
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
      pxa = vec4(ldx(xr, kc, kin), ldx(xr + 16u, kc, kin), ldx(xr + 32u, kc, kin), ldx(xr + 48u, kc, kin));
      pxb = vec4(ldx(xr + 64u, kc, kin), ldx(xr + 80u, kc, kin), ldx(xr + 96u, kc, kin), ldx(xr + 112u, kc, kin));
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

// ---- small-M GEMV ----

const GV_LANES = 32u; // invocations splitting K of one weight row
const GV_SETS = 8u; // lane sets per workgroup
const GV_RN = 4u; // weight rows per lane set
const GV_ROWS = GV_SETS * GV_RN; // output columns per workgroup (32)

var<workgroup> red: array<f32, 1024>; // [GV_RN][GV_SETS][GV_LANES] partial sums

// Workgroup (m, b) computes Y[m, 32b .. 32b+31]; invocation (lane set s, lane l) sums
// k = l, l+32, ... of rows n = 32b + s + 8r (r < 4).
@compute @workgroup_size(256)
fn gemm_f16_gemv(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3u) {
  let K = params.k;
  let N = params.n;
  let m = wid.x;
  let lane = tid % GV_LANES;
  let ls = tid / GV_LANES;
  let nb = wid.y * GV_ROWS + ls;
  let xrow = m * K;
  let w0 = min(nb, N - 1u) * K;
  let w1 = min(nb + GV_SETS, N - 1u) * K;
  let w2 = min(nb + 2u * GV_SETS, N - 1u) * K;
  let w3 = min(nb + 3u * GV_SETS, N - 1u) * K;
  var acc = vec4<f32>();
  var k = lane;
  // Two k per lane per iteration: more loads in flight.
  for (; k + GV_LANES < K; k += 2u * GV_LANES) {
    let k1 = k + GV_LANES;
    let xa = f32(x[xrow + k]);
    let xb = f32(x[xrow + k1]);
    let wa = vec4(f32(w[w0 + k]), f32(w[w1 + k]), f32(w[w2 + k]), f32(w[w3 + k]));
    let wb = vec4(f32(w[w0 + k1]), f32(w[w1 + k1]), f32(w[w2 + k1]), f32(w[w3 + k1]));
    acc = fma(vec4(xa), wa, acc);
    acc = fma(vec4(xb), wb, acc);
  }
  if (k < K) {
    let xa = f32(x[xrow + k]);
    let wa = vec4(f32(w[w0 + k]), f32(w[w1 + k]), f32(w[w2 + k]), f32(w[w3 + k]));
    acc = fma(vec4(xa), wa, acc);
  }
  for (var r = 0u; r < GV_RN; r++) {
    red[(r * GV_SETS + ls) * GV_LANES + lane] = acc[r];
  }
  workgroupBarrier();
  // Tree reduction over the 32 lanes of each of the 32 (r, set) rows.
  for (var half = GV_LANES / 2u; half > 0u; half >>= 1u) {
    for (var i = tid; i < GV_ROWS * half; i += 256u) {
      let row = i / half;
      let l = i % half;
      red[row * GV_LANES + l] += red[row * GV_LANES + l + half];
    }
    workgroupBarrier();
  }
  if (tid < GV_ROWS) {
    // tid = r·8 + s holds column 32b + s + 8r
    let n = wid.y * GV_ROWS + tid;
    if (n < N) {
      y[m * N + n] = to_act(epilogue(red[tid * GV_LANES], n));
    }
  }
}
