/**
 * A guard in front of `Deno.serve` against slow and greedy clients, which `Deno.serve` has no
 * settings for: it accepts TCP connections itself and relays each to the real server (listening
 * on a private Unix socket), enforcing
 * - a header read timeout: a request's head (request line + headers) must arrive within
 *   `headerTimeoutMs` of the connection opening or of its first byte (408, then closed);
 * - a body read timeout: a body announced by `Content-Length` must arrive within `bodyTimeoutMs`
 *   after its head (408, then closed); a chunked request body is refused (411: bodies here are
 *   small JSON or form posts);
 * - an idle timeout: a connection silent both ways for `idleTimeoutMs` is closed (a kept-alive
 *   connection after its last answer; set it above the longest silent request, e.g. the request
 *   time limit, since a generation answered as one PNG is silent until done);
 * - a cap of `perAddress` concurrent connections per client address (503 for one more);
 * - a 16 KB limit on a request head (431).
 * Responses (including Server-Sent-Event streams, however long) are relayed untouched.
 *
 * @module
 */

/** Options of {@linkcode serveGuarded}. */
export interface GuardOptions {
  /** Address to listen on. */
  hostname: string;
  /** Port (0: any free port). */
  port: number;
  /** Milliseconds to receive a request head (default 10 000). */
  headerTimeoutMs?: number;
  /** Milliseconds to receive a request body after its head (default 30 000). */
  bodyTimeoutMs?: number;
  /** Milliseconds a connection may be silent in both directions (default 130 000). */
  idleTimeoutMs?: number;
  /** Concurrent connections per client address (default 16). */
  perAddress?: number;
  /** Called once listening. */
  onListen?: (addr: { hostname: string; port: number }) => void;
}

/** A running guarded server. */
export interface GuardedServer {
  /** The address it listens on (the port filled in when 0 was asked). */
  addr: { hostname: string; port: number };
  /** Connections open now, per client address. */
  connections: Map<string, number>;
  /** Stop listening, close every connection and the inner server. */
  shutdown(): Promise<void>;
}

const MAX_HEAD = 16 * 1024;
const CRLF2 = new Uint8Array([13, 10, 13, 10]);

