// The guard in front of Deno.serve (web/guard.ts), over raw TCP on loopback: stalled heads and
// bodies are answered 408 and closed within the timeouts, a client's extra connections get 503,
// chunked bodies 411, and ordinary requests (keep-alive, a JSON post, a port already in use)
// behave as without it.
import assert from "node:assert/strict";
import { serveGuarded } from "./guard.ts";

const enc = new TextEncoder(), dec = new TextDecoder();

function start(opts: { perAddress?: number } = {}) {
  const seen: string[] = [];
  const s = serveGuarded({
    hostname: "127.0.0.1",
    port: 0,
    headerTimeoutMs: 300,
    bodyTimeoutMs: 300,
    idleTimeoutMs: 400,
    perAddress: opts.perAddress ?? 4,
  }, async (req) => {
    let body: string;
    try {
      body = await req.text();
    } catch {
      seen.push("body cut"); // the guard closed a stalled request: the body read fails
      return new Response(null, { status: 400 });
    }
    seen.push(`${req.method} ${new URL(req.url).pathname} ${body}`);
    return Response.json({ ok: true, body });
  });
  return { s, seen };
}

/** Everything the server sends until it closes (or `ms` pass), and how long that took. */
async function readAll(c: Deno.Conn, ms = 3000): Promise<{ text: string; ms: number }> {
  const t0 = performance.now();
  const chunks: Uint8Array[] = [];
  const buf = new Uint8Array(4096);
  const timer = setTimeout(() => c.close(), ms);
  try {
    for (;;) {
      const n = await c.read(buf).catch(() => null);
      if (n === null) break;
      chunks.push(buf.slice(0, n));
    }
  } finally {
    clearTimeout(timer);
  }
  try {
    c.close();
  } catch { /* closed */ }
  return { text: chunks.map((b) => dec.decode(b)).join(""), ms: performance.now() - t0 };
}

Deno.test("guard: a request passes through; keep-alive serves a second one", async () => {
  const { s, seen } = start();
  try {
    const url = `http://127.0.0.1:${s.addr.port}/x`;
    const r1 = await fetch(url, { method: "POST", body: '{"a":1}' });
    assert.deepEqual(await r1.json(), { ok: true, body: '{"a":1}' });
    const r2 = await fetch(url);
    assert.equal(r2.status, 200);
    await r2.body?.cancel();
    assert.deepEqual(seen, ['POST /x {"a":1}', "GET /x "]);
  } finally {
    await s.shutdown();
  }
});

Deno.test("guard: a stalled head is answered 408 and closed within the header timeout", async () => {
  const { s, seen } = start();
  try {
    const c = await Deno.connect({ hostname: "127.0.0.1", port: s.addr.port });
    await c.write(enc.encode("GET / HTTP/1.1\r\nHost: x\r\n"));
    const { text, ms } = await readAll(c);
    assert.match(text, /^HTTP\/1\.1 408/);
    assert.match(text, /headers too slow/);
    assert.ok(ms < 2000, `closed after ${ms} ms`);
    // a connection that sends nothing at all is closed too
    const idle = await Deno.connect({ hostname: "127.0.0.1", port: s.addr.port });
    assert.match((await readAll(idle)).text, /^HTTP\/1\.1 408/);
    assert.deepEqual(seen, []);
  } finally {
    await s.shutdown();
  }
});

Deno.test("guard: a stalled body is answered 408 and closed; the handler sees no request", async () => {
  const { s, seen } = start();
  try {
    const c = await Deno.connect({ hostname: "127.0.0.1", port: s.addr.port });
    await c.write(
      enc.encode('POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"prompt":'),
    );
    const { text, ms } = await readAll(c);
    assert.match(text, /^HTTP\/1\.1 408/);
    assert.match(text, /body too slow/);
    assert.ok(ms < 2000, `closed after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
    assert.ok(seen.every((x) => x === "body cut"), `no complete request: ${seen}`);
  } finally {
    await s.shutdown();
  }
});

Deno.test("guard: connections beyond the per-address cap get 503; chunked bodies 411", async () => {
  const { s } = start({ perAddress: 2 });
  try {
    const held = [
      await Deno.connect({ hostname: "127.0.0.1", port: s.addr.port }),
      await Deno.connect({ hostname: "127.0.0.1", port: s.addr.port }),
    ];
    await new Promise((r) => setTimeout(r, 50));
    const third = await Deno.connect({ hostname: "127.0.0.1", port: s.addr.port });
    const { text, ms } = await readAll(third);
    assert.match(text, /^HTTP\/1\.1 503/);
    assert.match(text, /2 are open/);
    assert.ok(ms < 200, `answered after ${ms} ms`);
    held.forEach((c) => c.close());
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(s.connections.get("127.0.0.1") ?? 0, 0, "closed connections are counted out");
    const c = await Deno.connect({ hostname: "127.0.0.1", port: s.addr.port });
    await c.write(enc.encode(
      "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ));
    assert.match((await readAll(c)).text, /^HTTP\/1\.1 411/);
  } finally {
    await s.shutdown();
  }
});

Deno.test("guard: a port in use throws AddrInUse before anything starts", async () => {
  const { s } = start();
  try {
    assert.throws(
      () => serveGuarded({ hostname: "127.0.0.1", port: s.addr.port }, () => new Response()),
      Deno.errors.AddrInUse,
    );
  } finally {
    await s.shutdown();
  }
});

Deno.test("guard: a kept-alive connection silent after its answer is closed after the idle time", async () => {
  const { s, seen } = start();
  try {
    const c = await Deno.connect({ hostname: "127.0.0.1", port: s.addr.port });
    await c.write(enc.encode("GET /a HTTP/1.1\r\nHost: x\r\n\r\n"));
    const { text, ms } = await readAll(c);
    assert.match(text, /^HTTP\/1\.1 200/, "answered, then kept alive");
    assert.ok(ms >= 300 && ms < 2000, `closed after ${ms} ms of silence`);
    assert.deepEqual(seen, ["GET /a "]);
  } finally {
    await s.shutdown();
  }
});
