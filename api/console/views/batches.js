// Batches: the list (GET /v1/batches, cursor pagination), an archive upload (POST /v1/batches), and
// one batch (GET /v1/batches/{id}): progress, ETA, per-status counts, audio done and left; its items
// (GET /v1/batches/{id}/items, paginated) with the failed ones' reasons; results downloaded as
// JSONL, CSV or ZIP (GET /v1/batches/{id}/results); cancel (POST /v1/batches/{id}/cancel); delete
// (DELETE /v1/batches/{id}); its conversation analytics (GET /v1/batches/{id}/analytics: the
// aggregates and a table per agent when the metadata has an agent column), refreshed with the batch.

import { describe, download, query, request, upload } from "../api.js";
import { batchAnalyticsCard } from "../analytics.js";
import { textOptions } from "./textopts.js";
import { badge, clear, confirmDialog, errorBox, h, keepFocus, poller, progressBar, showLoadError, span, titled, when, wirePager } from "../ui.js";
import { t } from "../i18n.js";

const STATUSES = ["queued", "processing", "completed", "failed", "cancelled"];
const BATCH_STATUS = { preparing: "Reading the folder", queued: "Queued", processing: "Processing", completed: "Completed", cancelled: "Cancelled" };

export function render(root, params, ctx) {
  return params.mode === "detail" ? renderDetail(root, params.id, ctx) : renderList(root, ctx);
}

function batchName(batch) {
  return batch.name || `Batch ${String(batch.id).slice(0, 8)}`;
}

function isOpenBatch(batch) {
  return batch.status === "preparing" || batch.status === "queued" || batch.status === "processing";
}

function batchBadge(status) {
  return h("span", { class: `badge badge-${status}` }, BATCH_STATUS[status] || status);
}

function counts(batch) {
  const c = batch.counts || {};
  return h(
    "ul",
    { class: "counts", "aria-label": "Jobs by status" },
    STATUSES.filter((s) => c[s]).map((s) => h("li", { class: `count count-${s}` }, h("span", { class: "count-n" }, String(c[s])), ` ${s}`)),
  );
}

function eta(batch) {
  if (!isOpenBatch(batch)) return batch.finished_at ? `finished ${when(batch.finished_at)}` : "finished";
  if (batch.eta_seconds === null || batch.eta_seconds === undefined) return "estimating…";
  return `about ${span(batch.eta_seconds)} left`;
}

// -- the list ---------------------------------------------------------------------------------------

const listState = { cursors: [null], page: 0 };

