/**
 * Connecting to NATS (servers, credentials, TLS: passed through to the client) and creating the
 * fleet's JetStream objects when they are missing: the job stream, the two KV buckets and the
 * Object Store (see `protocol.ts`).
 *
 * @module
 */
import {
  connect,
  credsAuthenticator,
  type NatsConnection,
  type NodeConnectionOptions,
} from "@nats-io/transport-node";
import {
  DiscardPolicy,
  type JetStreamManager,
  jetstreamManager,
  RetentionPolicy,
} from "@nats-io/jetstream";
import { type KV, Kvm } from "@nats-io/kv";
import { type ObjectStore, Objm } from "@nats-io/obj";
import { IMAGES_BUCKET, JOBS_BUCKET, JOBS_STREAM, WORKERS_BUCKET } from "./protocol.ts";

/** How to reach the NATS cluster. */
export interface NatsOptions {
  /** Server URLs, e.g. `nats://10.0.0.5:4222` (several for a cluster). */
  servers: string[];
  /** A `.creds` file (JWT + NKey seed, from `nsc`). */
  credsFile?: string;
  /** A token (`W4_NATS_TOKEN`). */
  token?: string;
  /** User name (with `pass`). */
  user?: string;
  /** Password (`W4_NATS_PASSWORD`). */
  pass?: string;
  /** TLS: CA certificate file (PEM), to verify the server. */
  caFile?: string;
  /** TLS: client certificate file (PEM), for mutual TLS. */
  certFile?: string;
  /** TLS: client key file (PEM). */
  keyFile?: string;
  /** Name shown in the server's connection list. */
  name?: string;
}

/** Help text of the NATS options, shared by `serve --nats` and `worker`. */
export const NATS_USAGE = `  --nats URL[,URL]   NATS servers (nats://host:4222; tls://… for TLS)
  --nats-creds FILE  credentials file (JWT + NKey seed)
  --nats-user NAME   user name (password from W4_NATS_PASSWORD)
  --nats-ca FILE     CA certificate (PEM) to verify the server (turns on TLS)
  --nats-cert FILE   client certificate (PEM), for mutual TLS
  --nats-key FILE    client key (PEM)
Environment: W4_NATS_TOKEN (token auth), W4_NATS_PASSWORD.`;

/** The `parseArgs` options of {@linkcode NATS_USAGE}. */
export const NATS_ARGS = {
  nats: { type: "string" },
  "nats-creds": { type: "string" },
  "nats-user": { type: "string" },
  "nats-ca": { type: "string" },
  "nats-cert": { type: "string" },
  "nats-key": { type: "string" },
} as const;

/** {@linkcode NatsOptions} from parsed {@linkcode NATS_ARGS} and the environment. */
export function natsOptionsFrom(v: Record<string, unknown>, name: string): NatsOptions {
  const s = (k: string) => typeof v[k] === "string" ? v[k] as string : undefined;
  const servers = (s("nats") ?? "").split(",").map((x) => x.trim()).filter((x) => x);
  for (const u of servers) {
    if (!/^(nats|tls|ws|wss):\/\/[^\s/]+\/?$/.test(u)) {
      throw new RangeError(`Cannot use NATS server "${u}": give nats://host:port`);
    }
  }
  return {
    servers,
    credsFile: s("nats-creds"),
    token: Deno.env.get("W4_NATS_TOKEN") || undefined,
    user: s("nats-user"),
    pass: Deno.env.get("W4_NATS_PASSWORD") || undefined,
    caFile: s("nats-ca"),
    certFile: s("nats-cert"),
    keyFile: s("nats-key"),
    name,
  };
}

/** Connect, reconnecting for ever (every 250 ms) when the server goes away. */
export async function connectNats(o: NatsOptions): Promise<NatsConnection> {
  if (o.servers.length === 0) throw new RangeError("Cannot connect to NATS: give --nats URL");
  const opts: NodeConnectionOptions = {
    servers: o.servers,
    name: o.name,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    pingInterval: 10_000,
  };
  if (o.credsFile) {
    opts.authenticator = credsAuthenticator(await Deno.readFile(o.credsFile));
  }
  if (o.token) opts.token = o.token;
  if (o.user) {
    opts.user = o.user;
    opts.pass = o.pass;
  }
  if (o.caFile || o.certFile || o.keyFile) {
    opts.tls = { caFile: o.caFile, certFile: o.certFile, keyFile: o.keyFile };
  }
  return await connect(opts);
}

/** Settings of the fleet's JetStream objects. */
export interface InfraOptions {
  /** Jobs the stream holds (queued + running) before publishing is refused (the 429). */
  maxPending?: number;
  /** How long job records and images are kept, in milliseconds (default 1 hour). */
  keepMs?: number;
  /** Heartbeat period of the workers, in milliseconds (their KV entries expire after 5). */
  heartbeatMs?: number;
}

/** Handles on the fleet's JetStream objects. */
export interface Infra {
  /** Stream management. */
  jsm: JetStreamManager;
  /** Job records. */
  jobs: KV;
  /** Worker heartbeats. */
  workers: KV;
  /** Finished images. */
  images: ObjectStore;
}

/**
 * Create (or bind to) the stream and buckets. A front end passes `maxPending` and owns that
 * limit (it updates the stream when it differs); a worker creates the stream only if missing.
 */
export async function ensureInfra(nc: NatsConnection, o: InfraOptions = {}): Promise<Infra> {
  const jsm = await jetstreamManager(nc);
  const keepMs = o.keepMs ?? 3_600_000;
  const maxMsgs = o.maxPending ?? 64;
  const info = await jsm.streams.info(JOBS_STREAM).catch(() => null);
  if (!info) {
    await jsm.streams.add({
      name: JOBS_STREAM,
      subjects: ["w4.jobs.>"],
      retention: RetentionPolicy.Workqueue,
      discard: DiscardPolicy.New,
      max_msgs: maxMsgs,
      max_age: keepMs * 1e6,
      duplicate_window: 120e9,
    }).catch(async (e) => {
      // another process created it first
      if (!await jsm.streams.info(JOBS_STREAM).catch(() => null)) throw e;
    });
  } else if (o.maxPending !== undefined && info.config.max_msgs !== o.maxPending) {
    await jsm.streams.update(JOBS_STREAM, { ...info.config, max_msgs: o.maxPending });
  }
  const kvm = new Kvm(nc);
  const jobs = await kvm.create(JOBS_BUCKET, { history: 1, ttl: keepMs });
  const workers = await kvm.create(WORKERS_BUCKET, {
    history: 1,
    ttl: 5 * (o.heartbeatMs ?? 2000),
  });
  const images = await new Objm(nc).create(IMAGES_BUCKET, { ttl: keepMs * 1e6 });
  return { jsm, jobs, workers, images };
}
