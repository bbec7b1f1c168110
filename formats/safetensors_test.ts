import assert from "node:assert/strict";
import { FormatError } from "../gpu/errors.ts";
import {
  type Dtype,
  DTYPE_BYTES,
  findDuplicateKey,
  fromFloat32,
  numel,
  SafetensorsReader,
  SafetensorsWriter,
  toFloat32,
} from "./safetensors.ts";
import {
  makeTinyDit,
  TINY_DIT_CONFIG,
  TINY_DIT_PATH,
  tinyDitTensors,
} from "../tests/fixtures/make_fixture.ts";
import { listDir, withTempDir as withTempDirIn } from "./_testing.ts";

/** Builds safetensors bytes from a header (object or raw text) and a data region. */
function craft(header: unknown, data: Uint8Array, opts: { len?: bigint } = {}): Uint8Array {
  const text = new TextEncoder().encode(
    typeof header === "string" ? header : JSON.stringify(header),
  );
  const out = new Uint8Array(8 + text.length + data.length);
  new DataView(out.buffer).setBigUint64(0, opts.len ?? BigInt(text.length), true);
  out.set(text, 8);
  out.set(data, 8 + text.length);
  return out;
}

const withTempDir = (fn: (dir: string) => Promise<void>) => withTempDirIn("safetensors_test_", fn);

function randomBytes(n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i += 65536) crypto.getRandomValues(out.subarray(i, i + 65536));
  return out;
}

const t16 = (offsets: [number, number], extra: Record<string, unknown> = {}) => ({
  dtype: "F32",
  shape: [(offsets[1] - offsets[0]) / 4],
  data_offsets: offsets,
  ...extra,
});

/** [case, file bytes, message fragment, tensor named in the error (if any)] */
const BAD_FILES: [string, Uint8Array, string, string?][] = [
  ["empty file", new Uint8Array(0), "truncated"],
  ["shorter than 8 bytes", new Uint8Array(5), "truncated"],
  ["header length beyond the file", craft({}, new Uint8Array(0), { len: 500n }), "beyond the end"],
  ["header length absurd", craft({}, new Uint8Array(0), { len: 1n << 60n }), "exceeds"],
  ["header not JSON", craft('{"a": ', new Uint8Array(0)), "not JSON"],
  ["header not UTF-8", craft("{}", new Uint8Array(0)).fill(0xff, 8, 9), "not valid UTF-8"],
  ["header an array", craft("[1, 2]", new Uint8Array(0)), "not a JSON object"],
  ["header null", craft("null", new Uint8Array(0)), "not a JSON object"],
  ["entry not an object", craft({ a: 3 }, new Uint8Array(0)), "not an object", "a"],
  [
    "unknown dtype",
    craft({ a: { dtype: "C64", shape: [1], data_offsets: [0, 8] } }, new Uint8Array(8)),
    'unknown dtype "C64"',
    "a",
  ],
  [
    "negative shape",
    craft({ a: { dtype: "U8", shape: [-1], data_offsets: [0, 0] } }, new Uint8Array(0)),
    "non-negative integers",
    "a",
  ],
  [
    "fractional shape",
    craft({ a: { dtype: "U8", shape: [1.5], data_offsets: [0, 1] } }, new Uint8Array(1)),
    "non-negative integers",
    "a",
  ],
  [
    "shape not an array",
    craft({ a: { dtype: "U8", shape: 4, data_offsets: [0, 4] } }, new Uint8Array(4)),
    "non-negative integers",
    "a",
  ],
  [
    "offsets not a pair",
    craft({ a: { dtype: "U8", shape: [4], data_offsets: [0] } }, new Uint8Array(4)),
    "pair",
    "a",
  ],
  ["offsets beyond the data", craft({ a: t16([0, 16]) }, new Uint8Array(8)), "out of range", "a"],
  [
    "offsets reversed",
    craft({ a: { dtype: "F32", shape: [2], data_offsets: [8, 0] } }, new Uint8Array(8)),
    "out of range",
    "a",
  ],
  [
    "size not shape × dtype",
    craft({ a: { dtype: "F32", shape: [3], data_offsets: [0, 8] } }, new Uint8Array(8)),
    "needs 12 bytes",
    "a",
  ],
  [
    "overlapping tensors",
    craft({ a: t16([0, 8]), b: t16([4, 12]) }, new Uint8Array(12)),
    'overlap those of tensor "a"',
    "b",
  ],
  [
    "gap between tensors",
    craft({ a: t16([0, 4]), b: t16([8, 12]) }, new Uint8Array(12)),
    "contiguous",
    "b",
  ],
  ["trailing bytes", craft({ a: t16([0, 4]) }, new Uint8Array(12)), "after the last tensor"],
  [
    "duplicate tensor names",
    craft(
      '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},' +
        '"\\u0061":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}',
      new Uint8Array(2),
    ),
    'names tensor "a" twice',
    "a",
  ],
  [
    "duplicate key inside an entry",
    craft('{"w":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}', new Uint8Array(1)),
    'repeats key "dtype"',
    "w",
  ],
  [
    "two __metadata__",
    craft('{"__metadata__":{},"__metadata__":{"a":"b"}}', new Uint8Array(0)),
    "two __metadata__",
  ],
  ["__metadata__ not an object", craft({ __metadata__: [] }, new Uint8Array(0)), "__metadata__"],
  [
    "__metadata__ value a number",
    craft({ __metadata__: { n: 3 } }, new Uint8Array(0)),
    '"n" is not a string',
  ],
];

