import { connect } from "@nats-io/transport-node";
import { Kvm } from "@nats-io/kv";
import { Objm } from "@nats-io/obj";
import { jetstream, jetstreamManager, AckPolicy, RetentionPolicy, DiscardPolicy } from "@nats-io/jetstream";
const nc = await connect({ servers: Deno.args[0] });
const nc2 = await connect({ servers: Deno.args[0] });
const jsm = await jetstreamManager(nc);
const mode = Deno.args[1];
const name = "T" + mode;
const sc: any = { name, subjects: [name + ".>"], retention: RetentionPolicy.Workqueue };
if (mode.includes("d")) { sc.discard = DiscardPolicy.New; sc.max_msgs = 64; }
if (mode.includes("a")) sc.max_age = 3600e9;
if (mode.includes("w")) sc.duplicate_window = 120e9;
await jsm.streams.add(sc);
const cfg: any = { durable_name: "c", ack_policy: AckPolicy.Explicit, filter_subject: name + ".a", ack_wait: 2e9 };
await jsm.consumers.add(name, cfg);
const js = jetstream(nc), js2 = jetstream(nc2);
const c = await js.consumers.get(name, "c");
const kv = await new Kvm(nc).create("kv" + mode);
const os = await new Objm(nc).create("os" + mode);
await js2.publish(name + ".a", "x");
for (let i = 0; i < 4; i++) {
  const t0 = performance.now();
  const m = await c.next({ expires: 2000 });
  console.log("got", m?.seq, (performance.now() - t0).toFixed(0));
  if (m) {
    if (mode.includes("k")) { await kv.get("x"); await kv.put("x", "y"); }
    if (mode.includes("o")) await os.putBlob({ name: "x" + i }, new Uint8Array(100));
    if (mode.includes("s")) { const sub = nc.subscribe("zz." + i); nc.publish("yy", "x"); sub.unsubscribe(); }
    await m.ackAck();
    setTimeout(() => js2.publish(name + ".a", "x", { msgID: crypto.randomUUID() }), 20);
  }
}
await new Promise(r => setTimeout(r, 100));
await nc.close(); await nc2.close();
