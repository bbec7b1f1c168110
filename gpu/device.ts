/**
 * The device layer: one `Gpu` object wraps a WebGPU adapter + device with the adapter's own
 * limits, the optional features the kernels use, error scopes that name each step, buffer
 * helpers that never leak, and a pipeline cache keyed by kernel + specialisation constants.
 *
 * @module
 */
import {
  GpuDeviceLostError,
  GpuFeatureError,
  GpuUnavailableError,
  GpuValidationError,
} from "./errors.ts";

/** Optional WebGPU features the kernels can use when present. */
export type OptionalFeature = "shader-f16" | "subgroups" | "timestamp-query";

const OPTIONAL_FEATURES: OptionalFeature[] = ["shader-f16", "subgroups", "timestamp-query"];

/** What the device offers, as found at start-up. */
export interface GpuCapabilities {
  /** Adapter description (vendor / driver), for logs and `/healthz`. */
  adapter: string;
  /** True for a software adapter such as Mesa's llvmpipe. */
  isFallback: boolean;
  /** The device has `shader-f16` (f16 activations in WGSL); false when `disableF16` was set. */
  shaderF16: boolean;
  /** The device has the `subgroups` feature. */
  subgroups: boolean;
  /** The device has `timestamp-query` (GPU-side kernel timing). */
  timestampQuery: boolean;
  /** Largest storage-buffer binding, in bytes (the adapter's own limit, requested at start-up). */
  maxStorageBufferBindingSize: number;
  /** Largest buffer, in bytes. */
  maxBufferSize: number;
  /** Workgroup (`var<workgroup>`) memory per workgroup, in bytes. */
  maxComputeWorkgroupStorageSize: number;
  /** Most invocations (threads) in one workgroup. */
  maxComputeInvocationsPerWorkgroup: number;
  /** Largest workgroup size along x. */
  maxComputeWorkgroupSizeX: number;
  /** Most workgroups along each grid dimension of one dispatch (65535 on most devices). */
  maxComputeWorkgroupsPerDimension: number;
  /** Most storage buffers bound to one compute shader. */
  maxStorageBuffersPerShaderStage: number;
  /**
   * The WGSL compiler accepts `enable subgroups;` (Chrome requires it before subgroup builtins;
   * Deno's wgpu rejects it): found by compiling a probe shader, not by the engine's name.
   * {@linkcode Gpu.pipeline} adds the line to shaders that use subgroup builtins when true.
   */
  subgroupsEnable: boolean;
  /**
   * WGSL has `dot4I8Packed` (language feature `packed_4x8_integer_dot_product`, listed in
   * `navigator.gpu.wgslLanguageFeatures`; assumed present where that set is missing). The W4A4
   * kernels need it.
   */
  packed4x8: boolean;
}

/** Options for {@linkcode Gpu.create}. */
export interface GpuOptions {
  /** Passed to `requestAdapter`. Default `"high-performance"`. */
  powerPreference?: GPUPowerPreference;
  /** Features that must be present; a missing one throws `GpuFeatureError`. */
  requiredFeatures?: OptionalFeature[];
  /** Pretend `shader-f16` is absent (tests the f32 fallbacks). Default false. */
  disableF16?: boolean;
  /** Run the start-up self-test (a tiny GEMM checked on the CPU). Default true. */
  selfTest?: boolean;
  /**
   * Request these limits instead of the adapter's own (each capped at the adapter's): shows that
   * a model runs within the limits it declares (runtime/requirements.ts).
   */
  limits?: Record<string, number>;
}

/** One compute dispatch: a pipeline, its bindings (group 0, in binding order) and its grid. */
export interface Dispatch {
  /** The compute pipeline, as built by {@linkcode Gpu.pipeline}. */
  pipeline: GPUComputePipeline;
  /** Buffers for group 0, `bindings[i]` at binding i (by convention 0 is the uniform params). */
  bindings: GPUBuffer[];
  /** Workgroup counts `[x, y = 1, z = 1]`, each at most `maxComputeWorkgroupsPerDimension`. */
  workgroups: [number, number?, number?];
}

const STORAGE = 0x0080 | 0x0004 | 0x0008; // STORAGE | COPY_SRC | COPY_DST
const UPLOAD_CHUNK = 16 << 20; // bytes per writeBuffer of an upload (a multiple of 4)

