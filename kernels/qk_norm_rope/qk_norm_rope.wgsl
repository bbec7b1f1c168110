// qk_norm_rope: assemble one part of FLUX's joint qkv, with QK RMSNorm and RoPE fused in.
//
// For token t of image b of the source part (rows b·n + t of `src`, row stride `src_stride`;
// q, k, v at columns 0, H·D, 2·H·D, each head-major [H, D]) and head h, write row
// b·l + row_off + t of `qkv` [B·L, 3·H·D]:
//   q' = rope(rms(q) · qscale), k' = rope(rms(k) · kscale), v' = v
// with rms(x) = x / sqrt(mean(x²) + eps) over the head's D values (f32), and rope rotating each
// adjacent pair (2i, 2i+1) by the angle of pair i at joint position p = row_off + t:
//   out[2i] = c·x[2i] − s·x[2i+1],  out[2i+1] = s·x[2i] + c·x[2i+1],  (c, s) = rope[p·D/2 + i].
// The double block calls it once for txt (row_off 0) and once for img (row_off = txt tokens);
// the single block once on its linear1 output (row_off 0, n = L).
//
// One workgroup per (row, head): invocation i holds pair i of q, k and v (WG = D/2 rounded up
// to a power of two; the rest idle). The two sums of squares are reduced in workgroup memory.
// Rows past 65535 use a 2-D grid: row = wid.y · grid_x + wid.x, head = wid.z.

alias ACT = f32;

struct Params {
  rows: u32, // B·n source rows
  n: u32, // source tokens per image
  l: u32, // joint tokens per image in qkv
  row_off: u32, // joint position of the part's first token
  h: u32, // heads
  d: u32, // head dim (even)
  src_stride: u32, // elements per source row
  grid_x: u32, // workgroups along x
  eps: f32,
  pad0: u32,
  pad1: u32,
  pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<ACT>;
@group(0) @binding(2) var<storage, read> qscale: array<f32>;
@group(0) @binding(3) var<storage, read> kscale: array<f32>;
@group(0) @binding(4) var<storage, read> rope: array<vec2<f32>>;
@group(0) @binding(5) var<storage, read_write> qkv: array<ACT>;

override WG: u32 = 64; // a power of two ≥ D/2

var<workgroup> red: array<vec2<f32>, WG>;

fn ld2(base: u32) -> vec2<f32> {
  return vec2(f32(src[base]), f32(src[base + 1u]));
}

fn st2(base: u32, v: vec2<f32>) {
  qkv[base] = ACT(v.x);
  qkv[base + 1u] = ACT(v.y);
}

fn rotate(x: vec2<f32>, cs: vec2<f32>) -> vec2<f32> {
  return vec2(cs.x * x.x - cs.y * x.y, cs.y * x.x + cs.x * x.y);
}

@compute @workgroup_size(WG)
fn qk_norm_rope(
  @builtin(local_invocation_index) i: u32,
  @builtin(workgroup_id) wid: vec3u,
) {
  let row = wid.y * params.grid_x + wid.x;
  if (row >= params.rows) {
    return; // uniform: the whole workgroup leaves
  }
  let head = wid.z;
  let pairs = params.d / 2u;
  let hd = params.h * params.d;
  let b = row / params.n;
  let t = row - b * params.n;
  let live = i < pairs;
  let col = head * params.d + 2u * min(i, pairs - 1u);
  let sbase = row * params.src_stride + col;
  var q = vec2(0.0);
  var k = vec2(0.0);
  if (live) {
    q = ld2(sbase);
    k = ld2(sbase + hd);
  }
  red[i] = vec2(dot(q, q), dot(k, k));
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (i < s) {
      red[i] += red[i + s];
    }
    workgroupBarrier();
  }
  let ms = red[0] / f32(params.d);
  if (!live) {
    return;
  }
  let rq = inverseSqrt(ms.x + params.eps);
  let rk = inverseSqrt(ms.y + params.eps);
  let e = 2u * i;
  let qn = (q * rq) * vec2(qscale[e], qscale[e + 1u]);
  let kn = (k * rk) * vec2(kscale[e], kscale[e + 1u]);
  let p = params.row_off + t;
  let cs = rope[p * pairs + i];
  let dbase = (b * params.l + p) * 3u * hd + col;
  st2(dbase, rotate(qn, cs));
  st2(dbase + hd, rotate(kn, cs));
  st2(dbase + 2u * hd, ld2(sbase + 2u * hd));
}
