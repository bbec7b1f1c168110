/**
 * A client for Hugging Face-style model hubs: list a repo's files with sizes and hashes
 * (`GET {endpoint}/api/models/{repo}/tree/{revision}?recursive=true`, following `Link: rel="next"`
 * pages), download them (`GET {endpoint}/{repo}/resolve/{revision}/{path}`) in parallel byte
 * ranges into a cache folder, resume after an interruption (within a run by retrying from the
 * last byte received, across runs from a `.part` file and its progress record), and verify each
 * file (LFS files: SHA-256 = the `lfs.oid`; small files: git's blob SHA-1 = the `oid`). A file
 * that fails verification is deleted and fetched again once.
 *
 * Environment: `HF_ENDPOINT` (default https://huggingface.co), `HF_TOKEN` (sent as a bearer
 * token: gated and private repos), `W4_CACHE` (default: the user's cache folder + `/w4-diffusion`).
 * Cache layout: `<cache>/hub/<owner>/<name>/<revision>/<path>`, with `<path>.verified.json`
 * (size, mtime, hash) so a verified file is not hashed again.
 *
 * Uses `node:crypto` for streaming hashes: a CLI-only module (runtime/ never loads it).
 *
 * @module
 */
import { createHash } from "node:crypto";

/** A hub request failed: offline, unauthorized, not found, or a file that fails verification. */
export class HubError extends Error {
  /** Always `"HubError"`. */
  override name = "HubError";
}

/** One file of a repo, as the hub lists it. */
export interface RepoFile {
  /** Path inside the repo. */
  path: string;
  /** Bytes. */
  size: number;
  /** Git blob SHA-1 (hex). */
  oid: string;
  /** SHA-256 (hex) of the content, for LFS files. */
  sha256?: string;
}

/** Where and how to talk to the hub. */
export interface HubOptions {
  /** Hub base URL (default `HF_ENDPOINT` or https://huggingface.co). */
  endpoint?: string;
  /** Bearer token (default `HF_TOKEN`). */
  token?: string;
  /** Cache root (default `W4_CACHE` or the user's cache folder + `/w4-diffusion`). */
  cacheDir?: string;
  /** Revision (default `main`). */
  revision?: string;
  /** Parallel connections per file (default 4). */
  connections?: number;
  /** Files at least this large are split into ranges (default 16 MiB). */
  rangeThreshold?: number;
  /** Retries of a range after a dropped connection, each resuming (default 5). */
  retries?: number;
  /** Progress: bytes done so far of `total` for `file`. */
  onProgress?: (file: string, done: number, total: number) => void;
}

const env = (name: string): string | undefined => {
  try {
    return Deno.env.get(name) || undefined;
  } catch {
    return undefined; // no --allow-env
  }
};

/** The default cache root: `W4_CACHE`, else the platform's user cache folder + `/w4-diffusion`. */
export function defaultCacheDir(): string {
  const own = env("W4_CACHE");
  if (own) return own;
  const home = env("HOME") ?? env("USERPROFILE") ?? ".";
  if (Deno.build.os === "darwin") return `${home}/Library/Caches/w4-diffusion`;
  if (Deno.build.os === "windows") return `${env("LOCALAPPDATA") ?? home}/w4-diffusion`;
  return `${env("XDG_CACHE_HOME") ?? `${home}/.cache`}/w4-diffusion`;
}

function resolved(opts: HubOptions) {
  return {
    endpoint: (opts.endpoint ?? env("HF_ENDPOINT") ?? "https://huggingface.co").replace(/\/+$/, ""),
    token: opts.token ?? env("HF_TOKEN"),
    cacheDir: opts.cacheDir ?? defaultCacheDir(),
    revision: opts.revision ?? "main",
    connections: opts.connections ?? 4,
    rangeThreshold: opts.rangeThreshold ?? 16 << 20,
    retries: opts.retries ?? 5,
  };
}

/** Split `owner/name[/path/in/repo]` into the repo id and the file path ("" = whole repo). */
export function parseRepoRef(ref: string): { repo: string; file: string } {
  const parts = ref.split("/").filter((p) => p !== "");
  if (parts.length < 2 || parts.some((p) => p === "." || p === "..")) {
    throw new HubError(
      `Cannot parse "${ref}": expected <owner>/<name>[/<file>], e.g. ` +
        "nunchaku-tech/nunchaku-flux.1-schnell/svdq-int4_r32-flux.1-schnell.safetensors",
    );
  }
  return { repo: `${parts[0]}/${parts[1]}`, file: parts.slice(2).join("/") };
}

