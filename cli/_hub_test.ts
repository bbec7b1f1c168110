/**
 * The hub client against a fake Hugging Face-style hub (Deno.serve on 127.0.0.1, a random port):
 * file list with pagination, parallel ranged downloads, a connection cut mid-body that resumes
 * (within a run and across runs), corrupted files refused and fetched again, 401 for a gated
 * repo, and the offline message. Also `deno task pull` as a subprocess (one-line errors).
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { HubError, type HubOptions, listFiles, pull } from "./_hub.ts";

interface FakeFile {
  path: string;
  data: Uint8Array;
  lfs: boolean;
}

interface Fake {
  endpoint: string;
  /** Requests seen: `path` and the Range header. */
  log: { path: string; range: string | null; auth: string | null }[];
  /** Cut the next N file responses after half of their bytes. */
  cut: number;
  /** Serve wrong bytes for the next N file responses. */
  corrupt: number;
  close(): Promise<void>;
}

const sha256 = (d: Uint8Array) => createHash("sha256").update(d).digest("hex");
const sha1Blob = (d: Uint8Array) =>
  createHash("sha1").update(`blob ${d.length}\0`).update(d).digest("hex");

function randomBytes(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 255;
  }
  return out;
}

/** A fake hub serving `repos` (repo id → files); repos in `gated` need `Bearer good-token`. */
function fakeHub(repos: Record<string, FakeFile[]>, gated: string[] = []): Fake {
  const fake = { log: [], cut: 0, corrupt: 0 } as unknown as Fake;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const url = new URL(req.url);
    const auth = req.headers.get("authorization");
    fake.log.push({ path: url.pathname + url.search, range: req.headers.get("range"), auth });
    const api = url.pathname.match(/^\/api\/models\/([^/]+\/[^/]+)\/tree\/main$/);
    const res = url.pathname.match(/^\/([^/]+\/[^/]+)\/resolve\/main\/(.+)$/);
    const repo = api?.[1] ?? res?.[1];
    if (!repo || !repos[repo]) return new Response("not found", { status: 404 });
    if (gated.includes(repo) && auth !== "Bearer good-token") {
      return new Response("unauthorized", { status: 401, statusText: "Unauthorized" });
    }
    if (api) {
      // two pages: the first file, then the rest (Link: rel="next")
      const all = repos[repo].map((f) => ({
        type: "file",
        path: f.path,
        size: f.data.length,
        oid: sha1Blob(f.data),
        ...(f.lfs ? { lfs: { oid: sha256(f.data), size: f.data.length, pointerSize: 134 } } : {}),
      }));
      const second = url.searchParams.get("cursor") === "2";
      const body = JSON.stringify(
        second ? all.slice(1) : [{ type: "directory", path: "x" }, all[0]],
      );
      const headers = new Headers({ "content-type": "application/json" });
      if (!second && all.length > 1) {
        headers.set(
          "link",
          `<${fake.endpoint}${url.pathname}?recursive=true&cursor=2>; rel="next"`,
        );
      }
      return new Response(body, { headers });
    }
    const f = repos[repo].find((x) => x.path === decodeURIComponent(res![2]));
    if (!f) return new Response("not found", { status: 404 });
    let data = f.data, status = 200;
    const range = req.headers.get("range")?.match(/^bytes=(\d+)-(\d+)$/);
    const headers = new Headers();
    if (range) {
      const a = Number(range[1]), b = Number(range[2]);
      data = f.data.subarray(a, b + 1);
      status = 206;
      headers.set("content-range", `bytes ${a}-${b}/${f.data.length}`);
    }
    if (fake.corrupt > 0) {
      fake.corrupt--;
      data = data.map((v) => v ^ 0x5a);
    }
    if (fake.cut > 0) {
      fake.cut--;
      const half = data.subarray(0, data.length >> 1);
      const body = new ReadableStream<Uint8Array>({
        start(c) {
          c.enqueue(half);
        },
        pull(c) {
          c.error(new Error("connection cut by the fake hub"));
        },
      });
      return new Response(body, { status, headers });
    }
    return new Response(data.slice(), { status, headers });
  });
  fake.endpoint = `http://127.0.0.1:${server.addr.port}`;
  fake.close = () => server.shutdown();
  return fake;
}

