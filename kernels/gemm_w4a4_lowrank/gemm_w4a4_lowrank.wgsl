// gemm_w4a4_lowrank: the W4A4 GEMM with the fused low-rank epilogue (ARCHITECTURE.md
// "4-bit arithmetic with dot4I8Packed", "Fusion boundaries").
//
//   Y[m,n] = Σ_g sa[m,g]·sw[n,g]·(Σ_{k∈g} qx[m,k]·qw[n,k])   (sw times the channel scale of row n if set)
//            + Σ_r lora_act[m,r]·lora_up[n,r] + bias[n],
//   then optional GELU (tanh form), one store in ACT.
//
// Per K-step of 64 values the workgroup stages the [BM, 64] activation codes and [BN, 64] weight
// codes in workgroup memory, already WIDENED to int8 (two int8×4 words per packed nibble word),
// so the inner loop is nothing but vec4 loads and dot4I8Packed:
//   INT4 signed act:   both operands' nibbles in the high half of each byte (16·q): factor 1/256
//   INT4 unsigned act: act nibbles in the low half (q ≥ 0), weight in the high half: factor 1/16
//   NVFP4:             a 256-entry table maps a byte (two E2M1 codes) to two int8 2·e2m1: 1/4
// The factor is folded into the staged weight scale. Group sums are exact in i32; each group is
// rescaled by sa·sw in f32. Global reads for step s+1 are issued before computing step s.
//
// Each invocation owns an 8×8 register tile: rows ty + i·WG_Y, columns tx + j·WG_X (so stores
// are coalesced along N), held as named vec4 values. The tile is written out row by row on
// purpose: with loops over private arrays the NVIDIA Vulkan compiler kept the tile in local
// memory (6× slower on an H100).
//
// Napkin math (default WG 16×16, so BM = BN = 128, 256 invocations):
//   per K-step: global reads 128·32 B (qact) + 128·32 B (qweight) + scales ≈ 8.5 KB;
//   workgroup memory 2·128·80 B (padded int8 tiles) + 2·128·20 B (scales) + 1 KB (table)
//   ≈ 26 KB;
//   per invocation per K-step: 8·8·16 = 1024 dot4I8Packed (4 MAC each) from 16·4 vec4 loads,
//   plus 64 rescales per group (INT4: 1 group per step; NVFP4: 4 groups of 4 dots each).
//   Arithmetic intensity: 128·128·64 MAC per 8 KB read = 128 MAC/B, far above any memory bound;
//   the kernel is bound by the integer pipe (dot + add per dot4I8Packed). Tried on the H100 and
//   dropped: a 1.5·2²³ bias trick instead of the i32 → f32 conversion (no gain), 4×8 / 8×4
//   register tiles and 64-wide workgroup tiles (slower).
// Measured on an H100 (Vulkan, Deno 2.9.6, M=4096, K=3072, N=3072..12288, Y f16): INT4 39–45
// TOPS, NVFP4 29–32 TOPS; the R=32 epilogue adds 3–4 % over R=0.

alias ACT = f32;

struct Params {
  m: u32,
  k: u32,
  n: u32,
  r: u32,
  // NVFP4 per-tensor weight scale (unused for INT4).
  tensor_scale: f32,
  // 1 when `bias` holds N values to add.
  has_bias: u32,
  _pad0: u32,
  _pad1: u32,
}

// 0 = INT4 weights × signed INT4 act, 1 = INT4 weights × unsigned INT4 act, 2 = NVFP4 × NVFP4.
override MODE: u32 = 0u;
override GELU: bool = false;
// f16 output: a value beyond ±65504 is stored as ±65504 (WGSL leaves an out-of-range f32 → f16
// conversion undefined; most drivers give ±inf). NaN stays NaN (the comparison is false).
override SATURATE: bool = false;
const F16_MAX: f32 = 65504.0;
// Invocations per workgroup along N (x) and M (y), each owning 8 × 8 outputs.
override WG_X: u32 = 16u;
override WG_Y: u32 = 16u;

const KSTEP = 64u; // K values staged per step
const ROW = 5u; // vec4 per staged row: 4 (= 64 int8) + 1 padding against bank conflicts
const LOAD_MAX = 4u; // prefetch registers per invocation (launcher keeps BM·4 / NT ≤ 4)

