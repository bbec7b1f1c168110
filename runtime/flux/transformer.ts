/**
 * The FLUX.1 transformer (MMDiT) on the GPU, for a fixed batch, text length and image grid. One
 * graph serves every precision: each linear layer runs as the file's layer policy says (16-bit,
 * W4A16, or W4A4 + low-rank).
 *
 * Split of work per forward: the host builds the conditioning vector in float64 (sinusoidal
 * embeddings + the three small MLP embedders, see embed.ts) and uploads silu(vec); the GPU runs
 * the rest in one submit — img_in / txt_in, 19 double blocks (separate img/txt modulation and
 * weights, joint attention with the text tokens first), the join into one stream, 38 single
 * blocks (parallel attention and MLP), and the final layer on the image tokens.
 *
 * Buffers: the double blocks keep the two streams apart (`xi` [B·Li, D], `xt` [B·Lt, D]) so each
 * stream's linears read contiguous rows; `qk_norm_rope` writes each stream's q, k (normalised,
 * rotated) and v into the joint qkv [B·L, 3D] at its rows, `flash_attention` runs on it, and
 * `copy_rows` splits its output back. The single blocks run on the joint stream `x` [B·L, D].
 * Scratch buffers are shared between the streams (they are used one after the other).
 *
 * Numerics: the residual streams (`xi`, `xt`, `x`) are f32 whatever the activation dtype. Real
 * FLUX.1 weights push the text stream of the double blocks and the joint stream of the single
 * blocks past f16's ±65504; `layernorm_modulate` reads the f32 residual (statistics in f32) and
 * writes the f16 GEMM input, saturating; `gate_residual` adds the f16 branch output into it;
 * `copy_rows` converts img_in / txt_in's f16 outputs into the f32 streams (ARCHITECTURE.md,
 * "FLUX.1"). With f32 activations the graph is the plain one.
 *
 * @module
 */
import { CopyRows } from "../../kernels/copy_rows/copy_rows.ts";
import { FlashAttention } from "../../kernels/flash_attention/flash_attention.ts";
import { GateResidual } from "../../kernels/gate_residual/gate_residual.ts";
import { LayernormModulate } from "../../kernels/layernorm_modulate/layernorm_modulate.ts";
import { QkNormRope } from "../../kernels/qk_norm_rope/qk_norm_rope.ts";
import { actBytes, type ActDtype, fromActBytes, toActArray } from "../../kernels/_wgsl.ts";
import { silu } from "../../gpu/activations.ts";
import type { Dispatch, Gpu } from "../../gpu/device.ts";
import { createLinear, type LinearOp, policySpec } from "../linears.ts";
import { fluxTensorList } from "../../quant/flux_policy.ts";
import { type FluxConfig, headDim, mlpWidth } from "./config.ts";
import {
  FLUX_TIME_EMBED_DIM,
  type FluxHostWeights,
  type FluxVec,
  fluxVec,
  type HostLinear,
  jointIds,
  ropeTable,
} from "./embed.ts";
import { type FluxSource, singleBlockLayers } from "./weights.ts";

/** Options of {@linkcode FluxTransformer.load}. */
export interface FluxLoadOptions {
  /** Images per forward. */
  batch: number;
  /** Text tokens per image (T5 sequence length: 512 for dev, 256 for schnell). */
  txtTokens: number;
  /** Image token grid (latent height / 2, latent width / 2). */
  grid: { h: number; w: number };
  /** Activation dtype (default f16 when the device has shader-f16). */
  dtype?: ActDtype;
  /** Called after each layer is on the GPU. */
  onProgress?: (done: number, total: number, name: string) => void;
}

/** Inputs of one forward (host arrays, f32). */
export interface FluxInputs {
  /** Packed image tokens [B, Li, in_channels]. */
  img: Float32Array;
  /** Text tokens [B, Lt, context_in_dim] (the T5 output). */
  txt: Float32Array;
  /** Pooled text vector [B, vec_in_dim] (the CLIP output). */
  y: Float32Array;
  /** t ∈ [0, 1] per image. */
  timesteps: ArrayLike<number>;
  /** Guidance value per image (models with a guidance embedding only). */
  guidance?: ArrayLike<number>;
}