function renderList(root, ctx) {
  const archive = h("input", { type: "file", id: "batch-file", accept: ".zip,.tar,.tgz,.tar.gz,application/zip,application/x-tar,application/gzip" });
  const channels = h(
    "select",
    { id: "batch-channels" },
    h("option", { value: "split" }, "Split stereo: agent left, client right"),
    h("option", { value: "mix" }, "Mix to one channel"),
  );
  const text = textOptions("batch");
  const name = h("input", { type: "text", id: "batch-name", placeholder: "the archive's name", autocomplete: "off" });
  const submit = h("button", { type: "submit", class: "primary" }, "Upload archive");
  const uploadStatus = h("div", { class: "form-status", "aria-live": "polite" });
  const form = h(
    "form",
    { class: "card batch-form", "aria-labelledby": "batch-form-title" },
    h("h2", { id: "batch-form-title" }, "New batch"),
    h("p", { class: "muted" }, "A ZIP or tar(.gz) archive of recordings; an optional metadata.csv at its root (first column: the file's path) is attached to each item."),
    h(
      "div",
      { class: "options" },
      h("div", { class: "field" }, h("label", { for: "batch-file" }, "Archive"), archive),
      h("div", { class: "field" }, h("label", { for: "batch-name" }, "Name (optional)"), name),
      h("div", { class: "field" }, h("label", { for: "batch-channels" }, "Channels"), channels),
      h("div", { class: "field end" }, submit),
    ),
    text.element,
    uploadStatus,
  );
  const body = h("div", { "aria-busy": "true" }, h("p", { class: "muted" }, "Loading batches…"));
  const prev = h("button", { type: "button", class: "secondary" }, "← Newer");
  const next = h("button", { type: "button", class: "secondary" }, "Older →");
  const pageLabel = h("span", { class: "page-label" });
  const pager = h("nav", { class: "pager", "aria-label": "Pages" }, prev, pageLabel, next);
  root.append(h("div", { class: "page-head" }, h("h1", {}, "Batches")), form, body, pager);
  titled(root, "Batches");

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clear(uploadStatus);
    const file = archive.files[0];
    if (!file) {
      uploadStatus.append(h("p", { class: "error-text" }, "Choose an archive first."));
      archive.focus();
      return;
    }
    // the fields before the file: the server starts transcribing a ZIP's calls while it uploads
    // only when it knows the batch's options by then
    const data = new FormData();
    data.append("channels", channels.value);
    for (const [k, v] of Object.entries(text.values())) data.append(k, v);
    data.append("name", name.value.trim() || file.name);
    data.append("file", file, file.name);
    submit.disabled = true;
    const bar = progressBar(0, "Upload progress");
    uploadStatus.append(h("p", {}, `Uploading ${file.name}… `, bar));
    try {
      const { promise } = upload("/v1/batches", data, (f) => {
        bar.querySelector("progress").value = Math.round(f * 100);
        bar.querySelector(".progress-text").textContent = t(`${Math.round(f * 100)} %`);
      });
      const created = await promise;
      clear(uploadStatus);
      const skipped = created.skipped || [];
      uploadStatus.append(
        h("p", { class: "notice" }, `Batch created: ${created.items} item${created.items === 1 ? "" : "s"} in ${created.jobs} job${created.jobs === 1 ? "" : "s"}`, skipped.length ? `, ${skipped.length} skipped` : "", ". ", h("a", { href: `#/batches/${created.id}` }, "Open it")),
      );
      form.reset();
      listState.cursors = [null];
      listState.page = 0;
      polls.now();
    } catch (error) {
      clear(uploadStatus);
      uploadStatus.append(errorBox(error, { compact: true }));
    } finally {
      submit.disabled = false;
    }
  });

  let nextCursor = null;
  let loadedOnce = false;
  wirePager(prev, next, listState, () => nextCursor, () => polls.now());

  async function load() {
    const page = await request(`/v1/batches${query({ limit: 20, cursor: listState.cursors[listState.page] })}`);
    const batches = page.data || [];
    nextCursor = page.next_cursor || null;
    const restore = keepFocus(body);
    clear(body);
    body.removeAttribute("aria-busy");
    if (!batches.length) {
      body.append(h("p", { class: "empty" }, "No batches yet: upload an archive above."));
    } else {
      body.append(
        h(
          "table",
          { class: "table batches-table" },
          h("caption", { class: "sr-only" }, "Batches, newest first"),
          h("thead", {}, h("tr", {}, ["Batch", "Status", "Progress", "Jobs", "Time left", "Created"].map((t) => h("th", { scope: "col" }, t)))),
          h(
            "tbody",
            {},
            batches.map((b) =>
              h(
                "tr",
                { dataset: { id: b.id } },
                h("td", { "data-label": "Batch", class: "name-cell" }, h("a", { href: `#/batches/${b.id}`, dataset: { focusKey: `batch-${b.id}` } }, batchName(b)), h("div", { class: "sub" }, [`${b.items} item${b.items === 1 ? "" : "s"}`, b.source].filter(Boolean).map((part) => t(part)).join(" · "))),
                h("td", { "data-label": "Status" }, batchBadge(b.status)),
                h("td", { "data-label": "Progress" }, progressBar(b.progress, `Progress of ${batchName(b)}`)),
                h("td", { "data-label": "Jobs" }, counts(b)),
                h("td", { "data-label": "Time left" }, isOpenBatch(b) ? eta(b) : "–"),
                h("td", { "data-label": "Created", class: "nowrap" }, when(b.created_at)),
              ),
            ),
          ),
        ),
      );
    }
    restore();
    prev.disabled = listState.page === 0;
    next.disabled = !nextCursor;
    pageLabel.textContent = t(`Page ${listState.page + 1}`);
    pager.hidden = listState.page === 0 && !nextCursor;
    loadedOnce = true;
    return batches.some(isOpenBatch) ? undefined : false;
  }

  const polls = poller(load, 2000, (error) => showLoadError(error, body, loadedOnce, ctx));
  polls.now();
  return () => polls.stop();
}

