/**
 * A fast streaming checksum for weight files: 64-bit FNV-1a over little-endian 32-bit words,
 * in plain TypeScript (no native code, no npm). It guards against corruption and truncation,
 * not against deliberate tampering (it is not a cryptographic hash).
 *
 * Definition (the spec, independent of how the input is split into `update` calls):
 * - the byte stream is read as consecutive little-endian u32 words; the last 1–3 bytes, if any,
 *   are fed as one word each (zero-extended);
 * - state starts at the FNV-64 offset basis `0xcbf29ce484222325`; per word `w`:
 *   `h = (h ^ w) · 0x100000001b3 mod 2^64`;
 * - finally the total byte length (as two u32 words, low then high) is fed the same way, so
 *   streams that differ only by trailing zero bytes differ.
 *
 * Every step is a bijection of the 64-bit state, so any change confined to one word always
 * changes the digest. `digest()` returns `"fnv1a64:"` followed by 16 lower-case hex digits.
 *
 * @example
 * ```ts
 * import { Checksum } from "./checksum.ts";
 * const c = new Checksum();
 * c.update(new TextEncoder().encode("hello "));
 * c.update(new TextEncoder().encode("world"));
 * console.log(c.digest()); // "fnv1a64:…"
 * ```
 *
 * @module
 */

/** Algorithm prefix of the digests this module produces. */
export const CHECKSUM_ALGORITHM = "fnv1a64";
/** Length in characters of a digest string (`fnv1a64:` + 16 hex digits). */
export const CHECKSUM_LENGTH = CHECKSUM_ALGORITHM.length + 1 + 16;

const PRIME_LO = 0x1b3; // 0x100000001b3 = 2^40 + 0x1b3
const TWO32 = 4294967296;
const INV_TWO32 = 1 / TWO32; // exact power of two: (p - lo) * INV_TWO32 is exact
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
const SCRATCH_WORDS = 1 << 14;

/** Streaming 64-bit FNV-1a over 32-bit words; see the module doc for the exact definition. */
export class Checksum {
  #hi = 0xcbf29ce4;
  #lo = 0x84222325;
  #length = 0;
  /** Bytes of an incomplete word carried over between `update` calls. */
  #pending = new Uint8Array(4);
  #pendingCount = 0;
  #scratch = new Uint32Array(SCRATCH_WORDS);
  #done = false;

  /** Feeds bytes; chunk boundaries do not change the result. */
  update(bytes: Uint8Array): this {
    if (this.#done) throw new TypeError("Cannot update a checksum: digest() was already called");
    this.#length += bytes.byteLength;
    let pos = 0;
    const n = bytes.byteLength;
    while (this.#pendingCount > 0 && this.#pendingCount < 4 && pos < n) {
      this.#pending[this.#pendingCount++] = bytes[pos++];
    }
    if (this.#pendingCount === 4) {
      const p = this.#pending;
      this.#word((p[0] | (p[1] << 8) | (p[2] << 16) | (p[3] << 24)) >>> 0);
      this.#pendingCount = 0;
    }
    const whole = (n - pos) & ~3;
    if (whole > 0) {
      const start = bytes.byteOffset + pos;
      if (LITTLE_ENDIAN && start % 4 === 0) {
        this.#words(new Uint32Array(bytes.buffer, start, whole >>> 2));
      } else {
        this.#unaligned(bytes, pos, whole);
      }
      pos += whole;
    }
    while (pos < n) this.#pending[this.#pendingCount++] = bytes[pos++];
    return this;
  }

  /** Finishes and returns `"fnv1a64:<16 hex digits>"`; the checksum cannot be updated after. */
  digest(): string {
    if (!this.#done) {
      for (let i = 0; i < this.#pendingCount; i++) this.#word(this.#pending[i]);
      this.#pendingCount = 0;
      this.#word(this.#length % TWO32);
      this.#word(Math.floor(this.#length / TWO32));
      this.#done = true;
    }
    const hex = (v: number) => v.toString(16).padStart(8, "0");
    return `${CHECKSUM_ALGORITHM}:${hex(this.#hi)}${hex(this.#lo)}`;
  }

  #word(w: number): void {
    const lo = (this.#lo ^ w) >>> 0;
    const p = lo * PRIME_LO; // < 2^41: exact in a double
    this.#lo = p >>> 0;
    this.#hi = (Math.imul(this.#hi, PRIME_LO) + (lo << 8) + Math.floor(p / TWO32)) >>> 0;
  }

  /** The hot loop: state kept in locals. */
  #words(words: Uint32Array): void {
    let hi = this.#hi;
    let lo = this.#lo;
    for (let i = 0; i < words.length; i++) {
      const x = (lo ^ words[i]) >>> 0;
      const p = x * PRIME_LO;
      lo = p >>> 0;
      hi = (Math.imul(hi, PRIME_LO) + (x << 8) + (p - lo) * INV_TWO32) >>> 0;
    }
    this.#hi = hi;
    this.#lo = lo;
  }

  /** Misaligned input (or a big-endian host): assemble words into an aligned scratch buffer. */
  #unaligned(bytes: Uint8Array, pos: number, count: number): void {
    const scratch = this.#scratch;
    while (count > 0) {
      const words = Math.min(count >>> 2, SCRATCH_WORDS);
      for (let i = 0; i < words; i++, pos += 4) {
        scratch[i] = (bytes[pos] | (bytes[pos + 1] << 8) | (bytes[pos + 2] << 16) |
          (bytes[pos + 3] << 24)) >>> 0;
      }
      this.#words(words === SCRATCH_WORDS ? scratch : scratch.subarray(0, words));
      count -= words * 4;
    }
  }
}

/** One-shot checksum of a byte array (same result as streaming it through {@link Checksum}). */
export function checksumOf(bytes: Uint8Array): string {
  return new Checksum().update(bytes).digest();
}

/** Measures the throughput of {@link Checksum} in MB/s (10^6 bytes) on a buffer of `bytes`. */
export function checksumThroughput(bytes = 64 << 20): number {
  const data = new Uint8Array(bytes);
  for (let i = 0; i < data.length; i += 4096) data[i] = i & 255;
  new Checksum().update(data.subarray(0, 1 << 20)).digest(); // warm up the JIT
  const t0 = performance.now();
  new Checksum().update(data).digest();
  const ms = performance.now() - t0;
  return bytes / 1e6 / (ms / 1e3);
}

if (import.meta.main) {
  const mbs = checksumThroughput();
  console.log(`checksum ${CHECKSUM_ALGORITHM}: ${mbs.toFixed(0)} MB/s on a 64 MiB buffer`);
}
