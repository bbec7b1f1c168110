/**
 * The pre-quantized weight file ("w4-diffusion" format): a safetensors file whose
 * `__metadata__` describes itself, so the runtime needs nothing else to serve it.
 *
 * Metadata keys (all strings; structured values are JSON):
 * - `format`: `"w4-diffusion"`; `format_version`: `"1"` ({@link FORMAT_VERSION});
 * - `quant_config`: {@link QuantConfig}; `model_config`: the float model's hyper-parameters;
 *   `family`: e.g. `"dit"`; `policy`: per layer name, the {@link LayerPolicyEntry} applied;
 * - `checksum`: `"fnv1a64:<16 hex>"` (see formats/checksum.ts) over the data region's bytes in
 *   file order, followed by the UTF-8 of {@link canonicalDescription} (the tensor table and all
 *   other metadata), so renamed tensors or edited metadata are caught as well as flipped bytes.
 *
 * How the checksum gets into a header written before the data: when the tensor list is known up
 * front (an array, or `opts.specs`), the header is written with a fixed-width placeholder, the
 * data streams through the hasher, and the placeholder is overwritten in place before the rename
 * (one pass, memory flat). For any other (async) iterable the tensors are first streamed to a
 * spool file beside the output while hashing, then copied after the header (two passes over the
 * disk, memory bounded by the largest tensor). Either way the output appears atomically.
 *
 * @example
 * ```ts ignore
 * import { QuantFile, writeQuantFile } from "./format.ts";
 * await writeQuantFile("out.safetensors", {
 *   quantConfig: { method: "svdquant", weightFormat: "int4", groupSize: 64, rank: 32,
 *     actFormat: "int4", scaling: "smooth" },
 *   modelConfig: { hidden: 64, depth: 2 }, family: "dit", policy: {},
 * }, [{ name: "pos_embed", dtype: "F32", shape: [1, 4], data: new Uint8Array(16) }]);
 * const q = await QuantFile.open("out.safetensors"); // verifies the checksum
 * console.log(q.meta.quantConfig.method, [...q.reader.tensors.keys()]);
 * q.close();
 * ```
 *
 * @module
 */

import { FormatError } from "../gpu/errors.ts";
import type { ByteSource } from "../gpu/source.ts";
import { Checksum, CHECKSUM_ALGORITHM } from "./checksum.ts";
import {
  type Dtype,
  DTYPE_BYTES,
  isDtype,
  numel,
  SafetensorsReader,
  SafetensorsWriter,
  type TensorInfo,
  type TensorSpec,
} from "./safetensors.ts";

/** Value of the `format` metadata key. */
export const FORMAT_NAME = "w4-diffusion";
/** The format version this build writes. */
export const FORMAT_VERSION = 1;
/** The format versions this build reads. */
export const SUPPORTED_VERSIONS: readonly number[] = [1];

/** How the model was quantized (metadata `quant_config`). */
export interface QuantConfig {
  /** Default method, e.g. "svdquant" | "dilate" | "smooth" | "rtn" | "w4a16" | "w8a8". */
  method: string;
  /** Residual weight format: "int4" | "nvfp4". */
  weightFormat: string;
  /** Group size of the residual weight format: 64 (int4) or 16 (nvfp4). */
  groupSize: number;
  /** Low-rank rank R (0 = none). */
  rank: number;
  /** Activation format: "int4" | "nvfp4" | "f16"… */
  actFormat: string;
  /** Per-input-channel scaling of W4A4 layers: smoothing (svdquant, smooth), dilate, none (rtn). */
  scaling: "smooth" | "dilate" | "none";
}

/** What was applied to one layer (an entry of metadata `policy`). */
export interface LayerPolicyEntry {
  /** Method applied, e.g. `"svdquant"`, `"w4a16"`, `"float"`. */
  method: string;
  /** Stored weight format: `"int4"`, `"nvfp4"`, `"int8"` or `"f16"`. */
  format: string;
  /** Rank of the stored low-rank branch (0 when none). */
  r: number;
  /** Activation mode of W4A4 layers: `"int4"`, `"int4_unsigned"` or `"nvfp4"`. */
  actMode?: string;
  /**
   * Activation rounding convention of W4A4 layers: absent (ours) or `"nunchaku"` (layers imported
   * from Nunchaku checkpoints; formats/packing.ts `quantizeAct`).
   */
  convention?: string;
}

