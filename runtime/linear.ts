/**
 * A W4A4 + low-rank linear layer on the GPU, built from the quantizer's stored tensors (the
 * canonical layouts of formats/packing.ts, as `quantizeLinear` returns them or the pre-quantized
 * file holds them): `quantize_act_lowrank` then `gemm_w4a4_lowrank`, two dispatches per call.
 * Stored little-endian F16 / F8_E4M3 bytes are already the GPU's packed words (two f16 or four
 * E4M3 per u32, low first), so tensors upload without repacking.
 *
 * @module
 */
import { GemmW4A4Lowrank } from "../kernels/gemm_w4a4_lowrank/gemm_w4a4_lowrank.ts";
import { QuantizeActLowrank } from "../kernels/quantize_act_lowrank/quantize_act_lowrank.ts";
import { bufferSizes } from "../kernels/quantize_act_lowrank/quantize_act_lowrank.ts";
import type { ActDtype } from "../kernels/_wgsl.ts";
import type { ActConvention, ActMode, WeightFormat } from "../formats/packing.ts";
import type { Dispatch, Gpu } from "../gpu/device.ts";

/** A stored tensor: dtype name, logical shape and little-endian bytes. */
export interface StoredTensor {
  /** Safetensors dtype name, e.g. `"U32"`, `"F16"`, `"F8_E4M3"`, `"F32"`. */
  dtype: string;
  /** Logical shape, e.g. `[N, K/8]` for `qweight` (checked against the spec on upload). */
  shape: number[];
  /** Little-endian bytes, uploaded to the GPU as they are. */
  data: Uint8Array;
}

/** What a W4A4 layer is, as the quantizer's policy entry says. */
export interface W4A4LinearSpec {
  /** Layer name, for messages and GPU labels. */
  name: string;
  /** Tokens per call (the runtime's shapes are static per model and resolution). */
  m: number;
  /** Output features N (rows of the weight). */
  n: number;
  /** Input features K (multiple of the weight format's group size). */
  k: number;
  /** 4-bit weight format of `qweight` / `wscales`. */
  format: WeightFormat;
  /** How activations are quantized (from the quantizer's `actMode`). */
  actMode: ActMode;
  /** Activation storage dtype of X and Y. */
  dtype: ActDtype;
  /** Apply GELU (tanh form) to the output. */
  gelu?: boolean;
  /**
   * Activation rounding convention (default `"w4"`); `"nunchaku"` for layers imported from
   * Nunchaku checkpoints (their policy entry says so), see `quantizeAct` in formats/packing.ts.
   */
  convention?: ActConvention;
}

/**
 * Scratch buffers of a W4A4 layer's activation side (`qact`, `ascales`, `lora_act`), shareable
 * by every W4A4 layer of a graph whose layers run one after another: each must be at least the
 * size a layer needs (`quantize_act_lowrank`'s bufferSizes). A layer given them does not own them.
 */
export interface W4A4Scratch {
  /** 4-bit activation codes. */
  qact: GPUBuffer;
  /** Activation scales. */
  ascales: GPUBuffer;
  /** Low-rank activations (layers with R > 0). */
  lora_act?: GPUBuffer;
}

/** A compiled W4A4 + low-rank linear layer with its weights resident on the GPU. */
export class W4A4Linear {
  /** The spec the layer was built for. */
  readonly spec: W4A4LinearSpec;
  /** Rank R of the low-rank branch (rows of `lora_down`; 0 when there is none). */
  readonly r: number;
  #gpu: Gpu;
  #quant: QuantizeActLowrank;
  #gemm: GemmW4A4Lowrank;
  #bufs: Record<string, GPUBuffer | undefined>;
  #scratch?: W4A4Scratch;

  private constructor(
    gpu: Gpu,
    spec: W4A4LinearSpec,
    r: number,
    quant: QuantizeActLowrank,
    gemm: GemmW4A4Lowrank,
    bufs: Record<string, GPUBuffer | undefined>,
    scratch?: W4A4Scratch,
  ) {
    this.#scratch = scratch;
    this.#gpu = gpu;
    this.spec = spec;
    this.r = r;
    this.#quant = quant;
    this.#gemm = gemm;
    this.#bufs = bufs;
  }

