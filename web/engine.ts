/**
 * What the web app asks of the GPU side: the {@linkcode Engine} interface (so handler tests can
 * inject a fake one and need no GPU) and {@linkcode PipelineEngine}, the real one over
 * `runtime/pipeline.ts`, which serves the models of a fixed registry (ids, never paths).
 *
 * @module
 */
import { getGpu } from "../gpu/device.ts";
import { GpuDeviceLostError } from "../gpu/errors.ts";
import { ModelFile } from "../runtime/model_file.ts";
import { hasParoPlan } from "../quant/paro_store.ts";
import { Pipeline, type SamplerName } from "../runtime/pipeline.ts";
import { type LatentDecoder, loadDecoder } from "../cli/_decoder.ts";
import { AeCheckpoint } from "../runtime/autoencoder_keys.ts";
import { fluxModelInfo, latentPreview, ResidentFlux } from "../runtime/flux/resident.ts";

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
  /** A text-to-image model (FLUX): `prompt` is free text and `classes` is empty. */
  text?: boolean;
}

/** One validated generation. */
export interface EngineRequest {
  /** Registry id of the model. */
  model: string;
  /** Class id (class-conditional models). */
  classId: number;
  /** The prompt (text-to-image models). */
  prompt?: string;
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
  /**
   * After each step; `preview()` gives the current x̂₀ as [1, C, S, S] in [-1, 1] (for a latent
   * model, asynchronously: decoded by the preview decoder).
   */
  onStep?: (
    done: number,
    total: number,
    preview: () => Float32Array | Promise<Float32Array>,
  ) => void;
  /** Idempotency key of the request (a fleet front end returns the same image for it). */
  key?: string;
  /** Who asks (the Authorization header), for per-caller limits; engines may ignore it. */
  caller?: string;
  /** A new delivery of the job began (a fleet worker died or failed): attempt 2, 3, … */
  onRetry?: (attempt: number) => void;
}

/** A finished generation. */
export interface EngineResult {
  /** [1, C, S, S] in about [-1, 1]. */
  image: Float32Array;
  /** Milliseconds per step. */
  stepMs: number[];
  /** Milliseconds of the loop. */
  totalMs: number;
  /** The image already encoded (a fleet worker's PNG); then `image` may be empty. */
  png?: Uint8Array;
  /** The seed the image was made with, when it differs from the request's (a reused key). */
  seed?: number;
  /**
   * Text-to-image: the encoders that cut the prompt to their token limit ("clip", "t5"), and
   * the warning to show; absent when the prompt fit.
   */
  truncated?: { parts: string[]; warning: string };
}

/** The GPU side of the app. */
export interface Engine {
  /** The served models; the first is the default. */
  models(): ModelInfo[];
  /** Health for `/healthz`. */
  health(): { ready: boolean; device: string };
  /** Generate one image. */
  generate(req: EngineRequest): Promise<EngineResult>;
  /** Extra state for `/healthz` and `/api/models` (a fleet: workers, queue depth). */
  status?(): unknown;
}

/** One registry entry: an id (`[a-z0-9][a-z0-9._-]*`) and the file it names. */
export interface RegistryEntry {
  /** The id requests name. */
  id: string;
  /** The model file (float or pre-quantized). */
  path: string;
  /** `sparse`: sparse + quantized attention with the plan stored in the file (default dense). */
  attention?: "dense" | "sparse";
  /** Latent models: the autoencoder (a .safetensors file or a diffusers folder) for the image. */
  vae?: string;
  /** Latent models: a TAESD-family decoder for the live previews (default: the `vae`). */
  preview?: string;
  /** Activation dtype (default f16 where the device has shader-f16); f32 matches a browser's f32 path. */
  dtype?: "f16" | "f32";
  /**
   * FLUX: free the text encoders' GPU memory after each new prompt's encoding (`deno task
   * serve --offload-text`); they reload for the next uncached prompt.
   */
  offloadText?: boolean;
}

