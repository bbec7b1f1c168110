/**
 * `deno task serve --nats nats://host:4222 [options]`: the GPU-less front end of a fleet. It
 * serves the same page and API as `deno task serve`, validates requests the same way, and hands
 * each generation to the fleet's workers through JetStream ({@linkcode FleetEngine}).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { intOption } from "../../cli/_cli.ts";
import { createApp } from "../app.ts";
import { connectNats, NATS_ARGS, NATS_USAGE, natsOptionsFrom } from "./connect.ts";
import { FleetEngine } from "./front.ts";

const USAGE = `Usage: deno task serve --nats URL [options]

  --port N           port (default: $PORT or 8000)
  --host H           address to listen on (default 0.0.0.0)
  --queue N          jobs pending in the fleet (queued + running) before 429 (default 64)
  --per-caller N     jobs one caller (Authorization header) may have pending (default queue/4)
  --timeout S        time limit of one request in seconds, wait included (default 120)
  --wait-workers S   at start, wait this long for a worker to advertise a model (default 600)
${NATS_USAGE}
  -h, --help         this text

Environment: PORT; W4_API_TOKEN; W4_CORS (as for deno task serve).`;

/** Parse the options, connect, wait for a worker, then serve. */
export async function serveFleet(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      port: { type: "string" },
      host: { type: "string", default: "0.0.0.0" },
      queue: { type: "string", default: "64" },
      "per-caller": { type: "string" },
      timeout: { type: "string", default: "120" },
      "wait-workers": { type: "string", default: "600" },
      help: { type: "boolean", short: "h", default: false },
      ...NATS_ARGS,
    },
  });
  if (values.help) return console.log(USAGE);
  const int = (name: string, v: string, lo: number, hi: number) =>
    intOption(name, v, lo, hi, USAGE);
  const port = int("port", values.port ?? Deno.env.get("PORT") ?? "8000", 0, 65535);
  const maxPending = int("queue", values.queue, 1, 100000);
  const perCaller = values["per-caller"] === undefined
    ? undefined
    : int("per-caller", values["per-caller"], 1, maxPending);
  const timeoutMs = int("timeout", values.timeout, 1, 86400) * 1000;
  const waitS = int("wait-workers", values["wait-workers"], 0, 86400);
  const nats = natsOptionsFrom(values, "w4-front");
  console.log(`connecting to ${nats.servers.join(", ")} …`);
  const nc = await connectNats(nats);
  const engine = await FleetEngine.create(nc, { maxPending, perCaller });
  console.log("waiting for a worker …");
  await engine.waitForWorkers(waitS * 1000);
  const clientJs = await Deno.readTextFile(new URL("../dist/client.js", import.meta.url)).catch(
    () => undefined,
  );
  const app = createApp({
    engine,
    clientJs,
    token: Deno.env.get("W4_API_TOKEN") || undefined,
    cors: Deno.env.get("W4_CORS")?.split(",").map((s) => s.trim()).filter((s) => s),
    queue: engine.queueOptions(timeoutMs),
  });
  console.log(
    `models: ${engine.models().map((m) => `${m.id} (${m.precision})`).join(", ")}; ` +
      engine.health().device,
  );
  Deno.serve({
    port,
    hostname: values.host,
    onListen: ({ hostname, port }) => console.log(`serving on http://${hostname}:${port}/`),
  }, app.fetch);
}