// -- one batch --------------------------------------------------------------------------------------

function renderDetail(root, id, ctx) {
  const heading = h("h1", {}, "Batch");
  const actions = h("div", { class: "head-actions" });
  const summary = h("div", { class: "batch-summary", "aria-live": "polite" });
  const onlyFailed = h("input", { type: "checkbox", id: "only-failed" });
  const itemsBody = h("div", { class: "items-body" });
  const analyticsHolder = h("div", { class: "analytics-holder" });
  let analyticsPolls = 0;
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Load more items");
  // the CSV's text and the ZIP's txt/srt/vtt: the written form by default, the words as spoken when ticked
  const spokenResults = h("input", { type: "checkbox", id: "results-spoken-words" });
  const downloads = h(
    "div",
    { class: "downloads", role: "group", "aria-label": "Download the results" },
    h("span", { class: "muted" }, "Results"),
    [
      ["jsonl", "JSONL"],
      ["csv", "CSV"],
      ["zip", "ZIP"],
    ].map(([fmt, label]) =>
      h(
        "button",
        {
          type: "button",
          class: "secondary small",
          dataset: { format: fmt },
          "aria-label": `Download results as ${label}`,
          onclick: () =>
            download(`/v1/batches/${id}/results?format=${fmt}${spokenResults.checked ? "&text=raw" : ""}`, `batch-${id}.${fmt}`).catch((e) =>
              ctx.showBanner(e),
            ),
        },
        label,
      ),
    ),
    h("label", { class: "check", for: "results-spoken-words" }, spokenResults, " Spoken words"),
  );
  root.append(
    h("p", { class: "back" }, h("a", { href: "#/batches" }, "← All batches")),
    h("div", { class: "page-head" }, heading, actions),
    h("section", { class: "card" }, summary, downloads),
    analyticsHolder,
    h(
      "section",
      { class: "card", "aria-labelledby": "items-title" },
      h("div", { class: "section-head" }, h("h2", { id: "items-title" }, "Items"), h("label", { class: "check", for: "only-failed" }, onlyFailed, " Only failed")),
      itemsBody,
      more,
    ),
  );
  titled(root, "Batch");

  let batch = null;
  let items = [];
  let itemsCursor = null;

  function drawSummary() {
    heading.textContent = t(batchName(batch));
    document.title = `${t(batchName(batch))} · tone-platform`;
    clear(summary);
    const done = (batch.counts.completed || 0) + (batch.counts.failed || 0) + (batch.counts.cancelled || 0);
    summary.append(
      h("div", { class: "summary-row" }, batchBadge(batch.status), progressBar(batch.progress, "Batch progress"), h("span", { class: "muted" }, `${done} of ${batch.jobs} job${batch.jobs === 1 ? "" : "s"} finished · ${t(eta(batch))}`)),
      counts(batch),
      h(
        "dl",
        { class: "meta" },
        h("div", {}, h("dt", {}, "Items"), h("dd", {}, String(batch.items))),
        h("div", {}, h("dt", {}, "Audio done"), h("dd", {}, span(batch.audio_seconds_done))),
        h("div", {}, h("dt", {}, "Audio left"), h("dd", {}, batch.audio_seconds_left === null || batch.audio_seconds_left === undefined ? "–" : span(batch.audio_seconds_left))),
        batch.created_at ? h("div", {}, h("dt", {}, "Created"), h("dd", {}, when(batch.created_at))) : null,
      ),
    );
    const skipped = Array.isArray(batch.skipped) ? batch.skipped : [];
    if (skipped.length) {
      summary.append(
        h(
          "details",
          { class: "skipped" },
          h("summary", {}, `${skipped.length} file${skipped.length === 1 ? "" : "s"} of the archive skipped`),
          h("ul", {}, skipped.map((s) => h("li", {}, h("code", {}, s.name), ` — ${s.reason}`))),
        ),
      );
    }
    clear(actions);
    if (isOpenBatch(batch)) actions.append(h("button", { type: "button", class: "danger", onclick: cancel }, "Cancel batch"));
    actions.append(h("button", { type: "button", class: "danger", id: "batch-delete", onclick: remove }, "Delete batch"));
  }

  async function remove() {
    const question = "Delete this batch? Its recordings, transcripts and results are removed for good.";
    if (!(await confirmDialog(question, "Delete batch"))) return;
    try {
      await request(`/v1/batches/${id}`, { method: "DELETE" });
      polls.stop();
      ctx.showBanner("The batch was deleted.", "info");
      location.hash = "#/batches";
    } catch (error) {
      ctx.showBanner(error);
    }
  }

  async function cancel() {
    if (!(await confirmDialog("Cancel every queued and running job of this batch?", "Cancel batch"))) return;
    try {
      const answer = await request(`/v1/batches/${id}/cancel`, { method: "POST" });
      ctx.showBanner(`Cancelled ${answer.cancelled} job${answer.cancelled === 1 ? "" : "s"}.`, "info");
      polls.now();
    } catch (error) {
      ctx.showBanner(error);
    }
  }

  function drawItems() {
    const restore = keepFocus(itemsBody);
    clear(itemsBody);
    const shown = items;
    if (!shown.length) {
      itemsBody.append(h("p", { class: "empty" }, onlyFailed.checked ? "No failed items." : "No items."));
    } else {
      itemsBody.append(
        h(
          "table",
          { class: "table items-table" },
          h("thead", {}, h("tr", {}, ["File", "Status", "Duration", "Reason"].map((t) => h("th", { scope: "col" }, t)))),
          h(
            "tbody",
            {},
            shown.map((item) =>
              h(
                "tr",
                { dataset: { status: item.status } },
                h("td", { "data-label": "File", class: "name-cell" }, h("a", { href: `#/jobs/${item.job_id}`, dataset: { focusKey: `item-${item.name}` } }, item.name)),
                h("td", { "data-label": "Status" }, badge(item.status)),
                h("td", { "data-label": "Duration", class: "num" }, span(item.duration)),
                h(
                  "td",
                  { "data-label": "Reason", class: "reason" },
                  item.error ? [h("span", {}, describe({ code: item.error.code, serverMessage: "" }).title), item.error.message ? h("div", { class: "sub" }, item.error.message) : null] : "",
                ),
              ),
            ),
          ),
        ),
      );
    }
    restore();
    more.hidden = !itemsCursor;
  }

  /** The items loaded so far, fetched again (statuses change while the batch runs). */
  async function loadItems() {
    const loaded = [];
    let cursor = null;
    const want = Math.max(items.length, 100);
    do {
      const page = await request(`/v1/batches/${id}/items${query({ limit: 100, cursor, status: itemStatus() })}`);
      loaded.push(...page.items);
      cursor = page.next_cursor;
    } while (cursor && loaded.length < want);
    items = loaded;
    itemsCursor = cursor;
    drawItems();
  }

  more.addEventListener("click", async () => {
    try {
      const page = await request(`/v1/batches/${id}/items${query({ limit: 100, cursor: itemsCursor, status: itemStatus() })}`);
      items.push(...page.items);
      itemsCursor = page.next_cursor;
      drawItems();
    } catch (error) {
      ctx.showBanner(error);
    }
  });
  // the filter is the API's (?status=failed), so the failed items of a 10 000-recording batch all show
  function itemStatus() {
    return onlyFailed.checked ? "failed" : undefined;
  }
  onlyFailed.addEventListener("change", async () => {
    items = [];
    try {
      await loadItems();
    } catch (error) {
      ctx.showBanner(error);
    }
  });

  const polls = poller(
    async () => {
      batch = await request(`/v1/batches/${id}`);
      drawSummary();
      await loadItems();
      // the aggregates: every 5th poll while the batch runs (they read every call), then once at the end
      if (!isOpenBatch(batch) || analyticsPolls++ % 5 === 0) {
        const measured = await request(`/v1/batches/${id}/analytics`);
        clear(analyticsHolder);
        analyticsHolder.append(batchAnalyticsCard(measured));
      }
      return isOpenBatch(batch) ? undefined : false;
    },
    2000,
    (error) => {
      if (!batch) {
        heading.textContent = t(error.code === "not_found" ? "Batch not found" : "Batch");
        clear(summary);
        summary.append(errorBox(error));
      } else {
        ctx.showBanner(error);
      }
    },
  );
  polls.now();
  return () => polls.stop();
}