/** A graph step: dispatches, and the linear layer input they start with (for calibration). */
interface Step {
  d: Dispatch[];
  /** Which part of the model the step belongs to: embed, double.N, join, single.N, final. */
  segment: string;
  /** After the step, the named stream state (for {@linkcode FluxTransformer.forwardTrace}). */
  mark?: { name: string; buf: GPUBuffer; rows: number; dtype: ActDtype }[];
  probe?: { name: string; buf: GPUBuffer; m: number; k: number };
}

/** Receives each linear layer's input during {@linkcode FluxTransformer.forwardRecording}. */
export interface LinearProbe {
  /** Layer `name`'s input `x` [M=m, K=k] (f32 values). */
  record(name: string, x: Float32Array, m: number, k: number): void;
}

/** A FLUX transformer resident on the GPU. */
export class FluxTransformer {
  /** Hyper-parameters. */
  readonly config: FluxConfig;
  /** Images per forward. */
  readonly batch: number;
  /** Text tokens per image. */
  readonly txtTokens: number;
  /** Image tokens per image. */
  readonly imgTokens: number;
  /** Activation dtype. */
  readonly dtype: ActDtype;
  /** Layers and how each runs. */
  readonly layers: { name: string; kind: string; weightBytes: number }[];
  #gpu: Gpu;
  #host: FluxHostWeights;
  #steps: Step[];
  #ops: { destroy(): void }[];
  #bufs: Record<string, GPUBuffer>;

  private constructor(init: {
    gpu: Gpu;
    config: FluxConfig;
    opts: FluxLoadOptions;
    dtype: ActDtype;
    host: FluxHostWeights;
    steps: Step[];
    ops: { destroy(): void }[];
    bufs: Record<string, GPUBuffer>;
    layers: LinearOp[];
  }) {
    this.#gpu = init.gpu;
    this.config = init.config;
    this.batch = init.opts.batch;
    this.txtTokens = init.opts.txtTokens;
    this.imgTokens = init.opts.grid.h * init.opts.grid.w;
    this.dtype = init.dtype;
    this.#host = init.host;
    this.#steps = init.steps;
    this.#ops = init.ops;
    this.#bufs = init.bufs;
    this.layers = init.layers.map((l) => ({
      name: l.name,
      kind: l.kind,
      weightBytes: l.weightBytes,
    }));
  }

