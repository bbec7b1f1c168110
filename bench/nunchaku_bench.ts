/**
 * Import and download throughput (CPU and network, no GPU):
 * - `deno task import` on a synthetic Nunchaku FLUX checkpoint (1 double + 1 single block,
 *   packed by our packer) of width D = 64·heads: source MB/s and layers/s;
 * - `deno task pull` from a local fake hub (Deno.serve on 127.0.0.1): MB/s with 1 and 4
 *   connections, including the SHA-256 verification.
 *
 * `deno run -A bench/nunchaku_bench.ts [--small] [--heads N] [--mb N]` (default 48 heads of 64,
 * the FLUX.1 width D = 3072, and a 256 MB file; --small: 2 heads, 8 MB).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { createHash } from "node:crypto";
import { writeTinyNunchakuFlux } from "../quant/_nunchaku_testing.ts";
import { importNunchakuFlux } from "../quant/nunchaku_flux.ts";
import { pull } from "../cli/_hub.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    small: { type: "boolean", default: false },
    heads: { type: "string" },
    mb: { type: "string" },
  },
});
const heads = Number(values.heads ?? (values.small ? 2 : 48));
const mb = Number(values.mb ?? (values.small ? 8 : 256));
const dir = await Deno.makeTempDir({ prefix: "w4_nunchaku_bench_" });
try {
  for (const precision of ["int4", "nvfp4"] as const) {
    const src = `${dir}/src.safetensors`;
    await writeTinyNunchakuFlux(src, precision, 1, undefined, { num_attention_heads: heads });
    const bytes = (await Deno.stat(src)).size;
    const t0 = performance.now();
    const r = await importNunchakuFlux(src, `${dir}/out.safetensors`);
    const s = (performance.now() - t0) / 1000;
    const layers = r.counts.w4a4 + r.counts.w4a16;
    console.log(
      `import ${precision} D=${64 * heads}: ${(bytes / 1e6).toFixed(1)} MB source in ` +
        `${s.toFixed(2)} s = ${(bytes / 1e6 / s).toFixed(1)} MB/s (${layers} quantized layers, ` +
        `${(layers / s).toFixed(1)} layers/s)`,
    );
    await Deno.remove(src);
    await Deno.remove(`${dir}/out.safetensors`);
  }

  const data = new Uint8Array(mb << 20);
  for (let i = 0; i < data.length; i += 65536) crypto.getRandomValues(data.subarray(i, i + 65536));
  const sha = createHash("sha256").update(data).digest("hex");
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const u = new URL(req.url);
    if (u.pathname.startsWith("/api/")) {
      return Response.json([{
        type: "file",
        path: "m.safetensors",
        size: data.length,
        oid: "0",
        lfs: { oid: sha, size: data.length },
      }]);
    }
    const m = req.headers.get("range")?.match(/^bytes=(\d+)-(\d+)$/);
    if (!m) return new Response(data);
    return new Response(data.slice(Number(m[1]), Number(m[2]) + 1), { status: 206 });
  });
  try {
    for (const connections of [1, 4]) {
      const cacheDir = `${dir}/cache${connections}`;
      const t0 = performance.now();
      await pull("bench/model/m.safetensors", {
        endpoint: `http://127.0.0.1:${server.addr.port}`,
        cacheDir,
        connections,
      });
      const s = (performance.now() - t0) / 1000;
      console.log(
        `pull ${mb} MB from a local hub, ${connections} connection${connections > 1 ? "s" : ""}: ` +
          `${s.toFixed(2)} s = ${(data.length / 1e6 / s).toFixed(0)} MB/s (incl. SHA-256 check)`,
      );
    }
  } finally {
    await server.shutdown();
  }
} finally {
  await Deno.remove(dir, { recursive: true });
}
