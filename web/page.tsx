/**
 * The server-rendered page (Preact → HTML string): the generation form, progress, the result
 * and a gallery of recent generations. It works as a plain form post without JavaScript; the
 * client script (web/client.ts) turns the submit into a live Server-Sent-Events stream.
 *
 * @module
 */
import { renderToString } from "preact-render-to-string";
import type { ModelInfo } from "./engine.ts";
import { DEFAULTS, LIMITS, SAMPLERS } from "./params.ts";
import { DEVICE_CSS, DeviceSection } from "./device_page.tsx";

/** One gallery or result image. */
export interface Shot {
  /** `data:image/png;base64,…`. */
  src: string;
  /** Caption: class, seed, steps, precision, time. */
  caption: string;
}

/** What the page shows. */
export interface PageProps {
  /** Served models (first is the default). */
  models: ModelInfo[];
  /** Recent generations, newest first. */
  gallery: Shot[];
  /** The result of a form post. */
  result?: Shot;
  /** An error of a form post. */
  error?: string;
  /** A note on a form post's result (e.g. the prompt was truncated to the encoders' limit). */
  notice?: string;
  /** Values to refill the form with. */
  values?: Record<string, string>;
  /** URL of the client script; none = no script. */
  script?: string;
  /** Show the sign-in form instead of the generation form (the server has a token). */
  login?: boolean;
  /** The gallery is the server's, shared by all visitors (else each browser keeps its own). */
  publicGallery?: boolean;
  /** URL of the on-device generator (web/device_client.ts); none = server generation only. */
  deviceScript?: string;
}

const CSS = `
body{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;color:#222}
form{display:grid;grid-template-columns:9rem 1fr;gap:.5rem 1rem;align-items:center}
form button{grid-column:2;justify-self:start;padding:.4rem 1.2rem}
img.px{image-rendering:pixelated;width:256px;height:256px;background:#eee}
#gallery{display:flex;flex-wrap:wrap;gap:.5rem}#gallery figure{margin:0;font-size:.75rem;width:96px}
#gallery img{image-rendering:pixelated;width:96px;height:96px}
.err{color:#b00020}progress{width:256px}`;

function Page(p: PageProps) {
  const m = p.models[0];
  return (
    <html lang="en">
      <head>
        <meta charset="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        <title>w4 diffusion</title>
        <style dangerouslySetInnerHTML={{ __html: CSS + (p.deviceScript ? DEVICE_CSS : "") }} />
      </head>
      <body>
        <h1>w4 diffusion</h1>
        <p>
          {m.text
            ? `A ${m.size}×${m.size} FLUX.1 text-to-image model on WebGPU (${m.id}, ${m.precision}).`
            : `A ${m.size}×${m.size} class-conditional DiT on WebGPU (${m.id}, ${m.precision}).`}
        </p>
        {p.login ? <Login error={p.error} /> : <Generate {...p} />}
        <h2>Recent{p.publicGallery ? " (everyone's)" : " (this browser)"}</h2>
        <div id="gallery" data-scope={p.publicGallery ? "public" : "browser"}>
          {p.gallery.map((s) => (
            <figure key={s.src}>
              <img src={s.src} alt={s.caption} />
              <figcaption>{s.caption}</figcaption>
            </figure>
          ))}
        </div>
        {p.script && !p.login ? <script type="module" src={p.script} /> : null}
        {p.deviceScript && !p.login ? <script type="module" src={p.deviceScript} /> : null}
      </body>
    </html>
  );
}

function Login(p: { error?: string }) {
  return (
    <section>
      <form id="login" method="post" action="/login">
        <label for="token">Access token</label>
        <input id="token" name="token" type="password" autocomplete="current-password" required />
        <button id="signin" type="submit">Sign in</button>
      </form>
      <p id="status" class={p.error ? "err" : ""} role="status">
        {p.error ?? "This server needs its access token (W4_API_TOKEN) to generate."}
      </p>
    </section>
  );
}

function Generate(p: PageProps) {
  const m = p.models[0];
  const v = p.values ?? {};
  const precisions = [...new Set(p.models.map((x) => x.precision))];
  return (
    <>
      <form id="gen" method="post" action="/">
        <label for="prompt">{m.text ? "Prompt" : "Class or prompt"}</label>
        <input
          id="prompt"
          name="prompt"
          list={m.text ? undefined : "classes"}
          maxLength={LIMITS.prompt}
          value={v.prompt ?? (m.text ? "a red apple" : m.classes[0])}
          required
        />
        <datalist id="classes">
          {m.classes.map((c) => <option key={c} value={c} />)}
        </datalist>
        <label for="steps">Steps</label>
        <input
          id="steps"
          name="steps"
          type="number"
          min={LIMITS.steps[0]}
          max={LIMITS.steps[1]}
          value={v.steps ?? String(DEFAULTS.steps)}
        />
        <label for="seed">Seed (empty: random)</label>
        <input
          id="seed"
          name="seed"
          type="number"
          min="0"
          max={LIMITS.seed[1]}
          value={v.seed ?? ""}
        />
        <label for="cfg">Guidance</label>
        <input
          id="cfg"
          name="cfg"
          type="number"
          step="0.5"
          min={LIMITS.cfg[0]}
          max={LIMITS.cfg[1]}
          value={v.cfg ?? String(DEFAULTS.cfg)}
        />
        <label for="precision">Precision</label>
        <select id="precision" name="precision">
          {precisions.map((x) => (
            <option key={x} value={x} selected={(v.precision ?? m.precision) === x}>{x}</option>
          ))}
        </select>
        <label for="sampler">Sampler</label>
        <select id="sampler" name="sampler">
          {SAMPLERS.map((x) => (
            <option key={x} value={x} selected={(v.sampler ?? DEFAULTS.sampler) === x}>
              {x}
            </option>
          ))}
        </select>
        <button id="go" type="submit">Generate</button>
      </form>
      <section>
        <p id="status" class={p.error ? "err" : ""} role="status">
          {p.error ?? p.notice ?? ""}
        </p>
        <progress id="progress" max="1" value="0" hidden />
        <div>
          <img id="preview" class="px" alt="preview while denoising" hidden />
          <img
            id="result"
            class="px"
            alt={p.result ? p.result.caption : "result"}
            src={p.result?.src}
            hidden={!p.result}
          />
        </div>
        <p id="caption">{p.result?.caption ?? ""}</p>
      </section>
      {p.deviceScript ? <DeviceSection /> : null}
    </>
  );
}

/**
 * Render the page to a full HTML document.
 *
 * @example
 * ```ts
 * import { renderPage } from "./page.tsx";
 * const html = renderPage({
 *   models: [{ id: "m", precision: "int4", attention: "dense", classes: ["a"], size: 16, channels: 3 }],
 *   gallery: [],
 * });
 * console.log(html.startsWith("<!DOCTYPE html>"));
 * ```
 */
export function renderPage(props: PageProps): string {
  return "<!DOCTYPE html>" + renderToString(<Page {...props} />);
}
