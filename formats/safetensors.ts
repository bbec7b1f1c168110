/**
 * Streaming safetensors reader and writer: tensors are read one at a time from their file
 * offsets (seek + read), so checkpoints over 2 GB and larger than memory work; writes stream to
 * a temporary file beside the target and are renamed into place on commit, so a failed or
 * interrupted write never leaves a partial file at the final path.
 *
 * Layout (the public safetensors format): an 8-byte little-endian header length N, N bytes of
 * UTF-8 JSON `{ "__metadata__": {string: string}, name: { dtype, shape, data_offsets: [b, e] } }`
 * (offsets relative to the data region at byte 8 + N), then the data region.
 *
 * The reader validates the whole header before returning, and refuses with a {@link FormatError}
 * naming the file and, where known, the tensor: a truncated file, a header length beyond the
 * file, a header that is not a JSON object, duplicate tensor names (found by scanning the header
 * text, since `JSON.parse` silently keeps the last), an unknown dtype, a bad shape, offsets out of
 * range or overlapping, a byte size that is not shape × dtype size, and a non string→string
 * `__metadata__`. Like the reference implementation it also requires the tensors to cover the
 * data region exactly: gaps and trailing bytes are refused (they are how polyglot files hide
 * content), so every byte of the data region belongs to exactly one tensor.
 *
 * @example
 * ```ts ignore
 * import { SafetensorsReader } from "./safetensors.ts";
 * const r = await SafetensorsReader.open("tests/fixtures/tiny_dit.safetensors");
 * const w = await r.readFloat32("blocks.0.attn.qkv.weight"); // [192, 64] as Float32Array
 * r.close();
 * ```
 *
 * @module
 */

import { FormatError } from "../gpu/errors.ts";
import { type ByteSource, isByteSource } from "../gpu/source.ts";
import { openFileSource } from "../gpu/file_source.ts";

/** Element types this module reads and writes (safetensors names). */
export type Dtype =
  | "F32"
  | "F16"
  | "BF16"
  | "U32"
  | "I32"
  | "U8"
  | "I8"
  | "F8_E4M3"
  | "U16"
  | "I16"
  | "F64"
  | "I64";

/** Bytes per element of each dtype. */
export const DTYPE_BYTES: Readonly<Record<Dtype, number>> = {
  F64: 8,
  I64: 8,
  F32: 4,
  U32: 4,
  I32: 4,
  F16: 2,
  BF16: 2,
  U16: 2,
  I16: 2,
  U8: 1,
  I8: 1,
  F8_E4M3: 1,
};

/** Largest header accepted, as in the reference implementation (100 MB). */
export const MAX_HEADER_BYTES = 100_000_000;

/** One tensor's entry; `begin`/`end` are absolute byte offsets in the file. */
export interface TensorInfo {
  /** Tensor name. */
  name: string;
  /** Element type. */
  dtype: Dtype;
  /** Shape (`[]` for a scalar). */
  shape: number[];
  /** Absolute byte offset of the first data byte. */
  begin: number;
  /** Absolute byte offset one past the last data byte. */
  end: number;
}