/**
 * A WebGPU device with the module's conventions.
 *
 * @example
 * ```ts ignore
 * import { Gpu } from "./device.ts";
 * const gpu = await Gpu.create();
 * console.log(gpu.caps.adapter, gpu.caps.shaderF16);
 * const buf = await gpu.upload("buffer example", new Float32Array([1, 2, 3, 4]));
 * console.log(new Float32Array(await gpu.read(buf)));
 * gpu.destroy(buf);
 * ```
 */
export class Gpu {
  /** The WebGPU adapter the device came from. */
  readonly adapter: GPUAdapter;
  /** The WebGPU device (prefer the helpers, which add error scopes). */
  readonly device: GPUDevice;
  /** Features and limits found at start-up. */
  readonly caps: GpuCapabilities;
  #lostReason: string | null = null;
  #pendingWrites = false;
  #pipelines = new Map<string, Promise<GPUComputePipeline>>();
  // Bind groups are cached per Dispatch object: a graph that replays the same dispatches every
  // step creates none after the first (creating them per submit costs CPU time and, in Deno,
  // memory that is only returned when the garbage collector runs).
  #bindGroups = new WeakMap<Dispatch, GPUBindGroup>();

  private constructor(adapter: GPUAdapter, device: GPUDevice, caps: GpuCapabilities) {
    this.adapter = adapter;
    this.device = device;
    this.caps = caps;
    device.lost.then((info) => {
      this.#lostReason = info.message || info.reason || "unknown reason";
    });
  }

  /** Acquire an adapter and a device with the adapter's own limits and the optional features. */
  static async create(options: GpuOptions = {}): Promise<Gpu> {
    if (typeof navigator === "undefined" || !("gpu" in navigator) || !navigator.gpu) {
      throw new GpuUnavailableError(
        "Cannot find WebGPU: this runtime has no navigator.gpu. Use Deno 2.x (WebGPU is built in)",
      );
    }
    ensureRuntimeDir();
    const adapter = await navigator.gpu.requestAdapter({
      powerPreference: options.powerPreference ?? "high-performance",
    });
    if (!adapter) {
      throw new GpuUnavailableError(
        "Cannot find a WebGPU adapter: install your GPU's Vulkan/Metal/D3D12 driver, or on " +
          "Linux without a GPU install Mesa's software Vulkan (apt-get install mesa-vulkan-drivers)",
      );
    }
    const wanted = OPTIONAL_FEATURES.filter((f) =>
      adapter.features.has(f) || (f === "subgroups" && canRequestSubgroups(adapter))
    ).filter((f) => !(f === "shader-f16" && options.disableF16));
    for (const f of options.requiredFeatures ?? []) {
      if (!wanted.includes(f)) {
        throw new GpuFeatureError(
          `Cannot use adapter ${describe(adapter)}: it lacks the WebGPU feature "${f}"; ` +
            "update the GPU driver or run without the option that needs it",
        );
      }
    }
    const l = adapter.limits;
    const requiredLimits: Record<string, number> = {
      maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
      maxBufferSize: l.maxBufferSize,
      maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
      maxComputeWorkgroupSizeY: l.maxComputeWorkgroupSizeY,
      maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
      maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
    };
    if (options.limits) {
      for (const k of Object.keys(requiredLimits)) delete requiredLimits[k];
      for (const [k, v] of Object.entries(options.limits)) {
        requiredLimits[k] = Math.min(v, (l as unknown as Record<string, number>)[k] ?? v);
      }
    }
    let device: GPUDevice;
    try {
      device = await requestDevice(adapter, wanted, requiredLimits);
    } catch (e) {
      throw new GpuUnavailableError(
        `Cannot create a device on ${describe(adapter)}: ${(e as Error).message}`,
      );
    }
    const caps: GpuCapabilities = {
      adapter: describe(adapter),
      isFallback: Boolean(
        (adapter as { info?: { isFallbackAdapter?: boolean } }).info
          ?.isFallbackAdapter,
      ),
      shaderF16: device.features.has("shader-f16"),
      subgroups: device.features.has("subgroups"),
      timestampQuery: device.features.has("timestamp-query"),
      maxStorageBufferBindingSize: device.limits.maxStorageBufferBindingSize,
      maxBufferSize: device.limits.maxBufferSize,
      maxComputeWorkgroupStorageSize: device.limits.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: device.limits.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: device.limits.maxComputeWorkgroupSizeX,
      maxComputeWorkgroupsPerDimension: device.limits.maxComputeWorkgroupsPerDimension,
      maxStorageBuffersPerShaderStage: device.limits.maxStorageBuffersPerShaderStage,
      subgroupsEnable: device.features.has("subgroups") && await acceptsEnableSubgroups(device),
      packed4x8: hasWgslFeature("packed_4x8_integer_dot_product"),
    };
    const gpu = new Gpu(adapter, device, caps);
    if (options.selfTest ?? true) {
      const { selfTest } = await import("./self_test.ts");
      await selfTest(gpu);
    }
    return gpu;
  }