  /**
   * Upload `tensors` (by suffix: qweight, wscales, tensor_scale, channel_scale, smooth,
   * lora_down, lora_up, bias) and build both kernels. Missing optional tensors mean λ = 1, no
   * low-rank branch, zero bias and no per-channel scale.
   *
   * @example
   * ```ts ignore
   * import { Gpu } from "../gpu/device.ts";
   * import { quantizeLinear } from "../quant/layer.ts";
   * import { W4A4Linear } from "./linear.ts";
   * const gpu = await Gpu.create();
   * const q = await quantizeLinear("fc", w, bias, 256, 256, { method: "svdquant", format: "int4", r: 32 });
   * const lin = await W4A4Linear.create(gpu, {
   *   name: "fc", m: 64, n: 256, k: 256, format: "int4", actMode: q.actMode!, dtype: "f32",
   * }, q.tensors);
   * gpu.run(lin.dispatch({ x, y })); // x: f32 [64, 256], y: f32 [64, 256]
   * lin.destroy();
   * ```
   */
  static async create(
    gpu: Gpu,
    spec: W4A4LinearSpec,
    tensors: ReadonlyMap<string, StoredTensor>,
    scratch?: W4A4Scratch,
  ): Promise<W4A4Linear> {
    const { name, m, n, k } = spec;
    const need = (suffix: string, shape: number[]): StoredTensor => {
      const t = tensors.get(suffix);
      if (!t) throw new TypeError(`Cannot build ${name}: tensor ${name}.${suffix} is missing`);
      if (t.shape.join(",") !== shape.join(",")) {
        throw new TypeError(
          `Cannot build ${name}: ${name}.${suffix} has shape [${t.shape}], expected [${shape}]`,
        );
      }
      return t;
    };
    const g = spec.format === "int4" ? 64 : 16;
    const qweight = need("qweight", [n, k / 8]);
    const wscales = need("wscales", [n, k / g]);
    const down = tensors.get("lora_down");
    const r = down ? down.shape[0] : 0;
    if (r > 0) need("lora_down", [r, k]);
    const up = r > 0 ? need("lora_up", [n, r]) : undefined;
    const smooth = tensors.has("smooth") ? need("smooth", [k]) : undefined;
    const bias = tensors.has("bias") ? need("bias", [n]) : undefined;
    const channelScale = tensors.has("channel_scale") ? need("channel_scale", [n]) : undefined;
    let tensorScale: number | undefined;
    if (spec.format === "nvfp4") {
      const ts = need("tensor_scale", [1]);
      tensorScale = new DataView(ts.data.buffer, ts.data.byteOffset, 4).getFloat32(0, true);
    }

    const up_ = (suffix: string, t: StoredTensor | undefined) =>
      t ? gpu.upload(`buffer ${name}.${suffix}`, t.data) : Promise.resolve(undefined);
    const quant = await QuantizeActLowrank.create(gpu, {
      m,
      k,
      r,
      mode: spec.actMode,
      dtype: spec.dtype,
      smooth: Boolean(smooth),
      convention: spec.convention,
    });
    const gemm = await GemmW4A4Lowrank.create(gpu, {
      m,
      k,
      n,
      r,
      format: spec.format,
      actMode: spec.actMode,
      dtype: spec.dtype,
      bias: Boolean(bias),
      gelu: spec.gelu ?? false,
      tensorScale,
      channelScale: Boolean(channelScale),
    });
    const sizes = Object.fromEntries(bufferSizes(quant.shape).map(([b, bytes]) => [b, bytes]));
    const bufs: Record<string, GPUBuffer | undefined> = {
      qweight: await up_("qweight", qweight),
      wscales: await up_("wscales", wscales),
      smooth: await up_("smooth", smooth),
      lora_down: await up_("lora_down", down),
      lora_up: await up_("lora_up", up),
      // the GEMM's per-channel buffer: the bias, then the channel scale (one binding)
      bias: await up_("bias", channelScale ? concatBytes(bias, channelScale) : bias),
      qact: scratch ? undefined : await gpu.createBuffer(`buffer ${name}.qact`, sizes.qact),
      ascales: scratch
        ? undefined
        : await gpu.createBuffer(`buffer ${name}.ascales`, sizes.ascales),
      lora_act: r > 0 && !scratch
        ? await gpu.createBuffer(`buffer ${name}.lora_act`, sizes.lora_act)
        : undefined,
    };
    if (scratch) {
      // shared: bound at dispatch (sizes checked there), never destroyed by this layer
      for (const key of ["qact", "ascales", "lora_act"] as const) {
        if (key === "lora_act" && r === 0) continue;
        const b = scratch[key];
        if (!b || b.size < sizes[key]) {
          throw new TypeError(
            `Cannot build ${name}: the shared scratch ${key} has ${b?.size ?? 0} bytes, ` +
              `the layer needs ${sizes[key]}`,
          );
        }
      }
    }
    return new W4A4Linear(gpu, spec, r, quant, gemm, bufs, scratch);
  }

  /** The two dispatches computing `y = linear(x)` (x: ACT [M, K], y: ACT [M, N]). */
  dispatch(io: { x: GPUBuffer; y: GPUBuffer }): Dispatch[] {
    const own = this.#bufs, sc = this.#scratch;
    const b = sc
      ? {
        ...own,
        qact: sc.qact,
        ascales: sc.ascales,
        lora_act: this.r > 0 ? sc.lora_act : undefined,
      }
      : own;
    return [
      this.#quant.dispatch({
        x: io.x,
        smooth: b.smooth,
        lora_down: b.lora_down,
        qact: b.qact!,
        ascales: b.ascales!,
        lora_act: b.lora_act,
      }),
      this.#gemm.dispatch({
        qact: b.qact!,
        ascales: b.ascales!,
        qweight: b.qweight!,
        wscales: b.wscales!,
        lora_act: b.lora_act,
        lora_up: b.lora_up,
        bias: b.bias,
        y: io.y,
      }),
    ];
  }

  /** Bytes of the layer's weights resident on the GPU. */
  get weightBytes(): number {
    return ["qweight", "wscales", "smooth", "lora_down", "lora_up", "bias"]
      .reduce((s, key) => s + (this.#bufs[key]?.size ?? 0), 0);
  }

  /** Release the kernels and every buffer. */
  destroy(): void {
    this.#quant.destroy();
    this.#gemm.destroy();
    this.#gpu.destroy(...Object.values(this.#bufs));
  }
}

/** The f32 bytes of `a` (when given) followed by those of `b`, as one tensor. */
function concatBytes(a: StoredTensor | undefined, b: StoredTensor): StoredTensor {
  const data = new Uint8Array((a?.data.length ?? 0) + b.data.length);
  if (a) data.set(a.data);
  data.set(b.data, a?.data.length ?? 0);
  return { dtype: b.dtype, shape: [data.length / 4], data };
}
