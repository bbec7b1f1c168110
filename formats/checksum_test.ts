import assert from "node:assert/strict";
import { Checksum, CHECKSUM_LENGTH, checksumOf } from "./checksum.ts";

/** The definition from the module doc, with BigInt arithmetic (slow, obviously right). */
function reference(b: Uint8Array): string {
  const prime = 0x100000001b3n;
  const mask = (1n << 64n) - 1n;
  let h = 0xcbf29ce484222325n;
  const feed = (w: number) => (h = ((h ^ BigInt(w)) * prime) & mask);
  let i = 0;
  for (; i + 4 <= b.length; i += 4) {
    feed((b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24)) >>> 0);
  }
  for (; i < b.length; i++) feed(b[i]);
  feed(b.length % 2 ** 32);
  feed(Math.floor(b.length / 2 ** 32));
  return `fnv1a64:${h.toString(16).padStart(16, "0")}`;
}

function randomBytes(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s >>> 24;
  }
  return out;
}

Deno.test("checksum matches the BigInt reference for every length 0..40", () => {
  for (let n = 0; n <= 40; n++) {
    const b = randomBytes(n, n + 1);
    assert.equal(checksumOf(b), reference(b), `length ${n}`);
    assert.equal(checksumOf(b).length, CHECKSUM_LENGTH);
  }
});

Deno.test("checksum does not depend on how the stream is split (aligned or not)", () => {
  const b = randomBytes(70_003, 7);
  const want = reference(b);
  const seed = crypto.getRandomValues(new Uint32Array(1))[0];
  let s = seed;
  for (let trial = 0; trial < 20; trial++) {
    const c = new Checksum();
    for (let pos = 0; pos < b.length;) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      const len = Math.min(b.length - pos, s % 9000);
      // Alternate between subarrays (odd byteOffsets) and fresh copies (aligned).
      c.update(trial % 2 ? b.subarray(pos, pos + len) : b.slice(pos, pos + len));
      pos += len;
    }
    assert.equal(c.digest(), want, `trial ${trial} (seed ${seed})`);
  }
});

Deno.test("checksum changes for a flipped bit anywhere and for trailing zeros", () => {
  const b = randomBytes(4096, 3);
  const base = checksumOf(b);
  for (const at of [0, 1, 2, 3, 1000, 4095]) {
    for (const bit of [0, 7]) {
      const c = b.slice();
      c[at] ^= 1 << bit;
      assert.notEqual(checksumOf(c), base, `byte ${at} bit ${bit}`);
    }
  }
  const longer = new Uint8Array(4100);
  longer.set(b);
  assert.notEqual(checksumOf(longer), base);
  assert.notEqual(checksumOf(new Uint8Array(4)), checksumOf(new Uint8Array(8)));
});

Deno.test("checksum refuses updates after digest", () => {
  const c = new Checksum();
  c.update(new Uint8Array(3));
  const d = c.digest();
  assert.equal(c.digest(), d);
  assert.throws(() => c.update(new Uint8Array(1)), TypeError);
});
