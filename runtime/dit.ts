/**
 * The DiT graph (public DiT checkpoint layout, adaLN-Zero, learned sigma) on the GPU. One graph
 * serves every precision: each linear layer runs as its file's layer policy says (16-bit,
 * W4A16, or W4A4 + low-rank INT4/NVFP4 with the unsigned post-GELU mode for `mlp.fc2`).
 *
 * Split of work per forward: the CPU does what is O(D²) or a pure reordering (timestep MLP,
 * class embedding, patchify and un-patchify); the GPU runs everything else — the patch
 * embedding GEMM + positions, and every block (adaLN modulation GEMMs, layernorm + modulate,
 * qkv, flash attention, proj, gated residuals, MLP with GELU fused into fc1's epilogue), the
 * final layer — in one submit per step.
 *
 * @module
 */
import { GateResidual } from "../kernels/gate_residual/gate_residual.ts";
import { LayernormModulate } from "../kernels/layernorm_modulate/layernorm_modulate.ts";
import { type ActDtype, fromActBytes, toActArray } from "../kernels/_wgsl.ts";
import type { CalibRecorder } from "../quant/calib.ts";
import type { AttentionRecorder } from "../quant/paro.ts";
import { AttentionStage, type SparseAttentionChoice } from "./attention.ts";
import type { Dispatch, Gpu } from "../gpu/device.ts";
import { silu } from "../gpu/activations.ts";
import { FormatError } from "../gpu/errors.ts";
import { createLinear, type LinearOp, policySpec } from "./linears.ts";
import type { ModelSource } from "./model_file.ts";

/** DiT hyper-parameters, as the checkpoint's `model_config` names them. */
export interface DiTConfig {
  /** Hidden width D (channels per token). */
  hidden_size: number;
  /** Number of transformer blocks. */
  depth: number;
  /** Attention heads H; the head dim is D/H. */
  num_heads: number;
  /** Patch side p in latent pixels; a patch of p×p×C values becomes one token. */
  patch_size: number;
  /** Latent channels C of the input. */
  in_channels: number;
  /** Latent side S in pixels (square); T = (S/p)² tokens. */
  input_size: number;
  /** Number of classes; the class table has one more row, id `num_classes` = the null class. */
  num_classes: number;
  /** MLP hidden width as a multiple of D (`round(D·mlp_ratio)`); default 4. */
  mlp_ratio: number;
  /** Whether the output has 2C channels (ε, then the variance interpolation); default true. */
  learn_sigma: boolean;
  /** Width of the sinusoidal timestep embedding fed to the timestep MLP; default 256. */
  frequency_embedding_size: number;
  /** Human-readable class names (index = class id), when the checkpoint has them. */
  class_names?: string[];
}

/** Read and check a DiT config from a model file. */
export function ditConfig(file: ModelSource): DiTConfig {
  const c = file.config as Partial<DiTConfig>;
  const need = [
    "hidden_size",
    "depth",
    "num_heads",
    "patch_size",
    "in_channels",
    "input_size",
    "num_classes",
  ] as const;
  for (const key of need) {
    if (!Number.isInteger(c[key]) || (c[key] as number) < 1) {
      throw new FormatError(file.path, `model_config.${key} is missing or not a positive integer`);
    }
  }
  if (file.family !== "dit") {
    throw new FormatError(file.path, `the model family is "${file.family}", this graph runs "dit"`);
  }
  return {
    hidden_size: c.hidden_size!,
    depth: c.depth!,
    num_heads: c.num_heads!,
    patch_size: c.patch_size!,
    in_channels: c.in_channels!,
    input_size: c.input_size!,
    num_classes: c.num_classes!,
    mlp_ratio: c.mlp_ratio ?? 4,
    learn_sigma: c.learn_sigma ?? true,
    frequency_embedding_size: c.frequency_embedding_size ?? 256,
    class_names: Array.isArray(c.class_names) ? c.class_names.map(String) : undefined,
  };
}

