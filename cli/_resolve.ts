/**
 * `--model` resolution for gen and serve: a local model file as it is; a Nunchaku checkpoint
 * (local, or a hub id `<owner>/<name>/<file>`) imported on first use into the cache
 * (`models/.cache/nunchaku/<name>.<sha256 prefix>.safetensors`, keyed by the source's content
 * hash, so a changed file is imported again); a hub id downloaded first (cli/_hub.ts).
 *
 * A file's SHA-256 is computed once and remembered by path, size and mtime
 * (`<cache>/nunchaku/hashes.json`; a hub download's verification record serves as well), so a
 * second `--model` on a 6 GB file does not read it again.
 *
 * @module
 */
import { SafetensorsReader } from "../formats/safetensors.ts";
import { CACHE, modelBaseName } from "./_models.ts";
import { hashFile, type HubOptions, parseRepoRef, pull } from "./_hub.ts";
import { importFile } from "./import.ts";

/** Where Nunchaku imports are cached by default. */
export const NUNCHAKU_CACHE: string = `${CACHE}nunchaku/`;

async function stat(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(path);
  } catch {
    return null;
  }
}

/** Is `path` a Nunchaku checkpoint (safetensors with `quantization_config`, not our format)? */
export async function isNunchakuFile(path: string): Promise<boolean> {
  const r = await SafetensorsReader.open(path);
  try {
    return r.metadata.quantization_config !== undefined && r.metadata.format !== "w4-diffusion";
  } finally {
    r.close();
  }
}

/** SHA-256 of `path`, remembered in `<cacheDir>/hashes.json` by path, size and mtime. */
export async function contentHash(path: string, cacheDir: string): Promise<string> {
  const s = await Deno.stat(path);
  const key = await Deno.realPath(path);
  const mtime = s.mtime?.getTime() ?? 0;
  const index = `${cacheDir}hashes.json`;
  let memo: Record<string, { size: number; mtime: number; sha256: string }> = {};
  try {
    memo = JSON.parse(await Deno.readTextFile(index));
  } catch { /* first use */ }
  const m = memo[key];
  if (m && m.size === s.size && m.mtime === mtime) return m.sha256;
  let sha: string | undefined;
  try { // a hub download's verification record (cli/_hub.ts) already holds it
    const v = JSON.parse(await Deno.readTextFile(`${path}.verified.json`));
    if (v.size === s.size && v.mtime === mtime && /^[0-9a-f]{64}$/.test(v.hash)) sha = v.hash;
  } catch { /* none */ }
  sha ??= await hashFile(path);
  memo[key] = { size: s.size, mtime, sha256: sha };
  await Deno.mkdir(cacheDir, { recursive: true });
  const tmp = `${index}.${crypto.randomUUID()}.tmp`;
  await Deno.writeTextFile(tmp, JSON.stringify(memo, null, 1));
  await Deno.rename(tmp, index);
  return sha;
}

/** Options of {@linkcode resolveModel}. */
export interface ResolveOptions {
  /** Folder of imported Nunchaku files (default {@linkcode NUNCHAKU_CACHE}). */
  cacheDir?: string;
  /** Hub options for hub ids (endpoint, token, cache). */
  hub?: HubOptions;
}

/**
 * The path of a model file for `--model arg`: a local file of ours as it is; a Nunchaku file
 * imported (once) into the cache; a hub id `<owner>/<name>/<file>` pulled first. Messages go to
 * `log`.
 */
export async function resolveModel(
  arg: string,
  log: (line: string) => void,
  opts: ResolveOptions = {},
): Promise<string> {
  const cacheDir = (opts.cacheDir ?? NUNCHAKU_CACHE).replace(/\/?$/, "/");
  let path = arg;
  if (!(await stat(arg))?.isFile) {
    const looksLikeId = /^[\w.-]+\/[\w.-]+\/.+/.test(arg) && !arg.startsWith(".");
    if (!looksLikeId) {
      throw new RangeError(
        `Cannot find model ${arg}: it is not a file, nor a hub id <owner>/<name>/<file> ` +
          "(e.g. nunchaku-tech/nunchaku-flux.1-schnell/svdq-int4_r32-flux.1-schnell.safetensors)",
      );
    }
    const { repo, file } = parseRepoRef(arg);
    log(`fetching ${file} from ${repo} (cached after the first time)`);
    [path] = await pull(arg, opts.hub);
  }
  if (!(await isNunchakuFile(path))) return path;
  const sha = await contentHash(path, cacheDir);
  const out = `${cacheDir}${modelBaseName(path)}.${sha.slice(0, 12)}.safetensors`;
  if ((await stat(out))?.isFile) return out;
  log(`importing the Nunchaku checkpoint ${path} (once; cached in ${out})`);
  await Deno.mkdir(cacheDir, { recursive: true });
  await importFile(path, out, { log });
  return out;
}
