/**
 * A tiny assembler for the quantizer's WebAssembly SIMD kernels (quant/clip.ts objectives,
 * quant/linalg_wasm.ts GEMM): a linear WAT subset, one token per opcode or immediate, `$name`
 * for locals, `offset=N` for memory offsets, blocks without results, i32 parameters only. The
 * module imports its memory as `"e"."m"`. No build step and no dependency: the kernels are
 * assembled from their source text when first used.
 *
 * @module
 */

/** One function of a kernel module. */
export interface WasmFunction {
  /** Export name. */
  name: string;
  /** i32 parameters, by `$name`. */
  params: string[];
  /** i32 locals. */
  i32: string[];
  /** v128 locals. */
  v128: string[];
  /** Body in the WAT subset (see the module docs). */
  body: string;
}

const OPS: Record<string, number[]> = {
  "block": [0x02, 0x40],
  "loop": [0x03, 0x40],
  "if": [0x04, 0x40],
  "end": [0x0b],
  "br": [0x0c],
  "br_if": [0x0d],
  "local.get": [0x20],
  "local.set": [0x21],
  "local.tee": [0x22],
  "i32.const": [0x41],
  "f32.load": [0x2a, 2],
  "f64.load": [0x2b, 3],
  "i32.lt_u": [0x49],
  "i32.ge_u": [0x4f],
  "i32.add": [0x6a],
  "i32.mul": [0x6c],
  "i32.shl": [0x74],
  "f64.promote_f32": [0xbb],
  "v128.load": [0xfd, 0x00, 4],
  "v128.store": [0xfd, 0x0b, 4],
  "v128.zero": [0xfd, 0x0c, ...new Array(16).fill(0)], // v128.const 0
  "f32x4.splat": [0xfd, 0x13],
  "f64x2.splat": [0xfd, 0x14],
  "f64x2.ne": [0xfd, 0x48],
  "v128.bitselect": [0xfd, 0x52],
  "f32x4.add": [0xfd, 0xe4, 0x01],
  "f32x4.mul": [0xfd, 0xe6, 0x01],
  "f64x2.add": [0xfd, 0xf0, 0x01],
  "f64x2.mul": [0xfd, 0xf2, 0x01],
};

/** Unsigned LEB128 (also right for the small non-negative i32.const immediates used here). */
function leb(n: number): number[] {
  const out = [n & 0x7f];
  for (n >>>= 7; n !== 0; n >>>= 7) {
    out[out.length - 1] |= 0x80;
    out.push(n & 0x7f);
  }
  return out;
}

/** The code-section entry of a function: its locals and assembled body. */
function assemble(f: WasmFunction): number[] {
  const index = new Map([...f.params, ...f.i32, ...f.v128].map((name, i) => [name, i]));
  const code = [2, ...leb(f.i32.length), 0x7f, ...leb(f.v128.length), 0x7b];
  const tokens = f.body.replace(/;;.*$/gm, "").split(/\s+/).filter((t) => t !== "");
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i], op = OPS[t];
    if (op === undefined) throw new Error(`Cannot assemble ${f.name}: unknown token ${t}`);
    code.push(...op);
    if (t.startsWith("local.")) {
      const at = index.get(tokens[++i]);
      if (at === undefined) {
        throw new Error(`Cannot assemble ${f.name}: unknown local ${tokens[i]}`);
      }
      code.push(at);
    } else if (t === "br" || t === "br_if" || t === "i32.const") {
      const v = +tokens[++i]; // < 64: the signed LEB128 of i32.const is then the unsigned one
      if (!(v >= 0 && v < 64)) throw new Error(`Cannot assemble ${f.name}: ${t} ${v}`);
      code.push(...leb(v));
    } else if (t.endsWith(".load") || t.endsWith(".store")) {
      const m = /^offset=(\d+)$/.exec(tokens[i + 1] ?? "");
      code.push(...leb(m ? (i++, +m[1]) : 0));
    }
  }
  code.push(0x0b);
  return [...leb(code.length), ...code];
}

/** A module of `fns` (each exported by its name) importing its memory as `"e"."m"`. */
export function assembleModule(fns: readonly WasmFunction[]): WebAssembly.Module {
  const I32 = 0x7f, section = (id: number, body: number[]) => [id, ...leb(body.length), ...body];
  const name = (s: string) => [...leb(s.length), ...new TextEncoder().encode(s)];
  const type = (params: number) => [0x60, params, ...new Array(params).fill(I32), 0];
  const bytes = new Uint8Array([
    ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00], // "\0asm", version 1
    ...section(1, [fns.length, ...fns.flatMap((f) => type(f.params.length))]),
    ...section(2, [1, ...name("e"), ...name("m"), 0x02, 0x00, 1]), // imported memory e.m
    ...section(3, [fns.length, ...fns.map((_, i) => i)]),
    ...section(7, [fns.length, ...fns.flatMap((f, i) => [...name(f.name), 0x00, i])]),
    ...section(10, [fns.length, ...fns.flatMap(assemble)]),
  ]);
  return new WebAssembly.Module(bytes);
}

/** Four copies of a code fragment, one per vector j = 0..3. */
export const each4 = (f: (j: number) => string): string => [0, 1, 2, 3].map(f).join("\n");
/** The four local names `$v0 .. $v3`. */
export const names4 = (v: string): string[] => [0, 1, 2, 3].map((j) => v + j);