Deno.test("reader refuses every bad file with a FormatError naming the file and tensor", async () => {
  await withTempDir(async (dir) => {
    for (const [what, bytes, fragment, tensor] of BAD_FILES) {
      const path = `${dir}/bad.safetensors`;
      await Deno.writeFile(path, bytes);
      const err = await SafetensorsReader.open(path).then(
        () => assert.fail(`${what}: opened without error`),
        (e) => e,
      );
      assert.ok(err instanceof FormatError, `${what}: ${err}`);
      assert.equal(err.file, path, what);
      assert.equal(err.tensor, tensor, `${what}: tensor`);
      assert.ok(err.message.includes(fragment), `${what}: "${err.message}" lacks "${fragment}"`);
      assert.ok(err.message.startsWith(`Cannot read ${path}`), what);
    }
  });
});

Deno.test("findDuplicateKey sees through escapes and nesting", () => {
  assert.equal(findDuplicateKey('{"a":1,"b":{"a":2},"c":["a","a"]}'), null);
  assert.deepEqual(findDuplicateKey('{"x\\"y":1,"x\\u0022y":2}'), { key: 'x"y', under: undefined });
  assert.deepEqual(findDuplicateKey('{"t":{"s":[{"k":1}],"s":2}}'), { key: "s", under: "t" });
  assert.deepEqual(findDuplicateKey('{"t":{"s":[{"k":1,"k":2}]}}'), { key: "k", under: "t" });
});

/** One tensor per dtype (random bytes), a scalar and an empty tensor. */
function everyDtype(): { name: string; dtype: Dtype; shape: number[]; data: Uint8Array }[] {
  const list = (Object.keys(DTYPE_BYTES) as Dtype[]).map((dtype, i) => {
    const shape = [3, i + 1];
    return {
      name: `t.${dtype}`,
      dtype,
      shape,
      data: randomBytes(numel(shape) * DTYPE_BYTES[dtype]),
    };
  });
  list.push({ name: "scalar", dtype: "F32", shape: [], data: randomBytes(4) });
  list.push({ name: "empty", dtype: "F16", shape: [0, 5], data: new Uint8Array(0) });
  return list;
}