/** The decoded metadata of a quantized file. */
export interface QuantFileMeta {
  /** Metadata `format_version` ({@link FORMAT_VERSION} when written by this build). */
  formatVersion: number;
  /** Metadata `quant_config`: how the model was quantized. */
  quantConfig: QuantConfig;
  /** Metadata `model_config`: the float model's hyper-parameters. */
  modelConfig: Record<string, unknown>;
  /** Metadata `family`: the model family, e.g. `"dit"`. */
  family: string;
  /** Metadata `policy`: per layer name, what was applied to it. */
  policy: Record<string, LayerPolicyEntry>;
  /** Metadata `checksum`: `"fnv1a64:<16 hex>"` over the data and the canonical description. */
  checksum: string;
}

/** A tensor handed to {@link writeQuantFile}. */
export interface QuantTensor {
  /** Full tensor name, e.g. `blocks.0.attn.qkv.qweight`. */
  name: string;
  /** Element type. */
  dtype: Dtype;
  /** Logical shape. */
  shape: number[];
  /** Little-endian bytes, exactly shape × dtype size. */
  data: Uint8Array;
}

/** Metadata for {@link writeQuantFile}; `formatVersion`, if given, must be {@link FORMAT_VERSION}. */
export type QuantFileMetaInput = Omit<QuantFileMeta, "checksum" | "formatVersion"> & {
  formatVersion?: number;
  /**
   * Further metadata entries (e.g. `paro`: the sparse-attention plan, quant/paro.ts); covered by
   * the checksum like every other entry. A key of the format's own is refused.
   */
  extra?: Record<string, string>;
};

const PLACEHOLDER = `${CHECKSUM_ALGORITHM}:${"0".repeat(16)}`;
const CHECKSUM_RE = new RegExp(`^${CHECKSUM_ALGORITHM}:[0-9a-f]{16}$`);

/** The string-valued metadata for `meta` (without `checksum`). */
export function encodeMeta(meta: QuantFileMetaInput): Record<string, string> {
  if (meta.formatVersion !== undefined && meta.formatVersion !== FORMAT_VERSION) {
    throw new RangeError(
      `Cannot write format version ${meta.formatVersion}: this build writes ${FORMAT_VERSION}`,
    );
  }
  const own: Record<string, string> = {
    format: FORMAT_NAME,
    format_version: String(FORMAT_VERSION),
    quant_config: JSON.stringify(meta.quantConfig),
    model_config: JSON.stringify(meta.modelConfig),
    family: meta.family,
    policy: JSON.stringify(meta.policy),
  };
  for (const key of Object.keys(meta.extra ?? {})) {
    if (key in own || key === "checksum") {
      throw new RangeError(`Cannot write metadata "${key}" as an extra entry: the format owns it`);
    }
  }
  return { ...own, ...meta.extra };
}

/**
 * The text hashed after the data: the tensor table sorted by offset (offsets relative to the data
 * region) and every metadata entry except `checksum`, sorted by key, as JSON.
 */
export function canonicalDescription(
  tensors: Iterable<TensorInfo>,
  dataStart: number,
  metadata: Record<string, string>,
): string {
  const table = [...tensors].sort((a, b) => a.begin - b.begin || a.end - b.end)
    .map((t) => [t.name, t.dtype, t.shape, t.begin - dataStart, t.end - dataStart]);
  const meta = Object.keys(metadata).filter((k) => k !== "checksum").sort()
    .map((k) => [k, metadata[k]]);
  return JSON.stringify({ tensors: table, metadata: meta });
}

function checkTensor(path: string, t: QuantTensor, expect?: TensorSpec): void {
  const where = `Cannot write ${path}: tensor ${JSON.stringify(t?.name)}`;
  if (!t || !isDtype(t.dtype) || !Array.isArray(t.shape) || !(t.data instanceof Uint8Array)) {
    throw new TypeError(`${where} is not { name, dtype, shape, data: Uint8Array }`);
  }
  const need = numel(t.shape) * DTYPE_BYTES[t.dtype];
  if (t.data.byteLength !== need) {
    throw new TypeError(
      `${where} has ${t.data.byteLength} bytes, expected [${
        t.shape.join(", ")
      }] ${t.dtype} = ${need}`,
    );
  }
  if (
    expect &&
    (expect.name !== t.name || expect.dtype !== t.dtype || expect.shape.join() !== t.shape.join())
  ) {
    throw new TypeError(
      `${where} [${t.shape}] ${t.dtype} differs from the announced spec ` +
        `${JSON.stringify(expect.name)} [${expect.shape}] ${expect.dtype}`,
    );
  }
}

function specOf(t: QuantTensor): TensorSpec {
  return { name: t.name, dtype: t.dtype, shape: [...t.shape], byteLength: t.data.byteLength };
}