/** `fetch` with the token, turning network failures and 401/403/404 into clear HubErrors. */
async function hubFetch(
  url: string,
  o: ReturnType<typeof resolved>,
  what: string,
  headers: Record<string, string> = {},
): Promise<Response> {
  const h = new Headers(headers);
  if (o.token) h.set("Authorization", `Bearer ${o.token}`);
  let res: Response;
  try {
    res = await fetch(url, { headers: h });
  } catch (e) {
    throw new HubError(
      `Cannot reach ${o.endpoint} (${(e as Error).message.split("\n")[0]}): are you offline? ` +
        "Check the network connection, or set HF_ENDPOINT to a reachable hub",
    );
  }
  if (res.status === 401 || res.status === 403) {
    await res.body?.cancel();
    throw new HubError(
      `Cannot access ${what}: the hub answered ${res.status} ${res.statusText || ""}`.trimEnd() +
        (o.token
          ? "; HF_TOKEN was sent but does not grant access: accept the model's license on the hub " +
            "page and use a token with read access"
          : "; the repo is gated or private: accept its license on the hub page and set HF_TOKEN " +
            "to an access token"),
    );
  }
  if (res.status === 404) {
    await res.body?.cancel();
    throw new HubError(`Cannot find ${what} on ${o.endpoint} (404): check the repo id and file`);
  }
  if (!res.ok) {
    await res.body?.cancel();
    throw new HubError(`Cannot fetch ${what}: the hub answered ${res.status} ${res.statusText}`);
  }
  return res;
}

/** The repo's files (recursive) with sizes and hashes. */
export async function listFiles(repo: string, opts: HubOptions = {}): Promise<RepoFile[]> {
  const o = resolved(opts);
  const files: RepoFile[] = [];
  let url: string | undefined = `${o.endpoint}/api/models/${repo}/tree/${
    encodeURIComponent(o.revision)
  }?recursive=true`;
  while (url) {
    const res = await hubFetch(url, o, `the file list of ${repo}`);
    const page = await res.json() as Record<string, unknown>[];
    if (!Array.isArray(page)) {
      throw new HubError(`Cannot read the file list of ${repo}: not a list`);
    }
    for (const e of page) {
      if (e.type !== "file") continue;
      const lfs = e.lfs as { oid?: string } | undefined;
      files.push({
        path: String(e.path),
        size: Number(e.size),
        oid: String(e.oid),
        sha256: lfs?.oid,
      });
    }
    url = res.headers.get("link")?.match(/<([^>]+)>;\s*rel="next"/)?.[1];
  }
  return files;
}

/** Local path of a repo file in the cache. */
export function cachePath(repo: string, file: string, opts: HubOptions = {}): string {
  const o = resolved(opts);
  return `${o.cacheDir}/hub/${repo}/${o.revision}/${file}`;
}

/** Streaming SHA-256 (or git blob SHA-1 with `gitBlob`) of a file, hex. */
export async function hashFile(path: string, gitBlob?: { size: number }): Promise<string> {
  const h = createHash(gitBlob ? "sha1" : "sha256");
  if (gitBlob) h.update(`blob ${gitBlob.size}\0`);
  const f = await Deno.open(path);
  for await (const chunk of f.readable) h.update(chunk); // the stream closes the file
  return h.digest("hex");
}

async function stat(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(path);
  } catch {
    return null;
  }
}

/** Does the cached copy match `f` (hash checked once, then remembered by size + mtime)? */
async function verified(path: string, f: RepoFile): Promise<boolean> {
  const s = await stat(path);
  if (!s || s.size !== f.size) return false;
  const want = f.sha256 ?? f.oid;
  const mark = `${path}.verified.json`;
  try {
    const m = JSON.parse(await Deno.readTextFile(mark));
    if (m.hash === want && m.size === s.size && m.mtime === s.mtime?.getTime()) return true;
  } catch { /* not verified yet */ }
  const got = f.sha256 ? await hashFile(path) : await hashFile(path, { size: f.size });
  if (got !== want) return false;
  await Deno.writeTextFile(
    mark,
    JSON.stringify({ hash: want, size: s.size, mtime: s.mtime?.getTime() }),
  );
  return true;
}

/** Progress record of a partial download: bytes done per range. */
interface PartState {
  hash: string;
  size: number;
  ranges: { start: number; end: number; done: number }[];
}

function planRanges(size: number, o: ReturnType<typeof resolved>): PartState["ranges"] {
  const n = size >= o.rangeThreshold ? Math.max(1, o.connections) : 1;
  const step = Math.ceil(size / n);
  const out = [];
  for (let s = 0; s < size || out.length === 0; s += step) {
    out.push({ start: s, end: Math.min(size, s + step), done: 0 });
  }
  return out;
}

