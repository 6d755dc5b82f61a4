// Small DOM helpers: elements are built with h(), never from HTML strings, so text from the server
// is always text. Formatting of times, sizes and statuses; the error box; the confirm dialog.

import { describe } from "./api.js";
import { locale, num, t } from "./i18n.js";

// data-label: a table cell's column name, shown before its value on a narrow screen (style.css)
const TRANSLATED = new Set(["aria-label", "data-label", "placeholder", "title"]);

/** h("a", {href: "#/jobs", class: "x", onclick: fn}, "text", child, [more]) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : TRANSLATED.has(k) ? t(String(v)) : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(typeof child === "string" ? t(child) : String(child)));
  }
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

/** 3.3 -> "0:03.3"; 3723 -> "1:02:03.0" */
export function clock(seconds, decimals = 1) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const sign = seconds < 0 ? "-" : "";
  let s = Math.abs(seconds);
  const hours = Math.floor(s / 3600);
  s -= hours * 3600;
  const minutes = Math.floor(s / 60);
  s -= minutes * 60;
  let sec = decimals ? s.toFixed(decimals) : String(Math.floor(s));
  if (s < 10) sec = `0${sec}`;
  return hours ? `${sign}${hours}:${String(minutes).padStart(2, "0")}:${sec}` : `${sign}${minutes}:${sec}`;
}

/** A length for people: "4.5 s", "17 s", "3 min 20 s", "1 h 05 min". Truncated, never rounded up,
 * like the audio player's clock: a 17.7 s call is "17 s" beside the player's 0:17. */
export function span(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  if (seconds < 10) return `${num(Math.floor(seconds * 10) / 10, 1)} ${t("s")}`;
  if (seconds < 60) return `${Math.floor(seconds)} ${t("s")}`;
  const total = Math.floor(seconds);
  if (total < 3600) return `${Math.floor(total / 60)} ${t("min")} ${String(total % 60).padStart(2, "0")} ${t("s")}`;
  return `${Math.floor(total / 3600)} ${t("h")} ${String(Math.floor((total % 3600) / 60)).padStart(2, "0")} ${t("min")}`;
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1000) return `${n} ${t("B")}`;
  if (n < 1_000_000) return `${num(n / 1000, 1)} ${t("kB")}`;
  if (n < 1_000_000_000) return `${num(n / 1_000_000, 1)} ${t("MB")}`;
  return `${num(n / 1_000_000_000, 2)} ${t("GB")}`;
}

const dateFormat = new Intl.DateTimeFormat(locale(), { dateStyle: "medium", timeStyle: "short" });
export function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? "–" : dateFormat.format(d);
}

export const STATUS_WORDS = {
  queued: "Queued",
  processing: "Processing",
  completed: "Completed",
  failed: "Failed",
  cancelled: "Cancelled",
};

export function isOpen(status) {
  return status === "queued" || status === "processing";
}

export function badge(status) {
  return h("span", { class: `badge badge-${status}` }, STATUS_WORDS[status] || status);
}

/** A <progress> with its percentage in words beside it. */
export function progressBar(fraction, label) {
  const pct = Math.round(Math.max(0, Math.min(1, fraction || 0)) * 100);
  return h(
    "span",
    { class: "progress" },
    h("progress", { max: 100, value: pct, "aria-label": label || "Progress" }),
    h("span", { class: "progress-text" }, `${pct} %`),
  );
}

/** The name a person knows a job by. */
export function jobName(job) {
  if (job.filename) return job.filename;
  if (job.audio_url) {
    try {
      const url = new URL(job.audio_url);
      const last = url.pathname.split("/").filter(Boolean).pop();
      return last ? decodeURIComponent(last) : url.host;
    } catch {
      return job.audio_url;
    }
  }
  if (job.kind === "stream") return "Live session";
  return `Job ${job.id.slice(0, 8)}`;
}

/** An error box: a sentence, the server's detail, the code for support. */
export function errorBox(problem, { compact = false } = {}) {
  const { title, detail, code } = describe(problem);
  return h(
    "div",
    { class: compact ? "error-box compact" : "error-box", role: "alert" },
    h("p", { class: "error-title" }, title),
    detail ? h("p", { class: "error-detail" }, detail) : null,
    h("p", { class: "error-code" }, `Code: ${code}`),
  );
}

