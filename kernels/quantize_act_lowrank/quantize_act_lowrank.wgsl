// quantize_act_lowrank: one pass over X [M, K] writes
//   lora_act [M, R] f32 = X · lora_downᵀ            (raw X; lora_down [R, K] f16 bits, 2 per u32)
//   qact [M, K/8] u32 + ascales [M, K/G] f32        (X / smooth, per token and group, 4-bit)
// following quantizeAct in formats/packing.ts exactly (see ARCHITECTURE.md "Packed layouts").
//
// A workgroup of 256 invocations owns TM = 4·QUADS rows and walks K in chunks of CK = 512/QUADS
// columns, so one chunk is TM × CK = 2048 elements = one 8-element word per invocation.
//  A. each invocation loads its 8 values (registers; prefetched during the previous chunk),
//     divides by smooth, keeps them, and stores the raw values in workgroup memory `xsh`
//     (row-major [TM, CK] as vec4: two conflict-free 16-byte stores);
//  B. the group amax is the max over the G/8 invocations of the group (workgroup memory `amx`),
//     then each invocation quantizes its 8 values and writes one whole qact word;
//  C. the low-rank product: invocation (kl, rl, ql) accumulates, for its RPW ranks
//     r = rl + RL·j and QPT row quads q = ql + QL·i, the partial sums over the chunk's
//     4-column slices kq ≡ kl (mod 8) in registers (a vec4 holds 4 rows); per slice it reads
//     one vec4 of X per row (the 4 output lanes of a warp share it) and 4 f16 of lora_down per
//     rank (8 lanes read 64 contiguous bytes).
// After the last chunk the 8 partial sums per output are added through workgroup memory.

alias ACT = f32;

