/**
 * `deno task import <nunchaku.safetensors> [--config <folder or config.json>] --out <ours>`:
 * converts a Nunchaku SVDQuant checkpoint (INT4 or NVFP4, from its own metadata) into our
 * self-describing pre-quantized file, once. Errors are one line and leave no partial output.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { importNunchakuFlux, type ImportReport } from "../quant/nunchaku_flux.ts";
import { FormatError } from "../gpu/errors.ts";
import { fail, formatBytes, runCli } from "./_cli.ts";

const USAGE =
  `Usage: deno task import <svdq-*.safetensors> --out <out.safetensors> [--config <dir|config.json>]

Converts a Nunchaku SVDQuant checkpoint (e.g. svdq-int4_r32-flux.1-schnell.safetensors from
nunchaku-tech/nunchaku-flux.1-schnell) into this module's pre-quantized format. The precision
(INT4 or NVFP4) comes from the file.

Options:
  --out FILE        output file (written atomically)
  --config PATH     the model's diffusers config.json (or its folder), for files without
                    metadata "config"
  --quiet           no progress line
  -h, --help        this text`;

/** Read a config JSON object from a file or a folder holding config.json. */
export async function readConfig(path: string): Promise<Record<string, unknown>> {
  let file = path;
  if ((await Deno.stat(path)).isDirectory) file = `${path.replace(/\/$/, "")}/config.json`;
  let json: unknown;
  try {
    json = JSON.parse(await Deno.readTextFile(file));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw e;
    throw new FormatError(file, `it is not JSON (${(e as Error).message})`);
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new FormatError(file, "it is not a JSON object (expected a model config.json)");
  }
  return json as Record<string, unknown>;
}

/** Import `input` into `output`, printing progress unless `quiet`; returns the report. */
export async function importFile(
  input: string,
  output: string,
  opts: { config?: Record<string, unknown>; quiet?: boolean; log?: (s: string) => void } = {},
): Promise<ImportReport> {
  const log = opts.log ?? ((s: string) => console.log(s));
  const t0 = performance.now();
  const enc = new TextEncoder();
  const tty = !opts.quiet && Deno.stdout.isTerminal();
  const report = await importNunchakuFlux(input, output, {
    config: opts.config,
    onItem: (item, i, n) => {
      if (tty) Deno.stdout.writeSync(enc.encode(`\r  [${i + 1}/${n}] ${item.dst}\x1b[K`));
    },
  });
  if (tty) Deno.stdout.writeSync(enc.encode("\r\x1b[K"));
  if (!opts.quiet) {
    const size = (await Deno.stat(output)).size;
    const c = report.counts;
    log(
      `imported ${report.precision} (rank ${report.rank}): ${c.w4a4} W4A4 layers, ${c.w4a16} ` +
        `W4A16 adaLN layers, ${c.copied} 16-bit tensors → ${output} (${formatBytes(size)}, ` +
        `${((performance.now() - t0) / 1000).toFixed(1)} s)` +
        (report.inexact ? `; ${report.inexact} tiny values rounded to f16 subnormals` : ""),
    );
  }
  return report;
}

async function main(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      out: { type: "string", short: "o" },
      config: { type: "string" },
      quiet: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  if (positionals.length !== 1) {
    fail(`expected one Nunchaku checkpoint, got ${positionals.length}`, USAGE);
  }
  if (!values.out) fail("--out is required", USAGE);
  const config = values.config ? await readConfig(values.config) : undefined;
  await importFile(positionals[0], values.out, { config, quiet: values.quiet });
}

if (import.meta.main) await runCli(() => main(Deno.args));
