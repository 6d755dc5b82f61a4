// Search the archive: GET /v1/search with the query box and filters (channel, status, created
// from/to, duration, metadata key=value, one hit per call). Hits show the phrase with the matched
// words marked (built from the API's `marks` offsets, never from HTML); a hit opens the call's
// transcript at that moment (#/jobs/<id>?t=<start>), playing from the phrase's start.
//
// The search lives in the address (#/search?q=...&channel=...), so back and forward work.

import { request, query } from "../api.js";
import { clear, clock, errorBox, h, span, titled } from "../ui.js";
import { t } from "../i18n.js";

const SIDES = { 0: "Agent", 1: "Client" };
const FIELDS = ["q", "channel", "status", "created_after", "created_before", "min_duration", "max_duration", "meta", "group"];

function readParams() {
  const hash = location.hash || "";
  const at = hash.indexOf("?");
  return new URLSearchParams(at === -1 ? "" : hash.slice(at + 1));
}

/** "agent=Иванов, region=север" -> {"metadata.agent": "Иванов", ...}; null when malformed. */
function metadataFilters(text) {
  const out = {};
  for (const part of text.split(",").map((s) => s.trim()).filter(Boolean)) {
    const eq = part.indexOf("=");
    if (eq <= 0) return null;
    out[`metadata.${part.slice(0, eq).trim()}`] = part.slice(eq + 1).trim();
  }
  return out;
}

/** The phrase text with <mark> around each [start, end) of `marks`. */
function highlighted(text, marks) {
  const nodes = [];
  let pos = 0;
  for (const [a, b] of marks) {
    if (a > pos) nodes.push(text.slice(pos, a));
    nodes.push(h("mark", {}, text.slice(a, b)));
    pos = b;
  }
  if (pos < text.length) nodes.push(text.slice(pos));
  return nodes;
}

function metaLine(metadata) {
  if (!metadata || typeof metadata !== "object") return null;
  const entries = Object.entries(metadata).filter(([k]) => k !== "path");
  if (!entries.length) return null;
  return h("span", { class: "hit-meta" }, entries.map(([k, v]) => `${k}: ${v}`).join(" · "));
}

function hitItem(hit) {
  const href = `#/jobs/${hit.job_id}?t=${hit.start}`;
  return h(
    "li",
    { class: "hit", dataset: { job: hit.job_id, start: String(hit.start), channel: String(hit.channel) } },
    h(
      "a",
      { href, class: "hit-link", "aria-label": hit.name ? `Open ${hit.name} at ${clock(hit.start)}` : `Open the call at ${clock(hit.start)}` },
      h("span", { class: "hit-time" }, clock(hit.start)),
      h("span", { class: `hit-side ch${hit.channel}` }, SIDES[hit.channel] || ""),
      h("span", { class: "hit-text", lang: "ru" }, ...highlighted(hit.text, hit.marks)),
    ),
  );
}