/**
 * Writes a quantized model file atomically (temp file + rename; nothing is left at `path` or
 * beside it on error). With a non-array iterable and no `opts.specs`, `meta` is read again after
 * the last tensor, so it may be completed while the tensors stream. Tensors are written in the order given. Pass an array, or `opts.specs`
 * (the tensors' names/dtypes/shapes in order) with any iterable, for the one-pass path; see the
 * module doc. A tensor whose data length is not shape × dtype size is a TypeError.
 */
export async function writeQuantFile(
  path: string,
  meta: QuantFileMetaInput,
  tensors: Iterable<QuantTensor> | AsyncIterable<QuantTensor>,
  opts: { specs?: TensorSpec[] } = {},
): Promise<void> {
  const metadata = encodeMeta(meta);
  if (Array.isArray(tensors)) { for (const t of tensors) checkTensor(path, t); }
  const specs = opts.specs ?? (Array.isArray(tensors) ? tensors.map(specOf) : undefined);
  if (specs) return await writeOnePass(path, metadata, specs, tensors);
  // metadata is encoded again after the last tensor: a caller may fill `meta` (e.g. the policy
  // actually applied) while the tensors stream
  return await writeSpooled(path, () => encodeMeta(meta), tensors);
}

async function writeOnePass(
  path: string,
  metadata: Record<string, string>,
  specs: TensorSpec[],
  tensors: Iterable<QuantTensor> | AsyncIterable<QuantTensor>,
): Promise<void> {
  const w = await SafetensorsWriter.create(path, {
    tensors: specs,
    metadata: { ...metadata, checksum: PLACEHOLDER },
  });
  try {
    const sum = new Checksum();
    let i = 0;
    for await (const t of tensors) {
      checkTensor(path, t, specs[i++]);
      await w.write(t.name, t.data);
      sum.update(t.data);
    }
    const dataStart = w.tensors.length ? w.tensors[0].begin : 0;
    sum.update(new TextEncoder().encode(canonicalDescription(w.tensors, dataStart, metadata)));
    await w.patchMetadata("checksum", sum.digest());
    await w.commit();
  } catch (e) {
    await w.abort();
    throw e;
  }
}

async function writeSpooled(
  path: string,
  finalMetadata: () => Record<string, string>,
  tensors: Iterable<QuantTensor> | AsyncIterable<QuantTensor>,
): Promise<void> {
  const rand = crypto.getRandomValues(new Uint32Array(2)).join("");
  const spoolPath = `${path}.spool-${rand}`;
  const spool = await Deno.open(spoolPath, { read: true, write: true, createNew: true });
  let w: SafetensorsWriter | undefined;
  try {
    const specs: TensorSpec[] = [];
    const seen = new Set<string>();
    const sum = new Checksum();
    for await (const t of tensors) {
      checkTensor(path, t);
      if (seen.has(t.name)) {
        throw new TypeError(
          `Cannot write ${path}: tensor ${JSON.stringify(t.name)} is given twice`,
        );
      }
      seen.add(t.name);
      specs.push(specOf(t));
      for (let done = 0; done < t.data.length;) done += await spool.write(t.data.subarray(done));
      sum.update(t.data);
    }
    const metadata = finalMetadata();
    let offset = 0;
    const infos = specs.map((s) => {
      const info = { ...s, begin: offset, end: offset + s.byteLength };
      offset += s.byteLength;
      return info;
    });
    sum.update(new TextEncoder().encode(canonicalDescription(infos, 0, metadata)));
    w = await SafetensorsWriter.create(path, {
      tensors: specs,
      metadata: { ...metadata, checksum: sum.digest() },
    });
    await spool.seek(0, Deno.SeekMode.Start);
    for (const s of specs) {
      const buf = new Uint8Array(s.byteLength);
      for (let got = 0; got < buf.length;) {
        const n = await spool.read(buf.subarray(got));
        if (n === null) throw new Error(`Cannot write ${path}: the spool file ${spoolPath} shrank`);
        got += n;
      }
      await w.write(s.name, buf);
    }
    await w.commit();
  } catch (e) {
    await w?.abort();
    throw e;
  } finally {
    spool.close();
    await Deno.remove(spoolPath).catch(() => {});
  }
}

/** Recomputes the checksum of an open file, streaming the data region in chunks. */
export async function computeChecksum(reader: SafetensorsReader): Promise<string> {
  const sum = new Checksum();
  for await (const chunk of reader.stream(reader.dataStart, reader.fileSize)) sum.update(chunk);
  const desc = canonicalDescription(reader.tensors.values(), reader.dataStart, reader.metadata);
  sum.update(new TextEncoder().encode(desc));
  return sum.digest();
}

function parseJsonObject(file: string, metadata: Record<string, string>, key: string) {
  let v: unknown;
  try {
    v = JSON.parse(metadata[key]);
  } catch {
    v = undefined;
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new FormatError(file, `metadata ${key} is not a JSON object; re-quantize the model`);
  }
  return v as Record<string, unknown>;
}