/** A loaded model: a FLUX model, or a DiT pipeline and for a latent model its decoders. */
interface Loaded {
  flux?: ResidentFlux;
  pipe?: Pipeline;
  vae?: LatentDecoder;
  preview?: LatentDecoder;
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
  #loaded = new Map<string, Promise<Loaded>>();
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
      const flux = await fluxModelInfo(e.path).catch(() => null);
      if (flux) {
        infos.push({
          id: e.id,
          precision: flux.precision,
          attention: "dense",
          classes: [],
          size: flux.size,
          channels: 3,
          text: true,
        });
        continue;
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
        let size = c.input_size as number, channels = c.in_channels as number;
        if (c.latent === true || e.vae) { // a latent model: the image comes from the autoencoder
          if (!e.vae) {
            throw new RangeError(
              `Cannot register model "${e.id}": ${e.path} makes ${channels}-channel latents; ` +
                "give its autoencoder (vae) in the registry",
            );
          }
          const ae = await AeCheckpoint.open(e.vae);
          size *= 2 ** (ae.config.chMult.length - 1);
          channels = ae.config.outChannels;
          ae.close();
        }
        const names = (c.class_names as string[] | undefined) ??
          Array.from({ length: n }, (_, i) => `class ${i}`);
        infos.push({
          id: e.id,
          precision: f.precision,
          attention: e.attention ?? "dense",
          classes: names,
          size,
          channels,
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
    const loaded = await this.#pipeline(req.model), { flux, vae, preview } = loaded;
    try {
      if (flux) {
        const [h, w] = flux.pipe.latentSize, c = flux.pipe.model.config.in_channels / 4;
        const size = flux.pipe.width;
        const r = await flux.generate({
          prompts: [req.prompt ?? ""],
          seed: req.seed,
          steps: req.steps,
          guidance: req.cfg,
          signal: req.signal,
          onStep: req.onStep &&
            ((done, total, preview) =>
              req.onStep!(done, total, () => latentPreview(preview(), c, h, w, size))),
        });
        return {
          image: r.images!,
          stepMs: r.stepMs,
          totalMs: r.totalMs,
          ...(r.truncated.length
            ? { truncated: { parts: r.truncated, warning: r.warnings.join("; ") } }
            : {}),
        };
      }
      const pipe = loaded.pipe!;
      const c = pipe.model.config, S = c.input_size;
      const shape = [1, c.in_channels, S, S] as const;
      const onStep = req.onStep;
      const r = await pipe.generate({
        classes: [req.classId],
        seed: req.seed,
        steps: req.steps,
        cfg: req.cfg,
        sampler: req.sampler,
        signal: req.signal,
        onStep: onStep && (preview
          ? (i, n, x0) =>
            onStep(i, n, async () => {
              const img = await preview.decode(x0(), shape);
              return resize(img, S * preview.factor, S * vae!.factor);
            })
          : onStep),
      });
      const image = vae ? await vae.decode(r.images, shape) : r.images;
      return { image, stepMs: r.stepMs, totalMs: r.totalMs };
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
    for (const p of old) {
      p.then((x) => {
        x.flux?.destroy();
        x.pipe?.destroy();
        x.vae?.destroy();
        if (x.preview !== x.vae) x.preview?.destroy();
      }, () => {});
    }
  }

  #pipeline(id: string): Promise<Loaded> {
    let p = this.#loaded.get(id);
    if (!p) {
      const entry = this.#registry.find((e) => e.id === id);
      if (!entry) throw new RangeError(`Cannot find model "${id}": see /api/models`);
      p = (async () => {
        const gpu = await getGpu();
        this.#device = gpu.caps.adapter;
        const info = this.#infos.find((x) => x.id === id);
        if (info?.text) {
          const offloadText = entry.offloadText ?? false;
          return { flux: await ResidentFlux.load(gpu, entry.path, info.size, { offloadText }) };
        }
        const pipe = await Pipeline.load(gpu, entry.path, {
          images: 1,
          attention: entry.attention ?? "dense",
          dtype: entry.dtype,
        });
        if (!entry.vae) return { pipe };
        try {
          const vae = await loadDecoder(gpu, entry.vae, "full");
          const preview = entry.preview ? await loadDecoder(gpu, entry.preview, "tiny") : vae;
          return { pipe, vae, preview };
        } catch (e) {
          pipe.destroy();
          throw e;
        }
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

/** Nearest-neighbour resize of [1, 3, from, from] to [1, 3, to, to] (preview decoders' sizes). */
function resize(img: Float32Array, from: number, to: number): Float32Array {
  if (from === to) return img;
  const out = new Float32Array(3 * to * to);
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < to; y++) {
      const sy = Math.floor((y * from) / to);
      for (let x = 0; x < to; x++) {
        out[(c * to + y) * to + x] = img[(c * from + sy) * from + Math.floor((x * from) / to)];
      }
    }
  }
  return out;
}
