/**
 * What the web app asks of the GPU side: the {@linkcode Engine} interface (so handler tests can
 * inject a fake one and need no GPU) and {@linkcode PipelineEngine}, the real one over
 * `runtime/pipeline.ts`, which serves the models of a fixed registry (ids, never paths).
 *
 * @module
 */
import { getGpu } from "../runtime/device.ts";
import { GpuDeviceLostError } from "../runtime/errors.ts";
import { ModelFile } from "../runtime/model_file.ts";
import { hasParoPlan } from "../quant/paro_store.ts";
import { Pipeline, type SamplerName } from "../runtime/pipeline.ts";

/** One served model, as `/api/models` lists it. */
export interface ModelInfo {
  /** Registry id, e.g. `dit-emoji-int4`. */
  id: string;
  /** `float`, `int4`, `nvfp4`, `w4a16`, … (from the file). */
  precision: string;
  /** `dense`, or `sparse` (PAROAttention with the file's plan). */
  attention: "dense" | "sparse";
  /** Class names; index = class id. */
  classes: string[];
  /** Image side in pixels. */
  size: number;
  /** Image channels (3). */
  channels: number;
}

/** One validated generation. */
export interface EngineRequest {
  /** Registry id of the model. */
  model: string;
  /** Class id. */
  classId: number;
  /** Seed, 0..2³²−1. */
  seed: number;
  /** Denoising steps. */
  steps: number;
  /** Guidance scale. */
  cfg: number;
  /** Sampler. */
  sampler: SamplerName;
  /** Stops the denoising loop. */
  signal: AbortSignal;
  /** After each step; `preview()` gives the current x̂₀ as [1, C, S, S] in [-1, 1]. */
  onStep?: (done: number, total: number, preview: () => Float32Array) => void;
}

/** A finished generation. */
export interface EngineResult {
  /** [1, C, S, S] in about [-1, 1]. */
  image: Float32Array;
  /** Milliseconds per step. */
  stepMs: number[];
  /** Milliseconds of the loop. */
  totalMs: number;
}

/** The GPU side of the app. */
export interface Engine {
  /** The served models; the first is the default. */
  models(): ModelInfo[];
  /** Health for `/healthz`. */
  health(): { ready: boolean; device: string };
  /** Generate one image. */
  generate(req: EngineRequest): Promise<EngineResult>;
}

/** One registry entry: an id (`[a-z0-9][a-z0-9._-]*`) and the file it names. */
export interface RegistryEntry {
  /** The id requests name. */
  id: string;
  /** The model file (float or pre-quantized). */
  path: string;
  /** `sparse`: sparse + quantized attention with the plan stored in the file (default dense). */
  attention?: "dense" | "sparse";
  /** Activation dtype (default f16 where the device has shader-f16); f32 matches a browser's f32 path. */
  dtype?: "f16" | "f32";
}

/** Ids requests may name: lower-case letters, digits, `.`, `_`, `-`; no slashes. */
export const MODEL_ID = /^[a-z0-9][a-z0-9._-]{0,63}$/;

/**
 * The real engine: loads the default model at start, others on first use; after a device loss
 * it drops every loaded pipeline so that the next request re-initialises the device.
 *
 * @example
 * ```ts ignore
 * import { PipelineEngine } from "./engine.ts";
 * const engine = await PipelineEngine.create([{ id: "tiny", path: "tests/fixtures/tiny_dit.safetensors" }]);
 * console.log(engine.models()[0].classes);
 * ```
 */
export class PipelineEngine implements Engine {
  #registry: RegistryEntry[];
  #infos: ModelInfo[];
  #loaded = new Map<string, Promise<Pipeline>>();
  #device = "not initialised";

  private constructor(registry: RegistryEntry[], infos: ModelInfo[]) {
    this.#registry = registry;
    this.#infos = infos;
  }

  /** Read each entry's header, then load the first (default) model on the GPU. */
  static async create(registry: RegistryEntry[]): Promise<PipelineEngine> {
    if (registry.length === 0) {
      throw new RangeError("Cannot serve: the model registry is empty; give --model FILE");
    }
    const infos: ModelInfo[] = [];
    for (const e of registry) {
      if (!MODEL_ID.test(e.id)) {
        throw new RangeError(
          `Cannot register model "${e.id}": ids use a-z, 0-9, ".", "_", "-" (64 at most)`,
        );
      }
      const f = await ModelFile.open(e.path);
      try {
        if (e.attention === "sparse" && !hasParoPlan(f)) {
          throw new RangeError(
            `Cannot register model "${e.id}" with sparse attention: ${e.path} has no ` +
              "sparse-attention plan (quantize it with --paro DENSITY)",
          );
        }
        const c = f.config as Record<string, unknown>;
        const n = c.num_classes as number;
        const names = (c.class_names as string[] | undefined) ??
          Array.from({ length: n }, (_, i) => `class ${i}`);
        infos.push({
          id: e.id,
          precision: f.precision,
          attention: e.attention ?? "dense",
          classes: names,
          size: c.input_size as number,
          channels: c.in_channels as number,
        });
      } finally {
        f.close();
      }
    }
    const engine = new PipelineEngine(registry, infos);
    await engine.#pipeline(registry[0].id);
    return engine;
  }

  models(): ModelInfo[] {
    return this.#infos;
  }

  health(): { ready: boolean; device: string } {
    return { ready: this.#loaded.size > 0, device: this.#device };
  }

  async generate(req: EngineRequest): Promise<EngineResult> {
    const pipe = await this.#pipeline(req.model);
    try {
      const r = await pipe.generate({
        classes: [req.classId],
        seed: req.seed,
        steps: req.steps,
        cfg: req.cfg,
        sampler: req.sampler,
        signal: req.signal,
        onStep: req.onStep,
      });
      return { image: r.images, stepMs: r.stepMs, totalMs: r.totalMs };
    } catch (e) {
      if (e instanceof GpuDeviceLostError) this.#reset();
      throw e;
    }
  }

  /** Release every loaded model. */
  destroy(): void {
    this.#reset();
  }

  #reset(): void {
    const old = [...this.#loaded.values()];
    this.#loaded.clear();
    this.#device = "lost; re-initialised on the next request";
    for (const p of old) p.then((x) => x.destroy(), () => {});
  }

  #pipeline(id: string): Promise<Pipeline> {
    let p = this.#loaded.get(id);
    if (!p) {
      const entry = this.#registry.find((e) => e.id === id);
      if (!entry) throw new RangeError(`Cannot find model "${id}": see /api/models`);
      p = (async () => {
        const gpu = await getGpu();
        this.#device = gpu.caps.adapter;
        return await Pipeline.load(gpu, entry.path, {
          images: 1,
          attention: entry.attention ?? "dense",
          dtype: entry.dtype,
        });
      })();
      this.#loaded.set(id, p);
      p.catch((e) => {
        if (this.#loaded.get(id) === p) this.#loaded.delete(id);
        if (e instanceof GpuDeviceLostError) this.#reset();
      });
    }
    return p;
  }
}
