/**
 * What the front end and the workers of a fleet agree on: the NATS names (one JetStream stream of
 * jobs, one KV bucket of job records, one of worker heartbeats, one Object Store of images), the
 * job payload and its validation, and the messages on a job's progress subject.
 *
 * Every subject and object name is built here from a model id (checked against
 * {@linkcode MODEL_ID}) or a job id (32 hex digits made by the front end): nothing a client sends
 * ends up in a subject or a path.
 *
 * @module
 */
import { type EngineRequest, MODEL_ID, type ModelInfo } from "../engine.ts";
import { type GenerateParams, HttpError, parseParams } from "../params.ts";

/** The stream of jobs (work-queue retention: a job leaves it when a worker acks it). */
export const JOBS_STREAM = "W4_JOBS";
/** KV bucket of job records, key = job id. */
export const JOBS_BUCKET = "w4-jobs";
/** KV bucket of worker heartbeats, key = worker id. */
export const WORKERS_BUCKET = "w4-workers";
/** Object Store bucket of finished PNGs, name = job id. */
export const IMAGES_BUCKET = "w4-images";

/** A job id: 32 lower-case hex digits. */
export const JOB_ID = /^[0-9a-f]{32}$/;
/** A worker id: letters, digits, `-`, `_` (NATS KV key and subject safe). */
export const WORKER_ID = /^[A-Za-z0-9_-]{1,64}$/;

/** The subject the jobs of one model are published on. */
export function jobSubject(model: string): string {
  if (!MODEL_ID.test(model)) throw new RangeError(`Cannot name a subject for model "${model}"`);
  return `w4.jobs.${model}`;
}

/** The subject a front end rings after publishing a job (wakes idle multi-model workers). */
export function bellSubject(model: string): string {
  return `w4.bell.${jobSubject(model).slice("w4.jobs.".length)}`;
}

/** The durable pull consumer all workers of one model share (hex: ids may hold `.`). */
export function consumerName(model: string): string {
  if (!MODEL_ID.test(model)) throw new RangeError(`Cannot name a consumer for model "${model}"`);
  return "w4-" + [...new TextEncoder().encode(model)].map((b) => b.toString(16)).join("");
}

/** The subject a job's progress and result notices are published on. */
export function progressSubject(jobId: string): string {
  checkJobId(jobId);
  return `w4.progress.${jobId}`;
}

/** The subject a front end publishes on to cancel a running job. */
export function cancelSubject(jobId: string): string {
  checkJobId(jobId);
  return `w4.cancel.${jobId}`;
}

function checkJobId(id: string): void {
  if (!JOB_ID.test(id)) throw new RangeError(`Cannot use job id "${id.slice(0, 40)}"`);
}

/**
 * One generation job as published on the stream: the engine request's generation fields (model,
 * class, prompt, seed, steps, cfg, sampler), plus the job's id, record revision and previews flag.
 */
export interface Job
  extends
    Pick<EngineRequest, "model" | "classId" | "prompt" | "seed" | "steps" | "cfg" | "sampler"> {
  /** Job id (32 hex digits). */
  id: string;
  /** Revision of the job record this publication belongs to (a re-run after a failure bumps it). */
  rev: number;
  /** Send previews with the steps. */
  preview: boolean;
}

/** State of a job record in {@linkcode JOBS_BUCKET}. */
export type JobState = "queued" | "done" | "failed" | "cancelled";

/** A job record: written by the front end at submission, by a worker when the job ends. */
export interface JobRecord {
  /** Current state. */
  state: JobState;
  /** What the request asked for, minus the seed (an idempotency key reused for another request). */
  fp: string;
  /** Seed of the first submission (a resubmission returns that image). */
  seed: number;
  /** Milliseconds since the epoch at submission. */
  created: number;
  /** `done`: milliseconds per step and of the loop; which worker; which delivery. */
  stepMs?: number[];
  /** `done`: milliseconds of the loop. */
  totalMs?: number;
  /** `done`: the worker that made the image. */
  worker?: string;
  /** `done` or `failed`: the delivery that ended it (1 = first). */
  attempt?: number;
  /** `failed`: HTTP status and client-safe message. */
  status?: number;
  /** `failed`: message. */
  message?: string;
}

