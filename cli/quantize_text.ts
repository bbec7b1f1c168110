/**
 * `deno task quantize:text <t5 file or folder> --out <out.safetensors> --method w4a16|w8a16`:
 * weight-only quantization of a T5 encoder (FLUX.1's `text_encoder_2/`, sharded or not) into one
 * file that `TextEncoders` / `T5Encoder` load like the float checkpoint (convert/text_encoder.ts).
 *
 * @module
 */
import { parseArgs } from "node:util";
import {
  quantizeTextEncoder,
  TEXT_QUANT_METHODS,
  type TextQuantMethod,
} from "../convert/text_encoder.ts";
import { fail, formatBytes, runCli } from "./_cli.ts";

const USAGE = `Usage: deno task quantize:text <t5 file or folder> --out <out.safetensors> [options]

Quantizes the attention and FFN linears of a T5 v1.1 encoder (e.g. FLUX.1-schnell/text_encoder_2,
sharded or not); embeddings, norms and the position-bias table are copied.

Options:
  --method w4a16|w8a16   INT4 (group 64, round-to-nearest) or INT8 (per channel) weights, 16-bit
                         activations (default w8a16: the smallest whose encoder-output cosine vs
                         f32 was ≥ 0.99 in every measurement, see README)
  --quiet                no per-layer lines
  -h, --help             this text`;

async function main(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      out: { type: "string", short: "o" },
      method: { type: "string", default: "w8a16" },
      quiet: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  if (positionals.length !== 1) fail("give exactly one T5 checkpoint (file or folder)", USAGE);
  if (!values.out) fail("--out is required", USAGE);
  const method = values.method as TextQuantMethod;
  if (!TEXT_QUANT_METHODS.includes(method)) {
    fail(`unknown --method "${values.method}", use ${TEXT_QUANT_METHODS.join(" or ")}`, USAGE);
  }
  const t0 = performance.now();
  const r = await quantizeTextEncoder(positionals[0], values.out, {
    method,
    onLayer: values.quiet ? undefined : (name) => console.log(`quantize ${name}`),
  });
  const s = ((performance.now() - t0) / 1000).toFixed(1);
  console.log(
    `${values.out}: ${r.layers} linears ${method}, ${formatBytes(r.bytesBefore)} → ` +
      `${formatBytes(r.bytesAfter)} in ${s} s`,
  );
}

if (import.meta.main) await runCli(() => main(Deno.args));
