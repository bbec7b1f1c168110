// The on-device bundle: every kernel's WGSL is inside (registered by file name, no fetch), Deno's
// file access is replaced (gpu/file_source.ts → web/file_source_browser.ts), and the only
// Deno names left are ensureRuntimeDir's (guarded by `typeof Deno`, never run in a page).
import assert from "node:assert/strict";
import { buildDevice } from "./build_device.ts";

Deno.test("device bundle: all WGSL inside, no Deno file API", async () => {
  const js = await buildDevice(null);
  const used = new Set([...js.matchAll(/\bDeno\.([A-Za-z]+(?:\.[A-Za-z]+)?)/g)].map((m) => m[1]));
  const ensureRuntimeDir = [
    "env.get",
    "env.set",
    "statSync",
    "makeTempDirSync",
    "chmodSync",
    "removeSync",
  ];
  for (const name of used) assert.ok(ensureRuntimeDir.includes(name), `Deno.${name} in the bundle`);
  assert.match(js, /Cannot open the local file .* in a browser/, "the browser file-source stub");
  const root = new URL("../kernels/", import.meta.url);
  let n = 0;
  for await (const dir of Deno.readDir(root)) {
    if (!dir.isDirectory) continue;
    for await (const f of Deno.readDir(new URL(`${dir.name}/`, root))) {
      if (!f.name.endsWith(".wgsl")) continue;
      assert.ok(js.includes(JSON.stringify(f.name)), `${f.name} registered in the bundle`);
      n++;
    }
  }
  assert.ok(n >= 10, `${n} WGSL files found`);
});
