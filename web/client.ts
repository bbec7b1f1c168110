/// <reference lib="dom" />
/**
 * The page's island: turns the form's submit into a Server-Sent-Events stream
 * (`/api/generate/stream`) with live progress and previews, shows the result and adds it to
 * the gallery. Bundled by `deno task build` (esbuild) into web/dist/client.js. Without it the
 * form posts as a plain form.
 *
 * @module
 */

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

function start(): void {
  const form = $<HTMLFormElement>("gen");
  const status = $<HTMLParagraphElement>("status");
  const progress = $<HTMLProgressElement>("progress");
  const preview = $<HTMLImageElement>("preview");
  const result = $<HTMLImageElement>("result");
  const caption = $<HTMLParagraphElement>("caption");
  const gallery = $<HTMLDivElement>("gallery");
  const button = $<HTMLButtonElement>("go");
  let source: EventSource | null = null;

  const finish = (message: string, isError: boolean) => {
    source?.close();
    source = null;
    button.disabled = false;
    status.textContent = message;
    status.className = isError ? "err" : "";
    progress.hidden = true;
  };

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    source?.close();
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (typeof v === "string" && v !== "") q.set(k, v);
    q.set("preview", "1");
    button.disabled = true;
    status.textContent = "starting…";
    status.className = "";
    progress.hidden = false;
    progress.value = 0;
    const es = new EventSource(`/api/generate/stream?${q}`);
    source = es;
    es.addEventListener("queued", (e) => {
      const { position } = JSON.parse((e as MessageEvent).data);
      status.textContent = position > 0 ? `queued: ${position} ahead` : "running…";
    });
    es.addEventListener("step", (e) => {
      const { i, n, preview: src } = JSON.parse((e as MessageEvent).data);
      progress.value = i / n;
      status.textContent = `step ${i}/${n}`;
      if (src) {
        preview.src = src;
        preview.hidden = false;
      }
    });
    es.addEventListener("done", (e) => {
      const d = JSON.parse((e as MessageEvent).data);
      const text = `${d.className} · seed ${d.seed} · ${d.steps} steps · ${d.precision} · ` +
        `${(d.totalMs / 1000).toFixed(1)} s`;
      result.src = d.image;
      result.alt = text;
      result.hidden = false;
      preview.hidden = true;
      caption.textContent = text;
      const fig = document.createElement("figure");
      const img = document.createElement("img");
      img.src = d.image;
      img.alt = text;
      const cap = document.createElement("figcaption");
      cap.textContent = text;
      fig.append(img, cap);
      gallery.prepend(fig);
      finish(`done in ${(d.totalMs / 1000).toFixed(1)} s`, false);
    });
    es.addEventListener("error", (e) => {
      // a server-sent "error" event carries data; a bare Event is a dropped connection (or a
      // 4xx answer before the stream, e.g. a full queue)
      const data = (e as MessageEvent).data;
      if (typeof data === "string") finish(JSON.parse(data).message, true);
      else if (source === es) {
        finish("Cannot reach the server (or it refused the request): try again", true);
      }
    });
  });
}

start();