/** Weights used on the CPU: the timestep MLP and the class table (O(D²) per step). */
interface CpuWeights {
  tw0: Float32Array;
  tb0: Float32Array;
  tw2: Float32Array;
  tb2: Float32Array;
  table: Float32Array;
}

interface Block {
  ada: LinearOp;
  qkv: LinearOp;
  proj: LinearOp;
  fc1: LinearOp;
  fc2: LinearOp;
}

/** Options of {@linkcode DiT.load}. */
export interface DiTLoadOptions {
  /** Images per forward (2 with classifier-free guidance: conditional + unconditional). */
  batch: number;
  /** Activation dtype (default f16 when the device has shader-f16). */
  dtype?: ActDtype;
  /** Called after each layer is on the GPU. */
  onProgress?: (done: number, total: number, name: string) => void;
  /** Sparse + quantized attention (PAROAttention) instead of dense flash attention. */
  sparse?: SparseAttentionChoice;
}

/** A DiT resident on the GPU for a fixed batch size. */
export class DiT {
  /** The model's hyper-parameters. */
  readonly config: DiTConfig;
  /** Images per forward. */
  readonly batch: number;
  /** Activation dtype. */
  readonly dtype: ActDtype;
  /** Tokens per image. */
  readonly tokens: number;
  #gpu: Gpu;
  #cpu: CpuWeights;
  #blocks: Block[];
  #final: { ada: LinearOp; linear: LinearOp };
  #ops: { destroy(): void }[];
  #bufs: Record<string, GPUBuffer>;
  #dispatches: Dispatch[][]; // per timestep bucket of the attention plan
  #attention: AttentionStage;

  private constructor(init: {
    gpu: Gpu;
    config: DiTConfig;
    batch: number;
    dtype: ActDtype;
    cpu: CpuWeights;
    blocks: Block[];
    final: { ada: LinearOp; linear: LinearOp };
    ops: { destroy(): void }[];
    bufs: Record<string, GPUBuffer>;
    dispatches: Dispatch[][];
    attention: AttentionStage;
  }) {
    this.#gpu = init.gpu;
    this.config = init.config;
    this.batch = init.batch;
    this.dtype = init.dtype;
    this.tokens = (init.config.input_size / init.config.patch_size) ** 2;
    this.#cpu = init.cpu;
    this.#blocks = init.blocks;
    this.#final = init.final;
    this.#ops = init.ops;
    this.#bufs = init.bufs;
    this.#dispatches = init.dispatches;
    this.#attention = init.attention;
  }

  /** How attention runs: "dense" or the sparse kernel's settings and mask density. */
  get attention(): string {
    return this.#attention.kind;
  }

  /** Timestep buckets of the sparse-attention plan (1 when dense): `forward`'s `bucket` range. */
  get attentionBuckets(): number {
    return this.#attention.buckets;
  }

