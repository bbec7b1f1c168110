/**
 * Stands in for gpu/file_source.ts in the browser bundle (web/build.ts maps one to the other):
 * a page has no local files, it reads models through a ByteSource (gpu/source.ts).
 *
 * @module
 */
import type { ByteSource } from "../gpu/source.ts";

/** Always refuses: pass a ByteSource (HttpRangeSource, BlobSource) instead of a path. */
export function openFileSource(path: string): Promise<ByteSource> {
  return Promise.reject(
    new TypeError(
      `Cannot open the local file ${path} in a browser: pass a ByteSource ` +
        "(HttpRangeSource or BlobSource from gpu/source.ts)",
    ),
  );
}