/** Decodes and checks the metadata of a w4-diffusion file ({@link FormatError} when bad). */
export function decodeMeta(file: string, metadata: Record<string, string>): QuantFileMeta {
  const bad = (msg: string) => new FormatError(file, msg);
  if (metadata.format !== FORMAT_NAME) {
    throw bad(
      metadata.format === undefined
        ? `it is not a ${FORMAT_NAME} file (no "format" metadata); quantize the float ` +
          "checkpoint first (deno task quantize)"
        : `its format is "${metadata.format}", not "${FORMAT_NAME}"`,
    );
  }
  const version = Number(metadata.format_version);
  if (!/^[0-9]+$/.test(metadata.format_version ?? "") || !SUPPORTED_VERSIONS.includes(version)) {
    throw bad(
      `format version ${JSON.stringify(metadata.format_version)} is not supported: this build ` +
        `reads version${SUPPORTED_VERSIONS.length > 1 ? "s" : ""} ${
          SUPPORTED_VERSIONS.join(", ")
        }; ` +
        "update this module or re-quantize the model with it",
    );
  }
  for (const key of ["quant_config", "model_config", "family", "policy", "checksum"]) {
    if (typeof metadata[key] !== "string") {
      throw bad(`metadata ${key} is missing; re-quantize the model`);
    }
  }
  const qc = parseJsonObject(file, metadata, "quant_config");
  const strings = ["method", "weightFormat", "actFormat", "scaling"];
  for (const f of strings) {
    if (typeof qc[f] !== "string") throw bad(`metadata quant_config.${f} is not a string`);
  }
  for (const f of ["groupSize", "rank"]) {
    if (typeof qc[f] !== "number") throw bad(`metadata quant_config.${f} is not a number`);
  }
  if (!["smooth", "dilate", "none"].includes(qc.scaling as string)) {
    throw bad(`metadata quant_config.scaling is "${qc.scaling}", not smooth, dilate or none`);
  }
  const policy = parseJsonObject(file, metadata, "policy");
  for (const [layer, p] of Object.entries(policy)) {
    const e = p as Record<string, unknown>;
    if (
      typeof e !== "object" || e === null || typeof e.method !== "string" ||
      typeof e.format !== "string" || typeof e.r !== "number" ||
      (e.actMode !== undefined && typeof e.actMode !== "string")
    ) {
      throw new FormatError(file, "its policy entry is not { method, format, r, actMode? }", layer);
    }
  }
  if (!metadata.family) throw bad("metadata family is empty; re-quantize the model");
  if (!CHECKSUM_RE.test(metadata.checksum)) {
    throw bad(
      `checksum "${metadata.checksum}" is not supported: this build verifies ` +
        `${CHECKSUM_ALGORITHM}:<16 hex digits>`,
    );
  }
  return {
    formatVersion: version,
    quantConfig: qc as unknown as QuantConfig,
    modelConfig: parseJsonObject(file, metadata, "model_config"),
    family: metadata.family,
    policy: policy as Record<string, LayerPolicyEntry>,
    checksum: metadata.checksum,
  };
}

/** An open pre-quantized file: decoded metadata plus the tensor reader. */
export class QuantFile {
  /** The decoded metadata. */
  readonly meta: QuantFileMeta;
  /** Reads the tensors (packed layouts of formats/packing.ts). */
  readonly reader: SafetensorsReader;

  private constructor(meta: QuantFileMeta, reader: SafetensorsReader) {
    this.meta = meta;
    this.reader = reader;
  }

  /**
   * Opens `path` (a local file or a ByteSource), checks the safetensors structure and the
   * metadata, and (unless
   * `verify: false`) verifies the checksum by streaming the data once. Throws
   * {@link FormatError} for a malformed, unsupported, corrupt or modified file.
   */
  static async open(
    path: string | ByteSource,
    opts: { verify?: boolean } = {},
  ): Promise<QuantFile> {
    const reader = await SafetensorsReader.open(path);
    path = reader.path;
    try {
      const meta = decodeMeta(path, reader.metadata);
      if (opts.verify ?? true) {
        if (await computeChecksum(reader) !== meta.checksum) {
          throw new FormatError(
            path,
            "checksum mismatch: the file is corrupt or was modified; re-download or re-quantize it",
          );
        }
      }
      return new QuantFile(meta, reader);
    } catch (e) {
      reader.close();
      throw e;
    }
  }

  /** The file's path. */
  get path(): string {
    return this.reader.path;
  }

  /** Closes the underlying file. */
  close(): void {
    this.reader.close();
  }
}