  /** Upload `file`'s weights and build the graph for `opts.batch` images per forward. */
  static async load(gpu: Gpu, file: ModelSource, opts: DiTLoadOptions): Promise<DiT> {
    const cfg = ditConfig(file);
    const dtype: ActDtype = opts.dtype ?? (gpu.caps.shaderF16 ? "f16" : "f32");
    const B = opts.batch, D = cfg.hidden_size, p = cfg.patch_size, C = cfg.in_channels;
    const T = (cfg.input_size / p) ** 2, M = B * T, H = cfg.num_heads;
    const mlp = Math.round(D * cfg.mlp_ratio);
    const outDim = p * p * (cfg.learn_sigma ? 2 * C : C);
    const ops: { destroy(): void }[] = [];
    const total = 5 * cfg.depth + 2;
    let done = 0;
    const linear = async (base: string, m: number, n: number, k: number, gelu = false) => {
      const pol = file.policyOf(base);
      const op = await createLinear(gpu, {
        name: base,
        m,
        n,
        k,
        dtype,
        gelu,
        ...policySpec(pol),
      }, await file.linearTensors(base));
      ops.push(op);
      opts.onProgress?.(++done, total, base);
      return op;
    };
    try {
      const cpu = {
        tw0: await file.float("t_embedder.mlp.0.weight"),
        tb0: await file.float("t_embedder.mlp.0.bias"),
        tw2: await file.float("t_embedder.mlp.2.weight"),
        tb2: await file.float("t_embedder.mlp.2.bias"),
        table: await file.float(
          file.has("y_embedder.embedding_table.weight")
            ? "y_embedder.embedding_table.weight"
            : "y_embedder.embedding_table",
        ),
      };
      // patch embedding (a stride-p convolution = a GEMM over flattened patches) + positions
      const K = C * p * p;
      const xw = await file.float("x_embedder.proj.weight");
      const pos = await file.float("pos_embed");
      if (xw.length !== D * K || pos.length !== T * D) {
        throw new FormatError(
          file.path,
          `expected [${D}, ${C}, ${p}, ${p}] and [1, ${T}, ${D}]`,
          "x_embedder/pos_embed",
        );
      }
      const embed = await createLinear(gpu, {
        name: "x_embedder.proj",
        m: M,
        n: D,
        k: K,
        dtype,
        method: "float",
      }, new Map([["weight", xw], ["bias", await file.float("x_embedder.proj.bias")]]));
      ops.push(embed);
      const posAll = new Float32Array(M * D);
      for (let b = 0; b < B; b++) posAll.set(pos, b * T * D);
      if (cpu.table.length !== (cfg.num_classes + 1) * D) {
        throw new FormatError(file.path, `expected [${cfg.num_classes + 1}, ${D}]`, "y_embedder");
      }
      const blocks: Block[] = [];
      for (let i = 0; i < cfg.depth; i++) {
        const b = `blocks.${i}`;
        blocks.push({
          ada: await linear(`${b}.adaLN_modulation.1`, B, 6 * D, D),
          qkv: await linear(`${b}.attn.qkv`, M, 3 * D, D),
          proj: await linear(`${b}.attn.proj`, M, D, D),
          fc1: await linear(`${b}.mlp.fc1`, M, mlp, D, true),
          fc2: await linear(`${b}.mlp.fc2`, M, D, mlp),
        });
      }
      const final = {
        ada: await linear("final_layer.adaLN_modulation.1", B, 2 * D, D),
        linear: await linear("final_layer.linear", M, outDim, D),
      };
      const eb = dtype === "f16" ? 2 : 4;
      const buf = (name: string, elems: number) =>
        gpu.createBuffer(`buffer dit.${name}`, elems * eb);
      const bufs: Record<string, GPUBuffer> = {
        x: await buf("x", M * D),
        h: await buf("h", M * D),
        qkv: await buf("qkv", M * 3 * D),
        attn: await buf("attn", M * D),
        o: await buf("o", M * D),
        f: await buf("f", M * mlp),
        c: await buf("silu_c", B * D),
        mod: await buf("mod", B * 6 * D),
        out: await buf("out", M * outDim),
        patches: await buf("patches", M * K),
      };
      const act = (v: Float32Array) => dtype === "f16" ? Float16Array.from(v) : v;
      bufs.pos = await gpu.upload("buffer dit.pos", act(posAll));
      bufs.ones = await gpu.upload("buffer dit.ones", act(new Float32Array(B * D).fill(1)));
      const addPos = await GateResidual.create(gpu, {
        b: B,
        t: T,
        d: D,
        dtype,
        modWidth: 1,
        gateChunk: 0,
      });
      ops.push(addPos);
      const ln6 = (shift: number, scale: number) =>
        LayernormModulate.create(gpu, {
          b: B,
          t: T,
          d: D,
          dtype,
          modWidth: 6,
          shiftChunk: shift,
          scaleChunk: scale,
        });
      const gate = (chunk: number) =>
        GateResidual.create(gpu, { b: B, t: T, d: D, dtype, modWidth: 6, gateChunk: chunk });
      const norm1 = await ln6(0, 1), norm2 = await ln6(3, 4);
      const gate1 = await gate(2), gate2 = await gate(5);
      const normF = await LayernormModulate.create(gpu, {
        b: B,
        t: T,
        d: D,
        dtype,
        modWidth: 2,
        shiftChunk: 0,
        scaleChunk: 1,
      });
      ops.push(norm1, norm2, gate1, gate2, normF);
      const attn = await AttentionStage.create(gpu, {
        b: B,
        t: T,
        h: H,
        d: D / H,
        dtype,
        layers: cfg.depth,
        grid: cfg.input_size / p,
      }, opts.sparse);
      ops.push(attn);

      const { x, h, qkv, o, f, c, mod, out } = bufs;
      const graph = (bucket: number): Dispatch[] => {
        const d: Dispatch[] = [
          ...embed.dispatch(bufs.patches, x),
          addPos.dispatch({ x, y: bufs.pos, mod: bufs.ones }),
        ];
        blocks.forEach((blk, layer) => {
          d.push(...blk.ada.dispatch(c, mod));
          d.push(norm1.dispatch({ x, mod, h }));
          d.push(...blk.qkv.dispatch(h, qkv));
          d.push(...attn.dispatch(layer, bucket, qkv, bufs.attn));
          d.push(...blk.proj.dispatch(bufs.attn, o));
          d.push(gate1.dispatch({ x, y: o, mod }));
          d.push(norm2.dispatch({ x, mod, h }));
          d.push(...blk.fc1.dispatch(h, f));
          d.push(...blk.fc2.dispatch(f, o));
          d.push(gate2.dispatch({ x, y: o, mod }));
        });
        d.push(...final.ada.dispatch(c, mod));
        d.push(normF.dispatch({ x, mod, h }));
        d.push(...final.linear.dispatch(h, out));
        return d;
      };
      return new DiT({
        gpu,
        config: cfg,
        batch: B,
        dtype,
        cpu,
        blocks,
        final,
        ops,
        bufs,
        dispatches: Array.from({ length: attn.buckets }, (_, i) => graph(i)),
        attention: attn,
      });
    } catch (e) {
      for (const op of ops) op.destroy();
      throw e;
    }
  }