function find(hay: Uint8Array, needle: Uint8Array, from = 0): number {
  outer: for (let i = from; i + needle.length <= hay.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  if (a.length === 0) return b;
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

function plain(status: string, message: string): Uint8Array {
  const body = JSON.stringify({ error: message });
  return new TextEncoder().encode(
    `HTTP/1.1 ${status}\r\nContent-Type: application/json\r\nContent-Length: ${
      new TextEncoder().encode(body).length
    }\r\nConnection: close\r\n\r\n${body}`,
  );
}

/**
 * Listen on `opts.hostname:opts.port` and serve `handler` behind the guard. Throws
 * `Deno.errors.AddrInUse` (synchronously) when the port is taken, before anything else starts.
 *
 * @example
 * ```ts ignore
 * import { serveGuarded } from "./guard.ts";
 * const s = serveGuarded({ hostname: "127.0.0.1", port: 8000 }, () => new Response("hi"));
 * await s.shutdown();
 * ```
 */
export function serveGuarded(
  opts: GuardOptions,
  handler: (req: Request) => Response | Promise<Response>,
): GuardedServer {
  const headerMs = opts.headerTimeoutMs ?? 10_000;
  const bodyMs = opts.bodyTimeoutMs ?? 30_000;
  const cap = opts.perAddress ?? 16;
  const idleMs = opts.idleTimeoutMs ?? 130_000;
  const listener = Deno.listen({ hostname: opts.hostname, port: opts.port });
  // the real server, on a loopback port of its own (a Unix socket would need more permissions
  // than the tests grant; local processes are trusted either way)
  const inner = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, handler);
  const innerPort = inner.addr.port;
  const connections = new Map<string, number>();
  const open = new Set<Deno.Conn>();
  const addr = listener.addr as Deno.NetAddr;
  opts.onListen?.({ hostname: addr.hostname, port: addr.port });

  const relay = async (conn: Deno.TcpConn, who: string) => {
    let upstream: Deno.TcpConn | undefined;
    let responded = false; // the server sent bytes for the current request
    let timer: ReturnType<typeof setTimeout> | undefined;
    let idle: ReturnType<typeof setTimeout> | undefined;
    let closed = false;
    const close = () => {
      if (closed) return;
      closed = true;
      clearTimeout(timer);
      clearTimeout(idle);
      for (const c of [conn, upstream]) {
        try {
          c?.close();
        } catch { /* closed */ }
      }
    };
    const refuse = async (status: string, message: string) => {
      clearTimeout(timer);
      if (!responded) await conn.write(plain(status, message)).catch(() => {});
      close();
    };
    const touch = () => {
      clearTimeout(idle);
      if (!closed) idle = setTimeout(close, idleMs);
    };
    const deadline = (ms: number, status: string, message: string) => {
      clearTimeout(timer);
      timer = setTimeout(() => refuse(status, message), ms);
    };
    try {
      upstream = await Deno.connect({ hostname: "127.0.0.1", port: innerPort });
      const up = upstream;
      // server → client: relayed as it comes
      const down = (async () => {
        const buf = new Uint8Array(64 * 1024);
        for (;;) {
          const n = await up.read(buf).catch(() => null);
          if (n === null) break;
          touch();
          responded = true;
          let o = 0;
          while (o < n) o += await conn.write(buf.subarray(o, n));
        }
      })().catch(() => {}).finally(close);
      // client → server: request heads parsed for the timeouts
      const buf = new Uint8Array(64 * 1024);
      let pending: Uint8Array = new Uint8Array(0);
      let state: "head" | "body" = "head";
      let bodyLeft = 0;
      deadline(headerMs, "408 Request Timeout", "Cannot read the request: headers too slow");
      touch();
      for (;;) {
        const n = await conn.read(buf).catch(() => null);
        if (n === null) break;
        touch();
        let chunk: Uint8Array = buf.slice(0, n);
        while (chunk.length > 0) {
          if (state === "body") {
            const take = Math.min(bodyLeft, chunk.length);
            await writeAll(up, chunk.subarray(0, take));
            bodyLeft -= take;
            chunk = chunk.subarray(take);
            if (bodyLeft === 0) {
              state = "head";
              clearTimeout(timer);
              timer = undefined;
            }
            continue;
          }
          if (pending.length === 0 && timer === undefined) {
            responded = false;
            deadline(headerMs, "408 Request Timeout", "Cannot read the request: headers too slow");
          }
          pending = concat(pending, chunk);
          chunk = new Uint8Array(0);
          const end = find(pending, CRLF2, 0);
          if (end < 0) {
            if (pending.length > MAX_HEAD) {
              return await refuse(
                "431 Request Header Fields Too Large",
                "Cannot read the request: its head is over 16 KB",
              );
            }
            break;
          }
          const head = pending.subarray(0, end + 4);
          const text = new TextDecoder().decode(head);
          if (/\r\ntransfer-encoding:/i.test(text)) {
            return await refuse(
              "411 Length Required",
              "Cannot read the request: send the body with Content-Length, not chunked",
            );
          }
          const cl = /\r\ncontent-length:[ \t]*(\d+)/i.exec(text);
          bodyLeft = cl ? Number(cl[1]) : 0;
          await writeAll(up, head);
          chunk = pending.subarray(end + 4);
          pending = new Uint8Array(0);
          if (bodyLeft > 0) {
            state = "body";
            deadline(bodyMs, "408 Request Timeout", "Cannot read the request: body too slow");
          } else {
            clearTimeout(timer);
            timer = undefined;
          }
        }
      }
      // the client is done sending (or gone): let the server finish its answer
      clearTimeout(timer);
      if (state === "body" || pending.length > 0) return close();
      await up.closeWrite().catch(() => {});
      await down;
    } catch {
      // a connection reset or a write to a closed socket: nothing to report
    } finally {
      close();
      open.delete(conn);
      const left = (connections.get(who) ?? 1) - 1;
      if (left > 0) connections.set(who, left);
      else connections.delete(who);
    }
  };

  const accepting = (async () => {
    for (;;) {
      let conn: Deno.TcpConn;
      try {
        conn = await listener.accept() as Deno.TcpConn;
      } catch {
        return; // listener closed
      }
      const who = (conn.remoteAddr as Deno.NetAddr).hostname;
      const count = connections.get(who) ?? 0;
      if (count >= cap) {
        conn.write(plain(
          "503 Service Unavailable",
          `Cannot accept another connection from ${who}: ${cap} are open; close some and retry`,
        )).catch(() => {}).finally(() => {
          try {
            conn.close();
          } catch { /* closed */ }
        });
        continue;
      }
      connections.set(who, count + 1);
      open.add(conn);
      relay(conn, who);
    }
  })();

  return {
    addr: { hostname: addr.hostname, port: addr.port },
    connections,
    shutdown: async () => {
      try {
        listener.close();
      } catch { /* closed */ }
      await accepting;
      for (const c of open) {
        try {
          c.close();
        } catch { /* closed */ }
      }
      await inner.shutdown();
    },
  };
}

async function writeAll(c: Deno.Conn, data: Uint8Array): Promise<void> {
  let o = 0;
  while (o < data.length) o += await c.write(data.subarray(o));
}