  /** Upload the weights and build the graph. */
  static async load(gpu: Gpu, w: FluxSource, opts: FluxLoadOptions): Promise<FluxTransformer> {
    const cfg = w.config, dtype: ActDtype = opts.dtype ?? (gpu.caps.shaderF16 ? "f16" : "f32");
    const B = opts.batch, Lt = opts.txtTokens, Li = opts.grid.h * opts.grid.w, L = Lt + Li;
    const D = cfg.hidden_size, H = cfg.num_heads, hd = headDim(cfg), mlp = mlpWidth(cfg);
    for (
      const [k, v] of [["batch", B], ["txtTokens", Lt], ["grid.h", opts.grid.h], [
        "grid.w",
        opts.grid.w,
      ]] as const
    ) {
      if (!Number.isInteger(v) || v < 1) {
        throw new RangeError(`Cannot load FLUX: ${k}=${v} must be a positive integer`);
      }
    }
    const ops: { destroy(): void }[] = [];
    const linears: LinearOp[] = [];
    const total = 2 + 10 * cfg.depth + 5 * cfg.depth_single_blocks + 2;
    let done = 0;
    // one activation scratch for every W4A4 layer (they run one after another): sized for the
    // largest M·K (joint tokens × MLP width) and rank, the finest group (NVFP4's 16)
    const W4A4 = ["svdquant", "rtn", "smooth", "dilate"];
    const rMax = Math.max(
      0,
      ...fluxTensorList(cfg).linears.map((l) => w.policyOf(l.base))
        .filter((p) => W4A4.includes(p.method)).map((p) => p.r),
    );
    const anyW4A4 = fluxTensorList(cfg).linears.some((l) =>
      W4A4.includes(w.policyOf(l.base).method)
    );
    const scratch = anyW4A4
      ? {
        qact: await gpu.createBuffer("buffer flux.w4a4.qact", (B * L * mlp) / 2),
        ascales: await gpu.createBuffer("buffer flux.w4a4.ascales", (B * L * mlp) / 4),
        lora_act: rMax > 0
          ? await gpu.createBuffer("buffer flux.w4a4.lora_act", B * L * rMax * 4)
          : undefined,
      }
      : undefined;
    const bufs: Record<string, GPUBuffer> = {};
    if (scratch) {
      bufs["w4a4.qact"] = scratch.qact;
      bufs["w4a4.ascales"] = scratch.ascales;
      if (scratch.lora_act) bufs["w4a4.lora_act"] = scratch.lora_act;
    }
    const linear = async (base: string, m: number, n: number, k: number, gelu = false) => {
      const pol = w.policyOf(base);
      const op = await createLinear(gpu, {
        name: base,
        m,
        n,
        k,
        dtype,
        gelu,
        // convention: "nunchaku" on layers imported from Nunchaku checkpoints (quant/nunchaku_flux.ts)
        ...policySpec(pol),
        scratch,
      }, await w.linearTensors(base));
      ops.push(op);
      linears.push(op);
      opts.onProgress?.(++done, total, base);
      return op;
    };
    const hostLinear = async (base: string, k: number): Promise<HostLinear> => {
      const weight = await w.float(`${base}.weight`);
      const bias = w.has(`${base}.bias`) ? await w.float(`${base}.bias`) : undefined;
      if (weight.length !== D * k || (bias && bias.length !== D)) {
        throw new TypeError(`Cannot load FLUX: ${base} must be [${D}, ${k}] with a [${D}] bias`);
      }
      return { weight, bias, n: D, k };
    };
    try {
      const host: FluxHostWeights = {
        timeIn: [
          await hostLinear("time_in.in_layer", FLUX_TIME_EMBED_DIM),
          await hostLinear("time_in.out_layer", D),
        ],
        vectorIn: [
          await hostLinear("vector_in.in_layer", cfg.vec_in_dim),
          await hostLinear("vector_in.out_layer", D),
        ],
        guidanceIn: cfg.guidance_embed
          ? [
            await hostLinear("guidance_in.in_layer", FLUX_TIME_EMBED_DIM),
            await hostLinear("guidance_in.out_layer", D),
          ]
          : undefined,
      };
      const eb = dtype === "f16" ? 2 : 4;
      // the residual streams' dtype: f32 always (f16 would overflow with real weights)
      const res: ActDtype = "f32";
      const buf = async (name: string, elems: number, bytes = eb) =>
        bufs[name] = await gpu.createBuffer(`buffer flux.${name}`, elems * bytes);
      await buf("img", B * Li * cfg.in_channels);
      await buf("txt", B * Lt * cfg.context_in_dim);
      await buf("c", B * D);
      await buf("xi", B * Li * D, actBytes(res));
      await buf("xt", B * Lt * D, actBytes(res));
      await buf("x", B * L * D, actBytes(res));
      await buf("h", B * L * D);
      await buf("y", B * L * D);
      await buf("o", B * L * D);
      await buf("q3", B * L * 3 * D);
      await buf("qkv", B * L * 3 * D);
      await buf("f", B * L * mlp);
      await buf("mi", B * 6 * D);
      await buf("mt", B * 6 * D);
      await buf("out", B * Li * cfg.out_channels);
      bufs.rope = await gpu.upload(
        "buffer flux.rope",
        ropeTable(jointIds(Lt, opts.grid.h, opts.grid.w), cfg.axes_dim, cfg.theta),
      );
      const scale = async (name: string) => {
        const b = await gpu.upload(`buffer flux.${name}`, await w.float(name));
        bufs[name] = b;
        return b;
      };
      const op = async <T extends { destroy(): void }>(p: Promise<T>) => {
        const o = await p;
        ops.push(o);
        return o;
      };
      const lnMod = (t: number, width: number, shift: number, sc: number) =>
        op(LayernormModulate.create(gpu, {
          b: B,
          t,
          d: D,
          dtype,
          residualDtype: res,
          modWidth: width,
          shiftChunk: shift,
          scaleChunk: sc,
        }));
      const gate = (t: number, width: number, chunk: number) =>
        op(GateResidual.create(gpu, {
          b: B,
          t,
          d: D,
          dtype,
          residualDtype: res,
          modWidth: width,
          gateChunk: chunk,
        }));
      const rope = (n: number, off: number) =>
        op(QkNormRope.create(gpu, {
          b: B,
          n,
          l: L,
          rowOffset: off,
          h: H,
          d: hd,
          srcStride: 3 * D,
          dtype,
        }));
      const copy = (
        n: number,
        sr: number,
        so: number,
        dr: number,
        dof: number,
        types: { dtype: ActDtype; dstDtype?: ActDtype } = { dtype },
      ) =>
        op(CopyRows.create(gpu, {
          b: B,
          n,
          width: D,
          srcRows: sr,
          srcOffset: so,
          dstRows: dr,
          dstOffset: dof,
          ...types,
        }));
      // a GEMM's output (activation dtype, n rows per image) into a residual stream: direct when
      // the dtypes agree, else through h and a converting copy
      const intoResidual = async (lin: LinearOp, input: GPUBuffer, dst: GPUBuffer, n: number) =>
        dtype === res ? lin.dispatch(input, dst) : [
          ...lin.dispatch(input, bufs.h),
          (await copy(n, n, 0, n, 0, { dtype, dstDtype: res })).dispatch({
            src: bufs.h,
            dst,
          }),
        ];
      const attn = await op(FlashAttention.create(gpu, { b: B, t: L, h: H, d: hd, dtype }));
      const streams = [
        {
          tag: "txt",
          n: Lt,
          off: 0,
          x: bufs.xt,
          mod: bufs.mt,
          ln1: await lnMod(Lt, 6, 0, 1),
          ln2: await lnMod(Lt, 6, 3, 4),
          g1: await gate(Lt, 6, 2),
          g2: await gate(Lt, 6, 5),
          rope: await rope(Lt, 0),
          split: await copy(Lt, L, 0, Lt, 0),
        },
        {
          tag: "img",
          n: Li,
          off: Lt,
          x: bufs.xi,
          mod: bufs.mi,
          ln1: await lnMod(Li, 6, 0, 1),
          ln2: await lnMod(Li, 6, 3, 4),
          g1: await gate(Li, 6, 2),
          g2: await gate(Li, 6, 5),
          rope: await rope(Li, Lt),
          split: await copy(Li, L, Lt, Li, 0),
        },
      ];
      const { c, h, y, o, q3, qkv, f } = bufs;
      const steps: Step[] = [];
      let seg = "embed";
      const push = (st: Omit<Step, "segment">) => void steps.push({ ...st, segment: seg });
      const imgIn = await linear("img_in", B * Li, D, cfg.in_channels);
      push({
        d: await intoResidual(imgIn, bufs.img, bufs.xi, Li),
        probe: probe("img_in", bufs.img, B * Li, cfg.in_channels),
        mark: [{ name: "img_in", buf: bufs.xi, rows: B * Li, dtype: res }],
      });
      const txtIn = await linear("txt_in", B * Lt, D, cfg.context_in_dim);
      push({
        d: await intoResidual(txtIn, bufs.txt, bufs.xt, Lt),
        probe: probe("txt_in", bufs.txt, B * Lt, cfg.context_in_dim),
        mark: [{ name: "txt_in", buf: bufs.xt, rows: B * Lt, dtype: res }],
      });
      for (let i = 0; i < cfg.depth; i++) {
        const p = `double_blocks.${i}`;
        seg = `double.${i}`;
        for (const s of streams) {
          const mod = await linear(`${p}.${s.tag}_mod.lin`, B, 6 * D, D);
          push({ d: mod.dispatch(c, s.mod), probe: probe(`${p}.${s.tag}_mod.lin`, c, B, D) });
        }
        for (const s of streams) {
          const qkvL = await linear(`${p}.${s.tag}_attn.qkv`, B * s.n, 3 * D, D);
          const qs = await scale(`${p}.${s.tag}_attn.norm.query_norm.scale`);
          const ks = await scale(`${p}.${s.tag}_attn.norm.key_norm.scale`);
          push({ d: [s.ln1.dispatch({ x: s.x, mod: s.mod, h })] });
          push({
            d: [
              ...qkvL.dispatch(h, q3),
              s.rope.dispatch({ src: q3, qscale: qs, kscale: ks, rope: bufs.rope, qkv }),
            ],
            probe: probe(`${p}.${s.tag}_attn.qkv`, h, B * s.n, D),
          });
        }
        push({ d: [attn.dispatch({ qkv, o })] });
        for (const s of streams) {
          const proj = await linear(`${p}.${s.tag}_attn.proj`, B * s.n, D, D);
          const fc1 = await linear(`${p}.${s.tag}_mlp.0`, B * s.n, mlp, D, true);
          const fc2 = await linear(`${p}.${s.tag}_mlp.2`, B * s.n, D, mlp);
          push({ d: [s.split.dispatch({ src: o, dst: h })] });
          push({
            d: [...proj.dispatch(h, y), s.g1.dispatch({ x: s.x, y, mod: s.mod })],
            probe: probe(`${p}.${s.tag}_attn.proj`, h, B * s.n, D),
          });
          push({ d: [s.ln2.dispatch({ x: s.x, mod: s.mod, h })] });
          push({ d: fc1.dispatch(h, f), probe: probe(`${p}.${s.tag}_mlp.0`, h, B * s.n, D) });
          push({
            d: [...fc2.dispatch(f, y), s.g2.dispatch({ x: s.x, y, mod: s.mod })],
            probe: probe(`${p}.${s.tag}_mlp.2`, f, B * s.n, mlp),
          });
        }
        steps[steps.length - 1].mark = [
          { name: `double.${i}.img`, buf: bufs.xi, rows: B * Li, dtype: res },
          { name: `double.${i}.txt`, buf: bufs.xt, rows: B * Lt, dtype: res },
        ];
      }
      seg = "join";
      const joinT = await copy(Lt, Lt, 0, L, 0, { dtype: res });
      const joinI = await copy(Li, Li, 0, L, Lt, { dtype: res });
      push({
        d: [
          joinT.dispatch({ src: bufs.xt, dst: bufs.x }),
          joinI.dispatch({ src: bufs.xi, dst: bufs.x }),
        ],
      });
      const sLn = await lnMod(L, 3, 0, 1), sGate = await gate(L, 3, 2);
      const sRope = await rope(L, 0);
      const x = bufs.x, ms = bufs.mi;
      for (let i = 0; i < cfg.depth_single_blocks; i++) {
        const p = `single_blocks.${i}`, names = singleBlockLayers(i);
        seg = `single.${i}`;
        const mod = await linear(`${p}.modulation.lin`, B, 3 * D, D);
        const l1q = await linear(names.qkv, B * L, 3 * D, D);
        const l1m = await linear(names.mlpIn, B * L, mlp, D, true);
        const l2a = await linear(names.attnOut, B * L, D, D);
        const l2m = await linear(names.mlpOut, B * L, D, mlp);
        const qs = await scale(`${p}.norm.query_norm.scale`);
        const ks = await scale(`${p}.norm.key_norm.scale`);
        push({ d: mod.dispatch(c, ms), probe: probe(`${p}.modulation.lin`, c, B, D) });
        push({ d: [sLn.dispatch({ x, mod: ms, h })] });
        push({
          d: [
            ...l1q.dispatch(h, q3),
            sRope.dispatch({ src: q3, qscale: qs, kscale: ks, rope: bufs.rope, qkv }),
            attn.dispatch({ qkv, o }),
          ],
          probe: probe(names.qkv, h, B * L, D),
        });
        push({ d: l1m.dispatch(h, f), probe: probe(names.mlpIn, h, B * L, D) });
        push({
          d: [...l2a.dispatch(o, y), sGate.dispatch({ x, y, mod: ms })],
          probe: probe(names.attnOut, o, B * L, D),
        });
        push({
          d: [...l2m.dispatch(f, y), sGate.dispatch({ x, y, mod: ms })],
          probe: probe(names.mlpOut, f, B * L, mlp),
          mark: [{ name: `single.${i}`, buf: x, rows: B * L, dtype: res }],
        });
      }
      seg = "final";
      const take = await copy(Li, L, Lt, Li, 0, { dtype: res });
      push({
        d: [take.dispatch({ src: x, dst: bufs.xi })],
        mark: [{ name: "final_in", buf: bufs.xi, rows: B * Li, dtype: res }],
      });
      const fMod = await linear("final_layer.adaLN_modulation.1", B, 2 * D, D);
      const fLn = await lnMod(Li, 2, 0, 1);
      const fLin = await linear("final_layer.linear", B * Li, cfg.out_channels, D);
      push({
        d: fMod.dispatch(c, bufs.mi),
        probe: probe("final_layer.adaLN_modulation.1", c, B, D),
      });
      push({ d: [fLn.dispatch({ x: bufs.xi, mod: bufs.mi, h })] });
      push({
        d: fLin.dispatch(h, bufs.out),
        probe: probe("final_layer.linear", h, B * Li, D),
      });
      return new FluxTransformer({
        gpu,
        config: cfg,
        opts,
        dtype,
        host,
        steps,
        ops,
        bufs,
        layers: linears,
      });
    } catch (e) {
      for (const o of ops) o.destroy();
      gpu.destroy(...Object.values(bufs));
      throw e;
    }
  }

