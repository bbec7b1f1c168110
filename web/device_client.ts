/// <reference lib="dom" />
/**
 * Generating on the visitor's own GPU (bundled by `deno task build` into web/dist/device.js with
 * the runtime and every kernel's WGSL). On load it checks, before any download, that the browser
 * has WebGPU and that its adapter has what the model needs (`GET /models` lists the requirements:
 * runtime/requirements.ts); if so it offers "Generate on this device" next to the server's
 * button, otherwise it says why and the server path stays. A run fetches the model file (the
 * browser's cache, else a download with progress, web/model_cache.ts), opens it (checksum
 * verified), uploads it, and denoises with live previews on the canvas, cancel, and timings.
 * Same seed → same noise as the server (Philox), so the same image up to float rounding.
 *
 * The section's `data-state` (unsupported / ready / loading / running / done / cancelled /
 * error), `data-timings` and `data-caps` (JSON: what the device layer found) tell a test what
 * happened.
 *
 * @module
 */
import { Gpu } from "../gpu/device.ts";
import { Pipeline } from "../runtime/pipeline.ts";
import { toRgbGrid } from "../runtime/png.ts";
import { unmetRequirements } from "../runtime/requirements.ts";
import { BlobSource } from "../gpu/source.ts";
import { fetchModel, forgetModel } from "./model_cache.ts";
import type { ModelFileInfo } from "./model_files.ts";
import { parseParams } from "./params.ts";
import { plural } from "../cli/plural.ts";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T | null;

/** What a run measured (milliseconds), as `data-timings` holds it. */
export interface DeviceTimings {
  /** Cache lookup or download of the model file. */
  fetchMs: number;
  /** The model came from the browser's cache. */
  cached: boolean;
  /** Device creation (first run) + checksum + upload + pipeline creation. */
  loadMs: number;
  /** The part of `loadMs` spent creating the device (adapter, device, self-test). */
  deviceMs: number;
  /**
   * Milliseconds from the device's creation to each layer's upload (the first includes opening
   * the file: validation and checksum; each includes creating that layer's pipelines).
   */
  layerMs: number[];
  /** Per denoising step. */
  stepMs: number[];
  /** The whole denoising loop. */
  totalMs: number;
  /** Activation dtype used. */
  dtype: "f16" | "f32";
  /** Adapter description. */
  adapter: string;
}

interface Loaded {
  key: string;
  pipe: Pipeline;
  fetchMs: number;
  cached: boolean;
  loadMs: number;
}

