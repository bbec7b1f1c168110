/// <reference lib="dom" />
/**
 * The browser's copy of a model file: looked up in the Cache API by URL and ETag (a hit transfers
 * no model bytes), else downloaded with `Range` requests in 1 MiB pieces (progress after each,
 * `If-Range` so a file replaced mid-way is an error) and stored. The checksum is verified when
 * the file is opened (runtime/model_file.ts); {@linkcode forgetModel} drops a copy that failed.
 * Web APIs only.
 *
 * @module
 */
import { HttpRangeSource } from "../gpu/source.ts";

/** The Cache API cache holding model files. */
export const MODEL_CACHE = "w4-models";
const PIECE = 1 << 20;

/** What {@linkcode fetchModel} returns. */
export interface FetchedModel {
  /** The file. */
  blob: Blob;
  /** It came from the browser's cache (no model bytes transferred). */
  cached: boolean;
  /** Milliseconds spent (cache lookup or download). */
  ms: number;
  /** Whether the copy could be stored for the next visit (false: no Cache API here). */
  stored: boolean;
}

function cacheApi(): CacheStorage | undefined {
  return typeof caches === "undefined" ? undefined : caches;
}

/**
 * The model file at `url` with ETag `etag` (from `GET /models`): from the cache when it holds that
 * version, else downloaded (`onProgress(bytesDone, bytesTotal)`) and cached.
 */
export async function fetchModel(
  url: string,
  etag: string,
  opts: { onProgress?: (done: number, total: number) => void; signal?: AbortSignal } = {},
): Promise<FetchedModel> {
  const t0 = performance.now();
  const store = cacheApi();
  const cache = store ? await store.open(MODEL_CACHE) : undefined;
  const hit = await cache?.match(url);
  if (hit && hit.headers.get("ETag") === etag) {
    const blob = await hit.blob();
    opts.onProgress?.(blob.size, blob.size);
    return { blob, cached: true, ms: performance.now() - t0, stored: true };
  }
  const src = await HttpRangeSource.open(url, { signal: opts.signal });
  if (etag && src.etag !== etag) {
    throw new Error(`Cannot download ${url}: the file changed on the server; reload the page`);
  }
  const parts: Uint8Array<ArrayBuffer>[] = [];
  opts.onProgress?.(0, src.size);
  for (let o = 0; o < src.size; o += PIECE) {
    opts.signal?.throwIfAborted();
    const n = Math.min(PIECE, src.size - o);
    const piece = await src.read(o, n);
    if (piece.byteLength !== n) throw new Error(`Cannot download ${url}: it ended early`);
    parts.push(piece as Uint8Array<ArrayBuffer>);
    opts.onProgress?.(o + n, src.size);
  }
  src.close();
  const blob = new Blob(parts, { type: "application/octet-stream" });
  let stored = false;
  if (cache) {
    try {
      await cache.put(
        url,
        new Response(blob, {
          headers: {
            ETag: src.etag,
            "Content-Length": String(blob.size),
            "Content-Type": "application/octet-stream",
          },
        }),
      );
      stored = true;
    } catch {
      // quota exceeded or storage disabled: this visit still generates
    }
  }
  return { blob, cached: false, ms: performance.now() - t0, stored };
}

/** Drop the cached copy of `url` (after its checksum failed). */
export async function forgetModel(url: string): Promise<void> {
  const store = cacheApi();
  if (store) await (await store.open(MODEL_CACHE)).delete(url);
}
