/**
 * The one place where errors become HTTP statuses and client-safe messages. Stack traces never
 * leave the server: unknown errors are logged and answered with a generic 500.
 *
 * @module
 */
import {
  FormatError,
  GpuDeviceLostError,
  GpuFeatureError,
  GpuSelfTestError,
  GpuUnavailableError,
  GpuValidationError,
  NumericError,
} from "../gpu/errors.ts";
import { HttpError } from "./params.ts";
import { QueueFullError } from "./queue.ts";

/** An error mapped for a response. */
export interface HttpFailure {
  /** HTTP status. */
  status: number;
  /** Message safe to show. */
  message: string;
  /** Extra response headers (e.g. `Retry-After`). */
  headers: Record<string, string>;
  /** The field at fault, for 400s. */
  field?: string;
}

/**
 * Map an error thrown while handling a request to its HTTP status and message.
 *
 * @example
 * ```ts
 * import { toHttp } from "./errors.ts";
 * console.log(toHttp(new RangeError("Cannot x: y")).status); // 400
 * ```
 */
export function toHttp(e: unknown, log: (line: string) => void = console.error): HttpFailure {
  const h: Record<string, string> = {};
  if (e instanceof HttpError) {
    return { status: e.status, message: e.message, headers: h, field: e.field };
  }
  if (e instanceof QueueFullError) {
    return { status: 429, message: e.message, headers: { "Retry-After": String(e.retryAfterS) } };
  }
  if (e instanceof DOMException && e.name === "TimeoutError") {
    return {
      status: 504,
      message: "Cannot finish the generation: it ran past the time limit; use fewer steps",
      headers: h,
    };
  }
  if (e instanceof DOMException && e.name === "AbortError") {
    return {
      status: 499,
      message: "Cannot finish the generation: the client went away",
      headers: h,
    };
  }
  if (e instanceof GpuDeviceLostError) {
    return {
      status: 503,
      message: "Cannot generate: the GPU device was lost; it is re-initialised on the next request",
      headers: { "Retry-After": "1" },
    };
  }
  if (
    e instanceof GpuUnavailableError || e instanceof GpuFeatureError ||
    e instanceof GpuSelfTestError
  ) {
    return { status: 503, message: `Cannot generate: no usable GPU (${e.name})`, headers: h };
  }
  if (e instanceof RangeError) return { status: 400, message: e.message, headers: h };
  if (e instanceof GpuValidationError || e instanceof FormatError || e instanceof NumericError) {
    log(`error: ${e.message}`);
    return { status: 500, message: `Cannot generate: the server failed (${e.name})`, headers: h };
  }
  log(`unexpected error: ${e instanceof Error ? e.stack ?? e.message : String(e)}`);
  return { status: 500, message: "Cannot handle the request: internal error", headers: h };
}
