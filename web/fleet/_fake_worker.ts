/**
 * A fleet worker over the fake engine (web/_fake.ts), run as a subprocess by the fleet tests and
 * the fleet benchmark: `deno run -A web/fleet/_fake_worker.ts --nats URL --id ID --step-ms N
 * [--ack-wait S] [--max-deliver N] [--fail]`. `--fail` makes every generation throw.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { FakeEngine } from "../_fake.ts";
import { connectNats } from "./connect.ts";
import { FleetWorker } from "./worker.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    nats: { type: "string" },
    id: { type: "string" },
    "step-ms": { type: "string", default: "10" },
    "ack-wait": { type: "string", default: "2" },
    "max-deliver": { type: "string", default: "3" },
    heartbeat: { type: "string", default: "300" },
    fail: { type: "boolean", default: false },
  },
});
const engine = new FakeEngine(Number(values["step-ms"]));
if (values.fail) {
  engine.generate = () => Promise.reject(new Error("injected failure"));
}
const nc = await connectNats({ servers: [values.nats!], name: `fake-${values.id}` });
const worker = await FleetWorker.start(nc, engine, {
  id: values.id,
  ackWaitS: Number(values["ack-wait"]),
  maxDeliver: Number(values["max-deliver"]),
  heartbeatMs: Number(values.heartbeat),
  log: (l) => console.error(l),
});
console.log(`ready ${worker.id}`);
Deno.addSignalListener("SIGTERM", () => {
  worker.stop().then(() => nc.drain()).then(() => Deno.exit(0));
});
await worker.done;