/** A tensor announced to {@link SafetensorsWriter.create}. */
export interface TensorSpec {
  /** Tensor name. */
  name: string;
  /** Element type. */
  dtype: Dtype;
  /** Shape (`[]` for a scalar). */
  shape: number[];
  /** Bytes of data that will be written (must equal shape × dtype size). */
  byteLength: number;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Whether `s` names a dtype of {@link Dtype}. */
export function isDtype(s: unknown): s is Dtype {
  return typeof s === "string" && Object.hasOwn(DTYPE_BYTES, s);
}

/** Product of a shape's dimensions (1 for a scalar `[]`). */
export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Decodes little-endian F32/F16/BF16/F64 bytes to a new Float32Array. */
export function toFloat32(dtype: Dtype, bytes: Uint8Array): Float32Array {
  return decodeFloat32(dtype, bytes.slice());
}

/** {@link toFloat32} on a fresh array whose buffer it may reuse (F32 costs no copy). */
function decodeFloat32(dtype: Dtype, copy: Uint8Array): Float32Array {
  const size = DTYPE_BYTES[dtype];
  if (!LITTLE_ENDIAN) swapBytes(copy, size);
  const n = copy.byteLength / size;
  switch (dtype) {
    case "F32":
      return new Float32Array(copy.buffer, 0, n);
    case "F64":
      return new Float32Array(new Float64Array(copy.buffer, 0, n));
    case "F16":
      return new Float32Array(new Float16Array(copy.buffer, 0, n));
    case "BF16": {
      const u16 = new Uint16Array(copy.buffer, 0, n);
      const u32 = new Uint32Array(n);
      for (let i = 0; i < n; i++) u32[i] = u16[i] << 16;
      return new Float32Array(u32.buffer);
    }
    default:
      throw new TypeError(`Cannot convert ${dtype} to float32: only F32, F16, BF16 and F64 are`);
  }
}

/** Encodes float values as little-endian F32, F16 or BF16 bytes (round to nearest even). */
export function fromFloat32(dtype: "F32" | "F16" | "BF16", values: ArrayLike<number>): Uint8Array {
  const n = values.length;
  let out: Uint8Array;
  if (dtype === "F32") {
    out = new Uint8Array(Float32Array.from(values).buffer);
  } else if (dtype === "F16") {
    out = new Uint8Array(Float16Array.from(values).buffer);
  } else {
    const bits = new Uint32Array(Float32Array.from(values).buffer);
    const u16 = new Uint16Array(n);
    for (let i = 0; i < n; i++) {
      const b = bits[i];
      u16[i] = (b & 0x7fffffff) > 0x7f800000
        ? (b >>> 16) | 0x40
        : (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
    }
    out = new Uint8Array(u16.buffer);
  }
  if (!LITTLE_ENDIAN) swapBytes(out, dtype === "F32" ? 4 : 2);
  return out;
}

function swapBytes(b: Uint8Array, size: number): void {
  if (size === 1) return;
  for (let i = 0; i + size <= b.length; i += size) b.subarray(i, i + size).reverse();
}

/**
 * Finds the first key repeated within one JSON object of `text` (which must be valid JSON).
 * Returns the key and the top-level key it sits under (undefined for a top-level duplicate).
 */
export function findDuplicateKey(text: string): { key: string; under?: string } | null {
  const stack: (Set<string> | null)[] = []; // a key set per open object, null per open array
  let topKey: string | undefined;
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      let j = i + 1;
      while (text.charCodeAt(j) !== 0x22) j += text.charCodeAt(j) === 0x5c /* \ */ ? 2 : 1;
      const top = stack[stack.length - 1];
      if (expectKey && top) {
        const key = JSON.parse(text.slice(i, j + 1)) as string;
        if (top.has(key)) return { key, under: stack.length === 1 ? undefined : topKey };
        top.add(key);
        if (stack.length === 1) topKey = key;
        expectKey = false;
      }
      i = j;
    } else if (c === 0x7b /* { */) {
      stack.push(new Set());
      expectKey = true;
    } else if (c === 0x5b /* [ */) {
      stack.push(null);
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop();
    } else if (c === 0x2c /* , */) {
      expectKey = stack[stack.length - 1] != null;
    }
  }
  return null;
}

/** Parses and validates a header; `dataSize` is the file size minus 8 + header length. */
export function parseHeader(
  file: string,
  headerBytes: Uint8Array,
  dataStart: number,
  dataSize: number,
): { metadata: Record<string, string>; tensors: Map<string, TensorInfo> } {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(headerBytes);
  } catch {
    throw new FormatError(file, "the header is not valid UTF-8; the file is not safetensors");
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new FormatError(
      file,
      `the header is not JSON (${(e as Error).message}); the file is corrupt or not safetensors`,
    );
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new FormatError(file, "the header is not a JSON object; the file is not safetensors");
  }
  const dup = findDuplicateKey(text);
  if (dup?.key === "__metadata__" && dup.under === undefined) {
    throw new FormatError(file, "the header has two __metadata__ entries");
  }
  if (dup && dup.under === undefined) {
    throw new FormatError(file, `the header names tensor "${dup.key}" twice`, dup.key);
  }
  if (dup) {
    throw new FormatError(file, `the header repeats key "${dup.key}" in one entry`, dup.under);
  }
  const metadata: Record<string, string> = {};
  const tensors = new Map<string, TensorInfo>();
  for (const [name, entry] of Object.entries(json as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (typeof entry !== "object" || entry === null || Array.isArray(entry)) {
        throw new FormatError(file, "__metadata__ is not an object of strings");
      }
      for (const [k, v] of Object.entries(entry)) {
        if (typeof v !== "string") {
          throw new FormatError(file, `__metadata__ key "${k}" is not a string (${typeof v})`);
        }
        metadata[k] = v;
      }
      continue;
    }
    tensors.set(name, parseEntry(file, name, entry, dataStart, dataSize));
  }
  checkCoverage(file, [...tensors.values()], dataStart, dataSize);
  return { metadata, tensors };
}

