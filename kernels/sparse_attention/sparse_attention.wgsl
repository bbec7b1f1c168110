// sparse_attention: PAROAttention's block-sparse attention over permuted tokens, with INT8 or
// float Q·Kᵀ and INT8 or float P·V (the arithmetic is specified by sparse_attention_ref.ts).
//
// Layout (ACT = f16 with shader-f16, else f32): qkv [B·T, 3·H·D] and o [B·T, H·D] as in
// flash_attention.wgsl; perm [H·T] u32 (token at permuted position p of head h); offsets
// [H·nt + 1] and indices: the CSR of key tiles per (head, query tile) (layout.ts). INT8 operands
// come from sparse_attention_prep.wgsl (qk8, v8, scales; layouts there).
//
// Grid [nt, H, B]: workgroup (i, h, b) owns query tile i (TILE permuted positions) of (b, h) and
// walks ONLY the key tiles its CSR row lists (skipped tiles cost nothing). NT = (TILE/4)·(D/8)
// invocations; invocation (rg, cg) owns O[rows 4rg..4rg+3, cols 8cg..8cg+7] as eight named vec4.
// Q stays in workgroup memory `qs` (QK_INT8: the tile's [D/4][TILE] code words, copied as is;
// float: scale·log2(e)·q as f32 bits, [DC][TILE], reloaded per chunk of DC channels when
// DC < D). Per visited key tile kt (its index read through workgroupUniformLoad, so the loops
// below are uniform; nk = valid keys, the last tile is partial):
//   1. logits of the whole tile into pt [TILE keys][TILE rows], walking the keys BKK at a time:
//      the K sub-tile goes to `kv` (QK_INT8: code words [D/4][BKK] straight from qk8, then
//      16 dot4I8Packed per pair of vec4 words, s = f32(Σ q8·k8)·(sq·sk); float: keys gathered
//      through perm, [DC][BKK] f32 bits, FMA chains, partial sums added over the DC chunks);
//   2. invocation r < TILE updates row r's running max m once for the tile (α = 2^(m_old − m)),
//      then p = 2^(s − m) (float, back into pt) or p8 = round(127·p) packed 4 keys per word
//      into pp (PV_INT8); l = α·l + Σ p; α into rs. Meanwhile everyone loads V sub-tile 0;
//   3. O = α·O + P·V walking the keys BKV at a time: V float gathered through perm into kv
//      ([BKV][D/4] f32 bits, 32 FMAs per key) or INT8 V words [BKV/4][D/4] straight from v8
//      (32 dot4I8Packed per key word, summed in i32 over the tile, added once in f32).
// Finally o = O/l (·sv per channel for PV_INT8; 0 for a row that visited nothing) is stored to
// the query's ORIGINAL token row: the inverse permutation is fused into the store.
//
// Workgroup memory (bytes, the launcher computes the same): qs + kv + pt + pp + rs + 16, with
// qs = D·TILE (int8) or 4·DC·TILE, kv = max(K part, V part), K part = D·BKK (int8) or
// 4·DC·BKK, V part = 4·BKV·D (float) or BKV·D (int8), pt = 4·TILE², pp = TILE² (int8 PV) or 16,
// rs = 4·TILE.

alias ACT = f32;

