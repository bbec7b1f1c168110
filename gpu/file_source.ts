/**
 * A local file as a {@linkcode ByteSource} (Deno only: `Deno.open`, seek + read under a lock).
 * The browser bundle (web/build.ts) replaces this module with web/file_source_browser.ts, so no
 * Deno API reaches the page.
 *
 * @module
 */
import type { ByteSource } from "./source.ts";

/** Opens `path` for random-access reads. */
export async function openFileSource(path: string): Promise<ByteSource> {
  const file = await Deno.open(path, { read: true });
  try {
    const size = (await file.stat()).size;
    return new FileSource(path, file, size);
  } catch (e) {
    file.close();
    throw e;
  }
}

class FileSource implements ByteSource {
  readonly name: string;
  readonly size: number;
  #file: Deno.FsFile | null;
  #tail: Promise<unknown> = Promise.resolve();

  constructor(name: string, file: Deno.FsFile, size: number) {
    this.name = name;
    this.#file = file;
    this.size = size;
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    // seek + read is not atomic: reads are serialised
    const next = this.#tail.then(() => this.#read(offset, length));
    this.#tail = next.catch(() => {});
    return next;
  }

  async #read(offset: number, length: number): Promise<Uint8Array> {
    const file = this.#file;
    if (!file) throw new TypeError(`Cannot read ${this.name}: the file is closed`);
    const buf = new Uint8Array(length);
    await file.seek(offset, Deno.SeekMode.Start);
    let got = 0;
    while (got < length) {
      const n = await file.read(buf.subarray(got, Math.min(length, got + (1 << 30))));
      if (n === null) break;
      got += n;
    }
    return got === length ? buf : buf.subarray(0, got);
  }

  close(): void {
    this.#file?.close();
    this.#file = null;
  }
}
