/**
 * Launcher of `conv2d`: a 3×3 or 1×1 convolution over NHWC activations as an implicit GEMM with
 * register tiling (see conv2d.wgsl), stride 1 or 2, any zero padding (including the
 * right/bottom-only pad of the LDM/BFL Downsample), bias, and three fusions: a nearest 2×
 * upsample on the input read, SiLU on the input read, and a residual add (then an optional ReLU)
 * in the epilogue.
 * Storage f16 (with `shader-f16`) or f32, accumulation f32.
 *
 * @module
 */
import type { Dispatch, Gpu } from "../../gpu/device.ts";
import {
  bindBuffers,
  type BufferRow,
  checkBindingSizes,
  checkDims,
  checkDtype,
  checkGrid,
  checkShaderF16,
  runOnce,
} from "../_launch.ts";
import { actBytes, type ActDtype, loadWgsl, withActDtype } from "../_wgsl.ts";
import { tilePad } from "../gemm_f16/gemm_f16.ts";

const NAME = "conv2d";
const TILE = 128; // BM = BN of the kernel
const NARROW_WG = 64; // conv2d.wgsl NARROW_WG

/** Largest Cout served by the narrow kernel (one invocation per pixel); larger runs tiled. */
export const CONV2D_NARROW_MAX_N = 8;

/** Which kernel runs: by default `"narrow"` for Cout ≤ {@linkcode CONV2D_NARROW_MAX_N}. */
export type Conv2dKernel = "tiled" | "narrow";

/** Zero padding `[top, bottom, left, right]` in logical-input pixels. */
export type Conv2dPad = readonly [top: number, bottom: number, left: number, right: number];

/** Shape descriptor of one convolution. */
export interface Conv2dShape {
  /** Batch B. */
  b: number;
  /** Stored input height H (before the optional upsample). */
  h: number;
  /** Stored input width W. */
  w: number;
  /** Input channels Cin. */
  cin: number;
  /** Output channels Cout. */
  cout: number;
  /** Kernel size: 3 or 1. */
  kernel: 1 | 3;
  /** Stride, 1 or 2. Default 1. */
  stride?: 1 | 2;
  /**
   * Zero padding: one number for all sides, or `[top, bottom, left, right]`. Default
   * `(kernel − 1) / 2` (1 for 3×3, 0 for 1×1).
   */
  pad?: number | Conv2dPad;
  /** Read the input through a nearest 2× upsample (the logical input is 2H × 2W). */
  upsample?: boolean;
  /** Apply SiLU to the input on read. */
  siluIn?: boolean;
  /** Add `bias` [Cout] (f32). */
  bias: boolean;
  /** Add `residual` [B, Ho, Wo, Cout] in the epilogue. */
  residual?: boolean;
  /** ReLU after the bias and residual (the TAESD blocks). Default false. */
  relu?: boolean;
  /**
   * Weight storage: "act" (default, `w` in the activation dtype) or "int8" (`wq` codes with a
   * per-output-channel f32 `wscale`, see {@linkcode quantizeConvWeightInt8}).
   */
  weights?: "act" | "int8";
  /** Storage dtype of x, w, residual and y (f16 needs the `shader-f16` feature). */
  dtype: ActDtype;
}

/** Buffers of one dispatch, in binding order (binding 0 is the uniform params). */
export interface Conv2dBuffers {
  /** ACT [B, H, W, Cin]. */
  x: GPUBuffer;
  /** ACT [Cout, KS, KS, Cin] (see {@linkcode packConvWeight}); unused with INT8 weights. */
  w?: GPUBuffer;
  /** f32 [Cout] (when the shape has bias). */
  bias?: GPUBuffer;
  /** ACT [B, Ho, Wo, Cout] (when the shape has residual); may not be `y`. */
  residual?: GPUBuffer;
  /** ACT [B, Ho, Wo, Cout] output. */
  y: GPUBuffer;
  /** INT8 weights (`weights: "int8"`): u32 [Cout·KS·KS·Cin / 4], four codes per word. */
  wq?: GPUBuffer;
  /** f32 [Cout] per-output-channel scales (`weights: "int8"`). */
  wscale?: GPUBuffer;
}

/** Output size and padding of a convolution shape. */
export interface Conv2dGeometry {
  /** Output height Ho. */
  ho: number;
  /** Output width Wo. */
  wo: number;
  /** Padding `[top, bottom, left, right]`. */
  pad: Conv2dPad;
}

