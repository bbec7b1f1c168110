// flash_attention: O = softmax(Q·Kᵀ·scale)·V for every (batch b, head h), never materialising
// the T×T matrix. Online softmax in f32 (running max and sum per query row), O accumulated in
// f32, one store.
//
// Layout (ACT = f16 with shader-f16, else f32; row-major):
//   qkv [B·T, 3·H·D]  the fused qkv projection output: row b·T + t holds q of head h at columns
//                     h·D.., k at H·D + h·D.., v at 2·H·D + h·D..
//   o   [B·T, H·D]    head h at columns h·D.. (the input of the proj GEMM)
// Both are read and written as vec4<ACT> (D is a multiple of 8, so every head slice is aligned).
//
// Grid [⌈T/BQ⌉, H, B]: a workgroup owns BQ queries of one (b, h) and walks the keys in tiles of
// BK. NT = (BQ/4)·(D/8) invocations; invocation (rg, cg) owns O[rows 4rg..4rg+3, cols
// 8cg..8cg+7] as eight named vec4 accumulators. Per key tile:
//   1. K tile → kv (transposed [D][BK]);                                           barrier
//   2. S = Q·Kᵀ in 4×4 register tiles (four vec4), Q read from qt (transposed [D][BQ], already
//      multiplied by scale·log2(e)); S stored transposed into pt [BK][BQ];      barrier
//   3. invocation r < BQ runs the online softmax of row r over the tile's valid keys: new max m,
//      α = 2^(m_old − m), P = 2^(S − m) written back into pt, l = α·l + ΣP, α into rs; all
//      invocations meanwhile load the V tile into kv ([BK][D], K is no longer needed); barrier
//   4. O = α·O + P·V: per key one vec4 of P (4 rows) and two vec4 of V (8 columns) from
//      workgroup memory, 32 FMAs.
// Then rs = 1/l and the single store. Workgroup memory: 4·(D·BQ + BK·D + BK·BQ + BQ) bytes;
// the launcher picks (BQ, BK) by D and the device's limit.
//
// Optional logit terms (text encoders), each an override constant, applied in step 3 where each
// row's logits are read anyway (the default pipeline compiles them away):
//   REL_BIAS  + bias_table[h·NB + bias_bucket[k − q + T − 1]] (T5's relative position bias:
//             bucket per offset, NB buckets per head, added after the scale)
//   CAUSAL    keys k > q are skipped (CLIP)
//   KEY_MASK  keys with key_mask[b·T + k] == 0 are skipped (padding mask)
// A skipped key gets probability exactly 0; a row whose keys are all skipped outputs zeros.

alias ACT = f32;