struct Params {
  t: u32, // tokens per batch (T)
  heads: u32, // H
  nt: u32, // tiles per side ⌈T/TILE⌉
  scale2: f32, // scale · log2(e): logits in base-2 units
  skbase: u32, // scales: start of sk
  svbase: u32, // scales: start of sv
  psbase: u32, // (prep only)
  pmbase: u32, // (prep only)
  kbase: u32, // qk8: word where the K codes start
  nchunk: u32, // (prep only)
  chunk: u32, // (prep only)
  pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> qkv: array<vec4<ACT>>;
@group(0) @binding(2) var<storage, read_write> o: array<vec4<ACT>>;
@group(0) @binding(3) var<storage, read> perm: array<u32>;
@group(0) @binding(4) var<storage, read> offsets: array<u32>;
@group(0) @binding(5) var<storage, read> indices: array<u32>;
@group(0) @binding(6) var<storage, read> qk8: array<vec4<u32>>;
@group(0) @binding(7) var<storage, read> v8: array<vec4<u32>>;
@group(0) @binding(8) var<storage, read> scales: array<f32>;

override D: u32 = 64; // head dim, a multiple of 8
override TILE: u32 = 32; // queries per workgroup = keys per mask tile
override BKK: u32 = 32; // keys per K sub-tile (divides TILE, a multiple of 4)
override BKV: u32 = 32; // keys per V sub-tile (divides TILE, a multiple of 4)
override DC: u32 = 64; // float Q·Kᵀ: channels per chunk (divides D, a multiple of 4)
override QK_INT8: bool = true;
override PV_INT8: bool = false;
override DV: u32 = D / 4u; // vec4 per head row
override RG: u32 = TILE / 4u; // row groups (vec4 of 4 rows)
override KG: u32 = BKK / 4u; // key groups of a K sub-tile
override NT: u32 = RG * (D / 8u); // invocations
// array lengths in vec4, set by the launcher from the byte counts above
override Q_LEN: u32 = DV * RG;
override KV_LEN: u32 = BKV * DV;
override PP_LEN: u32 = 1u;
override PT_LEN: u32 = TILE * RG;

var<workgroup> qs: array<vec4<u32>, Q_LEN>;
var<workgroup> kv: array<vec4<u32>, KV_LEN>;
var<workgroup> pt: array<vec4<f32>, PT_LEN>; // logits, then p (float PV): [key][row group]
var<workgroup> pp: array<vec4<u32>, PP_LEN>; // p8 words (INT8 PV): [key word][row group]
var<workgroup> rs: array<vec4<f32>, RG>; // per row: α of the tile, at the end 1/l
var<workgroup> row_range: vec2<u32>;
var<workgroup> key_tile: u32;

const NEG_BIG = -1e30; // "minus infinity" of the running max (WGSL has no infinities)

// Token at permuted position p of head h (clamped into the sequence).
fn token(h: u32, p: u32) -> u32 {
  let T = params.t;
  return min(perm[h * T + min(p, T - 1u)], T - 1u);
}

fn qkv_at(b: u32, h: u32, p: u32, off: u32) -> vec4<f32> {
  return vec4<f32>(qkv[(b * params.t + token(h, p)) * 3u * params.heads * DV + off]);
}

// Rows r of a float [rows][DC/4] chunk, transposed into dst[d·G + r/4][r%4] (f32 bits).
fn put_q(d: u32, r: u32, v: vec4<f32>) {
  let at = 4u * d * RG + r / 4u;
  qs[at][r % 4u] = bitcast<u32>(v.x);
  qs[at + RG][r % 4u] = bitcast<u32>(v.y);
  qs[at + 2u * RG][r % 4u] = bitcast<u32>(v.z);
  qs[at + 3u * RG][r % 4u] = bitcast<u32>(v.w);
}

fn put_k(d: u32, j: u32, v: vec4<f32>) {
  let at = 4u * d * KG + j / 4u;
  kv[at][j % 4u] = bitcast<u32>(v.x);
  kv[at + KG][j % 4u] = bitcast<u32>(v.y);
  kv[at + 2u * KG][j % 4u] = bitcast<u32>(v.z);
  kv[at + 3u * KG][j % 4u] = bitcast<u32>(v.w);
}

// Float Q chunk: channels dc0..dc0+DC-1 of the tile's rows, times scale·log2(e); rows past T 0.
fn load_q_chunk(tid: u32, b: u32, h: u32, q0: u32, dc0: u32) {
  for (var i = tid; i < TILE * (DC / 4u); i += NT) {
    let r = i % TILE;
    let v = qkv_at(b, h, q0 + r, h * DV + dc0 / 4u + i / TILE) * params.scale2;
    put_q(i / TILE, r, select(vec4(0.0), v, q0 + r < params.t));
  }
}

// Float K chunk of keys k0..k0+BKK-1 (past T: a clamped real row, never used).
fn load_k_chunk(tid: u32, b: u32, h: u32, k0: u32, dc0: u32) {
  for (var i = tid; i < BKK * (DC / 4u); i += NT) {
    let j = i % BKK;
    put_k(i / BKK, j, qkv_at(b, h, k0 + j, (params.heads + h) * DV + dc0 / 4u + i / BKK));
  }
}

// Four logits of 4 rows: row i's keys j0..j0+3 in s_i; pt is [key][row group].
fn put_scores(j0: u32, r4: u32, s0: vec4<f32>, s1: vec4<f32>, s2: vec4<f32>, s3: vec4<f32>) {
  let at = j0 * RG + r4;
  pt[at] = vec4(s0.x, s1.x, s2.x, s3.x);
  pt[at + RG] = vec4(s0.y, s1.y, s2.y, s3.y);
  pt[at + 2u * RG] = vec4(s0.z, s1.z, s2.z, s3.z);
  pt[at + 3u * RG] = vec4(s0.w, s1.w, s2.w, s3.w);
}

fn dot4(a: u32, b: vec4<u32>) -> vec4<i32> {
  return vec4(dot4I8Packed(a, b.x), dot4I8Packed(a, b.y), dot4I8Packed(a, b.z), dot4I8Packed(a, b.w));
}

// Logits of K sub-tile sb from the INT8 codes, times c = sq·sk.
fn scores_int8(tid: u32, sb: u32, c: f32) {
  for (var st = tid; st < RG * KG; st += NT) {
    let r4 = st % RG;
    let k4 = st / RG;
    var s0 = vec4<i32>(0);
    var s1 = vec4<i32>(0);
    var s2 = vec4<i32>(0);
    var s3 = vec4<i32>(0);
    for (var w = 0u; w < DV; w++) {
      let q = qs[w * RG + r4];
      let k = kv[w * KG + k4];
      s0 += dot4(q.x, k);
      s1 += dot4(q.y, k);
      s2 += dot4(q.z, k);
      s3 += dot4(q.w, k);
    }
    put_scores(sb * BKK + 4u * k4, r4, vec4<f32>(s0) * c, vec4<f32>(s1) * c, vec4<f32>(s2) * c,
      vec4<f32>(s3) * c);
  }
}

// Logits of K sub-tile sb over one DC chunk, added to the previous chunks' when `add`.
fn scores_float(tid: u32, sb: u32, add: bool) {
  for (var st = tid; st < RG * KG; st += NT) {
    let r4 = st % RG;
    let k4 = st / RG;
    var s0 = vec4<f32>(0.0);
    var s1 = vec4<f32>(0.0);
    var s2 = vec4<f32>(0.0);
    var s3 = vec4<f32>(0.0);
    for (var d = 0u; d < DC; d++) {
      let q = bitcast<vec4<f32>>(qs[d * RG + r4]);
      let k = bitcast<vec4<f32>>(kv[d * KG + k4]);
      s0 = fma(vec4(q.x), k, s0);
      s1 = fma(vec4(q.y), k, s1);
      s2 = fma(vec4(q.z), k, s2);
      s3 = fma(vec4(q.w), k, s3);
    }
    let j0 = sb * BKK + 4u * k4;
    if (add) {
      let at = j0 * RG + r4;
      let t0 = pt[at];
      let t1 = pt[at + RG];
      let t2 = pt[at + 2u * RG];
      let t3 = pt[at + 3u * RG];
      s0 += vec4(t0.x, t1.x, t2.x, t3.x);
      s1 += vec4(t0.y, t1.y, t2.y, t3.y);
      s2 += vec4(t0.z, t1.z, t2.z, t3.z);
      s3 += vec4(t0.w, t1.w, t2.w, t3.w);
    }
    put_scores(j0, r4, s0, s1, s2, s3);
  }
}

// V sub-tile of keys k0..k0+BKV-1 of key tile kt (sub-tile sb): INT8 words or float rows.
fn load_v(tid: u32, b: u32, h: u32, kt: u32, sb: u32) {
  if (PV_INT8) {
    let base = ((b * params.heads + h) * params.nt + kt) * RG * DV + sb * (BKV / 4u) * DV;
    for (var i = tid; i < (BKV / 4u) * DV; i += NT) {
      kv[i] = v8[base + i];
    }
  } else {
    let k0 = kt * TILE + sb * BKV;
    for (var i = tid; i < BKV * DV; i += NT) {
      let v = qkv_at(b, h, k0 + i / DV, (2u * params.heads + h) * DV + i % DV);
      kv[i] = bitcast<vec4<u32>>(v);
    }
  }
}

// p8 = round(127·2^(s − m)) of key j of row (r4, c), 0 past the tile's nk keys.
fn p8_of(j: u32, nk: u32, r4: u32, c: u32, m: f32) -> f32 {
  return select(0.0, round(127.0 * exp2(pt[j * RG + r4][c] - m)), j < nk);
}

// Store query q's 8 outputs (vec4 column col of its token's o row), if the query exists.
fn store_row(b: u32, h: u32, q: u32, col: u32, a: vec4<f32>, c: vec4<f32>) {
  if (q < params.t) {
    let at = (b * params.t + token(h, q)) * params.heads * DV + col;
    o[at] = vec4<ACT>(a);
    o[at + 1u] = vec4<ACT>(c);
  }
}

@compute @workgroup_size(NT)
fn sparse_attention(
  @builtin(local_invocation_index) tid: u32,
  @builtin(workgroup_id) wid: vec3u,
) {
  let T = params.t;
  let nt = params.nt;
  let qt = wid.x;
  let h = wid.y;
  let b = wid.z;
  let bh = b * params.heads + h;
  let q0 = qt * TILE;

  if (tid == 0u) {
    let start = offsets[h * nt + qt];
    row_range = vec2(start, min(offsets[h * nt + qt + 1u], start + nt));
  }
  let range = workgroupUniformLoad(&row_range);

  var sq = 0.0;
  if (QK_INT8) {
    sq = scales[bh * nt + qt];
    let base = (bh * nt + qt) * DV * RG;
    for (var i = tid; i < DV * RG; i += NT) {
      qs[i] = qk8[base + i];
    }
  } else if (DC == D) {
    load_q_chunk(tid, b, h, q0, 0u);
  }

  let rg = tid % RG;
  let cg = tid / RG;
  var m_run = NEG_BIG; // running max of row tid (tid < TILE), base-2 units
  var l_run = 0.0; // running sum of the weights
  var o0a = vec4<f32>(0.0); // row 4rg + 0, columns 8cg + 0..3
  var o0b = vec4<f32>(0.0); // row 4rg + 0, columns 8cg + 4..7
  var o1a = vec4<f32>(0.0);
  var o1b = vec4<f32>(0.0);
  var o2a = vec4<f32>(0.0);
  var o2b = vec4<f32>(0.0);
  var o3a = vec4<f32>(0.0);
  var o3b = vec4<f32>(0.0);

  for (var n = range.x; n < range.y; n++) {
    if (tid == 0u) {
      key_tile = min(indices[n], nt - 1u);
    }
    let kt = workgroupUniformLoad(&key_tile); // also: the previous tile's P·V is done
    let k0 = kt * TILE;
    let nk = min(TILE, T - k0);

    // 1. logits of the tile's nk keys, BKK at a time
    if (QK_INT8) {
      let c = sq * scales[params.skbase + bh * nt + kt];
      let kbase = params.kbase / 4u + (bh * nt + kt) * DV * RG;
      for (var sb = 0u; sb * BKK < nk; sb++) {
        workgroupBarrier(); // kv is free
        for (var i = tid; i < DV * KG; i += NT) {
          kv[i] = qk8[kbase + (i / KG) * RG + sb * KG + i % KG];
        }
        workgroupBarrier();
        scores_int8(tid, sb, c);
      }
    } else {
      for (var sb = 0u; sb * BKK < nk; sb++) {
        for (var dc0 = 0u; dc0 < D; dc0 += DC) {
          workgroupBarrier(); // kv (and qs when chunked) are free
          if (DC < D) {
            load_q_chunk(tid, b, h, q0, dc0);
          }
          load_k_chunk(tid, b, h, k0 + sb * BKK, dc0);
          workgroupBarrier();
          scores_float(tid, sb, dc0 > 0u);
        }
      }
    }
    workgroupBarrier(); // pt is complete and kv is free

    // 2 + 3. softmax of the tile (rows), then P·V, BKV keys at a time
    var i0a = vec4<i32>(0); // INT8 P·V of this tile, same ownership as o0a..o3b
    var i0b = vec4<i32>(0);
    var i1a = vec4<i32>(0);
    var i1b = vec4<i32>(0);
    var i2a = vec4<i32>(0);
    var i2b = vec4<i32>(0);
    var i3a = vec4<i32>(0);
    var i3b = vec4<i32>(0);
    for (var sb = 0u; sb * BKV < nk; sb++) {
      if (sb > 0u) {
        workgroupBarrier(); // the previous sub-tile's P·V is done with kv
      }
      load_v(tid, b, h, kt, sb);
      if (sb == 0u && tid < TILE) {
        let r4 = tid / 4u;
        let c = tid % 4u;
        var mx = m_run;
        for (var j = 0u; j < nk; j++) {
          mx = max(mx, pt[j * RG + r4][c]);
        }
        let alpha = select(0.0, exp2(m_run - mx), n > range.x);
        var sum = 0.0;
        if (PV_INT8) {
          for (var kw = 0u; kw < (nk + 3u) / 4u; kw++) {
            let p = vec4(p8_of(4u * kw, nk, r4, c, mx), p8_of(4u * kw + 1u, nk, r4, c, mx),
              p8_of(4u * kw + 2u, nk, r4, c, mx), p8_of(4u * kw + 3u, nk, r4, c, mx));
            pp[kw * RG + r4][c] = pack4xI8(vec4<i32>(p));
            sum += p.x + p.y + p.z + p.w;
          }
        } else {
          for (var j = 0u; j < nk; j++) {
            let p = exp2(pt[j * RG + r4][c] - mx);
            pt[j * RG + r4][c] = p;
            sum += p;
          }
        }
        l_run = l_run * alpha + sum;
        m_run = mx;
        rs[r4][c] = alpha;
      }
      workgroupBarrier();
      if (sb == 0u) {
        let a = rs[rg];
        o0a *= a.x;
        o0b *= a.x;
        o1a *= a.y;
        o1b *= a.y;
        o2a *= a.z;
        o2b *= a.z;
        o3a *= a.w;
        o3b *= a.w;
      }
      let nkv = min(BKV, nk - sb * BKV);
      if (PV_INT8) {
        for (var kw = 0u; kw < (nkv + 3u) / 4u; kw++) {
          let p = pp[(sb * (BKV / 4u) + kw) * RG + rg];
          let va = kv[kw * DV + 2u * cg];
          let vb = kv[kw * DV + 2u * cg + 1u];
          i0a += dot4(p.x, va);
          i0b += dot4(p.x, vb);
          i1a += dot4(p.y, va);
          i1b += dot4(p.y, vb);
          i2a += dot4(p.z, va);
          i2b += dot4(p.z, vb);
          i3a += dot4(p.w, va);
          i3b += dot4(p.w, vb);
        }
      } else {
        for (var j = 0u; j < nkv; j++) {
          let p = pt[(sb * BKV + j) * RG + rg];
          let va = bitcast<vec4<f32>>(kv[j * DV + 2u * cg]);
          let vb = bitcast<vec4<f32>>(kv[j * DV + 2u * cg + 1u]);
          o0a = fma(vec4(p.x), va, o0a);
          o0b = fma(vec4(p.x), vb, o0b);
          o1a = fma(vec4(p.y), va, o1a);
          o1b = fma(vec4(p.y), vb, o1b);
          o2a = fma(vec4(p.z), va, o2a);
          o2b = fma(vec4(p.z), vb, o2b);
          o3a = fma(vec4(p.w), va, o3a);
          o3b = fma(vec4(p.w), vb, o3b);
        }
      }
    }
    if (PV_INT8) {
      o0a += vec4<f32>(i0a);
      o0b += vec4<f32>(i0b);
      o1a += vec4<f32>(i1a);
      o1b += vec4<f32>(i1b);
      o2a += vec4<f32>(i2a);
      o2b += vec4<f32>(i2b);
      o3a += vec4<f32>(i3a);
      o3b += vec4<f32>(i3b);
    }
  }

  workgroupBarrier(); // everyone has read the last α
  if (tid < TILE) {
    rs[tid / 4u][tid % 4u] = select(0.0, 1.0 / l_run, l_run > 0.0); // empty row: zeros
  }
  workgroupBarrier();
  let inv = rs[rg];
  var sa = vec4<f32>(1.0);
  var sc = vec4<f32>(1.0);
  if (PV_INT8) {
    let at = params.svbase + bh * D + 8u * cg;
    sa = vec4(scales[at], scales[at + 1u], scales[at + 2u], scales[at + 3u]);
    sc = vec4(scales[at + 4u], scales[at + 5u], scales[at + 6u], scales[at + 7u]);
  }
  let q = q0 + 4u * rg;
  let col = h * DV + 2u * cg;
  store_row(b, h, q, col, o0a * inv.x * sa, o0b * inv.x * sc);
  store_row(b, h, q + 1u, col, o1a * inv.y * sa, o1b * inv.y * sc);
  store_row(b, h, q + 2u, col, o2a * inv.z * sa, o2b * inv.z * sc);
  store_row(b, h, q + 3u, col, o3a * inv.w * sa, o3b * inv.w * sc);
}