/**
 * Output size of `s`: `Ho = ⌊(H' + top + bottom − KS) / stride⌋ + 1` with `H' = 2H` when
 * upsampling, else H (likewise Wo).
 *
 * @example
 * ```ts
 * import { conv2dGeometry } from "./conv2d.ts";
 * // the BFL Downsample: pad right/bottom by one, 3×3 stride 2
 * const g = conv2dGeometry({ b: 1, h: 64, w: 64, cin: 8, cout: 8, kernel: 3, stride: 2,
 *   pad: [0, 1, 0, 1], bias: true, dtype: "f32" });
 * console.log(g.ho, g.wo); // 32 32
 * ```
 */
export function conv2dGeometry(s: Conv2dShape): Conv2dGeometry {
  const p = s.pad ?? (s.kernel - 1) / 2;
  const pad: Conv2dPad = typeof p === "number" ? [p, p, p, p] : p;
  const up = s.upsample ? 2 : 1;
  const st = s.stride ?? 1;
  return {
    ho: Math.floor((s.h * up + pad[0] + pad[1] - s.kernel) / st) + 1,
    wo: Math.floor((s.w * up + pad[2] + pad[3] - s.kernel) / st) + 1,
    pad,
  };
}

/**
 * Repack a PyTorch conv weight `[Cout, Cin, KS, KS]` into the kernel's `[Cout, KS, KS, Cin]`.
 *
 * @example
 * ```ts
 * import { packConvWeight } from "./conv2d.ts";
 * const w = packConvWeight(new Float32Array([1, 2]), 1, 2, 1); // [1, 2, 1, 1]: already packed
 * console.log([...w]); // [1, 2]
 * ```
 */
export function packConvWeight(
  w: ArrayLike<number>,
  cout: number,
  cin: number,
  ks: number,
): Float32Array {
  const taps = ks * ks;
  if (w.length !== cout * cin * taps) {
    throw new TypeError(
      `Cannot pack conv weight: it has ${w.length} values, expected [Cout=${cout}, Cin=${cin}, ` +
        `${ks}, ${ks}] = ${cout * cin * taps}`,
    );
  }
  const out = new Float32Array(w.length);
  for (let o = 0; o < cout; o++) {
    for (let c = 0; c < cin; c++) {
      for (let t = 0; t < taps; t++) out[(o * taps + t) * cin + c] = w[(o * cin + c) * taps + t];
    }
  }
  return out;
}

/**
 * A compiled convolution for one shape.
 *
 * @example
 * ```ts ignore
 * import { Gpu } from "../../gpu/device.ts";
 * import { Conv2d } from "./conv2d.ts";
 * const gpu = await Gpu.create();
 * const shape = { b: 1, h: 8, w: 8, cin: 4, cout: 8, kernel: 3, bias: false, dtype: "f32" } as const;
 * const op = await Conv2d.create(gpu, shape);
 * const x = await gpu.upload("x", new Float32Array(8 * 8 * 4).fill(1));
 * const w = await gpu.upload("w", new Float32Array(8 * 9 * 4).fill(0.5));
 * const y = await gpu.createBuffer("y", 8 * 8 * 8 * 4);
 * await gpu.runChecked("conv", [op.dispatch({ x, w, y })]);
 * console.log(new Float32Array(await gpu.read(y))[8 * 9]); // interior pixel: 9·4·0.5 = 18
 * op.destroy();
 * gpu.destroy(x, w, y);
 * ```
 */
export class Conv2d {
  /** The validated shape this op was built for. */
  readonly shape: Readonly<Conv2dShape>;
  /** Output size and padding. */
  readonly geometry: Readonly<Conv2dGeometry>;
  readonly #pipeline: GPUComputePipeline;
  readonly #params: GPUBuffer;
  readonly #dummy: GPUBuffer;
  readonly #grid: [number, number];
  /** The kernel in use. */
  readonly kernel: Conv2dKernel;

  private constructor(
    shape: Conv2dShape,
    geometry: Conv2dGeometry,
    pipeline: GPUComputePipeline,
    params: GPUBuffer,
    dummy: GPUBuffer,
    grid: [number, number],
    kernel: Conv2dKernel,
  ) {
    this.shape = shape;
    this.kernel = kernel;
    this.geometry = geometry;
    this.#pipeline = pipeline;
    this.#params = params;
    this.#dummy = dummy;
    this.#grid = grid;
  }

