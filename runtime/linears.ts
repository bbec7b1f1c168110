/**
 * One interface for every linear layer of a model graph, whatever its precision: 16-bit
 * (`gemm_f16`), weight-only INT4 (`gemm_w4a16`) or W4A4 + low-rank (`quantize_act_lowrank` +
 * `gemm_w4a4_lowrank`). The layer policy stored in the pre-quantized file picks one per layer.
 *
 * @module
 */
import { GemmF16 } from "../kernels/gemm_f16/gemm_f16.ts";
import { GemmW4A16 } from "../kernels/gemm_w4a16/gemm_w4a16.ts";
import type { ActDtype } from "../kernels/_wgsl.ts";
import type { ActConvention, ActMode, WeightFormat } from "../formats/packing.ts";
import type { LayerPolicyEntry } from "../formats/format.ts";
import type { Dispatch, Gpu } from "../gpu/device.ts";
import { type StoredTensor, W4A4Linear, type W4A4Scratch } from "./linear.ts";

/** A linear layer resident on the GPU: `y = x·Wᵀ + b` (optionally GELU) over M fixed rows. */
export interface LinearOp {
  /** Layer name (e.g. `blocks.3.attn.qkv`). */
  readonly name: string;
  /** How the layer runs: "f16", "w4a16", or the W4A4 format ("int4" / "nvfp4"). */
  readonly kind: string;
  /** Bytes of weights resident on the GPU. */
  readonly weightBytes: number;
  /** Dispatches computing `y` (ACT [M, N]) from `x` (ACT [M, K]). */
  dispatch(x: GPUBuffer, y: GPUBuffer): Dispatch[];
  /** Release its kernels and buffers. */
  destroy(): void;
}

/** What to build: shape, activation dtype, epilogue, and the policy entry's method. */
export interface LinearSpec {
  name: string;
  m: number;
  n: number;
  k: number;
  dtype: ActDtype;
  gelu?: boolean;
  /** "float" | "w4a16" | a W4A4 method ("svdquant", "rtn", "smooth", "dilate"). */
  method: string;
  /** W4A4 residual format; for W4A16 `"int4"` (default) or `"uint4"` (zero points, AWQ). */
  format?: WeightFormat | "uint4";
  /** W4A4 activation mode. */
  actMode?: ActMode;
  /** Shared W4A4 activation scratch (layers that run one after another); default its own. */
  scratch?: W4A4Scratch;
  /** W4A4 activation rounding convention (the policy entry's `convention`; default "w4"). */
  convention?: ActConvention;
}

/** The part of a {@linkcode LinearSpec} that a layer's policy entry in the model file decides. */
export function policySpec(
  pol: LayerPolicyEntry,
): Pick<LinearSpec, "method" | "format" | "actMode" | "convention"> {
  return {
    method: pol.method,
    format: pol.format as WeightFormat,
    actMode: pol.actMode as ActMode | undefined,
    convention: pol.convention as ActConvention | undefined,
  };
}

/**
 * Build a linear layer from its stored tensors (by suffix: `weight`, `bias`, `qweight`,
 * `wscales`, …). A float weight of any float dtype is given as f32 values in `weight`.
 */
export async function createLinear(
  gpu: Gpu,
  spec: LinearSpec,
  tensors: ReadonlyMap<string, StoredTensor | Float32Array>,
): Promise<LinearOp> {
  const { name, m, n, k, dtype } = spec;
  const stored = (s: string) => tensors.get(s) as StoredTensor | undefined;
  const biasValues = tensors.get("bias");
  const bias = biasValues instanceof Float32Array
    ? biasValues
    : biasValues
    ? new Float32Array(biasValues.data.slice().buffer)
    : undefined;
  if (spec.method === "float") {
    const w = tensors.get("weight");
    if (!(w instanceof Float32Array) || w.length !== n * k) {
      throw new TypeError(`Cannot build ${name}: expected float weight values [N=${n}, K=${k}]`);
    }
    const op = await GemmF16.create(gpu, { m, k, n, dtype, bias: Boolean(bias), gelu: spec.gelu });
    const wb = await gpu.upload(
      `buffer ${name}.weight`,
      dtype === "f16" ? Float16Array.from(w) : w,
    );
    const bb = bias ? await gpu.upload(`buffer ${name}.bias`, bias) : undefined;
    return {
      name,
      kind: "f16",
      weightBytes: wb.size + (bb?.size ?? 0),
      dispatch: (x, y) => [op.dispatch({ x, w: wb, bias: bb, y })],
      destroy: () => {
        op.destroy();
        gpu.destroy(wb, bb);
      },
    };
  }
  if (spec.method === "w4a16") {
    const qw = stored("qweight"), ws = stored("wscales"), wz = stored("wzeros");
    if (!qw || !ws) throw new TypeError(`Cannot build ${name}: W4A16 needs qweight and wscales`);
    // activation-aware scaling (quant/awq.ts): optional F32 [K] divisors of X
    const sm = stored("smooth");
    if (sm && (sm.dtype !== "F32" || sm.shape.join(",") !== String(k))) {
      throw new TypeError(
        `Cannot build ${name}: ${name}.smooth is ${sm.dtype} [${sm.shape}], expected F32 [${k}]`,
      );
    }
    // format "uint4" (AWQ layers imported from Nunchaku): unsigned codes with zero points
    if ((spec.format === "uint4") !== Boolean(wz)) {
      throw new TypeError(
        `Cannot build ${name}: W4A16 format "${spec.format ?? "int4"}" ${
          wz ? "does not take" : "needs"
        } ${name}.wzeros (format "uint4" has zero points, "int4" has none)`,
      );
    }
    const op = await GemmW4A16.create(gpu, {
      m,
      k,
      n,
      dtype,
      bias: Boolean(bias),
      gelu: spec.gelu,
      zeroPoint: Boolean(wz),
      smooth: Boolean(sm),
    });
    const qb = await gpu.upload(`buffer ${name}.qweight`, qw.data);
    const sb = await gpu.upload(`buffer ${name}.wscales`, ws.data);
    const zb = wz ? await gpu.upload(`buffer ${name}.wzeros`, wz.data) : undefined;
    const lb = sm ? await gpu.upload(`buffer ${name}.smooth`, sm.data) : undefined;
    const bb = bias ? await gpu.upload(`buffer ${name}.bias`, bias) : undefined;
    return {
      name,
      kind: "w4a16",
      weightBytes: qb.size + sb.size + (zb?.size ?? 0) + (lb?.size ?? 0) + (bb?.size ?? 0),
      dispatch: (x, y) => [
        op.dispatch({ x, qweight: qb, wscales: sb, bias: bb, y, wzeros: zb, smooth: lb }),
      ],
      destroy: () => {
        op.destroy();
        gpu.destroy(qb, sb, zb, lb, bb);
      },
    };
  }
  if (!spec.format || spec.format === "uint4" || !spec.actMode) {
    throw new TypeError(`Cannot build ${name}: a W4A4 layer needs its format and activation mode`);
  }
  const st = new Map<string, StoredTensor>();
  for (const [key, v] of tensors) if (!(v instanceof Float32Array)) st.set(key, v);
  const lin = await W4A4Linear.create(
    gpu,
    {
      name,
      m,
      n,
      k,
      format: spec.format,
      actMode: spec.actMode,
      dtype,
      gelu: spec.gelu,
      convention: spec.convention,
    },
    st,
    spec.scratch,
  );
  return {
    name,
    kind: spec.format,
    weightBytes: lin.weightBytes,
    dispatch: (x, y) => lin.dispatch({ x, y }),
    destroy: () => lin.destroy(),
  };
}
