// layernorm_modulate: the adaLN modulation of a DiT block,
//   h[r, :] = LN(x[r, :]) · (1 + mod[b, scale_off + :]) + mod[b, shift_off + :],  b = r / T,
// LN without affine parameters: (x − mean) / sqrt(var + eps), statistics in f32.
// mod, h in ACT (f16 with shader-f16, else f32); x in RES, ACT unless the launcher's
// residualDtype makes it f32 (FLUX: the residual stream kept in f32 under f16 activations; then
// SATURATE stores an f16 h beyond ±65504 as ±65504, see to_act4).
//
// One workgroup per row (row = wid.y · grid_x + wid.x, a 2-D grid past 65535 rows). The row is
// loaded once into SLOTS named vec4 registers per invocation (SLOTS ≤ 4, WG ≤ 256: D ≤ 4096) and
// never re-read. Statistics, numerically sound for rows with a large common offset:
//   1. m = Σx / D                                  (f32, so m carries an error ~ u·|offset|)
//   2. c = Σ(x − m), q = Σ(x − m)²                 (one reduction of two sums)
//   3. mean = m + c/D, var = q/D − (c/D)²          (the corrected two-pass algorithm)
// and the output uses (x − m) − c/D, never x − mean, so the rounding of `mean` to f32 (an error of
// u·|offset|) does not enter; the error stays ~u relative to the row's spread, whatever the offset.
//
// Two entry points, picked by the launcher:
//   layernorm_modulate      D % 4 == 0: vec4 loads and stores (the x4 / mod4 / h4 views); slot k
//                           of invocation i holds elements 4·(i + k·WG) .. +3.
//   layernorm_modulate_any  any D: scalar loads, coalesced; component c of slot k of invocation i
//                           is element (4k + c)·WG + i.

alias ACT = f32;
alias RES = ACT;

