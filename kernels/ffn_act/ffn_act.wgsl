// ffn_act: the activation between the two linears of a transformer FFN, element-wise.
//   GATED (T5 v1.1 gated-GELU):  x [M, 2F] = [a | b] (the fused wi_0 | wi_1 GEMM output),
//                                 y[m, c] = gelu_tanh(a[m, c]) · b[m, c]              y [M, F]
//   else  (CLIP quick-GELU):      y[m, c] = x[m, c] · sigmoid(1.702 · x[m, c])       y [M, F]
// Math in f32. x is ACT (the GEMM's output), y is OT: f32 where the next linear runs with f32
// activations (T5's `wo`, kept in f32 as upstream does against f16 overflow), else ACT.
// Grid: 1-D over M·F elements in workgroups of WG, spread over (x, y) past 65535 workgroups.

alias ACT = f32;
alias OT = f32;

struct Params {
  m: u32,
  f: u32,
  grid_x: u32,
  pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<ACT>;
@group(0) @binding(2) var<storage, read_write> y: array<OT>;

override WG: u32 = 256;
override GATED: bool = true;

fn gelu_tanh(v: f32) -> f32 {
  // 0.5·v·(1 + tanh(u)) = v · sigmoid(2u): no tanh overflow, exact limits at ±∞.
  let u = 0.7978845608028654 * (v + 0.044715 * v * v * v);
  return v / (1.0 + exp(-2.0 * u));
}

@compute @workgroup_size(WG)
fn ffn_act(
  @builtin(local_invocation_index) tid: u32,
  @builtin(workgroup_id) wid: vec3u,
) {
  let i = (wid.y * params.grid_x + wid.x) * WG + tid;
  let f = params.f;
  if (i >= params.m * f) {
    return;
  }
  if (GATED) {
    let r = i / f;
    let c = i - r * f;
    let a = f32(x[r * 2u * f + c]);
    let b = f32(x[r * 2u * f + f + c]);
    y[i] = OT(gelu_tanh(a) * b);
  } else {
    let v = f32(x[i]);
    y[i] = OT(v / (1.0 + exp(-1.702 * v)));
  }
}
