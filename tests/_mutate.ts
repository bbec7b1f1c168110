/**
 * A seeded mutation corpus over a safetensors model file, for tests/mutation_corpus_test.ts:
 * corruptions (truncations, header bytes, the length field, shapes, dtypes, offsets, metadata
 * JSON, the checksum, data bytes) that a loader must refuse or read as the same model, and
 * contradictions re-sealed with a valid checksum (fewer blocks in the config than stored, a
 * missing bias, a policy rank or method that does not match the tensors, a zero
 * `frequency_embedding_size`, too few class names, NaN/Inf weights) that it must refuse.
 *
 * @module
 */
import { Rng } from "../gpu/_testing.ts";
import { Checksum } from "../formats/checksum.ts";
import { canonicalDescription } from "../formats/format.ts";
import type { Dtype, TensorInfo } from "../formats/safetensors.ts";

/** One mutant: what was done, and the file's bytes. */
export interface Mutant {
  /** What was changed, for failure messages. */
  what: string;
  /** The mutated file. */
  bytes: Uint8Array;
}

/** A decoded file: metadata, and tensors in file order with their bytes. */
export interface Decoded {
  metadata: Record<string, string>;
  tensors: { name: string; dtype: string; shape: number[]; data: Uint8Array }[];
}

/** Splits a well-formed safetensors file into metadata and tensors. */
export function decode(bytes: Uint8Array): Decoded {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  const start = 8 + n;
  const metadata = header.__metadata__ ?? {};
  delete header.__metadata__;
  const tensors = Object.entries(header as Record<string, Record<string, unknown>>)
    .map(([name, e]) => {
      const [b, end] = e.data_offsets as number[];
      return {
        name,
        dtype: e.dtype as string,
        shape: e.shape as number[],
        data: bytes.slice(start + b, start + end),
        b,
      };
    })
    .sort((x, y) => x.b - y.b)
    .map(({ b: _b, ...t }) => t);
  return { metadata, tensors };
}

/**
 * Writes `d` as a safetensors file; `seal`: recompute the `checksum` entry (as formats/format.ts
 * defines it) so the file is consistent, whatever else is wrong with it.
 */
export function encode(d: Decoded, seal: boolean): Uint8Array {
  const metadata = { ...d.metadata };
  let offset = 0;
  const entries: Record<string, unknown> = {};
  const infos: TensorInfo[] = [];
  for (const t of d.tensors) {
    entries[t.name] = {
      dtype: t.dtype,
      shape: t.shape,
      data_offsets: [offset, offset + t.data.length],
    };
    infos.push({
      name: t.name,
      dtype: t.dtype as Dtype,
      shape: t.shape,
      begin: offset,
      end: offset + t.data.length,
    });
    offset += t.data.length;
  }
  if (seal) {
    const sum = new Checksum();
    for (const t of d.tensors) sum.update(t.data);
    sum.update(new TextEncoder().encode(canonicalDescription(infos, 0, metadata)));
    metadata.checksum = sum.digest();
  }
  return assemble(JSON.stringify({ __metadata__: metadata, ...entries }), d.tensors);
}

function assemble(headerText: string, tensors: { data: Uint8Array }[]): Uint8Array {
  const h = new TextEncoder().encode(headerText);
  const hl = Math.ceil(h.length / 8) * 8;
  const size = tensors.reduce((s, t) => s + t.data.length, 0);
  const out = new Uint8Array(8 + hl + size).fill(0x20, 8, 8 + hl);
  new DataView(out.buffer).setBigUint64(0, BigInt(hl), true);
  out.set(h, 8);
  let o = 8 + hl;
  for (const t of tensors) {
    out.set(t.data, o);
    o += t.data.length;
  }
  return out;
}

const clone = (d: Decoded): Decoded => ({
  metadata: { ...d.metadata },
  tensors: d.tensors.map((t) => ({ ...t, shape: [...t.shape] })),
});