struct Params {
  t: u32, // tokens per batch (T)
  heads: u32, // H
  scale2: f32, // scale · log2(e): logits in base-2 units, so exp() becomes exp2()
  pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> qkv: array<vec4<ACT>>;
@group(0) @binding(2) var<storage, read_write> o: array<vec4<ACT>>;
@group(0) @binding(3) var<storage, read> bias_table: array<f32>; // [H, NB] (REL_BIAS)
@group(0) @binding(4) var<storage, read> bias_bucket: array<u32>; // [2T − 1] (REL_BIAS)
@group(0) @binding(5) var<storage, read> key_mask: array<u32>; // [B, T] (KEY_MASK)

override D: u32 = 64; // head dim, a multiple of 8
override BQ: u32 = 64; // queries per workgroup, a multiple of 4
override BK: u32 = 32; // keys per tile, a multiple of 4
override DV: u32 = D / 4u; // vec4 per head row
override RG: u32 = BQ / 4u; // row groups (vec4 per key in pt, per dim in qt)
override KG: u32 = BK / 4u; // key groups (vec4 per dim of the transposed K tile)
override NT: u32 = RG * (D / 8u); // invocations
override QT_LEN: u32 = D * RG;
override KV_LEN: u32 = BK * DV;
override PT_LEN: u32 = BK * RG;
override REL_BIAS: bool = false;
override CAUSAL: bool = false;
override KEY_MASK: bool = false;
override NB: u32 = 32; // relative-bias buckets per head

var<workgroup> qt: array<vec4<f32>, QT_LEN>; // Q·scale·log2(e), [D][BQ]
var<workgroup> kv: array<vec4<f32>, KV_LEN>; // K tile [D][BK], then V tile [BK][D]
var<workgroup> pt: array<vec4<f32>, PT_LEN>; // logits, then probabilities, [BK][BQ]
var<workgroup> rs: array<vec4<f32>, RG>; // per row: α of the tile, at the end 1/l

const NEG_BIG = -1e30; // "minus infinity" of the running max (WGSL has no infinities)
const LOG2E = 1.4426950408889634;

// Logit s (base-2 units) of query q, key k in batch b, head h, with the optional terms; a skipped
// key gets NEG_BIG.
fn logit(s: f32, q: u32, k: u32, b: u32, h: u32) -> f32 {
  var v = s;
  if (REL_BIAS) {
    let qc = min(q, params.t - 1u); // rows past T are never stored
    v += bias_table[h * NB + bias_bucket[k + params.t - 1u - qc]] * LOG2E;
  }
  if (CAUSAL && k > q) {
    v = NEG_BIG;
  }
  if (KEY_MASK && key_mask[b * params.t + k] == 0u) {
    v = NEG_BIG;
  }
  return v;
}

// Store query q's 8 outputs (vec4 column col of its o row) times 1/l, if the query exists.
fn store_row(row0: u32, q: u32, col: u32, a: vec4<f32>, b: vec4<f32>, inv: f32) {
  if (q < params.t) {
    let at = (row0 + q) * params.heads * DV + col;
    o[at] = vec4<ACT>(a * inv);
    o[at + 1u] = vec4<ACT>(b * inv);
  }
}

@compute @workgroup_size(NT)
fn flash_attention(
  @builtin(local_invocation_index) tid: u32,
  @builtin(workgroup_id) wid: vec3u,
) {
  let T = params.t;
  let H = params.heads;
  let q0 = wid.x * BQ;
  let h = wid.y;
  let row0 = wid.z * T; // first token row of batch b
  let stride = 3u * H * DV; // vec4 per qkv row
  let qoff = h * DV;
  let koff = (H + h) * DV;
  let voff = (2u * H + h) * DV;

  // Q tile, transposed and pre-scaled; rows past T are zeros (their outputs are not stored).
  // Consecutive invocations take consecutive rows: conflict-free transposing stores.
  for (var i = tid; i < BQ * DV; i += NT) {
    let r = i % BQ;
    let dv = i / BQ;
    let q = q0 + r;
    let src = (row0 + min(q, T - 1u)) * stride + qoff + dv;
    let v = select(vec4<f32>(0.0), vec4<f32>(qkv[src]) * params.scale2, q < T);
    let at = 4u * dv * RG + r / 4u;
    let c = r % 4u;
    qt[at][c] = v.x;
    qt[at + RG][c] = v.y;
    qt[at + 2u * RG][c] = v.z;
    qt[at + 3u * RG][c] = v.w;
  }

  let rg = tid % RG;
  let cg = tid / RG;
  var m_run = NEG_BIG; // running max of row tid (tid < BQ), base-2 units
  var l_run = 0.0; // running sum of 2^(s − m_run)
  var o0a = vec4<f32>(0.0); // row 4rg + 0, columns 8cg + 0..3
  var o0b = vec4<f32>(0.0); // row 4rg + 0, columns 8cg + 4..7
  var o1a = vec4<f32>(0.0);
  var o1b = vec4<f32>(0.0);
  var o2a = vec4<f32>(0.0);
  var o2b = vec4<f32>(0.0);
  var o3a = vec4<f32>(0.0);
  var o3b = vec4<f32>(0.0);

  let tiles = (T + BK - 1u) / BK;
  for (var kt = 0u; kt < tiles; kt++) {
    let k0 = kt * BK;
    let nk = min(BK, T - k0); // valid keys in this tile
    workgroupBarrier(); // the previous tile's P·V is done with kv and pt (and qt is stored)

    // 1. K tile, transposed. Keys past T read a clamped real row; step 3 ignores them.
    for (var i = tid; i < BK * DV; i += NT) {
      let j = i % BK;
      let dv = i / BK;
      let src = (row0 + min(k0 + j, T - 1u)) * stride + koff + dv;
      let v = vec4<f32>(qkv[src]);
      let at = 4u * dv * KG + j / 4u;
      let c = j % 4u;
      kv[at][c] = v.x;
      kv[at + KG][c] = v.y;
      kv[at + 2u * KG][c] = v.z;
      kv[at + 3u * KG][c] = v.w;
    }
    workgroupBarrier();

    // 2. S = Q·Kᵀ, 4 rows × 4 keys per register tile; s_i holds row i's four keys.
    for (var st = tid; st < RG * KG; st += NT) {
      let r4 = st % RG;
      let k4 = st / RG;
      var s0 = vec4<f32>(0.0);
      var s1 = vec4<f32>(0.0);
      var s2 = vec4<f32>(0.0);
      var s3 = vec4<f32>(0.0);
      for (var d = 0u; d < D; d++) {
        let q = qt[d * RG + r4];
        let k = kv[d * KG + k4];
        s0 = fma(vec4(q.x), k, s0);
        s1 = fma(vec4(q.y), k, s1);
        s2 = fma(vec4(q.z), k, s2);
        s3 = fma(vec4(q.w), k, s3);
      }
      let at = 4u * k4 * RG + r4;
      pt[at] = vec4(s0.x, s1.x, s2.x, s3.x);
      pt[at + RG] = vec4(s0.y, s1.y, s2.y, s3.y);
      pt[at + 2u * RG] = vec4(s0.z, s1.z, s2.z, s3.z);
      pt[at + 3u * RG] = vec4(s0.w, s1.w, s2.w, s3.w);
    }
    workgroupBarrier();

    // 3. Online softmax of row tid over the nk valid keys.
    if (tid < BQ) {
      let r4 = tid / 4u;
      let c = tid % 4u;
      var mx = m_run;
      for (var j = 0u; j < nk; j++) {
        var s = pt[j * RG + r4][c];
        if (REL_BIAS || CAUSAL || KEY_MASK) {
          s = logit(s, q0 + tid, k0 + j, wid.z, h);
          pt[j * RG + r4][c] = s;
        }
        mx = max(mx, s);
      }
      let alpha = select(0.0, exp2(m_run - mx), kt > 0u);
      var sum = 0.0;
      for (var j = 0u; j < nk; j++) {
        let s = pt[j * RG + r4][c];
        let p = select(exp2(s - mx), 0.0, s <= 0.5 * NEG_BIG); // skipped keys: exactly 0
        pt[j * RG + r4][c] = p;
        sum += p;
      }
      l_run = l_run * alpha + sum;
      m_run = mx;
      rs[r4][c] = alpha;
    }
    // ... while everyone loads the V tile over the K tile, row-major.
    for (var i = tid; i < BK * DV; i += NT) {
      let j = i / DV;
      let dv = i % DV;
      kv[i] = vec4<f32>(qkv[(row0 + min(k0 + j, T - 1u)) * stride + voff + dv]);
    }
    workgroupBarrier();

    // 4. O = α·O + P·V over the valid keys.
    let a = rs[rg];
    o0a *= a.x;
    o0b *= a.x;
    o1a *= a.y;
    o1b *= a.y;
    o2a *= a.z;
    o2b *= a.z;
    o3a *= a.w;
    o3b *= a.w;
    for (var j = 0u; j < nk; j++) {
      let p = pt[j * RG + rg];
      let va = kv[j * DV + 2u * cg];
      let vb = kv[j * DV + 2u * cg + 1u];
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

  workgroupBarrier(); // everyone has read the last α
  if (tid < BQ) {
    // l ≥ 1 (the row's max contributes 2^0) unless every key was skipped: then zeros
    rs[tid / 4u][tid % 4u] = select(1.0 / l_run, 0.0, l_run == 0.0);
  }
  workgroupBarrier();
  let inv = rs[rg];
  let q = q0 + 4u * rg;
  let col = h * DV + 2u * cg;
  store_row(row0, q, col, o0a, o0b, inv.x);
  store_row(row0, q + 1u, col, o1a, o1b, inv.y);
  store_row(row0, q + 2u, col, o2a, o2b, inv.z);
  store_row(row0, q + 3u, col, o3a, o3b, inv.w);
}
