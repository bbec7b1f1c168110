/**
 * The front end's side of the fleet: {@linkcode FleetEngine} is an {@linkcode Engine} whose
 * `generate` publishes a job on JetStream and waits for a worker to finish it, so the app
 * (web/app.ts) serves the same page, JSON and SSE API with no GPU.
 *
 * - Idempotency: a request's key (`Idempotency-Key`, scoped to its caller) names its job; the job
 *   record is created once (KV create), the publication carries a message id (JetStream drops a
 *   duplicate), a worker finds a finished record and does not run it again, and the waiter
 *   settles once. A resubmitted key returns the stored image.
 * - Failure: a worker that dies stops acking; after the consumer's ack wait the job is
 *   redelivered (the SSE stream shows `retry`); after `max_deliver` deliveries the server's
 *   advisory makes the job fail with 503 and its message is removed from the stream.
 * - Backpressure: the stream holds at most `maxPending` jobs (publishing more → 429 with
 *   Retry-After). Fairness: a caller always has `perCaller` slots and gets more only while
 *   `perCaller` stay free for others, so no caller can fill the queue.
 * - Cancellation: an aborted request publishes on the job's cancel subject (the worker stops its
 *   loop) and marks a still-queued record cancelled (a worker then skips it).
 *
 * @module
 */
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";
import type { Engine, EngineRequest, EngineResult, ModelInfo } from "../engine.ts";
import { HttpError } from "../params.ts";
import { QueueFullError } from "../queue.ts";
import { ensureInfra, type Infra } from "./connect.ts";
import {
  bellSubject,
  cancelSubject,
  consumerName,
  dec,
  decodePreview,
  enc,
  fingerprint,
  type Job,
  type JobRecord,
  JOBS_STREAM,
  jobSubject,
  type Progress,
  progressSubject,
  retrying,
  type WorkerBeat,
  WORKERS_BUCKET,
} from "./protocol.ts";

/** Options of {@linkcode FleetEngine}. */
export interface FleetOptions {
  /** Jobs the stream holds (queued + running) before new ones get 429 (default 64). */
  maxPending?: number;
  /**
   * Jobs one caller (Authorization header, else client address) may always have pending
   * (default a quarter of `maxPending`, ≥ 1); beyond that only while `perCaller` more would still
   * fit in this front end's `maxPending`.
   */
  perCaller?: number;
  /** The workers' heartbeat period in milliseconds (default 2000). */
  heartbeatMs?: number;
  /** How often the job record and the fleet's state are read, in milliseconds (default 1000). */
  pollMs?: number;
  /** Log lines (default console.error). */
  log?: (line: string) => void;
}

/** What `/healthz` and `/api/models` show of the fleet. */
export interface FleetStatus {
  /** Live workers (a heartbeat within the last five periods). */
  workers: {
    id: string;
    models: string[];
    device: string;
    job: string | null;
    finished: number;
    cancelled: number;
    failed: number;
  }[];
  /** Jobs in the stream (queued + running), and its limit. */
  pending: number;
  /** The stream's limit. */
  maxPending: number;
  /** Per model: jobs waiting for a worker and jobs being run. */
  queues: Record<string, { waiting: number; running: number }>;
}

/** A NATS failure as the 503 a client sees (the details go to the log). */
function unreachable(e: unknown, log: (l: string) => void): HttpError {
  log(`fleet: the queue is unreachable: ${(e as Error).message}`);
  return new HttpError(
    503,
    "Cannot queue the generation: the job queue is unreachable; retry later",
  );
}

async function sha256hex(s: string): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(s));
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * The GPU-less engine of `deno task serve --nats`.
 *
 * @example
 * ```ts ignore
 * import { connectNats } from "./connect.ts";
 * import { FleetEngine } from "./front.ts";
 * import { createApp } from "../app.ts";
 * const nc = await connectNats({ servers: ["nats://127.0.0.1:4222"] });
 * const engine = await FleetEngine.create(nc, { maxPending: 32 });
 * await engine.waitForWorkers(60_000);
 * Deno.serve({ port: 8000 }, createApp({ engine, queue: engine.queueOptions() }).fetch);
 * ```
 */
