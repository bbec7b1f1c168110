/**
 * The folders of the module form layers (ARCHITECTURE.md "Layers of the module"): a file may import
 * files of its own folder and of folders below it, never above. This test reads every .ts/.tsx
 * file's relative imports (static `import`/`export … from`, side-effect `import "…"`, dynamic
 * `import("…")` with a string literal) and reports each back edge.
 *
 * Exceptions: `tests/` and `bench/` may import anything; a `*_test.ts` file anywhere may also
 * import the shared test helpers and fixtures of `tests/`.
 */
import assert from "node:assert/strict";

/** Bottom to top; a folder may import the folders before it. */
const LAYERS: readonly (readonly string[])[] = [
  ["gpu"], // device, errors, activations, byte sources: imports nothing of the module
  ["formats"], // packed layouts, safetensors, the pre-quantized file format, checksums
  ["kernels"], // WGSL kernels, their launchers and CPU references
  ["quant"], // the quantizer library (numerics, calibration, policies)
  ["runtime"], // graphs, model families, pipelines
  ["convert"], // whole-model quantization/conversion driving the runtime graphs
  ["(root)"], // mod.ts, the library's public face
  ["cli"],
  ["web"],
  ["bench", "tests"], // may import anything (see FREE)
];
const FREE = new Set(["bench", "tests"]);
const SKIP = new Set(["node_modules", ".git", ".deno", ".gl", "dist", "fixtures_out"]);

const rank = new Map<string, number>();
LAYERS.forEach((names, i) => names.forEach((n) => rank.set(n, i)));

/** Top folder of a repository-relative path ("(root)" for a file at the top). */
function folderOf(path: string): string {
  const i = path.indexOf("/");
  return i < 0 ? "(root)" : path.slice(0, i);
}

/** `rel` resolved against the folder of `from` (both repository-relative); null above the root. */
function resolve(from: string, rel: string): string | null {
  const parts = from.split("/").slice(0, -1);
  for (const s of rel.split("/")) {
    if (s === "..") {
      if (parts.length === 0) return null;
      parts.pop();
    } else if (s !== ".") parts.push(s);
  }
  return parts.join("/");
}

/** The relative specifiers a source imports (comment lines dropped first). */
export function relativeImports(src: string): string[] {
  const code = src.split("\n").filter((l) => !/^\s*(\/\/|\/\*|\*)/.test(l)).join("\n");
  const out: string[] = [];
  const patterns = [
    /^\s*(?:import|export)\s[^;]*?\sfrom\s*["'](\.\.?\/[^"']+)["']/gm,
    /^\s*import\s*["'](\.\.?\/[^"']+)["']/gm,
    /\bimport\s*\(\s*["'](\.\.?\/[^"']+)["']\s*\)/g,
  ];
  for (const re of patterns) for (const m of code.matchAll(re)) out.push(m[1]);
  return out;
}

/** Each import that goes to a higher layer (or to a folder no layer names), as "from -> to". */
export function layerViolations(files: ReadonlyMap<string, string>): string[] {
  const bad: string[] = [];
  for (const [path, src] of files) {
    const a = folderOf(path);
    for (const spec of relativeImports(src)) {
      const target = resolve(path, spec);
      if (target === null) {
        bad.push(`${path} -> ${spec} (outside the repository)`);
        continue;
      }
      const b = folderOf(target);
      if (a === b || FREE.has(a)) continue;
      if (b === "tests" && path.endsWith("_test.ts")) continue;
      const ra = rank.get(a), rb = rank.get(b);
      if (ra === undefined || rb === undefined) {
        bad.push(`${path} -> ${target} (folder ${ra === undefined ? a : b} is in no layer)`);
      } else if (rb >= ra) bad.push(`${path} -> ${target} (${a} may not import ${b})`);
    }
  }
  return bad.sort();
}

async function readSources(root: URL): Promise<Map<string, string>> {
  const files = new Map<string, string>();
  const walk = async (dir: URL, rel: string) => {
    for await (const e of Deno.readDir(dir)) {
      if (SKIP.has(e.name)) continue;
      const path = rel + e.name;
      if (e.isDirectory) await walk(new URL(e.name + "/", dir), path + "/");
      else if (/\.tsx?$/.test(e.name)) {
        files.set(path, await Deno.readTextFile(new URL(e.name, dir)));
      }
    }
  };
  await walk(root, "");
  return files;
}

Deno.test("every import goes down the layers: gpu < formats < kernels < quant < runtime < convert < mod.ts < cli < web", async () => {
  const files = await readSources(new URL("../", import.meta.url));
  for (const f of ["gpu/device.ts", "formats/packing.ts", "runtime/pipeline.ts", "mod.ts"]) {
    assert.ok(files.has(f), `the walk found ${f}`);
  }
  assert.deepEqual(layerViolations(files), []);
});

Deno.test("a back edge, an unknown folder and a dynamic import are each reported", () => {
  const files = new Map([
    ["kernels/x/x.ts", 'import { Gpu } from "../../gpu/device.ts";\nimport "../../runtime/y.ts";'],
    ["gpu/a.ts", 'export { b } from "../formats/b.ts";'],
    ["quant/c.ts", 'const m = await import("../convert/model.ts");'],
    ["formats/d.ts", 'import type {\n  T,\n} from "../stuff/t.ts";'],
    ["runtime/e_test.ts", 'import { fix } from "../tests/_fix.ts";'],
    ["runtime/e.ts", ' * import { getGpu } from "../cli/a.ts";\n// import "../web/x.ts"'],
    ["tests/f_test.ts", 'import "../web/main.ts";'],
  ]);
  assert.deepEqual(layerViolations(files), [
    "formats/d.ts -> stuff/t.ts (folder stuff is in no layer)",
    "gpu/a.ts -> formats/b.ts (gpu may not import formats)",
    "kernels/x/x.ts -> runtime/y.ts (kernels may not import runtime)",
    "quant/c.ts -> convert/model.ts (quant may not import convert)",
  ]);
});
