/**
 * Benchmark of `conv2d` at the FLUX / SD autoencoder decoder's shapes for a 1024² image (latent
 * 128²): 512 channels at 128² (mid block, up level 3), the fused-upsample convs, 256 channels at
 * 512², 128 channels at 1024², and conv_out (128 → 3). With `--small`, shapes that finish
 * quickly on a software adapter.
 *
 *   deno run --allow-read --allow-env kernels/conv2d/conv2d_bench.ts [--small]
 *
 * @module
 */
import type { Gpu } from "../../gpu/device.ts";
import type { KernelTiming } from "../_gpu_time.ts";
import { benchMain, timeOp } from "../_launch.ts";
import type { ActDtype } from "../_wgsl.ts";
import { bufferSizes, Conv2d, conv2dGeometry, type Conv2dShape } from "./conv2d.ts";

/** One benchmark run: a conv shape and the dispatches per timed pass. */
export interface Conv2dBenchShape extends Conv2dShape {
  /** Dispatches per timed pass (default 8). */
  repeat?: number;
}

/**
 * Time `conv2d` on `shape` (zeroed inputs), per dispatch. ops = 2·(B·Ho·Wo)·Cout·(KS²·Cin);
 * bytes = x + w + y (+ residual, bias) moved once.
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../../gpu/device.ts";
 * import { fmtTiming } from "../_bench.ts";
 * import { benchConv2d } from "./conv2d_bench.ts";
 * const gpu = await getGpu();
 * const s = { b: 1, h: 32, w: 32, cin: 64, cout: 64, kernel: 3, bias: true, dtype: "f32" } as const;
 * console.log(fmtTiming(await benchConv2d(gpu, s)));
 * ```
 */
export async function benchConv2d(gpu: Gpu, shape: Conv2dBenchShape): Promise<KernelTiming> {
  const { repeat, ...s } = shape;
  const { ho, wo } = conv2dGeometry(s);
  const op = await Conv2d.create(gpu, s);
  const ops = 2 * s.b * ho * wo * s.cout * s.kernel * s.kernel * s.cin;
  return await timeOp(gpu, op, { rows: bufferSizes(s), ops, repeat });
}

function label(s: Conv2dShape): string {
  const { ho, wo } = conv2dGeometry(s);
  const f = [s.upsample ? " up2" : "", s.stride === 2 ? " s2" : "", s.residual ? " +res" : ""];
  return `${s.kernel}×${s.kernel} ${s.h}×${s.w}×${s.cin} → ${ho}×${wo}×${s.cout}${
    f.join("")
  } ${s.dtype}`;
}

/** The decoder's convolutions at a 1024² image, or small ones for a software adapter. */
export function decoderShapes(dtype: ActDtype, small: boolean): Conv2dBenchShape[] {
  const c = (h: number, cin: number, cout: number, o: Partial<Conv2dShape> = {}) => ({
    b: 1,
    h,
    w: h,
    cin,
    cout,
    kernel: 3 as const,
    bias: true,
    dtype,
    ...o,
  });
  if (small) {
    return [
      { ...c(32, 64, 64), repeat: 1 },
      { ...c(16, 64, 64, { upsample: true }), repeat: 1 },
      { ...c(64, 32, 3), repeat: 1 },
    ];
  }
  return [
    c(128, 16, 512), // conv_in
    c(128, 512, 512), // mid / up.3 resnet conv
    c(128, 512, 512, { residual: true }),
    c(128, 512, 512, { upsample: true }), // up.3 upsample → 256²
    c(256, 512, 512), // up.2
    c(256, 512, 512, { upsample: true }), // up.2 upsample → 512²
    c(512, 256, 256), // up.1
    c(512, 256, 256, { upsample: true }), // up.1 upsample → 1024²
    c(1024, 128, 128), // up.0
    c(1024, 128, 128, { residual: true }),
    c(1024, 256, 128, { kernel: 1, bias: true }), // nin_shortcut 256 → 128
    c(1024, 128, 3), // conv_out
  ];
}

if (import.meta.main) {
  await benchMain({
    kernel: "conv2d",
    shapes: (dtype) => decoderShapes(dtype, Deno.args.includes("--small")),
    bench: benchConv2d,
    label,
    width: 44,
  });
}
