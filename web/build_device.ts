/**
 * Bundles the on-device generator (web/device_client.ts with the runtime, the kernels and their
 * WGSL) for the browser with esbuild: `.wgsl` files load as text and are registered with
 * kernels/_wgsl.ts (so a kernel's `loadWgsl` needs no fetch), and gpu/file_source.ts (Deno's
 * file access) is replaced by web/file_source_browser.ts, so the bundle holds no Deno API. The
 * Deno path is unchanged: there the kernels read their `.wgsl` files.
 *
 * @module
 */
import type * as esbuild from "esbuild";
import { bundleScript } from "./_bundle.ts";

/** Where the bundle goes. */
export const DEVICE_JS: string = new URL("./dist/device.js", import.meta.url).pathname;

const ROOT = new URL("../", import.meta.url).pathname;

/** Every kernel's WGSL file, as absolute paths. */
async function wgslFiles(): Promise<string[]> {
  const out: string[] = [];
  for await (const dir of Deno.readDir(`${ROOT}kernels`)) {
    if (!dir.isDirectory) continue;
    for await (const f of Deno.readDir(`${ROOT}kernels/${dir.name}`)) {
      if (f.isFile && f.name.endsWith(".wgsl")) out.push(`${ROOT}kernels/${dir.name}/${f.name}`);
    }
  }
  const names = out.map((p) => p.slice(p.lastIndexOf("/") + 1));
  const dup = names.find((n, i) => names.indexOf(n) !== i);
  if (dup) throw new Error(`Cannot bundle the kernels: two WGSL files are named ${dup}`);
  return out.sort();
}

const browserPlugin: esbuild.Plugin = {
  name: "w4-browser",
  setup(build) {
    build.onResolve({ filter: /gpu\/file_source\.ts$|^\.\/file_source\.ts$/ }, (args) => {
      if (!args.importer.startsWith(ROOT)) return undefined;
      return { path: `${ROOT}web/file_source_browser.ts` };
    });
    build.onLoad({ filter: /kernels\/_wgsl\.ts$/ }, async (args) => {
      const files = await wgslFiles();
      const imports = files.map((p, i) => `import __wgsl${i} from ${JSON.stringify(p)};`);
      const entries = files.map((p, i) =>
        `${JSON.stringify(p.slice(p.lastIndexOf("/") + 1))}: __wgsl${i}`
      );
      const source = await Deno.readTextFile(args.path);
      return {
        contents: `${source}\n${imports.join("\n")}\nregisterWgsl({ ${entries.join(", ")} });\n`,
        loader: "ts",
      };
    });
  },
};

/**
 * Bundle web/device_client.ts (or another browser `entry` of this project) and return the
 * JavaScript (also written to `out` unless null).
 *
 * @example
 * ```ts ignore
 * import { buildDevice } from "./build_device.ts";
 * const js = await buildDevice(null);
 * ```
 */
export function buildDevice(
  out: string | null = DEVICE_JS,
  entry = `${ROOT}web/device_client.ts`,
): Promise<string> {
  return bundleScript(entry, out, { loader: { ".wgsl": "text" }, plugins: [browserPlugin] });
}
