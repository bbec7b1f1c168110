/**
 * Where model bytes come from: the {@linkcode ByteSource} interface (a size and random-access
 * reads) that the safetensors reader, the quantized-file reader and the model file read through,
 * so the same code opens a local file in Deno (gpu/file_source.ts) and a file served over
 * HTTP or cached in a browser. This module uses Web APIs only (no Deno API): `fetch` with Range
 * requests, `Blob`, `Uint8Array`.
 *
 * @example
 * ```ts
 * import { BytesSource } from "./source.ts";
 * const src = new BytesSource(new Uint8Array([1, 2, 3, 4]), "four bytes");
 * console.log(src.size, await src.read(1, 2)); // 4 Uint8Array(2) [ 2, 3 ]
 * ```
 *
 * @module
 */

/** Random-access bytes of one file. */
export interface ByteSource {
  /** What the bytes are (a path or URL), for error messages. */
  readonly name: string;
  /** Total size in bytes. */
  readonly size: number;
  /**
   * `length` bytes at `offset` (within `[0, size]`, checked by the caller). Fewer bytes back than
   * asked means the source ended early (a file truncated after opening).
   */
  read(offset: number, length: number): Promise<Uint8Array>;
  /** Releases the source; later reads throw. */
  close(): void;
}

/** Whether `x` is a {@linkcode ByteSource} (rather than a path). */
export function isByteSource(x: unknown): x is ByteSource {
  return typeof x === "object" && x !== null && typeof (x as ByteSource).read === "function" &&
    typeof (x as ByteSource).size === "number";
}

function closedError(name: string): TypeError {
  return new TypeError(`Cannot read ${name}: the source is closed`);
}

/** Bytes in memory. */
export class BytesSource implements ByteSource {
  /** Name for messages. */
  readonly name: string;
  /** Size in bytes. */
  readonly size: number;
  #bytes: Uint8Array | null;

  /** Wraps `bytes` (not copied). */
  constructor(bytes: Uint8Array, name = "bytes in memory") {
    this.#bytes = bytes;
    this.name = name;
    this.size = bytes.byteLength;
  }

  /** A copy of the bytes in `[offset, offset + length)`. */
  read(offset: number, length: number): Promise<Uint8Array> {
    if (!this.#bytes) return Promise.reject(closedError(this.name));
    return Promise.resolve(this.#bytes.slice(offset, offset + length));
  }

  /** Drops the reference to the bytes. */
  close(): void {
    this.#bytes = null;
  }
}

/** A `Blob` (a browser `File`, or a body from the Cache API): reads slice it, copying nothing else. */
export class BlobSource implements ByteSource {
  /** Name for messages. */
  readonly name: string;
  /** Size in bytes. */
  readonly size: number;
  #blob: Blob | null;

  /** Wraps `blob`. */
  constructor(blob: Blob, name: string) {
    this.#blob = blob;
    this.name = name;
    this.size = blob.size;
  }

  /** The bytes in `[offset, offset + length)`. */
  async read(offset: number, length: number): Promise<Uint8Array> {
    if (!this.#blob) throw closedError(this.name);
    return new Uint8Array(await this.#blob.slice(offset, offset + length).arrayBuffer());
  }

  /** Drops the reference to the blob. */
  close(): void {
    this.#blob = null;
  }
}

/** Options of {@linkcode HttpRangeSource.open}. */
export interface HttpRangeOptions {
  /** The `fetch` to use (default the global one). */
  fetch?: typeof fetch;
  /** Extra request headers (e.g. `Authorization`). */
  headers?: Record<string, string>;
  /** Aborts pending reads. */
  signal?: AbortSignal;
}

/**
 * A file served over HTTP, read with `Range` requests. The size and `ETag` come from a `HEAD`
 * request; every read sends `If-Range: <etag>`, so a file replaced on the server mid-way is an
 * error (the server answers 200 with the new file instead of 206) rather than mixed bytes.
 */
export class HttpRangeSource implements ByteSource {
  /** The URL. */
  readonly name: string;
  /** Size in bytes (`Content-Length` of the HEAD answer). */
  readonly size: number;
  /** The server's `ETag` for the file ("" when it sent none). */
  readonly etag: string;
  #opts: HttpRangeOptions;
  #closed = false;

  private constructor(url: string, size: number, etag: string, opts: HttpRangeOptions) {
    this.name = url;
    this.size = size;
    this.etag = etag;
    this.#opts = opts;
  }

  /** `HEAD url` for the size and ETag; an error naming the URL and the status when it fails. */
  static async open(url: string, opts: HttpRangeOptions = {}): Promise<HttpRangeSource> {
    const f = opts.fetch ?? fetch;
    const res = await f(url, { method: "HEAD", headers: opts.headers, signal: opts.signal });
    if (!res.ok) throw new Error(`Cannot open ${url}: the server answered ${res.status}`);
    const size = Number(res.headers.get("Content-Length"));
    if (!Number.isSafeInteger(size) || size < 0) {
      throw new Error(`Cannot open ${url}: the answer has no Content-Length`);
    }
    if (!/\bbytes\b/.test(res.headers.get("Accept-Ranges") ?? "")) {
      throw new Error(`Cannot open ${url}: the server does not accept Range requests`);
    }
    return new HttpRangeSource(url, size, res.headers.get("ETag") ?? "", opts);
  }

  /** `GET` with `Range: bytes=offset-(offset+length-1)`; the answer must be that 206. */
  async read(offset: number, length: number): Promise<Uint8Array> {
    if (this.#closed) throw closedError(this.name);
    if (length === 0) return new Uint8Array(0);
    const headers: Record<string, string> = {
      ...this.#opts.headers,
      Range: `bytes=${offset}-${offset + length - 1}`,
    };
    if (this.etag) headers["If-Range"] = this.etag;
    const res = await (this.#opts.fetch ?? fetch)(this.name, {
      headers,
      signal: this.#opts.signal,
    });
    if (res.status !== 206) {
      await res.body?.cancel();
      throw new Error(
        res.status === 200
          ? `Cannot read ${this.name}: the file changed on the server while it was read; reload`
          : `Cannot read ${this.name} bytes ${offset}+${length}: the server answered ${res.status}`,
      );
    }
    const got = new Uint8Array(await res.arrayBuffer());
    if (got.byteLength > length) {
      throw new Error(`Cannot read ${this.name}: the server sent more bytes than the range asked`);
    }
    return got;
  }

  /** Later reads throw. */
  close(): void {
    this.#closed = true;
  }
}
