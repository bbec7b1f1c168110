import assert from "node:assert/strict";
import { FormatError } from "../gpu/errors.ts";
import {
  computeChecksum,
  FORMAT_VERSION,
  QuantFile,
  type QuantFileMetaInput,
  type QuantTensor,
  writeQuantFile,
} from "./format.ts";
import { SafetensorsReader, SafetensorsWriter } from "./safetensors.ts";
import { listDir, withTempDir as withTempDirIn } from "./_testing.ts";

const META: QuantFileMetaInput = {
  quantConfig: {
    method: "svdquant",
    weightFormat: "int4",
    groupSize: 64,
    rank: 32,
    actFormat: "int4",
    scaling: "smooth",
  },
  modelConfig: { hidden_size: 64, depth: 2, num_heads: 4 },
  family: "dit",
  policy: {
    "blocks.0.attn.qkv": { method: "svdquant", format: "int4", r: 32, actMode: "int4" },
    "blocks.0.adaLN_modulation.1": { method: "w4a16", format: "int4", r: 0 },
  },
};

function randomBytes(n: number): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(n));
}

function sampleTensors(): QuantTensor[] {
  return [
    { name: "blocks.0.attn.qkv.qweight", dtype: "U32", shape: [192, 8], data: randomBytes(6144) },
    { name: "blocks.0.attn.qkv.wscales", dtype: "F16", shape: [192, 1], data: randomBytes(384) },
    { name: "blocks.0.attn.qkv.lora_down", dtype: "F16", shape: [32, 64], data: randomBytes(4096) },
    { name: "blocks.0.attn.qkv.bias", dtype: "F32", shape: [192], data: randomBytes(768) },
    { name: "blocks.0.attn.qkv.tensor_scale", dtype: "F32", shape: [], data: randomBytes(4) },
    { name: "odd", dtype: "U8", shape: [3], data: randomBytes(3) },
    { name: "pos_embed", dtype: "BF16", shape: [1, 16, 64], data: randomBytes(2048) },
  ];
}

async function* slowly(list: QuantTensor[]): AsyncGenerator<QuantTensor> {
  for (const t of list) {
    await new Promise((r) => setTimeout(r, 0));
    yield t;
  }
}

const withTempDir = (fn: (dir: string) => Promise<void>) => withTempDirIn("format_test_", fn);

async function openError(path: string, verify = true): Promise<FormatError> {
  const err = await QuantFile.open(path, { verify }).then(
    () => assert.fail("opened without error"),
    (e) => e,
  );
  assert.ok(err instanceof FormatError, String(err));
  return err;
}

Deno.test("writeQuantFile → QuantFile.open round trip, one-pass and spooled give the same bytes", async () => {
  await withTempDir(async (dir) => {
    const tensors = sampleTensors();
    await writeQuantFile(`${dir}/array.safetensors`, META, tensors);
    await writeQuantFile(`${dir}/gen.safetensors`, META, slowly(tensors));
    await writeQuantFile(`${dir}/specs.safetensors`, META, slowly(tensors), {
      specs: tensors.map((t) => ({ ...t, byteLength: t.data.byteLength })),
    });
    assert.deepEqual(await listDir(dir), [
      "array.safetensors",
      "gen.safetensors",
      "specs.safetensors",
    ]);
    const a = await Deno.readFile(`${dir}/array.safetensors`);
    assert.deepEqual(await Deno.readFile(`${dir}/gen.safetensors`), a);
    assert.deepEqual(await Deno.readFile(`${dir}/specs.safetensors`), a);

    const q = await QuantFile.open(`${dir}/gen.safetensors`);
    try {
      const { checksum, ...rest } = q.meta;
      assert.deepEqual(rest, { ...META, formatVersion: FORMAT_VERSION });
      assert.match(checksum, /^fnv1a64:[0-9a-f]{16}$/);
      assert.equal(checksum, await computeChecksum(q.reader));
      assert.equal(q.reader.metadata.format, "w4-diffusion");
      assert.equal(q.reader.metadata.format_version, "1");
      assert.deepEqual([...q.reader.tensors.keys()], tensors.map((t) => t.name));
      for (const t of tensors) {
        assert.deepEqual(await q.reader.readRaw(t.name), t.data, t.name);
        assert.deepEqual(q.reader.tensors.get(t.name)?.shape, t.shape);
        assert.equal(q.reader.tensors.get(t.name)?.dtype, t.dtype);
      }
    } finally {
      q.close();
    }
  });
});