struct Params {
  m: u32,
  k: u32,
  r: u32,
  // workgroups along x (the grid is 2-D when M/TM exceeds the per-dimension limit)
  gx: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<ACT>>;
// `smooth` (the descriptor's name) is a reserved word in naga's WGSL
@group(0) @binding(2) var<storage, read> smooth_: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> lora_down: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read_write> qact: array<u32>;
@group(0) @binding(5) var<storage, read_write> ascales: array<f32>;
@group(0) @binding(6) var<storage, read_write> lora_act: array<f32>;

const WG: u32 = 256u;
// invocations sharing one output of the low-rank product (consecutive, along K)
const KL: u32 = 8u;
const GELU_SHIFT: f32 = 0.171875;

// 0 = int4 (signed, G 64), 1 = int4_unsigned (GELU shift, G 64), 2 = nvfp4 (E2M1, G 16)
override MODE: u32 = 0u;
override SMOOTH: bool = false;
// Nunchaku's rounding (imported checkpoints; quantizeAct's convention "nunchaku"): X/λ rounded to
// bf16 (unsigned: bf16(bf16(x + shift) / λ)), scales s = amax·(1/7 | 1/15 | 1/6), codes from
// xs·(1/s), stored scale bf16(s) (nvfp4: e4m3(s)).
override NUNCHAKU: bool = false;
// row quads per workgroup: 1, 2 or 4 (TM = 4, 8, 16 rows)
override QUADS: u32 = 4u;
// row quads split across output lanes (QUADS = QL · QPT), 1 or 2
override QL: u32 = 2u;
// ranks per invocation: ceil(R / RL) with RL = 32 / QL (0 when R = 0)
override RPW: u32 = 2u;

var<workgroup> xsh: array<vec4<f32>, 512>;
var<workgroup> amx: array<f32, WG>;

fn load8(row: u32, col: u32, ok: bool) -> array<vec4<f32>, 2> {
  var v: array<vec4<f32>, 2>;
  if (ok) {
    let i = (row * params.k + col) / 4u;
    v[0] = vec4<f32>(x[i]);
    v[1] = vec4<f32>(x[i + 1u]);
  }
  return v;
}

// E4M3 value of a code 0..126.
fn e4m3_decode(c: u32) -> f32 {
  let e = c >> 3u;
  let m = f32(c & 7u);
  if (e == 0u) {
    return m * (1.0 / 512.0);
  }
  return ldexp(1.0 + m * 0.125, i32(e) - 7);
}

// E4M3 code of v >= 0, round to nearest even, saturating at 448 (code 126).
fn e4m3_encode(v: f32) -> u32 {
  if (v >= 448.0) {
    return 126u;
  }
  // binade exponent; subnormals (and f32 subnormals or zero) share the step of binade -6
  let ee = max(i32((bitcast<u32>(v) >> 23u) & 0xffu) - 127, -6);
  // the mantissa with its implicit 8 becomes an integer in [8, 16]; a carry to 16 moves to the
  // next binade by itself, and subnormal codes are the integer itself
  let mt = u32(round(ldexp(v, 3 - ee)));
  return min(u32((ee + 6) * 8) + mt, 126u);
}

// The NVFP4 group scale decodeE4M3(encodeE4M3(amax / 6)). The quotient of an f32 by 6 never
// rounds onto an E4M3 midpoint unless it equals it, so rounding the exact amax / 6 is the
// same; GPU division is not correctly rounded, so the code found from the quotient is checked
// against its neighbouring midpoints exactly (6 · midpoint is exact in f32).
fn nvfp4_scale(amax: f32) -> f32 {
  var c = e4m3_encode(amax / 6.0);
  if (c < 126u) {
    let hi = 3.0 * (e4m3_decode(c) + e4m3_decode(c + 1u));
    if (amax > hi || (amax == hi && (c & 1u) == 1u)) {
      c += 1u;
      return e4m3_decode(c);
    }
  }
  if (c > 0u) {
    let lo = 3.0 * (e4m3_decode(c - 1u) + e4m3_decode(c));
    if (amax < lo || (amax == lo && (c & 1u) == 1u)) {
      c -= 1u;
    }
  }
  return e4m3_decode(c);
}

// E2M1 codes of xs / s (s on the E4M3 grid, > 0), round to nearest even, saturating at ±6.
// Each midpoint m times s is exact in f32 and fround(xs / s) lands on m only when xs == m·s,
// so comparing xs with m·s gives the codes of the correctly rounded quotient without dividing.
fn e2m1_codes(xs: vec4<f32>, s: f32) -> vec4<u32> {
  let a = abs(xs);
  let one = vec4<u32>(1u);
  let zero = vec4<u32>(0u);
  var c = select(zero, one, a > vec4<f32>(0.25 * s));
  c += select(zero, one, a >= vec4<f32>(0.75 * s));
  c += select(zero, one, a > vec4<f32>(1.25 * s));
  c += select(zero, one, a >= vec4<f32>(1.75 * s));
  c += select(zero, one, a > vec4<f32>(2.5 * s));
  c += select(zero, one, a >= vec4<f32>(3.5 * s));
  c += select(zero, one, a > vec4<f32>(5.0 * s));
  // the sign is kept (negative values rounding to 0 and -0 give code 8)
  return c | ((bitcast<vec4<u32>>(xs) >> vec4<u32>(31u)) << vec4<u32>(3u));
}

// Round to the nearest bf16 (ties to even), kept as f32. Finite inputs.
fn bf16r(v: vec4<f32>) -> vec4<f32> {
  let b = bitcast<vec4<u32>>(v);
  let r = (b + vec4<u32>(0x7fffu) + ((b >> vec4<u32>(16u)) & vec4<u32>(1u))) & vec4<u32>(0xffff0000u);
  return bitcast<vec4<f32>>(r);
}

// 4-bit codes of 4 values (bits 0..15, element j at bits 4j..4j+3).
fn codes4(xs: vec4<f32>, s: f32) -> u32 {
  var c: vec4<u32>;
  if (MODE == 2u) {
    c = e2m1_codes(xs, s);
  } else {
    let lo = select(-8.0, 0.0, MODE == 1u);
    let hi = select(7.0, 15.0, MODE == 1u);
    // WGSL round() is round-half-to-even
    c = bitcast<vec4<u32>>(vec4<i32>(clamp(round(xs / s), vec4<f32>(lo), vec4<f32>(hi))));
  }
  c &= vec4<u32>(15u);
  return c.x | (c.y << 4u) | (c.z << 8u) | (c.w << 12u);
}

// Four consecutive lora_down values (f16) starting at element 4·i of the flat [R, K] array.
fn lora4(i: u32) -> vec4<f32> {
  let w = lora_down[i];
  return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}

// Sum the KL partial sums of accumulator (j, i) over the lanes kl and store lora_act rows
// row0 + 4·(ql + QL·i) + c, rank rl + RL·j. Called in uniform control flow (it has barriers).
fn store_lora(v: vec4<f32>, j: u32, i: u32, tid: u32, row0: u32) {
  xsh[tid] = v;
  workgroupBarrier();
  if (tid < 32u) {
    var sum = vec4<f32>(0.0);
    for (var p = 0u; p < KL; p++) {
      sum += xsh[tid * KL + p];
    }
    let RL = 32u / QL;
    let r = tid % RL + RL * j;
    let q = tid / RL + QL * i;
    if (r < params.r) {
      for (var c = 0u; c < 4u; c++) {
        let row = row0 + 4u * q + c;
        if (row < params.m) {
          lora_act[row * params.r + r] = sum[c];
        }
      }
    }
  }
  workgroupBarrier();
}

@compute @workgroup_size(WG)
fn quantize_act_lowrank(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(local_invocation_index) tid: u32,
) {
  let M = params.m;
  let K = params.k;
  let R = params.r;
  let TM = 4u * QUADS;
  let CK = 512u / QUADS;
  let XW = CK / 4u; // vec4 per row of xsh
  let WPR = CK / 8u; // qact words per row per chunk
  let GW = select(8u, 2u, MODE == 2u); // words per quantization group
  let G = GW * 8u;
  let RL = 32u / QL;
  let QPT = QUADS / QL;

  let row0 = (wid.y * params.gx + wid.x) * TM;
  if (row0 >= M) {
    return;
  }
  // quantization: one 8-element word of row t per invocation
  let t = tid / WPR;
  let w = tid % WPR;
  let row = row0 + t;
  let rowOk = row < M;
  // low-rank: lane kl along K, output lane (rl, ql)
  let kl = tid % KL;
  let rl = (tid / KL) % RL;
  let ql = (tid / KL) / RL;

  // low-rank accumulators a<j><i>: rank rl + RL·j, row quad ql + QL·i (4 rows in a vec4)
  var a00 = vec4<f32>(0.0);
  var a01 = vec4<f32>(0.0);
  var a10 = vec4<f32>(0.0);
  var a11 = vec4<f32>(0.0);
  var a20 = vec4<f32>(0.0);
  var a21 = vec4<f32>(0.0);
  var a30 = vec4<f32>(0.0);
  var a31 = vec4<f32>(0.0);
  let nch = (K + CK - 1u) / CK;
  var xv = load8(row, w * 8u, rowOk && w * 8u < K);
  for (var ch = 0u; ch < nch; ch++) {
    let k0 = ch * CK;
    let col = k0 + w * 8u;
    let ok = rowOk && col < K;
    let xa = xv[0];
    let xb = xv[1];

    // A. smooth (+ shift), local amax, raw values to workgroup memory
    var xs0 = xa;
    var xs1 = xb;
    if (NUNCHAKU && MODE == 1u) {
      xs0 = bf16r(xs0 + vec4<f32>(GELU_SHIFT));
      xs1 = bf16r(xs1 + vec4<f32>(GELU_SHIFT));
    }
    if (SMOOTH && ok) {
      xs0 = xs0 / smooth_[col / 4u];
      xs1 = xs1 / smooth_[col / 4u + 1u];
    }
    if (NUNCHAKU) {
      xs0 = bf16r(xs0);
      xs1 = bf16r(xs1);
    }
    var am: vec4<f32>;
    if (MODE == 1u) {
      if (!NUNCHAKU) {
        xs0 += vec4<f32>(GELU_SHIFT);
        xs1 += vec4<f32>(GELU_SHIFT);
      }
      am = max(max(xs0, xs1), vec4<f32>(0.0));
    } else {
      am = max(abs(xs0), abs(xs1));
    }
    amx[tid] = select(0.0, max(max(am.x, am.y), max(am.z, am.w)), ok);
    xsh[t * XW + 2u * w] = xa;
    xsh[t * XW + 2u * w + 1u] = xb;
    workgroupBarrier();

    // prefetch the next chunk; the loads are in flight during B and C
    if (ch + 1u < nch) {
      xv = load8(row, col + CK, rowOk && col + CK < K);
    }

    // B. group scale, codes, one whole qact word
    if (ok) {
      let g0 = tid - w % GW;
      var gmax = 0.0;
      for (var i = 0u; i < GW; i++) {
        gmax = max(gmax, amx[g0 + i]);
      }
      var s: f32;
      var stored: f32;
      var word = 0u;
      if (NUNCHAKU) {
        // f32 reciprocals as Nunchaku multiplies by them (1/7, 1/15, 1/6 rounded to f32)
        if (MODE == 2u) {
          s = min(gmax * 0.16666667163372040, 448.0);
          stored = e4m3_decode(e4m3_encode(s));
        } else {
          s = gmax * select(0.14285714924335480, 0.06666667014360428, MODE == 1u);
          stored = bf16r(vec4<f32>(s)).x;
        }
        if (s != 0.0) {
          let inv = 1.0 / s;
          word = codes4(xs0 * inv, 1.0) | (codes4(xs1 * inv, 1.0) << 16u);
        }
      } else {
        if (MODE == 2u) {
          s = nvfp4_scale(gmax);
        } else {
          s = gmax / select(7.0, 15.0, MODE == 1u);
        }
        stored = s;
        if (s != 0.0) {
          word = codes4(xs0, s) | (codes4(xs1, s) << 16u);
        }
      }
      qact[(row * K + col) / 8u] = word;
      if (w % GW == 0u) {
        ascales[(row * K + col) / G] = stored;
      }
    }

    // C. low-rank partial sums over this chunk. The accumulators are separate variables with
    // constant names (the guards fold away once the overrides are known), so they stay in
    // registers; a rank past R reads row R-1 and its sums are dropped at the end.
    if (RPW > 0u) {
      let kqEnd = min(K - k0, CK) / 4u;
      let l0 = (min(rl, R - 1u) * K + k0) / 4u;
      let l1 = (min(rl + RL, R - 1u) * K + k0) / 4u;
      let l2 = (min(rl + 2u * RL, R - 1u) * K + k0) / 4u;
      let l3 = (min(rl + 3u * RL, R - 1u) * K + k0) / 4u;
      let x0 = 4u * ql * XW;
      let x1 = 4u * (ql + QL) * XW;
      // a constant trip count (CK / 32) lets the compiler unroll and issue the loads early
      for (var it = 0u; it < CK / (4u * KL); it++) {
        let kq = kl + KL * it;
        if (kq >= kqEnd) {
          break;
        }
        let u0 = xsh[x0 + kq];
        let u1 = xsh[x0 + XW + kq];
        let u2 = xsh[x0 + 2u * XW + kq];
        let u3 = xsh[x0 + 3u * XW + kq];
        var v0 = vec4<f32>(0.0);
        var v1 = vec4<f32>(0.0);
        var v2 = vec4<f32>(0.0);
        var v3 = vec4<f32>(0.0);
        if (QPT > 1u) {
          v0 = xsh[x1 + kq];
          v1 = xsh[x1 + XW + kq];
          v2 = xsh[x1 + 2u * XW + kq];
          v3 = xsh[x1 + 3u * XW + kq];
        }
        var d = lora4(l0 + kq);
        a00 += vec4<f32>(dot(u0, d), dot(u1, d), dot(u2, d), dot(u3, d));
        if (QPT > 1u) {
          a01 += vec4<f32>(dot(v0, d), dot(v1, d), dot(v2, d), dot(v3, d));
        }
        if (RPW > 1u) {
          d = lora4(l1 + kq);
          a10 += vec4<f32>(dot(u0, d), dot(u1, d), dot(u2, d), dot(u3, d));
          if (QPT > 1u) {
            a11 += vec4<f32>(dot(v0, d), dot(v1, d), dot(v2, d), dot(v3, d));
          }
        }
        if (RPW > 2u) {
          d = lora4(l2 + kq);
          a20 += vec4<f32>(dot(u0, d), dot(u1, d), dot(u2, d), dot(u3, d));
          if (QPT > 1u) {
            a21 += vec4<f32>(dot(v0, d), dot(v1, d), dot(v2, d), dot(v3, d));
          }
        }
        if (RPW > 3u) {
          d = lora4(l3 + kq);
          a30 += vec4<f32>(dot(u0, d), dot(u1, d), dot(u2, d), dot(u3, d));
          if (QPT > 1u) {
            a31 += vec4<f32>(dot(v0, d), dot(v1, d), dot(v2, d), dot(v3, d));
          }
        }
      }
    }
    workgroupBarrier();
  }

  // add the KL partial sums of each output through workgroup memory, one accumulator at a time
  if (RPW > 0u) {
    store_lora(a00, 0u, 0u, tid, row0);
    if (QPT > 1u) {
      store_lora(a01, 0u, 1u, tid, row0);
    }
    if (RPW > 1u) {
      store_lora(a10, 1u, 0u, tid, row0);
      if (QPT > 1u) {
        store_lora(a11, 1u, 1u, tid, row0);
      }
    }
    if (RPW > 2u) {
      store_lora(a20, 2u, 0u, tid, row0);
      if (QPT > 1u) {
        store_lora(a21, 2u, 1u, tid, row0);
      }
    }
    if (RPW > 3u) {
      store_lora(a30, 3u, 0u, tid, row0);
      if (QPT > 1u) {
        store_lora(a31, 3u, 1u, tid, row0);
      }
    }
  }
}