export class FleetEngine implements Engine {
  /** Jobs the stream holds. */
  readonly maxPending: number;
  /** Jobs one caller may have pending. */
  readonly perCaller: number;
  #nc: NatsConnection;
  #infra: Infra;
  #opts: { heartbeatMs: number; pollMs: number; log: (l: string) => void };
  #js;
  #beats: WorkerBeat[] = [];
  #known: ModelInfo[] = [];
  #pending = 0;
  #queues: FleetStatus["queues"] = {};
  #perCallerNow = new Map<string, number>();
  #avgMs = 0;
  #timer: ReturnType<typeof setInterval>;
  #advisories: Subscription;
  #refreshing: Promise<void> | null = null;

  private constructor(nc: NatsConnection, infra: Infra, o: FleetOptions) {
    this.#nc = nc;
    this.#infra = infra;
    this.#js = jetstream(nc);
    this.maxPending = o.maxPending ?? 64;
    this.perCaller = o.perCaller ?? Math.max(1, Math.floor(this.maxPending / 4));
    this.#opts = {
      heartbeatMs: o.heartbeatMs ?? 2000,
      pollMs: o.pollMs ?? 1000,
      log: o.log ?? console.error,
    };
    this.#timer = setInterval(() => this.refresh(), this.#opts.pollMs);
    this.#advisories = nc.subscribe(
      `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.${JOBS_STREAM}.*`,
      { callback: (_e, m) => void this.#maxDeliveries(m.data) },
    );
  }

  /** Create (or bind to) the fleet's stream and buckets, with this front end's limits. */
  static async create(nc: NatsConnection, o: FleetOptions = {}): Promise<FleetEngine> {
    const maxPending = o.maxPending ?? 64;
    if (!Number.isInteger(maxPending) || maxPending < 1) {
      throw new RangeError(`Cannot create the fleet: maxPending must be ≥ 1, got ${maxPending}`);
    }
    const infra = await ensureInfra(nc, { maxPending, heartbeatMs: o.heartbeatMs });
    const f = new FleetEngine(nc, infra, { ...o, maxPending });
    await f.refresh();
    return f;
  }

  /** The app's queue options for this front end: up to `maxPending` in flight, none waiting. */
  queueOptions(timeoutMs = 120_000): { concurrency: number; limit: number; timeoutMs: number } {
    return { concurrency: this.maxPending, limit: 0, timeoutMs };
  }

  /** Resolve once a worker advertises a model; RangeError after `timeoutMs`. */
  async waitForWorkers(timeoutMs: number): Promise<void> {
    const t0 = Date.now();
    while (this.#live().length === 0) {
      if (Date.now() - t0 > timeoutMs) {
        throw new RangeError(
          `Cannot serve: no worker advertised a model within ${timeoutMs / 1000} s; ` +
            "start one with deno task worker --nats URL",
        );
      }
      await new Promise((r) => setTimeout(r, 200));
      await this.refresh();
    }
  }

  /** Models of the live workers (the last known ones while none is live). */
  models(): ModelInfo[] {
    return this.#known;
  }

  /** Ready while a worker is live. */
  health(): { ready: boolean; device: string } {
    const n = this.#live().length;
    return { ready: n > 0, device: `NATS fleet: ${n} worker${n === 1 ? "" : "s"}` };
  }

  /** Workers, models, queue depth. */
  status(): FleetStatus {
    return {
      workers: this.#live().map((w) => ({
        id: w.id,
        models: w.models.map((m) => m.id),
        device: w.device,
        job: w.job,
        finished: w.finished,
        cancelled: w.cancelled,
        failed: w.failed,
      })),
      pending: this.#pending,
      maxPending: this.maxPending,
      queues: this.#queues,
    };
  }

  /** Stop polling and listening (the connection stays the caller's). */
  close(): void {
    clearInterval(this.#timer);
    this.#advisories.unsubscribe();
  }

  /** Read the workers' heartbeats and the stream's depth now. */
  refresh(): Promise<void> {
    this.#refreshing ??= this.#refresh().finally(() => this.#refreshing = null);
    return this.#refreshing;
  }

  async #refresh(): Promise<void> {
    try {
      const beats: WorkerBeat[] = [];
      // the bucket's keys from its stream's subject list: one request (a KV key listing is a
      // consumer, which can stall while the workers keep writing)
      const prefix = `$KV.${WORKERS_BUCKET}.`;
      const wi = await this.#infra.jsm.streams.info(`KV_${WORKERS_BUCKET}`, {
        subjects_filter: `${prefix}>`,
      });
      const keys = Object.keys(wi.state.subjects ?? {}).map((s) => s.slice(prefix.length));
      for (const k of keys) {
        const e = await this.#infra.workers.get(k);
        if (e?.operation === "PUT") beats.push(dec<WorkerBeat>(e.value));
      }
      beats.sort((a, b) => a.id < b.id ? -1 : 1);
      this.#beats = beats;
      const seen = new Map<string, ModelInfo>();
      for (const w of this.#live()) {
        for (const m of w.models) if (!seen.has(m.id)) seen.set(m.id, m);
      }
      if (seen.size > 0) this.#known = [...seen.values()];
      const si = await this.#infra.jsm.streams.info(JOBS_STREAM);
      this.#pending = si.state.messages;
      const queues: FleetStatus["queues"] = {};
      for (const m of this.#known) {
        const ci = await this.#infra.jsm.consumers.info(JOBS_STREAM, consumerName(m.id))
          .catch(() => null);
        queues[m.id] = { waiting: ci?.num_pending ?? 0, running: ci?.num_ack_pending ?? 0 };
      }
      this.#queues = queues;
    } catch (e) {
      this.#opts.log(`fleet: cannot read its state (${(e as Error).message}); retrying`);
    }
  }

  /** Workers whose heartbeat entry has not expired (the bucket's TTL, on the server's clock). */
  #live(): WorkerBeat[] {
    return this.#beats;
  }

  #retryAfterS(): number {
    const n = Math.max(1, this.#live().length);
    return Math.max(1, Math.ceil(this.#pending * (this.#avgMs || 1000) / n / 1000));
  }

  /** A job ran out of deliveries: fail its record, remove it from the stream. */
  async #maxDeliveries(data: Uint8Array): Promise<void> {
    try {
      const a = dec<{ stream_seq: number; deliveries: number }>(data);
      const m = await this.#infra.jsm.streams.getMessage(JOBS_STREAM, { seq: a.stream_seq });
      if (!m) return;
      const job = dec<Job>(m.data);
      const e = await this.#infra.jobs.get(job.id);
      if (e?.operation === "PUT") {
        const rec = dec<JobRecord>(e.value);
        if (rec.state === "queued") {
          await this.#infra.jobs.update(
            job.id,
            enc(
              {
                ...rec,
                state: "failed",
                status: 503,
                message: `Cannot generate: the job was delivered ${a.deliveries} times and no ` +
                  "worker finished it; retry later",
                attempt: a.deliveries,
              } satisfies JobRecord,
            ),
            e.revision,
          ).catch(() => {});
        }
      }
      await this.#infra.jsm.streams.deleteMessage(JOBS_STREAM, a.stream_seq).catch(() => {});
      this.#nc.publish(progressSubject(job.id), enc({ t: "end", state: "failed" } as Progress));
    } catch (e) {
      this.#opts.log(`fleet: cannot handle a max-deliveries advisory: ${(e as Error).message}`);
    }
  }

  async generate(req: EngineRequest): Promise<EngineResult> {
    req.signal.throwIfAborted();
    const info = this.#known.find((m) => m.id === req.model);
    if (!info || !this.#live().some((w) => w.models.some((m) => m.id === req.model))) {
      throw new HttpError(503, `Cannot generate: no worker serves ${req.model} now; retry later`);
    }
    const caller = (await sha256hex(`caller\n${req.caller ?? ""}`)).slice(0, 32);
    // a caller always has `perCaller` slots; beyond them it may use what is free except the
    // `perCaller` slots kept for whoever comes next
    const mine = this.#perCallerNow.get(caller) ?? 0;
    let all = 0;
    for (const n of this.#perCallerNow.values()) all += n;
    if (mine >= this.perCaller && all + this.perCaller >= this.maxPending) {
      throw new QueueFullError(
        `Cannot queue the generation: you have ${mine} pending (the limit per caller while ` +
          "others may need room); retry later",
        this.#retryAfterS(),
      );
    }
    this.#perCallerNow.set(caller, mine + 1);
    try {
      return await this.#generate(req, info, caller);
    } catch (e) {
      // what is not already an answer (HTTP error, queue full, the client's abort) is NATS failing
      // under us: a 503 with Retry-After, not an internal error
      if (e instanceof HttpError || e instanceof QueueFullError || req.signal.aborted) throw e;
      throw unreachable(e, this.#opts.log);
    } finally {
      const n = (this.#perCallerNow.get(caller) ?? 1) - 1;
      if (n > 0) this.#perCallerNow.set(caller, n);
      else this.#perCallerNow.delete(caller);
    }
  }

  async #generate(req: EngineRequest, info: ModelInfo, caller: string): Promise<EngineResult> {
    const { jobs } = this.#infra;
    const id = req.key
      ? (await sha256hex(`key\n${caller}\n${req.key}`)).slice(0, 32)
      : crypto.randomUUID().replaceAll("-", "");
    const fp = fingerprint(req);
    let seed = req.seed, rev: number, created = false;
    const fresh: JobRecord = { state: "queued", fp, seed, created: Date.now() };
    // a server restart (seconds) is ridden out: a create whose reply was lost comes back as "wrong
    // last sequence" on the next try and finds its own queued record below
    const exists = (e: unknown) => /wrong last sequence/i.test((e as Error).message);
    try {
      rev = await retrying(() => jobs.create(id, enc(fresh)), {
        retry: (e) => !exists(e) && !req.signal.aborted,
      });
      created = true;
    } catch (err) {
      if (!exists(err)) throw err; // generate() answers it with a 503
      const e = await retrying(() => jobs.get(id));
      if (!e || e.operation !== "PUT") {
        throw new HttpError(409, "Cannot generate: this Idempotency-Key is being reset; retry");
      }
      const old = dec<JobRecord>(e.value);
      if (old.fp !== fp) {
        throw new HttpError(
          422,
          "Cannot generate: this Idempotency-Key was used for another request (model, class, " +
            "steps, cfg or sampler differ); use a new key",
          "key",
        );
      }
      seed = old.seed;
      if (old.state === "done") return await this.#result(id, old);
      rev = old.state === "queued"
        ? e.revision // still pending: wait for it (a second publication is dropped as a duplicate)
        : await jobs.update(id, enc({ ...fresh, seed }), e.revision); // failed/cancelled: run again
    }
    const job: Job = {
      id,
      rev,
      model: req.model,
      classId: req.classId,
      ...(req.prompt !== undefined ? { prompt: req.prompt } : {}),
      seed,
      steps: req.steps,
      cfg: req.cfg,
      sampler: req.sampler,
      preview: req.onStep !== undefined,
    };
    const floats = info.channels * info.size * info.size;
    let lastPreview: Float32Array = new Float32Array(floats), attempt = 0;
    let wake = () => {};
    const sub = this.#nc.subscribe(progressSubject(id), {
      callback: (_e, m) => {
        let p: Progress;
        try {
          p = dec<Progress>(m.data);
        } catch {
          return;
        }
        if (p.t === "start" && p.attempt > attempt) {
          if (attempt > 0 || p.attempt > 1) req.onRetry?.(p.attempt);
          attempt = p.attempt;
        } else if (p.t === "step") {
          if (p.preview) {
            try {
              lastPreview = decodePreview(p.preview, floats);
            } catch { /* keep the last one */ }
          }
          req.onStep?.(p.i, p.n, () => lastPreview);
        } else if (p.t === "end") wake();
      },
    });
    try {
      try {
        // the message id makes a repeated publication a no-op
        await retrying(
          () => this.#js.publish(jobSubject(req.model), enc(job), { msgID: `${id}-${rev}` }),
          { retry: (e) => !/maximum messages/i.test((e as Error).message) && !req.signal.aborted },
        );
        this.#nc.publish(bellSubject(req.model));
      } catch (e) {
        if (created) await jobs.delete(id).catch(() => {});
        if (/maximum messages/i.test((e as Error).message)) {
          throw new QueueFullError(
            `Cannot queue the generation: ${this.maxPending} jobs are pending (the limit); ` +
              "retry later",
            this.#retryAfterS(),
          );
        }
        throw e; // generate() answers it with a 503
      }
      const rec = await this.#wait(id, req.signal, (f) => wake = f);
      if (rec.state === "done") return await this.#result(id, rec);
      if (rec.state === "failed") {
        throw new HttpError(rec.status ?? 503, rec.message ?? "Cannot generate: the job failed");
      }
      throw new HttpError(503, "Cannot generate: the job was cancelled by another request");
    } finally {
      sub.unsubscribe();
    }
  }

  /** Until the record leaves `queued` (read on each end notice and every `pollMs`). */
  #wait(id: string, signal: AbortSignal, onWake: (f: () => void) => void): Promise<JobRecord> {
    return new Promise<JobRecord>((resolve, reject) => {
      let settled = false;
      const finish = (f: () => void) => {
        if (settled) return;
        settled = true;
        clearInterval(timer);
        signal.removeEventListener("abort", onAbort);
        f();
      };
      const check = async () => {
        try {
          const e = await this.#infra.jobs.get(id);
          if (e?.operation !== "PUT") return;
          const rec = dec<JobRecord>(e.value);
          if (rec.state !== "queued") finish(() => resolve(rec));
        } catch {
          // the server is away: the next poll retries
        }
      };
      const onAbort = () => {
        finish(() => reject(signal.reason));
        this.#cancel(id).catch(() => {});
      };
      const timer = setInterval(check, this.#opts.pollMs);
      signal.addEventListener("abort", onAbort, { once: true });
      onWake(() => void check());
      if (signal.aborted) onAbort();
    });
  }

  /** Tell a running worker to stop; mark a queued record cancelled so no worker starts it. */
  async #cancel(id: string): Promise<void> {
    this.#nc.publish(cancelSubject(id), enc({ t: "cancel" }));
    const e = await this.#infra.jobs.get(id);
    if (e?.operation !== "PUT") return;
    const rec = dec<JobRecord>(e.value);
    if (rec.state === "queued") {
      await this.#infra.jobs.update(id, enc({ ...rec, state: "cancelled" }), e.revision);
    }
  }

  async #result(id: string, rec: JobRecord): Promise<EngineResult> {
    // read again while the server is away or mid-restart (a worker that retried its upload may
    // be replacing the object's chunks): the record says done, so the image is there
    const blob = await retrying(() => this.#infra.images.getBlob(id));
    if (!blob) {
      throw new HttpError(503, "Cannot return the image: it expired from the store; retry");
    }
    const totalMs = rec.totalMs ?? 0;
    this.#avgMs = this.#avgMs ? 0.8 * this.#avgMs + 0.2 * totalMs : totalMs;
    return {
      image: new Float32Array(0),
      png: new Uint8Array(blob), // a plain copy (the client gives a Node Buffer)
      seed: rec.seed,
      stepMs: rec.stepMs ?? [],
      totalMs,
    };
  }
}
