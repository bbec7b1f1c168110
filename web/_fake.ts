/**
 * A fake {@linkcode Engine} for tests: no GPU, deterministic images, a configurable time per
 * step that honours the abort signal, and injectable failures.
 *
 * @module
 */
import type { Engine, EngineRequest, EngineResult, ModelInfo } from "./engine.ts";

/** A GPU-free engine with two models (int4 default, float). */
export class FakeEngine implements Engine {
  /** Milliseconds per step. */
  stepMs: number;
  /** Thrown (once) by the next generate call. */
  failNext?: Error;
  /** Generations started, finished and aborted. */
  started = 0;
  /** Finished generations. */
  finished = 0;
  /** Generations whose loop stopped on the abort signal. */
  aborted = 0;
  /** Most generations seen running at once. */
  maxConcurrent = 0;
  #running = 0;
  #models: ModelInfo[] = [
    {
      id: "tiny-int4",
      precision: "int4",
      attention: "dense",
      classes: ["smiling face", "red heart", "cat face"],
      size: 4,
      channels: 3,
    },
    {
      id: "tiny-float",
      precision: "float",
      attention: "dense",
      classes: ["smiling face", "red heart", "cat face"],
      size: 4,
      channels: 3,
    },
  ];

  constructor(stepMs = 0) {
    this.stepMs = stepMs;
  }

  models(): ModelInfo[] {
    return this.#models;
  }

  health(): { ready: boolean; device: string } {
    return { ready: true, device: "fake" };
  }

  async generate(req: EngineRequest): Promise<EngineResult> {
    this.started++;
    if (this.failNext) {
      const e = this.failNext;
      this.failNext = undefined;
      throw e;
    }
    this.#running++;
    this.maxConcurrent = Math.max(this.maxConcurrent, this.#running);
    try {
      const m = this.#models.find((x) => x.id === req.model)!;
      const n = m.channels * m.size * m.size;
      const image = new Float32Array(n).map((_, i) => Math.sin(req.seed + req.classId + i));
      const t0 = performance.now(), stepMs: number[] = [];
      for (let i = 0; i < req.steps; i++) {
        const ts = performance.now();
        if (req.signal.aborted) {
          this.aborted++;
          req.signal.throwIfAborted();
        }
        if (this.stepMs > 0) await new Promise((r) => setTimeout(r, this.stepMs));
        stepMs.push(performance.now() - ts);
        req.onStep?.(i + 1, req.steps, () => image.map((v) => v * (i + 1) / req.steps));
      }
      if (req.signal.aborted) {
        this.aborted++;
        req.signal.throwIfAborted();
      }
      this.finished++;
      return { image, stepMs, totalMs: performance.now() - t0 };
    } finally {
      this.#running--;
    }
  }
}
