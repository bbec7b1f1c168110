// The fleet's wire format without a server: a worker validates each job again with the HTTP
// schema, and subjects are only ever built from ids.
import assert from "node:assert/strict";
import { FakeEngine } from "../_fake.ts";
import { HttpError } from "../params.ts";
import {
  bellSubject,
  cancelSubject,
  consumerName,
  decodePreview,
  enc,
  encodePreview,
  jobSubject,
  parseJob,
  progressSubject,
  retrying,
} from "./protocol.ts";

const models = new FakeEngine().models();
const good = {
  id: "0123456789abcdef0123456789abcdef",
  rev: 1,
  model: "tiny-int4",
  classId: 2,
  seed: 7,
  steps: 3,
  cfg: 2,
  sampler: "ddim",
  preview: false,
};

Deno.test("parseJob accepts a front end's job and gives the validated parameters", () => {
  const j = parseJob(enc(good), models);
  assert.equal(j.id, good.id);
  assert.equal(j.params.model.id, "tiny-int4");
  assert.equal(j.classId, 2);
  assert.equal(j.sampler, "ddim");
});

Deno.test("parseJob refuses anything a front end would not send, with a 400", () => {
  const cases: [unknown, RegExp][] = [
    [{ ...good, id: "../../etc" }, /bad id/],
    [{ ...good, id: "w4.jobs.>" }, /bad id/],
    [{ ...good, rev: 0 }, /bad rev/],
    [{ ...good, preview: "yes" }, /bad preview/],
    [{ ...good, model: "../models/x.safetensors" }, /not a path/],
    [{ ...good, model: "other" }, /must be one of/],
    [{ ...good, steps: 1000 }, /steps must be an integer in 1\.\.100/],
    [{ ...good, classId: 9 }, /class must be an integer in 0\.\.2/],
    [{ ...good, path: "/etc/passwd" }, /not a known field/],
    [{ ...good, subject: "w4.jobs.x" }, /not a known field/],
    [[1, 2], /not an object/],
  ];
  for (const [raw, re] of cases) {
    assert.throws(() => parseJob(enc(raw), models), (e: unknown) => {
      assert.ok(e instanceof HttpError, String(e));
      assert.equal(e.status, 400);
      assert.match(e.message, re);
      return true;
    });
  }
  assert.throws(() => parseJob(new TextEncoder().encode("{nope"), models), /not JSON/);
});

Deno.test("subjects and consumer names are built from ids only", () => {
  assert.equal(jobSubject("dit-emoji-int4"), "w4.jobs.dit-emoji-int4");
  assert.equal(bellSubject("dit-emoji-int4"), "w4.bell.dit-emoji-int4");
  assert.match(consumerName("dit.v2"), /^w4-[0-9a-f]+$/);
  assert.notEqual(consumerName("a.b"), consumerName("a_b"));
  for (const bad of ["*", ">", "a b", "A", "x.>", "../x"]) {
    assert.throws(() => jobSubject(bad), RangeError);
    assert.throws(() => consumerName(bad), RangeError);
  }
  const id = "0123456789abcdef0123456789abcdef";
  assert.equal(progressSubject(id), `w4.progress.${id}`);
  assert.equal(cancelSubject(id), `w4.cancel.${id}`);
  for (const bad of ["*", "0123", `${id}.x`, id.toUpperCase()]) {
    assert.throws(() => progressSubject(bad), RangeError);
    assert.throws(() => cancelSubject(bad), RangeError);
  }
});

Deno.test("previews survive the trip as base64 of their floats; a wrong size is refused", () => {
  const x = new Float32Array(48).map((_, i) => Math.sin(i) * 0.9);
  assert.deepEqual(decodePreview(encodePreview(x), 48), x);
  assert.throws(() => decodePreview(encodePreview(x), 12), /expected 48/);
});

Deno.test("retrying: rides out failures, then gives up with the last error", async () => {
  let calls = 0;
  const waits: number[] = [];
  const v = await retrying(async () => {
    if (++calls < 3) throw new Error(`away ${calls}`);
    return await Promise.resolve("image");
  }, { waitMs: (k) => (waits.push(k), 1) });
  assert.equal(v, "image");
  assert.equal(calls, 3);
  assert.deepEqual(waits, [0, 1]);
  calls = 0;
  await assert.rejects(
    retrying(() => Promise.reject(new Error(`away ${++calls}`)), { tries: 4, waitMs: () => 1 }),
    /away 4/,
  );
  assert.equal(calls, 4, "four tries, no more");
  calls = 0;
  await assert.rejects(
    retrying(() => Promise.reject(new Error(`full ${++calls}`)), {
      waitMs: () => 1,
      retry: (e) => !/full/.test((e as Error).message),
    }),
    /full 1/,
  );
  assert.equal(calls, 1, "an answer is not retried");
});
