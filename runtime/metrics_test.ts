import assert from "node:assert/strict";
import { psnr, ssim } from "./metrics.ts";
import { Rng } from "../gpu/_testing.ts";

Deno.test("metrics: identical images give PSNR ∞ and SSIM 1", () => {
  const a = new Rng(1).normals(3 * 16 * 16, 0.5);
  assert.equal(psnr(a, a), Infinity);
  assert.ok(Math.abs(ssim(a, a, 3) - 1) < 1e-12);
});

Deno.test("metrics: PSNR matches its definition; SSIM falls with noise", () => {
  const rng = new Rng(2);
  const a = rng.normals(3 * 32 * 32, 0.3);
  // a uniform shift of 0.1 in [-1, 1] is 0.05 in [0, 1]: MSE 0.0025 → 26.02 dB
  const shifted = a.map((v) => Math.max(-0.9, Math.min(0.9, v)));
  const b = shifted.map((v) => v + 0.1);
  assert.ok(Math.abs(psnr(b, shifted) - 10 * Math.log10(1 / 0.0025)) < 1e-6);
  const small = a.map((v) => v + 0.02 * rng.normal());
  const large = a.map((v) => v + 0.3 * rng.normal());
  const s1 = ssim(small, a, 3), s2 = ssim(large, a, 3);
  assert.ok(s1 > 0.95 && s1 < 1, `small noise SSIM ${s1}`);
  assert.ok(s2 < s1 - 0.2, `large noise SSIM ${s2} vs ${s1}`);
});