  /** True once the device is lost; every later call throws `GpuDeviceLostError`. */
  get lost(): boolean {
    return this.#lostReason !== null;
  }

  /** Throw `GpuDeviceLostError` if the device is gone. */
  assertAlive(): void {
    if (this.#lostReason !== null) {
      throw new GpuDeviceLostError(
        `Cannot use the GPU: the device was lost (${this.#lostReason}); ` +
          "call getGpu() again to re-initialise it",
      );
    }
  }

  /**
   * Run `fn` inside validation, out-of-memory and internal error scopes; any error captured
   * is thrown as a `GpuValidationError` naming `step`.
   */
  async scoped<T>(step: string, fn: () => T | Promise<T>): Promise<T> {
    this.assertAlive();
    const d = this.device;
    d.pushErrorScope("internal");
    d.pushErrorScope("out-of-memory");
    d.pushErrorScope("validation");
    let result: T | undefined;
    let thrown: unknown = null;
    try {
      result = await fn();
    } catch (e) {
      thrown = e;
    }
    const errors = [await d.popErrorScope(), await d.popErrorScope(), await d.popErrorScope()];
    if (thrown) {
      if (thrown instanceof GpuValidationError) throw thrown;
      throw new GpuValidationError(step, (thrown as Error).message ?? String(thrown));
    }
    const err = errors.find((e) => e !== null);
    if (err) {
      const kind = errors[1] ? "out of GPU memory: " : "";
      throw new GpuValidationError(step, kind + err.message);
    }
    this.assertAlive();
    return result as T;
  }

  /** A storage buffer of `size` bytes (rounded up to 4), created in an error scope. */
  createBuffer(step: string, size: number, usage: number = STORAGE): Promise<GPUBuffer> {
    const bytes = Math.max(4, align4(size));
    if (bytes > this.caps.maxBufferSize) {
      throw new RangeError(
        `Cannot ${step}: ${bytes} bytes exceed this adapter's maxBufferSize ` +
          `(${this.caps.maxBufferSize}); shard the tensor`,
      );
    }
    return this.scoped(step, () => this.device.createBuffer({ label: step, size: bytes, usage }));
  }

