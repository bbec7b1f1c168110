/// <reference lib="dom" />
/**
 * The page's island: turns the form's submit into a Server-Sent-Events stream
 * (`/api/generate/stream`, read with `fetch` so that a refusal's status and JSON message reach
 * the page: a 400 naming the field and the closest classes, a 429 with the wait) with live
 * progress and previews, shows the result and keeps the recent ones in this browser's
 * localStorage (the server keeps none unless the operator opted in to a public gallery).
 * Bundled by `deno task build` (esbuild) into web/dist/client.js. Without it the form posts as a
 * plain form.
 *
 * @module
 */
import { plural } from "../cli/plural.ts";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const RECENT_KEY = "w4-recent";
const RECENT_MAX = 12;

interface Shot {
  src: string;
  caption: string;
}

function loadRecent(): Shot[] {
  try {
    const v = JSON.parse(localStorage.getItem(RECENT_KEY) ?? "[]");
    return Array.isArray(v) ? v.filter((s) => typeof s?.src === "string") : [];
  } catch {
    return [];
  }
}

function figure(s: Shot): HTMLElement {
  const fig = document.createElement("figure");
  const img = document.createElement("img");
  img.src = s.src;
  img.alt = s.caption;
  const cap = document.createElement("figcaption");
  cap.textContent = s.caption;
  fig.append(img, cap);
  return fig;
}

/** Reads an SSE body, calling `on(event, data)` per event. */
async function readEvents(
  body: ReadableStream<Uint8Array>,
  on: (event: string, data: string) => void,
): Promise<void> {
  const reader = body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const event = /^event: (.*)$/m.exec(block)?.[1] ?? "message";
      const data = [...block.matchAll(/^data: (.*)$/gm)].map((m) => m[1]).join("\n");
      on(event, data);
    }
  }
}

function start(): void {
  const form = $<HTMLFormElement>("gen");
  if (!form) return; // the sign-in page: a plain form post
  const status = $<HTMLParagraphElement>("status");
  const progress = $<HTMLProgressElement>("progress");
  const preview = $<HTMLImageElement>("preview");
  const result = $<HTMLImageElement>("result");
  const caption = $<HTMLParagraphElement>("caption");
  const gallery = $<HTMLDivElement>("gallery");
  const button = $<HTMLButtonElement>("go");
  const perBrowser = gallery.dataset.scope !== "public";
  if (perBrowser) { for (const s of loadRecent()) gallery.append(figure(s)); }
  let running: AbortController | null = null;

  const finish = (message: string, isError: boolean) => {
    running = null;
    button.disabled = false;
    status.textContent = message;
    status.className = isError ? "err" : "";
    progress.hidden = true;
    preview.hidden = true;
  };

  const remember = (s: Shot) => {
    gallery.prepend(figure(s));
    if (!perBrowser) return;
    const list = [s, ...loadRecent()].slice(0, RECENT_MAX);
    try {
      localStorage.setItem(RECENT_KEY, JSON.stringify(list));
    } catch {
      // storage full or disabled: the image is still shown
    }
  };

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    running?.abort();
    const ac = new AbortController();
    running = ac;
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (typeof v === "string" && v !== "") q.set(k, v);
    q.set("preview", "1");
    button.disabled = true;
    status.textContent = "starting…";
    status.className = "";
    progress.hidden = false;
    progress.value = 0;
    // the old result goes: what is on screen belongs to this request
    result.hidden = true;
    result.removeAttribute("src");
    caption.textContent = "";
    let res: Response;
    try {
      res = await fetch(`/api/generate/stream?${q}`, {
        signal: ac.signal,
        headers: { Accept: "text/event-stream" },
      });
    } catch {
      if (running === ac) {
        finish("Cannot reach the server: check the connection and try again", true);
      }
      return;
    }
    if (!res.ok || !res.body) {
      // the server's own words: a 400 names the field (and the closest classes), a 429 the wait
      let message = `Cannot generate: the server answered ${res.status}`;
      try {
        message = (await res.json()).error ?? message;
      } catch { /* not JSON */ }
      const wait = res.headers.get("Retry-After");
      if (res.status === 429 && wait && !/retry in/.test(message)) {
        message += ` (retry in ${plural(Number(wait), "second")})`;
      }
      if (running === ac) finish(message, true);
      return;
    }
    let ended = false;
    try {
      await readEvents(res.body, (event, data) => {
        if (running !== ac) return;
        const d = JSON.parse(data);
        if (event === "queued") {
          status.textContent = d.position > 0 ? `queued: ${d.position} ahead` : "running…";
        } else if (event === "step") {
          progress.value = d.i / d.n;
          status.textContent = `step ${d.i}/${d.n}`;
          if (d.preview) {
            preview.src = d.preview;
            preview.hidden = false;
          }
        } else if (event === "done") {
          ended = true;
          const text = `${d.className} · seed ${d.seed} · ${plural(d.steps, "step")} · ` +
            `${d.precision} · ${(d.totalMs / 1000).toFixed(1)} s`;
          result.src = d.image;
          result.alt = text;
          result.hidden = false;
          caption.textContent = text;
          remember({ src: d.image, caption: text });
          // a prompt cut to the text encoders' token limit: say so beside the result
          const note = d.truncated ? ` (${d.truncated.warning})` : "";
          finish(`done in ${(d.totalMs / 1000).toFixed(1)} s${note}`, false);
        } else if (event === "error") {
          ended = true;
          finish(d.message, true);
        }
      });
    } catch {
      // the connection dropped mid-stream
    }
    if (!ended && running === ac) {
      finish("Cannot finish: the connection to the server dropped; try again", true);
    }
  });
}

start();
