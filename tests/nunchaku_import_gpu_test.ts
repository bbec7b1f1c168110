/**
 * Every layer of an imported Nunchaku FLUX checkpoint, run on the GPU the way the model graph runs
 * it (`createLinear` with the file's policy entry: W4A4 with convention "nunchaku", unsigned
 * post-GELU INT4 inputs, NVFP4 per-channel scales; W4A16 "uint4" adaLN with zero points), against
 * Nunchaku's layer math computed in float64 from the checkpoint's own values (natural order, as the
 * packer wrote them: codes, bf16/E4M3 scales, α, wcscales, λ, low-rank factors, AWQ zeros, bias with
 * the folded +1 removed).
 *
 * Bounds per element (derived like tests/nunchaku_linear_test.ts): W4A4, with the activation
 * codes fixed by the CPU mirror of Nunchaku's quantizer, |y − ref| ≤ 1e-5·S + 2⁻²⁴·K·Σ_r
 * |lora_up|·Σ_k |x·lora_down| (S = Σ |group products, low-rank products, bias|); W4A16 (f32
 * accumulation of K products) |y − ref| ≤ K·2⁻²³·Σ_k |x·w| + 1e-7.
 */
import assert from "node:assert/strict";
import { QuantFile } from "../formats/format.ts";
import { importNunchakuFlux } from "../quant/nunchaku_flux.ts";
import type { NunchakuW4A16, NunchakuW4A4 } from "../quant/nunchaku.ts";
import { writeTinyNunchakuFlux } from "../quant/_nunchaku_testing.ts";
import {
  actCodes,
  actGroupScales,
  type ActMode,
  decodeE2M1,
  decodeE4M3,
  quantizeAct,
  roundBf16,
} from "../formats/packing.ts";
import { createLinear } from "../runtime/linears.ts";
import type { StoredTensor } from "../runtime/linear.ts";
import { freshRng, HAS_GPU, NO_GPU_REASON, poison, testGpu } from "../gpu/_testing.ts";
import { geluTanh } from "../gpu/activations.ts";

if (!HAS_GPU) console.warn(`nunchaku import GPU tests skipped: ${NO_GPU_REASON}`);
const M = 5;

/** Nunchaku's W4A4 layer in float64 from its natural values; also the bound's terms. */
function w4a4Ref(l: NunchakuW4A4, x: Float32Array, mode: ActMode) {
  const { n, k, r } = l;
  const act = quantizeAct(x, M, k, mode, l.smooth, "nunchaku");
  const qa = actCodes(act), sa = actGroupScales(act); // nvfp4: 2·e2m1 and s/2
  const G = l.format === "int4" ? 64 : 16, groups = k / G;
  const wv = (i: number) => l.format === "int4" ? (l.codes[i] << 28) >> 28 : decodeE2M1(l.codes[i]);
  const ws = (j: number, g: number) =>
    l.format === "int4"
      ? l.scales![j * groups + g]
      : decodeE4M3(l.scalesE4m3![j * groups + g]) * l.wtscale * (l.wcscales?.[j] ?? 1);
  const y = new Float64Array(M * n), bound = new Float64Array(M * n);
  for (let i = 0; i < M; i++) {
    const la = new Float64Array(r), laAbs = new Float64Array(r);
    for (let t = 0; t < r; t++) {
      for (let c = 0; c < k; c++) {
        la[t] += x[i * k + c] * l.loraDown[t * k + c];
        laAbs[t] += Math.abs(x[i * k + c] * l.loraDown[t * k + c]);
      }
    }
    for (let j = 0; j < n; j++) {
      let sum = 0, abs = 0, loraTerm = 0;
      for (let g = 0; g < groups; g++) {
        let dot = 0;
        for (let c = g * G; c < (g + 1) * G; c++) dot += qa[i * k + c] * wv(j * k + c);
        const term = dot * sa[i * groups + g] * ws(j, g);
        sum += term;
        abs += Math.abs(term);
      }
      for (let t = 0; t < r; t++) {
        sum += la[t] * l.loraUp[j * r + t];
        abs += Math.abs(la[t] * l.loraUp[j * r + t]);
        loraTerm += Math.abs(l.loraUp[j * r + t]) * laAbs[t];
      }
      const b = l.bias?.[j] ?? 0;
      y[i * n + j] = sum + b;
      bound[i * n + j] = 1e-5 * (abs + Math.abs(b)) + 2 ** -24 * k * loraTerm;
    }
  }
  return { y, bound };
}

