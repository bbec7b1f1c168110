/**
 * Test and benchmark helpers of the fleet: a real `nats-server` with JetStream on a free loopback
 * port and a temporary store (restartable on the same port and store), and fake workers as
 * subprocesses that can be SIGKILLed.
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

/** A fake worker subprocess (web/fleet/_fake_worker.ts). */
export class FakeWorkerProcess {
  /** Worker id. */
  readonly id: string;
  readonly #proc: Deno.ChildProcess;
  /** Everything it printed on stderr (its log). */
  log = "";
  readonly #ready: Promise<void>;
  readonly #drained: Promise<void>;

  constructor(
    url: string,
    id: string,
    opts: { stepMs?: number; ackWaitS?: number; fail?: boolean; maxDeliver?: number } = {},
  ) {
    this.id = id;
    const args = [
      "run",
      "-A",
      new URL("./_fake_worker.ts", import.meta.url).pathname,
      "--nats",
      url,
      "--id",
      id,
      "--step-ms",
      String(opts.stepMs ?? 10),
      "--ack-wait",
      String(opts.ackWaitS ?? 2),
      "--max-deliver",
      String(opts.maxDeliver ?? 3),
    ];
    if (opts.fail) args.push("--fail");
    const proc = new Deno.Command(Deno.execPath(), { args, stdout: "piped", stderr: "piped" })
      .spawn();
    this.#proc = proc;
    const dec = new TextDecoder();
    this.#ready = (async () => {
      const r = proc.stdout.getReader();
      let out = "";
      while (!out.includes("ready")) {
        const { value, done } = await r.read();
        if (done) throw new Error(`worker ${id} exited before it was ready: ${this.log}`);
        out += dec.decode(value);
      }
      r.releaseLock();
      proc.stdout.cancel().catch(() => {});
    })();
    this.#drained = (async () => {
      for await (const b of proc.stderr) this.log += dec.decode(b);
    })();
  }

  /** Resolves when it has joined the fleet. */
  ready(): Promise<void> {
    return this.#ready;
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

/** `n` fake workers, ready. */
export async function fakeWorkers(
  url: string,
  n: number,
  opts: { stepMs?: number; ackWaitS?: number; fail?: boolean; maxDeliver?: number } = {},
  prefix = "w",
): Promise<FakeWorkerProcess[]> {
  const ws = Array.from(
    { length: n },
    (_, i) => new FakeWorkerProcess(url, `${prefix}${i + 1}`, opts),
  );
  await Promise.all(ws.map((w) => w.ready()));
  return ws;
}