function parseEntry(
  file: string,
  name: string,
  entry: unknown,
  dataStart: number,
  dataSize: number,
): TensorInfo {
  const bad = (msg: string) => new FormatError(file, msg, name);
  if (typeof entry !== "object" || entry === null || Array.isArray(entry)) {
    throw bad("the entry is not an object with dtype, shape and data_offsets");
  }
  const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
  if (!isDtype(dtype)) {
    throw bad(
      `unknown dtype ${JSON.stringify(dtype)}; this build reads ${
        Object.keys(DTYPE_BYTES).join(", ")
      }`,
    );
  }
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw bad(`shape ${JSON.stringify(shape)} is not an array of non-negative integers`);
  }
  if (
    !Array.isArray(offsets) || offsets.length !== 2 ||
    !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)
  ) {
    throw bad(`data_offsets ${JSON.stringify(offsets)} is not a pair of non-negative integers`);
  }
  const [b, e] = offsets as number[];
  if (b > e || e > dataSize) {
    throw bad(
      `data_offsets [${b}, ${e}] are out of range: the data region holds ${dataSize} bytes; ` +
        "the file is truncated or corrupt",
    );
  }
  const expected = numel(shape) * DTYPE_BYTES[dtype];
  if (!Number.isSafeInteger(expected) || expected !== e - b) {
    throw bad(
      `it has ${e - b} bytes but shape [${shape.join(", ")}] of ${dtype} needs ${expected} bytes`,
    );
  }
  return { name, dtype, shape: shape as number[], begin: dataStart + b, end: dataStart + e };
}

/** Requires the tensors, sorted by offset, to tile the data region without overlap or gap. */
function checkCoverage(file: string, list: TensorInfo[], dataStart: number, dataSize: number) {
  list.sort((x, y) => x.begin - y.begin || x.end - y.end);
  let pos = dataStart;
  let prev: TensorInfo | undefined;
  for (const t of list) {
    if (t.begin < pos) {
      throw new FormatError(file, `its bytes overlap those of tensor "${prev?.name}"`, t.name);
    }
    if (t.begin > pos) {
      throw new FormatError(
        file,
        `${t.begin - pos} bytes before it belong to no tensor; safetensors data must be ` +
          "contiguous (re-save the file with a safetensors writer)",
        t.name,
      );
    }
    pos = t.end;
    prev = t;
  }
  if (pos !== dataStart + dataSize) {
    throw new FormatError(
      file,
      `${dataStart + dataSize - pos} bytes after the last tensor belong to no tensor; ` +
        "the file is corrupt or has data appended",
    );
  }
}

/** Serializes async operations on one file handle (seek + read is not atomic). */
class Lock {
  #tail: Promise<unknown> = Promise.resolve();
  run<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.#tail.then(fn, fn);
    this.#tail = next.catch(() => {});
    return next;
  }
}

async function writeFully(file: Deno.FsFile, data: Uint8Array): Promise<void> {
  let done = 0;
  while (done < data.length) done += await file.write(data.subarray(done));
}

/**
 * Reads a safetensors file tensor by tensor; see the module doc for what it validates. The bytes
 * come from a {@link ByteSource}: a local file (a path, in Deno) or any other source (HTTP Range
 * requests, a Blob in a browser).
 */
export class SafetensorsReader {
  /** The file this reader reads (the source's name). */
  readonly path: string;
  /** The header's `__metadata__` (empty when absent). */
  readonly metadata: Record<string, string>;
  /** Every tensor, in header order. */
  readonly tensors: Map<string, TensorInfo>;
  /** Absolute offset of the data region (8 + header length). */
  readonly dataStart: number;
  /** Total file size in bytes. */
  readonly fileSize: number;
  #source: ByteSource | null;