async function start(): Promise<void> {
  const section = $<HTMLElement>("device");
  const status = $<HTMLParagraphElement>("device-status");
  const go = $<HTMLButtonElement>("go-device");
  const cancel = $<HTMLButtonElement>("cancel-device");
  const progress = $<HTMLProgressElement>("device-progress");
  const canvas = $<HTMLCanvasElement>("device-canvas");
  const timings = $<HTMLParagraphElement>("device-timings");
  const form = $<HTMLFormElement>("gen");
  if (!section || !status || !go || !cancel || !progress || !canvas || !timings || !form) return;
  const say = (state: string, text: string) => {
    section.dataset.state = state;
    status.textContent = text;
    status.className = state === "error" || state === "unsupported" ? "err" : "";
  };

  const gpuApi = (navigator as { gpu?: GPU }).gpu;
  if (!gpuApi) {
    say(
      "unsupported",
      "This browser has no WebGPU (navigator.gpu is missing): images are made on the server. " +
        "To generate on this device use a browser with WebGPU (Chrome or Edge 113+, Safari 26+, " +
        "Firefox 141+ on Windows) over https or localhost.",
    );
    return;
  }
  const adapter = await gpuApi.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) {
    say(
      "unsupported",
      "WebGPU found no adapter (GPU blocked or driver missing): images are made on the server.",
    );
    return;
  }
  let files: ModelFileInfo[];
  try {
    const res = await fetch("/models");
    if (!res.ok) throw new Error(`the server answered ${res.status}`);
    files = (await res.json()).models;
  } catch (e) {
    say("unsupported", `Cannot list the model files (${(e as Error).message}): server only.`);
    return;
  }
  const wgsl = (gpuApi as { wgslLanguageFeatures?: ReadonlySet<string> }).wgslLanguageFeatures;
  const f16 = adapter.features.has("shader-f16");
  const info = (adapter as { info?: GPUAdapterInfo }).info;
  const adapterName = [info?.vendor, info?.architecture, info?.description]
    .filter((s) => s).join(" ") || "this GPU";
  const precisionSelect = form.elements.namedItem("precision") as HTMLSelectElement | null;
  const entryFor = () =>
    files.find((f) => f.info.precision === (precisionSelect?.value ?? files[0]?.info.precision));

  // the server's button says where it generates; the device's goes next to it
  const serverButton = $<HTMLButtonElement>("go");
  if (serverButton && files.length) {
    serverButton.textContent = "Generate on the server";
    serverButton.after(go);
  }

  const check = () => {
    const entry = entryFor();
    if (!entry) {
      go.hidden = true;
      say("unsupported", "This precision is not offered for on-device generation: server only.");
      return;
    }
    const problems = unmetRequirements(adapter, wgsl, entry.requirements);
    if (problems.length) {
      go.hidden = true;
      say(
        "unsupported",
        `Cannot generate ${entry.id} on ${adapterName}: ${problems.join("; ")}. ` +
          "Images are made on the server.",
      );
      return;
    }
    go.hidden = false;
    say(
      "ready",
      `${adapterName} can run ${entry.id} (${(entry.bytes / 1e6).toFixed(1)} MB, ` +
        `${f16 ? "f16" : "f32: the adapter has no shader-f16"}).`,
    );
  };
  check();
  precisionSelect?.addEventListener("change", check);

  let gpu: Promise<Gpu> | null = null;
  let deviceMs = 0;
  let marks: number[] = [];
  let loaded: Loaded | null = null;
  let running: AbortController | null = null;

  cancel.addEventListener("click", () => running?.abort());
  go.addEventListener("click", async () => {
    if (running) return;
    const ac = new AbortController();
    running = ac;
    go.disabled = true;
    cancel.hidden = false;
    let step = 0, total = 0;
    try {
      const values: Record<string, string> = {};
      for (const [k, v] of new FormData(form)) if (typeof v === "string" && v !== "") values[k] = v;
      const p = parseParams(values, files.map((f) => f.info));
      const entry = files.find((f) => f.id === p.model.id)!;
      const key = `${entry.id} ${entry.etag}`;
      if (loaded?.key !== key) {
        loaded?.pipe.destroy();
        loaded = null;
        say("loading", `fetching ${entry.id}…`);
        progress.hidden = false;
        progress.value = 0;
        const got = await fetchModel(entry.url, entry.etag, {
          signal: ac.signal,
          onProgress: (done, all) => {
            progress.value = all ? done / all : 1;
            status.textContent = `downloading ${entry.id}: ${(done / 1e6).toFixed(1)} / ` +
              `${(all / 1e6).toFixed(1)} MB`;
          },
        });
        say(
          "loading",
          `${got.cached ? "from this browser's cache" : "downloaded"}; ` +
            "verifying the checksum and uploading to the GPU…",
        );
        const t0 = performance.now();
        gpu ??= Gpu.create();
        gpu.catch(() => gpu = null);
        const device = await gpu;
        deviceMs = performance.now() - t0;
        marks = [deviceMs];
        let pipe: Pipeline;
        try {
          pipe = await Pipeline.load(device, new BlobSource(got.blob, entry.url), {
            images: 1,
            onProgress: (done, all) => {
              progress.value = all ? done / all : 1;
              marks.push(performance.now() - t0);
            },
          });
        } catch (e) {
          if ((e as Error).name === "FormatError") await forgetModel(entry.url);
          throw e;
        }
        loaded = { key, pipe, fetchMs: got.ms, cached: got.cached, loadMs: performance.now() - t0 };
        const c = (await gpu).caps;
        section.dataset.caps = JSON.stringify({
          adapter: c.adapter,
          shaderF16: c.shaderF16,
          subgroups: c.subgroups,
          subgroupsEnable: c.subgroupsEnable,
          packed4x8: c.packed4x8,
        });
      }
      const l = loaded;
      const size = entry.info.size;
      canvas.width = size;
      canvas.height = size;
      canvas.hidden = false;
      const ctx = canvas.getContext("2d")!;
      const draw = (x: Float32Array) => {
        const { rgb } = toRgbGrid(x, 1, size);
        const img = ctx.createImageData(size, size);
        for (let i = 0; i < size * size; i++) {
          img.data[4 * i] = rgb[3 * i];
          img.data[4 * i + 1] = rgb[3 * i + 1];
          img.data[4 * i + 2] = rgb[3 * i + 2];
          img.data[4 * i + 3] = 255;
        }
        ctx.putImageData(img, 0, 0);
      };
      say("running", "denoising…");
      progress.hidden = false;
      progress.value = 0;
      const r = await l.pipe.generate({
        classes: [p.classId],
        seed: p.seed,
        steps: p.steps,
        cfg: p.cfg,
        sampler: p.sampler,
        signal: ac.signal,
        onStep: (i, n, preview) => {
          step = i;
          total = n;
          progress.value = i / n;
          status.textContent = `step ${i}/${n} on this device`;
          draw(preview());
        },
      });
      draw(r.images);
      const gpuNow = await gpu!;
      const t: DeviceTimings = {
        fetchMs: Math.round(l.fetchMs),
        cached: l.cached,
        loadMs: Math.round(l.loadMs),
        deviceMs: Math.round(deviceMs),
        layerMs: marks.slice(1).map((m, i) => Math.round(m - marks[i])),
        stepMs: r.stepMs.map((x) => Math.round(x)),
        totalMs: Math.round(r.totalMs),
        dtype: gpuNow.caps.shaderF16 ? "f16" : "f32",
        adapter: gpuNow.caps.adapter,
      };
      section.dataset.timings = JSON.stringify(t);
      const perStep = r.stepMs.reduce((a, b) => a + b, 0) / Math.max(1, r.stepMs.length);
      timings.textContent = `${entry.info.classes[p.classId]} · seed ${p.seed} · ` +
        `${plural(p.steps, "step")} · ${t.dtype} on ${t.adapter} · model ` +
        `${t.cached ? "from cache" : "downloaded"} in ${(t.fetchMs / 1000).toFixed(1)} s · load ` +
        `${(t.loadMs / 1000).toFixed(1)} s · ${perStep.toFixed(0)} ms/step · ` +
        `${(t.totalMs / 1000).toFixed(1)} s in all`;
      say("done", `done on this device in ${(r.totalMs / 1000).toFixed(1)} s (seed ${p.seed})`);
    } catch (e) {
      if (ac.signal.aborted) {
        say("cancelled", total ? `cancelled after step ${step}/${total}` : "cancelled");
      } else say("error", (e as Error).message);
    } finally {
      running = null;
      go.disabled = false;
      cancel.hidden = true;
      progress.hidden = true;
    }
  });
}

start().catch((e) => {
  const status = $<HTMLParagraphElement>("device-status");
  if (status) {
    status.textContent = `Cannot set up on-device generation: ${(e as Error).message}`;
    status.className = "err";
  }
  const section = $<HTMLElement>("device");
  if (section) section.dataset.state = "error";
});
