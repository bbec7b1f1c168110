/**
 * Runs async jobs one after another: an encoder's GPU buffers hold one call's data at a time, so
 * concurrent `encode` calls (an endpoint serving several requests) must not interleave.
 *
 * @module
 */

/** A FIFO of async jobs. */
export class Serial {
  #tail: Promise<unknown> = Promise.resolve();

  /** Run `fn` after every job queued before it (whether they succeeded or not). */
  run<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.#tail.then(fn, fn);
    this.#tail = next.catch(() => {});
    return next;
  }
}