/** Corruptions of `bytes` (`count` per kind, seeded): each must be refused or read unchanged. */
export function corruptions(bytes: Uint8Array, seed: number, count: number): Mutant[] {
  const rng = new Rng(seed);
  const int = (n: number) => Math.floor(rng.next() * n);
  const pick = <T>(a: readonly T[]): T => a[int(a.length)];
  const d = decode(bytes);
  const hl = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  const out: Mutant[] = [];
  const edit = (what: string, f: (c: Decoded) => void) => {
    const c = clone(d);
    f(c);
    out.push({ what, bytes: encode(c, false) });
  };
  // truncations: the edges, then random lengths
  for (const len of [0, 7, 8, 9, 8 + hl - 1, 8 + hl, bytes.length - 1]) {
    out.push({ what: `truncated to ${len} bytes`, bytes: bytes.slice(0, len) });
  }
  for (let i = 0; i < count; i++) {
    const len = int(bytes.length);
    out.push({ what: `truncated to ${len} bytes`, bytes: bytes.slice(0, len) });
  }
  // header bytes: a bit flip, or a JSON-significant character, anywhere in the header
  const chars = new TextEncoder().encode('0123456789{}[]",: -.e');
  for (let i = 0; i < 2 * count; i++) {
    const b = bytes.slice(), at = 8 + int(hl);
    const flip = rng.next() < 0.5;
    b[at] = flip ? b[at] ^ (1 << int(8)) : pick([...chars]);
    out.push({ what: `header byte ${at} ${flip ? "bit-flipped" : `set to ${b[at]}`}`, bytes: b });
  }
  // the length field
  for (const v of [0, hl - 1, hl + 1, hl - 8, hl + 8, 2 ** 32 + hl, 2 ** 53, bytes.length]) {
    const b = bytes.slice();
    new DataView(b.buffer).setBigUint64(0, BigInt(Math.max(0, v)), true);
    out.push({ what: `header length set to ${v}`, bytes: b });
  }
  // shapes, dtypes, offsets (via a re-written header; the data region unchanged)
  for (let i = 0; i < count; i++) {
    const t = int(d.tensors.length);
    const how = int(4);
    edit(`shape of ${d.tensors[t].name} (${how})`, (c) => {
      const s = c.tensors[t].shape;
      if (how === 0 && s.length > 1) [s[0], s[1]] = [s[1], s[0]];
      else if (how === 1) s[int(Math.max(1, s.length))] = (s[0] ?? 1) + 1;
      else if (how === 2) c.tensors[t].shape = [s.reduce((a, x) => a * x, 1)];
      else s.push(1);
    });
  }
  const sameSize: Record<string, string[]> = {
    F32: ["U32", "I32"],
    U32: ["F32", "I32"],
    F16: ["BF16", "U16", "I16"],
    BF16: ["F16", "U16"],
    U8: ["I8", "F8_E4M3"],
    F8_E4M3: ["U8", "I8"],
  };
  for (let i = 0; i < count; i++) {
    const t = int(d.tensors.length), from = d.tensors[t].dtype;
    const to = pick(sameSize[from] ?? ["F32"]);
    edit(`dtype of ${d.tensors[t].name} ${from} → ${to}`, (c) => c.tensors[t].dtype = to);
  }
  for (let i = 0; i < count; i++) {
    // swap two tensors of equal byte size (passes the layout checks), or move one
    const a = int(d.tensors.length);
    const b = d.tensors.findIndex((t, j) => j !== a && t.data.length === d.tensors[a].data.length);
    if (b >= 0) {
      edit(`offsets of ${d.tensors[a].name} ↔ ${d.tensors[b].name}`, (c) => {
        [c.tensors[a].data, c.tensors[b].data] = [c.tensors[b].data, c.tensors[a].data];
        [c.tensors[a].name, c.tensors[b].name] = [c.tensors[b].name, c.tensors[a].name];
      });
    }
    const text = new TextDecoder().decode(bytes.subarray(8, 8 + hl));
    const m = [...text.matchAll(/"data_offsets":\[(\d+),(\d+)\]/g)];
    const hit = pick(m);
    const delta = pick([-4, -1, 1, 2, 8, 1 << 20]);
    const which = int(2);
    const nb = [Number(hit[1]), Number(hit[2])];
    nb[which] += delta;
    const patched = text.slice(0, hit.index) + `"data_offsets":[${nb[0]},${nb[1]}]` +
      text.slice(hit.index! + hit[0].length);
    out.push({
      what: `data_offsets ${hit[0]} → [${nb}]`,
      bytes: assemble(patched.trimEnd(), d.tensors),
    });
  }
  // metadata JSON: every entry's value edited, dropped or broken
  const keys = Object.keys(d.metadata);
  for (let i = 0; i < count; i++) {
    const k = pick(keys), v = d.metadata[k];
    const how = int(5);
    edit(`metadata ${k} (${how})`, (c) => {
      if (how === 0) delete c.metadata[k];
      else if (how === 1) c.metadata[k] = v.slice(0, int(v.length));
      else if (how === 2) c.metadata[k] = v.replace(/\d/, (x) => String((Number(x) + 1) % 10));
      else if (how === 3) c.metadata[k] = v + " ";
      else c.metadata[`${k}_x`] = v;
    });
  }
  // the checksum: one hex digit, or the algorithm
  if (d.metadata.checksum) {
    for (let i = 0; i < Math.max(2, count >> 2); i++) {
      edit("checksum digit", (c) => {
        const s = c.metadata.checksum, at = s.length - 1 - int(16);
        c.metadata.checksum = s.slice(0, at) + ((parseInt(s[at], 16) + 1) % 16).toString(16) +
          s.slice(at + 1);
      });
    }
    edit("checksum algorithm", (c) => c.metadata.checksum = "sha1:" + c.metadata.checksum);
  }
  // data bytes
  const dataStart = 8 + hl;
  for (let i = 0; i < count; i++) {
    const b = bytes.slice(), at = dataStart + int(bytes.length - dataStart);
    b[at] ^= 1 << int(8);
    out.push({ what: `data byte ${at} bit-flipped`, bytes: b });
  }
  return out;
}

/**
 * Contradictions re-sealed with a valid checksum: each is a file the loader must refuse with an
 * error naming the key or tensor (`expect`: a pattern the message must match).
 */
