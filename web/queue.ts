/**
 * A bounded job queue for the GPU: at most `concurrency` jobs run at once (one by default, since
 * a generation keeps the whole device busy), at most `limit` wait behind them, and anything
 * beyond that is refused at once with a {@linkcode QueueFullError} (HTTP 429). Each job has a
 * time limit covering its wait and its run, and stops when the caller's signal aborts (a client
 * that disconnected): a waiting job leaves the queue, a running job sees its signal abort.
 *
 * @module
 */

import { plural } from "../cli/plural.ts";

/** Options of {@linkcode JobQueue}. */
export interface QueueOptions {
  /** Jobs running at once (default 1). */
  concurrency?: number;
  /** Jobs waiting behind the running ones before new ones are refused (default 8). */
  limit?: number;
  /** Time limit of one job in milliseconds, wait included (default 120000). */
  timeoutMs?: number;
}

/** The queue is full: retry after `retryAfterS` seconds. */
export class QueueFullError extends Error {
  /** Always `"QueueFullError"`. */
  override name = "QueueFullError";
  /** Suggested wait before retrying, in whole seconds (at least 1). */
  readonly retryAfterS: number;
  /** `retryAfterS`: the suggested wait in whole seconds. */
  constructor(message: string, retryAfterS: number) {
    super(message);
    this.retryAfterS = retryAfterS;
  }
}

/** How one job is run: its cancellation and its position reports. */
export interface JobOptions {
  /** Aborts the job (waiting or running), e.g. the request's signal. */
  signal?: AbortSignal;
  /** Called with the job's place in line (1 = next; 0 = running now) at once and on each change. */
  onQueued?: (position: number) => void;
}

interface Waiter {
  start: () => void;
  onQueued?: (position: number) => void;
}

/**
 * A bounded FIFO queue with a concurrency limit, a time limit and cancellation.
 *
 * @example
 * ```ts
 * import { JobQueue } from "./queue.ts";
 * const q = new JobQueue({ concurrency: 1, limit: 8, timeoutMs: 5000 });
 * const v = await q.run(async (signal) => {
 *   signal.throwIfAborted();
 *   return 42;
 * });
 * console.log(v);
 * ```
 */
export class JobQueue {
  /** Jobs running at once. */
  readonly concurrency: number;
  /** Jobs allowed to wait. */
  readonly limit: number;
  /** Time limit of one job in milliseconds. */
  readonly timeoutMs: number;
  #running = 0;
  #waiting: Waiter[] = [];
  #avgMs = 0;

  constructor(opts: QueueOptions = {}) {
    this.concurrency = opts.concurrency ?? 1;
    this.limit = opts.limit ?? 8;
    this.timeoutMs = opts.timeoutMs ?? 120_000;
    for (const [k, v, lo] of [["concurrency", this.concurrency, 1], ["limit", this.limit, 0]]) {
      if (!Number.isInteger(v) || (v as number) < (lo as number)) {
        throw new RangeError(`Cannot create the queue: ${k} must be an integer ≥ ${lo}, got ${v}`);
      }
    }
    if (!(this.timeoutMs > 0)) {
      throw new RangeError(`Cannot create the queue: timeoutMs must be > 0, got ${this.timeoutMs}`);
    }
  }

  /** Jobs running now. */
  get running(): number {
    return this.#running;
  }

  /** Jobs waiting now. */
  get waiting(): number {
    return this.#waiting.length;
  }

  /** Seconds a new job would likely wait (at least 1), for `Retry-After`. */
  retryAfterS(): number {
    const ahead = this.#waiting.length + this.#running;
    return Math.max(1, Math.ceil((ahead * (this.#avgMs || 1000)) / this.concurrency / 1000));
  }

  /** Throw {@linkcode QueueFullError} when a new job would be refused now. */
  assertRoom(): void {
    if (this.#running >= this.concurrency && this.#waiting.length >= this.limit) {
      throw new QueueFullError(
        `Cannot queue the generation: ${
          this.#waiting.length === 0
            ? `the server is busy and takes no waiting requests`
            : `${plural(this.#waiting.length, "request is", "requests are")} waiting (the limit)`
        }; retry in ${plural(this.retryAfterS(), "second")}`,
        this.retryAfterS(),
      );
    }
  }

  /**
   * Run `job` when a slot is free. Throws {@linkcode QueueFullError} at once when the queue is
   * full, the signal's reason (an `AbortError`, or a `TimeoutError` after `timeoutMs`) when the
   * job is cancelled, or whatever the job throws.
   */
  async run<T>(job: (signal: AbortSignal) => Promise<T>, opts: JobOptions = {}): Promise<T> {
    opts.signal?.throwIfAborted();
    this.assertRoom();
    const timeout = AbortSignal.timeout(this.timeoutMs);
    const signal = opts.signal ? AbortSignal.any([opts.signal, timeout]) : timeout;
    if (this.#running >= this.concurrency) await this.#wait(signal, opts.onQueued);
    else {
      this.#running++;
      opts.onQueued?.(0);
    }
    const t0 = performance.now();
    try {
      signal.throwIfAborted();
      return await job(signal);
    } finally {
      const ms = performance.now() - t0;
      this.#avgMs = this.#avgMs ? 0.8 * this.#avgMs + 0.2 * ms : ms;
      this.#running--;
      this.#next();
    }
  }

  #wait(signal: AbortSignal, onQueued?: (position: number) => void): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const waiter: Waiter = {
        start: () => {
          signal.removeEventListener("abort", onAbort);
          resolve();
        },
        onQueued,
      };
      const onAbort = () => {
        const i = this.#waiting.indexOf(waiter);
        if (i >= 0) {
          this.#waiting.splice(i, 1);
          this.#report(i);
        }
        reject(signal.reason);
      };
      signal.addEventListener("abort", onAbort, { once: true });
      this.#waiting.push(waiter);
      onQueued?.(this.#waiting.length);
    });
  }

  #next(): void {
    while (this.#running < this.concurrency && this.#waiting.length > 0) {
      const w = this.#waiting.shift()!;
      this.#running++;
      w.start();
      try {
        w.onQueued?.(0);
      } catch {
        // see #report
      }
      this.#report(0);
    }
  }

  /** Tell the waiters from index `from` on their new positions. */
  #report(from: number): void {
    for (let i = from; i < this.#waiting.length; i++) {
      try {
        this.#waiting[i].onQueued?.(i + 1);
      } catch {
        // a reporter's failure (e.g. a closed stream) must not stall the queue
      }
    }
  }
}
