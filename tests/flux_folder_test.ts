/**
 * Finding a FLUX model's parts on disk (diffusers folder, BFL folder, pre-quantized transformer
 * beside a float folder; errors naming the missing part) and the memory plan (weights per
 * component, activations, refusal before allocating).
 *
 * @module
 */
import assert from "node:assert/strict";
import { FLUX1_CONFIG } from "../runtime/flux/config.ts";
import { checkFluxPlan, fluxMemoryPlan, fluxPolicyAt } from "../runtime/flux/memory.ts";
import { resolveFluxModel } from "../runtime/flux/model_folder.ts";
import { FluxWeights } from "../runtime/flux/weights.ts";

const TINY = new URL("./fixtures/flux/flux_tiny.safetensors", import.meta.url).pathname;

async function folder(parts: string[], files: Record<string, string> = {}): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "flux_folder_" });
  for (const p of parts) await Deno.mkdir(`${dir}/${p}`, { recursive: true });
  for (const [name, from] of Object.entries(files)) await Deno.copyFile(from, `${dir}/${name}`);
  return dir;
}

const ENCODERS = ["text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"];

Deno.test("FLUX folder: diffusers layout", async () => {
  const dir = await folder([...ENCODERS, "transformer", "vae"]);
  try {
    await Deno.writeTextFile(`${dir}/model_index.json`, "{}");
    const p = await resolveFluxModel(dir);
    assert.equal(p.transformer, `${dir}/transformer`);
    assert.equal(p.t5, `${dir}/text_encoder_2`);
    assert.equal(p.clipTokenizer, `${dir}/tokenizer`);
    assert.equal(p.vae, `${dir}/vae`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("FLUX folder: BFL single-file transformer + ae.safetensors, and a missing part", async () => {
  const dir = await folder(ENCODERS, {
    "flux1-tiny.safetensors": TINY,
    "ae.safetensors": TINY, // only its presence matters here
  });
  try {
    const p = await resolveFluxModel(dir);
    assert.equal(p.transformer, `${dir}/flux1-tiny.safetensors`);
    assert.equal(p.vae, `${dir}/ae.safetensors`);
    const w = await FluxWeights.open(p.transformer);
    assert.equal(w.layout, "bfl");
    w.close();
    await Deno.remove(`${dir}/text_encoder_2`);
    await Deno.remove(`${dir}/ae.safetensors`);
    await assert.rejects(() => resolveFluxModel(dir), {
      name: "FormatError",
      message: /lacks the T5 text encoder \(text_encoder_2\/\); the autoencoder \(vae\/ folder/,
    });
    // a caller that needs only the transformer is satisfied
    const only = await resolveFluxModel(dir, { need: ["transformer"] });
    assert.equal(only.transformer, `${dir}/flux1-tiny.safetensors`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("FLUX folder: a pre-quantized transformer file beside a float folder", async () => {
  const dir = await folder([...ENCODERS, "transformer", "vae"]);
  try {
    // --transformer FILE overrides the folder's transformer/
    const p = await resolveFluxModel(dir, { transformer: TINY });
    assert.equal(p.transformer, TINY);
    // --model FILE: the other parts come from the file's folder
    await Deno.copyFile(TINY, `${dir}/flux.int4.safetensors`);
    const q = await resolveFluxModel(`${dir}/flux.int4.safetensors`);
    assert.equal(q.transformer, `${dir}/flux.int4.safetensors`);
    assert.equal(q.root, dir);
    assert.equal(q.clip, `${dir}/text_encoder`);
    await assert.rejects(() => resolveFluxModel(`${dir}/nope`), {
      name: "FormatError",
      message: /does not exist/,
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("FLUX memory plan: FLUX.1 weights per precision, activations, refusals", () => {
  const at = (policyOf?: ReturnType<typeof fluxPolicyAt>, width = 1024) =>
    fluxMemoryPlan(FLUX1_CONFIG, {
      txtTokens: 512,
      width,
      height: width,
      batch: 1,
      dtype: "f16",
      policyOf,
      others: { "T5-XXL (W4A16)": 2.6e9 },
    });
  const f16 = at(), int4 = at(fluxPolicyAt("int4")), fp4 = at(fluxPolicyAt("nvfp4"));
  const gib = (b: number) => b / 2 ** 30;
  // 11.9 G linear parameters in 16-bit; INT4 ≈ Nunchaku's published 6.5 GB
  assert.ok(gib(f16.transformerWeights) > 21.5 && gib(f16.transformerWeights) < 22.5);
  assert.ok(gib(int4.transformerWeights) > 5.8 && gib(int4.transformerWeights) < 6.5);
  assert.ok(fp4.transformerWeights > int4.transformerWeights);
  assert.ok(int4.lines.some((l) => l.includes("T5-XXL (W4A16)")));
  // INT4 FLUX + W4A16 T5 fits a 12 GB card; f16 does not
  const limits = { maxStorageBufferBindingSize: 2 ** 31, maxBufferSize: 2 ** 31 };
  checkFluxPlan(int4, limits, 12e9);
  assert.throws(() => checkFluxPlan(f16, limits, 12e9), {
    name: "RangeError",
    message: /at once, over the 11\.18 GiB budget \(--vram\).*Use a quantized transformer/,
  });
  // a 2048² image's MLP buffer exceeds WebGPU's default 128 MiB binding limit
  const big = at(fluxPolicyAt("int4"), 2048);
  assert.throws(
    () => checkFluxPlan(big, { maxStorageBufferBindingSize: 2 ** 27, maxBufferSize: 2 ** 28 }),
    { name: "RangeError", message: /MLP hidden buffer needs .* per-buffer limit; lower --width/ },
  );
});

Deno.test("deno task quantize takes a FLUX model folder (diffusers transformer/) and writes a file that loads", async () => {
  const dir = await Deno.makeTempDir({ prefix: "flux_quantize_cli_" });
  try {
    const out = `${dir}/flux.nvfp4.safetensors`;
    const root = new URL("..", import.meta.url).pathname;
    const cmd = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        `${root}cli/quantize.ts`,
        `${root}tests/fixtures/flux_tiny_model`,
        "--out",
        out,
        "--format",
        "nvfp4",
        "--rank",
        "8",
        "--alpha-step",
        "0.5",
        "--rounds",
        "0",
        "--quiet",
      ],
      stdout: "piped",
      stderr: "piped",
    });
    const r = await cmd.output();
    const text = new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr);
    assert.equal(r.code, 0, text);
    assert.match(text, /single_blocks\.0\.linear2_mlp\s+svdquant\s+nvfp4/);
    const w = await FluxWeights.open(out);
    try {
      assert.equal(w.layout, "ours");
      assert.equal(w.precision, "nvfp4");
      assert.equal(w.config.context_in_dim, 64);
      assert.equal(w.policyOf("double_blocks.0.txt_attn.qkv").format, "nvfp4");
      assert.equal(w.policyOf("single_blocks.0.modulation.lin").method, "w4a16");
    } finally {
      w.close();
    }
    // a pre-quantized transformer beside the float folder resolves with the folder's other parts
    const parts = await resolveFluxModel(`${root}tests/fixtures/flux_tiny_model`, {
      transformer: out,
    });
    assert.equal(parts.transformer, out);
    assert.ok(parts.vae.endsWith("ae.safetensors"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("FLUX folder: a DiT file is not taken for a FLUX transformer", async () => {
  const dit = new URL("./fixtures/tiny_dit.safetensors", import.meta.url).pathname;
  await assert.rejects(() => resolveFluxModel(dit, { need: ["transformer"] }), {
    name: "FormatError",
    message: /not a FLUX\.1 transformer/,
  });
});