const REPO = "tester/tiny-model";
const BIG = randomBytes(300_000, 1), CONFIG = new TextEncoder().encode('{"a": 1}\n');
const FILES: FakeFile[] = [
  { path: "config.json", data: CONFIG, lfs: false },
  { path: "weights/model.safetensors", data: BIG, lfs: true },
];

async function withHub(
  fn: (fake: Fake, opts: HubOptions) => Promise<void>,
  gated: string[] = [],
): Promise<void> {
  const fake = fakeHub({ [REPO]: FILES, "tester/gated": FILES }, gated);
  const cacheDir = await Deno.makeTempDir({ prefix: "w4_hub_" });
  try {
    await fn(fake, { endpoint: fake.endpoint, cacheDir, token: "", rangeThreshold: 100_000 });
  } finally {
    await fake.close();
    await Deno.remove(cacheDir, { recursive: true });
  }
}

const fileRequests = (fake: Fake) => fake.log.filter((l) => l.path.includes("/resolve/"));

Deno.test("hub: file list (two pages) and parallel ranged downloads, verified", async () => {
  await withHub(async (fake, opts) => {
    const files = await listFiles(REPO, opts);
    assert.deepEqual(files.map((f) => [f.path, f.size, f.sha256]), [
      ["config.json", CONFIG.length, undefined],
      ["weights/model.safetensors", BIG.length, sha256(BIG)],
    ]);
    const paths = await pull(REPO, { ...opts, connections: 3 });
    assert.deepEqual(await Deno.readFile(paths[0]), CONFIG);
    assert.deepEqual(await Deno.readFile(paths[1]), BIG);
    assert.ok(paths[1].endsWith(`/hub/${REPO}/main/weights/model.safetensors`));
    const ranges = fileRequests(fake).map((l) => l.range).filter(Boolean);
    assert.deepEqual(ranges, ["bytes=0-99999", "bytes=100000-199999", "bytes=200000-299999"]);
    // a second pull uses the verified copy: no file request
    const before = fileRequests(fake).length;
    await pull(`${REPO}/weights/model.safetensors`, opts);
    assert.equal(fileRequests(fake).length, before);
  });
});

Deno.test("hub: a connection cut mid-body resumes from the last byte received", async () => {
  await withHub(async (fake, opts) => {
    fake.cut = 1;
    const progress: number[] = [];
    const [path] = await pull(`${REPO}/weights/model.safetensors`, {
      ...opts,
      connections: 1,
      onProgress: (_, done) => progress.push(done),
    });
    assert.deepEqual(await Deno.readFile(path), BIG);
    const reqs = fileRequests(fake);
    assert.equal(reqs.length, 2);
    assert.equal(reqs[0].range, null); // the whole file
    const resumeAt = Number(reqs[1].range!.match(/^bytes=(\d+)-299999$/)![1]);
    assert.ok(resumeAt > 0 && resumeAt <= BIG.length / 2, `resumed at ${resumeAt}`);
    assert.equal(progress.at(-1), BIG.length);
  });
});

Deno.test("hub: an interrupted run leaves a .part file the next run resumes", async () => {
  await withHub(async (fake, opts) => {
    fake.cut = 1;
    const file = `${REPO}/weights/model.safetensors`;
    await assert.rejects(pull(file, { ...opts, retries: 0 }), (e) => {
      assert.ok(e instanceof HubError);
      assert.match(e.message, /dropped 1 times .*run the command again to resume/);
      return true;
    });
    const before = fileRequests(fake).length;
    const [path] = await pull(file, opts);
    assert.deepEqual(await Deno.readFile(path), BIG);
    const again = fileRequests(fake).slice(before).map((l) => l.range);
    // 3 ranges of 100000: the two that finished are kept, the cut one resumes mid-range
    assert.equal(again.length, 1, `requests of the second run: ${again}`);
    const start = Number(again[0]!.match(/^bytes=(\d+)-/)![1]);
    assert.ok(start % 100_000 > 0, `resumed at ${start}`);
  });
});

