/**
 * `deno task pull <owner/name>[/<file>]`: download a model (one file or a whole repo) from a
 * Hugging Face-style hub into the cache, with parallel resumable downloads, SHA-256 verification
 * and a progress bar. Environment: `HF_ENDPOINT`, `HF_TOKEN`, `W4_CACHE` (cli/_hub.ts).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { fail, formatBytes, runCli } from "./_cli.ts";
import { defaultCacheDir, type HubOptions, pull } from "./_hub.ts";

const USAGE = `Usage: deno task pull <owner>/<name>[/<file>] [options]

Downloads into the cache (W4_CACHE, default ${defaultCacheDir()}) and prints the local paths.
Interrupted downloads resume where they stopped; every file is verified (SHA-256).

Examples:
  deno task pull nunchaku-tech/nunchaku-flux.1-schnell/svdq-int4_r32-flux.1-schnell.safetensors
  deno task pull black-forest-labs/FLUX.1-schnell/ae.safetensors

Options:
  --revision REV      branch, tag or commit (default main)
  --connections N     parallel connections per file (default 4)
  --quiet             no progress bar
  -h, --help          this text

Environment: HF_ENDPOINT (hub URL, default https://huggingface.co), HF_TOKEN (gated repos),
W4_CACHE (cache folder).`;

/** A progress reporter: a bar on a terminal, a line per 10% otherwise. */
export function progressBar(write: (s: string) => void, tty: boolean) {
  const t0 = performance.now();
  let lastFile = "", lastTenth = -1, lastDraw = 0;
  return (file: string, done: number, total: number) => {
    const frac = total > 0 ? done / total : 1;
    const now = performance.now();
    if (tty) {
      if (now - lastDraw < 100 && done < total && file === lastFile) return;
      lastDraw = now;
      const width = 30, fill = Math.round(frac * width);
      const rate = done / Math.max(1e-3, (now - t0) / 1000);
      write(
        `\r[${"#".repeat(fill)}${" ".repeat(width - fill)}] ${
          (100 * frac).toFixed(0).padStart(3)
        }% ` +
          `${formatBytes(done)}/${formatBytes(total)} ${formatBytes(rate)}/s ${file}\x1b[K` +
          (done >= total ? "\n" : ""),
      );
    } else {
      const tenth = Math.floor(frac * 10);
      if (file !== lastFile) lastTenth = -1;
      if (tenth !== lastTenth) {
        lastTenth = tenth;
        write(`${file}: ${(100 * frac).toFixed(0)}% of ${formatBytes(total)}\n`);
      }
    }
    lastFile = file;
  };
}

async function main(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      revision: { type: "string" },
      connections: { type: "string", default: "4" },
      quiet: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  if (positionals.length !== 1) {
    fail(`expected one <owner>/<name>[/<file>], got ${positionals.length}`, USAGE);
  }
  const connections = Number(values.connections);
  if (!Number.isInteger(connections) || connections < 1 || connections > 32) {
    fail(`--connections must be an integer in 1..32, got "${values.connections}"`);
  }
  const enc = new TextEncoder();
  const opts: HubOptions = { revision: values.revision, connections };
  if (!values.quiet) {
    opts.onProgress = progressBar(
      (s) => Deno.stderr.writeSync(enc.encode(s)),
      Deno.stderr.isTerminal(),
    );
  }
  for (const path of await pull(positionals[0], opts)) console.log(path);
}

if (import.meta.main) await runCli(() => main(Deno.args));
