/**
 * Plain float64 CPU reference of the DiT forward pass (the specification the GPU graph is
 * tested against): patch embedding + positions, timestep/class conditioning, adaLN-Zero blocks
 * with softmax attention and a GELU-tanh MLP, the final layer, un-patchify. Float checkpoints
 * only; small models only (it is slow on purpose: plain loops).
 *
 * @module
 */
import type { ModelFile } from "./model_file.ts";
import { ditConfig } from "./dit.ts";
import { geluTanh as gelu, silu } from "../gpu/activations.ts";

type Vec = Float64Array;

function linear(x: Vec, m: number, k: number, w: Float32Array, b: Float32Array, n: number): Vec {
  const y = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = b[j];
      for (let t = 0; t < k; t++) s += x[i * k + t] * w[j * k + t];
      y[i * n + j] = s;
    }
  }
  return y;
}

function lnModulate(x: Vec, rows: number, d: number, shift: Vec, scale: Vec): Vec {
  const out = new Float64Array(rows * d);
  for (let r = 0; r < rows; r++) {
    let mean = 0;
    for (let j = 0; j < d; j++) mean += x[r * d + j];
    mean /= d;
    let v = 0;
    for (let j = 0; j < d; j++) v += (x[r * d + j] - mean) ** 2;
    const inv = 1 / Math.sqrt(v / d + 1e-6);
    for (let j = 0; j < d; j++) {
      out[r * d + j] = (x[r * d + j] - mean) * inv * (1 + scale[j]) + shift[j];
    }
  }
  return out;
}

/**
 * The model output f64 [B, outC, S, S] for inputs `x` f32 [B, C, S, S], timestep `t`, classes
 * `y` [B], computed on the CPU from a float model file.
 */
