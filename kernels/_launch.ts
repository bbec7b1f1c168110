/**
 * Plumbing shared by the kernel launchers (kernels/<name>/<name>.ts) and their benchmarks:
 * common shape checks, checking a dispatch's buffers against the shape and listing its
 * bindings, the one-shot create → run → destroy, and the timing and printing every
 * `<name>_bench.ts` repeats.
 *
 * A launcher describes its storage bindings as {@linkcode BufferRow}s, in binding order (binding
 * 0 is always the uniform params): `[name, bytes, description]`, where `bytes` is the least size
 * the shape needs and 0 marks a binding this shape does not use (a placeholder is bound).
 * The shape checks here throw the messages several launchers share word for word
 * (`Cannot build <kernel>: …`); a launcher's own checks stay in the launcher.
 *
 * @module
 */
import type { Dispatch, Gpu } from "../gpu/device.ts";
import { GpuFeatureError } from "../gpu/errors.ts";
import { fmtTiming } from "./_bench.ts";
import { type KernelTimeOptions, type KernelTiming, timeKernel } from "./_gpu_time.ts";
import type { ActDtype } from "./_wgsl.ts";

/** One storage binding: its name, the bytes the shape needs (0 = unused) and the tensor expected. */
export type BufferRow<K extends string = string> = [name: K, bytes: number, desc: string];

/** The buffers of one dispatch by name; rows that need 0 bytes may be absent. */
export type NamedBuffers<K extends string> = Readonly<Partial<Record<K, GPUBuffer>>>;

/** A compiled kernel for one shape: what {@linkcode runOnce} and {@linkcode timeOp} drive. */
export interface Launchable<B> {
  /** A dispatch over `buffers`; throws before any GPU work when one is missing or too small. */
  dispatch(buffers: B): Dispatch;
  /** Release the op's own buffers. */
  destroy(): void;
}

/**
 * Throw a `RangeError` unless every `shape[key]` is an integer in 1 .. 2^31 - 1:
 * `Cannot build <kernel>: <KEY>=<v> must be a positive integer below 2^31` (a one-letter key
 * upper-cased, as in the notation M, K, N; a longer one as written).
 */
export function checkDims<K extends string>(
  shape: Readonly<Record<K, number>>,
  opts: { kernel: string; keys: readonly K[] },
): void {
  for (const key of opts.keys) {
    const v = shape[key];
    if (!Number.isInteger(v) || v < 1 || v >= 2 ** 31) {
      const label = key.length === 1 ? key.toUpperCase() : key;
      throw new RangeError(
        `Cannot build ${opts.kernel}: ${label}=${v} must be a positive integer below 2^31`,
      );
    }
  }
}

/** Throw a `TypeError` unless `dtype` is "f16" or "f32" (untyped callers may pass anything). */
export function checkDtype(kernel: string, dtype: ActDtype): void {
  if (dtype !== "f16" && dtype !== "f32") {
    throw new TypeError(`Cannot build ${kernel}: dtype "${dtype}" must be "f16" or "f32"`);
  }
}

/** Throw a `GpuFeatureError` when `dtype` is f16 and the device lacks `shader-f16`. */
export function checkShaderF16(gpu: Gpu, kernel: string, dtype: ActDtype): void {
  if (dtype === "f16" && !gpu.caps.shaderF16) {
    throw new GpuFeatureError(
      `Cannot build ${kernel} for f16: ${gpu.caps.adapter} lacks the WebGPU feature ` +
        '"shader-f16"; use dtype "f32"',
    );
  }
}

/**
 * Throw a `RangeError` when a dimension of `grid` exceeds the device's workgroups per
 * dimension: `Cannot <verb> <kernel>: <dims> needs a <a×b> grid, over this device's <max>
 * workgroups per dimension; <fix>`.
 */
export function checkGrid(
  gpu: Gpu,
  grid: readonly number[],
  opts: { kernel: string; verb: "build" | "run"; dims: string; fix: string },
): void {
  const max = gpu.caps.maxComputeWorkgroupsPerDimension;
  if (grid.some((g) => g > max)) {
    throw new RangeError(
      `Cannot ${opts.verb} ${opts.kernel}: ${opts.dims} needs a ${grid.join("×")} grid, over ` +
        `this device's ${max} workgroups per dimension; ${opts.fix}`,
    );
  }
}

/**
 * Throw a `RangeError` when a buffer of `rows` is over the device's storage binding size or holds
 * 2^`maxLog2` elements of `elementBytes` or more (the kernel's u32 indices would wrap).
 */
export function checkBindingSizes(
  gpu: Gpu,
  rows: readonly BufferRow[],
  opts: { kernel: string; elementBytes: number; maxLog2: number },
): void {
  const limit = gpu.caps.maxStorageBufferBindingSize;
  for (const [name, bytes, desc] of rows) {
    if (bytes > limit || bytes / opts.elementBytes >= 2 ** opts.maxLog2) {
      throw new RangeError(
        `Cannot build ${opts.kernel}: ${name} ${desc} has ${bytes} bytes, over this device's ` +
          `${limit}-byte storage binding limit (or 2^${opts.maxLog2} elements); split the batch`,
      );
    }
  }
}

/** Options of {@linkcode bindBuffers}. */
export interface BindOptions<K extends string> {
  /** Kernel name for the error messages (`Cannot run <kernel>: …`). */
  kernel: string;
  /** The uniform params buffer, binding 0. */
  params: GPUBuffer;
  /**
   * What to bind for a row that needs 0 bytes: a placeholder buffer, or a function of the row's
   * name and the buffer the caller passed (if any). Without it such a row is checked like any
   * other.
   */
  unused?: GPUBuffer | ((name: K, given: GPUBuffer | undefined) => GPUBuffer);
}