/** A modal question; resolves true when the person confirms. Keyboard: Esc cancels, focus is trapped. */
export function confirmDialog(question, confirmLabel = "Delete") {
  return new Promise((resolve) => {
    const dialog = h(
      "dialog",
      { class: "confirm", "aria-labelledby": "confirm-question" },
      h(
        "form",
        { method: "dialog" },
        h("p", { id: "confirm-question" }, question),
        h(
          "div",
          { class: "actions" },
          h("button", { value: "cancel", class: "secondary", type: "submit" }, "Cancel"),
          h("button", { value: "yes", class: "danger", type: "submit" }, confirmLabel),
        ),
      ),
    );
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "yes");
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
    dialog.querySelector("button[value=cancel]").focus();
  });
}

/** Set the page title and move focus to the view's heading (screen readers announce the new page). */
export function titled(root, text) {
  document.title = `${t(text)} · tone-platform`;
  const heading = root.querySelector("h1");
  if (heading) {
    heading.tabIndex = -1;
    heading.focus({ preventScroll: true });
  }
}

/** Keep the focused element's place across a re-render: call before, then the returned fn after. */
export function keepFocus(container) {
  const active = document.activeElement;
  const key = active && container.contains(active) ? active.dataset.focusKey : null;
  return () => {
    if (!key) return;
    const again = container.querySelector(`[data-focus-key="${CSS.escape(key)}"]`);
    if (again) again.focus({ preventScroll: true });
  };
}

/** Poll `fn` every `ms` while `want()` holds; stops on stop(). Errors go to onError, polling goes on
 * (backing off on 429). */
/**
 * Older/Newer buttons over a cursor-paginated list: `state` keeps the page number and the cursor
 * of each page seen; `nextCursor()` is the cursor the last answer gave; `refresh()` reloads.
 */
export function wirePager(prev, next, state, nextCursor, refresh) {
  prev.addEventListener("click", () => {
    if (state.page > 0) state.page -= 1;
    refresh();
  });
  next.addEventListener("click", () => {
    const cursor = nextCursor();
    if (!cursor) return;
    state.cursors[state.page + 1] = cursor;
    state.page += 1;
    refresh();
  });
}

/**
 * A failed (re)load of a list page: the error in the page itself while nothing was shown yet, else a
 * banner over what is shown (a rate limit is skipped: the next poll tries again).
 */
export function showLoadError(error, body, loadedOnce, ctx) {
  if (!loadedOnce) {
    clear(body);
    body.append(errorBox(error));
  } else if (error.code !== "rate_limited") {
    ctx.showBanner(error);
  }
}

export function poller(fn, ms, onError) {
  let timer = null;
  let stopped = false;
  let running = false;
  const tick = async () => {
    timer = null;
    if (stopped || running) return;
    running = true;
    let wait = ms;
    try {
      const again = await fn();
      if (again === false || stopped) return;
    } catch (error) {
      if (stopped) return;
      if (error && error.code === "rate_limited") wait = (error.retryAfter || 5) * 1000;
      if (onError) onError(error);
      if (error && (error.status === 401 || error.status === 404)) return;
    } finally {
      running = false;
    }
    if (!stopped) timer = setTimeout(tick, wait);
  };
  return {
    start() {
      if (!timer && !stopped) timer = setTimeout(tick, ms);
    },
    now() {
      if (timer) clearTimeout(timer);
      timer = null;
      tick();
    },
    stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
    },
  };
}

/** What the file is (from the worker's look at it), not what was asked: "Mono", "Stereo, split
 * (agent left, client right)", "Stereo, mixed to mono"; before a worker opened it, the request. */
export function channelsLabel(job, short = false) {
  const split = job.options && job.options.channels === "split";
  const n = job.audio ? job.audio.channels : null;
  if (n === 1) return short ? "mono" : "Mono";
  if (n === 2) {
    if (short) return split ? "stereo, split" : "stereo, mixed";
    return split ? "Stereo, split (agent left, client right)" : "Stereo, mixed to mono";
  }
  if (n) return short ? `${n} channels` : `${n} channels${split ? ", split" : ", mixed"}`;
  if (job.kind === "stream") return short ? "" : "Live session";
  return short ? "" : split ? "Split asked (the file is not read yet)" : "Mixed (the file is not read yet)";
}

/** A job's metadata as [key, text] pairs (nested values as JSON). */
export function metadataPairs(metadata) {
  if (!metadata || typeof metadata !== "object") return [];
  return Object.entries(metadata).map(([k, v]) => [k, typeof v === "string" ? v : JSON.stringify(v)]);
}
