/**
 * A fleet worker: serves the models of an {@linkcode Engine} (one GPU) to the NATS fleet. It
 * advertises its models with a heartbeat in the workers KV bucket, pulls jobs one at a time from
 * the durable pull consumer of each of its models, validates each payload again, tells the job's
 * progress subject its steps (and previews), keeps the message alive with `working()` while
 * denoising, stops the loop when the job is cancelled, stores the PNG in the Object Store, marks
 * the job record done, and acks only then. A redelivered job whose record is already done is
 * acked without running again.
 *
 * @module
 */
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { AckPolicy, type Consumer, jetstream, type JsMsg } from "@nats-io/jetstream";
import { encodePng, toRgbGrid } from "../../runtime/png.ts";
import type { Engine } from "../engine.ts";
import { toHttp } from "../errors.ts";
import { ensureInfra, type Infra } from "./connect.ts";
import {
  bellSubject,
  cancelSubject,
  consumerName,
  dec,
  enc,
  encodePreview,
  JOB_ID,
  type JobRecord,
  JOBS_STREAM,
  jobSubject,
  parseJob,
  type Progress,
  progressSubject,
  retrying,
  type WorkerBeat,
} from "./protocol.ts";

/** Options of {@linkcode FleetWorker}. */
export interface WorkerOptions {
  /** Worker id (default: random). */
  id?: string;
  /** Seconds a job may go without an ack or `working()` before it is redelivered (default 30). */
  ackWaitS?: number;
  /** Deliveries of one job before it fails with 503 (default 3). */
  maxDeliver?: number;
  /** Heartbeat period in milliseconds when this worker creates the bucket (default 2000); else
   * a fifth of the bucket's TTL. */
  heartbeatMs?: number;
  /** Least milliseconds between two previews (default 200). */
  previewEveryMs?: number;
  /** Log lines (default console.log). */
  log?: (line: string) => void;
}

/**
 * Pulls and runs jobs until {@linkcode FleetWorker.stop}.
 *
 * @example
 * ```ts ignore
 * import { connectNats } from "./connect.ts";
 * import { FleetWorker } from "./worker.ts";
 * import { PipelineEngine } from "../engine.ts";
 * const nc = await connectNats({ servers: ["nats://127.0.0.1:4222"] });
 * const engine = await PipelineEngine.create([{ id: "tiny", path: "tests/fixtures/tiny_dit.safetensors" }]);
 * const w = await FleetWorker.start(nc, engine);
 * await w.done; // runs until w.stop()
 * ```
 */
export class FleetWorker {
  /** Worker id. */
  readonly id: string;
  /** Resolves when the pull loop has ended (after {@linkcode FleetWorker.stop}). */
  readonly done: Promise<void>;
  #nc: NatsConnection;
  #engine: Engine;
  #infra: Infra;
  #consumers: Consumer[];
  #opts: Required<Omit<WorkerOptions, "id">>;
  #stopping = false;
  #bell = () => {};
  #bells: Subscription | null = null;
  #beat: WorkerBeat;
  #timer: ReturnType<typeof setInterval>;