struct Params {
  rows: u32, // B·T
  t: u32, // tokens per image: row r belongs to image r / t
  d: u32, // D
  mod_stride: u32, // modWidth·D: elements of mod per image
  shift_off: u32, // shiftChunk·D
  scale_off: u32, // scaleChunk·D
  grid_x: u32, // workgroups along x
  eps: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
// `mod` is a WGSL reserved word: the descriptor's `mod` is bound as `mod_`.
@group(0) @binding(1) var<storage, read> x: array<RES>;
@group(0) @binding(2) var<storage, read> mod_: array<ACT>;
@group(0) @binding(3) var<storage, read_write> h: array<ACT>;
// vec4 views of the same bindings (only the D % 4 == 0 entry point uses them).
@group(0) @binding(1) var<storage, read> x4: array<vec4<RES>>;
@group(0) @binding(2) var<storage, read> mod4: array<vec4<ACT>>;
@group(0) @binding(3) var<storage, read_write> h4: array<vec4<ACT>>;

override WG: u32 = 256; // invocations per workgroup: 64, 128 or 256 (a power of two)
override SLOTS: u32 = 4; // vec4 registers of the row in use per invocation, 1..4
override SATURATE: bool = false; // h is f16 and must saturate (set with an f32 residual)

const F16_MAX: f32 = 65504.0;

// f32 → ACT. With SATURATE a value beyond f16's range is stored as ±65504: WGSL does not define
// an out-of-range f32 → f16 conversion (most drivers give ±inf). NaN stays NaN (the comparison is
// false), so a broken row still shows.
fn to_act4(v: vec4<f32>) -> vec4<ACT> {
  return vec4<ACT>(select(v, sign(v) * F16_MAX, vec4(SATURATE) & (abs(v) > vec4(F16_MAX))));
}

fn to_act(v: f32) -> ACT {
  return ACT(select(v, sign(v) * F16_MAX, SATURATE && abs(v) > F16_MAX));
}

var<workgroup> red: array<vec2<f32>, WG>;

// Sum of `v` over the workgroup (tree in workgroup memory); every invocation gets the result.
fn workgroup_sum(v: vec2<f32>, tid: u32) -> vec2<f32> {
  red[tid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (tid < s) {
      red[tid] += red[tid + s];
    }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier(); // red[0] is read by all before the next sum overwrites it
  return r;
}

// The row's statistics (see the header), from its zero-padded registers v0..v3 and their masks
// k0..k3 (true where the component holds an element of the row).
struct Stats {
  m: f32, // first-pass mean
  corr: f32, // c / D: mean = m + corr
  rstd: f32, // 1 / sqrt(var + eps)
}

fn stats(
  v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>,
  k0: vec4<bool>, k1: vec4<bool>, k2: vec4<bool>, k3: vec4<bool>,
  tid: u32,
) -> Stats {
  let one = vec4(1.0);
  let zero = vec4(0.0);
  let dn = f32(params.d);
  let m = workgroup_sum(vec2(dot((v0 + v1) + (v2 + v3), one), 0.0), tid).x / dn;
  let c0 = select(zero, v0 - m, k0);
  let c1 = select(zero, v1 - m, k1);
  let c2 = select(zero, v2 - m, k2);
  let c3 = select(zero, v3 - m, k3);
  let lin = dot((c0 + c1) + (c2 + c3), one);
  let sq = dot(c0, c0) + dot(c1, c1) + dot(c2, c2) + dot(c3, c3);
  let s = workgroup_sum(vec2(lin, sq), tid);
  let corr = s.x / dn;
  let variance = max(s.y / dn - corr * corr, 0.0);
  return Stats(m, corr, inverseSqrt(variance + params.eps));
}

// ---- D % 4 == 0: vec4 ----

fn ld4(base: u32, j: u32, n4: u32, use_slot: bool) -> vec4<f32> {
  // the index is clamped and the value masked, so a slot past the row reads nothing harmful
  return select(vec4(0.0), vec4<f32>(x4[base + min(j, n4 - 1u)]), use_slot && j < n4);
}

fn out4(st: Stats, v: vec4<f32>, xrow: u32, mrow: u32, j: u32, n4: u32) {
  if (j < n4) {
    let scale = vec4<f32>(mod4[mrow + params.scale_off / 4u + j]);
    let shift = vec4<f32>(mod4[mrow + params.shift_off / 4u + j]);
    let n = ((v - st.m) - st.corr) * st.rstd;
    h4[xrow + j] = to_act4(fma(n, 1.0 + scale, shift));
  }
}

@compute @workgroup_size(WG)
fn layernorm_modulate(
  @builtin(local_invocation_index) tid: u32,
  @builtin(workgroup_id) wid: vec3u,
) {
  let row = wid.y * params.grid_x + wid.x;
  if (row >= params.rows) {
    return; // uniform: the whole workgroup leaves
  }
  let n4 = params.d / 4u;
  let xrow = row * n4;
  let mrow = (row / params.t) * (params.mod_stride / 4u);
  let j0 = tid;
  let j1 = tid + WG;
  let j2 = tid + 2u * WG;
  let j3 = tid + 3u * WG;
  let v0 = ld4(xrow, j0, n4, true);
  let v1 = ld4(xrow, j1, n4, SLOTS > 1u);
  let v2 = ld4(xrow, j2, n4, SLOTS > 2u);
  let v3 = ld4(xrow, j3, n4, SLOTS > 3u);
  let st = stats(
    v0, v1, v2, v3,
    vec4(j0 < n4), vec4(j1 < n4), vec4(j2 < n4), vec4(j3 < n4),
    tid,
  );
  out4(st, v0, xrow, mrow, j0, n4);
  if (SLOTS > 1u) {
    out4(st, v1, xrow, mrow, j1, n4);
  }
  if (SLOTS > 2u) {
    out4(st, v2, xrow, mrow, j2, n4);
  }
  if (SLOTS > 3u) {
    out4(st, v3, xrow, mrow, j3, n4);
  }
}

// ---- any D: scalar ----

fn ld1(base: u32, e: u32, d: u32) -> f32 {
  return select(0.0, f32(x[base + min(e, d - 1u)]), e < d);
}

// Elements e, e + WG, e + 2·WG, e + 3·WG of the row (zero past D).
fn ld_slot(base: u32, e: u32, d: u32, use_slot: bool) -> vec4<f32> {
  if (!use_slot) {
    return vec4(0.0);
  }
  return vec4(ld1(base, e, d), ld1(base, e + WG, d), ld1(base, e + 2u * WG, d), ld1(base, e + 3u * WG, d));
}

fn in_row(e: u32, d: u32) -> vec4<bool> {
  return vec4(e < d, e + WG < d, e + 2u * WG < d, e + 3u * WG < d);
}

fn out1(st: Stats, v: f32, xrow: u32, mrow: u32, e: u32, d: u32) {
  if (e < d) {
    let scale = f32(mod_[mrow + params.scale_off + e]);
    let shift = f32(mod_[mrow + params.shift_off + e]);
    let n = ((v - st.m) - st.corr) * st.rstd;
    h[xrow + e] = to_act(fma(n, 1.0 + scale, shift));
  }
}

// Components written out (no dynamic vector index: it may land in local memory).
fn out_slot(st: Stats, v: vec4<f32>, xrow: u32, mrow: u32, e: u32, d: u32) {
  out1(st, v.x, xrow, mrow, e, d);
  out1(st, v.y, xrow, mrow, e + WG, d);
  out1(st, v.z, xrow, mrow, e + 2u * WG, d);
  out1(st, v.w, xrow, mrow, e + 3u * WG, d);
}

@compute @workgroup_size(WG)
fn layernorm_modulate_any(
  @builtin(local_invocation_index) tid: u32,
  @builtin(workgroup_id) wid: vec3u,
) {
  let row = wid.y * params.grid_x + wid.x;
  if (row >= params.rows) {
    return;
  }
  let d = params.d;
  let xrow = row * d;
  let mrow = (row / params.t) * params.mod_stride;
  let e0 = tid;
  let e1 = tid + 4u * WG;
  let e2 = tid + 8u * WG;
  let e3 = tid + 12u * WG;
  let v0 = ld_slot(xrow, e0, d, true);
  let v1 = ld_slot(xrow, e1, d, SLOTS > 1u);
  let v2 = ld_slot(xrow, e2, d, SLOTS > 2u);
  let v3 = ld_slot(xrow, e3, d, SLOTS > 3u);
  let st = stats(v0, v1, v2, v3, in_row(e0, d), in_row(e1, d), in_row(e2, d), in_row(e3, d), tid);
  out_slot(st, v0, xrow, mrow, e0, d);
  if (SLOTS > 1u) {
    out_slot(st, v1, xrow, mrow, e1, d);
  }
  if (SLOTS > 2u) {
    out_slot(st, v2, xrow, mrow, e2, d);
  }
  if (SLOTS > 3u) {
    out_slot(st, v3, xrow, mrow, e3, d);
  }
}