  /** Layers and the kind each runs as (for logs and `/healthz`). */
  get layers(): { name: string; kind: string; weightBytes: number }[] {
    const all = [...this.#blocks.flatMap((b) => [b.ada, b.qkv, b.proj, b.fc1, b.fc2])];
    all.push(this.#final.ada, this.#final.linear);
    return all.map((l) => ({ name: l.name, kind: l.kind, weightBytes: l.weightBytes }));
  }

  /**
   * One forward pass: `x` f32 [B, C, S, S] latents/pixels, timestep `t` (0..999), classes `y`
   * [B] (num_classes = the null class), and with sparse attention the timestep bucket of the
   * plan's masks (0..attentionBuckets−1; clamped). Returns the model output f32 [B, outC, S, S]
   * (ε then, with learned sigma, the variance channels).
   */
  async forward(
    x: Float32Array,
    t: number,
    y: ArrayLike<number>,
    bucket = 0,
  ): Promise<Float32Array> {
    this.#upload(x, t, y);
    const set = Math.max(0, Math.min(this.#dispatches.length - 1, Math.floor(bucket)));
    this.#gpu.run(this.#dispatches[set], "dit forward");
    return await this.#readOutput();
  }

  /** Check the inputs, then write the patches and silu(c); returns silu(c) [B, D]. */
  #upload(x: Float32Array, t: number, y: ArrayLike<number>): Float32Array {
    const cfg = this.config, B = this.batch, C = cfg.in_channels, S = cfg.input_size;
    if (x.length !== B * C * S * S) {
      throw new TypeError(
        `Cannot run the DiT: x has ${x.length} values, expected [B=${B}, C=${C}, ${S}, ${S}]`,
      );
    }
    if (y.length !== B) {
      throw new TypeError(`Cannot run the DiT: y has ${y.length} labels, expected ${B}`);
    }
    const cond = this.#conditioning(t, y);
    this.#gpu.write(this.#bufs.patches, toActArray(this.#patchify(x), this.dtype));
    this.#gpu.write(this.#bufs.c, toActArray(cond, this.dtype));
    return cond;
  }

  /** Read the final layer's tokens back and un-patchify them: f32 [B, outC, S, S]. */
  async #readOutput(): Promise<Float32Array> {
    const cfg = this.config, p = cfg.patch_size, C = cfg.in_channels;
    const outC = cfg.learn_sigma ? 2 * C : C, count = this.batch * this.tokens * p * p * outC;
    const bytes = await this.#gpu.read(this.#bufs.out, count * (this.dtype === "f16" ? 2 : 4));
    return this.#unpatchify(fromActBytes(bytes, this.dtype, count), outC);
  }

  /** silu(t_embedder(t) + y_embedder(y)) [B, D], on the CPU. */
  #conditioning(t: number, y: ArrayLike<number>): Float32Array {
    const cfg = this.config, D = cfg.hidden_size, F = cfg.frequency_embedding_size, half = F / 2;
    const { tw0, tb0, tw2, tb2, table } = this.#cpu;
    const freq = new Float64Array(F);
    for (let i = 0; i < half; i++) {
      const a = t * Math.exp(-Math.log(10000) * i / half);
      freq[i] = Math.cos(a);
      freq[half + i] = Math.sin(a);
    }
    const h1 = new Float64Array(D);
    for (let n = 0; n < D; n++) {
      let s = tb0[n];
      for (let k = 0; k < F; k++) s += tw0[n * F + k] * freq[k];
      h1[n] = silu(s);
    }
    const temb = new Float64Array(D);
    for (let n = 0; n < D; n++) {
      let s = tb2[n];
      for (let k = 0; k < D; k++) s += tw2[n * D + k] * h1[k];
      temb[n] = s;
    }
    const out = new Float32Array(this.batch * D);
    for (let b = 0; b < this.batch; b++) {
      const cls = y[b];
      if (!Number.isInteger(cls) || cls < 0 || cls > cfg.num_classes) {
        throw new RangeError(`Cannot run the DiT: class ${cls} is outside 0..${cfg.num_classes}`);
      }
      for (let n = 0; n < D; n++) {
        const v = temb[n] + table[cls * D + n];
        out[b * D + n] = silu(v);
      }
    }
    return out;
  }

  /** Flattened patches [B·T, C·p·p] (channel, row, column order, as the convolution's weight). */
  #patchify(x: Float32Array): Float32Array {
    const cfg = this.config, B = this.batch, p = cfg.patch_size;
    const C = cfg.in_channels, S = cfg.input_size, G = S / p, T = G * G, K = C * p * p;
    const out = new Float32Array(B * T * K);
    for (let b = 0; b < B; b++) {
      for (let gy = 0; gy < G; gy++) {
        for (let gx = 0; gx < G; gx++) {
          const row = (b * T + gy * G + gx) * K;
          for (let c = 0; c < C; c++) {
            for (let i = 0; i < p; i++) {
              for (let j = 0; j < p; j++) {
                out[row + (c * p + i) * p + j] = x[((b * C + c) * S + gy * p + i) * S + gx * p + j];
              }
            }
          }
        }
      }
    }
    return out;
  }

