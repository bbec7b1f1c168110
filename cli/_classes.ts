/**
 * Matching a user's prompt to a class-conditional model's classes: a class number, an exact
 * name, or words contained in one name; otherwise a RangeError naming the closest names.
 *
 * @module
 */

/** Resolve `prompt` to a class id of `names`. */
export function matchClass(prompt: string, names: readonly string[]): number {
  const p = prompt.trim().toLowerCase();
  if (/^\d+$/.test(p)) {
    const i = Number(p);
    if (i < names.length) return i;
    throw new RangeError(
      `Cannot find class ${i}: the model has classes 0..${names.length - 1} (see --list)`,
    );
  }
  const norm = (s: string) => s.toLowerCase().replace(/[-_&]+/g, " ").replace(/\s+/g, " ").trim();
  const q = norm(p);
  const exact = names.findIndex((n) => norm(n) === q);
  if (exact >= 0) return exact;
  const words = q.split(" ").filter((w) => w.length > 0);
  const scored = names.map((n, i) => {
    const nn = norm(n);
    const hits = words.filter((w) => nn.includes(w)).length;
    return { i, hits, dist: editDistance(q, nn) };
  });
  const best = Math.max(...scored.map((s) => s.hits));
  if (best > 0) {
    const top = scored.filter((s) => s.hits === best);
    if (top.length === 1) return top[0].i;
    top.sort((a, b) => a.dist - b.dist);
    if (top[0].dist < top[1].dist) return top[0].i;
    throw new RangeError(
      `Cannot choose a class for "${prompt}": it matches ${
        top.map((s) => `"${names[s.i]}"`).join(", ")
      }; ` +
        "be more specific or give the class number (see --list)",
    );
  }
  const close = scored.sort((a, b) => a.dist - b.dist).slice(0, 3).map((s) => `"${names[s.i]}"`);
  throw new RangeError(
    `Cannot find a class for "${prompt}"; closest: ${close.join(", ")} (see --list)`,
  );
}

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = d[0];
    d[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = d[j];
      d[j] = Math.min(d[j] + 1, d[j - 1] + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return d[b.length];
}
