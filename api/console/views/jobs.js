// The jobs list: GET /v1/jobs with its filters (status, created_after, created_before) and cursor
// pagination; refreshed every second while a job on the page is queued or processing; delete with
// a confirmation (DELETE /v1/jobs/{id}).

import { describe, query, request } from "../api.js";
import {
  badge,
  bytes,
  channelsLabel,
  clear,
  confirmDialog,
  errorBox,
  h,
  isOpen,
  jobName,
  keepFocus,
  metadataPairs,
  poller,
  progressBar,
  showLoadError,
  span,
  titled,
  when,
  wirePager,
} from "../ui.js";
import { t } from "../i18n.js";

const PAGE_SIZES = [10, 20, 50, 100];
// Kept across visits, so that coming back from a transcript shows the same page and filters.
const state = { status: "", from: "", to: "", size: 20, cursors: [null], page: 0 };

function dayStart(value, plusDays = 0) {
  if (!value) return "";
  const [y, m, d] = value.split("-").map(Number);
  return new Date(y, m - 1, d + plusDays).toISOString();
}

export function render(root, _params, ctx) {
  const announce = h("p", { class: "sr-only", "aria-live": "polite" });
  const statusSelect = h(
    "select",
    { id: "filter-status", name: "status" },
    h("option", { value: "" }, "All"),
    ["queued", "processing", "completed", "failed", "cancelled"].map((s) =>
      h("option", { value: s }, s[0].toUpperCase() + s.slice(1)),
    ),
  );
  statusSelect.value = state.status;
  const from = h("input", { id: "filter-from", type: "date", name: "from" });
  const to = h("input", { id: "filter-to", type: "date", name: "to" });
  const size = h("select", { id: "filter-size", name: "size" }, PAGE_SIZES.map((n) => h("option", { value: String(n), defaultSelected: n === 20 }, String(n))));
  from.value = state.from;
  to.value = state.to;
  size.value = String(state.size);
  const filters = h(
    "form",
    { class: "filters", "aria-label": "Filter jobs" },
    h("div", { class: "field" }, h("label", { for: "filter-status" }, "Status"), statusSelect),
    h("div", { class: "field" }, h("label", { for: "filter-from" }, "Created from"), from),
    h("div", { class: "field" }, h("label", { for: "filter-to" }, "to"), to),
    h("div", { class: "field" }, h("label", { for: "filter-size" }, "Per page"), size),
    h("button", { type: "reset", class: "secondary small" }, "Clear filters"),
  );
  const body = h("div", { class: "jobs-body", "aria-busy": "true" }, h("p", { class: "muted" }, "Loading jobs…"));
  const prev = h("button", { type: "button", class: "secondary", id: "page-prev" }, "← Newer");
  const next = h("button", { type: "button", class: "secondary", id: "page-next" }, "Older →");
  const pageLabel = h("span", { class: "page-label", "aria-live": "polite" });
  const pager = h("nav", { class: "pager", "aria-label": "Pages" }, prev, pageLabel, next);

  root.append(
    h(
      "div",
      { class: "page-head" },
      h("h1", {}, "Jobs"),
      h("a", { href: "#/upload", class: "button primary" }, "Upload recordings"),
    ),
    filters,
    body,
    pager,
    announce,
  );
  titled(root, "Jobs");

  let nextCursor = null;
  let loadedOnce = false;
  // optional columns: metadata keys the person ticked (kept in this browser)
  const COLUMNS_STORE = "tone-platform.metadata-columns";
  let metaColumns = [];
  try {
    metaColumns = JSON.parse(localStorage.getItem(COLUMNS_STORE) || "[]").filter((k) => typeof k === "string");
  } catch {
    metaColumns = [];
  }
  const columnsBox = h("details", { class: "meta-columns", id: "meta-columns", hidden: true }, h("summary", {}, "Metadata columns"));
  filters.after(columnsBox);

  function drawColumnChoice(keys) {
    while (columnsBox.children.length > 1) columnsBox.lastChild.remove();
    columnsBox.hidden = !keys.length;
    for (const key of keys) {
      const id = `meta-col-${key.replace(/[^A-Za-z0-9_-]/g, "_")}`;
      const box = h("input", { type: "checkbox", id, checked: metaColumns.includes(key), dataset: { key } });
      box.addEventListener("change", () => {
        metaColumns = box.checked ? [...metaColumns, key] : metaColumns.filter((k) => k !== key);
        localStorage.setItem(COLUMNS_STORE, JSON.stringify(metaColumns));
        polls.now();
      });
      columnsBox.append(h("label", { class: "check", for: id }, box, ` ${key}`));
    }
  }

  function refilter() {
    state.status = statusSelect.value;
    state.from = from.value;
    state.to = to.value;
    state.size = Number(size.value) || 20;
    state.cursors = [null];
    state.page = 0;
    polls.now();
  }
  filters.addEventListener("change", refilter);
  filters.addEventListener("submit", (e) => e.preventDefault());
  filters.addEventListener("reset", () => setTimeout(refilter, 0));
  wirePager(prev, next, state, () => nextCursor, () => polls.now());

  async function remove(job) {
    const ok = await confirmDialog(`Delete “${jobName(job)}”? Its recording and transcript are removed for good.`);
    if (!ok) return;
    try {
      await request(`/v1/jobs/${job.id}`, { method: "DELETE" });
      announce.textContent = t(`Deleted ${jobName(job)}.`);
      ctx.showBanner(`Deleted “${jobName(job)}”.`, "info");
    } catch (error) {
      ctx.showBanner(error);
    }
    polls.now();
  }

  function row(job) {
    const open = isOpen(job.status);
    const source =
      job.kind === "stream" ? "live session" : job.source === "url" ? "from URL" : job.size_bytes ? bytes(job.size_bytes) : "";
    const statusCell = h("td", { "data-label": "Status" }, badge(job.status));
    if (open) statusCell.append(progressBar(job.progress, `Progress of ${jobName(job)}`));
    if (job.status === "failed" && job.error) {
      statusCell.append(h("div", { class: "sub error-text" }, describe({ code: job.error.code, serverMessage: "" }).title));
    }
    return h(
      "tr",
      { dataset: { id: job.id, status: job.status } },
      h(
        "td",
        { "data-label": "Recording", class: "name-cell" },
        h("a", { href: `#/jobs/${job.id}`, dataset: { focusKey: `open-${job.id}` } }, jobName(job)),
        h("div", { class: "sub" }, [channelsLabel(job, true), source].filter(Boolean).map((part) => t(part)).join(" · ")),
      ),
      statusCell,
      metaColumns.map((key) => {
        const pair = metadataPairs(job.metadata).find(([k]) => k === key);
        return h("td", { "data-label": key, class: "meta-cell" }, pair ? pair[1] : "");
      }),
      h("td", { "data-label": "Duration", class: "num" }, span(job.duration)),
      h("td", { "data-label": "Created", class: "nowrap" }, h("time", { datetime: job.created_at }, when(job.created_at))),
      h(
        "td",
        { class: "actions-cell" },
        h(
          "button",
          {
            type: "button",
            class: "danger small",
            dataset: { focusKey: `delete-${job.id}` },
            "aria-label": `Delete ${jobName(job)}`,
            onclick: () => remove(job),
          },
          "Delete",
        ),
      ),
    );
  }

  async function load() {
    const params = {
      limit: state.size,
      status: state.status,
      created_after: dayStart(state.from),
      created_before: dayStart(state.to, 1),
      cursor: state.cursors[state.page],
    };
    const page = await request(`/v1/jobs${query(params)}`);
    nextCursor = page.next_cursor;
    const keys = [...new Set([...metaColumns, ...page.data.flatMap((j) => metadataPairs(j.metadata).map(([k]) => k))])].sort();
    drawColumnChoice(keys);
    const restore = keepFocus(body);
    clear(body);
    body.removeAttribute("aria-busy");
    if (!page.data.length) {
      const filtered = state.status || state.from || state.to;
      body.append(
        h(
          "div",
          { class: "empty" },
          h("p", {}, filtered ? "No jobs match these filters." : "No jobs yet."),
          filtered ? null : h("p", {}, h("a", { href: "#/upload" }, "Upload a recording"), " or ", h("a", { href: "#/live" }, "try live recognition"), "."),
        ),
      );
    } else {
      body.append(
        h(
          "table",
          { class: "table jobs-table" },
          h("caption", { class: "sr-only" }, "Jobs, newest first"),
          h(
            "thead",
            {},
            h("tr", {}, h("th", { scope: "col" }, "Recording"), h("th", { scope: "col" }, "Status"), metaColumns.map((key) => h("th", { scope: "col" }, key)), h("th", { scope: "col", class: "num" }, "Duration"), h("th", { scope: "col" }, "Created"), h("th", { scope: "col" }, h("span", { class: "sr-only" }, "Actions"))),
          ),
          h("tbody", {}, page.data.map(row)),
        ),
      );
    }
    restore();
    prev.disabled = state.page === 0;
    next.disabled = !nextCursor;
    pageLabel.textContent = t(`Page ${state.page + 1}`);
    pager.hidden = state.page === 0 && !nextCursor;
    loadedOnce = true;
    // Poll again only while something on this page is still moving.
    return page.data.some((j) => isOpen(j.status)) ? undefined : "idle";
  }

  // Every second while a job on the page is open; quiet once all are final (a filter change, a
  // page turn or a delete loads again).
  const polls = poller(
    async () => (await load()) === "idle" ? false : undefined,
    1000,
    (error) => {
      if (error.code === "invalid_cursor") {
        state.cursors = [null];
        state.page = 0;
        return;
      }
      showLoadError(error, body, loadedOnce, ctx);
    },
  );
  polls.now();
  return () => polls.stop();
}
