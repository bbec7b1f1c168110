// sparse_attention prep: the INT8 operands of sparse_attention.wgsl, in PERMUTED order (the
// permutation is applied here, on load; there is no permuted copy of qkv). Two entry points, run
// in this order when QK or PV is "int8" (see sparse_attention_ref.ts for the arithmetic):
//
// sparse_attention_stats, grid [nchunk, H, B]: workgroup (c, h, b) reduces tokens
//   c·chunk .. (c+1)·chunk of head h to per-channel partials: Σ k (QK_INT8) and max |v| (PV_INT8),
//   at scales[psbase + ((b·H + h)·nchunk + c)·D + ch] and scales[pmbase + …].
// sparse_attention_prep, grid [nt, H, B]: workgroup (i, h, b) first sums the partials of (b, h)
//   (kmean = Σ k / T, sv = max |v| / 127; tile 0 also stores sv for the main pass), then quantizes
//   permuted tile i:
//   - QK_INT8: qs = scale·log2(e)·q and k̃ = k − kmean over the tile's rows, sq = max|qs|/127,
//     sk = max|k̃|/127, codes clamp(round(x/s), ±127) (0 when s = 0); rows past T are zero codes.
//     qk8 holds Q codes then K codes (K at word kbase), per (b, h, tile) [D/4][TILE] words: word
//     (w, r) packs channels 4w..4w+3 of row r (pack4xI8, channel 4w in the low byte), so the main
//     pass copies a tile's [D/4][TILE] block straight into workgroup memory.
//   - PV_INT8: v8 = clamp(round(v/sv), ±127) per channel, packed along KEYS: per (b, h, tile)
//     [TILE/4][D/4] vec4<u32>, component x of (kw, dv) packs keys 4kw..4kw+3 of channel 4dv.
//
// Scales (f32, one buffer, bases in params): sq [B·H·nt] at 0, sk [B·H·nt] at skbase,
// sv [B·H·D] at svbase, then the partials.

alias ACT = f32;