  /** Create a buffer holding `data` (padded to 4 bytes) and submit the write. */
  async upload(step: string, data: ArrayBufferView, usage: number = STORAGE): Promise<GPUBuffer> {
    if ((usage & 0x0080) && data.byteLength > this.caps.maxStorageBufferBindingSize) {
      throw new RangeError(
        `Cannot ${step}: ${data.byteLength} bytes exceed this adapter's ` +
          `maxStorageBufferBindingSize (${this.caps.maxStorageBufferBindingSize}); the tensor must ` +
          "be split (e.g. along N) before it can be bound",
      );
    }
    const buf = await this.createBuffer(step, data.byteLength, usage | 0x0008);
    // Written in pieces, each submitted, so the staging memory of a large tensor stays bounded.
    const bytes = new Uint8Array(data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
    for (let o = 0; o < bytes.byteLength; o += UPLOAD_CHUNK) {
      this.write(buf, bytes.subarray(o, Math.min(o + UPLOAD_CHUNK, bytes.byteLength)), o);
      this.device.queue.submit([]);
    }
    this.#pendingWrites = false;
    return buf;
  }

  /** A uniform buffer holding `data`. */
  uniform(step: string, data: ArrayBufferView): Promise<GPUBuffer> {
    return this.upload(step, data, 0x0040 | 0x0008); // UNIFORM | COPY_DST
  }

  /** `queue.writeBuffer`, padded to a multiple of 4 bytes. */
  write(buffer: GPUBuffer, data: ArrayBufferView, offset = 0): void {
    this.assertAlive();
    const bytes = new Uint8Array(data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
    if (bytes.byteLength % 4 === 0) {
      this.device.queue.writeBuffer(buffer, offset, bytes);
    } else {
      const padded = new Uint8Array(align4(bytes.byteLength));
      padded.set(bytes);
      this.device.queue.writeBuffer(buffer, offset, padded);
    }
    this.#pendingWrites = true;
  }

  /** Copy `byteLength` bytes (default: the whole buffer) back to the CPU. */
  async read(buffer: GPUBuffer, byteLength = buffer.size, offset = 0): Promise<ArrayBuffer> {
    this.assertAlive();
    const size = align4(byteLength);
    const staging = await this.createBuffer(
      `buffer readback of ${buffer.label || "buffer"}`,
      size,
      0x0001 | 0x0008, // MAP_READ | COPY_DST
    );
    const enc = this.device.createCommandEncoder();
    enc.copyBufferToBuffer(buffer, offset, staging, 0, size);
    this.device.queue.submit([enc.finish()]);
    this.#pendingWrites = false;
    try {
      await staging.mapAsync(0x0001);
    } catch (e) {
      staging.destroy();
      this.assertAlive();
      throw new GpuValidationError(`read ${buffer.label || "buffer"}`, (e as Error).message);
    }
    const out = staging.getMappedRange(0, size).slice(0, byteLength);
    staging.unmap();
    staging.destroy();
    return out;
  }

  /** Destroy buffers, first submitting pending writes so their staging memory is freed. */
  destroy(...buffers: (GPUBuffer | undefined)[]): void {
    if (this.#pendingWrites && !this.lost) {
      this.device.queue.submit([]);
      this.#pendingWrites = false;
    }
    for (const b of buffers) b?.destroy();
  }

  /**
   * A compute pipeline for `wgsl`, cached by `name` + `constants`; created asynchronously in an
   * error scope named `pipeline <name>`. Callers must keep `wgsl` a pure function of `name` +
   * `constants` (it is the cache key).
   */
  pipeline(
    name: string,
    wgsl: string,
    constants: Record<string, number> = {},
    entryPoint = name,
  ): Promise<GPUComputePipeline> {
    const key = name + JSON.stringify(Object.entries(constants).sort());
    let p = this.#pipelines.get(key);
    if (!p) {
      if (this.caps.subgroupsEnable && usesSubgroups(wgsl)) wgsl = "enable subgroups;\n" + wgsl;
      p = this.scoped(`pipeline ${name}`, async () => {
        const module = this.device.createShaderModule({ label: name, code: wgsl });
        const info = await module.getCompilationInfo();
        const errs = info.messages.filter((m) => m.type === "error");
        if (errs.length) {
          throw new Error(
            errs.map((m) => `line ${m.lineNum}:${m.linePos} ${m.message}`).join("; "),
          );
        }
        return this.device.createComputePipelineAsync({
          label: name,
          layout: "auto",
          compute: { module, entryPoint, constants },
        });
      });
      this.#pipelines.set(key, p);
      p.catch(() => this.#pipelines.delete(key));
    }
    return p;
  }

  /** Encode `dispatches` in one compute pass (in order) and submit them. */
  run(dispatches: Dispatch[], label = "dispatch"): void {
    this.assertAlive();
    const enc = this.device.createCommandEncoder({ label });
    const pass = enc.beginComputePass({ label });
    for (const d of dispatches) {
      let bindGroup = this.#bindGroups.get(d);
      if (!bindGroup) {
        bindGroup = this.device.createBindGroup({
          layout: d.pipeline.getBindGroupLayout(0),
          entries: d.bindings.map((buffer, binding) => ({ binding, resource: { buffer } })),
        });
        this.#bindGroups.set(d, bindGroup);
      }
      pass.setPipeline(d.pipeline);
      pass.setBindGroup(0, bindGroup);
      const [x, y = 1, z = 1] = d.workgroups;
      const max = this.caps.maxComputeWorkgroupsPerDimension;
      if (x > max || y > max || z > max) {
        throw new RangeError(
          `Cannot dispatch ${d.pipeline.label}: grid ${x}×${y}×${z} exceeds ` +
            `maxComputeWorkgroupsPerDimension (${max})`,
        );
      }
      pass.dispatchWorkgroups(x, y, z);
    }
    pass.end();
    this.device.queue.submit([enc.finish()]);
    this.#pendingWrites = false;
  }

  /** Like {@linkcode run}, inside an error scope named `step`, awaiting completion. */
  runChecked(step: string, dispatches: Dispatch[]): Promise<void> {
    return this.scoped(step, async () => {
      this.run(dispatches, step);
      await this.device.queue.onSubmittedWorkDone();
    });
  }

  /** Wait for all submitted work. */
  async sync(): Promise<void> {
    this.assertAlive();
    await this.device.queue.onSubmittedWorkDone();
    this.assertAlive();
  }

  /** Release the device. */
  close(): void {
    if (!this.lost) this.device.destroy();
  }
}

let current: Promise<Gpu> | null = null;

/**
 * The process-wide GPU, created on first use and re-created after a device loss.
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "./device.ts";
 * const gpu = await getGpu();
 * console.log(gpu.caps.adapter);
 * ```
 */
export async function getGpu(options?: GpuOptions): Promise<Gpu> {
  if (current) {
    try {
      const gpu = await current;
      if (!gpu.lost) return gpu;
    } catch {
      // a failed creation is retried below
    }
  }
  current = Gpu.create(options);
  return current;
}

let runtimeDirChecked = false;

/**
 * Points `XDG_RUNTIME_DIR` at a private temporary folder (mode 0700, removed at exit) when it is
 * unset or not a private folder, before the first adapter request: Mesa's Vulkan drivers
 * otherwise print `error: XDG_RUNTIME_DIR is invalid or not set` on every GPU command, which
 * reads like a failure and is none. Without permission to read or set the environment it does
 * nothing. Called by {@linkcode Gpu.create}; idempotent.
 */
export function ensureRuntimeDir(): void {
  if (runtimeDirChecked) return;
  runtimeDirChecked = true;
  if (typeof Deno === "undefined") return; // a browser: no environment to fix
  try {
    const dir = Deno.env.get("XDG_RUNTIME_DIR");
    if (dir?.startsWith("/")) {
      try {
        const st = Deno.statSync(dir);
        if (st.isDirectory && st.mode !== null && (st.mode & 0o077) === 0) return;
      } catch {
        // missing or unreadable: replaced below
      }
    }
    const own = Deno.makeTempDirSync({ prefix: "w4-xdg-" });
    Deno.chmodSync(own, 0o700);
    Deno.env.set("XDG_RUNTIME_DIR", own);
    globalThis.addEventListener("unload", () => {
      try {
        Deno.removeSync(own, { recursive: true });
      } catch { /* already gone */ }
    });
  } catch {
    // no --allow-env / --allow-write: leave the environment as it is
  }
}

/** Round up to a multiple of 4 bytes (WebGPU's copy alignment). */
export function align4(n: number): number {
  return Math.ceil(n / 4) * 4;
}

function describe(adapter: GPUAdapter): string {
  const info = (adapter as { info?: GPUAdapterInfo }).info;
  if (!info) return "unknown adapter";
  return [info.vendor, info.architecture, info.description].filter((s) => s).join(" ") ||
    "unknown adapter";
}

function canRequestSubgroups(adapter: GPUAdapter): boolean {
  // Deno's wgpu accepts the feature on adapters that do not list it (checked on llvmpipe); the
  // request below falls back to no subgroups if the device refuses.
  return "subgroupMinSize" in ((adapter as { info?: object }).info ?? {});
}

async function requestDevice(
  adapter: GPUAdapter,
  features: OptionalFeature[],
  requiredLimits: Record<string, number>,
): Promise<GPUDevice> {
  try {
    return await adapter.requestDevice({
      requiredFeatures: features as GPUFeatureName[],
      requiredLimits,
    });
  } catch (e) {
    if (!features.includes("subgroups")) throw e;
    return adapter.requestDevice({
      requiredFeatures: features.filter((f) => f !== "subgroups") as GPUFeatureName[],
      requiredLimits,
    });
  }
}

/**
 * Whether `wgsl` calls subgroup builtins (`subgroupAdd`, `subgroupShuffle`, …) or reads the
 * `subgroup_size` / `subgroup_invocation_id` builtins, and has no `enable subgroups;` yet.
 */
export function usesSubgroups(wgsl: string): boolean {
  return /\bsubgroup[A-Z]\w*\s*\(|\bsubgroup_(size|invocation_id)\b/.test(wgsl) &&
    !/^\s*enable\s+[^;]*\bsubgroups\b/m.test(wgsl);
}

/** Whether the WGSL compiler accepts `enable subgroups;` (a probe shader, compiled once). */
async function acceptsEnableSubgroups(device: GPUDevice): Promise<boolean> {
  device.pushErrorScope("validation");
  const module = device.createShaderModule({
    label: "probe enable subgroups",
    code: "enable subgroups;\n@compute @workgroup_size(1) fn probe() {}",
  });
  const info = await module.getCompilationInfo();
  const scoped = await device.popErrorScope();
  return scoped === null && !info.messages.some((m) => m.type === "error");
}

/** Whether `navigator.gpu.wgslLanguageFeatures` lists `name` (true when the set is missing). */
function hasWgslFeature(name: string): boolean {
  const set = (navigator.gpu as { wgslLanguageFeatures?: ReadonlySet<string> })
    .wgslLanguageFeatures;
  return set ? set.has(name) : true;
}
