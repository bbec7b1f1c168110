/**
 * layout.ts: token orders are permutations with the stated structure, refusals say why, and the
 * mask bits, their density and their CSR form agree. CPU only; random masks use a fresh seed
 * (printed; replay with SEED=...).
 *
 * @module
 */
import assert from "node:assert/strict";
import { freshRng } from "../../gpu/_testing.ts";
import {
  denseMasks,
  invertPerm,
  maskBytes,
  maskCsr,
  maskDensity,
  maskGet,
  maskSet,
  orderApplies,
  orderBlock,
  tileCount,
  TOKEN_ORDERS,
  tokenOrder,
} from "./layout.ts";

const GRIDS: [number, number][] = [];
for (let gh = 1; gh <= 12; gh++) for (let gw = 1; gw <= 12; gw++) GRIDS.push([gh, gw]);

function isPermutation(perm: Uint32Array): boolean {
  const seen = new Uint8Array(perm.length);
  for (const t of perm) {
    if (t >= perm.length || seen[t]) return false;
    seen[t] = 1;
  }
  return true;
}

Deno.test("layout tokenOrder is a permutation for every order and grid it applies to", () => {
  let applied = 0;
  for (const order of TOKEN_ORDERS) {
    for (const [gh, gw] of GRIDS) {
      for (const dense of [0, 3]) {
        if (!orderApplies(order, gh, gw)) {
          assert.throws(() => tokenOrder(order, gh, gw, dense), {
            name: "RangeError",
            message: `Token order "${order}" does not apply to a ${gh}×${gw} grid`,
          });
          continue;
        }
        const perm = tokenOrder(order, gh, gw, dense);
        assert.equal(perm.length, dense + gh * gw);
        assert.ok(isPermutation(perm), `${order} ${gh}×${gw}+${dense}`);
        for (let p = 0; p < dense; p++) assert.equal(perm[p], p, "dense prefix keeps its place");
        const inv = invertPerm(perm);
        for (let p = 0; p < perm.length; p++) assert.equal(inv[perm[p]], p);
        applied++;
      }
    }
  }
  assert.ok(applied > 500);
});

Deno.test("layout row order is the identity and col order walks columns", () => {
  assert.deepEqual([...tokenOrder("row", 3, 4, 2)], [...Array(14).keys()]);
  for (const [gh, gw] of [[2, 3], [6, 10], [5, 2]]) {
    const perm = tokenOrder("col", gh, gw, 1);
    for (let x = 0; x < gw; x++) {
      for (let y = 0; y < gh; y++) assert.equal(perm[1 + x * gh + y], 1 + y * gw + x);
    }
  }
  assert.deepEqual([...tokenOrder("col", 2, 2)], [0, 2, 1, 3]);
});

Deno.test("layout block orders keep each n×n block contiguous, blocks in row-major order", () => {
  for (const order of ["block2", "block4", "block8"] as const) {
    const n = orderBlock(order);
    for (const [gh, gw] of [[8, 16], [16, 8], [24, 16], [4, 12]]) {
      if (!orderApplies(order, gh, gw)) continue;
      const dense = 2;
      const perm = tokenOrder(order, gh, gw, dense);
      const blocksPerRow = gw / n;
      for (let blk = 0; blk < (gh * gw) / (n * n); blk++) {
        const by = Math.floor(blk / blocksPerRow) * n, bx = (blk % blocksPerRow) * n;
        const cells = new Set<number>();
        for (let e = 0; e < n * n; e++) {
          const tok = perm[dense + blk * n * n + e] - dense;
          const y = Math.floor(tok / gw), x = tok % gw;
          assert.ok(y >= by && y < by + n && x >= bx && x < bx + n, `${order} ${gh}×${gw}`);
          cells.add(tok);
        }
        assert.equal(cells.size, n * n);
      }
    }
  }
});

Deno.test("layout orderApplies refuses what is not a distinct order", () => {
  assert.equal(orderApplies("row", 1, 1), true);
  assert.equal(orderApplies("col", 1, 7), false); // a single row: col = row
  assert.equal(orderApplies("col", 7, 1), false);
  assert.equal(orderApplies("block8", 8, 8), false); // the block is the grid: = row
  assert.equal(orderApplies("block4", 8, 4), true);
  assert.equal(orderApplies("block2", 5, 4), false); // does not divide 5
  assert.equal(orderApplies("block4", 6, 8), false);
  assert.throws(() => tokenOrder("diag" as never, 4, 4), {
    name: "RangeError",
    message: /Unknown token order "diag"; use one of row, col, block2, block4, block8/,
  });
});

Deno.test("layout masks: CSR, density and dense masks round trip", () => {
  const rng = freshRng("layout masks");
  assert.equal(tileCount(65, 16), 5);
  assert.equal(maskBytes(5), 4);
  for (const nt of [1, 3, 5, 8, 11]) {
    const heads = rng.int(1, 3);
    const bits = new Uint8Array(heads * maskBytes(nt));
    let on = 0;
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < nt; i++) {
        const empty = rng.next() < 0.2;
        for (let j = 0; j < nt; j++) {
          if (!empty && rng.next() < 0.4) {
            maskSet(bits, nt, i, j, h * maskBytes(nt));
            on++;
          }
        }
      }
    }
    assert.equal(maskDensity(bits, heads, nt), on / (heads * nt * nt));
    const { offsets, indices } = maskCsr(bits, heads, nt);
    assert.equal(offsets.length, heads * nt + 1);
    assert.equal(offsets[heads * nt], indices.length);
    assert.equal(indices.length, on);
    const back = new Uint8Array(bits.length);
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < nt; i++) {
        for (let n = offsets[h * nt + i]; n < offsets[h * nt + i + 1]; n++) {
          if (n > offsets[h * nt + i]) assert.ok(indices[n] > indices[n - 1], "ascending");
          maskSet(back, nt, i, indices[n], h * maskBytes(nt));
        }
      }
    }
    assert.deepEqual(back, bits);

    const dense = denseMasks(heads, nt);
    assert.equal(maskDensity(dense, heads, nt), 1);
    const d = maskCsr(dense, heads, nt);
    for (let r = 0; r <= heads * nt; r++) assert.equal(d.offsets[r], r * nt);
    for (let n = 0; n < d.indices.length; n++) assert.equal(d.indices[n], n % nt);
    assert.ok(maskGet(dense, nt, nt - 1, nt - 1, (heads - 1) * maskBytes(nt)));
  }
});

Deno.test("layout maskCsr refuses a too-short mask", () => {
  assert.throws(() => maskCsr(new Uint8Array(7), 2, 5), {
    name: "RangeError",
    message: "Mask has 7 bytes; 2 heads of 5×5 tiles need 8",
  });
});