Deno.test("hub: a corrupted file is refused and fetched again", async () => {
  await withHub(async (fake, opts) => {
    // a corrupt copy in the cache (same size): verification fails, the file is fetched again
    const [path] = await pull(`${REPO}/weights/model.safetensors`, opts);
    const bad = BIG.slice();
    bad[1234] ^= 1;
    await Deno.writeFile(path, bad);
    await Deno.remove(`${path}.verified.json`);
    const before = fileRequests(fake).length;
    await pull(`${REPO}/weights/model.safetensors`, opts);
    assert.deepEqual(await Deno.readFile(path), BIG);
    assert.ok(fileRequests(fake).length > before);
    // the hub serves wrong bytes once: refused, fetched again, verified
    await Deno.remove(path);
    await Deno.remove(`${path}.verified.json`);
    fake.corrupt = 1;
    await pull(`${REPO}/weights/model.safetensors`, { ...opts, connections: 1 });
    assert.deepEqual(await Deno.readFile(path), BIG);
    // ... and always: a clear error, nothing left in the cache
    await Deno.remove(path);
    await Deno.remove(`${path}.verified.json`);
    fake.corrupt = 100;
    await assert.rejects(
      pull(`${REPO}/weights/model.safetensors`, { ...opts, connections: 1 }),
      /Cannot verify tester\/tiny-model\/weights\/model.safetensors: its SHA-256 differs/,
    );
    await assert.rejects(Deno.stat(path), Deno.errors.NotFound);
  });
});

Deno.test("hub: gated repo: 401 without a token, refused token, good token", async () => {
  await withHub(async (fake, opts) => {
    await assert.rejects(pull("tester/gated", opts), (e) => {
      assert.ok(e instanceof HubError);
      assert.match(e.message, /Cannot access the file list of tester\/gated: the hub answered 401/);
      assert.match(e.message, /gated or private.*set HF_TOKEN/);
      return true;
    });
    await assert.rejects(pull("tester/gated", { ...opts, token: "wrong" }), /HF_TOKEN was sent/);
    const paths = await pull("tester/gated/config.json", { ...opts, token: "good-token" });
    assert.deepEqual(await Deno.readFile(paths[0]), CONFIG);
    assert.equal(fake.log.at(-1)!.auth, "Bearer good-token");
    await assert.rejects(
      pull(`${REPO}/nope.bin`, opts),
      /Cannot find nope.bin in tester\/tiny-model/,
    );
    await assert.rejects(
      pull("nobody/nothing", opts),
      /Cannot find the file list of nobody\/nothing.*404/,
    );
  }, ["tester/gated"]);
});

Deno.test("hub: offline gives a clear message", async () => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close(); // nothing listens there now: connection refused
  await assert.rejects(
    listFiles(REPO, { endpoint: `http://127.0.0.1:${port}` }),
    /Cannot reach http:\/\/127.0.0.1:\d+ .*are you offline\? Check the network connection/,
  );
  await assert.rejects(
    listFiles(REPO, { endpoint: "http://no-such-host.invalid" }),
    /Cannot reach http:\/\/no-such-host.invalid .*offline/,
  );
});

Deno.test("deno task pull: downloads with a progress log, errors in one line", async () => {
  await withHub(async (fake, opts) => {
    const cli = new URL("./pull.ts", import.meta.url).pathname;
    const run = async (args: string[], envs: Record<string, string>) => {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", cli, ...args],
        env: { ...envs, NO_COLOR: "1" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const dec = new TextDecoder();
      return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
    };
    const envs = { HF_ENDPOINT: fake.endpoint, W4_CACHE: opts.cacheDir! };
    const ok = await run([`${REPO}/weights/model.safetensors`], envs);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(ok.stdout.trim(), `${opts.cacheDir}/hub/${REPO}/main/weights/model.safetensors`);
    assert.match(ok.stderr, /weights\/model.safetensors: 100% of 300.0 KB/);
    const bad = await run(["tester/gated"], envs);
    assert.equal(bad.code, 1);
    assert.equal(bad.stderr.trim().split("\n").length, 1, bad.stderr);
    assert.match(bad.stderr, /^error: Cannot access the file list of tester\/gated/);
  }, ["tester/gated"]);
});
