/**
 * The esbuild call shared by the page's script bundle (web/build.ts) and the on-device generator
 * bundle (web/build_device.ts).
 *
 * @module
 */
import * as esbuild from "esbuild";

/**
 * Bundle `entry` for the browser (ESM, ES2022, minified) with esbuild plus `extra` options, and
 * return the JavaScript, also written to `out` unless it is null.
 */
export async function bundleScript(
  entry: string,
  out: string | null,
  extra: Partial<esbuild.BuildOptions> = {},
): Promise<string> {
  try {
    const r = await esbuild.build({
      entryPoints: [entry],
      bundle: true,
      format: "esm",
      target: "es2022",
      minify: true,
      write: false,
      logLevel: "silent",
      ...extra,
    });
    const js = r.outputFiles![0].text;
    if (out) {
      await Deno.mkdir(out.slice(0, out.lastIndexOf("/")), { recursive: true });
      await Deno.writeTextFile(out, js);
    }
    return js;
  } finally {
    await esbuild.stop();
  }
}
