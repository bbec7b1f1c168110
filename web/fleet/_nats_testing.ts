/**
 * Test and benchmark helpers of the fleet: a real `nats-server` with JetStream on a free loopback
 * port and a temporary store (restartable on the same port and store), and workers (fake, or real
 * on a model file) as subprocesses that can be SIGKILLed.
 *
 * @module
 */

/** Where Debian's `nats-server` lives (or the first one on PATH). */
export const NATS_SERVER: string | null = (() => {
  for (const p of ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"]) {
    try {
      if (Deno.statSync(p).isFile) return p;
    } catch { /* next */ }
  }
  return null;
})();

/** Why the fleet tests are skipped (no `nats-server`); null when they run. */
export const NO_NATS_REASON: string | null = NATS_SERVER
  ? null
  : "nats-server is not installed (apt-get install nats-server; .ci/run does it)";

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

async function waitPort(port: number, timeoutMs: number): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      return;
    } catch {
      if (Date.now() - t0 > timeoutMs) {
        throw new Error(`Cannot reach nats-server on port ${port} after ${timeoutMs} ms`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** A `nats-server -js` on 127.0.0.1 with its store in a temporary folder. */
export class NatsServer {
  /** `nats://127.0.0.1:PORT`. */
  readonly url: string;
  readonly #port: number;
  readonly #dir: string;
  #proc: Deno.ChildProcess | null = null;

  private constructor(port: number, dir: string) {
    this.#port = port;
    this.#dir = dir;
    this.url = `nats://127.0.0.1:${port}`;
  }

  /** Start a server on a free port. */
  static async start(): Promise<NatsServer> {
    if (!NATS_SERVER) throw new Error(NO_NATS_REASON!);
    const s = new NatsServer(freePort(), await Deno.makeTempDir({ prefix: "w4-nats-" }));
    await s.#spawn();
    return s;
  }

  async #spawn(): Promise<void> {
    this.#proc = new Deno.Command(NATS_SERVER!, {
      args: [
        "-a",
        "127.0.0.1",
        "-p",
        String(this.#port),
        "-js",
        "-sd",
        this.#dir,
      ],
      stdout: "null",
      stderr: "null",
    }).spawn();
    await waitPort(this.#port, 10_000);
  }

  /** Stop the server (SIGTERM, then wait). */
  async stop(): Promise<void> {
    const p = this.#proc;
    this.#proc = null;
    if (!p) return;
    p.kill("SIGTERM");
    await p.status;
  }

  /** Stop and start again on the same port and store. */
  async restart(): Promise<void> {
    await this.stop();
    await this.#spawn();
  }

  /** Stop and remove the store. */
  async dispose(): Promise<void> {
    await this.stop();
    await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
  }
}

/** Options of a worker subprocess (fake or real). */
export interface WorkerProcessOptions {
  /** Fake engine: milliseconds per step (default 10). */
  stepMs?: number;
  /** Seconds without a heartbeat before a job is redelivered (default 2). */
  ackWaitS?: number;
  /** Fake engine: every generation throws. */
  fail?: boolean;
  /** Deliveries of one job before it fails with 503 (default 3). */
  maxDeliver?: number;
}

/**
 * A fleet worker subprocess that can be SIGKILLed: the fake one (web/fleet/_fake_worker.ts), or,
 * with a model file, the real one (web/fleet/worker_main.ts, `deno task worker`) on this
 * machine's WebGPU adapter.
 */
export class WorkerProcess {
  /** Worker id. */
  readonly id: string;
  readonly #proc: Deno.ChildProcess;
  /** Everything it printed (stderr, and stdout after it was ready). */
  log = "";
  readonly #ready: Promise<void>;
  readonly #drained: Promise<void>;

  constructor(url: string, id: string, opts: WorkerProcessOptions = {}, model?: string) {
    this.id = id;
    const common = [
      "--nats",
      url,
      "--id",
      id,
      "--ack-wait",
      String(opts.ackWaitS ?? 2),
      "--max-deliver",
      String(opts.maxDeliver ?? 3),
    ];
    const args = model
      ? ["run", "-A", new URL("./worker_main.ts", import.meta.url).pathname, ...common]
        .concat(["--model", model])
      : ["run", "-A", new URL("./_fake_worker.ts", import.meta.url).pathname, ...common]
        .concat(["--step-ms", String(opts.stepMs ?? 10)], opts.fail ? ["--fail"] : []);
    // the fake worker prints "ready ID", worker_main.ts "worker ID: models…" once it pulls jobs
    const marker = model ? `worker ${id}: ` : `ready ${id}`;
    const proc = new Deno.Command(Deno.execPath(), { args, stdout: "piped", stderr: "piped" })
      .spawn();
    this.#proc = proc;
    const dec = new TextDecoder();
    let ready = () => {};
    let exited = (_e: Error) => {};
    this.#ready = new Promise((res, rej) => {
      ready = res;
      exited = rej;
    });
    this.#ready.catch(() => {}); // handled by ready(); an exit after it changes nothing
    const out = (async () => {
      let text = "";
      for await (const b of proc.stdout) {
        text += dec.decode(b, { stream: true });
        if (text.includes(marker)) ready();
      }
      this.log += text;
      exited(new Error(`worker ${id} exited before it was ready: ${this.log}`));
    })();
    const err = (async () => {
      for await (const b of proc.stderr) this.log += dec.decode(b, { stream: true });
    })();
    this.#drained = Promise.all([out, err]).then(() => {});
  }

  /** Resolves when it has joined the fleet; rejects when it exits first or after `timeoutMs`. */
  ready(timeoutMs = 120_000): Promise<void> {
    let t: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<never>((_, rej) => {
      t = setTimeout(
        () => rej(new Error(`worker ${this.id} not ready after ${timeoutMs} ms: ${this.log}`)),
        timeoutMs,
      );
    });
    return Promise.race([this.#ready, late]).finally(() => clearTimeout(t));
  }

  /** Send a signal and wait for the exit. */
  async kill(signal: Deno.Signal = "SIGKILL"): Promise<void> {
    try {
      this.#proc.kill(signal);
    } catch { /* already gone */ }
    await this.#proc.status;
    await this.#drained;
  }
}

/** `n` fake workers (or real ones on `model`), ready. */
export async function startWorkers(
  url: string,
  n: number,
  opts: WorkerProcessOptions = {},
  prefix = "w",
  model?: string,
): Promise<WorkerProcess[]> {
  const ws = Array.from(
    { length: n },
    (_, i) => new WorkerProcess(url, `${prefix}${i + 1}`, opts, model),
  );
  try {
    await Promise.all(ws.map((w) => w.ready()));
  } catch (e) {
    await Promise.all(ws.map((w) => w.kill()));
    throw e;
  }
  return ws;
}
