/**
 * Reading a Hugging Face checkpoint as the text encoders ship: one `model.safetensors`, or
 * shards `model-0000k-of-0000n.safetensors` listed by `model.safetensors.index.json`
 * (`{ "metadata": {...}, "weight_map": { tensor: shard file } }`), with `config.json` beside
 * them (or the JSON config in the safetensors metadata `config`). Tensors are read one at a time
 * from their shard (streamed by formats/safetensors.ts), so a 9.5 GB T5-XXL never sits in memory
 * whole.
 *
 * @module
 */
import { FormatError } from "../../gpu/errors.ts";
import { type Dtype, SafetensorsReader } from "../../formats/safetensors.ts";

/** A tensor's dtype and shape. */
export interface TensorMeta {
  /** Safetensors dtype name. */
  dtype: Dtype;
  /** Shape. */
  shape: number[];
}

/** An open single-file or sharded checkpoint. */
export class Checkpoint {
  /** What was opened (file, folder or index), for messages. */
  readonly path: string;
  /** The model config (`config.json`, else metadata `config`; `{}` when neither exists). */
  readonly config: Record<string, unknown>;
  /** The first file's safetensors `__metadata__`. */
  readonly metadata: Record<string, string>;
  #where: Map<string, SafetensorsReader>;
  #readers: SafetensorsReader[];

  private constructor(
    path: string,
    config: Record<string, unknown>,
    metadata: Record<string, string>,
    where: Map<string, SafetensorsReader>,
    readers: SafetensorsReader[],
  ) {
    this.path = path;
    this.config = config;
    this.metadata = metadata;
    this.#where = where;
    this.#readers = readers;
  }

  /**
   * Open `path`: a `.safetensors` file, a `*.safetensors.index.json`, or a folder holding
   * `model.safetensors` or `model.safetensors.index.json` (as FLUX's `text_encoder_2/`).
   *
   * @example
   * ```ts ignore
   * import { Checkpoint } from "./checkpoint.ts";
   * const ck = await Checkpoint.open("FLUX.1-schnell/text_encoder_2"); // two shards + index
   * console.log(ck.config.d_model, ck.meta("shared.weight").shape); // 4096 [32128, 4096]
   * const w = await ck.float("encoder.final_layer_norm.weight");
   * ck.close();
   * ```
   */
  static async open(path: string): Promise<Checkpoint> {
    let dir: string, index: string | undefined, single: string | undefined;
    const st = await statOrThrow(path);
    if (st.isDirectory) {
      dir = path;
      if (await exists(`${path}/model.safetensors.index.json`)) {
        index = `${path}/model.safetensors.index.json`;
      } else if (await exists(`${path}/model.safetensors`)) single = `${path}/model.safetensors`;
      else {
        const files = [...Deno.readDirSync(path)].map((e) => e.name).sort();
        const idx = files.filter((f) => f.endsWith(".safetensors.index.json"));
        const one = files.filter((f) => f.endsWith(".safetensors"));
        if (idx.length === 1) index = `${path}/${idx[0]}`;
        else if (one.length === 1) single = `${path}/${one[0]}`;
        else {
          throw new FormatError(
            path,
            "the folder has no model.safetensors nor model.safetensors.index.json (nor exactly " +
              "one other .safetensors file or index); point at the checkpoint file",
          );
        }
      }
    } else {
      dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : ".";
      if (path.endsWith(".json")) index = path;
      else single = path;
    }
    const where = new Map<string, SafetensorsReader>();
    const readers: SafetensorsReader[] = [];
    try {
      if (single) {
        const r = await SafetensorsReader.open(single);
        readers.push(r);
        for (const name of r.tensors.keys()) where.set(name, r);
      } else {
        let idx: { weight_map?: Record<string, string> };
        try {
          idx = JSON.parse(await Deno.readTextFile(index!));
        } catch (e) {
          throw new FormatError(index!, `the shard index is not JSON: ${(e as Error).message}`);
        }
        const map = idx.weight_map;
        if (!map || typeof map !== "object") {
          throw new FormatError(index!, "the shard index has no `weight_map` object");
        }
        const byFile = new Map<string, SafetensorsReader>();
        for (const [name, file] of Object.entries(map)) {
          if (typeof file !== "string" || file.includes("/") || file.includes("\\")) {
            throw new FormatError(index!, `weight_map entry ${name} names a bad shard "${file}"`);
          }
          let r = byFile.get(file);
          if (!r) {
            r = await SafetensorsReader.open(`${dir}/${file}`);
            byFile.set(file, r);
            readers.push(r);
          }
          if (!r.tensors.has(name)) {
            throw new FormatError(
              r.path,
              "the index says this shard holds it, but it does not",
              name,
            );
          }
          where.set(name, r);
        }
        if (readers.length === 0) throw new FormatError(index!, "the shard index lists no tensor");
      }
      const metadata = readers[0].metadata;
      let config: Record<string, unknown> = {};
      const cfgFile = `${dir}/config.json`;
      if (await exists(cfgFile)) config = parseConfig(cfgFile, await Deno.readTextFile(cfgFile));
      else if (metadata.config) config = parseConfig(readers[0].path, metadata.config);
      return new Checkpoint(path, config, metadata, where, readers);
    } catch (e) {
      for (const r of readers) r.close();
      throw e;
    }
  }

  /** Every tensor name. */
  names(): string[] {
    return [...this.#where.keys()];
  }

  /** Whether tensor `name` exists. */
  has(name: string): boolean {
    return this.#where.has(name);
  }

  /** dtype and shape of `name`; FormatError when missing. */
  meta(name: string): TensorMeta {
    const t = this.#reader(name).info(name);
    return { dtype: t.dtype, shape: t.shape };
  }

  /** Values of float tensor `name` as f32 (F32, F16, BF16, F64). */
  async float(name: string): Promise<Float32Array> {
    return await this.#reader(name).readFloat32(name);
  }

  /** Raw little-endian bytes of `name`. */
  async raw(name: string): Promise<Uint8Array> {
    return await this.#reader(name).readRaw(name);
  }

  /** Close every shard. */
  close(): void {
    for (const r of this.#readers) r.close();
  }

  #reader(name: string): SafetensorsReader {
    const r = this.#where.get(name);
    if (!r) {
      throw new FormatError(
        this.path,
        `the checkpoint has no such tensor (it has ${this.#where.size}); is it the right model?`,
        name,
      );
    }
    return r;
  }
}

function parseConfig(where: string, text: string): Record<string, unknown> {
  try {
    const c = JSON.parse(text);
    if (typeof c === "object" && c !== null && !Array.isArray(c)) return c;
  } catch { /* reported below */ }
  throw new FormatError(where, "the model config is not a JSON object");
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

async function statOrThrow(path: string): Promise<Deno.FileInfo> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new FormatError(path, "no such file or folder");
    }
    throw e;
  }
}
