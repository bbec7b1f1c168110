// gemm_w8a16: Y[M,N] = (X[M,K] · Qᵀ) · diag(s) + bias[N], weight-only INT8: Q[n,k] int8 in
// [-127, 127] (four per u32, byte j of word w = element 4w+j of the row, two's complement), one
// f32 scale s[n] per output channel, so W ≈ Q·s. X and Y in ACT, accumulation f32 (integers up
// to 127 times ACT values are exact in f32 products; the scale multiplies once at the end).
// K is a multiple of 4, so each row of Q starts on a word.
//
// Tiling: a workgroup of 16×16 invocations owns a 64×64 block of Y, each invocation a 4×4
// register tile (four named vec4). K advances TK = 16 at a time: X [64 rows × 16] and Q
// [64 rows × 16] (one u32 word per invocation, unpacked with unpack4xI8) go k-major into
// workgroup memory; per k step an invocation reads one vec4 of X and one of Q for 16 FMAs.

alias ACT = f32;

struct Params {
  m: u32,
  k: u32,
  n: u32,
  pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<ACT>; // [M, K]
@group(0) @binding(2) var<storage, read> qweight: array<u32>; // [N, K/4], int8 × 4
@group(0) @binding(3) var<storage, read> wscales: array<f32>; // [N]
@group(0) @binding(4) var<storage, read> bias: array<f32>; // [N] (HAS_BIAS)
@group(0) @binding(5) var<storage, read_write> y: array<ACT>; // [M, N]

override HAS_BIAS: bool = false;
// f16 output: a value beyond ±65504 is stored as ±65504 (WGSL leaves an out-of-range f32 → f16
// conversion undefined; most drivers give ±inf). NaN stays NaN (the comparison is false).
override SATURATE: bool = false;
const F16_MAX: f32 = 65504.0;

fn to_act(v: f32) -> ACT {
  return ACT(select(v, sign(v) * F16_MAX, SATURATE && abs(v) > F16_MAX));
}

const TM = 64u;
const TN = 64u;
const TK = 16u;

var<workgroup> xs: array<vec4<f32>, 256>; // [TK][TM/4]
var<workgroup> ws: array<vec4<f32>, 256>; // [TK][TN/4]

fn store_row(m: u32, n0: u32, acc: vec4<f32>) {
  if (m >= params.m) {
    return;
  }
  for (var j = 0u; j < 4u; j++) {
    let n = n0 + j;
    if (n < params.n) {
      var v = acc[j] * wscales[n];
      if (HAS_BIAS) {
        v += bias[n];
      }
      y[m * params.n + n] = to_act(v);
    }
  }
}

@compute @workgroup_size(16, 16)
fn gemm_w8a16(
  @builtin(local_invocation_id) lid: vec3u,
  @builtin(local_invocation_index) tid: u32,
  @builtin(workgroup_id) wid: vec3u,
) {
  let M = params.m;
  let K = params.k;
  let N = params.n;
  let m0 = wid.y * TM;
  let n0 = wid.x * TN;
  let kw = K / 4u; // words per row of Q
  var a0 = vec4<f32>(0.0);
  var a1 = vec4<f32>(0.0);
  var a2 = vec4<f32>(0.0);
  var a3 = vec4<f32>(0.0);
  for (var k0 = 0u; k0 < K; k0 += TK) {
    // X tile: 64 rows × 16 k, four elements per invocation, coalesced along k.
    for (var i = 0u; i < 4u; i++) {
      let idx = tid + i * 256u;
      let r = idx / TK;
      let c = idx % TK;
      let m = m0 + r;
      let k = k0 + c;
      var v = 0.0;
      if (m < M && k < K) {
        v = f32(x[m * K + k]);
      }
      xs[c * (TM / 4u) + r / 4u][r % 4u] = v;
    }
    // Q tile: 64 rows × 4 words, one word per invocation.
    {
      let r = tid / 4u;
      let cw = tid % 4u;
      let n = n0 + r;
      let k = k0 + 4u * cw;
      var q = vec4<i32>(0);
      if (n < N && k < K) {
        q = unpack4xI8(qweight[n * kw + k / 4u]);
      }
      let qf = vec4<f32>(q);
      let at = 4u * cw * (TN / 4u) + r / 4u;
      let c = r % 4u;
      ws[at][c] = qf.x;
      ws[at + TN / 4u][c] = qf.y;
      ws[at + 2u * TN / 4u][c] = qf.z;
      ws[at + 3u * TN / 4u][c] = qf.w;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < TK; kk++) {
      let xv = xs[kk * (TM / 4u) + lid.y];
      let wv = ws[kk * (TN / 4u) + lid.x];
      a0 = fma(vec4(xv.x), wv, a0);
      a1 = fma(vec4(xv.y), wv, a1);
      a2 = fma(vec4(xv.z), wv, a2);
      a3 = fma(vec4(xv.w), wv, a3);
    }
    workgroupBarrier();
  }
  let m = m0 + 4u * lid.y;
  let n = n0 + 4u * lid.x;
  store_row(m, n, a0);
  store_row(m + 1u, n, a1);
  store_row(m + 2u, n, a2);
  store_row(m + 3u, n, a3);
}
