// group_norm: GroupNorm over NHWC activations, statistics in f32, optional SiLU after the affine:
//   y[b, p, c] = act((x[b, p, c] − mean[b, g]) · rstd[b, g] · gamma[c] + beta[c]),  g = c / (C/G)
// with mean and variance (biased, as PyTorch) over the HW·C/G values of group g of image b, and
// rstd = 1/√(var + eps). x and y in ACT (f16 with shader-f16, else f32), gamma and beta f32.
//
// Three entry points, dispatched in order by the launcher:
//   group_norm_stats     grid [chunks, B], 256 invocations: chunk j of image b (pixels
//                        j·P .. j·P+P−1). Invocations are (channel lane, pixel lane) pairs, so
//                        consecutive invocations read consecutive channels of one pixel
//                        (coalesced); each runs Welford's update over its pixels, the pairs of a
//                        group are merged with Chan's formula, and one (n, mean, M2) per group is
//                        written to the partials [B, chunks, G] at the start of `work`.
//   group_norm_finalize  grid [G, B]: the chunks' partials of group g are merged in a tree (error
//                        growing with log(chunks), not chunks) and
//                        (mean, rstd) to the stats [B, G] at `work[stats_base ..]`.
//   group_norm_apply     2-D grid over the B·HW·C/4 vec4 of x: normalise, affine, SiLU, store.
// Merging (count, mean, M2) triples never subtracts two large sums, so a group whose mean is
// large against its spread keeps its variance. Partials and stats share one scratch buffer so
// that each entry point's bindings are a prefix of the list (auto layouts hold used ones only).

alias ACT = f32;

struct Params {
  b: u32,
  hw: u32, // pixels per image
  c: u32, // channels
  groups: u32, // G
  chunk: u32, // pixels per stats workgroup (P)
  chunks: u32, // ⌈HW / P⌉
  eps: f32,
  nx: u32, // apply: workgroups along x of the 2-D grid
  stats_base: u32, // vec4 offset of the stats in work (B·chunks·G)
  pad0: u32,
  pad1: u32,
  pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// work: partials (n, mean, M2, 0) [B, chunks, G], then stats (mean, rstd, 0, 0) [B, G]
@group(0) @binding(1) var<storage, read_write> work: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> x: array<ACT>;
@group(0) @binding(3) var<storage, read> gamma: array<f32>;
@group(0) @binding(4) var<storage, read> beta: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<vec4<ACT>>;

override SILU: bool = false;
override PART_LEN: u32 = 512; // PL·C entries of the stats workgroup's merge table (launcher)

const WG = 256u;

var<workgroup> part: array<vec4<f32>, PART_LEN>; // [PL][C]: (n, mean, M2, 0)

// Chan et al.: merge two (n, mean, M2) summaries.
fn merge(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
  let n = a.x + b.x;
  if (n == 0.0) {
    return a;
  }
  let d = b.y - a.y;
  let f = b.x / n;
  return vec4(n, a.y + d * f, a.z + b.z + d * d * a.x * f, 0.0);
}

@compute @workgroup_size(WG)
fn group_norm_stats(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3u) {
  let C = params.c;
  let cl = min(C, WG); // channel lanes
  let pl_n = WG / cl; // pixel lanes
  let b = wid.y;
  let p0 = wid.x * params.chunk;
  let p1 = min(p0 + params.chunk, params.hw);
  if (tid < pl_n * cl) {
    let pl = tid / cl;
    for (var c = tid % cl; c < C; c += cl) {
      var s = vec4<f32>(0.0);
      for (var p = p0 + pl; p < p1; p += pl_n) {
        let v = f32(x[(b * params.hw + p) * C + c]);
        s.x += 1.0;
        let d = v - s.y;
        s.y += d / s.x;
        s.z += d * (v - s.y);
      }
      part[pl * C + c] = s;
    }
  }
  workgroupBarrier();
  let cpg = C / params.groups;
  if (tid < params.groups) {
    var s = vec4<f32>(0.0);
    for (var pl = 0u; pl < pl_n; pl++) {
      for (var j = 0u; j < cpg; j++) {
        s = merge(s, part[pl * C + tid * cpg + j]);
      }
    }
    work[(b * params.chunks + wid.x) * params.groups + tid] = s;
  }
}

var<workgroup> tree: array<vec4<f32>, WG>;

@compute @workgroup_size(WG)
fn group_norm_finalize(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3u) {
  let g = wid.x;
  let b = wid.y;
  var s = vec4<f32>(0.0);
  for (var j = tid; j < params.chunks; j += WG) {
    s = merge(s, work[(b * params.chunks + j) * params.groups + g]);
  }
  tree[tid] = s;
  for (var half = WG / 2u; half > 0u; half >>= 1u) {
    workgroupBarrier();
    if (tid < half) {
      tree[tid] = merge(tree[tid], tree[tid + half]);
    }
  }
  if (tid == 0u) {
    let t = tree[0];
    let variance = max(t.z / t.x, 0.0);
    work[params.stats_base + b * params.groups + g] =
      vec4(t.y, inverseSqrt(variance + params.eps), 0.0, 0.0);
  }
}

fn norm1(v: f32, c: u32, st: vec4<f32>) -> f32 {
  let r = (v - st.x) * st.y * gamma[c] + beta[c];
  if (SILU) {
    return r / (1.0 + exp(-r));
  }
  return r;
}

@compute @workgroup_size(WG)
fn group_norm_apply(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3u) {
  let i = (wid.y * params.nx + wid.x) * WG + tid; // vec4 index
  let C = params.c;
  let total = params.b * params.hw * C / 4u;
  if (i >= total) {
    return;
  }
  let e = 4u * i;
  let b = e / (params.hw * C);
  let c = e % C;
  let cpg = C / params.groups;
  let sb = params.stats_base + b * params.groups;
  let v = vec4<f32>(f32(x[e]), f32(x[e + 1u]), f32(x[e + 2u]), f32(x[e + 3u]));
  y[i] = vec4<ACT>(vec4<f32>(
    norm1(v.x, c, work[sb + c / cpg]),
    norm1(v.y, c + 1u, work[sb + (c + 1u) / cpg]),
    norm1(v.z, c + 2u, work[sb + (c + 2u) / cpg]),
    norm1(v.w, c + 3u, work[sb + (c + 3u) / cpg]),
  ));
}