override BM: u32 = WG_Y * 8u;
override BN: u32 = WG_X * 8u;
override NT: u32 = WG_X * WG_Y;
override G: u32 = select(64u, 16u, MODE == 2u); // group size
override GPS: u32 = KSTEP / G; // groups per K-step (1 or 4)
override VPG: u32 = 4u / GPS; // vec4 words per group in a staged row (4 or 1)
override FACTOR: f32 = select(select(1.0 / 256.0, 1.0 / 16.0, MODE == 1u), 0.25, MODE == 2u);

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> qact: array<vec2<u32>>; // [M, K/8] u32, read in pairs
@group(0) @binding(2) var<storage, read> ascales: array<f32>; // [M, K/G]
@group(0) @binding(3) var<storage, read> qweight: array<vec2<u32>>; // [N, K/8] u32
@group(0) @binding(4) var<storage, read> wscales: array<u32>; // INT4 f16 pairs / NVFP4 E4M3 ×4
@group(0) @binding(5) var<storage, read> lora_act: array<f32>; // [M, R]
@group(0) @binding(6) var<storage, read> lora_up: array<u32>; // [N, R] f16 pairs
// Per-channel f32 vectors: the bias [N] (when has_bias), then, with CHANNEL_SCALE, a per-output-
// channel weight scale [N] (NVFP4 `wcscales` of imported Nunchaku layers) that multiplies every
// group scale of row n, so it scales the 4-bit product only, not the low-rank term or the bias.
// One binding for both keeps the kernel at 8 storage buffers, WebGPU's default limit.
@group(0) @binding(7) var<storage, read> bias: array<f32>;
@group(0) @binding(8) var<storage, read_write> y: array<ACT>; // [M, N]
override CHANNEL_SCALE: bool = false;

var<workgroup> xa: array<vec4<u32>, BM * ROW>; // int8 act codes; f32 lora_act in the epilogue
var<workgroup> xw: array<vec4<u32>, BN * ROW>; // int8 weight codes; f32 lora_up in the epilogue
var<workgroup> sa: array<f32, BM * ROW>; // act group scales [row][group], stride ROW
var<workgroup> sw: array<f32, BN * ROW>; // weight group scales × FACTOR
var<workgroup> lut: array<u32, 256>; // NVFP4: byte → two int8 (2·e2m1) in 16 bits

// 2·e2m1 of a 4-bit code as an int8 in the low byte.
fn fp4_int8(code: u32) -> u32 {
  let mag = (0xC8643210u >> (4u * (code & 7u))) & 0xFu; // {0, 1, 2, 3, 4, 6, 8, 12}
  return select(mag, (256u - mag) & 0xFFu, code >= 8u);
}

fn decode_e4m3(code: u32) -> f32 {
  let e = (code >> 3u) & 0xFu;
  let m = f32(code & 7u);
  let mag = select(ldexp(1.0 + m / 8.0, i32(e) - 7), m * (1.0 / 512.0), e == 0u);
  return select(mag, -mag, (code & 0x80u) != 0u);
}

// Widen two packed activation words (16 nibbles) into four int8×4 words.
fn widen_act(w: vec2<u32>) -> vec4<u32> {
  if (MODE == 0u) {
    return vec4((w.x << 4u) & 0xF0F0F0F0u, w.x & 0xF0F0F0F0u, (w.y << 4u) & 0xF0F0F0F0u,
      w.y & 0xF0F0F0F0u);
  }
  if (MODE == 1u) {
    return vec4(w.x & 0x0F0F0F0Fu, (w.x >> 4u) & 0x0F0F0F0Fu, w.y & 0x0F0F0F0Fu,
      (w.y >> 4u) & 0x0F0F0F0Fu);
  }
  return widen_fp4(w);
}

fn widen_weight(w: vec2<u32>) -> vec4<u32> {
  if (MODE == 2u) {
    return widen_fp4(w);
  }
  return vec4((w.x << 4u) & 0xF0F0F0F0u, w.x & 0xF0F0F0F0u, (w.y << 4u) & 0xF0F0F0F0u,
    w.y & 0xF0F0F0F0u);
}