struct Params {
  t: u32, // tokens per batch (T)
  heads: u32, // H
  nt: u32, // tiles per side ⌈T/TILE⌉
  scale2: f32, // scale · log2(e)
  skbase: u32, // scales: start of sk
  svbase: u32, // scales: start of sv
  psbase: u32, // scales: start of the Σ k partials
  pmbase: u32, // scales: start of the max |v| partials
  kbase: u32, // qk8: word where the K codes start
  nchunk: u32, // stats chunks per (b, h)
  chunk: u32, // tokens per stats chunk
  pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> qkv: array<vec4<ACT>>;
@group(0) @binding(2) var<storage, read_write> scales: array<f32>;
@group(0) @binding(3) var<storage, read> perm: array<u32>;
@group(0) @binding(4) var<storage, read_write> qk8: array<u32>;
@group(0) @binding(5) var<storage, read_write> v8: array<vec4<u32>>;

override D: u32 = 64; // head dim, a multiple of 8
override TILE: u32 = 32; // tokens per mask tile, a multiple of 4
override QK_INT8: bool = true;
override PV_INT8: bool = false;
override DV: u32 = D / 4u; // vec4 per head row
override RG: u32 = TILE / 4u; // key words per tile
override LANES: u32 = WG / DV; // invocations sharing one channel vec4 in the reductions

const WG: u32 = 256u;

var<workgroup> red_s: array<vec4<f32>, WG>; // sums (and the tile maxima of Q, K in .xy)
var<workgroup> red_m: array<vec4<f32>, WG>; // maxima
var<workgroup> kmean: array<vec4<f32>, DV>;
var<workgroup> svw: array<vec4<f32>, DV>;

fn read4(at: u32) -> vec4<f32> {
  return vec4(scales[at], scales[at + 1u], scales[at + 2u], scales[at + 3u]);
}

fn write4(at: u32, v: vec4<f32>) {
  scales[at] = v.x;
  scales[at + 1u] = v.y;
  scales[at + 2u] = v.z;
  scales[at + 3u] = v.w;
}

// Token at permuted position p of head h (clamped into the sequence).
fn token(h: u32, p: u32) -> u32 {
  let T = params.t;
  return min(perm[h * T + min(p, T - 1u)], T - 1u);
}

fn codes(x: vec4<f32>, s: f32) -> vec4<i32> {
  return vec4<i32>(select(vec4(0.0), clamp(round(x / s), vec4(-127.0), vec4(127.0)), s > 0.0));
}

fn max4(v: vec4<f32>) -> f32 {
  return max(max(v.x, v.y), max(v.z, v.w));
}

// Invocations tid < DV: the sum and max of red_s / red_m over the LANES lanes of vec4 tid.
fn lane_totals(tid: u32) -> array<vec4<f32>, 2> {
  var s = vec4<f32>(0.0);
  var m = vec4<f32>(0.0);
  for (var l = 0u; l < LANES; l++) {
    s += red_s[l * DV + tid];
    m = max(m, red_m[l * DV + tid]);
  }
  return array(s, m);
}

@compute @workgroup_size(WG)
fn sparse_attention_stats(
  @builtin(local_invocation_index) tid: u32,
  @builtin(workgroup_id) wid: vec3u,
) {
  let T = params.t;
  let H = params.heads;
  let h = wid.y;
  let b = wid.z;
  let t0 = wid.x * params.chunk;
  let t1 = min(t0 + params.chunk, T);
  let dv = tid % DV;
  let lane = tid / DV;
  let stride = 3u * H * DV;
  var s = vec4<f32>(0.0);
  var m = vec4<f32>(0.0);
  if (lane < LANES) {
    for (var t = t0 + lane; t < t1; t += LANES) {
      let row = (b * T + t) * stride;
      if (QK_INT8) {
        s += vec4<f32>(qkv[row + (H + h) * DV + dv]);
      }
      if (PV_INT8) {
        m = max(m, abs(vec4<f32>(qkv[row + (2u * H + h) * DV + dv])));
      }
    }
  }
  red_s[tid] = s;
  red_m[tid] = m;
  workgroupBarrier();
  if (tid < DV) {
    let tot = lane_totals(tid);
    let at = ((b * H + h) * params.nchunk + wid.x) * D + 4u * tid;
    write4(params.psbase + at, tot[0]);
    write4(params.pmbase + at, tot[1]);
  }
}

@compute @workgroup_size(WG)
fn sparse_attention_prep(
  @builtin(local_invocation_index) tid: u32,
  @builtin(workgroup_id) wid: vec3u,
) {
  let bh = wid.z * params.heads + wid.y;
  // kmean and sv of (b, h) from the stats partials
  let dv = tid % DV;
  let lane = tid / DV;
  var s = vec4<f32>(0.0);
  var m = vec4<f32>(0.0);
  if (lane < LANES) {
    for (var c = lane; c < params.nchunk; c += LANES) {
      let at = (bh * params.nchunk + c) * D + 4u * dv;
      s += read4(params.psbase + at);
      m = max(m, read4(params.pmbase + at));
    }
  }
  red_s[tid] = s;
  red_m[tid] = m;
  workgroupBarrier();
  if (tid < DV) {
    let tot = lane_totals(tid);
    kmean[tid] = tot[0] / f32(params.t);
    svw[tid] = tot[1] / 127.0;
    if (PV_INT8 && wid.x == 0u) {
      write4(params.svbase + bh * D + 4u * tid, svw[tid]);
    }
  }
  workgroupBarrier();
  if (QK_INT8) {
    quantize_qk(tid, wid.x, wid.y, wid.z);
  }
  if (PV_INT8) {
    quantize_v(tid, wid.x, wid.y, wid.z);
  }
}

// qs = scale·log2(e)·q (x) and k̃ = k − kmean (y) of channels 4w..4w+3 at permuted position p.
fn qk_row(b: u32, h: u32, p: u32, w: u32) -> array<vec4<f32>, 2> {
  let H = params.heads;
  let row = (b * params.t + token(h, p)) * 3u * H * DV;
  let q = vec4<f32>(qkv[row + h * DV + w]) * params.scale2;
  let k = vec4<f32>(qkv[row + (H + h) * DV + w]) - kmean[w];
  return array(q, k);
}

fn quantize_qk(tid: u32, i: u32, h: u32, b: u32) {
  let T = params.t;
  let p0 = i * TILE;
  var mq = 0.0;
  var mk = 0.0;
  for (var it = tid; it < TILE * DV; it += WG) {
    let p = p0 + it / DV;
    if (p < T) {
      let x = qk_row(b, h, p, it % DV);
      mq = max(mq, max4(abs(x[0])));
      mk = max(mk, max4(abs(x[1])));
    }
  }
  red_s[tid] = vec4(mq, mk, 0.0, 0.0);
  workgroupBarrier();
  for (var span = WG / 2u; span > 0u; span >>= 1u) {
    if (tid < span) {
      red_s[tid] = max(red_s[tid], red_s[tid + span]);
    }
    workgroupBarrier();
  }
  let sq = red_s[0].x / 127.0;
  let sk = red_s[0].y / 127.0;
  let bh = b * params.heads + h;
  if (tid == 0u) {
    scales[bh * params.nt + i] = sq;
    scales[params.skbase + bh * params.nt + i] = sk;
  }
  let base = (bh * params.nt + i) * DV * TILE;
  for (var it = tid; it < TILE * DV; it += WG) {
    let r = it % TILE;
    let w = it / TILE;
    var qw = 0u;
    var kw = 0u;
    if (p0 + r < T) {
      let x = qk_row(b, h, p0 + r, w);
      qw = pack4xI8(codes(x[0], sq));
      kw = pack4xI8(codes(x[1], sk));
    }
    qk8[base + it] = qw;
    qk8[params.kbase + base + it] = kw;
  }
}

// v8 codes of channels 4dv..4dv+3 at permuted position p (zero past T).
fn v_codes(b: u32, h: u32, p: u32, dv: u32) -> vec4<i32> {
  if (p >= params.t) {
    return vec4<i32>(0);
  }
  let H = params.heads;
  let v = vec4<f32>(qkv[(b * params.t + token(h, p)) * 3u * H * DV + (2u * H + h) * DV + dv]);
  let s = svw[dv];
  return vec4<i32>(select(vec4(0.0), clamp(round(v / s), vec4(-127.0), vec4(127.0)), s > vec4(0.0)));
}

fn quantize_v(tid: u32, i: u32, h: u32, b: u32) {
  let base = ((b * params.heads + h) * params.nt + i) * RG * DV;
  for (var it = tid; it < RG * DV; it += WG) {
    let p = i * TILE + 4u * (it / DV);
    let dv = it % DV;
    let a = v_codes(b, h, p, dv);
    let c = v_codes(b, h, p + 1u, dv);
    let e = v_codes(b, h, p + 2u, dv);
    let g = v_codes(b, h, p + 3u, dv);
    v8[base + it] = vec4(
      pack4xI8(vec4(a.x, c.x, e.x, g.x)),
      pack4xI8(vec4(a.y, c.y, e.y, g.y)),
      pack4xI8(vec4(a.z, c.z, e.z, g.z)),
      pack4xI8(vec4(a.w, c.w, e.w, g.w)),
    );
  }
}