/** What a worker advertises in {@linkcode WORKERS_BUCKET}. */
export interface WorkerBeat {
  /** Worker id. */
  id: string;
  /** Served models. */
  models: ModelInfo[];
  /** WebGPU adapter. */
  device: string;
  /** Job id being denoised, if any. */
  job: string | null;
  /** Generations started (deliveries taken), finished, stopped by cancellation, failed. */
  started: number;
  /** Generations finished and stored. */
  finished: number;
  /** Generations stopped by a cancellation. */
  cancelled: number;
  /** Generations that threw. */
  failed: number;
  /** Milliseconds since the epoch. */
  at: number;
}

/** A notice on a job's progress subject. */
export type Progress =
  | { t: "start"; attempt: number; worker: string }
  | { t: "step"; i: number; n: number; preview?: string }
  | { t: "end"; state: JobState };

/** The part of a request a job record's fingerprint covers (all but the seed). */
export function fingerprint(
  j: Pick<Job, "model" | "classId" | "prompt" | "steps" | "cfg" | "sampler">,
) {
  return JSON.stringify([j.model, j.classId, j.prompt ?? null, j.steps, j.cfg, j.sampler]);
}

/**
 * Validate a job payload again on the worker, with the same schema as the HTTP routes, against
 * the models this worker serves. Throws {@linkcode HttpError} 400 on anything off.
 */
export function parseJob(data: Uint8Array, models: ModelInfo[]): Job & { params: GenerateParams } {
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder().decode(data));
  } catch {
    throw new HttpError(400, "Cannot run the job: its payload is not JSON");
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new HttpError(400, "Cannot run the job: its payload is not an object");
  }
  const { id, rev, preview, classId, ...rest } = raw as Record<string, unknown>;
  if (typeof id !== "string" || !JOB_ID.test(id)) {
    throw new HttpError(400, "Cannot run the job: bad id");
  }
  if (!Number.isInteger(rev) || (rev as number) < 1) {
    throw new HttpError(400, "Cannot run the job: bad rev");
  }
  if (typeof preview !== "boolean") throw new HttpError(400, "Cannot run the job: bad preview");
  if (typeof rest.model !== "string") throw new HttpError(400, "Cannot run the job: no model");
  const params = parseParams(classId === undefined ? rest : { ...rest, class: classId }, models);
  if (params.model.id !== rest.model) throw new HttpError(400, "Cannot run the job: model");
  return {
    id,
    rev: rev as number,
    model: params.model.id,
    classId: params.classId,
    ...(params.prompt !== undefined ? { prompt: params.prompt } : {}),
    seed: params.seed,
    steps: params.steps,
    cfg: params.cfg,
    sampler: params.sampler,
    preview,
    params,
  };
}

/** Encode a preview image ([1, C, S, S] floats) for a progress notice: base64 of its bytes. */
export function encodePreview(x: Float32Array): string {
  const b = new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
  let s = "";
  for (let i = 0; i < b.length; i += 0x8000) s += String.fromCharCode(...b.subarray(i, i + 0x8000));
  return btoa(s);
}

/** Decode {@linkcode encodePreview}; `expect` floats, else a RangeError. */
export function decodePreview(s: string, expect: number): Float32Array {
  const bin = atob(s);
  if (bin.length !== expect * 4) {
    throw new RangeError(`Cannot decode a preview: ${bin.length} bytes, expected ${expect * 4}`);
  }
  const b = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) b[i] = bin.charCodeAt(i);
  return new Float32Array(b.buffer);
}

/** Encode a JSON value as a payload. */
export const enc = (v: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(v));
/** Decode a JSON payload. */
export const dec = <T>(b: Uint8Array): T => JSON.parse(new TextDecoder().decode(b)) as T;

/**
 * Run `fn` until it succeeds: `tries` attempts at most (default 8), waiting 100 ms, 200 ms, …
 * 2 s between them, so a NATS server that restarts (≈ 1–5 s away, JetStream recovering its
 * streams) is ridden out; the last failure is thrown, and at once a failure `retry` says is an
 * answer (a full stream, a record that exists). For steps that are idempotent.
 */
export async function retrying<T>(
  fn: () => Promise<T>,
  o: { tries?: number; waitMs?: (k: number) => number; retry?: (e: unknown) => boolean } = {},
): Promise<T> {
  const tries = o.tries ?? 8;
  const wait = o.waitMs ?? ((k: number) => Math.min(2000, 100 * 2 ** k));
  for (let k = 0;; k++) {
    try {
      return await fn();
    } catch (e) {
      if (k >= tries - 1 || (o.retry && !o.retry(e))) throw e;
      await new Promise((r) => setTimeout(r, wait(k)));
    }
  }
}
