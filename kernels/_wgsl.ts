/**
 * Loading WGSL sources: each kernel's `.wgsl` file is fetched as text next to its launcher
 * (works for `file:` URLs in Deno and `http(s):` URLs in a browser) or, in a bundle, taken from
 * the sources the bundler registered ({@linkcode registerWgsl}), cached, and specialised for the
 * activation dtype by replacing its `alias ACT = f32;` line.
 *
 * @module
 */

const cache = new Map<string, Promise<string>>();
/** Sources a bundle carries, by file name (web/build_device.ts registers every kernel's WGSL). */
const bundled = new Map<string, string>();

/**
 * Register WGSL sources by file name (e.g. `gemm_f16.wgsl`); {@linkcode loadWgsl} then returns
 * them without a fetch. The browser bundle calls this with every kernel's shader (esbuild
 * loads `.wgsl` files as text, web/build_device.ts); in Deno nothing is registered and shaders
 * are read from their files.
 */
export function registerWgsl(sources: Record<string, string>): void {
  for (const [name, text] of Object.entries(sources)) bundled.set(name, text);
}

/** Activation storage dtype: f16 needs the `shader-f16` feature; f32 works everywhere. */
export type ActDtype = "f16" | "f32";

/** Fetch a WGSL file (relative to `base`, usually `import.meta.url`) once. */
export function loadWgsl(file: string, base: string | URL): Promise<string> {
  const url = new URL(file, base).href;
  const text = bundled.get(url.slice(url.lastIndexOf("/") + 1));
  if (text !== undefined) return Promise.resolve(text);
  let p = cache.get(url);
  if (!p) {
    p = fetch(url).then(async (r) => {
      if (!r.ok) throw new Error(`Cannot load shader ${url}: HTTP ${r.status}`);
      return await r.text();
    });
    cache.set(url, p);
    p.catch(() => cache.delete(url));
  }
  return p;
}

const ALIAS_LINE = /^alias ACT = f32;$/m;

/**
 * Specialise a shader for `dtype`: the line `alias ACT = f32;` becomes
 * `enable f16;` + `alias ACT = f16;` for f16. A shader without that line is returned as is for
 * f32 and refused for f16.
 */
export function withActDtype(source: string, dtype: ActDtype): string {
  if (dtype === "f32") return source;
  if (!ALIAS_LINE.test(source)) {
    throw new TypeError("Cannot specialise shader for f16: it has no `alias ACT = f32;` line");
  }
  // `enable` must precede every other declaration, so it goes to the top of the module.
  return "enable f16;\n" + source.replace(ALIAS_LINE, "alias ACT = f16;");
}

/**
 * Specialise a shader that declares a second storage type as `alias <name> = ACT;` (a residual
 * stream kept in f32 under f16 activations, a copy's destination): `ACT` as
 * {@linkcode withActDtype} does, and `<name>` as `aliasDtype` (`enable f16;` on top when either
 * is f16). With `aliasDtype === dtype` the result is exactly `withActDtype(source, dtype)`.
 */
export function withAliasDtype(
  source: string,
  dtype: ActDtype,
  alias: string,
  aliasDtype: ActDtype,
): string {
  if (aliasDtype === dtype) return withActDtype(source, dtype);
  const line = new RegExp(`^alias ${alias} = ACT;$`, "m");
  if (!line.test(source)) {
    throw new TypeError(`Cannot specialise shader: it has no \`alias ${alias} = ACT;\` line`);
  }
  const out = withActDtype(source.replace(line, `alias ${alias} = ${aliasDtype};`), dtype);
  return dtype === "f32" ? "enable f16;\n" + out : out; // aliasDtype is f16 here
}

/** Bytes per element of an activation dtype. */
export function actBytes(dtype: ActDtype): number {
  return dtype === "f16" ? 2 : 4;
}

/** Typed array for host data of an activation dtype. */
export function toActArray(
  values: ArrayLike<number>,
  dtype: ActDtype,
): Float16Array | Float32Array {
  return dtype === "f16" ? Float16Array.from(values) : Float32Array.from(values);
}

/** Read back activations of `dtype` as f32 values. */
export function fromActBytes(bytes: ArrayBuffer, dtype: ActDtype, count: number): Float32Array {
  return dtype === "f16"
    ? Float32Array.from(new Float16Array(bytes, 0, count))
    : new Float32Array(bytes, 0, count);
}
