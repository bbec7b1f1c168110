// The commands as a user runs them (subprocesses): every bad input is one line on stderr with a
// non-zero exit and no stack trace, found before the slow work (loading, generating), and leaves
// no file behind: gen --out <directory>, serve on a port in use or with a bad --models registry,
// quantize of a quantized file, onto its own input, or with a method the runtime cannot run; gen
// of a model with NaN weights, or whose latent turns non-finite (GPU).
import assert from "node:assert/strict";
import { HAS_GPU } from "../gpu/_testing.ts";
import { decode, encode } from "./_mutate.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const FIXTURE = `${ROOT}tests/fixtures/tiny_dit.safetensors`;
const INT4 = `${ROOT}models/dit_emoji.int4.safetensors`;

async function run(script: string, args: string[], cwd = ROOT) {
  const t0 = performance.now();
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}${script}`, ...args],
    cwd,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return {
    code: out.code,
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr).trim(),
    ms: performance.now() - t0,
  };
}

function oneLine(r: { code: number; stderr: string }, re: RegExp) {
  assert.notEqual(r.code, 0, "non-zero exit");
  const lines = r.stderr.split("\n").filter((l) => !l.startsWith("Download") && l !== "");
  assert.equal(lines.length, 1, `one line on stderr, got:\n${r.stderr}`);
  assert.match(lines[0], /^error: /);
  assert.match(lines[0], re);
  assert.ok(!/\bat .*:\d+:\d+/.test(r.stderr), "no stack trace");
}

Deno.test("gen --out <existing directory>: one line naming it, before loading, nothing left", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const r = await run("cli/gen.ts", ["smiley", "--model", FIXTURE, "--out", dir]);
    oneLine(r, new RegExp(`--out ${dir} is a directory`));
    assert.equal(r.code, 2);
    assert.ok(!r.stdout.includes("model "), "refused before loading the model");
    assert.deepEqual([...Deno.readDirSync(dir)], [], "no .tmp- file left");
    const r2 = await run("cli/gen.ts", ["--model", FIXTURE, "--out", `${dir}/no/such/x.png`]);
    oneLine(r2, new RegExp(`the folder ${dir}/no/such does not exist`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("serve on a port in use: one line, before loading any model", async () => {
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const port = (taken.addr as Deno.NetAddr).port;
    const r = await run("web/main.ts", ["--port", String(port), "--model", FIXTURE]);
    oneLine(r, new RegExp(`Cannot listen on 127\\.0\\.0\\.1:${port}: the port is in use`));
    assert.ok(!r.stdout.includes("loading"), `no model was loaded:\n${r.stdout}`);
  } finally {
    taken.close();
  }
});

Deno.test("serve listens on 127.0.0.1 by default; 0.0.0.0 without a token warns", async () => {
  const missing = "/nonexistent/model.safetensors"; // fails after binding, so the run ends
  let r = await run("web/main.ts", ["--port", "0", "--model", missing]);
  assert.match(r.stdout, /^listening on http:\/\/127\.0\.0\.1:\d+\//m);
  assert.ok(!r.stderr.includes("warning"), r.stderr);
  oneLine(r, /No such file|not found|nonexistent/i);
  r = await run("web/main.ts", ["--host", "0.0.0.0", "--port", "0", "--model", missing]);
  assert.match(r.stdout, /^listening on http:\/\/0\.0\.0\.0:\d+\//m);
  assert.match(r.stderr, /^warning: serving on 0\.0\.0\.0 without W4_API_TOKEN/m);
});

Deno.test("serve --models with invalid JSON, {} or a non-string path: one line each", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const cases: [string, RegExp][] = [
      ["{not json", /is not JSON/],
      ["{}", /lists no model/],
      ["[]", /must be a JSON object/],
      ['{"a": 3}', /the path of "a" must be a non-empty string/],
    ];
    for (const [text, re] of cases) {
      await Deno.writeTextFile(`${dir}/r.json`, text);
      const r = await run("web/main.ts", ["--port", "0", "--models", `${dir}/r.json`]);
      oneLine(r, re);
      assert.equal(r.code, 2);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("quantize: a quantized input, --out = input and --method w8a8 are refused in one line", async () => {
  const dir = await Deno.makeTempDir();
  try {
    let r = await run("cli/quantize.ts", [INT4, "--out", `${dir}/q.safetensors`]);
    oneLine(r, /it is already quantized \(int4\); quantize the float checkpoint/);
    await Deno.copyFile(FIXTURE, `${dir}/f.safetensors`);
    const before = await Deno.readFile(`${dir}/f.safetensors`);
    r = await run("cli/quantize.ts", [`${dir}/f.safetensors`, "--out", `${dir}/f.safetensors`]);
    oneLine(r, /is the input file; give another --out path/);
    assert.deepEqual(await Deno.readFile(`${dir}/f.safetensors`), before, "input untouched");
    r = await run("cli/quantize.ts", [
      FIXTURE,
      "--out",
      `${dir}/q.safetensors`,
      "--method",
      "w8a8",
    ]);
    oneLine(r, /w8a8 writes a file this runtime cannot run/);
    // a contradictory config names the key
    const d = decode(before);
    const cfg = JSON.parse(d.metadata.model_config);
    d.metadata.model_config = JSON.stringify({ ...cfg, frequency_embedding_size: 0 });
    await Deno.writeFile(`${dir}/bad.safetensors`, encode(d, true));
    r = await run("cli/quantize.ts", [`${dir}/bad.safetensors`, "--out", `${dir}/q.safetensors`]);
    oneLine(r, /model_config\.frequency_embedding_size is 0, expected a positive integer/);
    assert.deepEqual(
      [...Deno.readDirSync(dir)].map((e) => e.name).sort(),
      ["bad.safetensors", "f.safetensors"],
      "nothing written",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "gen: NaN weights are refused naming the tensor; a non-finite latent names the step",
  ignore: !HAS_GPU, // NO_GPU_REASON: gen opens the GPU before the weights are read
  fn: async () => {
    const dir = await Deno.makeTempDir();
    try {
      const d = decode(await Deno.readFile(FIXTURE));
      const t = d.tensors.find((x) => x.name === "blocks.1.attn.proj.weight")!;
      const poisoned = { ...d, tensors: d.tensors.map((x) => x === t ? { ...x } : x) };
      const pt = poisoned.tensors.find((x) => x.name === t.name)!;
      pt.data = t.data.slice();
      new DataView(pt.data.buffer).setUint32(40, 0x7fc00000, true); // F32 NaN
      await Deno.writeFile(`${dir}/nan.safetensors`, encode(poisoned, true));
      let r = await run("cli/gen.ts", [
        "--model",
        `${dir}/nan.safetensors`,
        "--steps",
        "2",
        "--out",
        `${dir}/nan.png`,
      ]);
      oneLine(r, /tensor blocks\.1\.attn\.proj\.weight\): element 10 is not finite/);
      // finite weights so large that the latent overflows: stopped at a named step
      const huge = { ...d, tensors: d.tensors.map((x) => ({ ...x })) };
      const bias = huge.tensors.find((x) => x.name === "final_layer.linear.bias")!;
      bias.data = new Uint8Array(new Float32Array(bias.data.length / 4).fill(3e38).buffer);
      await Deno.writeFile(`${dir}/huge.safetensors`, encode(huge, true));
      r = await run("cli/gen.ts", [
        "--model",
        `${dir}/huge.safetensors`,
        "--vae", // the tiny DiT makes 4-channel latents: decode them with the tiny autoencoder
        `${ROOT}tests/fixtures/ae_tiny.safetensors`,
        "--steps",
        "3",
        "--out",
        `${dir}/huge.png`,
      ]);
      oneLine(r, /Cannot finish denoising step \d\/3: the latent has a non-finite value/);
      const left = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
      assert.deepEqual(left, ["huge.safetensors", "nan.safetensors"], "no PNG written");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