  /** Weight bytes resident on the GPU (linear layers). */
  get weightBytes(): number {
    return this.layers.reduce((s, l) => s + l.weightBytes, 0);
  }

  /**
   * One forward pass. Returns the velocity prediction f32 [B, Li, out_channels] (packed tokens).
   */
  async forward(inp: FluxInputs): Promise<Float32Array> {
    this.#upload(inp);
    this.#gpu.run(this.#steps.flatMap((s) => s.d), "flux forward");
    return await this.#readOutput();
  }

  /**
   * Like {@linkcode forward}, but hands every linear layer's input (as the GPU holds it) to
   * `probe` before the layer runs: calibration for the quantizer (one readback per layer: slow,
   * offline only).
   */
  async forwardRecording(inp: FluxInputs, probe: LinearProbe): Promise<Float32Array> {
    this.#upload(inp);
    const gpu = this.#gpu, eb = this.dtype === "f16" ? 2 : 4;
    for (const s of this.#steps) {
      if (s.probe) {
        const { name, buf, m, k } = s.probe;
        probe.record(name, fromActBytes(await gpu.read(buf, m * k * eb), this.dtype, m * k), m, k);
      }
      gpu.run(s.d, "flux calibration");
    }
    return await this.#readOutput();
  }

  /**
   * Like {@linkcode forward}, also reading back the stream after each stage: `img_in`, `txt_in`,
   * `double.N.img` / `double.N.txt`, `single.N` (joint, text first), `final_in`, and `out`
   * (f32 values; one readback per stage: for tests and debugging).
   */
  async forwardTrace(inp: FluxInputs): Promise<Map<string, Float32Array>> {
    this.#upload(inp);
    const gpu = this.#gpu, D = this.config.hidden_size;
    const out = new Map<string, Float32Array>();
    for (const s of this.#steps) {
      gpu.run(s.d, "flux trace");
      for (const m of s.mark ?? []) {
        const n = m.rows * D;
        out.set(m.name, fromActBytes(await gpu.read(m.buf, n * actBytes(m.dtype)), m.dtype, n));
      }
    }
    out.set("out", await this.#readOutput());
    return out;
  }

  /**
   * The dispatches of one forward grouped by model part, in order: `embed`, `double.N`, `join`,
   * `single.N`, `final` (benchmarks time the parts; the inputs are those of the last forward).
   */
  segments(): { name: string; dispatches: Dispatch[] }[] {
    const out: { name: string; dispatches: Dispatch[] }[] = [];
    for (const s of this.#steps) {
      const last = out[out.length - 1];
      if (last?.name === s.segment) last.dispatches.push(...s.d);
      else out.push({ name: s.segment, dispatches: [...s.d] });
    }
    return out;
  }

  /** Host-side conditioning of one image (the float64 embeddings; for tests and tools). */
  conditioning(t: number, y: ArrayLike<number>, guidance?: number): FluxVec {
    return fluxVec(this.#host, this.config, t, y, guidance);
  }

  #upload(inp: FluxInputs): void {
    const cfg = this.config, B = this.batch, Li = this.imgTokens, Lt = this.txtTokens;
    const check = (name: string, v: ArrayLike<number> | undefined, n: number, shape: string) => {
      if (!v || v.length !== n) {
        throw new TypeError(
          `Cannot run FLUX: ${name} has ${v?.length ?? 0} values, expected ${shape}`,
        );
      }
    };
    check("img", inp.img, B * Li * cfg.in_channels, `[B=${B}, ${Li}, ${cfg.in_channels}]`);
    check("txt", inp.txt, B * Lt * cfg.context_in_dim, `[B=${B}, ${Lt}, ${cfg.context_in_dim}]`);
    check("y", inp.y, B * cfg.vec_in_dim, `[B=${B}, ${cfg.vec_in_dim}]`);
    check("timesteps", inp.timesteps, B, `[B=${B}]`);
    if (cfg.guidance_embed) check("guidance", inp.guidance, B, `[B=${B}]`);
    const D = cfg.hidden_size, c = new Float32Array(B * D);
    for (let b = 0; b < B; b++) {
      const v = fluxVec(
        this.#host,
        cfg,
        inp.timesteps[b],
        inp.y.subarray(b * cfg.vec_in_dim, (b + 1) * cfg.vec_in_dim),
        inp.guidance?.[b],
      ).vec;
      for (let i = 0; i < D; i++) c[b * D + i] = silu(v[i]);
    }
    const gpu = this.#gpu;
    gpu.write(this.#bufs.c, toActArray(c, this.dtype));
    gpu.write(this.#bufs.img, toActArray(inp.img, this.dtype));
    gpu.write(this.#bufs.txt, toActArray(inp.txt, this.dtype));
  }

  async #readOutput(): Promise<Float32Array> {
    const count = this.batch * this.imgTokens * this.config.out_channels;
    const eb = this.dtype === "f16" ? 2 : 4;
    return fromActBytes(await this.#gpu.read(this.#bufs.out, count * eb), this.dtype, count);
  }

  /** Release every kernel and buffer. */
  destroy(): void {
    for (const o of this.#ops) o.destroy();
    this.#gpu.destroy(...Object.values(this.#bufs));
  }
}

function probe(name: string, buf: GPUBuffer, m: number, k: number) {
  return { name, buf, m, k };
}
