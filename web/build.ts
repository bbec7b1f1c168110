/**
 * `deno task build`: bundle the page's client script (web/client.ts) with esbuild into
 * web/dist/client.js, which `deno task serve` and the edge entry serve at /static/client.js, and
 * the on-device generator (web/device_client.ts + the runtime + every kernel's WGSL) into
 * web/dist/device.js, served at /static/device.js.
 *
 * @module
 */
import { bundleScript } from "./_bundle.ts";

/** Where the bundle goes. */
export const CLIENT_JS: string = new URL("./dist/client.js", import.meta.url).pathname;

/**
 * Bundle web/client.ts and return the JavaScript (also written to `out` unless it is null).
 *
 * @example
 * ```ts ignore
 * import { buildClient } from "./build.ts";
 * const js = await buildClient();
 * ```
 */
export function buildClient(out: string | null = CLIENT_JS): Promise<string> {
  return bundleScript(new URL("./client.ts", import.meta.url).pathname, out);
}

if (import.meta.main) {
  const js = await buildClient();
  console.log(`wrote ${CLIENT_JS} (${js.length} bytes)`);
  const { buildDevice, DEVICE_JS } = await import("./build_device.ts");
  const dev = await buildDevice();
  console.log(`wrote ${DEVICE_JS} (${dev.length} bytes)`);
}
