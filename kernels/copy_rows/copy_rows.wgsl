// copy_rows: move a block of rows between two row-blocked buffers,
//   dst[b·dst_rows + dst_off + t, c] = src[b·src_rows + src_off + t, c],  t < n, c < width,
// for every image b. FLUX uses it to join the text and image streams into the single blocks'
// joint stream, to split joint attention's output back into the two streams, and to take the
// image tokens out for the final layer. Elementwise, memory-bound, a grid-stride loop over units
// (vec4 when width % 4 == 0: the `*4` views).
//
// src is ACT, dst is DST: ACT for a plain copy, or another dtype for a converting copy (FLUX's
// img_in / txt_in outputs, f16, into the residual streams kept in f32). f16 → f32 is exact; an
// f32 → f16 copy sets SATURATE, so values beyond ±65504 are stored as ±65504 (WGSL does not
// define that conversion out of range) and NaN stays NaN.

alias ACT = f32;
alias DST = ACT;

struct Params {
  count: u32, // units to copy: B·n·width / VEC
  n: u32, // rows per image to copy
  wu: u32, // units per row: width / VEC
  src_rows: u32,
  src_off: u32,
  dst_rows: u32,
  dst_off: u32,
  stride: u32, // invocations in the grid
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<ACT>;
@group(0) @binding(2) var<storage, read_write> dst: array<DST>;
@group(0) @binding(1) var<storage, read> src4: array<vec4<ACT>>;
@group(0) @binding(2) var<storage, read_write> dst4: array<vec4<DST>>;

override WG: u32 = 256;
override SATURATE: bool = false; // f32 → f16

const F16_MAX: f32 = 65504.0;

// A unit converted to DST (the identity for a plain copy).
fn to_dst4(v: vec4<ACT>) -> vec4<DST> {
  if (SATURATE) {
    let f = vec4<f32>(v);
    return vec4<DST>(select(f, sign(f) * F16_MAX, abs(f) > vec4(F16_MAX)));
  }
  return vec4<DST>(v);
}

fn to_dst(v: ACT) -> DST {
  if (SATURATE) {
    let f = f32(v);
    return DST(select(f, sign(f) * F16_MAX, abs(f) > F16_MAX));
  }
  return DST(v);
}

// Unit i of the copy → (source unit, destination unit).
fn units(i: u32) -> vec2u {
  let row = i / params.wu;
  let col = i - row * params.wu;
  let b = row / params.n;
  let t = row - b * params.n;
  let s = (b * params.src_rows + params.src_off + t) * params.wu + col;
  let d = (b * params.dst_rows + params.dst_off + t) * params.wu + col;
  return vec2(s, d);
}

@compute @workgroup_size(WG)
fn copy_rows(@builtin(global_invocation_id) gid: vec3u) {
  for (var i = gid.x; i < params.count; i += params.stride) {
    let u = units(i);
    dst4[u.y] = to_dst4(src4[u.x]);
  }
}

@compute @workgroup_size(WG)
fn copy_rows_any(@builtin(global_invocation_id) gid: vec3u) {
  for (var i = gid.x; i < params.count; i += params.stride) {
    let u = units(i);
    dst[u.y] = to_dst(src[u.x]);
  }
}