  /** [B·T, p·p·outC] (per token [p, q, c]) → [B, outC, S, S]. */
  #unpatchify(tokens: Float32Array, outC: number): Float32Array {
    const cfg = this.config, B = this.batch, p = cfg.patch_size, S = cfg.input_size, G = S / p;
    const img = new Float32Array(B * outC * S * S);
    for (let b = 0; b < B; b++) {
      for (let gy = 0; gy < G; gy++) {
        for (let gx = 0; gx < G; gx++) {
          const base = (b * G * G + gy * G + gx) * p * p * outC;
          for (let i = 0; i < p; i++) {
            for (let j = 0; j < p; j++) {
              for (let c = 0; c < outC; c++) {
                img[((b * outC + c) * S + gy * p + i) * S + gx * p + j] =
                  tokens[base + (i * p + j) * outC + c];
              }
            }
          }
        }
      }
    }
    return img;
  }

  /**
   * Calibration forward: like {@linkcode forward} (dense attention only), but records every
   * linear layer's input in `rec.linears` and every layer's attention maps (from its qkv) in
   * `rec.attention`, under timestep bucket `bucket` (one readback per probe: slow, offline only).
   */
  async forwardRecording(
    x: Float32Array,
    t: number,
    y: ArrayLike<number>,
    rec: { linears?: CalibRecorder; attention?: AttentionRecorder },
    bucket: number,
  ): Promise<Float32Array> {
    if (this.#attention.kind !== "dense") {
      throw new RangeError(
        "Cannot record calibration data with sparse attention: load the model with dense attention",
      );
    }
    const gpu = this.#gpu, B = this.batch, T = this.tokens, D = this.config.hidden_size;
    const H = this.config.num_heads;
    const cond = this.#upload(x, t, y);
    const eb = this.dtype === "f16" ? 2 : 4;
    const readAct = async (buf: GPUBuffer, count: number) =>
      fromActBytes(await gpu.read(buf, count * eb), this.dtype, count);
    const probe = async (name: string, buf: GPUBuffer, m: number, k: number) => {
      if (rec.linears) rec.linears.record(name, bucket, await readAct(buf, m * k), m, k);
    };
    // replay the dispatch list in segments, reading each probe's buffer before it is overwritten
    const all = this.#dispatches[0], bufs = this.#bufs;
    let i = 0;
    const runUntil = (count: number) => {
      gpu.run(all.slice(i, i + count), "dit calibration");
      i += count;
    };
    const mlp = Math.round(D * this.config.mlp_ratio);
    runUntil(2); // patch embedding + positions
    for (let bi = 0; bi < this.#blocks.length; bi++) {
      const blk = this.#blocks[bi], name = `blocks.${bi}`;
      rec.linears?.record(`${name}.adaLN_modulation.1`, bucket, cond, B, D);
      runUntil(blk.ada.dispatch(bufs.c, bufs.mod).length + 1); // ada + norm1
      await probe(`${name}.attn.qkv`, bufs.h, B * T, D);
      runUntil(
        blk.qkv.dispatch(bufs.h, bufs.qkv).length +
          this.#attention.dispatch(bi, 0, bufs.qkv, bufs.attn).length,
      );
      if (rec.attention) {
        rec.attention.record(bi, bucket, await readAct(bufs.qkv, B * T * 3 * D), B, T, H, D / H);
      }
      await probe(`${name}.attn.proj`, bufs.attn, B * T, D);
      runUntil(blk.proj.dispatch(bufs.attn, bufs.o).length + 2); // proj, gate, norm2
      await probe(`${name}.mlp.fc1`, bufs.h, B * T, D);
      runUntil(blk.fc1.dispatch(bufs.h, bufs.f).length);
      await probe(`${name}.mlp.fc2`, bufs.f, B * T, mlp);
      runUntil(blk.fc2.dispatch(bufs.f, bufs.o).length + 1); // fc2 + gate
    }
    rec.linears?.record("final_layer.adaLN_modulation.1", bucket, cond, B, D);
    runUntil(this.#final.ada.dispatch(bufs.c, bufs.mod).length + 1);
    await probe("final_layer.linear", bufs.h, B * T, D);
    runUntil(all.length - i);
    return await this.#readOutput();
  }

  /** Release every kernel and buffer. */
  destroy(): void {
    for (const op of this.#ops) op.destroy();
    this.#gpu.destroy(...Object.values(this.#bufs));
  }
}