  private constructor(
    nc: NatsConnection,
    engine: Engine,
    infra: Infra,
    consumers: Consumer[],
    id: string,
    opts: Required<Omit<WorkerOptions, "id">>,
  ) {
    this.#nc = nc;
    this.#engine = engine;
    this.#infra = infra;
    this.#consumers = consumers;
    this.id = id;
    this.#opts = opts;
    this.#beat = {
      id,
      models: engine.models(),
      device: engine.health().device,
      job: null,
      started: 0,
      finished: 0,
      cancelled: 0,
      failed: 0,
      at: Date.now(),
    };
    if (consumers.length > 1) {
      this.#bells = nc.subscribe("w4.bell.>", {
        callback: (_e, m) => {
          if (engine.models().some((x) => m.subject === bellSubject(x.id))) this.#bell();
        },
      });
    }
    this.#timer = setInterval(() => this.#heartbeat(), opts.heartbeatMs);
    this.#heartbeat();
    this.done = this.#loop();
  }

  /** Create the fleet's objects if missing, the consumers of the engine's models, and start. */
  static async start(
    nc: NatsConnection,
    engine: Engine,
    o: WorkerOptions = {},
  ): Promise<FleetWorker> {
    const opts = {
      ackWaitS: o.ackWaitS ?? 30,
      maxDeliver: o.maxDeliver ?? 3,
      heartbeatMs: o.heartbeatMs ?? 2000,
      previewEveryMs: o.previewEveryMs ?? 200,
      log: o.log ?? console.log,
    };
    const id = o.id ?? crypto.randomUUID().replaceAll("-", "").slice(0, 12);
    const infra = await ensureInfra(nc, { heartbeatMs: opts.heartbeatMs });
    // the bucket's TTL (set by whoever created it) decides: beat five times per TTL
    const ttl = (await infra.workers.status()).ttl;
    if (ttl > 0) opts.heartbeatMs = Math.max(50, Math.floor(ttl / 5));
    const js = jetstream(nc);
    const consumers: Consumer[] = [];
    for (const m of engine.models()) {
      const name = consumerName(m.id);
      const have = await infra.jsm.consumers.info(JOBS_STREAM, name).catch(() => null);
      if (!have) {
        await infra.jsm.consumers.add(JOBS_STREAM, {
          durable_name: name,
          ack_policy: AckPolicy.Explicit,
          filter_subject: jobSubject(m.id),
          ack_wait: opts.ackWaitS * 1e9,
          max_deliver: opts.maxDeliver,
        }).catch(async (e) => {
          if (!await infra.jsm.consumers.info(JOBS_STREAM, name).catch(() => null)) throw e;
        });
      }
      consumers.push(await js.consumers.get(JOBS_STREAM, name));
    }
    return new FleetWorker(nc, engine, infra, consumers, id, opts);
  }

  /** Stop pulling; the job running now finishes first. Removes the heartbeat entry. */
  async stop(): Promise<void> {
    this.#stopping = true;
    this.#bell();
    await this.done;
    this.#bells?.unsubscribe();
    clearInterval(this.#timer);
    await this.#infra.workers.delete(this.id).catch(() => {});
  }

  /** Counters (also in the heartbeat). */
  get stats(): WorkerBeat {
    return { ...this.#beat };
  }

  #heartbeat(): void {
    this.#beat.at = Date.now();
    this.#beat.device = this.#engine.health().device;
    this.#infra.workers.put(this.id, enc(this.#beat)).catch(() => {
      // the server is away: the next beat retries
    });
  }

  /**
   * The next job. One model: a long poll on its consumer. Several: a pull only on consumers with
   * jobs waiting (most first), since a pull on an empty one would hold a ready job of another
   * model back until it expires; when none waits, sleep until a front end rings the bell of one
   * of this worker's models (or 1 s), and every third idle round poll, for a second, one of the
   * consumers with jobs in flight elsewhere (a job whose worker died is redelivered to a pull,
   * and is not counted as waiting).
   */
  async #next(turn: number): Promise<JsMsg | null> {
    const cs = this.#consumers;
    if (cs.length === 1) return await cs[0].next({ expires: 2000 });
    const infos = await Promise.all(
      cs.map((c) => c.info(false).then((i) => [i.num_pending, i.num_ack_pending], () => [0, 0])),
    );
    const order = cs.map((c, i) => ({ c, n: infos[i][0] })).filter((x) => x.n > 0)
      .sort((a, b) => b.n - a.n);
    for (const { c } of order) {
      const m = await c.next({ expires: 1000 });
      if (m) return m;
    }
    const inFlight = cs.filter((_, i) => infos[i][1] > 0);
    if (turn % 3 === 2 && inFlight.length > 0) {
      return await inFlight[Math.floor(turn / 3) % inFlight.length].next({ expires: 1000 });
    }
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => resolve(), 1000);
      this.#bell = () => {
        clearTimeout(t);
        resolve();
      };
    });
    this.#bell = () => {};
    return null;
  }

  async #loop(): Promise<void> {
    let k = 0, backoff = 100;
    while (!this.#stopping) {
      let msg: JsMsg | null;
      try {
        msg = await this.#next(k++);
        backoff = 100;
      } catch (e) {
        if (this.#stopping) break;
        this.#opts.log(`worker ${this.id}: cannot pull (${(e as Error).message}); retrying`);
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(2000, backoff * 2);
        continue;
      }
      if (msg) await this.#run(msg);
    }
  }

  async #run(msg: JsMsg): Promise<void> {
    const attempt = msg.info.deliveryCount;
    let job: ReturnType<typeof parseJob>;
    try {
      job = parseJob(msg.data, this.#engine.models());
    } catch (e) {
      // not a job this worker can run (a front end validates first: a version mismatch, or a
      // hostile publisher): drop it, and fail its record when it names one, so no one waits
      const message = (e as Error).message;
      this.#opts.log(`worker ${this.id}: refused a job: ${message}`);
      const id = (() => {
        try {
          return dec<{ id?: unknown }>(msg.data).id;
        } catch {
          return undefined;
        }
      })();
      if (typeof id === "string" && JOB_ID.test(id)) {
        const rec = await this.#infra.jobs.get(id).catch(() => null);
        if (rec?.operation === "PUT") {
          const failed: JobRecord = {
            ...dec<JobRecord>(rec.value),
            state: "failed",
            status: 400,
            message,
          };
          await this.#infra.jobs.update(id, enc(failed), rec.revision).catch(() => {});
          this.#nc.publish(progressSubject(id), enc({ t: "end", state: "failed" } as Progress));
        }
      }
      await msg.ackAck().catch(() => msg.term());
      return;
    }
    const { jobs, images } = this.#infra;
    const progress = (p: Progress) => this.#nc.publish(progressSubject(job.id), enc(p));
    const entry = await jobs.get(job.id).catch(() => null);
    const rec = entry?.operation === "PUT" ? dec<JobRecord>(entry.value) : null;
    if (rec && rec.state !== "queued") {
      // already finished (a redelivery or a duplicate publication): nothing to run again
      progress({ t: "end", state: rec.state });
      await msg.ackAck().catch(() => {});
      return;
    }
    this.#beat.started++;
    this.#beat.job = job.id;
    this.#heartbeat();
    const ac = new AbortController();
    const sub = this.#nc.subscribe(cancelSubject(job.id), {
      callback: () => ac.abort(new DOMException("cancelled by the front end", "AbortError")),
    });
    const keepAlive = setInterval(
      () => msg.working(),
      Math.max(100, this.#opts.ackWaitS * 1000 / 3),
    );
    progress({ t: "start", attempt, worker: this.id });
    let end: JobRecord;
    let png: Uint8Array | null = null;
    try {
      let last = -Infinity;
      const r = await this.#engine.generate({
        model: job.model,
        classId: job.classId,
        ...(job.prompt !== undefined ? { prompt: job.prompt } : {}),
        seed: job.seed,
        steps: job.steps,
        cfg: job.cfg,
        sampler: job.sampler,
        signal: ac.signal,
        onStep: (i, n, preview) => {
          const now = performance.now();
          if (job.preview && (now - last >= this.#opts.previewEveryMs || i === n)) {
            last = now;
            const x = preview(); // a latent model's preview is decoded asynchronously
            if (x instanceof Promise) {
              x.then((v) => progress({ t: "step", i, n, preview: encodePreview(v) }), () => {});
            } else progress({ t: "step", i, n, preview: encodePreview(x) });
          } else progress({ t: "step", i, n });
        },
      });
      const { rgb, width, height } = toRgbGrid(r.image, 1, job.params.model.size);
      png = await encodePng(rgb, width, height);
      end = {
        ...(rec ?? { fp: "", seed: job.seed, created: Date.now() }),
        state: "done",
        stepMs: r.stepMs,
        totalMs: r.totalMs,
        worker: this.id,
        attempt,
      };
    } catch (e) {
      if (ac.signal.aborted) {
        this.#beat.cancelled++;
        end = { ...(rec ?? { fp: "", seed: job.seed, created: Date.now() }), state: "cancelled" };
      } else {
        this.#beat.failed++;
        const f = toHttp(e, (l) => this.#opts.log(`worker ${this.id}: ${l}`));
        if (attempt < this.#opts.maxDeliver && f.status >= 500) {
          // maybe this worker's GPU: let another delivery (perhaps elsewhere) try
          this.#opts.log(`worker ${this.id}: job ${job.id} failed (${f.message}); redelivering`);
          clearInterval(keepAlive);
          msg.nak(500);
          return;
        }
        end = {
          ...(rec ?? { fp: "", seed: job.seed, created: Date.now() }),
          state: "failed",
          status: f.status >= 500 ? 503 : f.status,
          message: f.status >= 500
            ? `Cannot generate: the job failed on ${attempt} deliveries (${f.message})`
            : f.message,
          attempt,
        };
      }
    } finally {
      sub.unsubscribe();
      this.#beat.job = null;
    }
    // store the image, then the record, then ack — retried while the server is away (a restart),
    // the message kept alive meanwhile; each step is idempotent
    const image = png;
    try {
      await retrying(async () => {
        if (image) await images.putBlob({ name: job.id }, image);
        await jobs.put(job.id, enc(end));
      });
      // the result is stored: the job is finished whatever becomes of the ack below
      if (end.state === "done") this.#beat.finished++;
      progress({ t: "end", state: end.state });
      await retrying(() => msg.ackAck());
    } catch (e) {
      // still failing: no ack, so the job is redelivered after the ack wait and, when the
      // record made it, found done (and only acked); else made again with the same seed (the
      // same image)
      this.#opts.log(`worker ${this.id}: cannot finish job ${job.id}: ${(e as Error).message}`);
    } finally {
      clearInterval(keepAlive);
    }
    this.#heartbeat();
  }
}