/**
 * Check every buffer of `rows` in `buffers` (present, at least `bytes` long) and return the
 * bindings of the dispatch: params, then one buffer per row. Throws a `TypeError`
 * `Cannot run <kernel>: <name> is missing, expected <desc>` or
 * `Cannot run <kernel>: <name> has <size> bytes, expected <desc> = <bytes> bytes or more`.
 *
 * @example
 * ```ts ignore
 * import { bindBuffers } from "../_launch.ts";
 * // inside a launcher's dispatch(buffers):
 * const bindings = bindBuffers([
 *   ["x", m * k * 4, `[M=${m}, K=${k}] f32`],
 *   ["bias", hasBias ? n * 4 : 0, `[N=${n}] f32`],
 *   ["y", m * n * 4, `[M=${m}, N=${n}] f32`],
 * ], buffers, { kernel: "my_kernel", params, unused: dummy });
 * ```
 */
export function bindBuffers<K extends string>(
  rows: readonly BufferRow<K>[],
  buffers: NamedBuffers<K>,
  opts: BindOptions<K>,
): GPUBuffer[] {
  const { kernel, unused } = opts;
  const bindings = [opts.params];
  for (const [name, bytes, desc] of rows) {
    const buf = buffers[name];
    if (bytes === 0 && unused) {
      bindings.push(typeof unused === "function" ? unused(name, buf) : unused);
      continue;
    }
    if (!buf) throw new TypeError(`Cannot run ${kernel}: ${name} is missing, expected ${desc}`);
    if (buf.size < bytes) {
      throw new TypeError(
        `Cannot run ${kernel}: ${name} has ${buf.size} bytes, expected ${desc} = ${bytes} bytes ` +
          "or more",
      );
    }
    bindings.push(buf);
  }
  return bindings;
}

/**
 * Throw a `TypeError` when the two buffers of a pair `[written, other]` are the same buffer:
 * WebGPU refuses a buffer that is written and bound twice in one dispatch.
 */
export function checkDistinct<K extends string>(
  buffers: NamedBuffers<K>,
  opts: { kernel: string; pairs: readonly [K, K][] },
): void {
  for (const [a, b] of opts.pairs) {
    if (buffers[a] === buffers[b]) {
      throw new TypeError(
        `Cannot run ${opts.kernel}: ${a} and ${b} are the same buffer; pass a separate ` +
          "buffer (WebGPU refuses a written buffer bound twice)",
      );
    }
  }
}

/**
 * Create an op, run one dispatch of it with `gpu.runChecked` (step `run <kernel>`) and destroy
 * it, also when the dispatch or the run throws: the body of every one-shot launcher function.
 */
export async function runOnce<B>(
  gpu: Gpu,
  opts: { kernel: string; create: () => Promise<Launchable<B>>; buffers: B },
): Promise<void> {
  const op = await opts.create();
  try {
    await gpu.runChecked(`run ${opts.kernel}`, [op.dispatch(opts.buffers)]);
  } finally {
    op.destroy();
  }
}

/** Options of {@linkcode timeOp}: the buffers to create and the figures of one dispatch. */
export interface TimeOpOptions<K extends string> extends Omit<KernelTimeOptions, "bytes"> {
  /** The op's buffers; each row that needs bytes gets a zeroed `buffer bench <name>`. */
  rows: readonly BufferRow<K>[];
  /** Bytes that must cross memory per dispatch; default the sum of `rows` (each moved once). */
  bytes?: number;
}

/**
 * Time one dispatch of `op` on zeroed buffers (speed does not depend on the values) with
 * {@linkcode timeKernel}, then destroy `op` and the buffers. `op` is taken over.
 */
export async function timeOp<B>(
  gpu: Gpu,
  op: Launchable<B>,
  opts: TimeOpOptions<keyof B & string>,
): Promise<KernelTiming> {
  const { rows, ...timing } = opts;
  const bytes = opts.bytes ?? rows.reduce((sum, [, b]) => sum + b, 0);
  const buffers: Partial<Record<string, GPUBuffer>> = {};
  try {
    for (const [name, size] of rows) {
      if (size > 0) buffers[name] = await gpu.createBuffer(`buffer bench ${name}`, size);
    }
    // every row that needs bytes has its buffer; the others are optional in B
    return await timeKernel(gpu, [op.dispatch(buffers as B)], { ...timing, bytes });
  } finally {
    op.destroy();
    gpu.destroy(...Object.values(buffers));
  }
}

/** Options of {@linkcode benchMain}. */
export interface BenchMainOptions<S> {
  /** Kernel name for the heading. */
  kernel: string;
  /** The shapes to time, for the adapter's best dtype; `large` is `--large` on the command line. */
  shapes: (dtype: ActDtype, large: boolean) => S[];
  /** Time one shape. */
  bench: (gpu: Gpu, shape: S) => Promise<KernelTiming>;
  /** A shape's label. */
  label: (shape: S) => string;
  /** Columns the label is padded to. */
  width: number;
}

/**
 * The `import.meta.main` body of a benchmark: time each shape on the default GPU (f16 where the
 * adapter has `shader-f16`, else f32) and print one line per shape.
 */
export async function benchMain<S>(opts: BenchMainOptions<S>): Promise<void> {
  const { getGpu } = await import("../gpu/device.ts");
  const gpu = await getGpu();
  const large = Deno.args.includes("--large");
  const dtype: ActDtype = gpu.caps.shaderF16 ? "f16" : "f32";
  const shapes = opts.shapes(dtype, large);
  console.log(`${opts.kernel} on ${gpu.caps.adapter}`);
  for (const s of shapes) {
    const t = await opts.bench(gpu, s);
    console.log(`${opts.label(s).padEnd(opts.width)} ${fmtTiming(t)} (${t.clock} clock)`);
  }
}