  /**
   * Validate `shape`, build the pipeline and the uniform params. `which` forces one of the two
   * kernels (tests, benchmarks); by default Cout picks it (narrow for Cout ≤ 8).
   */
  static async create(gpu: Gpu, shape: Conv2dShape, which?: Conv2dKernel): Promise<Conv2d> {
    const g = checkShape(gpu, shape);
    const { b, h, w, cin, cout, kernel } = shape;
    const m = b * g.ho * g.wo;
    const narrow = (which ?? (cout <= CONV2D_NARROW_MAX_N ? "narrow" : "tiled")) === "narrow";
    if (narrow && cout > CONV2D_NARROW_MAX_N) {
      throw new RangeError(
        `Cannot build ${NAME}: the narrow kernel takes Cout ≤ ${CONV2D_NARROW_MAX_N}, got ${cout}`,
      );
    }
    const groups = Math.ceil(m / NARROW_WG);
    const nx = Math.min(groups, gpu.caps.maxComputeWorkgroupsPerDimension);
    const grid: [number, number] = narrow
      ? [nx, Math.ceil(groups / nx)]
      : [Math.ceil(cout / TILE), Math.ceil(m / TILE)];
    checkGrid(gpu, grid, {
      kernel: NAME,
      verb: "build",
      dims: `[B·Ho·Wo=${m}, Cout=${cout}]`,
      fix: "split the batch or tile the image",
    });
    const src = withActDtype(await loadWgsl(`./${NAME}.wgsl`, import.meta.url), shape.dtype);
    const constants = {
      KS: kernel,
      STRIDE: shape.stride ?? 1,
      UPSAMPLE: shape.upsample ? 1 : 0,
      SILU_IN: shape.siluIn ? 1 : 0,
      HAS_BIAS: shape.bias ? 1 : 0,
      HAS_RESIDUAL: shape.residual ? 1 : 0,
      RELU: shape.relu ? 1 : 0,
      W_INT8: shape.weights === "int8" ? 1 : 0,
      PAD: tilePad(gpu, NAME),
    };
    const entry = narrow ? `${NAME}_narrow` : NAME;
    const pipeline = await gpu.pipeline(`${entry}_${shape.dtype}`, src, constants, entry);
    const words = new Uint32Array([
      b,
      h,
      w,
      cin,
      g.ho,
      g.wo,
      cout,
      kernel * kernel * cin,
      m,
      g.pad[0],
      g.pad[2],
      0,
    ]);
    const params = await gpu.uniform(`buffer ${NAME} params`, words);
    const dummy = await gpu.createBuffer(`buffer ${NAME} unused`, 16);
    return new Conv2d({ ...shape }, g, pipeline, params, dummy, grid, narrow ? "narrow" : "tiled");
  }