export function contradictions(bytes: Uint8Array): (Mutant & { expect: RegExp })[] {
  const d = decode(bytes);
  const out: (Mutant & { expect: RegExp })[] = [];
  const edit = (what: string, expect: RegExp, f: (c: Decoded) => void) => {
    const c = clone(d);
    f(c);
    out.push({ what, expect, bytes: encode(c, true) });
  };
  const config = (f: (cfg: Record<string, unknown>) => void) => (c: Decoded) => {
    const cfg = JSON.parse(c.metadata.model_config);
    f(cfg);
    c.metadata.model_config = JSON.stringify(cfg);
  };
  const cfg = JSON.parse(d.metadata.model_config);
  edit("depth one less than stored", /depth/, config((x) => x.depth = cfg.depth - 1));
  edit("depth one more than stored", /blocks\.\d+/, config((x) => x.depth = cfg.depth + 1));
  edit(
    "frequency_embedding_size 0",
    /frequency_embedding_size/,
    config((x) => x.frequency_embedding_size = 0),
  );
  edit(
    "frequency_embedding_size 128",
    /t_embedder\.mlp\.0\.weight/,
    config((x) => x.frequency_embedding_size = 128),
  );
  edit("num_heads 3", /num_heads/, config((x) => x.num_heads = 3));
  edit(
    "hidden_size doubled",
    /hidden_size|shape/,
    config((x) => x.hidden_size = cfg.hidden_size * 2),
  );
  edit(
    "num_classes + 1",
    /num_classes|y_embedder|class_names/,
    config((x) => x.num_classes = cfg.num_classes + 1),
  );
  edit("mlp_ratio 2", /mlp/, config((x) => x.mlp_ratio = 2));
  edit("learn_sigma false", /final_layer\.linear/, config((x) => x.learn_sigma = false));
  edit('mlp_ratio "4"', /mlp_ratio/, config((x) => x.mlp_ratio = "4"));
  edit(
    "fewer class names than classes",
    /class_names/,
    config((x) => x.class_names = Array.from({ length: cfg.num_classes - 1 }, (_, i) => `c${i}`)),
  );
  const bias = d.tensors.findIndex((t) => /^blocks\.0\.attn\.proj\.bias$/.test(t.name));
  edit("missing bias", /blocks\.0\.attn\.proj\.bias/, (c) => c.tensors.splice(bias, 1));
  // NaN and Inf in weights: an f16 matrix, an f32 vector, and (quantized files) a scale
  const poison = (t: { dtype: string; data: Uint8Array }, at: number, inf: boolean) => {
    const dv = new DataView(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    if (t.dtype === "F32") dv.setUint32(4 * at, inf ? 0x7f800000 : 0x7fc00000, true);
    else if (t.dtype === "F16") dv.setUint16(2 * at, inf ? 0xfc00 : 0x7e00, true);
    else if (t.dtype === "BF16") dv.setUint16(2 * at, inf ? 0x7f80 : 0x7fc0, true);
    else if (t.dtype === "F8_E4M3") t.data[at] = 0x7f;
  };
  const floats = d.tensors.filter((t) => ["F32", "F16", "BF16", "F8_E4M3"].includes(t.dtype));
  for (const [i, t] of [floats[0], floats[floats.length >> 1], floats.at(-1)!].entries()) {
    const name = t.name;
    edit(
      `${i % 2 ? "Inf" : "NaN"} in ${name}`,
      new RegExp(name.replace(/\./g, "\\.")),
      (c) => {
        const ct = c.tensors.find((x) => x.name === name)!;
        ct.data = ct.data.slice();
        poison(ct, 3, i % 2 === 1);
      },
    );
  }
  if (d.metadata.policy) {
    const policy = JSON.parse(d.metadata.policy) as Record<string, Record<string, unknown>>;
    const w4a4 = Object.keys(policy).find((k) => (policy[k].r as number) > 0)!;
    const set = (what: string, f: (p: Record<string, unknown>) => void) =>
      edit(`policy ${w4a4}: ${what}`, new RegExp(w4a4.replace(/\./g, "\\.")), (c) => {
        const p = JSON.parse(c.metadata.policy);
        f(p[w4a4]);
        c.metadata.policy = JSON.stringify(p);
      });
    set("r halved", (p) => p.r = (p.r as number) >> 1);
    set("r 0", (p) => p.r = 0);
    set("method w4a16", (p) => p.method = "w4a16");
    set("method w4a16, r 0", (p) => Object.assign(p, { method: "w4a16", r: 0 }));
    set("method rtn, r 0", (p) => Object.assign(p, { method: "rtn", r: 0 }));
    set("method float", (p) => p.method = "float");
    set("method w8a8", (p) => p.method = "w8a8");
    set("format nvfp4", (p) => p.format = "nvfp4");
    set("actMode nvfp4", (p) => p.actMode = "nvfp4");
    edit("policy entry dropped", /policy|weight/, (c) => {
      const p = JSON.parse(c.metadata.policy);
      delete p[w4a4];
      c.metadata.policy = JSON.stringify(p);
    });
  }
  return out;
}
