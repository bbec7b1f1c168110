// gate_residual: the gated residual add of a DiT block (adaLN-Zero), in place,
//   x[r, :] += mod[b, gate_off + :] · y[r, :],  b = r / T,
// computed in f32 (one fma) and stored as RES. y and mod are ACT (f16 with shader-f16, else f32);
// x is RES, ACT unless the launcher's residualDtype makes it f32 (FLUX: the residual stream kept
// in f32 under f16 activations, so sums beyond ±65504 stay finite; nothing to saturate there).
//
// Elementwise and memory-bound: each invocation walks units i, i + stride, ... (a grid-stride
// loop, so any B·T·D fits a 1-D grid of at most 65535 workgroups). Two entry points, picked by
// the launcher:
//   gate_residual       D % 4 == 0: a unit is a vec4 (the x4 / y4 / mod4 views).
//   gate_residual_any   any D: a unit is one element.
// The gate row (D values per image) is re-read for every token; it stays in cache.

alias ACT = f32;
alias RES = ACT;

struct Params {
  count: u32, // units in x: B·T·D / VEC
  t: u32, // tokens per image: row r belongs to image r / t
  du: u32, // units per row: D / VEC
  mod_stride: u32, // units of mod per image: modWidth·D / VEC
  gate_off: u32, // gateChunk·D / VEC
  stride: u32, // invocations in the grid
  pad0: u32,
  pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// `mod` is a WGSL reserved word: the descriptor's `mod` is bound as `mod_`.
@group(0) @binding(1) var<storage, read_write> x: array<RES>;
@group(0) @binding(2) var<storage, read> y: array<ACT>;
@group(0) @binding(3) var<storage, read> mod_: array<ACT>;
// vec4 views of the same bindings (only the D % 4 == 0 entry point uses them).
@group(0) @binding(1) var<storage, read_write> x4: array<vec4<RES>>;
@group(0) @binding(2) var<storage, read> y4: array<vec4<ACT>>;
@group(0) @binding(3) var<storage, read> mod4: array<vec4<ACT>>;

override WG: u32 = 256; // invocations per workgroup

// Unit index i of x → unit index of its gate in mod.
fn gate_index(i: u32) -> u32 {
  let row = i / params.du;
  let col = i - row * params.du;
  return (row / params.t) * params.mod_stride + params.gate_off + col;
}

@compute @workgroup_size(WG)
fn gate_residual(@builtin(global_invocation_id) gid: vec3u) {
  for (var i = gid.x; i < params.count; i += params.stride) {
    let g = vec4<f32>(mod4[gate_index(i)]);
    x4[i] = vec4<RES>(fma(g, vec4<f32>(y4[i]), vec4<f32>(x4[i])));
  }
}

@compute @workgroup_size(WG)
fn gate_residual_any(@builtin(global_invocation_id) gid: vec3u) {
  for (var i = gid.x; i < params.count; i += params.stride) {
    let g = f32(mod_[gate_index(i)]);
    x[i] = RES(fma(g, f32(y[i]), f32(x[i])));
  }
}