  private constructor(
    source: ByteSource,
    header: { metadata: Record<string, string>; tensors: Map<string, TensorInfo> },
    dataStart: number,
  ) {
    this.path = source.name;
    this.#source = source;
    this.metadata = header.metadata;
    this.tensors = header.tensors;
    this.dataStart = dataStart;
    this.fileSize = source.size;
  }

  /**
   * Opens and validates `path` (a local file) or a {@link ByteSource}; throws
   * {@link FormatError} for a malformed file. The reader owns the source: `close` closes it, and
   * so does a failed open.
   */
  static async open(path: string | ByteSource): Promise<SafetensorsReader> {
    const source = isByteSource(path) ? path : await openFileSource(path);
    const name = source.name;
    try {
      const size = source.size;
      if (size < 8) {
        throw new FormatError(
          name,
          `the file is truncated: ${size} bytes, shorter than the 8-byte header length`,
        );
      }
      const lenBytes = await source.read(0, 8);
      if (lenBytes.byteLength !== 8) {
        throw new FormatError(name, "the file is truncated: it ended inside the header length");
      }
      const headerLen = Number(
        new DataView(lenBytes.buffer, lenBytes.byteOffset, 8).getBigUint64(0, true),
      );
      if (headerLen > MAX_HEADER_BYTES) {
        throw new FormatError(
          name,
          `the header length ${headerLen} exceeds the ${MAX_HEADER_BYTES}-byte limit; ` +
            "the file is corrupt or not safetensors",
        );
      }
      if (8 + headerLen > size) {
        throw new FormatError(
          name,
          `the header length ${headerLen} goes beyond the end of the file (${size} bytes); ` +
            "the file is truncated",
        );
      }
      const headerBytes = await source.read(8, headerLen);
      if (headerBytes.byteLength !== headerLen) {
        throw new FormatError(name, "the file is truncated: it ended inside the header");
      }
      const dataStart = 8 + headerLen;
      const header = parseHeader(name, headerBytes, dataStart, size - dataStart);
      return new SafetensorsReader(source, header, dataStart);
    } catch (e) {
      source.close();
      throw e;
    }
  }

  /** Entry of tensor `name`; {@link FormatError} when the file has none. */
  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) {
      throw new FormatError(
        this.path,
        `the file has no such tensor (it has ${this.tensors.size})`,
        name,
      );
    }
    return t;
  }

  /** Reads `length` bytes at absolute offset `begin` into a new array. */
  async readBytes(begin: number, length: number): Promise<Uint8Array> {
    if (!this.#source) throw new TypeError(`Cannot read ${this.path}: the reader is closed`);
    if (begin < 0 || length < 0 || begin + length > this.fileSize) {
      throw new RangeError(
        `Cannot read ${this.path}: bytes [${begin}, ${begin + length}) are outside the file`,
      );
    }
    const buf = await this.#source.read(begin, length);
    if (buf.byteLength !== length) {
      throw new FormatError(this.path, "the file ended early; was it truncated after opening?");
    }
    return buf;
  }

  /** Yields the bytes in `[begin, end)` in chunks of at most `chunkBytes` (default 8 MiB). */
  async *stream(begin: number, end: number, chunkBytes = 8 << 20): AsyncGenerator<Uint8Array> {
    for (let pos = begin; pos < end; pos += chunkBytes) {
      yield await this.readBytes(pos, Math.min(chunkBytes, end - pos));
    }
  }

  /** Raw little-endian bytes of tensor `name` (reads only its byte range). */
  async readRaw(name: string): Promise<Uint8Array> {
    const t = this.info(name);
    return await this.readBytes(t.begin, t.end - t.begin);
  }

  /** Tensor `name` as float32; F32, F16, BF16 (and F64) are converted, other dtypes refused. */
  async readFloat32(name: string): Promise<Float32Array> {
    const t = this.info(name);
    if (t.dtype !== "F32" && t.dtype !== "F16" && t.dtype !== "BF16" && t.dtype !== "F64") {
      throw new FormatError(
        this.path,
        `dtype ${t.dtype} is not a float type (F32, F16, BF16, F64); read it with readRaw`,
        name,
      );
    }
    return decodeFloat32(t.dtype, await this.readRaw(name));
  }

  /** Closes the file (its source); later reads throw. */
  close(): void {
    this.#source?.close();
    this.#source = null;
  }
}

