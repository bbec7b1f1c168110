/**
 * The module's typed errors. Bad arguments use the built-in `TypeError` (wrong type or shape)
 * and `RangeError` (value out of range); everything that comes from the GPU or from a file
 * uses one of the few classes below, so callers (the CLI, the web endpoint) can map each to a
 * message or an HTTP status in one place.
 *
 * @module
 */

/** No WebGPU adapter could be found, or the adapter refused to give a device. */
export class GpuUnavailableError extends Error {
  /** Always `"GpuUnavailableError"`. */
  override name = "GpuUnavailableError";
}

/** The adapter lacks a feature or a limit that the requested work needs. */
export class GpuFeatureError extends Error {
  /** Always `"GpuFeatureError"`. */
  override name = "GpuFeatureError";
}

/** The device was lost (driver reset, out of memory, destroyed); the next `getGpu()` re-initialises. */
export class GpuDeviceLostError extends Error {
  /** Always `"GpuDeviceLostError"`. */
  override name = "GpuDeviceLostError";
}

/**
 * A WebGPU call failed validation, ran out of memory, or hit an internal error.
 * `step` names what the module was doing (e.g. `pipeline gemm_f16`).
 */
export class GpuValidationError extends Error {
  /** Always `"GpuValidationError"`. */
  override name = "GpuValidationError";
  /** The step that failed, e.g. `buffer gemm_f16.y` or `pipeline gemm_w4a4_lowrank`. */
  readonly step: string;
  /** The message becomes `Cannot <step>: <message>`. */
  constructor(step: string, message: string) {
    super(`Cannot ${step}: ${message}`);
    this.step = step;
  }
}

/** The start-up self-test found that the driver computes wrong values. */
export class GpuSelfTestError extends Error {
  /** Always `"GpuSelfTestError"`. */
  override name = "GpuSelfTestError";
}

/** A weight or checkpoint file is malformed; `file` and, where known, `tensor` say where. */
export class FormatError extends Error {
  /** Always `"FormatError"`. */
  override name = "FormatError";
  /** The file that was being read or written. */
  readonly file: string;
  /** The tensor concerned, when the error is about one tensor. */
  readonly tensor?: string;
  /** The message becomes `Cannot read <file> (tensor <tensor>): <message>`. */
  constructor(file: string, message: string, tensor?: string) {
    super(`Cannot read ${file}${tensor ? ` (tensor ${tensor})` : ""}: ${message}`);
    this.file = file;
    this.tensor = tensor;
  }
}

/**
 * A computation produced NaN or ±Inf (e.g. the latent during sampling); `step` names where, e.g.
 * `denoising step 3/20`. Nothing is written from such a result.
 */
export class NumericError extends Error {
  /** Always `"NumericError"`. */
  override name = "NumericError";
  /** Where the non-finite value appeared. */
  readonly step: string;
  /** The message becomes `Cannot finish <step>: <message>`. */
  constructor(step: string, message: string) {
    super(`Cannot finish ${step}: ${message}`);
    this.step = step;
  }
}
