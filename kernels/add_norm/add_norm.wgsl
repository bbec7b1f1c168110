// add_norm: the residual step of a pre-norm transformer, one row per workgroup:
//   v = x[r, :] + y[r, :]                       (HAS_Y; else v = x[r, :])
//   x_out[r, :] = v                             (HAS_Y: the updated residual, f32)
//   h[r, :] = RMSNorm(v)·weight                 (T5: v·rsqrt(mean(v²) + eps)·w, no mean, no bias)
//          or LayerNorm(v)·weight + bias        (LAYER_NORM, CLIP: (v − mean)·rsqrt(var + eps))
// The residual x / x_out is f32 whatever the activation dtype, so a residual stream beyond the
// f16 range (T5-XXL) stays finite; y is YT (f32 or f16: the GEMM output added), h is ACT (the
// next GEMM's input). Statistics in f32: sum of v, then of (v − mean)² (two passes, re-reading
// the row: rows are at most a few thousand elements and stay in cache).
//
// Grid: rows spread over (x, y) past 65535; WG invocations stride over the row.

alias ACT = f32;
alias YT = f32;

struct Params {
  rows: u32,
  d: u32,
  grid_x: u32,
  eps: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>; // [rows, D] residual
@group(0) @binding(2) var<storage, read> y: array<YT>; // [rows, D] added (HAS_Y)
@group(0) @binding(3) var<storage, read> weight: array<f32>; // [D]
@group(0) @binding(4) var<storage, read> bias: array<f32>; // [D] (LAYER_NORM)
@group(0) @binding(5) var<storage, read_write> x_out: array<f32>; // [rows, D] (HAS_Y)
@group(0) @binding(6) var<storage, read_write> h: array<ACT>; // [rows, D]

override WG: u32 = 256; // a power of two
override HAS_Y: bool = false;
override LAYER_NORM: bool = false;

var<workgroup> red: array<f32, WG>;

fn workgroup_sum(v: f32, tid: u32) -> f32 {
  red[tid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (tid < s) {
      red[tid] += red[tid + s];
    }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}

fn value(i: u32) -> f32 {
  if (HAS_Y) {
    return x[i] + f32(y[i]);
  }
  return x[i];
}

@compute @workgroup_size(WG)
fn add_norm(
  @builtin(local_invocation_index) tid: u32,
  @builtin(workgroup_id) wid: vec3u,
) {
  let row = wid.y * params.grid_x + wid.x;
  if (row >= params.rows) {
    return; // uniform: the whole workgroup leaves
  }
  let d = params.d;
  let base = row * d;
  let dn = f32(d);
  var mean = 0.0;
  if (LAYER_NORM) {
    var s = 0.0;
    for (var e = tid; e < d; e += WG) {
      s += value(base + e);
    }
    mean = workgroup_sum(s, tid) / dn;
  }
  var q = 0.0;
  for (var e = tid; e < d; e += WG) {
    let v = value(base + e) - mean;
    q += v * v;
  }
  let rstd = inverseSqrt(workgroup_sum(q, tid) / dn + params.eps);
  for (var e = tid; e < d; e += WG) {
    let v = value(base + e);
    if (HAS_Y) {
      x_out[base + e] = v;
    }
    var n = (v - mean) * rstd * weight[e];
    if (LAYER_NORM) {
      n += bias[e];
    }
    h[base + e] = ACT(n);
  }
}