export async function ditForwardRef(
  file: ModelFile,
  x: Float32Array,
  t: number,
  y: ArrayLike<number>,
): Promise<Float64Array> {
  const cfg = ditConfig(file);
  const B = y.length, D = cfg.hidden_size, p = cfg.patch_size, C = cfg.in_channels;
  const S = cfg.input_size, G = S / p, T = G * G, H = cfg.num_heads, hd = D / H;
  const F = cfg.frequency_embedding_size, mlp = Math.round(D * cfg.mlp_ratio);
  const outC = cfg.learn_sigma ? 2 * C : C;
  const w = (name: string) => file.float(name);

  // conditioning
  const freq = new Float64Array(F);
  for (let i = 0; i < F / 2; i++) {
    const a = t * Math.exp(-Math.log(10000) * i / (F / 2));
    freq[i] = Math.cos(a);
    freq[F / 2 + i] = Math.sin(a);
  }
  const h1 = linear(
    freq,
    1,
    F,
    await w("t_embedder.mlp.0.weight"),
    await w("t_embedder.mlp.0.bias"),
    D,
  )
    .map(silu);
  const temb = linear(
    h1,
    1,
    D,
    await w("t_embedder.mlp.2.weight"),
    await w("t_embedder.mlp.2.bias"),
    D,
  );
  const tableName = file.has("y_embedder.embedding_table.weight")
    ? "y_embedder.embedding_table.weight"
    : "y_embedder.embedding_table";
  const table = await w(tableName);

  // patch embedding
  const xw = await w("x_embedder.proj.weight"), xb = await w("x_embedder.proj.bias");
  const pos = await w("pos_embed");
  const K = C * p * p;
  const out = new Float64Array(B * outC * S * S);
  for (let b = 0; b < B; b++) {
    const c = new Float64Array(D);
    for (let j = 0; j < D; j++) c[j] = silu(temb[j] + table[y[b] * D + j]);
    const patches = new Float64Array(T * K);
    for (let gy = 0; gy < G; gy++) {
      for (let gx = 0; gx < G; gx++) {
        for (let ch = 0; ch < C; ch++) {
          for (let i = 0; i < p; i++) {
            for (let j = 0; j < p; j++) {
              patches[(gy * G + gx) * K + (ch * p + i) * p + j] =
                x[((b * C + ch) * S + gy * p + i) * S + gx * p + j];
            }
          }
        }
      }
    }
    let h = linear(patches, T, K, xw, xb, D);
    for (let i = 0; i < T * D; i++) h[i] += pos[i];

    for (let blk = 0; blk < cfg.depth; blk++) {
      const pre = `blocks.${blk}`;
      const mod = linear(
        c,
        1,
        D,
        await w(`${pre}.adaLN_modulation.1.weight`),
        await w(`${pre}.adaLN_modulation.1.bias`),
        6 * D,
      );
      const chunk = (i: number) => mod.subarray(i * D, (i + 1) * D);
      // attention
      const a = lnModulate(h, T, D, chunk(0), chunk(1));
      const qkv = linear(
        a,
        T,
        D,
        await w(`${pre}.attn.qkv.weight`),
        await w(`${pre}.attn.qkv.bias`),
        3 * D,
      );
      const att = new Float64Array(T * D);
      for (let hh = 0; hh < H; hh++) {
        for (let i = 0; i < T; i++) {
          const logits = new Float64Array(T);
          let max = -Infinity;
          for (let j = 0; j < T; j++) {
            let s = 0;
            for (let e = 0; e < hd; e++) {
              s += qkv[i * 3 * D + hh * hd + e] * qkv[j * 3 * D + D + hh * hd + e];
            }
            logits[j] = s / Math.sqrt(hd);
            max = Math.max(max, logits[j]);
          }
          let sum = 0;
          for (let j = 0; j < T; j++) sum += logits[j] = Math.exp(logits[j] - max);
          for (let e = 0; e < hd; e++) {
            let s = 0;
            for (let j = 0; j < T; j++) s += logits[j] * qkv[j * 3 * D + 2 * D + hh * hd + e];
            att[i * D + hh * hd + e] = s / sum;
          }
        }
      }
      const o = linear(
        att,
        T,
        D,
        await w(`${pre}.attn.proj.weight`),
        await w(`${pre}.attn.proj.bias`),
        D,
      );
      for (let i = 0; i < T; i++) {
        for (let j = 0; j < D; j++) h[i * D + j] += chunk(2)[j] * o[i * D + j];
      }
      // MLP
      const m2 = lnModulate(h, T, D, chunk(3), chunk(4));
      const f = linear(
        m2,
        T,
        D,
        await w(`${pre}.mlp.fc1.weight`),
        await w(`${pre}.mlp.fc1.bias`),
        mlp,
      ).map(gelu);
      const g = linear(
        f,
        T,
        mlp,
        await w(`${pre}.mlp.fc2.weight`),
        await w(`${pre}.mlp.fc2.bias`),
        D,
      );
      for (let i = 0; i < T; i++) {
        for (let j = 0; j < D; j++) h[i * D + j] += chunk(5)[j] * g[i * D + j];
      }
    }
    const fm = linear(
      c,
      1,
      D,
      await w("final_layer.adaLN_modulation.1.weight"),
      await w("final_layer.adaLN_modulation.1.bias"),
      2 * D,
    );
    const fh = lnModulate(h, T, D, fm.subarray(0, D), fm.subarray(D, 2 * D));
    const tok = linear(
      fh,
      T,
      D,
      await w("final_layer.linear.weight"),
      await w("final_layer.linear.bias"),
      p * p * outC,
    );
    h = tok;
    for (let gy = 0; gy < G; gy++) {
      for (let gx = 0; gx < G; gx++) {
        for (let i = 0; i < p; i++) {
          for (let j = 0; j < p; j++) {
            for (let ch = 0; ch < outC; ch++) {
              out[((b * outC + ch) * S + gy * p + i) * S + gx * p + j] =
                h[(gy * G + gx) * p * p * outC + (i * p + j) * outC + ch];
            }
          }
        }
      }
    }
  }
  return out;
}