/**
 * Streams a safetensors file: `create` writes the header (all sizes are known up front), then
 * `write` each tensor's bytes in header order, then `commit`. Data goes to `<path>.tmp-<random>`
 * in the same folder; `commit` fsyncs and renames it to `path`. Any error in `write` or `commit`,
 * or `abort()`, removes the temporary file, so `path` only ever holds a complete file (a process
 * killed mid-write leaves at most a stale `.tmp-` file, never a partial `path`).
 */
export class SafetensorsWriter {
  /** The final path. */
  readonly path: string;
  /** The temporary file being written. */
  readonly tempPath: string;
  /** The tensors in write order, with their absolute offsets. */
  readonly tensors: readonly TensorInfo[];
  #file: Deno.FsFile | null;
  #next = 0;
  #metaOffsets: Map<string, { at: number; bytes: number }>;
  #lock = new Lock();

  private constructor(
    path: string,
    tempPath: string,
    file: Deno.FsFile,
    tensors: TensorInfo[],
    metaOffsets: Map<string, { at: number; bytes: number }>,
  ) {
    this.path = path;
    this.tempPath = tempPath;
    this.#file = file;
    this.tensors = tensors;
    this.#metaOffsets = metaOffsets;
  }

  /** Validates the tensor list (TypeError/RangeError), creates the temp file, writes the header. */
  static async create(
    path: string,
    header: { tensors: TensorSpec[]; metadata?: Record<string, string> },
  ): Promise<SafetensorsWriter> {
    const { text, tensors, metaOffsets } = encodeHeader(path, header);
    const bytes = new TextEncoder().encode(text);
    const padded = new Uint8Array(8 + Math.ceil(bytes.length / 8) * 8).fill(0x20);
    new DataView(padded.buffer).setBigUint64(0, BigInt(padded.length - 8), true);
    padded.set(bytes, 8);
    for (const t of tensors) {
      t.begin += padded.length;
      t.end += padded.length;
    }
    const rand = crypto.getRandomValues(new Uint8Array(6));
    const tempPath = `${path}.tmp-${
      [...rand].map((b) => b.toString(16).padStart(2, "0")).join("")
    }`;
    const file = await Deno.open(tempPath, { write: true, createNew: true });
    const w = new SafetensorsWriter(path, tempPath, file, tensors, metaOffsets);
    try {
      await writeFully(file, padded);
    } catch (e) {
      await w.abort();
      throw e;
    }
    return w;
  }

