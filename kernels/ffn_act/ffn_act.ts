/**
 * Launcher of `ffn_act`: the FFN activation between two linears — T5 v1.1's gated GELU
 * (`gelu_tanh(x·wi_0ᵀ) · (x·wi_1ᵀ)` from the fused [M, 2F] GEMM output) or CLIP's quick-GELU —
 * with the output dtype chosen apart from the input's (see ffn_act.wgsl).
 *
 * @module
 */
import type { Dispatch, Gpu } from "../../gpu/device.ts";
import {
  bindBuffers,
  type BufferRow,
  checkDims,
  checkDistinct,
  checkDtype,
  checkShaderF16,
  runOnce,
} from "../_launch.ts";
import { actBytes, type ActDtype, loadWgsl } from "../_wgsl.ts";

const NAME = "ffn_act";
const WG = 256;

/** Shape descriptor of one `ffn_act`. */
export interface FfnActShape {
  /** Rows M (tokens). */
  m: number;
  /** Features F of the output. */
  f: number;
  /** true: gated GELU over x [M, 2F] (T5); false: quick-GELU over x [M, F] (CLIP). */
  gated: boolean;
  /** dtype of x. */
  dtype: ActDtype;
  /** dtype of y. Default: `dtype`. */
  outDtype?: ActDtype;
}

/** Buffers of one dispatch, in binding order (binding 0 is the uniform params). */
export interface FfnActBuffers {
  /** [M, 2F] (gated) or [M, F] in `dtype`. */
  x: GPUBuffer;
  /** [M, F] in `outDtype`. */
  y: GPUBuffer;
}

/**
 * A compiled `ffn_act` for one shape.
 *
 * @example
 * ```ts ignore
 * import { Gpu } from "../../gpu/device.ts";
 * import { FfnAct } from "./ffn_act.ts";
 * const gpu = await Gpu.create();
 * const op = await FfnAct.create(gpu, { m: 1, f: 2, gated: true, dtype: "f32" });
 * const x = await gpu.upload("x", new Float32Array([0, 10, 3, 2])); // a = [0, 10], b = [3, 2]
 * const y = await gpu.createBuffer("y", 8);
 * await gpu.runChecked("act", [op.dispatch({ x, y })]);
 * console.log(new Float32Array(await gpu.read(y))); // [0, 20]
 * op.destroy();
 * gpu.destroy(x, y);
 * ```
 */
export class FfnAct {
  /** The shape this op was built for. */
  readonly shape: Readonly<FfnActShape>;
  readonly #pipeline: GPUComputePipeline;
  readonly #params: GPUBuffer;
  readonly #grid: [number, number];

  private constructor(
    shape: FfnActShape,
    pipeline: GPUComputePipeline,
    params: GPUBuffer,
    grid: [number, number],
  ) {
    this.shape = shape;
    this.#pipeline = pipeline;
    this.#params = params;
    this.#grid = grid;
  }

  /** Validate `shape`, build the pipeline and the uniform params. */
  static async create(gpu: Gpu, shape: FfnActShape): Promise<FfnAct> {
    checkDims(shape, { kernel: NAME, keys: ["m", "f"] });
    const outDtype = shape.outDtype ?? shape.dtype;
    checkDtype(NAME, shape.dtype);
    checkDtype(NAME, outDtype);
    checkShaderF16(gpu, NAME, shape.dtype);
    checkShaderF16(gpu, NAME, outDtype);
    if (shape.m * shape.f * 2 >= 2 ** 32) {
      throw new RangeError(`Cannot build ${NAME}: M·2F ≥ 2^32 (u32 indices); split the batch`);
    }
    const groups = Math.ceil((shape.m * shape.f) / WG);
    const max = gpu.caps.maxComputeWorkgroupsPerDimension;
    const gx = Math.min(groups, max);
    const gy = Math.ceil(groups / gx);
    const raw = await loadWgsl(`./${NAME}.wgsl`, import.meta.url);
    let src = raw.replace(/^alias ACT = f32;$/m, `alias ACT = ${shape.dtype};`)
      .replace(/^alias OT = f32;$/m, `alias OT = ${outDtype};`);
    if (shape.dtype === "f16" || outDtype === "f16") src = "enable f16;\n" + src;
    const pipeline = await gpu.pipeline(`${NAME}_${shape.dtype}_${outDtype}`, src, {
      WG,
      GATED: shape.gated ? 1 : 0,
    }, NAME);
    const params = await gpu.uniform(
      `buffer ${NAME} params`,
      new Uint32Array([shape.m, shape.f, gx, 0]),
    );
    return new FfnAct({ ...shape, outDtype }, pipeline, params, [gx, gy]);
  }

  /** A dispatch computing `y`; sizes are checked against the shape first. */
  dispatch(buffers: FfnActBuffers): Dispatch {
    const bindings = bindBuffers(bufferSizes(this.shape), buffers, {
      kernel: NAME,
      params: this.#params,
    });
    checkDistinct(buffers, { kernel: NAME, pairs: [["y", "x"]] });
    return { pipeline: this.#pipeline, bindings, workgroups: this.#grid };
  }

  /** Release the uniform buffer. */
  destroy(): void {
    this.#params.destroy();
  }
}

/** One-shot `ffn_act`: create, run (checked) and destroy. */
export function ffnAct(gpu: Gpu, shape: FfnActShape, buffers: FfnActBuffers): Promise<void> {
  return runOnce(gpu, { kernel: NAME, create: () => FfnAct.create(gpu, shape), buffers });
}

/** Required byte sizes of the buffers, in binding order: [name, bytes, description]. */
export function bufferSizes(s: FfnActShape): BufferRow<keyof FfnActBuffers>[] {
  const w = s.gated ? 2 * s.f : s.f;
  const out = s.outDtype ?? s.dtype;
  return [
    ["x", s.m * w * actBytes(s.dtype), `[M=${s.m}, ${s.gated ? "2F" : "F"}=${w}] ${s.dtype}`],
    ["y", s.m * s.f * actBytes(out), `[M=${s.m}, F=${s.f}] ${out}`],
  ];
}