Deno.test("a flipped data byte or an edited header is a checksum mismatch", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/q.safetensors`;
    await writeQuantFile(path, META, sampleTensors());
    const good = await Deno.readFile(path);
    const r = await SafetensorsReader.open(path);
    const dataStart = r.dataStart;
    r.close();

    const cases: [string, (b: Uint8Array) => void][] = [
      ["first data byte", (b) => (b[dataStart] ^= 1)],
      ["last data byte", (b) => (b[b.length - 1] ^= 0x80)],
      ["a byte in the middle", (b) => (b[dataStart + 5000] ^= 0x10)],
      ["a renamed tensor", (b) => replaceAscii(b, '"odd"', '"ODD"')],
      ["an edited policy", (b) => replaceAscii(b, "w4a16", "w4a17")],
    ];
    for (const [what, mutate] of cases) {
      const bytes = good.slice();
      mutate(bytes);
      await Deno.writeFile(path, bytes);
      const err = await openError(path);
      assert.match(
        err.message,
        /checksum mismatch: the file is corrupt or was modified; re-download or re-quantize it/,
        what,
      );
      const q = await QuantFile.open(path, { verify: false });
      q.close();
    }
  });
});

/** Replaces the first occurrence of `from` (ASCII) by `to` (same length) in place. */
function replaceAscii(b: Uint8Array, from: string, to: string): void {
  const text = new TextDecoder("latin1").decode(b);
  const at = text.indexOf(from);
  assert.ok(at > 0 && from.length === to.length, `"${from}" not found`);
  b.set(new TextEncoder().encode(to), at);
}

/** Writes a safetensors file with the given metadata and one tensor. */
async function writeRaw(path: string, metadata: Record<string, string>): Promise<void> {
  const w = await SafetensorsWriter.create(path, {
    tensors: [{ name: "x", dtype: "U8", shape: [2], byteLength: 2 }],
    metadata,
  });
  await w.write("x", new Uint8Array(2));
  await w.commit();
}

Deno.test("unsupported version, foreign format and bad metadata are FormatErrors", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/q.safetensors`;
    await writeQuantFile(path, META, sampleTensors());
    const r = await SafetensorsReader.open(path);
    const good = { ...r.metadata };
    r.close();

    const cases: [string, Record<string, string>, RegExp][] = [
      ["plain checkpoint", { family: "dit" }, /not a w4-diffusion file .*deno task quantize/],
      ["other format", { ...good, format: "gguf" }, /format is "gguf"/],
      [
        "newer version",
        { ...good, format_version: "2" },
        /version "2" is not supported: this build reads version 1/,
      ],
      ["garbled version", { ...good, format_version: "1.0" }, /not supported/],
      ["missing policy", (({ policy: _, ...m }) => m)(good), /metadata policy is missing/],
      [
        "quant_config not JSON",
        { ...good, quant_config: "{" },
        /quant_config is not a JSON object/,
      ],
      [
        "quant_config field",
        { ...good, quant_config: '{"method":"rtn"}' },
        /quant_config.weightFormat/,
      ],
      [
        "bad scaling",
        { ...good, quant_config: good.quant_config.replace("smooth", "magic") },
        /scaling/,
      ],
      ["bad policy entry", { ...good, policy: '{"l":{"method":"rtn"}}' }, /policy entry/],
      ["model_config array", { ...good, model_config: "[]" }, /model_config is not a JSON object/],
      ["other checksum", { ...good, checksum: "sha256:abcd" }, /this build verifies fnv1a64/],
    ];
    for (const [what, metadata, pattern] of cases) {
      await writeRaw(path, metadata);
      const err = await openError(path, false);
      assert.match(err.message, pattern, what);
      assert.equal(err.file, path);
    }
    // A malformed safetensors structure surfaces as the reader's FormatError.
    await Deno.writeFile(path, new Uint8Array(3));
    assert.match((await openError(path)).message, /truncated/);
  });
});

Deno.test("a failed writeQuantFile leaves nothing behind", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/q.safetensors`;
    const tensors = sampleTensors();
    async function* failing(): AsyncGenerator<QuantTensor> {
      yield tensors[0];
      throw new Error("quantizer crashed");
    }
    await assert.rejects(() => writeQuantFile(path, META, failing()), /quantizer crashed/);
    assert.deepEqual(await listDir(dir), []);

    const short = [...tensors];
    short[2] = { ...short[2], data: new Uint8Array(10) };
    await assert.rejects(
      () => writeQuantFile(path, META, short),
      /has 10 bytes, expected \[32, 64\] F16 = 4096/,
    );
    assert.deepEqual(await listDir(dir), []);
    await assert.rejects(() => writeQuantFile(path, META, slowly(short)), TypeError);
    assert.deepEqual(await listDir(dir), []);

    const specs = tensors.map((t) => ({ ...t, byteLength: t.data.byteLength }));
    const swapped = [tensors[1], tensors[0], ...tensors.slice(2)];
    await assert.rejects(
      () => writeQuantFile(path, META, swapped, { specs }),
      /differs from the announced spec/,
    );
    await assert.rejects(() => writeQuantFile(path, META, tensors.slice(1), { specs }), TypeError);
    await assert.rejects(
      () => writeQuantFile(path, META, slowly([tensors[0], tensors[0]])),
      /given twice/,
    );
    await assert.rejects(
      () => writeQuantFile(path, { ...META, formatVersion: 2 }, tensors),
      /this build writes 1/,
    );
    assert.deepEqual(await listDir(dir), []);
  });
});

Deno.test("extra metadata entries are stored, covered by the checksum, and may not shadow the format's", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/q.safetensors`;
    await writeQuantFile(path, { ...META, extra: { paro: '{"version":1}' } }, sampleTensors());
    const q = await QuantFile.open(path);
    assert.equal(q.reader.metadata.paro, '{"version":1}');
    q.close();
    const bytes = await Deno.readFile(path);
    replaceAscii(bytes, '{\\"version\\":1}', '{\\"version\\":2}');
    await Deno.writeFile(path, bytes);
    assert.match((await openError(path)).message, /checksum mismatch/);
    for (const key of ["policy", "format", "checksum"]) {
      await assert.rejects(
        () => writeQuantFile(`${dir}/x.safetensors`, { ...META, extra: { [key]: "x" } }, []),
        new RegExp(`Cannot write metadata "${key}" as an extra entry: the format owns it`),
      );
    }
    assert.deepEqual(await listDir(dir), ["q.safetensors"]);
  });
});