  /** Writes the next tensor's bytes; a wrong name or length aborts the write and throws TypeError. */
  write(name: string, data: Uint8Array): Promise<void> {
    return this.#lock.run(() =>
      this.#guard(async (file) => {
        const t = this.tensors[this.#next];
        if (!t) {
          throw new TypeError(`Cannot write ${name} to ${this.path}: all tensors are written`);
        }
        if (t.name !== name) {
          throw new TypeError(
            `Cannot write ${name} to ${this.path}: expected tensor "${t.name}" next ` +
              "(tensors are written in header order)",
          );
        }
        if (!(data instanceof Uint8Array) || data.byteLength !== t.end - t.begin) {
          throw new TypeError(
            `Cannot write ${name} to ${this.path}: got ${data?.byteLength} bytes, expected ` +
              `[${t.shape.join(", ")}] ${t.dtype} = ${t.end - t.begin} bytes`,
          );
        }
        await writeFully(file, data);
        this.#next++;
      })
    );
  }

  /**
   * Overwrites the value of metadata `key` in the already-written header with `value`, whose JSON
   * encoding must have exactly the same byte length (reserve a fixed-width placeholder).
   */
  patchMetadata(key: string, value: string): Promise<void> {
    return this.#lock.run(() =>
      this.#guard(async (file) => {
        const slot = this.#metaOffsets.get(key);
        const enc = new TextEncoder().encode(JSON.stringify(value));
        if (!slot || enc.length !== slot.bytes) {
          throw new TypeError(
            `Cannot patch metadata ${key} of ${this.path}: ` +
              (slot ? `${enc.length} bytes given, the slot holds ${slot.bytes}` : "no such key"),
          );
        }
        const here = await file.seek(0, Deno.SeekMode.Current);
        await file.seek(slot.at, Deno.SeekMode.Start);
        await writeFully(file, enc);
        await file.seek(here, Deno.SeekMode.Start);
      })
    );
  }

  /** Checks every tensor was written, fsyncs, closes and renames the temp file to `path`. */
  commit(): Promise<void> {
    return this.#lock.run(() =>
      this.#guard(async (file) => {
        if (this.#next !== this.tensors.length) {
          throw new TypeError(
            `Cannot commit ${this.path}: ${this.tensors.length - this.#next} tensors were not ` +
              `written, starting with "${this.tensors[this.#next].name}"`,
          );
        }
        await file.sync();
        file.close();
        this.#file = null;
        await Deno.rename(this.tempPath, this.path);
      })
    );
  }

  /** Abandons the write and removes the temp file; safe to call more than once. */
  async abort(): Promise<void> {
    try {
      this.#file?.close();
    } catch { /* already closed */ }
    this.#file = null;
    try {
      await Deno.remove(this.tempPath);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }

  async #guard(fn: (file: Deno.FsFile) => Promise<void>): Promise<void> {
    const file = this.#file;
    if (!file) {
      throw new TypeError(`Cannot write ${this.path}: the writer was committed or aborted`);
    }
    try {
      await fn(file);
    } catch (e) {
      await this.abort();
      throw e;
    }
  }
}

function encodeHeader(
  path: string,
  header: { tensors: TensorSpec[]; metadata?: Record<string, string> },
): {
  text: string;
  tensors: TensorInfo[];
  metaOffsets: Map<string, { at: number; bytes: number }>;
} {
  const enc = new TextEncoder();
  const parts: string[] = [];
  let bytes = 0;
  const push = (s: string) => {
    parts.push(s);
    bytes += enc.encode(s).length;
  };
  const metaOffsets = new Map<string, { at: number; bytes: number }>();
  const meta = Object.entries(header.metadata ?? {});
  push("{");
  if (meta.length > 0) {
    push('"__metadata__":{');
    meta.forEach(([k, v], i) => {
      if (typeof v !== "string") {
        throw new TypeError(`Cannot write ${path}: metadata ${k} is a ${typeof v}, not a string`);
      }
      push(`${i ? "," : ""}${JSON.stringify(k)}:`);
      const value = JSON.stringify(v);
      metaOffsets.set(k, { at: 8 + bytes, bytes: enc.encode(value).length });
      push(value);
    });
    push("}");
  }
  const names = new Set<string>();
  const tensors: TensorInfo[] = [];
  let offset = 0;
  for (const t of header.tensors) {
    const where = `Cannot write ${path}: tensor ${JSON.stringify(t.name)}`;
    if (typeof t.name !== "string" || t.name === "" || t.name === "__metadata__") {
      throw new TypeError(`${where} has an invalid name`);
    }
    if (names.has(t.name)) throw new TypeError(`${where} is listed twice`);
    names.add(t.name);
    if (!isDtype(t.dtype)) throw new TypeError(`${where} has unknown dtype ${t.dtype}`);
    if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new TypeError(
        `${where} has shape ${JSON.stringify(t.shape)}, not non-negative integers`,
      );
    }
    const need = numel(t.shape) * DTYPE_BYTES[t.dtype];
    if (t.byteLength !== need) {
      throw new RangeError(
        `${where} declares ${t.byteLength} bytes, but [${
          t.shape.join(", ")
        }] ${t.dtype} is ${need}`,
      );
    }
    push(
      `${tensors.length || meta.length ? "," : ""}${JSON.stringify(t.name)}:` +
        JSON.stringify({ dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + need] }),
    );
    tensors.push({
      name: t.name,
      dtype: t.dtype,
      shape: [...t.shape],
      begin: offset,
      end: offset + need,
    });
    offset += need;
  }
  push("}");
  return { text: parts.join(""), tensors, metaOffsets };
}