/** Nunchaku's AWQ W4A16 layer in float64: x·(q·s + z)ᵀ + bias. */
function w4a16Ref(l: NunchakuW4A16, x: Float32Array) {
  const { n, k } = l, g = k / 64;
  const y = new Float64Array(M * n), bound = new Float64Array(M * n);
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < n; j++) {
      let sum = 0, abs = 0;
      for (let c = 0; c < k; c++) {
        const gi = j * g + Math.floor(c / 64);
        const w = l.codes[j * k + c] * l.scales[gi] + l.zeros[gi];
        sum += x[i * k + c] * w;
        abs += Math.abs(x[i * k + c] * w);
      }
      y[i * n + j] = sum + l.bias[j];
      bound[i * n + j] = k * 2 ** -23 * abs + 1e-7;
    }
  }
  return { y, bound };
}

for (const precision of ["int4", "nvfp4"] as const) {
  Deno.test({
    name: `imported Nunchaku ${precision} FLUX layers on the GPU compute Nunchaku's math`,
    ignore: !HAS_GPU,
    async fn() {
      const gpu = (await testGpu())!;
      const dir = await Deno.makeTempDir({ prefix: "w4_nunchaku_gpu_" });
      const rng = freshRng(`nunchaku import gpu ${precision}`);
      try {
        const truth = await writeTinyNunchakuFlux(`${dir}/src.safetensors`, precision, 21);
        await importNunchakuFlux(`${dir}/src.safetensors`, `${dir}/ours.safetensors`);
        const q = await QuantFile.open(`${dir}/ours.safetensors`);
        try {
          const layers = [...truth.w4a4.keys(), ...truth.w4a16.keys()];
          for (const base of layers) {
            const pol = q.meta.policy[base];
            const l4 = truth.w4a4.get(base), l16 = truth.w4a16.get(base);
            const n = (l4 ?? l16)!.n, k = (l4 ?? l16)!.k;
            const tensors = new Map<string, StoredTensor>();
            for (const [name, info] of q.reader.tensors) {
              if (!name.startsWith(`${base}.`) || name.slice(base.length + 1).includes(".")) {
                continue;
              }
              tensors.set(name.slice(base.length + 1), {
                dtype: info.dtype,
                shape: info.shape,
                data: await q.reader.readRaw(name),
              });
            }
            const op = await createLinear(gpu, {
              name: base,
              m: M,
              n,
              k,
              dtype: "f32",
              method: pol.method,
              format: pol.format as "int4",
              actMode: pol.actMode as ActMode | undefined,
              convention: pol.convention as "nunchaku" | undefined,
            }, tensors);
            // bf16 inputs; post-GELU layers get GELU outputs
            const post = pol.actMode === "int4_unsigned" || /mlp\.2$|linear2_mlp$/.test(base);
            const x = rng.normals(M * k).map((v) => roundBf16(post ? geluTanh(2 * v) : v));
            const xb = await gpu.upload(`test ${base} x`, x);
            const yb = await gpu.upload(`test ${base} y`, poison(M * n * 4));
            let y: Float32Array;
            try {
              gpu.run(op.dispatch(xb, yb));
              y = new Float32Array(await gpu.read(yb));
            } finally {
              op.destroy();
              gpu.destroy(xb, yb);
            }
            const ref = l4 ? w4a4Ref(l4, x, pol.actMode as ActMode) : w4a16Ref(l16!, x);
            let worst = 0;
            for (let i = 0; i < y.length; i++) {
              const err = Math.abs(y[i] - ref.y[i]);
              if (!(err <= ref.bound[i])) {
                assert.fail(
                  `${base}: y[${i}] is ${y[i]}, Nunchaku's ${ref.y[i]} (bound ${ref.bound[i]})`,
                );
              }
              worst = Math.max(worst, err / ref.bound[i]);
            }
            console.log(
              `  ${base} (${pol.method} ${pol.format} ${pol.actMode ?? ""}): worst err/bound ${
                worst.toFixed(3)
              }`,
            );
          }
        } finally {
          q.close();
        }
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}