fn widen_fp4(w: vec2<u32>) -> vec4<u32> {
  return vec4(
    lut[w.x & 0xFFu] | (lut[(w.x >> 8u) & 0xFFu] << 16u),
    lut[(w.x >> 16u) & 0xFFu] | (lut[w.x >> 24u] << 16u),
    lut[w.y & 0xFFu] | (lut[(w.y >> 8u) & 0xFFu] << 16u),
    lut[(w.y >> 16u) & 0xFFu] | (lut[w.y >> 24u] << 16u),
  );
}

// Group scale of weight row `n`, group `g`, times FACTOR.
fn weight_scale(n: u32, g: u32, groups: u32) -> f32 {
  let e = n * groups + g;
  var v: f32;
  if (MODE == 2u) {
    let code = (wscales[e >> 2u] >> (8u * (e & 3u))) & 0xFFu;
    v = decode_e4m3(code) * params.tensor_scale;
  } else {
    v = unpack2x16float(wscales[e >> 1u])[e & 1u];
  }
  if (CHANNEL_SCALE) {
    v *= bias[select(0u, params.n, params.has_bias == 1u) + n];
  }
  return v * FACTOR;
}

fn lora_up_value(e: u32) -> f32 {
  return unpack2x16float(lora_up[e >> 1u])[e & 1u];
}

fn gelu_tanh(x: f32) -> f32 {
  // 0.5·x·(1 + tanh(u)) = x / (1 + exp(-2u)): no inf/inf for large |x|.
  let u = 0.7978845608028654 * (x + 0.044715 * x * x * x);
  return x / (1.0 + exp(-2.0 * u));
}

// The register tile: one row of 8 columns as two vec4 (columns 0..3, 4..7).
struct RowI {
  lo: vec4<i32>,
  hi: vec4<i32>,
}

struct RowF {
  lo: vec4<f32>,
  hi: vec4<f32>,
}

// 16 int8 products: four dot4I8Packed.
fn dot16(a: vec4<u32>, b: vec4<u32>) -> i32 {
  return dot4I8Packed(a.x, b.x) + dot4I8Packed(a.y, b.y) + dot4I8Packed(a.z, b.z) +
    dot4I8Packed(a.w, b.w);
}

// One row of the group sums: acc + a · [b0 … b7].
fn row_dots(
  acc: RowI,
  a: vec4<u32>,
  b0: vec4<u32>,
  b1: vec4<u32>,
  b2: vec4<u32>,
  b3: vec4<u32>,
  b4: vec4<u32>,
  b5: vec4<u32>,
  b6: vec4<u32>,
  b7: vec4<u32>,
) -> RowI {
  return RowI(
    acc.lo + vec4(dot16(a, b0), dot16(a, b1), dot16(a, b2), dot16(a, b3)),
    acc.hi + vec4(dot16(a, b4), dot16(a, b5), dot16(a, b6), dot16(a, b7)),
  );
}

// acc + group sums · (act scale · weight scales).
fn row_rescale(acc: RowF, sums: RowI, sa_row: f32, sw_lo: vec4<f32>, sw_hi: vec4<f32>) -> RowF {
  return RowF(
    fma(vec4<f32>(sums.lo), sa_row * sw_lo, acc.lo),
    fma(vec4<f32>(sums.hi), sa_row * sw_hi, acc.hi),
  );
}

// acc + lora_act[row, 4 ranks] · lora_up[columns, same 4 ranks].
fn row_lora(
  acc: RowF,
  a: vec4<f32>,
  u0: vec4<f32>,
  u1: vec4<f32>,
  u2: vec4<f32>,
  u3: vec4<f32>,
  u4: vec4<f32>,
  u5: vec4<f32>,
  u6: vec4<f32>,
  u7: vec4<f32>,
) -> RowF {
  return RowF(
    acc.lo + vec4(dot(a, u0), dot(a, u1), dot(a, u2), dot(a, u3)),
    acc.hi + vec4(dot(a, u4), dot(a, u5), dot(a, u6), dot(a, u7)),
  );
}

fn as_f32(w: vec4<u32>) -> vec4<f32> {
  return bitcast<vec4<f32>>(w);
}

fn store(m: u32, n: u32, x: f32) {
  if (n < params.n) {
    var v = x;
    if (GELU) {
      v = gelu_tanh(v);
    }
    y[m * params.n + n] = ACT(select(v, sign(v) * F16_MAX, SATURATE && abs(v) > F16_MAX));
  }
}