export function render(root, params, ctx) {
  const given = readParams();
  const field = (id, attrs = {}) => h("input", { id: `search-${id}`, name: id, value: given.get(id) || "", ...attrs });
  const q = field("q", { type: "search", placeholder: "расторгнуть договор, \"точная фраза\", -исключить", autocomplete: "off", required: true, lang: "ru" });
  const channel = h(
    "select",
    { id: "search-channel", name: "channel" },
    [["", "Both sides"], ["0", "Agent"], ["1", "Client"]].map(([v, label]) => h("option", { value: v, selected: given.get("channel") === v }, label)),
  );
  const status = h(
    "select",
    { id: "search-status", name: "status" },
    [["", "Any status"], ["completed", "Completed"], ["failed", "Failed"]].map(([v, label]) => h("option", { value: v, selected: given.get("status") === v }, label)),
  );
  const after = field("created_after", { type: "date" });
  const before = field("created_before", { type: "date" });
  const minDur = field("min_duration", { type: "number", min: "0", step: "1", placeholder: "s" });
  const maxDur = field("max_duration", { type: "number", min: "0", step: "1", placeholder: "s" });
  const meta = field("meta", { type: "text", placeholder: "agent=Иванов, region=север", lang: "ru" });
  const group = h("input", { type: "checkbox", id: "search-group", name: "group", checked: given.get("group") === "job" });
  const label = (forId, text) => h("label", { for: forId }, text);
  const form = h(
    "form",
    { class: "card search-form", id: "search-form", role: "search" },
    h("div", { class: "search-main" }, label("search-q", "Search the calls"), q, h("button", { type: "submit" }, "Search")),
    h(
      "div",
      { class: "filters" },
      h("div", {}, label("search-channel", "Said by"), channel),
      h("div", {}, label("search-status", "Status"), status),
      h("div", {}, label("search-created_after", "From"), after),
      h("div", {}, label("search-created_before", "Until"), before),
      h("div", {}, label("search-min_duration", "Min. length (s)"), minDur),
      h("div", {}, label("search-max_duration", "Max. length (s)"), maxDur),
      h("div", { class: "wide" }, label("search-meta", "Metadata"), meta),
      h("label", { class: "check", for: "search-group" }, group, " One result per call"),
    ),
  );
  const summary = h("p", { class: "muted", id: "search-summary", "aria-live": "polite" });
  const results = h("div", { id: "search-results" });
  const more = h("button", { type: "button", class: "secondary", id: "search-more", hidden: true }, "More results");
  root.append(h("div", { class: "page-head" }, h("h1", {}, "Search")), form, summary, results, more);
  titled(root, "Search");

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    const values = { q: q.value.trim(), channel: channel.value, status: status.value, created_after: after.value, created_before: before.value, min_duration: minDur.value, max_duration: maxDur.value, meta: meta.value.trim(), group: group.checked ? "job" : "" };
    for (const k of FIELDS) if (values[k]) next.set(k, values[k]);
    const target = `/search?${next.toString()}`;
    if (location.hash === `#${target}`) run();
    else location.hash = target;
  });

  let cursor = null;
  let shown = 0;
  let list = null;
  let alive = true;

  function apiParams() {
    const p = { q: given.get("q") || "", limit: 20 };
    for (const k of ["channel", "status", "min_duration", "max_duration"]) if (given.get(k)) p[k] = given.get(k);
    if (given.get("created_after")) p.created_after = `${given.get("created_after")}T00:00:00Z`;
    if (given.get("created_before")) p.created_before = `${given.get("created_before")}T23:59:59Z`;
    if (given.get("group") === "job") p.group = "job";
    const m = metadataFilters(given.get("meta") || "");
    if (m === null) return null;
    return { ...p, ...m };
  }

  async function run(append = false) {
    const p = apiParams();
    if (p === null) {
      clear(results);
      results.append(errorBox({ code: "invalid_request", serverMessage: "Metadata filters are key=value, separated by commas." }, { compact: true }));
      return;
    }
    if (!append) {
      cursor = null;
      shown = 0;
      clear(results);
      summary.textContent = t("Searching…");
      list = h("ol", { class: "hits", id: "hits" });
      results.append(list);
    }
    try {
      const page = await request(`/v1/search${query({ ...p, cursor })}`);
      if (!alive) return;
      for (const item of page.data) {
        if (p.group === "job") {
          list.append(
            h(
              "li",
              { class: "hit-group", dataset: { job: item.job_id } },
              h("div", { class: "hit-head" }, h("a", { href: `#/jobs/${item.job_id}?t=${item.hits[0].start}` }, item.name || item.job_id), h("span", { class: "count" }, `${item.count} match${item.count === 1 ? "" : "es"}`), metaLine(item.metadata)),
              h("ol", { class: "hits" }, item.hits.map(hitItem)),
            ),
          );
        } else {
          const li = hitItem(item);
          li.prepend(h("div", { class: "hit-head" }, h("span", { class: "hit-name" }, item.name || item.job_id), metaLine(item.metadata)));
          list.append(li);
        }
      }
      shown += page.data.length;
      cursor = page.next_cursor;
      more.hidden = !cursor;
      summary.textContent = t(shown ? `${shown}${cursor ? "+" : ""} ${p.group === "job" ? "call" : "phrase"}${shown === 1 ? "" : "s"} found` : "Nothing found.");
    } catch (error) {
      if (!alive) return;
      summary.textContent = "";
      clear(results);
      results.append(errorBox(error, { compact: true }));
    }
  }
  more.addEventListener("click", () => run(true));

  if (given.get("q")) run();
  else q.focus();
  return () => {
    alive = false;
  };
}