Deno.test("write → read round trip is bit-exact for every dtype", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/all.safetensors`;
    const tensors = everyDtype();
    const metadata = { hello: "wörld", json: '{"a":[1,2]}', empty: "" };
    const w = await SafetensorsWriter.create(path, {
      tensors: tensors.map((t) => ({ ...t, byteLength: t.data.byteLength })),
      metadata,
    });
    for (const t of tensors) await w.write(t.name, t.data);
    await w.commit();
    assert.deepEqual(await listDir(dir), ["all.safetensors"]);

    const bytes = await Deno.readFile(path);
    const headerLen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    assert.equal((8 + headerLen) % 8, 0, "data region is 8-byte aligned");
    assert.equal(bytes[8 + headerLen - 1] === 0x20 || bytes[8 + headerLen - 1] === 0x7d, true);

    const r = await SafetensorsReader.open(path);
    try {
      assert.deepEqual(r.metadata, metadata);
      assert.deepEqual([...r.tensors.keys()], tensors.map((t) => t.name));
      // Concurrent reads share one handle: each must still get its own bytes.
      const raws = await Promise.all(tensors.map((t) => r.readRaw(t.name)));
      tensors.forEach((t, i) => {
        assert.deepEqual(r.tensors.get(t.name)?.shape, t.shape);
        assert.equal(r.tensors.get(t.name)?.dtype, t.dtype);
        assert.deepEqual(raws[i], t.data, t.name);
      });
      const f16 = await r.readFloat32("t.F16");
      assert.deepEqual(f16, Float32Array.from(new Float16Array(tensors[5].data.slice().buffer)));
      const bf16 = new Uint16Array(tensors[6].data.slice().buffer);
      const want = new Float32Array(new Uint32Array(Array.from(bf16, (b) => b << 16)).buffer);
      assert.deepEqual(
        new Uint32Array((await r.readFloat32("t.BF16")).buffer),
        new Uint32Array(want.buffer),
      );
      await assert.rejects(() => r.readFloat32("t.U32"), FormatError);
      await assert.rejects(() => r.readRaw("nope"), FormatError);
    } finally {
      r.close();
    }
  });
});

Deno.test("fromFloat32/toFloat32 round to nearest even and keep NaN/Inf", () => {
  const x = Float32Array.of(
    1,
    -2.5,
    65504,
    1e-8,
    Infinity,
    -Infinity,
    NaN,
    1 + 2 ** -8,
    1 + 3 * 2 ** -8,
  );
  const bf = toFloat32("BF16", fromFloat32("BF16", x));
  assert.deepEqual(Array.from(bf.subarray(0, 3)), [1, -2.5, 65536]);
  assert.ok(Math.abs(bf[3] / 1e-8 - 1) < 2 ** -8);
  assert.deepEqual(Array.from(bf.subarray(4, 6)), [Infinity, -Infinity]);
  assert.ok(Number.isNaN(bf[6]));
  assert.equal(bf[7], 1, "1 + 2^-8 is a tie: rounds to even (1)");
  assert.equal(bf[8], 1 + 2 ** -6, "1 + 3·2^-8 is a tie: rounds to even (1 + 2^-6)");
  const f16 = toFloat32("F16", fromFloat32("F16", x));
  assert.deepEqual(Array.from(f16.subarray(0, 3)), [1, -2.5, 65504]);
  assert.deepEqual(toFloat32("F32", fromFloat32("F32", x)).subarray(0, 6), x.subarray(0, 6));
});

Deno.test("a failed or aborted write leaves no file behind", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/out.safetensors`;
    const header = {
      tensors: [
        { name: "a", dtype: "F32" as const, shape: [2], byteLength: 8 },
        { name: "b", dtype: "U8" as const, shape: [3], byteLength: 3 },
      ],
    };
    // Wrong length.
    let w = await SafetensorsWriter.create(path, header);
    await assert.rejects(() => w.write("a", new Uint8Array(7)), TypeError);
    assert.deepEqual(await listDir(dir), []);
    await assert.rejects(() => w.write("a", new Uint8Array(8)), /committed or aborted/);
    // Wrong order.
    w = await SafetensorsWriter.create(path, header);
    await assert.rejects(() => w.write("b", new Uint8Array(3)), /expected tensor "a" next/);
    assert.deepEqual(await listDir(dir), []);
    // Commit before all tensors are written.
    w = await SafetensorsWriter.create(path, header);
    await w.write("a", new Uint8Array(8));
    assert.equal((await listDir(dir)).length, 1, "only the temp file exists mid-write");
    assert.ok(!(await listDir(dir)).includes("out.safetensors"));
    await assert.rejects(() => w.commit(), /1 tensors were not written, starting with "b"/);
    assert.deepEqual(await listDir(dir), []);
    // Abort.
    w = await SafetensorsWriter.create(path, header);
    await w.write("a", new Uint8Array(8));
    await w.abort();
    await w.abort();
    assert.deepEqual(await listDir(dir), []);
    // Bad specs are refused before any file is created.
    await assert.rejects(
      () =>
        SafetensorsWriter.create(path, {
          tensors: [{ name: "a", dtype: "F32", shape: [3], byteLength: 8 }],
        }),
      RangeError,
    );
    await assert.rejects(
      () => SafetensorsWriter.create(path, { tensors: [header.tensors[0], header.tensors[0]] }),
      /listed twice/,
    );
    await assert.rejects(
      () =>
        SafetensorsWriter.create(path, {
          tensors: [{ ...header.tensors[0], dtype: "Q4" as Dtype }],
        }),
      /unknown dtype/,
    );
    assert.deepEqual(await listDir(dir), []);
    // An existing file is replaced only on commit.
    await Deno.writeTextFile(path, "old");
    w = await SafetensorsWriter.create(path, header);
    await w.write("a", new Uint8Array(8));
    assert.equal(await Deno.readTextFile(path), "old");
    await w.write("b", new Uint8Array(3));
    await w.commit();
    assert.deepEqual(await listDir(dir), ["out.safetensors"]);
    const r = await SafetensorsReader.open(path);
    assert.deepEqual([...r.tensors.keys()], ["a", "b"]);
    r.close();
  });
});

