import assert from "node:assert/strict";
import { getGpu, Gpu } from "./device.ts";
import { GpuDeviceLostError, GpuValidationError } from "./errors.ts";
import { HAS_GPU, NO_GPU_REASON, testGpu } from "./_testing.ts";

const ignore = !HAS_GPU; // NO_GPU_REASON
if (ignore) console.warn(`device tests skipped: ${NO_GPU_REASON}`);

Deno.test({
  name: "device: create reports capabilities and passes the self-test",
  ignore,
  fn: async () => {
    const gpu = await testGpu();
    assert.ok(gpu, "a GPU exists when HAS_GPU");
    assert.ok(gpu.caps.adapter.length > 0);
    assert.ok(gpu.caps.maxStorageBufferBindingSize >= 128 * 2 ** 20);
    // the adapter's own limits were requested, not the defaults
    assert.equal(gpu.caps.maxBufferSize, gpu.adapter.limits.maxBufferSize);
  },
});

Deno.test({
  name: "device: upload/read round trip, odd byte lengths padded",
  ignore,
  fn: async () => {
    const gpu = (await testGpu())!;
    const data = Uint8Array.from({ length: 13 }, (_, i) => i * 7);
    const buf = await gpu.upload("buffer round trip", data);
    const back = new Uint8Array(await gpu.read(buf, 13));
    assert.deepEqual(back, data);
    gpu.destroy(buf);
  },
});

Deno.test({
  name: "device: a bad shader is a GpuValidationError naming the step",
  ignore,
  fn: async () => {
    const gpu = (await testGpu())!;
    await assert.rejects(
      gpu.pipeline(
        "broken_kernel",
        "@compute @workgroup_size(1) fn broken_kernel() { let x: u32 = 1.5; }",
      ),
      (e: unknown) => e instanceof GpuValidationError && e.step === "pipeline broken_kernel",
    );
  },
});

Deno.test({
  name: "device: the pipeline cache keys on name and constants",
  ignore,
  fn: async () => {
    const gpu = (await testGpu())!;
    const src = "override W: u32 = 1u;\n@compute @workgroup_size(W) fn cached() {}";
    const a = await gpu.pipeline("cached", src, { W: 4 });
    const b = await gpu.pipeline("cached", src, { W: 4 });
    const c = await gpu.pipeline("cached", src, { W: 8 });
    assert.equal(a, b);
    assert.notEqual(a, c);
  },
});

Deno.test({
  name: "device: a buffer over maxBufferSize is refused before allocation",
  ignore,
  fn: async () => {
    const gpu = (await testGpu())!;
    assert.throws(
      () => gpu.createBuffer("buffer too big", gpu.caps.maxBufferSize + 4),
      (e: unknown) => e instanceof RangeError && /maxBufferSize/.test(e.message),
    );
  },
});

Deno.test({
  name: "device: upload + destroy in a loop keeps host memory flat (the writeBuffer trap)",
  ignore,
  fn: async () => {
    const gpu = (await testGpu())!;
    const chunk = new Uint8Array(8 << 20);
    const cycle = async () => {
      const b = await gpu.createBuffer("buffer leak probe", chunk.byteLength);
      gpu.write(b, chunk);
      gpu.destroy(b); // destroy must submit the pending write first
    };
    for (let i = 0; i < 5; i++) await cycle();
    await gpu.sync();
    const before = Deno.memoryUsage().rss;
    for (let i = 0; i < 60; i++) await cycle();
    await gpu.sync();
    const grown = (Deno.memoryUsage().rss - before) / 2 ** 20;
    // 60 × 8 MiB = 480 MiB would leak without the submit; allow allocator noise
    assert.ok(grown < 120, `host memory grew by ${grown.toFixed(0)} MiB over 60 cycles`);
  },
});

Deno.test({
  name: "device: a lost device throws GpuDeviceLostError and getGpu re-initialises",
  ignore,
  fn: async () => {
    const gpu = await getGpu({ selfTest: false });
    gpu.device.destroy();
    await gpu.device.lost;
    await new Promise((r) => setTimeout(r, 0));
    assert.ok(gpu.lost);
    await assert.rejects(
      () => gpu.upload("buffer after loss", new Uint8Array(4)),
      (e: unknown) => e instanceof GpuDeviceLostError && /getGpu/.test(e.message),
    );
    const again = await getGpu({ selfTest: false });
    assert.notEqual(again, gpu);
    assert.ok(!again.lost);
    again.close();
  },
});

Deno.test({
  name: "device: Gpu.create without self-test still works",
  ignore,
  fn: async () => {
    const gpu = await Gpu.create({ selfTest: false, disableF16: true });
    assert.equal(gpu.caps.shaderF16, false);
    gpu.close();
  },
});

Deno.test({
  name:
    "device: a large upload goes in pieces and arrives whole; over the binding limit is refused",
  ignore,
  fn: async () => {
    const gpu = (await testGpu())!;
    const n = (40 << 20) + 12; // three 16 MiB pieces, the last one partial
    const data = new Uint8Array(n);
    for (let i = 0; i < n; i += 4093) data[i] = (i >>> 12) & 0xff;
    const buf = await gpu.upload("buffer large upload", data);
    const back = new Uint8Array(await gpu.read(buf, n));
    for (let i = 0; i < n; i += 4093) assert.equal(back[i], data[i], `byte ${i}`);
    assert.equal(back[n - 1], data[n - 1]);
    gpu.destroy(buf);
    const tooBig = { byteLength: gpu.caps.maxStorageBufferBindingSize + 4 } as ArrayBufferView;
    await assert.rejects(
      gpu.upload("buffer too big to bind", tooBig),
      (e: unknown) => e instanceof RangeError && /maxStorageBufferBindingSize/.test(e.message),
    );
  },
});

Deno.test({
  name: "device: no XDG_RUNTIME_DIR in the environment → no Mesa error line on stderr",
  ignore, // NO_GPU_REASON: the message comes from the Vulkan driver
  fn: async () => {
    const script = `import { Gpu } from ${
      JSON.stringify(new URL("./device.ts", import.meta.url).href)
    };
      const gpu = await Gpu.create({ selfTest: false });
      console.log(gpu.caps.adapter);
      gpu.device.destroy();`;
    const env: Record<string, string> = { ...Deno.env.toObject(), NO_COLOR: "1" };
    delete env.XDG_RUNTIME_DIR;
    for (const xdg of [undefined, "/nonexistent/xdg"]) {
      if (xdg) env.XDG_RUNTIME_DIR = xdg;
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["eval", "--ext=ts", script],
        env,
        clearEnv: true,
        stdout: "piped",
        stderr: "piped",
      }).output();
      const stderr = new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 0, stderr);
      assert.doesNotMatch(stderr, /XDG_RUNTIME_DIR/, `XDG_RUNTIME_DIR=${xdg}: ${stderr}`);
    }
  },
});
