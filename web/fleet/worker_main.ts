/**
 * `deno task worker --nats nats://host:4222 [--model FILE | --models registry.json]`: a GPU
 * worker of the fleet. It loads its models (the same registry as `deno task serve`), advertises
 * them, and runs the jobs the front ends publish until SIGINT/SIGTERM (it then finishes the job
 * in hand first).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { fail, intOption, runCli } from "../../cli/_cli.ts";
import { PipelineEngine, type RegistryEntry } from "../engine.ts";
import { defaultRegistry, idFor } from "../main.ts";
import { connectNats, NATS_ARGS, NATS_USAGE, natsOptionsFrom } from "./connect.ts";
import { FleetWorker } from "./worker.ts";
import { WORKER_ID } from "./protocol.ts";

const USAGE = `Usage: deno task worker --nats URL [options]

  --model FILE       serve this model file only (id: its file name without .safetensors)
  --models FILE      a JSON registry {"id": "path", ...}
  --id ID            worker id (default: random)
  --ack-wait S       seconds without a heartbeat before a job is redelivered (default 30)
  --max-deliver N    deliveries of one job before it fails with 503 (default 3)
${NATS_USAGE}
  -h, --help         this text

The ack wait and max deliveries are set when the first worker of a model creates its consumer.`;

async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: "string" },
      models: { type: "string" },
      id: { type: "string" },
      "ack-wait": { type: "string", default: "30" },
      "max-deliver": { type: "string", default: "3" },
      help: { type: "boolean", short: "h", default: false },
      ...NATS_ARGS,
    },
  });
  if (values.help) return console.log(USAGE);
  const int = (name: string, v: string, lo: number, hi: number) =>
    intOption(name, v, lo, hi, USAGE);
  if (values.id !== undefined && !WORKER_ID.test(values.id)) {
    fail(`--id must use letters, digits, "-", "_" (64 at most), got "${values.id}"`, USAGE);
  }
  const ackWaitS = int("ack-wait", values["ack-wait"], 1, 3600);
  const maxDeliver = int("max-deliver", values["max-deliver"], 1, 100);
  const nats = natsOptionsFrom(values, `w4-worker${values.id ? "-" + values.id : ""}`);
  let registry: RegistryEntry[];
  if (values.model) registry = [{ id: idFor(values.model), path: values.model }];
  else if (values.models) {
    const j = JSON.parse(await Deno.readTextFile(values.models));
    registry = Object.entries(j).map(([id, path]) => ({ id, path: String(path) }));
  } else registry = await defaultRegistry();

  console.log(`loading ${registry[0].path} …`);
  const engine = await PipelineEngine.create(registry);
  console.log(`connecting to ${nats.servers.join(", ")} …`);
  const nc = await connectNats(nats);
  const worker = await FleetWorker.start(nc, engine, { id: values.id, ackWaitS, maxDeliver });
  console.log(
    `worker ${worker.id}: ${
      engine.models().map((m) => `${m.id} (${m.precision})`).join(", ")
    }; device ${engine.health().device}`,
  );
  const stop = () => {
    console.log(`worker ${worker.id}: stopping after the job in hand`);
    worker.stop().then(() => nc.drain()).then(() => {
      engine.destroy();
      Deno.exit(0);
    });
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
  await worker.done;
}

if (import.meta.main) await runCli(() => main(Deno.args));