/** Download one range into `part` at its offset, resuming from `r.done` after a dropped body. */
async function fetchRange(
  url: string,
  part: string,
  r: PartState["ranges"][number],
  f: RepoFile,
  o: ReturnType<typeof resolved>,
  save: () => Promise<void>,
  progress: (n: number) => void,
): Promise<void> {
  let failures = 0, cause = "";
  while (r.start + r.done < r.end) {
    if (failures > o.retries) {
      throw new HubError(
        `Cannot download ${f.path}: the connection dropped ${failures} times (${cause}); run ` +
          "the command again to resume",
      );
    }
    const from = r.start + r.done;
    const whole = from === 0 && r.end === f.size;
    const res = await hubFetch(
      url,
      o,
      f.path,
      whole ? {} : { Range: `bytes=${from}-${r.end - 1}` },
    );
    if (!whole && res.status !== 206) {
      await res.body?.cancel();
      throw new HubError(
        `Cannot download ${f.path}: the server ignores byte ranges (status ${res.status})`,
      );
    }
    const file = await Deno.open(part, { write: true });
    try {
      await file.seek(from, Deno.SeekMode.Start);
      const reader = res.body!.getReader();
      let sinceSave = 0;
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        const take = value.subarray(0, Math.min(value.length, r.end - (r.start + r.done)));
        for (let w = 0; w < take.length;) w += await file.write(take.subarray(w));
        r.done += take.length;
        progress(take.length);
        sinceSave += take.length;
        if (sinceSave >= 4 << 20) {
          sinceSave = 0;
          await save();
        }
      }
      if (r.start + r.done < r.end) cause = "the response ended early";
    } catch (e) {
      cause = (e as Error).message.split("\n")[0];
    } finally {
      file.close();
      await save();
    }
    if (r.start + r.done < r.end) failures++;
  }
}

/**
 * Download repo file `f` into the cache (parallel ranges, resumable), verify it, and return its
 * path. A cached verified copy is returned at once; a corrupt one is fetched again.
 */
export async function downloadFile(
  repo: string,
  f: RepoFile,
  opts: HubOptions = {},
): Promise<string> {
  const o = resolved(opts);
  const dest = cachePath(repo, f.path, opts);
  if (await verified(dest, f)) {
    opts.onProgress?.(f.path, f.size, f.size);
    return dest;
  }
  await Deno.mkdir(dest.slice(0, dest.lastIndexOf("/")), { recursive: true });
  const url = `${o.endpoint}/${repo}/resolve/${encodeURIComponent(o.revision)}/` +
    f.path.split("/").map(encodeURIComponent).join("/");
  for (let attempt = 0; attempt < 2; attempt++) {
    await Deno.remove(dest).catch(() => {});
    await Deno.remove(`${dest}.verified.json`).catch(() => {});
    const part = `${dest}.part`, record = `${part}.json`;
    const hash = f.sha256 ?? f.oid;
    let state: PartState | undefined;
    try {
      const s = JSON.parse(await Deno.readTextFile(record)) as PartState;
      if (s.hash === hash && s.size === f.size && (await stat(part))?.size === f.size) state = s;
    } catch { /* no usable record: start over */ }
    if (!state) {
      state = { hash, size: f.size, ranges: planRanges(f.size, o) };
      const file = await Deno.open(part, { write: true, create: true, truncate: true });
      await file.truncate(f.size);
      file.close();
    }
    const st = state;
    const save = () => Deno.writeTextFile(record, JSON.stringify(st));
    let done = st.ranges.reduce((a, r) => a + r.done, 0);
    opts.onProgress?.(f.path, done, f.size);
    const progress = (n: number) => {
      done += n;
      opts.onProgress?.(f.path, done, f.size);
    };
    await save();
    // every range runs to its end or its error before the first error is thrown, so nothing
    // keeps writing after this returns and the record is complete for the next run
    const settled = await Promise.allSettled(
      st.ranges.map((r) => fetchRange(url, part, r, f, o, save, progress)),
    );
    await save();
    const failed = settled.find((x) => x.status === "rejected");
    if (failed) throw (failed as PromiseRejectedResult).reason;
    await Deno.rename(part, dest);
    await Deno.remove(record).catch(() => {});
    if (await verified(dest, f)) return dest;
  }
  await Deno.remove(dest).catch(() => {});
  throw new HubError(
    `Cannot verify ${repo}/${f.path}: its ${
      f.sha256 ? "SHA-256" : "SHA-1"
    } differs from the hub's ` +
      "listing after two downloads; the file on the hub or a proxy in between is corrupt",
  );
}

/**
 * Fetch `owner/name[/file]` (one file, or every file of the repo) into the cache; returns the
 * local paths. Files download one after another, each over parallel ranges.
 */
export async function pull(ref: string, opts: HubOptions = {}): Promise<string[]> {
  const { repo, file } = parseRepoRef(ref);
  const files = await listFiles(repo, opts);
  const wanted = file
    ? files.filter((f) => f.path === file || f.path.startsWith(`${file}/`))
    : files;
  if (wanted.length === 0) {
    throw new HubError(
      `Cannot find ${file} in ${repo}; its files: ${files.map((f) => f.path).join(", ") || "none"}`,
    );
  }
  const out = [];
  for (const f of wanted) out.push(await downloadFile(repo, f, opts));
  return out;
}