  /** A dispatch computing y; every buffer's size is checked against the shape first. */
  dispatch(buffers: Conv2dBuffers): Dispatch {
    if (buffers.residual && buffers.residual === buffers.y) {
      throw new TypeError(
        `Cannot run ${NAME}: residual and y are the same buffer; pass a separate output buffer`,
      );
    }
    const bindings = bindBuffers(bufferSizes(this.shape), buffers, {
      kernel: NAME,
      params: this.#params,
      unused: this.#dummy,
    });
    return { pipeline: this.#pipeline, bindings, workgroups: this.#grid };
  }

  /** Release the uniform and placeholder buffers. */
  destroy(): void {
    this.#params.destroy();
    this.#dummy.destroy();
  }
}

/**
 * One-shot convolution: create, run (checked) and destroy.
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../../gpu/device.ts";
 * import { conv2d } from "./conv2d.ts";
 * const gpu = await getGpu();
 * // x: [1, 8, 8, 4] f32, w: [8, 3, 3, 4] f32, y: [1, 8, 8, 8] f32 GPUBuffers
 * await conv2d(gpu, { b: 1, h: 8, w: 8, cin: 4, cout: 8, kernel: 3, bias: false, dtype: "f32" },
 *   { x, w, y });
 * ```
 */
export function conv2d(gpu: Gpu, shape: Conv2dShape, buffers: Conv2dBuffers): Promise<void> {
  return runOnce(gpu, { kernel: NAME, create: () => Conv2d.create(gpu, shape), buffers });
}

/** Required bytes of each storage binding, in binding order (0 = unused: a placeholder is bound). */
export function bufferSizes(s: Conv2dShape): BufferRow<keyof Conv2dBuffers>[] {
  const { b, h, w, cin, cout, kernel, dtype } = s;
  const { ho, wo } = conv2dGeometry(s);
  const e = actBytes(dtype);
  const out = `[B=${b}, Ho=${ho}, Wo=${wo}, Cout=${cout}] ${dtype}`;
  const int8 = s.weights === "int8";
  const wn = cout * kernel * kernel * cin;
  const wdesc = `[Cout=${cout}, ${kernel}, ${kernel}, Cin=${cin}]`;
  return [
    ["x", b * h * w * cin * e, `[B=${b}, H=${h}, W=${w}, Cin=${cin}] ${dtype}`],
    ["w", int8 ? 0 : wn * e, `${wdesc} ${dtype}`],
    ["bias", s.bias ? cout * 4 : 0, `[Cout=${cout}] f32`],
    ["residual", s.residual ? b * ho * wo * cout * e : 0, out],
    ["y", b * ho * wo * cout * e, out],
    ["wq", int8 ? Math.ceil(wn / 4) * 4 : 0, `${wdesc} int8, 4 per u32`],
    ["wscale", int8 ? cout * 4 : 0, `[Cout=${cout}] f32`],
  ];
}

/**
 * Per-output-channel symmetric INT8 of a packed conv weight `[Cout, K]` (K = KS·KS·Cin): scale
 * `s_n = max_k |W[n, k]| / 127` (1 for an all-zero row), codes `round(W / s_n)` in [-127, 127],
 * four per u32 (element i in byte i & 3 of word i >> 2).
 *
 * @example
 * ```ts
 * import { quantizeConvWeightInt8 } from "./conv2d.ts";
 * const { codes, scales } = quantizeConvWeightInt8(new Float32Array([0.5, -1, 0.25, 0]), 1);
 * console.log(scales[0] * 127, new Int8Array(codes.buffer)[1]); // 1 -127
 * ```
 */
export function quantizeConvWeightInt8(
  w: Float32Array,
  cout: number,
): { codes: Uint32Array; scales: Float32Array } {
  const k = w.length / cout;
  if (!Number.isInteger(k)) {
    throw new TypeError(
      `Cannot quantize conv weight: ${w.length} values are not Cout=${cout} rows`,
    );
  }
  const bytes = new Int8Array(Math.ceil(w.length / 4) * 4);
  const scales = new Float32Array(cout);
  for (let n = 0; n < cout; n++) {
    let amax = 0;
    for (let i = 0; i < k; i++) amax = Math.max(amax, Math.abs(w[n * k + i]));
    const s = amax > 0 ? amax / 127 : 1;
    scales[n] = s;
    for (let i = 0; i < k; i++) {
      bytes[n * k + i] = Math.max(-127, Math.min(127, Math.round(w[n * k + i] / s)));
    }
  }
  return { codes: new Uint32Array(bytes.buffer), scales };
}

function checkShape(gpu: Gpu, s: Conv2dShape): Conv2dGeometry {
  checkDims(s, { kernel: NAME, keys: ["b", "h", "w", "cin", "cout"] });
  if (s.kernel !== 1 && s.kernel !== 3) {
    throw new RangeError(`Cannot build ${NAME}: kernel=${s.kernel} must be 1 or 3`);
  }
  if (s.weights !== undefined && s.weights !== "act" && s.weights !== "int8") {
    throw new RangeError(`Cannot build ${NAME}: weights="${s.weights}" must be "act" or "int8"`);
  }
  if (s.stride !== undefined && s.stride !== 1 && s.stride !== 2) {
    throw new RangeError(`Cannot build ${NAME}: stride=${s.stride} must be 1 or 2`);
  }
  const g = conv2dGeometry(s);
  if (!g.pad.every((p) => Number.isInteger(p) && p >= 0 && p < s.kernel)) {
    throw new RangeError(
      `Cannot build ${NAME}: pad ${JSON.stringify(s.pad)} must be integers in 0..${
        s.kernel - 1
      } (one number or [top, bottom, left, right])`,
    );
  }
  if (g.ho < 1 || g.wo < 1) {
    throw new RangeError(
      `Cannot build ${NAME}: input ${s.h}×${s.w} is smaller than the ${s.kernel}×${s.kernel} ` +
        "kernel with this padding",
    );
  }
  checkDtype(NAME, s.dtype);
  checkBindingSizes(gpu, bufferSizes(s), {
    kernel: NAME,
    elementBytes: actBytes(s.dtype),
    maxLog2: 32,
  });
  checkShaderF16(gpu, NAME, s.dtype);
  return g;
}
