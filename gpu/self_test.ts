/**
 * Start-up self-test: a tiny GEMM in f32, in f16 (when `shader-f16` is on) and with
 * `dot4I8Packed` (when the WGSL has it), each compared with the CPU. Some drivers silently compute wrong f16 or
 * integer-dot results; such a device is refused here with a clear message instead of
 * producing garbage images later.
 *
 * @module
 */
import type { Gpu } from "./device.ts";
import { GpuSelfTestError } from "./errors.ts";

const N = 8; // an 8×8×8 product: small enough to be instant on a software adapter

function shader(f16: boolean, dot: boolean): string {
  const t = f16 ? "f16" : "f32";
  return `${f16 ? "enable f16;\n" : ""}
@group(0) @binding(0) var<storage, read> a: array<${t}>;
@group(0) @binding(1) var<storage, read> b: array<${t}>;
@group(0) @binding(2) var<storage, read> qa: array<u32>;
@group(0) @binding(3) var<storage, read> qb: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(${N}, ${N})
fn self_test(@builtin(local_invocation_id) id: vec3u) {
  var acc: ${t} = ${t}(0);
  for (var k = 0u; k < ${N}u; k++) { acc += a[id.y * ${N}u + k] * b[id.x * ${N}u + k]; }
  var iacc: i32 = 0;
  ${dot ? "" : "// no dot4I8Packed in this WGSL: the integer half is skipped\n  _ = qa[0] + qb[0];"}
  for (var k = 0u; k < ${dot ? N / 4 : 0}u; k++) {
    ${
    dot ? "iacc += dot4I8Packed(qa[id.y * " + N / 4 + "u + k], qb[id.x * " + N / 4 + "u + k]);" : ""
  }
  }
  y[id.y * ${N}u + id.x] = f32(acc);
  y[${N * N}u + id.y * ${N}u + id.x] = f32(iacc);
}`;
}

/** Run the self-test; throws `GpuSelfTestError` naming what is wrong. */
export async function selfTest(gpu: Gpu): Promise<void> {
  // Small integers keep every product exact in f16, f32 and i32.
  const a = Float32Array.from({ length: N * N }, (_, i) => ((i * 7) % 9) - 4);
  const b = Float32Array.from({ length: N * N }, (_, i) => ((i * 5) % 7) - 3);
  const qa = Int8Array.from({ length: N * N }, (_, i) => ((i * 37) % 255) - 127);
  const qb = Int8Array.from({ length: N * N }, (_, i) => ((i * 91) % 255) - 127);
  const expectF = new Float64Array(N * N);
  const expectI = new Float64Array(N * N);
  for (let m = 0; m < N; m++) {
    for (let n = 0; n < N; n++) {
      let s = 0, si = 0;
      for (let k = 0; k < N; k++) {
        s += a[m * N + k] * b[n * N + k];
        si += qa[m * N + k] * qb[n * N + k];
      }
      expectF[m * N + n] = s;
      expectI[m * N + n] = si;
    }
  }
  const variants = gpu.caps.shaderF16 ? [false, true] : [false];
  for (const f16 of variants) {
    const name = f16 ? "f16" : "f32";
    const conv = (x: Float32Array) => f16 ? new Float16Array(x) : x;
    const bufs = [
      await gpu.upload("buffer self-test a", conv(a)),
      await gpu.upload("buffer self-test b", conv(b)),
      await gpu.upload("buffer self-test qa", qa),
      await gpu.upload("buffer self-test qb", qb),
      await gpu.createBuffer("buffer self-test y", 2 * N * N * 4),
    ];
    try {
      const dot = gpu.caps.packed4x8;
      const pipeline = await gpu.pipeline(
        `self_test_${name}${dot ? "" : "_nodot"}`,
        shader(f16, dot),
        {},
        "self_test",
      );
      await gpu.runChecked(`run self-test (${name})`, [{
        pipeline,
        bindings: bufs,
        workgroups: [1],
      }]);
      const y = new Float32Array(await gpu.read(bufs[4]));
      for (let i = 0; i < N * N; i++) {
        if (y[i] !== expectF[i]) {
          throw new GpuSelfTestError(
            `Cannot trust ${gpu.caps.adapter}: a ${name} GEMM gave ${y[i]} where the CPU gives ` +
              `${expectF[i]}; update the GPU driver${f16 ? " or disable f16 (disableF16)" : ""}`,
          );
        }
        if (dot && y[N * N + i] !== expectI[i]) {
          throw new GpuSelfTestError(
            `Cannot trust ${gpu.caps.adapter}: dot4I8Packed gave ${y[N * N + i]} where the CPU ` +
              `gives ${expectI[i]}; update the GPU driver`,
          );
        }
      }
    } finally {
      gpu.destroy(...bufs);
    }
  }
}