/** Whether the temp filesystem stores a 64 MiB truncate-extended file without allocating it. */
async function sparseFilesWork(dir: string): Promise<boolean> {
  const probe = `${dir}/probe`;
  const f = await Deno.open(probe, { write: true, create: true });
  try {
    await f.truncate(64 << 20);
  } finally {
    f.close();
  }
  const { blocks } = await Deno.stat(probe);
  await Deno.remove(probe);
  return blocks !== null && blocks * 512 < 1 << 20;
}

Deno.test("reads a tensor stored beyond 4 GiB (sparse file)", async () => {
  await withTempDir(async (dir) => {
    if (!(await sparseFilesWork(dir))) {
      // Without sparse files this test would write 4 GiB of zeros: not worth it in a unit test.
      console.log("skipped: the temp filesystem does not support sparse files");
      return;
    }
    const pad = 2 ** 32 + 24;
    const header = {
      pad: { dtype: "U8", shape: [pad], data_offsets: [0, pad] },
      tail: { dtype: "F32", shape: [4], data_offsets: [pad, pad + 16] },
    };
    const head = craft(header, new Uint8Array(0));
    const path = `${dir}/big.safetensors`;
    const f = await Deno.open(path, { write: true, create: true });
    try {
      await f.write(head);
      await f.truncate(head.length + pad + 16);
      await f.seek(head.length + pad, Deno.SeekMode.Start);
      await f.write(new Uint8Array(Float32Array.of(1.5, -2, 3.25, 1e30).buffer));
    } finally {
      f.close();
    }
    const r = await SafetensorsReader.open(path);
    try {
      assert.equal(r.tensors.get("tail")?.begin, head.length + pad);
      assert.deepEqual(await r.readFloat32("tail"), Float32Array.of(1.5, -2, 3.25, 1e30));
      assert.deepEqual(await r.readBytes(head.length + 2 ** 31 + 5, 3), new Uint8Array(3));
    } finally {
      r.close();
    }
  });
});

Deno.test("the tiny DiT fixture loads, has the DiT names and matches its generator", async () => {
  const r = await SafetensorsReader.open(TINY_DIT_PATH);
  try {
    assert.equal(r.metadata.family, "dit");
    assert.deepEqual(JSON.parse(r.metadata.model_config), TINY_DIT_CONFIG);
    const h = TINY_DIT_CONFIG.hidden_size;
    const expected: Record<string, number[]> = {
      "x_embedder.proj.weight": [h, 4, 2, 2],
      "t_embedder.mlp.0.weight": [h, 256],
      "t_embedder.mlp.2.weight": [h, h],
      "y_embedder.embedding_table.weight": [11, h],
      "pos_embed": [1, 64, h],
      "final_layer.linear.weight": [32, h],
      "final_layer.adaLN_modulation.1.weight": [2 * h, h],
    };
    for (const i of [0, 1]) {
      expected[`blocks.${i}.attn.qkv.weight`] = [3 * h, h];
      expected[`blocks.${i}.attn.proj.weight`] = [h, h];
      expected[`blocks.${i}.mlp.fc1.weight`] = [4 * h, h];
      expected[`blocks.${i}.mlp.fc2.weight`] = [h, 4 * h];
      expected[`blocks.${i}.adaLN_modulation.1.weight`] = [6 * h, h];
      expected[`blocks.${i}.mlp.fc2.bias`] = [h];
    }
    for (const [name, shape] of Object.entries(expected)) {
      assert.deepEqual(r.tensors.get(name)?.shape, shape, name);
    }
    assert.equal(r.tensors.size, 2 + 4 + 1 + 1 + 2 * 10 + 4);
    const dtypes = new Set([...r.tensors.values()].map((t) => t.dtype));
    assert.deepEqual([...dtypes].sort(), ["BF16", "F16", "F32"]);
    for (const t of tinyDitTensors()) {
      const got = await r.readFloat32(t.name);
      assert.deepEqual(got, toFloat32(t.dtype, fromFloat32(t.dtype, t.values)), t.name);
    }
    assert.ok(r.fileSize < 500_000, `fixture is ${r.fileSize} bytes`);
  } finally {
    r.close();
  }
  await withTempDir(async (dir) => {
    await makeTinyDit(`${dir}/again.safetensors`);
    assert.deepEqual(
      await Deno.readFile(`${dir}/again.safetensors`),
      await Deno.readFile(TINY_DIT_PATH),
      "the committed fixture is what make_fixture.ts writes",
    );
  });
});