// Bias, GELU and the store of one row (columns n0 + j·WG_X).
fn store_row(m: u32, n0: u32, acc: RowF, bias_lo: vec4<f32>, bias_hi: vec4<f32>) {
  if (m >= params.m) {
    return;
  }
  let lo = acc.lo + bias_lo;
  let hi = acc.hi + bias_hi;
  store(m, n0, lo.x);
  store(m, n0 + WG_X, lo.y);
  store(m, n0 + 2u * WG_X, lo.z);
  store(m, n0 + 3u * WG_X, lo.w);
  store(m, n0 + 4u * WG_X, hi.x);
  store(m, n0 + 5u * WG_X, hi.y);
  store(m, n0 + 6u * WG_X, hi.z);
  store(m, n0 + 7u * WG_X, hi.w);
}

fn bias_value(n: u32) -> f32 {
  return select(0.0, bias[min(n, params.n - 1u)], params.has_bias != 0u && n < params.n);
}

@compute @workgroup_size(WG_X, WG_Y)
fn gemm_w4a4_lowrank(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(local_invocation_id) lid3: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let M = params.m;
  let N = params.n;
  let K = params.k;
  let R = params.r;
  let pairs = K / 16u; // vec2<u32> per packed row
  let groups = K / G;
  let tile_m = wid.y * BM;
  let tile_n = wid.x * BN;
  let tx = lid3.x;
  let ty = lid3.y;
  // Staged-row offsets of this invocation's first row / column and of the next ones.
  let arow = ty * ROW;
  let astep = WG_Y * ROW;
  let wrow = tx * ROW;
  let wstep = WG_X * ROW;

  if (MODE == 2u) {
    for (var b = lid; b < 256u; b += NT) {
      lut[b] = fp4_int8(b & 15u) | (fp4_int8(b >> 4u) << 8u);
    }
  }

  // The 8×8 register tile, row i = output row tile_m + ty + i·WG_Y.
  let zero = RowF(vec4(0.0), vec4(0.0));
  var c0 = zero;
  var c1 = zero;
  var c2 = zero;
  var c3 = zero;
  var c4 = zero;
  var c5 = zero;
  var c6 = zero;
  var c7 = zero;
  // Group sums (i32, exact) of the current group, same layout.
  let izero = RowI(vec4(0), vec4(0));
  var i0 = izero;
  var i1 = izero;
  var i2 = izero;
  var i3 = izero;
  var i4 = izero;
  var i5 = izero;
  var i6 = izero;
  var i7 = izero;
  var pa: array<vec2<u32>, LOAD_MAX>; // prefetched packed codes
  var pw: array<vec2<u32>, LOAD_MAX>;
  var psa: array<f32, LOAD_MAX>; // prefetched scales
  var psw: array<f32, LOAD_MAX>;

  let steps = (K + KSTEP - 1u) / KSTEP;
  for (var s = 0u; s <= steps; s++) {
    if (s > 0u) {
      // Stage the prefetched step s-1 (barrier: everyone finished reading step s-2).
      workgroupBarrier();
      for (var i = 0u; i < BM * 4u / NT; i++) {
        let idx = i * NT + lid;
        xa[(idx / 4u) * ROW + idx % 4u] = widen_act(pa[i]);
      }
      for (var i = 0u; i < BN * 4u / NT; i++) {
        let idx = i * NT + lid;
        xw[(idx / 4u) * ROW + idx % 4u] = widen_weight(pw[i]);
      }
      for (var i = 0u; i < LOAD_MAX; i++) {
        let idx = i * NT + lid;
        if (idx < BM * GPS) {
          sa[(idx / GPS) * ROW + idx % GPS] = psa[i];
        }
        if (idx < BN * GPS) {
          sw[(idx / GPS) * ROW + idx % GPS] = psw[i];
        }
      }
      workgroupBarrier();
    }
    if (s < steps) {
      // Prefetch step s from global memory (zeros outside M, N and K).
      let kp = s * (KSTEP / 16u);
      for (var i = 0u; i < BM * 4u / NT; i++) {
        let idx = i * NT + lid;
        let m = tile_m + idx / 4u;
        let p = kp + idx % 4u;
        let word = qact[min(m, M - 1u) * pairs + min(p, pairs - 1u)];
        pa[i] = select(vec2(0u), word, m < M && p < pairs);
      }
      for (var i = 0u; i < BN * 4u / NT; i++) {
        let idx = i * NT + lid;
        let n = tile_n + idx / 4u;
        let p = kp + idx % 4u;
        let word = qweight[min(n, N - 1u) * pairs + min(p, pairs - 1u)];
        pw[i] = select(vec2(0u), word, n < N && p < pairs);
      }
      let kg = s * GPS;
      for (var i = 0u; i < LOAD_MAX; i++) {
        let idx = i * NT + lid;
        let m = tile_m + idx / GPS;
        let n = tile_n + idx / GPS;
        let g = kg + idx % GPS;
        psa[i] = 0.0;
        psw[i] = 0.0;
        if (idx < BM * GPS && m < M && g < groups) {
          psa[i] = ascales[m * groups + g];
        }
        if (idx < BN * GPS && n < N && g < groups) {
          psw[i] = weight_scale(n, g, groups);
        }
      }
    }
    if (s > 0u) {
      for (var g = 0u; g < GPS; g++) {
        // Assigned, not declared, here: naga may hoist a loop-local `var` and initialise it once.
        i0 = izero;
        i1 = izero;
        i2 = izero;
        i3 = izero;
        i4 = izero;
        i5 = izero;
        i6 = izero;
        i7 = izero;
        for (var v = g * VPG; v < (g + 1u) * VPG; v++) {
          let b0 = xw[wrow + 0u * wstep + v];
          let b1 = xw[wrow + 1u * wstep + v];
          let b2 = xw[wrow + 2u * wstep + v];
          let b3 = xw[wrow + 3u * wstep + v];
          let b4 = xw[wrow + 4u * wstep + v];
          let b5 = xw[wrow + 5u * wstep + v];
          let b6 = xw[wrow + 6u * wstep + v];
          let b7 = xw[wrow + 7u * wstep + v];
          i0 = row_dots(i0, xa[arow + 0u * astep + v], b0, b1, b2, b3, b4, b5, b6, b7);
          i1 = row_dots(i1, xa[arow + 1u * astep + v], b0, b1, b2, b3, b4, b5, b6, b7);
          i2 = row_dots(i2, xa[arow + 2u * astep + v], b0, b1, b2, b3, b4, b5, b6, b7);
          i3 = row_dots(i3, xa[arow + 3u * astep + v], b0, b1, b2, b3, b4, b5, b6, b7);
          i4 = row_dots(i4, xa[arow + 4u * astep + v], b0, b1, b2, b3, b4, b5, b6, b7);
          i5 = row_dots(i5, xa[arow + 5u * astep + v], b0, b1, b2, b3, b4, b5, b6, b7);
          i6 = row_dots(i6, xa[arow + 6u * astep + v], b0, b1, b2, b3, b4, b5, b6, b7);
          i7 = row_dots(i7, xa[arow + 7u * astep + v], b0, b1, b2, b3, b4, b5, b6, b7);
        }
        let sw_lo = vec4(sw[wrow + g], sw[wrow + wstep + g],
          sw[wrow + 2u * wstep + g], sw[wrow + 3u * wstep + g]);
        let sw_hi = vec4(sw[wrow + 4u * wstep + g], sw[wrow + 5u * wstep + g],
          sw[wrow + 6u * wstep + g], sw[wrow + 7u * wstep + g]);
        c0 = row_rescale(c0, i0, sa[arow + 0u * astep + g], sw_lo, sw_hi);
        c1 = row_rescale(c1, i1, sa[arow + 1u * astep + g], sw_lo, sw_hi);
        c2 = row_rescale(c2, i2, sa[arow + 2u * astep + g], sw_lo, sw_hi);
        c3 = row_rescale(c3, i3, sa[arow + 3u * astep + g], sw_lo, sw_hi);
        c4 = row_rescale(c4, i4, sa[arow + 4u * astep + g], sw_lo, sw_hi);
        c5 = row_rescale(c5, i5, sa[arow + 5u * astep + g], sw_lo, sw_hi);
        c6 = row_rescale(c6, i6, sa[arow + 6u * astep + g], sw_lo, sw_hi);
        c7 = row_rescale(c7, i7, sa[arow + 7u * astep + g], sw_lo, sw_hi);
      }
    }
  }

  // Low-rank up-projection: R in chunks of 16, tiles staged as f32 in the code buffers.
  for (var r0 = 0u; r0 < R; r0 += 16u) {
    workgroupBarrier();
    for (var idx = lid; idx < BM * 4u; idx += NT) {
      let m = tile_m + idx / 4u;
      var v = vec4(0.0);
      for (var c = 0u; c < 4u; c++) {
        let r = r0 + (idx % 4u) * 4u + c;
        if (m < M && r < R) {
          v[c] = lora_act[m * R + r];
        }
      }
      xa[(idx / 4u) * ROW + idx % 4u] = bitcast<vec4<u32>>(v);
    }
    for (var idx = lid; idx < BN * 4u; idx += NT) {
      let n = tile_n + idx / 4u;
      var v = vec4(0.0);
      for (var c = 0u; c < 4u; c++) {
        let r = r0 + (idx % 4u) * 4u + c;
        if (n < N && r < R) {
          v[c] = lora_up_value(n * R + r);
        }
      }
      xw[(idx / 4u) * ROW + idx % 4u] = bitcast<vec4<u32>>(v);
    }
    workgroupBarrier();
    for (var q = 0u; q < 4u; q++) {
      let u0 = as_f32(xw[wrow + 0u * wstep + q]);
      let u1 = as_f32(xw[wrow + 1u * wstep + q]);
      let u2 = as_f32(xw[wrow + 2u * wstep + q]);
      let u3 = as_f32(xw[wrow + 3u * wstep + q]);
      let u4 = as_f32(xw[wrow + 4u * wstep + q]);
      let u5 = as_f32(xw[wrow + 5u * wstep + q]);
      let u6 = as_f32(xw[wrow + 6u * wstep + q]);
      let u7 = as_f32(xw[wrow + 7u * wstep + q]);
      c0 = row_lora(c0, as_f32(xa[arow + 0u * astep + q]), u0, u1, u2, u3, u4, u5, u6, u7);
      c1 = row_lora(c1, as_f32(xa[arow + 1u * astep + q]), u0, u1, u2, u3, u4, u5, u6, u7);
      c2 = row_lora(c2, as_f32(xa[arow + 2u * astep + q]), u0, u1, u2, u3, u4, u5, u6, u7);
      c3 = row_lora(c3, as_f32(xa[arow + 3u * astep + q]), u0, u1, u2, u3, u4, u5, u6, u7);
      c4 = row_lora(c4, as_f32(xa[arow + 4u * astep + q]), u0, u1, u2, u3, u4, u5, u6, u7);
      c5 = row_lora(c5, as_f32(xa[arow + 5u * astep + q]), u0, u1, u2, u3, u4, u5, u6, u7);
      c6 = row_lora(c6, as_f32(xa[arow + 6u * astep + q]), u0, u1, u2, u3, u4, u5, u6, u7);
      c7 = row_lora(c7, as_f32(xa[arow + 7u * astep + q]), u0, u1, u2, u3, u4, u5, u6, u7);
    }
  }

  // Epilogue: bias, GELU, one store.
  let n0 = tile_n + tx;
  let bias_lo = vec4(bias_value(n0), bias_value(n0 + WG_X), bias_value(n0 + 2u * WG_X),
    bias_value(n0 + 3u * WG_X));
  let bias_hi = vec4(bias_value(n0 + 4u * WG_X), bias_value(n0 + 5u * WG_X),
    bias_value(n0 + 6u * WG_X), bias_value(n0 + 7u * WG_X));
  store_row(tile_m + ty + 0u * WG_Y, n0, c0, bias_lo, bias_hi);
  store_row(tile_m + ty + 1u * WG_Y, n0, c1, bias_lo, bias_hi);
  store_row(tile_m + ty + 2u * WG_Y, n0, c2, bias_lo, bias_hi);
  store_row(tile_m + ty + 3u * WG_Y, n0, c3, bias_lo, bias_hi);
  store_row(tile_m + ty + 4u * WG_Y, n0, c4, bias_lo, bias_hi);
  store_row(tile_m + ty + 5u * WG_Y, n0, c5, bias_lo, bias_hi);
  store_row(tile_m + ty + 6u * WG_Y, n0, c6, bias_lo, bias_hi);
  store_row(tile_m + ty + 7u * WG_Y, n0, c7, bias_lo, bias_hi);
}
