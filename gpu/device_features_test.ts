// Engine differences found by feature checks (issue 17): whether WGSL takes `enable subgroups;`
// (probed by compiling it: Deno's wgpu rejects it, Chrome needs it) and whether WGSL has
// dot4I8Packed (navigator.gpu.wgslLanguageFeatures). A subgroup shader runs through
// Gpu.pipeline whichever way the engine wants it; the browser side is checked in
// web/device_browser_test.ts (Chromium reports subgroupsEnable = true there).
import assert from "node:assert/strict";
import { HAS_GPU, NO_GPU_REASON, testGpu } from "./_testing.ts";
import { usesSubgroups } from "./device.ts";

Deno.test("device: usesSubgroups finds subgroup builtins and an existing enable line", () => {
  assert.equal(usesSubgroups("fn f() { let s = subgroupAdd(1u); }"), true);
  assert.equal(usesSubgroups("@builtin(subgroup_size) sg: u32"), true);
  assert.equal(usesSubgroups("enable subgroups;\nfn f() { let s = subgroupAdd(1u); }"), false);
  assert.equal(usesSubgroups("// no subgroup use here\nfn f() {}"), false);
});

const SHADER = `
@group(0) @binding(0) var<storage, read_write> y: array<u32>;
@compute @workgroup_size(64)
fn sg_sum(@builtin(local_invocation_index) i: u32, @builtin(subgroup_size) n: u32) {
  let s = subgroupAdd(1u);
  y[i] = s * 1000u + n;
}`;

Deno.test({
  name: "device: a subgroup shader runs through Gpu.pipeline (enable line added only if accepted)",
  ignore: !HAS_GPU, // NO_GPU_REASON
  fn: async () => {
    const gpu = (await testGpu())!;
    const has = (navigator.gpu as { wgslLanguageFeatures?: ReadonlySet<string> })
      .wgslLanguageFeatures?.has("packed_4x8_integer_dot_product") ?? true;
    assert.equal(gpu.caps.packed4x8, has);
    if (!gpu.caps.subgroups) return console.warn("no subgroups feature: the run part is skipped");
    if (!gpu.caps.subgroupsEnable) {
      // the probe said no (Deno's wgpu, DESIGN.md §5): the line is indeed refused
      await assert.rejects(
        gpu.pipeline("sg_sum_enabled", "enable subgroups;\n" + SHADER, {}, "sg_sum"),
        /pipeline sg_sum_enabled/,
      );
    }
    const y = await gpu.createBuffer("buffer subgroup test", 64 * 4);
    try {
      const p = await gpu.pipeline("sg_sum", SHADER);
      await gpu.runChecked("run sg_sum", [{ pipeline: p, bindings: [y], workgroups: [1] }]);
      const out = new Uint32Array(await gpu.read(y));
      const n = out[0] % 1000;
      assert.ok(n >= 1 && n <= 64, `subgroup size ${n}`);
      for (const v of out) assert.equal(v, n * 1000 + n, "each subgroup sums to its size");
    } finally {
      gpu.destroy(y);
    }
  },
});
if (!HAS_GPU) console.warn(`device feature tests skipped: ${NO_GPU_REASON}`);
